#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace dseek::serve {
namespace {

void gauge(std::string& out, const char* name, const char* help, double value) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", name, help, value);
}

void counter(std::string& out, const char* name, const char* help, uint64_t value) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out = fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
  return out;
}

Metrics::Metrics()
    : duration_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}) {}

void Metrics::on_response(int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++responses_[status];
}

void Metrics::on_request_done(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  duration_.observe(seconds);
}

void Metrics::on_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ttft_.observe(seconds);
}

std::string Metrics::render(const EngineStats& s) const {
  std::string out;
  gauge(out, "dseek_requests_waiting", "Requests queued for admission.", double(s.waiting));
  gauge(out, "dseek_requests_running", "Requests in the running batch.", double(s.running));
  const double usage =
      s.cache_pages_total > 0 ? double(s.cache_pages_used) / double(s.cache_pages_total) : 0.0;
  gauge(out, "dseek_kv_cache_usage_ratio", "Fraction of KV cache pages in use (0..1).", usage);
  gauge(out, "dseek_kv_cache_pages_total", "KV cache pages.", double(s.cache_pages_total));
  gauge(out, "dseek_kv_cache_pages_used", "KV cache pages held by requests.",
        double(s.cache_pages_used));
  gauge(out, "dseek_kv_cache_pages_cached", "KV cache pages kept for prefix reuse.",
        double(s.cache_pages_cached));
  gauge(out, "dseek_generation_tokens_per_second",
        "Generated tokens per second over the last few seconds.", s.tokens_per_second);
  counter(out, "dseek_requests_finished_total", "Requests finished (stop or length).",
          s.requests_finished);
  counter(out, "dseek_requests_cancelled_total", "Requests cancelled (client gone, timeout).",
          s.requests_cancelled);
  counter(out, "dseek_requests_rejected_total", "Requests refused by the engine.",
          s.requests_rejected);
  counter(out, "dseek_prompt_tokens_total", "Prompt tokens of admitted requests.", s.prompt_tokens);
  counter(out, "dseek_prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.",
          s.prefix_hit_tokens);
  counter(out, "dseek_generation_tokens_total", "Generated tokens.", s.generated_tokens);
  counter(out, "dseek_engine_steps_total", "Batched forward steps.", s.steps);
  counter(out, "dseek_spec_draft_tokens_total", "MTP draft tokens proposed.", s.spec_drafted);
  counter(out, "dseek_spec_accepted_tokens_total", "MTP draft tokens accepted.", s.spec_accepted);
  gauge(out, "dseek_spec_acceptance_ratio", "Accepted / proposed MTP draft tokens (0 when none).",
        s.spec_drafted > 0 ? double(s.spec_accepted) / double(s.spec_drafted) : 0.0);
  std::lock_guard<std::mutex> lock(mutex_);
  out +=
      "# HELP dseek_http_responses_total HTTP responses by status code.\n"
      "# TYPE dseek_http_responses_total counter\n";
  for (const auto& [status, count] : responses_) {
    out += fmt::format("dseek_http_responses_total{{code=\"{}\"}} {}\n", status, count);
  }
  out += duration_.render("dseek_request_duration_seconds",
                          "Duration of completion requests, from arrival to the last byte.");
  out += ttft_.render("dseek_time_to_first_token_seconds",
                      "Time from a completion request's arrival to its first token.");
  return out;
}

}  // namespace dseek::serve
