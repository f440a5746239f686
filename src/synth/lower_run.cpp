// Running a lowered plan forward and backward with dseek ops (see lower.h).
#include <algorithm>
#include <functional>
#include <numeric>

#include "core/error.h"
#include "ops/batched_matmul.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "synth/lower.h"

namespace dseek::synth {

using ops::MatrixStrides;

namespace {

// out dim i = t's dim perm[i], contiguous (t itself when perm is the identity).
Tensor permute(const Tensor& t, const std::vector<int>& perm) {
  std::vector<int> cur(perm.size());
  std::iota(cur.begin(), cur.end(), 0);
  if (cur == perm) return t;
  Tensor v = t;
  for (size_t i = 0; i < perm.size(); ++i) {
    const size_t j = size_t(std::find(cur.begin(), cur.end(), perm[i]) - cur.begin());
    if (j == i) continue;
    v = v.transpose(int(i), int(j));
    std::swap(cur[i], cur[j]);
  }
  return v.contiguous();
}

std::vector<int> inverse(const std::vector<int>& perm) {
  std::vector<int> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[size_t(perm[i])] = int(i);
  return inv;
}

Shape permuted(const Shape& shape, const std::vector<int>& perm) {
  if (perm.empty()) return shape;  // a [1] operand without iterators
  Shape s;
  for (int p : perm) s.push_back(shape[size_t(p)]);
  return s;
}

// A constant tensor of `dtype` on `device` (ones for sums, the scale of unused reductions).
Tensor filled(const Shape& shape, float value, Device device, DType dtype = DType::F32) {
  Tensor t = Tensor::from_vector(std::vector<float>(size_t(shape_numel(shape)), value), shape);
  return (dtype == DType::F32 ? t : t.to(dtype)).to(device);
}

// The constant of step `step` in `dtype` on `device`: made by `make` on the CPU (f32) and, on a
// GPU, uploaded once per plan (lower.h, PlanConstants).
Tensor constant(const LoweredPlan& plan, size_t step, Device device, DType dtype,
                const std::function<Tensor()>& make) {
  if (device == Device::CPU) return make();
  std::lock_guard<std::mutex> lock(plan.constants->mutex);
  Tensor& t = plan.constants->by_step[{step, dtype}];
  if (!t.defined()) {
    Tensor host = make();
    t = (host.dtype() == dtype ? host : host.to(dtype)).to(device);
  }
  return t;
}

// grouped_linear's offsets for `batch` groups of m rows.
Tensor batch_offsets(int64_t batch, int64_t m, Device device) {
  Tensor t = Tensor::empty({batch + 1}, DType::I64);
  for (int64_t b = 0; b <= batch; ++b) t.data<int64_t>()[b] = b * m;
  return t.to(device);
}

Tensor contiguous_as(const Tensor& t, DType dtype, int64_t numel, const char* what) {
  DSEEK_CHECK(t.defined() && t.dtype() == dtype && t.numel() == numel,
              "[synth] lowered {}: want {} with {} elements, got {} {}", what, dtype_name(dtype),
              numel, t.defined() ? dtype_name(t.dtype()) : "undefined",
              t.defined() ? shape_str(t.shape()) : "");
  return t.is_contiguous() ? t : t.contiguous();
}

Tensor f32_contiguous(const Tensor& t, int64_t numel, const char* what) {
  return contiguous_as(t, DType::F32, numel, what);
}

// The gradient of a strided contraction's operand X ([batch, rows, cols] through `sx` in a
// register of `shape`): dX[b, i, κ] = Σ_j P[b, i, j] · Q[b, κ, j], in X's layout. An operand
// broadcast over the batch (stride 0) sums the per-batch products: they go to a [batch, X]
// buffer in X's layout and a GEMM with ones adds its rows.
Tensor strided_grad(const Tensor& p, MatrixStrides sp, const Tensor& q, MatrixStrides sq,
                    const Shape& shape, MatrixStrides sx, int64_t batch, int64_t rows,
                    int64_t cols, int64_t inner) {
  const Device device = p.device();
  Tensor dx = Tensor::empty(shape, DType::F32, device);
  if (batch == 1 || sx.batch != 0) {
    ops::batched_matmul(p, sp, q, sq, dx, sx, batch, rows, cols, inner);
    return dx;
  }
  const int64_t n = dx.numel();
  Tensor per_batch = Tensor::empty({batch, n}, DType::F32, device);
  ops::batched_matmul(p, sp, q, sq, per_batch, {n, sx.row, sx.col}, batch, rows, cols, inner);
  ops::batched_matmul(filled({1, batch}, 1.0f, device), {0, batch, 1}, per_batch, {0, 1, n}, dx,
                      {0, n, 1}, 1, 1, n, batch);
  return dx;
}

}  // namespace

Tensor lowered_forward(const LoweredPlan& plan, const Tensor& input_any,
                       const std::vector<Tensor>& weights_any, LoweredCache* cache) {
  DSEEK_CHECK(weights_any.size() == plan.weight_shapes.size(),
              "[synth] lowered forward: {} weights, want {}", weights_any.size(),
              plan.weight_shapes.size());
  // The input's dtype is the plan's: f32, or bf16 on a GPU (lower.h); the weights must match.
  const DType act =
      input_any.defined() && input_any.dtype() == DType::BF16 ? DType::BF16 : DType::F32;
  const Tensor input = contiguous_as(input_any, act, shape_numel(plan.input_shape), "input");
  std::vector<Tensor> weights;
  for (size_t w = 0; w < weights_any.size(); ++w)
    weights.push_back(
        contiguous_as(weights_any[w], act, shape_numel(plan.weight_shapes[w]), "weight"));
  const Device device = input.device();
  std::vector<Tensor> regs(size_t(plan.registers));
  for (size_t si = 0; si < plan.steps.size(); ++si) {
    const Step& s = plan.steps[si];
    Tensor& out = regs[size_t(s.out)];
    switch (s.kind) {
      case StepKind::gather: {
        const Tensor& src = s.source < 0 ? input : weights[size_t(s.source)];
        if (s.identity) {
          out = src.reshape(s.out_shape);
          break;
        }
        Tensor table = src.reshape({s.rows, s.D});
        if (s.padded) {
          Tensor t = Tensor::zeros({s.rows + 1, s.D}, act, device);
          t.slice(0, 0, s.rows).copy_from(table);
          table = t;
        }
        if (device == Device::CPU) {
          out = ops::embedding(table, s.ids, act).reshape(s.out_shape);
          break;
        }
        const Tensor ids = constant(plan, si, device, DType::I32, [&] {
          return Tensor::from_ids(s.ids);
        });
        out = ops::embedding_device_ids(table, ids, act).reshape(s.out_shape);
        break;
      }
      case StepKind::contract: {
        if (s.strided) {
          out = Tensor::empty(s.out_shape, act, device);
          ops::batched_matmul(regs[size_t(s.in0)], s.sa, regs[size_t(s.in1)], s.sb, out, s.sc,
                              s.batch, s.m, s.n, s.k);
          break;
        }
        const Tensor a = permute(regs[size_t(s.in0)], s.perm_a).reshape({s.batch * s.m, s.k});
        const Tensor b = permute(regs[size_t(s.in1)], s.perm_b);
        out = (s.batch == 1
                   ? ops::linear(a, b.reshape({s.n, s.k}))
                   : ops::grouped_linear(a, ops::expert_matrices(b.reshape({s.batch, s.n, s.k})),
                                         batch_offsets(s.batch, s.m, device)))
                  .reshape(s.out_shape);
        break;
      }
      case StepKind::sum: {
        const Tensor x = permute(regs[size_t(s.in0)], s.perm_a).reshape({s.m, s.k});
        const Tensor ones =
            constant(plan, si, device, act, [&] { return filled({1, s.k}, 1.0f, Device::CPU); });
        out = ops::linear(x, ones).reshape(s.out_shape);
        break;
      }
      case StepKind::finish: {
        Tensor x = permute(regs[size_t(s.in0)], s.perm_a);
        Shape with_ones = s.out_shape;
        for (int d : s.broadcast) with_ones[size_t(d)] = 1;
        x = x.reshape(with_ones);
        for (int d : s.broadcast) x = x.expand(d, s.out_shape[size_t(d)]);
        x = x.contiguous();
        if (s.scale != 1.0f) {
          const Tensor scale = constant(plan, si, device, act,
                                        [&] { return filled({1, 1}, s.scale, Device::CPU); });
          x = ops::linear(x.reshape({x.numel(), 1}), scale).reshape(s.out_shape);
        }
        out = x;
        break;
      }
    }
  }
  Tensor y = regs[size_t(plan.output_register)].reshape(plan.output_shape);
  if (cache) cache->registers = std::move(regs);
  return y;
}

LoweredGrads lowered_backward(const LoweredPlan& plan, const LoweredCache& cache,
                              const Tensor& dy_any) {
  DSEEK_CHECK(int(cache.registers.size()) == plan.registers,
              "[synth] lowered backward: the cache holds {} registers, the plan {}",
              cache.registers.size(), plan.registers);
  const auto& regs = cache.registers;
  const Tensor& y = regs[size_t(plan.output_register)];
  DSEEK_CHECK(!y.defined() || y.dtype() == DType::F32,
              "[synth] lowered backward: the forward ran in {}; the backward needs an f32 forward",
              dtype_name(y.dtype()));
  const Tensor dy = f32_contiguous(dy_any, shape_numel(plan.output_shape), "dy");
  const Device device = dy.device();
  LoweredGrads grads;
  grads.dweights.resize(plan.weight_shapes.size());
  std::vector<Tensor> d(size_t(plan.registers));
  d[size_t(plan.output_register)] = dy.reshape(plan.steps.back().out_shape);  // refined dims
  for (auto step = plan.steps.rbegin(); step != plan.steps.rend(); ++step) {
    const Step& s = *step;
    const Tensor g = d[size_t(s.out)];
    DSEEK_CHECK(g.defined(), "[synth] lowered backward: register r{} has no gradient", s.out);
    switch (s.kind) {
      case StepKind::finish: {
        Tensor x = g;
        if (s.scale != 1.0f)
          x = ops::linear(x.reshape({x.numel(), 1}), filled({1, 1}, s.scale, device));
        const Shape inner = permuted(regs[size_t(s.in0)].shape(), s.perm_a);
        if (!s.broadcast.empty()) {  // sum over the broadcast dims
          std::vector<int> perm;
          for (int o = 0; o < int(s.out_shape.size()); ++o)
            if (std::find(s.broadcast.begin(), s.broadcast.end(), o) == s.broadcast.end())
              perm.push_back(o);
          perm.insert(perm.end(), s.broadcast.begin(), s.broadcast.end());
          const int64_t kept = shape_numel(inner);
          const int64_t n = shape_numel(s.out_shape) / kept;
          x = ops::linear(permute(x.reshape(s.out_shape), perm).reshape({kept, n}),
                          filled({1, n}, 1.0f, device));
        }
        d[size_t(s.in0)] = permute(x.reshape(inner), inverse(s.perm_a));
        break;
      }
      case StepKind::sum: {
        const Shape inner = permuted(regs[size_t(s.in0)].shape(), s.perm_a);
        const Tensor x = g.reshape({s.m, 1}).expand(1, s.k).contiguous();
        d[size_t(s.in0)] = permute(x.reshape(inner), inverse(s.perm_a));
        break;
      }
      case StepKind::contract: {
        const Tensor& ra = regs[size_t(s.in0)];
        const Tensor& rb = regs[size_t(s.in1)];
        if (s.strided) {
          // dA[b, i, κ] = Σ_j dC[b, i, j] · B[b, j, κ] and dB[b, j, κ] = Σ_i dC[b, i, j] ·
          // A[b, i, κ]: the same views, transposed, each gradient written in its register's
          // layout.
          const MatrixStrides dc_a{s.sc.batch, s.sc.row, s.sc.col};
          const MatrixStrides dc_b{s.sc.batch, s.sc.col, s.sc.row};
          d[size_t(s.in0)] = strided_grad(g, dc_a, rb, {s.sb.batch, s.sb.col, s.sb.row}, ra.shape(),
                                          s.sa, s.batch, s.m, s.k, s.n);
          d[size_t(s.in1)] = strided_grad(g, dc_b, ra, {s.sa.batch, s.sa.col, s.sa.row}, rb.shape(),
                                          s.sb, s.batch, s.n, s.k, s.m);
          break;
        }
        const Tensor a = permute(ra, s.perm_a).reshape({s.batch * s.m, s.k});
        const Tensor b = permute(rb, s.perm_b);
        const Tensor dc = g.reshape({s.batch * s.m, s.n});
        Tensor da, db;
        if (s.batch == 1) {
          ops::LinearGrads lg = ops::linear_backward(a, b.reshape({s.n, s.k}), dc);
          da = lg.dx;
          db = lg.dweight;
        } else {
          const Tensor offsets = batch_offsets(s.batch, s.m, device);
          da = ops::grouped_linear_backward_dx(
              dc, ops::expert_matrices(b.reshape({s.batch, s.n, s.k})), offsets);
          db = Tensor::empty({s.batch, s.n, s.k}, DType::F32, device);
          ops::grouped_linear_backward_dw(a, dc, offsets, ops::expert_matrices(db), false);
        }
        d[size_t(s.in0)] = permute(da.reshape(permuted(ra.shape(), s.perm_a)), inverse(s.perm_a));
        d[size_t(s.in1)] = permute(db.reshape(permuted(rb.shape(), s.perm_b)), inverse(s.perm_b));
        break;
      }
      case StepKind::gather: {
        Tensor src_grad;
        if (s.identity) {
          src_grad = g.reshape(s.source_shape);
        } else {
          const int64_t table_rows = s.rows + (s.padded ? 1 : 0);
          Tensor table =
              ops::embedding_backward(s.ids, g.reshape({int64_t(s.ids.size()), s.D}), table_rows);
          if (s.padded) table = table.slice(0, 0, s.rows).contiguous();
          src_grad = table.reshape(s.source_shape);
        }
        (s.source < 0 ? grads.dinput : grads.dweights[size_t(s.source)]) = src_grad;
        break;
      }
    }
  }
  return grads;
}

}  // namespace dseek::synth
