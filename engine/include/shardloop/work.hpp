// A unit of work for a loop's ready queue: two words, no allocation of its own.
#pragma once

#include <functional>
#include <utility>

namespace shardloop {

// `fn(ctx, true)` runs the work, `fn(ctx, false)` discards it (the loop is
// closing). Either way `fn` is called exactly once and owns `ctx` from then on,
// so the same pointer can carry a Python object reference or a heap closure.
struct Work {
  using Fn = void (*)(void* ctx, bool run) noexcept;
  Fn fn = nullptr;
  void* ctx = nullptr;

  void run() const noexcept { fn(ctx, true); }
  void discard() const noexcept { fn(ctx, false); }
};

// Wraps a C++ callable. Exceptions it throws are reported through
// `Loop::report_error` by the loop that runs it, never through libuv.
Work make_work(std::function<void()> fn);

}  // namespace shardloop
