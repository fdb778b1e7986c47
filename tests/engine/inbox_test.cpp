// call_soon_threadsafe: many producers, exact counts, per-producer FIFO,
// waking a blocked loop, and racing close().
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::Work;
using shardloop_test::Latch;
using shardloop_test::Watchdog;

// One item per call_soon_threadsafe. Fields are written before the
// producers start and afterwards only by the thread that finishes the Work.
struct Stream;
struct Item {
  Stream* stream = nullptr;
  int producer = 0;
  int seq = 0;
  int runs = 0;
  int discards = 0;
};

struct Stream {
  Loop* loop = nullptr;
  int expected_total = 0;
  int total = 0;
  int fifo_violations = 0;
  std::vector<int> last_seq;  // per producer

  static void fn(void* ctx, bool run) noexcept {
    auto* item = static_cast<Item*>(ctx);
    if (!run) {
      ++item->discards;
      return;
    }
    ++item->runs;
    Stream* s = item->stream;
    if (item->seq != s->last_seq[item->producer] + 1) ++s->fifo_violations;
    s->last_seq[item->producer] = item->seq;
    if (++s->total == s->expected_total) s->loop->stop();
  }
};

TEST(Inbox, ManyProducersExactCountsAndPerProducerFifo) {
  Watchdog dog("ManyProducersExactCountsAndPerProducerFifo", 30);
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 50000;
  Loop loop;
  Stream stream;
  stream.loop = &loop;
  stream.expected_total = kProducers * kPerProducer;
  stream.last_seq.assign(kProducers, -1);
  std::vector<std::vector<Item>> items(kProducers, std::vector<Item>(kPerProducer));
  for (int p = 0; p < kProducers; ++p)
    for (int i = 0; i < kPerProducer; ++i) items[p][i] = Item{&stream, p, i, 0, 0};

  std::atomic<int> refused{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (int i = 0; i < kPerProducer; ++i)
        if (!loop.call_soon_threadsafe(Work{&Stream::fn, &items[p][i]})) refused.fetch_add(1);
    });
  }
  // Start the producers from inside the running loop, so pushes race with
  // both blocked waits and drains.
  loop.call_soon([&] { go.store(true, std::memory_order_release); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  for (auto& t : producers) t.join();

  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(stream.total, kProducers * kPerProducer);
  EXPECT_EQ(stream.fifo_violations, 0);
  int not_once = 0;
  for (int p = 0; p < kProducers; ++p) {
    EXPECT_EQ(stream.last_seq[p], kPerProducer - 1);
    for (int i = 0; i < kPerProducer; ++i)
      if (items[p][i].runs != 1 || items[p][i].discards != 0) ++not_once;
  }
  EXPECT_EQ(not_once, 0) << "items lost or run twice";
  EXPECT_EQ(loop.ready_count(), 0u);
}

TEST(Inbox, ManyProducersWithStdFunction) {
  Watchdog dog("ManyProducersWithStdFunction", 30);
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 5000;
  Loop loop;
  std::vector<std::vector<int>> seen(kProducers);
  int total = 0;
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        bool ok = loop.call_soon_threadsafe(std::function<void()>([&, p, i] {
          seen[p].push_back(i);
          if (++total == kProducers * kPerProducer) loop.stop();
        }));
        if (!ok) std::abort();
      }
    });
  }
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  for (auto& t : producers) t.join();
  for (int p = 0; p < kProducers; ++p) {
    ASSERT_EQ(seen[p].size(), static_cast<std::size_t>(kPerProducer));
    for (int i = 0; i < kPerProducer; ++i) ASSERT_EQ(seen[p][i], i);
  }
}

TEST(Inbox, WakesLoopBlockedWithNoWork) {
  Watchdog dog("WakesLoopBlockedWithNoWork");
  Loop loop;
  struct HookState {
    Latch blocked;
    std::atomic<int> before{0};
    std::atomic<int> after{0};
  } hs;
  Loop::Hooks hooks;
  hooks.ctx = &hs;
  hooks.before_wait = [](void* ctx) {
    auto* s = static_cast<HookState*>(ctx);
    s->before.fetch_add(1);
    s->blocked.set();
  };
  hooks.after_wait = [](void* ctx) { static_cast<HookState*>(ctx)->after.fetch_add(1); };
  loop.set_hooks(hooks);

  bool ran = false;
  bool sent = false;
  std::thread other([&] {
    // Post only once the loop is really inside its kernel wait.
    if (!hs.blocked.wait()) return;
    sent = loop.call_soon_threadsafe(std::function<void()>([&] {
      ran = true;
      loop.stop();
    }));
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_TRUE(sent);
  EXPECT_TRUE(ran);
  EXPECT_GE(hs.before.load(), 1);
  EXPECT_EQ(hs.before.load(), hs.after.load());
}

TEST(Inbox, LoopOnAnotherThreadDrivenFromOutside) {
  // The loop thread blocks; the main thread feeds it work and finally stops
  // it, all through call_soon_threadsafe.
  Watchdog dog("LoopOnAnotherThreadDrivenFromOutside");
  Loop loop;
  std::atomic<int> ran{0};
  Loop::Exit exit = Loop::Exit::aborted;
  std::thread runner([&] { exit = loop.run(); });
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(loop.call_soon_threadsafe(std::function<void()>([&] { ran.fetch_add(1); })));
  ASSERT_TRUE(loop.call_soon_threadsafe(std::function<void()>([&] { loop.stop(); })));
  runner.join();
  EXPECT_EQ(exit, Loop::Exit::stopped);
  EXPECT_EQ(ran.load(), 100);
}

TEST(Inbox, ThreadsafeCallFromLoopThreadDuringBatchRunsNextIteration) {
  Watchdog dog("ThreadsafeCallFromLoopThreadDuringBatchRunsNextIteration");
  Loop loop;
  std::vector<std::string> seen;
  loop.call_soon([&] {
    seen.push_back("a");
    loop.call_soon_threadsafe(std::function<void()>([&] { seen.push_back("from-inbox"); }));
  });
  loop.call_soon([&] { seen.push_back("b"); });
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "from-inbox"}));
}

TEST(Inbox, CloseRacingProducersFinishesEveryItemExactlyOnce) {
  // Producers push until refused while the (idle) loop is closed under them:
  // every accepted item must be discarded by close() exactly once, every
  // refused one left untouched for its producer.
  Watchdog dog("CloseRacingProducersFinishesEveryItemExactlyOnce", 30);
  constexpr int kProducers = 4;
  constexpr int kMax = 20000;
  auto loop = std::make_unique<Loop>();
  std::vector<std::vector<Item>> items(kProducers, std::vector<Item>(kMax));
  std::vector<int> accepted(kProducers, 0);
  std::vector<int> refused_at(kProducers, -1);
  std::atomic<int> total_accepted{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kMax; ++i) {
        if (!loop->call_soon_threadsafe(Work{&Stream::fn, &items[p][i]})) {
          refused_at[p] = i;
          return;
        }
        ++accepted[p];
        total_accepted.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  // Close once some work is in (not waiting for all of it).
  while (total_accepted.load(std::memory_order_relaxed) < 1000) std::this_thread::yield();
  loop->close();
  for (auto& t : producers) t.join();

  int bad = 0;
  for (int p = 0; p < kProducers; ++p) {
    for (int i = 0; i < kMax; ++i) {
      const Item& it = items[p][i];
      bool was_accepted = i < accepted[p];
      if (it.runs != 0) ++bad;
      if (was_accepted && it.discards != 1) ++bad;
      if (!was_accepted && it.discards != 0) ++bad;
    }
    if (accepted[p] < kMax) EXPECT_EQ(refused_at[p], accepted[p]);
  }
  EXPECT_EQ(bad, 0);
  EXPECT_FALSE(loop->call_soon_threadsafe(Work{&Stream::fn, &items[0][0]}));
}

// An embedder lock standing in for the GIL: the loop holds it except
// during its kernel wait (the hooks give it up and take it back).
struct EmbedderLock {
  std::mutex mu;
  static Loop::Hooks hooks(EmbedderLock* lock) {
    Loop::Hooks h;
    h.ctx = lock;
    h.before_wait = [](void* ctx) { static_cast<EmbedderLock*>(ctx)->mu.unlock(); };
    h.after_wait = [](void* ctx) { static_cast<EmbedderLock*>(ctx)->mu.lock(); };
    return h;
  }
};

TEST(Inbox, LockedPushesWithGatedOnesExactCountsFifoNoLostWakeup) {
  // call_soon_threadsafe_locked() from threads holding the embedder lock,
  // alongside plain call_soon_threadsafe() from threads that do not: every
  // item runs once, in order per producer. The producers pause now and then
  // so the loop goes to sleep often; a lost wake-up ends in the watchdog.
  Watchdog dog("LockedPushesWithGatedOnesExactCountsFifoNoLostWakeup", 30);
  constexpr int kProducers = 4;  // even: locked, odd: gated
  constexpr int kPerProducer = 20000;
  Loop loop;
  EmbedderLock lock;
  loop.set_hooks(EmbedderLock::hooks(&lock));
  Stream stream;
  stream.loop = &loop;
  stream.expected_total = kProducers * kPerProducer;
  stream.last_seq.assign(kProducers, -1);
  std::vector<std::vector<Item>> items(kProducers, std::vector<Item>(kPerProducer));
  for (int p = 0; p < kProducers; ++p)
    for (int i = 0; i < kPerProducer; ++i) items[p][i] = Item{&stream, p, i, 0, 0};

  std::atomic<int> refused{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (int i = 0; i < kPerProducer; ++i) {
        Work work{&Stream::fn, &items[p][i]};
        bool ok;
        if (p % 2 == 0) {
          std::lock_guard<std::mutex> held(lock.mu);
          ok = loop.call_soon_threadsafe_locked(work);
        } else {
          ok = loop.call_soon_threadsafe(work);
        }
        if (!ok) refused.fetch_add(1);
        if (i % 64 == 63) std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    });
  }
  lock.mu.lock();
  loop.call_soon([&] { go.store(true, std::memory_order_release); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  lock.mu.unlock();
  for (auto& t : producers) t.join();

  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(stream.total, kProducers * kPerProducer);
  EXPECT_EQ(stream.fifo_violations, 0);
  int not_once = 0;
  for (int p = 0; p < kProducers; ++p)
    for (int i = 0; i < kPerProducer; ++i)
      if (items[p][i].runs != 1 || items[p][i].discards != 0) ++not_once;
  EXPECT_EQ(not_once, 0) << "items lost or run twice";
}

TEST(Inbox, LockedPushesRacingCloseUnderTheLockFinishEveryItemOnce) {
  // close() under the embedder lock while locked producers push: an item
  // is either refused (left to its producer) or discarded by close() once.
  Watchdog dog("LockedPushesRacingCloseUnderTheLockFinishEveryItemOnce", 30);
  constexpr int kProducers = 3;
  constexpr int kMax = 20000;
  auto loop = std::make_unique<Loop>();
  EmbedderLock lock;
  std::vector<std::vector<Item>> items(kProducers, std::vector<Item>(kMax));
  std::vector<int> accepted(kProducers, 0);
  std::atomic<int> total_accepted{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kMax; ++i) {
        std::lock_guard<std::mutex> held(lock.mu);
        if (!loop->call_soon_threadsafe_locked(Work{&Stream::fn, &items[p][i]})) return;
        ++accepted[p];
        total_accepted.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  while (total_accepted.load(std::memory_order_relaxed) < 1000) std::this_thread::yield();
  {
    std::lock_guard<std::mutex> held(lock.mu);
    loop->close();
  }
  for (auto& t : producers) t.join();
  int bad = 0;
  for (int p = 0; p < kProducers; ++p) {
    for (int i = 0; i < kMax; ++i) {
      const Item& it = items[p][i];
      bool was_accepted = i < accepted[p];
      if (it.runs != 0) ++bad;
      if (was_accepted && it.discards != 1) ++bad;
      if (!was_accepted && it.discards != 0) ++bad;
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_FALSE(loop->call_soon_threadsafe_locked(Work{&Stream::fn, &items[0][0]}));
}

TEST(Inbox, ItemsPostedBeforeStopBeforeRunRunInThatOneIteration) {
  // asyncio: stop() before run_forever() still runs everything already
  // scheduled, including call_soon_threadsafe() work from other threads.
  Watchdog dog("ItemsPostedBeforeStopBeforeRunRunInThatOneIteration");
  Loop loop;
  std::atomic<int> ran{0};
  std::thread other([&] {
    for (int i = 0; i < 10; ++i)
      loop.call_soon_threadsafe(std::function<void()>([&] { ran.fetch_add(1); }));
  });
  other.join();
  loop.stop();
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(ran.load(), 10);
}

// On the loop's own thread call_soon_threadsafe() must keep call order with
// call_soon(), as asyncio's does (it appends to _ready directly); a detour
// through the inbox used to run a, c, b here.
TEST(Inbox, CallSoonThreadsafeOnLoopThreadKeepsFifoWithCallSoon) {
  Watchdog dog("CallSoonThreadsafeOnLoopThreadKeepsFifoWithCallSoon");
  Loop loop;
  std::vector<std::string> seen;
  loop.call_soon([&] { seen.push_back("a"); });
  loop.call_soon_threadsafe(std::function<void()>([&] { seen.push_back("b"); }));
  loop.call_soon([&] { seen.push_back("c"); });
  loop.call_soon([&] {
    // The same inside a running loop.
    loop.call_soon([&] { seen.push_back("d"); });
    loop.call_soon_threadsafe(std::function<void()>([&] { seen.push_back("e"); }));
    loop.call_soon([&] {
      seen.push_back("f");
      loop.stop();
    });
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c", "d", "e", "f"}));
}

// Work another thread queued before (happens-before) the loop thread's own
// call_soon() runs first, as in asyncio where call_soon_threadsafe appends to
// _ready at once.
TEST(Inbox, CrossThreadPostBeforeLoopThreadCallSoonRunsFirst) {
  Watchdog dog("CrossThreadPostBeforeLoopThreadCallSoonRunsFirst");
  Loop loop;
  std::vector<std::string> seen;
  auto post_from_thread = [&](const char* name) {
    std::thread other([&, name] {
      loop.call_soon_threadsafe(std::function<void()>([&, name] { seen.push_back(name); }));
    });
    other.join();
  };
  // Outside run().
  post_from_thread("t1");
  loop.call_soon([&] { seen.push_back("c1"); });
  // Inside a running callback.
  loop.call_soon([&] {
    post_from_thread("t2");
    loop.call_soon([&] {
      seen.push_back("c2");
      loop.stop();
    });
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<std::string>{"t1", "c1", "t2", "c2"}));
}

TEST(Inbox, InboxWorkRunsBeforeTimersExpiringInTheSameIteration) {
  // asyncio: call_soon_threadsafe work is in _ready before _run_once moves
  // expired timers behind it.
  Watchdog dog("InboxWorkRunsBeforeTimersExpiringInTheSameIteration");
  shardloop::TimerNode node;
  Loop loop;
  std::vector<std::string> seen;
  // One iteration first, so the next one may skip its non-blocking poll and
  // must still take inbox work before expired timers.
  loop.call_soon([] {});
  loop.run_once();
  node.work = shardloop::make_work([&] { seen.push_back("timer"); });
  loop.schedule(&node, loop.time() - 1);
  std::thread other([&] {
    loop.call_soon_threadsafe(std::function<void()>([&] { seen.push_back("inbox"); }));
  });
  other.join();
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"inbox", "timer"}));
}

TEST(Inbox, BusyLoopStillPicksUpInboxWork) {
  // The loop never blocks (a callback re-queues itself every iteration), so
  // only the per-iteration drain can deliver the other thread's work.
  Watchdog dog("BusyLoopStillPicksUpInboxWork");
  Loop loop;
  bool got = false;
  long spins = 0;
  std::function<void()> spin = [&] {
    ++spins;
    if (got) {
      loop.stop();
      return;
    }
    loop.call_soon(spin);
  };
  loop.call_soon(spin);
  std::thread other([&] {
    loop.call_soon_threadsafe(std::function<void()>([&] { got = true; }));
  });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  other.join();
  EXPECT_TRUE(got);
  EXPECT_GT(spins, 0);
}

}  // namespace
