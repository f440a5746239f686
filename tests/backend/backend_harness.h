// The backend conformance harness, in the spirit of ggml's test-backend-ops: every CUDA op runs
// on fresh random inputs over several shapes and is compared with the same op on the CPU.
//
//   TEST(BackendOps, RmsNorm) {
//     DSEEK_REQUIRE_CUDA();
//     for (DType act : kActDtypes) for (auto [rows, D] : shapes) {
//       Tensor x = rand({rows, D});                       // f32 on the CPU, rounded to act
//       Tensor want = ops::rms_norm(rounded(x, act), w, 1e-6);        // the CPU reference
//       Tensor got = ops::rms_norm(on_gpu(x, act), on_gpu(w), 1e-6);  // the CUDA op
//       expect_close("rms_norm", shape, act, want, got);
//     }
//   }
//
// The CPU reference is fed the same act-rounded inputs, so the comparison measures only the
// kernel's own rounding (outputs written in bf16, f32 accumulation in another order). Every
// comparison prints one line (op, shape, dtype, max abs and relative error, tolerance) so a run
// on the GPU machine leaves a table. Without a CUDA device the tests are skipped with the reason;
// CI (no GPU) still compiles them.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"
#include "core/tensor.h"

namespace dseek::backend_test {

#define DSEEK_REQUIRE_CUDA()                                                       \
  do {                                                                             \
    if (!::dseek::cuda::available())                                               \
      GTEST_SKIP() << "no CUDA device here: " << ::dseek::cuda::describe();       \
  } while (0)

inline const std::vector<DType> kActDtypes = {DType::F32, DType::BF16};

// A process-wide switch (its getter and setter, e.g. ops::moe_combine_norm_fused) set for a
// scope and restored after it, also when an assertion leaves the test early.
class ScopedSwitch {
 public:
  ScopedSwitch(bool (*get)(), void (*set)(bool), bool on) : set_(set), was_(get()) { set(on); }
  ~ScopedSwitch() { set_(was_); }
  ScopedSwitch(const ScopedSwitch&) = delete;
  ScopedSwitch& operator=(const ScopedSwitch&) = delete;

 private:
  void (*set_)(bool);
  bool was_;
};

// Uniform in [-scale, scale], f32 on the CPU, from a generator seeded per test.
inline Tensor rand(const Shape& shape, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  return Tensor::from_vector(v, shape);
}

// x rounded to dtype and back to f32, on the CPU: what the CPU reference sees.
inline Tensor rounded(const Tensor& x, DType dtype) {
  return dtype == DType::F32 ? x.clone() : x.to(dtype).to(DType::F32);
}

// x in dtype on the GPU.
inline Tensor on_gpu(const Tensor& x, DType dtype = DType::F32) {
  return (dtype == x.dtype() ? x : x.to(dtype)).to(Device::CUDA);
}

// Default tolerances: f32 kernels differ from the CPU only in summation order; bf16 outputs carry
// one rounding (2^-8 relative) on top of that.
struct Tolerance {
  double abs, rel;
};
inline Tolerance default_tolerance(DType act) {
  return act == DType::BF16 ? Tolerance{2e-2, 1.6e-2} : Tolerance{1e-4, 1e-4};
}

inline std::string describe_shape(const Shape& shape) { return shape_str(shape); }

// Compares got (any device, any float dtype) with want (CPU): |got − want| ≤ abs + rel·|want|
// everywhere; NaN or a size mismatch fails. Prints one line for the table.
inline void expect_close(const std::string& op, const Shape& shape, DType act, const Tensor& want,
                         const Tensor& got, Tolerance tol) {
  ASSERT_EQ(got.shape(), want.shape()) << op << " " << describe_shape(shape);
  const std::vector<float> w = want.to_vector(), g = got.to_vector();
  double max_abs = 0, max_rel = 0;
  size_t worst = 0, bad = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = std::abs(double(g[i]) - double(w[i]));
    const bool ok = std::isfinite(g[i]) && d <= tol.abs + tol.rel * std::abs(double(w[i]));
    if (!ok) ++bad;
    if (!std::isfinite(g[i]) || d > max_abs) {
      max_abs = std::isfinite(g[i]) ? d : INFINITY;
      worst = i;
    }
    if (std::abs(w[i]) > 1e-3) max_rel = std::max(max_rel, d / std::abs(double(w[i])));
  }
  std::printf("[backend] %-28s %-22s %-4s max_abs %.2e max_rel %.2e (tol %.0e + %.0e·|x|) %s\n",
              op.c_str(), describe_shape(shape).c_str(), std::string(dtype_name(act)).c_str(),
              max_abs, max_rel, tol.abs, tol.rel, bad ? "FAIL" : "ok");
  EXPECT_EQ(bad, 0u) << op << " " << describe_shape(shape) << " " << dtype_name(act) << ": " << bad
                     << " of " << w.size() << " elements out of tolerance; worst at " << worst
                     << ": got " << (w.empty() ? 0.f : g[worst]) << ", want "
                     << (w.empty() ? 0.f : w[worst]);
}

inline void expect_close(const std::string& op, const Shape& shape, DType act, const Tensor& want,
                         const Tensor& got) {
  expect_close(op, shape, act, want, got, default_tolerance(act));
}

// A double on the device holding NaN (all-ones bytes), for an op that writes one
// (ops::grouped_linear_backward_dw's squares); double_of reads it back.
inline Tensor nan_double_on_gpu() {
  Tensor t = Tensor::empty({1}, DType::I64, Device::CUDA);
  dseek::cuda::fill_bytes(t.raw(), 0xff, sizeof(double));
  return t;
}
inline double double_of(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  double d = 0.0;
  std::memcpy(&d, h.raw(), sizeof(double));
  return d;
}
// Σ v² in double over every element of the tensors (f32).
inline double squares_of(const std::vector<Tensor>& ts) {
  double sum = 0.0;
  for (const Tensor& t : ts)
    for (float v : t.to_vector()) sum += double(v) * double(v);
  return sum;
}
// |got − want| ≤ rel · |want|, with the values in the message.
inline void expect_relative(const std::string& what, double got, double want, double rel) {
  const bool ok = std::isfinite(got) && std::abs(got - want) <= rel * std::abs(want);
  std::printf("[backend] %-44s %.17g vs %.17g (rel %.2e) %s\n", what.c_str(), got, want,
              want != 0.0 ? std::abs(got - want) / std::abs(want) : std::abs(got),
              ok ? "ok" : "FAIL");
  EXPECT_TRUE(ok) << what << ": " << got << " vs " << want << " (relative bound " << rel << ")";
}

}  // namespace dseek::backend_test
