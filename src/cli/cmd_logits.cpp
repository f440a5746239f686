// Placeholder registration; replaced by the real command.
#include "cli/commands.h"
#include "core/error.h"

namespace dseek::cli {
void add_logits_command(CLI::App& app) {
  app.add_subcommand("logits", "(being built)")->callback([] { dseek::fail("[logits] not built yet"); });
}
}  // namespace dseek::cli
