// `dseek logits --model DIR --ids 5,17,42 --out FILE [--device cpu|cuda] [--dtype f32|bf16]`:
// runs the full forward (no cache) of one sequence and writes its logits as raw little-endian
// float32 [n_ids, vocab], row-major; prints the shape. Used to compare dseek with transformers
// outside the test suite. --device cuda loads the model onto the GPU (weights converted once to
// --dtype, the activation dtype; bf16 only there); the logits are converted to f32 and copied
// back whatever the dtype. --expert-parallel under `mpirun -np N` splits the routed experts over
// the N ranks (cli/expert_parallel.h); every rank runs the forward, rank 0 alone writes the file.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/expert_parallel.h"
#include "core/cuda.h"
#include "core/error.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"
#include "model/model.h"

namespace dseek::cli {
namespace {

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    DSEEK_CHECK(!item.empty(), "[logits] --ids: empty entry in '{}'", text);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSEEK_CHECK(used == item.size() && v >= 0 && v <= INT32_MAX,
                "[logits] --ids: '{}' is not a token id", item);
    ids.push_back(int32_t(v));
    start = end + 1;
  }
  return ids;
}

}  // namespace

void add_logits_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "Write the logits of a full forward as raw f32 [T, V]");
  auto model_dir = std::make_shared<std::string>();
  auto ids_text = std::make_shared<std::string>();
  auto out_path = std::make_shared<std::string>();
  cmd->add_option("--model", *model_dir, "Checkpoint directory (config.json + safetensors)")
      ->required();
  cmd->add_option("--ids", *ids_text, "Comma-separated token ids, e.g. 5,17,42")->required();
  cmd->add_option("--out", *out_path, "Output file (little-endian float32)")->required();
  auto device = std::make_shared<std::string>("cpu");
  auto dtype = std::make_shared<std::string>("f32");
  cmd->add_option("--device", *device, "Where the forward runs: cpu (default) or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", *dtype, "Activation dtype: f32 (default) or bf16 (cuda only)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  auto dequantize_fp8 = std::make_shared<bool>(false);
  cmd->add_flag("--dequantize-fp8", *dequantize_fp8, "an FP8 checkpoint's weights are dequantised at load (default: its projections stay FP8 and run as FP8 GEMMs)");
  auto expert_parallel = std::make_shared<bool>(false);
  cmd->add_flag("--expert-parallel", *expert_parallel,
                "under mpirun -np N: each rank holds 1/N of every MoE layer's routed experts");
  cmd->callback([model_dir, ids_text, out_path, device, dtype, dequantize_fp8, expert_parallel] {
    const std::vector<int32_t> ids = parse_ids(*ids_text);
    Placement placement;
    if (*device == "cuda") {
      dist::spread_ranks_over_gpus(dist::world());  // expert-parallel ranks: a GPU each if any
      cuda::require("--device cuda");
      placement.device = Device::CUDA;
    }
    if (*dtype == "bf16") {
      DSEEK_CHECK(placement.device == Device::CUDA,
                  "[logits] --dtype bf16 needs --device cuda (the CPU computes in f32)");
      placement.act = DType::BF16;
    }
    if (*dequantize_fp8) placement.fp8 = Fp8Weights::Dequantise;
    if (*expert_parallel) enable_expert_parallel(placement, "logits");
    auto model = Model::load(*model_dir, placement);
    log_expert_parallel(*model, placement);
    const Tensor logits = model->forward(ids);  // f32 on the host; checks ids against the vocab
    if (!prints_output(placement)) return;
    std::ofstream out(*out_path, std::ios::binary | std::ios::trunc);
    DSEEK_CHECK(out.good(), "[logits] {}: cannot open for writing", *out_path);
    out.write(static_cast<const char*>(logits.raw()), std::streamsize(logits.nbytes()));
    out.close();
    DSEEK_CHECK(out.good(), "[logits] {}: write failed", *out_path);
    std::printf("logits [%lld, %lld] -> %s\n", static_cast<long long>(logits.size(0)),
                static_cast<long long>(logits.size(1)), out_path->c_str());
  });
}

}  // namespace dseek::cli
