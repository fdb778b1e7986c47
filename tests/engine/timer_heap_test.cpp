// TimerHeap on its own: order by (when, scheduling order), O(log n) erase
// from anywhere, checked against a sorted reference with a fixed seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "shardloop/timer_heap.hpp"

namespace {

using shardloop::TimerHeap;
using shardloop::TimerNode;

TEST(TimerHeap, EmptyHeap) {
  TimerHeap heap;
  EXPECT_TRUE(heap.empty());
  EXPECT_EQ(heap.size(), 0u);
  EXPECT_EQ(heap.top(), nullptr);
  EXPECT_EQ(heap.pop(), nullptr);
}

TEST(TimerHeap, PopsByDeadlineThenPushOrder) {
  TimerHeap heap;
  TimerNode n[6];
  const double when[6] = {3, 1, 2, 1, 3, 1};
  for (int i = 0; i < 6; ++i) {
    n[i].when = when[i];
    heap.push(&n[i]);
    EXPECT_TRUE(n[i].scheduled());
  }
  EXPECT_EQ(heap.size(), 6u);
  std::vector<TimerNode*> popped;
  while (TimerNode* node = heap.pop()) {
    EXPECT_FALSE(node->scheduled());
    popped.push_back(node);
  }
  EXPECT_EQ(popped, (std::vector<TimerNode*>{&n[1], &n[3], &n[5], &n[2], &n[0], &n[4]}));
}

TEST(TimerHeap, EraseUnscheduledIsNoop) {
  TimerHeap heap;
  TimerNode a, b;
  a.when = 1;
  heap.push(&a);
  heap.erase(&b);  // never scheduled
  EXPECT_EQ(heap.size(), 1u);
  heap.erase(&a);
  heap.erase(&a);  // already erased
  EXPECT_TRUE(heap.empty());
  EXPECT_FALSE(a.scheduled());
}

TEST(TimerHeap, EraseTopAndLast) {
  TimerHeap heap;
  TimerNode n[5];
  for (int i = 0; i < 5; ++i) {
    n[i].when = i;
    heap.push(&n[i]);
  }
  heap.erase(heap.top());  // n[0]
  EXPECT_EQ(heap.top(), &n[1]);
  heap.erase(&n[4]);  // the last slot
  EXPECT_EQ(heap.size(), 3u);
  EXPECT_EQ(heap.pop(), &n[1]);
  EXPECT_EQ(heap.pop(), &n[2]);
  EXPECT_EQ(heap.pop(), &n[3]);
  EXPECT_EQ(heap.pop(), nullptr);
}

// Erase from every position of many small heaps, whatever their arity: the
// entry moved into the hole must sometimes rise (a small last entry landing
// under a large parent) and sometimes sink.
TEST(TimerHeap, EraseFromEveryPositionOfSmallHeaps) {
  std::mt19937 rng(12345u);
  std::uniform_int_distribution<int> dl(0, 30);
  for (int n = 1; n <= 40; ++n) {
    for (int trial = 0; trial < 8; ++trial) {
      std::vector<double> whens(n);
      for (auto& w : whens) w = dl(rng);
      for (int victim = 0; victim < n; ++victim) {
        std::vector<TimerNode> nodes(n);
        TimerHeap heap;
        for (int i = 0; i < n; ++i) {
          nodes[i].when = whens[i];
          heap.push(&nodes[i]);
        }
        heap.erase(&nodes[victim]);
        ASSERT_FALSE(nodes[victim].scheduled());
        std::vector<std::pair<double, int>> expect;
        for (int i = 0; i < n; ++i)
          if (i != victim) expect.emplace_back(whens[i], i);
        std::sort(expect.begin(), expect.end());
        std::vector<std::pair<double, int>> got;
        while (TimerNode* node = heap.pop()) got.emplace_back(node->when, static_cast<int>(node - nodes.data()));
        ASSERT_EQ(got, expect) << "n=" << n << " trial=" << trial << " victim=" << victim;
      }
    }
  }
}

TEST(TimerHeap, RandomDeadlinesAndErasesMatchSortedReference) {
  std::mt19937_64 rng(0x5eed1234u);
  constexpr int kN = 5000;
  std::vector<TimerNode> nodes(kN);
  // Few distinct deadlines, so many ties must be broken by push order.
  std::uniform_int_distribution<int> deadline(0, 200);
  TimerHeap heap;
  std::vector<int> push_rank(kN);
  for (int i = 0; i < kN; ++i) {
    nodes[i].when = deadline(rng) * 0.5;
    heap.push(&nodes[i]);
    push_rank[i] = i;
  }
  ASSERT_EQ(heap.size(), static_cast<std::size_t>(kN));

  // Erase a random third of them (some twice: the second must be a no-op).
  std::vector<bool> erased(kN, false);
  std::uniform_int_distribution<int> pick(0, kN - 1);
  std::size_t live = kN;
  for (int k = 0; k < kN / 3; ++k) {
    int i = pick(rng);
    heap.erase(&nodes[i]);
    EXPECT_FALSE(nodes[i].scheduled());
    if (!erased[i]) {
      erased[i] = true;
      --live;
    }
    ASSERT_EQ(heap.size(), live);
  }

  // Re-push a few of the erased ones: they now sort after every equal
  // deadline already in the heap.
  int next_rank = kN;
  for (int i = 0; i < kN; i += 97) {
    if (!erased[i]) continue;
    erased[i] = false;
    heap.push(&nodes[i]);
    push_rank[i] = next_rank++;
    ++live;
  }

  std::vector<std::pair<double, int>> reference;
  for (int i = 0; i < kN; ++i)
    if (!erased[i]) reference.emplace_back(nodes[i].when, push_rank[i]);
  std::sort(reference.begin(), reference.end());
  ASSERT_EQ(reference.size(), live);

  std::vector<std::pair<double, int>> popped;
  while (TimerNode* node = heap.pop()) {
    EXPECT_FALSE(node->scheduled());
    popped.emplace_back(node->when, push_rank[node - nodes.data()]);
  }
  EXPECT_TRUE(heap.empty());
  ASSERT_EQ(popped.size(), reference.size());
  EXPECT_TRUE(popped == reference);
}

TEST(TimerHeap, RandomInterleavedOperationsMatchOrderedSet) {
  // push / erase-anywhere / pop interleaved, compared step by step with a
  // std::set keyed by (when, push order).
  std::mt19937 rng(20240607u);
  constexpr int kNodes = 512;
  std::vector<TimerNode> nodes(kNodes);
  std::vector<std::uint64_t> rank(kNodes, 0);
  std::set<std::pair<double, std::uint64_t>> ref;
  TimerHeap heap;
  std::uint64_t next_rank = 0;
  std::uniform_int_distribution<int> op(0, 9), which(0, kNodes - 1), dl(0, 50);

  for (int step = 0; step < 50000; ++step) {
    int o = op(rng);
    if (o < 5) {  // push (or re-push) a node that is not scheduled
      int i = which(rng);
      if (nodes[i].scheduled()) continue;
      nodes[i].when = dl(rng);
      heap.push(&nodes[i]);
      rank[i] = next_rank++;
      ref.emplace(nodes[i].when, rank[i]);
    } else if (o < 8) {  // erase a random node, scheduled or not
      int i = which(rng);
      if (nodes[i].scheduled()) ref.erase({nodes[i].when, rank[i]});
      heap.erase(&nodes[i]);
      ASSERT_FALSE(nodes[i].scheduled());
    } else {  // pop
      TimerNode* node = heap.pop();
      if (ref.empty()) {
        ASSERT_EQ(node, nullptr);
        continue;
      }
      ASSERT_NE(node, nullptr);
      auto expect = *ref.begin();
      ref.erase(ref.begin());
      int i = static_cast<int>(node - nodes.data());
      ASSERT_EQ(node->when, expect.first) << "step " << step;
      ASSERT_EQ(rank[i], expect.second) << "step " << step;
      ASSERT_FALSE(node->scheduled());
    }
    ASSERT_EQ(heap.size(), ref.size());
    if (!ref.empty()) {
      TimerNode* top = heap.top();
      ASSERT_NE(top, nullptr);
      ASSERT_EQ(rank[top - nodes.data()], ref.begin()->second) << "step " << step;
    }
  }
}

}  // namespace
