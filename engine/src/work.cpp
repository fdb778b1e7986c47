#include "shardloop/work.hpp"

#include <exception>

#include "shardloop/loop.hpp"

namespace shardloop {

namespace {

// An exception thrown by the closure goes to the error handler of the loop
// running it, so nothing unwinds into libuv.
struct Closure {
  std::function<void()> fn;
};

void run_closure(void* ctx, bool run) noexcept {
  auto* closure = static_cast<Closure*>(ctx);
  if (run) {
    try {
      closure->fn();
    } catch (...) {
      Loop::report_on_current(std::current_exception());
    }
  }
  delete closure;
}

}  // namespace

Work make_work(std::function<void()> fn) {
  return Work{&run_closure, new Closure{std::move(fn)}};
}

}  // namespace shardloop
