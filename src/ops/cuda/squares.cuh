// The gradient norm's squares, shared by sum_of_squares_kernel (adamw.cu) and
// flagged_squares_kernel (grad_rows.cu). Device code only (reduce.cuh, which the kernel
// emulators compile on the host, stays free of double intrinsics).
#pragma once

namespace dseek::ops::cuda {

// sum + v.x² + v.y² + v.z² + v.w², in that order, each product and sum rounded in double: a
// thread's share of the gradient norm's squares, four values a load.
__device__ __forceinline__ double add_squares4(double sum, const float4& v) {
  sum = __dadd_rn(sum, __dmul_rn(double(v.x), double(v.x)));
  sum = __dadd_rn(sum, __dmul_rn(double(v.y), double(v.y)));
  sum = __dadd_rn(sum, __dmul_rn(double(v.z), double(v.z)));
  return __dadd_rn(sum, __dmul_rn(double(v.w), double(v.w)));
}

}  // namespace dseek::ops::cuda
