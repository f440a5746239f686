// Decode-speed kernel lab for ops::linear: GEMV (T = 1..4) over bf16/f16/f32 weights vs the
// memory-bandwidth bound (a plain streaming read of the same bytes), and the sgemm prefill path.
//   bench_linear [out] [in] [reps]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "core/tensor.h"
#include "ops/linear.h"

using namespace dseek;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Bytes/s of summing a buffer (each thread its slice): the practical read bandwidth bound.
double read_bandwidth(const Tensor& w, int reps) {
  const int64_t n = int64_t(w.nbytes() / 8);
  const uint64_t* p = static_cast<const uint64_t*>(w.raw());
  uint64_t sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
#pragma omp parallel for reduction(+ : sink) schedule(static)
    for (int64_t i = 0; i < n; ++i) sink += p[i];
  }
  const double s = seconds_since(t0);
  if (sink == 42) std::printf(" ");
  return double(w.nbytes()) * reps / s;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t out = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t in = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 20;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> wv(size_t(out * in));
  for (auto& v : wv) v = dist(rng);
  const Tensor w32 = Tensor::from_vector(wv, {out, in});
  std::printf("linear [%lld x %lld], %d threads\n", (long long)out, (long long)in,
              omp_get_max_threads());
  for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
    const Tensor w = dt == DType::F32 ? w32 : w32.to(dt);
    const double bw = read_bandwidth(w, reps);
    for (int64_t T : {1, 4, 64}) {
      std::vector<float> xv(size_t(T * in));
      for (auto& v : xv) v = dist(rng);
      const Tensor x = Tensor::from_vector(xv, {T, in});
      ops::linear(x, w);  // warm-up
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) ops::linear(x, w);
      const double s = seconds_since(t0) / reps;
      std::printf(
          "  %-4s T=%-3lld %8.3f ms  %6.1f GB/s of weights (read bound %5.1f GB/s)  %6.1f "
          "GFLOP/s\n",
          std::string(dtype_name(dt)).c_str(), (long long)T, s * 1e3, double(w.nbytes()) / s / 1e9,
          bw / 1e9, 2.0 * double(T * out * in) / s / 1e9);
    }
  }
  return 0;
}
