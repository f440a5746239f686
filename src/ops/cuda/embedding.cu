// embedding on the GPU (see ops/embedding.h): the forward gathers table rows by id, converting
// from the stored dtype (f32, bf16, f16, fp8 e4m3) to the activation dtype.
// The backward is a scatter-add, dtable[ids[t]] += dy[t], made deterministic without float
// atomics: the (id, t) pairs are radix-sorted by id (CUB's sort is stable, so equal ids keep
// increasing t), and the first position of every run of equal ids adds the run's dy rows into its
// table row in t order — the same additions in the same order as the CPU loop, so f32 results
// match it bit for bit.
#include <algorithm>
#include <climits>
#include <cub/device/device_radix_sort.cuh>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/error.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/element.cuh"

namespace dseek::ops::cuda {

using dseek::cuda::ceil_div;
using dseek::cuda::stream;

namespace {

constexpr int kThreads = 256;

template <typename Act>
__global__ void embedding_kernel(const void* table, DType table_dtype, const int32_t* ids,
                                 int64_t T, int64_t D, Act* out) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const int64_t base = int64_t(ids[t]) * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
      out[t * D + j] = from_f32<Act>(load_weight(table, table_dtype, base + j));
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    v[i] = int32_t(i);
}

// keys: the ids sorted; pos: their token positions. Block x takes the runs that start at its
// sorted positions, block y a chunk of kThreads columns (one column per thread).
template <typename Act>
__global__ void embedding_backward_kernel(const uint32_t* keys, const int32_t* pos, int64_t T,
                                          int64_t D, const Act* dy, float* dtable,
                                          uint8_t* row_flags) {
  const int64_t j = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (j >= D) return;  // no barriers below, so threads may leave early
  for (int64_t k = blockIdx.x; k < T; k += gridDim.x) {
    const uint32_t id = keys[k];
    if (k > 0 && keys[k - 1] == id) continue;  // inside a run: its first position sums it
    if (row_flags && j == 0) row_flags[id] = 1;
    float* cell = dtable + int64_t(id) * D + j;
    float acc = *cell;
    for (int64_t m = k; m < T && keys[m] == id; ++m) acc += to_f32(dy[int64_t(pos[m]) * D + j]);
    *cell = acc;
  }
}

}  // namespace

void embedding(const void* table, DType table_dtype, const int32_t* ids, int64_t T, int64_t D,
               void* out, DType act) {
  if (T <= 0 || D <= 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(T, 1 << 20));
  const int threads = int(std::min<int64_t>(kThreads, ceil_div<int64_t>(D, 32) * 32));
  DSEEK_DISPATCH_ACT(act, Act,
                     embedding_kernel<Act><<<blocks, threads, 0, stream()>>>(
                         table, table_dtype, ids, T, D, static_cast<Act*>(out)));
  DSEEK_CUDA_CHECK_LAUNCH("embedding_kernel");
}

void embedding_backward(const int32_t* ids, int64_t T, int64_t D, const void* dy, DType act,
                        float* dtable, int64_t V, uint8_t* row_flags) {
  if (T <= 0 || D <= 0) return;
  DSEEK_CHECK(T <= INT_MAX && ceil_div<int64_t>(D, kThreads) <= 65535,
              "[embedding] backward of {} tokens × {} columns is beyond the kernel's grid", T, D);
  // Only the bits an id < V can have take part in the sort (ids are non-negative, so their
  // unsigned view orders the same).
  int bits = 1;
  while (bits < 32 && (int64_t(1) << bits) < V) ++bits;
  const size_t n = size_t(T);
  auto* keys = static_cast<uint32_t*>(dseek::cuda::alloc(n * sizeof(uint32_t)));
  auto* pos_in = static_cast<int32_t*>(dseek::cuda::alloc(n * sizeof(int32_t)));
  auto* pos = static_cast<int32_t*>(dseek::cuda::alloc(n * sizeof(int32_t)));
  iota_kernel<<<unsigned(std::min<int64_t>(ceil_div<int64_t>(T, kThreads), 1 << 16)), kThreads, 0,
                stream()>>>(pos_in, T);
  DSEEK_CUDA_CHECK_LAUNCH("iota_kernel");
  const auto* ids_u = reinterpret_cast<const uint32_t*>(ids);
  size_t temp_bytes = 0;
  DSEEK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids_u, keys, pos_in, pos,
                                                   int(T), 0, bits, stream()));
  void* temp = dseek::cuda::alloc(temp_bytes);
  DSEEK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids_u, keys, pos_in, pos,
                                                   int(T), 0, bits, stream()));
  const dim3 grid(unsigned(std::min<int64_t>(T, 1 << 16)),
                  unsigned(ceil_div<int64_t>(D, kThreads)));
  DSEEK_DISPATCH_ACT(act, Act,
                     embedding_backward_kernel<Act><<<grid, kThreads, 0, stream()>>>(
                         keys, pos, T, D, static_cast<const Act*>(dy), dtable, row_flags));
  DSEEK_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
  dseek::cuda::free(temp);
  dseek::cuda::free(pos);
  dseek::cuda::free(pos_in);
  dseek::cuda::free(keys);
}

}  // namespace dseek::ops::cuda
