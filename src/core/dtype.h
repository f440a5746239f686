// Element types and their conversions. Storage types: f32, bf16, f16, fp8 e4m3 (the OCP
// "float8_e4m3fn": no infinities, one NaN pattern per sign, max 448), plus integer ids.
// Compute on the CPU is f32; narrower types are converted on the fly.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace dseek {

enum class DType : uint8_t { F32, BF16, F16, F8_E4M3, I32, I64, U8 };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // "f32", "bf16", ...
// Parses a safetensors dtype string ("F32", "BF16", "F16", "F8_E4M3", "I32", "I64", "U8").
// Throws dseek::Error for anything else.
DType dtype_from_safetensors(std::string_view name);
std::string_view dtype_to_safetensors(DType dtype);

inline float bits_to_f32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

// bf16 is the top half of an f32.
inline float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }
// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits = f32_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x0040u);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even, overflow to inf

float fp8_e4m3_to_f32(uint8_t v);
// Round to nearest even; values beyond ±448 saturate to ±448 (as torch's cast with
// saturation does for scaled FP8 GEMM inputs); NaN maps to NaN (0x7f).
uint8_t f32_to_fp8_e4m3(float f);

// Bulk conversion of n elements of `src_dtype` into f32.
void convert_to_f32(const void* src, DType src_dtype, float* dst, size_t n);
// Bulk conversion of n f32 values into `dst_dtype`.
void convert_from_f32(const float* src, void* dst, DType dst_dtype, size_t n);

}  // namespace dseek
