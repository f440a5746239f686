// The f32 masters the split-master tests (tests/test_optimizer.cpp, on the CPU, and
// tests/backend/test_backend_optim.cpp, its kernels) split and join, and their check that a
// master came back.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace dseek::testing {

// ±0, subnormals, ±inf, NaNs of both signs, the largest finite of both signs, low halves of
// 0x7fff, 0x8000 (a tie) and 0x8001, then `random` bit patterns from `seed`.
inline std::vector<float> split_master_cases(uint32_t seed, int random) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x7f800000u,
                                0xff800000u, 0x7fc00000u, 0xffffffffu, 0x7f800001u, 0x7f7fffffu,
                                0xff7fffffu, 0x3f807fffu, 0x3f808000u, 0x3f818000u, 0xbf808001u};
  std::mt19937 rng(seed);
  for (int i = 0; i < random; ++i) bits.push_back(uint32_t(rng()));
  std::vector<float> values(bits.size());
  std::memcpy(values.data(), bits.data(), bits.size() * 4);
  return values;
}

// back[i] holds values[i]'s bits for every i (a NaN: a NaN of the same sign).
inline void expect_masters_back(const std::vector<float>& values, const float* back) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) {
      EXPECT_TRUE(std::isnan(back[i]) && std::signbit(back[i]) == std::signbit(values[i])) << i;
      continue;
    }
    uint32_t want, got;
    std::memcpy(&want, &values[i], 4);
    std::memcpy(&got, back + i, 4);
    ASSERT_EQ(got, want) << "element " << i;
  }
}

}  // namespace dseek::testing
