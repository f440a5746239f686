// The NaN/Inf check of the GPU's FP8 quantisations, immediate or deferred.
//
// A quantisation kernel sets a device int when its input holds a NaN or Inf (fp8.h: such input is
// an error naming the tensor). Reading that int back waits for the stream, and a stalled queue
// leaves the GPU idle while the host launches the next kernels: an FP8 training step quantises a
// few hundred tensors, and a synchronisation each cost milliseconds a step. So:
//   - by default a check is immediate: Fp8NanCheck::done() reads its flag and throws;
//   - inside a DeferredFp8Checks scope the flags are slots of one device array that
//     DeferredFp8Checks::check() reads in one copy, throwing the first set slot's message (the
//     order the quantisations ran in). The work between the NaN and the check runs on garbage;
//     nothing of it is kept once check() throws. TrainModel's forward + backward is one such scope.
// Scopes nest (an inner one joins the outer); they are per thread. On the CPU the quantisers find
// the offending element themselves and never use this.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace dseek::ops {

class DeferredFp8Checks {
 public:
  DeferredFp8Checks();
  ~DeferredFp8Checks();  // frees the flags unread (check() reads them)
  DeferredFp8Checks(const DeferredFp8Checks&) = delete;
  DeferredFp8Checks& operator=(const DeferredFp8Checks&) = delete;

  // Reads every flag since the scope began or the last check (one synchronisation); throws the
  // message of the first that is set. A no-op for a scope nested in another.
  void check();

  // The innermost active scope of this thread that owns its flags, or null.
  static DeferredFp8Checks* active();

  // A zeroed device int for a quantisation whose error message is `what` (full capacity: checks
  // the flags so far and reuses them).
  int* slot(std::string what);

 private:
  DeferredFp8Checks* outer_ = nullptr;
  bool owns_ = false;     // false when nested in another scope
  int* flags_ = nullptr;  // device [kSlots]
  std::vector<std::string> messages_;
};

// One quantisation's flag: pass flag() to the kernel, then call done() (the error, if any, is
// `what`, e.g. "[quantize_fp8] 'linear_fp8_train x': input [4096, 2048] contains NaN or Inf").
class Fp8NanCheck {
 public:
  explicit Fp8NanCheck(std::string what);
  ~Fp8NanCheck();
  Fp8NanCheck(const Fp8NanCheck&) = delete;
  Fp8NanCheck& operator=(const Fp8NanCheck&) = delete;

  int* flag() const { return flag_; }
  void done();  // immediate: reads the flag (waits for the stream) and throws `what` if set

 private:
  std::string what_;
  int* flag_ = nullptr;
  bool owned_ = false;  // immediate: a flag of its own, freed here
};

}  // namespace dseek::ops
