// Each `dseek` subcommand lives in its own cmd_<name>.cpp and registers itself here. A command's
// callback throws dseek::Error on bad input; main() turns that into a message and exit code 1.
#pragma once

#include <CLI/CLI.hpp>

namespace dseek::cli {

void add_info_command(CLI::App& app);
void add_logits_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_tokenize_commands(CLI::App& app);  // tokenize, detokenize
void add_init_command(CLI::App& app);
void add_plot_command(CLI::App& app);  // plot RUN_DIR
void add_data_commands(CLI::App& app);  // data prepare
void add_data_passkey_command(CLI::App& app);  // data passkey (after add_data_commands)
void add_data_chat_commands(CLI::App& app);    // data sft, data dpo (after add_data_commands)
void add_tokenizer_commands(CLI::App& app);  // tokenizer train
void add_train_command(CLI::App& app);       // train
void add_export_command(CLI::App& app);      // export --run RUN_DIR --out MODEL_DIR
void add_serve_command(CLI::App& app);       // serve --model DIR (OpenAI-compatible HTTP)
void add_eval_commands(CLI::App& app);       // eval passkey, eval fim, eval passkey-plot
void add_synth_commands(CLI::App& app);      // synth search, synth show (operator synthesis)

}  // namespace dseek::cli
