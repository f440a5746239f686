// Known convolution designs through the IR (see conv_designs.h).
#include "synth/conv_designs.h"

#include "core/error.h"
#include "synth/conv_problem.h"

namespace dseek::synth {

namespace {

// A design's problem: the conv task's variables (ConvProblem, task.cpp's order) plus, for grouped
// and low-rank designs, one more coefficient (g or r).
struct Conv : ConvProblem {
  int extra = -1;
  Size sx;

  explicit Conv(const std::string& coeff) {
    if (!coeff.empty()) {
      extra = vars.add(coeff, VarKind::coefficient);
      sx = Size::var(extra);
    }
  }

  BenchOperator make(const std::string& label, const std::vector<Size>& output,
                     const std::vector<Action>& actions, int64_t channels, int64_t image,
                     int64_t kernel, int64_t extra_value) const {
    BenchOperator b;
    b.label = label;
    b.record.spec.vars = vars;
    Valuation v = {1, channels, channels, image, image, kernel};
    if (extra >= 0) v.push_back(extra_value);
    b.record.spec.valuations = {v};
    b.record.spec.input = {sN, sC, sH, sW};
    b.record.spec.output = output;
    b.record.op = make_operator(output);
    for (const Action& a : actions) apply(b.record.op, a);
    DSEEK_CHECK(b.record.op.complete, "[synth] known conv {}: not complete", label);
    return b;
  }
};

std::vector<Action> concat(std::vector<Action> a, const std::vector<Action>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

BenchOperator known_conv_operator(const std::string& name, int64_t channels, int64_t image,
                                  int64_t kernel) {
  DSEEK_CHECK(channels >= 1 && image >= 1 && kernel >= 1,
              "[synth] known conv {}: channels {}, image {}, kernel {} must be >= 1", name,
              channels, image, kernel);
  const KnownName known = parse_known_name(name);
  const std::string& kind = known.kind;
  const int64_t n = known.n;
  const bool plain = known.plain;
  if (kind == "dense" && plain) {
    const Conv p("");
    return p.make(
        fmt::format("dense {}x{}", kernel, kernel), {p.sN, p.sCout, p.sH, p.sW},
        concat({share_action(1, 0), expand_action(1), reduce_action(p.sC), share_action(3, 0)},
               concat(p.window(1, 4, 0), {finalize_action({0, 3, 1, 2})})),
        channels, image, kernel, 0);
  }
  if (kind == "pointwise" && plain) {
    const Conv p("");
    return p.make("pointwise 1x1", {p.sN, p.sCout, p.sH, p.sW},
                  {share_action(1, 0), expand_action(1), reduce_action(p.sC), share_action(3, 0),
                   finalize_action({0, 3, 1, 2})},
                  channels, image, kernel, 0);
  }
  if (kind == "depthwise" && plain) {
    const Conv p("");
    return p.make(
        fmt::format("depthwise {}x{}", kernel, kernel), {p.sN, p.sC, p.sH, p.sW},
        concat({share_action(1, 0)}, concat(p.window(2, 4, 0), {finalize_action({0, 1, 2, 3})})),
        channels, image, kernel, 0);
  }
  if (kind == "separable" && plain) {
    const Conv p("");
    return p.make(fmt::format("separable {}x{}", kernel, kernel), {p.sN, p.sCout, p.sH, p.sW},
                  concat({share_action(1, 0), expand_action(1), reduce_action(p.sC),
                          share_action(3, 0), share_action(3, 1)},
                         concat(p.window(1, 4, 1), {finalize_action({0, 3, 1, 2})})),
                  channels, image, kernel, 0);
  }
  if (kind == "grouped" && n >= 1) {
    DSEEK_CHECK(channels % n == 0, "[synth] known conv {}: {} groups do not divide {} channels",
                name, n, channels);
    const Conv p("g");
    return p.make(fmt::format("grouped {}x{} g={}", kernel, kernel, n), {p.sN, p.sCout, p.sH, p.sW},
                  concat({merge_action(1, p.sCout / p.sx), share_action(1, 0), share_action(2, 0),
                          expand_action(2), reduce_action(p.sC / p.sx), share_action(4, 0),
                          split_action(1, 4)},
                         concat(p.window(2, 4, 0), {finalize_action({0, 1, 2, 3})})),
                  channels, image, kernel, n);
  }
  if (kind == "lowrank" && n >= 1) {
    DSEEK_CHECK(channels % n == 0,
                "[synth] known conv {}: rank C/{} of {} channels is not an integer", name, n,
                channels);
    const Conv p("r");
    return p.make(
        fmt::format("low rank {}x{} r=C/{}", kernel, kernel, n), {p.sN, p.sCout, p.sH, p.sW},
        concat({share_action(1, 0), expand_action(1), reduce_action(p.sx), share_action(3, 0),
                share_action(3, 1), expand_action(3), reduce_action(p.sC), share_action(3, 1)},
               concat(p.window(1, 4, 1), {finalize_action({0, 3, 1, 2})})),
        channels, image, kernel, channels / n);
  }
  fail(
      "[synth] known conv '{}': dense, pointwise, depthwise, separable, grouped/G (G groups) or "
      "lowrank/R (rank C/R)",
      name);
}

std::vector<BenchOperator> known_conv_operators(const std::string& list, int64_t channels,
                                                int64_t image, int64_t kernel) {
  std::vector<BenchOperator> ops;
  for (const std::string& n : split_known_names(list))
    ops.push_back(known_conv_operator(n, channels, image, kernel));
  DSEEK_CHECK(ops[0].label.rfind("dense", 0) == 0,
              "[synth] known conv operators '{}': dense must come first (the reference)", list);
  return ops;
}

}  // namespace dseek::synth
