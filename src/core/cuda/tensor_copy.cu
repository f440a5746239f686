// Device-side copies behind Tensor on CUDA: dtype conversion and strided gathers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"

namespace dseek::cuda {

namespace {

__device__ float load_as_f32(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ void store_from_f32(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case DType::F16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

__global__ void convert_kernel(const void* src, DType from, void* dst, DType to, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    store_from_f32(dst, to, i, load_as_f32(src, from, i));
}

struct StridedLayout {
  int64_t shape[8];
  int64_t strides[8];
  int dims;
};

template <typename Word>
__global__ void strided_copy_kernel(const Word* src, Word* dst, StridedLayout layout, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    size_t rest = i;
    int64_t offset = 0;
    for (int d = layout.dims - 1; d >= 0; --d) {
      offset += int64_t(rest % size_t(layout.shape[d])) * layout.strides[d];
      rest /= size_t(layout.shape[d]);
    }
    dst[i] = src[offset];
  }
}

struct TwoLayouts {
  int64_t shape[8];
  int64_t src_strides[8];
  int64_t dst_strides[8];
  int dims;
};

__device__ void offsets_of(const TwoLayouts& l, size_t i, int64_t& src, int64_t& dst) {
  src = 0;
  dst = 0;
  for (int d = l.dims - 1; d >= 0; --d) {
    const int64_t c = int64_t(i % size_t(l.shape[d]));
    i /= size_t(l.shape[d]);
    src += c * l.src_strides[d];
    dst += c * l.dst_strides[d];
  }
}

__global__ void strided_convert_kernel(const void* src, DType from, void* dst, DType to,
                                       TwoLayouts layout, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    int64_t s, d;
    offsets_of(layout, i, s, d);
    store_from_f32(dst, to, size_t(d), load_as_f32(src, from, size_t(s)));
  }
}

template <typename Word>
__global__ void strided_word_kernel(const Word* src, Word* dst, TwoLayouts layout, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    int64_t s, d;
    offsets_of(layout, i, s, d);
    dst[d] = src[s];
  }
}

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

unsigned grid_for(size_t n) { return unsigned(std::min<size_t>(ceil_div<size_t>(n, 256), 65535 * 8)); }

// Same-dtype copies whose innermost dimension is contiguous on both sides (a head's slice of a
// [T, H, d] tensor, a column block of a matrix, a broadcast row) move whole rows in the widest
// word (up to 16 bytes) that the row length, both base addresses and every outer stride allow:
// the element-wise kernels above spend their time on a division chain per element instead.
struct RowLayout {
  int64_t shape[8];  // outer dimensions (the rows), innermost last
  int64_t src_strides[8];
  int64_t dst_strides[8];  // in words
  int dims;
  int64_t words;  // words a row
};

template <typename Word>
__global__ void copy_rows_kernel(const Word* src, Word* dst, RowLayout l, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    size_t row = i / size_t(l.words);
    const int64_t w = int64_t(i - row * size_t(l.words));
    int64_t s = w, d = w;
    for (int k = l.dims - 1; k >= 0; --k) {
      const int64_t c = int64_t(row % size_t(l.shape[k]));
      row /= size_t(l.shape[k]);
      s += c * l.src_strides[k];
      d += c * l.dst_strides[k];
    }
    dst[d] = src[s];
  }
}

// The row copy for shape/strides (in elements of `esize` bytes), or false where the innermost
// dimension is not contiguous on both sides.
bool copy_rows(const void* src, const int64_t* src_strides, void* dst, const int64_t* dst_strides,
               const int64_t* shape, int dims, size_t esize) {
  // Collapse: drop size-1 dimensions, merge neighbours that are contiguous on both sides.
  int64_t sh[8], ss[8], ds[8];
  int n = 0;
  for (int d = 0; d < dims; ++d) {
    if (shape[d] == 1) continue;
    if (n > 0 && ss[n - 1] == src_strides[d] * shape[d] && ds[n - 1] == dst_strides[d] * shape[d]) {
      sh[n - 1] *= shape[d];
      ss[n - 1] = src_strides[d];
      ds[n - 1] = dst_strides[d];
      continue;
    }
    sh[n] = shape[d];
    ss[n] = src_strides[d];
    ds[n] = dst_strides[d];
    ++n;
  }
  if (n == 0 || ss[n - 1] != 1 || ds[n - 1] != 1) return false;
  const size_t row_bytes = size_t(sh[n - 1]) * esize;
  size_t word = 16;
  auto fits = [&](size_t w) {
    if (row_bytes % w || reinterpret_cast<uintptr_t>(src) % w ||
        reinterpret_cast<uintptr_t>(dst) % w)
      return false;
    for (int k = 0; k + 1 < n; ++k)
      if ((size_t(ss[k]) * esize) % w || (size_t(ds[k]) * esize) % w) return false;
    return true;
  };
  while (word > 1 && !fits(word)) word /= 2;
  RowLayout l{};
  l.dims = n - 1;
  l.words = int64_t(row_bytes / word);
  size_t rows = 1;
  for (int k = 0; k + 1 < n; ++k) {
    l.shape[k] = sh[k];
    l.src_strides[k] = int64_t(size_t(ss[k]) * esize / word);
    l.dst_strides[k] = int64_t(size_t(ds[k]) * esize / word);
    rows *= size_t(sh[k]);
  }
  const size_t total = rows * size_t(l.words);
  if (total == 0) return true;
  switch (word) {
    case 16:
      copy_rows_kernel<<<grid_for(total), 256, 0, stream()>>>(static_cast<const uint4*>(src),
                                                              static_cast<uint4*>(dst), l, total);
      break;
    case 8:
      copy_rows_kernel<<<grid_for(total), 256, 0, stream()>>>(static_cast<const uint2*>(src),
                                                              static_cast<uint2*>(dst), l, total);
      break;
    case 4:
      copy_rows_kernel<<<grid_for(total), 256, 0, stream()>>>(
          static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), l, total);
      break;
    case 2:
      copy_rows_kernel<<<grid_for(total), 256, 0, stream()>>>(
          static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), l, total);
      break;
    default:
      copy_rows_kernel<<<grid_for(total), 256, 0, stream()>>>(static_cast<const uint8_t*>(src),
                                                              static_cast<uint8_t*>(dst), l, total);
      break;
  }
  DSEEK_CUDA_CHECK_LAUNCH("copy_rows_kernel");
  return true;
}

}  // namespace

void convert(const void* src, DType from, void* dst, DType to, size_t n) {
  DSEEK_CHECK(is_float(from) && is_float(to), "[cuda] convert {} -> {}: only f32, bf16 and f16",
              dtype_name(from), dtype_name(to));
  if (n == 0) return;
  convert_kernel<<<grid_for(n), 256, 0, stream()>>>(src, from, dst, to, n);
  DSEEK_CUDA_CHECK_LAUNCH("convert_kernel");
}

void strided_copy(const void* src, void* dst, size_t element_bytes, const int64_t* shape,
                  const int64_t* strides, int dims) {
  DSEEK_CHECK(dims >= 0 && dims <= 8, "[cuda] strided copy of {} dimensions (at most 8)", dims);
  StridedLayout layout{};
  size_t n = 1;
  for (int d = 0; d < dims; ++d) {
    layout.shape[d] = shape[d];
    layout.strides[d] = strides[d];
    n *= size_t(shape[d]);
  }
  layout.dims = dims;
  if (n == 0) return;
  int64_t dst_strides[8];  // the output is contiguous
  int64_t stride = 1;
  for (int d = dims - 1; d >= 0; --d) {
    dst_strides[d] = stride;
    stride *= shape[d];
  }
  if (copy_rows(src, strides, dst, dst_strides, shape, dims, element_bytes)) return;
  switch (element_bytes) {
    case 1: strided_copy_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), layout, n); break;
    case 2: strided_copy_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), layout, n); break;
    case 4: strided_copy_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), layout, n); break;
    case 8: strided_copy_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), layout, n); break;
    default: fail("[cuda] strided copy of {}-byte elements", element_bytes);
  }
  DSEEK_CUDA_CHECK_LAUNCH("strided_copy_kernel");
}

void strided_convert(const void* src, DType from, const int64_t* src_strides, void* dst, DType to,
                     const int64_t* dst_strides, const int64_t* shape, int dims) {
  DSEEK_CHECK(dims >= 0 && dims <= 8, "[cuda] strided copy of {} dimensions (at most 8)", dims);
  TwoLayouts layout{};
  size_t n = 1;
  for (int d = 0; d < dims; ++d) {
    layout.shape[d] = shape[d];
    layout.src_strides[d] = src_strides[d];
    layout.dst_strides[d] = dst_strides[d];
    n *= size_t(shape[d]);
  }
  layout.dims = dims;
  if (n == 0) return;
  if (from == to && copy_rows(src, src_strides, dst, dst_strides, shape, dims, dtype_size(from)))
    return;
  if (from != to || is_float(from)) {
    DSEEK_CHECK(is_float(from) && is_float(to), "[cuda] copy {} -> {}: only f32, bf16 and f16 convert",
                dtype_name(from), dtype_name(to));
    strided_convert_kernel<<<grid_for(n), 256, 0, stream()>>>(src, from, dst, to, layout, n);
    DSEEK_CUDA_CHECK_LAUNCH("strided_convert_kernel");
    return;
  }
  switch (dtype_size(from)) {
    case 1: strided_word_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), layout, n); break;
    case 4: strided_word_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), layout, n); break;
    case 8: strided_word_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), layout, n); break;
    default: fail("[cuda] strided copy of {}", dtype_name(from));
  }
  DSEEK_CUDA_CHECK_LAUNCH("strided_word_kernel");
}

}  // namespace dseek::cuda
