// dseek: the command-line entry point. Errors in input become "dseek: <message>" and exit code 1;
// usage errors exit 2 (CLI11's convention).
//
// Under an MPI launcher (mpirun -np N, see src/dist/process_group.h) MPI is initialised first; an
// error on one rank is printed with the rank's number and then ends the whole job (MPI_Abort), so
// no other rank is left waiting in a collective.
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/process_group.h"

namespace {

// "" for one process, "[rank 1 of 2] " for a rank of a job.
std::string rank_prefix() {
  const dseek::dist::ProcessGroup& w = dseek::dist::world();
  return w.size() > 1 ? "[rank " + std::to_string(w.rank()) + " of " + std::to_string(w.size()) + "] "
                      : std::string();
}

int run(int argc, char** argv, bool& failed) {
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
  dseek::cli::add_synth_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dseek::Error& e) {
    std::fprintf(stderr, "dseek: %s%s\n", rank_prefix().c_str(), e.what());
    failed = true;
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dseek: %sinternal error: %s\n", rank_prefix().c_str(), e.what());
    failed = true;
    return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    dseek::dist::init_world(&argc, &argv);
  } catch (const dseek::Error& e) {
    std::fprintf(stderr, "dseek: %s\n", e.what());
    return 1;
  }
  bool failed = false;
  const int code = run(argc, argv, failed);
  if (failed) dseek::dist::abort_world(code);  // returns only for a single process
  dseek::dist::finalize_world();
  return code;
}
