// Paged attention on CUDA against the CPU op: several sequences of different lengths in one call
// (T = 1 decodes, chunks that start mid-page and cross pages, one sequence with no new query),
// page tables handed out in a shuffled order, MHA, GQA and MLA's latent decode (one key head of
// 576, values a strided view of the first 512 columns of the key rows, 16 and 128 query heads),
// f32 and bf16. Pool rows no sequence owns hold NaN, so a row read through the wrong page shows.
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "backend/backend_harness.h"
#include "ops/paged_attention.h"

namespace dseek::backend_test {
namespace {

struct SeqSpec {
  int64_t T, pos0;
};

struct Layout {
  int64_t H, Hk, dk, dv;
  bool latent;  // values = the first dv columns of the key rows (MLA)
};

// Long decodes (1, 299) and (1, 1500) make the kernel split their keys into ranges.
const std::vector<SeqSpec> kSeqs = {{1, 0},   {1, 299}, {7, 13}, {0, 5},
                                    {33, 64}, {1, 40},  {20, 0}, {1, 1500}};

void check(const Layout& lay, int64_t page_tokens, DType act, std::mt19937& rng) {
  int64_t pages_needed = 0, rows = 0;
  for (const SeqSpec& s : kSeqs) {
    pages_needed += (s.pos0 + s.T + page_tokens - 1) / page_tokens;
    rows += s.T;
  }
  const int64_t num_pages = pages_needed + 3;  // spare pages stay NaN
  const int64_t kw = lay.Hk * lay.dk, vw = lay.Hk * lay.dv;
  Tensor keys = Tensor::poisoned({num_pages * page_tokens, kw});
  Tensor values = lay.latent ? Tensor() : Tensor::poisoned({num_pages * page_tokens, vw});
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  size_t next = 0;
  std::vector<std::vector<int32_t>> tables;
  for (const SeqSpec& s : kSeqs) {
    const int64_t S = s.pos0 + s.T;
    std::vector<int32_t> table;
    for (int64_t p = 0; p < (S + page_tokens - 1) / page_tokens; ++p)
      table.push_back(order[next++]);
    const Tensor k = rounded(rand({S, kw}, rng, 1.5f), act);
    const Tensor v = rounded(rand({S, vw}, rng, 1.5f), act);
    for (int64_t pos = 0; pos < S; ++pos) {
      const int64_t row =
          int64_t(table[size_t(pos / page_tokens)]) * page_tokens + pos % page_tokens;
      std::copy_n(k.data<float>() + pos * kw, kw, keys.data<float>() + row * kw);
      if (!lay.latent) std::copy_n(v.data<float>() + pos * vw, vw, values.data<float>() + row * vw);
    }
    tables.push_back(std::move(table));
  }
  std::vector<ops::PagedAttentionSeq> seqs;
  for (size_t i = 0; i < kSeqs.size(); ++i) seqs.push_back({kSeqs[i].T, kSeqs[i].pos0, tables[i]});

  // q: a strided view, the first dk columns of wider rows.
  const Tensor qbuf = rounded(rand({rows, lay.H, lay.dk + 64}, rng, 1.5f), act);
  const Tensor q = qbuf.slice(2, 0, lay.dk);
  const Tensor gq = on_gpu(qbuf, act).slice(2, 0, lay.dk);
  const Tensor gkeys = on_gpu(keys, act);
  const Tensor cvalues = lay.latent ? keys.slice(1, 0, lay.dv) : values;
  const Tensor gvalues = lay.latent ? gkeys.slice(1, 0, lay.dv) : on_gpu(values, act);

  const float scale = 1.5f / std::sqrt(float(lay.dk));
  const Tensor want = ops::paged_attention(q, keys, cvalues, lay.Hk, page_tokens, seqs, scale);
  (void)Tensor::poisoned({want.numel()}, act, Device::CUDA);  // see test_backend_attention.cpp
  const Tensor got = ops::paged_attention(gq, gkeys, gvalues, lay.Hk, page_tokens, seqs, scale);
  EXPECT_EQ(got.dtype(), act);
  EXPECT_TRUE(got.is_cuda());
  const std::string name = "paged_attention H" + std::to_string(lay.H) + "/" +
                           std::to_string(lay.Hk) + " d" + std::to_string(lay.dk) + "/" +
                           std::to_string(lay.dv) + (lay.latent ? " latent" : "") + " page" +
                           std::to_string(page_tokens);
  expect_close(name, want.shape(), act, want, got);
}

TEST(BackendOps, PagedAttention) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(31);
  const std::vector<Layout> layouts = {{4, 4, 16, 16, false},
                                       {8, 2, 40, 24, false},
                                       {16, 1, 192, 128, false},
                                       {16, 1, 576, 512, true},
                                       {128, 1, 576, 512, true}};
  for (DType act : kActDtypes)
    for (const Layout& lay : layouts)
      for (int64_t page_tokens : {16, 7}) check(lay, page_tokens, act, rng);
}

}  // namespace
}  // namespace dseek::backend_test
