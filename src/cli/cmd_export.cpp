// `dseek export --run RUN_DIR --out MODEL_DIR`: a training run's checkpoint as an HF model dir.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "train/export.h"

namespace dseek::cli {

void add_export_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Export a training run as a Hugging Face model directory");
  auto o = std::make_shared<train::ExportOptions>();
  auto dtype = std::make_shared<std::string>("f32");
  cmd->add_option("--run", o->run_dir, "run directory of `dseek train`")->required();
  cmd->add_option("--out", o->out_dir, "model directory to write")->required();
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint directory (default: the newest)");
  cmd->add_option("--dtype", *dtype, "f32 or bf16")->capture_default_str();
  cmd->callback([o, dtype] {
    if (*dtype == "f32") {
      o->dtype = DType::F32;
    } else if (*dtype == "bf16") {
      o->dtype = DType::BF16;
    } else {
      fail("[export] --dtype: '{}' is not f32 or bf16", *dtype);
    }
    const std::string ckpt = train::export_run(*o);
    fmt::print("exported {} to {}\n", ckpt, o->out_dir);
  });
}

}  // namespace dseek::cli
