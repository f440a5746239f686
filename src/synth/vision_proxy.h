// Vision proxy training: the quality of a synthesised convolution as the validation loss of a
// small CNN, trained on a real image set, in which it replaces the convolutions (issue 7's
// "vision: a small CNN on a real small image data set from a package"; proxy.h is the language
// twin).
//
//   VisionResult r = vision_train(op, vars, values, task);
//   r.rel_diff ± r.rel_diff_se: the paired relative change of validation loss against the dense
//   k×k convolution; r.val_accuracy vs r.baseline_val_accuracy; r.flops vs r.baseline_flops.
//
// Data: the UCI digits (data/digits.h: 1,797 images 8×8, 17 grey levels, 10 classes) from
// Debian's python3-sklearn. A fixed split: every 5th image (index 4, 9, ...) is held out (359
// images), the other 1,438 train. Pixels are standardised by the training pixels' mean and sd.
//
// The model, per image x [1, 8, 8]:
//   h0 = ReLU(a ⊙ x + b)                       lift: a per-pixel linear 1 → C (a 1×1 conv), a, b
//   [C] h_l = ReLU(op_l(h_{l−1}) + c_l)            l = 1..task.layers: the CANDIDATE [C, 8, 8] →
//   [C, 8, 8]
//                                              with its own weights per layer, and a bias per
//                                              channel
//   p = mean over the 64 positions of h_L      global average pooling → [C]
//   logits = V·p + e                           [10]; loss: cross-entropy
// The convolutions are the only place where pixels meet their neighbours, so the operator decides
// what the network can see: with the dense 3×3 baseline and 2 layers each output sees a 5×5
// window. Trained with train::AdamW (β 0.9/0.95, no weight decay, clip 1.0; linear warm-up, then
// cosine to 10% of task.lr) on task.batch images drawn at random each step. The operator's
// weights start as synth_layer.h says (fan-in scaled, Var(y) ≈ Var(x)); a, b, c, V, e from the
// seed (a ~ N(0, 1), b ~ N(0, 0.5²), c = 0, V ~ N(0, 1/C), e = 0).
//
// Paired by seed as proxy.h: seed s's operator run and baseline run share the data order and
// every weight but the operator's, so the relative difference of validation loss is taken per seed
// and averaged (rel_diff ± rel_diff_se), and so is the difference of accuracy (acc_diff, absolute).
// The dense operator as the candidate gives the baseline's numbers bit for bit. The baseline (the
// conv task's dense k×k operator, task.h) is computed once per task and process and cached.
// Deterministic for a build and a thread count. The default task takes a few seconds of one core
// per run (300 steps of 32 images).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "synth/operator.h"
#include "synth/size.h"

namespace dseek::train {
class ParamSet;
}

namespace dseek::synth {

struct VisionTask {
  int64_t channels = 16;  // C (the operator maps [C, 8, 8] → [C, 8, 8])
  int64_t layers = 2;     // convolutions, each the operator with its own weights
  int64_t kernel = 3;     // the dense baseline's k
  int64_t steps = 300, batch = 32, warmup = 20;
  double lr = 2e-2;
  uint64_t seed = 0;
  int64_t repeats = 1;  // seeds seed .. seed + repeats − 1, for the operator and the baseline
  std::string digits;   // the data file; "" = data/digits.h's search (find_digits)

  // Every field, for cache keys and reports.
  std::string key() const;
};

struct VisionResult {
  // Means over the task's repeats.
  double val_loss = 0.0, val_accuracy = 0.0;  // cross-entropy (nats), fraction correct
  double train_loss = 0.0;                    // the last step's
  double baseline_val_loss = 0.0, baseline_val_accuracy = 0.0;
  // Per image, summed over the task's layers (synth/cost.h FLOPs, 2 per multiply-add), and those
  // of the dense k×k convolutions.
  int64_t params = 0, flops = 0, baseline_params = 0, baseline_flops = 0;
  double seconds = 0.0;           // this operator's training and validation, all repeats
  double baseline_seconds = 0.0;  // when this call computed the baseline; 0 from the cache
  // Per seed (seed, seed + 1, ...), paired.
  std::vector<double> val_losses, baseline_val_losses, val_accuracies, baseline_val_accuracies;
  double rel_diff = 0.0, rel_diff_se = 0.0;  // mean of val_loss_s / baseline_s − 1, its s.e.
  double acc_diff = 0.0, acc_diff_se = 0.0;  // mean of accuracy_s − baseline_s, its s.e.
};

// The valuation under which `op` ([N, X, Y, Z] → [N, X', Y', Z'], N a primary variable) maps
// [C, 8, 8] → [C, 8, 8] per image: `values` with N = 1 and every input or output dim 1–3 that is
// a bare primary variable set to C or 8 (so a search's candidate keeps its coefficients and takes
// the proxy's sizes). Throws dseek::Error when the operator is not a convolution-shaped
// [N, ...] → [N, ...], a variable would need two values, or a size is then not a positive
// integer or not the proxy's.
Valuation vision_valuation(const Operator& op, const Vars& vars, const Valuation& values,
                           const VisionTask& task);

// Trains the proxy with `op` in every convolution. Throws dseek::Error when the operator does not
// fit (vision_valuation) or mixes images (synth_layer.h), the task is invalid or the digits cannot
// be found or read.
VisionResult vision_train(const Operator& op, const Vars& vars, const Valuation& values,
                          const VisionTask& task);

// The dense baseline alone (val_* = baseline_val_*; cached as above).
VisionResult vision_baseline(const VisionTask& task);

// One seed's network as every run trains it (public for the gradient test).
class VisionNet {
 public:
  // `values` fits the proxy (vision_valuation's result); the weights are drawn from task.seed as
  // the header says.
  VisionNet(const Operator& op, const Vars& vars, const Valuation& values, const VisionTask& task);
  ~VisionNet();
  // lift.weight, lift.bias, conv<l>.w<j> (the operator's weights), conv<l>.bias, head.weight,
  // head.bias.
  train::ParamSet& params();
  // The mean cross-entropy of images x [n, 64] (standardised pixels) with labels y [n]; with
  // `backward` every parameter's grad is overwritten with its gradient. `correct` gets the count
  // of images whose largest logit is their label.
  double loss(const std::vector<float>& x, const std::vector<int32_t>& y, bool backward,
              int64_t* correct = nullptr);

  struct Model;  // defined in vision_proxy.cpp

 private:
  std::unique_ptr<Model> m_;
};

}  // namespace dseek::synth
