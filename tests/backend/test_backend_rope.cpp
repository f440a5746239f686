// rope (forward and backward, in place) on CUDA against the CPU ops: both layouts (rotate-half and
// interleaved), head dims from 2 to the largest supported (1024), positions near 0 and far out,
// and strided views: x is a [T, H, d] window of a wider [T, H + 2, d + 5] buffer (as q_pe sits
// inside q), whose other entries must come out untouched.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/backend_harness.h"
#include "ops/rope.h"
#include "ops/rows.h"

namespace dseek::backend_test {
namespace {

struct RopeCase {
  int64_t T, H, d, pos0;
};
const std::vector<RopeCase> kCases = {
    {1, 1, 2, 0}, {7, 3, 6, 19}, {33, 5, 40, 4093}, {257, 16, 64, 0}, {3, 2, 1024, 100000}};

std::vector<float> inv_freq_for(int64_t d) {
  std::vector<float> f(size_t(d / 2));
  for (int64_t j = 0; j < d / 2; ++j) f[size_t(j)] = float(std::pow(10000.0, -2.0 * j / d));
  return f;
}

void check_rope(bool backward) {
  std::mt19937 rng(backward ? 42 : 41);
  const std::string op = backward ? "rope_backward" : "rope";
  for (DType act : kActDtypes) {
    for (bool interleaved : {false, true}) {
      for (const RopeCase& c : kCases) {
        const Shape shape{c.T, c.H, c.d};
        const std::vector<float> inv_freq = inv_freq_for(c.d);
        const float scaling = 1.25f;
        const Tensor wide = rand({c.T, c.H + 2, c.d + 5}, rng, 2.0f);
        Tensor want = rounded(wide, act);
        Tensor got = on_gpu(wide, act);
        const Tensor want_x = want.slice(1, 1, c.H + 1).slice(2, 5, c.d + 5);
        const Tensor got_x = got.slice(1, 1, c.H + 1).slice(2, 5, c.d + 5);
        ASSERT_FALSE(got_x.is_contiguous());
        if (backward) {
          ops::rope_backward_inplace(want_x, c.pos0, inv_freq, scaling, interleaved);
          ops::rope_backward_inplace(got_x, c.pos0, inv_freq, scaling, interleaved);
        } else {
          ops::rope_inplace(want_x, c.pos0, inv_freq, scaling, interleaved);
          ops::rope_inplace(got_x, c.pos0, inv_freq, scaling, interleaved);
        }
        const std::string name =
            op + (interleaved ? " interleaved" : " half") + " pos0=" + std::to_string(c.pos0);
        expect_close(name, shape, act, want_x, got_x);
        // Everything around the window is untouched, bit for bit.
        expect_close(name + " (around)", {c.T, c.H + 2, 5}, act, want.slice(2, 0, 5),
                     got.slice(2, 0, 5), {0, 0});
        expect_close(name + " (other heads)", {c.T, 1, c.d + 5}, act, want.slice(1, 0, 1),
                     got.slice(1, 0, 1), {0, 0});
        expect_close(name + " (other heads)", {c.T, 1, c.d + 5}, act,
                     want.slice(1, c.H + 1, c.H + 2), got.slice(1, c.H + 1, c.H + 2), {0, 0});
      }
    }
  }
}

TEST(BackendOps, Rope) {
  DSEEK_REQUIRE_CUDA();
  check_rope(false);
}

TEST(BackendOps, RopeBackward) {
  DSEEK_REQUIRE_CUDA();
  check_rope(true);
}

// The backward is the forward's transpose: rope_backward(rope(x)) = scaling²·x, on the GPU too.
TEST(BackendOps, RopeBackwardUndoesForward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(43);
  for (bool interleaved : {false, true}) {
    const Tensor x = rand({9, 4, 64}, rng);
    const std::vector<float> inv_freq = inv_freq_for(64);
    Tensor y = on_gpu(x);
    ops::rope_inplace(y, 77, inv_freq, 0.5f, interleaved);
    ops::rope_backward_inplace(y, 77, inv_freq, 0.5f, interleaved);
    std::vector<float> want = x.to_vector();
    for (float& v : want) v *= 0.25f;
    expect_close(interleaved ? "rope round trip interleaved" : "rope round trip half", {9, 4, 64},
                 DType::F32, Tensor::from_vector(want, {9, 4, 64}), y);
  }
}

// Per-row positions (continuous batching) on a strided window, both layouts and dtypes.
TEST(BackendOps, RopeAtPerRowPositions) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(44);
  const int64_t T = 37, H = 4, d = 64;
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = (t * 7919) % 5000;  // scattered, not sorted
  const Tensor positions = Tensor::from_i64(pos);
  for (DType act : kActDtypes)
    for (bool interleaved : {false, true}) {
      const Tensor wide = rand({T, H, d + 8}, rng, 2.0f);
      Tensor want = rounded(wide, act);
      Tensor got = on_gpu(wide, act);
      ops::rope_inplace(want.slice(2, 8, d + 8), positions, inv_freq_for(d), 1.25f, interleaved);
      ops::rope_inplace(got.slice(2, 8, d + 8), positions.to(Device::CUDA), inv_freq_for(d), 1.25f,
                        interleaved);
      expect_close(interleaved ? "rope positions interleaved" : "rope positions half",
                   {T, H, d + 8}, act, want, got);
    }
}

// The paged cache's batched write: rows to scattered slots of a column window of the pool, in the
// pool's dtype, every other entry untouched.
TEST(BackendOps, ScatterRows) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(45);
  for (DType act : kActDtypes)
    for (int64_t width : {1, 3, 64, 576}) {
      const int64_t R = 300, N = 41, cols = width + 7;
      std::vector<int64_t> slots(static_cast<size_t>(R));
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), rng);
      slots.resize(size_t(N));
      const Tensor rows = Tensor::from_i64(slots);
      const Tensor pool = rand({R, cols}, rng), src = rand({N, width}, rng);
      Tensor want = rounded(pool, act), got = on_gpu(pool, act);
      ops::scatter_rows(want.slice(1, 5, 5 + width), rounded(src, act), rows);
      ops::scatter_rows(got.slice(1, 5, 5 + width), on_gpu(src, act), rows.to(Device::CUDA));
      expect_close("scatter_rows w=" + std::to_string(width), {R, cols}, act, want, got, {0, 0});
    }
}

}  // namespace
}  // namespace dseek::backend_test
