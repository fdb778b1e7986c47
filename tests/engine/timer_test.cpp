// Timers as the Loop runs them: deadline order, scheduling order for equal
// deadlines, never early, cancel and re-schedule, past deadlines, blocking.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::TimerNode;
using shardloop_test::Counter;
using shardloop_test::Watchdog;

// Records which timer ran, and when, and stops the loop after `stop_after`.
struct Recorder {
  Loop* loop;
  int stop_after;
  std::vector<int> order;
  std::vector<double> ran_at;

  shardloop::Work work(int id) {
    return shardloop::make_work([this, id] {
      order.push_back(id);
      ran_at.push_back(loop->time());
      if (static_cast<int>(order.size()) == stop_after) loop->stop();
    });
  }
};

// A timer's work that notes it ran and stops the loop.
shardloop::Work SetAndStop(Loop& loop, bool& ran) {
  return shardloop::make_work([&loop, &ran] {
    ran = true;
    loop.stop();
  });
}

TEST(Timers, OrderedByDeadlineThenSchedulingOrderAndNeverEarly) {
  Watchdog dog("OrderedByDeadlineThenSchedulingOrderAndNeverEarly");
  constexpr int kN = 8;
  TimerNode nodes[kN];
  Loop loop;
  Recorder rec{&loop, kN, {}, {}};
  const double t0 = loop.time();
  // id -> deadline. Equal deadlines (ids 1/4/6 and 2/7) must run in the
  // order they were scheduled.
  const double offsets[kN] = {0.006, 0.002, 0.004, 0.001, 0.002, 0.005, 0.002, 0.004};
  for (int i = 0; i < kN; ++i) {
    nodes[i].work = rec.work(i);
    loop.schedule(&nodes[i], t0 + offsets[i]);
  }
  EXPECT_EQ(loop.timer_count(), static_cast<std::size_t>(kN));
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(rec.order, (std::vector<int>{3, 1, 4, 6, 2, 7, 5, 0}));
  ASSERT_EQ(rec.ran_at.size(), static_cast<std::size_t>(kN));
  for (int k = 0; k < kN; ++k) {
    int id = rec.order[k];
    EXPECT_GE(rec.ran_at[k], nodes[id].when) << "timer " << id << " ran early";
    EXPECT_FALSE(nodes[id].scheduled());
  }
  EXPECT_EQ(loop.timer_count(), 0u);
}

TEST(Timers, SameDeadlineRunsInSchedulingOrder) {
  constexpr int kN = 100;
  std::vector<TimerNode> nodes(kN);
  Loop loop;
  Recorder rec{&loop, kN, {}, {}};
  const double when = loop.time() + 0.001;
  for (int i = 0; i < kN; ++i) {
    nodes[i].work = rec.work(i);
    loop.schedule(&nodes[i], when);
  }
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  ASSERT_EQ(rec.order.size(), static_cast<std::size_t>(kN));
  for (int i = 0; i < kN; ++i) EXPECT_EQ(rec.order[i], i);
  for (double t : rec.ran_at) EXPECT_GE(t, when);
}

TEST(Timers, ExpiredTimersRunAfterAlreadyQueuedCallbacks) {
  // Timers that expire in an iteration are appended behind the callbacks
  // already in the ready queue (asyncio moves them to the end of _ready).
  TimerNode node;
  Loop loop;
  std::vector<std::string> seen;
  node.work = shardloop::make_work([&] { seen.push_back("timer"); });
  loop.schedule(&node, loop.time() - 1);
  loop.call_soon([&] { seen.push_back("soon"); });
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"soon", "timer"}));
}

TEST(Timers, NeverFireEarlyManyShortTimers) {
  Watchdog dog("NeverFireEarlyManyShortTimers");
  constexpr int kN = 30;
  std::vector<TimerNode> nodes(kN);
  Loop loop;
  Recorder rec{&loop, kN, {}, {}};
  const double t0 = loop.time();
  for (int i = 0; i < kN; ++i) {
    nodes[i].work = rec.work(i);
    // Sub-millisecond spacing: below libuv's 1 ms timer resolution.
    loop.schedule(&nodes[i], t0 + 0.0003 * (i + 1));
  }
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  ASSERT_EQ(rec.order.size(), static_cast<std::size_t>(kN));
  for (int k = 0; k < kN; ++k) {
    EXPECT_EQ(rec.order[k], k);
    EXPECT_GE(rec.ran_at[k], nodes[k].when) << "timer " << k << " ran early";
  }
}

TEST(Timers, CancelRemovesScheduledNode) {
  Watchdog dog("CancelRemovesScheduledNode");
  TimerNode victim;
  TimerNode survivor;
  Loop loop;
  Counter cancelled;
  victim.work = cancelled.work();
  bool survivor_ran = false;
  survivor.work = SetAndStop(loop, survivor_ran);
  const double t0 = loop.time();
  loop.schedule(&victim, t0 + 0.001);  // due first: would run if not cancelled
  loop.schedule(&survivor, t0 + 0.003);
  EXPECT_TRUE(victim.scheduled());
  EXPECT_EQ(loop.timer_count(), 2u);

  loop.cancel(&victim);
  EXPECT_FALSE(victim.scheduled());
  EXPECT_EQ(loop.timer_count(), 1u);
  loop.cancel(&victim);  // cancelling twice is a no-op
  EXPECT_EQ(loop.timer_count(), 1u);

  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_TRUE(survivor_ran);
  EXPECT_EQ(cancelled.runs, 0);
  EXPECT_EQ(cancelled.discards, 0);  // the loop gave the work back untouched
  // The caller owns the cancelled work and must finish it.
  victim.work.discard();
  EXPECT_EQ(cancelled.discards, 1);
}

TEST(Timers, CancelFromAnEarlierTimerCallback) {
  Watchdog dog("CancelFromAnEarlierTimerCallback");
  TimerNode victim, canceller, last;
  Loop loop;
  Counter cancelled;
  victim.work = cancelled.work();
  bool last_ran = false;
  canceller.work = shardloop::make_work([&] { loop.cancel(&victim); });
  last.work = SetAndStop(loop, last_ran);
  const double t0 = loop.time();
  loop.schedule(&canceller, t0 + 0.001);
  loop.schedule(&victim, t0 + 0.003);
  loop.schedule(&last, t0 + 0.005);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_TRUE(last_ran);
  EXPECT_EQ(cancelled.total(), 0);
  victim.work.discard();
}

TEST(Timers, CancelUnscheduledNodeIsNoop) {
  TimerNode never;
  Loop loop;
  loop.cancel(&never);
  EXPECT_FALSE(never.scheduled());
  EXPECT_EQ(loop.timer_count(), 0u);
}

TEST(Timers, RescheduleMovesNode) {
  Watchdog dog("RescheduleMovesNode");
  TimerNode a, b, c;
  Loop loop;
  Recorder rec{&loop, 3, {}, {}};
  a.work = rec.work(0);
  b.work = rec.work(1);
  c.work = rec.work(2);
  const double t0 = loop.time();
  loop.schedule(&a, t0 + 0.001);
  loop.schedule(&b, t0 + 0.002);
  loop.schedule(&c, t0 + 0.003);
  // Move a behind c, and c in front of b.
  loop.schedule(&a, t0 + 0.004);
  loop.schedule(&c, t0 + 0.0015);
  EXPECT_EQ(loop.timer_count(), 3u);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(rec.order, (std::vector<int>{2, 1, 0}));
  EXPECT_GE(rec.ran_at[2], t0 + 0.004);  // a did not keep its old deadline
}

TEST(Timers, RescheduleToSameDeadlineGoesBehindEqualDeadlines) {
  // Re-scheduling counts as scheduling anew (asyncio: cancel + call_at).
  TimerNode a, b, c;
  Loop loop;
  Recorder rec{&loop, 3, {}, {}};
  a.work = rec.work(0);
  b.work = rec.work(1);
  c.work = rec.work(2);
  const double when = loop.time() - 1;  // already due: one iteration runs all
  loop.schedule(&a, when);
  loop.schedule(&b, when);
  loop.schedule(&c, when);
  loop.schedule(&a, when);
  loop.run_once();
  EXPECT_EQ(rec.order, (std::vector<int>{1, 2, 0}));
}

TEST(Timers, PastTimerRunsOnNextIteration) {
  Watchdog dog("PastTimerRunsOnNextIteration");
  TimerNode late;
  TimerNode first;
  Loop loop;
  std::vector<std::string> seen;
  late.work = shardloop::make_work([&] { seen.push_back("late"); });
  first.work = shardloop::make_work([&] { seen.push_back("first"); });

  // Scheduled before the loop runs: the first iteration runs it.
  loop.schedule(&first, loop.time() - 0.5);
  loop.call_soon([&] {
    seen.push_back("a");
    // Scheduled (in the past) while a batch runs: not this batch, the next.
    loop.schedule(&late, loop.time() - 1);
  });
  loop.call_soon([&] { seen.push_back("b"); });

  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "first"}));
  ASSERT_EQ(loop.timer_count(), 1u);
  // Ready queue empty, timer due: this iteration must not block.
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "first", "late"}));
  EXPECT_EQ(loop.timer_count(), 0u);
}

TEST(Timers, LoopWithOnlyFutureTimerBlocksUntilIt) {
  Watchdog dog("LoopWithOnlyFutureTimerBlocksUntilIt");
  TimerNode node;
  Loop loop;
  const double t0 = loop.time();
  double ran_at = 0;
  node.work = shardloop::make_work([&] {
    ran_at = loop.time();
    loop.stop();
  });
  loop.schedule(&node, t0 + 0.020);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  const double t1 = loop.time();
  EXPECT_GE(ran_at, t0 + 0.020);
  EXPECT_GE(t1 - t0, 0.020);
}

TEST(Timers, TimerScheduledFromCallbackBlocksAndFires) {
  Watchdog dog("TimerScheduledFromCallbackBlocksAndFires");
  TimerNode node;
  Loop loop;
  double when = 0, ran_at = 0;
  node.work = shardloop::make_work([&] {
    ran_at = loop.time();
    loop.stop();
  });
  loop.call_soon([&] {
    when = loop.time() + 0.005;
    loop.schedule(&node, when);
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_GE(ran_at, when);
}

TEST(Timers, EarlierTimerScheduledWhileLaterIsPendingFiresFirst) {
  // A far-off timer is armed first; a near one added later must not wait
  // for the far one's deadline.
  Watchdog dog("EarlierTimerScheduledWhileLaterIsPendingFiresFirst");
  TimerNode far_node, near_node;
  Loop loop;
  Counter far_counter;
  far_node.work = far_counter.work();
  bool near_ran = false;
  near_node.work = SetAndStop(loop, near_ran);
  loop.schedule(&far_node, loop.time() + 60);
  // Let one blocking-capable iteration arm the far deadline first.
  loop.call_soon([&] { loop.schedule(&near_node, loop.time() + 0.003); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_TRUE(near_ran);
  EXPECT_EQ(far_counter.total(), 0);
  EXPECT_TRUE(far_node.scheduled());
  loop.cancel(&far_node);
  far_node.work.discard();
  EXPECT_EQ(far_counter.discards, 1);
}

TEST(Timers, NodeCanBeReusedAfterItFired) {
  Watchdog dog("NodeCanBeReusedAfterItFired");
  TimerNode node;
  Loop loop;
  int fired = 0;
  std::function<void()> body = [&] {
    ++fired;
    if (fired < 3) {
      node.work = shardloop::make_work(body);
      loop.schedule(&node, loop.time() + 0.001);
    } else {
      loop.stop();
    }
  };
  node.work = shardloop::make_work(body);
  loop.schedule(&node, loop.time() + 0.001);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(fired, 3);
  EXPECT_FALSE(node.scheduled());
}

}  // namespace
