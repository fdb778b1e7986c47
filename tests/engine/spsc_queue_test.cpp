// SpscQueue on its own, without a Runtime: FIFO order across the rings it
// links when full, a drain that takes only what was queued when it began
// (a shard sending to itself must not loop forever), and exact order between
// a real producer thread and the consumer.
#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "shardloop/spsc_queue.hpp"
#include "test_support.hpp"

namespace {

using shardloop_test::Watchdog;

TEST(SpscQueue, OverflowKeepsOrderAndFreesRings) {
  shardloop::SpscQueue<int> q(16);
  for (int i = 0; i < 100; ++i) q.push(i);
  EXPECT_GE(q.overflows(), 5u);
  std::vector<int> got;
  while (q.drain([&](int v) { got.push_back(v); }) != 0) {
  }
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(got[i], i);
  EXPECT_TRUE(q.empty());
  q.push(7);
  EXPECT_FALSE(q.empty());
}

TEST(SpscQueue, DrainTakesOnlyWhatWasThere) {
  shardloop::SpscQueue<int> q(16);
  q.push(1);
  q.push(2);
  int seen = 0;
  // A consumer that is also the producer (a shard sending to itself).
  EXPECT_EQ(q.drain([&](int v) { ++seen; q.push(v + 10); }), 2u);
  EXPECT_EQ(seen, 2);
  EXPECT_FALSE(q.empty());
}

TEST(SpscQueue, TwoThreadsExactOrder) {
  Watchdog dog("spsc two threads", 60);
  shardloop::SpscQueue<std::uint64_t> q(64);  // small: the overflow path is exercised
  constexpr std::uint64_t kN = 200000;
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kN; ++i) q.push(i);
  });
  std::uint64_t next = 0, bad = 0;
  while (next < kN) {
    q.drain([&](std::uint64_t v) {
      if (v != next) ++bad;
      next = v + 1;
    });
  }
  producer.join();
  EXPECT_EQ(bad, 0u);
  EXPECT_TRUE(q.empty());
}

}  // namespace
