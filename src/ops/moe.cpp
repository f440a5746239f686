#include "ops/moe.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <utility>
#include <vector>

#include "core/cuda.h"
#include "core/env.h"
#include "core/error.h"
#include "ops/adamw.h"
#include "ops/cpu/adamw_cpu.h"
#include "ops/cpu/moe_cpu.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/grouped_gemm_tc.h"
#include "ops/device.h"
#include "ops/norm.h"

namespace dseek::ops {

namespace {

const Tensor& contiguous_or(const Tensor& t, Tensor& holder) {
  if (t.is_contiguous()) return t;
  holder = t.contiguous();
  return holder;
}

void check_dispatch(std::string_view op, const MoeDispatch& d, Device device) {
  DSEEK_CHECK(d.offsets.defined() && d.order.defined() && d.position.defined(),
              "[{}] dispatch is not set (use moe_dispatch)", op);
  const int64_t N = d.tokens * d.top_k;
  DSEEK_CHECK(d.offsets.dtype() == DType::I64 && d.offsets.shape() == Shape{d.experts + 1} &&
                  d.order.dtype() == DType::I32 && d.order.shape() == Shape{N} &&
                  d.position.dtype() == DType::I32 && d.position.shape() == Shape{N},
              "[{}] dispatch tensors do not match {} tokens × {} of {} experts", op, d.tokens,
              d.top_k, d.experts);
  DSEEK_CHECK(
      d.offsets.device() == device && d.order.device() == device && d.position.device() == device,
      "[{}] dispatch is on another device than the data ({})", op, device_name(device));
}

// offsets [E + 1] i64 on `device`, contiguous; on the CPU also 0 = o[0] ≤ … ≤ o[E] = N.
void check_offsets(std::string_view op, const Tensor& offsets, int64_t E, int64_t N,
                   Device device) {
  DSEEK_CHECK(offsets.defined() && offsets.dtype() == DType::I64 &&
                  offsets.shape() == Shape{E + 1} && offsets.is_contiguous(),
              "[{}] offsets must be contiguous i64 [{}], got {} {}", op, E + 1,
              dtype_name(offsets.dtype()), shape_str(offsets.shape()));
  DSEEK_CHECK(offsets.device() == device, "[{}] offsets on {}, the data on {}", op,
              device_name(offsets.device()), device_name(device));
  if (device == Device::CPU) {
    const int64_t* o = offsets.data<int64_t>();
    DSEEK_CHECK(o[0] == 0 && o[E] == N, "[{}] offsets run from {} to {}, expected 0 to {}", op,
                o[0], o[E], N);
    for (int64_t e = 0; e < E; ++e) {
      DSEEK_CHECK(o[e] <= o[e + 1], "[{}] offsets decrease at expert {}: {} > {}", op, e, o[e],
                  o[e + 1]);
    }
  }
}

template <typename P>
std::vector<P> pointers(const ExpertMatrices& w) {
  std::vector<P> p;
  p.reserve(w.matrices.size());
  for (const Tensor& m : w.matrices) p.push_back(static_cast<P>(m.raw()));
  return p;
}

// On the GPU the expert matrices must be in the activation dtype (the kernels read both alike).
void check_matrix_dtype(std::string_view op, const ExpertMatrices& w, DType act, Device device) {
  DSEEK_CHECK(w.device == device, "[{}] expert matrices on {}, the data on {}", op,
              device_name(w.device), device_name(device));
  if (device == Device::CUDA) {
    DSEEK_CHECK(w.dtype == act,
                "[{}] expert matrices are {}, activations {}: on the GPU they "
                "must match",
                op, dtype_name(w.dtype), dtype_name(act));
  }
}

}  // namespace

void validate(const MoeRouteParams& p) {
  DSEEK_CHECK(p.experts > 0, "[moe_route] experts must be positive, got {}", p.experts);
  DSEEK_CHECK(p.top_k >= 1 && p.top_k <= p.experts, "[moe_route] top_k {} must be in [1, {}]",
              p.top_k, p.experts);
  if (p.method != MoeTopK::Greedy) {
    DSEEK_CHECK(p.n_group >= 1 && p.experts % p.n_group == 0,
                "[moe_route] n_group {} must divide the {} experts", p.n_group, p.experts);
    DSEEK_CHECK(p.topk_group >= 1 && p.topk_group <= p.n_group,
                "[moe_route] topk_group {} must be in [1, n_group = {}]", p.topk_group, p.n_group);
  }
  if (p.method == MoeTopK::NoauxTc) {
    DSEEK_CHECK(p.experts / p.n_group >= 2,
                "[moe_route] noaux_tc needs at least 2 experts per group ({} experts, {} groups)",
                p.experts, p.n_group);
  }
}

namespace {

// moe_route's checks; returns the device and whether the correction bias is used.
std::pair<Device, bool> check_route(const Tensor& logits, const MoeRouteParams& p,
                                    const Tensor& correction_bias) {
  validate(p);
  const int64_t E = p.experts;
  DSEEK_CHECK(
      logits.defined() && logits.dim() == 2 && logits.size(1) == E && logits.dtype() == DType::F32,
      "[moe_route] logits: {} {}, expected [T, {}] f32", shape_str(logits.shape()),
      dtype_name(logits.dtype()), E);
  const Device device = op_device("moe_route", {&logits, &correction_bias});
  if (correction_bias.defined()) {
    DSEEK_CHECK(correction_bias.dtype() == DType::F32 && correction_bias.shape() == Shape{E},
                "[moe_route] correction_bias: {} {}, expected [{}] f32",
                shape_str(correction_bias.shape()), dtype_name(correction_bias.dtype()), E);
  }
  if (device == Device::CUDA)
    DSEEK_CHECK(E <= 1024 && (p.method == MoeTopK::Greedy || p.n_group <= 32),
                "[moe_route] the CUDA kernel takes at most 1024 experts and 32 groups, got {} "
                "and {}",
                E, p.n_group);
  return {device, p.method == MoeTopK::NoauxTc && correction_bias.defined()};
}

#ifdef DSEEK_HAS_CUDA
cuda::MoeRouteArgs route_args(const MoeRouteParams& p) {
  return cuda::MoeRouteArgs{p.experts,
                            p.top_k,
                            p.scoring == MoeScoring::Sigmoid,
                            int(p.method),
                            p.method == MoeTopK::Greedy ? 1 : p.n_group,
                            p.method == MoeTopK::Greedy ? 1 : p.topk_group,
                            p.normalise,
                            p.scale,
                            p.routed_scaling_factor};
}
#endif

std::atomic<bool> g_small_route{true};

}  // namespace

MoeRouting moe_route(const Tensor& logits, const MoeRouteParams& p, const Tensor& correction_bias) {
  const auto [device, use_bias] = check_route(logits, p, correction_bias);
  const int64_t E = p.experts, K = p.top_k;
  const int64_t T = logits.size(0);
  MoeRouting r{Tensor::empty({T, K}, DType::I32, device), Tensor::empty({T, K}, DType::F32, device),
               Tensor::empty({T, E}, DType::F32, device)};
  if (T == 0) return r;
  Tensor lh, bh;
  const Tensor& z = contiguous_or(logits, lh);
  const Tensor& bias = use_bias ? contiguous_or(correction_bias, bh) : correction_bias;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::moe_route(z.data<float>(), T, E, use_bias ? bias.data<float>() : nullptr, route_args(p),
                    r.ids.data<int32_t>(), r.weights.data<float>(), r.scores.data<float>());
    return r;
#else
    cuda_not_built("moe_route");
#endif
  }
  cpu::moe_route(z.data<float>(), T, E, use_bias ? bias.data<float>() : nullptr, p,
                 r.ids.data<int32_t>(), r.weights.data<float>(), r.scores.data<float>());
  return r;
}

Tensor moe_route_backward(const Tensor& scores, const Tensor& ids, const Tensor& dweights,
                          const MoeRouteParams& p, const Tensor& extra_dscores) {
  validate(p);
  const int64_t E = p.experts, K = p.top_k;
  DSEEK_CHECK(scores.defined() && scores.dim() == 2 && scores.size(1) == E &&
                  scores.dtype() == DType::F32,
              "[moe_route_backward] scores: {} {}, expected [T, {}] f32",
              scores.defined() ? shape_str(scores.shape()) : "undefined",
              dtype_name(scores.dtype()), E);
  const int64_t T = scores.size(0);
  DSEEK_CHECK(ids.defined() && ids.dtype() == DType::I32 && ids.shape() == Shape({T, K}),
              "[moe_route_backward] ids: {} {}, expected [{}, {}] i32",
              ids.defined() ? shape_str(ids.shape()) : "undefined", dtype_name(ids.dtype()), T, K);
  DSEEK_CHECK(dweights.defined() && dweights.dtype() == DType::F32 &&
                  dweights.shape() == Shape({T, K}),
              "[moe_route_backward] dweights: {} {}, expected [{}, {}] f32",
              dweights.defined() ? shape_str(dweights.shape()) : "undefined",
              dtype_name(dweights.dtype()), T, K);
  if (extra_dscores.defined())
    DSEEK_CHECK(extra_dscores.dtype() == DType::F32 && extra_dscores.shape() == Shape({T, E}),
                "[moe_route_backward] extra_dscores: {} {}, expected [{}, {}] f32",
                shape_str(extra_dscores.shape()), dtype_name(extra_dscores.dtype()), T, E);
  const Device device =
      op_device("moe_route_backward", {&scores, &ids, &dweights, &extra_dscores});
  Tensor dz = Tensor::empty({T, E}, DType::F32, device);
  if (T == 0) return dz;
  Tensor sh, ih, gh, xh;
  const Tensor& s = contiguous_or(scores, sh);
  const Tensor& id = contiguous_or(ids, ih);
  const Tensor& g = contiguous_or(dweights, gh);
  const float* extra = nullptr;
  if (extra_dscores.defined()) extra = contiguous_or(extra_dscores, xh).data<float>();
  [[maybe_unused]] const float factor = p.scale ? p.routed_scaling_factor : 1.0f;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    DSEEK_CHECK(E <= 1024, "[moe_route_backward] the CUDA kernel takes at most 1024 experts, got {}",
                E);
    cuda::moe_route_backward(s.data<float>(), id.data<int32_t>(), g.data<float>(), extra, T, E, K,
                             p.scoring == MoeScoring::Sigmoid, p.normalise, factor,
                             dz.data<float>());
    return dz;
#else
    cuda_not_built("moe_route_backward");
#endif
  }
  const int32_t* idp = id.data<int32_t>();
  for (int64_t i = 0; i < T * K; ++i)
    DSEEK_CHECK(idp[i] >= 0 && idp[i] < E, "[moe_route_backward] id {} at slot {} is outside [0, {})",
                idp[i], i, E);
  cpu::moe_route_backward(s.data<float>(), idp, g.data<float>(), extra, T, E, p, dz.data<float>());
  return dz;
}

MoeDispatch moe_dispatch(const Tensor& ids, int64_t experts) {
  DSEEK_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::I32,
              "[moe_dispatch] ids: {} {}, expected [T, K] i32", shape_str(ids.shape()),
              dtype_name(ids.dtype()));
  DSEEK_CHECK(experts > 0, "[moe_dispatch] experts must be positive, got {}", experts);
  const Device device = ids.device();
  const int64_t T = ids.size(0), K = ids.size(1), N = T * K;
  DSEEK_CHECK(K >= 1, "[moe_dispatch] top-k must be at least 1, ids are {}",
              shape_str(ids.shape()));
  // Slot numbers and permuted rows are i32 (half the index traffic of i64).
  DSEEK_CHECK(N <= std::numeric_limits<int32_t>::max(),
              "[moe_dispatch] {} slots exceed the i32 index range", N);
  MoeDispatch d{Tensor::empty({experts + 1}, DType::I64, device),
                Tensor::empty({N}, DType::I32, device),
                Tensor::empty({N}, DType::I32, device),
                T,
                K,
                experts};
  Tensor holder;
  const Tensor& id = contiguous_or(ids, holder);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::moe_dispatch(id.data<int32_t>(), N, experts, d.offsets.data<int64_t>(),
                       d.order.data<int32_t>(), d.position.data<int32_t>());
    return d;
#else
    cuda_not_built("moe_dispatch");
#endif
  }
  const int32_t* p = id.data<int32_t>();
  for (int64_t s = 0; s < N; ++s) {
    DSEEK_CHECK(p[s] >= 0 && p[s] < experts,
                "[moe_dispatch] token {} names expert {}, there are {}", s / K, p[s], experts);
  }
  cpu::moe_dispatch(p, N, experts, d.offsets.data<int64_t>(), d.order.data<int32_t>(),
                    d.position.data<int32_t>());
  return d;
}

Tensor moe_permute(const Tensor& x, const MoeDispatch& d) {
  DSEEK_CHECK(x.defined() && x.dim() == 2 && x.size(0) == d.tokens,
              "[moe_permute] x {}, expected [{}, D]", shape_str(x.shape()), d.tokens);
  const Device device = x.device();
  const DType act = activation_dtype("moe_permute", x);
  check_dispatch("moe_permute", d, device);
  const int64_t D = x.size(1), N = d.tokens * d.top_k;
  Tensor out = Tensor::empty({N, D}, act, device);
  if (out.numel() == 0) return out;
  Tensor holder;
  const Tensor& xc = contiguous_or(x, holder);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::moe_permute(xc.raw(), d.order.data<int32_t>(), N, d.top_k, D, out.raw(), act);
    return out;
#else
    cuda_not_built("moe_permute");
#endif
  }
  cpu::moe_permute(xc.data<float>(), d.order.data<int32_t>(), N, d.top_k, D, out.data<float>());
  return out;
}

void set_moe_small_route(bool on) {
  g_small_route = on;
}

MoeRouted moe_route_permute(const Tensor& x, const Tensor& logits, const MoeRouteParams& p,
                            const Tensor& correction_bias) {
#ifdef DSEEK_HAS_CUDA
  const int64_t T = logits.defined() && logits.dim() == 2 ? logits.size(0) : 0;
  if (g_small_route.load() && x.defined() && x.is_cuda() && logits.is_cuda() &&
      cuda::small_route_fits(T, route_args(p))) {
    const auto [device, use_bias] = check_route(logits, p, correction_bias);
    DSEEK_CHECK(x.dim() == 2 && x.size(0) == T, "[moe_permute] x {}, expected [{}, D]",
                shape_str(x.shape()), T);
    const DType act = activation_dtype("moe_permute", x);
    const int64_t E = p.experts, K = p.top_k, D = x.size(1);
    MoeRouted out{
        {Tensor::empty({T, K}, DType::I32, device), Tensor::empty({T, K}, DType::F32, device),
         Tensor::empty({T, E}, DType::F32, device)},
        {Tensor::empty({E + 1}, DType::I64, device), Tensor::empty({T * K}, DType::I32, device),
         Tensor::empty({T * K}, DType::I32, device), T, K, E},
        Tensor::empty({T * K, D}, act, device)};
    Tensor lh, bh, xh;
    const Tensor& z = contiguous_or(logits, lh);
    const Tensor& bias = use_bias ? contiguous_or(correction_bias, bh) : correction_bias;
    const Tensor& xc = contiguous_or(x, xh);
    cuda::small_route(z.data<float>(), T, E, use_bias ? bias.data<float>() : nullptr, route_args(p),
                      out.routing.ids.data<int32_t>(), out.routing.weights.data<float>(),
                      out.routing.scores.data<float>(), out.dispatch.offsets.data<int64_t>(),
                      out.dispatch.order.data<int32_t>(), out.dispatch.position.data<int32_t>(),
                      xc.raw(), D, out.x_perm.raw(), act);
    return out;
  }
#endif
  MoeRouted out;
  out.routing = moe_route(logits, p, correction_bias);
  out.dispatch = moe_dispatch(out.routing.ids, p.experts);
  out.x_perm = moe_permute(x, out.dispatch);
  return out;
}

Tensor moe_permute_backward(const Tensor& dx_perm, const MoeDispatch& d) {
  const int64_t N = d.tokens * d.top_k;
  DSEEK_CHECK(dx_perm.defined() && dx_perm.dim() == 2 && dx_perm.size(0) == N,
              "[moe_permute] dx_perm {}, expected [{}, D]", shape_str(dx_perm.shape()), N);
  const Device device = dx_perm.device();
  const DType act = activation_dtype("moe_permute", dx_perm);
  check_dispatch("moe_permute", d, device);
  const int64_t D = dx_perm.size(1);
  Tensor dx = Tensor::empty({d.tokens, D}, act, device);
  if (dx.numel() == 0) return dx;
  Tensor holder;
  const Tensor& g = contiguous_or(dx_perm, holder);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::moe_permute_backward(g.raw(), d.position.data<int32_t>(), d.tokens, d.top_k, D, dx.raw(),
                               act);
    return dx;
#else
    cuda_not_built("moe_permute");
#endif
  }
  cpu::moe_permute_backward(g.data<float>(), d.position.data<int32_t>(), d.tokens, d.top_k, D,
                            dx.data<float>());
  return dx;
}

ExpertMatrices expert_matrices(std::vector<Tensor> matrices) {
  DSEEK_CHECK(!matrices.empty(), "[grouped_linear] no expert matrices");
  ExpertMatrices w;
  const Tensor& first = matrices.front();
  DSEEK_CHECK(first.defined() && first.dim() == 2,
              "[grouped_linear] expert 0: shape {}, expected "
              "[rows, cols]",
              shape_str(first.shape()));
  w.experts = int64_t(matrices.size());
  w.rows = first.size(0);
  w.cols = first.size(1);
  w.dtype = first.dtype();
  w.device = first.device();
  w.ld = w.rows > 1 ? first.strides()[0] : w.cols;
  DSEEK_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F16,
              "[grouped_linear] expert matrices must be f32, bf16 or f16, got {}",
              dtype_name(w.dtype));
  for (size_t e = 0; e < matrices.size(); ++e) {
    const Tensor& m = matrices[e];
    DSEEK_CHECK(
        m.defined() && m.shape() == first.shape() && m.dtype() == w.dtype && m.device() == w.device,
        "[grouped_linear] expert {}: {} {} on {}, expert 0 is {} {} on {}", e, shape_str(m.shape()),
        dtype_name(m.dtype()), device_name(m.device()), shape_str(first.shape()),
        dtype_name(w.dtype), device_name(w.device));
    const int64_t ld = w.rows > 1 ? m.strides()[0] : w.cols;
    DSEEK_CHECK((w.cols <= 1 || m.strides()[1] == 1) && ld == w.ld && ld >= w.cols,
                "[grouped_linear] expert {}: strides [{}, {}], expected [{}, 1] like expert 0", e,
                m.strides()[0], m.strides()[1], w.ld);
  }
  w.matrices = std::move(matrices);
  const std::vector<const void*> addresses = pointers<const void*>(w);
  static_assert(sizeof(const void*) == sizeof(int64_t));
  w.table = Tensor::empty({w.experts}, DType::I64, w.device);
  const size_t bytes = addresses.size() * sizeof(const void*);
  if (w.device == Device::CUDA) {
    dseek::cuda::copy_to_device(w.table.raw(), addresses.data(), bytes);
#ifdef DSEEK_HAS_CUDA
    if (w.dtype == DType::BF16 && w.rows > 0 && w.cols > 0) {
      Tensor maps =
          Tensor::empty({w.experts * int64_t(cuda::kExpertMapBytes)}, DType::U8, Device::CUDA);
      if (cuda::expert_tma_maps(addresses.data(), w.experts, w.rows, w.cols, w.ld, maps.raw()))
        w.tma_maps = std::move(maps);
    }
#endif
  } else {
    std::copy_n(reinterpret_cast<const char*>(addresses.data()), bytes,
                static_cast<char*>(w.table.raw()));
  }
  return w;
}

ExpertMatrices expert_matrices(const Tensor& stacked) {
  DSEEK_CHECK(stacked.defined() && stacked.dim() == 3 && stacked.size(0) >= 1,
              "[grouped_linear] stacked expert matrices: shape {}, expected [E, rows, cols]",
              shape_str(stacked.shape()));
  std::vector<Tensor> m;
  for (int64_t e = 0; e < stacked.size(0); ++e) m.push_back(stacked.select(0, e));
  return expert_matrices(std::move(m));
}

Tensor grouped_linear(const Tensor& x_perm, const ExpertMatrices& w, const Tensor& offsets) {
  DSEEK_CHECK(x_perm.defined() && x_perm.dim() == 2 && x_perm.size(1) == w.cols,
              "[grouped_linear] x {}, expected [N, {}]", shape_str(x_perm.shape()), w.cols);
  const Device device = x_perm.device();
  const DType act = activation_dtype("grouped_linear", x_perm);
  check_matrix_dtype("grouped_linear", w, act, device);
  const int64_t N = x_perm.size(0), in = w.cols, out = w.rows;
  check_offsets("grouped_linear", offsets, w.experts, N, device);
  Tensor y = Tensor::empty({N, out}, act, device);
  if (y.numel() == 0) return y;
  Tensor holder;
  const Tensor& x = contiguous_or(x_perm, holder);
  if (in == 0) return Tensor::zeros({N, out}, act, device);  // an empty sum
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::grouped_linear(x.raw(), offsets.data<int64_t>(), w.experts, N, in,
                         static_cast<const void* const*>(w.table.raw()), w.ld, out, y.raw(), act,
                         w.tma_maps.defined() ? w.tma_maps.raw() : nullptr);
    return y;
#else
    cuda_not_built("grouped_linear");
#endif
  }
  const std::vector<const void*> p = pointers<const void*>(w);
  cpu::grouped_linear(x.data<float>(), offsets.data<int64_t>(), w.experts, in, p.data(), w.dtype,
                      w.ld, out, y.data<float>());
  return y;
}

Tensor grouped_linear_backward_dx(const Tensor& dy_perm, const ExpertMatrices& w,
                                  const Tensor& offsets) {
  DSEEK_CHECK(dy_perm.defined() && dy_perm.dim() == 2 && dy_perm.size(1) == w.rows,
              "[grouped_linear] dy {}, expected [N, {}]", shape_str(dy_perm.shape()), w.rows);
  const Device device = dy_perm.device();
  const DType act = activation_dtype("grouped_linear", dy_perm);
  check_matrix_dtype("grouped_linear", w, act, device);
  const int64_t N = dy_perm.size(0), in = w.cols, out = w.rows;
  check_offsets("grouped_linear", offsets, w.experts, N, device);
  Tensor dx = Tensor::empty({N, in}, act, device);
  if (dx.numel() == 0) return dx;
  Tensor holder;
  const Tensor& dy = contiguous_or(dy_perm, holder);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::grouped_linear_backward_dx(dy.raw(), offsets.data<int64_t>(), w.experts, N, out,
                                     static_cast<const void* const*>(w.table.raw()), w.ld, in,
                                     dx.raw(), act,
                                     w.tma_maps.defined() ? w.tma_maps.raw() : nullptr);
    return dx;
#else
    cuda_not_built("grouped_linear");
#endif
  }
  if (out == 0) {
    std::fill_n(dx.data<float>(), dx.numel(), 0.0f);
    return dx;
  }
  const std::vector<const void*> p = pointers<const void*>(w);
  cpu::grouped_linear_backward_dx(dy.data<float>(), offsets.data<int64_t>(), w.experts, out,
                                  p.data(), w.dtype, w.ld, in, dx.data<float>());
  return dx;
}

void matrices_sum_of_squares(const ExpertMatrices& m, double* squares) {
  DSEEK_CHECK((m.dtype == DType::F32 || m.dtype == DType::BF16) && m.ld == m.cols,
              "[sum_of_squares] expert matrices must be contiguous f32 or bf16, got {} (ld {})",
              dtype_name(m.dtype), m.ld);
  if (m.dtype == DType::BF16) {  // the multi-tensor sum, which reads bf16
    sum_of_squares_to(m.matrices, squares);
    return;
  }
  if (m.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::matrices_sum_of_squares(static_cast<float* const*>(m.table.raw()), m.experts, m.rows,
                                  m.cols, squares);
    return;
#else
    cuda_not_built("sum_of_squares");
#endif
  }
  double sum = 0.0;
  for (float* a : pointers<float*>(m)) sum += cpu::sum_of_squares(a, m.rows * m.cols);
  *squares = sum;
}

void grouped_linear_backward_dw(const Tensor& x_perm, const Tensor& dy_perm, const Tensor& offsets,
                                const ExpertMatrices& dw, bool accumulate, double* squares) {
  DSEEK_CHECK(x_perm.defined() && dy_perm.defined() && x_perm.dim() == 2 && dy_perm.dim() == 2 &&
                  x_perm.size(0) == dy_perm.size(0) && x_perm.size(1) == dw.cols &&
                  dy_perm.size(1) == dw.rows,
              "[grouped_linear] x {} and dy {} do not match dW [{}, {}]", shape_str(x_perm.shape()),
              shape_str(dy_perm.shape()), dw.rows, dw.cols);
  const Device device = op_device("grouped_linear", {&x_perm, &dy_perm});
  const DType act = activation_dtype("grouped_linear", x_perm);
  DSEEK_CHECK(dy_perm.dtype() == act, "[grouped_linear] dy is {}, x {}",
              dtype_name(dy_perm.dtype()), dtype_name(act));
  DSEEK_CHECK((dw.dtype == DType::F32 || dw.dtype == DType::BF16) && dw.ld == dw.cols &&
                  dw.device == device,
              "[grouped_linear] dW must be contiguous f32 or bf16 matrices on {}, got {} (ld {}) "
              "on {}",
              device_name(device), dtype_name(dw.dtype), dw.ld, device_name(dw.device));
  const int64_t N = x_perm.size(0), in = dw.cols, out = dw.rows;
  check_offsets("grouped_linear", offsets, dw.experts, N, device);
  if (in == 0 || out == 0) {
    if (squares) matrices_sum_of_squares(dw, squares);
    return;
  }
  if (dw.dtype == DType::BF16) {
    // bf16 gradients (ParamSet::bf16_expert_grads): the Hopper kernel stores them rounded;
    // elsewhere the f32 result (old values added in f32) is rounded once into them.
#ifdef DSEEK_HAS_CUDA
    if (device == Device::CUDA && act == DType::BF16 && x_perm.is_contiguous() &&
        dy_perm.is_contiguous() &&
        cuda::grouped_tc_dw_bf16(x_perm.raw(), dy_perm.raw(), offsets.data<int64_t>(), dw.experts,
                                 N, out, in, static_cast<void* const*>(dw.table.raw()),
                                 accumulate ? 1.0f : 0.0f, squares))
      return;
#endif
    std::vector<Tensor> f32;
    for (const Tensor& m : dw.matrices)
      f32.push_back(accumulate ? m.to(DType::F32) : Tensor::empty(m.shape(), DType::F32, device));
    const ExpertMatrices dw32 = expert_matrices(f32);
    grouped_linear_backward_dw(x_perm, dy_perm, offsets, dw32, accumulate, nullptr);
    for (size_t e = 0; e < f32.size(); ++e) dw.matrices[e].copy_from(f32[e].to(DType::BF16));
    if (squares) matrices_sum_of_squares(dw, squares);
    return;
  }
  Tensor xh, dyh;
  const Tensor& x = contiguous_or(x_perm, xh);
  const Tensor& dy = contiguous_or(dy_perm, dyh);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::grouped_linear_backward_dw(x.raw(), dy.raw(), offsets.data<int64_t>(), dw.experts, N, out,
                                     in, static_cast<float* const*>(dw.table.raw()),
                                     accumulate ? 1.0f : 0.0f, act, squares);
    return;
#else
    cuda_not_built("grouped_linear");
#endif
  }
  const std::vector<float*> p = pointers<float*>(dw);
  cpu::grouped_linear_backward_dw(x.data<float>(), dy.data<float>(), offsets.data<int64_t>(),
                                  dw.experts, out, in, p.data(), accumulate ? 1.0f : 0.0f);
  if (squares) matrices_sum_of_squares(dw, squares);
}

namespace {

// The combine's inputs (errors name `op`): y_perm [T·K, D], weights [T, K] f32, `add` undefined
// or [T, D] in y_perm's dtype (the activation dtype), all on the dispatch's device.
struct CombineInputs {
  Device device;
  DType act;
  int64_t D;
};
CombineInputs check_combine(const char* op, const Tensor& y_perm, const Tensor& weights,
                            const MoeDispatch& d, const Tensor& add) {
  const int64_t T = d.tokens, K = d.top_k;
  DSEEK_CHECK(y_perm.defined() && y_perm.dim() == 2 && y_perm.size(0) == T * K,
              "[{}] y_perm {}, expected [{}, D]", op, shape_str(y_perm.shape()), T * K);
  const Device device = op_device(op, {&y_perm, &weights, &add});
  const DType act = activation_dtype(op, y_perm);
  check_dispatch(op, d, device);
  const int64_t D = y_perm.size(1);
  DSEEK_CHECK(
      weights.defined() && weights.dtype() == DType::F32 && (weights.shape() == Shape{T, K}),
      "[{}] weights: {} {}, expected [{}, {}] f32", op, shape_str(weights.shape()),
      dtype_name(weights.dtype()), T, K);
  if (add.defined()) {
    DSEEK_CHECK(add.dtype() == act && (add.shape() == Shape{T, D}),
                "[{}] add: {} {}, expected [{}, {}] {}", op, shape_str(add.shape()),
                dtype_name(add.dtype()), T, D, dtype_name(act));
  }
  return {device, act, D};
}

}  // namespace

Tensor moe_combine(const Tensor& y_perm, const Tensor& weights, const MoeDispatch& d,
                   const Tensor& add) {
  const int64_t T = d.tokens, K = d.top_k;
  const auto [device, act, D] = check_combine("moe_combine", y_perm, weights, d, add);
  Tensor out = Tensor::empty({T, D}, act, device);
  if (out.numel() == 0) return out;
  Tensor yh, wh, ah;
  const Tensor& y = contiguous_or(y_perm, yh);
  const Tensor& w = contiguous_or(weights, wh);
  const Tensor& a = add.defined() ? contiguous_or(add, ah) : add;
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    DSEEK_CHECK(K <= 64, "[moe_combine] the CUDA kernel takes at most 64 experts per token, got {}",
                K);
    cuda::moe_combine(y.raw(), w.data<float>(), d.position.data<int32_t>(), T, K, D,
                      a.defined() ? a.raw() : nullptr, out.raw(), act);
    return out;
#else
    cuda_not_built("moe_combine");
#endif
  }
  cpu::moe_combine(y.data<float>(), w.data<float>(), d.position.data<int32_t>(), T, K, D,
                   a.defined() ? a.data<float>() : nullptr, out.data<float>());
  return out;
}

namespace {

// Off by default until it has been timed on a GPU (DSEEK_FUSED_COMBINE_NORM=1 turns it on).
std::atomic<bool>& combine_norm_fused() {
  static std::atomic<bool> on = [] { return env_is("DSEEK_FUSED_COMBINE_NORM", "1"); }();
  return on;
}

}  // namespace

void set_moe_combine_norm_fused(bool on) {
  combine_norm_fused().store(on);
}

bool moe_combine_norm_fused() {
  return combine_norm_fused().load();
}

Tensor moe_combine_add_rms_norm(const Tensor& y_perm, const Tensor& weights, const MoeDispatch& d,
                                const Tensor& add, const Tensor& residual,
                                const Tensor& norm_weight, double eps, Tensor& normed) {
  const bool fused = y_perm.defined() && y_perm.is_cuda() && combine_norm_fused().load();
  if (!fused) {  // the two ops: the CPU's reference, and the GPU's with the switch off
    Tensor out = moe_combine(y_perm, weights, d, add);
    normed = add_rms_norm(out, residual, norm_weight, eps);
    return out;
  }
  const char* op = "moe_combine_add_rms_norm";
  const int64_t T = d.tokens, K = d.top_k;
  const auto [device, act, D] = check_combine(op, y_perm, weights, d, add);
  (void)op_device(op, {&y_perm, &residual, &norm_weight});
  DSEEK_CHECK(residual.defined() && residual.dtype() == act && (residual.shape() == Shape{T, D}),
              "[{}] residual: {} {}, expected [{}, {}] {}", op,
              residual.defined() ? shape_str(residual.shape()) : "undefined",
              residual.defined() ? dtype_name(residual.dtype()) : "", T, D, dtype_name(act));
  DSEEK_CHECK(norm_weight.defined() && norm_weight.dim() == 1 && norm_weight.size(0) == D &&
                  (norm_weight.dtype() == DType::F32 || norm_weight.dtype() == DType::BF16),
              "[moe_combine_add_rms_norm] norm weight {} {}, expected [{}] f32 or bf16",
              shape_str(norm_weight.shape()), dtype_name(norm_weight.dtype()), D);
  DSEEK_CHECK(eps >= 0, "[moe_combine_add_rms_norm] negative eps {}", eps);
  DSEEK_CHECK(K <= 64, "[moe_combine_add_rms_norm] at most 64 experts per token, got {}", K);
  Tensor out = Tensor::empty({T, D}, act, device);
  normed = Tensor::empty({T, D}, act, device);
  if (out.numel() == 0) return out;
#ifdef DSEEK_HAS_CUDA
  Tensor yh, wh, ah, rh;
  const Tensor& y = contiguous_or(y_perm, yh);
  const Tensor& w = contiguous_or(weights, wh);
  const Tensor& a = add.defined() ? contiguous_or(add, ah) : add;
  const Tensor& r = contiguous_or(residual, rh);
  const Tensor nw = norm_weight.contiguous();
  cuda::moe_combine_add_rms_norm(y.raw(), w.data<float>(), d.position.data<int32_t>(), T, K, D,
                                 a.defined() ? a.raw() : nullptr, r.raw(), nw.raw(), nw.dtype(),
                                 float(eps), out.raw(), normed.raw(), act);
#else
  cuda_not_built("moe_combine_add_rms_norm");
#endif
  return out;
}

MoeCombineGrads moe_combine_backward(const Tensor& y_perm, const Tensor& weights,
                                     const MoeDispatch& d, const Tensor& dout) {
  const int64_t T = d.tokens, K = d.top_k;
  DSEEK_CHECK(y_perm.defined() && y_perm.dim() == 2 && y_perm.size(0) == T * K,
              "[moe_combine] y_perm {}, expected [{}, D]", shape_str(y_perm.shape()), T * K);
  const Device device = op_device("moe_combine", {&y_perm, &weights, &dout});
  const DType act = activation_dtype("moe_combine", y_perm);
  check_dispatch("moe_combine", d, device);
  const int64_t D = y_perm.size(1);
  DSEEK_CHECK(
      weights.defined() && weights.dtype() == DType::F32 && (weights.shape() == Shape{T, K}),
      "[moe_combine] weights: {} {}, expected [{}, {}] f32", shape_str(weights.shape()),
      dtype_name(weights.dtype()), T, K);
  DSEEK_CHECK(dout.defined() && dout.dtype() == act && (dout.shape() == Shape{T, D}),
              "[moe_combine] dout: {} {}, expected [{}, {}] {}", shape_str(dout.shape()),
              dtype_name(dout.dtype()), T, D, dtype_name(act));
  MoeCombineGrads g{Tensor::empty({T * K, D}, act, device),
                    Tensor::empty({T, K}, DType::F32, device)};
  if (T == 0) return g;
  Tensor yh, wh, gh;
  const Tensor& y = contiguous_or(y_perm, yh);
  const Tensor& w = contiguous_or(weights, wh);
  const Tensor& go = contiguous_or(dout, gh);
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    cuda::moe_combine_backward(y.raw(), w.data<float>(), d.order.data<int32_t>(),
                               d.position.data<int32_t>(), T, K, D, go.raw(), g.dy_perm.raw(),
                               g.dweights.data<float>(), act);
    return g;
#else
    cuda_not_built("moe_combine");
#endif
  }
  cpu::moe_combine_backward(y.data<float>(), w.data<float>(), d.order.data<int32_t>(),
                            d.position.data<int32_t>(), T, K, D, go.data<float>(),
                            g.dy_perm.data<float>(), g.dweights.data<float>());
  return g;
}

}  // namespace dseek::ops
