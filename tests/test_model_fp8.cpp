// An FP8 checkpoint run with its weights kept as FP8 (issue 4). The v3_fp8 fixture
// (docs/FIXTURES.md: v3_noaux with every attention and MLP/expert projection F8_E4M3 +
// weight_scale_inv) is loaded with the default placement, which keeps the dense projections FP8 in
// memory (ops::linear_fp8: activations quantised per 1×128 tile) and dequantises kv_b_proj and the
// routed experts at load; its logits must stay within the E4M3 activation-rounding bound of the
// same checkpoint with every weight dequantised (Fp8Weights::Dequantise), and of transformers'
// reference, which was computed from the dequantised weights. `dseek generate` runs on it, with and
// without --dequantize-fp8.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "core/error.h"
#include "infer/generator.h"
#include "model/mla.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model_fixtures.h"
#include "ops/fp8.h"
#include "ops/linear.h"

using namespace dseek;
using namespace dseek::testing;
namespace fs = std::filesystem;

namespace {

const fs::path kDir = dseek::testing::fixtures_root() / "v3_fp8";

const Placement kDequantised{Device::CPU, DType::F32, Fp8Weights::Dequantise};

struct Reference {
  std::vector<int32_t> input_ids, greedy_prompt, greedy_continuation;
  int64_t rows = 0, vocab = 0;
  std::vector<float> logits, mtp_logits;  // [rows, vocab], [rows - 1, vocab]
};

std::vector<float> read_f32(const fs::path& path, size_t count) {
  std::vector<float> values(count, std::numeric_limits<float>::quiet_NaN());
  std::ifstream bin(path, std::ios::binary);
  bin.read(reinterpret_cast<char*>(values.data()), std::streamsize(count * sizeof(float)));
  EXPECT_EQ(bin.gcount(), std::streamsize(count * sizeof(float))) << path;
  return values;
}

Reference load_reference() {
  Reference ref;
  std::ifstream in(kDir / "reference.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  ref.input_ids = j.at("input_ids").get<std::vector<int32_t>>();
  ref.greedy_prompt = j.at("greedy_prompt").get<std::vector<int32_t>>();
  ref.greedy_continuation = j.at("greedy_continuation").get<std::vector<int32_t>>();
  ref.rows = j.at("logits_shape").at(0);
  ref.vocab = j.at("logits_shape").at(1);
  ref.logits =
      read_f32(kDir / j.at("logits_file").get<std::string>(), size_t(ref.rows * ref.vocab));
  ref.mtp_logits = read_f32(kDir / j.at("mtp").at("logits_file").get<std::string>(),
                            size_t((ref.rows - 1) * ref.vocab));
  return ref;
}

const Transformer& as_transformer(const Model& model) {
  const auto* t = dynamic_cast<const Transformer*>(&model);
  if (!t) throw std::runtime_error("Model::load did not return a Transformer");
  return *t;
}

void expect_fp8(const LinearWeight& w, const Shape& shape, const std::string& what) {
  EXPECT_TRUE(w.fp8()) << what;
  EXPECT_EQ(w.weight.dtype(), DType::F8_E4M3) << what;
  EXPECT_EQ(w.weight.shape(), shape) << what;
  EXPECT_EQ(w.scale_inv.dtype(), DType::F32) << what;
  EXPECT_EQ(w.scale_inv.shape(), (Shape{(shape[0] + 127) / 128, (shape[1] + 127) / 128})) << what;
}

struct Errors {
  double max_abs = 0, rel_rms = 0;
  int64_t decisive_rows = 0, argmax_mismatches = 0;
};

// got vs want over [rows, vocab]: max |Δ| (NaN: infinite), ‖Δ‖/‖want‖, and the rows whose top-1
// margin in `want` exceeds 2·max|Δ| (no error that small can reorder them) with a different argmax.
Errors compare(const std::vector<float>& got, const std::vector<float>& want, int64_t rows,
               int64_t vocab) {
  Errors e;
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double d = std::fabs(double(got[i]) - double(want[i]));
    if (std::isnan(d)) d = std::numeric_limits<double>::infinity();
    e.max_abs = std::max(e.max_abs, d);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  e.rel_rms = std::sqrt(num / den);
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = want.data() + r * vocab;
    const float* g = got.data() + r * vocab;
    const int64_t top = std::max_element(w, w + vocab) - w;
    float second = -std::numeric_limits<float>::infinity();
    for (int64_t v = 0; v < vocab; ++v)
      if (v != top) second = std::max(second, w[v]);
    if (double(w[top]) - double(second) <= 2 * e.max_abs) continue;
    ++e.decisive_rows;
    if (std::max_element(g, g + vocab) - g != top) ++e.argmax_mismatches;
  }
  return e;
}

// The bounds. E4M3 keeps 3 mantissa bits, so rounding an activation to it (the tile's amax/448
// scale puts the tile in E4M3's normal range, bar its tiny elements) errs by at most half an ulp,
// 2^-4 of the value; spread uniformly over ±half an ulp that is at most 2^-4/√3 ≈ 0.036 RMS,
// relative. A GEMM over such inputs carries that relative RMS error into its output (independent
// errors add in quadrature, as the signal does): kGemmRelRms, per projection (measured ≈ 0.026).
// Through the model the error compounds: the deepest path crosses ten quantised GEMMs in series
// (per layer q_a_proj → q_b_proj → o_proj and the (shared) MLP's gate/up → down), and the worst
// case, every stage's error adding in the same direction at unit gain, is 10 · 0.036 = 0.36 of
// the logits' RMS: kModelRelRms (measured ≈ 0.155: attention's softmax and the MoE routing, whose
// margins in this fixture are 7e-4, amplify; quadrature would give 0.11). Against transformers,
// which computed the dequantised model, the bound adds its 1e-4 absolute tolerance.
constexpr double kGemmRelRms = 0.0625 / 1.7320508075688772;
constexpr double kModelRelRms = 10 * kGemmRelRms;

}  // namespace

TEST(ModelFp8, KeepsDenseProjectionsFp8InMemory) {
  const std::unique_ptr<Model> model = Model::load(kDir.string());
  const Transformer& t = as_transformer(*model);
  const ModelConfig& c = t.config();
  EXPECT_TRUE(t.unused_tensors().empty()) << t.unused_tensors().front();  // scales consumed
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    const auto* mla = dynamic_cast<const Mla*>(&t.block(l).attention());
    ASSERT_NE(mla, nullptr);
    expect_fp8(mla->kv_a_proj(), {c.kv_lora_rank + c.qk_rope_head_dim, D}, "kv_a_proj");
    expect_fp8(mla->o_proj(), {D, H * c.v_head_dim}, "o_proj");
    // kv_b_proj is dequantised at load (the absorbed decode slices it per head).
    EXPECT_EQ(mla->kv_b_proj().dtype(), DType::BF16);
    if (const Mlp* mlp = t.block(l).mlp()) {
      expect_fp8(mlp->gate(), {c.intermediate_size, D}, "mlp.gate_proj");
      expect_fp8(mlp->up(), {c.intermediate_size, D}, "mlp.up_proj");
      expect_fp8(mlp->down(), {D, c.intermediate_size}, "mlp.down_proj");
    } else {
      const MoE* moe = t.block(l).moe();
      ASSERT_NE(moe, nullptr);
      ASSERT_NE(moe->shared_experts(), nullptr);
      const int64_t Is = c.moe_intermediate_size * c.n_shared_experts;
      expect_fp8(moe->shared_experts()->gate(), {Is, D}, "shared_experts.gate_proj");
      expect_fp8(moe->shared_experts()->down(), {D, Is}, "shared_experts.down_proj");
      // Routed experts are dequantised at load (the grouped expert GEMMs take plain weights).
      for (const Mlp& e : moe->experts()) {
        EXPECT_FALSE(e.fp8());
        EXPECT_EQ(e.gate_proj().dtype(), DType::BF16);
      }
    }
  }
  // --dequantize-fp8 / Fp8Weights::Dequantise: nothing stays FP8.
  const std::unique_ptr<Model> plain = Model::load(kDir.string(), kDequantised);
  const Transformer& p = as_transformer(*plain);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& mla = dynamic_cast<const Mla&>(p.block(l).attention());
    EXPECT_FALSE(mla.o_proj().fp8());
    EXPECT_EQ(mla.o_proj().weight.dtype(), DType::BF16);
    if (const Mlp* mlp = p.block(l).mlp()) {
      EXPECT_FALSE(mlp->fp8());
    }
    if (const MoE* moe = p.block(l).moe()) {
      EXPECT_FALSE(moe->shared_experts()->fp8());
    }
  }
}

// Every FP8 projection of the checkpoint: linear_fp8 on N(0, 1) inputs vs linear with the
// dequantised weight (exact: the fixture's scales make fp8 × scale exact in bf16).
TEST(ModelFp8, EachProjectionWithinOneGemmBound) {
  const WeightStore store = WeightStore::open(kDir.string());
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  int checked = 0;
  double worst = 0;
  for (const std::string& name : store.names()) {
    if (store.get(name).dtype() != DType::F8_E4M3) continue;
    SCOPED_TRACE(name);
    const Shape shape = store.get(name).shape();
    const WeightStore::Fp8Weight w = store.get_fp8_weight(name, shape);
    Tensor x = Tensor::empty({33, shape[1]}, DType::F32, Device::CPU);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = normal(rng);
    const std::vector<float> y = ops::linear_fp8(x, w.weight, w.scale_inv).to_vector();
    const std::vector<float> want = ops::linear(x, store.get_weight(name, shape)).to_vector();
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      num += (double(y[i]) - want[i]) * (double(y[i]) - want[i]);
      den += double(want[i]) * want[i];
    }
    const double rel = std::sqrt(num / den);  // NaN fails the check below
    EXPECT_LE(rel, kGemmRelRms);
    EXPECT_GT(rel, 0.0);  // the activations went through E4M3
    worst = std::max(worst, rel);
    ++checked;
  }
  std::printf("[fp8] v3_fp8: %d FP8 projections, worst rel_rms %.4f (bound %.4f)\n", checked, worst,
              kGemmRelRms);
  EXPECT_GT(checked, 20);
}

TEST(ModelFp8, LogitsWithinE4M3BoundOfDequantisedModelAndTransformers) {
  const Reference ref = load_reference();
  const std::unique_ptr<Model> fp8 = Model::load(kDir.string());
  const std::unique_ptr<Model> plain = Model::load(kDir.string(), kDequantised);
  const std::vector<float> got = fp8->forward(ref.input_ids).to_vector();
  const std::vector<float> dequantised = plain->forward(ref.input_ids).to_vector();
  ASSERT_EQ(got.size(), ref.logits.size());
  ASSERT_EQ(dequantised.size(), ref.logits.size());
  double sq = 0;
  for (float v : ref.logits) sq += double(v) * v;
  const double rms = std::sqrt(sq / double(ref.logits.size()));
  const std::pair<const char*, const std::vector<float>*> refs[] = {{"dequantised", &dequantised},
                                                                    {"transformers", &ref.logits}};
  for (const auto& [name, want] : refs) {
    const Errors e = compare(got, *want, ref.rows, ref.vocab);
    const double bound = kModelRelRms + (name == std::string("transformers") ? 1e-4 / rms : 0.0);
    std::printf(
        "[fp8] v3_fp8 FP8 weights vs %-12s max_abs %.3e rel_rms %.3e (bound %.4f) "
        "argmax %lld/%lld\n",
        name, e.max_abs, e.rel_rms, bound,
        static_cast<long long>(e.decisive_rows - e.argmax_mismatches),
        static_cast<long long>(e.decisive_rows));
    EXPECT_LE(e.rel_rms, bound) << name;
    // Not a copy of the dequantised model: the activations really went through E4M3.
    EXPECT_GT(e.rel_rms, 1e-4) << name;
    // (No argmax check: no row's top-1 margin here exceeds 2·max_abs, ≈ 3.6, so none is decisive.)
  }
  // The dequantised model is the transformers model (the conformance test's 1e-4).
  EXPECT_LE(compare(dequantised, ref.logits, ref.rows, ref.vocab).max_abs, 1e-4);

  // MTP depth 1 runs the main model and then the MTP block (its projections FP8 too): fifteen
  // quantised GEMMs in series, so 15 · 0.036 (measured ≈ 0.25).
  const std::vector<float> mtp = fp8->forward_mtp(ref.input_ids, 1).to_vector();
  const std::vector<float> mtp_plain = plain->forward_mtp(ref.input_ids, 1).to_vector();
  ASSERT_EQ(mtp.size(), ref.mtp_logits.size());
  ASSERT_EQ(mtp_plain.size(), ref.mtp_logits.size());
  const std::pair<const char*, const std::vector<float>*> mtp_refs[] = {
      {"dequantised", &mtp_plain}, {"transformers", &ref.mtp_logits}};
  for (const auto& [name, want] : mtp_refs) {
    const Errors e = compare(mtp, *want, ref.rows - 1, ref.vocab);
    const double bound =
        15 * kGemmRelRms + (name == std::string("transformers") ? 1e-4 / rms : 0.0);
    std::printf("[fp8] v3_fp8 FP8 MTP logits vs %-12s max_abs %.3e rel_rms %.3e (bound %.4f)\n",
                name, e.max_abs, e.rel_rms, bound);
    EXPECT_LE(e.rel_rms, bound) << "MTP vs " << name;
    EXPECT_GT(e.rel_rms, 1e-4) << "MTP vs " << name;
  }
}

// The cached path of the FP8 model follows its full forward: each row's activations are quantised
// per row (1×128 tiles), so splitting the tokens into steps changes only float noise, which can
// move an E4M3 rounding now and then: held to one GEMM's bound (measured ≈ 3e-7).
TEST(ModelFp8, CachedForwardFollowsFullForward) {
  const Reference ref = load_reference();
  const std::unique_ptr<Model> fp8 = Model::load(kDir.string());
  const std::vector<float> full = fp8->forward(ref.input_ids).to_vector();
  const std::unique_ptr<KVCache> cache = fp8->new_cache(ref.rows);
  std::vector<float> cached;
  const size_t prompt = ref.input_ids.size() / 2;
  const std::vector<int32_t> head(ref.input_ids.begin(), ref.input_ids.begin() + long(prompt));
  for (float v : fp8->forward(head, *cache).to_vector()) cached.push_back(v);
  for (size_t i = prompt; i < ref.input_ids.size(); ++i)
    for (float v : fp8->forward({ref.input_ids[i]}, *cache).to_vector()) cached.push_back(v);
  ASSERT_EQ(cached.size(), full.size());
  const Errors e = compare(cached, full, ref.rows, ref.vocab);
  std::printf("[fp8] v3_fp8 FP8 cached vs full max_abs %.3e rel_rms %.3e\n", e.max_abs, e.rel_rms);
  EXPECT_LE(e.rel_rms, kGemmRelRms);
  EXPECT_EQ(e.argmax_mismatches, 0);
}

// A kept-FP8 projection whose weight_scale_inv is missing or misshaped: the error names the
// tensor (and the dequantising load names it too).
TEST(ModelFp8, BrokenScaleIsAnErrorNamingTheTensor) {
  const WeightStore store = WeightStore::open(kDir.string());
  const std::string victim = "model.layers.0.self_attn.o_proj.weight";
  for (const bool drop : {true, false}) {
    SCOPED_TRACE(drop ? "scale missing" : "scale misshaped ([3, 3], expected [1, 2])");
    const fs::path dir = fs::temp_directory_path() /
                         ("dseek_fp8_scale_" + std::to_string(::getpid()) + (drop ? "_d" : "_s"));
    fs::create_directories(dir);
    fs::copy_file(kDir / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : store.names()) {
      if (name == victim + "_scale_inv") {
        if (drop) continue;
        tensors.emplace_back(name, Tensor::from_vector(std::vector<float>(9, 1.0f), {3, 3}));
        continue;
      }
      tensors.emplace_back(name, store.get(name));
    }
    save_safetensors((dir / "model.safetensors").string(), tensors);
    for (const Placement& placement : {Placement(), kDequantised}) {
      std::string message;
      try {
        Model::load(dir.string(), placement);
      } catch (const Error& e) {
        message = e.what();
      }
      EXPECT_NE(message.find(victim), std::string::npos) << message;
    }
    fs::remove_all(dir);
  }
}

// A checkpoint whose FP8 blocks are 64×64 (quantization_config.weight_block_size): the FP8 GEMM
// takes 128×128 blocks only, so even the default placement dequantises it, with the config's
// block size. The checkpoint is v3_fp8 with every 128×128 scale repeated over its four 64×64
// sub-blocks: the same weights, so the same logits as v3_fp8 dequantised.
TEST(ModelFp8, OtherBlockSizesAreDequantisedWithTheConfigBlockSize) {
  const WeightStore store = WeightStore::open(kDir.string());
  const fs::path dir = fs::temp_directory_path() / ("dseek_fp8_b64_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ifstream in(kDir / "config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config["quantization_config"]["weight_block_size"] = {64, 64};
    std::ofstream(dir / "config.json") << config.dump(2);
  }
  const std::string suffix = "_scale_inv";
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : store.names()) {
    const Tensor t = store.get(name);
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      tensors.emplace_back(name, t);
      continue;
    }
    const Shape w = store.get(name.substr(0, name.size() - suffix.size())).shape();
    const int64_t rows = (w[0] + 63) / 64, cols = (w[1] + 63) / 64;
    const std::vector<float> s128 = t.to_vector();
    std::vector<float> s64(size_t(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        s64[size_t(i * cols + j)] = s128[size_t((i / 2) * t.size(1) + j / 2)];
    tensors.emplace_back(name, Tensor::from_vector(s64, {rows, cols}));
  }
  save_safetensors((dir / "model.safetensors").string(), tensors);

  const Reference ref = load_reference();
  const std::unique_ptr<Model> model = Model::load(dir.string());  // Fp8Weights::Keep
  const Transformer& t = as_transformer(*model);
  EXPECT_FALSE(dynamic_cast<const Mla&>(t.block(0).attention()).o_proj().fp8());
  ASSERT_NE(t.block(0).mlp(), nullptr);
  EXPECT_FALSE(t.block(0).mlp()->fp8());
  const std::vector<float> got = model->forward(ref.input_ids).to_vector();
  const std::vector<float> want =
      Model::load(kDir.string(), kDequantised)->forward(ref.input_ids).to_vector();
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(compare(got, want, ref.rows, ref.vocab).max_abs, 0.0);  // the same weights
  fs::remove_all(dir);
}

namespace {

std::string last_line(const std::string& text) {
  std::stringstream ss(text);
  std::string line, last;
  while (std::getline(ss, line))
    if (!line.empty()) last = line;
  return last;
}

std::string join(const std::vector<int32_t>& ids, const char* sep) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : sep) + std::to_string(id);
  return s;
}

}  // namespace

// `dseek generate` on the FP8 checkpoint: by default the FP8 model's greedy tokens (as the
// library's generate gives them), and with --dequantize-fp8 transformers' greedy continuation.
TEST(ModelFp8, GenerateCliRunsOnFp8Checkpoint) {
  const Reference ref = load_reference();
  const int64_t n = 12;
  const std::string args = "generate --model " + kDir.string() + " --ids " +
                           join(ref.greedy_prompt, ",") + " -n " + std::to_string(n) +
                           " --greedy --print-ids";
  const CliRun fp8_run = run_dseek_shell(args);
  ASSERT_EQ(fp8_run.exit_code, 0) << fp8_run.err;
  const std::unique_ptr<Model> model = Model::load(kDir.string());
  GenerationOptions options;
  options.max_new_tokens = n;
  options.sampling.temperature = 0.0f;
  const GenerationResult expected = generate(*model, ref.greedy_prompt, options);
  ASSERT_FALSE(expected.ids.empty());
  EXPECT_EQ(last_line(fp8_run.out), join(expected.ids, " "));

  const CliRun plain_run = run_dseek_shell(args + " --dequantize-fp8");
  ASSERT_EQ(plain_run.exit_code, 0) << plain_run.err;
  const std::vector<int32_t> want(ref.greedy_continuation.begin(),
                                  ref.greedy_continuation.begin() + n);
  EXPECT_EQ(last_line(plain_run.out), join(want, " "));
  int64_t same = 0;
  for (size_t i = 0; i < expected.ids.size() && i < want.size(); ++i)
    same += expected.ids[i] == want[i];
  std::printf("[fp8] v3_fp8 greedy: FP8 model agrees with transformers on %lld of %lld tokens\n",
              static_cast<long long>(same), static_cast<long long>(n));
}
