// The block-scaled FP8 GEMM through cuBLASLt on Hopper (maths in ops/fp8.h; the plain kernel in
// fp8.cu stays the fallback and the reference the backend test compares this path with).
//
// cuBLAS 12.9 added two scale modes for FP8 operands on sm_90, the two halves of DeepSeek-V3's
// recipe: CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F (one f32 scale per 128 elements along K, i.e.
// 1×128 activation tiles) and CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F (one f32 per 128×128
// block, i.e. a checkpoint's weight_scale_inv). The kernels promote the tensor cores' partial sums
// into f32 at every 128 of K with the two scales applied there (no "fast accumulation").
//
// Layout, as linear.cpp: dseek is row-major, cuBLASLt column-major, so y [M, N] = a·wᵀ is computed
// as yᵀ [N, M] = W·aᵀ with
//   A = w: stored [N, K] row-major = K×N column-major, ld K, op T  → cuBLASLt m = N, k = K
//   B = a: stored [M, K] row-major = K×M column-major, ld K, op N  → cuBLASLt n = M
//   D = y: N×M column-major, ld N = y [M, N] row-major.
// Scale layouts (cuBLAS documentation, "scaling factors layouts" for the two modes, as DeepGEMM
// also lays them out):
//   A, BLK128x128: K-major, ceil(K/128) scales per 128-row block of N, the block's stride padded
//     to a multiple of 4 floats (16 bytes): [N/128][L4], L = K/128, L4 = ceil(L/4)·4 — our
//     [N/128, L] scale_inv with its rows padded;
//   B, VEC128: outer-dimension major, M scales per k-block, the stride padded to 16 bytes:
//     [L][M4], M4 = ceil(M/4)·4 — our [M, L] tile scales transposed.
// Both are repacked per call by one small kernel (fp8_pack_scales) into a scratch buffer.
// The dense wgrad (fp8_wgrad_cublaslt) takes both operands in 1×128 tiles along K = the tokens
// (VEC128 for A and B, the combination DeepGEMM's wgrad also runs): the transposed column tiles of
// ops/fp8_train.h, whose [slots, channels] scales are that layout already, and dW accumulated in
// place (beta 1). The
// activations' layout is the one assumption the backend test (Fp8GemmCublasLtMatchesPlainKernel)
// must confirm on the GPU; kActScalesOuterMajor = false switches to the K-major alternative
// [M][L4] should this cuBLAS read VEC128 scales that way.
//
// Applies only when every requirement we could confirm holds (otherwise the caller runs the plain
// kernel): an sm_90 device; K and N multiples of 128 (whole blocks: DeepSeek-V3's projections are,
// bar kv_a_proj's N = 576); no bias (DeepSeek's projections have none, and the epilogue's support
// with these modes is not documented for sm_90); D f32 or bf16; 256-byte aligned operands; and an
// algorithm from cuBLASLt's heuristic. The descriptors and the heuristic's answer (or its refusal)
// are cached per problem, so a refused shape costs the heuristic call once and an accepted one
// only sets its two scale pointers per call. Handle and workspace: cublaslt_util.h.
#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cublaslt_util.h"
#include "ops/cuda/fp8_kernels.h"

namespace dseek::ops::cuda {

#if CUBLAS_VERSION >= 120900

namespace {

constexpr bool kActScalesOuterMajor = true;  // VEC128 scales [L][M4], else [M][L4]

struct Key {
  int64_t m, n, k;  // y [M, N] = a [M, K] · w [N, K]^T, as the callers name them
  int d_type;
  int64_t ld = 0;      // the operands' row stride (the forward's: K)
  bool wgrad = false;  // both operands VEC128 (fp8_wgrad_cublaslt)
  int sms = 0;         // lt_sm_target()
  auto operator<=>(const Key&) const = default;
};

// One problem's descriptors and algorithm; null in the cache when cuBLASLt refused the problem.
struct Plan {
  LtDescriptors desc;
  cublasLtMatmulAlgo_t algo{};
};

struct Plans {
  bool hopper = false;
  std::mutex mutex;  // guards by_problem and each plan's scale pointers until its GEMM is enqueued
  std::map<Key, std::unique_ptr<Plan>> by_problem;
};

// Created on first use and never destroyed (at exit the CUDA context may already be gone).
Plans& plans() {
  static Plans* instance = [] {
    auto* p = new Plans;
    p->hopper = dseek::cuda::device_attribute(cudaDevAttrComputeCapabilityMajor) == 9;
    return p;
  }();
  return *instance;
}

// The heuristic assumes 256-byte aligned operands unless told otherwise; ours are whole
// allocations (quantised activations, outputs, weights copied to the device), so anything less
// aligned (a view) simply takes the plain kernel.
bool aligned256(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 256 == 0;
}

// Descriptors for the problem with the scale modes (the scale pointers are set per call). Returns
// false when cuBLASLt refuses an attribute (a library without the block-scaled modes).
// ld: both operands' row stride; wgrad: A's scales VEC128 too (fp8_wgrad_cublaslt).
bool describe(LtDescriptors& desc, int64_t M, int64_t K, int64_t N, cudaDataType_t d_type,
              int64_t ld, bool wgrad, int sms) {
  if (cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS)
    return false;
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  const cublasLtMatmulMatrixScale_t a_mode =
      wgrad ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const cublasLtMatmulMatrixScale_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const std::tuple<cublasLtMatmulDescAttributes_t, const void*, size_t> attributes[] = {
      {CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)},
      {CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)},
      {CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)},
      {CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)}};
  for (const auto& [attribute, value, size] : attributes)
    if (cublasLtMatmulDescSetAttribute(desc.op, attribute, value, size) != CUBLAS_STATUS_SUCCESS)
      return false;
  const int32_t sm_target = sms;
  if (sms > 0 &&
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sm_target,
                                     sizeof(sm_target)) != CUBLAS_STATUS_SUCCESS)
    return false;
  return cublasLtMatrixLayoutCreate(&desc.a, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), ld) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutCreate(&desc.b, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(M), ld) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutCreate(&desc.d, d_type, uint64_t(N), uint64_t(M), N) ==
             CUBLAS_STATUS_SUCCESS;
}

// The plan for a problem, or null when cuBLASLt cannot run it (an unsupported combination comes
// back as an error status or as no result: both mean "not here", so the plain kernel runs).
std::unique_ptr<Plan> make_plan(int64_t M, int64_t K, int64_t N, cudaDataType_t d_type, int64_t ld,
                                bool wgrad, int sms) {
  auto plan = std::make_unique<Plan>();
  if (!describe(plan->desc, M, K, N, d_type, ld, wgrad, sms)) return nullptr;
  // The heuristic refuses a block-scaled problem whose scale pointers are unset (seen on an H200,
  // CUDA 13.0): it is shown the workspace, valid and 256-byte aligned, until a call sets its own.
  const void* placeholder = lt_context().workspace;
  for (const auto attribute :
       {CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER})
    if (cublasLtMatmulDescSetAttribute(plan->desc.op, attribute, &placeholder,
                                       sizeof(placeholder)) != CUBLAS_STATUS_SUCCESS)
      return nullptr;
  LtPreference pref;
  const uint64_t workspace = kLtWorkspaceBytes;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const bool usable =
      cublasLtMatmulPreferenceCreate(&pref.pref) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace,
                                           sizeof(workspace)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulAlgoGetHeuristic(lt_context().handle, plan->desc.op, plan->desc.a, plan->desc.b,
                                     plan->desc.d, plan->desc.d, pref.pref, 1, &result,
                                     &found) == CUBLAS_STATUS_SUCCESS &&
      found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (!usable) return nullptr;
  plan->algo = result.algo;
  return plan;
}

// The cached plan for a problem (made on first use), or null when cuBLASLt cannot run it. The
// caller holds plans().mutex until its GEMM is enqueued (the plan's scale pointers are per call).
Plan* plan_for(Plans& all, const Key& key) {
  auto it = all.by_problem.find(key);
  if (it == all.by_problem.end())
    it = all.by_problem
             .emplace(key, make_plan(key.m, key.k, key.n, cudaDataType_t(key.d_type), key.ld,
                                     key.wgrad, key.sms))
             .first;
  return it->second.get();
}

// Points the plan's A and B scales (cuBLASLt's roles: A is our weight-side operand) at this
// call's scales; false when cuBLASLt refuses.
bool set_scale_pointers(Plan& plan, const float* a_scales, const float* b_scales) {
  return cublasLtMatmulDescSetAttribute(plan.desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                        &a_scales, sizeof(a_scales)) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulDescSetAttribute(plan.desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                        &b_scales, sizeof(b_scales)) == CUBLAS_STATUS_SUCCESS;
}

}  // namespace

bool fp8_gemm_cublaslt(const uint8_t* a, const float* sa, int64_t M, int64_t K, const uint8_t* w,
                       const float* sw, int64_t N, const void* bias, void* y, DType out) {
  if (M == 0 || N == 0 || K == 0 || K % 128 != 0 || N % 128 != 0 || bias) return false;
  // The heuristic refused every M not a multiple of 4 (H200, 2026-12-03); those take our kernels.
  // (bf16 output was refused here too until 2026-12-06: the test's bound then allowed half a bf16
  // ulp for the output's rounding where two roundings — the reference's and this — differ by up
  // to one; see expect_near_plain in tests/backend/test_backend_fp8.cpp.)
  if ((out != DType::F32 && out != DType::BF16) || M % 4 != 0) return false;
  if (!aligned256(a) || !aligned256(w) || !aligned256(y)) return false;
  Plans& all = plans();
  if (!all.hopper) return false;
  const cudaDataType_t d_type = out == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  std::lock_guard<std::mutex> lock(all.mutex);
  Plan* plan = plan_for(all, Key{M, N, K, int(d_type), K, false, lt_sm_target()});
  if (!plan) return false;

  // Scales in cuBLASLt's layouts (see the header comment), in one scratch buffer: W's first (its
  // size is a multiple of 4 floats, so a's part stays 16-byte aligned).
  const int64_t L = K / 128, L4 = (L + 3) / 4 * 4, M4 = (M + 3) / 4 * 4, NB = N / 128;
  const int64_t a_rows = kActScalesOuterMajor ? L : M, a_ld = kActScalesOuterMajor ? M4 : L4;
  float* scratch =
      static_cast<float*>(dseek::cuda::alloc(size_t(NB * L4 + a_rows * a_ld) * sizeof(float)));
  const float* w_scales = scratch;
  const float* a_scales = scratch + NB * L4;
  if (!set_scale_pointers(*plan, w_scales, a_scales)) {
    dseek::cuda::free(scratch);
    return false;
  }
  fp8_pack_scales(sw, NB, L, /*transpose=*/false, scratch, NB, L4);
  fp8_pack_scales(sa, M, L, /*transpose=*/kActScalesOuterMajor, scratch + NB * L4, a_rows, a_ld);
  const float alpha = 1.0f, beta = 0.0f;
  const LtContext& lt = lt_context();
  const cublasStatus_t status = cublasLtMatmul(
      lt.handle, plan->desc.op, &alpha, w, plan->desc.a, a, plan->desc.b, &beta, y, plan->desc.d, y,
      plan->desc.d, &plan->algo, lt.workspace, kLtWorkspaceBytes, dseek::cuda::stream());
  dseek::cuda::free(scratch);  // stream-ordered: after the GEMM
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("[fp8_gemm] cublasLtMatmul (block-scaled FP8, M={} N={} K={}): {} ({})", M, N, K,
         cublasLtGetStatusName(status), cublasLtGetStatusString(status));
  return true;
}

bool fp8_wgrad_cublaslt(const uint8_t* dyt, const float* sdy, int64_t M, const uint8_t* xt,
                        const float* sx, int64_t N, int64_t K, int64_t ld, float* dw, float beta) {
  // The roles of fp8_gemm_cublaslt with a = dyt [M, ld], w = xt [N, ld], both in 1×128 tiles
  // along K, whose scales [K/128, M] and [K/128, N] are already VEC128's outer-major layout
  // ([L][M4]) where M and N are multiples of 4.
  if (M == 0 || N == 0 || K == 0 || K % 128 != 0 || M % 4 != 0 || N % 4 != 0) return false;
  if (!aligned256(dyt) || !aligned256(xt) || !aligned256(dw) || ld % 16 != 0) return false;
  if (reinterpret_cast<uintptr_t>(sdy) % 16 != 0 || reinterpret_cast<uintptr_t>(sx) % 16 != 0)
    return false;
  Plans& all = plans();
  if (!all.hopper) return false;
  std::lock_guard<std::mutex> lock(all.mutex);
  Plan* plan = plan_for(all, Key{M, N, K, int(CUDA_R_32F), ld, true, lt_sm_target()});
  // cuBLASLt's A is xt (see the header's layout note).
  if (!plan || !set_scale_pointers(*plan, sx, sdy)) return false;
  const float alpha = 1.0f;
  const LtContext& lt = lt_context();
  const cublasStatus_t status =
      cublasLtMatmul(lt.handle, plan->desc.op, &alpha, xt, plan->desc.a, dyt, plan->desc.b, &beta,
                     dw, plan->desc.d, dw, plan->desc.d, &plan->algo, lt.workspace,
                     kLtWorkspaceBytes, dseek::cuda::stream());
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("[fp8_wgrad] cublasLtMatmul (1x128 x 1x128 FP8, M={} N={} K={}): {} ({})", M, N, K,
         cublasLtGetStatusName(status), cublasLtGetStatusString(status));
  return true;
}

#else  // cuBLAS older than 12.9: no block-scaled FP8 modes

bool fp8_wgrad_cublaslt(const uint8_t*, const float*, int64_t, const uint8_t*, const float*,
                        int64_t, int64_t, int64_t, float*, float) {
  return false;
}

bool fp8_gemm_cublaslt(const uint8_t*, const float*, int64_t, int64_t, const uint8_t*, const float*,
                       int64_t, const void*, void*, DType) {
  return false;
}

#endif

}  // namespace dseek::ops::cuda
