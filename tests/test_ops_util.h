// Helpers shared by the op and model tests: random tensors and error measures.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/tensor.h"

namespace dseek::testing {

// Uniform in [-scale, scale], rounded to `dtype`.
inline Tensor random_tensor(const Shape& shape, DType dtype, std::mt19937& rng,
                            float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  Tensor t = Tensor::from_vector(v, shape);
  return dtype == DType::F32 ? t : t.to(dtype);
}

// Max |a - b|; NaN anywhere (e.g. a poisoned output left unwritten) gives +inf.
inline double max_abs_diff(const Tensor& a, const std::vector<double>& b) {
  const std::vector<float> av = a.to_vector();
  if (av.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < av.size(); ++i) {
    const double d = std::abs(double(av[i]) - b[i]);
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> bv = b.to_vector();
  return max_abs_diff(a, std::vector<double>(bv.begin(), bv.end()));
}

// The same over host values (logits read from files); empty counts as missing (+inf), so a run
// that wrote nothing cannot pass.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

}  // namespace dseek::testing
