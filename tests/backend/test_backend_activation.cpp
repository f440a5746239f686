// silu_mul (forward, backward) and add_inplace on CUDA against the CPU ops. The ops allocate their
// outputs, so each kernel is also run directly into NaN-poisoned buffers: an element it failed to
// write shows up as NaN.
#include "backend/backend_harness.h"
#include "ops/activation.h"
#include "ops/cuda/cuda_ops.h"

namespace dseek::backend_test {
namespace {

const std::vector<Shape> kShapes = {{1, 7}, {3, 64}, {19, 111}, {257, 7168}};

TEST(BackendOps, SiluMul) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(21);
  for (DType act : kActDtypes) {
    for (const Shape& shape : kShapes) {
      const Tensor g = rand(shape, rng, 6.0f), u = rand(shape, rng, 2.0f);
      const Tensor want = ops::silu_mul(rounded(g, act), rounded(u, act));
      const Tensor gg = on_gpu(g, act), ug = on_gpu(u, act);
      const Tensor got = ops::silu_mul(gg, ug);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_TRUE(got.is_cuda());
      expect_close("silu_mul", shape, act, want, got);
#ifdef DSEEK_HAS_CUDA
      Tensor out = Tensor::poisoned(shape, act, Device::CUDA);
      ops::cuda::silu_mul(gg.raw(), ug.raw(), out.raw(), out.numel(), act);
      expect_close("silu_mul (poisoned out)", shape, act, want, out);
#endif
    }
  }
}

// The halves of one [T, 2I] product read in place (the GPU Mlp's stacked gate_up projection):
// rows at a stride of 2I, the same bits as the contiguous op on copies of the halves.
TEST(BackendOps, SiluMulOnRowStridedHalves) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(24);
  for (DType act : kActDtypes) {
    for (auto [T, I] : {std::pair<int64_t, int64_t>{1, 1408}, {3, 7}, {37, 2048}, {1, 1}}) {
      const Tensor gu = rand({T, 2 * I}, rng, 6.0f);
      const Tensor want = ops::silu_mul(rounded(gu, act).slice(1, 0, I).contiguous(),
                                        rounded(gu, act).slice(1, I, 2 * I).contiguous());
      const Tensor g = on_gpu(gu, act);
      const Tensor got = ops::silu_mul(g.slice(1, 0, I), g.slice(1, I, 2 * I));
      expect_close("silu_mul (row-strided halves)", {T, I}, act, want, got);
      const Tensor copies =
          ops::silu_mul(g.slice(1, 0, I).contiguous(), g.slice(1, I, 2 * I).contiguous());
      EXPECT_EQ(copies.to(DType::F32).to_vector(), got.to(DType::F32).to_vector());
    }
  }
}

TEST(BackendOps, SiluMulBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(22);
  for (DType act : kActDtypes) {
    for (const Shape& shape : kShapes) {
      const Tensor g = rand(shape, rng, 6.0f), u = rand(shape, rng, 2.0f), d = rand(shape, rng);
      const ops::SiluMulGrads want =
          ops::silu_mul_backward(rounded(g, act), rounded(u, act), rounded(d, act));
      const Tensor gg = on_gpu(g, act), ug = on_gpu(u, act), dg = on_gpu(d, act);
      const ops::SiluMulGrads got = ops::silu_mul_backward(gg, ug, dg);
      EXPECT_EQ(got.dgate.dtype(), act);
      EXPECT_TRUE(got.dgate.is_cuda() && got.dup.is_cuda());
      expect_close("silu_mul_backward dgate", shape, act, want.dgate, got.dgate);
      expect_close("silu_mul_backward dup", shape, act, want.dup, got.dup);
#ifdef DSEEK_HAS_CUDA
      Tensor dgate = Tensor::poisoned(shape, act, Device::CUDA);
      Tensor dup = Tensor::poisoned(shape, act, Device::CUDA);
      ops::cuda::silu_mul_backward(gg.raw(), ug.raw(), dg.raw(), dgate.raw(), dup.raw(),
                                   dgate.numel(), act);
      expect_close("silu_mul_backward dgate (poisoned)", shape, act, want.dgate, dgate);
      expect_close("silu_mul_backward dup (poisoned)", shape, act, want.dup, dup);
#endif
    }
  }
}

#ifdef DSEEK_HAS_CUDA
// The bf16 kernels' 8-value path (16-byte aligned arrays, whole groups of 8) against their
// one-value path (the same arrays one element off a 16-byte boundary): the same bits, for the
// forward (contiguous and row-strided), the backward and the add.
TEST(BackendOps, ElementwiseEightValuePathsMatchOneValuePaths) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(25);
  const DType bf = DType::BF16;
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{257, 7168}, {3, 64}, {33, 1408}}) {
    const int64_t n = rows * cols;
    // Each operand twice on the GPU: at the start of its buffer (aligned) and one element in.
    auto pair_of = [&](float scale) {
      const Tensor v = rounded(rand({n + 1}, rng, scale), bf);
      const Tensor at = on_gpu(v.slice(0, 0, n).contiguous(), bf);
      Tensor off = Tensor::poisoned({n + 1}, bf, Device::CUDA);
      off.slice(0, 1, n + 1).copy_from(at);
      return std::pair<Tensor, Tensor>{at, off};
    };
    auto bits = [](const Tensor& t, int64_t skip, int64_t count) {
      const std::vector<float> v = t.to(DType::F32).to_vector();
      return std::vector<float>(v.begin() + skip, v.begin() + skip + count);
    };
    auto ptr = [](const Tensor& t, int64_t k) {
      return static_cast<char*>(t.raw()) + k * 2;  // bf16 elements
    };
    const auto [g, g1] = pair_of(6.0f);
    const auto [u, u1] = pair_of(2.0f);
    const auto [d, d1] = pair_of(1.0f);
    Tensor out = Tensor::poisoned({n + 1}, bf, Device::CUDA),
           out1 = Tensor::poisoned({n + 1}, bf, Device::CUDA);
    ops::cuda::silu_mul(g.raw(), u.raw(), out.raw(), n, bf);
    ops::cuda::silu_mul(ptr(g1, 1), ptr(u1, 1), ptr(out1, 1), n, bf);
    EXPECT_EQ(bits(out, 0, n), bits(out1, 1, n)) << "silu_mul " << rows << "x" << cols;
    // Row-strided: the two halves of rows of 2·(cols/2) values.
    const int64_t half = cols / 2;
    ops::cuda::silu_mul_rows(g.raw(), ptr(g, half), cols, out.raw(), rows, half, bf);
    ops::cuda::silu_mul_rows(ptr(g1, 1), ptr(g1, 1 + half), cols, ptr(out1, 1), rows, half, bf);
    EXPECT_EQ(bits(out, 0, rows * half), bits(out1, 1, rows * half))
        << "silu_mul_rows " << rows << "x" << half;
    Tensor dg = Tensor::poisoned({n + 1}, bf, Device::CUDA),
           dg1 = Tensor::poisoned({n + 1}, bf, Device::CUDA);
    Tensor du = Tensor::poisoned({n + 1}, bf, Device::CUDA),
           du1 = Tensor::poisoned({n + 1}, bf, Device::CUDA);
    ops::cuda::silu_mul_backward(g.raw(), u.raw(), d.raw(), dg.raw(), du.raw(), n, bf);
    ops::cuda::silu_mul_backward(ptr(g1, 1), ptr(u1, 1), ptr(d1, 1), ptr(dg1, 1), ptr(du1, 1), n,
                                 bf);
    EXPECT_EQ(bits(dg, 0, n), bits(dg1, 1, n)) << "silu_mul_backward dgate";
    EXPECT_EQ(bits(du, 0, n), bits(du1, 1, n)) << "silu_mul_backward dup";
    ops::cuda::add_inplace(g.raw(), u.raw(), n, bf);
    ops::cuda::add_inplace(ptr(g1, 1), ptr(u1, 1), n, bf);
    EXPECT_EQ(bits(g, 0, n), bits(g1, 1, n)) << "add_inplace";
    std::printf("[backend] elementwise 8-value paths %lldx%lld: the one-value paths' bits\n",
                (long long)rows, (long long)cols);
  }
}
#endif

TEST(BackendOps, AddInplace) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(23);
  for (DType act : kActDtypes) {
    for (const Shape& shape : kShapes) {
      const Tensor y0 = rand(shape, rng, 3.0f), x = rand(shape, rng, 3.0f);
      Tensor want = rounded(y0, act);
      ops::add_inplace(want, rounded(x, act));
      Tensor got = on_gpu(y0, act);
      ops::add_inplace(got, on_gpu(x, act));
      EXPECT_EQ(got.dtype(), act);
      expect_close("add_inplace", shape, act, want, got);
      // A strided x (columns 1.. of a wider tensor on the GPU) is gathered first.
      const int64_t rows = shape[0], D = shape[1];
      const Tensor wide = rand({rows, D + 1}, rng, 3.0f);
      Tensor want2 = rounded(y0, act);
      ops::add_inplace(want2, rounded(wide, act).slice(1, 1, D + 1));
      Tensor got2 = on_gpu(y0, act);
      ops::add_inplace(got2, on_gpu(wide, act).slice(1, 1, D + 1));
      expect_close("add_inplace (strided x)", shape, act, want2, got2);
    }
  }
  Tensor y = Tensor::zeros({2, 3}, DType::BF16, Device::CUDA);
  EXPECT_THROW(ops::add_inplace(y, Tensor::zeros({2, 3}, DType::F32, Device::CUDA)), Error);
  EXPECT_THROW(ops::add_inplace(y, Tensor::zeros({3, 2}, DType::BF16, Device::CUDA)), Error);
  EXPECT_THROW(ops::add_inplace(y, Tensor::zeros({2, 3}, DType::BF16)), Error);
}

}  // namespace
}  // namespace dseek::backend_test
