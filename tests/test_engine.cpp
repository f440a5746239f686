// Engine (continuous batching) on the tiny DeepSeek-V2 checkpoint with the real Coder tokenizer:
// output equal to Generator's for concurrent requests, prefix caching, cache budget and queue
// limits, cancellation, shutdown, errors inside a step, stop strings and logprobs.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "infer/engine.h"
#include "model/model.h"
#include "test_engine_util.h"
#include "test_generate_util.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using namespace dseek::testing;

namespace {

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = Model::load(tiny_coder_model_dir()).release();
    // References run on their own instance: the engine's scheduler thread owns model_ (a forward
    // updates per-model state such as MoE load counts) while the test thread checks results.
    ref_model_ = Model::load(tiny_coder_model_dir()).release();
    tokenizer_ = new Tokenizer(Tokenizer::load(tiny_coder_model_dir()));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ref_model_;
    delete tokenizer_;
  }

  static EngineOptions small_options() {
    EngineOptions o;
    o.page_tokens = 4;
    o.cache_tokens = 256;
    o.max_batch_tokens = 8;  // prompts of more than 8 tokens are prefilled in chunks
    return o;
  }
  static EngineRequest request(const std::string& text, int64_t max_tokens, float temperature,
                               uint64_t seed = 0) {
    EngineRequest r;
    r.prompt = tokenizer_->encode(text, true);
    r.max_tokens = max_tokens;
    r.sampling.temperature = temperature;
    r.sampling.top_k = 20;
    r.sampling.seed = seed;
    r.ignore_eos = true;
    return r;
  }
  static void expect_matches_generator(const EngineRequest& r, const Collected& c) {
    const GenerationResult expected = reference(*ref_model_, r, tokenizer_);
    EXPECT_TRUE(c.complete);
    EXPECT_EQ(c.ids, expected.ids);
    EXPECT_EQ(c.text, expected.text);
    EXPECT_EQ(c.finished.finish_reason, expected.finish_reason);
    EXPECT_EQ(c.finished.prompt_tokens, int64_t(r.prompt.size()));
    EXPECT_EQ(c.finished.completion_tokens, int64_t(expected.ids.size()));
  }
  // Waits until the scheduler published a state where `done` holds (stats lag events a little).
  template <typename F>
  static EngineStats wait_stats(const Engine& engine, F done) {
    EngineStats s = engine.stats();
    for (int i = 0; i < 500 && !done(s); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      s = engine.stats();
    }
    return s;
  }

  static Model* model_;
  static Model* ref_model_;
  static Tokenizer* tokenizer_;
};

Model* EngineTest::model_ = nullptr;
Model* EngineTest::ref_model_ = nullptr;
Tokenizer* EngineTest::tokenizer_ = nullptr;

}  // namespace

TEST_F(EngineTest, ConcurrentRequestsArrivingAtDifferentTimesMatchGenerator) {
  Engine engine(*model_, tokenizer_, small_options());
  const std::vector<EngineRequest> requests = {
      request("def fibonacci(n):\n    if n < 2:", 12, 0.0f),
      request("import numpy as np\n", 10, 0.9f, 7),
      request("class Stack:\n    def push(self, x):", 14, 0.7f, 123),
      request("# sort a list", 9, 0.0f),
  };
  // The second arrives while the first decodes, the others while both run.
  std::vector<std::shared_ptr<RequestHandle>> handles;
  handles.push_back(engine.submit(requests[0]));
  std::vector<EngineEvent> firsts = {first_event(*handles[0])};
  for (size_t i = 1; i < requests.size(); ++i) {
    handles.push_back(engine.submit(requests[i]));
    if (i == 1) firsts.push_back(first_event(*handles[1]));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    Collected c = collect(*handles[i]);
    if (i < firsts.size()) {
      c.ids.insert(c.ids.begin(), firsts[i].id);
      c.text = firsts[i].text + c.text;
    }
    expect_matches_generator(requests[i], c);
  }
  const EngineStats s = wait_stats(engine, [](const EngineStats& st) { return st.running == 0; });
  EXPECT_EQ(s.requests_finished, 4u);
  EXPECT_EQ(s.generated_tokens, 12u + 10u + 14u + 9u);
  EXPECT_EQ(s.cache_pages_used, 0);
  EXPECT_GE(s.steps, 14u);
  EXPECT_GT(s.tokens_per_second, 0.0);
}

TEST_F(EngineTest, PrefixCacheHitsAreCountedAndChangeNothing) {
  Engine engine(*model_, tokenizer_, small_options());
  const std::string shared = "def quicksort(items):\n    if len(items) <= 1:\n        return";
  const EngineRequest first = request(shared + " items", 8, 0.0f);
  const EngineRequest same = first;
  const EngineRequest branch = request(shared + " []\n", 8, 0.8f, 5);
  const Collected a = collect(*engine.submit(first));
  const Collected b = collect(*engine.submit(same));
  const Collected c = collect(*engine.submit(branch));
  expect_matches_generator(first, a);
  expect_matches_generator(same, b);
  expect_matches_generator(branch, c);
  EXPECT_EQ(a.finished.cached_prompt_tokens, 0);
  // Every full page before the last prompt token's page is reused.
  const int64_t pt = small_options().page_tokens;
  EXPECT_EQ(b.finished.cached_prompt_tokens, (int64_t(same.prompt.size()) - 1) / pt * pt);
  // The branch shares the pages of the common prefix only.
  size_t common = 0;
  while (common < branch.prompt.size() && branch.prompt[common] == first.prompt[common]) ++common;
  EXPECT_GT(c.finished.cached_prompt_tokens, 0);
  EXPECT_LE(c.finished.cached_prompt_tokens, int64_t(common));
  EXPECT_EQ(c.finished.cached_prompt_tokens, int64_t(common) / pt * pt);
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.prefix_hit_tokens,
            uint64_t(b.finished.cached_prompt_tokens + c.finished.cached_prompt_tokens));
  EXPECT_GT(s.cache_pages_cached, 0);
}

TEST_F(EngineTest, CacheBudgetRejectsTooLargeAndQueuesWhatDoesNotFitYet) {
  EngineOptions o = small_options();
  o.cache_tokens = 48;  // 12 pages
  o.prefix_caching = false;
  Engine engine(*model_, tokenizer_, o);
  EngineRequest huge = request("x = 1", 48, 0.0f);
  try {
    engine.submit(huge);
    ADD_FAILURE() << "a request larger than the cache was admitted";
  } catch (const EngineRejected& e) {
    EXPECT_EQ(e.reason(), EngineRejected::Reason::kTooLarge);
    EXPECT_EQ(e.http_status(), 400);
    EXPECT_NE(std::string(e.what()).find("[engine] request too large"), std::string::npos);
  }
  // Each needs 28 tokens = 7 pages: one runs at a time, the others wait; none is lost.
  std::vector<EngineRequest> requests;
  std::vector<std::shared_ptr<RequestHandle>> handles;
  const char* prompts[] = {"for i in range(10):", "while True:\n", "print('hello world')",
                           "return a + b"};
  for (int i = 0; i < 4; ++i) {
    requests.push_back(request(prompts[i], 28 - int64_t(tokenizer_->encode(prompts[i], true).size()),
                               i % 2 == 0 ? 0.0f : 1.0f, uint64_t(i)));
    handles.push_back(engine.submit(requests.back()));
  }
  for (size_t i = 0; i < handles.size(); ++i) {
    SCOPED_TRACE(i);
    expect_matches_generator(requests[i], collect(*handles[i]));
  }
  const EngineStats s = wait_stats(engine, [](const EngineStats& st) { return st.running == 0; });
  EXPECT_EQ(s.requests_finished, 4u);
  EXPECT_EQ(s.requests_rejected, 1u);
  EXPECT_EQ(s.cache_pages_total, 12);
  EXPECT_EQ(s.cache_pages_used, 0);
}

TEST_F(EngineTest, RejectsInvalidRequestsAndAFullQueue) {
  EngineOptions o = small_options();
  o.cache_tokens = 128;
  o.max_queue = 1;
  Engine engine(*model_, tokenizer_, o);
  auto reason_of = [&](EngineRequest r) {
    try {
      engine.submit(std::move(r));
    } catch (const EngineRejected& e) {
      return std::optional<EngineRejected::Reason>(e.reason());
    }
    return std::optional<EngineRejected::Reason>();
  };
  using Reason = EngineRejected::Reason;
  EngineRequest bad = request("x", 4, 0.0f);
  bad.prompt.push_back(32256);  // one past the vocabulary
  EXPECT_EQ(reason_of(bad), Reason::kInvalid);
  bad = request("x", 4, -0.5f);
  EXPECT_EQ(reason_of(bad), Reason::kInvalid);
  bad = request("x", 4, 1.0f);
  bad.sampling.top_p = 0.0f;
  EXPECT_EQ(reason_of(bad), Reason::kInvalid);
  bad = request("x", 0, 0.0f);
  EXPECT_EQ(reason_of(bad), Reason::kInvalid);
  bad = request("x", 4, 0.0f);
  bad.top_logprobs = 21;
  EXPECT_EQ(reason_of(bad), Reason::kInvalid);
  bad = request("x", 300, 0.0f);  // beyond max_position_embeddings (256)
  EXPECT_EQ(reason_of(bad), Reason::kTooLarge);

  // A fills the cache (and runs); B waits; C finds the queue full.
  const EngineRequest big = request("def main():", 120, 0.0f);
  auto a = engine.submit(big);
  first_event(*a);
  auto b = engine.submit(request("import os", 8, 0.0f));
  EXPECT_EQ(reason_of(request("import sys", 8, 0.0f)), Reason::kQueueFull);
  try {
    engine.submit(request("import sys", 8, 0.0f));
  } catch (const EngineRejected& e) {
    EXPECT_EQ(e.http_status(), 429);
  }
  a->cancel();
  EXPECT_EQ(collect(*a).finished.finish_reason, "cancelled");
  EXPECT_EQ(collect(*b).finished.finish_reason, "length");
  engine.shutdown(true);
  EXPECT_EQ(reason_of(request("import os", 8, 0.0f)), Reason::kShuttingDown);
  EXPECT_EQ(engine.stats().requests_rejected, 9u);
}

TEST_F(EngineTest, CancellationFinishesAtTheNextStepAndFreesPages) {
  EngineOptions o = small_options();
  o.prefix_caching = false;
  Engine engine(*model_, tokenizer_, o);
  auto running = engine.submit(request("def handler(event):", 200, 0.0f));
  auto waiting_cancelled = engine.submit(request("int main() {", 8, 0.0f));
  waiting_cancelled->cancel();
  first_event(*running);
  running->cancel();
  EXPECT_TRUE(running->cancelled());
  const Collected c = collect(*running);
  EXPECT_EQ(c.finished.finish_reason, "cancelled");
  EXPECT_LT(c.finished.completion_tokens, 200);
  const Collected w = collect(*waiting_cancelled);
  EXPECT_EQ(w.finished.finish_reason, "cancelled");
  const EngineStats s = wait_stats(
      engine, [](const EngineStats& st) { return st.running == 0 && st.cache_pages_used == 0; });
  EXPECT_EQ(s.cache_pages_used, 0);
  EXPECT_EQ(s.requests_cancelled, 2u);
  // The engine goes on serving.
  const EngineRequest next = request("x = [1, 2, 3]", 6, 0.0f);
  expect_matches_generator(next, collect(*engine.submit(next)));
}

TEST_F(EngineTest, ShutdownDrainsOrCancels) {
  std::vector<EngineRequest> requests = {request("def add(a, b):", 10, 0.0f),
                                         request("SELECT * FROM", 10, 1.0f, 3)};
  {
    Engine engine(*model_, tokenizer_, small_options());
    auto a = engine.submit(requests[0]);
    auto b = engine.submit(requests[1]);
    engine.shutdown(true);
    expect_matches_generator(requests[0], collect(*a));
    expect_matches_generator(requests[1], collect(*b));
  }
  {
    Engine engine(*model_, tokenizer_, small_options());
    auto a = engine.submit(request("def add(a, b):", 200, 0.0f));
    auto b = engine.submit(request("SELECT * FROM", 200, 0.0f));
    first_event(*a);
    engine.shutdown(false);
    EXPECT_EQ(collect(*a).finished.finish_reason, "cancelled");
    EXPECT_EQ(collect(*b).finished.finish_reason, "cancelled");
    EXPECT_EQ(engine.stats().requests_cancelled, 2u);
  }
  {
    // A drain that runs past its deadline cancels what is left.
    Engine engine(*model_, tokenizer_, small_options());
    auto a = engine.submit(request("def add(a, b):", 200, 0.0f));
    first_event(*a);
    engine.shutdown(true, std::chrono::milliseconds(0));
    EXPECT_EQ(collect(*a).finished.finish_reason, "cancelled");
  }
}

TEST_F(EngineTest, AnErrorInAStepFailsThatBatchAndTheEngineGoesOn) {
  ProbeModel probe(*model_);
  const EngineRequest poisoned = request("def broken():", 6, 0.0f);
  probe.poison = poisoned.prompt.back();
  Engine engine(probe, tokenizer_, small_options());
  const Collected c = collect(*engine.submit(poisoned));
  EXPECT_EQ(c.finished.finish_reason, "error");
  EXPECT_NE(c.finished.error.find("[probe] poisoned"), std::string::npos);
  probe.poison = -1;
  const EngineRequest next = request("def fixed():", 6, 0.0f);
  expect_matches_generator(next, collect(*engine.submit(next)));
  EXPECT_EQ(wait_stats(engine, [](const EngineStats& st) { return st.cache_pages_used == 0; })
                .cache_pages_used,
            0);
}

TEST_F(EngineTest, StopStringsAndEosEndLikeGenerator) {
  Engine engine(*model_, tokenizer_, small_options());
  EngineRequest r = request("def fibonacci(n):\n", 24, 0.0f);
  const GenerationResult full = reference(*ref_model_, r, tokenizer_);
  ASSERT_GT(full.text.size(), 8u);
  // A stop string taken from the middle of the greedy text, and one that never appears.
  r.stop = {full.text.substr(full.text.size() / 2, 3), "\x01never"};
  const Collected c = collect(*engine.submit(r));
  expect_matches_generator(r, c);
  EXPECT_EQ(c.finished.finish_reason, "stop");
  EXPECT_LT(c.ids.size(), full.ids.size());
  EXPECT_EQ(c.text.find(r.stop[0]), std::string::npos);
  // An extra EOS id: the greedy output's fifth token ends the request right there.
  EngineRequest eos = request("def fibonacci(n):\n", 24, 0.0f);
  eos.stop_token_ids = {full.ids[4]};
  eos.ignore_eos = false;  // as Generator, ignore_eos drops the extra ids too
  const Collected e = collect(*engine.submit(eos));
  expect_matches_generator(eos, e);
  EXPECT_EQ(e.finished.finish_reason, "stop");
  EXPECT_LE(e.ids.size(), 5u);
}

TEST_F(EngineTest, LogprobsAreLogSoftmaxOfTheFullForward) {
  Engine engine(*model_, tokenizer_, small_options());
  EngineRequest r = request("def mean(xs):", 5, 0.8f, 11);
  r.top_logprobs = 3;
  const Collected c = collect(*engine.submit(r));
  ASSERT_EQ(c.tokens.size(), 5u);
  std::vector<int32_t> ids = r.prompt;
  for (const EngineEvent& event : c.tokens) {
    const std::vector<float> row = ref_model_->forward(ids).select(0, int64_t(ids.size()) - 1)
                                       .to_vector();
    double sum = 0.0;
    const float max = *std::max_element(row.begin(), row.end());
    for (float x : row) sum += std::exp(double(x - max));
    auto log_softmax = [&](int32_t id) { return double(row[size_t(id)] - max) - std::log(sum); };
    EXPECT_NEAR(event.logprob, log_softmax(event.id), 1e-3);
    ASSERT_EQ(event.top.size(), 3u);
    EXPECT_EQ(event.top[0].id, argmax_row(row));
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_NEAR(event.top[k].logprob, log_softmax(event.top[k].id), 1e-3);
      if (k > 0) {
        EXPECT_GE(event.top[k - 1].logprob, event.top[k].logprob);
      }
    }
    EXPECT_LT(event.logprob, 0.0f);
    ids.push_back(event.id);
  }
}
