// Number checks for command-line options. CLI11 2.1's PositiveNumber and NonNegativeNumber name
// their range up to DBL_MAX when a value fails ("Value 0 not in range 0.000000 to 1797693134…",
// 300 digits); these say what the option wants: "--max-queue: must be above 0, got 0".
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace dseek::cli {

namespace detail {
// Values above `bound` (strict) or at least `bound`; `name` is what --help shows after the type.
inline CLI::Validator number_check(double bound, bool strict, const std::string& name) {
  return CLI::Validator(
      [bound, strict, name](std::string& text) -> std::string {
        double x = 0;
        if (!CLI::detail::lexical_cast(text, x)) return "'" + text + "' is not a number";
        if (strict ? x > bound : x >= bound) return {};
        return "must be " + std::string(strict ? "above " : "at least ") +
               name.substr(strict ? 1 : 2) + ", got " + text;
      },
      name);
}
}  // namespace detail

// Values of `min` and above (an integer bound: --help shows ">=min").
inline CLI::Validator at_least(long long min) {
  return detail::number_check(double(min), false, ">=" + std::to_string(min));
}
// Values above 0.
inline const CLI::Validator positive = detail::number_check(0.0, true, ">0");
// Values of 0 and above.
inline const CLI::Validator non_negative = at_least(0);

}  // namespace dseek::cli
