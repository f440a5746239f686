#include "model/placement.h"

#include "core/cuda.h"
#include "core/error.h"
#include "dist/process_group.h"

namespace dseek {
namespace {

Tensor to_device(const Tensor& weight, DType dtype, Device device) {
  if (!weight.defined()) return weight;
  // Convert on the host first: the file's bytes are memory-mapped there, and a bf16 checkpoint
  // under a bf16 placement is copied straight to the GPU without a host copy.
  const Tensor converted = weight.dtype() == dtype ? weight : weight.to(dtype);
  return converted.to(device);
}

}  // namespace

int64_t ExpertShard::count(int64_t experts) const {
  DSEEK_CHECK(ranks >= 1 && experts >= 0 && experts % ranks == 0,
              "[model] expert parallel: {} routed experts do not split evenly over {} ranks "
              "(launch a number of ranks that divides {})",
              experts, ranks, experts);
  return experts / ranks;
}

ExpertShard expert_shard(dist::ProcessGroup& group) {
  return ExpertShard{group.rank(), group.size(), &group};
}

void validate(const Placement& placement) {
  const ExpertShard& shard = placement.experts;
  if (shard.sharded()) {
    DSEEK_CHECK(shard.group != nullptr && shard.group->size() == shard.ranks &&
                    shard.group->rank() == shard.rank,
                "[model] placement: expert shard rank {} of {} needs a process group of that "
                "rank and size",
                shard.rank, shard.ranks);
    DSEEK_CHECK(shard.group->deterministic(),
                "[model] placement: expert parallelism needs a deterministic process group (the "
                "ranks must sum the routed outputs to the same bits)");
    if (const dist::ProcessGroup* d = shard.device_group)
      DSEEK_CHECK(d->size() == shard.ranks && d->rank() == shard.rank && d->deterministic() &&
                      d->device() == Device::CUDA && placement.device == Device::CUDA,
                  "[model] placement: the expert shard's device group must be a deterministic GPU "
                  "group of rank {} of {}, for a model on the GPU",
                  shard.rank, shard.ranks);
  } else {
    DSEEK_CHECK(shard.ranks == 1 && shard.rank == 0,
                "[model] placement: expert shard rank {} of {} (ranks must be >= 1)", shard.rank,
                shard.ranks);
  }
  DSEEK_CHECK(placement.act == DType::F32 || placement.act == DType::BF16,
              "[model] placement: activations must be f32 or bf16, got {}",
              dtype_name(placement.act));
  if (placement.device == Device::CUDA) {
    cuda::require("a model placed on the GPU");
  } else {
    DSEEK_CHECK(placement.act == DType::F32,
                "[model] placement: activations on the CPU are f32, got {}",
                dtype_name(placement.act));
  }
}

Tensor place_weight(const Tensor& weight, const Placement& placement) {
  if (placement.device == Device::CPU) return weight;
  return to_device(weight, placement.act, placement.device);
}

Tensor place_f32(const Tensor& weight, const Placement& placement) {
  if (placement.device == Device::CPU) return weight;
  return to_device(weight, DType::F32, placement.device);
}

}  // namespace dseek
