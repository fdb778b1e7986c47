// RingQueue: FIFO across wrap-around and growth, move-only payloads.
#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <random>

#include "shardloop/ring_queue.hpp"

namespace {

using shardloop::RingQueue;

TEST(RingQueue, EmptyQueue) {
  RingQueue<int> q;
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
}

TEST(RingQueue, FifoWithinOneBuffer) {
  RingQueue<int> q;
  for (int i = 0; i < 10; ++i) q.push_back(i);
  EXPECT_EQ(q.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(q.pop_front(), i);
  EXPECT_TRUE(q.empty());
}

TEST(RingQueue, GrowthWhileWrappedKeepsFifoOrder) {
  // Initial capacity is 64. Advance the head to 40, then fill so the live
  // range wraps past the end of the buffer, then push past capacity so the
  // queue grows while wrapped.
  RingQueue<int> q;
  int next_in = 0, next_out = 0;
  for (int i = 0; i < 50; ++i) q.push_back(next_in++);
  for (int i = 0; i < 40; ++i) ASSERT_EQ(q.pop_front(), next_out++);
  // 10 live at slots 40..49; push 54 more: slots 50..63 then wrap to 0..39.
  for (int i = 0; i < 54; ++i) q.push_back(next_in++);
  ASSERT_EQ(q.size(), 64u);  // full and wrapped
  // Growth happens here, with head at 40.
  for (int i = 0; i < 100; ++i) q.push_back(next_in++);
  ASSERT_EQ(q.size(), 164u);
  // Pop some, wrap again in the grown buffer, grow again.
  for (int i = 0; i < 120; ++i) ASSERT_EQ(q.pop_front(), next_out++);
  for (int i = 0; i < 300; ++i) q.push_back(next_in++);
  while (!q.empty()) ASSERT_EQ(q.pop_front(), next_out++);
  EXPECT_EQ(next_out, next_in);
}

TEST(RingQueue, RandomOperationsMatchDeque) {
  std::mt19937 rng(7u);
  std::uniform_int_distribution<int> op(0, 99);
  RingQueue<int> q;
  std::deque<int> ref;
  int next = 0;
  for (int step = 0; step < 200000; ++step) {
    // Bias drifts between push-heavy and pop-heavy phases so the queue both
    // grows and wraps many times.
    int push_pct = (step / 5000) % 2 ? 40 : 60;
    if (op(rng) < push_pct || ref.empty()) {
      q.push_back(next);
      ref.push_back(next);
      ++next;
    } else {
      ASSERT_EQ(q.pop_front(), ref.front()) << "step " << step;
      ref.pop_front();
    }
    ASSERT_EQ(q.size(), ref.size());
  }
  while (!ref.empty()) {
    ASSERT_EQ(q.pop_front(), ref.front());
    ref.pop_front();
  }
  EXPECT_TRUE(q.empty());
}

TEST(RingQueue, MoveOnlyPayloadSurvivesGrowth) {
  RingQueue<std::unique_ptr<int>> q;
  for (int i = 0; i < 30; ++i) q.push_back(std::make_unique<int>(i));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(*q.pop_front(), i);
  for (int i = 30; i < 300; ++i) q.push_back(std::make_unique<int>(i));
  for (int i = 20; i < 300; ++i) {
    auto p = q.pop_front();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(*p, i);
  }
  EXPECT_TRUE(q.empty());
}

TEST(RingQueue, PopMovesValueOut) {
  // A popped shared_ptr must not stay referenced from the buffer.
  RingQueue<std::shared_ptr<int>> q;
  auto p = std::make_shared<int>(1);
  q.push_back(p);
  EXPECT_EQ(p.use_count(), 2);
  {
    auto out = q.pop_front();
    EXPECT_EQ(out.use_count(), 2);
  }
  EXPECT_EQ(p.use_count(), 1);
}

}  // namespace
