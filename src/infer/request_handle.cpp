// RequestHandle (the submitter's end of one request's event stream) and EngineRejected's HTTP
// mapping. The scheduler thread pushes events; an HTTP handler thread pops them.
#include <utility>

#include "infer/engine.h"

namespace dseek {

std::optional<EngineEvent> RequestHandle::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  // After the kFinished event was taken nothing else can arrive: answer at once, not at timeout.
  if (events_.empty() && finished_) return std::nullopt;
  if (!ready_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  EngineEvent event = std::move(events_.front());
  events_.pop_front();
  return event;
}

void RequestHandle::cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
}

bool RequestHandle::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

void RequestHandle::push(EngineEvent event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finished_) return;  // nothing follows kFinished
    if (event.kind == EngineEvent::Kind::kFinished) finished_ = true;
    events_.push_back(std::move(event));
  }
  ready_.notify_all();
}

int EngineRejected::http_status() const {
  switch (reason_) {
    case Reason::kInvalid:
    case Reason::kTooLarge:
      return 400;
    case Reason::kQueueFull:
      return 429;
    case Reason::kShuttingDown:
      return 503;
  }
  return 500;
}

}  // namespace dseek
