// Training on the GPU, the optimizer half (ops/adamw.h, train/param.h, train/optimizer.h): the
// fused multi-tensor AdamW against the CPU over several steps on many tensors of odd sizes (decay
// and no decay, a buffer, tensors across chunk boundaries, one past the kernel's grid), the
// clipping norm and scaled gradients, ParamSet::to and back, bf16 compute copies rounded on the
// GPU, zero_grad, AdamW state through a checkpoint; and `dseek train --device cuda` against
// `--device cpu` on the same tiny corpus (loss curves, the GPU checkpoint resumed on the CPU).
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/backend_harness.h"
#include "cli_util.h"
#include "core/cuda.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "ops/adamw.h"
#include "ops/embedding.h"
#include "ops/fp8.h"
#include "ops/grad_rows.h"
#include "ops/split_master.h"
#include "split_master_cases.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/param.h"

namespace dseek::backend_test {
namespace {

namespace fs = std::filesystem;
using dseek::testing::CliRun;
using dseek::testing::run_dseek;
using dseek::testing::slurp;
using train::AdamW;
using train::AdamWConfig;
using train::Param;
using train::ParamSet;

struct Spec {
  std::string name;
  Shape shape;
  bool trainable, decay;
  float grad_scale;  // gradients of several magnitudes, as real layers have
};

// Sizes around the kernels' chunk of 16384 elements (one element, one chunk exactly, one past it,
// several chunks), 1-, 2- and 3-D, decay and no decay, a router (no bf16 copy) and a buffer.
const std::vector<Spec> kSpecs = {
    {"model.embed_tokens.weight", {257, 67}, true, true, 1e-2f},
    {"model.layers.0.input_layernorm.weight", {67}, true, false, 1.0f},
    {"model.layers.0.mlp.gate.weight", {8, 67}, true, true, 0.5f},
    {"model.layers.0.mlp.gate.e_score_correction_bias", {8}, false, false, 0.0f},
    {"model.layers.0.mlp.up_proj.weight", {1, 1}, true, true, 3.0f},
    {"model.layers.0.mlp.down_proj.weight", {33, 1001}, true, true, 1e-3f},
    {"model.layers.0.self_attn.o_proj.weight", {128, 128}, true, true, 0.2f},
    {"model.layers.0.self_attn.q_proj.bias", {5}, true, false, 1.0f},
    {"lm_head.weight", {3, 16385}, true, true, 2e-2f},
    {"model.layers.0.mlp.experts.w", {7, 3, 5}, true, true, 1.0f},
};

// The same parameters (values drawn from `seed`) in a fresh ParamSet on the CPU.
ParamSet make_params(const std::vector<Spec>& specs, uint32_t seed) {
  std::mt19937 rng(seed);
  ParamSet ps;
  for (const Spec& s : specs) ps.add(s.name, rand(s.shape, rng), s.trainable, s.decay);
  // Untied (lm_head has its own matrix): the embedding is looked up only, as
  // TrainModel::init_params marks it.
  if (ps.has("model.embed_tokens.weight")) ps.at("model.embed_tokens.weight").lookup_only = true;
  return ps;
}

// The same random gradient into both sets (the second may live on the GPU).
void set_same_grads(ParamSet& a, ParamSet& b, const std::vector<Spec>& specs, std::mt19937& rng) {
  for (const Spec& s : specs) {
    if (!s.trainable) continue;
    const Tensor g = rand(s.shape, rng, s.grad_scale);
    train::copy_values(a.at(s.name).grad, g, s.name);
    train::copy_values(b.at(s.name).grad, g, s.name);
  }
}

// Elements of two tensors (any device) whose f32 bits are equal.
size_t bit_identical(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  size_t same = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i)
    same += std::memcmp(&x[i], &y[i], sizeof(float)) == 0;
  return same;
}

// Raw bytes of a tensor (any device). Compared with EXPECT_TRUE(a == b): EXPECT_EQ would print
// both (large) strings on a failure.
std::string bytes_of(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  return std::string(static_cast<const char*>(h.raw()), h.nbytes());
}

const Tolerance kMasterTolerance{1e-7, 1e-6};  // the brief's bound: 1e-6 relative

// Both optimizers from the same start over six steps of fresh gradients and changing learning
// rates; masters and moments compared after every step. The GPU runs the CPU's f32 operations in
// the same order (ops/adamw.h), so beyond the 1e-6 bound they are expected to agree bit for bit.
// Both moment dtypes (optim.moment_dtype f32 and bf16).
TEST(BackendOptim, FusedAdamWMatchesCpu) {
  DSEEK_REQUIRE_CUDA();
  for (DType moments : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(moments));
    ParamSet cpu = make_params(kSpecs, 31), gpu = make_params(kSpecs, 31);
    gpu.to(Device::CUDA);
    AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
    config.moment_dtype = moments;
    AdamW opt_cpu(cpu, config), opt_gpu(gpu, config);
    const std::vector<float> buffer = cpu.value(kSpecs[3].name).to_vector();
    std::mt19937 rng(32);
    const double lrs[] = {1e-2, 3e-2, 2e-2, 0.0, 5e-3, 1e-2};
    for (int t = 0; t < 6; ++t) {
      set_same_grads(cpu, gpu, kSpecs, rng);
      opt_cpu.step(lrs[t]);
      opt_gpu.step(lrs[t]);
      const auto state_cpu = opt_cpu.state_tensors(), state_gpu = opt_gpu.state_tensors();
      ASSERT_EQ(state_cpu.size(), state_gpu.size());
      size_t same = 0, total = 0;
      for (const Param& p : cpu.all()) {
        const Tensor& got = gpu.at(p.name).value;
        ASSERT_TRUE(got.is_cuda()) << p.name;
        expect_close("adamw value " + p.name, p.value.shape(), DType::F32, p.value, got,
                     kMasterTolerance);
        same += bit_identical(p.value, got);
        total += size_t(p.value.numel());
      }
      for (size_t i = 0; i < state_cpu.size(); ++i) {
        ASSERT_EQ(state_cpu[i].first, state_gpu[i].first);
        ASSERT_TRUE(state_gpu[i].second.is_cuda()) << state_gpu[i].first;
        expect_close("adamw " + state_cpu[i].first, state_cpu[i].second.shape(), DType::F32,
                     state_cpu[i].second, state_gpu[i].second, kMasterTolerance);
        same += bit_identical(state_cpu[i].second, state_gpu[i].second);
        total += size_t(state_cpu[i].second.numel());
      }
      std::printf(
          "[backend] adamw (%s moments) step %d: %zu of %zu master and moment elements "
          "bit-identical\n",
          std::string(dtype_name(moments)).c_str(), t + 1, same, total);
      EXPECT_EQ(same, total) << "step " << t + 1 << ": the GPU no longer runs the CPU's operations";
      if (moments == DType::BF16) {  // the state's f32 copies hold bf16 values
        for (const auto& [name, m] : state_gpu) {
          EXPECT_TRUE(bytes_of(m) == bytes_of(m.to(DType::BF16).to(DType::F32))) << name;
        }
      }
    }
    EXPECT_EQ(opt_gpu.step_count(), 6);
    EXPECT_EQ(gpu.value(kSpecs[3].name).to_vector(), buffer);  // the buffer is never touched
  }
}

// bf16 gradients (ParamSet::bf16_expert_grads; here every gradient, of every size and path):
// the update reads them as their f32 values, so masters and moments are those of f32 gradients
// holding the same values, on the GPU (whole and split masters) and on the CPU; the gradient
// norm's sum and the clip's scaling read them too.
TEST(BackendOptim, AdamWReadsBf16GradientsAsTheirF32Values) {
  DSEEK_REQUIRE_CUDA();
  const auto bf16_grads = [](ParamSet& ps) {
    for (Param& p : ps.all())
      if (p.trainable) p.grad = Tensor::zeros(p.grad.shape(), DType::BF16, p.grad.device());
  };
  for (const bool split : {false, true}) {
    SCOPED_TRACE(split ? "split masters" : "whole masters");
    ParamSet cpu = make_params(kSpecs, 41), gpu = make_params(kSpecs, 41),
             ref = make_params(kSpecs, 41);
    gpu.to(Device::CUDA);
    ref.to(Device::CUDA);
    for (ParamSet* ps : {&cpu, &gpu, &ref}) {
      ps->set_compute_dtype(DType::BF16);
      if (split) ps->split_masters();
    }
    bf16_grads(cpu);
    bf16_grads(gpu);
    AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
    config.moment_dtype = DType::BF16;
    AdamW opt_cpu(cpu, config), opt_gpu(gpu, config), opt_ref(ref, config);
    std::mt19937 rng(42);
    for (int t = 0; t < 3; ++t) {
      for (const Spec& s : kSpecs) {
        if (!s.trainable) continue;
        const Tensor g = rand(s.shape, rng, s.grad_scale).to(DType::BF16).to(DType::F32);
        for (ParamSet* ps : {&cpu, &gpu, &ref}) train::copy_values(ps->at(s.name).grad, g, s.name);
      }
      std::vector<Tensor> g16, g32;
      for (const Param& p : gpu.all())
        if (p.trainable) g16.push_back(p.grad);
      for (const Param& p : ref.all())
        if (p.trainable) g32.push_back(p.grad);
      const double sum16 = ops::sum_of_squares(g16), sum32 = ops::sum_of_squares(g32);
      EXPECT_EQ(sum16, sum32) << "step " << t + 1 << ": Σ g² of bf16 against f32 gradients";
      if (t == 1) {  // the clip's scaling: rounded back to bf16 from the f32 product
        ops::scale_inplace(g16, 0.3f);
        ops::scale_inplace(g32, 0.3f);
        for (const Tensor& g : g32) g.copy_from(g.to(DType::BF16).to(DType::F32));
        std::vector<Tensor> gc;
        for (const Param& p : cpu.all())
          if (p.trainable) gc.push_back(p.grad);
        ops::scale_inplace(gc, 0.3f);
      }
      opt_cpu.step(1e-2);
      opt_gpu.step(1e-2);
      opt_ref.step(1e-2);
      size_t same = 0, same_cpu = 0, total = 0;
      for (const Param& p : ref.all()) {
        const Tensor want = train::master_value(p), got = train::master_value(gpu.at(p.name)),
                     host = train::master_value(cpu.at(p.name));
        same += bit_identical(want, got);
        same_cpu += bit_identical(host, got);
        total += size_t(want.numel());
      }
      const auto s_ref = opt_ref.state_tensors(), s_gpu = opt_gpu.state_tensors(),
                 s_cpu = opt_cpu.state_tensors();
      for (size_t i = 0; i < s_ref.size(); ++i) {
        same += bit_identical(s_ref[i].second, s_gpu[i].second);
        same_cpu += bit_identical(s_cpu[i].second, s_gpu[i].second);
        total += size_t(s_ref[i].second.numel());
      }
      std::printf(
          "[backend] adamw, bf16 gradients (%s) step %d: %zu of %zu bit-identical to f32 "
          "gradients, %zu to the CPU's\n",
          split ? "split" : "whole", t + 1, same, total, same_cpu);
      EXPECT_EQ(same, total) << "step " << t + 1;
      EXPECT_EQ(same_cpu, total) << "step " << t + 1;
    }
  }
}

// One tensor larger than the kernels' grid (4096 blocks × 16384 elements), so blocks loop over
// chunks; two steps.
TEST(BackendOptim, FusedAdamWLargeTensorLoopsOverChunks) {
  DSEEK_REQUIRE_CUDA();
  const std::vector<Spec> specs = {{"big.weight", {4099, 16384 + 3}, true, true, 1e-2f},
                                   {"small.weight", {3}, true, false, 1.0f}};
  ParamSet cpu = make_params(specs, 41), gpu = make_params(specs, 41);
  gpu.to(Device::CUDA);
  AdamW opt_cpu(cpu, AdamWConfig{}), opt_gpu(gpu, AdamWConfig{});
  std::mt19937 rng(42);
  for (int t = 0; t < 2; ++t) {
    set_same_grads(cpu, gpu, specs, rng);
    opt_cpu.step(1e-2);
    opt_gpu.step(1e-2);
  }
  for (const Spec& s : specs) {
    expect_close("adamw large " + s.name, s.shape, DType::F32, cpu.value(s.name), gpu.value(s.name),
                 kMasterTolerance);
    EXPECT_EQ(bit_identical(cpu.value(s.name), gpu.value(s.name)), size_t(shape_numel(s.shape)))
        << s.name;
  }
}

// The fused step of training (trainer.cpp): clipping as AdamW::step's grad_scale and the bf16
// compute copies re-rounded inside the step, on the GPU, against the unfused CPU sequence
// (clip_grad_norm scaling the gradients, step, refresh_compute): every master, moment and copy
// bit for bit, over three steps with clipping active.
TEST(BackendOptim, FusedClipAndComputeCopiesMatchUnfusedCpu) {
  DSEEK_REQUIRE_CUDA();
  ParamSet cpu = make_params(kSpecs, 81), gpu = make_params(kSpecs, 81);
  cpu.set_compute_dtype(DType::BF16);
  gpu.set_compute_dtype(DType::BF16);
  gpu.to(Device::CUDA);
  const AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  AdamW opt_cpu(cpu, config), opt_gpu(gpu, config);
  std::mt19937 rng(82);
  for (int t = 0; t < 3; ++t) {
    set_same_grads(cpu, gpu, kSpecs, rng);
    const double n_cpu = train::clip_grad_norm(cpu, 0.5);
    opt_cpu.step(1e-2);
    cpu.refresh_compute();
    const double n_gpu = train::grad_norm(gpu);
    const float factor = train::clip_factor(n_gpu, 0.5);
    ASSERT_LT(factor, 1.0f);  // clipping is active
    EXPECT_EQ(factor, train::clip_factor(n_cpu, 0.5));
    opt_gpu.step(1e-2, factor);
    size_t copies = 0;
    for (const Param& p : cpu.all()) {
      const Param& q = gpu.at(p.name);
      EXPECT_TRUE(bytes_of(q.value) == bytes_of(p.value)) << "step " << t + 1 << " " << p.name;
      ASSERT_EQ(q.compute.defined(), p.compute.defined()) << p.name;
      if (!p.compute.defined()) continue;
      EXPECT_TRUE(bytes_of(q.compute) == bytes_of(p.compute))
          << "step " << t + 1 << " compute copy of " << p.name;
      ++copies;
    }
    EXPECT_GT(copies, 3u);
    const auto state_cpu = opt_cpu.state_tensors(), state_gpu = opt_gpu.state_tensors();
    for (size_t i = 0; i < state_cpu.size(); ++i)
      EXPECT_TRUE(bytes_of(state_gpu[i].second) == bytes_of(state_cpu[i].second))
          << "step " << t + 1 << " " << state_cpu[i].first;
  }
  std::printf("[backend] adamw fused clip + bf16 copies: 3 steps bit-identical to the CPU\n");
}

// Every parameter of `specs` on the GPU against the CPU's after step `step`, bit for bit (value,
// gradient, compute copy, zero flag), the last queued first: read through ParamSet::at, which
// must wait for an update still in flight.
void expect_params_as_cpu(ParamSet& cpu, ParamSet& gpu, const std::vector<Spec>& specs, int step) {
  for (auto it = specs.rbegin(); it != specs.rend(); ++it) {
    const Param& p = cpu.at(it->name);
    const Param& q = gpu.at(it->name);
    EXPECT_TRUE(bytes_of(q.value) == bytes_of(p.value)) << "step " << step << " " << p.name;
    if (p.grad.defined()) {
      EXPECT_TRUE(bytes_of(q.grad) == bytes_of(p.grad)) << "step " << step << " grad of " << p.name;
    }
    ASSERT_EQ(q.compute.defined(), p.compute.defined()) << p.name;
    if (p.compute.defined()) {
      EXPECT_TRUE(bytes_of(q.compute) == bytes_of(p.compute))
          << "step " << step << " compute copy of " << p.name;
    }
    EXPECT_EQ(q.grad_zero, p.grad_zero) << p.name;
  }
}

// The two optimizers' moments (state_tensors, which waits for an update in flight), bit for bit.
void expect_moments_as_cpu(const AdamW& opt_cpu, const AdamW& opt_gpu, int step) {
  const auto state_cpu = opt_cpu.state_tensors(), state_gpu = opt_gpu.state_tensors();
  ASSERT_EQ(state_cpu.size(), state_gpu.size());
  for (size_t i = 0; i < state_cpu.size(); ++i)
    EXPECT_TRUE(bytes_of(state_gpu[i].second) == bytes_of(state_cpu[i].second))
        << "step " << step << " " << state_cpu[i].first;
}

// AdamW::step_async: the update and the zeros queued on the background stream a layer at a time,
// against the CPU's step then zero_grad, bit for bit over three steps with clipping and bf16
// compute copies. Every tensor is read straight after the call without any synchronisation, the
// largest (the last group queued, ~0.5 ms of updating) first: ParamSet::at must make the reading
// stream wait for that parameter's update, or the copy would see it half done.
TEST(BackendOptim, StepAsyncMatchesStepAndWaitsForReaders) {
  DSEEK_REQUIRE_CUDA();
  std::vector<Spec> specs = kSpecs;
  specs.push_back({"model.layers.1.mlp.experts.big", {4096, 16384}, true, true, 1e-2f});
  ParamSet cpu = make_params(specs, 91), gpu = make_params(specs, 91);
  cpu.set_compute_dtype(DType::BF16);
  gpu.set_compute_dtype(DType::BF16);
  gpu.to(Device::CUDA);
  AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  config.moment_dtype = DType::BF16;
  AdamW opt_cpu(cpu, config), opt_gpu(gpu, config);
  std::mt19937 rng(92);
  for (int t = 0; t < 3; ++t) {
    set_same_grads(cpu, gpu, specs, rng);
    const float factor = train::clip_factor(train::grad_norm(gpu), 0.5);
    ASSERT_LT(factor, 1.0f);
    opt_cpu.step(1e-2, factor);
    cpu.zero_grad();
    opt_gpu.step_async(1e-2, factor, /*defer_overwritten=*/true);
    EXPECT_TRUE(gpu.pending()) << "step " << t + 1 << ": nothing was left in flight";
    expect_params_as_cpu(cpu, gpu, specs, t + 1);
    EXPECT_FALSE(gpu.pending());
    expect_moments_as_cpu(opt_cpu, opt_gpu, t + 1);
  }
  // The moments, read right after an update was queued, are that update's (state_tensors waits).
  set_same_grads(cpu, gpu, specs, rng);
  opt_cpu.step(1e-2);
  opt_gpu.step_async(1e-2, 1.0f, false);
  const auto state_cpu = opt_cpu.state_tensors(), state_gpu = opt_gpu.state_tensors();
  EXPECT_TRUE(bytes_of(state_gpu.back().second) == bytes_of(state_cpu.back().second))
      << state_cpu.back().first;
  std::printf("[backend] adamw step_async: 4 steps bit-identical to the CPU's step + zero_grad\n");
}

// AdamW::step_async with the next forward's embedding ids (next_lookup): the looked-up rows are
// updated first (ops::adamw_step_rows' listed part) and the rest of the table last, after the
// head. Three steps against the CPU's step then zero_grad, bit for bit (bf16 moments, clipping,
// compute copies), ids with repeats and in any order. The looked-up rows are read straight after
// the call through ParamSet::at_for_lookup — while the table's rest, 16 MB queued behind a 256 MB
// matrix, is still in flight — and are the CPU's; then every tensor through at(). An id out of
// range makes the update take the table whole and first (the lookup will name the id).
TEST(BackendOptim, StepAsyncUpdatesTheNextLookupsRowsFirst) {
  DSEEK_REQUIRE_CUDA();
  // (off by default until timed on a GPU)
  const ScopedSwitch on(train::lookup_rows_first, train::set_lookup_rows_first, true);
  std::vector<Spec> specs = kSpecs;
  specs[0] = {"model.embed_tokens.weight", {8192, 512}, true, true, 1e-2f};  // rows of 4s
  specs.push_back({"model.layers.1.mlp.experts.big", {4096, 16384}, true, true, 1e-2f});
  ParamSet cpu = make_params(specs, 95), gpu = make_params(specs, 95);
  cpu.set_compute_dtype(DType::BF16);
  gpu.set_compute_dtype(DType::BF16);
  gpu.to(Device::CUDA);
  AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  config.moment_dtype = DType::BF16;
  AdamW opt_cpu(cpu, config), opt_gpu(gpu, config);
  std::mt19937 rng(96);
  std::uniform_int_distribution<int32_t> id(0, 8191);
  const std::string embed = "model.embed_tokens.weight";
  for (int t = 0; t < 4; ++t) {
    std::vector<int32_t> next(300);
    for (int32_t& i : next) i = id(rng);
    next[7] = next[3];             // a repeat
    if (t == 3) next[100] = 8192;  // out of range: no split
    set_same_grads(cpu, gpu, specs, rng);
    const float factor = train::clip_factor(train::grad_norm(gpu), 0.5);
    ASSERT_LT(factor, 1.0f);
    opt_cpu.step(1e-2, factor);
    cpu.zero_grad();
    opt_gpu.step_async(1e-2, factor, /*defer_overwritten=*/true, next);
    EXPECT_EQ(gpu.lookup_ready(embed), t < 3) << "step " << t + 1;  // split, or whole and first
    if (t < 3) {
      const Tensor want = ops::embedding(cpu.at(embed).value, next, DType::F32);
      const train::Param& e = gpu.at_for_lookup(embed, next);
      const Tensor got = ops::embedding(e.value, next, DType::F32);
      EXPECT_TRUE(gpu.pending()) << "step " << t + 1 << ": the table's rest was not in flight";
      EXPECT_TRUE(bytes_of(got) == bytes_of(want)) << "step " << t + 1 << ": the looked-up rows";
    }
    expect_params_as_cpu(cpu, gpu, specs, t + 1);
    expect_moments_as_cpu(opt_cpu, opt_gpu, t + 1);
  }
  std::printf(
      "[backend] adamw step_async, next lookup's rows first: 4 steps bit-identical to "
      "the CPU's step + zero_grad\n");
}

// Split masters (ops/split_master.h) on the GPU: the split and join kernels give the CPU's bits on
// random f32 patterns, the special ones (±0, subnormals, ±inf, NaNs, the largest finite, low halves
// of 0x7fff, 0x8000 and 0x8001) and an odd length (the kernel's scalar tail); join(split(x)) = x.
// Then the update of split masters (step_async, bf16 moments, clipping on) against the CPU's step
// of the same split set and against a whole-master set: masters, moments and copies bit for bit
// over three steps (the copies are the masters' high halves).
TEST(BackendOptim, SplitMastersMatchCpuAndStepLikeWholeOnes) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(131);
  const std::vector<float> values = testing::split_master_cases(132, 100000);
  const Tensor cpu_value = Tensor::from_vector(values, {int64_t(values.size())});
  const Shape shape = cpu_value.shape();
  Tensor high = Tensor::poisoned(shape, DType::BF16), low = Tensor::poisoned(shape, DType::BF16);
  ops::split_master(cpu_value, high, low);
  const Tensor gpu_value = cpu_value.to(Device::CUDA);
  Tensor ghigh = Tensor::poisoned(shape, DType::BF16, Device::CUDA);
  Tensor glow = Tensor::poisoned(shape, DType::BF16, Device::CUDA);
  ops::split_master(gpu_value, ghigh, glow);
  EXPECT_TRUE(bytes_of(ghigh) == bytes_of(high));
  EXPECT_TRUE(bytes_of(glow) == bytes_of(low));
  const Tensor joined = ops::join_master(ghigh, glow);
  EXPECT_TRUE(bytes_of(joined) == bytes_of(ops::join_master(high, low)));
  testing::expect_masters_back(values, joined.to_vector().data());

  // The update. "cpu": split on the CPU; "gpu": split on the GPU; "whole": unsplit on the GPU.
  std::vector<Spec> specs = kSpecs;
  specs.push_back({"model.layers.1.mlp.experts.big", {512, 1030}, true, true, 1e-2f});
  ParamSet cpu = make_params(specs, 141), gpu = make_params(specs, 141),
           whole = make_params(specs, 141);
  for (ParamSet* ps : {&cpu, &gpu, &whole}) ps->set_compute_dtype(DType::BF16);
  gpu.to(Device::CUDA);
  whole.to(Device::CUDA);
  const int64_t split = cpu.split_masters();
  EXPECT_GT(split, 3);
  EXPECT_EQ(gpu.split_masters(), split);
  EXPECT_EQ(gpu.split_masters(), 0);  // split already
  EXPECT_TRUE(gpu.masters_split());
  EXPECT_FALSE(whole.masters_split());
  AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  config.moment_dtype = DType::BF16;
  AdamW opt_cpu(cpu, config), opt_gpu(gpu, config), opt_whole(whole, config);
  std::mt19937 grads(142);
  for (int t = 0; t < 3; ++t) {
    set_same_grads(cpu, gpu, specs, grads);
    for (const Spec& sp : specs)
      if (sp.trainable) train::copy_values(whole.at(sp.name).grad, gpu.at(sp.name).grad, sp.name);
    const float factor = train::clip_factor(train::grad_norm(gpu), 0.5);
    ASSERT_LT(factor, 1.0f);
    opt_cpu.step(1e-2, factor);
    opt_gpu.step_async(1e-2, factor, /*defer_overwritten=*/false);
    opt_whole.step_async(1e-2, factor, /*defer_overwritten=*/false);
    for (const Spec& sp : specs) {
      const Param& c = cpu.at(sp.name);
      const Param& g = gpu.at(sp.name);
      const Param& w = whole.at(sp.name);
      ASSERT_EQ(g.split(), c.split()) << sp.name;
      EXPECT_EQ(g.split(), w.compute.defined()) << sp.name;
      const Tensor master = train::master_value(g);
      EXPECT_TRUE(bytes_of(master) == bytes_of(train::master_value(c)))
          << "step " << t + 1 << " " << sp.name;
      EXPECT_TRUE(bytes_of(master) == bytes_of(w.value)) << "step " << t + 1 << " " << sp.name;
      if (g.split()) {
        EXPECT_TRUE(bytes_of(g.compute) == bytes_of(c.compute)) << "step " << t + 1 << sp.name;
        EXPECT_TRUE(bytes_of(g.low) == bytes_of(c.low)) << "step " << t + 1 << sp.name;
        // The copy the forward multiplies is the master rounded (half away from zero).
        const std::vector<float> m = master.to_vector();
        const std::vector<uint16_t> h = [&] {
          const Tensor x = g.compute.to(Device::CPU);
          const auto* p = static_cast<const uint16_t*>(x.raw());
          return std::vector<uint16_t>(p, p + x.numel());
        }();
        size_t wrong = 0;
        for (size_t i = 0; i < m.size(); ++i) {
          uint32_t b;
          std::memcpy(&b, &m[i], 4);
          wrong += h[i] != ops::split_high(b);
        }
        EXPECT_EQ(wrong, 0u) << sp.name;
      }
    }
    const auto sc = opt_cpu.state_tensors(), sg = opt_gpu.state_tensors(),
               sw = opt_whole.state_tensors();
    ASSERT_EQ(sc.size(), sg.size());
    for (size_t i = 0; i < sc.size(); ++i) {
      EXPECT_TRUE(bytes_of(sg[i].second) == bytes_of(sc[i].second)) << sc[i].first;
      EXPECT_TRUE(bytes_of(sg[i].second) == bytes_of(sw[i].second)) << sc[i].first;
    }
  }
  // A split master reads through master_value only; set_master_value writes both halves.
  EXPECT_THROW((void)gpu.value("lm_head.weight"), Error);
  Param& head = gpu.at("lm_head.weight");
  const Tensor fresh = rand(head.shape(), rng);
  train::set_master_value(head, fresh, "lm_head.weight");
  EXPECT_TRUE(bytes_of(train::master_value(head)) == bytes_of(fresh));
  gpu.join_masters();
  EXPECT_FALSE(gpu.masters_split());
  EXPECT_TRUE(bytes_of(gpu.value("lm_head.weight")) == bytes_of(fresh));
  std::printf("[backend] split masters: kernels = CPU on %zu patterns, 3 updates bit-identical\n",
              values.size());
}

// ops::adamw_step with FP8 images (ops/adamw.h's AdamWImage) over three steps, on the GPU and on
// the CPU, f32 and bf16 moments: matrices whose sides end in partial 128-blocks, kv_a_proj's 576
// rows, the smallest matrix allowed, beside a tensor without an image. The masters and moments are
// the plain step's bit for bit; the images, written into poisoned buffers, are the 128×128 blocks
// quantize_fp8 makes of the new masters (W's codes and scales, Wᵀ's the same transposed), the same
// on both devices. A NaN master sets the GPU's flag and is an error naming the tensor on the CPU.
TEST(BackendOptim, AdamWWritesFp8ImagesOfTheNewMasters) {
  DSEEK_REQUIRE_CUDA();
  const std::vector<Shape> shapes = {{256, 384}, {132, 200}, {4, 4}, {576, 256}, {37}};
  const auto blocks = [](int64_t n) { return (n + 127) / 128; };
  for (DType md : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(std::string("moments ") + std::string(dtype_name(md)));
    std::mt19937 rng(71);
    struct Set {
      Device device;
      bool with_images;
      std::vector<Tensor> values, grads, ms, vs;
      std::vector<ops::AdamWImage> images;
      Tensor bad;
      ops::AdamWTensors tensors;
    };
    std::vector<Set> sets = {{Device::CUDA, false, {}, {}, {}, {}, {}, {}, {}},
                             {Device::CUDA, true, {}, {}, {}, {}, {}, {}, {}},
                             {Device::CPU, true, {}, {}, {}, {}, {}, {}, {}}};
    std::vector<Tensor> start;
    for (const Shape& sh : shapes) start.push_back(rand(sh, rng));
    for (Set& set : sets) {
      std::vector<uint8_t> decay;
      for (size_t i = 0; i < shapes.size(); ++i) {
        set.values.push_back(start[i].to(set.device));
        set.grads.push_back(Tensor::zeros(shapes[i], DType::F32, set.device));
        set.ms.push_back(Tensor::zeros(shapes[i], md, set.device));
        set.vs.push_back(Tensor::zeros(shapes[i], md, set.device));
        decay.push_back(i % 2 == 0 ? 1 : 0);
        ops::AdamWImage im;
        if (set.with_images && shapes[i].size() == 2) {
          const int64_t R = shapes[i][0], C = shapes[i][1];
          im = {Tensor::poisoned({R, C}, DType::F8_E4M3, set.device),
                Tensor::poisoned({blocks(R), blocks(C)}, DType::F32, set.device),
                Tensor::poisoned({C, R}, DType::F8_E4M3, set.device),
                Tensor::poisoned({blocks(C), blocks(R)}, DType::F32, set.device)};
        }
        set.images.push_back(im);
      }
      if (set.device == Device::CUDA) set.bad = Tensor::zeros({1}, DType::I32, Device::CUDA);
      set.tensors = ops::adamw_tensors(
          set.values, set.grads, set.ms, set.vs, decay, {},
          set.with_images ? set.images : std::vector<ops::AdamWImage>{}, set.bad);
    }
    for (int step = 1; step <= 3; ++step) {
      for (size_t i = 0; i < shapes.size(); ++i) {
        const Tensor g = rand(shapes[i], rng, 0.3f);
        for (Set& set : sets) train::copy_values(set.grads[i], g, "grad");
      }
      const ops::AdamWStep s = ops::adamw_step_scalars(0.9, 0.95, 1e-8, 0.1, 1e-2, step);
      for (Set& set : sets) ops::adamw_step(set.tensors, s, 0.75f, /*short_blocks=*/step == 2);
      for (size_t i = 0; i < shapes.size(); ++i) {
        const std::string what = "step " + std::to_string(step) + " " + shape_str(shapes[i]);
        for (size_t k = 1; k < sets.size(); ++k) {
          EXPECT_TRUE(bytes_of(sets[k].values[i]) == bytes_of(sets[0].values[i])) << what;
          EXPECT_TRUE(bytes_of(sets[k].ms[i]) == bytes_of(sets[0].ms[i])) << what;
          EXPECT_TRUE(bytes_of(sets[k].vs[i]) == bytes_of(sets[0].vs[i])) << what;
        }
        if (shapes[i].size() != 2) continue;
        // The images: quantize_fp8's blocks of the new master, on each device; the GPU's and the
        // CPU's the same bits, Wᵀ's included.
        for (size_t k = 1; k < sets.size(); ++k) {
          const ops::Fp8Tensor want =
              ops::quantize_fp8(sets[k].values[i], ops::Fp8Layout::Block128x128, false, "master");
          EXPECT_TRUE(bytes_of(sets[k].images[i].q) == bytes_of(want.data)) << what;
          EXPECT_TRUE(bytes_of(sets[k].images[i].scale) == bytes_of(want.scale)) << what;
        }
        const ops::AdamWImage &g = sets[1].images[i], &c = sets[2].images[i];
        EXPECT_TRUE(bytes_of(g.q_t) == bytes_of(c.q_t)) << what;
        EXPECT_TRUE(bytes_of(g.scale_t) == bytes_of(c.scale_t)) << what;
        const Tensor qt = c.q.to(Device::CPU).transpose(0, 1).contiguous();
        EXPECT_TRUE(bytes_of(c.q_t) == bytes_of(qt)) << what;
      }
    }
    EXPECT_EQ(sets[1].bad.to(Device::CPU).data<int32_t>()[0], 0);
    // A NaN master: the GPU flags it, the CPU names the tensor.
    std::vector<float> v = start[0].to_vector();
    v[5] = std::nanf("");
    const Tensor nan_value = Tensor::from_vector(v, shapes[0]);
    train::copy_values(sets[1].values[0], nan_value, "value");
    train::copy_values(sets[2].values[0], nan_value, "value");
    const ops::AdamWStep s = ops::adamw_step_scalars(0.9, 0.95, 1e-8, 0.1, 1e-2, 4);
    ops::adamw_step(sets[1].tensors, s);
    EXPECT_EQ(sets[1].bad.to(Device::CPU).data<int32_t>()[0], 1);
    try {
      ops::adamw_step(sets[2].tensors, s);
      ADD_FAILURE() << "no error for a NaN master with an FP8 image";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tensor 0 [256, 384]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("NaN or Inf"), std::string::npos) << e.what();
    }
  }
}

// Gradient row flags on the GPU (ops/grad_rows.h) against the CPU ops: the zeroing of the flagged
// rows (the unflagged ones hold NaN and must not be written), the sum of their squares (the NaN
// rows not read; the same value up to the order of sums), and the embedding's backward setting
// exactly its tokens' flags — rows of whole quads and not, over several sizes.
TEST(BackendOptim, GradRowsOpsMatchCpu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(61);
  for (const Shape& shape : {Shape{1000, 64}, Shape{257, 67}, Shape{3, 2048}, Shape{102, 1}}) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t rows = shape[0], cols = shape[1];
    Tensor g = rand(shape, rng, 1.0f);
    Tensor flags = Tensor::empty({rows}, DType::U8);
    float* gp = g.data<float>();
    uint8_t* f = flags.data<uint8_t>();
    for (int64_t r = 0; r < rows; ++r) {
      f[r] = rng() % 5 == 0 || r == rows - 1;
      if (!f[r])
        for (int64_t j = 0; j < cols; ++j)
          gp[r * cols + j] = std::numeric_limits<float>::quiet_NaN();
    }
    const Tensor g_gpu = g.to(Device::CUDA), flags_gpu = flags.to(Device::CUDA);
    double want = 0.0;
    ops::sum_of_squares_flagged_rows(g, flags, &want);
    Tensor slot = Tensor::poisoned({1}, DType::I64, Device::CUDA);  // a double's 8 bytes
    ops::sum_of_squares_flagged_rows(g_gpu, flags_gpu, static_cast<double*>(slot.raw()));
    double got = 0.0;
    dseek::cuda::copy_to_host(&got, slot.raw(), sizeof(double));
    EXPECT_GT(want, 0.0);
    EXPECT_NEAR(got, want, 1e-12 * want);
    ops::zero_flagged_rows(g, flags);
    ops::zero_flagged_rows(g_gpu, flags_gpu);
    EXPECT_TRUE(bytes_of(g_gpu) == bytes_of(g)) << "zeroed rows (NaN rows kept) differ";
    EXPECT_TRUE(bytes_of(flags_gpu) == std::string(size_t(rows), '\0'));
  }
  // The embedding's backward: every token's row flagged, no other; the sums as the CPU's.
  const int64_t V = 5000, D = 96;
  std::vector<int32_t> ids;
  for (int i = 0; i < 700; ++i) ids.push_back(int32_t(rng() % 400) * 11 % int32_t(V));
  const Tensor dy = rand({int64_t(ids.size()), D}, rng, 1.0f);
  Tensor table_cpu = Tensor::zeros({V, D}), flags_cpu = Tensor::zeros({V}, DType::U8);
  Tensor table_gpu = Tensor::zeros({V, D}, DType::F32, Device::CUDA);
  Tensor flags_gpu = Tensor::zeros({V}, DType::U8, Device::CUDA);
  ops::embedding_backward_accumulate(ids, dy, table_cpu, flags_cpu);
  ops::embedding_backward_accumulate(ids, dy.to(Device::CUDA), table_gpu, flags_gpu);
  EXPECT_TRUE(bytes_of(flags_gpu) == bytes_of(flags_cpu));
  expect_close("embedding backward with flags", table_cpu.shape(), DType::F32, table_cpu, table_gpu,
               kMasterTolerance);
}

// AdamW on the GPU reads no gradient row whose flag is 0, and the step's zeroing writes only the
// flagged rows. The GPU's unflagged rows of a matrix with rows of whole quads hold NaN, which a
// read would spread into the masters; the CPU's hold the zeros the flags promise. Three steps
// through step_async (one or two quads a thread, as DSEEK_UPDATE_PAIRS says) against the CPU's
// step and zero_grad, masters and moments bit for bit; after each, the flagged rows are zero,
// every flag is clear and the NaN rows were not written. A matrix whose rows are not whole quads
// reads every row (its unflagged rows hold zeros on both sides). Both moment dtypes.
TEST(BackendOptim, AdamWSkipsUnflaggedGradientRows) {
  DSEEK_REQUIRE_CUDA();
  const std::vector<Spec> specs = {{"model.embed_tokens.weight", {3000, 68}, true, true, 1e-2f},
                                   {"odd.weight", {50, 67}, true, true, 1.0f},
                                   {"model.norm.weight", {68}, true, false, 1.0f}};
  for (DType moments : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(moments));
    ParamSet cpu = make_params(specs, 51), gpu = make_params(specs, 51);
    gpu.to(Device::CUDA);
    gpu.track_grad_rows(specs[0].name);
    gpu.track_grad_rows(specs[1].name);
    AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
    config.moment_dtype = moments;
    AdamW opt_cpu(cpu, config), opt_gpu(gpu, config);
    std::mt19937 rng(52);
    const double lrs[] = {1e-2, 3e-2, 2e-2};
    for (int t = 0; t < 3; ++t) {
      std::vector<uint8_t> flagged;  // the embedding's flags this step
      for (const Spec& s : specs) {
        const Tensor g = rand(s.shape, rng, s.grad_scale);
        Param& p = gpu.at(s.name);
        if (!p.grad_rows.defined()) {
          p.grad.copy_from(g.to(Device::CUDA));
          cpu.at(s.name).grad.copy_from(g);
          continue;
        }
        const int64_t rows = s.shape[0], cols = s.shape[1];
        Tensor flags = Tensor::empty({rows}, DType::U8), g_gpu = g.clone();
        float* gc = g.data<float>();
        float* gd = g_gpu.data<float>();
        for (int64_t r = 0; r < rows; ++r) {
          flags.data<uint8_t>()[r] = rng() % 10 == 0 || r == t;
          if (flags.data<uint8_t>()[r]) continue;
          for (int64_t j = 0; j < cols; ++j) {
            gc[r * cols + j] = 0.0f;
            gd[r * cols + j] = cols % 4 == 0 ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
          }
        }
        if (s.name == specs[0].name)
          flagged.assign(flags.data<uint8_t>(), flags.data<uint8_t>() + rows);
        p.grad.copy_from(g_gpu.to(Device::CUDA));
        p.grad_rows.copy_from(flags.to(Device::CUDA));
        cpu.at(s.name).grad.copy_from(g);
      }
      opt_cpu.step(lrs[t]);
      cpu.zero_grad();
      opt_gpu.step_async(lrs[t], 1.0f, /*defer_overwritten=*/true);
      for (const Param& p : cpu.all())
        EXPECT_TRUE(bytes_of(gpu.at(p.name).value) == bytes_of(p.value)) << p.name << " step " << t;
      const auto state_cpu = opt_cpu.state_tensors(), state_gpu = opt_gpu.state_tensors();
      ASSERT_EQ(state_cpu.size(), state_gpu.size());
      for (size_t i = 0; i < state_cpu.size(); ++i)
        EXPECT_TRUE(bytes_of(state_gpu[i].second) == bytes_of(state_cpu[i].second))
            << state_cpu[i].first << " step " << t;
      const Param& e = gpu.at(specs[0].name);
      EXPECT_TRUE(bytes_of(e.grad_rows) == std::string(flagged.size(), '\0'));
      const std::vector<float> after = e.grad.to_vector();
      const int64_t cols = specs[0].shape[1];
      size_t kept_nan = 0;
      for (size_t r = 0; r < flagged.size(); ++r)
        for (int64_t j = 0; j < cols; ++j) {
          const float v = after[r * size_t(cols) + size_t(j)];
          if (flagged[r]) {
            EXPECT_EQ(v, 0.0f) << "row " << r;
          } else {
            kept_nan += std::isnan(v) ? 1 : 0;
          }
        }
      EXPECT_EQ(kept_nan, size_t(std::count(flagged.begin(), flagged.end(), 0)) * size_t(cols))
          << "the zeroing wrote rows that were not flagged";
      EXPECT_EQ(gpu.at("odd.weight").grad.to_vector(),
                std::vector<float>(size_t(specs[1].shape[0] * specs[1].shape[1]), 0.0f));
    }
  }
}

// The clipping norm and the scaled gradients: clipping off, a limit above the norm (gradients
// untouched) and one below it (scaled on the GPU).
TEST(BackendOptim, ClipGradNormMatchesCpu) {
  DSEEK_REQUIRE_CUDA();
  ParamSet cpu = make_params(kSpecs, 51), gpu = make_params(kSpecs, 51);
  gpu.to(Device::CUDA);
  std::mt19937 rng(52);
  for (double max_norm : {0.0, 1e6, 0.5}) {
    set_same_grads(cpu, gpu, kSpecs, rng);
    std::vector<std::string> before;
    for (const Param& p : gpu.all())
      if (p.trainable) before.push_back(bytes_of(p.grad));
    const double n_cpu = train::clip_grad_norm(cpu, max_norm);
    const double n_gpu = train::clip_grad_norm(gpu, max_norm);
    std::printf("[backend] clip_grad_norm max_norm %-6g cpu %.17g gpu %.17g\n", max_norm, n_cpu,
                n_gpu);
    ASSERT_GT(n_cpu, 1.0);  // so that 0.5 clips
    // Both sum squares in double, only in another order.
    EXPECT_NEAR(n_gpu, n_cpu, 1e-12 * n_cpu) << "max_norm " << max_norm;
    size_t k = 0;
    for (const Param& p : cpu.all()) {
      if (!p.trainable) continue;
      const Tensor& got = gpu.at(p.name).grad;
      if (max_norm == 0.0 || max_norm > n_cpu) {
        EXPECT_TRUE(bytes_of(got) == before[k]) << p.name << ": unclipped gradients changed";
      } else {
        expect_close("clip grad " + p.name, p.grad.shape(), DType::F32, p.grad, got, {1e-12, 1e-6});
      }
      ++k;
    }
  }
  // The reduction is deterministic: the same bits twice.
  std::vector<Tensor> grads;
  for (const Param& p : gpu.all())
    if (p.trainable) grads.push_back(p.grad);
  const double first = ops::sum_of_squares(grads), second = ops::sum_of_squares(grads);
  EXPECT_EQ(std::memcmp(&first, &second, sizeof(double)), 0);
}

// sum_of_squares and scale_inplace over many chunks (more than the 1024 threads of the final sum
// and more than the grid), with an empty tensor among them, and over nothing at all.
TEST(BackendOptim, SumOfSquaresOverManyChunks) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(61);
  const std::vector<Tensor> cpu = {rand({4097 * 16384 + 5}, rng), rand({0}, rng), rand({9}, rng)};
  std::vector<Tensor> gpu;
  for (const Tensor& t : cpu) gpu.push_back(t.to(Device::CUDA));
  const double want = ops::sum_of_squares(cpu), got = ops::sum_of_squares(gpu);
  std::printf("[backend] sum_of_squares [67M, 0, 9] cpu %.17g gpu %.17g\n", want, got);
  // Both sum squares in f64, in different orders: ~sqrt(n)·eps relative for 67M terms.
  EXPECT_NEAR(got, want, 1e-10 * want);
  ops::scale_inplace(cpu, 0.37f);
  ops::scale_inplace(gpu, 0.37f);
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_TRUE(bytes_of(gpu[i]) == bytes_of(cpu[i])) << i;
  EXPECT_EQ(ops::sum_of_squares({Tensor::empty({0}, DType::F32, Device::CUDA)}), 0.0);
  EXPECT_EQ(ops::sum_of_squares({}), 0.0);
}

// ops::SumOfSquaresParts: the tensors' sums of squares added in parts, in scattered order, some on
// the background stream, then finished: sum_of_squares's bits on the GPU and on the CPU. Tensors
// across chunk boundaries, an empty one, a single element; a tensor added twice is an error.
TEST(BackendOptim, SumOfSquaresInPartsIsSumOfSquares) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(62);
  const std::vector<Shape> shapes = {{16384}, {3, 5461}, {0}, {1}, {40000}, {7, 9}, {16385}, {2}};
  for (Device device : {Device::CUDA, Device::CPU}) {
    std::vector<Tensor> tensors;
    for (const Shape& sh : shapes) tensors.push_back(rand(sh, rng, 0.5f).to(device));
    const double want = ops::sum_of_squares(tensors);
    ops::SumOfSquaresParts parts(tensors);
    parts.add(4, 6);  // a middle run first
    uint64_t mark = 0;
    if (device == Device::CUDA) {
      cuda::Background background;
      parts.add(0, 1);
      parts.add(7, 8);
      mark = background.mark();
    } else {
      parts.add(0, 1);
      parts.add(7, 8);
    }
    try {
      parts.add(5, 7);
      ADD_FAILURE() << "no error for a tensor added twice";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tensor 5 added twice"), std::string::npos) << e.what();
    }
    const double got = parts.finish(mark);  // adds 1..3 and 6
    std::printf("[backend] sum_of_squares in parts (%s) %.17g, whole %.17g\n",
                std::string(device_name(device)).c_str(), got, want);
    EXPECT_EQ(std::memcmp(&got, &want, sizeof(double)), 0) << got << " vs " << want;

    // Two tensors' sum from their writer (a slot on the device, written on the main stream):
    // the same total up to the order of the sums.
    ops::SumOfSquaresParts with_writer(tensors);
    double* slot = with_writer.external({6, 0});
    const double written = ops::sum_of_squares({tensors[6], tensors[0]});
    if (device == Device::CUDA)
      cuda::copy_to_device(slot, &written, sizeof(double));
    else
      *slot = written;
    with_writer.add(1, 3);
    const double total = with_writer.finish();
    std::printf("[backend] sum_of_squares with a writer's sum (%s) %.17g, whole %.17g\n",
                std::string(device_name(device)).c_str(), total, want);
    EXPECT_NEAR(total, want, 1e-13 * want);
  }
}

// ParamSet::to(cuda) and back keeps every value; the bf16 compute copies exist for the same
// tensors and hold the CPU's rounding, also after refresh_compute on the GPU; zero_grad clears
// on the device.
TEST(BackendOptim, ParamSetToCudaAndBack) {
  DSEEK_REQUIRE_CUDA();
  ParamSet cpu = make_params(kSpecs, 71), gpu = make_params(kSpecs, 71);
  cpu.set_compute_dtype(DType::BF16);
  gpu.set_compute_dtype(DType::BF16);
  gpu.to(Device::CUDA);
  EXPECT_EQ(gpu.device(), Device::CUDA);
  EXPECT_EQ(gpu.numel(true), cpu.numel(true));
  EXPECT_EQ(gpu.numel(false), cpu.numel(false));
  for (const Param& p : gpu.all()) {
    const Param& c = cpu.at(p.name);
    EXPECT_TRUE(p.value.is_cuda()) << p.name;
    EXPECT_EQ(p.grad.defined(), c.grad.defined()) << p.name;
    if (p.grad.defined()) {
      EXPECT_TRUE(p.grad.is_cuda());
      EXPECT_EQ(p.grad.dtype(), DType::F32);
    }
    EXPECT_EQ(p.value.dtype(), DType::F32);
    EXPECT_TRUE(bytes_of(p.value) == bytes_of(c.value)) << p.name;
    ASSERT_EQ(p.compute.defined(), c.compute.defined()) << p.name;
    if (p.compute.defined()) {
      EXPECT_TRUE(p.compute.is_cuda());
      EXPECT_EQ(p.compute.dtype(), DType::BF16);
      EXPECT_TRUE(bytes_of(p.compute) == bytes_of(c.compute)) << p.name;
    }
  }
  // New masters (written on both sides), re-rounded on the GPU and on the CPU.
  std::mt19937 rng(72);
  for (const Spec& s : kSpecs) {
    const Tensor v = rand(s.shape, rng, 3.0f);
    train::copy_values(cpu.at(s.name).value, v, s.name);
    train::copy_values(gpu.at(s.name).value, v, s.name);
  }
  cpu.refresh_compute();
  gpu.refresh_compute();
  size_t copies = 0;
  for (const Param& p : gpu.all()) {
    if (!p.compute.defined()) continue;
    ++copies;
    EXPECT_TRUE(p.compute.is_cuda());
    EXPECT_TRUE(bytes_of(p.compute) == bytes_of(cpu.at(p.name).compute)) << p.name;
  }
  // Trainable, 2-D, not a router, and not the embedding: lm_head is untied, so the lookup reads
  // the embedding's master (Param::lookup_only).
  EXPECT_EQ(copies, 4u);
  EXPECT_FALSE(gpu.at("model.embed_tokens.weight").compute.defined());
  // zero_grad on poisoned gradients.
  for (Param& p : gpu.all())
    if (p.grad.defined())
      p.grad.copy_from(Tensor::poisoned(p.grad.shape(), DType::F32, Device::CUDA));
  gpu.zero_grad();
  for (const Param& p : gpu.all()) {
    if (!p.grad.defined()) continue;
    const std::vector<float> g = p.grad.to_vector();
    EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float x) { return x == 0.0f; })) << p.name;
  }
  // And back: values and compute copies as they were on the GPU.
  std::map<std::string, std::string> on_gpu;
  for (const Param& p : gpu.all()) on_gpu[p.name] = bytes_of(p.value);
  gpu.to(Device::CPU);
  EXPECT_EQ(gpu.device(), Device::CPU);
  for (const Param& p : gpu.all()) {
    EXPECT_FALSE(p.value.is_cuda()) << p.name;
    EXPECT_FALSE(p.grad.defined() && p.grad.is_cuda()) << p.name;
    EXPECT_FALSE(p.compute.defined() && p.compute.is_cuda()) << p.name;
    EXPECT_TRUE(bytes_of(p.value) == on_gpu[p.name]) << p.name;
  }
}

// AdamW follows the parameters only when told (AdamW::to); its GPU state goes through a
// checkpoint to the host and back.
TEST(BackendOptim, AdamWStateOnTheGpuThroughACheckpoint) {
  DSEEK_REQUIRE_CUDA();
  ParamSet cpu = make_params(kSpecs, 81), gpu = make_params(kSpecs, 81);
  AdamW opt_cpu(cpu, AdamWConfig{}), opt_gpu(gpu, AdamWConfig{});
  gpu.to(Device::CUDA);  // after the optimizer: its moments are still on the CPU
  try {
    opt_gpu.step(1e-3);
    FAIL() << "no error for moments on another device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("call AdamW::to after ParamSet::to"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(opt_gpu.step_count(), 0);
  opt_gpu.to(Device::CUDA);
  std::mt19937 rng(82);
  for (int t = 0; t < 3; ++t) {
    set_same_grads(cpu, gpu, kSpecs, rng);
    opt_cpu.step(1e-2);
    opt_gpu.step(1e-2);
  }
  // A checkpoint straight from the GPU tensors.
  const fs::path dir =
      fs::temp_directory_path() / ("dseek-backend-optim-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  train::CheckpointData ck;
  ck.step = 3;
  for (const Param& p : gpu.all()) ck.model.emplace_back(p.name, p.value);
  ck.optimizer = opt_gpu.state_tensors();
  ck.state = {{"step", 3}};
  const std::string saved = train::save_checkpoint(dir.string(), ck, 1);
  const train::CheckpointData loaded = train::load_checkpoint(saved);
  ASSERT_EQ(loaded.model.size(), ck.model.size());
  for (size_t i = 0; i < loaded.model.size(); ++i) {
    EXPECT_EQ(loaded.model[i].first, ck.model[i].first);
    EXPECT_FALSE(loaded.model[i].second.is_cuda());
    EXPECT_TRUE(bytes_of(loaded.model[i].second) == bytes_of(ck.model[i].second))
        << ck.model[i].first;
  }
  ASSERT_EQ(loaded.optimizer.size(), ck.optimizer.size());
  std::map<std::string, Tensor> state;
  for (size_t i = 0; i < loaded.optimizer.size(); ++i) {
    EXPECT_TRUE(bytes_of(loaded.optimizer[i].second) == bytes_of(ck.optimizer[i].second));
    state[loaded.optimizer[i].first] = loaded.optimizer[i].second;
  }
  // Host tensors into the GPU moments of a fresh optimizer (poisoned first: every element must be
  // written), then one more step on both sides agrees with the CPU run.
  ParamSet resumed = make_params(kSpecs, 81);
  for (const auto& [name, t] : loaded.model) train::copy_values(resumed.at(name).value, t, name);
  resumed.to(Device::CUDA);
  AdamW opt_resumed(resumed, AdamWConfig{});
  for (const auto& [name, t] : opt_resumed.state_tensors())
    t.copy_from(Tensor::poisoned(t.shape(), DType::F32, Device::CUDA));
  opt_resumed.load_state(state, 3);
  for (const auto& [name, t] : opt_resumed.state_tensors()) {
    EXPECT_TRUE(t.is_cuda());
    EXPECT_TRUE(bytes_of(t) == bytes_of(state.at(name))) << name;
  }
  set_same_grads(cpu, resumed, kSpecs, rng);
  opt_cpu.step(1e-2);
  opt_resumed.step(1e-2);
  EXPECT_EQ(opt_resumed.step_count(), 4);
  for (const Param& p : cpu.all())
    expect_close("adamw resumed " + p.name, p.value.shape(), DType::F32, p.value,
                 resumed.at(p.name).value, kMasterTolerance);
  fs::remove_all(dir);
}

TEST(BackendOptim, AdamWTensorsOnTwoDevicesAreAnError) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(91);
  const Tensor a = rand({4}, rng), b = rand({4}, rng).to(Device::CUDA);
  try {
    ops::adamw_tensors({a, b}, {a, b}, {a, b}, {a, b}, {1, 1});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[adamw] tensors on different devices"), std::string::npos)
        << e.what();
  }
}

// ---- `dseek train --device cuda` ----------------------------------------------------------------

std::vector<nlohmann::json> read_metrics(const fs::path& run) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(slurp(run / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// Deterministic sentences from small word lists (as tests/test_train_cli.cpp's corpus), 40
// documents separated by "%" lines.
std::string make_corpus() {
  const char* const subjects[] = {"the cat",     "a dog",        "my friend",
                                  "the old man", "a small bird", "the teacher"};
  const char* const verbs[] = {"likes", "sees", "finds", "wants", "keeps"};
  const char* const objects[] = {"a red ball", "the green tree", "some warm bread", "the blue sea",
                                 "a long letter"};
  uint64_t x = 4242;
  auto next = [&x](size_t n) {
    x = (x * 1103515245 + 12345) % (uint64_t(1) << 31);
    return size_t((x >> 16) % n);
  };
  std::string text;
  for (int d = 0; d < 40; ++d) {
    for (int j = 0; j < 4; ++j) {
      const std::string s = subjects[next(std::size(subjects))];
      const std::string v = verbs[next(std::size(verbs))];
      const std::string o = objects[next(std::size(objects))];
      text += s + " " + v + " " + o + ".\n";
    }
    text += "%\n";
  }
  return text;
}

// A tokenizer and prepared data in a scratch directory, made through the binary.
struct TinyData {
  fs::path root;
  TinyData() {
    root = fs::temp_directory_path() / ("dseek-backend-train-" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root);
    std::ofstream(root / "corpus.txt") << make_corpus();
  }
  ~TinyData() { fs::remove_all(root); }
  // A BPE tokenizer of 384 tokens trained on the corpus, and the corpus prepared with it.
  void prepare() const {
    CliRun r = run_dseek({"tokenizer", "train", "--input", (root / "corpus.txt").string(),
                          "--separator", "%", "--vocab-size", "384", "--out", tokenizer()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run_dseek({"data", "prepare", "--tokenizer", tokenizer(), "--input",
                   (root / "corpus.txt").string(), "--separator", "%", "--out", data()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string tokenizer() const { return (root / "tok").string(); }
  std::string data() const { return (root / "data").string(); }
};

// The tiny preset, 4 sequences of 32 tokens per step, constant lr after a 2-step warm-up,
// validation and a checkpoint at the end.
std::vector<std::string> train_args(const TinyData& d, const fs::path& run, int steps,
                                    const std::string& device,
                                    const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a = {
      "train",  "--preset", "tiny",       "--tokenizer", d.tokenizer(),         "--data",
      d.data(), "--out",    run.string(), "--steps",     std::to_string(steps), "--threads",
      "2",      "--device", device};
  for (const char* set : {"data.seq_len=32", "train.batch_size=4", "data.val_fraction=0.1",
                          "optim.schedule=constant", "optim.warmup_steps=2", "eval.interval=100",
                          "eval.sequences=4", "checkpoint.interval=100"}) {
    a.push_back("--set");
    a.push_back(set);
  }
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// sqrt(Σ (x − y)² / Σ y²) over every element of two checkpoints' tensor lists (the same names,
// shapes and order expected).
double checkpoint_rel_rms(const std::vector<std::pair<std::string, Tensor>>& x,
                          const std::vector<std::pair<std::string, Tensor>>& y) {
  EXPECT_EQ(x.size(), y.size());
  double diff2 = 0, norm2 = 0;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
    EXPECT_EQ(x[i].first, y[i].first);
    EXPECT_EQ(x[i].second.shape(), y[i].second.shape()) << x[i].first;
    const std::vector<float> u = x[i].second.to_vector(), v = y[i].second.to_vector();
    for (size_t k = 0; k < std::min(u.size(), v.size()); ++k) {
      diff2 += (double(u[k]) - v[k]) * (double(u[k]) - v[k]);
      norm2 += double(v[k]) * v[k];
    }
  }
  return std::sqrt(diff2 / norm2);
}

// A multi-GPU run's metrics against one GPU's on the same global batches: each step's loss within
// 1e-4 relative (the first) or 2e-3 (later steps carry the first updates' differences), the
// gradient norm within 10× that, the same tokens, and the last validation loss within 2e-3.
void expect_trains_like(const std::vector<nlohmann::json>& one,
                        const std::vector<nlohmann::json>& other, int steps, const char* label) {
  ASSERT_EQ(one.size(), size_t(steps));
  ASSERT_EQ(other.size(), size_t(steps));
  for (int s = 0; s < steps; ++s) {
    const double want = one[s].at("loss").get<double>(), got = other[s].at("loss").get<double>();
    const double gn_want = one[s].at("grad_norm").get<double>();
    const double gn_got = other[s].at("grad_norm").get<double>();
    std::printf("[backend] step %d: loss 1 GPU %.6f, %s %.6f (rel %.1e), grad_norm %.5f / %.5f\n",
                s + 1, want, label, got, std::abs(got - want) / want, gn_want, gn_got);
    const double tol = s == 0 ? 1e-4 : 2e-3;
    EXPECT_LE(std::abs(got - want), tol * want) << "step " << s + 1;
    EXPECT_LE(std::abs(gn_got - gn_want), 10 * tol * gn_want) << "step " << s + 1;
    EXPECT_EQ(other[s].at("tokens"), one[s].at("tokens"));
  }
  const double val_one = one.back().at("val_loss").get<double>();
  EXPECT_NEAR(other.back().at("val_loss").get<double>(), val_one, 2e-3 * val_one);
}

// `dseek train --device cuda` with the next batch's embedding rows updated first
// (DSEEK_LOOKUP_ROWS_FIRST=1: the trainer peeks at its next batch, AdamW::step_async's
// next_lookup) against the same run without: the same loss and gradient norm every step and the
// same checkpoint, bit for bit (the tiny preset: an untied embedding, an MTP module that looks it
// up again).
TEST(BackendTrainCli, LookupRowsFirstGivesTheSameRun) {
  DSEEK_REQUIRE_CUDA();
  TinyData d;
  ASSERT_NO_FATAL_FAILURE(d.prepare());
  constexpr int kSteps = 5;
  const fs::path whole = d.root / "whole", rows_first = d.root / "rows_first";
  CliRun r = run_dseek(train_args(d, whole, kSteps, "cuda"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ::setenv("DSEEK_LOOKUP_ROWS_FIRST", "1", 1);  // (the child inherits it)
  r = run_dseek(train_args(d, rows_first, kSteps, "cuda"));
  ::unsetenv("DSEEK_LOOKUP_ROWS_FIRST");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<nlohmann::json> a = read_metrics(whole), b = read_metrics(rows_first);
  ASSERT_EQ(a.size(), size_t(kSteps));
  ASSERT_EQ(b.size(), size_t(kSteps));
  for (int s = 0; s < kSteps; ++s) {
    EXPECT_EQ(b[s].at("loss"), a[s].at("loss")) << "step " << s + 1;
    EXPECT_EQ(b[s].at("grad_norm"), a[s].at("grad_norm")) << "step " << s + 1;
  }
  const train::CheckpointData ca =
      train::load_checkpoint(train::find_latest_checkpoint(whole.string()));
  const train::CheckpointData cb =
      train::load_checkpoint(train::find_latest_checkpoint(rows_first.string()));
  ASSERT_EQ(ca.model.size(), cb.model.size());
  int64_t differ = 0;
  for (size_t i = 0; i < ca.model.size(); ++i) {
    const bool same = ca.model[i].second.to_vector() == cb.model[i].second.to_vector();
    differ += same ? 0 : 1;
    EXPECT_TRUE(same) << ca.model[i].first;
  }
  std::printf(
      "[backend] dseek train, next batch's embedding rows first: %d steps, %lld tensors "
      "differ\n",
      kSteps, (long long)differ);
}

// Six f32 steps on the GPU and on the CPU from the same initialisation and batches. The first
// step's loss differs only by summation order (GEMMs, attention, reductions): within 1e-4
// relative. Later steps carry the first updates' differences (AdamW's first step is about
// lr·sign(g), so gradient elements near zero can flip a whole lr step) and the odd flipped
// top-k expert: within 2e-3 relative. The GPU checkpoint then resumes on the CPU.
TEST(BackendTrainCli, GpuTrainingFollowsTheCpuAndItsCheckpointResumesOnTheCpu) {
  DSEEK_REQUIRE_CUDA();
  TinyData d;
  ASSERT_NO_FATAL_FAILURE(d.prepare());

  constexpr int kSteps = 6;
  const fs::path cpu_run = d.root / "cpu", gpu_run = d.root / "gpu";
  CliRun r = run_dseek(train_args(d, cpu_run, kSteps, "cpu"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_dseek(train_args(d, gpu_run, kSteps, "cuda"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[train] on the GPU: "), std::string::npos) << r.err;

  const std::vector<nlohmann::json> cpu = read_metrics(cpu_run), gpu = read_metrics(gpu_run);
  ASSERT_EQ(cpu.size(), size_t(kSteps));
  ASSERT_EQ(gpu.size(), size_t(kSteps));
  for (int s = 0; s < kSteps; ++s) {
    const double want = cpu[s].at("loss").get<double>(), got = gpu[s].at("loss").get<double>();
    const double gn_want = cpu[s].at("grad_norm").get<double>();
    const double gn_got = gpu[s].at("grad_norm").get<double>();
    std::printf(
        "[backend] train step %d: loss cpu %.6f gpu %.6f (rel %.1e), grad_norm cpu %.5f "
        "gpu %.5f\n",
        s + 1, want, got, std::abs(got - want) / want, gn_want, gn_got);
    const double tol = s == 0 ? 1e-4 : 2e-3;
    EXPECT_LE(std::abs(got - want), tol * want) << "step " << s + 1;
    EXPECT_LE(std::abs(gn_got - gn_want), 10 * tol * gn_want) << "step " << s + 1;
    EXPECT_EQ(gpu[s].at("lr"), cpu[s].at("lr"));
    EXPECT_EQ(gpu[s].at("tokens"), cpu[s].at("tokens"));
  }
  const double val_cpu = cpu.back().at("val_loss").get<double>();
  EXPECT_NEAR(gpu.back().at("val_loss").get<double>(), val_cpu, 2e-3 * val_cpu);

  // The GPU run's checkpoint: the CPU run's tensors (names, shapes, f32), close values.
  const std::string ck_dir = train::find_latest_checkpoint(gpu_run.string());
  ASSERT_FALSE(ck_dir.empty());
  const train::CheckpointData g = train::load_checkpoint(ck_dir);
  const train::CheckpointData c =
      train::load_checkpoint(train::find_latest_checkpoint(cpu_run.string()));
  ASSERT_EQ(g.model.size(), c.model.size());
  ASSERT_EQ(g.optimizer.size(), c.optimizer.size());
  // Relative RMS difference of all weights after six steps: the differences above, not another
  // trajectory.
  const double rel_rms = checkpoint_rel_rms(g.model, c.model);
  std::printf("[backend] weights after %d steps, gpu vs cpu: relative RMS difference %.2e\n",
              kSteps, rel_rms);
  EXPECT_LE(rel_rms, 1e-3);
  EXPECT_EQ(g.state.at("optimizer_steps"), kSteps);

  // ... which resumes on the CPU for two more steps.
  std::vector<std::string> resume = train_args(d, gpu_run, kSteps + 2, "cpu");
  resume.push_back("--resume");
  r = run_dseek(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(step 6)"), std::string::npos) << r.err;
  const std::vector<nlohmann::json> after = read_metrics(gpu_run);
  ASSERT_EQ(after.size(), size_t(kSteps + 2));
  for (const nlohmann::json& line : after)
    EXPECT_TRUE(std::isfinite(line.at("loss").get<double>())) << line;

  // Mixed precision on the GPU (bf16 activations and weight copies): the first step's loss is the
  // f32 one within bf16's rounding of the activations.
  const fs::path bf16_run = d.root / "bf16";
  r = run_dseek(train_args(d, bf16_run, 2, "cuda", {"--set", "train.compute_dtype=bf16"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[train] split masters: "), std::string::npos) << r.err;  // one GPU
  const std::vector<nlohmann::json> bf16 = read_metrics(bf16_run);
  ASSERT_EQ(bf16.size(), 2u);
  const double loss0 = cpu[0].at("loss").get<double>();
  std::printf("[backend] train step 1 bf16 on the GPU: loss %.6f (f32 cpu %.6f)\n",
              bf16[0].at("loss").get<double>(), loss0);
  EXPECT_NEAR(bf16[0].at("loss").get<double>(), loss0, 2e-2 * loss0);
  // Its checkpoint holds the split masters joined (f32, the CPU run's names and shapes, finite)
  // and resumes on the GPU.
  const train::CheckpointData b = train::load_checkpoint(train::find_latest_checkpoint(bf16_run));
  ASSERT_EQ(b.model.size(), c.model.size());
  for (size_t i = 0; i < b.model.size(); ++i) {
    EXPECT_EQ(b.model[i].first, c.model[i].first);
    ASSERT_EQ(b.model[i].second.shape(), c.model[i].second.shape()) << b.model[i].first;
    EXPECT_EQ(b.model[i].second.dtype(), DType::F32) << b.model[i].first;
    for (float x : b.model[i].second.to_vector()) ASSERT_TRUE(std::isfinite(x)) << b.model[i].first;
  }
  std::vector<std::string> bf16_resume =
      train_args(d, bf16_run, 3, "cuda", {"--set", "train.compute_dtype=bf16"});
  bf16_resume.push_back("--resume");
  r = run_dseek(bf16_resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(step 2)"), std::string::npos) << r.err;
  ASSERT_EQ(read_metrics(bf16_run).size(), 3u);

  // bf16 expert gradients (optim.expert_grad_dtype bf16), then every GEMM-written weight
  // gradient in bf16 (optim.grad_dtype bf16): the same first loss (the forward reads no
  // gradient), then the bf16 runs' within bf16's rounding of the gradients.
  for (const auto& [setting, logged] :
       {std::pair{"optim.expert_grad_dtype", "[train] bf16 expert gradients: "},
        {"optim.grad_dtype", "[train] bf16 weight gradients: "}}) {
    SCOPED_TRACE(setting);
    const fs::path grads_run = d.root / (std::string("bf16_") + setting);
    r = run_dseek(
        train_args(d, grads_run, 2, "cuda",
                   {"--set", "train.compute_dtype=bf16", "--set", std::string(setting) + "=bf16"}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find(logged), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find(std::string(logged) + "0 "), std::string::npos) << r.err;
    const std::vector<nlohmann::json> grads16 = read_metrics(grads_run);
    ASSERT_EQ(grads16.size(), 2u);
    for (int s = 0; s < 2; ++s) {
      const double want = bf16[s].at("loss").get<double>(),
                   got = grads16[s].at("loss").get<double>();
      const double gn_want = bf16[s].at("grad_norm").get<double>();
      const double gn_got = grads16[s].at("grad_norm").get<double>();
      std::printf(
          "[backend] train step %d bf16, %s bf16: loss %.6f (f32 gradients %.6f), "
          "grad_norm %.5f (%.5f)\n",
          s + 1, setting, got, want, gn_got, gn_want);
      if (s == 0) {
        EXPECT_EQ(got, want);
      }
      EXPECT_NEAR(got, want, 1e-3 * want) << "step " << s + 1;
      EXPECT_NEAR(gn_got, gn_want, 1e-2 * gn_want) << "step " << s + 1;
    }
  }

  // More ranks on a node than GPUs is an error naming the rule (where this dseek can start ranks
  // at all).
  const int too_many = cuda::device_count() + 1;
  r = run_dseek(train_args(d, d.root / "dp", 2, "cuda", {"--nproc", std::to_string(too_many)}));
  EXPECT_NE(r.exit_code, 0);
  if (r.err.find("built without MPI") != std::string::npos ||
      r.err.find("mpirun not found") != std::string::npos) {
    std::printf("[backend] --nproc %d --device cuda not tried: %s\n", too_many, r.err.c_str());
  } else if (!dist::nccl_available()) {
    EXPECT_NE(r.err.find("needs NCCL"), std::string::npos) << r.err;
  } else {
    EXPECT_NE(r.err.find("NCCL needs one GPU per rank"), std::string::npos) << r.err;
  }
}

// Data parallelism on 2 GPUs through NCCL (`dseek train --nproc 2 --device cuda`) against one
// GPU on the same global batches: the losses and gradient norms of six steps within the GPU-vs-CPU
// tolerances (each rank's GEMMs take half the rows, and the reductions add in another order), the
// validation loss too; the deterministic mode repeats bit for bit; HFReduce through pinned host
// memory trains the same; and the 2-GPU checkpoint resumes on one GPU. Skips without 2 GPUs,
// NCCL or MPI.
TEST(BackendTrainCli, TwoGpuDataParallelTrainsLikeOneGpu) {
  DSEEK_REQUIRE_CUDA();
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  if (!dist::nccl_available()) GTEST_SKIP() << "this dseek was built without NCCL";
  if (!dist::mpi_available()) GTEST_SKIP() << "this dseek was built without MPI";
  TinyData d;
  ASSERT_NO_FATAL_FAILURE(d.prepare());
  constexpr int kSteps = 6;
  const fs::path one_run = d.root / "one", two_run = d.root / "two";
  CliRun r = run_dseek(train_args(d, one_run, kSteps, "cuda"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_dseek(train_args(d, two_run, kSteps, "cuda", {"--nproc", "2"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("data parallel: 2 ranks (nccl, one GPU each)"), std::string::npos) << r.err;
  const std::vector<nlohmann::json> two = read_metrics(two_run);
  ASSERT_NO_FATAL_FAILURE(expect_trains_like(read_metrics(one_run), two, kSteps, "2 GPUs"));

  // Deterministic reductions: two runs, the same bits.
  std::vector<std::vector<nlohmann::json>> repeats;
  std::vector<train::CheckpointData> checkpoints;
  for (const char* name : {"det_a", "det_b"}) {
    r = run_dseek(
        train_args(d, d.root / name, 3, "cuda", {"--nproc", "2", "--set", "dist.deterministic=1"}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    repeats.push_back(read_metrics(d.root / name));
    checkpoints.push_back(
        train::load_checkpoint(train::find_latest_checkpoint((d.root / name).string())));
  }
  for (size_t s = 0; s < 3; ++s) {
    EXPECT_EQ(repeats[0][s].at("loss"), repeats[1][s].at("loss")) << "step " << s + 1;
    EXPECT_EQ(repeats[0][s].at("grad_norm"), repeats[1][s].at("grad_norm")) << "step " << s + 1;
  }
  ASSERT_EQ(checkpoints[0].model.size(), checkpoints[1].model.size());
  for (size_t i = 0; i < checkpoints[0].model.size(); ++i)
    EXPECT_EQ(checkpoints[0].model[i].second.to_vector(),
              checkpoints[1].model[i].second.to_vector())
        << checkpoints[0].model[i].first;

  // HFReduce: the gradients staged through pinned host memory and reduced by the CPU ranks.
  r = run_dseek(train_args(d, d.root / "hf", 3, "cuda",
                           {"--nproc", "2", "--set", "dist.all_reduce=hfreduce"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("through pinned host memory"), std::string::npos) << r.err;
  const std::vector<nlohmann::json> hf = read_metrics(d.root / "hf");
  ASSERT_EQ(hf.size(), 3u);
  for (size_t s = 0; s < 3; ++s) {
    const double want = two[s].at("loss").get<double>();
    EXPECT_LE(std::abs(hf[s].at("loss").get<double>() - want), 2e-3 * want) << "step " << s + 1;
  }

  // The 2-GPU run's checkpoint resumes on one GPU.
  std::vector<std::string> resume = train_args(d, two_run, kSteps + 2, "cuda");
  resume.push_back("--resume");
  r = run_dseek(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(step 6)"), std::string::npos) << r.err;
  EXPECT_EQ(read_metrics(two_run).size(), size_t(kSteps + 2));
}

// Expert parallelism on 2 GPUs (`dseek train --nproc 2 --expert-parallel 2 --device cuda`): each
// rank owns half of every MoE layer's routed experts, the permuted rows travel between the GPUs
// through NCCL (train/expert_exchange.h) and the experts' AdamW runs on the device; against one
// GPU on the same global batches, the losses, gradient norms and validation loss within the
// data-parallel tolerances; the checkpoint (every expert and its moments gathered on rank 0
// through NCCL) resumes on one GPU. Skips without 2 GPUs, NCCL or MPI.
TEST(BackendTrainCli, TwoGpuExpertParallelTrainsLikeOneGpu) {
  DSEEK_REQUIRE_CUDA();
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs 2 GPUs";
  if (!dist::nccl_available()) GTEST_SKIP() << "this dseek was built without NCCL";
  if (!dist::mpi_available()) GTEST_SKIP() << "this dseek was built without MPI";
  TinyData d;
  ASSERT_NO_FATAL_FAILURE(d.prepare());
  constexpr int kSteps = 6;
  const fs::path one_run = d.root / "one", ep_run = d.root / "ep";
  CliRun r = run_dseek(train_args(d, one_run, kSteps, "cuda"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_dseek(train_args(d, ep_run, kSteps, "cuda", {"--nproc", "2", "--expert-parallel", "2"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("expert parallel: 8 routed experts per MoE layer over 2 ranks"),
            std::string::npos)
      << r.err;
  ASSERT_NO_FATAL_FAILURE(
      expect_trains_like(read_metrics(one_run), read_metrics(ep_run), kSteps, "2 GPUs EP"));

  // The checkpoint holds every expert and its moments; it resumes on one GPU.
  const train::CheckpointData a =
      train::load_checkpoint(train::find_latest_checkpoint(one_run.string()));
  const train::CheckpointData b =
      train::load_checkpoint(train::find_latest_checkpoint(ep_run.string()));
  // Relative RMS differences over all weights, and over all moments (the experts' from their
  // owners): the same trajectory within the rounding the losses allow.
  const double weights = checkpoint_rel_rms(b.model, a.model);
  const double moments = checkpoint_rel_rms(b.optimizer, a.optimizer);
  std::printf("[backend] after %d steps, EP on 2 GPUs vs 1 GPU: weights %.2e, moments %.2e\n",
              kSteps, weights, moments);
  EXPECT_LE(weights, 1e-3);
  EXPECT_LE(moments, 1e-2);
  std::vector<std::string> resume = train_args(d, ep_run, kSteps + 2, "cuda");
  resume.push_back("--resume");
  r = run_dseek(resume);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("(step 6)"), std::string::npos) << r.err;
  EXPECT_EQ(read_metrics(ep_run).size(), size_t(kSteps + 2));
}

}  // namespace
}  // namespace dseek::backend_test
