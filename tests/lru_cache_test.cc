// runtime::LruCache: the bounded cache behind an execution context's per-shape GPU programs.
#include "runtime/lru_cache.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "kiln/tensor.h"

namespace kiln::runtime {
namespace {

TEST(LruCache, FindMarksRecentAndCounts) {
  LruCache<int, std::string> c(2);
  EXPECT_EQ(c.capacity(), 2u);
  EXPECT_EQ(c.find(1), nullptr);
  EXPECT_TRUE(c.insert(1, "one").empty());
  EXPECT_TRUE(c.insert(2, "two").empty());
  ASSERT_NE(c.find(1), nullptr);  // 1 is now the most recent: 2 goes first
  EXPECT_EQ(*c.find(1), "one");
  auto evicted = c.insert(3, "three");
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0].first, 2);
  EXPECT_EQ(evicted[0].second, "two");
  EXPECT_EQ(c.find(2), nullptr);
  EXPECT_EQ(*c.find(3), "three");
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(c.hits(), 3u);
  EXPECT_EQ(c.misses(), 2u);
  EXPECT_EQ(c.evictions(), 1u);
  EXPECT_EQ(*c.most_recent(), "three");
}

TEST(LruCache, InsertReplacesAndReturnsTheOldValue) {
  LruCache<std::string, int> c(3);
  c.insert("a", 1);
  c.insert("b", 2);
  auto old = c.insert("a", 10);
  ASSERT_EQ(old.size(), 1u);
  EXPECT_EQ(old[0].second, 1);
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(*c.find("a"), 10);
  EXPECT_EQ(c.evictions(), 0u);
}

TEST(LruCache, CapacityOneKeepsOnlyTheLast) {
  LruCache<int, int> c(1);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(c.find(i), nullptr);
    c.insert(i, i * i);
    EXPECT_EQ(c.size(), 1u);
  }
  EXPECT_EQ(*c.find(4), 16);
  EXPECT_EQ(c.find(3), nullptr);
  EXPECT_EQ(c.evictions(), 4u);
}

TEST(LruCache, ShrinkingEvictsTheLeastRecentAndClearKeepsCounters) {
  LruCache<int, std::unique_ptr<int>> c(4);  // move-only values, as GPU programs are
  for (int i = 0; i < 4; ++i) c.insert(i, std::make_unique<int>(i));
  c.find(0);
  c.find(1);
  auto evicted = c.set_capacity(2);  // 2 and 3 are the least recent
  ASSERT_EQ(evicted.size(), 2u);
  EXPECT_EQ(evicted[0].first, 2);
  EXPECT_EQ(evicted[1].first, 3);
  EXPECT_EQ(*evicted[1].second, 3);
  EXPECT_EQ(c.size(), 2u);
  ASSERT_NE(c.find(0), nullptr);
  c.clear();
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.most_recent(), nullptr);
  EXPECT_EQ(c.find(0), nullptr);
  EXPECT_EQ(c.hits(), 3u);
  EXPECT_EQ(c.misses(), 1u);
}

TEST(LruCache, KeysOfShapes) {
  // The context's key holds maps of shapes: ordered comparison is all the cache needs.
  using Key = std::map<std::string, Shape>;
  LruCache<Key, int> c(8);
  c.insert({{"x", {1, 3}}}, 1);
  c.insert({{"x", {2, 3}}}, 2);
  EXPECT_EQ(*c.find({{"x", {1, 3}}}), 1);
  EXPECT_EQ(c.find({{"x", {3, 3}}}), nullptr);
  EXPECT_EQ(*c.find({{"x", {2, 3}}}), 2);
}

}  // namespace
}  // namespace kiln::runtime
