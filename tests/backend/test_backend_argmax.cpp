// ops::argmax_rows on CUDA against the CPU op: f32 and bf16 rows of 1 to 102,400 values (the
// 16-byte path and the element path: lengths and row strides that are not multiples of a chunk),
// one to several rows, the largest value repeated at a later index (the first must win), rows with
// NaN (skipped, flagged), all -inf and all NaN. The outputs are poisoned first.
#include <cmath>
#include <limits>

#include "backend/backend_harness.h"
#include "ops/argmax.h"

namespace dseek::backend_test {
namespace {

std::vector<int32_t> ints(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  return std::vector<int32_t>(h.data<int32_t>(), h.data<int32_t>() + h.numel());
}

TEST(BackendOps, ArgmaxRows) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(61);
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  struct Case {
    int64_t R, V, ld;
  };
  const std::vector<Case> cases = {{1, 1, 1},           {3, 5, 9},        {2, 8, 8},
                                   {4, 1000, 1000},     {2, 1000, 1008},  {2, 1001, 1003},
                                   {1, 102400, 102400}, {3, 32001, 32008}};
  for (DType dtype : kActDtypes)
    for (const Case& c : cases) {
      std::vector<float> v = rand({c.R, c.ld}, rng, 4.0f).to_vector();
      for (int64_t r = 0; r < c.R; ++r) {
        float* row = v.data() + r * c.ld;
        for (int64_t k = c.V; k < c.ld; ++k) row[k] = 1e9f;  // past the row: never read
        if (c.V < 3) continue;
        if (r % 4 == 0) {  // the largest value twice: the first wins
          const int64_t a = (r * 7919 + 3) % c.V, b = (a + c.V / 2 + 1) % c.V;
          row[a] = row[b] = 100.0f;
        } else if (r % 4 == 1) {  // NaN beside the largest
          row[(r * 31) % c.V] = nan;
          row[c.V - 1] = 50.0f;
        } else if (r % 4 == 2) {
          for (int64_t k = 0; k < c.V; ++k) row[k] = -inf;
        } else {
          for (int64_t k = 0; k < c.V; ++k) row[k] = nan;
        }
      }
      const Tensor full = Tensor::from_vector(v, {c.R, c.ld}).to(dtype);
      const Tensor x = full.slice(1, 0, c.V);
      std::vector<int32_t> poison(size_t(c.R), -7);
      Tensor want = Tensor::from_ids(poison), want_nan = Tensor::from_ids(poison);
      ops::argmax_rows(x, want, want_nan);
      Tensor got = Tensor::from_ids(poison).to(Device::CUDA);
      Tensor got_nan = Tensor::from_ids(poison).to(Device::CUDA);
      ops::argmax_rows(full.to(Device::CUDA).slice(1, 0, c.V), got, got_nan);
      const std::string what = std::string(dtype_name(dtype)) + " [" + std::to_string(c.R) + ", " +
                               std::to_string(c.V) + "] ld " + std::to_string(c.ld);
      EXPECT_EQ(ints(got), ints(want)) << what;
      EXPECT_EQ(ints(got_nan), ints(want_nan)) << what;
      std::printf(
          "[backend] argmax_rows %-28s %s\n", what.c_str(),
          ints(got) == ints(want) && ints(got_nan) == ints(want_nan) ? "equal" : "DIFFERENT");
    }
}

}  // namespace
}  // namespace dseek::backend_test
