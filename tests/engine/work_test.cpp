// make_work: the closure is called at most once and freed exactly once,
// whether the Work is run or discarded (a closing loop discards), and what
// it throws goes to the error handler of the loop running it, never out of
// the Work (libuv frames may be below it).
#include <gtest/gtest.h>

#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::Work;
using shardloop::make_work;
using shardloop_test::Watchdog;

// The message of a reported exception, "?" for anything else.
std::string what_of(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "?";
  }
}

// A capture whose use_count says whether the closure holding it still
// exists: make_work owns its closure, so only the Work's fn can free it.
TEST(Work, RunCallsTheClosureOnceAndFreesIt) {
  auto token = std::make_shared<int>(0);
  Work work = make_work([token] { ++*token; });
  EXPECT_EQ(token.use_count(), 2);  // held by the closure until fn finishes it
  work.run();
  EXPECT_EQ(*token, 1);
  EXPECT_EQ(token.use_count(), 1);
}

TEST(Work, DiscardFreesTheClosureWithoutCallingIt) {
  auto token = std::make_shared<int>(0);
  Work work = make_work([token] { ++*token; });
  work.discard();
  EXPECT_EQ(*token, 0);
  EXPECT_EQ(token.use_count(), 1);
}

TEST(Work, ClosingLoopDiscardsQueuedClosuresExactlyOnce) {
  auto token = std::make_shared<int>(0);
  {
    Loop loop;
    for (int i = 0; i < 3; ++i) loop.call_soon(make_work([token] { ++*token; }));
    EXPECT_EQ(token.use_count(), 4);
    loop.close();
    // Freed by close() itself, not later by the destructor.
    EXPECT_EQ(token.use_count(), 1);
  }
  EXPECT_EQ(*token, 0);
}

// Two loops on one thread, each with its own handler: the exception is
// reported by the loop that runs the Work, whichever loop existed when it
// was made, and the closure is freed although it threw.
TEST(Work, ExceptionGoesToTheHandlerOfTheLoopRunningIt) {
  Watchdog dog("Work.ExceptionGoesToTheHandlerOfTheLoopRunningIt");
  std::vector<std::string> first_errors, second_errors;
  Loop first, second;
  first.set_error_handler([&](std::exception_ptr e) { first_errors.push_back(what_of(e)); });
  second.set_error_handler([&](std::exception_ptr e) { second_errors.push_back(what_of(e)); });
  auto token = std::make_shared<int>(0);
  Work work = make_work([token] { throw std::runtime_error("from work"); });
  bool after = false;
  second.call_soon(work);
  // Queued behind the throwing Work: the loop carries on after reporting.
  second.call_soon([&] {
    after = true;
    second.stop();
  });
  EXPECT_EQ(second.run(), Loop::Exit::stopped);
  EXPECT_TRUE(after);
  EXPECT_TRUE(first_errors.empty());
  EXPECT_EQ(second_errors, std::vector<std::string>{"from work"});
  EXPECT_EQ(token.use_count(), 1);
  first.close();
  second.close();
}

// Outside any run there is no loop to ask: the exception is printed instead
// of escaping run() (which is noexcept) and terminating the process.
TEST(Work, ExceptionOutsideAnyLoopIsPrinted) {
  Work work = make_work([] { throw std::runtime_error("nobody's"); });
  testing::internal::CaptureStderr();
  work.run();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("nobody's"), std::string::npos) << err;
}

}  // namespace
