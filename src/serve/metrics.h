// Server metrics in Prometheus' text exposition format (version 0.0.4): the engine's gauges and
// counters (queue depth, running requests, KV cache use, tokens/s, speculative acceptance) read
// from EngineStats at scrape time, plus the server's own counters (HTTP responses by status) and
// histograms (request duration, time to first token). Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "infer/engine.h"

namespace dseek::serve {

// A cumulative histogram with fixed upper bounds (seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // "<name>_bucket{le="…"} n" lines, then _sum and _count.
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), last = +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void on_response(int status);          // every HTTP response
  void on_request_done(double seconds);  // a generation request, whole duration
  void on_first_token(double seconds);   // its time to first token
  // The exposition text; `stats` is the engine's state now.
  std::string render(const EngineStats& stats) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, uint64_t> responses_;
  Histogram duration_, ttft_;
};

}  // namespace dseek::serve
