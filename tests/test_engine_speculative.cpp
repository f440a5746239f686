// Engine MTP speculative decoding on the tiny DeepSeek-V3 fixture (one MTP layer): greedy output
// identical with and without speculation and to Generator, in batches that mix greedy and sampled
// requests, with drafts forced right and wrong, ends landing inside an accepted pair, and prefix
// caching of pages that also hold MTP rows.
#include <gtest/gtest.h>

#include <cstdio>

#include "infer/engine.h"
#include "model/model.h"
#include "test_engine_util.h"

using namespace dseek;
using namespace dseek::testing;

namespace {

class EngineSpeculative : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/models/v3_bf16";
    model_ = Model::load(dir).release();
    // References run on their own instance while an engine's scheduler thread owns model_.
    ref_model_ = Model::load(dir).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ref_model_;
  }

  static EngineOptions options(bool speculative) {
    EngineOptions o;
    o.page_tokens = 4;
    o.cache_tokens = 1024;
    o.max_batch_tokens = 12;  // prompts are prefilled (and MTP-prefilled) in chunks
    o.speculative = speculative;
    return o;
  }
  // Deterministic prompts of different lengths over the 320-id vocabulary (no 0/1: BOS/EOS).
  static EngineRequest request(int index, int64_t length, int64_t max_tokens, float temperature) {
    EngineRequest r;
    for (int64_t i = 0; i < length; ++i) r.prompt.push_back(int32_t(2 + (index * 37 + i * 11) % 318));
    r.max_tokens = max_tokens;
    r.sampling.temperature = temperature;
    r.sampling.seed = uint64_t(index) + 100;
    r.ignore_eos = true;
    return r;
  }
  static std::vector<Collected> run_all(Model& model, const EngineOptions& o,
                                        const std::vector<EngineRequest>& requests,
                                        EngineStats* stats = nullptr) {
    Engine engine(model, nullptr, o);
    std::vector<std::shared_ptr<RequestHandle>> handles;
    for (const EngineRequest& r : requests) handles.push_back(engine.submit(r));
    std::vector<Collected> out;
    for (auto& h : handles) out.push_back(collect(*h));
    engine.shutdown(true);
    if (stats != nullptr) *stats = engine.stats();
    return out;
  }

  static Model* model_;
  static Model* ref_model_;
};

Model* EngineSpeculative::model_ = nullptr;
Model* EngineSpeculative::ref_model_ = nullptr;

}  // namespace

TEST_F(EngineSpeculative, GreedyOutputIsIdenticalWithAndWithoutSpeculation) {
  ASSERT_GT(model_->num_mtp_layers(), 0);
  const std::vector<EngineRequest> requests = {
      request(0, 5, 16, 0.0f), request(1, 17, 12, 0.0f), request(2, 9, 14, 1.0f),
      request(3, 26, 10, 0.0f), request(4, 3, 15, 0.8f),
  };
  EngineStats plain_stats, spec_stats;
  const std::vector<Collected> plain = run_all(*model_, options(false), requests, &plain_stats);
  const std::vector<Collected> spec = run_all(*model_, options(true), requests, &spec_stats);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    const GenerationResult expected = reference(*ref_model_, requests[i], nullptr);
    EXPECT_EQ(plain[i].ids, expected.ids);
    EXPECT_EQ(spec[i].ids, expected.ids);
    EXPECT_EQ(spec[i].finished.finish_reason, "length");
    EXPECT_EQ(spec[i].finished.completion_tokens, requests[i].max_tokens);
  }
  EXPECT_EQ(plain_stats.spec_drafted, 0u);
  EXPECT_GT(spec_stats.spec_drafted, 0u);
  EXPECT_LE(spec_stats.spec_accepted, spec_stats.spec_drafted);
  EXPECT_EQ(spec_stats.generated_tokens, plain_stats.generated_tokens);
  std::printf("real MTP drafts: %llu accepted of %llu\n",
              (unsigned long long)spec_stats.spec_accepted,
              (unsigned long long)spec_stats.spec_drafted);
}

TEST_F(EngineSpeculative, ForcedDraftsAcceptAndRejectAndEndsInsideAPair) {
  ProbeModel probe(*model_);
  probe.oracle_drafts = true;
  EngineOptions o = options(true);
  o.prefix_caching = false;  // the probe tracks ids from position 0
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 4; ++i) requests.push_back(request(10 + i, 4 + 4 * i, 5 + i, 0.0f));
  requests.push_back(request(20, 7, 9, 0.9f));  // sampled requests never draft
  // Ends at an extra EOS id that may be the first or the second token of a pair.
  for (int k = 2; k < 5; ++k) {
    EngineRequest r = request(30 + k, 6, 8, 0.0f);
    r.stop_token_ids = {reference(*ref_model_, r, nullptr).ids[size_t(k)]};
    r.ignore_eos = false;  // else Generator would ignore the extra id too
    requests.push_back(r);
  }
  EngineStats stats;
  const std::vector<Collected> got = run_all(probe, o, requests, &stats);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    const GenerationResult expected = reference(*ref_model_, requests[i], nullptr);
    EXPECT_EQ(got[i].ids, expected.ids);
    EXPECT_EQ(got[i].finished.finish_reason, expected.finish_reason);
    EXPECT_EQ(got[i].finished.completion_tokens, int64_t(expected.ids.size()));
  }
  EXPECT_GT(probe.mtp_calls, 0);
  EXPECT_GT(stats.spec_accepted, 0u);
  EXPECT_GT(stats.spec_drafted, stats.spec_accepted);  // every third draft is wrong

  // Alone, a request's forwards are one per token minus one per accepted draft.
  const EngineRequest alone = request(40, 5, 12, 0.0f);
  const std::vector<Collected> single = run_all(probe, o, {alone}, &stats);
  EXPECT_EQ(single[0].ids, reference(*ref_model_, alone, nullptr).ids);
  EXPECT_GT(stats.spec_accepted, 0u);
  EXPECT_EQ(stats.steps + stats.spec_accepted, 12u);
}

TEST_F(EngineSpeculative, PrefixCachedPagesKeepMtpRowsRight) {
  EngineOptions o = options(true);
  const EngineRequest r = request(7, 23, 12, 0.0f);
  // Differs from r at position 20 only: pages 0..4 (positions 0..19) hold the same main-model
  // rows, but the MTP row at position 19 is computed from token 20, so page 4 must not be shared.
  EngineRequest branch = r;
  branch.prompt[20] = branch.prompt[20] == 5 ? 6 : 5;
  Engine engine(*model_, nullptr, o);
  const Collected a = collect(*engine.submit(r));
  const Collected b = collect(*engine.submit(r));
  const EngineStats before = engine.stats();
  const Collected c = collect(*engine.submit(branch));
  const EngineStats after = engine.stats();
  EXPECT_EQ(a.ids, reference(*ref_model_, r, nullptr).ids);
  EXPECT_EQ(b.ids, a.ids);
  EXPECT_EQ(c.ids, reference(*ref_model_, branch, nullptr).ids);
  // 23 tokens, pages of 4: the MTP chain covers a page and the token after it, so pages 0..4.
  EXPECT_EQ(a.finished.cached_prompt_tokens, 0);
  EXPECT_EQ(b.finished.cached_prompt_tokens, 20);
  EXPECT_EQ(c.finished.cached_prompt_tokens, 16);
  // The drafts over cached pages are those of a cold run.
  EngineStats cold;
  const std::vector<Collected> alone = run_all(*model_, o, {branch}, &cold);
  EXPECT_EQ(alone[0].ids, c.ids);
  EXPECT_GT(cold.spec_drafted, 0u);
  EXPECT_EQ(after.spec_drafted - before.spec_drafted, cold.spec_drafted);
  EXPECT_EQ(after.spec_accepted - before.spec_accepted, cold.spec_accepted);
}

TEST_F(EngineSpeculative, RequestsWhoseDraftsFailStopDrafting) {
  // The fixture's random MTP layer almost never guesses right: after 16 drafts the request stops
  // drafting; the forced drafts (2 in 3 right) go on to the end.
  const EngineRequest r = request(50, 6, 40, 0.0f);
  EngineStats real;
  const std::vector<Collected> got = run_all(*model_, options(true), {r}, &real);
  EXPECT_EQ(got[0].ids, reference(*ref_model_, r, nullptr).ids);
  EXPECT_LT(real.spec_accepted * 4, real.spec_drafted);
  EXPECT_EQ(real.spec_drafted, 16u);

  ProbeModel probe(*model_);
  probe.oracle_drafts = true;
  EngineOptions o = options(true);
  o.prefix_caching = false;
  EngineStats forced;
  const std::vector<Collected> again = run_all(probe, o, {r}, &forced);
  EXPECT_EQ(again[0].ids, got[0].ids);
  EXPECT_GT(forced.spec_drafted, 20u);
  EXPECT_EQ(forced.steps + forced.spec_accepted, 40u);
}
