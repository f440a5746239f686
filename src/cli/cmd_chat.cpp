// Placeholder registration; replaced by the real command.
#include "cli/commands.h"
#include "core/error.h"

namespace dseek::cli {
void add_chat_command(CLI::App& app) {
  app.add_subcommand("chat", "(being built)")->callback([] { dseek::fail("[chat] not built yet"); });
}
}  // namespace dseek::cli
