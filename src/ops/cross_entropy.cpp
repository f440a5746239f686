#include "ops/cross_entropy.h"

#include <cstring>
#include <string>

#include "core/cuda.h"
#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {
namespace {

// Checks logits/targets (on the host, whatever the device) and returns the row stride. Logits
// are f32, or on the GPU f32 or bf16.
int64_t check_inputs(const Tensor& logits, const std::vector<int32_t>& targets,
                     int32_t ignore_index) {
  DSEEK_CHECK(logits.defined() && logits.dim() == 2,
              "[cross_entropy] logits must be [T, V], got {}",
              logits.defined() ? shape_str(logits.shape()) : std::string("undefined"));
  activation_dtype("cross_entropy", logits);
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

// The backward reuses the forward's per-row log-sum-exp; it must come from the same logits (and
// so lie on their device).
void check_forward(const CrossEntropyResult& forward, const Tensor& logits) {
  const int64_t T = logits.size(0);
  DSEEK_CHECK(forward.lse.defined() && forward.lse.dtype() == DType::F32 &&
                  forward.lse.shape() == Shape({T}) && forward.lse.is_contiguous(),
              "[cross_entropy] forward result does not match {} rows", T);
  op_device("cross_entropy", {&logits, &forward.lse});
}

void check_weights(const std::vector<float>& weights, int64_t T) {
  DSEEK_CHECK(int64_t(weights.size()) == T, "[cross_entropy] {} weights for {} rows",
              weights.size(), T);
}

#ifdef DSEEK_HAS_CUDA
// Host vectors the CUDA kernels read, uploaded per call (T values: small next to the logits).
Tensor device_targets(const std::vector<int32_t>& targets) {
  return Tensor::from_ids(targets).to(Device::CUDA);
}
Tensor device_weights(const std::vector<float>& weights) {
  return Tensor::from_vector(weights, {int64_t(weights.size())}).to(Device::CUDA);
}
#endif

}  // namespace

CrossEntropyResult cross_entropy_forward(const Tensor& logits, const std::vector<int32_t>& targets,
                                         int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0), V = logits.size(1);
  DSEEK_CHECK(V > 0 || T == 0, "[cross_entropy] empty vocabulary");
  CrossEntropyResult r;
  r.lse = Tensor::empty({T}, DType::F32, logits.device());
  if (T == 0) return r;
  if (logits.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const Tensor dev_targets = device_targets(targets);
    // The kernels' two results, read back together: loss_sum (f64) then count (i64).
    Tensor scalars = Tensor::empty({2}, DType::I64, Device::CUDA);
    double* loss_sum = static_cast<double*>(scalars.raw());
    cuda::cross_entropy_forward(logits.raw(), T, V, ld, dev_targets.data<int32_t>(), ignore_index,
                                r.lse.data<float>(), loss_sum, scalars.data<int64_t>() + 1,
                                logits.dtype());
    int64_t host[2];
    dseek::cuda::copy_to_host(host, scalars.raw(), sizeof(host));
    double sum;
    std::memcpy(&sum, &host[0], sizeof(sum));
    r.count = host[1];
    r.loss = r.count > 0 ? sum / double(r.count) : 0.0;
    return r;
#else
    cuda_not_built("cross_entropy");
#endif
  }
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
  check_forward(forward, logits);
  if (T == 0 || V == 0) return;
  const float scale = forward.count > 0 ? dloss / float(forward.count) : 0.0f;
  if (logits.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const Tensor dev_targets = device_targets(targets);
    cuda::cross_entropy_backward(logits.raw(), T, V, ld, dev_targets.data<int32_t>(), ignore_index,
                                 forward.lse.data<float>(), scale, logits.raw(), ld, nullptr,
                                 logits.dtype());
    return;
#else
    cuda_not_built("cross_entropy");
#endif
  }
  cpu::cross_entropy_backward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                              forward.lse.data<float>(), scale, logits.data<float>(), ld);
}

Tensor cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets,
                              const CrossEntropyResult& forward, float dloss,
                              int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0), V = logits.size(1);
  check_forward(forward, logits);
  Tensor d = Tensor::empty({T, V}, logits.dtype(), logits.device());
  if (d.numel() == 0) return d;
  const float scale = forward.count > 0 ? dloss / float(forward.count) : 0.0f;
  if (logits.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const Tensor dev_targets = device_targets(targets);
    cuda::cross_entropy_backward(logits.raw(), T, V, ld, dev_targets.data<int32_t>(), ignore_index,
                                 forward.lse.data<float>(), scale, d.raw(), V, nullptr,
                                 logits.dtype());
    return d;
#else
    cuda_not_built("cross_entropy");
#endif
  }
  cpu::cross_entropy_backward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                              forward.lse.data<float>(), scale, d.data<float>(), V);
  return d;
}

double weighted_cross_entropy_loss(const Tensor& logits, const std::vector<int32_t>& targets,
                                   const CrossEntropyResult& forward,
                                   const std::vector<float>& weights, int32_t ignore_index) {
  const int64_t ld = check_inputs(logits, targets, ignore_index);
  const int64_t T = logits.size(0);
  check_forward(forward, logits);
  check_weights(weights, T);
  if (T == 0) return 0.0;
  if (logits.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const Tensor dev_targets = device_targets(targets), dev_weights = device_weights(weights);
    Tensor sum = Tensor::empty({1}, DType::I64, Device::CUDA);  // holds one f64
    cuda::cross_entropy_weighted_loss(
        logits.raw(), T, ld, dev_targets.data<int32_t>(), ignore_index, forward.lse.data<float>(),
        dev_weights.data<float>(), static_cast<double*>(sum.raw()), logits.dtype());
    double host = 0;
    dseek::cuda::copy_to_host(&host, sum.raw(), sizeof(host));
    return host;
#else
    cuda_not_built("cross_entropy");
#endif
  }
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
  check_forward(forward, logits);
  check_weights(weights, T);
  if (T == 0 || V == 0) return;
  if (logits.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const Tensor dev_targets = device_targets(targets), dev_weights = device_weights(weights);
    cuda::cross_entropy_backward(logits.raw(), T, V, ld, dev_targets.data<int32_t>(), ignore_index,
                                 forward.lse.data<float>(), 1.0f, logits.raw(), ld,
                                 dev_weights.data<float>(), logits.dtype());
    return;
#else
    cuda_not_built("cross_entropy");
#endif
  }
  cpu::cross_entropy_backward(logits.data<float>(), T, V, ld, targets.data(), ignore_index,
                              forward.lse.data<float>(), 1.0f, logits.data<float>(), ld,
                              weights.data());
}

}  // namespace dseek::ops
