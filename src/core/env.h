// The environment's switches: DSEEK_* variables read once at start-up to turn a path on or off for
// comparisons (each documented where it is read, e.g. DSEEK_PDL=0, DSEEK_FUSED_COMBINE_NORM=1).
#pragma once

#include <cstdlib>
#include <string_view>

namespace dseek {

// Whether environment variable `name` is set to exactly `value`.
inline bool env_is(const char* name, std::string_view value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string_view(v) == value;
}

}  // namespace dseek
