// Pareto fronts (see pareto.h).
#include "synth/pareto.h"

#include <cmath>

namespace dseek::synth {

std::vector<bool> pareto_front(const std::vector<double>& cost,
                               const std::vector<double>& quality) {
  const size_t n = cost.size();
  std::vector<bool> front(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(cost[i]) || std::isnan(quality[i])) continue;
    bool dominated = false;
    for (size_t j = 0; j < n && !dominated; ++j) {
      if (j == i || std::isnan(cost[j]) || std::isnan(quality[j])) continue;
      dominated = cost[j] <= cost[i] && quality[j] <= quality[i] &&
                  (cost[j] < cost[i] || quality[j] < quality[i]);
    }
    front[i] = !dominated;
  }
  return front;
}

}  // namespace dseek::synth
