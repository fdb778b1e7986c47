// Timers set aside while the due timers run (scheduled during this
// iteration's ready batch, already due) are still the engine's: cancel(),
// schedule() and close() must see them. Each of these failed once
// (f1fabda) and pins the fix down.
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::TimerNode;
using shardloop_test::Counter;

// A due timer cancels another due timer that a ready callback scheduled
// (in the past) during the same iteration. cancel() must take it back: it
// must never run. Instead it runs on the next iteration.
TEST(SetAsideTimers, CancelOfTimerSetAsideDuringDueTimersIsLost) {
  TimerNode canceller, victim;
  Counter victim_counter;
  Loop loop;
  const double past = loop.time() - 1;
  victim.work = victim_counter.work();
  canceller.work = shardloop::make_work([&] { loop.cancel(&victim); });
  loop.schedule(&canceller, past);
  // Scheduled during the batch, due, and earlier than `canceller`: it is at
  // the top of the heap when run_due_timers() sets it aside.
  loop.call_soon([&] { loop.schedule(&victim, past - 5); });
  loop.run_once();
  EXPECT_EQ(victim_counter.runs, 0);
  EXPECT_FALSE(victim.scheduled()) << "cancelled timer is still scheduled";
  EXPECT_EQ(loop.timer_count(), 0u);
  loop.call_soon([] {});
  loop.run_once();
  EXPECT_EQ(victim_counter.runs, 0) << "a cancelled timer ran";
  // Finish the work if the engine kept it (the bug), else ours to discard.
  if (victim.scheduled()) loop.cancel(&victim);
  if (victim_counter.total() == 0) victim.work.discard();
}

// A due timer re-schedules a node that is set aside: the node ends up in
// the heap twice. Its work can then run twice, and close() (discard_pending)
// spins forever: pop() of the stale entry cannot erase it.
TEST(SetAsideTimers, RescheduleOfTimerSetAsideDuringDueTimersDuplicatesIt) {
  static TimerNode mover, moved;  // outlive a deliberately leaked loop
  Counter moved_counter;
  // Heap-allocated so that, when the bug is present, the loop can be leaked
  // instead of destroyed: its close() would never return.
  auto* loop = new Loop;
  const double past = loop->time() - 1;
  moved.work = moved_counter.work();
  mover.work = shardloop::make_work([loop] { loop->schedule(&moved, loop->time() + 3600); });
  loop->schedule(&mover, past);
  loop->call_soon([loop, past] { loop->schedule(&moved, past - 5); });
  loop->run_once();
  // `moved` should now wait an hour, once.
  EXPECT_EQ(moved_counter.total(), 0);
  EXPECT_TRUE(moved.scheduled());
  EXPECT_EQ(loop->timer_count(), 1u) << "the node is in the heap more than once";
  loop->cancel(&moved);
  EXPECT_FALSE(moved.scheduled());
  if (loop->timer_count() != 0) {
    ADD_FAILURE() << "cancel() left a stale heap entry; leaking the loop (its close() would spin)";
    return;
  }
  moved.work.discard();
  delete loop;
  EXPECT_EQ(moved_counter.discards, 1);
  EXPECT_EQ(moved_counter.runs, 0);
}

// close() from a timer callback while run_once() is driven directly (not
// through run(), so close() is not refused): a set-aside timer escapes
// discard_pending() and is restored into the closed loop's heap, so its Work
// is never finished (leaked; LSan reports the closure). Refusing close()
// there (std::logic_error, as while running) would be a fix too.
TEST(SetAsideTimers, CloseDuringDueTimersFinishesSetAsideTimers) {
  TimerNode closer, late, late_closure;
  Counter late_counter;
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> weak = token;
  bool refused = false;
  {
    Loop loop;
    const double past = loop.time() - 1;
    late.work = late_counter.work();
    late_closure.work = shardloop::make_work([token] {});
    closer.work = shardloop::make_work([&] {
      try {
        loop.close();
      } catch (const std::logic_error&) {
        refused = true;
      }
    });
    loop.schedule(&closer, past);
    loop.call_soon([&] {
      loop.schedule(&late, past - 5);
      loop.schedule(&late_closure, past - 5);
    });
    token.reset();
    loop.run_once();
    if (!refused) {
      EXPECT_TRUE(loop.is_closed());
      EXPECT_EQ(loop.timer_count(), 0u) << "timers left in a closed loop";
    }
  }
  EXPECT_EQ(late_counter.total(), 1) << "set-aside timer's Work never finished";
  EXPECT_TRUE(weak.expired()) << "set-aside make_work closure leaked";
}

}  // namespace
