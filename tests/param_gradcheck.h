// Central differences of a model-level loss against the gradients a training backward left in a
// ParamSet (the model tests' twin of gradcheck.h's op-level check_gradients): `samples` random
// elements of every trainable parameter are moved by ±eps in place, the loss evaluated at each
// and the element restored. The error of one element is
//   |analytic − numeric| / max(|analytic|, |numeric|, 0.02 · max_i |grad_i|, floor)
// and the report keeps the worst. A loss that is only piecewise smooth (a MoE's expert choice)
// returns with its value a signature of the piece it is on (the routing's expert loads): an
// element whose +eps or −eps evaluation lands on another piece than the unmoved one is skipped.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "train/param.h"

namespace dseek::testing {

struct LossPoint {
  double value = 0;
  std::vector<std::vector<int64_t>> piece;  // equal pieces: the same smooth branch
};

struct ParamGradReport {
  double worst = 0;
  std::string where;  // "name[index] analytic a numeric n" of the worst element
  int64_t checked = 0, skipped = 0;
};

// numeric = scale · (L(+eps) − L(−eps)) / 2eps: the gradients are of scale · L.
inline ParamGradReport check_param_gradients(train::ParamSet& params,
                                             const std::function<LossPoint()>& loss,
                                             const LossPoint& unmoved, int samples, uint32_t seed,
                                             double scale = 1.0, double floor = 1e-4,
                                             float eps = 1e-2f) {
  ParamGradReport rep;
  std::mt19937 rng(seed);
  for (train::Param& p : params.all()) {
    if (!p.trainable) continue;
    const std::vector<float> grad = p.grad.to_vector();
    double gmax = 0;
    for (float g : grad) gmax = std::max(gmax, double(std::abs(g)));
    float* v = p.value.data<float>();
    std::uniform_int_distribution<int64_t> pick(0, p.value.numel() - 1);
    for (int s = 0; s < samples; ++s) {
      const int64_t i = pick(rng);
      const float orig = v[i];
      v[i] = orig + eps;
      const LossPoint up = loss();
      v[i] = orig - eps;
      const LossPoint down = loss();
      v[i] = orig;
      if (up.piece != unmoved.piece || down.piece != unmoved.piece) {
        ++rep.skipped;
        continue;
      }
      const double numeric = scale * (up.value - down.value) / (2.0 * eps);
      const double analytic = grad[size_t(i)];
      const double err = std::abs(numeric - analytic) /
                         std::max({std::abs(numeric), std::abs(analytic), 0.02 * gmax, floor});
      ++rep.checked;
      if (err > rep.worst) {
        rep.worst = err;
        rep.where = p.name + "[" + std::to_string(i) + "] analytic " + std::to_string(analytic) +
                    " numeric " + std::to_string(numeric);
      }
    }
  }
  return rep;
}

}  // namespace dseek::testing
