// MoE ops on the CPU: the reference twins of src/ops/cuda/moe.cu (maths in ops/moe.h). The
// routing here is the model's too (model/gate.cpp's route_from_logits calls it); the grouped GEMMs
// call the linear kernels per expert, choosing GEMV or GEMM as ops::linear does, so a composed MoE
// equals MoE::forward.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/moe_cpu.h"
#include "ops/linear.h"

namespace dseek::ops::cpu {

namespace {

// torch.topk order: larger first, NaN above everything, equal values by lower index.
bool ranks_before(float a, int64_t ia, float b, int64_t ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

void top_k(const float* values, int64_t n, int64_t k, std::vector<int64_t>& index, int32_t* out) {
  index.resize(size_t(n));
  std::iota(index.begin(), index.end(), 0);
  std::partial_sort(index.begin(), index.begin() + k, index.end(),
                    [&](int64_t a, int64_t b) { return ranks_before(values[a], a, values[b], b); });
  for (int64_t i = 0; i < k; ++i) out[i] = int32_t(index[size_t(i)]);
}

void softmax_row(const float* logits, int64_t n, float* out) {
  float max = -INFINITY;
  for (int64_t e = 0; e < n; ++e) max = std::max(max, logits[e]);
  double sum = 0.0;
  for (int64_t e = 0; e < n; ++e) {
    out[e] = std::exp(logits[e] - max);
    sum += out[e];
  }
  const float inv = float(1.0 / sum);
  for (int64_t e = 0; e < n; ++e) out[e] *= inv;
}

}  // namespace

void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias,
               const MoeRouteParams& p, int32_t* ids, float* weights, float* scores) {
  const int64_t E = p.experts, K = p.top_k;
  const bool grouped = p.method != MoeTopK::Greedy, noaux = p.method == MoeTopK::NoauxTc;
  const int64_t G = grouped ? p.n_group : 1, group_size = E / G;
  std::vector<float> choice(static_cast<size_t>(E)), group_score(static_cast<size_t>(G));
  std::vector<int32_t> kept_groups(static_cast<size_t>(G));
  std::vector<char> keep(static_cast<size_t>(G));
  std::vector<int64_t> index;
  for (int64_t t = 0; t < T; ++t) {
    const float* z = logits + t * ld;
    float* s = scores + t * E;
    if (p.scoring == MoeScoring::Softmax) {
      softmax_row(z, E, s);
    } else {
      for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-z[e]));
    }
    for (int64_t e = 0; e < E; ++e) choice[size_t(e)] = s[e] + (noaux && bias ? bias[e] : 0.0f);
    if (grouped) {
      for (int64_t g = 0; g < G; ++g) {
        const float* c = &choice[size_t(g * group_size)];
        if (noaux) {
          int32_t best[2];
          top_k(c, group_size, 2, index, best);
          group_score[size_t(g)] = c[best[0]] + c[best[1]];
        } else {
          group_score[size_t(g)] = *std::max_element(c, c + group_size);
        }
      }
      top_k(group_score.data(), G, p.topk_group, index, kept_groups.data());
      std::fill(keep.begin(), keep.end(), 0);
      for (int64_t i = 0; i < p.topk_group; ++i) keep[size_t(kept_groups[size_t(i)])] = 1;
      for (int64_t e = 0; e < E; ++e) {
        if (!keep[size_t(e / group_size)]) choice[size_t(e)] = 0.0f;
      }
    }
    int32_t* id = ids + t * K;
    float* w = weights + t * K;
    top_k(choice.data(), E, K, index, id);
    for (int64_t k = 0; k < K; ++k) w[k] = noaux ? s[id[k]] : choice[size_t(id[k])];
    if (p.normalise) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += w[k];
      const float denominator = sum + 1e-20f;
      for (int64_t k = 0; k < K; ++k) w[k] /= denominator;
    }
    if (p.scale) {
      for (int64_t k = 0; k < K; ++k) w[k] *= p.routed_scaling_factor;
    }
  }
}

void moe_route_backward(const float* scores, const int32_t* ids, const float* dweights,
                        const float* extra, int64_t T, int64_t E, const MoeRouteParams& p,
                        float* dz) {
  const int64_t K = p.top_k;
  const double f = p.scale ? double(p.routed_scaling_factor) : 1.0;
  const bool sigmoid = p.scoring == MoeScoring::Sigmoid;
#pragma omp parallel for schedule(static) if (T * E >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const float* s = scores + t * E;
    const float* g = dweights + t * K;
    const int32_t* id = ids + t * K;
    float* d = dz + t * E;  // holds ds first, then dz
    double S = 0.0, ga = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const double a = s[id[k]];
      S += a;
      ga += double(g[k]) * a;
    }
    S += 1e-20;
    for (int64_t e = 0; e < E; ++e) d[e] = extra ? extra[t * E + e] : 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const double gk = g[k];
      d[id[k]] += float(p.normalise ? f * (gk / S - ga / (S * S)) : f * gk);
    }
    if (sigmoid) {
      for (int64_t e = 0; e < E; ++e) d[e] = d[e] * s[e] * (1.0f - s[e]);
    } else {
      double dot = 0.0;
      for (int64_t e = 0; e < E; ++e) dot += double(d[e]) * double(s[e]);
      for (int64_t e = 0; e < E; ++e) d[e] = s[e] * float(double(d[e]) - dot);
    }
  }
}

void moe_dispatch(const int32_t* ids, int64_t N, int64_t E, int64_t* offsets, int32_t* order,
                  int32_t* position) {
  std::fill_n(offsets, E + 1, 0);
  for (int64_t s = 0; s < N; ++s) ++offsets[ids[s] + 1];
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  std::vector<int64_t> next(offsets, offsets + E);
  for (int64_t s = 0; s < N; ++s) {
    const int64_t i = next[size_t(ids[s])]++;
    order[i] = int32_t(s);
    position[s] = int32_t(i);
  }
}

void moe_permute(const float* x, const int32_t* order, int64_t N, int64_t K, int64_t D,
                 float* x_perm) {
#pragma omp parallel for schedule(static) if (N * D >= (1 << 16))
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(x_perm + i * D, x + int64_t(order[i]) / K * D, size_t(D) * sizeof(float));
  }
}

void moe_permute_backward(const float* dx_perm, const int32_t* position, int64_t T, int64_t K,
                          int64_t D, float* dx) {
#pragma omp parallel for schedule(static) if (T * K * D >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    float* o = dx + t * D;
    std::fill_n(o, D, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float* r = dx_perm + int64_t(position[t * K + k]) * D;
      for (int64_t j = 0; j < D; ++j) o[j] += r[j];
    }
  }
}

void grouped_linear(const float* x, const int64_t* offsets, int64_t E, int64_t in,
                    const void* const* w, DType w_dtype, int64_t ldw, int64_t out, float* y) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[e], rows = offsets[e + 1] - begin;
    if (rows == 0) continue;
    // ops::linear's choice of kernel, so a composed MoE equals MoE::forward's expert Mlps.
    if (rows <= kLinearGemvMaxTokens) {
      linear_gemv(x + begin * in, rows, in, w[e], w_dtype, ldw, out, y + begin * out);
    } else {
      linear_gemm(x + begin * in, rows, in, w[e], w_dtype, ldw, out, y + begin * out);
    }
  }
}

void grouped_linear_backward_dx(const float* dy, const int64_t* offsets, int64_t E, int64_t out,
                                const void* const* w, DType w_dtype, int64_t ldw, int64_t in,
                                float* dx) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[e], rows = offsets[e + 1] - begin;
    if (rows == 0) continue;
    linear_backward_dx(dy + begin * out, rows, out, w[e], w_dtype, ldw, in, dx + begin * in, 0.0f);
  }
}

void grouped_linear_backward_dw(const float* x, const float* dy, const int64_t* offsets, int64_t E,
                                int64_t out, int64_t in, float* const* dw, float beta) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = offsets[e], rows = offsets[e + 1] - begin;
    if (rows == 0) {
      if (beta == 0.0f) std::fill_n(dw[e], out * in, 0.0f);
      continue;
    }
    linear_backward_dw(dy + begin * out, x + begin * in, rows, out, in, dw[e], beta);
  }
}

namespace {

// The K positions of token t in ascending order (= ascending expert), with their k.
void sorted_slots(const int32_t* position, int64_t t, int64_t K, std::vector<int64_t>& ks) {
  ks.resize(size_t(K));
  std::iota(ks.begin(), ks.end(), 0);
  std::sort(ks.begin(), ks.end(),
            [&](int64_t a, int64_t b) { return position[t * K + a] < position[t * K + b]; });
}

}  // namespace

void moe_combine(const float* y_perm, const float* weights, const int32_t* position, int64_t T,
                 int64_t K, int64_t D, const float* add, float* out) {
#pragma omp parallel for schedule(static) if (T * K * D >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> ks;
    sorted_slots(position, t, K, ks);
    float* o = out + t * D;
    std::fill_n(o, D, 0.0f);
    for (int64_t k : ks) {
      const float w = weights[t * K + k];
      const float* y = y_perm + int64_t(position[t * K + k]) * D;
      for (int64_t j = 0; j < D; ++j) o[j] += y[j] * w;
    }
    if (add) {
      const float* a = add + t * D;
      for (int64_t j = 0; j < D; ++j) o[j] += a[j];
    }
  }
}

void moe_combine_backward(const float* y_perm, const float* weights, const int32_t* order,
                          const int32_t* position, int64_t T, int64_t K, int64_t D,
                          const float* dout, float* dy_perm, float* dweights) {
  const int64_t N = T * K;
#pragma omp parallel for schedule(static) if (N * D >= (1 << 16))
  for (int64_t i = 0; i < N; ++i) {
    const int64_t s = order[i];
    const float w = weights[s];
    const float* g = dout + s / K * D;
    float* r = dy_perm + i * D;
    for (int64_t j = 0; j < D; ++j) r[j] = w * g[j];
  }
#pragma omp parallel for schedule(static) if (N * D >= (1 << 16))
  for (int64_t s = 0; s < N; ++s) {
    const float* g = dout + s / K * D;
    const float* y = y_perm + int64_t(position[s]) * D;
    float sum = 0.0f;
    for (int64_t j = 0; j < D; ++j) sum += g[j] * y[j];
    dweights[s] = sum;
  }
}

}  // namespace dseek::ops::cpu
