// Tensor maps for Hopper's tensor memory accelerator (tma.cuh): the descriptor of a 2-D array of
// bytes (FP8 codes) or bf16 values in global memory and of the box one copy moves into shared
// memory, made on the host through the driver's cuTensorMapEncodeTiled (found at run time: no
// link to libcuda).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace dseek::ops::cuda {

// Whether tma_codes_map takes the array: a 16-byte aligned base, a row stride (bytes) that is a
// multiple of 16 and below 2^40, and extents the coordinates (int32) can reach.
bool tma_codes_map_takes(const void* base, int64_t rows, int64_t cols, int64_t row_stride);

// The map of codes [rows, cols] (row_stride bytes apart) read in boxes of box_rows rows × 128
// codes into the 128-byte swizzled layout (wgmma.cuh); reads past the ends fill zeros. Throws
// naming `what` when the driver refuses.
CUtensorMap tma_codes_map(const void* base, int64_t rows, int64_t cols, int64_t row_stride,
                          int box_rows, const char* what);

// The same for bf16 values [rows, cols] (`ld` values apart) read in boxes of box_rows rows × 64
// values (one 128-byte swizzled line a row).
bool tma_bf16_map_takes(const void* base, int64_t rows, int64_t cols, int64_t ld);
CUtensorMap tma_bf16_map(const void* base, int64_t rows, int64_t cols, int64_t ld, int box_rows,
                         const char* what);

}  // namespace dseek::ops::cuda
