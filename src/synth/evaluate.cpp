// Candidate checks and the analytic + latency + teacher-fit evaluator (see evaluate.h).
#include "synth/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>

#include "core/cuda.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "synth/cost.h"
#include "synth/interpreter.h"
#include "synth/lower.h"
#include "synth/synth_layer.h"
#include "train/optimizer.h"
#include "train/param.h"

namespace dseek::synth {

namespace {

std::vector<float> normal_values(int64_t n, double sigma, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = float(sigma * rng.normal());
  return v;
}

Tensor normal_tensor(const Shape& shape, double sigma, Rng& rng) {
  return Tensor::from_vector(normal_values(shape_numel(shape), sigma, rng), shape);
}

// Fan-in scaled init as SynthLayer's: n = Π(reduce extents) terms of W weights each, so
// σ = n^(−1/(2W)) keeps Var(y) ≈ Var(x).
double init_sigma(const Operator& op, const Valuation& values) {
  double terms = 1.0;
  for (int64_t e : concrete_shape(op.reduce, values)) terms *= double(e);
  return op.weights.empty() ? 1.0 : std::pow(terms, -0.5 / double(op.weights.size()));
}

std::vector<Tensor> init_weights(const LoweredPlan& plan, double sigma, Rng& rng) {
  std::vector<Tensor> w;
  for (const Shape& s : plan.weight_shapes) w.push_back(normal_tensor(s, sigma, rng));
  return w;
}

double mean_square(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += double(x) * double(x);
  return s / double(std::max<size_t>(v.size(), 1));
}

double relative_error(const std::vector<float>& y, const std::vector<float>& target) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = double(y[i]) - double(target[i]);
    s += d * d;
  }
  return s / double(std::max<size_t>(y.size(), 1)) / mean_square(target);
}

double measure_latency(const Operator& op, const Valuation& values, Device device, int runs) {
  const LoweredPlan plan = lower(op, values);
  Rng rng(7);
  const Tensor x = normal_tensor(plan.input_shape, 1.0, rng).to(device);
  std::vector<Tensor> w = init_weights(plan, 0.1, rng);
  for (Tensor& t : w) t = t.to(device);
  auto run_once = [&] {
    const Tensor y = lowered_forward(plan, x, w);
    if (device == Device::CUDA) cuda::synchronize();
  };
  run_once();  // warm-up: first-touch allocations, BLAS/cuBLAS set-up
  std::vector<double> ms;
  for (int r = 0; r < std::max(runs, 1); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run_once();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

std::string check_lowering(const Operator& op, const Valuation& values, uint64_t seed) {
  try {
    const LoweredPlan plan = lower(op, values);
    Rng rng(seed);
    // The same f32 values feed both, so they differ only by rounding of the sums.
    const std::vector<float> x = normal_values(shape_numel(plan.input_shape), 1.0, rng);
    std::vector<Tensor> w;
    std::vector<std::vector<double>> wd;
    for (const Shape& s : plan.weight_shapes) {
      const std::vector<float> v = normal_values(shape_numel(s), 1.0, rng);
      w.push_back(Tensor::from_vector(v, s));
      wd.emplace_back(v.begin(), v.end());
    }
    const std::vector<double> want =
        interpret(op, values, std::vector<double>(x.begin(), x.end()), wd);
    const std::vector<float> got =
        lowered_forward(plan, Tensor::from_vector(x, plan.input_shape), w).to_vector();
    if (got.size() != want.size())
      return fmt::format("lowered output has {} elements, the interpreter's {}", got.size(),
                         want.size());
    double scale = 0.0, worst = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::abs(want[i]));
      const double d = std::abs(double(got[i]) - want[i]);
      worst = std::isnan(d) ? INFINITY : std::max(worst, d);
    }
    if (worst > 1e-4 * std::max(scale, 1e-30))
      return fmt::format(
          "lowered forward differs from the interpreter: max |diff| {:.3g} vs max "
          "|value| {:.3g}",
          worst, scale);
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

double teacher_fit(const Task& task, const Operator& op, const Valuation& values,
                   const TeacherFitOptions& o) {
  DSEEK_CHECK(o.steps >= 0 && o.lr > 0.0, "[synth] teacher-fit: steps {} or lr {} out of range",
              o.steps, o.lr);
  Rng data_rng(o.seed);
  const LoweredPlan teacher = lower(task.baseline, values);
  const LoweredPlan student = lower(op, values);
  DSEEK_CHECK(shape_numel(student.input_shape) == shape_numel(teacher.input_shape) &&
                  shape_numel(student.output_shape) == shape_numel(teacher.output_shape),
              "[synth] teacher-fit: the candidate's shapes {} -> {} are not the task's {} -> {}",
              shape_str(student.input_shape), shape_str(student.output_shape),
              shape_str(teacher.input_shape), shape_str(teacher.output_shape));
  const Tensor x_train = normal_tensor(teacher.input_shape, 1.0, data_rng);
  const Tensor x_val = normal_tensor(teacher.input_shape, 1.0, data_rng);
  const std::vector<Tensor> tw = init_weights(teacher, init_sigma(task.baseline, values), data_rng);
  const std::vector<float> y_train = lowered_forward(teacher, x_train, tw).to_vector();
  const std::vector<float> y_val = lowered_forward(teacher, x_val, tw).to_vector();
  const double target_ms = mean_square(y_train);
  const Tensor xs = x_train.reshape(student.input_shape);

  Rng init_rng(o.seed ^ 0x7e4c8e2full);
  // The candidate's weights as trainable parameters without weight decay, so train::AdamW is
  // plain Adam; w holds handles onto the parameters' values, which the optimizer updates in place.
  train::ParamSet params;
  for (const Tensor& t : init_weights(student, init_sigma(op, values), init_rng))
    params.add("w" + std::to_string(params.size()), t, /*trainable=*/true, /*decay=*/false);
  std::vector<Tensor> w;
  for (const train::Param& p : params.all()) w.push_back(p.value);
  train::AdamWConfig adam_config;
  adam_config.beta1 = 0.9;
  adam_config.beta2 = 0.999;
  adam_config.eps = 1e-8;
  adam_config.weight_decay = 0.0;
  train::AdamW adam(params, adam_config);
  const double grad_scale = 2.0 / (double(y_train.size()) * target_ms);  // d(relative MSE)/dy
  for (int step = 1; step <= o.steps; ++step) {
    LoweredCache cache;
    const std::vector<float> y = lowered_forward(student, xs, w, &cache).to_vector();
    std::vector<float> dy(y.size());
    for (size_t i = 0; i < y.size(); ++i) dy[i] = float(grad_scale * (double(y[i]) - y_train[i]));
    const LoweredGrads g =
        lowered_backward(student, cache, Tensor::from_vector(dy, student.output_shape));
    for (size_t i = 0; i < w.size(); ++i) params.all()[i].grad.copy_from(g.dweights[i]);
    adam.step(o.lr);
  }
  const std::vector<float> y =
      lowered_forward(student, x_val.reshape(student.input_shape), w).to_vector();
  return relative_error(y, y_val);
}

Evaluator make_analytic_evaluator(const Task& task, const AnalyticOptions& options) {
  auto timing = std::make_shared<std::mutex>();
  return [task, options, timing](const Operator& op, const Valuation& values) {
    Evaluation e;
    try {
      e.flops = flops(op, values);
      e.params = param_count(op, values);
      // A projection's replacement must not mix tokens: SynthLayer refuses such operators.
      if (task.token_var >= 0) SynthLayer(op, task.spec.vars, values, task.token_var, 0);
      if (options.quality == Quality::TeacherFit) {
        e.quality = teacher_fit(task, op, values, options.fit);
        if (!std::isfinite(e.quality)) {
          e.error = "[synth] teacher-fit diverged (non-finite validation error)";
          return e;
        }
      } else if (options.quality == Quality::Lm) {
        const ProxyResult r = proxy_train(op, task.spec.vars, values, options.proxy);
        e.quality = r.val_loss / r.baseline_val_loss - 1.0;
        if (!std::isfinite(e.quality)) {
          e.error = "[synth] proxy training diverged (non-finite validation loss)";
          return e;
        }
      }
      // One timing at a time: parallel jobs would otherwise time each other's contention.
      std::lock_guard<std::mutex> lock(*timing);
      e.latency_ms = measure_latency(op, values, options.device, options.latency_runs);
      e.ok = true;
    } catch (const Error& err) {
      e.error = err.what();
    }
    return e;
  };
}

}  // namespace dseek::synth
