// For code compiled with the CUDA toolkit's headers (src/*/cuda/): the dseek stream and error
// checks that turn a failed runtime call into a dseek::Error naming the call.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

namespace dseek::cuda {

// The stream every dseek kernel, copy and allocation is ordered on (created on first use).
cudaStream_t stream();

[[noreturn]] void raise_error(cudaError_t status, const char* call, const char* file, int line);

// An attribute of the device dseek runs on (cudaDeviceGetAttribute on the current device): the
// multiprocessor count for persistent grids, the opt-in shared memory per block, ... Callers that
// ask often keep the value (it does not change while the process runs).
int device_attribute(cudaDeviceAttr attr);

// The device's streaming multiprocessors (the persistent kernels' grids).
inline int multiprocessors() {
  static const int n = device_attribute(cudaDevAttrMultiProcessorCount);
  return n;
}

// Whether launch_pdl (core/cuda/pdl.cuh) lets kernels start early: a Hopper or later GPU and
// DSEEK_PDL not 0 in the environment; the switch is for comparisons.
bool pdl_enabled();
void set_pdl_enabled(bool on);

// Ceil-divide for grid sizes.
template <typename T>
constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

}  // namespace dseek::cuda

// DSEEK_CUDA_CHECK(cudaMemcpyAsync(...)): a failure throws dseek::Error("[cuda] call: reason").
#define DSEEK_CUDA_CHECK(call)                                                  \
  do {                                                                          \
    cudaError_t dseek_status_ = (call);                                         \
    if (dseek_status_ != cudaSuccess)                                           \
      ::dseek::cuda::raise_error(dseek_status_, #call, __FILE__, __LINE__);     \
  } while (0)

// After a kernel launch: catches bad launch configurations at once (execution errors surface at
// the next synchronising call).
#define DSEEK_CUDA_CHECK_LAUNCH(name)                                           \
  do {                                                                          \
    cudaError_t dseek_status_ = cudaGetLastError();                             \
    if (dseek_status_ != cudaSuccess)                                           \
      ::dseek::cuda::raise_error(dseek_status_, name, __FILE__, __LINE__);      \
  } while (0)
