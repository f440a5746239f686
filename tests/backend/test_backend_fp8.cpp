// FP8 on CUDA against the CPU twins: quantisation codes and scales bit for bit (both layouts, both
// scale rules, f32 and bf16 inputs), dequantisation, the block-scaled GEMM (with bias, f32 and bf16
// outputs) and linear_fp8; a NaN input is an error naming the tensor on the GPU too.
#include <array>
#include <cmath>
#include <cstring>

#include "backend/backend_harness.h"
#include "ops/cuda/fp8_kernels.h"
#include "ops/cuda/fp8_train_kernels.h"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/fp8.h"

namespace dseek::backend_test {
namespace {

using ops::Fp8Layout;
using ops::Fp8Tensor;

// Uniform [-1, 1] with rare ×1000 outliers and rows scaled 2^-9..2^9: scales far apart.
Tensor fp8_data(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 199);
  std::vector<float> v(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float x = u(rng) * std::ldexp(1.0f, int(r % 7) * 3 - 9);
      if (pick(rng) == 0) x *= 1000.0f;
      v[size_t(r * cols + c)] = x;
    }
  return Tensor::from_vector(v, {rows, cols});
}

const std::vector<std::pair<int64_t, int64_t>> kQuantShapes = {
    {1, 7}, {3, 128}, {5, 300}, {130, 257}, {257, 1000}};

// Byte-identical codes and bit-identical scales; prints one table line.
void expect_same_fp8(const std::string& what, const Shape& shape, DType act, const Fp8Tensor& want,
                     const Fp8Tensor& got) {
  const Tensor gd = got.data.to(Device::CPU), gs = got.scale.to(Device::CPU);
  ASSERT_EQ(gd.shape(), want.data.shape()) << what;
  ASSERT_EQ(gs.shape(), want.scale.shape()) << what;
  size_t bad_codes = 0, bad_scales = 0;
  for (int64_t i = 0; i < gd.numel(); ++i)
    bad_codes += gd.data<uint8_t>()[i] != want.data.data<uint8_t>()[i];
  for (int64_t i = 0; i < gs.numel(); ++i)
    bad_scales += std::memcmp(&gs.data<float>()[i], &want.scale.data<float>()[i], 4) != 0;
  std::printf("[backend] %-28s %-22s %-4s codes differ %zu/%lld scales differ %zu/%lld %s\n",
              what.c_str(), describe_shape(shape).c_str(), std::string(dtype_name(act)).c_str(),
              bad_codes, (long long)gd.numel(), bad_scales, (long long)gs.numel(),
              bad_codes + bad_scales ? "FAIL" : "ok");
  EXPECT_EQ(bad_codes, 0u) << what << " " << describe_shape(shape);
  EXPECT_EQ(bad_scales, 0u) << what << " " << describe_shape(shape);
}

TEST(BackendOps, QuantizeFp8BitExact) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(51);
  for (DType act : kActDtypes)
    for (Fp8Layout layout : {Fp8Layout::Tile1x128, Fp8Layout::Block128x128})
      for (bool pow2 : {false, true})
        for (auto [rows, cols] : kQuantShapes) {
          const Shape shape{rows, cols};
          const Tensor x = fp8_data(rows, cols, rng);
          const Fp8Tensor want = ops::quantize_fp8(rounded(x, act), layout, pow2, "x");
          const Fp8Tensor got = ops::quantize_fp8(on_gpu(x, act), layout, pow2, "x");
          EXPECT_TRUE(got.data.is_cuda() && got.scale.is_cuda());
          const std::string what = std::string("quantize_fp8 ") +
                                   (layout == Fp8Layout::Tile1x128 ? "1x128" : "128x128") +
                                   (pow2 ? " pow2" : "");
          expect_same_fp8(what, shape, act, want, got);
        }
}

// The 1×128 row tiles take one of two kernels by width (ops/cuda/fp8.cu): cols % 8 == 0 the wide
// one (half a warp a tile, four tiles a warp in flight), else four columns a lane. Both against
// the CPU on widths of both kinds and tile counts not a multiple of four, and the wide one over
// more tiles than its grid covers in one pass (24576 × 1408: 270,336 tiles); a NaN or Inf in
// either half-warp's tile is the error, whichever half holds it.
TEST(BackendOps, QuantizeFp8RowTileKernels) {
  DSEEK_REQUIRE_CUDA();
#ifndef DSEEK_HAS_CUDA
  GTEST_SKIP() << "the kernel switch is a CUDA entry point";
#else
  std::mt19937 rng(52);
  struct Restore {
    ~Restore() { ops::cuda::set_quantize_fp8_rows_wide(true); }
  } restore;
  for (bool wide : {true, false}) {
    ops::cuda::set_quantize_fp8_rows_wide(wide);
    for (DType act : kActDtypes)
      for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
               {1, 8}, {3, 136}, {7, 1408}, {33, 1000}, {300, 2048}, {5, 300}}) {
        const Tensor x = fp8_data(rows, cols, rng);
        expect_same_fp8(std::string("quantize_fp8 1x128 ") + (wide ? "wide" : "narrow"), x.shape(),
                        act, ops::quantize_fp8(rounded(x, act), Fp8Layout::Tile1x128, false, "x"),
                        ops::quantize_fp8(on_gpu(x, act), Fp8Layout::Tile1x128, false, "x"));
      }
    for (int64_t at : {int64_t(3), int64_t(130), int64_t(2 * 256 + 200)}) {
      std::vector<float> v(4 * 256, 0.5f);
      v[size_t(at)] = std::nanf("");
      try {
        ops::quantize_fp8(on_gpu(Tensor::from_vector(v, {4, 256}), DType::BF16),
                          Fp8Layout::Tile1x128, false, "h.mlp_in");
        FAIL() << "no error for a NaN at " << at << (wide ? " (wide)" : " (narrow)");
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'h.mlp_in'"), std::string::npos) << e.what();
      }
    }
  }
  ops::cuda::set_quantize_fp8_rows_wide(true);
  const Tensor big = fp8_data(24576, 1408, rng);
  expect_same_fp8("quantize_fp8 1x128 wide, big", big.shape(), DType::BF16,
                  ops::quantize_fp8(rounded(big, DType::BF16), Fp8Layout::Tile1x128, false, "x"),
                  ops::quantize_fp8(on_gpu(big, DType::BF16), Fp8Layout::Tile1x128, false, "x"));
#endif
}

TEST(BackendOps, QuantizeFp8ZeroTilesAndNonFinite) {
  DSEEK_REQUIRE_CUDA();
  // A zero tile gets scale 1 on the GPU as on the CPU.
  std::vector<float> v(2 * 200, 0.0f);
  for (int c = 130; c < 200; ++c) v[size_t(c)] = -0.75f;
  const Tensor x = Tensor::from_vector(v, {2, 200});
  expect_same_fp8("quantize_fp8 zero tiles", x.shape(), DType::F32,
                  ops::quantize_fp8(x, Fp8Layout::Tile1x128, false, "x"),
                  ops::quantize_fp8(on_gpu(x), Fp8Layout::Tile1x128, false, "x"));
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    v[333] = bad;
    for (Fp8Layout layout : {Fp8Layout::Tile1x128, Fp8Layout::Block128x128}) {
      try {
        ops::quantize_fp8(on_gpu(Tensor::from_vector(v, {2, 200})), layout, false, "h.attn_in");
        FAIL() << "no error for " << bad;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("[quantize_fp8] 'h.attn_in'"), std::string::npos)
            << e.what();
      }
    }
  }
  // The stream is still usable after the error.
  expect_same_fp8("quantize_fp8 after an error", x.shape(), DType::F32,
                  ops::quantize_fp8(x, Fp8Layout::Block128x128, true, "x"),
                  ops::quantize_fp8(on_gpu(x), Fp8Layout::Block128x128, true, "x"));
}

// The experts' stacked quantisation (one launch for all, ops/cuda/fp8_kernels.h) against
// quantize_fp8 of each matrix, bit for bit, and its transposed output against those codes and
// scales transposed; tails in both dimensions (260 = 2·128 + 4 rows, 388 columns), both dtypes.
TEST(BackendOps, QuantizeFp8StackMatchesEachMatrix) {
  DSEEK_REQUIRE_CUDA();
#ifdef DSEEK_HAS_CUDA
  std::mt19937 rng(57);
  const int64_t E = 3, R = 260, C = 388, rb = 3, cb = 4;
  for (DType act : kActDtypes) {
    std::vector<Tensor> xs;
    std::vector<int64_t> table;
    for (int64_t e = 0; e < E; ++e) {
      xs.push_back(on_gpu(fp8_data(R, C, rng), act));
      table.push_back(int64_t(reinterpret_cast<uintptr_t>(xs.back().raw())));
    }
    Tensor table_host = Tensor::empty({E}, DType::I64);
    std::copy(table.begin(), table.end(), table_host.data<int64_t>());
    const Tensor t = table_host.to(Device::CUDA);
    Tensor q = Tensor::poisoned({E, R, C}, DType::U8, Device::CUDA);
    Tensor s = Tensor::poisoned({E, rb, cb}, DType::F32, Device::CUDA);
    Tensor qt = Tensor::poisoned({E, C, R}, DType::U8, Device::CUDA);
    Tensor st = Tensor::poisoned({E, cb, rb}, DType::F32, Device::CUDA);
    Tensor bad_host = Tensor::empty({1}, DType::I32);
    bad_host.data<int32_t>()[0] = 0;
    Tensor bad = bad_host.to(Device::CUDA);
    ops::cuda::quantize_fp8_stack(static_cast<const void* const*>(t.raw()), act, E, R, C, false,
                                  q.data<uint8_t>(), s.data<float>(), qt.data<uint8_t>(),
                                  st.data<float>(), bad.data<int32_t>());
    const Tensor qc = q.to(Device::CPU), qtc = qt.to(Device::CPU);
    const uint8_t *qh = qc.data<uint8_t>(), *qth = qtc.data<uint8_t>();
    const std::vector<float> sh = s.to_vector(), sth = st.to_vector();
    size_t bad_codes = 0, bad_scales = 0;
    for (int64_t e = 0; e < E; ++e) {
      const Fp8Tensor want = ops::quantize_fp8(xs[size_t(e)], Fp8Layout::Block128x128, false, "w");
      const Tensor wd = want.data.to(Device::CPU), ws = want.scale.to(Device::CPU);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const uint8_t w = wd.data<uint8_t>()[r * C + c];
          bad_codes += qh[(e * R + r) * C + c] != w;
          bad_codes += qth[(e * C + c) * R + r] != w;
        }
      for (int64_t i = 0; i < rb; ++i)
        for (int64_t j = 0; j < cb; ++j) {
          const float w = ws.data<float>()[i * cb + j];
          bad_scales += std::memcmp(&sh[size_t((e * rb + i) * cb + j)], &w, 4) != 0;
          bad_scales += std::memcmp(&sth[size_t((e * cb + j) * rb + i)], &w, 4) != 0;
        }
    }
    std::printf("[backend] %-28s %-22s %-4s codes differ %zu scales differ %zu %s\n",
                "quantize_fp8_stack (+ᵀ)", describe_shape({E, R, C}).c_str(),
                std::string(dtype_name(act)).c_str(), bad_codes, bad_scales,
                bad_codes + bad_scales ? "FAIL" : "ok");
    EXPECT_EQ(bad_codes, 0u);
    EXPECT_EQ(bad_scales, 0u);
  }
#endif
}

TEST(BackendOps, DequantizeFp8) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(52);
  for (DType out : kActDtypes)
    for (Fp8Layout layout : {Fp8Layout::Tile1x128, Fp8Layout::Block128x128})
      for (auto [rows, cols] : kQuantShapes) {
        const Fp8Tensor q = ops::quantize_fp8(fp8_data(rows, cols, rng), layout, false, "x");
        const Tensor want = ops::dequantize_fp8(q);
        const Fp8Tensor qg{q.data.to(Device::CUDA), q.scale.to(Device::CUDA), layout};
        const Tensor got = ops::dequantize_fp8(qg, out);
        EXPECT_EQ(got.dtype(), out);
        // f32: one product on both sides, bit-identical; bf16: one rounding of it.
        const Tolerance tol = out == DType::F32 ? Tolerance{0, 0} : Tolerance{0, 1.0 / 256};
        expect_close(
            layout == Fp8Layout::Tile1x128 ? "dequantize_fp8 1x128" : "dequantize_fp8 128x128",
            {rows, cols}, out, want, got, tol);
      }
}

const std::vector<std::array<int64_t, 3>> kGemmShapes = {
    {1, 7, 5}, {3, 128, 64}, {17, 300, 130}, {65, 1024, 257}, {130, 2048, 300}, {256, 512, 1024}};

// GPU vs CPU GEMM: the two sum each 128-wide k-block in different orders, so they differ by at
// most ~K·2^-24·Σ_k|a·w| per element (f32), plus the bias's rounding and one bf16 rounding of
// the result (bf16 out).
// The bound is per element (Σ|a·w| from the dequantised operands): W's rows differ in size by 2^18,
// and a bound from the largest output would let errors in the small rows through.
void expect_gemm_close(const std::string& op, const Shape& shape, DType out, const Tensor& a,
                       const Tensor& w, const Tensor& want, const Tensor& got) {
  ASSERT_EQ(got.shape(), want.shape()) << op;
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  const std::vector<float> av = a.to_vector(), wv = w.to_vector(), r = want.to_vector(),
                           g = got.to_vector();
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double abs_sum = 0;
      for (int64_t k = 0; k < K; ++k)
        abs_sum += std::abs(double(av[size_t(m * K + k)]) * wv[size_t(n * K + k)]);
      const size_t i = size_t(m * N + n);
      // (+ one f32 rounding of the bias sum: |bias| ≤ 1)
      const double tol = double(K + 8) * std::ldexp(abs_sum, -24) +
                         std::ldexp(std::abs(double(r[i])) + 1.0, -23) +
                         (out == DType::BF16 ? std::ldexp(std::abs(double(r[i])), -8) : 0.0);
      const double d = std::abs(double(g[i]) - r[i]);
      const bool ok = std::isfinite(g[i]) && d <= tol;
      bad += !ok;
      const double ratio = std::isfinite(g[i]) ? d / tol : INFINITY;
      if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
  std::printf("[backend] %-28s %-22s %-4s max error/bound %.2e %s\n", op.c_str(),
              describe_shape(shape).c_str(), std::string(dtype_name(out)).c_str(), worst_ratio,
              bad ? "FAIL" : "ok");
  EXPECT_EQ(bad, 0u) << op << " " << describe_shape(shape) << ": worst at " << worst << " got "
                     << (g.empty() ? 0.f : g[worst]) << ", want " << (r.empty() ? 0.f : r[worst]);
}

TEST(BackendOps, Fp8Gemm) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(53);
  for (DType out : kActDtypes)
    for (bool with_bias : {false, true})
      for (auto [M, K, N] : kGemmShapes) {
        const Fp8Tensor qa = ops::quantize_fp8(rand({M, K}, rng), Fp8Layout::Tile1x128, false, "a");
        const Fp8Tensor qw =
            ops::quantize_fp8(fp8_data(N, K, rng), Fp8Layout::Block128x128, false, "w");
        const Tensor bias = rand({N}, rng).to(DType::BF16);
        const Tensor want = ops::fp8_gemm(qa, qw, with_bias ? &bias : nullptr);
        const Fp8Tensor qag{qa.data.to(Device::CUDA), qa.scale.to(Device::CUDA), qa.layout};
        const Fp8Tensor qwg{qw.data.to(Device::CUDA), qw.scale.to(Device::CUDA), qw.layout};
        const Tensor bias_g = bias.to(Device::CUDA);
        const Tensor got =
            ops::fp8_gemm(qag, qwg, with_bias ? &bias_g : nullptr, out, ops::Fp8GemmKernel::Plain);
        EXPECT_EQ(got.dtype(), out);
        expect_gemm_close(with_bias ? "fp8_gemm +bias" : "fp8_gemm", {M, K, N}, out,
                          ops::dequantize_fp8(qa), ops::dequantize_fp8(qw), want, got);
      }
}

// A tensor-core FP8 GEMM's output `got` against the plain kernel's `want` on the same codes. The
// tensor cores sum each 128-wide k-block in their own order and, per DeepSeek-V3 §3.3.2, keep only
// ~14 bits while doing so, before the f32 promotion. The alignment truncates each of the 32
// products of a k32 step, in one direction for terms of one sign, so an element can be off by
// 32·2^-14 = 2^-9 of its largest term: measured on an H200 up to 1.5·2^-10·Σ_k|a·w| (the wgmma
// kernel) and 0.9·2^-10 (cuBLASLt). The bound allows 2^-8·Σ_k|a·w| (the plain kernel's f32 error
// is far below) plus the output's rounding: bf16 outputs of `want` and `got`, each rounded once
// from its own f32 total, can differ by one bf16 ulp (2^-7 relative). Misplaced scales (a layout
// error) miss by O(1): the operands' rows and blocks differ in scale by up to 2^18. Returns the
// relative RMS difference (printed).
[[maybe_unused]] double expect_near_plain(const char* op, const Shape& shape, DType out,
                                          const Fp8Tensor& qa, const Fp8Tensor& qw,
                                          const Tensor& want, const Tensor& got) {
  const int64_t M = shape[0], K = shape[1], N = shape[2];
  const std::vector<float> av = ops::dequantize_fp8(qa).to_vector(),
                           wv = ops::dequantize_fp8(qw).to_vector(), r = want.to_vector(),
                           g = got.to_vector();
  size_t bad = 0;
  double worst = 0, diff2 = 0, want2 = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double abs_sum = 0;
      for (int64_t k = 0; k < K; ++k)
        abs_sum += std::abs(double(av[size_t(m * K + k)]) * wv[size_t(n * K + k)]);
      const size_t i = size_t(m * N + n);
      const double tol = std::ldexp(abs_sum, -8) +
                         std::ldexp(std::abs(double(r[i])), out == DType::BF16 ? -7 : -22);
      const double d = std::abs(double(g[i]) - r[i]);
      const bool ok = std::isfinite(g[i]) && d <= tol;
      bad += !ok;
      worst = std::max(worst, std::isfinite(g[i]) ? d / tol : INFINITY);
      diff2 += std::isfinite(d) ? d * d : INFINITY;
      want2 += double(r[i]) * double(r[i]);
    }
  const double rel_rms = std::sqrt(diff2 / std::max(want2, 1e-30));
  std::printf("[backend] %-28s %-22s %-4s max error/bound %.2e rel_rms %.2e %s\n", op,
              describe_shape(shape).c_str(), std::string(dtype_name(out)).c_str(), worst, rel_rms,
              bad ? "FAIL" : "ok");
  EXPECT_EQ(bad, 0u) << op << " " << describe_shape(shape);
  return rel_rms;
}

// cuBLASLt's block-scaled FP8 GEMM (Hopper) against the plain kernel, on the shapes it takes (K
// and N multiples of 128, no bias) and one it must refuse (N = 576, kv_a_proj's).
TEST(BackendOps, Fp8GemmCublasLtMatchesPlainKernel) {
  DSEEK_REQUIRE_CUDA();
#ifdef DSEEK_HAS_CUDA  // calls the raw CUDA entry point, which a CPU-only build does not have
  std::mt19937 rng(55);
  const bool hopper = cuda::describe().find("sm_90") != std::string::npos;
  // M multiples of 4 (taken) beside ones that are not (refused), V3's widths among them.
  const std::vector<std::array<int64_t, 3>> shapes = {
      {1, 128, 128}, {5, 512, 256}, {64, 1024, 512},   {130, 2048, 384},  {257, 7168, 1024},
      {8, 512, 576}, {4, 128, 256}, {256, 7168, 1536}, {132, 2048, 1024}, {1024, 1536, 3072}};
  for (DType out : kActDtypes)
    for (auto [M, K, N] : shapes) {
      const Fp8Tensor qa = ops::quantize_fp8(rand({M, K}, rng), Fp8Layout::Tile1x128, false, "a");
      const Fp8Tensor qw =
          ops::quantize_fp8(fp8_data(N, K, rng), Fp8Layout::Block128x128, false, "w");
      const Fp8Tensor qag{qa.data.to(Device::CUDA), qa.scale.to(Device::CUDA), qa.layout};
      const Fp8Tensor qwg{qw.data.to(Device::CUDA), qw.scale.to(Device::CUDA), qw.layout};
      const Tensor want = ops::fp8_gemm(qag, qwg, nullptr, out, ops::Fp8GemmKernel::Plain);
      Tensor got = Tensor::poisoned({M, N}, out, Device::CUDA);
      const bool ran = ops::cuda::fp8_gemm_cublaslt(
          qag.data.data<uint8_t>(), qag.scale.data<float>(), M, K, qwg.data.data<uint8_t>(),
          qwg.scale.data<float>(), N, nullptr, got.raw(), out);
      // M a multiple of 4 only (fp8_cublaslt.cpp says why).
      const bool eligible = N % 128 == 0 && M % 4 == 0;
      std::printf("[backend] fp8_gemm cuBLASLt %-22s %-4s %s\n", describe_shape({M, K, N}).c_str(),
                  std::string(dtype_name(out)).c_str(),
                  ran ? "ran" : (eligible ? "REFUSED (plain kernel runs)" : "refused, as it must"));
      if (!eligible) {
        EXPECT_FALSE(ran) << describe_shape({M, K, N}) << " " << dtype_name(out)
                          << " must take the plain kernel";
        continue;
      }
      // On an H200 the path must really run: a refusal here means the scale modes, layouts or
      // alignment are not what this cuBLAS accepts (see fp8_cublaslt.cpp).
      if (hopper) {
        EXPECT_TRUE(ran) << describe_shape({M, K, N});
      }
      if (!ran) continue;
      expect_near_plain("fp8_gemm cuBLASLt", {M, K, N}, out, qa, qw, want, got);
    }
#endif
}

// The wgmma kernel (ops/cuda/fp8_wgmma_kernels.cuh, dense form) against the plain kernel, where
// it runs (a Hopper with sm_90a code): one row, k and n tails of 16 (272, 144), kv_a_proj's
// N = 576 that cuBLASLt refuses, several row and column tiles, both output dtypes. Where cuBLASLt
// takes the shape too, the same inputs through it: the wgmma kernel's relative RMS error must
// stay within twice cuBLASLt's (the library's FP8 accumulation is the yardstick).
TEST(BackendOps, Fp8GemmWgmmaMatchesPlainKernel) {
  DSEEK_REQUIRE_CUDA();
#ifdef DSEEK_HAS_CUDA
  if (!ops::cuda::grouped_wgmma_available())
    GTEST_SKIP() << "no wgmma here (not an sm_90a build on a Hopper)";
  std::mt19937 rng(56);
  const std::vector<std::array<int64_t, 3>> shapes = {{1, 128, 128},    {5, 272, 144},
                                                      {130, 1024, 576}, {257, 640, 400},
                                                      {64, 1024, 512},  {256, 2048, 384}};
  for (DType out : kActDtypes)
    for (auto [M, K, N] : shapes) {
      const Fp8Tensor qa = ops::quantize_fp8(rand({M, K}, rng), Fp8Layout::Tile1x128, false, "a");
      const Fp8Tensor qw =
          ops::quantize_fp8(fp8_data(N, K, rng), Fp8Layout::Block128x128, false, "w");
      const Fp8Tensor qag{qa.data.to(Device::CUDA), qa.scale.to(Device::CUDA), qa.layout};
      const Fp8Tensor qwg{qw.data.to(Device::CUDA), qw.scale.to(Device::CUDA), qw.layout};
      const Tensor want = ops::fp8_gemm(qag, qwg, nullptr, out, ops::Fp8GemmKernel::Plain);
      Tensor got = Tensor::poisoned({M, N}, out, Device::CUDA);
      ops::cuda::fp8_gemm_wgmma(qag.data.data<uint8_t>(), qag.scale.data<float>(), M, K,
                                qwg.data.data<uint8_t>(), qwg.scale.data<float>(), N, got.raw(),
                                out);
      const double wgmma_rms =
          expect_near_plain("fp8_gemm wgmma", {M, K, N}, out, qa, qw, want, got);
      Tensor lt = Tensor::poisoned({M, N}, out, Device::CUDA);
      if (ops::cuda::fp8_gemm_cublaslt(qag.data.data<uint8_t>(), qag.scale.data<float>(), M, K,
                                       qwg.data.data<uint8_t>(), qwg.scale.data<float>(), N,
                                       nullptr, lt.raw(), out)) {
        const double lt_rms =
            expect_near_plain("fp8_gemm cuBLASLt (same)", {M, K, N}, out, qa, qw, want, lt);
        EXPECT_LE(wgmma_rms, 2.0 * lt_rms + 1e-7) << describe_shape({M, K, N});
      }
    }
#endif
}

#ifdef DSEEK_HAS_CUDA
// Codes [n] on the GPU: random bytes, E4M3's NaN codes (0x7F, 0xFF) replaced by zero.
Tensor random_codes(int64_t n, std::mt19937& rng) {
  Tensor t = Tensor::empty({n}, DType::F8_E4M3);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t i = 0; i < n; ++i) {
    const int b = byte(rng);
    t.data<uint8_t>()[i] = uint8_t((b & 0x7F) == 0x7F ? 0 : b);
  }
  return t.to(Device::CUDA);
}
#endif

// The FP8 GEMMs' two kinds of Hopper kernels — the warp-specialised ones loading through the
// tensor memory accelerator (fp8_tma_kernels.cuh) and the ones loading through cp.async — run the
// same products in the same order, so they must agree bit for bit. Row GEMMs dense and grouped:
// one row, k and n tails of 16, several row and column tiles, experts that are empty, of one row,
// or span tiles at offsets off the 128 grid (their tiles' boxes read the next expert's rows), both
// output dtypes. The grouped wgrad: empty experts (dW written as zeros, or kept when adding), one
// of one row, several column tiles, n and k tails, written and added. Outputs poisoned.
TEST(BackendOps, Fp8TmaKernelsEqualCpAsyncKernels) {
  DSEEK_REQUIRE_CUDA();
#ifdef DSEEK_HAS_CUDA
  if (!ops::cuda::grouped_wgmma_available())
    GTEST_SKIP() << "no wgmma here (not an sm_90a build on a Hopper)";
  std::mt19937 rng(57);
  const bool before = ops::cuda::tma_loads();
  auto run_both = [&](const std::string& what, const Shape& y_shape, DType out, auto&& gemm) {
    Tensor by_tma = Tensor::poisoned(y_shape, out, Device::CUDA);
    Tensor by_cp_async = Tensor::poisoned(y_shape, out, Device::CUDA);
    ops::cuda::set_tma_loads(true);
    gemm(by_tma.raw());
    ops::cuda::set_tma_loads(false);
    gemm(by_cp_async.raw());
    ops::cuda::set_tma_loads(before);
    const Tensor a = by_tma.to(Device::CPU), b = by_cp_async.to(Device::CPU);
    ASSERT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0)
        << what << " " << dtype_name(out) << " " << shape_str(y_shape);
    // Not a pair of poisoned arrays: every output written.
    const Tensor f = a.to(DType::F32);
    for (int64_t i = 0; i < f.numel(); ++i)
      ASSERT_TRUE(std::isfinite(f.data<float>()[i])) << what << " element " << i;
  };
  auto random_scales = [&](int64_t n) {
    std::uniform_real_distribution<float> d(0.25f, 2.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = d(rng) / 448.0f;
    return Tensor::from_vector(v, {n}).to(Device::CUDA);
  };
  for (DType out : kActDtypes) {
    for (const auto& shape : std::vector<std::array<int64_t, 3>>{
             {1, 128, 128}, {5, 272, 144}, {130, 1024, 576}, {257, 640, 400}, {300, 2048, 1408}}) {
      const int64_t M = shape[0], K = shape[1], N = shape[2];  // named: lambdas capture them
      const int64_t kb = (K + 127) / 128, nb = (N + 127) / 128;
      const Tensor a = random_codes(M * K, rng), sa = random_scales(M * kb);
      const Tensor w = random_codes(N * K, rng), sw = random_scales(nb * kb);
      run_both("fp8_gemm_wgmma", {M, N}, out, [&](void* y) {
        ops::cuda::fp8_gemm_wgmma(a.data<uint8_t>(), sa.data<float>(), M, K, w.data<uint8_t>(),
                                  sw.data<float>(), N, y, out);
      });
    }
    struct Grouped {
      int64_t K, N;
      std::vector<int64_t> offsets;
    };
    for (const Grouped& g : std::vector<Grouped>{{272, 144, {0, 0, 130, 131, 400, 533, 533}},
                                                 {2048, 1408, {0, 300, 301, 301, 700}},
                                                 {1408, 2048, {0, 1, 129, 500}}}) {
      const int64_t E = int64_t(g.offsets.size()) - 1, M = g.offsets.back(), K = g.K, N = g.N;
      const int64_t kb = (K + 127) / 128, nb = (N + 127) / 128;
      const Tensor a = random_codes(M * K, rng), sa = random_scales(M * kb);
      const Tensor w = random_codes(E * N * K, rng), sw = random_scales(E * nb * kb);
      const Tensor offsets = Tensor::from_i64(g.offsets).to(Device::CUDA);
      run_both("fp8_grouped_gemm", {M, N}, out, [&](void* y) {
        ops::cuda::fp8_grouped_gemm(a.data<uint8_t>(), sa.data<float>(), M, K,
                                    offsets.data<int64_t>(), E, w.data<uint8_t>(), sw.data<float>(),
                                    N, y, out);
      });
    }
  }
  struct Wgrad {
    int64_t N, K;
    std::vector<int64_t> offsets;
  };
  for (const Wgrad& g : std::vector<Wgrad>{{144, 272, {0, 0, 130, 131, 400, 533, 533}},
                                           {1408, 2048, {0, 300, 301, 301, 700}},
                                           {2048, 1408, {0, 1, 129, 500}}}) {
    const int64_t E = int64_t(g.offsets.size()) - 1, rows = g.offsets.back(), N = g.N, K = g.K;
    const int64_t slots = rows / 128 + E, P = slots * 128;
    // Operands in the padded transposed layout (random codes everywhere: the kernels read only
    // their experts' tiles), scales [slots, N] and [slots, K].
    const Tensor dyt = random_codes(N * P, rng), xt = random_codes(K * P, rng);
    const Tensor sdy = random_scales(slots * N), sx = random_scales(slots * K);
    const Tensor offsets = Tensor::from_i64(g.offsets).to(Device::CUDA);
    const Tensor init =
        Tensor::from_vector(std::vector<float>(size_t(E * N * K), 0.75f), {E * N * K})
            .to(Device::CUDA);
    for (float beta : {0.0f, 1.0f})
      run_both(beta == 0 ? "fp8_grouped_wgrad_t" : "fp8_grouped_wgrad_t (+=)", {E * N * K},
               DType::F32, [&](void* dw) {
                 if (beta != 0) dseek::cuda::copy_on_device(dw, init.raw(), init.nbytes());
                 std::vector<int64_t> table(static_cast<size_t>(E));
                 for (int64_t e = 0; e < E; ++e)
                   table[size_t(e)] =
                       int64_t(reinterpret_cast<uintptr_t>(static_cast<float*>(dw) + e * N * K));
                 const Tensor t = Tensor::from_i64(table).to(Device::CUDA);
                 ops::cuda::fp8_grouped_wgrad_t(dyt.data<uint8_t>(), sdy.data<float>(),
                                                xt.data<uint8_t>(), sx.data<float>(), rows, N, K,
                                                offsets.data<int64_t>(), E,
                                                static_cast<float* const*>(t.raw()), beta);
                 dseek::cuda::synchronize();  // before t's table is freed
               });
  }
#endif
}

TEST(BackendOps, LinearFp8) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(54);
  for (DType act : kActDtypes)
    for (auto [T, in, out] :
         std::vector<std::array<int64_t, 3>>{{1, 64, 48}, {7, 300, 200}, {64, 1024, 512}}) {
      const Fp8Tensor qw =
          ops::quantize_fp8(rand({out, in}, rng, 0.1f), Fp8Layout::Block128x128, false, "w");
      const Tensor x = rand({1, T, in}, rng, 2.0f), b = rand({out}, rng);
      const Tensor want = ops::linear_fp8(rounded(x, act), qw.data, qw.scale, &b);
      const Tensor bg = b.to(Device::CUDA);
      const Tensor got =
          ops::linear_fp8(on_gpu(x, act), qw.data.to(Device::CUDA), qw.scale.to(Device::CUDA), &bg);
      EXPECT_EQ(got.dtype(), act);
      EXPECT_EQ(got.shape(), Shape({1, T, out}));
      double scale = 0;
      for (float f : want.to_vector()) scale = std::max(scale, double(std::abs(f)));
      const Tolerance tol =
          act == DType::F32 ? Tolerance{1e-5 * scale, 1e-4} : Tolerance{1e-3 * scale, 1.6e-2};
      expect_close("linear_fp8", {T, in, out}, act, want, got, tol);
    }
}

}  // namespace
}  // namespace dseek::backend_test
