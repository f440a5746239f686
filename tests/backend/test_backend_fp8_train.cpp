// FP8 training on CUDA against the CPU twins (ops/fp8_train.h): column-tile quantisation bit for
// bit (ragged groups, f32 and bf16 inputs), the FP8 linear's forward, dgrad and wgrad (shapes on
// and off cuBLASLt's block-scaled path, poisoned outputs, accumulation), the grouped expert GEMMs
// over ragged offsets, and NaN inputs as errors naming the tensor. Both sides quantise the same
// act-rounded inputs to the same codes, so outputs differ only by f32 summation order (and the
// bf16 rounding of y and dx).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "backend/backend_harness.h"
#include "backend/grouped_kernels.h"
#include "ops/fp8_train.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/fp8_train_kernels.h"
#endif

namespace dseek::backend_test {
namespace {

Tensor offsets_of(const std::vector<int64_t>& o, Device device) {
  Tensor t = Tensor::empty({int64_t(o.size())}, DType::I64);
  std::copy(o.begin(), o.end(), t.data<int64_t>());
  return device == Device::CPU ? t : t.to(device);
}

// max over outputs of Σ_k |a[m, k]|·|b[n, k]| (a [M, K], b [N, K] on the CPU): the scale of a GEMM's
// accumulation error.
double max_abs_sum(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  const std::vector<float> av = a.to_vector(), bv = b.to_vector();
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::abs(double(av[size_t(m * K + k)]) * bv[size_t(n * K + k)]);
      worst = std::max(worst, s);
    }
  return worst;
}

// Both sides multiply the same E4M3 codes; they differ by accumulation: f32 sums in other orders
// (2^-16 of the largest Σ|a·b| covers K ≤ 2^8 roundings of 2^-24 with margin), or the FP8 tensor
// cores' accumulation within each 128-block — cuBLASLt's or the wgmma kernels'
// (fp8_wgmma_kernels.cuh), both held to 2^-8 of Σ|a·b| by test_backend_fp8.cpp, which says why;
// a bf16 output adds one rounding.
Tolerance sum_tolerance(DType out, double abs_sum, bool tensor_cores) {
  return {std::ldexp(abs_sum, tensor_cores ? -8 : -16), out == DType::BF16 ? 1.0 / 256 : 1e-6};
}

// Whether the grouped FP8 GEMM with reduction K and output width N (or the wgrad of dW [N, K])
// runs on the wgmma kernels under the current kernel choice.
bool fp8_on_wgmma([[maybe_unused]] int64_t K, [[maybe_unused]] int64_t N) {
#ifdef DSEEK_HAS_CUDA
  return ops::cuda::fp8_wgmma_takes(K, N);
#else
  return false;
#endif
}

Tensor dequant_rows(const Tensor& x) {
  return ops::dequantize_fp8(ops::quantize_fp8(x, ops::Fp8Layout::Tile1x128, false, "x"));
}

TEST(BackendOps, QuantizeFp8ColsBitExact) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(61);
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{1, 7}, {}},
      {{300, 33}, {}},
      {{420, 37}, {0, 0, 1, 129, 258, 410}},  // empty group, 1 row, 128, 129, rows past the end
      {{1000, 130}, {0, 500, 501, 1000}}};
  for (DType act : kActDtypes)
    for (const auto& [shape, o] : cases) {
      const Tensor x = rand(shape, rng, 3.0f);
      const Tensor off_cpu = offsets_of(o, Device::CPU), off_gpu = offsets_of(o, Device::CUDA);
      const ops::Fp8ColTiles want =
          ops::quantize_fp8_cols(rounded(x, act), o.empty() ? nullptr : &off_cpu, "x");
      const ops::Fp8ColTiles got =
          ops::quantize_fp8_cols(on_gpu(x, act), o.empty() ? nullptr : &off_gpu, "x");
      const Tensor gd = got.data.to(Device::CPU), gs = got.scale.to(Device::CPU);
      ASSERT_EQ(gd.shape(), want.data.shape());
      ASSERT_EQ(gs.shape(), want.scale.shape());
      size_t bad_codes = 0, bad_scales = 0;
      for (int64_t i = 0; i < gd.numel(); ++i)
        bad_codes += gd.data<uint8_t>()[i] != want.data.data<uint8_t>()[i];
      for (int64_t i = 0; i < gs.numel(); ++i)
        bad_scales += std::memcmp(&gs.data<float>()[i], &want.scale.data<float>()[i], 4) != 0;
      std::printf("[backend] %-28s %-22s %-4s codes differ %zu/%lld scales differ %zu/%lld %s\n",
                  "quantize_fp8_cols", describe_shape(shape).c_str(),
                  std::string(dtype_name(act)).c_str(), bad_codes, (long long)gd.numel(),
                  bad_scales, (long long)gs.numel(), bad_codes + bad_scales ? "FAIL" : "ok");
      EXPECT_EQ(bad_codes, 0u) << describe_shape(shape);
      EXPECT_EQ(bad_scales, 0u) << describe_shape(shape);
    }
}

TEST(BackendOps, LinearFp8TrainMatchesCpu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(62);
  // {T, in, out}: odd sizes (plain kernel), and multiples of 128 with T % 4 = 0 (cuBLASLt's
  // block-scaled path for the forward and the dgrad).
  for (const GroupedKernel& k : grouped_kernels())
  for (DType act : kActDtypes)
    for (auto [T, in, out] : std::vector<std::array<int64_t, 3>>{
             {5, 130, 7}, {64, 256, 384}, {130, 64, 129}, {257, 300, 200}, {300, 272, 144}}) {
      const UseGroupedKernel use(k.wgmma);
      const Shape shape{T, in, out};
      const Tensor x = rand({T, in}, rng), w = rand({out, in}, rng), dy = rand({T, out}, rng);
      const Tensor init = rand({out, in}, rng);
      // CPU reference on the act-rounded activations (the weight is the f32 master on both).
      ops::Fp8LinearCache cc;
      const Tensor y_want = ops::linear_fp8_train_forward(rounded(x, act), w, &cc);
      Tensor dx_want = Tensor::poisoned({T, in}), dw_want = Tensor::poisoned({out, in});
      ops::linear_fp8_train_backward(cc, w, rounded(dy, act), &dx_want, &dw_want, false);
      Tensor acc_want = init.to(DType::F32);
      ops::linear_fp8_train_backward(cc, w, rounded(dy, act), nullptr, &acc_want, true);

      const Tensor wg = on_gpu(w);
      ops::Fp8LinearCache gc;
      const Tensor y = ops::linear_fp8_train_forward(on_gpu(x, act), wg, &gc);
      Tensor dx = Tensor::poisoned({T, in}, act, Device::CUDA);
      Tensor dw = Tensor::poisoned({out, in}, DType::F32, Device::CUDA);
      ops::linear_fp8_train_backward(gc, wg, on_gpu(dy, act), &dx, &dw, false);
      Tensor acc = on_gpu(init);
      ops::linear_fp8_train_backward(gc, wg, on_gpu(dy, act), nullptr, &acc, true);
      EXPECT_EQ(y.dtype(), act);
      // cuBLASLt takes the forward and dgrad when K and N are multiples of 128 and T of 4, else
      // the wgmma kernel where both are multiples of 16 (on a Hopper): the tensor cores either way.
      const bool lt = T % 4 == 0 && in % 128 == 0 && out % 128 == 0;
      const bool tc_y = lt || fp8_on_wgmma(in, out), tc_dx = lt || fp8_on_wgmma(out, in);
      const Tensor w_hat =
          ops::dequantize_fp8(ops::quantize_fp8(w, ops::Fp8Layout::Block128x128, false, "w"));
      const double y_sum = max_abs_sum(dequant_rows(rounded(x, act)), w_hat);
      const double dx_sum =
          max_abs_sum(dequant_rows(rounded(dy, act)), w_hat.transpose(0, 1).contiguous());
      // The wgrad sums T products of column-tile values, each ≤ 1.07·max|v|; it runs on the wgmma
      // kernel where out and in are multiples of 16 on a Hopper.
      const double dw_sum = double(T) * 1.07 * 1.07 * 1.07;  // |x|, |dy| ≤ 1; x̃ quantised twice
      const bool tc_dw = fp8_on_wgmma(in, out);
      expect_close(labelled("linear_fp8_train y", k), shape, act, y_want, y,
                   sum_tolerance(act, y_sum, tc_y));
      expect_close(labelled("linear_fp8_train dx", k), shape, act, dx_want, dx,
                   sum_tolerance(act, dx_sum, tc_dx));
      expect_close(labelled("linear_fp8_train dW", k), shape, act, dw_want, dw,
                   sum_tolerance(DType::F32, dw_sum, tc_dw));
      expect_close(labelled("linear_fp8_train dW (accumulate)", k), shape, act, acc_want, acc,
                   sum_tolerance(DType::F32, dw_sum + 1.0, tc_dw));
    }
}

TEST(BackendOps, GroupedLinearFp8MatchesCpu) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(63);
  struct Case {
    int64_t in, out;
    std::vector<int64_t> offsets;
  };
  const std::vector<Case> cases = {
      // Widths off the multiples of 16 (the CUDA-core kernels on every GPU). An empty expert, one
      // of one row, one over 128 rows, offsets off the 128 grid.
      {136, 130, {0, 130, 130, 131, 200, 333}},
      // Multiples of 16 (the wgmma kernels on a Hopper) with tails in k (272 = 2·128 + 16) and n
      // (144), empty experts first and last, an expert over several row tiles and column tiles.
      {272, 144, {0, 0, 130, 131, 400, 533, 533}},
  };
  for (const GroupedKernel& k : grouped_kernels())
    for (const Case& c : cases)
      for (DType act : kActDtypes) {
        const UseGroupedKernel use(k.wgmma);
        const std::vector<int64_t>& o = c.offsets;
        const int64_t in = c.in, out = c.out, E = int64_t(o.size()) - 1, N = o.back();
        const Shape shape{N, in, out};
        const Tensor x = rand({N, in}, rng), dy = rand({N, out}, rng);
        std::vector<Tensor> ws, ws_gpu, gw, gw_gpu;
        for (int64_t e = 0; e < E; ++e) {
          ws.push_back(rand({out, in}, rng));
          ws_gpu.push_back(on_gpu(ws.back()));  // f32 masters, whatever the activations
          gw.push_back(Tensor::poisoned({out, in}));
          gw_gpu.push_back(Tensor::poisoned({out, in}, DType::F32, Device::CUDA));
        }
        const Tensor off_cpu = offsets_of(o, Device::CPU), off_gpu = offsets_of(o, Device::CUDA);
        ops::Fp8GroupedCache cc, gc;
        const ops::ExpertMatrices wc = ops::expert_matrices(ws), wg = ops::expert_matrices(ws_gpu);
        const Tensor y_want = ops::grouped_linear_fp8_forward(rounded(x, act), wc, off_cpu, &cc);
        const Tensor dx_want = ops::grouped_linear_fp8_backward_dx(rounded(dy, act), wc, off_cpu);
        ops::grouped_linear_fp8_backward_dw(cc, rounded(dy, act), off_cpu, ops::expert_matrices(gw),
                                            false);
        const Tensor y = ops::grouped_linear_fp8_forward(on_gpu(x, act), wg, off_gpu, &gc);
        const Tensor dx = ops::grouped_linear_fp8_backward_dx(on_gpu(dy, act), wg, off_gpu);
        ops::grouped_linear_fp8_backward_dw(gc, on_gpu(dy, act), off_gpu,
                                            ops::expert_matrices(gw_gpu), false);
        // |x|, |dy|, |W| ≤ 1, quantised values ≤ 1.07 of that.
        const double q = 1.07 * 1.07;
        expect_close(labelled("grouped_linear_fp8 y", k), shape, act, y_want, y,
                     sum_tolerance(act, double(in) * q, fp8_on_wgmma(in, out)));
        expect_close(labelled("grouped_linear_fp8 dx", k), shape, act, dx_want, dx,
                     sum_tolerance(act, double(out) * q, fp8_on_wgmma(out, in)));
        for (int64_t e = 0; e < E; ++e)
          expect_close(labelled(("grouped_linear_fp8 dW_" + std::to_string(e)).c_str(), k), shape,
                       act, gw[size_t(e)], gw_gpu[size_t(e)],
                       sum_tolerance(DType::F32, double(N) * q * 1.07, fp8_on_wgmma(in, out)));
      }
}

TEST(BackendOps, LinearFp8TrainNanIsAnErrorNamingTheTensor) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(64);
  const Tensor x = rand({3, 140}, rng), w = rand({5, 140}, rng);
  std::vector<float> v = rand({3, 5}, rng).to_vector();
  v[7] = std::nanf("");
  const Tensor dy_nan = on_gpu(Tensor::from_vector(v, {3, 5}));
  ops::Fp8LinearCache cache;
  ops::linear_fp8_train_forward(on_gpu(x), on_gpu(w), &cache);
  Tensor dx = Tensor::poisoned({3, 140}, DType::F32, Device::CUDA);
  Tensor dw = Tensor::poisoned({5, 140}, DType::F32, Device::CUDA);
  for (bool wgrad : {false, true}) {
    try {
      ops::linear_fp8_train_backward(cache, on_gpu(w), dy_nan, wgrad ? nullptr : &dx,
                                     wgrad ? &dw : nullptr, false);
      ADD_FAILURE() << "no error for a NaN dy (wgrad " << wgrad << ")";
    } catch (const Error& e) {
      const std::string want =
          wgrad ? "'linear_fp8_train dy (column tiles)'" : "'linear_fp8_train dy'";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace dseek::backend_test
