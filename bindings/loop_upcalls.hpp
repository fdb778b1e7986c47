// The methods the native loop calls upward into its Python class: declared
// here, looked up once on the loop's class when the loop is created, and
// called by vectorcall, instead of attribute lookups by name spread
// over the bindings. A subclass may override any of them; one that lacks
// one cannot be created (TypeError naming it). _core.pyi documents them
// as the LoopUpcalls protocol.
#pragma once

#include "common.hpp"

namespace shardloop::py {

struct LoopObject;

enum class Upcall {
  create_task_slow,   // (coro, name, context) -> Task: a task factory or debug mode
  callback_error,     // (handle, exc) -> None: a callback raised
  log_slow_callback,  // (handle, seconds) -> None: debug mode's slow-callback warning
  handle_repr,        // (handle) -> str
  extract_stack,      // () -> StackSummary: debug mode's source traceback
  ensure_fd_no_transport,  // (fd, fileno) -> None: RuntimeError if a live transport owns fileno
  count,
};
constexpr int kUpcallCount = static_cast<int>(Upcall::count);

// Fills loop->upcalls from `type`; -1 with TypeError when one is missing.
int upcalls_resolve(LoopObject* loop, PyTypeObject* type);
// LOOP_UPCALLS: the tuple of their names, for _core's module (new reference).
PyObject* upcall_names();
// loop.<which>(*args): a new reference, or nullptr with an exception set.
PyObject* upcall(LoopObject* loop, Upcall which, PyObject* const* args = nullptr, size_t nargs = 0);

}  // namespace shardloop::py
