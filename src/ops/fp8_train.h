// FP8 training of linear layers the DeepSeek-V3 way (technical report §3.3, Fig. 6): all three
// GEMMs of a linear y = x·Wᵀ (x [T, in], W [out, in]) take E4M3 inputs with fine-grained f32
// scales, and each scale tile lies along the reduction dimension of its GEMM:
//
//   forward  y  = x · Wᵀ    reduction over in:  x in 1×128 tiles (per token, 128 channels),
//                                               W in 128×128 blocks
//   dgrad    dx = dy · W    reduction over out: dy in 1×128 tiles (per token, 128 outputs),
//                                               W re-quantised blockwise in the transposed
//                                               orientation (Wᵀ [in, out]: a 128×128 block of W
//                                               is one of Wᵀ with the same amax, so Wᵀ's codes
//                                               and scales are W's transposed, exactly)
//   wgrad    dW = dyᵀ · x   reduction over T:   dyᵀ and xᵀ in 1×128 tiles along T, i.e. dy and x
//                                               in 128×1 tiles ("column tiles": 128 consecutive
//                                               tokens of one channel)
//
// The forward's quantised x is what the backward keeps (V3 caches the linears' inputs in FP8): the
// wgrad dequantises it and re-quantises it in column tiles (V3's "dequantise, transpose,
// re-quantise into 128×1 tiles" of its hardware notes, §3.5.2), so x̃ = Q_col(Q_row(x)).
// Accumulation is f32: the CUDA kernels sum each 128-long stretch of the reduction in f32 and
// promote it, scaled by the two tile scales, into an f32 total (V3's promotion every 128
// elements); on the CUDA path the dense forward and dgrad take cuBLASLt's block-scaled FP8 GEMM
// where it applies (ops/fp8.h's fp8_gemm). The CPU twin dequantises the E4M3 operands and runs the
// f32 GEMMs of ops/linear.h: an exact model of the ideal FP8 GEMM with f32 accumulation (every
// product of two dequantised values is what the tensor core multiplies), summed in another order.
//
// Grouped (MoE experts, rows of expert e = [offsets[e], offsets[e + 1]) of x_perm, W_e [out, in]):
// the same recipe per expert. Row tiles never cross experts (they are per row); column tiles
// restart at each expert's first row, so no tile mixes two experts' tokens: tile j of expert e is
// scale row floor(offsets[e]/128) + e + j (no prefix sum needed: consecutive experts' ranges
// cannot overlap), and the column-tile scale tensor has floor(N/128) + E rows (unused rows are 0).
// Rows past offsets[E] (unplaced slots) belong to no expert: their codes are 0, their outputs are
// left unwritten (as ops/moe.h's grouped_linear does).
//
// Non-finite input (x, W, dy) is an error naming the tensor, as quantize_fp8 reports it.
#pragma once

#include <memory>
#include <string_view>

#include "core/tensor.h"
#include "ops/fp8.h"
#include "ops/moe.h"

namespace dseek::ops {

// x [rows, cols] in 128×1 tiles (see above), codes in x's layout.
struct Fp8ColTiles {
  Tensor data;   // F8_E4M3 [rows, cols]
  Tensor scale;  // F32 [fp8_col_tile_rows(rows, groups), cols]
};

// Scale rows of column tiles over `groups` groups of `rows` rows in all: floor(rows/128) + groups.
int64_t fp8_col_tile_rows(int64_t rows, int64_t groups);

// Column tiles of x [rows, cols] (f32; bf16 too on the GPU) restarting at each group start of
// `offsets` (i64 [G + 1] on x's device, offsets[G] ≤ rows); null offsets: one group of all rows.
Fp8ColTiles quantize_fp8_cols(const Tensor& x, const Tensor* offsets, std::string_view name);
// x ≈ q · s as f32 [rows, cols] (rows outside every group are 0). CPU only (tests, the CPU path).
Tensor dequantize_fp8_cols(const Fp8ColTiles& q, const Tensor& offsets_cpu);

// GPU: the column tiles transposed, as the tensor-core wgrad reads them (8-bit wgmma takes both
// operands K-major, K being the tokens here): data F8_E4M3 [cols, P], P = 128·slots with slots =
// fp8_col_tile_rows(rows, G), column c's tile in slot j at data[c, 128·j …] (zeros past the
// tile's rows and in unused slots); scale as quantize_fp8_cols's. One pass from x (f32 or bf16),
// or from x's 1×128 row tiles (x̂ = their codes times their scales, the wgrad's double
// quantisation): the same codes as quantize_fp8_cols of x or x̂, transposed.
Fp8ColTiles quantize_fp8_cols_transposed(const Tensor& x, const Tensor& offsets,
                                         std::string_view name);
Fp8ColTiles quantize_fp8_cols_transposed(const Fp8Tensor& x_rows, const Tensor& offsets);

// --- dense linear -------------------------------------------------------------------------------

// Within a scope (TrainModel::run holds one over its forward and backward, during which no weight
// changes) the dense FP8 linear quantises each weight once a scope instead of once a GEMM: the
// forward writes W's and Wᵀ's blocks in one pass (GPU) and the dgrad finds Wᵀ's by the weight's
// address. The scope holds each weight it quantised, so no other tensor can take that address
// while the blocks are kept. The routed experts' blocks (quantize_fp8_expert_weights) are kept the
// same way, by the addresses of all their matrices. Scopes nest (an inner one joins the outer)
// and are per thread; without one every call quantises its own. The trainer holds one over the
// micro-batches of a step (train.grad_accum), so the weights are quantised once a step, not once a
// micro-batch, as DeepSeek-V3 casts its weights once for all of a step's micro-batches.
//
// Given `images` (a ParamSet's, see Fp8WeightImages), the outermost scope starts from the images
// that are current (the optimizer rewrote them with the masters) and, as it ends, keeps what it
// quantised there (f32 matrices on the GPU, W's and Wᵀ's blocks) for the optimizer to rewrite.
struct Fp8WeightImages;
class Fp8WeightCacheScope {
 public:
  explicit Fp8WeightCacheScope(Fp8WeightImages* images = nullptr);
  ~Fp8WeightCacheScope();
  Fp8WeightCacheScope(const Fp8WeightCacheScope&) = delete;
  Fp8WeightCacheScope& operator=(const Fp8WeightCacheScope&) = delete;
  // Weights (dense matrices and sets of experts) quantised so far under the outermost scope.
  int64_t quantised() const;
  struct Entries;

 private:
  std::unique_ptr<Entries> entries_;  // null for a scope nested in another
};

// Reads the NaN/Inf flag of the updates that wrote the images the active scope took (deferred
// inside a DeferredFp8Checks scope, ops/fp8_nan_check.h): a master an update left non-finite is
// the error quantising it would have raised. Call once the stream has waited for those updates
// (TrainModel::run: at its end, after ParamSet::await_all). A no-op without such images.
void check_fp8_image_updates();

// Whether the dense FP8 forward and dgrad with bf16 activations take cuBLASLt's block-scaled GEMM
// where it applies (bf16 straight from it); off, they take the wgmma kernels. Both round the
// f32 total once. On by default; DSEEK_FP8_CUBLASLT=0 turns it off.
bool fp8_dense_cublaslt();
void set_fp8_dense_cublaslt(bool on);

// What the forward keeps for the backward: x in 1×128 tiles (the FP8 activation cache).
struct Fp8LinearCache {
  Fp8Tensor x;
  Shape x_shape;   // x's shape as given ([..., in])
  DType act = DType::F32;
};

// y [..., out] = x·Wᵀ with x [..., in] (f32; bf16 too on the GPU) and the f32 (or bf16) weight
// W [out, in] quantised per 128×128 block; y in x's dtype. Fills `cache` when given.
Tensor linear_fp8_train_forward(const Tensor& x, const Tensor& weight,
                                Fp8LinearCache* cache = nullptr);
// The same from x's codes made by an earlier forward (another linear reading the same x: q_a_proj
// and kv_a_proj_with_mqa, gate_proj and up_proj): x is quantised once, the same bits.
Tensor linear_fp8_train_forward(const Fp8LinearCache& x, const Tensor& weight);

// x̂'s column tiles as an FP8 wgrad reads them, kept for the next backward of a linear with the
// same input (and, grouped, the same offsets): the first wgrad given an empty one fills it, the
// others reuse it (`transposed`: the tensor cores' layout of quantize_fp8_cols_transposed, else
// quantize_fp8_cols's; a wgrad that wants the other form makes its own).
struct Fp8WgradInput {
  Fp8ColTiles cols;
  bool transposed = false;
};

// The cache the forward fills, from x alone (the same codes: quantisation is deterministic). For
// layers that keep x in the activation dtype and quantise it again for the backward.
Fp8LinearCache fp8_linear_cache(const Tensor& x);

// Backward from the forward's cache: dx (act, x's shape; written) = Q(dy)·Q(W) when dx is not
// null, dW (f32 [out, in]; added when `accumulate`, else overwritten) = Q_col(dy)ᵀ·Q_col(x̂) when
// dweight is not null. dy [..., out] in the cache's act dtype. `shared_x`: x̂'s column tiles for
// several backwards of one input (Fp8WgradInput).
void linear_fp8_train_backward(const Fp8LinearCache& cache, const Tensor& weight, const Tensor& dy,
                               Tensor* dx, Tensor* dweight, bool accumulate,
                               Fp8WgradInput* shared_x = nullptr);

// --- grouped expert GEMMs -----------------------------------------------------------------------

struct Fp8GroupedCache {
  Fp8Tensor x;  // x_perm in 1×128 tiles [N, in]
  DType act = DType::F32;
};

// The cache grouped_linear_fp8_forward fills, from x_perm alone (see fp8_linear_cache).
Fp8GroupedCache fp8_grouped_cache(const Tensor& x_perm);

// The experts' weights quantised per 128×128 block once for the two GEMMs of a step that read
// them: W's blocks for the forward and Wᵀ's for the dgrad, both from one pass over the masters on
// the GPU (Wᵀ's codes and scales are W's transposed, see above). On the CPU only W's (its dgrad
// dequantises them). Holding them from the forward to the backward costs 2 bytes a parameter.
struct Fp8ExpertWeights {
  int64_t experts = 0, rows = 0, cols = 0;  // E matrices [out = rows, in = cols]
  Tensor data, scale;      // W's blocks: F8 [E, out, in], F32 [E, ⌈out/128⌉, ⌈in/128⌉]
  Tensor data_t, scale_t;  // Wᵀ's (GPU): F8 [E, in, out], F32 [E, ⌈in/128⌉, ⌈out/128⌉]
};

// The FP8 images of a model's weights, kept from one training step to the next: the blocks of
// each dense FP8 weight and of each layer's experts (f32 masters on the GPU), which the optimizer
// rewrites from the new masters as it updates them (ops::AdamWImage, AdamW's step), so that the
// next step's forward multiplies them instead of quantising every master again. An image is
// `current` from the update that rewrote it until the next Fp8WeightCacheScope takes it; any other
// write of a master in between must drop the images (ParamSet::drop_fp8_images does).
struct Fp8WeightImages {
  struct Image {
    std::vector<Tensor> masters;  // the f32 matrices, in the blocks' order (kept alive)
    Fp8ExpertWeights blocks;      // W's and Wᵀ's blocks, [E, ...]
    bool current = false;
  };
  std::vector<Image> images;
  uint64_t version = 0;  // changes when `images` holds other buffers (the optimizer's tables)
  Tensor bad;            // device i32: an update left a NaN or Inf in a master with an image
  void drop() {
    if (!images.empty()) ++version;
    images.clear();
  }
};

// w: the experts' f32 (or bf16) matrices, contiguous [out, in]. NaN/Inf is an error naming them
// as `name` (e.g. "model.layers.1.mlp.experts.*.gate_proj.weight").
Fp8ExpertWeights quantize_fp8_expert_weights(const ExpertMatrices& w,
                                             std::string_view name = "expert weights");

// y_perm [N, out] = x_perm[r]·W_eᵀ for the rows r of expert e; w: the experts' f32 (or bf16)
// matrices, contiguous [out, in], or their blocks; offsets [E + 1] i64 on x's device. y in x's
// dtype.
Tensor grouped_linear_fp8_forward(const Tensor& x_perm, const ExpertMatrices& w,
                                  const Tensor& offsets, Fp8GroupedCache* cache = nullptr);
Tensor grouped_linear_fp8_forward(const Tensor& x_perm, const Fp8ExpertWeights& w,
                                  const Tensor& offsets, Fp8GroupedCache* cache = nullptr);
// The same from x_perm's codes made by an earlier forward (gate_proj's for up_proj's).
Tensor grouped_linear_fp8_forward(const Fp8GroupedCache& x_perm, const Fp8ExpertWeights& w,
                                  const Tensor& offsets);
// dx_perm [N, in] = Q(dy)·Q(W_e) per expert (in act).
Tensor grouped_linear_fp8_backward_dx(const Tensor& dy_perm, const ExpertMatrices& w,
                                      const Tensor& offsets);
Tensor grouped_linear_fp8_backward_dx(const Tensor& dy_perm, const Fp8ExpertWeights& w,
                                      const Tensor& offsets);
// dW_e (+)= Q_col(dy)ᵀ·Q_col(x̂) over the rows of expert e, into dw (f32 contiguous [out, in],
// experts without rows get zeros unless `accumulate`).
// `shared_x` as in linear_fp8_train_backward (gate_proj's and up_proj's wgrads); `squares` as in
// grouped_linear_backward_dw (summed as they are stored by the TMA kernel).
void grouped_linear_fp8_backward_dw(const Fp8GroupedCache& cache, const Tensor& dy_perm,
                                    const Tensor& offsets, const ExpertMatrices& dw,
                                    bool accumulate, Fp8WgradInput* shared_x = nullptr,
                                    double* squares = nullptr);

}  // namespace dseek::ops
