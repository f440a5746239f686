#include "ops/norm.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

namespace dseek::ops {

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[rms_norm] undefined input or weight");
  const Device device = op_device("rms_norm", {&x, &weight});
  const DType act = activation_dtype("rms_norm", x);
  DSEEK_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "[rms_norm] weight {} does not match input {}", shape_str(weight.shape()),
              shape_str(x.shape()));
  DSEEK_CHECK(eps >= 0, "[rms_norm] negative eps {}", eps);
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  Tensor y = Tensor::empty(x.shape(), act, device);
  const int64_t D = x.size(-1);
  if (y.numel() == 0) return y;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    const Tensor wc = weight.contiguous();
    cuda::rms_norm(xc.raw(), wc.raw(), wc.dtype(), y.raw(), x.numel() / D, D, float(eps), act);
    return y;
#else
    cuda_not_built("rms_norm");
#endif
  }
  const std::vector<float> w = weight.to_vector();
  cpu::rms_norm(xc.data<float>(), w.data(), y.data<float>(), x.numel() / D, D, float(eps));
  return y;
}

Tensor add_rms_norm(Tensor& h, const Tensor& x, const Tensor& weight, double eps) {
  DSEEK_CHECK(h.defined() && x.defined() && weight.defined(), "[add_rms_norm] undefined input");
  const Device device = op_device("add_rms_norm", {&h, &x, &weight});
  if (device != Device::CUDA) {  // the composition is the reference (and the CPU's fast enough)
    add_inplace(h, x);
    return rms_norm(h, weight, eps);
  }
  const DType act = activation_dtype("add_rms_norm", h);
  DSEEK_CHECK(x.dtype() == act && x.shape() == h.shape(), "[add_rms_norm] h is {} {}, x {} {}",
              dtype_name(act), shape_str(h.shape()), dtype_name(x.dtype()), shape_str(x.shape()));
  DSEEK_CHECK(h.is_contiguous(), "[add_rms_norm] h {} must be contiguous", shape_str(h.shape()));
  DSEEK_CHECK(h.dim() >= 1 && weight.dim() == 1 && weight.size(0) == h.size(-1),
              "[add_rms_norm] weight {} does not match input {}", shape_str(weight.shape()),
              shape_str(h.shape()));
  DSEEK_CHECK(eps >= 0, "[add_rms_norm] negative eps {}", eps);
  Tensor y = Tensor::empty(h.shape(), act, device);
  if (y.numel() == 0) return y;
#ifdef DSEEK_HAS_CUDA
  const int64_t D = h.size(-1);
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const Tensor wc = weight.contiguous();
  cuda::add_rms_norm(h.raw(), xc.raw(), wc.raw(), wc.dtype(), y.raw(), h.numel() / D, D, float(eps),
                     act);
#else
  cuda_not_built("add_rms_norm");
#endif
  return y;
}

void rms_norm_backward_into(const Tensor& x, const Tensor& weight, double eps, const Tensor& dy,
                            Tensor& dx, Tensor* dweight, bool accumulate_dweight) {
  DSEEK_CHECK(x.defined() && weight.defined() && dy.defined(), "[rms_norm] undefined input");
  const Device device = op_device("rms_norm", {&x, &weight, &dy, &dx, dweight});
  const DType act = activation_dtype("rms_norm", x);
  DSEEK_CHECK(dy.dtype() == act, "[rms_norm] dy is {}, the input {}", dtype_name(dy.dtype()),
              dtype_name(act));
  DSEEK_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "[rms_norm] weight {} does not match input {}", shape_str(weight.shape()),
              shape_str(x.shape()));
  DSEEK_CHECK(dy.shape() == x.shape(), "[rms_norm] dy {} does not match input {}",
              shape_str(dy.shape()), shape_str(x.shape()));
  DSEEK_CHECK(eps >= 0, "[rms_norm] negative eps {}", eps);
  DSEEK_CHECK(dx.defined() && dx.dtype() == act && dx.is_contiguous() && dx.shape() == x.shape(),
              "[rms_norm] gradient dx must be {} contiguous {}", dtype_name(act),
              shape_str(x.shape()));
  if (dweight)
    DSEEK_CHECK(dweight->defined() && dweight->dtype() == DType::F32 && dweight->is_contiguous() &&
                    dweight->shape() == weight.shape(),
                "[rms_norm] gradient dweight must be f32 contiguous {}", shape_str(weight.shape()));
  const int64_t D = x.size(-1);
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const Tensor dyc = dy.is_contiguous() ? dy : dy.contiguous();
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    const Tensor wc = weight.contiguous();
    cuda::rms_norm_backward(xc.raw(), wc.raw(), wc.dtype(), dyc.raw(), dx.raw(),
                            dweight ? dweight->data<float>() : nullptr, x.numel() / D, D,
                            float(eps), accumulate_dweight ? 1.0f : 0.0f, act);
    return;
#else
    cuda_not_built("rms_norm");
#endif
  }
  if (x.numel() == 0) {
    if (dweight && !accumulate_dweight && D > 0) std::fill_n(dweight->data<float>(), D, 0.0f);
    return;
  }
  const std::vector<float> w = weight.to_vector();
  cpu::rms_norm_backward(xc.data<float>(), w.data(), dyc.data<float>(), dx.data<float>(),
                         dweight ? dweight->data<float>() : nullptr, x.numel() / D, D, float(eps),
                         accumulate_dweight ? 1.0f : 0.0f);
}

RmsNormGrads rms_norm_backward(const Tensor& x, const Tensor& weight, double eps,
                               const Tensor& dy) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[rms_norm] undefined input or weight");
  RmsNormGrads g{Tensor::empty(x.shape(), x.dtype(), x.device()),
                 Tensor::empty(weight.shape(), DType::F32, x.device())};
  rms_norm_backward_into(x, weight, eps, dy, g.dx, &g.dweight, false);
  return g;
}

}  // namespace dseek::ops
