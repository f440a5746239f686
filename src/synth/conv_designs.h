// Known convolution designs [N, C, H, W] → [N, C_out, H, W], built through the IR like any
// candidate (the action lists below; the dense and depthwise ones are docs/SYNTH.md's), so the
// vision proxy (vision_proxy.h) and `dseek synth proxy --kind conv` can score what a search is
// meant to rediscover. Every design has a centred "same" k×k window with zero padding
// (x[.., h+a−k/2, w+b−k/2] written x[.., h+a, w+b] below):
//   - dense (the baseline): y[n,o,h,w] = Σ_c Σ_ab x[n,c,h+a,w+b] W[o,c,a,b]
//   - pointwise (1×1, no window): y[n,o,h,w] = Σ_c x[n,c,h,w] W[o,c]
//   - depthwise (C_out = C): y[n,c,h,w] = Σ_ab x[n,c,h+a,w+b] W[c,a,b]
//   - separable (depthwise, then pointwise: MobileNet's block without the activation between):
//     y[n,o,h,w] = Σ_c P[o,c] Σ_ab x[n,c,h+a,w+b] D[c,a,b]
//   - grouped/G (g = G): y[n, G'·C_out/g + o, h, w] = Σ_i Σ_ab x[n, G'·C/g + i, ...] W[G',o,i,a,b]
//   - lowrank/R (rank r = C/R: a k×k convolution to r channels, then a 1×1 back to C_out):
//     y[n,o,h,w] = Σ_j P[o,j] Σ_c Σ_ab x[n,c,h+a,w+b] K[j,c,a,b]
//
// Variables: N, C, C_out, H, W (primary), k and, where the design has one, g or r (coefficients).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "synth/bench.h"

namespace dseek::synth {

// `name` (one of the above) with its valuation: N = 1, C = C_out = channels, H = W = image, k =
// kernel, r = channels / R, g = G. Throws dseek::Error on an unknown name, or a group count or
// rank divisor that does not divide `channels`.
BenchOperator known_conv_operator(const std::string& name, int64_t channels, int64_t image,
                                  int64_t kernel);
// A comma-separated list; dense must come first (the reference).
std::vector<BenchOperator> known_conv_operators(const std::string& list, int64_t channels,
                                                int64_t image, int64_t kernel);

}  // namespace dseek::synth
