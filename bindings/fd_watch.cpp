#include "fd_watch.hpp"

#include <new>
#include <system_error>
#include <unordered_map>

#include "handle.hpp"
#include "loop_object.hpp"
#include "shardloop/acceptor.hpp"
#include "shardloop/fd_watcher.hpp"
#include "sock_ops.hpp"

namespace shardloop::py {

namespace {

struct Slot {
  LoopObject* loop;  // borrowed: the loop owns its slots
  FdWatcher* watcher;
  HandleObject* handles[2] = {nullptr, nullptr};  // reader, writer
  // The file object add_reader/add_writer got (strong, as a selector key
  // holds it): once its owner closes it, its fileno() is -1 and only this
  // finds the watch again (asyncio's selector searches its keys the same way).
  PyObject* fileobj = nullptr;
};

void free_slot(Slot* slot) {
  slot->watcher->release();
  for (HandleObject*& handle : slot->handles) Py_CLEAR(handle);
  Py_CLEAR(slot->fileobj);
  delete slot;
}

constexpr int kEvents[2] = {FdWatcher::kReadable, FdWatcher::kWritable};

}  // namespace

namespace {

// A listener accepting on the ring (_ring_accept_start): each new fd, or
// a negative errno, goes to `callback`.
struct RingAccept {
  LoopObject* loop;  // borrowed: the loop owns its accepts
  Acceptor* acceptor;
  PyObject* callback;
};

void free_accept(RingAccept* a) {
  a->acceptor->release();  // cancels the kernel's accept now
  Py_CLEAR(a->callback);
  delete a;
}

// From the ring's completion pass (the GIL held, as for stream reads).
void call_accept(RingAccept* a, long value) {
  PyObject* callback = Py_NewRef(a->callback);
  PyObject* arg = PyLong_FromLong(value);
  PyObject* r = arg ? PyObject_CallOneArg(callback, arg) : nullptr;
  Py_XDECREF(arg);
  if (r) {
    Py_DECREF(r);
  } else if (exception_must_propagate()) {
    loop_abort_with_exception(a->loop);
  } else {
    PyErr_WriteUnraisable(callback);  // the Python layer's callback handles its own errors
  }
  Py_DECREF(callback);
}

void on_ring_accept(void* ctx, int fd) noexcept { call_accept(static_cast<RingAccept*>(ctx), fd); }
void on_ring_accept_error(void* ctx, int err) noexcept { call_accept(static_cast<RingAccept*>(ctx), -err); }

}  // namespace

struct FdWatches {
  std::unordered_map<int, Slot*> slots;
  std::unordered_map<int, RingAccept*> accepts;
};

namespace {

int wanted_events(const Slot* slot) {
  return (slot->handles[0] ? kEvents[0] : 0) | (slot->handles[1] ? kEvents[1] : 0);
}

// Drops one side of a watch; returns whether it was set. Frees the slot
// when neither side is left.
bool drop(LoopObject* loop, int fd, int side) {
  auto it = loop->fd_watches->slots.find(fd);
  if (it == loop->fd_watches->slots.end() || it->second->handles[side] == nullptr) return false;
  Slot* slot = it->second;
  HandleObject* handle = slot->handles[side];
  slot->handles[side] = nullptr;
  if (wanted_events(slot) == 0) {
    loop->fd_watches->slots.erase(it);
    free_slot(slot);
  } else {
    try {
      slot->watcher->watch(wanted_events(slot));
    } catch (const std::system_error&) {
      // Narrowing the mask of a valid watch does not fail; a closed fd
      // has been dropped from epoll by the kernel already.
    }
  }
  PyObject* r = PyObject_CallMethod(reinterpret_cast<PyObject*>(handle), "cancel", nullptr);
  Py_XDECREF(r);
  Py_DECREF(handle);
  return r != nullptr;
}

void on_ready(void* ctx, int events) noexcept {
  auto* slot = static_cast<Slot*>(ctx);
  LoopObject* loop = slot->loop;
  const int fd = slot->watcher->fd();
  for (int side = 0; side < 2; ++side) {
    // Re-read each time: the first callback queued cannot have run yet, but
    // a cancelled handle drops its side (and maybe the slot) right here.
    auto it = loop->fd_watches->slots.find(fd);
    if (it == loop->fd_watches->slots.end()) return;
    HandleObject* handle = it->second->handles[side];
    if (handle == nullptr || !(events & kEvents[side])) continue;
    if (handle->cancelled) {
      if (!drop(loop, fd, side)) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
      continue;
    }
    Py_INCREF(handle);
    try {
      loop->engine->call_io(handle_work(handle));
    } catch (...) {
      Py_DECREF(handle);
    }
  }
}

bool parse_fd(PyObject* obj, int* fd) {
  long value = PyLong_AsLong(obj);
  if (value == -1 && PyErr_Occurred()) return false;
  if (value < 0 || value > INT32_MAX) {
    PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", value);
    return false;
  }
  *fd = static_cast<int>(value);
  return true;
}

PyObject* add(LoopObject* self, PyObject* const* args, Py_ssize_t nargs, int side, const char* method,
             bool duplicate = true) {
  if (nargs < 2) {
    PyErr_Format(PyExc_TypeError, "%s() takes at least 2 arguments (%zd given)", method, nargs);
    return nullptr;
  }
  int fd;
  if (!parse_fd(args[0], &fd)) return nullptr;
  if (self->engine->is_closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (!PyCallable_Check(args[1])) {
    PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R", method, args[1]);
    return nullptr;
  }
  HandleObject* handle = handle_new(self, false, args[1], args + 2, nargs - 2, nullptr);
  if (handle == nullptr) return nullptr;
  // A sock_* call waiting on this side is replaced, as asyncio replaces
  // its handle (its future stays pending).
  sock_ops_displace(self, fd, side);
  auto& slots = self->fd_watches->slots;
  auto it = slots.find(fd);
  Slot* slot;
  bool fresh = it == slots.end();
  if (fresh) {
    slot = new Slot{self, nullptr};
    try {
      slot->watcher = FdWatcher::open(*self->engine, fd, &on_ready, slot, duplicate);
    } catch (const std::system_error& e) {
      delete slot;
      Py_DECREF(handle);
      errno = e.code().value();
      return PyErr_SetFromErrno(PyExc_OSError);
    } catch (...) {
      delete slot;
      Py_DECREF(handle);
      set_error_from_cpp();
      return nullptr;
    }
  } else {
    slot = it->second;
  }
  HandleObject* previous = slot->handles[side];
  slot->handles[side] = handle;
  try {
    slot->watcher->watch(wanted_events(slot));
  } catch (const std::system_error& e) {
    slot->handles[side] = previous;
    Py_DECREF(handle);
    if (fresh) {
      slot->watcher->release();
      delete slot;
    }
    errno = e.code().value();
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  if (fresh) slots.emplace(fd, slot);
  if (previous) {
    // Replaced, as asyncio's selector loop does: the old handle is cancelled.
    PyObject* r = PyObject_CallMethod(reinterpret_cast<PyObject*>(previous), "cancel", nullptr);
    Py_DECREF(previous);
    if (r == nullptr) return nullptr;
    Py_DECREF(r);
  }
  return Py_NewRef(reinterpret_cast<PyObject*>(handle));
}

PyObject* remove(LoopObject* self, PyObject* fd_obj, int side) {
  int fd;
  if (!parse_fd(fd_obj, &fd)) return nullptr;
  if (self->engine->is_closed()) Py_RETURN_FALSE;
  // A waiting sock_* call is this side's handle in asyncio: removing it
  // leaves its future pending, and says True.
  bool removed = sock_ops_displace(self, fd, side) || drop(self, fd, side);
  if (PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(removed);
}

}  // namespace

int fd_watch_take_side(LoopObject* loop, int fd, int side) {
  auto it = loop->fd_watches->slots.find(fd);
  if (it == loop->fd_watches->slots.end() || it->second->handles[side] == nullptr) return 0;
  return drop(loop, fd, side) ? 1 : -1;
}

FdWatches* fd_watches_new() { return new FdWatches(); }

void fd_watches_free(FdWatches* watches) { delete watches; }

void fd_watches_clear(LoopObject* loop) {
  if (loop->fd_watches == nullptr) return;
  auto slots = std::move(loop->fd_watches->slots);
  loop->fd_watches->slots.clear();
  for (auto& [fd, slot] : slots) free_slot(slot);
  auto accepts = std::move(loop->fd_watches->accepts);
  loop->fd_watches->accepts.clear();
  for (auto& [fd, a] : accepts) free_accept(a);
}

int fd_watches_traverse(FdWatches* watches, visitproc visit, void* arg) {
  if (watches == nullptr) return 0;
  for (auto& [fd, slot] : watches->slots) {
    for (HandleObject* handle : slot->handles) Py_VISIT(reinterpret_cast<PyObject*>(handle));
    Py_VISIT(slot->fileobj);
  }
  for (auto& [fd, a] : watches->accepts) Py_VISIT(a->callback);
  return 0;
}

PyObject* loop_ring_accept_start(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_ring_accept_start(fd, callback)");
    return nullptr;
  }
  int fd;
  if (!parse_fd(args[0], &fd)) return nullptr;
  if (self->engine->is_closed() || self->fd_watches->accepts.count(fd) != 0) Py_RETURN_FALSE;
  auto* a = new (std::nothrow) RingAccept{self, nullptr, nullptr};
  if (a == nullptr) return PyErr_NoMemory();
  try {
    a->acceptor = Acceptor::open(*self->engine, fd, Acceptor::Callbacks{a, &on_ring_accept, &on_ring_accept_error});
    if (a->acceptor == nullptr) {
      delete a;
      Py_RETURN_FALSE;  // no ring here, or no multishot accept: readiness it is
    }
    a->callback = Py_NewRef(args[1]);
    self->fd_watches->accepts.emplace(fd, a);
  } catch (...) {
    if (a->acceptor != nullptr) free_accept(a);
    else delete a;
    set_error_from_cpp();
    return nullptr;
  }
  Py_RETURN_TRUE;
}

namespace {

// The ring accept on fd_obj's descriptor: 1 found (in *out), 0 none, -1
// with an error raised (not a descriptor).
int find_accept(LoopObject* self, PyObject* fd_obj, std::unordered_map<int, RingAccept*>::iterator* out) {
  int fd;
  if (!parse_fd(fd_obj, &fd)) return -1;
  *out = self->fd_watches->accepts.find(fd);
  return *out != self->fd_watches->accepts.end() ? 1 : 0;
}

}  // namespace

PyObject* loop_ring_accept_resume(LoopObject* self, PyObject* fd_obj) {
  std::unordered_map<int, RingAccept*>::iterator it;
  const int found = find_accept(self, fd_obj, &it);
  if (found <= 0) return found < 0 ? nullptr : Py_NewRef(Py_False);
  it->second->acceptor->resume();  // its callbacks may run (and stop it)
  if (PyErr_Occurred()) return nullptr;
  Py_RETURN_TRUE;
}

PyObject* loop_ring_accept_stop(LoopObject* self, PyObject* fd_obj) {
  std::unordered_map<int, RingAccept*>::iterator it;
  const int found = find_accept(self, fd_obj, &it);
  if (found <= 0) return found < 0 ? nullptr : Py_NewRef(Py_False);
  RingAccept* a = it->second;
  self->fd_watches->accepts.erase(it);
  free_accept(a);
  Py_RETURN_TRUE;
}

PyObject* loop_add_reader(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return add(self, args, nargs, 0, "add_reader");
}

PyObject* loop_add_listener(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return add(self, args, nargs, 0, "add_reader", false);
}

PyObject* loop_add_writer(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return add(self, args, nargs, 1, "add_writer");
}

PyObject* loop_note_fileobj(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_note_fileobj(fd, fileobj)");
    return nullptr;
  }
  int fd;
  if (!parse_fd(args[0], &fd)) return nullptr;
  auto it = self->fd_watches->slots.find(fd);
  if (it != self->fd_watches->slots.end()) Py_XSETREF(it->second->fileobj, Py_NewRef(args[1]));
  Py_RETURN_NONE;
}

PyObject* loop_watched_fd(LoopObject* self, PyObject* fileobj) {
  // A linear search, as asyncio's: only for a file object closed while watched.
  for (auto& [fd, slot] : self->fd_watches->slots) {
    if (slot->fileobj == fileobj) return PyLong_FromLong(fd);
  }
  Py_RETURN_NONE;
}

PyObject* loop_remove_reader(LoopObject* self, PyObject* fd) { return remove(self, fd, 0); }

PyObject* loop_remove_writer(LoopObject* self, PyObject* fd) { return remove(self, fd, 1); }

}  // namespace shardloop::py
