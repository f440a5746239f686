// Placement: where a loaded model's weights live and the dtype of its activations. On the CPU
// (the default) weights stay as stored (bf16 memory-mapped in place) and activations are f32. On a GPU every weight is converted once at load to the activation dtype
// (f32 or bf16) and copied to the device, because the CUDA linear needs W in the activation dtype
// (FP8 projections excepted, below);
// the MoE gate weight alone stays f32 there, since transformers computes the router in f32 and the
// routing must not change with the activation dtype.
// An FP8 checkpoint's dense projections (F8_E4M3 + weight_scale_inv) stay FP8 by default on both
// devices (model/linear_weight.h: ops::linear_fp8 quantises the activations per 1×128 tile);
// kv_b_proj, the routed experts and every FP8 weight under Fp8Weights::Dequantise are dequantised
// at load (bf16, then placed like any other weight).
//
// Expert-parallel inference (docs/DISTRIBUTED.md): with `experts` spanning N > 1 ranks, every rank
// holds the whole model except the routed experts, of which it loads only its block (rank r:
// experts [r·E/N, (r+1)·E/N) of every MoE layer); each MoE layer sums its ranks' routed outputs
// through `experts.group` (model/moe.h).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace dseek::dist {
class ProcessGroup;
}

namespace dseek {

enum class Fp8Weights : uint8_t {
  Keep,       // FP8 checkpoint projections stay FP8 (ops::linear_fp8)
  Dequantise  // every FP8 weight is dequantised at load, as transformers does
};

// This process's share of the routed experts. The default (1 rank, no group) holds them all.
struct ExpertShard {
  int rank = 0, ranks = 1;
  // Sums the routed outputs over the ranks: its rank and size must be rank and ranks, and it must
  // be deterministic (fixed-order sums), so every rank gets the same bits and stays in lockstep.
  dist::ProcessGroup* group = nullptr;
  // Optional, on GPUs with a GPU per rank: a group over the same ranks whose buffers are device
  // memory (NCCL), deterministic too; the partial sums are then summed where they are, with no
  // host round trip. Null: they go through the host for `group`.
  dist::ProcessGroup* device_group = nullptr;

  bool sharded() const { return ranks > 1; }
  // This rank's routed experts [first, first + count) of `experts`; throws unless the ranks
  // divide `experts` evenly.
  int64_t count(int64_t experts) const;
  int64_t first(int64_t experts) const { return int64_t(rank) * count(experts); }
};

// Expert parallelism over every rank of `group` (rank group.rank() of group.size()).
ExpertShard expert_shard(dist::ProcessGroup& group);

struct Placement {
  Device device = Device::CPU;
  DType act = DType::F32;  // f32 anywhere; bf16 only on the GPU
  Fp8Weights fp8 = Fp8Weights::Keep;
  ExpertShard experts{};  // default: every routed expert here
};

// Throws "[model] placement ..." for bf16 on the CPU, a dtype other than f32/bf16, a GPU
// placement when no CUDA device is usable (cuda::require), or an expert shard that is not
// rank r of N > 1 over a deterministic group of that rank and size.
void validate(const Placement& placement);

// A weight as the model reads it under `placement`: unchanged on the CPU, else in act on the GPU.
Tensor place_weight(const Tensor& weight, const Placement& placement);
// The gate's weight: unchanged on the CPU (the CPU linear widens to f32), else f32 on the GPU.
Tensor place_f32(const Tensor& weight, const Placement& placement);

}  // namespace dseek
