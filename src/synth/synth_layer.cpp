// A synthesised operator as a trainable layer (see synth_layer.h).
#include "synth/synth_layer.h"

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "ops/activation.h"
#include "synth/interpreter.h"

namespace dseek::synth {

namespace {

bool reads_iterator(const Operator& op, const Dim& d, int iter) {
  std::vector<bool> used(size_t(op.iterator_count()), false);
  expr_iters(op.exprs, d.expr, used);
  return used[size_t(iter)];
}

}  // namespace

SynthLayer::SynthLayer(const Operator& op, const Vars& vars, Valuation values, int token_var,
                       uint64_t seed)
    : op_(op), values_(std::move(values)), token_var_(token_var) {
  DSEEK_CHECK(op.complete, "[synth_layer] the operator is not complete");
  DSEEK_CHECK(token_var >= 0 && token_var < vars.count() && int(values_.size()) == vars.count(),
              "[synth_layer] token variable {} or valuation of {} values for {} variables",
              token_var, values_.size(), vars.count());
  const Size T = Size::var(token_var);
  DSEEK_CHECK(!op.input.empty() && op.input[0].size == T && op.output[0] == T,
              "[synth_layer] the operator's first input and output dims must be {}",
              vars.names[size_t(token_var)]);
  auto independent = [&](const Size& s, const char* what) {
    DSEEK_CHECK(s.exp[size_t(token_var)] == 0,
                "[synth_layer] {} of size {} depends on the token count", what, s.str(vars));
  };
  for (size_t i = 1; i < op.input.size(); ++i) independent(op.input[i].size, "an input dim");
  for (size_t i = 1; i < op.output.size(); ++i) independent(op.output[i], "an output dim");
  for (const auto& r : op.reduce) independent(r, "a reduction");
  for (const auto& w : op.weights)
    for (const auto& d : w) independent(d.size, "a weight dim");
  // Token-wise: the input's token coordinate is the output's token iterator (o0), unchanged, and
  // no other coordinate reads o0.
  const Expr& e0 = op.exprs[size_t(op.input[0].expr)];
  DSEEK_CHECK(e0.kind == ExprKind::iter && e0.iter == 0,
              "[synth_layer] the operator mixes tokens: the input's token coordinate is not the "
              "output's token index");
  for (size_t i = 1; i < op.input.size(); ++i)
    DSEEK_CHECK(!reads_iterator(op, op.input[i], 0),
                "[synth_layer] the operator mixes tokens: input dim {} reads the token index", i);
  for (size_t w = 0; w < op.weights.size(); ++w)
    for (const auto& d : op.weights[w])
      DSEEK_CHECK(!reads_iterator(op, d, 0),
                  "[synth_layer] weight {} is indexed by the token (a weight per position)", w);

  Valuation one = values_;
  one[size_t(token_var)] = 1;
  d_in_ = shape_numel(concrete_shape(op.input, one));  // per token
  d_out_ = shape_numel(concrete_shape(op.output, one));

  // Fan-in scaled normal init (see the header).
  double terms = 1.0;
  for (int64_t e : concrete_shape(op.reduce, one)) terms *= double(e);
  const double sigma = op.weights.empty() ? 1.0 : std::pow(terms, -0.5 / double(op.weights.size()));
  Rng rng(seed);
  for (const auto& w : op.weights) {
    const Shape shape = concrete_shape(w, one);
    std::vector<float> v(size_t(shape_numel(shape)));
    for (float& x : v) x = float(sigma * rng.normal());
    weights_.push_back(Tensor::from_vector(v, shape));
    grads_.push_back(Tensor::zeros(shape));
  }
}

int64_t SynthLayer::param_count() const {
  int64_t n = 0;
  for (const auto& w : weights_) n += w.numel();
  return n;
}

void SynthLayer::zero_grad() {
  for (auto& g : grads_) g = Tensor::zeros(g.shape(), DType::F32, g.device());
}

void SynthLayer::to(Device device) {
  for (auto& w : weights_) w = w.to(device);
  for (auto& g : grads_) g = g.to(device);
}

const LoweredPlan& SynthLayer::plan(int64_t tokens) {
  auto it = plans_.find(tokens);
  if (it == plans_.end()) {
    Valuation v = values_;
    v[size_t(token_var_)] = tokens;
    it = plans_.emplace(tokens, lower(op_, v)).first;
  }
  return it->second;
}

Tensor SynthLayer::forward(const Tensor& x, SynthLayerCache& cache) {
  DSEEK_CHECK(x.defined() && x.dim() == 2 && x.size(1) == d_in_ && x.size(0) >= 1 &&
                  x.dtype() == DType::F32,
              "[synth_layer] input must be f32 [T, {}], got {}", d_in_,
              x.defined() ? shape_str(x.shape()) : "undefined");
  cache.tokens = x.size(0);
  return lowered_forward(plan(cache.tokens), x, weights_, &cache.lowered)
      .reshape({cache.tokens, d_out_});
}

Tensor SynthLayer::backward(const SynthLayerCache& cache, const Tensor& dy) {
  DSEEK_CHECK(dy.defined() && dy.shape() == Shape({cache.tokens, d_out_}),
              "[synth_layer] dy must be [{}, {}], got {}", cache.tokens, d_out_,
              dy.defined() ? shape_str(dy.shape()) : "undefined");
  LoweredGrads g = lowered_backward(plan(cache.tokens), cache.lowered, dy);
  for (size_t w = 0; w < grads_.size(); ++w) ops::add_inplace(grads_[w], g.dweights[w]);
  return g.dinput.reshape({cache.tokens, d_in_});
}

}  // namespace dseek::synth
