#include "ops/cross_entropy.h"

#include <string>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {
namespace {

// Checks logits/targets and returns the row stride.
int64_t check_inputs(const Tensor& logits, const std::vector<int32_t>& targets,
                     int32_t ignore_index) {
  DSEEK_CHECK(logits.defined() && logits.dtype() == DType::F32 && logits.dim() == 2,
              "[cross_entropy] logits must be f32 [T, V], got {}",
              logits.defined() ? shape_str(logits.shape()) : std::string("undefined"));
  const int64_t T = logits.size(0), V = logits.size(1);
  DSEEK_CHECK(int64_t(targets.size()) == T, "[cross_entropy] {} targets for {} rows of logits",
              targets.size(), T);
  DSEEK_CHECK(logits.strides()[1] == 1 || V <= 1,
              "[cross_entropy] the vocabulary dimension must be contiguous");
  for (size_t t = 0; t < targets.size(); ++t)
    DSEEK_CHECK(targets[t] == ignore_index || (targets[t] >= 0 && targets[t] < V),
                "[cross_entropy] target {} at position {} is outside [0, {}) and not the "
                "ignore_index {}",
                targets[t], t, V, ignore_index);
  return T > 1 ? logits.strides()[0] : V;
}

// The backward reuses the forward's per-row log-sum-exp; it must come from the same logits.
void check_forward(const CrossEntropyResult& forward, int64_t T) {
  DSEEK_CHECK(forward.lse.defined() && forward.lse.dtype() == DType::F32 &&
                  forward.lse.shape() == Shape({T}) && forward.lse.is_contiguous(),
              "[cross_entropy] forward result does not match {} rows", T);
}

}  // namespace

CrossEntropyResult cross_entropy_forward(const Tensor& logits, const std::vector<int32_t>& targets,
                                         int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0), V = logits.size(1);
  DSEEK_CHECK(V > 0 || T == 0, "[cross_entropy] empty vocabulary");
  CrossEntropyResult r;
  r.lse = Tensor::empty({T}, DType::F32);
  if (T == 0) return r;
  double sum = 0;
  cpu::cross_entropy_forward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                             r.lse.data<float>(), &sum, &r.count);
  r.loss = r.count > 0 ? sum / double(r.count) : 0.0;
  return r;
}

void cross_entropy_backward_inplace(const Tensor& logits, const std::vector<int32_t>& targets,
                                    const CrossEntropyResult& forward, float dloss,
                                    int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0), V = logits.size(1);
  check_forward(forward, T);
  if (T == 0 || V == 0) return;
  const float scale = forward.count > 0 ? dloss / float(forward.count) : 0.0f;
  cpu::cross_entropy_backward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                              forward.lse.data<float>(), scale, logits.data<float>(), ld);
}

Tensor cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets,
                              const CrossEntropyResult& forward, float dloss,
                              int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0), V = logits.size(1);
  check_forward(forward, T);
  Tensor d = Tensor::empty({T, V}, DType::F32);
  if (d.numel() == 0) return d;
  const float scale = forward.count > 0 ? dloss / float(forward.count) : 0.0f;
  cpu::cross_entropy_backward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                              forward.lse.data<float>(), scale, d.data<float>(), V);
  return d;
}

double weighted_cross_entropy_loss(const Tensor& logits, const std::vector<int32_t>& targets,
                                   const CrossEntropyResult& forward,
                                   const std::vector<float>& weights, int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0);
  check_forward(forward, T);
  DSEEK_CHECK(int64_t(weights.size()) == T, "[cross_entropy] {} weights for {} rows",
              weights.size(), T);
  const float* x = logits.data<float>();
  const float* lse = forward.lse.data<float>();
  double sum = 0;
  for (int64_t t = 0; t < T; ++t)
    if (targets[size_t(t)] != ignore_index)
      sum += double(weights[size_t(t)]) * (double(lse[t]) - double(x[t * ld + targets[size_t(t)]]));
  return sum;
}

void weighted_cross_entropy_backward_inplace(const Tensor& logits,
                                             const std::vector<int32_t>& targets,
                                             const CrossEntropyResult& forward,
                                             const std::vector<float>& weights,
                                             int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0), V = logits.size(1);
  check_forward(forward, T);
  DSEEK_CHECK(int64_t(weights.size()) == T, "[cross_entropy] {} weights for {} rows",
              weights.size(), T);
  if (T == 0 || V == 0) return;
  cpu::cross_entropy_backward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                              forward.lse.data<float>(), 1.0f, logits.data<float>(), ld,
                              weights.data());
}

}  // namespace dseek::ops
