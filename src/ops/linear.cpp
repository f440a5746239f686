#include "ops/linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/gemv.h"
#include "ops/device.h"

namespace dseek::ops {
namespace {

// The weight dtypes each device multiplies: on the CPU any stored float dtype (converted on the
// fly, x is f32); on the GPU the activation dtype itself (cuBLASLt's bf16×bf16 or f32×f32 GEMMs),
// so a model's weights are cast to its activation dtype once when they are moved to the GPU.
void check_weight_dtype(Device device, DType act, DType wt) {
  if (device == Device::CUDA) {
    DSEEK_CHECK(wt == act,
                "[linear] on CUDA the weight dtype must equal the activation dtype (bf16 x with "
                "bf16 W, f32 with f32), got x {} and W {}",
                dtype_name(act), dtype_name(wt));
    return;
  }
  DSEEK_CHECK(wt == DType::F32 || wt == DType::BF16 || wt == DType::F16,
              "[linear] weight dtype {} not supported (f32, bf16, f16)", dtype_name(wt));
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[linear] undefined input or weight");
  const Device device = op_device("linear", {&x, &weight, bias});
  const DType act = activation_dtype("linear", x);
  DSEEK_CHECK(x.dim() >= 1, "[linear] input must have at least one dimension");
  DSEEK_CHECK(weight.dim() == 2, "[linear] weight must be [out, in], got {}",
              shape_str(weight.shape()));
  const DType wt = weight.dtype();
  check_weight_dtype(device, act, wt);
  const int64_t in = weight.size(1), out = weight.size(0);
  DSEEK_CHECK(x.size(-1) == in, "[linear] input {} does not match weight {}", shape_str(x.shape()),
              shape_str(weight.shape()));
  DSEEK_CHECK(weight.strides()[1] == 1 || in <= 1, "[linear] weight columns must be contiguous");
  const int64_t ldw = out > 1 ? weight.strides()[0] : in;
  DSEEK_CHECK(ldw >= in, "[linear] weight rows overlap (stride {} < {})", ldw, in);
  if (bias) {
    DSEEK_CHECK(bias->defined() && bias->dim() == 1 && bias->size(0) == out,
                "[linear] bias must be [{}], got {}", out,
                bias->defined() ? shape_str(bias->shape()) : std::string("undefined"));
  }

  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  int64_t T = 1;
  for (int d = 0; d + 1 < x.dim(); ++d) T *= x.size(d);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor y = Tensor::empty(out_shape, act, device);
  if (y.numel() == 0) return y;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    if (bias)
      DSEEK_CHECK(bias->dtype() == DType::F32 || bias->dtype() == DType::BF16 ||
                      bias->dtype() == DType::F16,
                  "[linear] bias dtype {} not supported on CUDA (f32, bf16, f16)",
                  dtype_name(bias->dtype()));
    const Tensor bc = bias ? bias->contiguous() : Tensor();
    cuda::linear(xc.raw(), T, in, weight.raw(), ldw, out, bias ? bc.raw() : nullptr,
                 bias ? bc.dtype() : act, y.raw(), act);
    return y;
#else
    cuda_not_built("linear");
#endif
  }
  float* yp = y.data<float>();
  if (T <= kLinearGemvMaxTokens) {
    cpu::linear_gemv(xc.data<float>(), T, in, weight.raw(), wt, ldw, out, yp);
  } else {
    cpu::linear_gemm(xc.data<float>(), T, in, weight.raw(), wt, ldw, out, yp);
  }
  if (bias) {
    const std::vector<float> b = bias->to_vector();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < out; ++o) yp[t * out + o] += b[size_t(o)];
  }
  return y;
}

Tensor linear_widened(const Tensor& x, const Tensor& weight) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[linear_widened] undefined input or weight");
#ifdef DSEEK_HAS_CUDA
  if (x.is_cuda() && weight.is_cuda() && weight.dtype() == DType::F32 && weight.dim() == 2 &&
      x.dim() >= 1 && x.size(-1) == weight.size(1) && weight.strides()[1] == 1) {
    const Tensor xc = x.contiguous();
    const int64_t in = weight.size(1), out = weight.size(0),
                  T = xc.numel() / std::max<int64_t>(in, 1);
    const int64_t ldw = out > 1 ? weight.strides()[0] : in;
    if (in > 0 && out > 0 &&
        cuda::gemv_widened_takes(T, in, xc.raw(), weight.raw(), ldw, x.dtype())) {
      Shape out_shape = x.shape();
      out_shape.back() = out;
      Tensor y = Tensor::empty(out_shape, DType::F32, Device::CUDA);
      cuda::gemv_widened(xc.raw(), T, in, weight.data<float>(), ldw, out, y.data<float>());
      return y;
    }
  }
#endif
  return linear(x.dtype() == DType::F32 ? x : x.to(DType::F32), weight);
}

namespace {

// A caller-provided gradient buffer: contiguous, of the expected shape and dtype.
void check_grad_buffer(const Tensor* g, const Shape& shape, DType dtype, const char* name) {
  if (!g) return;
  DSEEK_CHECK(g->defined() && g->dtype() == dtype && g->is_contiguous() && g->shape() == shape,
              "[linear] gradient {} must be {} contiguous {}, got {} {}", name, dtype_name(dtype),
              shape_str(shape), g->defined() ? dtype_name(g->dtype()) : "undefined",
              g->defined() ? shape_str(g->shape()) : std::string());
}

}  // namespace

void linear_backward_into(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor* dx,
                          Tensor* dweight, Tensor* dbias, bool accumulate) {
  DSEEK_CHECK(x.defined() && weight.defined() && dy.defined(), "[linear] undefined input");
  const Device device = op_device("linear", {&x, &weight, &dy, dx, dweight, dbias});
  const DType act = activation_dtype("linear", x);
  DSEEK_CHECK(dy.dtype() == act, "[linear] dy is {}, the input {}", dtype_name(dy.dtype()),
              dtype_name(act));
  DSEEK_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "[linear] input {} does not match weight {}", shape_str(x.shape()),
              shape_str(weight.shape()));
  const DType wt = weight.dtype();
  check_weight_dtype(device, act, wt);
  const int64_t in = weight.size(1), out = weight.size(0);
  Shape y_shape = x.shape();
  y_shape.back() = out;
  DSEEK_CHECK(dy.shape() == y_shape, "[linear] dy {} does not match the output shape {}",
              shape_str(dy.shape()), shape_str(y_shape));
  DSEEK_CHECK(weight.strides()[1] == 1 || in <= 1, "[linear] weight columns must be contiguous");
  const int64_t ldw = out > 1 ? weight.strides()[0] : in;
  DSEEK_CHECK(ldw >= in, "[linear] weight rows overlap (stride {} < {})", ldw, in);
  // dx is an activation gradient (act); parameter gradients are f32 (master weights), or for dW
  // bf16 (train::ParamSet::bf16_matrix_grads: the f32 sum rounded; accumulating on the GPU over
  // bf16 inputs, rounded before the old value is added, as PyTorch does).
  check_grad_buffer(dx, x.shape(), act, "dx");
  check_grad_buffer(
      dweight, weight.shape(),
      dweight && dweight->defined() && dweight->dtype() == DType::BF16 ? DType::BF16 : DType::F32,
      "dweight");
  check_grad_buffer(dbias, Shape{out}, DType::F32, "dbias");

  const int64_t T = x.numel() / std::max<int64_t>(in, 1);
  const float beta = accumulate ? 1.0f : 0.0f;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    // Rows from the leading dimensions (T above is 0 when in = 0, yet dbias still sums dy). The
    // kernels treat empty sums themselves: zero, or unchanged when accumulating.
    int64_t rows = 1;
    for (int d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
    const Tensor dyc = dy.is_contiguous() ? dy : dy.contiguous();
    const Tensor xc = x.is_contiguous() ? x : x.contiguous();
    if (dx)
      cuda::linear_backward_dx(dyc.raw(), rows, out, weight.raw(), ldw, in, dx->raw(), beta, act);
    if (dweight && dweight->dtype() == DType::BF16 && act != DType::BF16) {
      // cuBLASLt has no f32 × f32 → bf16 GEMM: the f32 dW (from the old value when
      // accumulating), rounded once, as on the CPU.
      Tensor dw32 = accumulate ? dweight->to(DType::F32)
                               : Tensor::empty(weight.shape(), DType::F32, Device::CUDA);
      cuda::linear_backward_dw(dyc.raw(), xc.raw(), rows, out, in, dw32.raw(), beta, act);
      dweight->copy_from(dw32.to(DType::BF16));
    } else if (dweight) {
      cuda::linear_backward_dw(dyc.raw(), xc.raw(), rows, out, in, dweight->raw(), beta, act,
                               dweight->dtype());
    }
    if (dbias) cuda::linear_backward_dbias(dyc.raw(), rows, out, dbias->data<float>(), beta, act);
    return;
#else
    cuda_not_built("linear");
#endif
  }
  if (T == 0 || in == 0 || out == 0) {
    // Empty sums: gradients are zero (or unchanged when accumulating); +0 is all-zero bytes.
    for (Tensor* g : {dx, dweight, dbias})
      if (g && !accumulate && g->numel() > 0) std::memset(g->raw(), 0, g->nbytes());
    return;
  }
  const Tensor dyc = dy.is_contiguous() ? dy : dy.contiguous();
  if (dx)
    cpu::linear_backward_dx(dyc.data<float>(), T, out, weight.raw(), wt, ldw, in, dx->data<float>(),
                            beta);
  if (dweight) {
    const Tensor xc = x.is_contiguous() ? x : x.contiguous();
    // A bf16 dW: the f32 sum (from the old value when accumulating), rounded once.
    const bool bf16 = dweight->dtype() == DType::BF16;
    Tensor dw32 =
        bf16 ? (accumulate ? dweight->to(DType::F32) : Tensor::empty(weight.shape())) : *dweight;
    cpu::linear_backward_dw(dyc.data<float>(), xc.data<float>(), T, out, in, dw32.data<float>(),
                            beta);
    if (bf16) dweight->copy_from(dw32.to(DType::BF16));
  }
  if (dbias) {
    float* db = dbias->data<float>();
    const float* g = dyc.data<float>();
    for (int64_t o = 0; o < out; ++o) {
      double s = accumulate ? double(db[o]) : 0.0;
      for (int64_t t = 0; t < T; ++t) s += g[t * out + o];
      db[o] = float(s);
    }
  }
}

LinearGrads linear_backward(const Tensor& x, const Tensor& weight, const Tensor& dy,
                            bool with_bias) {
  DSEEK_CHECK(weight.defined() && weight.dim() == 2, "[linear] weight must be [out, in]");
  DSEEK_CHECK(x.defined(), "[linear] undefined input");
  LinearGrads g;
  g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  g.dweight = Tensor::empty(weight.shape(), DType::F32, x.device());
  if (with_bias) g.dbias = Tensor::empty({weight.size(0)}, DType::F32, x.device());
  linear_backward_into(x, weight, dy, &g.dx, &g.dweight, with_bias ? &g.dbias : nullptr, false);
  return g;
}

}  // namespace dseek::ops
