#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

using namespace dseek;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_FLOAT_EQ(bf16_to_f32(f32_to_bf16(-3.140625f)), -3.140625f);
}

TEST(DType, F16RoundTripsAllFiniteValues) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint16_t bits = uint16_t(h);
    float f = f16_to_f32(bits);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), bits) << std::hex << h;
  }
  EXPECT_EQ(f32_to_f16(70000.0f), 0x7c00);  // overflow -> inf
  EXPECT_FLOAT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
}

TEST(DType, Fp8E4M3KnownValuesAndSaturation) {
  EXPECT_FLOAT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);
  EXPECT_FLOAT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_FLOAT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7f)));
  EXPECT_EQ(f32_to_fp8_e4m3(1000.0f), 0x7e);
  EXPECT_EQ(f32_to_fp8_e4m3(-1000.0f), 0xfe);
  for (int v = 0; v < 256; ++v) {
    float f = fp8_e4m3_to_f32(uint8_t(v));
    if (std::isnan(f)) continue;
    if (f == 0.0f) continue;  // ±0 compare equal; sign kept separately
    EXPECT_EQ(f32_to_fp8_e4m3(f), v) << v;
  }
  // Halfway between 1.0 (0x38) and 1.125 (0x39): ties to even -> 0x38.
  EXPECT_EQ(f32_to_fp8_e4m3(1.0625f), 0x38);
}

TEST(DType, UnknownSafetensorsDtypeIsAnError) {
  EXPECT_THROW(dtype_from_safetensors("F64"), Error);
  EXPECT_EQ(dtype_from_safetensors("BF16"), DType::BF16);
}

TEST(Tensor, ViewsAndCopies) {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.contiguous().to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(t.slice(1, 1, 3).contiguous().to_vector(), (std::vector<float>{1, 2, 4, 5}));
  EXPECT_EQ(t.select(0, 1).to_vector(), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(t.reshape({3, -1}).shape(), (Shape{3, 2}));
  EXPECT_THROW(t.reshape({4, 2}), Error);
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.to_f32().to_vector(), t.to_vector());
  Tensor p = Tensor::poisoned({4});
  for (float v : p.to_vector()) EXPECT_TRUE(std::isnan(v));
}

TEST(Tensor, CopyFromWritesIntoStridedViewsConvertsAndBroadcasts) {
  // Write a [3, 2] f32 source into columns 1..2 of a poisoned [3, 4] bf16 tensor (a strided
  // view), converting; then broadcast a [1, 2] row over 3 rows with expand.
  const Tensor src = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2});
  const Tensor dst = Tensor::poisoned({3, 4}, DType::BF16);
  dst.slice(1, 1, 3).copy_from(src);
  const std::vector<float> v = dst.to_vector();
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(std::isnan(v[size_t(r * 4)]));
    EXPECT_EQ(v[size_t(r * 4 + 1)], float(2 * r + 1));
    EXPECT_EQ(v[size_t(r * 4 + 2)], float(2 * r + 2));
    EXPECT_TRUE(std::isnan(v[size_t(r * 4 + 3)]));
  }
  const Tensor row = Tensor::from_vector({7, 8}, {1, 2});
  const Tensor out = Tensor::poisoned({3, 2});
  out.copy_from(row.expand(0, 3));
  EXPECT_EQ(out.to_vector(), (std::vector<float>{7, 8, 7, 8, 7, 8}));
  // Transposed source, same dtype (the memcpy path).
  const Tensor t = Tensor::poisoned({2, 3});
  t.copy_from(src.transpose(0, 1));
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1, 3, 5, 2, 4, 6}));
  EXPECT_THROW(t.copy_from(src), Error);                           // shape
  EXPECT_THROW(Tensor::zeros({2}, DType::I32).copy_from(Tensor::from_vector({1, 2}, {2})), Error);
  EXPECT_THROW(src.expand(0, 4), Error);                           // only size-1 dimensions
}
