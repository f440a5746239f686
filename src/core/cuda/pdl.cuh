// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl may start while the
// kernel before it on the stream is still running, as soon as all of that kernel's blocks have
// called pdl_trigger (or exited). It must call pdl_wait before it reads anything an earlier
// kernel writes or writes anything an earlier kernel reads: pdl_wait returns once the kernels
// before it have completed and their writes are visible. What it may do before: read constant
// data, such as a decode GEMV's weights (prefetched into L2 while the previous kernel finishes).
//
// Both device calls are no-ops where a kernel was launched normally, so kernels call them
// unconditionally; a kernel calls pdl_trigger right after its pdl_wait (never before: the
// dependent would then only wait for this kernel, not for the ones this kernel waits for).
// DSEEK_PDL=0 in the environment launches everything normally (for comparisons).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "core/cuda/cuda_check.h"

namespace dseek::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream()>>>(args...), allowed to start early (see above).
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream();
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  DSEEK_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, Params(std::forward<Args>(args))...));
}

}  // namespace dseek::cuda
