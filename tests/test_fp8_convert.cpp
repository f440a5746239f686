// E4M3 (OCP float8_e4m3fn) conversion, exhaustively: every one of the 256 codes decodes to the value
// its fields give, every finite value encodes back to its code, and every rounding tie between two
// neighbouring codes goes to the even one (values a hair off a tie go to the nearer one).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "core/dtype.h"

namespace dseek {
namespace {

// The value of a code from its definition: s eeee mmm, bias 7, subnormals at e = 0, e = 15 with
// m = 7 is NaN, no infinities. Computed in double, independently of fp8_e4m3_to_f32.
double e4m3_value(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  const double mag = e == 0 ? std::ldexp(double(m), -9) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

TEST(Fp8E4M3, DecodesAll256Codes) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float f = fp8_e4m3_to_f32(uint8_t(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f)) << c;
      ++nans;
      continue;
    }
    EXPECT_EQ(double(f), e4m3_value(c)) << "code " << c;
    EXPECT_EQ(std::signbit(f), c >= 128) << "code " << c;  // -0 keeps its sign
  }
  EXPECT_EQ(nans, 2);
  EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
}

TEST(Fp8E4M3, EncodesEveryFiniteCodeBackToItself) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    EXPECT_EQ(int(f32_to_fp8_e4m3(fp8_e4m3_to_f32(uint8_t(c)))), c) << "code " << c;
  }
}

TEST(Fp8E4M3, TiesGoToEvenAndNeighboursToTheNearer) {
  for (int sign : {0, 0x80}) {
    for (int c = 0; c < 0x7e; ++c) {  // neighbours c, c+1 among the positive finite codes
      const double lo = e4m3_value(c), hi = e4m3_value(c + 1);
      const float mid = float((lo + hi) / 2);  // exact in f32: 5 significant bits at most
      ASSERT_EQ(double(mid), (lo + hi) / 2);
      const int even = (c % 2 == 0) ? c : c + 1;
      const float s = sign ? -1.0f : 1.0f;
      EXPECT_EQ(int(f32_to_fp8_e4m3(s * mid)), sign | even) << "tie between codes " << c << ", "
                                                           << c + 1;
      const float below = std::nextafter(mid, 0.0f), above = std::nextafter(mid, 1000.0f);
      EXPECT_EQ(int(f32_to_fp8_e4m3(s * below)), sign | c) << "just below the tie after " << c;
      EXPECT_EQ(int(f32_to_fp8_e4m3(s * above)), sign | (c + 1)) << "just above the tie after " << c;
    }
  }
}

TEST(Fp8E4M3, SaturatesBeyond448AndKeepsNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {448.0f, 449.0f, 464.0f, 480.0f, 1e6f, 3e38f, inf}) {
    EXPECT_EQ(f32_to_fp8_e4m3(v), 0x7e) << v;
    EXPECT_EQ(f32_to_fp8_e4m3(-v), 0xfe) << v;
  }
  EXPECT_EQ(f32_to_fp8_e4m3(std::nanf("")) & 0x7f, 0x7f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(f32_to_fp8_e4m3(-std::nanf("")))));
  // Under half the smallest subnormal (2^-10) flushes to zero, keeping the sign; the tie at 2^-10
  // goes to the even code 0.
  EXPECT_EQ(f32_to_fp8_e4m3(std::ldexp(1.0f, -11)), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3(-std::ldexp(1.0f, -11)), 0x80);
  EXPECT_EQ(f32_to_fp8_e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(f32_to_fp8_e4m3(1e-30f), 0x00);
}

}  // namespace
}  // namespace dseek
