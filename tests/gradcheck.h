// Gradient-check harness: compares analytic backward passes with central finite differences.
//
// For an op y = f(inputs) and a fixed random r of y's shape, the scalar L = Σ r ⊙ y has
// ∂L/∂input = backward(dy = r). check_gradients perturbs single elements of each input by ±eps
// (in place; the forward closure reads the same storage), evaluates L in double from the f32
// forward, and compares (L₊ − L₋)/(x₊ − x₋) with the analytic gradient. The error of one element is
//   |analytic − numeric| / max(|analytic|, |numeric|, floor_frac · max_i |analytic_i|, 1e-6)
// (relative, with a floor so gradients that are nearly zero compare on the tensor's scale, where
// f32 rounding of the forward dominates); the report keeps the worst element of all inputs.
// Large inputs are sampled: at most `max_elems` elements each, chosen at random without repeats.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dseek::testing {

struct GradInput {
  std::string name;
  Tensor value;     // f32 contiguous, read by the forward closure (perturbed and restored here)
  Tensor analytic;  // the backward's gradient for this input, same shape
};

struct GradReport {
  double worst = 0;   // worst error over all checked elements (see above); inf on NaN
  std::string where;  // "input[index]: analytic a, numeric n" of the worst element
  int64_t checked = 0;
};

// Random f32 values with |v| in [lo, hi] and random sign: never zero, so no gradient term can
// vanish by accident.
inline Tensor nonzero_tensor(const Shape& shape, std::mt19937& rng, float hi = 1.0f,
                             float lo = 0.1f) {
  std::uniform_real_distribution<float> mag(lo, hi);
  std::bernoulli_distribution neg(0.5);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = neg(rng) ? -mag(rng) : mag(rng);
  return Tensor::from_vector(v, shape);
}

// Σ r ⊙ y in double.
inline double weighted_sum(const Tensor& y, const Tensor& r) {
  const std::vector<float> yv = y.to_vector(), rv = r.to_vector();
  if (yv.size() != rv.size()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (size_t i = 0; i < yv.size(); ++i) s += double(yv[i]) * double(rv[i]);
  return s;
}

inline GradReport check_gradients(const std::function<Tensor()>& forward, const Tensor& r,
                                  const std::vector<GradInput>& inputs, float eps = 1e-2f,
                                  int64_t max_elems = 48, double floor_frac = 0.05,
                                  uint32_t seed = 7) {
  GradReport rep;
  std::mt19937 rng(seed);
  for (const GradInput& in : inputs) {
    if (!in.value.is_contiguous() || in.value.dtype() != DType::F32 ||
        in.analytic.shape() != in.value.shape()) {
      rep.worst = std::numeric_limits<double>::infinity();
      rep.where = in.name + ": input not f32 contiguous or gradient of the wrong shape";
      return rep;
    }
    const std::vector<float> an = in.analytic.to_vector();
    double scale = 0;
    for (float a : an) scale = std::max(scale, double(std::abs(a)));
    std::vector<int64_t> idx(an.size());
    std::iota(idx.begin(), idx.end(), 0);
    if (int64_t(idx.size()) > max_elems) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(size_t(max_elems));
    }
    float* x = in.value.data<float>();
    for (int64_t i : idx) {
      const float orig = x[i];
      const float xp = orig + eps, xm = orig - eps;
      x[i] = xp;
      const double lp = weighted_sum(forward(), r);
      x[i] = xm;
      const double lm = weighted_sum(forward(), r);
      x[i] = orig;
      const double numeric = (lp - lm) / (double(xp) - double(xm));
      const double a = an[size_t(i)];
      const double denom = std::max({std::abs(a), std::abs(numeric), floor_frac * scale, 1e-6});
      double err = std::abs(a - numeric) / denom;
      if (std::isnan(err)) err = std::numeric_limits<double>::infinity();
      ++rep.checked;
      if (err > rep.worst || (std::isinf(err) && rep.where.empty())) {
        rep.worst = err;
        rep.where = in.name + "[" + std::to_string(i) + "]: analytic " + std::to_string(a) +
                    ", numeric " + std::to_string(numeric);
      }
    }
  }
  return rep;
}

// True when any element is NaN or infinite (an unwritten poisoned gradient, an overflow).
inline bool has_non_finite(const Tensor& t) {
  for (float v : t.to_vector())
    if (!std::isfinite(v)) return true;
  return false;
}

}  // namespace dseek::testing
