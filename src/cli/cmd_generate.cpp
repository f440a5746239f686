// Placeholder registration; replaced by the real command.
#include "cli/commands.h"
#include "core/error.h"

namespace dseek::cli {
void add_generate_command(CLI::App& app) {
  app.add_subcommand("generate", "(being built)")->callback([] { dseek::fail("[generate] not built yet"); });
}
}  // namespace dseek::cli
