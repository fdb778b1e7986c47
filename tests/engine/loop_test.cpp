#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "shardloop/fd_watcher.hpp"
#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop_test::Counter;
using shardloop_test::Watchdog;

TEST(Loop, CallSoonRunsInFifoOrder) {
  Loop loop;
  std::vector<int> seen;
  for (int i = 0; i < 5; ++i) loop.call_soon([&seen, i] { seen.push_back(i); });
  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Loop, FifoOrderAcrossManyCallbacksAndQueueGrowth) {
  // More than the ring's initial capacity (64), so the queue grows mid-run.
  Loop loop;
  std::vector<int> seen;
  constexpr int kN = 1000;
  for (int i = 0; i < kN; ++i) loop.call_soon([&seen, i] { seen.push_back(i); });
  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.ready_count(), static_cast<std::size_t>(kN + 1));
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kN));
  for (int i = 0; i < kN; ++i) ASSERT_EQ(seen[i], i);
  EXPECT_EQ(loop.ready_count(), 0u);
}

// Readiness work (call_io, what add_reader uses) runs in the iteration whose
// poll saw the fd, after what was ready before it; what it schedules waits
// for the next iteration, which polls (and finds the fd) again first.
TEST(Loop, ReadinessWorkRunsAfterTheBatchAndBeforeWhatItSchedules) {
  Loop loop;
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  ASSERT_EQ(::write(fds[1], "x", 1), 1);  // never read: readable every poll
  struct Ctx {
    Loop* loop;
    std::vector<std::string> seen;
  } ctx{&loop, {}};
  auto on_ready = +[](void* p, int) noexcept {
    auto* c = static_cast<Ctx*>(p);
    c->loop->call_io(shardloop::make_work([c] {
      c->seen.push_back("io");
      c->loop->call_soon([c] { c->seen.push_back("scheduled by io"); });
    }));
  };
  auto* watcher = shardloop::FdWatcher::open(loop, fds[0], on_ready, &ctx);
  watcher->watch(shardloop::FdWatcher::kReadable);
  loop.call_soon([&] { ctx.seen.push_back("ready"); });

  loop.run_once();
  EXPECT_EQ(ctx.seen, (std::vector<std::string>{"ready", "io"}));
  loop.run_once();
  EXPECT_EQ(ctx.seen, (std::vector<std::string>{"ready", "io", "scheduled by io", "io"}));
  watcher->release();
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(Loop, RawWorkRunsWithRunTrue) {
  Loop loop;
  Counter c;
  loop.call_soon(c.work());
  loop.run_once();
  EXPECT_EQ(c.runs, 1);
  EXPECT_EQ(c.discards, 0);
}

// asyncio's _run_once: only the callbacks queued when the iteration starts
// belong to it; anything queued while they run waits for the next one.
TEST(Loop, CallbackScheduledDuringBatchRunsNextIteration) {
  Loop loop;
  std::vector<std::string> seen;
  loop.call_soon([&] {
    seen.push_back("a");
    loop.call_soon([&] {
      seen.push_back("a2");
      loop.call_soon([&] { seen.push_back("a3"); });
    });
  });
  loop.call_soon([&] {
    seen.push_back("b");
    loop.call_soon([&] { seen.push_back("b2"); });
  });

  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(loop.ready_count(), 2u);

  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "a2", "b2"}));
  ASSERT_EQ(loop.ready_count(), 1u);

  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "a2", "b2", "a3"}));
  EXPECT_EQ(loop.ready_count(), 0u);
}

// As in asyncio, what an I/O callback queues belongs to the next iteration
// when other callbacks were already ready: a stop() among those returns
// before it runs (libuv runs I/O callbacks inside the poll, so the batch is
// counted before it).
TEST(Loop, CallbackQueuedByIoWaitsForTheNextIteration) {
  Watchdog dog("io batch");
  Loop loop;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "x", 1), 1);
  struct Ctx {
    Loop* loop;
    std::vector<std::string>* seen;
  };
  std::vector<std::string> seen;
  Ctx ctx{&loop, &seen};
  auto* watcher = shardloop::FdWatcher::open(
      loop, fds[0],
      [](void* p, int) noexcept {
        auto* c = static_cast<Ctx*>(p);
        if (!c->seen->empty() && c->seen->back() == "io") return;  // level-triggered: once is enough
        c->seen->push_back("io");
        c->loop->call_soon([c] { c->seen->push_back("queued by io"); });
      },
      &ctx);
  watcher->watch(shardloop::FdWatcher::kReadable);
  loop.call_soon([&] {
    seen.push_back("ready before");
    loop.stop();
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"io", "ready before"}));
  watcher->release();
  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"io", "ready before", "queued by io"}));
  loop.close();
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(Loop, SelfReschedulingCallbackRunsOncePerIteration) {
  // A callback that re-queues itself must not starve the loop: once per
  // iteration, like asyncio.
  Loop loop;
  int runs = 0;
  std::function<void()> again = [&] {
    ++runs;
    loop.call_soon(again);
  };
  loop.call_soon(again);
  for (int i = 1; i <= 5; ++i) {
    loop.run_once();
    EXPECT_EQ(runs, i);
    ASSERT_EQ(loop.ready_count(), 1u);
  }
}

TEST(Loop, StopBeforeRunDoesExactlyOneIteration) {
  Watchdog dog("StopBeforeRunDoesExactlyOneIteration");
  Loop loop;
  std::vector<std::string> seen;
  loop.call_soon([&] {
    seen.push_back("a");
    loop.call_soon([&] { seen.push_back("next"); });
  });
  loop.call_soon([&] { seen.push_back("b"); });
  loop.stop();
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(loop.ready_count(), 1u);
  EXPECT_FALSE(loop.is_running());

  // The stop request was consumed: the next run() runs until stopped again.
  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "next"}));
}

TEST(Loop, StopBeforeRunWithNothingQueuedReturnsWithoutBlocking) {
  Watchdog dog("StopBeforeRunWithNothingQueuedReturnsWithoutBlocking");
  Loop loop;
  int before_wait = 0;
  Loop::Hooks hooks;
  hooks.ctx = &before_wait;
  hooks.before_wait = [](void* ctx) { ++*static_cast<int*>(ctx); };
  loop.set_hooks(hooks);
  loop.stop();
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(before_wait, 0);
}

TEST(Loop, StopInsideCallbackFinishesBatchThenReturns) {
  Loop loop;
  std::vector<std::string> seen;
  loop.call_soon([&] { seen.push_back("a"); });
  loop.call_soon([&] {
    seen.push_back("b");
    loop.stop();
    loop.call_soon([&] { seen.push_back("d"); });
  });
  loop.call_soon([&] { seen.push_back("c"); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_EQ(loop.ready_count(), 1u);

  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c", "d"}));
}

TEST(Loop, StopRequestedInEarlierIterationStopsAfterThatIteration) {
  // stop() from a callback scheduled a few iterations in: run() returns after
  // the iteration that saw it, not before and not later.
  Loop loop;
  int iterations_seen = 0;
  std::function<void()> tick = [&] {
    ++iterations_seen;
    if (iterations_seen == 3)
      loop.stop();
    loop.call_soon(tick);
  };
  loop.call_soon(tick);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(iterations_seen, 3);
  EXPECT_EQ(loop.ready_count(), 1u);
}

TEST(Loop, AbortInsideCallbackReturnsImmediatelyAndKeepsTheRestQueued) {
  Loop loop;
  std::vector<std::string> seen;
  loop.call_soon([&] { seen.push_back("a"); });
  loop.call_soon([&] {
    seen.push_back("b");
    loop.abort();
  });
  loop.call_soon([&] { seen.push_back("c"); });
  loop.call_soon([&] {
    seen.push_back("d");
    loop.stop();
  });
  EXPECT_EQ(loop.run(), Loop::Exit::aborted);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(loop.ready_count(), 2u);
  EXPECT_FALSE(loop.is_running());

  // The abort was consumed; the leftovers run, in order, on the next run().
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(loop.ready_count(), 0u);
}

TEST(Loop, AbortWinsOverStopInSameCallback) {
  Loop loop;
  bool after = false;
  loop.call_soon([&] {
    loop.stop();
    loop.abort();
  });
  loop.call_soon([&] { after = true; });
  EXPECT_EQ(loop.run(), Loop::Exit::aborted);
  EXPECT_FALSE(after);
  EXPECT_EQ(loop.ready_count(), 1u);
}

TEST(Loop, IsRunningAndCurrentInsideRun) {
  Loop loop;
  EXPECT_FALSE(loop.is_running());
  EXPECT_EQ(Loop::current(), nullptr);
  bool running_inside = false;
  Loop* current_inside = nullptr;
  loop.call_soon([&] {
    running_inside = loop.is_running();
    current_inside = Loop::current();
    loop.stop();
  });
  loop.run();
  EXPECT_TRUE(running_inside);
  EXPECT_EQ(current_inside, &loop);
  EXPECT_FALSE(loop.is_running());
  EXPECT_EQ(Loop::current(), nullptr);
}

TEST(Loop, RunInsideRunThrowsLogicError) {
  Loop loop;
  bool threw = false;
  loop.call_soon([&] {
    try {
      loop.run();
    } catch (const std::logic_error&) {
      threw = true;
    }
    loop.stop();
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_TRUE(threw);
}

TEST(Loop, TimeIsMonotonicClock) {
  Loop loop;
  double a = loop.time();
  double b = shardloop::monotonic_now();
  double c = loop.time();
  EXPECT_LE(a, b);
  EXPECT_LE(b, c);
}

// ---- exceptions --------------------------------------------------------

TEST(LoopErrors, ExceptionGoesToHandlerAndLoopContinues) {
  Loop loop;
  std::vector<std::string> errors;
  loop.set_error_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::runtime_error& err) {
      errors.push_back(err.what());
    } catch (...) {
      errors.push_back("?");
    }
  });
  std::vector<int> seen;
  loop.call_soon([&] { seen.push_back(1); });
  loop.call_soon([] { throw std::runtime_error("boom"); });
  loop.call_soon([&] { seen.push_back(2); });
  loop.call_soon([] { throw std::runtime_error("bang"); });
  loop.call_soon([&] {
    seen.push_back(3);
    loop.call_soon([&] {
      seen.push_back(4);
      loop.stop();
    });
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(errors, (std::vector<std::string>{"boom", "bang"}));
}

TEST(LoopErrors, NonStandardExceptionGoesToHandler) {
  Loop loop;
  int caught = 0;
  loop.set_error_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (int v) {
      caught = v;
    }
  });
  loop.call_soon([] { throw 42; });
  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(caught, 42);
}

TEST(LoopErrors, ExceptionFromTimerCallbackGoesToHandler) {
  Loop loop;
  int errors = 0;
  bool after = false;
  loop.set_error_handler([&](std::exception_ptr) { ++errors; });
  shardloop::TimerNode node;
  node.work = shardloop::make_work([] { throw std::runtime_error("timer"); });
  loop.schedule(&node, loop.time() - 1);
  loop.call_soon([&] {
    after = true;
    loop.stop();
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(errors, 1);
  EXPECT_TRUE(after);
}

// Runs `loop` with a callback throwing runtime_error(what) and, after it, one
// that stops the loop; returns what went to stderr. `after`: the second ran.
std::string RunThrowingCallback(Loop& loop, const char* what, bool& after) {
  loop.call_soon([what] { throw std::runtime_error(what); });
  loop.call_soon([&] {
    after = true;
    loop.stop();
  });
  testing::internal::CaptureStderr();
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  return testing::internal::GetCapturedStderr();
}

TEST(LoopErrors, ThrowingHandlerFallsBackToStderrAndLoopContinues) {
  Loop loop;
  int handler_calls = 0;
  loop.set_error_handler([&](std::exception_ptr) {
    ++handler_calls;
    throw std::runtime_error("handler failed");
  });
  bool after = false;
  std::string err = RunThrowingCallback(loop, "boom", after);
  EXPECT_EQ(handler_calls, 1);
  EXPECT_TRUE(after);
  EXPECT_NE(err.find("handler failed"), std::string::npos) << err;
}

TEST(LoopErrors, DefaultHandlerPrintsToStderr) {
  Loop loop;
  bool after = false;
  std::string err = RunThrowingCallback(loop, "unhandled-xyz", after);
  EXPECT_TRUE(after);
  EXPECT_NE(err.find("unhandled-xyz"), std::string::npos) << err;
}

// run_once() driven directly (not through run()) still makes this loop the
// current one, so exceptions reach its error handler, not stderr.
TEST(LoopErrors, RunOnceReportsCallbackExceptionsToErrorHandler) {
  Loop loop;
  int handled = 0;
  loop.set_error_handler([&](std::exception_ptr) { ++handled; });
  Loop* current_inside = nullptr;
  bool after = false;
  loop.call_soon([&] { current_inside = Loop::current(); });
  loop.call_soon([] { throw std::runtime_error("from run_once"); });
  loop.call_soon([&] { after = true; });
  testing::internal::CaptureStderr();
  loop.run_once();
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(after);
  EXPECT_EQ(current_inside, &loop);
  EXPECT_EQ(handled, 1) << "exception went to stderr instead: " << err;
}

}  // namespace
