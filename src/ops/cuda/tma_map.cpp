// Tensor maps through the driver's cuTensorMapEncodeTiled (tma_map.h).
#include "ops/cuda/tma_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "core/cuda/cuda_check.h"
#include "core/error.h"

namespace dseek::ops::cuda {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    DSEEK_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                      cudaEnableDefault, &found));
    DSEEK_CHECK(found == cudaDriverEntryPointSuccess && p,
                "[tma] the driver has no cuTensorMapEncodeTiled (a driver older than CUDA 12)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

}  // namespace

bool tma_codes_map_takes(const void* base, int64_t rows, int64_t cols, int64_t row_stride) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && row_stride % 16 == 0 &&
         row_stride >= cols && row_stride < (int64_t(1) << 40) && rows > 0 && cols > 0 &&
         rows < (int64_t(1) << 31) && cols < (int64_t(1) << 31);
}

namespace {

// A map of [rows, cols] elements of `element_bytes` bytes, row_stride bytes apart, in boxes of
// box_rows rows × one 128-byte line.
CUtensorMap encode_2d(CUtensorMapDataType type, int element_bytes, const void* base, int64_t rows,
                      int64_t cols, int64_t row_stride, int box_rows, const char* what) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(row_stride)};  // bytes, of dimension 1
  const cuuint32_t box[2] = {cuuint32_t(128 / element_bytes), cuuint32_t(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult status =
      encode_tiled()(&map, type, 2, const_cast<void*>(base), dims, strides, box, element_strides,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DSEEK_CHECK(status == CUDA_SUCCESS, "[tma] {}: cuTensorMapEncodeTiled failed (CUresult {})", what,
              int(status));
  return map;
}

}  // namespace

CUtensorMap tma_codes_map(const void* base, int64_t rows, int64_t cols, int64_t row_stride,
                          int box_rows, const char* what) {
  DSEEK_CHECK(tma_codes_map_takes(base, rows, cols, row_stride) && box_rows > 0 && box_rows <= 256,
              "[tma] {}: [{}, {}] codes {} bytes apart (base {}) in boxes of {} rows: not a "
              "tensor-map shape",
              what, rows, cols, row_stride, base, box_rows);
  return encode_2d(CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, base, rows, cols, row_stride, box_rows, what);
}

bool tma_bf16_map_takes(const void* base, int64_t rows, int64_t cols, int64_t ld) {
  return ld < (int64_t(1) << 38) && tma_codes_map_takes(base, rows, 2 * cols, 2 * ld);
}

CUtensorMap tma_bf16_map(const void* base, int64_t rows, int64_t cols, int64_t ld, int box_rows,
                         const char* what) {
  DSEEK_CHECK(tma_bf16_map_takes(base, rows, cols, ld) && box_rows > 0 && box_rows <= 256,
              "[tma] {}: [{}, {}] bf16 {} apart (base {}) in boxes of {} rows: not a "
              "tensor-map shape",
              what, rows, cols, ld, base, box_rows);
  return encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, rows, cols, 2 * ld, box_rows, what);
}

}  // namespace dseek::ops::cuda
