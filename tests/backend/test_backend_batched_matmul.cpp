// batched_matmul on CUDA (one strided-batched cuBLASLt GEMM, algorithm picked by timing) against
// the CPU op on the same bf16-rounded inputs: every unit-stride layout of A, B and C, operands
// broadcast over the batch (stride 0), extent-1 dims, odd sizes, f32 and bf16, poisoned outputs;
// then a second call on the tuned plan with fresh data.
#include "backend/backend_harness.h"
#include "batched_matmul_cases.h"
#include "ops/batched_matmul.h"

namespace dseek::backend_test {
namespace {

TEST(BackendOps, BatchedMatmulStridedViews) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(31);
  for (DType act : kActDtypes) {
    for (const test::ViewCase& v : test::view_cases()) {
      int64_t na = 0, nb = 0, nc = 0;
      const ops::MatrixStrides sa = test::layout(v.a, v.batch, v.m, v.k, v.a_shared, &na);
      const ops::MatrixStrides sb = test::layout(v.b, v.batch, v.n, v.k, v.b_shared, &nb);
      const ops::MatrixStrides sc = test::layout(v.c, v.batch, v.m, v.n, false, &nc);
      const Shape shape{v.batch, v.m, v.n, v.k};
      for (int call = 0; call < 2; ++call) {  // the first call tunes, the second reuses
        const Tensor a = rand({na}, rng), b = rand({nb}, rng);
        const Tensor want = Tensor::poisoned({nc}, DType::F32, Device::CPU);
        ops::batched_matmul(rounded(a, act), sa, rounded(b, act), sb, want, sc, v.batch, v.m, v.n,
                            v.k);
        const Tensor got = Tensor::poisoned({nc}, act, Device::CUDA);
        ops::batched_matmul(on_gpu(a, act), sa, on_gpu(b, act), sb, got, sc, v.batch, v.m, v.n,
                            v.k);
        // Sums of k products: f32 accumulation in another order (and a bf16 output rounding).
        const double k = double(v.k);
        const Tolerance tol = act == DType::BF16 ? Tolerance{2e-2 * std::sqrt(k), 1.6e-2}
                                                 : Tolerance{1e-5 * k, 1e-4};
        expect_close(call == 0 ? "batched_matmul" : "batched_matmul (tuned)", shape, act, want,
                     got, tol);
      }
    }
  }
}

}  // namespace
}  // namespace dseek::backend_test
