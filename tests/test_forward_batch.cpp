// Batched forward over a paged cache (continuous batching) against the single-sequence paths, for
// every architecture's fixture (deepseek_v3, deepseek_v2, deepseek MoE, llama GQA):
//  - forward_batch == Model::forward(ids, KVCache&) and Transformer::hidden per sequence, for a
//    batch mixing a fresh prefill, a chunked prefill that continues mid-page and decodes at
//    different lengths; pages of 4 positions handed out in a scrambled order; all_logits both ways.
//  - a sequence that reuses another's registered prefix pages (and one that rewinds into a shared
//    page, which copy-on-write must keep from the owner) gets the logits of a fresh computation.
//  - forward_mtp_batch == Model::forward_mtp(ids, 1) rows, fed incrementally (prefill, then steps).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/model.h"
#include "model/paged_kv_cache.h"
#include "model/transformer.h"

using namespace dseek;

namespace {

const std::string kFixtures = std::string(DSEEK_SOURCE_DIR) + "/tests/fixtures/models/";

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

// The reference rows of one sequence: logits through a contiguous KVCache and hidden states
// (after model.norm) of the uncached forward, for all its tokens.
struct Reference {
  std::vector<int32_t> ids;
  Tensor logits, hidden;
};

Reference reference(Model& model, const std::vector<int32_t>& ids) {
  auto kv = model.new_cache(int64_t(ids.size()));
  Reference r{ids, model.forward(ids, *kv), dynamic_cast<Transformer&>(model).hidden(ids)};
  return r;
}

// Max |got row − ref row| over `n` rows, relative to max(1, max |ref|).
double row_error(const Tensor& got, int64_t got_row, const Tensor& ref, int64_t ref_row,
                 int64_t n) {
  const int64_t W = ref.size(1);
  EXPECT_EQ(got.size(1), W);
  double err = 0, scale = 1;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < W; ++j) {
      const double g = got.data<float>()[(got_row + i) * W + j];
      const double r = ref.data<float>()[(ref_row + i) * W + j];
      err = std::max(err, std::isnan(g) ? 1e30 : std::abs(g - r));
      scale = std::max(scale, std::abs(r));
    }
  return err / scale;
}

// A paged cache whose free pages come out in a scrambled order.
std::unique_ptr<PagedKVCache> scrambled_cache(Model& model, int64_t page_tokens, int64_t pages,
                                              std::mt19937& rng) {
  auto cache = model.new_paged_cache(page_tokens, pages);
  std::vector<int32_t> all;
  while (auto p = cache->allocate()) all.push_back(*p);
  std::shuffle(all.begin(), all.end(), rng);
  for (const int32_t p : all) cache->release(p);
  return cache;
}

// One sequence in a test batch: its pages and how far the reference ids have been fed.
struct Live {
  PagedSequence seq;
  Reference ref;
};

// Feeds the next `T[i]` tokens of each sequence in one forward_batch and checks every returned
// row against the references.
void step(Model& model, PagedKVCache& cache, std::vector<Live*> live, std::vector<int64_t> T,
          std::vector<bool> all_logits) {
  std::vector<BatchSequence> batch;
  std::vector<int64_t> pos0;
  for (size_t i = 0; i < live.size(); ++i) {
    Live& l = *live[i];
    ASSERT_TRUE(cache.reserve(l.seq, l.seq.length + T[i]));
    pos0.push_back(l.seq.length);
    batch.push_back({std::span(l.ref.ids).subspan(size_t(l.seq.length), size_t(T[i])), &l.seq,
                     all_logits[i]});
  }
  const BatchOutput out = model.forward_batch(batch, cache);
  int64_t rows = 0;
  for (size_t i = 0; i < live.size(); ++i) rows += all_logits[i] ? T[i] : 1;
  ASSERT_EQ(out.logits.shape(), (Shape{rows, model.config().vocab_size}));
  ASSERT_EQ(out.hidden.shape(), (Shape{rows, model.config().hidden_size}));
  ASSERT_EQ(out.first_row.size(), live.size());
  for (size_t i = 0; i < live.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    EXPECT_EQ(live[i]->seq.length, pos0[i] + T[i]);
    const int64_t n = all_logits[i] ? T[i] : 1;
    const int64_t ref_row = all_logits[i] ? pos0[i] : pos0[i] + T[i] - 1;
    EXPECT_LE(row_error(out.logits, out.first_row[i], live[i]->ref.logits, ref_row, n), 1e-4);
    EXPECT_LE(row_error(out.hidden, out.first_row[i], live[i]->ref.hidden, ref_row, n), 1e-4);
  }
}

const std::vector<std::string> kArchitectures{"v3_bf16", "v2_lite", "deepseekmoe", "llama_gqa"};

}  // namespace

TEST(ForwardBatch, MixedPrefillChunkAndDecodesEqualSingleSequenceForward) {
  std::mt19937 rng(5);
  for (const std::string& name : kArchitectures) {
    SCOPED_TRACE(name);
    auto model = Model::load(kFixtures + name);
    const int64_t V = model->config().vocab_size;
    auto cache = scrambled_cache(*model, 4, 40, rng);
    Live a{{}, reference(*model, random_ids(13, V, rng))};  // fresh prefill later
    Live b{{}, reference(*model, random_ids(16, V, rng))};  // 6, then a chunk of 7 from mid-page
    Live c{{}, reference(*model, random_ids(7, V, rng))};   // decodes from length 3
    Live d{{}, reference(*model, random_ids(11, V, rng))};  // decodes from a page boundary (8)
    Live e{{}, reference(*model, random_ids(17, V, rng))};  // decodes from 13

    // A prefill-only batch brings b, c, d, e to their starting lengths.
    step(*model, *cache, {&b, &c, &d, &e}, {6, 3, 8, 13}, {true, false, true, false});
    // The mixed batch.
    step(*model, *cache, {&c, &a, &b, &d, &e}, {1, 10, 7, 1, 1}, {false, true, false, true, true});
    // Decode steps for everyone (a's last prefill token joins as a 2-token chunk).
    step(*model, *cache, {&a, &b, &c, &d, &e}, {2, 1, 1, 1, 1}, {true, false, true, false, true});
    step(*model, *cache, {&e, &d, &c, &b, &a}, {1, 1, 1, 1, 1}, {false, false, false, true, false});
    EXPECT_EQ(e.seq.length, 16);
    for (Live* l : {&a, &b, &c, &d, &e}) cache->release_all(l->seq);
    EXPECT_EQ(cache->free_pages(), 40);
  }
}

// Prompt chunks of Mla::kExpandedPrefillRows+ tokens attend expanded over their rows gathered out
// of the pages (the CPU path), beside absorbed chunks and decodes in the same batch.
TEST(ForwardBatch, LongPromptChunksBesideDecodesEqualSingleSequenceForward) {
  std::mt19937 rng(6);
  const int64_t E = Mla::kExpandedPrefillRows;
  for (const std::string& name : kArchitectures) {
    SCOPED_TRACE(name);
    auto model = Model::load(kFixtures + name);
    const int64_t V = model->config().vocab_size;
    auto cache = scrambled_cache(*model, 4, 80, rng);
    Live a{{}, reference(*model, random_ids(E + 3, V, rng))};  // a fresh prompt of E + 2
    Live b{{}, reference(*model, random_ids(E + 9, V, rng))};  // 6, then E from mid-page
    Live c{{}, reference(*model, random_ids(12, V, rng))};     // 9, then decodes
    Live d{{}, reference(*model, random_ids(E + 2, V, rng))};  // E + 1 alone in a batch
    step(*model, *cache, {&b, &c}, {6, 9}, {true, false});
    step(*model, *cache, {&c, &a, &b}, {1, E + 2, E}, {true, true, false});
    step(*model, *cache, {&d}, {E + 1}, {true});  // only a long chunk: nothing absorbed
    step(*model, *cache, {&a, &b, &c, &d}, {1, 1, 1, 1}, {true, true, true, true});
    for (Live* l : {&a, &b, &c, &d}) cache->release_all(l->seq);
    EXPECT_EQ(cache->free_pages(), 80);
  }
}

TEST(ForwardBatch, SharedPrefixPagesGiveTheLogitsOfAFreshComputation) {
  std::mt19937 rng(8);
  for (const std::string& name : {std::string("v3_bf16"), std::string("llama_gqa")}) {
    SCOPED_TRACE(name);
    auto model = Model::load(kFixtures + name);
    const int64_t V = model->config().vocab_size, pt = 4;
    auto cache = scrambled_cache(*model, pt, 24, rng);
    Live a{{}, reference(*model, random_ids(16, V, rng))};
    step(*model, *cache, {&a}, {13}, {false});
    // a registers its three full pages under the chained hashes of its tokens.
    uint64_t h = 0;
    for (int64_t p = 0; p < 3; ++p) {
      h = prefix_page_hash(h, std::span(a.ref.ids).subspan(size_t(p * pt), size_t(pt)));
      cache->register_prefix(h, a.seq.pages[size_t(p)]);
    }
    EXPECT_EQ(cache->cached_pages(), 3);
    // Looks up the full pages of `ids` page by page, retaining the hits, up to the first miss.
    auto lookup = [&](const std::vector<int32_t>& ids, PagedSequence& seq) {
      uint64_t hash = 0;
      for (size_t p = 0; (p + 1) * size_t(pt) <= ids.size(); ++p) {
        hash = prefix_page_hash(hash, std::span(ids).subspan(p * size_t(pt), size_t(pt)));
        const auto hit = cache->lookup_prefix(hash);
        if (!hit) break;
        seq.pages.push_back(*hit);
      }
      seq.length = int64_t(seq.pages.size()) * pt;
    };

    // b shares a's first 8 tokens, then differs: two hits, then a miss.
    std::vector<int32_t> b_ids(a.ref.ids.begin(), a.ref.ids.begin() + 8);
    for (const int32_t id : random_ids(7, V, rng)) b_ids.push_back(id);
    b_ids[8] = (a.ref.ids[8] + 1) % int32_t(V);
    Live b{{}, reference(*model, b_ids)};
    lookup(b_ids, b.seq);
    ASSERT_EQ(b.seq.pages.size(), 2u);
    EXPECT_EQ(cache->refcount(a.seq.pages[0]), 2);
    step(*model, *cache, {&b}, {6}, {true});
    step(*model, *cache, {&a, &b}, {1, 1}, {true, true});

    // c hits all three of a's pages, then rewinds to 10 and goes on with tokens of its own:
    // position 10 lies in a page a still reads, so truncate must give c a copy of it.
    std::vector<int32_t> c_ids(a.ref.ids.begin(), a.ref.ids.begin() + 12);
    Live c{{}, {}};
    lookup(c_ids, c.seq);
    ASSERT_EQ(c.seq.pages.size(), 3u);
    c_ids.resize(10);
    for (const int32_t id : random_ids(5, V, rng)) c_ids.push_back(id);
    c_ids[10] = (a.ref.ids[10] + 1) % int32_t(V);
    c.ref = reference(*model, c_ids);
    const int32_t shared = c.seq.pages[2];
    cache->truncate(c.seq, 10);
    EXPECT_NE(c.seq.pages[2], shared);
    EXPECT_EQ(c.seq.pages[1], a.seq.pages[1]);
    step(*model, *cache, {&c, &a}, {5, 2}, {true, true});  // a still reads its own page 2
    for (Live* l : {&a, &b, &c}) cache->release_all(l->seq);
    EXPECT_EQ(cache->free_pages(), 24);
    EXPECT_EQ(cache->cached_pages(), 3);
  }
}

TEST(ForwardBatch, BadBatchesAreErrorsAndChangeNothing) {
  auto model = Model::load(kFixtures + "llama_gqa");
  auto cache = model->new_paged_cache(4, 6);
  PagedSequence a, b;
  ASSERT_TRUE(cache->reserve(a, 8));
  const std::vector<int32_t> ids{3, 4, 5, 6, 7, 8};
  auto expect_error = [&](std::vector<BatchSequence> batch, const std::string& what) {
    const int64_t length = a.length;
    try {
      model->forward_batch(batch, *cache);
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("[model] forward_batch", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_EQ(a.length, length);
  };
  expect_error({{std::span(ids), &a}, {std::span(ids).subspan(0, 1), &a}}, "twice");
  expect_error({{std::span(ids), nullptr}}, "no PagedSequence");
  expect_error({{std::span(ids).subspan(0, 0), &a}}, "no new tokens");
  b.pages = {a.pages[0]};
  cache->retain(a.pages[0]);
  expect_error({{std::span(ids).subspan(0, 4), &b}}, "shared");
  cache->release_all(b);
  a.length = 4;
  expect_error({{std::span(ids), &a}}, "needs 10 positions");
  a.length = 0;
  const std::vector<int32_t> bad{3, 400};
  try {
    model->forward_batch({{std::span(bad), &a}}, *cache);
    ADD_FAILURE() << "id outside the vocabulary accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos);
  }
  EXPECT_THROW(model->forward_mtp_batch({}, *cache), Error);  // llama has no MTP layers
  EXPECT_EQ(model->forward_batch({}, *cache).logits.size(0), 0);
}

TEST(ForwardBatch, MtpBatchEqualsForwardMtpFedIncrementally) {
  std::mt19937 rng(13);
  auto model = Model::load(kFixtures + "v3_bf16");
  ASSERT_EQ(model->num_mtp_layers(), 1);
  const int64_t V = model->config().vocab_size, L = model->config().num_hidden_layers;
  auto cache = scrambled_cache(*model, 4, 20, rng);
  EXPECT_EQ(cache->num_layers(), L + 1);
  struct Seq {
    std::vector<int32_t> ids;
    Tensor mtp_ref;  // forward_mtp(ids, 1): row i predicts token i + 2
    PagedSequence seq;
    std::vector<Tensor> h;  // h^0 rows by position, from forward_batch
  };
  std::vector<Seq> seqs(2);
  for (Seq& s : seqs) {
    s.ids = random_ids(14, V, rng);
    s.mtp_ref = model->forward_mtp(s.ids, 1);
  }
  // Main model: runs `T[i]` more tokens of each sequence, keeping their h^0 rows.
  auto main_step = [&](std::vector<int64_t> T) {
    std::vector<BatchSequence> batch;
    for (size_t i = 0; i < seqs.size(); ++i) {
      ASSERT_TRUE(cache->reserve(seqs[i].seq, seqs[i].seq.length + T[i]));
      batch.push_back({std::span(seqs[i].ids).subspan(size_t(seqs[i].seq.length), size_t(T[i])),
                       &seqs[i].seq, true});
    }
    const BatchOutput out = model->forward_batch(batch, *cache);
    for (size_t i = 0; i < seqs.size(); ++i)
      for (int64_t t = 0; t < T[i]; ++t)
        seqs[i].h.push_back(out.hidden.slice(0, out.first_row[i] + t, out.first_row[i] + t + 1));
  };
  // MTP: `N[i]` more MTP positions of each sequence, compared with forward_mtp's rows.
  auto mtp_step = [&](std::vector<int64_t> N) {
    std::vector<MtpBatchSequence> batch;
    std::vector<int64_t> pos0;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Seq& s = seqs[i];
      const int64_t p0 = s.seq.mtp_length, D = model->config().hidden_size;
      Tensor h_prev = Tensor::empty({N[i], D});
      for (int64_t j = 0; j < N[i]; ++j)
        std::copy_n(s.h[size_t(p0 + j)].data<float>(), D, h_prev.data<float>() + j * D);
      batch.push_back({std::span(s.ids).subspan(size_t(p0 + 1), size_t(N[i])), h_prev, &s.seq});
      pos0.push_back(p0);
    }
    const Tensor logits = model->forward_mtp_batch(batch, *cache);
    int64_t row = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
      SCOPED_TRACE("sequence " + std::to_string(i) + " at MTP position " + std::to_string(pos0[i]));
      EXPECT_EQ(seqs[i].seq.mtp_length, pos0[i] + N[i]);
      EXPECT_LE(row_error(logits, row, seqs[i].mtp_ref, pos0[i], N[i]), 1e-4);
      row += N[i];
    }
    EXPECT_EQ(logits.size(0), row);
  };
  main_step({6, 9});
  mtp_step({5, 8});  // prefill of the MTP layer: every position whose next token is known
  for (int k = 0; k < 3; ++k) {
    main_step({1, 1});
    mtp_step({1, 1});
  }
  main_step({2, 1});
  mtp_step({2, 1});  // an accepted draft: two positions at once
  // The MTP layer cannot run ahead of the main model (h_prev comes from it).
  std::vector<MtpBatchSequence> ahead{
      {std::span(seqs[0].ids).subspan(0, 2), Tensor::zeros({2, model->config().hidden_size}),
       &seqs[0].seq}};
  EXPECT_THROW(model->forward_mtp_batch(ahead, *cache), Error);
}
