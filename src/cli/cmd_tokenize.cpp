// Placeholder registration; replaced by the real command.
#include "cli/commands.h"
#include "core/error.h"

namespace dseek::cli {
void add_tokenize_commands(CLI::App& app) {
  app.add_subcommand("tokenize", "(being built)")->callback([] { dseek::fail("[tokenize] not built yet"); });
  app.add_subcommand("detokenize", "(being built)")->callback([] { dseek::fail("[detokenize] not built yet"); });
}
}  // namespace dseek::cli
