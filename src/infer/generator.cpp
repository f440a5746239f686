#include "infer/generator.h"

#include <algorithm>
#include <cassert>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "infer/stop_strings.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace dseek {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The last row of logits [T, V] as a span over contiguous f32 (copied only if it is a view).
struct LastRow {
  Tensor row;
  std::span<const float> values() const { return {row.data<float>(), size_t(row.numel())}; }
};

LastRow last_row(const Tensor& logits, int64_t vocab) {
  assert(logits.dim() == 2 && logits.size(1) == vocab);
  (void)vocab;
  Tensor row = logits.select(0, logits.size(0) - 1);
  // A GPU model's logits stay on the device: only the row the sampler needs comes back.
  if (row.is_cuda()) row = row.to(Device::CPU);
  if (row.dtype() != DType::F32 || !row.is_contiguous()) row = row.to_f32();
  return {row};
}

}  // namespace

double GenerationResult::prefill_tokens_per_second() const {
  return prefill_seconds > 0.0 ? double(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerationResult::decode_tokens_per_second() const {
  const size_t forwards = ids.empty() ? 0 : ids.size() - 1;
  return decode_seconds > 0.0 ? double(forwards) / decode_seconds : 0.0;
}

Generator::Generator(Model& model, int64_t context_tokens) : model_(model) {
  const int64_t max_positions = model.config().max_position_embeddings;
  DSEEK_CHECK(context_tokens >= 0, "[generate] context: must be >= 0, got {}", context_tokens);
  context_tokens_ = context_tokens == 0 ? max_positions : std::min(context_tokens, max_positions);
}

Generator::~Generator() = default;

void Generator::reset() {
  cache_.reset();
  cached_ids_.clear();
}

GenerationResult Generator::generate(const std::vector<int32_t>& prompt,
                                     const GenerationOptions& options) {
  const ModelConfig& config = model_.config();
  DSEEK_CHECK(!prompt.empty(), "[generate] prompt: no tokens");
  DSEEK_CHECK(options.max_new_tokens >= 0, "[generate] max_new_tokens: must be >= 0, got {}",
              options.max_new_tokens);
  DSEEK_CHECK(options.stop.empty() || options.tokenizer != nullptr,
              "[generate] stop: stop strings need a tokenizer");
  for (int32_t id : prompt) {
    DSEEK_CHECK(id >= 0 && id < config.vocab_size,
                "[generate] prompt: id {} is outside the vocabulary (vocab_size {})", id,
                config.vocab_size);
  }
  DSEEK_CHECK(int64_t(prompt.size()) < context_tokens_,
              "[generate] prompt: {} tokens leave no room in a context of {} tokens", prompt.size(),
              context_tokens_);
  Sampler sampler(options.sampling);
  StopStringMatcher stops(options.stop);

  std::vector<int32_t> eos = options.eos_ids;
  if (!options.ignore_eos) {
    for (int64_t id : config.eos_token_ids) eos.push_back(int32_t(id));
    if (options.tokenizer != nullptr) {
      try {
        eos.push_back(options.tokenizer->eos_id());
      } catch (const Error&) {
        // A tokenizer without an EOS token: the config's ids (if any) still apply.
      }
    }
  } else {
    eos.clear();
  }
  auto is_eos = [&](int32_t id) { return std::find(eos.begin(), eos.end(), id) != eos.end(); };

  // Reuse the cached prefix; at least the last prompt token is run again for its logits.
  if (!cache_) cache_ = model_.new_cache(context_tokens_);
  size_t keep = 0;
  while (keep < cached_ids_.size() && keep + 1 < prompt.size() &&
         cached_ids_[keep] == prompt[keep]) {
    ++keep;
  }
  cache_->truncate(int64_t(keep));
  cached_ids_.assign(prompt.begin(), prompt.begin() + std::ptrdiff_t(keep));

  GenerationResult result;
  result.reused_tokens = int64_t(keep);
  result.prompt_tokens = int64_t(prompt.size() - keep);
  result.finish_reason = "length";
  std::vector<int32_t> history = prompt;  // for the repetition penalty
  std::optional<StreamDecoder> decoder;
  if (options.tokenizer != nullptr) decoder.emplace(*options.tokenizer, /*skip_special=*/true);
  auto emit = [&](const std::string& text) {
    if (!text.empty() && options.on_text) options.on_text(text);
  };

  const std::vector<int32_t> fresh(prompt.begin() + std::ptrdiff_t(keep), prompt.end());
  Clock::time_point start = Clock::now();
  Tensor logits = model_.forward(fresh, *cache_);
  cached_ids_.insert(cached_ids_.end(), fresh.begin(), fresh.end());
  result.prefill_seconds = seconds_since(start);
  start = Clock::now();

  // A new id: recorded and streamed; false when it ends the generation (EOS or a stop string).
  auto accept = [&](int32_t id) {
    result.ids.push_back(id);
    history.push_back(id);
    if (options.on_token) options.on_token(id);
    if (is_eos(id)) {
      result.finish_reason = "stop";
      return false;
    }
    if (decoder) {
      emit(stops.push(decoder->push(id)));
      if (stops.stopped()) {
        result.finish_reason = "stop";
        return false;
      }
    }
    return true;
  };
  // Greedy picks that nothing else changes (no repetition penalty, no id agreed across ranks) are
  // left to the model after the first (Model::decode_greedy: on a GPU, the argmax runs on the
  // device and the host is out of the loop); the same ids as the loop below.
  const bool model_picks = options.sampling.greedy() &&
                           options.sampling.repetition_penalty == 1.0f && !options.agree_token;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    if (step > 0) {
      if (cache_->size() >= context_tokens_) break;  // cache full: "length"
      logits = model_.forward({result.ids.back()}, *cache_);
      cached_ids_.push_back(result.ids.back());
    }
    int32_t id = sampler.sample(last_row(logits, config.vocab_size).values(), history);
    if (options.agree_token) id = options.agree_token(id);
    if (!accept(id)) break;
    if (model_picks) {
      const std::vector<int32_t> more =
          model_.decode_greedy(id, options.max_new_tokens - 1, *cache_, accept);
      // Forwarded: id, then every new id but the last.
      if (!more.empty()) {
        cached_ids_.push_back(id);
        cached_ids_.insert(cached_ids_.end(), more.begin(), more.end() - 1);
      }
      break;
    }
  }
  if (decoder && !stops.stopped()) {
    emit(stops.push(decoder->flush()));
    if (stops.stopped()) result.finish_reason = "stop";
    emit(stops.finish());
  }
  result.decode_seconds = seconds_since(start);
  result.text = stops.text();
  return result;
}

GenerationResult generate(Model& model, const std::vector<int32_t>& prompt,
                          const GenerationOptions& options) {
  const int64_t needed = int64_t(prompt.size()) + std::max<int64_t>(options.max_new_tokens, 1);
  Generator generator(model, needed);
  return generator.generate(prompt, options);
}

}  // namespace dseek
