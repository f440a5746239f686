// The search over the synthesis tree (Syno's MCTS; Canvas's stochastic sampler as the baseline).
// A node is a partial operator; its children are its legal actions (enumerate.h) with equal
// canonical keys merged; a leaf is a complete operator (a candidate).
//
//   mcts    Monte-Carlo tree search with UCT. Each iteration selects from the root by UCB1
//           (mean reward + c·sqrt(ln N_parent / N_child)) through fully expanded nodes, expands
//           one untried canonical action, and rolls out to a complete operator by a random walk
//           steered by the shape distance (an action leading to distance d is drawn with weight
//           4^−(d − d_min) among the legal ones); the candidate's reward is backpropagated along
//           the path. Subtrees with nothing left to find are marked exhausted and skipped.
//   sample  the same steered random walk, always from the root (no tree): Canvas's sampler.
//
// Each complete operator is evaluated once (deduplicated by canonical_hash); a repeat gets the
// known reward. Leaves are gathered in rounds of `batch` new candidates (visits are counted when
// a leaf is gathered, its reward added when its round is evaluated: a virtual loss that spreads a
// round over the tree), and a round is evaluated on `jobs` threads. The rounds do not depend on
// `jobs`, and results are applied in candidate order, so a seed gives the same run for any jobs.
// Before its evaluation, every candidate's lowering is checked against the reference interpreter
// (evaluate.h check_lowering); a mismatch is recorded (status "mismatch") and not evaluated.
//
// Reward (higher is better), for a candidate the evaluator scored:
//   reward = −quality − cost_weight · log2(flops / ref_flops)
// (ref_flops: the task's dense layer), and −2 for a mismatch or an evaluator error.
//
// Resuming: the search is a deterministic function of its settings and the rewards it receives.
// Given the results of an earlier run with the same settings (SearchHooks::known, from the store),
// it replays that run — every candidate it meets that the store holds takes the stored result
// instead of being evaluated — and continues where the earlier run stopped. So an interrupted run
// plus its resumption evaluate exactly the candidates of one uninterrupted run.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "synth/enumerate.h"
#include "synth/evaluate.h"

namespace dseek::synth {

enum class SearchMethod { mcts, sample };
const char* method_name(SearchMethod m);
SearchMethod parse_method(const std::string& name);  // throws on anything but mcts/sample

struct SearchOptions {
  SearchMethod method = SearchMethod::mcts;
  int64_t budget = 64;           // distinct candidates of the run (resumed ones included)
  int64_t max_evaluations = -1;  // stop after this many evaluations in this call (-1: no limit)
  int jobs = 1;                  // evaluation threads
  int batch = 8;                 // new candidates per round
  uint64_t seed = 1;
  double exploration = 0.5;  // UCB1's c (rewards are O(1))
  double cost_weight = 0.1;  // the reward's FLOPs term
  int64_t ref_flops = 1;     // the dense layer's FLOPs
  int64_t max_idle = 2000;   // iterations without a new candidate: the space is exhausted
  // When set, only actions whose result it accepts are taken (expansion and rollouts): a task's
  // restriction of the space (task.h, e.g. token-wise operators for a projection).
  std::function<bool(const Operator&)> admissible;
  // The check before evaluation; empty: check_lowering (evaluate.h). Tests replace it to see the
  // mismatch path, which a correct lowering never takes.
  std::function<std::string(const Operator&, const Valuation&, uint64_t)> check;
};

struct Candidate {
  uint64_t hash = 0;
  std::string key;
  Operator op;
  Evaluation eval;
  std::string status;  // "ok", "mismatch" (lowering vs interpreter) or "error" (evaluator)
  double reward = 0.0;
  int64_t index = -1;    // discovery order in the run
  bool resumed = false;  // taken from SearchHooks::known, not evaluated by this call
};

struct SearchProgress {
  int64_t candidates = 0, budget = 0, evaluated = 0, resumed = 0;
  double best_quality = 0.0;  // among "ok" candidates (NaN before the first)
};

struct SearchHooks {
  const std::map<uint64_t, Candidate>* known = nullptr;  // earlier results by hash (the store)
  // Each round's candidates evaluated by this call, in candidate order (before the next round).
  std::function<void(const std::vector<Candidate>&)> save;
  std::function<void(const SearchProgress&)> progress;  // after each round
};

struct SearchResult {
  std::vector<Candidate> candidates;  // distinct, in discovery order
  int64_t evaluated = 0;              // by this call
  int64_t iterations = 0;
  bool exhausted = false;    // no new candidate within max_idle iterations (or the tree is done)
  bool interrupted = false;  // stopped by max_evaluations
};

double candidate_reward(const Candidate& c, const SearchOptions& options);

// Throws dseek::Error on bad options; an evaluator that throws something other than a
// dseek::Error (recorded as status "error") propagates after the round's threads are joined.
SearchResult search(const Spec& spec, const Evaluator& evaluate, const SearchOptions& options,
                    const SearchHooks& hooks = {});

}  // namespace dseek::synth
