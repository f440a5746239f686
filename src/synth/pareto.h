// Pareto fronts of candidates: quality (lower is better) against a cost (FLOPs or latency, lower
// is better). A candidate is on the front when no other is at least as good in both and better in
// one.
#pragma once

#include <vector>

namespace dseek::synth {

// on_front[i] for the points (cost[i], quality[i]); NaN points are never on it.
std::vector<bool> pareto_front(const std::vector<double>& cost, const std::vector<double>& quality);

}  // namespace dseek::synth
