// Cross-shard ring memory: a ring per ordered pair of shards exists only once
// that pair has talked, the shard count is bounded, and a full ring neither
// blocks its sender nor loses or reorders work while its receiver is stuck.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Runtime;
using shardloop::Work;
using shardloop_test::unpinned;
using shardloop_test::Watchdog;

TEST(RuntimeRings, NoRingBeforeAPairsFirstMessage) {
  // 256 shards preallocated 65,536 rings of 16 KiB (1 GiB) before this.
  Runtime rt(unpinned(256));
  EXPECT_EQ(rt.stats().rings, 0u);
}

TEST(RuntimeRings, OneRingPerPairThatTalked) {
  Watchdog dog("OneRingPerPairThatTalked", 30);
  Runtime rt(unpinned(4));
  rt.run([&](unsigned s) {
    // Shard 0 sends to 1 and 2 (twice each), nobody else sends: two pairs.
    if (s != 0) return;
    for (unsigned target : {1u, 2u, 1u, 2u}) ASSERT_TRUE(rt.post(target, [] {}));
    rt.post(0, [&rt] { rt.stop(); });  // shard 0 to itself: a third pair
  });
  EXPECT_EQ(rt.stats().rings, 3u);
}

TEST(RuntimeRings, ShardCountIsBounded) {
  EXPECT_THROW(Runtime(unpinned(Runtime::kMaxShards + 1)), std::invalid_argument);
  EXPECT_THROW(Runtime(unpinned(4096)), std::invalid_argument);
  Runtime largest(unpinned(Runtime::kMaxShards));
  EXPECT_EQ(largest.shard_count(), Runtime::kMaxShards);
  EXPECT_EQ(largest.stats().rings, 0u);
}

// The receiver is stuck in a callback while the sender fills its ring many
// times over: every post succeeds at once (nothing blocks: the receiver
// only gets free once the sender is done), and all of it arrives in order.
TEST(RuntimeRings, FullRingGrowsWithoutBlockingLosingOrReordering) {
  Watchdog dog("FullRingGrowsWithoutBlockingLosingOrReordering", 60);
  constexpr std::size_t kCapacity = 16;
  static constexpr std::uint64_t kN = kCapacity * 50;
  Runtime::Options o = unpinned(2);
  o.ring_capacity = kCapacity;
  Runtime rt(o);
  std::mutex mu;
  std::condition_variable cv;
  bool receiver_stuck = false, sender_done = false;
  std::vector<std::uint64_t> got;
  rt.run([&](unsigned s) {
    if (s == 1) {
      // Shard 1 blocks its own loop until shard 0 has sent everything.
      rt.loop_of(1)->call_soon([&] {
        std::unique_lock<std::mutex> lock(mu);
        receiver_stuck = true;
        cv.notify_all();
        cv.wait(lock, [&] { return sender_done; });
      });
      return;
    }
    rt.loop_of(0)->call_soon([&] {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return receiver_stuck; });
      }
      for (std::uint64_t i = 0; i < kN; ++i) {
        ASSERT_TRUE(rt.post(1, [&got, &rt, i] {
          got.push_back(i);
          if (got.size() == kN) rt.stop();
        }));
      }
      std::lock_guard<std::mutex> lock(mu);
      sender_done = true;
      cv.notify_all();
    });
  });
  ASSERT_EQ(got.size(), kN);
  for (std::uint64_t i = 0; i < kN; ++i) ASSERT_EQ(got[i], i);
  EXPECT_GE(rt.stats().overflows, kN / kCapacity - 1);
  EXPECT_EQ(rt.stats().rings, 1u);
}

}  // namespace
