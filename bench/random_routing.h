// A uniformly random top-k routing for the grouped-GEMM benchmarks (bench_cuda_ops,
// bench_cuda_fp8): each of T tokens picks K distinct experts of E, dispatched on the GPU — about
// T·K/E rows an expert, ragged by chance, as a balanced router gives them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "ops/moe.h"

namespace dseek::bench {

// ids [T, K] i32 on `device`: each token's K distinct experts of E.
inline Tensor random_topk_ids(int64_t T, int64_t E, int64_t K, std::mt19937& rng,
                              Device device = Device::CUDA) {
  std::vector<int32_t> ids;
  std::vector<int32_t> pool(static_cast<size_t>(E));
  for (int32_t e = 0; e < int32_t(E); ++e) pool[size_t(e)] = e;
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);
    ids.insert(ids.end(), pool.begin(), pool.begin() + K);
  }
  return Tensor::from_ids(ids).reshape({T, K}).to(device);
}

inline ops::MoeDispatch random_topk_dispatch(int64_t T, int64_t E, int64_t K, std::mt19937& rng) {
  return ops::moe_dispatch(random_topk_ids(T, E, K, rng), E);
}

}  // namespace dseek::bench
