// Cached decoding must reproduce the full forward: prefill in chunks of varied sizes, then one
// token at a time, against one uncached forward of the whole sequence (max abs error ≤ 1e-4), for
// MLA (absorbed latent cache; with and without q_lora, with MoE and YaRN) and MHA/GQA models.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "core/error.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/model.h"
#include "test_model_util.h"

using namespace dseek;
using namespace dseek::testing;

namespace {

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

// Runs `ids` through the cache in chunks of the given sizes (the rest one by one) and returns
// every row's logits in order.
std::vector<float> cached_logits(Model& model, KVCache& cache, const std::vector<int32_t>& ids,
                                 const std::vector<int64_t>& chunks) {
  std::vector<float> out;
  size_t pos = 0;
  size_t c = 0;
  while (pos < ids.size()) {
    const size_t n = c < chunks.size() ? size_t(chunks[c++]) : 1;
    const std::vector<int32_t> part(ids.begin() + long(pos), ids.begin() + long(pos + n));
    const Tensor logits = model.forward(part, cache);
    EXPECT_EQ(logits.shape(), (Shape{int64_t(n), model.config().vocab_size}));
    const std::vector<float> v = logits.to_vector();
    out.insert(out.end(), v.begin(), v.end());
    pos += n;
    EXPECT_EQ(cache.size(), int64_t(pos));
  }
  return out;
}

// Cached logits against the full forward's: max abs error ≤ 1e-4, on logits that are not
// trivially small.
void expect_equals_full_forward(const std::vector<float>& got, const std::vector<float>& full) {
  ASSERT_EQ(got.size(), full.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    err = std::max(err, double(std::abs(got[i] - full[i])));
    scale = std::max(scale, double(std::abs(full[i])));
  }
  EXPECT_LE(err, 1e-4) << "max |logit| " << scale;
  EXPECT_GT(scale, 0.5);
}

struct Case {
  std::string name;
  ModelConfig config;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  {
    ModelConfig c = tiny_config("deepseek_v3");
    add_moe(c);
    c.rope_scaling.type = "yarn";
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 16;
    c.rope_scaling.mscale = 1.0;
    c.rope_scaling.mscale_all_dim = 0.7;
    out.push_back({"v3_moe_yarn", c});
  }
  {
    ModelConfig c = tiny_config("deepseek_v2");
    c.q_lora_rank = 0;  // direct q_proj
    out.push_back({"v2_no_q_lora", c});
  }
  {
    ModelConfig c = tiny_config("llama");
    c.num_key_value_heads = 2;  // GQA
    c.attention_bias = true;
    out.push_back({"llama_gqa_bias", c});
  }
  {
    ModelConfig c = tiny_config("deepseek");
    add_moe(c);
    out.push_back({"deepseek_moe", c});
  }
  return out;
}

}  // namespace

TEST(ModelCache, CachedDecodeEqualsFullForward) {
  uint32_t seed = 100;
  for (const Case& tc : cases()) {
    SCOPED_TRACE(tc.name);
    TinyCheckpoint ckpt(tc.config, seed++);
    const std::string dir = ckpt.write(tc.name);
    auto model = Model::load(dir);
    const std::vector<int32_t> ids = random_ids(23, tc.config.vocab_size, seed++);
    const std::vector<float> full = model->forward(ids).to_vector();
    ASSERT_EQ(full.size(), ids.size() * size_t(tc.config.vocab_size));

    auto cache = model->new_cache(40);
    const std::vector<float> got = cached_logits(*model, *cache, ids, {5, 1, 7, 2});
    expect_equals_full_forward(got, full);

    // Rewind: truncating to 9 tokens and re-running the rest gives the same rows again.
    cache->truncate(9);
    const std::vector<int32_t> rest(ids.begin() + 9, ids.end());
    const std::vector<float> again = model->forward(rest, *cache).to_vector();
    const size_t V = size_t(tc.config.vocab_size);
    double err2 = 0;
    for (size_t i = 0; i < again.size(); ++i)
      err2 = std::max(err2, double(std::abs(again[i] - full[9 * V + i])));
    EXPECT_LE(err2, 1e-4);
    std::filesystem::remove_all(dir);
  }
}

// A prompt chunk of at least Mla::kExpandedPrefillRows tokens attends with per-head keys and values
// expanded from the latent cache (fewer multiply-adds per pair), a shorter one absorbed: chunks of
// both kinds, the expanded ones with and without history, give the full forward's logits.
TEST(ModelCache, ExpandedAndAbsorbedPrefillChunksEqualFullForward) {
  const int64_t E = Mla::kExpandedPrefillRows;
  uint32_t seed = 300;
  for (const Case& tc : cases()) {
    if (tc.config.kv_lora_rank == 0) continue;  // MHA/GQA: no latent cache
    SCOPED_TRACE(tc.name);
    ModelConfig config = tc.config;
    config.max_position_embeddings = std::max<int64_t>(config.max_position_embeddings, 4 * E);
    TinyCheckpoint ckpt(config, seed++);
    const std::string dir = ckpt.write(tc.name + "_expanded");
    auto model = Model::load(dir);
    const std::vector<int32_t> ids = random_ids(2 * E + 9, config.vocab_size, seed++);
    const std::vector<float> full = model->forward(ids).to_vector();
    auto cache = model->new_cache(2 * E + 9);
    // E (expanded, empty cache), 3 (absorbed), E + 2 (expanded after history), then one by one.
    const std::vector<float> got = cached_logits(*model, *cache, ids, {E, 3, E + 2});
    expect_equals_full_forward(got, full);
    std::filesystem::remove_all(dir);
  }
}

TEST(ModelCache, OverflowAndBadUseAreErrors) {
  TinyCheckpoint ckpt(tiny_config("deepseek_v3"), 7);
  const std::string dir = ckpt.write("overflow");
  auto model = Model::load(dir);
  auto cache = model->new_cache(6);
  model->forward({3, 4, 5, 6}, *cache);
  try {
    model->forward({1, 2, 3}, *cache);
    ADD_FAILURE() << "overflow not detected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[kv_cache] overflow"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache->size(), 4);  // a failed call leaves the cache as it was
  EXPECT_THROW(cache->truncate(5), Error);
  EXPECT_THROW(model->forward({2, 99}, *cache), Error);  // id outside the vocabulary
  EXPECT_EQ(cache->size(), 4);
  model->forward({7, 8}, *cache);
  EXPECT_EQ(cache->size(), 6);
  EXPECT_THROW(model->new_cache(0), Error);
  // Latent cache: kv_lora_rank + qk_rope_head_dim floats per token per layer, nothing else.
  const ModelConfig& c = model->config();
  EXPECT_EQ(
      cache->nbytes(),
      size_t(c.num_hidden_layers * 6 * (c.kv_lora_rank + c.qk_rope_head_dim)) * sizeof(float));
  std::filesystem::remove_all(dir);
}
