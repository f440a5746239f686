#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "core/error.h"
#include "infer/generator.h"
#include "infer/stop_strings.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/paged_kv_cache.h"
#include "test_generate_util.h"
#include "tokenizer/tokenizer.h"

using namespace dseek;
using namespace dseek::testing;

namespace {

class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = Model::load(tiny_coder_model_dir()).release();
    tokenizer_ = new Tokenizer(Tokenizer::load(tiny_coder_model_dir()));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokenizer_;
  }

  static std::vector<int32_t> prompt() { return tokenizer_->encode("def fib(n):\n", true); }

  static GenerationOptions greedy(int64_t n) {
    GenerationOptions options;
    options.max_new_tokens = n;
    options.sampling.temperature = 0.0f;
    options.tokenizer = tokenizer_;
    options.ignore_eos = true;
    return options;
  }

  static Model* model_;
  static Tokenizer* tokenizer_;
};

Model* Generate::model_ = nullptr;
Tokenizer* Generate::tokenizer_ = nullptr;

// The tiny model whose cached forwards after the first `clean` ones put a NaN into their logits
// (a broken checkpoint, as the greedy pick sees it).
class NanLogitsModel : public Model {
 public:
  NanLogitsModel(Model& inner, int clean) : inner_(inner), clean_(clean) {}
  const ModelConfig& config() const override { return inner_.config(); }
  Tensor forward(const std::vector<int32_t>& ids) override { return inner_.forward(ids); }
  Tensor forward(const std::vector<int32_t>& ids, KVCache& cache) override {
    Tensor logits = inner_.forward(ids, cache);
    if (calls_++ >= clean_) logits.data<float>()[logits.numel() - 7] = std::nanf("");
    return logits;
  }
  std::unique_ptr<KVCache> new_cache(int64_t max_tokens) const override {
    return inner_.new_cache(max_tokens);
  }
  Tensor forward_mtp(const std::vector<int32_t>& ids, int depth) override {
    return inner_.forward_mtp(ids, depth);
  }
  BatchOutput forward_batch(const std::vector<BatchSequence>& batch, PagedKVCache& cache) override {
    return inner_.forward_batch(batch, cache);
  }
  Tensor forward_mtp_batch(const std::vector<MtpBatchSequence>& batch,
                           PagedKVCache& cache) override {
    return inner_.forward_mtp_batch(batch, cache);
  }
  std::unique_ptr<PagedKVCache> new_paged_cache(int64_t page_tokens,
                                                int64_t num_pages) const override {
    return inner_.new_paged_cache(page_tokens, num_pages);
  }
  int64_t num_mtp_layers() const override { return inner_.num_mtp_layers(); }

 private:
  Model& inner_;
  int clean_, calls_ = 0;
};

int32_t argmax_last_row(const Tensor& logits) {
  const std::vector<float> v = logits.select(0, logits.size(0) - 1).to_vector();
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

TEST_F(Generate, GreedyWithCacheEqualsArgmaxOverFullForward) {
  constexpr int64_t kNew = 16;
  const GenerationResult result = generate(*model_, prompt(), greedy(kNew));
  std::vector<int32_t> ids = prompt(), expected;
  for (int64_t i = 0; i < kNew; ++i) {
    expected.push_back(argmax_last_row(model_->forward(ids)));
    ids.push_back(expected.back());
  }
  EXPECT_EQ(result.ids, expected);
  EXPECT_EQ(result.finish_reason, "length");
  EXPECT_EQ(result.text, tokenizer_->decode(expected, true));
  EXPECT_EQ(result.prompt_tokens, int64_t(prompt().size()));
  EXPECT_GT(result.decode_tokens_per_second(), 0.0);
  // The output is not one token repeated (the test would then say little).
  EXPECT_GT(std::set<int32_t>(expected.begin(), expected.end()).size(), 3u);
}

TEST_F(Generate, StopsAtEosAndLeavesItOutOfTheText) {
  const GenerationResult free_run = generate(*model_, prompt(), greedy(8));
  GenerationOptions options = greedy(8);
  options.ignore_eos = false;
  options.eos_ids = {free_run.ids[3]};
  const size_t first = size_t(std::find(free_run.ids.begin(), free_run.ids.end(), free_run.ids[3]) -
                              free_run.ids.begin());
  const GenerationResult result = generate(*model_, prompt(), options);
  EXPECT_EQ(result.finish_reason, "stop");
  ASSERT_EQ(result.ids.size(), first + 1);
  EXPECT_EQ(result.ids,
            std::vector<int32_t>(free_run.ids.begin(), free_run.ids.begin() + long(first) + 1));
  EXPECT_EQ(result.text, tokenizer_->decode(
                             std::vector<int32_t>(result.ids.begin(), result.ids.end() - 1), true));
}

TEST_F(Generate, StopStringSpanningTokensCutsTheText) {
  const GenerationResult free_run = generate(*model_, prompt(), greedy(16));
  // A stop string made of the last byte of token 4's text and the first of token 5's.
  const std::string head =
      tokenizer_->decode({free_run.ids.begin(), free_run.ids.begin() + 5}, true);
  ASSERT_GT(head.size(), 0u);
  ASSERT_GT(free_run.text.size(), head.size());
  const std::string stop = free_run.text.substr(head.size() - 1, 2);
  const size_t cut = free_run.text.find(stop);
  GenerationOptions options = greedy(16);
  options.stop = {"never appears \x01", stop};
  std::string streamed;
  std::vector<int32_t> seen;
  options.on_text = [&](std::string_view t) { streamed += t; };
  options.on_token = [&](int32_t id) { seen.push_back(id); };
  const GenerationResult result = generate(*model_, prompt(), options);
  EXPECT_EQ(result.finish_reason, "stop");
  EXPECT_EQ(result.text, free_run.text.substr(0, cut));
  EXPECT_EQ(streamed, result.text);
  EXPECT_EQ(seen, result.ids);
  EXPECT_LE(result.ids.size(), 6u);
}

TEST_F(Generate, MaxTokensAndCacheCapacityGiveLength) {
  const GenerationResult a = generate(*model_, prompt(), greedy(5));
  EXPECT_EQ(a.ids.size(), 5u);
  EXPECT_EQ(a.finish_reason, "length");
  EXPECT_EQ(generate(*model_, prompt(), greedy(0)).ids.size(), 0u);
  // A context of prompt + 3: the prefill's token, then three more forwards fit.
  Generator generator(*model_, int64_t(prompt().size()) + 3);
  const GenerationResult b = generator.generate(prompt(), greedy(50));
  EXPECT_EQ(b.ids.size(), 4u);
  EXPECT_EQ(b.finish_reason, "length");
  EXPECT_THROW(generator.generate(std::vector<int32_t>(300, 5), greedy(1)), Error);
}

// Model::decode_greedy (the Generator's greedy path after the first token): the same ids as
// forward-and-argmax one token at a time, on_token seeing each in order; stopped by on_token
// (at once, or after three ids), the cache holds just the ids forwarded.
TEST_F(Generate, DecodeGreedyEqualsStepwiseArgmaxAndStopsWhenAsked) {
  const std::vector<int32_t> p = prompt();
  std::unique_ptr<KVCache> cache = model_->new_cache(64);
  const int32_t first = argmax_last_row(model_->forward(p, *cache));
  std::vector<int32_t> want;
  {
    std::unique_ptr<KVCache> c = model_->new_cache(64);
    int32_t id = argmax_last_row(model_->forward(p, *c));
    for (int i = 0; i < 7; ++i) want.push_back(id = argmax_last_row(model_->forward({id}, *c)));
  }
  std::vector<int32_t> seen;
  const std::vector<int32_t> got = model_->decode_greedy(first, 7, *cache, [&](int32_t id) {
    seen.push_back(id);
    return true;
  });
  EXPECT_EQ(got, want);
  EXPECT_EQ(seen, want);
  EXPECT_EQ(cache->size(), int64_t(p.size()) + 7);

  cache->truncate(int64_t(p.size()));
  const std::vector<int32_t> one =
      model_->decode_greedy(first, 7, *cache, [](int32_t) { return false; });
  EXPECT_EQ(one, std::vector<int32_t>(want.begin(), want.begin() + 1));  // one forward, one id
  EXPECT_EQ(cache->size(), int64_t(p.size()) + 1);
  cache->truncate(int64_t(p.size()));
  int n = 0;
  const std::vector<int32_t> some =
      model_->decode_greedy(first, 7, *cache, [&](int32_t) { return ++n < 3; });
  EXPECT_EQ(some, std::vector<int32_t>(want.begin(), want.begin() + 3));
  EXPECT_EQ(cache->size(), int64_t(p.size()) + 3);
  // A full cache ends it early: room for two more forwards.
  std::unique_ptr<KVCache> small = model_->new_cache(int64_t(p.size()) + 2);
  (void)model_->forward(p, *small);
  EXPECT_EQ(model_->decode_greedy(first, 7, *small, [](int32_t) { return true; }),
            std::vector<int32_t>(want.begin(), want.begin() + 2));
}

// NaN logits end greedy decoding with an error naming them, as the sampler's check does for the
// prefill's logits: from Model::decode_greedy, and from the Generator's greedy path through it.
TEST_F(Generate, DecodeGreedyRefusesNanLogits) {
  NanLogitsModel model(*model_, 3);  // the prefill and two steps are clean
  std::unique_ptr<KVCache> cache = model.new_cache(64);
  const int32_t first = argmax_last_row(model.forward(prompt(), *cache));
  std::vector<int32_t> seen;
  try {
    (void)model.decode_greedy(first, 8, *cache, [&](int32_t id) {
      seen.push_back(id);
      return true;
    });
    ADD_FAILURE() << "NaN logits were picked from";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
  }
  EXPECT_EQ(seen.size(), 2u);  // the clean steps' ids came out first
  NanLogitsModel broken(*model_, 2);
  EXPECT_THROW(generate(broken, prompt(), greedy(8)), Error);
}

TEST_F(Generate, GeneratorReusesTheCachedPrefix) {
  Generator generator(*model_, 128);
  const GenerationResult first = generator.generate(prompt(), greedy(6));
  std::vector<int32_t> next = prompt();
  next.insert(next.end(), first.ids.begin(), first.ids.end());
  const std::vector<int32_t> more = tokenizer_->encode("\nprint(fib(3))\n");
  next.insert(next.end(), more.begin(), more.end());
  const GenerationResult second = generator.generate(next, greedy(6));
  EXPECT_EQ(second.reused_tokens, int64_t(prompt().size() + first.ids.size() - 1));
  const GenerationResult fresh = generate(*model_, next, greedy(6));
  EXPECT_EQ(second.ids, fresh.ids);
  // A different prompt rewinds to the common prefix.
  const GenerationResult again = generator.generate(prompt(), greedy(6));
  EXPECT_EQ(again.ids, first.ids);
}

TEST_F(Generate, SamplingIsReproducibleFromTheSeed) {
  GenerationOptions options = greedy(12);
  options.sampling.temperature = 1.0f;
  options.sampling.top_k = 40;  // keeps the top-p sort small (the test runs under ASan)
  options.sampling.top_p = 0.95f;
  options.sampling.seed = 77;
  const GenerationResult a = generate(*model_, prompt(), options);
  const GenerationResult b = generate(*model_, prompt(), options);
  options.sampling.seed = 78;
  const GenerationResult c = generate(*model_, prompt(), options);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_NE(a.ids, c.ids);
}

TEST_F(Generate, RejectsBadInput) {
  GenerationOptions options = greedy(4);
  EXPECT_THROW(generate(*model_, {}, options), Error);
  EXPECT_THROW(generate(*model_, {40000}, options), Error);
  options.tokenizer = nullptr;
  options.stop = {"x"};
  EXPECT_THROW(generate(*model_, prompt(), options), Error);
}

TEST(StopStrings, HoldsBackPossibleStartsAndCutsMatches) {
  StopStringMatcher m({"o W", "!!"});
  EXPECT_EQ(m.push("Hel"), "Hel");
  EXPECT_EQ(m.push("lo"), "l");  // "o" may start "o W"
  EXPECT_EQ(m.push(" "), "");    // "o " too
  EXPECT_EQ(m.push("Wor"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.text(), "Hell");
  EXPECT_EQ(m.finish(), "");

  StopStringMatcher n({"!!"});
  EXPECT_EQ(n.push("a!"), "a");
  EXPECT_EQ(n.push("b"), "!b");
  EXPECT_EQ(n.push("!"), "");
  EXPECT_EQ(n.finish(), "!");
  EXPECT_FALSE(n.stopped());
  EXPECT_EQ(n.text(), "a!b!");
  EXPECT_THROW(StopStringMatcher({""}), Error);
}
