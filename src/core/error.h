// Errors: invalid input raises dseek::Error whose message starts with the place at fault
// ("[safetensors] model.safetensors: ...", "[config] config.json: ..."). The CLI and the server
// catch it and turn it into a message and an exit code / HTTP status. Broken internal invariants
// are bugs and use assert, not exceptions.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dseek {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws dseek::Error with a formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace dseek

// DSEEK_CHECK(cond, "[op] what went wrong: {}", value) — for checks of user-provided input.
#define DSEEK_CHECK(cond, ...)   \
  do {                           \
    if (!(cond)) {               \
      ::dseek::fail(__VA_ARGS__); \
    }                            \
  } while (0)
