// An FP8 checkpoint on the GPU with its weights kept as FP8 (the default placement): the v3_fp8
// fixture's dense projections must stay F8_E4M3 on the device (ops::linear_fp8 → the CUDA
// quantize_fp8 + fp8_gemm), and the GPU model's logits must follow the CPU FP8 model's, full
// forward and cached decode. The CPU FP8 model itself is held to the dequantised model and to
// transformers in tests/test_model_fp8.cpp.
//
// Bounds. The GPU and CPU quantise nearly the same activations (f32 noise of a different
// summation order, ~1e-6 relative), so only an element sitting on an E4M3 rounding boundary can
// round the other way, moving by one E4M3 ulp (2^-3 of the value): rare, so with f32 activations
// the logits must agree to well inside one GEMM's E4M3 error (2^-4/√3 ≈ 0.036 relative RMS,
// test_model_fp8.cpp), while a path that skipped FP8 (dequantised weights: ≈ 0.155) or broke it
// fails. bf16 activations (2^-9 relative steps) move about one element in 32 across an E4M3
// boundary, ~0.013 relative RMS per GEMM, which the model amplifies about sixfold (0.026 per GEMM
// became 0.155 in the logits on the CPU): ~0.1 expected, 0.3 allowed. That bound would not catch
// a model that dequantised instead; the dtype checks on the device weights do.
// Both kernel families run (grouped_kernels.h): the plain FP8 kernels, and on a Hopper the FP8
// tensor cores (cuBLASLt, the wgmma kernel), whose ~14-bit accumulation flips more codes than f32
// noise does (measured 0.031 relative RMS on an H200, f32): still inside one GEMM's E4M3 error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend_harness.h"
#include "grouped_kernels.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model_fixtures.h"

namespace dseek::backend_test {
namespace {

namespace fs = std::filesystem;

constexpr double kF32RelRms = 0.0625 / 1.7320508075688772;  // one GEMM's E4M3 error
constexpr double kBf16RelRms = 0.3;

const fs::path kDir = dseek::testing::fixtures_root() / "v3_fp8";

std::vector<int32_t> fixture_ids() {
  std::ifstream in(kDir / "reference.json");
  return nlohmann::json::parse(in).at("input_ids").get<std::vector<int32_t>>();
}

double rel_rms(const std::vector<float>& got, const std::vector<float>& want) {
  double d2 = 0, w2 = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    double d = double(got[i]) - double(want[i]);
    if (!std::isfinite(d)) d = std::numeric_limits<double>::infinity();
    d2 += d * d;
    w2 += double(want[i]) * double(want[i]);
  }
  return std::sqrt(d2 / std::max(w2, 1e-30));
}

void expect_rel(const char* what, DType act, const std::vector<float>& got,
                const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double bound = act == DType::F32 ? kF32RelRms : kBf16RelRms;
  const double e = rel_rms(got, want);
  std::printf("[backend] model_fp8 v3_fp8 %-4s %-28s rel_rms %.2e bound %.2e %s\n",
              act == DType::F32 ? "f32" : "bf16", what, e, bound, e <= bound ? "ok" : "FAIL");
  EXPECT_LE(e, bound) << what << " " << dtype_name(act);
}

// Prefill half, then one token at a time; the logits rows as host f32.
std::vector<float> cached_run(Model& model, const std::vector<int32_t>& ids) {
  const std::unique_ptr<KVCache> cache = model.new_cache(int64_t(ids.size()));
  std::vector<float> out;
  const size_t prompt = ids.size() / 2;
  for (float v : model.forward({ids.begin(), ids.begin() + long(prompt)}, *cache).to_vector())
    out.push_back(v);
  for (size_t i = prompt; i < ids.size(); ++i)
    for (float v : model.forward({ids[i]}, *cache).to_vector()) out.push_back(v);
  return out;
}

}  // namespace

TEST(BackendModelFp8, GpuFp8ModelFollowsCpuFp8Model) {
  DSEEK_REQUIRE_CUDA();
  const std::vector<int32_t> ids = fixture_ids();
  const std::unique_ptr<Model> cpu = Model::load(kDir.string());
  const std::vector<float> cpu_full = cpu->forward(ids).to_vector();
  for (const GroupedKernel& k : grouped_kernels()) {
    const UseGroupedKernel use(k);
    std::printf("[backend] model_fp8 kernels: %s\n", k.label);
    for (DType act : kActDtypes) {
      const std::unique_ptr<Model> gpu = Model::load(kDir.string(), Placement{Device::CUDA, act});
      const auto& t = dynamic_cast<const Transformer&>(*gpu);
      const auto& mla = dynamic_cast<const Mla&>(t.block(0).attention());
      EXPECT_EQ(mla.o_proj().weight.dtype(), DType::F8_E4M3);
      EXPECT_TRUE(mla.o_proj().weight.is_cuda());
      EXPECT_TRUE(mla.o_proj().scale_inv.is_cuda());
      ASSERT_NE(t.block(0).mlp(), nullptr);
      EXPECT_TRUE(t.block(0).mlp()->fp8());
      const std::vector<float> full = gpu->forward(ids).to_vector();
      expect_rel("full vs cpu fp8 full", act, full, cpu_full);
      expect_rel("cached decode vs gpu full", act, cached_run(*gpu, ids), full);
    }
  }
}

// A NaN reaching an FP8 projection at inference on the GPU (here: in the embedding row of the
// first token, in a copy of the fixture) is an error naming the activation, reported once the
// forward is done (ops/fp8_nan_check.h) and before a cached forward advances the cache.
TEST(BackendModelFp8, NanActivationIsAnErrorNamingTheTensor) {
  DSEEK_REQUIRE_CUDA();
  const std::vector<int32_t> ids = fixture_ids();
  const fs::path dir = fs::temp_directory_path() / "dseek_fp8_nan_fixture";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kDir / "config.json", dir / "config.json");
  const std::shared_ptr<SafetensorsFile> file =
      SafetensorsFile::open((kDir / "model.safetensors").string());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, info] : file->tensors()) {
    Tensor t = file->get(name).clone();
    if (name == "model.embed_tokens.weight") {
      std::vector<float> v = t.to_vector();
      v[size_t(int64_t(ids[0]) * t.size(1) + 2)] = std::nanf("");
      t = Tensor::from_vector(v, t.shape()).to(t.dtype());
    }
    tensors.emplace_back(name, t);
  }
  save_safetensors((dir / "model.safetensors").string(), tensors);
  const std::unique_ptr<Model> gpu = Model::load(dir.string(), Placement{Device::CUDA, DType::F32});
  auto expect_error = [](const std::function<void()>& f) {
    try {
      f();
      ADD_FAILURE() << "no error for a NaN activation";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("'linear_fp8 input'"), std::string::npos) << what;
      EXPECT_NE(what.find("NaN or Inf"), std::string::npos) << what;
    }
  };
  expect_error([&] { gpu->forward(ids); });
  const std::unique_ptr<KVCache> cache = gpu->new_cache(int64_t(ids.size()));
  expect_error([&] { gpu->forward(ids, *cache); });
  EXPECT_EQ(cache->size(), 0) << "the cache advanced past a failed forward";
  // Tokens whose rows are finite still run.
  const std::vector<int32_t> clean(ids.begin() + 1, ids.end());
  if (std::find(clean.begin(), clean.end(), ids[0]) == clean.end()) {
    const std::vector<float> logits = gpu->forward(clean).to_vector();
    EXPECT_TRUE(
        std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
  }
  fs::remove_all(dir);
}

}  // namespace dseek::backend_test
