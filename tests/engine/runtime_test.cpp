// Runtime: the rings under real threads, cross-shard calls with exact counts
// and per-pair order, wake-ups of sleeping shards, and the collective
// shutdown that answers everything still queued.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/runtime.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::Result;
using shardloop::Runtime;
using shardloop::ShardStopped;
using shardloop::Work;
using shardloop_test::Counter;
using shardloop_test::Latch;
using shardloop_test::Watchdog;

Runtime::Options opts(unsigned shards, std::size_t ring = 1024) {
  Runtime::Options o = shardloop_test::unpinned(shards);
  o.ring_capacity = ring;
  return o;
}

TEST(Runtime, DefaultsToTheAffinityMask) {
  Runtime rt;
  EXPECT_EQ(rt.shard_count(), Runtime::usable_cpus().size());
  EXPECT_EQ(Runtime::this_shard(), -1);
  EXPECT_EQ(Runtime::current(), nullptr);
  EXPECT_THROW(rt.post(rt.shard_count(), [] {}), std::out_of_range);
}

TEST(Runtime, MoreShardsThanCpusRunUnpinned) {
  Runtime::Options o;
  o.shards = static_cast<unsigned>(Runtime::usable_cpus().size()) + 1;
  Runtime rt(o);
  EXPECT_FALSE(rt.pinned());
}

TEST(Runtime, RunGivesEachShardItsThreadAndLoop) {
  Watchdog dog("run/stop");
  Runtime rt(opts(3));
  std::vector<std::thread::id> ids(3);
  std::vector<int> seen(3, -1);
  std::atomic<int> started{0};
  rt.run([&](unsigned s) {
    ids[s] = std::this_thread::get_id();
    seen[s] = Runtime::this_shard();
    EXPECT_EQ(Runtime::current(), &rt);
    EXPECT_EQ(shardloop::shard_count(), 3u);
    EXPECT_NE(rt.loop_of(s), nullptr);
    if (started.fetch_add(1) == 2) rt.stop();
  });
  EXPECT_EQ(ids[0], std::this_thread::get_id());
  EXPECT_NE(ids[1], ids[2]);
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(Runtime::this_shard(), -1);
  EXPECT_EQ(rt.loop_of(1), nullptr);
}

// Every shard sends kN numbered messages to every shard (itself included)
// and two foreign threads do the same; every receiver checks the order per
// sender and the totals are exact.
TEST(Runtime, ExactCountsAndOrderPerPair) {
  Watchdog dog("counts", 60);
  constexpr unsigned kShards = 3, kForeign = 2;
  constexpr unsigned kSenders = kShards + kForeign;
  constexpr std::uint64_t kN = 20000;
  Runtime rt(opts(kShards, 64));
  struct Msg {
    std::uint64_t (*next)[kSenders];
    std::uint64_t* bad;
    std::atomic<std::uint64_t>* done;
    unsigned sender;
    std::uint64_t seq;
  };
  std::uint64_t next[kShards][kSenders] = {};
  std::uint64_t bad[kShards] = {};
  std::atomic<std::uint64_t> done{0};
  constexpr std::uint64_t kTotal = kSenders * kShards * kN;
  auto deliver = [](void* ctx, bool run) noexcept {
    auto* m = static_cast<Msg*>(ctx);
    if (run) {
      std::uint64_t& expect = (*m->next)[m->sender];
      if (m->seq != expect) ++*m->bad;
      expect = m->seq + 1;
      if (m->done->fetch_add(1) + 1 == kTotal) Runtime::current()->stop();
    }
    delete m;
  };
  auto send_all = [&](unsigned sender) {
    for (std::uint64_t i = 0; i < kN; ++i)
      for (unsigned t = 0; t < kShards; ++t)
        ASSERT_TRUE(rt.post(t, Work{deliver, new Msg{&next[t], &bad[t], &done, sender, i}}));
  };
  std::vector<std::thread> foreign;
  for (unsigned f = 0; f < kForeign; ++f) foreign.emplace_back(send_all, kShards + f);
  rt.run([&](unsigned s) { send_all(s); });
  for (auto& t : foreign) t.join();
  EXPECT_EQ(done.load(), kTotal);
  for (unsigned t = 0; t < kShards; ++t) {
    EXPECT_EQ(bad[t], 0u) << "shard " << t;
    for (unsigned s = 0; s < kSenders; ++s) EXPECT_EQ(next[t][s], kN) << t << "<-" << s;
  }
  EXPECT_GT(rt.stats().overflows, 0u);  // 64-slot rings had to grow
}

TEST(Runtime, SubmitToReturnsValuesAndExceptionsOnTheCallersShard) {
  Watchdog dog("submit_to");
  Runtime rt(opts(2));
  int value = 0, on_shard = -1, ran_on = -1;
  std::string error;
  bool void_done = false;
  rt.run([&](unsigned s) {
    if (s != 0) return;
    rt.submit_to(1, [&] {
        ran_on = Runtime::this_shard();
        return 41;
      }).then([&](Result<int>& r) {
      value = r.get() + 1;
      on_shard = Runtime::this_shard();
      rt.submit_to(1, []() -> int { throw std::runtime_error("boom"); }).then([&](Result<int>& r2) {
        try {
          r2.get();
        } catch (const std::runtime_error& e) {
          error = e.what();
        }
        rt.submit_to(0, [] {}).then([&](Result<void>& r3) {
          void_done = r3.ok();
          rt.stop();
        });
      });
    });
  });
  EXPECT_EQ(value, 42);
  EXPECT_EQ(ran_on, 1);
  EXPECT_EQ(on_shard, 0);
  EXPECT_EQ(error, "boom");
  EXPECT_TRUE(void_done);
}

TEST(Runtime, SubmitToOutsideAShardIsRefused) {
  std::future<int> f;
  Counter plain;
  {
    Runtime rt(opts(2));
    EXPECT_THROW(rt.submit_to(0, [] { return 1; }), std::logic_error);
    EXPECT_THROW(rt.invoke_on(2, [] { return 1; }), std::out_of_range);
    // Queued for a shard that never ran: answered when the runtime goes.
    f = rt.invoke_on(1, [] { return 1; });
    ASSERT_TRUE(rt.post(1, plain.work()));
    EXPECT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  }
  EXPECT_THROW(f.get(), ShardStopped);
  EXPECT_EQ(plain.discards, 1);
}

// A drain takes at most a batch (1,024) of foreign work; closing a shard
// must still discard all of it, or what each item owns leaks.
TEST(Runtime, DestructionDiscardsMoreThanABatchOfForeignWork) {
  constexpr int kItems = 3000;
  Counter plain;
  {
    Runtime rt(opts(2));
    for (int i = 0; i < kItems; ++i) ASSERT_TRUE(rt.post(1, plain.work()));
  }
  EXPECT_EQ(plain.discards, kItems);
  EXPECT_EQ(plain.runs, 0);
}

TEST(Runtime, AbandonDiscardsMoreThanABatchOfForeignWork) {
  Watchdog dog("abandon");
  constexpr int kItems = 3000;
  Counter plain;
  Loop loop;  // outlives the runtime, as abandon() requires
  {
    Runtime rt(opts(2));
    rt.attach(0, loop);
    std::thread foreign([&] {
      for (int i = 0; i < kItems; ++i) ASSERT_TRUE(rt.post(0, plain.work()));
    });
    foreign.join();
    rt.abandon();
    EXPECT_EQ(plain.discards, kItems);
    EXPECT_EQ(plain.runs, 0);
  }
  loop.close();
}

TEST(Runtime, InvokeOnFromForeignThreads) {
  Watchdog dog("invoke_on", 30);
  Runtime rt(opts(2));
  std::atomic<bool> up{false};
  std::thread client([&] {
    while (!up.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    int sum = 0;
    for (int i = 0; i < 200; ++i) sum += rt.invoke_on(i % 2, [i] { return Runtime::this_shard() + i; }).get();
    EXPECT_EQ(sum, 100 + 199 * 200 / 2);
    auto f = rt.invoke_on(1, []() -> int { throw std::invalid_argument("bad"); });
    EXPECT_THROW(f.get(), std::invalid_argument);
    rt.stop();
  });
  rt.run([&](unsigned s) {
    if (s == 0) up = true;
  });
  client.join();
  EXPECT_THROW(rt.invoke_on(0, [] { return 0; }).get(), ShardStopped);
}

// The target sleeps between messages: each send must wake it. A lost
// wake-up hangs the test (the watchdog then fails it). With idle polling
// the target first watches its queues for a while: sends then land in the
// window, at its end (where the sleep handshake takes over) and after it.
void no_lost_wakeups(unsigned idle_poll_us) {
  Watchdog dog("wake-ups", 60);
  Runtime::Options o = opts(2);
  o.idle_poll_us = idle_poll_us;
  Runtime rt(o);
  constexpr int kRounds = 3000;
  std::atomic<int> got{0};
  std::atomic<int> finished{0};
  auto finish = [&] {
    if (finished.fetch_add(1) == 1) rt.stop();
  };
  std::thread foreign([&] {
    std::mt19937 rng(1);
    while (rt.loop_of(1) == nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (int i = 0; i < kRounds; ++i) {
      int before = got.load();
      rt.post(1, [&] { got.fetch_add(1); });
      while (got.load() == before) std::this_thread::yield();
      // Vary the gap so the send lands before, during and after the
      // target's decision to block.
      int gap = static_cast<int>(rng() % 60);
      if (gap > 30) std::this_thread::sleep_for(std::chrono::microseconds(gap - 30));
    }
    finish();
  });
  // Shard 0 ping-pongs with shard 1 the same way, through the rings.
  int pongs = 0;
  std::function<void()> ping = [&] {
    rt.submit_to(1, [] { return 1; }).then([&](Result<int>& r) {
      pongs += r.get();
      if (pongs < kRounds)
        ping();
      else
        finish();
    });
  };
  rt.run([&](unsigned s) {
    if (s == 0) ping();
  });
  foreign.join();
  EXPECT_EQ(got.load(), kRounds);
  EXPECT_EQ(pongs, kRounds);
  if (idle_poll_us == 0) EXPECT_GT(rt.stats().wakeups, 0u);
}

TEST(Runtime, NoLostWakeUps) { no_lost_wakeups(0); }

// About as long as the foreign sender's shortest sleep: its sends keep
// landing around the end of the window.
TEST(Runtime, NoLostWakeUpsWithIdlePolling) { no_lost_wakeups(50); }

// Work queued for a shard whose loop has stopped is answered during the
// shutdown: requests with ShardStopped, plain Work discarded, replies
// delivered; posts after the shutdown are refused.
TEST(Runtime, ShutdownAnswersPendingWork) {
  Watchdog dog("shutdown", 30);
  Runtime rt(opts(2));
  constexpr int kCalls = 500;
  int ok = 0, stopped = 0, other = 0;
  Counter plain;
  Latch target_stopped, queued;
  rt.run([&](unsigned s) {
    Loop& loop = *rt.loop_of(s);
    if (s == 1) {
      // Stop this loop, then hold its last iteration until shard 0 has
      // queued its calls: the loop never sees them.
      loop.call_soon([&] {
        rt.loop_of(1)->stop();
        target_stopped.set();
        queued.wait(10);
      });
      return;
    }
    loop.call_soon([&] {
      target_stopped.wait(10);
      for (int i = 0; i < kCalls; ++i)
        rt.submit_to(1, [] { return 1; }).then([&](Result<int>& r) {
          try {
            ok += r.get();
          } catch (const ShardStopped&) {
            ++stopped;
          } catch (...) {
            ++other;
          }
        });
      ASSERT_TRUE(rt.post(1, plain.work()));
      queued.set();
    });
  });
  EXPECT_EQ(ok, 0);
  EXPECT_EQ(stopped, kCalls);
  EXPECT_EQ(other, 0);
  EXPECT_EQ(plain.runs, 0);
  EXPECT_EQ(plain.discards, 1);
  Counter late;
  EXPECT_FALSE(rt.post(0, late.work()));
  EXPECT_EQ(late.total(), 0);  // refused work stays with the caller
}

// The embedder's way (the Python binding): its own threads and loops,
// attach/detach around each loop's run, at_exit on the shard's thread.
TEST(Runtime, AttachDetachOwnThreads) {
  Watchdog dog("attach/detach");
  Runtime rt(opts(2));
  std::atomic<int> exits{0};
  std::atomic<int> replies{0};
  Latch both;
  std::atomic<int> attached{0};
  auto shard = [&](unsigned s) {
    Loop loop;
    rt.attach(s, loop);
    EXPECT_THROW(rt.attach(s, loop), std::logic_error);
    rt.at_exit([&] { exits.fetch_add(1); });
    if (attached.fetch_add(1) == 1) both.set();
    ASSERT_TRUE(both.wait());
    if (s == 0) {
      rt.submit_to(1, [] { return 5; }).then([&](Result<int>& r) {
        replies += r.get();
        rt.loop_of(0)->stop();  // only shard 0: detach stops the others
      });
    }
    loop.run();
    rt.detach();
    EXPECT_EQ(Runtime::this_shard(), -1);
    loop.close();
  };
  std::thread t1(shard, 1);
  shard(0);
  t1.join();
  EXPECT_EQ(replies.load(), 5);
  EXPECT_EQ(exits.load(), 2);
}

TEST(Runtime, InitExceptionStopsAndIsRethrown) {
  Watchdog dog("init error");
  Runtime rt(opts(2));
  EXPECT_THROW(rt.run([](unsigned s) {
    if (s == 1) throw std::runtime_error("init failed");
  }),
               std::runtime_error);
}

}  // namespace
