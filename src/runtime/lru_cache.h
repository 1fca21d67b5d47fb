// A bounded cache that keeps the most recently used entries: an execution context's GPU programs, one per
// input shape (and CUDA graph flag and stream) seen, so that a repeated shape replays its program and its
// captured CUDA graph instead of planning and capturing again. Not thread-safe: one owner (a context).
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <utility>
#include <vector>

namespace kiln::runtime {

// Key needs operator<. Entries are values in a list, so a pointer from find() stays valid until that
// entry is evicted, erased or cleared.
template <typename Key, typename Value>
class LruCache {
 public:
  using Entry = std::pair<Key, Value>;

  explicit LruCache(size_t capacity = 8) : capacity_(capacity) { assert(capacity >= 1); }

  // The entry for `key`, made the most recently used, or null; counts a hit or a miss.
  Value* find(const Key& key) {
    auto it = index_.find(key);
    if (it == index_.end()) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    entries_.splice(entries_.begin(), entries_, it->second);
    return &it->second->second;
  }

  // Adds (or replaces) the entry for `key` as the most recently used. Returns the value `key` had before,
  // if any, then the entries that no longer fit, least recently used first (evictions): the caller decides when they are destroyed (a GPU program must not be
  // destroyed while its work may be in flight); ignoring the result destroys them at once.
  std::vector<Entry> insert(Key key, Value value) {
    std::vector<Entry> evicted;
    if (auto it = index_.find(key); it != index_.end()) {
      evicted.push_back(std::move(*it->second));
      entries_.erase(it->second);
      index_.erase(it);
    }
    entries_.emplace_front(std::move(key), std::move(value));
    index_.emplace(entries_.front().first, entries_.begin());
    trim(&evicted);
    return evicted;
  }

  // The most recently used entry's value (null when empty); counts nothing.
  Value* most_recent() { return entries_.empty() ? nullptr : &entries_.front().second; }

  // Bounds the cache to `capacity` (>= 1) entries; returns those that no longer fit, as insert() does.
  std::vector<Entry> set_capacity(size_t capacity) {
    assert(capacity >= 1);
    capacity_ = capacity;
    std::vector<Entry> evicted;
    trim(&evicted);
    return evicted;
  }

  // Drops every entry, most recently used last; the hit and miss counters stay.
  void clear() {
    index_.clear();
    while (!entries_.empty()) entries_.pop_back();
  }

  size_t size() const { return entries_.size(); }
  size_t capacity() const { return capacity_; }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  uint64_t evictions() const { return evictions_; }

 private:
  void trim(std::vector<Entry>* evicted) {
    while (entries_.size() > capacity_) {
      index_.erase(entries_.back().first);
      evicted->push_back(std::move(entries_.back()));
      entries_.pop_back();
      ++evictions_;
    }
  }

  size_t capacity_;
  std::list<Entry> entries_;  // most recently used first
  std::map<Key, typename std::list<Entry>::iterator> index_;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace kiln::runtime
