// Nothing thrown by C++ code may cross libuv's C frames or leave the loop in
// a state it cannot recover from: exceptions from callbacks and hooks go to
// the error handler, run() clears its run state on every way out, a failed
// cross-thread push throws instead of losing the work, and abort() outside
// run() leaves nothing behind for the next run.
//
// This file replaces the global operator new of the test binary so that a
// test can make the allocations of one thread fail on demand; unarmed, it
// is plain malloc/free.
#include <gtest/gtest.h>

#include <cstdlib>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

// Allocations left before every further one on this thread fails (< 0: off).
thread_local long allocations_left = -1;

bool allocation_fails() noexcept {
  if (allocations_left < 0) return false;
  if (allocations_left == 0) return true;
  --allocations_left;
  return false;
}

void* allocate(std::size_t size) noexcept {
  if (allocation_fails()) return nullptr;
  return std::malloc(size ? size : 1);
}

// Arms the failure for the calling thread for the guard's lifetime.
struct FailAllocations {
  explicit FailAllocations(long after = 0) { allocations_left = after; }
  ~FailAllocations() { allocations_left = -1; }
};

}  // namespace

void* operator new(std::size_t size) {
  if (void* p = allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using shardloop::Loop;
using shardloop_test::Counter;
using shardloop_test::Watchdog;

// Queues `n` call_soon steps, the last of which stops the loop: a run that
// ends early shows up as fewer steps.
void chain(Loop& loop, int& steps, int n) {
  loop.call_soon([&loop, &steps, n] {
    if (++steps < n)
      chain(loop, steps, n);
    else
      loop.stop();
  });
}

TEST(ExceptionBoundary, ThrowingCallbacksGoToTheErrorHandlerAndTheLoopGoesOn) {
  Watchdog dog("ThrowingCallbacksGoToTheErrorHandlerAndTheLoopGoesOn");
  Loop loop;
  std::vector<std::string> errors;
  loop.set_error_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::bad_alloc&) {
      errors.push_back("bad_alloc");
    } catch (const std::exception& ex) {
      errors.push_back(ex.what());
    } catch (...) {
      errors.push_back("other");
    }
  });
  shardloop::Timer timer(loop, [] { throw std::bad_alloc(); });
  timer.start(0);
  loop.call_soon([] { throw std::runtime_error("soon"); });
  loop.call_soon([] { throw std::bad_alloc(); });
  loop.call_soon([] { throw 42; });
  int steps = 0;
  chain(loop, steps, 3);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(steps, 3);
  EXPECT_EQ(errors, (std::vector<std::string>{"soon", "bad_alloc", "other", "bad_alloc"}));
  EXPECT_FALSE(loop.is_running());
  loop.close();
}

// A hook is called from inside libuv's prepare/check callbacks (C frames):
// what it throws must be reported there, not unwind through libuv.
TEST(ExceptionBoundary, ThrowingHookIsReportedAndTheLoopGoesOn) {
  Watchdog dog("ThrowingHookIsReportedAndTheLoopGoesOn");
  Loop loop;
  int reported = 0;
  loop.set_error_handler([&](std::exception_ptr) { ++reported; });
  loop.set_hooks(Loop::Hooks{nullptr, [](void*) { throw std::bad_alloc(); },
                             [](void*) { throw std::runtime_error("after_wait"); }, nullptr});
  shardloop::Timer timer(loop, [&] { loop.stop(); });
  timer.start(0.001);  // one blocking poll: before_wait and after_wait run
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_GE(reported, 2);
  EXPECT_FALSE(loop.is_running());
  loop.close();
}

// Out of memory while moving inbox work to the ready queue inside run():
// the exception leaves run(), which must not leave the loop "running".
TEST(ExceptionBoundary, RunThatThrowsIsNoLongerRunning) {
  Watchdog dog("RunThatThrowsIsNoLongerRunning");
  Loop loop;
  Counter counter;
  std::thread([&] { EXPECT_TRUE(loop.call_soon_threadsafe(counter.work())); }).join();
  {
    FailAllocations fail;
    EXPECT_THROW(loop.run(), std::bad_alloc);
  }
  EXPECT_FALSE(loop.is_running());
  EXPECT_EQ(counter.discards, 1);  // not leaked: its owner was told
  int steps = 0;
  chain(loop, steps, 3);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(steps, 3);
  loop.close();
}

// A cross-thread push the inbox cannot store must say so: the work stays
// with the caller (who can release it), never reported queued and lost.
TEST(ExceptionBoundary, FailedInboxPushThrowsAndKeepsTheWorkWithTheCaller) {
  Watchdog dog("FailedInboxPushThrowsAndKeepsTheWorkWithTheCaller");
  Loop loop;
  Counter counter;
  bool threw = false;
  std::thread([&] {
    // A new thread's first push needs the queue to allocate its producer.
    FailAllocations fail;
    try {
      loop.call_soon_threadsafe(counter.work());
    } catch (const std::bad_alloc&) {
      threw = true;
    }
  }).join();
  EXPECT_TRUE(threw);
  if (!threw) {
    // Reported queued: it must then run (or be discarded) by close().
    loop.close();
    EXPECT_EQ(counter.total(), 1) << "the work was reported queued and then lost";
    return;
  }
  EXPECT_EQ(counter.total(), 0);
  bool ran = false;
  // The closure form frees its closure itself when the push fails.
  std::thread([&] {
    FailAllocations fail(1);  // the closure's own allocation succeeds
    EXPECT_THROW(loop.call_soon_threadsafe([&ran] { ran = true; }), std::bad_alloc);
  }).join();
  // close() must not wait for a writer the failed push left announced.
  loop.close();
  EXPECT_FALSE(ran);
  EXPECT_EQ(counter.total(), 0);
}

// abort() with no run in progress (a binding aborting from a callback it
// ran by hand) must not end the next run after one iteration.
TEST(ExceptionBoundary, AbortOutsideRunLeavesNoStaleFlag) {
  Watchdog dog("AbortOutsideRunLeavesNoStaleFlag");
  Loop loop;
  loop.abort();
  int steps = 0;
  chain(loop, steps, 5);
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(steps, 5);
  loop.close();
}

}  // namespace
