// Runtime idle polling: a shard out of work watches its queues before it
// blocks. With a window far longer than any test, every source of work must
// still reach the shard (its rings and foreign queue, the loop's inbox, I/O,
// timers, stop()), the watching must happen with the embedder's lock (the
// GIL) released, and nobody may need to wake it. A source the watching
// missed would wait for the end of the window: the test then fails on its
// step's timeout, or its watchdog.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <uv.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>

#include "shardloop/runtime.hpp"
#include "shardloop/timer.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::Runtime;
using shardloop::Timer;
using shardloop::Work;
using shardloop_test::Latch;
using shardloop_test::Watchdog;

constexpr unsigned kForever = 100'000'000;  // 100 s
constexpr double kStep = 10.0;               // seconds a step may take

Runtime::Options idle_opts(unsigned shards, unsigned idle_poll_us) {
  Runtime::Options o = shardloop_test::unpinned(shards);
  o.idle_poll_us = idle_poll_us;
  return o;
}

void pause_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

TEST(RuntimeIdlePoll, OffByDefault) { EXPECT_EQ(Runtime::Options{}.idle_poll_us, 0u); }

TEST(RuntimeIdlePoll, EverySourceReachesAWatchingShard) {
  if (Runtime::usable_cpus().size() < 2) GTEST_SKIP() << "idle polling needs a CPU per shard";
  Watchdog dog("idle polling: every source", 60);
  Runtime rt(idle_opts(2, kForever));
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  uv_poll_t poll{};
  std::unique_ptr<Timer> timer;
  // Outlive the driver: set() may still be signalling when a wait returns.
  Latch timer_ran, readable, inbox_ran, foreign_ran, replied;
  // Each step waits for the last, with the shard back to watching between
  // them.
  std::thread driver([&] {
    auto step = [&](Latch& done, const char* what) {
      if (done.wait(kStep)) return true;
      ADD_FAILURE() << what << " did not reach the watching shard";
      rt.stop();
      return false;
    };
    if (!step(timer_ran, "a timer")) return;
    pause_ms(5);
    if (::write(fds[1], "x", 1) != 1) {
      ADD_FAILURE() << "write to the pipe failed";
      rt.stop();
      return;
    }
    if (!step(readable, "a readable fd")) return;
    pause_ms(5);
    rt.loop_of(1)->call_soon_threadsafe([&] { inbox_ran.set(); });
    if (!step(inbox_ran, "call_soon_threadsafe")) return;
    pause_ms(5);
    rt.post(1, [&] { foreign_ran.set(); });
    if (!step(foreign_ran, "a post from a foreign thread")) return;
    pause_ms(5);
    // The rings both ways: shard 0, told by a foreign post, calls shard 1.
    rt.invoke_on(0, [&] { rt.submit_to(1, [] { return 1; }).then([&](shardloop::Result<int>&) { replied.set(); }); });
    if (!step(replied, "a call between shards")) return;
    pause_ms(5);
    rt.stop();
  });
  rt.run([&](unsigned s) {
    if (s != 1) return;
    Loop& loop = *rt.loop_of(1);
    // Started before the loop's first poll: still only queued in libuv when
    // the shard first starts watching.
    ASSERT_EQ(uv_poll_init(loop.uv(), &poll, fds[0]), 0);
    poll.data = &readable;
    uv_poll_start(&poll, UV_READABLE, [](uv_poll_t* h, int, int) {
      uv_os_fd_t fd;
      char c;
      if (uv_fileno(reinterpret_cast<uv_handle_t*>(h), &fd) == 0)
        while (::read(fd, &c, 1) > 0) {
        }
      static_cast<Latch*>(h->data)->set();
    });
    timer = std::make_unique<Timer>(loop, [&] { timer_ran.set(); });
    timer->start(0.02);
    rt.at_exit([&] {
      timer.reset();
      uv_close(reinterpret_cast<uv_handle_t*>(&poll), nullptr);
    });
  });
  driver.join();
  ::close(fds[0]);
  ::close(fds[1]);
  // Neither shard ever went to sleep: nothing had to be woken.
  EXPECT_EQ(rt.stats().wakeups, 0u);
}

// The binding releases the GIL in before_wait and takes it back in
// after_wait; a mutex stands in for it here. Were the shard to watch its
// queues with the mutex held, the sender below could never take it while
// the (endless) window lasts.
TEST(RuntimeIdlePoll, WatchesOnlyWithTheEmbeddersLockReleased) {
  if (Runtime::usable_cpus().size() < 2) GTEST_SKIP() << "idle polling needs a CPU per shard";
  Watchdog dog("idle polling: embedder's lock", 60);
  Runtime rt(idle_opts(2, kForever));
  std::mutex gil;
  constexpr int kSends = 200;
  std::atomic<int> ran{0};
  std::thread sender([&] {
    while (rt.loop_of(1) == nullptr) pause_ms(1);
    for (int i = 0; i < kSends; ++i) {
      {
        std::lock_guard<std::mutex> held(gil);
        // Under the lock, as a Python thread would post.
        rt.post(1, [&] { ran.fetch_add(1); });
      }
      auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(kStep);
      while (ran.load() == i && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
      if (ran.load() == i) {
        ADD_FAILURE() << "a post made under the lock never ran";
        break;
      }
    }
    rt.stop();
  });
  rt.run([&](unsigned s) {
    if (s != 1) return;
    gil.lock();  // held whenever the shard runs callbacks
    Loop::Hooks hooks;
    hooks.ctx = &gil;
    hooks.before_wait = [](void* m) { static_cast<std::mutex*>(m)->unlock(); };
    hooks.after_wait = [](void* m) { static_cast<std::mutex*>(m)->lock(); };
    rt.loop_of(1)->set_hooks(hooks);
    rt.at_exit([&] {
      // The loop has returned, so the lock is ours again; closing the loop
      // must not release it a second time.
      rt.loop_of(1)->set_hooks(Loop::Hooks{});
      gil.unlock();
    });
  });
  sender.join();
  EXPECT_EQ(ran.load(), kSends);
  EXPECT_EQ(rt.stats().wakeups, 0u);
}

// With more shards than CPUs a watching shard would keep a CPU from one
// that has work: the option is ignored, and an idle shard sleeps.
TEST(RuntimeIdlePoll, IgnoredWithMoreShardsThanCpus) {
  Watchdog dog("idle polling: oversubscribed", 60);
  unsigned shards = static_cast<unsigned>(Runtime::usable_cpus().size()) + 1;
  Runtime rt(idle_opts(shards, kForever));
  std::atomic<int> ran{0};
  std::thread sender([&] {
    while (rt.loop_of(shards - 1) == nullptr) pause_ms(1);
    // A shard that sleeps is woken by the first post that finds it asleep;
    // one still watching after tens of milliseconds never is.
    for (int i = 0; i < 50 && rt.stats().wakeups == 0; ++i) {
      pause_ms(10);
      rt.post(shards - 1, [&] { ran.fetch_add(1); });
      while (ran.load() == i) std::this_thread::yield();
    }
    rt.stop();
  });
  rt.run();
  sender.join();
  EXPECT_GT(rt.stats().wakeups, 0u);
}

}  // namespace
