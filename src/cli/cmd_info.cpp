// Placeholder registration; replaced by the real command.
#include "cli/commands.h"
#include "core/error.h"

namespace dseek::cli {
void add_info_command(CLI::App& app) {
  app.add_subcommand("info", "(being built)")->callback([] { dseek::fail("[info] not built yet"); });
}
}  // namespace dseek::cli
