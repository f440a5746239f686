// Host emulation of the AdamW kernels (src/ops/cuda/adamw_kernels.cuh) for machines without a
// GPU: the kernels' own source on host threads (tc_emulation.h). It checks what the update by rows
// (ops::adamw_step_rows: AdamW::step_async's next lookup's rows first) relies on:
//   - the whole table's launch (adamw_kernel, short blocks of a quarter chunk) steps every
//     element once: the bits of adamw_element applied element by element;
//   - the launch that skips flagged rows leaves those rows' bits as they were and gives the
//     others the whole launch's bits, also where rows straddle the chunks and the pieces;
//   - adamw_rows_kernel over the flagged rows then completes the whole launch's bits;
// for f32 and bf16 moments, whole and split masters, with and without gradient row flags (an
// unflagged gradient row is NaN here: the kernels must not read it). Not timing.
// Build and run by hand (from the repository root):
//   g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I src -I /usr/local/cuda/include
//       bench/kernels/adamw_rows_emulate.cpp -o /tmp/adamw_rows_emulate
//   /tmp/adamw_rows_emulate
#include "tc_emulation.h"
// clang-format off: the emulation must come first
#include "ops/cuda/adamw_kernels.cuh"
// clang-format on

#include <cstdio>
#include <random>
#include <string>

using namespace dseek::ops::cuda;
using dseek::ops::join_bits;
using dseek::ops::split_high;
using dseek::ops::split_low;

namespace {

constexpr unsigned kThreads = 256;  // adamw.cu's block

// One tensor's arrays (a table of one entry), as the GPU holds them.
struct Arrays {
  std::vector<float> value, grad, m, v;  // m, v: f32, or bf16 bits in their first halves
  std::vector<uint16_t> compute, low;    // the bf16 copy; a split master's halves
  std::vector<uint8_t> grad_flags;
  bool operator==(const Arrays& o) const {
    const auto same = [](const auto& a, const auto& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
    };
    return same(value, o.value) && same(m, o.m) && same(v, o.v) && same(compute, o.compute) &&
           same(low, o.low);
  }
};

struct Case {
  int64_t rows, len;
  bool bf16_moments, split, grad_rows;
};

MultiTensorEntry entry_of(Arrays& a, const Case& c) {
  return {c.split ? nullptr : a.value.data(),
          a.grad.data(),
          a.m.data(),
          a.v.data(),
          c.rows * c.len,
          0,
          1,
          a.compute.data(),
          c.grad_rows ? a.grad_flags.data() : nullptr,
          c.grad_rows ? c.len : 0,
          c.split ? a.low.data() : nullptr,
          0};
}

template <bool BF16, bool ROWS>
void launch_table(const MultiTensorEntry& e, const AdamWScalars& s, const uint8_t* skip,
                  int64_t len) {
  const int parts = 4;  // DSEEK_UPDATE_PARTS's default
  const int64_t chunks = (e.n + kMultiTensorChunk - 1) / kMultiTensorChunk;
  gridDim = uint3{unsigned(chunks * parts), 1, 1};
  for (unsigned b = 0; b < gridDim.x; ++b)
    run_block(uint3{b, 0, 0}, kThreads,
              [&] { adamw_kernel<BF16, ROWS>(&e, 1, chunks, parts, s, skip, len); });
}

template <bool BF16, bool ROWS>
void launch_rows(const MultiTensorEntry& e, const AdamWScalars& s, const std::vector<int32_t>& rows,
                 int64_t len) {
  gridDim = uint3{unsigned(rows.size()), 1, 1};
  for (unsigned b = 0; b < gridDim.x; ++b)
    run_block(uint3{b, 0, 0}, kThreads, [&] {
      adamw_rows_kernel<BF16, ROWS>(&e, rows.data(), int64_t(rows.size()), len, s);
    });
}

template <bool BF16, bool ROWS>
bool run_case(const Case& c, std::mt19937& rng) {
  const int64_t n = c.rows * c.len;
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Arrays start;
  start.value.resize(size_t(n));
  for (float& x : start.value) x = dist(rng);
  start.grad.resize(size_t(n));
  for (float& x : start.grad) x = 0.1f * dist(rng);
  start.grad_flags.assign(size_t(c.rows), 1);
  if (c.grad_rows)  // a row whose flag is 0 holds zeros and is not read: NaN shows a read
    for (int64_t r = 0; r < c.rows; r += 3) {
      start.grad_flags[size_t(r)] = 0;
      for (int64_t j = 0; j < c.len; ++j) start.grad[size_t(r * c.len + j)] = NAN;
    }
  start.m.assign(size_t(n), 0.0f);
  start.v.assign(size_t(n), 0.0f);
  for (int64_t k = 0; k < n; ++k) {  // moments of an earlier step
    const float m = 0.01f * dist(rng), v = 1e-4f * (1.0f + dist(rng) * dist(rng));
    if (BF16) {
      reinterpret_cast<uint16_t*>(start.m.data())[k] = bf16_bits(m);
      reinterpret_cast<uint16_t*>(start.v.data())[k] = bf16_bits(v);
    } else {
      start.m[size_t(k)] = m;
      start.v[size_t(k)] = v;
    }
  }
  start.compute.resize(size_t(n));
  start.low.resize(size_t(n));
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t bits = __float_as_uint(start.value[size_t(k)]);
    start.compute[size_t(k)] = c.split ? split_high(bits) : bf16_bits(start.value[size_t(k)]);
    start.low[size_t(k)] = split_low(bits);
  }
  if (c.split) start.value.assign(size_t(n), NAN);  // no f32 value beside the halves

  // Step 3 of lr 1e-2, betas (0.9, 0.95), weight decay 0.1, gradients scaled by 0.75.
  const float b1 = 0.9f, b2 = 0.95f, bc1 = 1.0f - 0.9f * 0.9f * 0.9f,
              bc2 = 1.0f - 0.95f * 0.95f * 0.95f;
  const AdamWScalars s{b1,    b2,     1.0f - b1, 1.0f - b2, 1e-2f / bc1, std::sqrt(bc2),
                       1e-8f, 0.999f, 0.75f,     nullptr};

  // The reference: adamw_element on each element (the unflagged gradient rows as zeros).
  Arrays want = start;
  for (int64_t k = 0; k < n; ++k) {
    const MomentArray<BF16> m_of{want.m.data()}, v_of{want.v.data()};
    float p = c.split ? __uint_as_float(join_bits(want.compute[size_t(k)], want.low[size_t(k)]))
                      : want.value[size_t(k)];
    float m = m_of.load(k), v = v_of.load(k);
    const float g = want.grad_flags[size_t(k / c.len)] ? want.grad[size_t(k)] : 0.0f;
    adamw_element(p, m, v, g, s, s.decay_factor);
    m_of.store(k, m);
    v_of.store(k, v);
    if (c.split) {
      want.compute[size_t(k)] = split_high(__float_as_uint(p));
      want.low[size_t(k)] = split_low(__float_as_uint(p));
    } else {
      want.value[size_t(k)] = p;
      want.compute[size_t(k)] = bf16_bits(p);
    }
  }

  // Rows flagged for the rows kernel: every 7th, and a run of neighbours across a chunk boundary.
  std::vector<uint8_t> listed(size_t(c.rows), 0);
  std::vector<int32_t> rows;
  for (int64_t r = 0; r < c.rows; ++r) {
    const int64_t boundary = kMultiTensorChunk / c.len;
    if (r % 7 == 2 || (r >= boundary - 1 && r <= boundary + 1)) {
      listed[size_t(r)] = 1;
      rows.push_back(int32_t(r));
    }
  }
  std::shuffle(rows.begin(), rows.end(), rng);  // any order

  Arrays whole = start, parts = start;
  launch_table<BF16, ROWS>(entry_of(whole, c), s, nullptr, 0);
  launch_table<BF16, ROWS>(entry_of(parts, c), s, listed.data(), c.len);
  // After the rest: the listed rows as they were, the others the whole launch's.
  int64_t wrong = 0;
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t j = 0; j < c.len; ++j) {
      const size_t k = size_t(r * c.len + j);
      const Arrays& ref = listed[size_t(r)] ? start : whole;
      const bool same_master =
          c.split ? parts.compute[k] == ref.compute[k] && parts.low[k] == ref.low[k]
                  : std::memcmp(&parts.value[k], &ref.value[k], 4) == 0;
      wrong += same_master ? 0 : 1;
    }
  launch_rows<BF16, ROWS>(entry_of(parts, c), s, rows, c.len);
  const bool whole_ok = whole == want, parts_ok = parts == whole && wrong == 0;
  std::printf(
      "rows %4ld × %3ld, %s moments, %s master%s: whole launch %s, the rest %s (%ld "
      "elements wrong), then the listed %zu rows %s\n",
      long(c.rows), long(c.len), BF16 ? "bf16" : "f32", c.split ? "split" : "whole",
      c.grad_rows ? ", gradient row flags" : "", whole_ok ? "ok" : "FAIL",
      wrong == 0 ? "ok" : "FAIL", long(wrong), rows.size(), parts_ok ? "ok" : "FAIL");
  return whole_ok && parts_ok;
}

}  // namespace

int main() {
  std::mt19937 rng(5);
  bool ok = true;
  for (const bool split : {false, true}) {
    // 900 rows of 40: 36,000 elements, three chunks, rows straddling chunks and pieces.
    ok &= run_case<false, false>({900, 40, false, split, false}, rng);
    ok &= run_case<true, false>({900, 40, true, split, false}, rng);
    ok &= run_case<false, true>({900, 40, false, split, true}, rng);
    ok &= run_case<true, true>({900, 40, true, split, true}, rng);
  }
  ok &= run_case<true, true>({9, 2048, true, false, true}, rng);  // V2-Lite's rows: a chunk of 8
  ok &= run_case<true, false>({3, 4, true, false, false}, rng);   // smaller than a quad's chunk
  std::printf("%s\n", ok ? "all ok" : "FAILURES");
  return ok ? 0 : 1;
}
