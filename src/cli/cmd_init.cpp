// dseek init: writes a random-weight checkpoint of any DeepSeek shape (config.json + safetensors
// in the Hugging Face layout), for benchmarks and tests without downloads.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
#include "model/init_weights.h"

namespace dseek::cli {

void add_init_command(CLI::App& app) {
  struct Args {
    std::string config, out, dtype = "bf16", tokenizer;
    uint64_t seed = 0;
    double std = 0.02;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "init", "Write a random-weight checkpoint (config.json + safetensors) of a given config");
  cmd->add_option("--config", args->config, "config.json (Hugging Face style) giving the shape")
      ->required();
  cmd->add_option("--out", args->out, "output directory")->required();
  cmd->add_option("--dtype", args->dtype, "weight dtype: f32 or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_option("--seed", args->seed, "random seed");
  cmd->add_option("--std", args->std, "standard deviation of linear weights and embeddings");
  cmd->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json (or a directory with one) to copy into the checkpoint");
  cmd->callback([args] {
    const ModelConfig config = load_model_config(args->config);
    InitOptions options;
    options.dtype = args->dtype == "f32" ? DType::F32 : DType::BF16;
    options.seed = args->seed;
    options.std = args->std;
    options.tokenizer = args->tokenizer;
    size_t params = 0;
    for (const WeightSpec& spec : checkpoint_layout(config))
      params += size_t(shape_numel(spec.shape));
    std::fprintf(stderr, "dseek init: %s, %zu parameters (%.2f GB as %s) -> %s\n",
                 config.model_type.c_str(), params,
                 double(params * dtype_size(options.dtype)) / 1e9, args->dtype.c_str(),
                 args->out.c_str());
    write_random_checkpoint(config, args->out, options);
  });
}

}  // namespace dseek::cli
