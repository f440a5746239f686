// Vision proxy training of a synthesised convolution on the UCI digits (see vision_proxy.h).
#include "synth/vision_proxy.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>

#include "core/error.h"
#include "core/rng.h"
#include "data/digits.h"
#include "ops/cross_entropy.h"
#include "ops/linear.h"
#include "synth/cost.h"
#include "synth/interpreter.h"
#include "synth/lower.h"
#include "synth/proxy.h"
#include "synth/synth_layer.h"
#include "synth/task.h"
#include "train/optimizer.h"
#include "train/param.h"
#include "train/schedule.h"

namespace dseek::synth {
namespace {

constexpr int64_t kHeldOutEvery = 5;   // image i is validation when i % 5 == 4
constexpr int64_t kP = kDigitsPixels;  // positions per channel (8 × 8)
constexpr int64_t kClasses = kDigitsClasses;

struct Split {
  std::vector<float> train_x, val_x;  // [n, 64], pixels / 16
  std::vector<int32_t> train_y, val_y;
  int64_t train_n() const { return int64_t(train_y.size()); }
  int64_t val_n() const { return int64_t(val_y.size()); }
};

// Read and split once per file and process.
const Split& load_split(const std::string& explicit_path) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Split>> cache;
  const std::string path = find_digits(explicit_path);
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[path];
  if (slot) return *slot;
  const Digits d = load_digits(path);
  auto split = std::make_unique<Split>();
  for (int64_t i = 0; i < d.count(); ++i) {
    const bool val = i % kHeldOutEvery == kHeldOutEvery - 1;
    std::vector<float>& x = val ? split->val_x : split->train_x;
    for (int64_t p = 0; p < kP; ++p)
      x.push_back(float(d.pixels[size_t(i * kP + p)]) / float(kDigitsMaxPixel));
    (val ? split->val_y : split->train_y).push_back(d.labels[size_t(i)]);
  }
  DSEEK_CHECK(split->train_n() >= 1 && split->val_n() >= 1,
              "[vision_proxy] {}: {} images, too few for a split with every {}th held out", path,
              d.count(), kHeldOutEvery);
  // Standardised by the training pixels' mean and sd: a centred input keeps the lift's ReLUs
  // alive whatever the sign of their weight (pixels in [0, 1] would switch off every channel
  // with a < 0 and b < 0 for good).
  double sum = 0.0, sq = 0.0;
  for (float x : split->train_x) sum += x, sq += double(x) * x;
  const double n = double(split->train_x.size()), mean = sum / n;
  const double sd = std::sqrt(std::max(sq / n - mean * mean, 1e-12));
  for (std::vector<float>* xs : {&split->train_x, &split->val_x})
    for (float& x : *xs) x = float((x - mean) / sd);
  slot = std::move(split);
  return *slot;
}

void check_task(const VisionTask& t) {
  auto positive = [](int64_t v, const char* what) {
    DSEEK_CHECK(v > 0, "[vision_proxy] task.{}: must be positive, got {}", what, v);
  };
  positive(t.channels, "channels");
  positive(t.layers, "layers");
  positive(t.steps, "steps");
  positive(t.batch, "batch");
  positive(t.repeats, "repeats");
  DSEEK_CHECK(t.kernel >= 1 && t.kernel % 2 == 1 && t.kernel <= kDigitsSide,
              "[vision_proxy] task.kernel: {} is not an odd size in [1, {}]", t.kernel,
              kDigitsSide);
  DSEEK_CHECK(t.warmup >= 0 && t.warmup <= t.steps,
              "[vision_proxy] task.warmup: {} outside [0, {}]", t.warmup, t.steps);
  DSEEK_CHECK(t.lr > 0 && std::isfinite(t.lr), "[vision_proxy] task.lr: must be > 0, got {}", t.lr);
}

std::string dims_str(const std::vector<Size>& sizes, const Vars& vars) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + sizes[i].str(vars);
  return out + "]";
}

std::vector<Size> input_sizes(const Operator& op) {
  std::vector<Size> s;
  for (const Dim& d : op.input) s.push_back(d.size);
  return s;
}

// The dense k×k convolution of the conv task (task.h), over its variables.
struct Baseline {
  Vars vars;
  Operator op;
  Valuation values;
};
Baseline dense_baseline(const VisionTask& t) {
  TaskOptions o;
  o.task = "conv";
  o.d_in = o.d_out = t.channels;
  o.tokens = 1;
  o.image = kDigitsSide;
  if (t.kernel > 1) o.coeffs = {{"k", t.kernel}};
  const Task task = make_task(o);
  return {task.spec.vars, task.baseline, task.spec.valuations[0]};
}

std::vector<float> normal_values(int64_t n, double sigma, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = float(sigma * rng.normal());
  return v;
}

}  // namespace

// The CNN of one run: its parameters, and per convolution layer the operator (as a SynthLayer,
// for its lowered plans) and the parameter names of its weights.
struct VisionNet::Model {
  train::ParamSet params;
  std::vector<std::unique_ptr<SynthLayer>> convs;
  std::vector<std::vector<std::string>> conv_weights;
  int64_t C = 0;
};

namespace {

using Model = VisionNet::Model;

void init_model(Model& m, const Operator& op, const Vars& vars, const Valuation& values,
                const VisionTask& t) {
  const int token_var = op.output.at(0).bare_var();
  const int64_t C = m.C = t.channels;
  Rng rng(t.seed ^ 0x766973696f6eULL);  // "vision": every weight but the operator's
  m.params.add("lift.weight", Tensor::from_vector(normal_values(C, 1.0, rng), {C}), true, false);
  m.params.add("lift.bias", Tensor::from_vector(normal_values(C, 0.5, rng), {C}), true, false);
  for (int64_t l = 0; l < t.layers; ++l) {
    // The operator's init: its own stream per layer, so candidates of any shape pair with the
    // baseline on everything else.
    uint64_t s = t.seed * 0x9e3779b97f4a7c15ULL + uint64_t(l);
    auto layer = std::make_unique<SynthLayer>(op, vars, values, token_var, splitmix64(s));
    std::vector<std::string> names;
    for (size_t w = 0; w < layer->weights().size(); ++w) {
      names.push_back(fmt::format("conv{}.w{}", l, w));
      m.params.add(names.back(), layer->weights()[w], true, true);
    }
    m.params.add(fmt::format("conv{}.bias", l), Tensor::zeros({C}), true, false);
    m.conv_weights.push_back(std::move(names));
    m.convs.push_back(std::move(layer));
  }
  m.params.add("head.weight",
               Tensor::from_vector(normal_values(kClasses * C, 1.0 / std::sqrt(double(C)), rng),
                                   {kClasses, C}),
               true, true);
  m.params.add("head.bias", Tensor::zeros({kClasses}), true, false);
}

// What the backward needs of one forward over n images.
struct Activations {
  int64_t n = 0;
  std::vector<float> x;                 // [n, 64]
  std::vector<std::vector<float>> pre;  // pre-activations: lift [n, C, 64], then each conv's
  std::vector<LoweredCache> caches;     // per conv layer (its registers hold its input)
  Tensor pooled, logits;                // [n, C], [n, 10]
};

void relu_into(const std::vector<float>& pre, Tensor& out) {
  float* o = out.data<float>();
  for (size_t i = 0; i < pre.size(); ++i) o[i] = pre[i] > 0.0f ? pre[i] : 0.0f;
}

Tensor forward(Model& m, Activations& a) {
  const int64_t n = a.n, C = m.C;
  const float* lw = m.params.value("lift.weight").data<float>();
  const float* lb = m.params.value("lift.bias").data<float>();
  a.pre.assign(1, std::vector<float>(size_t(n * C * kP)));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < kP; ++p)
        a.pre[0][size_t((i * C + c) * kP + p)] = lw[c] * a.x[size_t(i * kP + p)] + lb[c];
  Tensor h = Tensor::empty({n, C, kDigitsSide, kDigitsSide});
  relu_into(a.pre[0], h);
  a.caches.assign(m.convs.size(), LoweredCache());
  for (size_t l = 0; l < m.convs.size(); ++l) {
    std::vector<Tensor> w;
    for (const std::string& name : m.conv_weights[l]) w.push_back(m.params.value(name));
    const Tensor z = lowered_forward(m.convs[l]->plan(n), h, w, &a.caches[l]);
    const float* zd = z.data<float>();
    const float* bias = m.params.value(fmt::format("conv{}.bias", l)).data<float>();
    std::vector<float> pre(size_t(n * C * kP));
    for (int64_t i = 0; i < n * C; ++i)
      for (int64_t p = 0; p < kP; ++p) pre[size_t(i * kP + p)] = zd[i * kP + p] + bias[i % C];
    a.pre.push_back(std::move(pre));
    h = Tensor::empty({n, C, kDigitsSide, kDigitsSide});
    relu_into(a.pre.back(), h);
  }
  a.pooled = Tensor::empty({n, C});
  const float* hd = h.data<float>();
  float* pd = a.pooled.data<float>();
  for (int64_t i = 0; i < n * C; ++i) {
    double s = 0.0;
    for (int64_t p = 0; p < kP; ++p) s += hd[i * kP + p];
    pd[i] = float(s / double(kP));
  }
  const Tensor& bias = m.params.value("head.bias");
  a.logits = ops::linear(a.pooled, m.params.value("head.weight"), &bias);
  return a.logits;
}

// Writes every gradient of the mean cross-entropy into the parameters' grads.
void backward(Model& m, const Activations& a, const Tensor& dlogits) {
  const int64_t n = a.n, C = m.C;
  const ops::LinearGrads head =
      ops::linear_backward(a.pooled, m.params.value("head.weight"), dlogits, true);
  m.params.at("head.weight").grad.copy_from(head.dweight);
  m.params.at("head.bias").grad.copy_from(head.dbias);
  // Through the pooling: every position gets its channel's gradient / 64.
  std::vector<float> dh(size_t(n * C * kP));
  const float* dp = head.dx.data<float>();
  for (int64_t i = 0; i < n * C; ++i)
    for (int64_t p = 0; p < kP; ++p) dh[size_t(i * kP + p)] = dp[i] / float(kP);
  for (size_t l = m.convs.size(); l-- > 0;) {
    const std::vector<float>& pre = a.pre[l + 1];
    Tensor dz = Tensor::empty({n, C, kDigitsSide, kDigitsSide});
    float* dzd = dz.data<float>();
    float* db = m.params.at(fmt::format("conv{}.bias", l)).grad.data<float>();
    std::fill(db, db + C, 0.0f);
    for (int64_t i = 0; i < n * C; ++i)
      for (int64_t p = 0; p < kP; ++p) {
        const size_t j = size_t(i * kP + p);
        dzd[j] = pre[j] > 0.0f ? dh[j] : 0.0f;
        db[i % C] += dzd[j];
      }
    const LoweredGrads g = lowered_backward(m.convs[l]->plan(n), a.caches[l], dz);
    for (size_t w = 0; w < g.dweights.size(); ++w)
      m.params.at(m.conv_weights[l][w]).grad.copy_from(g.dweights[w]);
    const std::vector<float> dx = g.dinput.to_vector();
    std::copy(dx.begin(), dx.end(), dh.begin());
  }
  // The lift.
  float* dw = m.params.at("lift.weight").grad.data<float>();
  float* dbl = m.params.at("lift.bias").grad.data<float>();
  std::fill(dw, dw + C, 0.0f);
  std::fill(dbl, dbl + C, 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < kP; ++p) {
        const size_t j = size_t((i * C + c) * kP + p);
        if (a.pre[0][j] <= 0.0f) continue;
        dw[c] += dh[j] * a.x[size_t(i * kP + p)];
        dbl[c] += dh[j];
      }
}

struct RunResult {
  double val_loss = 0, val_accuracy = 0, train_loss = 0, seconds = 0;
  std::vector<double> val_losses, val_accuracies;  // per seed (run_vision)
};

RunResult run_once(const Operator& op, const Vars& vars, const Valuation& values,
                   const VisionTask& t) {
  const auto t0 = std::chrono::steady_clock::now();
  const Split& data = load_split(t.digits);
  VisionNet net(op, vars, values, t);
  train::AdamW optimizer(net.params(), {0.9, 0.95, 1e-8, 0.0});
  train::LrSchedule schedule;
  schedule.kind = "cosine";
  schedule.peak_lr = t.lr;
  schedule.min_lr = t.lr * 0.1;
  schedule.warmup_steps = t.warmup;
  schedule.total_steps = t.steps;
  Rng rng(t.seed ^ 0x6261746368ULL);  // the batches' own stream ("batch")
  RunResult r;
  for (int64_t s = 0; s < t.steps; ++s) {
    std::vector<float> x;
    std::vector<int32_t> y;
    for (int64_t b = 0; b < t.batch; ++b) {
      const int64_t i = int64_t(rng.next_u64() % uint64_t(data.train_n()));
      x.insert(x.end(), data.train_x.begin() + i * kP, data.train_x.begin() + (i + 1) * kP);
      y.push_back(data.train_y[size_t(i)]);
    }
    r.train_loss = net.loss(x, y, true);
    const double norm = train::grad_norm(net.params());
    optimizer.step(schedule.at(s), train::clip_factor(norm, 1.0));
  }
  // Validation: every held-out image, task.batch at a time.
  double loss = 0.0;
  int64_t correct = 0;
  for (int64_t k0 = 0; k0 < data.val_n(); k0 += t.batch) {
    const int64_t n = std::min(t.batch, data.val_n() - k0);
    const std::vector<float> x(data.val_x.begin() + k0 * kP, data.val_x.begin() + (k0 + n) * kP);
    const std::vector<int32_t> y(data.val_y.begin() + k0, data.val_y.begin() + k0 + n);
    int64_t right = 0;
    loss += net.loss(x, y, false, &right) * double(n);
    correct += right;
  }
  r.val_loss = loss / double(data.val_n());
  r.val_accuracy = double(correct) / double(data.val_n());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// The mean over the task's seeds.
RunResult run_vision(const Operator& op, const Vars& vars, const Valuation& values,
                     const VisionTask& t) {
  RunResult mean;
  for (int64_t k = 0; k < t.repeats; ++k) {
    VisionTask one = t;
    one.seed = t.seed + uint64_t(k);
    const RunResult r = run_once(op, vars, values, one);
    mean.val_losses.push_back(r.val_loss);
    mean.val_accuracies.push_back(r.val_accuracy);
    mean.val_loss += r.val_loss / double(t.repeats);
    mean.val_accuracy += r.val_accuracy / double(t.repeats);
    mean.train_loss += r.train_loss / double(t.repeats);
    mean.seconds += r.seconds;
  }
  return mean;
}

RunResult cached_baseline(const VisionTask& t, bool& computed) {
  static std::mutex mutex;
  static std::map<std::string, RunResult> cache;
  const std::string key = t.key();
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    computed = it == cache.end();
    if (!computed) return it->second;
  }
  const Baseline b = dense_baseline(t);
  const RunResult r = run_vision(b.op, b.vars, b.values, t);  // concurrent first calls: both
  std::lock_guard<std::mutex> lock(mutex);
  cache.emplace(key, r);
  return r;
}

void baseline_costs(const VisionTask& t, VisionResult& out) {
  const Baseline b = dense_baseline(t);
  out.baseline_params = param_count(b.op, b.values) * t.layers;
  out.baseline_flops = flops(b.op, b.values) * t.layers;
}

}  // namespace

VisionNet::VisionNet(const Operator& op, const Vars& vars, const Valuation& values,
                     const VisionTask& task)
    : m_(std::make_unique<Model>()) {
  init_model(*m_, op, vars, values, task);
}

VisionNet::~VisionNet() = default;

train::ParamSet& VisionNet::params() {
  return m_->params;
}

double VisionNet::loss(const std::vector<float>& x, const std::vector<int32_t>& y,
                       bool with_backward, int64_t* correct) {
  DSEEK_CHECK(!y.empty() && x.size() == y.size() * size_t(kP),
              "[vision_proxy] {} pixels for {} images", x.size(), y.size());
  Activations a;
  a.n = int64_t(y.size());
  a.x = x;
  const Tensor logits = forward(*m_, a);
  const ops::CrossEntropyResult ce = ops::cross_entropy_forward(logits, y);
  if (correct) {
    *correct = 0;
    const float* ld = logits.data<float>();
    for (int64_t i = 0; i < a.n; ++i) {
      const float* row = ld + i * kClasses;
      *correct += std::max_element(row, row + kClasses) - row == y[size_t(i)] ? 1 : 0;
    }
  }
  if (with_backward) backward(*m_, a, ops::cross_entropy_backward(logits, y, ce));
  return ce.loss;
}

std::string VisionTask::key() const {
  return fmt::format(
      "channels={} layers={} kernel={} steps={} batch={} warmup={} lr={} seed={} repeats={} "
      "digits={}",
      channels, layers, kernel, steps, batch, warmup, lr, seed, repeats, digits);
}

Valuation vision_valuation(const Operator& op, const Vars& vars, const Valuation& values,
                           const VisionTask& task) {
  DSEEK_CHECK(op.complete, "[vision_proxy] the operator is not complete");
  DSEEK_CHECK(int(values.size()) == vars.count(),
              "[vision_proxy] a valuation of {} values for {} variables", values.size(),
              vars.count());
  const std::vector<Size> in = input_sizes(op);
  const std::string shapes = fmt::format("{} -> {}", dims_str(in, vars), dims_str(op.output, vars));
  const int N = op.output.empty() ? -1 : op.output[0].bare_var();
  DSEEK_CHECK(in.size() == 4 && op.output.size() == 4 && N >= 0 &&
                  vars.kinds[size_t(N)] == VarKind::primary && in[0].bare_var() == N,
              "[vision_proxy] the operator {} is not a convolution [N, C, H, W] -> [N, C_out, H, "
              "W] over a batch variable N",
              shapes);
  const int64_t want[4] = {1, task.channels, kDigitsSide, kDigitsSide};
  Valuation v = values;
  std::vector<bool> set(values.size(), false);
  auto assign = [&](const Size& s, int64_t value) {
    const int x = s.bare_var();
    if (x < 0 || vars.kinds[size_t(x)] != VarKind::primary) return;
    DSEEK_CHECK(!set[size_t(x)] || v[size_t(x)] == value,
                "[vision_proxy] the operator {}: {} would be both {} and {}", shapes,
                vars.names[size_t(x)], v[size_t(x)], value);
    v[size_t(x)] = value;
    set[size_t(x)] = true;
  };
  for (int d = 0; d < 4; ++d) {
    assign(in[size_t(d)], want[d]);
    assign(op.output[size_t(d)], want[d]);
  }
  auto check = [&](const Size& s) {
    DSEEK_CHECK(s.eval(v).has_value(),
                "[vision_proxy] the operator {}: size {} is not a positive integer at the proxy's "
                "C = {}, H = W = {}",
                shapes, s.str(vars), task.channels, kDigitsSide);
  };
  for (const Size& s : in) check(s);
  for (const Size& s : op.output) check(s);
  for (const Size& s : op.reduce) check(s);
  for (const auto& w : op.weights)
    for (const Dim& d : w) check(d.size);
  const std::vector<int64_t> got_in = concrete_shape(in, v), got_out = concrete_shape(op.output, v);
  const std::vector<int64_t> target(want, want + 4);
  DSEEK_CHECK(got_in == target && got_out == target,
              "[vision_proxy] the operator {} maps [{}] -> [{}] per image; the proxy needs [{}, "
              "{}, {}] -> [{}, {}, {}]",
              shapes, fmt::join(got_in.begin() + 1, got_in.end(), ", "),
              fmt::join(got_out.begin() + 1, got_out.end(), ", "), task.channels, kDigitsSide,
              kDigitsSide, task.channels, kDigitsSide, kDigitsSide);
  return v;
}

VisionResult vision_baseline(const VisionTask& task) {
  check_task(task);
  bool computed = false;
  const RunResult base = cached_baseline(task, computed);
  VisionResult out;
  baseline_costs(task, out);
  out.params = out.baseline_params;
  out.flops = out.baseline_flops;
  out.val_loss = out.baseline_val_loss = base.val_loss;
  out.val_accuracy = out.baseline_val_accuracy = base.val_accuracy;
  out.val_losses = out.baseline_val_losses = base.val_losses;
  out.val_accuracies = out.baseline_val_accuracies = base.val_accuracies;
  out.train_loss = base.train_loss;
  out.seconds = base.seconds;
  out.baseline_seconds = computed ? base.seconds : 0.0;
  return out;
}

VisionResult vision_train(const Operator& op, const Vars& vars, const Valuation& values,
                          const VisionTask& task) {
  check_task(task);
  const Valuation v = vision_valuation(op, vars, values, task);
  const int N = op.output[0].bare_var();
  VisionResult out;
  baseline_costs(task, out);
  out.params = param_count(op, v) * task.layers;
  out.flops = flops(op, v) * task.layers;
  // The operator is checked (per image, lowerable) before the baseline's training is spent.
  SynthLayer(op, vars, v, N, 0).plan(1);
  bool computed = false;
  const RunResult base = cached_baseline(task, computed);
  out.baseline_val_loss = base.val_loss;
  out.baseline_val_accuracy = base.val_accuracy;
  out.baseline_seconds = computed ? base.seconds : 0.0;
  out.baseline_val_losses = base.val_losses;
  out.baseline_val_accuracies = base.val_accuracies;
  const RunResult r = run_vision(op, vars, v, task);
  out.val_loss = r.val_loss;
  out.val_accuracy = r.val_accuracy;
  out.train_loss = r.train_loss;
  out.seconds = r.seconds;
  out.val_losses = r.val_losses;
  out.val_accuracies = r.val_accuracies;
  std::vector<double> rel, acc;
  for (size_t s = 0; s < r.val_losses.size(); ++s) {
    rel.push_back(r.val_losses[s] / base.val_losses[s] - 1.0);
    acc.push_back(r.val_accuracies[s] - base.val_accuracies[s]);
  }
  const PairedDiff rd = mean_and_se(rel), ad = mean_and_se(acc);
  out.rel_diff = rd.mean;
  out.rel_diff_se = rd.se;
  out.acc_diff = ad.mean;
  out.acc_diff_se = ad.se;
  return out;
}

}  // namespace dseek::synth
