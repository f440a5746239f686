#include "ops/fp8_nan_check.h"

#include <algorithm>
#include <utility>

#include "core/cuda.h"
#include "core/error.h"

namespace dseek::ops {
namespace {

constexpr size_t kSlots = 1024;  // flags a scope holds before check() must read them

thread_local DeferredFp8Checks* current_scope = nullptr;

}  // namespace

DeferredFp8Checks::DeferredFp8Checks() : outer_(current_scope), owns_(current_scope == nullptr) {
  current_scope = this;
}

DeferredFp8Checks::~DeferredFp8Checks() {
  current_scope = outer_;
  if (flags_) dseek::cuda::free(flags_);
}

DeferredFp8Checks* DeferredFp8Checks::active() {
  DeferredFp8Checks* s = current_scope;
  while (s && !s->owns_) s = s->outer_;
  return s;
}

int* DeferredFp8Checks::slot(std::string what) {
  if (!flags_) {
    flags_ = static_cast<int*>(dseek::cuda::alloc(kSlots * sizeof(int)));
    dseek::cuda::fill_bytes(flags_, 0, kSlots * sizeof(int));
  }
  if (messages_.size() == kSlots) check();  // full: read these and start again
  messages_.push_back(std::move(what));
  return flags_ + (messages_.size() - 1);
}

void DeferredFp8Checks::check() {
  if (!owns_ || messages_.empty()) return;
  std::vector<int> set(messages_.size());
  dseek::cuda::copy_to_host(set.data(), flags_, set.size() * sizeof(int));
  std::vector<std::string> messages = std::move(messages_);
  messages_.clear();
  dseek::cuda::fill_bytes(flags_, 0, set.size() * sizeof(int));
  const auto first = std::find_if(set.begin(), set.end(), [](int f) { return f != 0; });
  if (first != set.end()) throw Error(messages[size_t(first - set.begin())]);
}

Fp8NanCheck::Fp8NanCheck(std::string what) : what_(std::move(what)) {
  if (DeferredFp8Checks* scope = DeferredFp8Checks::active()) {
    flag_ = scope->slot(what_);
    return;
  }
  flag_ = static_cast<int*>(dseek::cuda::alloc(sizeof(int)));
  dseek::cuda::fill_bytes(flag_, 0, sizeof(int));
  owned_ = true;
}

Fp8NanCheck::~Fp8NanCheck() {
  if (owned_) dseek::cuda::free(flag_);
}

void Fp8NanCheck::done() {
  if (!owned_) return;  // the scope reads it
  int set = 0;
  dseek::cuda::copy_to_host(&set, flag_, sizeof(int));  // waits for the kernel
  if (set != 0) throw Error(what_);
}

}  // namespace dseek::ops
