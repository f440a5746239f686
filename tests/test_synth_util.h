// Hand-built operators for the synth tests: the classic layers written in the IR's primitives,
// bottom-up from the output (see docs/SYNTH.md for the walk-through of each); and, for the search
// and store tests, a small task and a cheap counting evaluator.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/rng.h"
#include "synth/canonical.h"
#include "synth/conv_problem.h"
#include "synth/cost.h"
#include "synth/enumerate.h"
#include "synth/evaluate.h"
#include "synth/linear_problem.h"
#include "synth/operator.h"
#include "synth/task.h"

namespace dseek::synth::test {

// The [T, d_in] -> [T, d_out] problem and its classic layers are the bench's
// (synth/linear_problem.h); named here too so the tests spell them synth::test:: like the rest of
// this file.
using dseek::synth::ConvProblem;  // [N, C, H, W] -> [N, C_out, H, W]; k the (odd) kernel size
using dseek::synth::dense_linear;
using dseek::synth::grouped_linear;
using dseek::synth::LinearProblem;
using dseek::synth::low_rank;

// The tests' short name for build_operator (synth/linear_problem.h).
inline Operator build(const std::vector<Size>& output, const std::vector<Action>& actions) {
  return build_operator(output, actions);
}

// y[n,o,h,w] = Σ_c Σ_a Σ_b x[n, c, h+a-k/2, w+b-k/2] W[o,c,a,b]   (zero padding)
inline Operator conv2d(const ConvProblem& p) {
  return build({p.sN, p.sCout, p.sH, p.sW},
               {share_action(1, 0), expand_action(1), reduce_action(p.sC), share_action(3, 0),
                reduce_action(p.sk), share_action(4, 0), unfold_action(1, 4), reduce_action(p.sk),
                share_action(4, 0), unfold_action(2, 4), finalize_action({0, 3, 1, 2})});
}

// y[n,c,h,w] = Σ_a Σ_b x[n, c, h+a-k/2, w+b-k/2] W[c,a,b]   (output channels == C)
inline Operator depthwise_conv2d(const ConvProblem& p) {
  return build({p.sN, p.sC, p.sH, p.sW},
               {share_action(1, 0), reduce_action(p.sk), share_action(4, 0), unfold_action(2, 4),
                reduce_action(p.sk), share_action(4, 0), unfold_action(3, 4),
                finalize_action({0, 1, 2, 3})});
}

// Non-zero random values (normal, so no two are equal and none is 0).
inline std::vector<double> random_values(int64_t n, Rng& rng) {
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = rng.normal();
  return v;
}

// `count` complete operators from random walks through the legal actions of `spec` (Finalize as
// soon as it is legal half of the time, so short operators appear too); fewer if the walks fail.
inline std::vector<Operator> random_operators(const Spec& spec, int count, uint64_t seed) {
  Rng rng(seed);
  std::vector<Operator> out;
  for (int attempt = 0; int(out.size()) < count && attempt < 20000; ++attempt) {
    Operator op = make_operator(spec.output);
    while (!op.complete) {
      const auto actions = legal_actions(op, spec);
      if (actions.empty()) break;
      const bool fin = actions[0].kind == Primitive::finalize && rng.uniform() < 0.5;
      apply(op, actions[fin ? 0 : size_t(rng.next_u64() % actions.size())]);
    }
    if (op.complete) out.push_back(op);
  }
  return out;
}

// A [T, d_in] -> [T, d_out] spec with every view primitive (Merge, Split, Shift, Stride, Unfold
// over the coefficient windows r and g) at one small valuation.
inline Spec random_linear_spec(const LinearProblem& p, const Valuation& values) {
  Spec spec;
  spec.vars = p.vars;
  spec.valuations = {values};
  spec.input = {p.sT, p.sdin};
  spec.output = {p.sT, p.sdout};
  spec.reduce_sizes = {p.sdin, p.sr, p.sg};
  spec.merge_blocks = {p.sr, p.sg, p.sdin};
  spec.strides = {Size::constant(2)};
  spec.max_primitives = 8;
  spec.max_frontier = 4;
  return spec;
}

// lm-proj at d_in = d_out = 8, 16 tokens, r = g = 2, at most 8 primitives: searches of a few
// dozen candidates run in well under a second.
inline Task small_task() {
  TaskOptions o;
  o.task = "lm-proj";
  o.d_in = 8;
  o.d_out = 8;
  o.tokens = 16;
  o.coeffs = {{"r", 2}, {"g", 2}};
  o.max_depth = 8;
  return make_task(o);
}

// A cheap evaluator for the search's and the store's own tests: FLOPs and params from cost.h, a
// quality and a latency that depend on the operator (its canonical hash) but are fixed per
// operator; with fail_every = n > 0 the operators whose hash is 0 mod n are evaluator errors.
// Counts the calls per hash (under a lock: the search evaluates from several jobs).
struct CountingEvaluator {
  explicit CountingEvaluator(int fail_every = 0) : fail_every(fail_every) {}
  int fail_every;
  std::mutex mutex;
  std::map<uint64_t, int> calls;
  Evaluator fn(const Spec& spec) {
    return [this, &spec](const Operator& op, const Valuation& v) {
      Evaluation e;
      e.flops = flops(op, v);
      e.params = param_count(op, v);
      const uint64_t h = canonical_hash(op, spec.vars);
      {
        std::lock_guard<std::mutex> lock(mutex);
        ++calls[h];
      }
      if (fail_every > 0 && h % uint64_t(fail_every) == 0) {
        e.error = "[test] an evaluator error (hash 0 mod " + std::to_string(fail_every) + ")";
        return e;
      }
      e.quality = double(h % 997) / 997.0;
      e.latency_ms = 0.5 + double(h % 13);
      e.ok = true;
      return e;
    };
  }
};

}  // namespace dseek::synth::test
