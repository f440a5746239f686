// MCTS and the stochastic sampler over the synthesis tree (see search.h).
#include "synth/search.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <optional>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "synth/canonical.h"

namespace dseek::synth {

namespace {

constexpr double kFailReward = -2.0;
constexpr int kRolloutRetries = 3;
// A leaf that repeats a known candidate brings nothing new: it backs up the candidate's reward
// minus this, so UCT leaves subtrees whose rollouts only repeat.
constexpr double kRepeatPenalty = 1.0;

// The steered random walk from `start` to a complete operator (nullopt on a dead end: the shape
// distance is a lower bound, so a state can run out of legal actions before it completes).
// The legal actions of `s` whose results `admissible` accepts (all of them without it).
std::vector<Action> admissible_actions(const Operator& s, const Spec& spec,
                                       const SearchOptions& options) {
  std::vector<Action> actions = legal_actions(s, spec);
  if (!options.admissible) return actions;
  std::vector<Action> kept;
  for (const Action& a : actions) {
    Operator child = s;
    apply(child, a);
    if (options.admissible(child)) kept.push_back(a);
  }
  return kept;
}

std::optional<Operator> rollout(const Operator& start, const Spec& spec,
                                const SearchOptions& options, Rng& rng) {
  Operator s = start;
  while (!s.complete) {
    const std::vector<Action> actions = admissible_actions(s, spec, options);
    if (actions.empty()) return std::nullopt;
    std::vector<int> dist(actions.size());
    int dmin = std::numeric_limits<int>::max();
    for (size_t i = 0; i < actions.size(); ++i) {
      Operator child = s;
      apply(child, actions[i]);
      dist[i] = child.complete ? 0 : shape_distance(child, spec);
      dmin = std::min(dmin, dist[i]);
    }
    double total = 0.0;
    std::vector<double> weight(actions.size());
    for (size_t i = 0; i < actions.size(); ++i)
      total += weight[i] = std::pow(0.25, double(dist[i] - dmin));
    double u = rng.uniform() * total;
    size_t pick = actions.size() - 1;
    for (size_t i = 0; i < actions.size(); ++i) {
      if (u < weight[i]) {
        pick = i;
        break;
      }
      u -= weight[i];
    }
    apply(s, actions[pick]);
  }
  return s;
}

struct Node {
  Operator state;
  std::string key;
  int parent = -1;
  std::vector<Action> untried;
  std::vector<int> children;
  double visits = 0.0, total = 0.0;
  bool exhausted = false;
};

// The tree of the MCTS; leaf() runs one select-expand-rollout iteration.
class Tree {
 public:
  Tree(const Spec& spec, const SearchOptions& options) : spec_(spec), options_(options) {
    add_node(make_operator(spec.output), -1);
  }

  bool done() const { return nodes_[0].exhausted; }

  // One iteration: the path of nodes it went through and the complete operator it reached;
  // nullopt with `dead` set for a rollout that ran into a dead end, without for a subtree found
  // exhausted.
  std::optional<Operator> leaf(Rng& rng, std::vector<int>& path, bool& dead) {
    path.assign(1, 0);
    dead = false;
    int n = 0;
    while (true) {
      if (nodes_[size_t(n)].state.complete) return nodes_[size_t(n)].state;
      const int child = expand(n, rng);
      if (child >= 0) {
        path.push_back(child);
        const Node& c = nodes_[size_t(child)];
        if (c.state.complete) return c.state;
        std::optional<Operator> op = rollout(c.state, spec_, options_, rng);
        dead = !op.has_value();
        return op;
      }
      const int best = select(n);
      if (best < 0) {  // every child exhausted
        mark_exhausted(n);
        return std::nullopt;
      }
      n = best;
      path.push_back(n);
    }
  }

  // Another rollout from node n (nullopt for a complete node or a dead end).
  std::optional<Operator> rollout_from(int n, Rng& rng) const {
    if (nodes_[size_t(n)].state.complete) return std::nullopt;
    return rollout(nodes_[size_t(n)].state, spec_, options_, rng);
  }

  void visit(const std::vector<int>& path) {
    for (int n : path) nodes_[size_t(n)].visits += 1.0;
  }
  void reward(const std::vector<int>& path, double r) {
    for (int n : path) nodes_[size_t(n)].total += r;
  }
  // A dead end below path.back(): counted as a failed candidate (steers away from it).
  void dead_end(const std::vector<int>& path) {
    visit(path);
    reward(path, kFailReward);
  }

 private:
  int add_node(Operator state, int parent) {
    Node node;
    node.key = canonical_key(state, spec_.vars);
    node.parent = parent;
    if (!state.complete) node.untried = admissible_actions(state, spec_, options_);
    node.state = std::move(state);
    nodes_.push_back(std::move(node));
    const int id = int(nodes_.size()) - 1;
    if (parent >= 0) nodes_[size_t(parent)].children.push_back(id);
    // A complete node is found once (its candidate is now known); a node without actions is a
    // dead end.
    if (nodes_[size_t(id)].state.complete || nodes_[size_t(id)].untried.empty()) mark_exhausted(id);
    return id;
  }

  // Expands one untried action of n whose child's canonical key is new among n's children;
  // -1 when none is left.
  int expand(int n, Rng& rng) {
    while (!nodes_[size_t(n)].untried.empty()) {
      std::vector<Action>& untried = nodes_[size_t(n)].untried;
      const size_t i = size_t(rng.next_u64() % untried.size());
      const Action action = untried[i];
      untried[i] = untried.back();
      untried.pop_back();
      Operator child = nodes_[size_t(n)].state;
      apply(child, action);
      // Like enumerate(): the simplified state represents its key, so legality sees one form.
      if (!child.complete) child = simplify(child);
      const std::string key = canonical_key(child, spec_.vars);
      bool seen = false;
      for (int c : nodes_[size_t(n)].children) seen = seen || nodes_[size_t(c)].key == key;
      if (!seen) return add_node(std::move(child), n);
    }
    return -1;
  }

  int select(int n) const {
    const Node& node = nodes_[size_t(n)];
    int best = -1;
    double best_score = -std::numeric_limits<double>::infinity();
    for (int c : node.children) {
      const Node& child = nodes_[size_t(c)];
      if (child.exhausted) continue;
      const double score =
          child.visits == 0.0
              ? std::numeric_limits<double>::infinity()
              : child.total / child.visits +
                    options_.exploration *
                        std::sqrt(std::log(std::max(node.visits, 1.0)) / child.visits);
      if (score > best_score) best = c, best_score = score;
    }
    return best;
  }

  void mark_exhausted(int n) {
    while (n >= 0) {
      Node& node = nodes_[size_t(n)];
      bool done = node.state.complete || node.untried.empty();
      for (int c : node.children) done = done && nodes_[size_t(c)].exhausted;
      if (!done) return;
      node.exhausted = true;
      n = node.parent;
    }
  }

  const Spec& spec_;
  const SearchOptions& options_;
  std::vector<Node> nodes_;
};

// One gathered leaf waiting for its candidate's result.
struct Pending {
  size_t candidate = 0;
  std::vector<int> path;
  bool repeat = false;  // the leaf repeated a candidate (kRepeatPenalty)
};

void check_options(const SearchOptions& o) {
  DSEEK_CHECK(o.budget >= 1, "[synth] search: budget {} must be >= 1", o.budget);
  DSEEK_CHECK(o.jobs >= 1 && o.jobs <= 256, "[synth] search: jobs {} not in [1, 256]", o.jobs);
  DSEEK_CHECK(o.batch >= 1, "[synth] search: batch {} must be >= 1", o.batch);
  DSEEK_CHECK(o.ref_flops >= 1, "[synth] search: reference FLOPs {} must be >= 1", o.ref_flops);
  DSEEK_CHECK(o.exploration >= 0.0 && o.cost_weight >= 0.0 && o.max_idle >= 1,
              "[synth] search: exploration {}, cost weight {} or max idle {} out of range",
              o.exploration, o.cost_weight, o.max_idle);
}

// Checks and evaluates candidates [first, end) of `cands` that need it, on `jobs` threads.
void evaluate_round(std::vector<Candidate>& cands, const std::vector<size_t>& todo,
                    const Spec& spec, const Evaluator& evaluate, const SearchOptions& options) {
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(todo.size());
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < todo.size();) {
      Candidate& c = cands[todo[i]];
      try {
        const Valuation& v = spec.valuations[0];
        const uint64_t seed = c.hash ^ options.seed;
        const std::string mismatch =
            options.check ? options.check(c.op, v, seed) : check_lowering(c.op, v, seed);
        if (!mismatch.empty()) {
          c.status = "mismatch";
          c.eval.error = mismatch;
        } else {
          c.eval = evaluate(c.op, v);
          c.status = c.eval.ok ? "ok" : "error";
          if (c.eval.ok && !std::isfinite(c.eval.quality)) {  // would poison UCT's means
            c.status = "error";
            c.eval.ok = false;
            c.eval.error = "[synth] search: the evaluator returned a non-finite quality";
          }
        }
      } catch (const Error& e) {
        c.status = "error";
        c.eval.ok = false;
        c.eval.error = e.what();
      } catch (...) {
        errors[i] = std::current_exception();
      }
      c.reward = candidate_reward(c, options);
    }
  };
  const int threads = int(std::min<size_t>(size_t(options.jobs), todo.size()));
  if (threads <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(work);
    for (auto& t : pool) t.join();
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

const char* method_name(SearchMethod m) {
  return m == SearchMethod::mcts ? "mcts" : "sample";
}

SearchMethod parse_method(const std::string& name) {
  if (name == "mcts") return SearchMethod::mcts;
  if (name == "sample") return SearchMethod::sample;
  fail("[synth] search: unknown method '{}' (mcts or sample)", name);
}

double candidate_reward(const Candidate& c, const SearchOptions& options) {
  if (c.status != "ok") return kFailReward;
  const double ratio = double(std::max<int64_t>(c.eval.flops, 1)) / double(options.ref_flops);
  return -c.eval.quality - options.cost_weight * std::log2(ratio);
}

SearchResult search(const Spec& spec, const Evaluator& evaluate, const SearchOptions& options,
                    const SearchHooks& hooks) {
  check_options(options);
  DSEEK_CHECK(spec.valuations.size() == 1,
              "[synth] search: the spec needs exactly one valuation (the evaluation sizes), got {}",
              spec.valuations.size());
  SearchResult result;
  Rng rng(options.seed);
  std::optional<Tree> tree;
  if (options.method == SearchMethod::mcts) tree.emplace(spec, options);
  std::map<uint64_t, size_t> seen;  // hash -> candidate
  std::vector<bool> resolved;       // per candidate: its result is in
  std::vector<Pending> pending;
  std::vector<size_t> round;  // the candidates new in this round
  int64_t idle = 0, resumed = 0;
  bool stop = false;

  auto run_round = [&] {
    std::vector<size_t> todo;
    for (size_t i : round) {
      Candidate& c = result.candidates[i];
      const Candidate* known = nullptr;
      if (hooks.known) {
        const auto k = hooks.known->find(c.hash);
        if (k != hooks.known->end()) known = &k->second;
      }
      if (known) {
        const int64_t index = c.index;
        Operator op = std::move(c.op);
        c = *known;
        c.op = std::move(op);
        c.index = index;
        c.resumed = true;
        c.reward = candidate_reward(c, options);
        ++resumed;
      } else {
        todo.push_back(i);
      }
    }
    if (options.max_evaluations >= 0 &&
        int64_t(todo.size()) > options.max_evaluations - result.evaluated) {
      // Interrupted: evaluate the first candidates only (in order) and drop the rest, so that a
      // resumed run meets and evaluates them.
      todo.resize(size_t(std::max<int64_t>(options.max_evaluations - result.evaluated, 0)));
      result.interrupted = true;
    }
    evaluate_round(result.candidates, todo, spec, evaluate, options);
    result.evaluated += int64_t(todo.size());
    if (hooks.save && !todo.empty()) {
      std::vector<Candidate> fresh;
      for (size_t i : todo) fresh.push_back(result.candidates[i]);
      hooks.save(fresh);
    }
    if (result.interrupted) {
      std::vector<Candidate> kept;
      for (size_t i = 0; i < result.candidates.size(); ++i) {
        const bool dropped = std::find(round.begin(), round.end(), i) != round.end() &&
                             !result.candidates[i].resumed &&
                             std::find(todo.begin(), todo.end(), i) == todo.end();
        if (!dropped) kept.push_back(std::move(result.candidates[i]));
      }
      result.candidates = std::move(kept);
      stop = true;
      return;
    }
    for (size_t i : round) resolved[i] = true;
    for (const Pending& p : pending)
      if (tree)
        tree->reward(p.path,
                     result.candidates[p.candidate].reward - (p.repeat ? kRepeatPenalty : 0.0));
    pending.clear();
    round.clear();
    if (hooks.progress) {
      SearchProgress pr;
      pr.candidates = int64_t(result.candidates.size());
      pr.budget = options.budget;
      pr.evaluated = result.evaluated;
      pr.resumed = resumed;
      pr.best_quality = std::numeric_limits<double>::quiet_NaN();
      for (const Candidate& c : result.candidates)
        if (c.status == "ok" && !(c.eval.quality >= pr.best_quality))
          pr.best_quality = c.eval.quality;
      hooks.progress(pr);
    }
  };

  std::vector<int> path;
  while (!stop) {
    const bool full = int64_t(result.candidates.size()) >= options.budget;
    const bool exhausted = idle >= options.max_idle || (tree && tree->done());
    if (full || exhausted) {
      result.exhausted = exhausted && !full;
      if (!pending.empty() || !round.empty()) run_round();
      break;
    }
    ++result.iterations;
    std::optional<Operator> op;
    bool dead = false;
    if (tree) {
      op = tree->leaf(rng, path, dead);
    } else {
      op = rollout(make_operator(spec.output), spec, options, rng);
      path.clear();
    }
    if (!op) {
      if (tree && dead) tree->dead_end(path);
      ++idle;
      continue;
    }
    uint64_t hash = canonical_hash(*op, spec.vars);
    auto it = seen.find(hash);
    // A rollout that lands on a known candidate is retried from the same leaf a few times:
    // short operators are likely rollout ends, and repeats alone would keep UCT on them.
    for (int retry = 0; tree && it != seen.end() && retry < kRolloutRetries; ++retry) {
      std::optional<Operator> again = tree->rollout_from(path.back(), rng);
      if (!again) break;
      op = std::move(again);
      hash = canonical_hash(*op, spec.vars);
      it = seen.find(hash);
    }
    if (tree) tree->visit(path);
    if (it != seen.end()) {
      ++idle;
      if (resolved[it->second]) {
        if (tree) tree->reward(path, result.candidates[it->second].reward - kRepeatPenalty);
      } else {
        pending.push_back({it->second, path, true});
      }
      continue;
    }
    idle = 0;
    Candidate c;
    c.hash = hash;
    c.key = canonical_key(*op, spec.vars);
    c.op = std::move(*op);
    c.index = int64_t(result.candidates.size());
    seen.emplace(hash, result.candidates.size());
    round.push_back(result.candidates.size());
    pending.push_back({result.candidates.size(), path, false});
    result.candidates.push_back(std::move(c));
    resolved.push_back(false);
    if (int64_t(round.size()) >= options.batch) run_round();
  }
  return result;
}

}  // namespace dseek::synth
