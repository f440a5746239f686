// Small helpers shared by the unit tests (no files, no processes: cli_util.h has those).
#pragma once

#include <functional>
#include <string>

#include "core/error.h"

namespace dseek::testing {

// The message of the dseek::Error that f throws, or "(no error)" when it returns normally (so an
// expected message that is missing fails with a readable value). Other exceptions propagate.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace dseek::testing
