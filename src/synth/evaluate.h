// Scoring a complete candidate: what the search (search.h) asks of an evaluator, the interpreter
// check every candidate passes before it is evaluated, and the analytic + latency evaluator that
// needs no proxy training:
//
//   flops, params  analytic (cost.h) at the valuation
//   latency_ms     the median of a few timed runs of the lowered forward (lower.h) on the
//                  evaluator's device (the tensors' device decides: CPU here, CUDA when asked);
//                  timings of parallel jobs are serialised by a lock so they do not overlap
//   quality        teacher-fit (lower is better): the validation error of fitting the task's dense
//                  layer with random weights (a random dense teacher) by full-batch Adam on the
//                  candidate, relative: mean((y − y*)²) / mean(y*²) on fresh inputs. 0 means the
//                  candidate represents the teacher, ~1 that it learned nothing. A cheap, real
//                  accuracy signal for projection layers — not a language-model loss.
//                  Or lm: proxy training (proxy.h) of a tiny language model with the candidate in
//                  the task's projections, quality = the mean over seeds of val_loss_s /
//                  baseline_val_loss_s − 1, paired by seed (0: as good as the dense model, 0.01:
//                  1% worse). Seconds per candidate rather than
//                  milliseconds, and noisy (docs/SYNTH.md, Proxy training): set its repeats.
//                  Or vision (conv): a small CNN on the UCI digits (vision_proxy.h) with the
//                  candidate in its convolutions, quality = the same paired relative change of
//                  validation loss against the dense k×k convolution.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "synth/lower.h"
#include "synth/operator.h"
#include "synth/proxy.h"
#include "synth/task.h"
#include "synth/vision_proxy.h"

namespace dseek::synth {

// Timing a lowered plan: the evaluator's latency and `dseek synth bench`'s table.
struct PlanInputs {
  Tensor input;                 // [plan.input_shape] f32 on the host
  std::vector<Tensor> weights;  // [plan.weight_shapes[w]] f32 on the host
};
// Uniform random values of unit variance for the input and of the fan-in scale of SynthLayer's
// init for the weights (so outputs stay of unit scale, also in bf16). A fast counter-based fill:
// real-model shapes have tens of millions of elements.
PlanInputs random_plan_inputs(const Operator& op, const Valuation& values, const LoweredPlan& plan,
                              uint64_t seed);

struct LatencyOptions {
  Device device = Device::CPU;
  DType dtype = DType::F32;  // bf16: input and weights in bf16 (a GPU, forward only; lower.h)
  bool backward = false;     // also time forward + backward (f32)
  int warmup = 1;            // untimed runs first (allocations, BLAS/cuBLAS set-up)
  int runs = 5;              // timed runs; medians are reported
  double max_ms = 0.0;       // > 0: stop once the timed runs took this long (after at least one)
  bool keep_output = false;  // return the last forward's output (f32, on the host)
};

struct Latency {
  double forward_ms = 0.0;  // median over the timed runs; each ends with a device synchronise
  double train_ms = 0.0;    // forward + backward, median (options.backward)
  int runs = 0;             // timed runs made (fewer than asked when max_ms cut them short)
  Tensor output;            // options.keep_output
};

// Moves the inputs to options.device in options.dtype and times the plan there.
Latency measure_latency(const LoweredPlan& plan, const PlanInputs& inputs,
                        const LatencyOptions& options);

struct Evaluation {
  int64_t flops = 0, params = 0;
  double latency_ms = 0.0;
  double quality = 0.0;  // lower is better
  bool ok = false;
  std::string error;  // why not ok
};

using Evaluator = std::function<Evaluation(const Operator&, const Valuation&)>;

// Lowers `op` and compares its forward with the reference interpreter on random inputs and
// weights (seeded by `seed`). Returns "" when they agree (max |diff| <= 1e-4 · max |reference|),
// else what differs; a lowering that throws returns its message.
std::string check_lowering(const Operator& op, const Valuation& values, uint64_t seed);

struct TeacherFitOptions {
  int steps = 300;    // full-batch Adam steps
  double lr = 1e-2;   // Adam, betas (0.9, 0.999)
  uint64_t seed = 1;  // teacher weights and data (the same for every candidate)
};

// None: quality stays 0 (FLOPs/latency only).
enum class Quality { None, TeacherFit, Lm, Vision };

struct AnalyticOptions {
  Device device = Device::CPU;  // where latency is measured
  int latency_runs = 5;         // timed runs after one warm-up; the median is reported
  Quality quality = Quality::TeacherFit;
  TeacherFitOptions fit;
  ProxyTask proxy;    // Quality::Lm; its kind must be the task's (lm-proj or lm-ffn)
  VisionTask vision;  // Quality::Vision (the conv task)
};

// The analytic + latency (+ teacher-fit) evaluator of `task`. Thread-safe: the search calls it
// from several jobs at once. For lm tasks a candidate that mixes tokens (not usable as a
// projection, synth_layer.h) is not ok.
Evaluator make_analytic_evaluator(const Task& task, const AnalyticOptions& options);

// The teacher-fit error of `op` against `task.baseline` at `values` (evaluate.h's header).
double teacher_fit(const Task& task, const Operator& op, const Valuation& values,
                   const TeacherFitOptions& options);

}  // namespace dseek::synth
