#include "ops/linear.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace dseek::ops {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[linear] undefined input or weight");
  DSEEK_CHECK(x.dtype() == DType::F32, "[linear] input must be f32, got {}", dtype_name(x.dtype()));
  DSEEK_CHECK(x.dim() >= 1, "[linear] input must have at least one dimension");
  DSEEK_CHECK(weight.dim() == 2, "[linear] weight must be [out, in], got {}",
              shape_str(weight.shape()));
  DType wt = weight.dtype();
  DSEEK_CHECK(wt == DType::F32 || wt == DType::BF16 || wt == DType::F16,
              "[linear] weight dtype {} not supported (f32, bf16, f16)", dtype_name(wt));
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
  Tensor y = Tensor::empty(out_shape, DType::F32);
  if (y.numel() == 0) return y;
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

namespace {

// A caller-provided gradient buffer: f32, contiguous, of the expected shape.
void check_grad_buffer(const Tensor* g, const Shape& shape, const char* name) {
  if (!g) return;
  DSEEK_CHECK(g->defined() && g->dtype() == DType::F32 && g->is_contiguous() && g->shape() == shape,
              "[linear] gradient {} must be f32 contiguous {}, got {}", name, shape_str(shape),
              g->defined() ? shape_str(g->shape()) : std::string("undefined"));
}

}  // namespace

void linear_backward_into(const Tensor& x, const Tensor& weight, const Tensor& dy, Tensor* dx,
                          Tensor* dweight, Tensor* dbias, bool accumulate) {
  DSEEK_CHECK(x.defined() && weight.defined() && dy.defined(), "[linear] undefined input");
  DSEEK_CHECK(x.dtype() == DType::F32 && dy.dtype() == DType::F32,
              "[linear] input and dy must be f32, got {} and {}", dtype_name(x.dtype()),
              dtype_name(dy.dtype()));
  DSEEK_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "[linear] input {} does not match weight {}", shape_str(x.shape()),
              shape_str(weight.shape()));
  const DType wt = weight.dtype();
  DSEEK_CHECK(wt == DType::F32 || wt == DType::BF16 || wt == DType::F16,
              "[linear] weight dtype {} not supported (f32, bf16, f16)", dtype_name(wt));
  const int64_t in = weight.size(1), out = weight.size(0);
  Shape y_shape = x.shape();
  y_shape.back() = out;
  DSEEK_CHECK(dy.shape() == y_shape, "[linear] dy {} does not match the output shape {}",
              shape_str(dy.shape()), shape_str(y_shape));
  DSEEK_CHECK(weight.strides()[1] == 1 || in <= 1, "[linear] weight columns must be contiguous");
  const int64_t ldw = out > 1 ? weight.strides()[0] : in;
  DSEEK_CHECK(ldw >= in, "[linear] weight rows overlap (stride {} < {})", ldw, in);
  check_grad_buffer(dx, x.shape(), "dx");
  check_grad_buffer(dweight, weight.shape(), "dweight");
  check_grad_buffer(dbias, Shape{out}, "dbias");

  const int64_t T = x.numel() / std::max<int64_t>(in, 1);
  const float beta = accumulate ? 1.0f : 0.0f;
  if (T == 0 || in == 0 || out == 0) {
    // Empty sums: gradients are zero (or unchanged when accumulating).
    for (Tensor* g : {dx, dweight, dbias})
      if (g && !accumulate && g->numel() > 0) std::fill_n(g->data<float>(), g->numel(), 0.0f);
    return;
  }
  const Tensor dyc = dy.is_contiguous() ? dy : dy.contiguous();
  if (dx)
    cpu::linear_backward_dx(dyc.data<float>(), T, out, weight.raw(), wt, ldw, in, dx->data<float>(),
                            beta);
  if (dweight) {
    const Tensor xc = x.is_contiguous() ? x : x.contiguous();
    cpu::linear_backward_dw(dyc.data<float>(), xc.data<float>(), T, out, in, dweight->data<float>(),
                            beta);
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
  LinearGrads g;
  g.dx = Tensor::empty(x.shape(), DType::F32);
  g.dweight = Tensor::empty(weight.shape(), DType::F32);
  if (with_bias) g.dbias = Tensor::empty({weight.size(0)}, DType::F32);
  linear_backward_into(x, weight, dy, &g.dx, &g.dweight, with_bias ? &g.dbias : nullptr, false);
  return g;
}

}  // namespace dseek::ops
