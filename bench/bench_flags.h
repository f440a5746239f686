// Flag parsing shared by the bench programs (CLI11): --help prints the flags and exits 0, a bad
// flag prints CLI11's message (with dseek's number checks, cli/validators.h) and exits 2.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdlib>

inline void parse_or_exit(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e) == 0 ? 0 : 2);
  }
}
