// linear on the GPU through cuBLASLt (maths in ops/linear.h). Host code only: cuBLASLt runs the
// GEMMs, except a bf16 forward of a few rows (a decode step), which gemv.cu's weight-streaming
// kernel runs; the bias gradient and the bf16 accumulation of dx are kernels in linear_kernels.cu.
//
// Layout: dseek's matrices are row-major, cuBLASLt's column-major. A row-major [r, c] matrix with
// rows ld apart is, read column-major, the [c, r] matrix with leading dimension ld: its transpose.
// So every product is computed transposed, and no data moves:
//   forward  y = x·Wᵀ    as  yᵀ[out, T]  = W·xᵀ    (A = W read transposed, B = x as stored)
//   dx       dx = dy·W   as  dxᵀ[in, T]  = Wᵀ·dyᵀ  (both as stored)
//   dW       dW = dyᵀ·x  as  dWᵀ[in, out] = xᵀ·dy  (A = x as stored, B = dy read transposed)
// The bias is a per-row vector of yᵀ, which is what cuBLASLt's BIAS epilogue adds.
//
// Precision: CUBLAS_COMPUTE_32F throughout. bf16 A/B accumulate in f32 on the tensor cores; f32
// A/B run as true f32 (not TF32: CUBLAS_COMPUTE_32F_FAST_TF32 is never asked for), so an f32 model
// matches the CPU to summation order. D is act (forward, dx) or f32 (dW: master gradients; and
// the product an accumulating bf16 dx adds, see linear_backward_dx).
//
// The cuBLASLt handle and workspace are the process's one pair (cublaslt_util.h). A problem's
// descriptors and the algorithm cuBLASLt's heuristic picks for it are cached per problem (shapes,
// leading dimensions, types, transposes, epilogue and pointer alignments: all the descriptors and
// the heuristic look at), so a training step or a decode step asks the heuristic and builds
// descriptors only on its first pass; later calls set the bias pointer and enqueue the GEMM.
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/batched_matmul.h"
#include "ops/cuda/batched_matmul_small.h"
#include "ops/cuda/cublaslt_util.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/gemv.h"

namespace dseek::ops::cuda {
namespace {

// Column-major D[m, n] = op(A)·op(B) + beta·D (+ bias[m] broadcast over columns). op(A) is [m, k]:
// A is stored [k, m] when trans_a, else [m, k]; op(B) is [k, n]: B is stored [n, k] when
// trans_b, else [k, n]. C is D itself (beta 0 overwrites, 1 accumulates).
struct Gemm {
  const char* what;  // for errors: "forward", "dx", "dw"
  bool trans_a, trans_b;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  void* d;
  int64_t ldd;
  cudaDataType_t ab_type, d_type;
  const void* bias;  // nullable, d_type, m elements
  float beta;
  // Strided batch (head_matmul): `batch` products, matrix i of A, B and D at the base pointer plus
  // i times the stride (in elements).
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_d = 0;
};

std::string describe(const Gemm& g) {
  auto name = [](cudaDataType_t t) { return t == CUDA_R_16BF ? "bf16" : "f32"; };
  return fmt::format("{}: m={} n={} k={} op(A)={} lda={} ldb={} ldd={} {}→{}{} beta={} batch={}",
                     g.what, g.m, g.n, g.k, g.trans_a ? "T" : "N", g.lda, g.ldb, g.ldd,
                     name(g.ab_type), name(g.d_type), g.bias ? " +bias" : "", g.beta, g.batch);
}

void check(cublasStatus_t status, const char* call, const Gemm& g) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("[linear] {} ({}): {} ({})", call, describe(g), cublasLtGetStatusName(status),
         cublasLtGetStatusString(status));
}

// The largest power of two (at most 256) dividing the address, and the batch stride in bytes if
// any (every matrix of a batch must have it): what the heuristic may assume.
uint32_t alignment(const void* p, int64_t stride_bytes = 0) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) | uintptr_t(stride_bytes);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

size_t type_bytes(cudaDataType_t t) {
  return t == CUDA_R_16BF ? 2 : 4;
}

struct AlgoKey {
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldd;
  int ab_type, d_type;
  bool bias;
  uint32_t align_a, align_b, align_d, align_bias;
  int64_t batch, stride_a, stride_b, stride_d;
  int sms;  // lt_sm_target()
  auto operator<=>(const AlgoKey&) const = default;
};

// One problem's descriptors and algorithm.
struct Plan {
  LtDescriptors desc;
  cublasLtMatmulAlgo_t algo{};
};

// The plans, guarded by one mutex (the engine's and the trainer's threads may both run GEMMs); a
// call holds it while it sets its bias pointer on the shared descriptor and enqueues.
struct Plans {
  std::mutex mutex;
  std::map<AlgoKey, std::unique_ptr<Plan>> by_problem;
};

Plans& plans() {
  static auto* instance = new Plans;  // never destroyed, as the handle (cublaslt_util.h)
  return *instance;
}

AlgoKey key_of(const Gemm& g) {
  return AlgoKey{g.trans_a,
                 g.trans_b,
                 g.m,
                 g.n,
                 g.k,
                 g.lda,
                 g.ldb,
                 g.ldd,
                 int(g.ab_type),
                 int(g.d_type),
                 g.bias != nullptr,
                 alignment(g.a, g.stride_a * int64_t(type_bytes(g.ab_type))),
                 alignment(g.b, g.stride_b * int64_t(type_bytes(g.ab_type))),
                 alignment(g.d, g.stride_d * int64_t(type_bytes(g.d_type))),
                 g.bias ? alignment(g.bias) : 0u,
                 g.batch,
                 g.stride_a,
                 g.stride_b,
                 g.stride_d,
                 lt_sm_target()};
}

// Descriptors for the problem and the heuristic's algorithm for them; with `candidates` > 1 the
// heuristic's first `candidates` algorithms (best first) are left in *all for the caller to time.
std::unique_ptr<Plan> make_plan(const Gemm& g, const AlgoKey& key, int candidates = 1,
                                std::vector<cublasLtMatmulAlgo_t>* all = nullptr) {
  auto plan = std::make_unique<Plan>();
  LtDescriptors& desc = plan->desc;
  check(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
        "cublasLtMatmulDescCreate", g);
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  check(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)),
        "cublasLtMatmulDescSetAttribute(TRANSA)", g);
  check(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)),
        "cublasLtMatmulDescSetAttribute(TRANSB)", g);
  if (g.bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    check(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                         sizeof(epilogue)),
          "cublasLtMatmulDescSetAttribute(EPILOGUE)", g);
    // The pointer itself is set per call (run); the heuristic needs one to be there.
    check(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                         sizeof(g.bias)),
          "cublasLtMatmulDescSetAttribute(BIAS_POINTER)", g);
    // The bias type stays the default: D's type (the caller converts the bias to act).
  }
  if (key.sms > 0) {  // SMs kept for the background stream: a plan (and grid) for the rest
    const int32_t sms = key.sms;
    check(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms,
                                         sizeof(sms)),
          "cublasLtMatmulDescSetAttribute(SM_COUNT_TARGET)", g);
  }
  // Layouts of the matrices as stored: rows × cols of the column-major view.
  check(cublasLtMatrixLayoutCreate(&desc.a, g.ab_type, uint64_t(g.trans_a ? g.k : g.m),
                                   uint64_t(g.trans_a ? g.m : g.k), g.lda),
        "cublasLtMatrixLayoutCreate(A)", g);
  check(cublasLtMatrixLayoutCreate(&desc.b, g.ab_type, uint64_t(g.trans_b ? g.n : g.k),
                                   uint64_t(g.trans_b ? g.k : g.n), g.ldb),
        "cublasLtMatrixLayoutCreate(B)", g);
  check(cublasLtMatrixLayoutCreate(&desc.d, g.d_type, uint64_t(g.m), uint64_t(g.n), g.ldd),
        "cublasLtMatrixLayoutCreate(D)", g);
  if (g.batch > 1) {
    const int32_t count = int32_t(g.batch);
    const std::pair<cublasLtMatrixLayout_t, int64_t> strided[] = {
        {desc.a, g.stride_a}, {desc.b, g.stride_b}, {desc.d, g.stride_d}};
    for (const auto& [layout, stride] : strided) {
      check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                             sizeof(count)),
            "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)", g);
      check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                             &stride, sizeof(stride)),
            "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)", g);
    }
  }

  LtPreference pref;
  check(cublasLtMatmulPreferenceCreate(&pref.pref), "cublasLtMatmulPreferenceCreate", g);
  const uint64_t workspace = kLtWorkspaceBytes;
  check(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace, sizeof(workspace)),
        "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)", g);
  // The heuristic assumes 256-byte aligned buffers unless told otherwise; views (a slice of a
  // weight, an offset into an activation) can be less aligned.
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& [attribute, value] : aligns)
    check(cublasLtMatmulPreferenceSetAttribute(pref.pref, attribute, &value, sizeof(value)),
          "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)", g);
  std::vector<cublasLtMatmulHeuristicResult_t> results(size_t(std::max(candidates, 1)));
  int found = 0;
  check(cublasLtMatmulAlgoGetHeuristic(lt_context().handle, desc.op, desc.a, desc.b, desc.d, desc.d,
                                       pref.pref, int(results.size()), results.data(), &found),
        "cublasLtMatmulAlgoGetHeuristic", g);
  if (found == 0 || results[0].state != CUBLAS_STATUS_SUCCESS)
    fail("[linear] cublasLtMatmulAlgoGetHeuristic ({}): no algorithm for this problem",
         describe(g));
  plan->algo = results[0].algo;
  if (all)
    for (int i = 0; i < found; ++i)
      if (results[size_t(i)].state == CUBLAS_STATUS_SUCCESS) all->push_back(results[size_t(i)].algo);
  return plan;
}

void run(const Gemm& g) {
  const LtContext& lt = lt_context();
  const AlgoKey key = key_of(g);
  Plans& all = plans();
  std::lock_guard<std::mutex> lock(all.mutex);
  auto it = all.by_problem.find(key);
  if (it == all.by_problem.end()) it = all.by_problem.emplace(key, make_plan(g, key)).first;
  Plan& plan = *it->second;
  if (g.bias)
    check(cublasLtMatmulDescSetAttribute(plan.desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                         sizeof(g.bias)),
          "cublasLtMatmulDescSetAttribute(BIAS_POINTER)", g);
  const float alpha = 1.0f;
  check(cublasLtMatmul(lt.handle, plan.desc.op, &alpha, g.a, plan.desc.a, g.b, plan.desc.b, &g.beta,
                       g.d, plan.desc.d, g.d, plan.desc.d, &plan.algo, lt.workspace,
                       kLtWorkspaceBytes, dseek::cuda::stream()),
        "cublasLtMatmul", g);
}

// The plans batched_matmul tunes (kept apart from linear's: a linear call keeps the heuristic's
// first choice, whatever batched_matmul found for the same problem).
Plans& tuned_plans() {
  static auto* instance = new Plans;
  return *instance;
}

// Milliseconds of one run of `algo` on the stream, or a negative number if it fails to launch.
float time_algo(const Gemm& g, Plan& plan, const cublasLtMatmulAlgo_t& algo, cudaEvent_t start,
                cudaEvent_t stop) {
  const LtContext& lt = lt_context();
  const float alpha = 1.0f;
  DSEEK_CUDA_CHECK(cudaEventRecord(start, dseek::cuda::stream()));
  const cublasStatus_t status =
      cublasLtMatmul(lt.handle, plan.desc.op, &alpha, g.a, plan.desc.a, g.b, plan.desc.b, &g.beta,
                     g.d, plan.desc.d, g.d, plan.desc.d, &algo, lt.workspace, kLtWorkspaceBytes,
                     dseek::cuda::stream());
  DSEEK_CUDA_CHECK(cudaEventRecord(stop, dseek::cuda::stream()));
  DSEEK_CUDA_CHECK(cudaEventSynchronize(stop));
  if (status != CUBLAS_STATUS_SUCCESS) return -1.0f;
  float ms = 0.0f;
  DSEEK_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return ms;
}

// run() with the algorithm chosen by timing on the problem's first call (cuda/batched_matmul.h).
// Only for beta 0: every timed run overwrites D with the same product.
void run_tuned(const Gemm& g) {
  DSEEK_CHECK(g.beta == 0.0f && !g.bias, "[batched_matmul] tuned GEMMs overwrite D, no bias");
  const LtContext& lt = lt_context();
  const AlgoKey key = key_of(g);
  Plans& all = tuned_plans();
  std::lock_guard<std::mutex> lock(all.mutex);
  auto it = all.by_problem.find(key);
  if (it == all.by_problem.end()) {
    std::vector<cublasLtMatmulAlgo_t> candidates;
    std::unique_ptr<Plan> plan = make_plan(g, key, 8, &candidates);
    if (candidates.size() > 1) {
      cudaEvent_t start = nullptr, stop = nullptr;
      DSEEK_CUDA_CHECK(cudaEventCreate(&start));
      DSEEK_CUDA_CHECK(cudaEventCreate(&stop));
      float best = std::numeric_limits<float>::infinity();
      try {
        for (const cublasLtMatmulAlgo_t& algo : candidates) {
          time_algo(g, *plan, algo, start, stop);  // the first launch loads the kernel
          const float ms = time_algo(g, *plan, algo, start, stop);
          if (ms >= 0.0f && ms < best) {
            best = ms;
            plan->algo = algo;
          }
        }
      } catch (...) {
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        throw;
      }
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
    it = all.by_problem.emplace(key, std::move(plan)).first;
  }
  Plan& plan = *it->second;
  const float alpha = 1.0f;
  check(cublasLtMatmul(lt.handle, plan.desc.op, &alpha, g.a, plan.desc.a, g.b, plan.desc.b, &g.beta,
                       g.d, plan.desc.d, g.d, plan.desc.d, &plan.algo, lt.workspace,
                       kLtWorkspaceBytes, dseek::cuda::stream()),
        "cublasLtMatmul", g);
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: fail("[linear] {} is not a GEMM dtype on the GPU (f32 or bf16)", dtype_name(t));
  }
}

// y[t] = bias (or 0) for in = 0, where there is no product to run. Rare, so done on the host.
void fill_with_bias(const void* bias, DType bias_dtype, void* y, int64_t T, int64_t out,
                    DType act) {
  if (!bias) {
    dseek::cuda::fill_bytes(y, 0, size_t(T * out) * dtype_size(act));  // 0 bits: 0.0 in f32/bf16
    return;
  }
  std::vector<char> raw(size_t(out) * dtype_size(bias_dtype));
  dseek::cuda::copy_to_host(raw.data(), bias, raw.size());
  std::vector<float> b(static_cast<size_t>(out));
  convert_to_f32(raw.data(), bias_dtype, b.data(), size_t(out));
  std::vector<float> rows(size_t(T * out));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) rows[size_t(t * out + o)] = b[size_t(o)];
  std::vector<char> packed(rows.size() * dtype_size(act));
  convert_from_f32(rows.data(), packed.data(), act, rows.size());
  dseek::cuda::copy_to_device(y, packed.data(), packed.size());  // returns once staged
}

}  // namespace

void linear(const void* x, int64_t T, int64_t in, const void* w, int64_t ldw, int64_t out,
            const void* bias, DType bias_dtype, void* y, DType act) {
  if (T == 0 || out == 0) return;
  if (in == 0) {
    fill_with_bias(bias, bias_dtype, y, T, out, act);
    return;
  }
  // The epilogue reads the bias in D's type; another stored dtype is converted once per call.
  void* converted = nullptr;
  if (bias && bias_dtype != act) {
    converted = dseek::cuda::alloc(size_t(out) * dtype_size(act));
    dseek::cuda::convert(bias, bias_dtype, converted, act, size_t(out));
  }
  if (gemv_takes(T, in, x, w, ldw, act)) {  // a decode step's few rows: weight streaming
    gemv(x, T, in, w, ldw, out, converted ? converted : bias, y, act);
    dseek::cuda::free(converted);
    return;
  }
  const Gemm g{"forward",
               /*trans_a=*/true,
               /*trans_b=*/false,
               out,
               T,
               in,
               w,
               ldw,
               x,
               in,
               y,
               out,
               cuda_type(act),
               cuda_type(act),
               converted ? converted : bias,
               0.0f};
  try {
    run(g);
  } catch (...) {
    dseek::cuda::free(converted);
    throw;
  }
  dseek::cuda::free(converted);  // stream-ordered: after the GEMM has read it
}

void linear_backward_dx(const void* dy, int64_t T, int64_t out, const void* w, int64_t ldw,
                        int64_t in, void* dx, float beta, DType act) {
  if (T == 0 || in == 0) return;
  if (out == 0) {  // an empty sum
    if (beta == 0.0f) dseek::cuda::fill_bytes(dx, 0, size_t(T * in) * dtype_size(act));
    return;
  }
  if (act != DType::BF16 || beta == 0.0f) {
    run(Gemm{"dx", false, false, in, T, out, w, ldw, dy, out, dx, in, cuda_type(act),
             cuda_type(act), nullptr, beta});
    return;
  }
  // Accumulating into bf16: cuBLASLt's beta·C on a bf16 D was seen (H200, CUDA 13.0) to round
  // twice, up to a whole bf16 ulp off where one rounding is at most half. So the product goes to
  // an f32 buffer (bounded: blocks of token rows of at most 64 MiB) and is added with one
  // rounding.
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(16) << 20) / in));
  float* product = static_cast<float*>(dseek::cuda::alloc(size_t(rows * in) * sizeof(float)));
  const size_t esize = dtype_size(act);
  try {
    for (int64_t t0 = 0; t0 < T; t0 += rows) {
      const int64_t n = std::min(rows, T - t0);
      run(Gemm{"dx (+=)", false, false, in, n, out, w, ldw,
               static_cast<const char*>(dy) + size_t(t0 * out) * esize, out, product, in,
               CUDA_R_16BF, CUDA_R_32F, nullptr, 0.0f});
      linear_accumulate(static_cast<char*>(dx) + size_t(t0 * in) * esize, product, n * in, act);
    }
  } catch (...) {
    dseek::cuda::free(product);
    throw;
  }
  dseek::cuda::free(product);
}

void linear_backward_dw(const void* dy, const void* x, int64_t T, int64_t out, int64_t in, void* dw,
                        float beta, DType act, DType dw_dtype) {
  DSEEK_CHECK(dw_dtype == DType::F32 || dw_dtype == DType::BF16,
              "[linear] dW must be f32 or bf16, got {}", dtype_name(dw_dtype));
  if (out == 0 || in == 0) return;
  if (T == 0) {
    if (beta == 0.0f) dseek::cuda::fill_bytes(dw, 0, size_t(out * in) * dtype_size(dw_dtype));
    return;
  }
  // A bf16 D (and C, when accumulating): cuBLASLt sums in f32 and rounds the result; adding to a
  // bf16 C, it rounds the new sum before the add (an H100's results: within half a bf16 unit of
  // each), as PyTorch's bf16 .grad accumulation does.
  run(Gemm{"dw", false, true, in, out, T, x, in, dy, out, dw, in, cuda_type(act),
           dw_dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F, nullptr, beta});
}

// Per head h, row-major out_h [T, N] (rows out_t apart) = x_h [T, K] (rows x_t apart) · w_h [K, N]:
// column-major, out_hᵀ [N, T] = w_hᵀ [N, K] · x_hᵀ [K, T], both read as stored; the heads are a
// strided batch of one cuBLASLt call (A stride K·N, B stride x_h, D stride out_h).
void head_matmul(const void* x, int64_t x_t, int64_t x_h, const void* w, void* out, int64_t out_t,
                 int64_t out_h, int64_t T, int64_t H, int64_t K, int64_t N, DType act) {
  if (T == 0 || H == 0 || N == 0) return;
  DSEEK_CHECK(H <= INT32_MAX, "[head_matmul] {} heads: more than a cuBLASLt batch holds", H);
  DSEEK_CHECK(K > 0, "[head_matmul] an empty sum (K = 0)");
  if (head_gemv_takes(T, H, K, N, w, out, out_t, out_h, act)) {
    head_gemv(x, x_t, x_h, w, out, out_t, out_h, T, H, K, N);
    return;
  }
  const cudaDataType_t type = cuda_type(act);
  Gemm g{"head_matmul", false, false, N, T, K, w, N, x, x_t, out, out_t, type, type, nullptr, 0.0f};
  g.batch = H;
  g.stride_a = K * N;
  g.stride_b = x_h;
  g.stride_d = out_h;
  run(g);
}

// Row-major C_b [m, n] with unit column stride is, column-major, D = C_bᵀ [n, m] (ld sc.row)
// = B_b [n, k] · A_bᵀ [k, m]: cuBLASLt's A is our B (column-major [n, k] when its rows are the unit
// stride, else stored [k, n] and read transposed), its B is our Aᵀ (column-major [k, m] when A's
// columns are the unit stride, else stored [m, k] and read transposed). C with unit row stride is
// the same problem for Cᵀ = B·Aᵀ with the operands swapped.
void batched_matmul(const void* a, MatrixStrides sa, const void* b, MatrixStrides sb, void* c,
                    MatrixStrides sc, int64_t batch, int64_t m, int64_t n, int64_t k, DType act) {
  if (k <= kSmallK) {
    batched_matmul_small_k(a, sa.batch, sa.row, sa.col, b, sb.batch, sb.row, sb.col, c, sc.batch,
                           sc.row, sc.col, batch, m, n, k, act);
    return;
  }
  if (sc.col != 1) {
    batched_matmul(b, sb, a, sa, c, MatrixStrides{sc.batch, sc.col, sc.row}, batch, n, m, k, act);
    return;
  }
  const cudaDataType_t type = cuda_type(act);
  const bool lt_trans_a = sb.row != 1;  // B stored [n, k] row-major = [k, n] column-major
  const bool lt_trans_b = sa.col != 1;  // A stored [k, m] row-major = [m, k] column-major
  Gemm g{"batched_matmul",
         lt_trans_a,
         lt_trans_b,
         n,
         m,
         k,
         b,
         lt_trans_a ? sb.row : sb.col,
         a,
         lt_trans_b ? sa.col : sa.row,
         c,
         sc.row,
         type,
         type,
         nullptr,
         0.0f};
  g.batch = batch;
  g.stride_a = sb.batch;
  g.stride_b = sa.batch;
  g.stride_d = sc.batch;
  run_tuned(g);
}

}  // namespace dseek::ops::cuda
