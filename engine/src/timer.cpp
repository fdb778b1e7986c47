#include "shardloop/timer.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace shardloop {

Timer::Timer(Loop& loop, std::function<void()> fn) : loop_(&loop), fn_(std::move(fn)) {
  node_.work = Work{&Timer::fire, this};
}

Timer::~Timer() { stop(); }

void Timer::start(double delay, double repeat) {
  if (!loop_) throw std::logic_error("Event loop is closed");
  // As asyncio's call_later: a NaN delay is due at once (std::max would
  // pass the NaN on), +inf never. A repeat that is not a finite positive
  // number means no next firing: the timer fires once.
  repeat_ = std::isfinite(repeat) && repeat > 0 ? repeat : 0;
  loop_->schedule(&node_, loop_->time() + (delay > 0 ? delay : 0.0));
}

void Timer::stop() noexcept {
  if (loop_) loop_->cancel(&node_);
}

void Timer::fire(void* ctx, bool run) noexcept {
  auto* self = static_cast<Timer*>(ctx);
  if (!run) {
    self->loop_ = nullptr;  // the loop is closing: nothing to cancel later
    return;
  }
  Loop* loop = self->loop_;
  try {
    // Rescheduled first: the callback may stop or destroy the timer. A late
    // firing does not try to catch up with the ticks it missed.
    if (self->repeat_ > 0) loop->schedule(&self->node_, std::max(self->node_.when + self->repeat_, loop->time()));
    self->fn_();
  } catch (...) {
    loop->report_error(std::current_exception());
  }
}

}  // namespace shardloop
