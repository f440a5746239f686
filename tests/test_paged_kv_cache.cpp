// PagedKVCache bookkeeping: allocation and reference counts, exhaustion, all-or-nothing reserve,
// truncate (with copy-on-write of a shared page), prefix registration and lookup, LRU eviction of
// cached pages, and that a page in use is never evicted; prefix_page_hash chaining.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "model/paged_kv_cache.h"

using namespace dseek;

namespace {

// One MLA-like layer (keys only) and one MHA-like layer (keys and values).
PagedKVCache make_cache(int64_t page_tokens, int64_t num_pages) {
  return PagedKVCache({{6, 0}, {4, 4}}, page_tokens, num_pages);
}

}  // namespace

TEST(PagedKVCache, AllocateReleaseAndRefcounts) {
  PagedKVCache c = make_cache(4, 3);
  EXPECT_EQ(c.free_pages(), 3);
  EXPECT_EQ(c.nbytes(), size_t(3 * 4 * (6 + 4 + 4)) * sizeof(float));
  std::set<int32_t> got;
  for (int i = 0; i < 3; ++i) {
    const auto p = c.allocate();
    ASSERT_TRUE(p.has_value());
    EXPECT_EQ(c.refcount(*p), 1);
    got.insert(*p);
  }
  EXPECT_EQ(got.size(), 3u);
  EXPECT_EQ(c.free_pages(), 0);
  EXPECT_FALSE(c.allocate().has_value());  // exhausted

  c.retain(1);
  EXPECT_EQ(c.refcount(1), 2);
  c.release(1);
  EXPECT_EQ(c.free_pages(), 0);  // still owned once
  c.release(1);
  EXPECT_EQ(c.free_pages(), 1);
  EXPECT_EQ(c.allocate(), std::optional<int32_t>(1));

  EXPECT_THROW(c.retain(7), Error);
  EXPECT_THROW(c.release(-1), Error);
  c.release(0);
  EXPECT_THROW(c.release(0), Error);  // no longer owned
  EXPECT_THROW(c.retain(0), Error);   // free: must be allocated, not retained
  EXPECT_THROW(PagedKVCache({{4, 0}}, 0, 3), Error);
  EXPECT_THROW(PagedKVCache({{4, 0}}, 4, 0), Error);
}

TEST(PagedKVCache, RowsOfDifferentPagesAndLayersDoNotOverlap) {
  PagedKVCache c = make_cache(3, 4);
  float v = 1.0f;
  for (int64_t l = 0; l < 2; ++l)
    for (int32_t p = 0; p < 4; ++p)
      for (int64_t s = 0; s < 3; ++s) {
        for (int64_t i = 0; i < c.spec(l).key_width; ++i) c.key_row(l, p, s)[i] = v++;
        if (c.spec(l).value_width > 0)
          for (int64_t i = 0; i < c.spec(l).value_width; ++i) c.value_row(l, p, s)[i] = v++;
      }
  v = 1.0f;
  for (int64_t l = 0; l < 2; ++l)
    for (int32_t p = 0; p < 4; ++p)
      for (int64_t s = 0; s < 3; ++s) {
        for (int64_t i = 0; i < c.spec(l).key_width; ++i) ASSERT_EQ(c.key_row(l, p, s)[i], v++);
        if (c.spec(l).value_width > 0) {
          for (int64_t i = 0; i < c.spec(l).value_width; ++i) {
            ASSERT_EQ(c.value_row(l, p, s)[i], v++);
          }
        }
      }
  // The pool view addresses the same storage.
  EXPECT_EQ(c.keys(1).data<float>() + (2 * 3 + 1) * 4, c.key_row(1, 2, 1));
}

TEST(PagedKVCache, ReserveIsAllOrNothing) {
  PagedKVCache c = make_cache(4, 5);
  PagedSequence a, b;
  EXPECT_TRUE(c.reserve(a, 9));  // 3 pages
  EXPECT_EQ(a.pages.size(), 3u);
  EXPECT_TRUE(c.reserve(a, 12));  // still 3
  EXPECT_EQ(a.pages.size(), 3u);
  EXPECT_FALSE(c.reserve(b, 9));  // needs 3, 2 left
  EXPECT_TRUE(b.pages.empty());
  EXPECT_EQ(c.free_pages(), 2);
  EXPECT_TRUE(c.reserve(b, 8));
  EXPECT_EQ(c.free_pages(), 0);
  c.release_all(a);
  EXPECT_TRUE(a.pages.empty());
  EXPECT_EQ(c.free_pages(), 3);
}

TEST(PagedKVCache, TruncateReleasesTrailingPages) {
  PagedKVCache c = make_cache(4, 6);
  PagedSequence s;
  ASSERT_TRUE(c.reserve(s, 14));  // 4 pages
  s.length = 14;
  s.mtp_length = 13;
  const int32_t third = s.pages[2];
  c.truncate(s, 9);
  EXPECT_EQ(s.pages.size(), 3u);
  EXPECT_EQ(s.length, 9);
  EXPECT_EQ(s.mtp_length, 9);
  EXPECT_EQ(s.pages[2], third);  // unshared: kept in place
  EXPECT_EQ(c.free_pages(), 3);
  c.truncate(s, 8);
  EXPECT_EQ(s.pages.size(), 2u);
  EXPECT_EQ(c.free_pages(), 4);
  EXPECT_THROW(c.truncate(s, 9), Error);  // past the pages held
  c.truncate(s, 0);
  EXPECT_TRUE(s.pages.empty());
  EXPECT_EQ(c.free_pages(), 6);
}

TEST(PagedKVCache, TruncateIntoASharedPageCopiesIt) {
  PagedKVCache c = make_cache(4, 3);
  PagedSequence a, b;
  ASSERT_TRUE(c.reserve(a, 8));
  a.length = 8;
  for (int64_t s = 0; s < 4; ++s) c.key_row(0, a.pages[1], s)[0] = float(10 + s);
  for (int64_t s = 0; s < 4; ++s) c.value_row(1, a.pages[1], s)[3] = float(20 + s);
  for (const int32_t p : a.pages) c.retain(p);
  b.pages = a.pages;
  b.length = 8;
  c.truncate(b, 6);  // rewinding into page 1, which a still reads
  ASSERT_EQ(b.pages.size(), 2u);
  EXPECT_EQ(b.pages[0], a.pages[0]);
  EXPECT_NE(b.pages[1], a.pages[1]);
  EXPECT_EQ(c.refcount(a.pages[1]), 1);
  EXPECT_EQ(c.key_row(0, b.pages[1], 1)[0], 11.0f);
  EXPECT_EQ(c.value_row(1, b.pages[1], 1)[3], 21.0f);
  EXPECT_EQ(c.free_pages(), 0);
  // No page left to copy into: an error, and b unchanged.
  PagedSequence d;
  d.pages = a.pages;
  for (const int32_t p : d.pages) c.retain(p);
  EXPECT_THROW(c.truncate(d, 5), Error);
  EXPECT_EQ(d.pages, a.pages);
}

TEST(PagedKVCache, PrefixRegistrationAndLookup) {
  PagedKVCache c = make_cache(4, 4);
  const std::vector<int32_t> ids{5, 6, 7, 8, 9, 10, 11, 12};
  const uint64_t h0 = prefix_page_hash(0, std::span(ids).subspan(0, 4));
  const uint64_t h1 = prefix_page_hash(h0, std::span(ids).subspan(4, 4));
  PagedSequence a;
  ASSERT_TRUE(c.reserve(a, 8));
  c.register_prefix(h0, a.pages[0]);
  c.register_prefix(h1, a.pages[1]);
  c.register_prefix(h1, a.pages[0]);  // a second page under h1 is ignored, as is a page twice
  c.register_prefix(12345, a.pages[0]);
  EXPECT_EQ(c.cached_pages(), 2);
  EXPECT_TRUE(c.is_registered(a.pages[0]));

  const auto hit = c.lookup_prefix(h0);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(*hit, a.pages[0]);
  EXPECT_EQ(c.refcount(a.pages[0]), 2);
  EXPECT_FALSE(c.lookup_prefix(h1 + 1).has_value());
  EXPECT_FALSE(c.lookup_prefix(12345).has_value());

  // Released to refcount 0, a registered page stays cached and can still be found.
  c.release(*hit);
  c.release_all(a);
  EXPECT_EQ(c.cached_pages(), 2);
  EXPECT_EQ(c.free_pages(), 4);
  const auto again = c.lookup_prefix(h1);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(c.refcount(*again), 1);
  EXPECT_EQ(c.free_pages(), 3);
  c.release(*again);
  EXPECT_THROW(c.register_prefix(1, *again), Error);  // only an owned page can be registered
}

TEST(PagedKVCache, EvictsLeastRecentlyReleasedCachedPageAndNeverAnOwnedOne) {
  PagedKVCache c = make_cache(2, 4);
  std::vector<int32_t> p;
  for (int i = 0; i < 4; ++i) p.push_back(*c.allocate());
  for (int i = 0; i < 4; ++i) c.register_prefix(uint64_t(100 + i), p[size_t(i)]);
  // Release order 2, 0, 3; page 1 stays owned.
  c.release(p[2]);
  c.release(p[0]);
  c.release(p[3]);
  EXPECT_EQ(c.free_pages(), 3);
  // A hit on page 0 makes it owned again, then most recently released.
  ASSERT_EQ(c.lookup_prefix(100), std::optional<int32_t>(p[0]));
  c.release(p[0]);
  // LRU order now 2, 3, 0.
  EXPECT_EQ(c.allocate(), std::optional<int32_t>(p[2]));
  EXPECT_FALSE(c.lookup_prefix(102).has_value());  // evicted: unregistered
  EXPECT_EQ(c.allocate(), std::optional<int32_t>(p[3]));
  EXPECT_EQ(c.allocate(), std::optional<int32_t>(p[0]));
  EXPECT_FALSE(c.allocate().has_value());  // page 1 is owned: never evicted
  EXPECT_EQ(c.refcount(p[1]), 1);
  EXPECT_EQ(c.lookup_prefix(101), std::optional<int32_t>(p[1]));
  EXPECT_EQ(c.cached_pages(), 1);
}

TEST(PagedKVCache, FreshPagesGoBeforeEvictingCachedOnes) {
  PagedKVCache c = make_cache(2, 3);
  const int32_t a = *c.allocate();
  c.register_prefix(7, a);
  c.release(a);
  const int32_t b = *c.allocate();
  const int32_t d = *c.allocate();
  EXPECT_NE(b, a);
  EXPECT_NE(d, a);
  EXPECT_EQ(c.lookup_prefix(7), std::optional<int32_t>(a));  // still cached
}

TEST(PagedKVCache, PrefixHashChainsAndSeparatesPages) {
  const std::vector<int32_t> x{1, 2, 3, 4}, y{1, 2, 4, 3}, z{1, 2, 3};
  const uint64_t hx = prefix_page_hash(0, x);
  EXPECT_EQ(hx, prefix_page_hash(0, x));
  EXPECT_NE(hx, prefix_page_hash(0, y));  // order matters
  EXPECT_NE(hx, prefix_page_hash(1, x));  // the chain matters
  EXPECT_NE(prefix_page_hash(0, z), prefix_page_hash(0, x));
  // Nearby inputs spread over the whole word: no two of 4096 single-id pages collide and their
  // top bits take both values.
  std::set<uint64_t> seen;
  int top = 0;
  for (int32_t id = 0; id < 4096; ++id) {
    const int32_t one[1] = {id};
    const uint64_t h = prefix_page_hash(hx, one);
    seen.insert(h);
    top += int(h >> 63);
  }
  EXPECT_EQ(seen.size(), 4096u);
  EXPECT_GT(top, 1800);
  EXPECT_LT(top, 2300);
}
