// The absorbed MLA decode's fused steps on CUDA: mla_cache_append (one kernel for the latent's
// rms_norm, k_pe's rotation and both row scatters) against the CPU op and, bit for bit, against the
// separate GPU ops it replaces; rope_copy against the CPU and against a copy and rope_inplace. Both
// activation dtypes, both cache dtypes, both rope layouts, positions near 0 and far out, scattered
// slots of a cache whose other rows must come out untouched. Also the second stream (core/cuda.h
// Fork): side work ordered after the main stream's earlier work and before its later work, eagerly
// and replayed from a captured graph.
#include <algorithm>
#include <numeric>

#include "backend/backend_harness.h"
#include "ops/activation.h"
#include "ops/mla_cache.h"
#include "ops/rope.h"

namespace dseek::backend_test {
namespace {

std::vector<float> inv_freq_for(int64_t d) {
  std::vector<float> f(size_t(d / 2));
  for (int64_t j = 0; j < d / 2; ++j) f[size_t(j)] = float(std::pow(10000.0, -2.0 * j / d));
  return f;
}

struct AppendCase {
  int64_t T, r, d, R;
};

TEST(BackendOps, MlaCacheAppend) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(71);
  // A decode step's one token (V2-Lite's 512 + 64), a few tokens, a chunk, odd widths.
  const std::vector<AppendCase> cases = {
      {1, 512, 64, 300}, {5, 512, 64, 40}, {70, 512, 64, 100}, {3, 33, 6, 9}, {2, 1100, 8, 4}};
  for (DType act : kActDtypes)
    for (DType cache_dtype : {DType::F32, DType::BF16})
      for (bool interleaved : {false, true})
        for (const AppendCase& c : cases) {
          std::vector<int64_t> slot(static_cast<size_t>(c.R));
          std::iota(slot.begin(), slot.end(), 0);
          std::shuffle(slot.begin(), slot.end(), rng);
          slot.resize(size_t(c.T));
          std::vector<int64_t> pos(static_cast<size_t>(c.T));
          for (int64_t t = 0; t < c.T; ++t) pos[size_t(t)] = (t * 7919 + 3) % 70000;
          const Tensor slots = Tensor::from_i64(slot), positions = Tensor::from_i64(pos);
          const std::vector<float> f = inv_freq_for(c.d);
          const float scaling = 1.25f;
          // kv_a: a column window of a wider buffer; the weight in bf16 as checkpoints store it.
          const Tensor wide = rand({c.T, c.r + c.d + 8}, rng, 3.0f);
          const Tensor w = rand({c.r}, rng).to(DType::BF16);
          const Tensor pool = rand({c.R, c.r + c.d}, rng);
          const Tensor kv_cpu = rounded(wide, act).slice(1, 0, c.r + c.d);
          const Tensor kv_gpu = on_gpu(wide, act).slice(1, 0, c.r + c.d);
          Tensor want = rounded(pool, cache_dtype);
          Tensor got = on_gpu(pool, cache_dtype), separate = on_gpu(pool, cache_dtype);
          // The CPU works in f32: its result rounded to act, as the GPU's values are, then stored.
          Tensor want_act = rounded(pool, cache_dtype);
          ops::mla_cache_append(kv_cpu, w, 1e-6, positions, f, scaling, interleaved, want_act,
                                slots);
          want = rounded(rounded(want_act, act), cache_dtype);
          const Tensor gpu_pos = positions.to(Device::CUDA), gpu_slots = slots.to(Device::CUDA);
          const Tensor gpu_w = w.to(Device::CUDA);
          ops::mla_cache_append(kv_gpu, gpu_w, 1e-6, gpu_pos, f, scaling, interleaved, got,
                                gpu_slots);
          ops::set_mla_cache_append_fused(false);
          ops::mla_cache_append(kv_gpu, gpu_w, 1e-6, gpu_pos, f, scaling, interleaved, separate,
                                gpu_slots);
          ops::set_mla_cache_append_fused(true);
          const std::string name = fmt::format("mla_cache_append {} cache {}{}", c.T,
                                               dtype_name(cache_dtype), interleaved ? " il" : "");
          const Shape shape{c.R, c.r + c.d};
          // Two roundings (act, then the cache's) on top of the CPU's f32.
          const Tolerance tol = act == DType::BF16 || cache_dtype == DType::BF16
                                    ? Tolerance{3e-2, 2e-2}
                                    : default_tolerance(act);
          expect_close(name, shape, act, want, got, tol);
          expect_close(name + " = separate ops", shape, act, separate.to(Device::CPU), got, {0, 0});
        }
}

TEST(BackendOps, RopeCopy) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(72);
  for (DType act : kActDtypes)
    for (bool interleaved : {false, true})
      for (auto [T, H, d] :
           std::vector<std::array<int64_t, 3>>{{1, 16, 64}, {3, 128, 64}, {9, 5, 6}}) {
        std::vector<int64_t> pos(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = (t * 104729 + 11) % 160000;
        const Tensor positions = Tensor::from_i64(pos), gpu_pos = positions.to(Device::CUDA);
        const std::vector<float> f = inv_freq_for(d);
        const Tensor q = rand({T, H, 128 + d}, rng, 2.0f);
        const Tensor out = rand({T, H, 512 + d}, rng);  // q_abs: the rope part after 512 columns
        Tensor want = rounded(out, act), got = on_gpu(out, act), twice = on_gpu(out, act);
        const Tensor q_gpu = on_gpu(q, act);
        ops::rope_copy(rounded(q, act).slice(2, 128, 128 + d), want.slice(2, 512, 512 + d),
                       positions, f, 0.75f, interleaved);
        ops::rope_copy(q_gpu.slice(2, 128, 128 + d), got.slice(2, 512, 512 + d), gpu_pos, f, 0.75f,
                       interleaved);
        const std::string name =
            fmt::format("rope_copy {}x{}x{}{}", T, H, d, interleaved ? " il" : "");
        expect_close(name, {T, H, 512 + d}, act, want, got);
        // Bit for bit a copy and the in-place rotation; the source untouched.
        twice.slice(2, 512, 512 + d).copy_from(q_gpu.slice(2, 128, 128 + d));
        ops::rope_inplace(twice.slice(2, 512, 512 + d), gpu_pos, f, 0.75f, interleaved);
        expect_close(name + " = copy + rope", {T, H, 512 + d}, act, twice.to(Device::CPU), got,
                     {0, 0});
        expect_close(name + " source", {T, H, 128 + d}, act, rounded(q, act), q_gpu, {0, 0});
      }
}

// Fork: the side's work sees the main stream's earlier writes, and the main stream's work after
// join() sees the side's. Many passes over a 16 MB buffer on each stream make a missing wait show
// as wrong values. Eagerly, then captured into a graph and replayed over new inputs: side_out is
// not reset between replays, so a side branch left out of the graph shows as the old result.
TEST(BackendCuda, ForkOrdersSideWorkBetweenMainWork) {
  DSEEK_REQUIRE_CUDA();
  const bool was = cuda::branches_enabled();
  cuda::set_branches_enabled(true);
  std::mt19937 rng(73);
  const int64_t n = int64_t(1) << 22;
  const Tensor x0 = rand({n}, rng), x1 = rand({n}, rng);
  Tensor a = on_gpu(x0);
  Tensor side_out = Tensor::poisoned({n}, DType::F32, Device::CUDA);
  Tensor main_out = Tensor::poisoned({n}, DType::F32, Device::CUDA);
  // side: a·9 in eight adds; main: a·4 in three; then their sum (the same adds on the CPU).
  auto passes = [](const Tensor& x, int adds) {
    Tensor s = x.clone();
    for (int i = 0; i < adds; ++i) ops::add_inplace(s, x);
    return s;
  };
  auto step = [&] {
    cuda::Fork fork(cuda::branches_enabled());
    ASSERT_TRUE(fork.enabled());
    {
      cuda::Fork::Side side(fork);
      EXPECT_TRUE(cuda::on_side_stream());
      side_out.copy_from(passes(a, 8));  // reads a, written on the main stream before the fork
    }
    EXPECT_FALSE(cuda::on_side_stream());
    const Tensor m = passes(a, 3);
    fork.join();
    main_out.copy_from(m);
    ops::add_inplace(main_out, side_out);  // after the join: the side's result is complete
  };
  auto reference = [&](const Tensor& x) {
    Tensor m = passes(x, 3);
    ops::add_inplace(m, passes(x, 8));
    return m;
  };
  step();
  expect_close("fork eager", {n}, DType::F32, reference(x0), main_out, {0, 0});
  cuda::Graph graph;
  graph.begin_capture();
  step();
  graph.end_capture();
  for (const Tensor* x : {&x1, &x0}) {
    a.copy_from(on_gpu(*x));
    main_out.copy_from(Tensor::poisoned({n}, DType::F32, Device::CUDA));
    graph.launch();
    expect_close("fork graph", {n}, DType::F32, reference(*x), main_out, {0, 0});
  }
  cuda::set_branches_enabled(was);
}

}  // namespace
}  // namespace dseek::backend_test
