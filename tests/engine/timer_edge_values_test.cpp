// NaN and infinite deadlines, as asyncio's loop treats them: a NaN timer is
// due at once (asyncio's heap pops it as soon as it reaches the top, and
// computes a zero timeout for it), -inf is due at once, +inf never fires. None
// of them may keep other timers from running.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/shardloop.hpp"

namespace {

using shardloop::Loop;
using shardloop::Timer;
using shardloop::TimerNode;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Turns a wedged loop into a failed assertion instead of a hang: stops the
// loop from another thread (through the inbox, which needs no timer) if the
// test has not finished within `seconds`.
class StopGuard {
 public:
  StopGuard(Loop& loop, double seconds)
      : thread_([this, &loop, seconds] {
          std::unique_lock<std::mutex> lock(mu_);
          if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; })) {
            fired = true;
            loop.call_soon_threadsafe([&loop] { loop.stop(); });
          }
        }) {}
  ~StopGuard() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  std::atomic<bool> fired{false};

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

TEST(TimerEdgeValues, NaNDeadlineIsDueAtOnceAndDoesNotWedgeLaterTimers) {
  Loop loop;
  std::vector<std::string> order;
  TimerNode nan_node, zero_node, later_node;
  nan_node.work = shardloop::make_work([&] { order.push_back("nan"); });
  zero_node.work = shardloop::make_work([&] { order.push_back("zero"); });
  later_node.work = shardloop::make_work([&] {
    order.push_back("later");
    loop.stop();
  });
  loop.schedule(&nan_node, kNaN);
  loop.schedule(&zero_node, loop.time());
  loop.schedule(&later_node, loop.time() + 0.001);
  StopGuard guard(loop, 10);
  loop.run();
  EXPECT_FALSE(guard.fired) << "the timers after the NaN one never ran";
  EXPECT_EQ(order, (std::vector<std::string>{"nan", "zero", "later"}));
  // The deadline is kept as given (asyncio's TimerHandle.when() is nan too).
  EXPECT_TRUE(std::isnan(nan_node.when));
  loop.close();
}

TEST(TimerEdgeValues, InfiniteDeadlines) {
  Loop loop;
  std::vector<std::string> order;
  TimerNode never, past, later;
  never.work = shardloop::make_work([&] { order.push_back("+inf"); });
  past.work = shardloop::make_work([&] { order.push_back("-inf"); });
  later.work = shardloop::make_work([&] {
    order.push_back("later");
    loop.stop();
  });
  loop.schedule(&never, kInf);
  loop.schedule(&past, -kInf);
  loop.schedule(&later, loop.time() + 0.001);
  StopGuard guard(loop, 10);
  loop.run();
  EXPECT_FALSE(guard.fired);
  EXPECT_EQ(order, (std::vector<std::string>{"-inf", "later"}));
  EXPECT_TRUE(never.scheduled());
  loop.close();  // discards the +inf timer's work (frees its closure)
  EXPECT_FALSE(never.scheduled());
}

TEST(TimerEdgeValues, NativeTimerWithNaNOrInfiniteDelay) {
  Loop loop;
  std::vector<std::string> order;
  Timer nan_timer(loop, [&] { order.push_back("nan"); });
  Timer never(loop, [&] { order.push_back("+inf"); });
  Timer past(loop, [&] { order.push_back("-inf"); });
  Timer later(loop, [&] {
    order.push_back("later");
    loop.stop();
  });
  never.start(kInf);
  nan_timer.start(kNaN);
  past.start(-kInf);
  later.start(0.001);
  StopGuard guard(loop, 10);
  loop.run();
  EXPECT_FALSE(guard.fired) << "the timers after the NaN one never ran";
  // NaN and -inf delays are both "now": scheduling order among them.
  EXPECT_EQ(order, (std::vector<std::string>{"nan", "-inf", "later"}));
  EXPECT_TRUE(never.active());
  EXPECT_FALSE(nan_timer.active());
  never.stop();
  loop.close();
}

TEST(TimerEdgeValues, NaNOrInfiniteRepeatFiresOnce) {
  Loop loop;
  int nan_runs = 0, inf_runs = 0;
  Timer nan_repeat(loop, [&] { ++nan_runs; });
  Timer inf_repeat(loop, [&] { ++inf_runs; });
  Timer end(loop, [&] { loop.stop(); });
  nan_repeat.start(0, kNaN);
  inf_repeat.start(0, kInf);
  end.start(0.002);
  StopGuard guard(loop, 10);
  loop.run();
  EXPECT_FALSE(guard.fired);
  EXPECT_EQ(nan_runs, 1);
  EXPECT_EQ(inf_runs, 1);
  EXPECT_FALSE(nan_repeat.active());
  // A repeat of +inf means the next firing is never due: off, not pending.
  EXPECT_FALSE(inf_repeat.active());
  loop.close();
}

}  // namespace
