// dseek: the command-line entry point. Errors in input become "dseek: <message>" and exit code 1;
// usage errors exit 2 (CLI11's convention).
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"dseek: DeepSeek models in C++ — inference, training, serving"};
  app.require_subcommand(1);
  dseek::cli::add_info_command(app);
  dseek::cli::add_logits_command(app);
  dseek::cli::add_generate_command(app);
  dseek::cli::add_chat_command(app);
  dseek::cli::add_tokenize_commands(app);
  dseek::cli::add_init_command(app);
  dseek::cli::add_plot_command(app);
  dseek::cli::add_data_commands(app);
  dseek::cli::add_data_passkey_command(app);
  dseek::cli::add_data_chat_commands(app);
  dseek::cli::add_tokenizer_commands(app);
  dseek::cli::add_train_command(app);
  dseek::cli::add_export_command(app);
  dseek::cli::add_serve_command(app);
  dseek::cli::add_eval_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dseek::Error& e) {
    std::fprintf(stderr, "dseek: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dseek: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
