// close() and the destructor: every pending Work is discarded exactly once,
// and a closed loop refuses further use.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::TimerNode;
using shardloop::Work;
using shardloop_test::Counter;

TEST(Close, DiscardsReadyTimersAndInboxExactlyOnce) {
  std::vector<TimerNode> nodes(3);
  Counter ready[3], timers[3], inbox_local[2], inbox_remote[2];
  Loop loop;
  for (auto& c : ready) loop.call_soon(c.work());
  for (int i = 0; i < 3; ++i) {
    nodes[i].work = timers[i].work();
    loop.schedule(&nodes[i], loop.time() + 10 + i);
  }
  // Inbox items from the loop's own thread and from another one; nothing has
  // drained them since the loop never ran.
  for (auto& c : inbox_local) ASSERT_TRUE(loop.call_soon_threadsafe(c.work()));
  std::thread other([&] {
    for (auto& c : inbox_remote) ASSERT_TRUE(loop.call_soon_threadsafe(c.work()));
  });
  other.join();
  EXPECT_EQ(loop.ready_count(), 3u);
  EXPECT_EQ(loop.timer_count(), 3u);

  loop.close();
  EXPECT_TRUE(loop.is_closed());
  for (auto* group : {ready, timers}) {
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(group[i].runs, 0);
      EXPECT_EQ(group[i].discards, 1);
    }
  }
  for (auto* group : {inbox_local, inbox_remote}) {
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(group[i].runs, 0);
      EXPECT_EQ(group[i].discards, 1);
    }
  }
  for (auto& n : nodes) EXPECT_FALSE(n.scheduled());
  EXPECT_EQ(loop.ready_count(), 0u);
  EXPECT_EQ(loop.timer_count(), 0u);
}

TEST(Close, DiscardsWorkLeftByStopAndAbort) {
  Counter left_by_stop, left_by_abort, inbox_after;
  {
    Loop loop;
    loop.call_soon([&] {
      loop.stop();
      loop.call_soon(left_by_stop.work());
    });
    EXPECT_EQ(loop.run(), Loop::Exit::stopped);
    ASSERT_TRUE(loop.call_soon_threadsafe(inbox_after.work()));
    loop.close();
  }
  {
    Loop loop;
    loop.call_soon([&] { loop.abort(); });
    loop.call_soon(left_by_abort.work());
    EXPECT_EQ(loop.run(), Loop::Exit::aborted);
    loop.close();
  }
  for (Counter* c : {&left_by_stop, &left_by_abort, &inbox_after}) {
    EXPECT_EQ(c->runs, 0);
    EXPECT_EQ(c->discards, 1);
  }
}

TEST(Close, StdFunctionWorkIsReleasedNotRun) {
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> weak = token;
  TimerNode node;
  Loop loop;
  bool ran = false;
  loop.call_soon([token, &ran] { ran = true; });
  node.work = shardloop::make_work([token, &ran] { ran = true; });
  loop.schedule(&node, loop.time() + 60);
  ASSERT_TRUE(loop.call_soon_threadsafe(std::function<void()>([token, &ran] { ran = true; })));
  token.reset();
  EXPECT_FALSE(weak.expired());
  loop.close();
  EXPECT_FALSE(ran);
  EXPECT_TRUE(weak.expired()) << "closures were not destroyed by close()";
}

TEST(Close, ThreadsafeAfterCloseReturnsFalseAndLeavesWorkWithCaller) {
  Loop loop;
  loop.close();
  Counter c;
  EXPECT_FALSE(loop.call_soon_threadsafe(c.work()));
  EXPECT_EQ(c.total(), 0);  // still the caller's
  c.work().discard();
  EXPECT_EQ(c.discards, 1);

  // The std::function overload disposes of its own closure when refused.
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> weak = token;
  bool ran = false;
  EXPECT_FALSE(loop.call_soon_threadsafe(std::function<void()>([token, &ran] { ran = true; })));
  token.reset();
  EXPECT_TRUE(weak.expired());
  EXPECT_FALSE(ran);

  // From another thread too.
  bool result = true;
  std::thread other([&] { result = loop.call_soon_threadsafe(std::function<void()>([] {})); });
  other.join();
  EXPECT_FALSE(result);
}

TEST(Close, LoopThreadApisThrowAfterClose) {
  Loop loop;
  loop.close();
  Counter c;
  EXPECT_THROW(loop.call_soon(c.work()), std::logic_error);
  EXPECT_EQ(c.total(), 0);
  TimerNode node;
  node.work = c.work();
  EXPECT_THROW(loop.schedule(&node, 0), std::logic_error);
  EXPECT_FALSE(node.scheduled());
  EXPECT_THROW(loop.signal_wakeup_fd(), std::logic_error);
  EXPECT_EQ(c.total(), 0);
}

TEST(Close, CloseTwiceIsFine) {
  Counter c;
  Loop loop;
  loop.call_soon(c.work());
  EXPECT_NO_THROW(loop.close());
  EXPECT_NO_THROW(loop.close());
  EXPECT_TRUE(loop.is_closed());
  EXPECT_EQ(c.discards, 1);
}

TEST(Close, CloseWhileRunningThrowsLogicError) {
  Counter pending;
  Loop loop;
  bool threw = false;
  loop.call_soon([&] {
    try {
      loop.close();
    } catch (const std::logic_error&) {
      threw = true;
    }
    loop.stop();
  });
  loop.call_soon(pending.work());
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_TRUE(threw);
  EXPECT_FALSE(loop.is_closed());
  EXPECT_EQ(pending.runs, 1);  // the loop was left intact and kept running
  loop.close();
  EXPECT_TRUE(loop.is_closed());
}

TEST(Close, RunOnClosedLoopThrowsLogicError) {
  Loop loop;
  loop.close();
  EXPECT_THROW(loop.run(), std::logic_error);
  EXPECT_FALSE(loop.is_running());
}

TEST(Close, DiscardedWorkCannotScheduleMore) {
  // A discard fn that tries to queue more work is refused (the loop is
  // marked closed before draining), so nothing is left behind.
  struct Ctx {
    Loop* loop;
    bool threadsafe_result = true;
    bool call_soon_threw = false;
    Counter extra;
  } ctx;
  auto fn = [](void* p, bool run) noexcept {
    auto* c = static_cast<Ctx*>(p);
    if (run) return;
    c->threadsafe_result = c->loop->call_soon_threadsafe(c->extra.work());
    try {
      c->loop->call_soon(c->extra.work());
    } catch (const std::logic_error&) {
      c->call_soon_threw = true;
    }
  };
  Loop loop;
  ctx.loop = &loop;
  loop.call_soon(Work{fn, &ctx});
  loop.close();
  EXPECT_FALSE(ctx.threadsafe_result);
  EXPECT_TRUE(ctx.call_soon_threw);
  EXPECT_EQ(ctx.extra.total(), 0);
}

TEST(Close, ClosesSignalWakeupFd) {
  Loop loop;
  int fd = loop.signal_wakeup_fd();
  ASSERT_GE(fd, 0);
  EXPECT_EQ(loop.signal_wakeup_fd(), fd);  // one fd per loop
  EXPECT_NE(::fcntl(fd, F_GETFD), -1);
  loop.close();
  errno = 0;
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(Close, ClosesHandlesLeftByTheEmbedder) {
  // close() closes every handle on the libuv loop, including ones the
  // embedder opened on loop.uv() and left open.
  Loop loop;
  auto* timer = new uv_timer_t;
  ASSERT_EQ(uv_timer_init(loop.uv(), timer), 0);
  ASSERT_EQ(uv_timer_start(timer, [](uv_timer_t*) {}, 60000, 0), 0);
  EXPECT_NO_THROW(loop.close());
  EXPECT_TRUE(uv_is_closing(reinterpret_cast<uv_handle_t*>(timer)));
  delete timer;
}

TEST(Destructor, ReleasesEverythingWithoutExplicitClose) {
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> weak = token;
  Counter ready, timer, inbox;
  TimerNode counted_node, closure_node;
  {
    Loop loop;
    loop.signal_wakeup_fd();
    // Run a little first so the libuv handles have been used before teardown.
    loop.call_soon([&] { loop.stop(); });
    loop.run();
    // Then leave work of every kind pending.
    loop.call_soon(ready.work());
    loop.call_soon([token] {});
    counted_node.work = timer.work();
    loop.schedule(&counted_node, loop.time() + 60);
    closure_node.work = shardloop::make_work([token] {});
    loop.schedule(&closure_node, loop.time() + 60);
    ASSERT_TRUE(loop.call_soon_threadsafe(inbox.work()));
    ASSERT_TRUE(loop.call_soon_threadsafe(std::function<void()>([token] {})));
    token.reset();
    EXPECT_FALSE(weak.expired());
  }
  EXPECT_TRUE(weak.expired()) << "the destructor leaked pending closures";
  for (Counter* c : {&ready, &timer, &inbox}) {
    EXPECT_EQ(c->runs, 0);
    EXPECT_EQ(c->discards, 1);
  }
  EXPECT_FALSE(counted_node.scheduled());
  EXPECT_FALSE(closure_node.scheduled());
}

TEST(Destructor, DestroysNeverRunLoop) {
  Counter c;
  {
    Loop loop;
    loop.call_soon(c.work());
  }
  EXPECT_EQ(c.discards, 1);
  EXPECT_EQ(c.runs, 0);
}

}  // namespace
