// A timer for native code on one loop: runs a C++ callable after a delay,
// once or repeatedly, on the loop's own timer heap (never early).
#pragma once

#include <functional>

#include "shardloop/loop.hpp"
#include "shardloop/timer_heap.hpp"

namespace shardloop {

class Timer {
 public:
  // On `loop`'s thread. Exceptions `fn` throws go to the loop's error
  // handler. If the loop closes first the timer simply goes quiet.
  Timer(Loop& loop, std::function<void()> fn);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // Seconds; `repeat` > 0 fires again every `repeat` seconds after the
  // first. Restarting a running timer reschedules it.
  void start(double delay, double repeat = 0);
  void stop() noexcept;
  bool active() const noexcept { return loop_ && node_.scheduled(); }

 private:
  static void fire(void* ctx, bool run) noexcept;

  Loop* loop_;
  TimerNode node_;
  std::function<void()> fn_;
  double repeat_ = 0;
};

}  // namespace shardloop
