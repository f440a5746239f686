#include "ops/fp8_train.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/fp8_cpu.h"
#include "ops/cpu/fp8_train_cpu.h"
#include "ops/cuda/fp8_kernels.h"
#include "ops/cuda/fp8_train_kernels.h"
#include "ops/device.h"
#include "ops/fp8_nan_check.h"
#include "ops/linear.h"

#ifdef DSEEK_HAS_CUDA
#include "core/cuda.h"
#endif

namespace dseek::ops {
namespace {

// offsets [groups + 1] i64 contiguous on `device`; on the CPU also 0 = o[0] ≤ … ≤ o[G] ≤ rows
// (`exact`: o[G] = rows, as the CPU grouped GEMMs want).
int64_t check_offsets(const char* op, const Tensor& offsets, int64_t rows, Device device,
                      bool exact) {
  DSEEK_CHECK(offsets.defined() && offsets.dtype() == DType::I64 && offsets.dim() == 1 &&
                  offsets.numel() >= 2 && offsets.is_contiguous(),
              "[{}] offsets must be contiguous i64 [groups + 1], got {} {}", op,
              offsets.defined() ? dtype_name(offsets.dtype()) : "undefined",
              offsets.defined() ? shape_str(offsets.shape()) : "");
  DSEEK_CHECK(offsets.device() == device, "[{}] offsets on {}, the data on {}", op,
              device_name(offsets.device()), device_name(device));
  const int64_t G = offsets.numel() - 1;
  if (device == Device::CPU) {
    const int64_t* o = offsets.data<int64_t>();
    DSEEK_CHECK(o[0] == 0 && (exact ? o[G] == rows : o[G] <= rows),
                "[{}] offsets run from {} to {}, expected 0 to {}{}", op, o[0], o[G],
                exact ? "" : "at most ", rows);
    for (int64_t g = 0; g < G; ++g)
      DSEEK_CHECK(o[g] <= o[g + 1], "[{}] offsets decrease at group {}: {} > {}", op, g, o[g],
                  o[g + 1]);
  }
  return G;
}

// {0, rows} on `device`: one group of every row (the dense linear's wgrad).
Tensor one_group(int64_t rows, Device device) {
  Tensor o = Tensor::empty({2}, DType::I64);
  o.data<int64_t>()[0] = 0;
  o.data<int64_t>()[1] = rows;
  return device == Device::CPU ? o : o.to(device);
}

// A weight as quantize_fp8 takes it on its device: f32 (bf16 kept on the GPU), contiguous.
Tensor quantizable(const Tensor& w) {
  if (w.is_cuda())
    return w.dtype() == DType::F32 || w.dtype() == DType::BF16 ? w.contiguous() : w.to(DType::F32);
  return w.dtype() == DType::F32 ? w.contiguous() : w.to(DType::F32);
}

#ifdef DSEEK_HAS_CUDA
void transpose_experts(Fp8ExpertWeights& w);
#endif

#ifdef DSEEK_HAS_CUDA
// Whether quantize_fp8_stack takes the experts in one launch (their addresses are in w.table).
bool stack_quantizable(const ExpertMatrices& w) {
  bool ok = w.device == Device::CUDA && cuda::quantize_fp8_stack_takes(w.rows, w.cols) &&
            w.experts <= 65535;
  for (const Tensor& m : w.matrices) ok = ok && reinterpret_cast<uintptr_t>(m.raw()) % 16 == 0;
  return ok;
}
#endif

// W's blocks (`forward`) and/or Wᵀ's (`transposed`: W's codes and scales transposed; GPU only),
// both in one pass where quantize_fp8_stack applies, else Wᵀ's by transpose_experts after.
// `what` names the matrices in errors (NaN or Inf in a weight).
Fp8ExpertWeights quantize_experts(const char* op, const ExpertMatrices& w,
                                  [[maybe_unused]] bool forward, bool transposed,
                                  const char* what = "an expert weight") {
  DSEEK_CHECK(w.ld == w.cols && (w.dtype == DType::F32 || w.dtype == DType::BF16),
              "[{}] expert matrices must be contiguous f32 or bf16, got {} with row stride {} for "
              "{} columns",
              op, dtype_name(w.dtype), w.ld, w.cols);
  const int64_t E = w.experts, R = w.rows, C = w.cols;
  const Shape bs = fp8_scale_shape(R, C, Fp8Layout::Block128x128);
  const int64_t codes = R * C, scales = bs[0] * bs[1];
  Fp8ExpertWeights s{E, R, C, {}, {}, {}, {}};
  if (w.device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    const bool stack = codes > 0 && stack_quantizable(w);
    if (transposed && !stack) {
      s = quantize_experts(op, w, true, false, what);
      transpose_experts(s);
      if (!forward) s.data = s.scale = Tensor();
      return s;
    }
    if (forward) {
      s.data = Tensor::empty({E, R, C}, DType::F8_E4M3, w.device);
      s.scale = Tensor::empty({E, bs[0], bs[1]}, DType::F32, w.device);
    }
    if (transposed) {
      s.data_t = Tensor::empty({E, C, R}, DType::F8_E4M3, w.device);
      s.scale_t = Tensor::empty({E, bs[1], bs[0]}, DType::F32, w.device);
    }
    if (codes == 0) return s;
    Fp8NanCheck nan(fmt::format("[{}] {} [{}, {}] contains NaN or Inf", op, what, R, C));
    uint8_t* q = forward ? s.data.data<uint8_t>() : nullptr;
    float* sc = forward ? s.scale.data<float>() : nullptr;
    if (stack) {  // every expert in one launch, W's and Wᵀ's blocks together
      cuda::quantize_fp8_stack(static_cast<const void* const*>(w.table.raw()), w.dtype, E, R, C,
                               false, q, sc, transposed ? s.data_t.data<uint8_t>() : nullptr,
                               transposed ? s.scale_t.data<float>() : nullptr, nan.flag());
    } else {
      for (int64_t e = 0; e < E; ++e)
        cuda::quantize_fp8(w.matrices[size_t(e)].raw(), w.dtype, R, C, kFp8Tile, false,
                           q + e * codes, sc + e * scales, nan.flag());
    }
    nan.done();  // one flag for all experts
    return s;
#else
    cuda_not_built(op);
#endif
  }
  DSEEK_CHECK(!transposed, "[{}] transposed expert blocks are a GPU path", op);
  s.data = Tensor::empty({E, R, C}, DType::F8_E4M3, w.device);
  s.scale = Tensor::empty({E, bs[0], bs[1]}, DType::F32, w.device);
  for (int64_t e = 0; e < E && codes > 0; ++e) {
    const Tensor m = quantizable(w.matrices[size_t(e)]);
    const int64_t at =
        cpu::quantize_fp8(m.data<float>(), R, C, kFp8Tile, false,
                          s.data.data<uint8_t>() + e * codes, s.scale.data<float>() + e * scales);
    DSEEK_CHECK(at < 0, "[{}] {} [{}, {}] (matrix {}) has {} at row {}, column {}", op, what, R, C,
                e, m.data<float>()[at < 0 ? 0 : at], at / C, at % C);
  }
  return s;
}

// CPU: W's blocks dequantised to f32 [E, rows, cols].
Tensor dequantize_experts(const Fp8ExpertWeights& s) {
  const int64_t E = s.experts, R = s.rows, C = s.cols;
  Tensor out = Tensor::empty({E, R, C});
  const int64_t codes = R * C, scales = s.scale.size(1) * s.scale.size(2);
  for (int64_t e = 0; e < E && codes > 0; ++e)
    cpu::dequantize_fp8(s.data.data<uint8_t>() + e * codes, s.scale.data<float>() + e * scales, R,
                        C, kFp8Tile, out.data<float>() + e * codes);
  return out;
}

#ifdef DSEEK_HAS_CUDA
// GPU: Wᵀ's blocks (w.data_t, w.scale_t) from W's (exact, see the header).
void transpose_experts(Fp8ExpertWeights& w) {
  const int64_t E = w.experts, R = w.rows, C = w.cols;
  w.data_t = Tensor::empty({E, C, R}, DType::F8_E4M3, Device::CUDA);
  w.scale_t = Tensor::empty({E, w.scale.size(2), w.scale.size(1)}, DType::F32, Device::CUDA);
  cuda::fp8_transpose_blocks(w.data.data<uint8_t>(), w.scale.data<float>(), E, R, C,
                             w.data_t.data<uint8_t>(), w.scale_t.data<float>());
}
#endif

// x̂'s column tiles in the form a wgrad wants (`transposed` or not): `shared`'s where it holds that
// form, else `make()`'s, which then go into `shared` for the next wgrad (when given).
template <typename Make>
Fp8ColTiles wgrad_x_cols(Fp8WgradInput* shared, bool transposed, int64_t cols, Make make) {
  if (shared && shared->cols.data.defined() && shared->transposed == transposed) {
    const Tensor& d = shared->cols.data;
    DSEEK_CHECK(d.dim() == 2 && d.size(transposed ? 0 : 1) == cols,
                "[linear_fp8_train] shared column tiles {} are not of an input {} wide",
                shape_str(d.shape()), cols);
    return shared->cols;
  }
  Fp8ColTiles q = make();
  if (shared) *shared = Fp8WgradInput{q, transposed};
  return q;
}

// dW (+)= Q_col(dy)ᵀ·Q_col(x̂) per group, x̂ = the cached x dequantised (f32). dense: one group of
// every row (offsets {0, rows}). x̂'s column tiles from (and into) `shared` when given.
void wgrad(const char* op, const Fp8Tensor& x_cache, const Tensor& dy2, const Tensor& offsets,
           const ExpertMatrices& dw, bool accumulate, [[maybe_unused]] bool dense,
           Fp8WgradInput* shared, double* squares = nullptr) {
#ifdef DSEEK_HAS_CUDA
  if (offsets.is_cuda() && cuda::fp8_wgmma_takes(dw.cols, dw.rows)) {
    // The tensor cores read both operands transposed: quantised and transposed in one pass each.
    const Fp8ColTiles qx = wgrad_x_cols(
        shared, true, dw.cols, [&] { return quantize_fp8_cols_transposed(x_cache, offsets); });
    const Fp8ColTiles qdy =
        quantize_fp8_cols_transposed(dy2, offsets, std::string(op) + " dy (column tiles)");
    // One group: cuBLASLt's GEMM with both operands in 1×128 tiles where it runs (the group's
    // tiles are the first ⌈rows/128⌉ slots).
    const int64_t tokens = (dy2.size(0) + kFp8Tile - 1) / kFp8Tile * kFp8Tile;
    if (dense && cuda::fp8_wgrad_cublaslt(qdy.data.data<uint8_t>(), qdy.scale.data<float>(),
                                          dw.rows, qx.data.data<uint8_t>(), qx.scale.data<float>(),
                                          dw.cols, tokens, qx.data.size(1),
                                          dw.matrices[0].data<float>(), accumulate ? 1.0f : 0.0f)) {
      if (squares) matrices_sum_of_squares(dw, squares);
      return;
    }
    cuda::fp8_grouped_wgrad_t(qdy.data.data<uint8_t>(), qdy.scale.data<float>(),
                              qx.data.data<uint8_t>(), qx.scale.data<float>(), dy2.size(0), dw.rows,
                              dw.cols, offsets.data<int64_t>(), offsets.numel() - 1,
                              static_cast<float* const*>(dw.table.raw()), accumulate ? 1.0f : 0.0f,
                              squares);
    return;
  }
#endif
  const Fp8ColTiles qx = wgrad_x_cols(shared, false, dw.cols, [&] {
    return quantize_fp8_cols(dequantize_fp8(x_cache, DType::F32), &offsets,
                             std::string(op) + " x (column tiles)");
  });
  const Fp8ColTiles qdy = quantize_fp8_cols(dy2, &offsets, std::string(op) + " dy (column tiles)");
  if (offsets.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const int64_t E = offsets.numel() - 1, N = dw.rows, K = dw.cols;
    cuda::fp8_grouped_wgrad(qdy.data.data<uint8_t>(), qdy.scale.data<float>(),
                            qx.data.data<uint8_t>(), qx.scale.data<float>(), qdy.data.size(0), N, K,
                            offsets.data<int64_t>(), E, static_cast<float* const*>(dw.table.raw()),
                            accumulate ? 1.0f : 0.0f, squares);
    return;
#else
    cuda_not_built(op);
#endif
  }
  grouped_linear_backward_dw(dequantize_fp8_cols(qx, offsets), dequantize_fp8_cols(qdy, offsets),
                             offsets, dw, accumulate, squares);
}

}  // namespace

int64_t fp8_col_tile_rows(int64_t rows, int64_t groups) {
  return rows / kFp8Tile + groups;
}

Fp8ColTiles quantize_fp8_cols(const Tensor& x, const Tensor* offsets, std::string_view name) {
  DSEEK_CHECK(x.defined() && x.dim() == 2,
              "[quantize_fp8_cols] '{}': expected a 2-D tensor, got {}", name,
              x.defined() ? shape_str(x.shape()) : "undefined");
  const Device device = op_device("quantize_fp8_cols", {&x, offsets});
  const DType act = activation_dtype("quantize_fp8_cols", x);
  (void)act;  // read by the CUDA branch only
  const int64_t rows = x.size(0), cols = x.size(1);
  const Tensor off = offsets ? *offsets : one_group(rows, device);
  const int64_t G = check_offsets("quantize_fp8_cols", off, rows, device, false);
  Fp8ColTiles out;
  out.data = Tensor::empty({rows, cols}, DType::F8_E4M3, device);
  out.scale = Tensor::empty({fp8_col_tile_rows(rows, G), cols}, DType::F32, device);
  const Tensor xc = x.contiguous();
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    Fp8NanCheck nan(fmt::format("[quantize_fp8_cols] '{}': input {} contains NaN or Inf", name,
                                shape_str(x.shape())));
    cuda::quantize_fp8_cols(xc.raw(), act, rows, cols, off.data<int64_t>(), G,
                            out.data.data<uint8_t>(), out.scale.data<float>(), nan.flag());
    nan.done();
    return out;
#else
    cuda_not_built("quantize_fp8_cols");
#endif
  }
  const int64_t at = cpu::quantize_fp8_cols(xc.data<float>(), rows, cols, off.data<int64_t>(), G,
                                            out.data.data<uint8_t>(), out.scale.data<float>());
  DSEEK_CHECK(at < 0, "[quantize_fp8_cols] '{}': input {} has {} at row {}, column {}", name,
              shape_str(x.shape()), xc.data<float>()[at < 0 ? 0 : at], at / cols, at % cols);
  return out;
}

namespace {

// The transposed column tiles' tensors for `rows` rows of `cols` columns in G groups (GPU).
Fp8ColTiles empty_cols_transposed(int64_t rows, int64_t cols, int64_t G) {
  const int64_t slots = fp8_col_tile_rows(rows, G);
  return {Tensor::empty({cols, slots * kFp8Tile}, DType::F8_E4M3, Device::CUDA),
          Tensor::empty({slots, cols}, DType::F32, Device::CUDA)};
}

}  // namespace

Fp8ColTiles quantize_fp8_cols_transposed(const Tensor& x, const Tensor& offsets,
                                         std::string_view name) {
  DSEEK_CHECK(x.defined() && x.dim() == 2 && x.is_cuda(),
              "[quantize_fp8_cols_transposed] '{}': expected a 2-D tensor on the GPU, got {}", name,
              x.defined() ? shape_str(x.shape()) + " on " + std::string(device_name(x.device()))
                          : std::string("undefined"));
  const DType act = activation_dtype("quantize_fp8_cols_transposed", x);
  const int64_t rows = x.size(0), cols = x.size(1);
  const int64_t G =
      check_offsets("quantize_fp8_cols_transposed", offsets, rows, Device::CUDA, false);
  Fp8ColTiles out = empty_cols_transposed(rows, cols, G);
#ifdef DSEEK_HAS_CUDA
  const Tensor xc = x.contiguous();
  Fp8NanCheck nan(fmt::format("[quantize_fp8_cols] '{}': input {} contains NaN or Inf", name,
                              shape_str(x.shape())));
  cuda::fp8_col_tiles_t(xc.raw(), act, rows, cols, offsets.data<int64_t>(), G,
                        out.data.data<uint8_t>(), out.scale.data<float>(), nan.flag());
  nan.done();
#else
  (void)act;
  cuda_not_built("quantize_fp8_cols_transposed");
#endif
  return out;
}

Fp8ColTiles quantize_fp8_cols_transposed(const Fp8Tensor& x_rows, const Tensor& offsets) {
  DSEEK_CHECK(x_rows.data.defined() && x_rows.data.is_cuda() && x_rows.data.dim() == 2 &&
                  x_rows.data.is_contiguous() && x_rows.layout == Fp8Layout::Tile1x128 &&
                  x_rows.scale.is_contiguous() &&
                  x_rows.scale.shape() == fp8_scale_shape(x_rows.data.size(0), x_rows.data.size(1),
                                                          Fp8Layout::Tile1x128),
              "[quantize_fp8_cols_transposed] expected contiguous 1x128 row tiles on the GPU");
  const int64_t rows = x_rows.data.size(0), cols = x_rows.data.size(1);
  const int64_t G =
      check_offsets("quantize_fp8_cols_transposed", offsets, rows, Device::CUDA, false);
  Fp8ColTiles out = empty_cols_transposed(rows, cols, G);
#ifdef DSEEK_HAS_CUDA
  // x̂ is finite: codes decode to finite values and the scales are finite by construction.
  cuda::fp8_col_tiles_t_from_rows(x_rows.data.data<uint8_t>(), x_rows.scale.data<float>(), rows,
                                  cols, offsets.data<int64_t>(), G, out.data.data<uint8_t>(),
                                  out.scale.data<float>(), nullptr);
#else
  cuda_not_built("quantize_fp8_cols_transposed");
#endif
  return out;
}

Tensor dequantize_fp8_cols(const Fp8ColTiles& q, const Tensor& offsets_cpu) {
  DSEEK_CHECK(q.data.defined() && q.data.dtype() == DType::F8_E4M3 && q.data.dim() == 2 &&
                  q.data.is_contiguous() && !q.data.is_cuda(),
              "[dequantize_fp8_cols] data must be contiguous 2-D f8_e4m3 on the CPU");
  const int64_t rows = q.data.size(0), cols = q.data.size(1);
  const int64_t G = check_offsets("dequantize_fp8_cols", offsets_cpu, rows, Device::CPU, false);
  DSEEK_CHECK(q.scale.defined() && q.scale.dtype() == DType::F32 && q.scale.is_contiguous() &&
                  !q.scale.is_cuda() &&
                  (q.scale.shape() == Shape{fp8_col_tile_rows(rows, G), cols}),
              "[dequantize_fp8_cols] scale must be contiguous f32 [{}, {}] on the CPU, got {}",
              fp8_col_tile_rows(rows, G), cols, shape_str(q.scale.shape()));
  Tensor y = Tensor::empty({rows, cols});
  cpu::dequantize_fp8_cols(q.data.data<uint8_t>(), q.scale.data<float>(), rows, cols,
                           offsets_cpu.data<int64_t>(), G, y.data<float>());
  return y;
}

// The scope's blocks by weight address: the weight (kept alive) and its 128×128 blocks, W's and on
// the GPU Wᵀ's, as one "expert".
struct Fp8WeightCacheScope::Entries {
  std::map<const void*, std::pair<Tensor, Fp8ExpertWeights>> by_weight;
  // The experts' blocks by their matrices' addresses, the matrices kept alive beside them.
  std::map<std::vector<const void*>, std::pair<std::vector<Tensor>, Fp8ExpertWeights>> by_experts;
  int64_t quantised = 0;
  Fp8WeightImages* images = nullptr;  // the outermost scope's (see the constructor)
  bool unchecked_images = false;      // images taken whose update's NaN flag is not read yet
};

namespace {

thread_local Fp8WeightCacheScope::Entries* active_weight_cache = nullptr;

// W [out, in]'s blocks: from the active scope's cache (filled on the first call), else quantised
// now (Wᵀ's only where `transposed` and on the GPU).
Fp8ExpertWeights weight_blocks(const Tensor& weight, bool transposed) {
  const bool gpu = weight.is_cuda();
  Fp8WeightCacheScope::Entries* cache = active_weight_cache;
  if (cache) {
    const auto it = cache->by_weight.find(weight.raw());
    if (it != cache->by_weight.end() && it->second.first.shape() == weight.shape() &&
        it->second.first.dtype() == weight.dtype())
      return it->second.second;
  }
  const Tensor w = quantizable(weight);
  Fp8ExpertWeights q =
      quantize_experts("linear_fp8_train", expert_matrices(std::vector<Tensor>{w}), true,
                       gpu && (transposed || cache), "'linear_fp8_train weight'");
  if (cache) {
    cache->by_weight[weight.raw()] = {weight, q};
    ++cache->quantised;
  }
  return q;
}

// One matrix's blocks of `q` as an Fp8Tensor: W's [out, in], or Wᵀ's [in, out].
Fp8Tensor blocks_of(const Fp8ExpertWeights& q, bool transposed) {
  const Tensor& d = transposed ? q.data_t : q.data;
  const Tensor& s = transposed ? q.scale_t : q.scale;
  return {d.reshape({d.size(1), d.size(2)}), s.reshape({s.size(1), s.size(2)}),
          Fp8Layout::Block128x128};
}

// -1: not decided yet (DSEEK_FP8_CUBLASLT read on first use), 0: off, 1: on.
std::atomic<int> g_dense_cublaslt{-1};

}  // namespace

bool fp8_dense_cublaslt() {
  int on = g_dense_cublaslt.load();
  if (on < 0) {
    const char* env = std::getenv("DSEEK_FP8_CUBLASLT");
    on = env && std::strcmp(env, "0") == 0 ? 0 : 1;
    g_dense_cublaslt.store(on);
  }
  return on == 1;
}

void set_fp8_dense_cublaslt(bool on) {
  g_dense_cublaslt.store(on ? 1 : 0);
}

Fp8WeightCacheScope::Fp8WeightCacheScope(Fp8WeightImages* images) {
  if (active_weight_cache) return;
  entries_ = std::make_unique<Entries>();
  active_weight_cache = entries_.get();
  entries_->images = images;
  if (!images) return;
  for (Fp8WeightImages::Image& im : images->images) {
    if (!im.current) continue;
    im.current = false;  // taken: the next update makes it current again
    if (im.masters.size() == 1 && im.blocks.experts == 1)
      entries_->by_weight[im.masters[0].raw()] = {im.masters[0], im.blocks};
    std::vector<const void*> key;
    for (const Tensor& m : im.masters) key.push_back(m.raw());
    entries_->by_experts[key] = {im.masters, im.blocks};
    entries_->unchecked_images = true;
  }
}

Fp8WeightCacheScope::~Fp8WeightCacheScope() {
  if (!entries_) return;
  active_weight_cache = nullptr;
  Fp8WeightImages* images = entries_->images;
  if (!images) return;
  // Keep the f32 GPU matrices' blocks (W's and Wᵀ's): what the optimizer can rewrite.
  std::vector<Fp8WeightImages::Image> kept;
  const auto keepable = [](const std::vector<Tensor>& masters, const Fp8ExpertWeights& q) {
    if (!q.data.defined() || !q.data_t.defined() || q.rows % 4 != 0 || q.cols % 4 != 0 ||
        q.experts != int64_t(masters.size()))
      return false;
    for (const Tensor& m : masters)
      if (!m.is_cuda() || m.dtype() != DType::F32 || !m.is_contiguous()) return false;
    return true;
  };
  std::set<const void*> seen;  // a dense weight is in both maps when it came from an image
  for (const auto& [key, entry] : entries_->by_experts)
    if (keepable(entry.first, entry.second)) {
      kept.push_back({entry.first, entry.second, false});
      if (entry.first.size() == 1) seen.insert(entry.first[0].raw());
    }
  for (const auto& [key, entry] : entries_->by_weight)
    if (!seen.count(key) && keepable({entry.first}, entry.second))
      kept.push_back({{entry.first}, entry.second, false});
  bool same = kept.size() == images->images.size();
  for (size_t i = 0; same && i < kept.size(); ++i)
    same = kept[i].blocks.data.raw() == images->images[i].blocks.data.raw();
  if (!same) ++images->version;
  images->images = std::move(kept);
  if (!images->images.empty() && !images->bad.defined())
    images->bad = Tensor::zeros({1}, DType::I32, Device::CUDA);
}

void check_fp8_image_updates() {
  Fp8WeightCacheScope::Entries* cache = active_weight_cache;
  if (!cache || !cache->unchecked_images) return;
  cache->unchecked_images = false;
#ifdef DSEEK_HAS_CUDA
  if (!cache->images || !cache->images->bad.defined()) return;
  Fp8NanCheck nan(
      "[adamw] an update left NaN or Inf in an FP8-trained weight (its FP8 image, "
      "which this step multiplied, was not written)");
  dseek::cuda::copy_on_device(nan.flag(), cache->images->bad.raw(), sizeof(int));
  nan.done();
#endif
}

int64_t Fp8WeightCacheScope::quantised() const {
  return active_weight_cache ? active_weight_cache->quantised : 0;
}

namespace {

// y = qa·qwᵀ in act on the GPU, into `into` when given (contiguous act): cuBLASLt's block-scaled
// GEMM where it takes the shape and fp8_dense_cublaslt() allows it, else the wgmma or plain kernel;
// every path rounds its f32 total to act once.
Tensor fp8_gemm_act(const Fp8Tensor& qa, const Fp8Tensor& qw, DType act, Tensor* into = nullptr) {
  return fp8_gemm(qa, qw, nullptr, act,
                  fp8_dense_cublaslt() ? Fp8GemmKernel::Best : Fp8GemmKernel::Own, into);
}

}  // namespace

Tensor linear_fp8_train_forward(const Tensor& x, const Tensor& weight, Fp8LinearCache* cache) {
  DSEEK_CHECK(x.defined() && weight.defined(), "[linear_fp8_train] undefined input or weight");
  op_device("linear_fp8_train", {&x, &weight});
  activation_dtype("linear_fp8_train", x);
  DSEEK_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "[linear_fp8_train] input {} does not match weight {}", shape_str(x.shape()),
              shape_str(weight.shape()));
  const Fp8LinearCache qx = fp8_linear_cache(x);
  if (cache) *cache = qx;
  return linear_fp8_train_forward(qx, weight);
}

Tensor linear_fp8_train_forward(const Fp8LinearCache& x, const Tensor& weight) {
  DSEEK_CHECK(x.x.data.defined() && weight.defined(),
              "[linear_fp8_train] undefined codes or weight");
  const Device device = op_device("linear_fp8_train", {&x.x.data, &weight});
  DSEEK_CHECK(weight.dim() == 2 && x.x.data.dim() == 2 && x.x.data.size(1) == weight.size(1),
              "[linear_fp8_train] input codes {} do not match weight {}",
              shape_str(x.x.data.shape()), shape_str(weight.shape()));
  Shape y_shape = x.x_shape;
  y_shape.back() = weight.size(0);
  const Fp8Tensor qw = blocks_of(weight_blocks(weight, false), false);
  if (device == Device::CUDA) return fp8_gemm_act(x.x, qw, x.act).reshape(y_shape);
  return linear(dequantize_fp8(x.x), dequantize_fp8(qw)).reshape(y_shape);
}

Fp8LinearCache fp8_linear_cache(const Tensor& x) {
  DSEEK_CHECK(x.defined() && x.dim() >= 1, "[linear_fp8_train] undefined or 0-d input");
  const DType act = activation_dtype("linear_fp8_train", x);
  const int64_t in = x.size(-1), T = x.numel() / std::max<int64_t>(in, 1);
  return Fp8LinearCache{quantize_fp8(x.contiguous().reshape({T, in}), Fp8Layout::Tile1x128, false,
                                     "linear_fp8_train x"),
                        x.shape(), act};
}

void linear_fp8_train_backward(const Fp8LinearCache& cache, const Tensor& weight, const Tensor& dy,
                               Tensor* dx, Tensor* dweight, bool accumulate,
                               Fp8WgradInput* shared_x) {
  DSEEK_CHECK(cache.x.data.defined() && weight.defined() && dy.defined(),
              "[linear_fp8_train] undefined cache, weight or dy");
  const Device device = op_device("linear_fp8_train", {&cache.x.data, &weight, &dy, dx, dweight});
  const int64_t T = cache.x.data.size(0), in = cache.x.data.size(1);
  DSEEK_CHECK(weight.dim() == 2 && weight.size(1) == in,
              "[linear_fp8_train] weight {} does not match the cached input [{}, {}]",
              shape_str(weight.shape()), T, in);
  const int64_t out = weight.size(0);
  DSEEK_CHECK(dy.dtype() == cache.act && dy.numel() == T * out && dy.size(-1) == out,
              "[linear_fp8_train] dy {} {} does not match the output [{}, {}] {}",
              dtype_name(dy.dtype()), shape_str(dy.shape()), T, out, dtype_name(cache.act));
  const Tensor dy2 = dy.contiguous().reshape({T, out});
  if (dx) {
    DSEEK_CHECK(
        dx->defined() && dx->dtype() == cache.act && dx->numel() == T * in && dx->is_contiguous(),
        "[linear_fp8_train] dx must be contiguous {} with {} elements, got {} {}",
        dtype_name(cache.act), T * in, dtype_name(dx->dtype()), shape_str(dx->shape()));
    const Fp8Tensor qdy = quantize_fp8(dy2, Fp8Layout::Tile1x128, false, "linear_fp8_train dy");
    const Fp8ExpertWeights qw = weight_blocks(weight, true);
    if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
      fp8_gemm_act(qdy, blocks_of(qw, true), cache.act, dx);
#else
      cuda_not_built("linear_fp8_train");
#endif
    } else {
      const Tensor dyd = dequantize_fp8(qdy), wd = dequantize_fp8(blocks_of(qw, false));
      cpu::linear_backward_dx(dyd.data<float>(), T, out, wd.data<float>(), DType::F32, in, in,
                              dx->data<float>(), 0.0f);
    }
  }
  if (dweight) {
    DSEEK_CHECK(dweight->defined() && dweight->dtype() == DType::F32 &&
                    dweight->shape() == weight.shape() && dweight->is_contiguous(),
                "[linear_fp8_train] dweight must be contiguous f32 {}, got {} {}",
                shape_str(weight.shape()), dtype_name(dweight->dtype()),
                shape_str(dweight->shape()));
    wgrad("linear_fp8_train", cache.x, dy2, one_group(T, device),
          expert_matrices(std::vector<Tensor>{*dweight}), accumulate, /*dense=*/true, shared_x);
  }
}

namespace {

// The grouped forward's checks of its input x_perm (f32/bf16 or its codes, named `what` in the
// errors) against the experts' blocks and the offsets; returns the number of experts.
int64_t grouped_forward_experts(const Tensor& x, const char* what, const Fp8ExpertWeights& w,
                                const Tensor& offsets) {
  DSEEK_CHECK(x.defined() && x.dim() == 2 && x.size(1) == w.cols,
              "[grouped_linear_fp8] {} {}, expected [N, {}]", what,
              x.defined() ? shape_str(x.shape()) : "undefined", w.cols);
  DSEEK_CHECK(w.data.defined(), "[grouped_linear_fp8] the experts' forward blocks are missing");
  const Device device = op_device("grouped_linear_fp8", {&x, &offsets, &w.data});
  const int64_t E = check_offsets("grouped_linear_fp8", offsets, x.size(0), device, true);
  DSEEK_CHECK(E == w.experts, "[grouped_linear_fp8] offsets for {} experts, {} matrices", E,
              w.experts);
  return E;
}

// y_perm [N, out] (act) = the experts' products of x_perm's codes (checked by the callers).
Tensor grouped_fp8_product(const Fp8GroupedCache& qx, const Fp8ExpertWeights& w,
                           const Tensor& offsets, [[maybe_unused]] int64_t E) {
  if (qx.x.data.is_cuda()) {
#ifdef DSEEK_HAS_CUDA
    const int64_t N = qx.x.data.size(0), out = w.rows, in = w.cols;
    Tensor y = Tensor::empty({N, out}, qx.act, Device::CUDA);
    cuda::fp8_grouped_gemm(qx.x.data.data<uint8_t>(), qx.x.scale.data<float>(), N, in,
                           offsets.data<int64_t>(), E, w.data.data<uint8_t>(),
                           w.scale.data<float>(), out, y.raw(), qx.act);
    return y;
#else
    cuda_not_built("grouped_linear_fp8");
#endif
  }
  return grouped_linear(dequantize_fp8(qx.x), expert_matrices(dequantize_experts(w)), offsets);
}

}  // namespace

Fp8GroupedCache fp8_grouped_cache(const Tensor& x_perm) {
  DSEEK_CHECK(x_perm.defined() && x_perm.dim() == 2, "[grouped_linear_fp8] x must be 2-D");
  const DType act = activation_dtype("grouped_linear_fp8", x_perm);
  return Fp8GroupedCache{quantize_fp8(x_perm, Fp8Layout::Tile1x128, false, "grouped_linear_fp8 x"),
                         act};
}

Fp8ExpertWeights quantize_fp8_expert_weights(const ExpertMatrices& w, std::string_view name) {
  Fp8WeightCacheScope::Entries* cache = active_weight_cache;
  std::vector<const void*> key;
  if (cache) {
    for (const Tensor& m : w.matrices) key.push_back(m.raw());
    const auto it = cache->by_experts.find(key);
    if (it != cache->by_experts.end()) {
      const Fp8ExpertWeights& q = it->second.second;
      const std::vector<Tensor>& kept = it->second.first;
      bool same = q.experts == w.experts && q.rows == w.rows && q.cols == w.cols;
      for (size_t e = 0; same && e < kept.size(); ++e)
        same = kept[e].dtype() == w.matrices[e].dtype() && kept[e].shape() == w.matrices[e].shape();
      if (same) return q;
    }
  }
  const std::string what = "'" + std::string(name) + "'";
  Fp8ExpertWeights q = quantize_experts("quantize_fp8_expert_weights", w, true,
                                        w.device == Device::CUDA, what.c_str());
  if (cache) {
    cache->by_experts[key] = {w.matrices, q};
    ++cache->quantised;
  }
  return q;
}

Tensor grouped_linear_fp8_forward(const Tensor& x_perm, const ExpertMatrices& w,
                                  const Tensor& offsets, Fp8GroupedCache* cache) {
  return grouped_linear_fp8_forward(x_perm, quantize_experts("grouped_linear_fp8", w, true, false),
                                    offsets, cache);
}

Tensor grouped_linear_fp8_forward(const Tensor& x_perm, const Fp8ExpertWeights& w,
                                  const Tensor& offsets, Fp8GroupedCache* cache) {
  const int64_t E = grouped_forward_experts(x_perm, "x", w, offsets);
  const Fp8GroupedCache qx = fp8_grouped_cache(x_perm);
  if (cache) *cache = qx;
  return grouped_fp8_product(qx, w, offsets, E);
}

Tensor grouped_linear_fp8_forward(const Fp8GroupedCache& x_perm, const Fp8ExpertWeights& w,
                                  const Tensor& offsets) {
  const int64_t E = grouped_forward_experts(x_perm.x.data, "x codes", w, offsets);
  return grouped_fp8_product(x_perm, w, offsets, E);
}

Tensor grouped_linear_fp8_backward_dx(const Tensor& dy_perm, const ExpertMatrices& w,
                                      const Tensor& offsets) {
  const bool gpu = w.device == Device::CUDA;
  return grouped_linear_fp8_backward_dx(
      dy_perm, quantize_experts("grouped_linear_fp8", w, !gpu, gpu), offsets);
}

Tensor grouped_linear_fp8_backward_dx(const Tensor& dy_perm, const Fp8ExpertWeights& w,
                                      const Tensor& offsets) {
  DSEEK_CHECK(dy_perm.defined() && dy_perm.dim() == 2 && dy_perm.size(1) == w.rows,
              "[grouped_linear_fp8] dy {}, expected [N, {}]",
              dy_perm.defined() ? shape_str(dy_perm.shape()) : "undefined", w.rows);
  const Device device = op_device("grouped_linear_fp8", {&dy_perm, &offsets});
  const DType act = activation_dtype("grouped_linear_fp8", dy_perm);
  (void)act;  // read by the CUDA branch only
  const int64_t N = dy_perm.size(0);
  const int64_t E = check_offsets("grouped_linear_fp8", offsets, N, device, true);
  DSEEK_CHECK(E == w.experts, "[grouped_linear_fp8] offsets for {} experts, {} matrices", E,
              w.experts);
  const Fp8Tensor qdy = quantize_fp8(dy_perm, Fp8Layout::Tile1x128, false, "grouped_linear_fp8 dy");
  if (device == Device::CUDA) {
#ifdef DSEEK_HAS_CUDA
    DSEEK_CHECK(w.data_t.defined() && w.data_t.is_cuda(),
                "[grouped_linear_fp8] the experts' transposed blocks (the dgrad's) are missing");
    const int64_t out = w.rows, in = w.cols;
    Tensor dx = Tensor::empty({N, in}, act, device);
    cuda::fp8_grouped_gemm(qdy.data.data<uint8_t>(), qdy.scale.data<float>(), N, out,
                           offsets.data<int64_t>(), E, w.data_t.data<uint8_t>(),
                           w.scale_t.data<float>(), in, dx.raw(), act);
    return dx;
#else
    cuda_not_built("grouped_linear_fp8");
#endif
  }
  DSEEK_CHECK(w.data.defined() && !w.data.is_cuda(),
              "[grouped_linear_fp8] the experts' blocks are missing or not on the CPU");
  return grouped_linear_backward_dx(dequantize_fp8(qdy), expert_matrices(dequantize_experts(w)),
                                    offsets);
}

void grouped_linear_fp8_backward_dw(const Fp8GroupedCache& cache, const Tensor& dy_perm,
                                    const Tensor& offsets, const ExpertMatrices& dw,
                                    bool accumulate, Fp8WgradInput* shared_x, double* squares) {
  DSEEK_CHECK(cache.x.data.defined() && dy_perm.defined() && dy_perm.dim() == 2,
              "[grouped_linear_fp8] undefined cache or dy");
  const Device device = op_device("grouped_linear_fp8", {&cache.x.data, &dy_perm, &offsets});
  const int64_t N = dy_perm.size(0);
  DSEEK_CHECK(cache.x.data.size(0) == N && cache.x.data.size(1) == dw.cols &&
                  dy_perm.size(1) == dw.rows && dy_perm.dtype() == cache.act,
              "[grouped_linear_fp8] cached x {} and dy {} {} do not match dW [{}, {}]",
              shape_str(cache.x.data.shape()), dtype_name(dy_perm.dtype()),
              shape_str(dy_perm.shape()), dw.rows, dw.cols);
  DSEEK_CHECK(dw.dtype == DType::F32 && dw.ld == dw.cols && dw.device == device,
              "[grouped_linear_fp8] dW must be contiguous f32 matrices on {}, got {} (ld {}) on {}",
              device_name(device), dtype_name(dw.dtype), dw.ld, device_name(dw.device));
  const int64_t E = check_offsets("grouped_linear_fp8", offsets, N, device, true);
  DSEEK_CHECK(E == dw.experts, "[grouped_linear_fp8] offsets for {} experts, {} matrices", E,
              dw.experts);
  wgrad("grouped_linear_fp8", cache.x, dy_perm.contiguous(), offsets, dw, accumulate,
        /*dense=*/false, shared_x, squares);
}

}  // namespace dseek::ops
