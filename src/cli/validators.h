// Number checks for command-line options. CLI11 2.1's PositiveNumber and NonNegativeNumber name
// their range up to DBL_MAX when a value fails ("Value 0 not in range 0.000000 to 1797693134…",
// 300 digits); these say what the option wants: "--max-queue: must be above 0, got 0".
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace dseek::cli {

namespace detail {
inline CLI::Validator number_check(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](std::string& text) -> std::string {
        double x = 0;
        if (!CLI::detail::lexical_cast(text, x)) return "'" + text + "' is not a number";
        if (zero_allowed ? x >= 0 : x > 0) return {};
        return (zero_allowed ? "must be 0 or above, got " : "must be above 0, got ") + text;
      },
      zero_allowed ? ">=0" : ">0");
}
}  // namespace detail

// Values above 0.
inline const CLI::Validator positive = detail::number_check(false);
// Values of 0 and above.
inline const CLI::Validator non_negative = detail::number_check(true);

}  // namespace dseek::cli
