#include "ops/mla_decode.h"

#include "core/error.h"
#include "ops/cpu/mla_decode_cpu.h"
#include "ops/cuda/cuda_ops.h"
#ifdef DSEEK_HAS_CUDA
#include "ops/cuda/gemv.h"
#endif
#include "ops/device.h"
#include "ops/rope.h"

namespace dseek::ops {

namespace {

bool last_dim_contiguous(const Tensor& t) {
  return t.strides()[size_t(t.dim() - 1)] == 1 || t.size(t.dim() - 1) <= 1;
}

}  // namespace

namespace {

// mla_decode's work; with `project` (w [H, rank, N], as head_matmul takes it) the result is
// head_matmul(out, *project) instead of out, on a GPU in one launch after the decode kernel where
// cuda::mla_decode_projected applies.
Tensor mla_decode_any(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale,
                      [[maybe_unused]] const int64_t* device_positions,
                      const Tensor* project = nullptr) {
  DSEEK_CHECK(q_abs.defined() && latent.defined(), "[mla_decode] undefined input");
  const Device device = op_device("mla_decode", {&q_abs, &latent});
  const DType act = activation_dtype("mla_decode", q_abs);
  DSEEK_CHECK(latent.dtype() == act, "[mla_decode] q_abs is {}, the latent rows {}",
              dtype_name(act), dtype_name(latent.dtype()));
  DSEEK_CHECK(q_abs.dim() == 3 && latent.dim() == 2,
              "[mla_decode] q_abs must be [T, H, r + rope] and latent [S, r + rope], got {}, {}",
              shape_str(q_abs.shape()), shape_str(latent.shape()));
  const int64_t T = q_abs.size(0), H = q_abs.size(1), dk = q_abs.size(2), S = latent.size(0);
  DSEEK_CHECK(latent.size(1) == dk, "[mla_decode] latent rows of {} values, q_abs rows of {}",
              latent.size(1), dk);
  DSEEK_CHECK(rank > 0 && rank <= dk, "[mla_decode] rank {} outside [1, {}]", rank, dk);
  DSEEK_CHECK(S >= T, "[mla_decode] {} queries but only {} latent rows", T, S);
  DSEEK_CHECK(last_dim_contiguous(q_abs) && last_dim_contiguous(latent),
              "[mla_decode] last dimension must be contiguous");
  if (project)
    DSEEK_CHECK(project->defined() && project->dtype() == act && project->device() == device &&
                    project->dim() == 3 && project->size(0) == H && project->size(1) == rank &&
                    project->is_contiguous(),
                "[mla_decode] the output's projection must be contiguous {} [{}, {}, N] on the "
                "{}",
                dtype_name(act), H, rank, device_name(device));
  Tensor out = Tensor::empty({T, H, rank}, act, device);
  if (out.numel() == 0) return project ? head_matmul(out, *project) : out;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    const cuda::MlaDecodeArgs args{q_abs.raw(),
                                   q_abs.strides()[0],
                                   q_abs.strides()[1],
                                   latent.raw(),
                                   latent.strides()[0],
                                   out.raw(),
                                   T,
                                   S,
                                   H,
                                   dk,
                                   rank,
                                   scale,
                                   device_positions};
    if (project) {
      const int64_t N = project->size(2);
      Tensor y = Tensor::empty({T, H, N}, act, device);
      if (cuda::mla_decode_projected(args, project->raw(), y.raw(), y.strides()[0], y.strides()[1],
                                     N, act))
        return y;
    }
    cuda::mla_decode(args, act);
    return project ? head_matmul(out, *project) : out;
#else
    cuda_not_built("mla_decode");
#endif
  }
  cpu::mla_decode(cpu::MlaDecodeArgs{q_abs.data<float>(), q_abs.strides()[0], q_abs.strides()[1],
                                     latent.data<float>(), latent.strides()[0], out.data<float>(),
                                     T, S, H, dk, rank, scale});
  return project ? head_matmul(out, *project) : out;
}

// mla_decode over a cache's storage (the positions overload), with mla_decode_any's `project`.
Tensor mla_decode_at(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale,
                     const Tensor& positions, const Tensor* project) {
  DSEEK_CHECK(q_abs.defined() && latent.defined() && positions.defined(),
              "[mla_decode] undefined input");
  const int64_t T = q_abs.dim() == 3 ? q_abs.size(0) : -1;
  DSEEK_CHECK(positions.dtype() == DType::I64 && positions.dim() == 1 && positions.size(0) == T &&
                  positions.is_contiguous() && positions.device() == latent.device(),
              "[mla_decode] positions must be contiguous i64 [{}] on the {}, got {} {} on the {}",
              T, device_name(latent.device()), dtype_name(positions.dtype()),
              shape_str(positions.shape()), device_name(positions.device()));
  if (T == 0) return mla_decode_any(q_abs, latent.slice(0, 0, 0), rank, scale, nullptr, project);
  if (positions.is_cuda())
    return mla_decode_any(q_abs, latent, rank, scale, static_cast<const int64_t*>(positions.raw()),
                          project);
  const int64_t S = positions.data<int64_t>()[T - 1] + 1;
  DSEEK_CHECK(S >= T && S <= latent.size(0),
              "[mla_decode] the last query's position {} needs {} keys; the latent holds {} rows",
              S - 1, S, latent.size(0));
  return mla_decode_any(q_abs, latent.slice(0, 0, S), rank, scale, nullptr, project);
}

}  // namespace

Tensor mla_decode(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale) {
  return mla_decode_any(q_abs, latent, rank, scale, nullptr);
}

Tensor mla_decode(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale,
                  const Tensor& positions) {
  return mla_decode_at(q_abs, latent, rank, scale, positions, nullptr);
}

Tensor mla_decode_project(const Tensor& q_abs, const Tensor& latent, int64_t rank, float scale,
                          const Tensor& positions, const Tensor& w) {
  return mla_decode_at(q_abs, latent, rank, scale, positions, &w);
}

namespace {

// x [T, H, K] and w [H, K, N] as head_matmul takes them; returns the device.
Device check_head_matmul(const Tensor& x, const Tensor& w) {
  DSEEK_CHECK(x.defined() && w.defined(), "[head_matmul] undefined input");
  const Device device = op_device("head_matmul", {&x, &w});
  const DType act = activation_dtype("head_matmul", x);
  DSEEK_CHECK(w.dtype() == act, "[head_matmul] x is {}, w {}", dtype_name(act),
              dtype_name(w.dtype()));
  DSEEK_CHECK(x.dim() == 3 && w.dim() == 3 && w.size(0) == x.size(1) && w.size(1) == x.size(2),
              "[head_matmul] x must be [T, H, K] and w [H, K, N], got {}, {}", shape_str(x.shape()),
              shape_str(w.shape()));
  DSEEK_CHECK(last_dim_contiguous(x) && w.is_contiguous(),
              "[head_matmul] x needs a contiguous last dimension and w must be contiguous");
  return device;
}

// head_matmul_into's arguments (check_head_matmul, and out a [T, H, N] view); returns the device.
Device check_head_matmul_into(const Tensor& x, const Tensor& w, const Tensor& out) {
  const Device device = check_head_matmul(x, w);
  const int64_t T = x.size(0), H = x.size(1), N = w.size(2);
  DSEEK_CHECK(out.defined() && out.dtype() == x.dtype() && out.device() == device &&
                  out.shape() == Shape({T, H, N}) && last_dim_contiguous(out),
              "[head_matmul] out must be a [{}, {}, {}] {} view with a contiguous last "
              "dimension, got {} {}",
              T, H, N, dtype_name(x.dtype()), out.defined() ? shape_str(out.shape()) : "undefined",
              out.defined() ? dtype_name(out.dtype()) : "");
  return device;
}

}  // namespace

void head_matmul_into(const Tensor& x, const Tensor& w, const Tensor& out) {
  const Device device = check_head_matmul_into(x, w, out);
  const int64_t T = x.size(0), H = x.size(1), K = x.size(2), N = w.size(2);
  if (out.numel() == 0) return;
  if (K == 0) {  // an empty sum
    out.copy_from(Tensor::zeros({T, H, N}, x.dtype(), device));
    return;
  }
  const int64_t out_t = out.strides()[0], out_h = out.strides()[1];
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::head_matmul(x.raw(), x.strides()[0], x.strides()[1], w.raw(), out.raw(), out_t, out_h, T,
                      H, K, N, x.dtype());
    return;
#else
    cuda_not_built("head_matmul");
#endif
  }
  cpu::head_matmul(x.data<float>(), x.strides()[0], x.strides()[1], w.data<float>(),
                   out.data<float>(), out_t, out_h, T, H, K, N);
}

void absorb_query_into(const Tensor& q_nope, const Tensor& w, const Tensor& out_nope,
                       const Tensor& q_pe, const Tensor& out_pe, const Tensor& positions,
                       const std::vector<float>& inv_freq, float scaling, bool interleaved) {
  const Device device = check_head_matmul_into(q_nope, w, out_nope);
  check_rope_copy(q_pe, out_pe, positions, inv_freq);
#ifdef DSEEK_HAS_CUDA
  const int64_t T = q_nope.size(0), H = q_nope.size(1), K = q_nope.size(2), N = w.size(2);
  const int64_t out_t = out_nope.strides()[0], out_h = out_nope.strides()[1];
  if (device == Device::CUDA && N > 0 && q_pe.dtype() == q_nope.dtype() && q_pe.size(0) == T &&
      q_pe.size(1) == H && q_pe.numel() > 0 &&
      cuda::head_gemv_takes(T, H, K, N, w.raw(), out_nope.raw(), out_t, out_h, q_nope.dtype())) {
    cuda::HeadGemvRope rope;
    rope.src = q_pe.raw();
    rope.s_t = q_pe.strides()[0];
    rope.s_h = q_pe.strides()[1];
    rope.dst = out_pe.raw();
    rope.d_t = out_pe.strides()[0];
    rope.d_h = out_pe.strides()[1];
    rope.d = q_pe.size(2);
    rope.positions = positions.data<int64_t>();
    rope.inv_freq = rope_device_frequencies(inv_freq);
    rope.scaling = scaling;
    rope.interleaved = interleaved;
    cuda::head_gemv(q_nope.raw(), q_nope.strides()[0], q_nope.strides()[1], w.raw(), out_nope.raw(),
                    out_t, out_h, T, H, K, N, &rope);
    return;
  }
#else
  (void)device;
#endif
  head_matmul_into(q_nope, w, out_nope);
  rope_copy(q_pe, out_pe, positions, inv_freq, scaling, interleaved);
}

Tensor head_matmul(const Tensor& x, const Tensor& w) {
  check_head_matmul(x, w);
  Tensor out = Tensor::empty({x.size(0), x.size(1), w.size(2)}, x.dtype(), x.device());
  head_matmul_into(x, w, out);
  return out;
}

}  // namespace dseek::ops
