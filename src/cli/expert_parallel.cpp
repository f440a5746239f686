#include "cli/expert_parallel.h"

#include <fmt/format.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "model/model.h"

namespace dseek::cli {

namespace {

std::string bytes_text(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

// With a GPU per rank and NCCL loadable on every rank: a deterministic NCCL group over the world
// that sums the MoE partial sums on the devices (model/placement.h); else null (through the host).
// Collective. The group lives as long as the process and is never destroyed: at exit the CUDA
// runtime may already be gone when static destructors run.
dist::ProcessGroup* gpu_sum_group(const Placement& placement, dist::ProcessGroup& world) {
  if (placement.device != Device::CUDA || !dist::nccl_available()) return nullptr;
  // Every rank decides alike: a GPU each on every node, and the library loads everywhere.
  const bool gpu_each =
      cuda::device_count() >= world.local_size() && cuda::device_ordinal() == world.local_rank();
  bool loads = true;
  try {
    (void)dist::nccl_version();
  } catch (const Error&) {
    loads = false;
  }
  double ready[1] = {gpu_each && loads ? 1.0 : 0.0};
  world.all_reduce(std::span<double>(ready, 1));
  if (ready[0] != double(world.size())) return nullptr;
  static dist::ProcessGroup* group = [&world] {
    dist::ProcessGroup* g = dist::make_nccl_group(world).release();
    g->set_deterministic(true);
    return g;
  }();
  return group;
}

}  // namespace

void enable_expert_parallel(Placement& placement, const char* command) {
  dist::ProcessGroup& world = dist::world();
  DSEEK_CHECK(world.size() > 1,
              "[{}] --expert-parallel splits the routed experts over the ranks of an MPI job, but "
              "this process runs alone: launch it as `mpirun -np N dseek {} ... "
              "--expert-parallel` with N > 1",
              command, command);
  // Every rank must add the routed partial sums to the same bits (fixed rank order), or their
  // residual streams, routings and sampled tokens could drift apart.
  world.set_deterministic(true);
  placement.experts = expert_shard(world);
  placement.experts.device_group = gpu_sum_group(placement, world);
}

void log_expert_parallel(const Model& model, const Placement& placement) {
  const ExpertShard& shard = placement.experts;
  if (!shard.sharded()) return;
  std::vector<double> bytes(size_t(shard.ranks), 0.0);
  bytes[size_t(shard.rank)] = double(model.routed_expert_bytes());
  shard.group->all_reduce(std::span<double>(bytes));  // exact: integers below 2^53
  if (shard.rank != 0) return;
  const int64_t E = model.config().n_routed_experts;
  std::string per_rank;
  for (double b : bytes) per_rank += (per_rank.empty() ? "" : ", ") + bytes_text(b);
  std::string where;
  if (placement.device == Device::CUDA)
    where = shard.device_group ? "; a GPU per rank, partial sums through NCCL"
            : cuda::device_ordinal() != 0 || cuda::device_count() >= shard.group->local_size()
                ? "; a GPU per rank, partial sums through the host"
                : "; the ranks share GPU 0";
  std::fprintf(stderr,
               "expert parallel inference: %lld routed experts over %d ranks (%lld each; expert "
               "weights per rank: %s%s)\n",
               static_cast<long long>(E), shard.ranks, static_cast<long long>(shard.count(E)),
               per_rank.c_str(), where.c_str());
}

int32_t rank0_token(const ExpertShard& shard, int32_t id) {
  // Token ids are below 2^24 (vocabularies are far smaller), so f32 carries them exactly.
  DSEEK_CHECK(id >= 0 && id < (1 << 24), "[generate] token id {} does not fit the broadcast", id);
  float value = float(id);
  shard.group->broadcast(std::span<float>(&value, 1), 0);
  return int32_t(value);
}

bool prints_output(const Placement& placement) {
  return !placement.experts.sharded() || placement.experts.rank == 0;
}

}  // namespace dseek::cli
