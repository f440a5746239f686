// DSEEK_HOST_DEVICE: a function for host and device code alike (__host__ __device__ under nvcc,
// nothing elsewhere). For the small headers both the CPU twins and the kernels include.
#pragma once

#ifdef __CUDACC__
#define DSEEK_HOST_DEVICE __host__ __device__
#else
#define DSEEK_HOST_DEVICE
#endif
