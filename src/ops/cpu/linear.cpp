// linear, CPU: y[t, o] = Σ_i x[t, i] · W[o, i]   (PyTorch's F.linear without bias; bias is added by
// the op). W is stored as f32, bf16 (the top 16 bits of an f32) or IEEE f16 and converted to f32 on
// the fly; every product and sum is f32.
//
// Two paths:
//  - GEMV (few tokens, i.e. decode): memory-bound, so W must be streamed exactly once. Output rows
//    are split across OpenMP threads; each row of W is converted 8 (AVX2) lanes at a time and
//    multiplied with up to 4 token rows of x held in cache, so all tokens share one read of W.
//    An AVX2+FMA(+F16C) kernel is picked at run time; a portable scalar loop is the fallback.
//  - GEMM (prefill): compute-bound. Blocks of W rows are converted to f32 and passed to a
//    single-threaded OpenBLAS sgemm, one block per OpenMP thread at a time, writing straight into
//    the strided output columns.
// The backward is in linear_backward.cpp.
#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cassert>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace dseek::ops::cpu {
namespace {

// ---- portable fallback ------------------------------------------------------------------------

inline float load_scalar(const void* w, DType dt, int64_t i) {
  switch (dt) {
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
    default: return static_cast<const float*>(w)[i];
  }
}

void gemv_rows_portable(const float* x, int64_t T, int64_t in, const void* w, DType dt, int64_t ldw,
                        int64_t out, int64_t o_begin, int64_t o_end, float* y) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    float acc[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < in; ++i) {
      const float wv = load_scalar(w, dt, o * ldw + i);
      for (int64_t t = 0; t < T; ++t) acc[t] += x[t * in + i] * wv;
    }
    for (int64_t t = 0; t < T; ++t) y[t * out + o] = acc[t];
  }
}

// ---- AVX2 + FMA + F16C ------------------------------------------------------------------------

#if defined(__x86_64__)
#define DSEEK_AVX2 __attribute__((target("avx2,fma,f16c")))

template <DType DT>
DSEEK_AVX2 inline __m256 load8(const void* w, int64_t i) {
  if constexpr (DT == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else if constexpr (DT == DType::BF16) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_cvtph_ps(h);
  }
}

DSEEK_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// NT token rows (1..4) against output rows [o_begin, o_end). Two accumulators per token over 16
// columns hide the FMA latency.
template <DType DT, int NT>
DSEEK_AVX2 void gemv_rows_avx2(const float* x, int64_t in, const void* w, int64_t ldw, int64_t out,
                               int64_t o_begin, int64_t o_end, float* y) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    const int64_t base = o * ldw;
    __m256 acc0[NT], acc1[NT];
    for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= in; i += 16) {
      const __m256 w0 = load8<DT>(w, base + i), w1 = load8<DT>(w, base + i + 8);
      for (int t = 0; t < NT; ++t) {
        acc0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * in + i), w0, acc0[t]);
        acc1[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * in + i + 8), w1, acc1[t]);
      }
    }
    for (; i + 8 <= in; i += 8) {
      const __m256 w0 = load8<DT>(w, base + i);
      for (int t = 0; t < NT; ++t)
        acc0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * in + i), w0, acc0[t]);
    }
    float sums[NT];
    for (int t = 0; t < NT; ++t) sums[t] = hsum(_mm256_add_ps(acc0[t], acc1[t]));
    for (; i < in; ++i) {
      const float wv = load_scalar(w, DT, base + i);
      for (int t = 0; t < NT; ++t) sums[t] += x[t * in + i] * wv;
    }
    for (int t = 0; t < NT; ++t) y[t * out + o] = sums[t];
  }
}

template <DType DT>
void gemv_rows_avx2_dispatch(const float* x, int64_t T, int64_t in, const void* w, int64_t ldw,
                             int64_t out, int64_t o_begin, int64_t o_end, float* y) {
  switch (T) {
    case 1: gemv_rows_avx2<DT, 1>(x, in, w, ldw, out, o_begin, o_end, y); break;
    case 2: gemv_rows_avx2<DT, 2>(x, in, w, ldw, out, o_begin, o_end, y); break;
    case 3: gemv_rows_avx2<DT, 3>(x, in, w, ldw, out, o_begin, o_end, y); break;
    default: gemv_rows_avx2<DT, 4>(x, in, w, ldw, out, o_begin, o_end, y); break;
  }
}

// F16C is read from CPUID directly: clang's __builtin_cpu_supports does not know "f16c".
bool have_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}

bool have_avx2() {
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have_f16c();
  return ok;
}
#endif

void gemv_rows(const float* x, int64_t T, int64_t in, const void* w, DType dt, int64_t ldw,
               int64_t out, int64_t o_begin, int64_t o_end, float* y) {
  assert(T >= 1 && T <= 4);
#if defined(__x86_64__)
  if (have_avx2()) {
    switch (dt) {
      case DType::F32:
        gemv_rows_avx2_dispatch<DType::F32>(x, T, in, w, ldw, out, o_begin, o_end, y);
        return;
      case DType::BF16:
        gemv_rows_avx2_dispatch<DType::BF16>(x, T, in, w, ldw, out, o_begin, o_end, y);
        return;
      case DType::F16:
        gemv_rows_avx2_dispatch<DType::F16>(x, T, in, w, ldw, out, o_begin, o_end, y);
        return;
      default: break;
    }
  }
#endif
  gemv_rows_portable(x, T, in, w, dt, ldw, out, o_begin, o_end, y);
}

}  // namespace

void linear_gemv(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y) {
  // Blocks of output rows per task: big enough to amortise scheduling, small enough to balance.
  constexpr int64_t kRows = 16;
  const int64_t n_blocks = (out + kRows - 1) / kRows;
  const bool parallel = out * in >= (1 << 15);
  for (int64_t t0 = 0; t0 < T; t0 += 4) {
    const int64_t nt = std::min<int64_t>(4, T - t0);
    const float* xt = x + t0 * in;
    float* yt = y + t0 * out;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t b = 0; b < n_blocks; ++b) {
      gemv_rows(xt, nt, in, w, w_dtype, ldw, out, b * kRows, std::min(out, (b + 1) * kRows), yt);
    }
  }
}

void use_single_threaded_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

void linear_gemm(const float* x, int64_t T, int64_t in, const void* w, DType w_dtype, int64_t ldw,
                 int64_t out, float* y) {
  // Each OpenMP thread runs single-threaded sgemm on its own blocks of W rows.
  use_single_threaded_blas();
  const int n_threads = omp_get_max_threads();
  // Rows per block: ~1 MiB of f32 weights (stays in L2 alongside sgemm's packing), at least 16,
  // and small enough that every thread gets a block.
  int64_t rows = std::max<int64_t>(16, (int64_t(1) << 18) / std::max<int64_t>(in, 1));
  rows = std::min(rows, std::max<int64_t>(16, (out + n_threads - 1) / n_threads));
  const int64_t n_blocks = (out + rows - 1) / rows;
  const size_t esize = dtype_size(w_dtype);
#pragma omp parallel
  {
    std::vector<float> buf(w_dtype == DType::F32 ? 0 : size_t(rows * in));
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t o0 = b * rows, n = std::min(rows, out - o0);
      const float* wb;
      int64_t ld;
      if (w_dtype == DType::F32) {
        wb = static_cast<const float*>(w) + o0 * ldw;
        ld = ldw;
      } else {
        for (int64_t r = 0; r < n; ++r)
          convert_to_f32(static_cast<const char*>(w) + size_t((o0 + r) * ldw) * esize, w_dtype,
                         buf.data() + r * in, size_t(in));
        wb = buf.data();
        ld = in;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(n), int(in), 1.0f, x,
                  int(in), wb, int(ld), 0.0f, y + o0, int(out));
    }
  }
}

}  // namespace dseek::ops::cpu
