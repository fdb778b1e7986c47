// A helper of the engine_tests binary, not a test source (so CMakeLists.txt
// names it outside the *_test.cpp glob): a listener, registered at
// static-initialisation time, that aborts the binary (naming the test) if any
// single test runs for more than kLimitSeconds. A loop that is never woken would otherwise hang until
// ctest's own 60 s timeout, without saying where.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace {

constexpr double kLimitSeconds = 20.0;  // generous: sanitizer builds are slower

class PerTestWatchdog : public testing::EmptyTestEventListener {
 public:
  void OnTestStart(const testing::TestInfo& info) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) thread_ = std::thread([this] { watch(); });
    name_ = std::string(info.test_suite_name()) + "." + info.name();
    deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(kLimitSeconds));
    armed_ = true;
    cv_.notify_all();
  }
  void OnTestEnd(const testing::TestInfo&) override {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
    cv_.notify_all();
  }
  void OnTestProgramEnd(const testing::UnitTest&) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  using Clock = std::chrono::steady_clock;

  void watch() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!quit_) {
      if (!armed_) {
        cv_.wait(lock);
        continue;
      }
      if (cv_.wait_until(lock, deadline_) == std::cv_status::timeout && armed_ && !quit_ &&
          Clock::now() >= deadline_) {
        std::fprintf(stderr, "PER-TEST WATCHDOG: %s still running after %.0f s; aborting\n",
                     name_.c_str(), kLimitSeconds);
        std::fflush(stderr);
        std::abort();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  std::string name_;
  Clock::time_point deadline_{};
  bool armed_ = false;
  bool quit_ = false;
};

// gtest owns listeners appended here and deletes them at exit.
const bool kRegistered = [] {
  testing::UnitTest::GetInstance()->listeners().Append(new PerTestWatchdog);
  return true;
}();

}  // namespace
