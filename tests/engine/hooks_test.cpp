// Loop::Hooks: before_wait/after_wait bracket exactly the kernel waits, and
// the signal wakeup fd wakes a blocked loop and calls on_signal.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::TimerNode;
using shardloop_test::Latch;
using shardloop_test::Watchdog;

// Hook calls as a log ("B" before_wait, "A" after_wait, "S" on_signal) plus
// counters; `waiting` is true between B and A.
struct HookLog {
  Loop* loop = nullptr;
  std::vector<std::string> events;  // loop thread only
  std::atomic<int> before{0};
  std::atomic<int> after{0};
  std::atomic<int> signals{0};
  bool waiting = false;
  int unbalanced = 0;
  bool stop_on_signal = false;
  Latch blocked;

  Loop::Hooks hooks() {
    Loop::Hooks h;
    h.ctx = this;
    h.before_wait = [](void* ctx) {
      auto* s = static_cast<HookLog*>(ctx);
      if (s->waiting) ++s->unbalanced;
      s->waiting = true;
      s->events.push_back("B");
      s->before.fetch_add(1);
      s->blocked.set();
    };
    h.after_wait = [](void* ctx) {
      auto* s = static_cast<HookLog*>(ctx);
      if (!s->waiting) ++s->unbalanced;
      s->waiting = false;
      s->events.push_back("A");
      s->after.fetch_add(1);
    };
    h.on_signal = [](void* ctx) {
      auto* s = static_cast<HookLog*>(ctx);
      s->events.push_back(s->waiting ? "S-while-waiting" : "S");
      s->signals.fetch_add(1);
      if (s->stop_on_signal) s->loop->stop();
    };
    return h;
  }

  // Logs `l`'s hooks from now on.
  void attach(Loop& l) {
    loop = &l;
    l.set_hooks(hooks());
  }
};

TEST(Hooks, ReadyWorkNeverCallsBeforeWait) {
  Watchdog dog("ReadyWorkNeverCallsBeforeWait");
  Loop loop;
  HookLog log;
  log.attach(loop);
  int ticks = 0;
  std::function<void()> tick = [&] {
    if (++ticks == 20)
      loop.stop();
    else
      loop.call_soon(tick);
  };
  loop.call_soon(tick);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(ticks, 20);

  loop.call_soon([] {});
  loop.run_once();
  EXPECT_EQ(log.before.load(), 0);
  EXPECT_EQ(log.after.load(), 0);
}

TEST(Hooks, PastDueTimerDoesNotBlock) {
  Watchdog dog("PastDueTimerDoesNotBlock");
  TimerNode node;
  Loop loop;
  HookLog log;
  log.attach(loop);
  bool ran = false;
  node.work = shardloop::make_work([&] { ran = true; });
  loop.schedule(&node, loop.time() - 1);
  loop.run_once();
  EXPECT_TRUE(ran);
  EXPECT_EQ(log.before.load(), 0);
  EXPECT_EQ(log.after.load(), 0);
}

TEST(Hooks, BlockingForTimerCallsEachOncePerBlockingIteration) {
  Watchdog dog("BlockingForTimerCallsEachOncePerBlockingIteration");
  TimerNode node;
  Loop loop;
  HookLog log;
  log.attach(loop);
  bool ran = false;
  bool ran_while_waiting = false;
  node.work = shardloop::make_work([&] {
    ran = true;
    ran_while_waiting = log.waiting;
    log.events.push_back("T");
  });
  loop.schedule(&node, loop.time() + 0.010);
  int iterations = 0;
  while (!ran && iterations < 1000) {
    int b = log.before.load(), a = log.after.load();
    loop.run_once();
    ++iterations;
    // Nothing ready, a future timer: every iteration here blocks, once.
    ASSERT_EQ(log.before.load() - b, 1) << "iteration " << iterations;
    ASSERT_EQ(log.after.load() - a, 1) << "iteration " << iterations;
  }
  ASSERT_TRUE(ran);
  EXPECT_FALSE(ran_while_waiting);
  EXPECT_EQ(log.unbalanced, 0);
  // B A B A ... B A T
  ASSERT_EQ(log.events.size(), static_cast<std::size_t>(2 * iterations + 1));
  for (int i = 0; i < iterations; ++i) {
    EXPECT_EQ(log.events[2 * i], "B");
    EXPECT_EQ(log.events[2 * i + 1], "A");
  }
  EXPECT_EQ(log.events.back(), "T");
}

TEST(Hooks, RunMixingReadyWorkAndTimerBlocksOnlyWhenIdle) {
  Watchdog dog("RunMixingReadyWorkAndTimerBlocksOnlyWhenIdle");
  TimerNode node;
  Loop loop;
  HookLog log;
  log.attach(loop);
  int before_seen_by_callbacks = -1;
  int chain = 0;
  std::function<void()> step = [&] {
    if (++chain < 5) loop.call_soon(step);
    else before_seen_by_callbacks = log.before.load();
  };
  loop.call_soon(step);
  node.work = shardloop::make_work([&] { loop.stop(); });
  loop.schedule(&node, loop.time() + 0.005);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(chain, 5);
  EXPECT_EQ(before_seen_by_callbacks, 0) << "blocked while callbacks were ready";
  EXPECT_GE(log.before.load(), 1) << "never blocked for the timer";
  EXPECT_EQ(log.before.load(), log.after.load());
  EXPECT_EQ(log.unbalanced, 0);
  EXPECT_FALSE(log.waiting);
}

TEST(Hooks, WokenByThreadsafeCallIsBalanced) {
  Watchdog dog("WokenByThreadsafeCallIsBalanced");
  Loop loop;
  HookLog log;
  log.attach(loop);
  bool ran_while_waiting = true;
  std::thread other([&] {
    if (!log.blocked.wait()) return;
    loop.call_soon_threadsafe(std::function<void()>([&] {
      ran_while_waiting = log.waiting;
      loop.stop();
    }));
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_FALSE(ran_while_waiting);
  EXPECT_EQ(log.before.load(), log.after.load());
  EXPECT_EQ(log.unbalanced, 0);
}

TEST(SignalWakeup, ByteFromAnotherThreadWakesBlockedLoopAndCallsOnSignal) {
  Watchdog dog("ByteFromAnotherThreadWakesBlockedLoopAndCallsOnSignal");
  Loop loop;
  HookLog log;
  log.stop_on_signal = true;
  log.attach(loop);
  int fd = loop.signal_wakeup_fd();
  ASSERT_GE(fd, 0);
  ssize_t written = 0;
  std::thread other([&] {
    // Write only once the loop is inside its kernel wait with nothing to do.
    if (!log.blocked.wait()) return;
    char byte = 2;  // e.g. SIGINT's number, as Python's wakeup fd writes it
    written = ::write(fd, &byte, 1);
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_EQ(written, 1);
  EXPECT_EQ(log.signals.load(), 1);
  EXPECT_EQ(log.before.load(), log.after.load());
  EXPECT_EQ(log.unbalanced, 0);
  // The wait ends (after_wait) before on_signal runs.
  EXPECT_EQ(log.events, (std::vector<std::string>{"B", "A", "S"}));
}

TEST(SignalWakeup, BytesWrittenBeforeRunAreDelivered) {
  Watchdog dog("BytesWrittenBeforeRunAreDelivered");
  Loop loop;
  HookLog log;
  log.stop_on_signal = true;
  log.attach(loop);
  int fd = loop.signal_wakeup_fd();
  char bytes[3] = {2, 15, 2};
  ASSERT_EQ(::write(fd, bytes, 3), 3);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_GE(log.signals.load(), 1);
  EXPECT_EQ(log.before.load(), log.after.load());

  // Drained: the next idle iteration blocks again until something arrives.
  log.stop_on_signal = false;
  bool ran = false;
  std::thread other([&] {
    // Wait for a fresh block (before_wait count grows past what it is now).
    while (log.before.load() < 2) std::this_thread::yield();
    loop.call_soon_threadsafe(std::function<void()>([&] {
      ran = true;
      loop.stop();
    }));
  });
  int signals_before = log.signals.load();
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_TRUE(ran);
  EXPECT_EQ(log.signals.load(), signals_before) << "stale bytes were delivered again";
}

TEST(SignalWakeup, SignalDuringTimerWaitThenTimerStillFires) {
  Watchdog dog("SignalDuringTimerWaitThenTimerStillFires");
  TimerNode node;
  Loop loop;
  HookLog log;
  log.attach(loop);
  int fd = loop.signal_wakeup_fd();
  double when = loop.time() + 0.015;
  double ran_at = 0;
  node.work = shardloop::make_work([&] {
    ran_at = loop.time();
    loop.stop();
  });
  loop.schedule(&node, when);
  std::thread other([&] {
    if (!log.blocked.wait()) return;
    char byte = 10;
    (void)::write(fd, &byte, 1);
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_EQ(log.signals.load(), 1);
  EXPECT_GE(ran_at, when);
  EXPECT_EQ(log.before.load(), log.after.load());
  EXPECT_EQ(log.unbalanced, 0);
}

TEST(SignalWakeup, AbortFromOnSignalReturnsBeforeRunningTheBatch) {
  // The binding's on_signal runs Python signal handlers and aborts the run
  // when one raises (KeyboardInterrupt): run() must return without running
  // the callbacks that were ready, and they must survive for the next run().
  Watchdog dog("AbortFromOnSignalReturnsBeforeRunningTheBatch");
  Loop loop;
  struct Ctx {
    Loop* loop;
    int signals = 0;
  } ctx{&loop};
  Loop::Hooks hooks;
  hooks.ctx = &ctx;
  hooks.on_signal = [](void* p) {
    auto* c = static_cast<Ctx*>(p);
    ++c->signals;
    c->loop->abort();
  };
  loop.set_hooks(hooks);
  int fd = loop.signal_wakeup_fd();
  std::vector<std::string> seen;
  loop.call_soon([&] { seen.push_back("a"); });
  loop.call_soon([&] { seen.push_back("b"); });
  char byte = 2;
  ASSERT_EQ(::write(fd, &byte, 1), 1);
  EXPECT_EQ(loop.run(), Loop::Exit::aborted);
  EXPECT_EQ(ctx.signals, 1);
  EXPECT_TRUE(seen.empty());
  EXPECT_EQ(loop.ready_count(), 2u);

  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ctx.signals, 1);
}

TEST(SignalWakeup, AbortFromOnSignalWhileBlockedKeepsTimersAndInbox) {
  Watchdog dog("AbortFromOnSignalWhileBlockedKeepsTimersAndInbox");
  TimerNode node;
  Loop loop;
  HookLog log;
  log.loop = &loop;
  Loop::Hooks hooks = log.hooks();
  hooks.on_signal = [](void* p) {
    auto* s = static_cast<HookLog*>(p);
    s->signals.fetch_add(1);
    s->loop->abort();
  };
  loop.set_hooks(hooks);
  int fd = loop.signal_wakeup_fd();
  bool timer_ran = false;
  node.work = shardloop::make_work([&] { timer_ran = true; });
  loop.schedule(&node, loop.time() + 60);
  std::thread other([&] {
    if (!log.blocked.wait()) return;
    char byte = 2;
    (void)::write(fd, &byte, 1);
  });
  EXPECT_EQ(loop.run(), Loop::Exit::aborted);
  other.join();
  EXPECT_EQ(log.signals.load(), 1);
  EXPECT_FALSE(timer_ran);
  EXPECT_TRUE(node.scheduled());
  EXPECT_EQ(log.before.load(), log.after.load());
  EXPECT_EQ(log.unbalanced, 0);
  loop.cancel(&node);
  node.work.discard();
}

// libuv runs due uv timers at the top of uv_run(), after run_once() decided
// to block: work such a callback queues must end the wait at once instead of
// waiting for the next engine deadline (or forever). Embedders may open
// handles on loop.uv() (see Loop::resume()). A 250 ms engine timer bounds
// the wait so a regression fails instead of hanging.
TEST(Blocking, WorkQueuedByUvTimerCallbackDoesNotWaitForNextDeadline) {
  Watchdog dog("WorkQueuedByUvTimerCallbackDoesNotWaitForNextDeadline");
  TimerNode bound;
  uv_timer_t uv_timer;  // outlives the loop, whose close() closes it
  Loop loop;
  struct Ctx {
    Loop* loop;
    bool ran = false;
    double ran_at = 0;
  } ctx{&loop};
  uv_timer.data = &ctx;
  ASSERT_EQ(uv_timer_init(loop.uv(), &uv_timer), 0);
  bool bound_ran = false;
  bound.work = shardloop::make_work([&] {
    bound_ran = true;
    loop.stop();
  });
  const double deadline = loop.time() + 0.25;
  loop.schedule(&bound, deadline);
  // A 0 ms uv timer started now is due at the top of the first uv_run.
  ASSERT_EQ(uv_timer_start(
                &uv_timer,
                [](uv_timer_t* t) {
                  auto* c = static_cast<Ctx*>(t->data);
                  c->loop->resume();
                  c->loop->call_soon([c] {
                    c->ran = true;
                    c->ran_at = c->loop->time();
                    c->loop->stop();
                  });
                },
                0, 0),
            0);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_TRUE(ctx.ran);
  EXPECT_LT(ctx.ran_at, deadline) << "work queued by a libuv callback waited for the next deadline";
  if (!bound_ran) {
    loop.cancel(&bound);
    bound.work.discard();
  }
  loop.close();  // closes uv_timer (still alive here) before it goes out of scope
}

TEST(Blocking, StopFromUvTimerCallbackEndsTheWait) {
  // stop() from a libuv callback that runs before the poll: run() must
  // return without sleeping until the 250 ms bound.
  Watchdog dog("StopFromUvTimerCallbackEndsTheWait");
  TimerNode bound;
  uv_timer_t uv_timer;  // outlives the loop, whose close() closes it
  Loop loop;
  bool bound_ran = false;
  bound.work = shardloop::make_work([&] {
    bound_ran = true;
    loop.stop();
  });
  loop.schedule(&bound, loop.time() + 0.25);
  uv_timer.data = &loop;
  ASSERT_EQ(uv_timer_init(loop.uv(), &uv_timer), 0);
  ASSERT_EQ(uv_timer_start(
                &uv_timer,
                [](uv_timer_t* t) {
                  auto* l = static_cast<Loop*>(t->data);
                  l->resume();
                  l->stop();
                },
                0, 0),
            0);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_FALSE(bound_ran) << "stop() from a libuv callback did not end the wait";
  if (!bound_ran) {
    loop.cancel(&bound);
    bound.work.discard();
  }
  loop.close();
}

TEST(Blocking, ReferencedUvHandleIsPolledWhileLoopIsBusy) {
  // With ready work the loop does not block, but a referenced handle the
  // embedder opened on uv() must still be serviced every iteration: a due
  // 0 ms uv timer fires in the very next iteration.
  Watchdog dog("ReferencedUvHandleIsPolledWhileLoopIsBusy");
  uv_timer_t uv_timer;  // outlives the loop, whose close() closes it
  Loop loop;
  int spins = 0;
  std::function<void()> spin = [&] {
    ++spins;
    loop.call_soon(spin);
  };
  loop.call_soon(spin);
  loop.run_once();  // one poll done just now
  struct Ctx {
    bool fired = false;
  } ctx;
  uv_timer.data = &ctx;
  ASSERT_EQ(uv_timer_init(loop.uv(), &uv_timer), 0);
  ASSERT_EQ(uv_timer_start(
                &uv_timer, [](uv_timer_t* t) { static_cast<Ctx*>(t->data)->fired = true; }, 0, 0),
            0);
  loop.run_once();
  EXPECT_TRUE(ctx.fired);
  EXPECT_EQ(spins, 2);
  loop.close();  // closes uv_timer before it goes out of scope
}

TEST(SignalWakeup, DeliveredWhileLoopIsBusy) {
  // The loop never blocks; the byte must still reach on_signal.
  Watchdog dog("SignalWakeup.DeliveredWhileLoopIsBusy");
  Loop loop;
  HookLog log;
  log.stop_on_signal = true;
  log.attach(loop);
  int fd = loop.signal_wakeup_fd();
  std::function<void()> spin = [&] { loop.call_soon(spin); };
  loop.call_soon(spin);
  loop.run_once();
  char byte = 2;
  ASSERT_EQ(::write(fd, &byte, 1), 1);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(log.signals.load(), 1);
  EXPECT_EQ(log.before.load(), 0);
}

TEST(Hooks, ReadyQueueUntouchedWhileWaiting) {
  // Between before_wait and after_wait the embedder has given up its lock
  // (the GIL): the engine must not touch the ready queue in that window, so
  // work drained from the inbox lands only after after_wait.
  Watchdog dog("ReadyQueueUntouchedWhileWaiting");
  Loop loop;
  struct Ctx {
    Loop* loop;
    Latch blocked;
    std::size_t at_before = 99, at_after = 99;
    int pairs = 0;
  } ctx{&loop};
  Loop::Hooks hooks;
  hooks.ctx = &ctx;
  hooks.before_wait = [](void* p) {
    auto* c = static_cast<Ctx*>(p);
    c->at_before = c->loop->ready_count();
    c->blocked.set();
  };
  hooks.after_wait = [](void* p) {
    auto* c = static_cast<Ctx*>(p);
    c->at_after = c->loop->ready_count();
    ++c->pairs;
  };
  loop.set_hooks(hooks);
  std::thread other([&] {
    if (!ctx.blocked.wait()) return;
    loop.call_soon_threadsafe(std::function<void()>([&] { loop.stop(); }));
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_EQ(ctx.pairs, 1);
  EXPECT_EQ(ctx.at_before, 0u);
  EXPECT_EQ(ctx.at_after, 0u) << "inbox drained into the ready queue during the wait";
}

}  // namespace
