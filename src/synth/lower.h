// Lowering: a complete operator at concrete sizes compiled into a plan of dseek tensor ops, with
// its backward. The operator is an einsum over its loop iterators (see cost.h):
//
//   out[o] = Σ_r  X̃[iters of the input] · Π_w W̃_w[iters of weight w]
//
// where each operand X̃ / W̃_w is its tensor read through the coordinates of its dims — a gather
// (im2col for Unfold, with zeros where a coordinate is padding). The plan:
//
//   1. gather   one per operand: a precomputed row index into the tensor viewed as [rows, D]
//               (D = the longest run of elements that stay contiguous, 1 in general), run as
//               ops::embedding on a copy with one extra zero row when some coordinate is padding;
//               no op at all when the operand is the tensor itself (coordinates built from bare
//               iterators by Split, each iterator once: decided symbolically, no index built).
//   2. contract the operands pairwise in the cheapest order (cost.h contraction_path): iterators
//               of both operands that are still needed are a batch, shared ones are summed (K),
//               the rest are rows (M, N): C[b, m, n] = Σ_k A[b, m, k] · B[b, n, k]. When each
//               of these groups is one strided index of both registers as they are laid out
//               (the iterators adjacent, in one order; a grouped linear's x [T, g, d/g] is
//               batch g, rows T, k d/g with strides d/g, d, 1), the contraction is one
//               ops::batched_matmul over strided views, its result written in the layout the
//               next step wants (the output's own order when it can: `finish` is then a
//               reshape). With no shared batch, one operand's row iterators may become the
//               batch with the other operand broadcast (stride 0): the Kronecker layer's
//               per-token product with its small factor. Otherwise (operands that need a
//               transpose) the operands are permuted into [batch, m, k] copies and multiplied
//               by ops::linear for one batch, else ops::grouped_linear with a matrix per batch.
//   3. sum      iterators only one operand has and nothing later needs: ops::linear with ones.
//   4. finish   permute to the output's dims, broadcast output iterators no operand has, and
//               scale by the extent of reduce iterators no operand has.
//
// Every operand is f32 and contiguous, so the same plan runs on the CPU and, through the CUDA
// twins of batched_matmul, linear, grouped_linear, embedding and Tensor's copies, on a GPU. On a GPU the forward
// also runs with bf16 input and weights (every register bf16, GEMMs accumulating in f32), the
// dtype of inference; the backward needs an f32 forward (the train override runs f32). The backward runs the
// plan transposed: a gather's gradient is a scatter-add (ops::embedding_backward), a
// contraction's the two GEMMs of linear_backward / grouped_linear_backward_*, a sum's a broadcast.
// The reference interpreter (interpreter.h) is the check for every lowering (tests).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/batched_matmul.h"
#include "synth/operator.h"

namespace dseek::synth {

enum class StepKind { gather, contract, sum, finish };

struct Step {
  StepKind kind = StepKind::gather;
  int in0 = -1, in1 = -1;  // registers read (gather: none)
  int out = -1;            // register written
  Shape out_shape;         // extents of the out register's iterators (finish: the output shape)
  // gather: source -1 is the input, w the weight w
  int source = -1;
  Shape source_shape;
  bool identity = false;     // the operand is the source itself (a reshape)
  int64_t rows = 0, D = 1;   // source viewed as [rows, D]
  bool padded = false;       // row `rows` of the table is zeros, for padded coordinates
  std::vector<int32_t> ids;  // one table row per D elements of the operand
  // contract (perm_a, perm_b) / sum and finish (perm_a): out dim i = input dim perm[i]
  std::vector<int> perm_a, perm_b;
  int64_t batch = 1, m = 1, n = 1, k = 1;  // contract: [batch, m, k] · [batch, n, k]; sum: [m, k]
  // contract: `strided` when both operands are strided views of their registers as they stand
  // and the result is written in its register's layout through sc: one ops::batched_matmul,
  // nothing permuted or copied (perm_a / perm_b unused). Batch stride 0: the operand is shared by
  // the whole batch (a weight applied per token).
  bool strided = false;
  ops::MatrixStrides sa, sb, sc;
  // finish: output dims no operand has (broadcast) and the scale of unused reductions
  std::vector<int> broadcast;
  float scale = 1.0f;
};

// What a plan's runs on a GPU need that depends on the plan alone (gather ids, the ones of sums,
// the scale of a finish), uploaded on the first run there and kept: a run uploads nothing.
// Shared by copies of a plan, which hold the same steps.
struct PlanConstants {
  std::mutex mutex;
  std::map<std::pair<size_t, DType>, Tensor> by_step;  // (step index, dtype) -> device tensor
};

struct LoweredPlan {
  std::shared_ptr<PlanConstants> constants = std::make_shared<PlanConstants>();
  Shape input_shape, output_shape;
  std::vector<Shape> weight_shapes;
  std::vector<Step> steps;
  int registers = 0;
  int output_register = -1;
  std::string description;  // one line per step (tests print it)
};

// Compiles `op` (complete) under `values`. Throws dseek::Error if a size is not a positive integer
// or a gather index does not fit in 32 bits.
LoweredPlan lower(const Operator& op, const Valuation& values);

// The tensors the backward reads: every register of one forward.
struct LoweredCache {
  std::vector<Tensor> registers;
};

// input: f32 with the input's element count (any shape, contiguous), weights: f32 of the weights'
// element counts, all on one device. Returns the output [output_shape], f32, on that device.
// With a bf16 input (a GPU), the weights are bf16 too and so is the output.
// Fills `cache` when given.
Tensor lowered_forward(const LoweredPlan& plan, const Tensor& input,
                       const std::vector<Tensor>& weights, LoweredCache* cache = nullptr);

struct LoweredGrads {
  Tensor dinput;                 // [input_shape] f32
  std::vector<Tensor> dweights;  // [weight_shapes[w]] f32
};
// dy: f32 of the output's element count, on the forward's device.
LoweredGrads lowered_backward(const LoweredPlan& plan, const LoweredCache& cache, const Tensor& dy);

}  // namespace dseek::synth
