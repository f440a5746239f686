#include "ops/fp8.h"

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/cpu/fp8_cpu.h"
#include "ops/cuda/fp8_kernels.h"
#include "ops/cuda/fp8_train_kernels.h"
#include "ops/device.h"
#include "ops/fp8_nan_check.h"

#ifdef DSEEK_HAS_CUDA
#include "core/cuda.h"
#endif

namespace dseek::ops {
namespace {

int64_t tile_rows_of(Fp8Layout layout) {
  return layout == Fp8Layout::Tile1x128 ? 1 : kFp8Tile;
}

const char* layout_name(Fp8Layout layout) {
  return layout == Fp8Layout::Tile1x128 ? "1x128 tiles" : "128x128 blocks";
}

// data F8_E4M3 contiguous 2-D; scale F32 contiguous of the layout's shape; both on one device.
void check_fp8_tensor(const char* op, const Fp8Tensor& t, const char* what) {
  DSEEK_CHECK(t.data.defined() && t.scale.defined(), "[{}] {}: undefined data or scale", op, what);
  DSEEK_CHECK(t.data.dtype() == DType::F8_E4M3 && t.data.dim() == 2 && t.data.is_contiguous(),
              "[{}] {}: data must be contiguous 2-D f8_e4m3, got {} {}", op, what,
              dtype_name(t.data.dtype()), shape_str(t.data.shape()));
  const Shape want = fp8_scale_shape(t.data.size(0), t.data.size(1), t.layout);
  DSEEK_CHECK(t.scale.dtype() == DType::F32 && t.scale.is_contiguous() && t.scale.shape() == want,
              "[{}] {}: scale must be contiguous f32 {} for {} data in {}, got {} {}", op, what,
              shape_str(want), shape_str(t.data.shape()), layout_name(t.layout),
              dtype_name(t.scale.dtype()), shape_str(t.scale.shape()));
}

}  // namespace

Shape fp8_scale_shape(int64_t rows, int64_t cols, Fp8Layout layout) {
  const int64_t tr = tile_rows_of(layout);
  return {(rows + tr - 1) / tr, (cols + kFp8Tile - 1) / kFp8Tile};
}

Fp8Tensor quantize_fp8(const Tensor& x, Fp8Layout layout, bool pow2_scale, std::string_view name) {
  DSEEK_CHECK(x.defined(), "[quantize_fp8] '{}': undefined input", name);
  const Device device = op_device("quantize_fp8", {&x});
  const DType act = activation_dtype("quantize_fp8", x);  // checks: f32, or bf16 on the GPU
  (void)act;                                              // read by the CUDA branch only
  DSEEK_CHECK(layout == Fp8Layout::Tile1x128 ? x.dim() >= 1 : x.dim() == 2,
              "[quantize_fp8] '{}': {} need a {} tensor, got {}", name, layout_name(layout),
              layout == Fp8Layout::Tile1x128 ? "[..., cols]" : "2-D [rows, cols]",
              shape_str(x.shape()));
  const int64_t cols = x.size(-1);
  int64_t rows = 1;
  for (int d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  Fp8Tensor out;
  out.layout = layout;
  out.data = Tensor::empty({rows, cols}, DType::F8_E4M3, device);
  out.scale = Tensor::empty(fp8_scale_shape(rows, cols, layout), DType::F32, device);
  if (x.numel() == 0) return out;
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const int64_t tr = tile_rows_of(layout);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    Fp8NanCheck nan(fmt::format("[quantize_fp8] '{}': input {} contains NaN or Inf", name,
                                shape_str(x.shape())));
    cuda::quantize_fp8(xc.raw(), act, rows, cols, tr, pow2_scale, out.data.data<uint8_t>(),
                       out.scale.data<float>(), nan.flag());
    nan.done();
    return out;
#else
    cuda_not_built("quantize_fp8");
#endif
  }
  const int64_t at = cpu::quantize_fp8(xc.data<float>(), rows, cols, tr, pow2_scale,
                                       out.data.data<uint8_t>(), out.scale.data<float>());
  DSEEK_CHECK(at < 0, "[quantize_fp8] '{}': input {} has {} at row {}, column {}", name,
              shape_str(x.shape()), xc.data<float>()[at < 0 ? 0 : at], at / cols, at % cols);
  return out;
}

Tensor dequantize_fp8(const Fp8Tensor& q, DType out) {
  check_fp8_tensor("dequantize_fp8", q, "input");
  const Device device = op_device("dequantize_fp8", {&q.data, &q.scale});
  const int64_t rows = q.data.size(0), cols = q.data.size(1);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    DSEEK_CHECK(out == DType::F32 || out == DType::BF16,
                "[dequantize_fp8] output dtype must be f32 or bf16 on CUDA, got {}",
                dtype_name(out));
    Tensor y = Tensor::empty({rows, cols}, out, device);
    cuda::dequantize_fp8(q.data.data<uint8_t>(), q.scale.data<float>(), rows, cols,
                         tile_rows_of(q.layout), y.raw(), out);
    return y;
#else
    cuda_not_built("dequantize_fp8");
#endif
  }
  DSEEK_CHECK(out == DType::F32, "[dequantize_fp8] output dtype must be f32 on the CPU, got {}",
              dtype_name(out));
  Tensor y = Tensor::empty({rows, cols}, DType::F32, device);
  if (y.numel() > 0)
    cpu::dequantize_fp8(q.data.data<uint8_t>(), q.scale.data<float>(), rows, cols,
                        tile_rows_of(q.layout), y.data<float>());
  return y;
}

Tensor fp8_gemm(const Fp8Tensor& a, const Fp8Tensor& w, const Tensor* bias, DType out,
                Fp8GemmKernel kernel, Tensor* into) {
  (void)kernel;  // read by the CUDA branch only
  check_fp8_tensor("fp8_gemm", a, "a");
  check_fp8_tensor("fp8_gemm", w, "w");
  DSEEK_CHECK(a.layout == Fp8Layout::Tile1x128 && w.layout == Fp8Layout::Block128x128,
              "[fp8_gemm] a must be in 1x128 tiles and w in 128x128 blocks, got {} and {}",
              layout_name(a.layout), layout_name(w.layout));
  const Device device = op_device("fp8_gemm", {&a.data, &a.scale, &w.data, &w.scale, bias});
  const int64_t M = a.data.size(0), K = a.data.size(1), N = w.data.size(0);
  DSEEK_CHECK(w.data.size(1) == K, "[fp8_gemm] a {} and w {} differ in K",
              shape_str(a.data.shape()), shape_str(w.data.shape()));
  if (bias)
    DSEEK_CHECK(bias->defined() && bias->dim() == 1 && bias->size(0) == N &&
                    (bias->dtype() == DType::F32 || bias->dtype() == DType::BF16 ||
                     bias->dtype() == DType::F16),
                "[fp8_gemm] bias must be [{}] f32, bf16 or f16, got {}", N,
                bias->defined()
                    ? std::string(dtype_name(bias->dtype())) + " " + shape_str(bias->shape())
                    : std::string("undefined"));
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    DSEEK_CHECK(out == DType::F32 || out == DType::BF16,
                "[fp8_gemm] output dtype must be f32 or bf16, got {}", dtype_name(out));
    if (into)
      DSEEK_CHECK(into->defined() && into->is_cuda() && into->dtype() == out &&
                      into->numel() == M * N && into->is_contiguous(),
                  "[fp8_gemm] the output must be contiguous {} on the GPU with {} elements, got "
                  "{} {}",
                  dtype_name(out), M * N, dtype_name(into->dtype()), shape_str(into->shape()));
    Tensor y = into ? *into : Tensor::empty({M, N}, out, device);
    if (kernel == Fp8GemmKernel::Best &&
        cuda::fp8_gemm_cublaslt(a.data.data<uint8_t>(), a.scale.data<float>(), M, K,
                                w.data.data<uint8_t>(), w.scale.data<float>(), N, bias, y.raw(),
                                out))
      return y;
    if (kernel != Fp8GemmKernel::Plain && !bias && cuda::fp8_wgmma_takes(K, N)) {
      cuda::fp8_gemm_wgmma(a.data.data<uint8_t>(), a.scale.data<float>(), M, K,
                           w.data.data<uint8_t>(), w.scale.data<float>(), N, y.raw(), out);
      return y;
    }
    const Tensor bc = bias ? bias->contiguous() : Tensor();
    cuda::fp8_gemm(a.data.data<uint8_t>(), a.scale.data<float>(), M, K, w.data.data<uint8_t>(),
                   w.scale.data<float>(), N, bias ? bc.raw() : nullptr,
                   bias ? bc.dtype() : DType::F32, y.raw(), out);
    return y;
#else
    cuda_not_built("fp8_gemm");
#endif
  }
  DSEEK_CHECK(out == DType::F32 && !into,
              "[fp8_gemm] output dtype must be f32 on the CPU (and no output tensor), got {}",
              dtype_name(out));
  Tensor y = Tensor::empty({M, N}, DType::F32, device);
  if (y.numel() == 0) return y;
  float* yp = y.data<float>();
  cpu::fp8_gemm(a.data.data<uint8_t>(), a.scale.data<float>(), M, K, w.data.data<uint8_t>(),
                w.scale.data<float>(), N, yp);
  if (bias) {
    const std::vector<float> b = bias->to_vector();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) yp[m * N + n] += b[size_t(n)];
  }
  return y;
}

Tensor linear_fp8(const Tensor& x, const Tensor& weight, const Tensor& scale_inv,
                  const Tensor* bias) {
  DSEEK_CHECK(x.defined() && weight.defined() && scale_inv.defined(),
              "[linear_fp8] undefined input, weight or scale_inv");
  const DType act = activation_dtype("linear_fp8", x);
  DSEEK_CHECK(weight.dim() == 2 && weight.dtype() == DType::F8_E4M3,
              "[linear_fp8] weight must be f8_e4m3 [out, in], got {} {}",
              dtype_name(weight.dtype()), shape_str(weight.shape()));
  DSEEK_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
              "[linear_fp8] input {} does not match weight {}", shape_str(x.shape()),
              shape_str(weight.shape()));
  const Fp8Tensor w{weight.is_contiguous() ? weight : weight.contiguous(), scale_inv,
                    Fp8Layout::Block128x128};
  const int64_t in = weight.size(1), out = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  int64_t T = 1;
  for (int d = 0; d + 1 < x.dim(); ++d) T *= x.size(d);
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const Fp8Tensor a =
      quantize_fp8(xc.reshape({T, in}), Fp8Layout::Tile1x128, false, "linear_fp8 input");
  return fp8_gemm(a, w, bias, act).reshape(out_shape);
}

}  // namespace dseek::ops
