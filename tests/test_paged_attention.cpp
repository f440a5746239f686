// ops::paged_attention against ops::causal_attention on each sequence's rows gathered into a
// contiguous cache: MHA, GQA and MLA-like (one shared key head, values a strided view of the key
// rows) layouts, awkward sizes, page tables out of order, T = 1 decodes and T > 1 chunks that start
// mid-page and cross pages. Pool rows no sequence owns (other pages, slots past a sequence's last
// position) hold NaN, so a row read through the wrong page shows; the kernel's output is poisoned
// too, so a row left unwritten shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"
#include "ops/attention.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/paged_attention.h"
#include "test_ops_util.h"

using namespace dseek;
using dseek::testing::max_abs_diff;
using dseek::testing::random_tensor;

namespace {

struct SeqSpec {
  int64_t T, pos0;
};

struct Layout {
  int64_t H, Hk, dk, dv;
  bool latent;  // values = first dv columns of the key rows (MLA)
};

void check_layout(const Layout& lay, int64_t page_tokens, const std::vector<SeqSpec>& specs,
                  uint32_t seed) {
  std::mt19937 rng(seed);
  int64_t pages_needed = 0, rows = 0;
  for (const SeqSpec& s : specs) {
    pages_needed += (s.pos0 + s.T + page_tokens - 1) / page_tokens;
    rows += s.T;
  }
  const int64_t num_pages = pages_needed + 5;  // spare pages stay NaN
  const int64_t kw = lay.Hk * lay.dk, vw = lay.Hk * lay.dv;
  Tensor keys = Tensor::poisoned({num_pages * page_tokens, kw});
  Tensor values = lay.latent ? keys.slice(1, 0, vw) : Tensor::poisoned({num_pages * page_tokens, vw});

  // Hand out the pages in a scrambled order.
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  size_t next = 0;

  const Tensor q = random_tensor({rows, lay.H, lay.dk}, DType::F32, rng, 1.5f);
  std::vector<std::vector<int32_t>> tables;
  std::vector<Tensor> k_seq, v_seq;
  for (const SeqSpec& s : specs) {
    const int64_t S = s.pos0 + s.T;
    std::vector<int32_t> table;
    for (int64_t p = 0; p < (S + page_tokens - 1) / page_tokens; ++p) table.push_back(order[next++]);
    Tensor k = random_tensor({S, lay.Hk, lay.dk}, DType::F32, rng, 1.5f);
    Tensor v = lay.latent ? k.slice(2, 0, lay.dv).contiguous()
                          : random_tensor({S, lay.Hk, lay.dv}, DType::F32, rng, 1.5f);
    for (int64_t pos = 0; pos < S; ++pos) {
      const int64_t row = int64_t(table[size_t(pos / page_tokens)]) * page_tokens + pos % page_tokens;
      std::copy_n(k.data<float>() + pos * kw, kw, keys.data<float>() + row * kw);
      if (!lay.latent)
        std::copy_n(v.data<float>() + pos * vw, vw, values.data<float>() + row * vw);
    }
    tables.push_back(std::move(table));
    k_seq.push_back(k);
    v_seq.push_back(v);
  }
  std::vector<ops::PagedAttentionSeq> seqs;
  for (size_t i = 0; i < specs.size(); ++i) seqs.push_back({specs[i].T, specs[i].pos0, tables[i]});

  const float scale = 0.37f;
  const Tensor out = ops::paged_attention(q, keys, values, lay.Hk, page_tokens, seqs, scale);
  ASSERT_EQ(out.shape(), (Shape{rows, lay.H, lay.dv}));
  int64_t row0 = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    const Tensor qi = q.slice(0, row0, row0 + specs[i].T);
    const Tensor ref = ops::causal_attention(qi, k_seq[i], v_seq[i], scale);
    EXPECT_LE(max_abs_diff(out.slice(0, row0, row0 + specs[i].T).contiguous(), ref), 1e-5);
    row0 += specs[i].T;
  }

  // The kernel writes every output value (its buffer starts as NaN).
  Tensor poisoned_out = Tensor::poisoned({rows, lay.H, lay.dv});
  std::vector<int64_t> q_start{0}, pos0, page_start{0};
  std::vector<int32_t> table;
  for (size_t i = 0; i < specs.size(); ++i) {
    q_start.push_back(q_start.back() + specs[i].T);
    pos0.push_back(specs[i].pos0);
    table.insert(table.end(), tables[i].begin(), tables[i].end());
    page_start.push_back(int64_t(table.size()));
  }
  ops::cpu::paged_attention(ops::cpu::PagedAttentionArgs{
      q.data<float>(), q.strides()[0], q.strides()[1], keys.data<float>(), keys.strides()[0],
      values.data<float>(), values.strides()[0], poisoned_out.data<float>(), lay.H, lay.Hk, lay.dk,
      lay.dv, page_tokens, scale, int64_t(specs.size()), q_start.data(), pos0.data(),
      table.data(), page_start.data()});
  EXPECT_LE(max_abs_diff(poisoned_out, out), 0.0);
}

}  // namespace

TEST(PagedAttention, MatchesCausalAttentionOnGatheredRows) {
  // Decodes at several lengths (page boundary, mid-page), a fresh prefill, and chunks that start
  // mid-page and run across pages.
  const std::vector<SeqSpec> mixed{{1, 0}, {1, 7}, {1, 8}, {5, 3}, {11, 0}, {9, 13}, {1, 30}};
  const std::vector<Layout> layouts{
      {4, 4, 8, 8, false},    // MHA
      {6, 2, 7, 5, false},    // GQA with odd head sizes
      {19, 1, 13, 9, true},   // MLA-like: 19 heads (three head blocks) on one latent head
      {3, 3, 1, 1, false},    // width 1
  };
  uint32_t seed = 11;
  for (const Layout& lay : layouts)
    for (const int64_t page_tokens : {1, 4, 7}) {
      SCOPED_TRACE("H " + std::to_string(lay.H) + " Hk " + std::to_string(lay.Hk) +
                   " page_tokens " + std::to_string(page_tokens));
      check_layout(lay, page_tokens, mixed, seed++);
      check_layout(lay, page_tokens, {{1, 0}}, seed++);
    }
}

TEST(PagedAttention, LargeEnoughToRunInParallel) {
  // Crosses the OpenMP threshold so the threaded path is what gets compared.
  check_layout({16, 1, 40, 32, true}, 16, {{1, 100}, {1, 63}, {24, 40}, {1, 5}}, 99);
}

TEST(PagedAttention, BadArgumentsAreErrors) {
  std::mt19937 rng(3);
  const Tensor q = random_tensor({3, 4, 8}, DType::F32, rng);
  const Tensor keys = random_tensor({16, 16}, DType::F32, rng);
  const Tensor values = random_tensor({16, 16}, DType::F32, rng);
  const std::vector<int32_t> pages{2, 0};
  const std::vector<int32_t> bad_page{2, 4};
  auto call = [&](std::vector<ops::PagedAttentionSeq> seqs, int64_t Hk, int64_t pt) {
    return ops::paged_attention(q, keys, values, Hk, pt, seqs, 1.0f);
  };
  EXPECT_NO_THROW(call({{3, 5, pages}}, 2, 4));
  EXPECT_THROW(call({{3, 6, pages}}, 2, 4), Error);     // pages cover 8 positions, 9 needed
  EXPECT_THROW(call({{3, 5, bad_page}}, 2, 4), Error);  // page 4 of 4
  EXPECT_THROW(call({{2, 5, pages}}, 2, 4), Error);     // 2 queries, q has 3 rows
  EXPECT_THROW(call({{3, 5, pages}}, 3, 4), Error);     // 4 heads on 3 key heads
  EXPECT_THROW(call({{3, 5, pages}}, 2, 5), Error);     // 16 rows are not pages of 5
  try {
    call({{3, 5, pages}}, 1, 4);  // key rows of 16 ≠ 1 · 8
    ADD_FAILURE() << "width mismatch not detected";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[paged_attention]", 0), 0u) << e.what();
  }
}
