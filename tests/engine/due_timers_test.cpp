// Due timers run straight from the heap after the ready queue; these pin
// down that this keeps asyncio's iteration order.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "shardloop/shardloop.hpp"

namespace {

using shardloop::Loop;
using shardloop::TimerNode;

TEST(DueTimers, ReadyCallbacksRunBeforeDueTimersInOneIteration) {
  Loop loop;
  std::vector<std::string> seen;
  TimerNode t;
  t.work = shardloop::make_work([&] { seen.push_back("timer"); });
  loop.schedule(&t, loop.time() - 1);
  loop.call_soon([&] { seen.push_back("ready"); });
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"ready", "timer"}));
}

TEST(DueTimers, TimerScheduledInThePastByATimerWaitsForTheNextIteration) {
  Loop loop;
  std::vector<std::string> seen;
  TimerNode a, b, c;
  const double past = loop.time() - 10;
  c.work = shardloop::make_work([&] { seen.push_back("c"); });
  a.work = shardloop::make_work([&] {
    seen.push_back("a");
    loop.schedule(&c, past - 5);  // earlier than b, but scheduled during the batch
  });
  b.work = shardloop::make_work([&] { seen.push_back("b"); });
  loop.schedule(&a, past);
  loop.schedule(&b, past + 1);
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b"}));
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(DueTimers, CallSoonFromATimerRunsInTheNextIteration) {
  Loop loop;
  std::vector<std::string> seen;
  TimerNode t;
  t.work = shardloop::make_work([&] {
    seen.push_back("timer");
    loop.call_soon([&] { seen.push_back("soon"); });
  });
  loop.schedule(&t, loop.time() - 1);
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"timer"}));
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"timer", "soon"}));
}

TEST(DueTimers, ATimerCancelledByAnEarlierOneInTheSameBatchDoesNotRun) {
  Loop loop;
  std::vector<std::string> seen;
  TimerNode a, b;
  a.work = shardloop::make_work([&] {
    seen.push_back("a");
    loop.cancel(&b);
  });
  bool b_ran = false;
  b.work = shardloop::make_work([&] { b_ran = true; });
  loop.schedule(&a, loop.time() - 2);
  loop.schedule(&b, loop.time() - 1);
  loop.run_once();
  EXPECT_EQ(seen, (std::vector<std::string>{"a"}));
  EXPECT_FALSE(b_ran);
  b.work.discard();
}

}  // namespace
