// shardloop._core.Stream: the native half of a stream transport (TCP;
// Unix sockets and pipes with pipe=True). The
// asyncio semantics (protocol calls, flow control, close ordering) live in
// python_pkg/shardloop/_transport.py; this type moves the bytes.
#include <cstring>
#include <system_error>

#include "common.hpp"
#include "loop_object.hpp"
#include "shardloop/stream.hpp"
#include "stream_reader_feed.hpp"

namespace shardloop::py {

namespace {

struct StreamObject {
  PyObject_HEAD
  LoopObject* loop;
  Stream* stream;
  PyObject* on_read;      // on_read(bytes) / on_read(b"") at EOF / on_read(OSError)
  PyObject* on_write;     // on_write(error or None, queued bytes)
  PyObject* on_shutdown;  // on_shutdown(error or None)
  // Completed writes are reported only while the transport asks (protocol
  // paused, or closing with data queued); errors always are.
  bool notify_writes;
  // An open stream keeps itself alive, as a registered selector key keeps
  // asyncio's transports: a protocol need not hold on to its transport.
  bool self_ref;
  // Fast paths, set by the transport while its protocol and state allow:
  // reads go straight to protocol.data_received (one Python frame less per
  // read), and transport.write is this object's write_fast.
  PyObject* data_received;      // bound method, or nullptr: reads go to on_read
  PyObject* stream_protocol;    // an asyncio.StreamReaderProtocol: reads go to its reader (stream_reader_feed)
  PyObject* on_protocol_error;  // on_protocol_error(exc) when data_received raised
  PyObject* slow_write;         // the transport's full write(), for what the fast path does not take
  PyObject* over_high_water;    // called when a write leaves more than high_water queued
  std::size_t high_water;
  bool fast_write;
  bool closing;  // transport.is_closing(), kept by the transport
  std::uint64_t read_iteration;  // the loop iteration that last delivered bytes
  // The transport's context: every callback above runs in it, wherever the
  // loop is when it comes (uvloop's rule; see README, Deliberate differences).
  PyObject* context;  // nullptr: the current context
};

PyTypeObject* StreamType = nullptr;

// Protocol errors are the Python transport's business; what still escapes
// here cannot go back through libuv. Steals the references in `args`.
// With `to_caller` (a call from Python, not from libuv), KeyboardInterrupt
// and SystemExit stay raised for the caller instead (returns false).
bool call_back(StreamObject* self, PyObject* callback, PyObject* const* args, Py_ssize_t nargs,
               bool to_caller = false) {
  PyObject* r = nullptr;
  bool built = true;
  for (Py_ssize_t i = 0; i < nargs; ++i) built = built && args[i] != nullptr;
  if (built) r = PyObject_Vectorcall(callback, args, nargs, nullptr);
  for (Py_ssize_t i = 0; i < nargs; ++i) Py_XDECREF(args[i]);
  if (r) {
    Py_DECREF(r);
  } else if (exception_must_propagate()) {
    if (to_caller) return false;
    loop_abort_with_exception(self->loop);
  } else {
    PyErr_WriteUnraisable(callback);
  }
  return true;
}

// data_received raised: SystemExit/KeyboardInterrupt stop the loop as
// anywhere else; other errors are the transport's (_fatal_error).
void protocol_failed(StreamObject* self) {
  if (exception_must_propagate()) {
    loop_abort_with_exception(self->loop);
    return;
  }
  PyObject *type, *exc, *tb;
  PyErr_Fetch(&type, &exc, &tb);
  PyErr_NormalizeException(&type, &exc, &tb);
  if (tb != nullptr) PyException_SetTraceback(exc, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  PyObject* handler = Py_XNewRef(self->on_protocol_error);
  if (handler == nullptr) {
    Py_XDECREF(exc);
    return;
  }
  PyObject* args[] = {exc};
  call_back(self, handler, args, 1);
  Py_DECREF(handler);
}

// `bytes` (stolen; nullptr: the error raised making it) to the protocol's
// data_received, or to on_read. Runs in the transport's context.
void deliver(StreamObject* self, PyObject* bytes) {
  if (self->data_received != nullptr) {
    PyObject* method = Py_NewRef(self->data_received);
    PyObject* r = bytes ? PyObject_Vectorcall(method, &bytes, 1, nullptr) : nullptr;
    Py_XDECREF(bytes);
    if (r) {
      Py_DECREF(r);
    } else {
      protocol_failed(self);
    }
    Py_DECREF(method);
    return;
  }
  PyObject* args[] = {bytes};
  call_back(self, self->on_read, args, 1);
}

// What was read, in `count` pieces of `total` bytes (one on epoll, the
// provided buffers on io_uring): into a stream reader's buffer directly,
// or joined into one bytes for the protocol.
void received(StreamObject* self, const iovec* parts, int count, std::size_t total) {
  self->read_iteration = self->loop->engine->iteration();
  Py_INCREF(self);  // the callback may drop the transport's last reference
  ContextScope scope(self->context);
  int fed = 0;
  if (self->stream_protocol != nullptr) {
    PyObject* protocol = Py_NewRef(self->stream_protocol);
    fed = feed_stream_reader(protocol, parts, count, total);
    Py_DECREF(protocol);
  }
  if (fed < 0) {
    protocol_failed(self);
  } else if (fed == 0) {
    PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
    if (bytes != nullptr) {
      char* out = PyBytes_AS_STRING(bytes);
      for (int k = 0; k < count; ++k) {
        std::memcpy(out, parts[k].iov_base, parts[k].iov_len);
        out += parts[k].iov_len;
      }
    }
    deliver(self, bytes);
  }
  Py_DECREF(self);
}

void on_read(void* ctx, const char* data, ssize_t nread) noexcept {
  auto* self = static_cast<StreamObject*>(ctx);
  if (nread > 0) {
    iovec part{const_cast<char*>(data), static_cast<std::size_t>(nread)};
    return received(self, &part, 1, part.iov_len);
  }
  Py_INCREF(self);
  ContextScope scope(self->context);
  PyObject* arg;
  if (nread == UV_EOF) {
    arg = PyBytes_FromStringAndSize(nullptr, 0);
  } else {
    arg = uv_os_error(static_cast<int>(nread));
  }
  PyObject* args[] = {arg};
  call_back(self, self->on_read, args, 1);
  Py_DECREF(self);
}

// io_uring: data in several provided buffers.
void on_read_parts(void* ctx, const iovec* parts, int count, std::size_t nread) noexcept {
  received(static_cast<StreamObject*>(ctx), parts, count, nread);
}

PyObject* error_or_none(int status) { return status < 0 ? uv_os_error(status) : Py_NewRef(Py_None); }

void on_write(void* ctx, int status, std::size_t queued) noexcept {
  auto* self = static_cast<StreamObject*>(ctx);
  if (status >= 0 && !self->notify_writes) return;
  Py_INCREF(self);
  ContextScope scope(self->context);
  PyObject* args[] = {error_or_none(status), PyLong_FromSize_t(queued)};
  call_back(self, self->on_write, args, 2);
  Py_DECREF(self);
}

void on_shutdown(void* ctx, int status) noexcept {
  auto* self = static_cast<StreamObject*>(ctx);
  Py_INCREF(self);
  ContextScope scope(self->context);
  PyObject* args[] = {error_or_none(status)};
  call_back(self, self->on_shutdown, args, 1);
  Py_DECREF(self);
}

void on_close(void* ctx) noexcept {
  auto* self = static_cast<StreamObject*>(ctx);
  if (self->self_ref) {
    self->self_ref = false;
    Py_DECREF(self);
  }
}

PyObject* tcp_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"loop", "fd", "on_read", "on_write", "on_shutdown", "pipe", "context", nullptr};
  PyObject *loop, *on_read_cb, *on_write_cb, *on_shutdown_cb;
  PyObject* context = Py_None;
  int fd;
  int pipe = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iOOO|$pO", const_cast<char**>(kwlist), LoopType, &loop, &fd,
                                   &on_read_cb, &on_write_cb, &on_shutdown_cb, &pipe, &context)) {
    return nullptr;
  }
  if (!check_context_arg(context)) return nullptr;
  auto* lp = reinterpret_cast<LoopObject*>(loop);
  if (lp->engine->is_closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  auto* self = reinterpret_cast<StreamObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->loop = reinterpret_cast<LoopObject*>(Py_NewRef(loop));
  self->on_read = Py_NewRef(on_read_cb);
  self->on_write = Py_NewRef(on_write_cb);
  self->on_shutdown = Py_NewRef(on_shutdown_cb);
  self->context = context == Py_None ? nullptr : Py_NewRef(context);
  self->high_water = 64 * 1024;
  try {
    self->stream = Stream::open(*lp->engine, fd, Stream::Callbacks{self, &on_read, &on_write, &on_shutdown, &on_close, &on_read_parts},
                                   pipe ? Stream::Kind::kPipe : Stream::Kind::kSocket);
  } catch (const std::system_error& e) {
    Py_DECREF(self);
    errno = e.code().value();
    return PyErr_SetFromErrno(PyExc_OSError);
  } catch (...) {
    Py_DECREF(self);
    set_error_from_cpp();
    return nullptr;
  }
  self->self_ref = true;
  Py_INCREF(self);
  return reinterpret_cast<PyObject*>(self);
}

PyObject* check(StreamObject* self, int rc) {
  if (rc < 0) {
    PyObject* err = uv_os_error(rc);
    if (err) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err)), err);
      Py_DECREF(err);
    }
    return nullptr;
  }
  (void)self;
  Py_RETURN_NONE;
}

bool usable(StreamObject* self) {
  if (self->stream == nullptr || self->stream->closed()) {
    PyErr_SetString(PyExc_RuntimeError, "stream is closed");
    return false;
  }
  return true;
}

PyObject* tcp_read_start(StreamObject* self, PyObject*) {
  return usable(self) ? check(self, self->stream->read_start()) : nullptr;
}

PyObject* tcp_read_stop(StreamObject* self, PyObject*) {
  return usable(self) ? check(self, self->stream->read_stop()) : nullptr;
}

PyObject* tcp_write(StreamObject* self, PyObject* data) {
  if (!usable(self)) return nullptr;
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  int rc;
  try {
    rc = self->stream->write(static_cast<const char*>(view.buf), static_cast<std::size_t>(view.len));
  } catch (const std::bad_alloc&) {
    PyBuffer_Release(&view);
    return PyErr_NoMemory();
  }
  PyBuffer_Release(&view);
  if (rc < 0) return check(self, rc);
  return PyLong_FromSize_t(self->stream->queued());
}

// transport.write for the common case: bytes or bytearray while the
// transport is open and writable. Everything else (type errors, writes
// after close or write_eof, other buffers) goes to the transport's write.
PyObject* tcp_write_fast(StreamObject* self, PyObject* data) {
  const bool plain = PyBytes_CheckExact(data) || PyByteArray_CheckExact(data);
  if (!self->fast_write || !plain || self->stream == nullptr || self->stream->closed()) {
    if (self->slow_write == nullptr) return check(self, UV_EBADF);
    PyObject* slow = Py_NewRef(self->slow_write);
    PyObject* r = PyObject_Vectorcall(slow, &data, 1, nullptr);
    Py_DECREF(slow);
    return r;
  }
  const char* buf = PyBytes_CheckExact(data) ? PyBytes_AS_STRING(data) : PyByteArray_AS_STRING(data);
  const auto len = static_cast<std::size_t>(Py_SIZE(data));
  int rc;
  try {
    rc = self->stream->write(buf, len);
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  if (rc < 0) {
    // Reported as a failed queued write would be: the transport's error path.
    // This is transport.write() called from Python, so what must leave a run
    // goes to write()'s caller: the loop's abort flag would be stale when no
    // run is in progress.
    Py_INCREF(self);
    PyObject* args[] = {uv_os_error(rc), PyLong_FromSize_t(self->stream ? self->stream->queued() : 0)};
    const bool handled = call_back(self, self->on_write, args, 2, /*to_caller=*/true);
    Py_DECREF(self);
    if (!handled) return nullptr;
    Py_RETURN_NONE;
  }
  if (self->stream->queued() > self->high_water && self->over_high_water != nullptr) {
    PyObject* cb = Py_NewRef(self->over_high_water);
    PyObject* r;
    {
      ContextScope scope(self->context);  // pause_writing(), in the transport's context
      r = PyObject_CallNoArgs(cb);
    }
    Py_DECREF(cb);
    if (r == nullptr) return nullptr;
    Py_DECREF(r);
  }
  Py_RETURN_NONE;
}

// set_fast_paths(data_received, on_protocol_error, slow_write, over_high_water, protocol=None):
// with the protocol given and an asyncio.StreamReaderProtocol, reads feed
// its reader natively (falling back to data_received where they cannot).
PyObject* tcp_set_fast_paths(StreamObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 && nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "set_fast_paths() takes 4 or 5 arguments");
    return nullptr;
  }
  PyObject* stream_protocol = nargs == 5 && is_plain_stream_protocol(args[4]) ? args[4] : Py_None;
  Py_XSETREF(self->stream_protocol, new_ref_unless_none(stream_protocol));
  Py_XSETREF(self->data_received, new_ref_unless_none(args[0]));
  Py_XSETREF(self->on_protocol_error, new_ref_unless_none(args[1]));
  Py_XSETREF(self->slow_write, new_ref_unless_none(args[2]));
  Py_XSETREF(self->over_high_water, new_ref_unless_none(args[3]));
  Py_RETURN_NONE;
}

PyObject* tcp_shutdown(StreamObject* self, PyObject*) {
  return usable(self) ? check(self, self->stream->shutdown()) : nullptr;
}

PyObject* tcp_close(StreamObject* self, PyObject*) {
  if (self->stream) {
    self->stream->release();
    self->stream = nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* tcp_get_queued(StreamObject* self, void*) {
  return PyLong_FromSize_t(self->stream && !self->stream->closed() ? self->stream->queued() : 0);
}

PyObject* tcp_get_notify_writes(StreamObject* self, void*) { return PyBool_FromLong(self->notify_writes); }

int tcp_set_notify_writes(StreamObject* self, PyObject* value, void*) {
  int flag = value ? PyObject_IsTrue(value) : 0;
  if (flag < 0) return -1;
  self->notify_writes = flag;
  return 0;
}

PyObject* tcp_is_closing(StreamObject* self, PyObject*) { return PyBool_FromLong(self->closing); }

PyObject* tcp_get_closing(StreamObject* self, void*) { return PyBool_FromLong(self->closing); }

int tcp_set_closing(StreamObject* self, PyObject* value, void*) {
  int flag = value ? PyObject_IsTrue(value) : 0;
  if (flag < 0) return -1;
  self->closing = flag;
  return 0;
}

PyObject* tcp_get_fast_write(StreamObject* self, void*) { return PyBool_FromLong(self->fast_write); }

int tcp_set_fast_write(StreamObject* self, PyObject* value, void*) {
  int flag = value ? PyObject_IsTrue(value) : 0;
  if (flag < 0) return -1;
  self->fast_write = flag;
  return 0;
}

PyObject* tcp_get_high_water(StreamObject* self, void*) { return PyLong_FromSize_t(self->high_water); }

int tcp_set_high_water(StreamObject* self, PyObject* value, void*) {
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete high_water");
    return -1;
  }
  std::size_t v = PyLong_AsSize_t(value);
  if (v == static_cast<std::size_t>(-1) && PyErr_Occurred()) return -1;
  self->high_water = v;
  return 0;
}

// Whether bytes were delivered in the loop's current iteration (an EOF
// found by the same poll as the bytes before it waits an iteration).
PyObject* tcp_get_read_this_iteration(StreamObject* self, void*) {
  return PyBool_FromLong(self->read_iteration != 0 && self->read_iteration == self->loop->engine->iteration());
}

PyObject* tcp_get_closed(StreamObject* self, void*) {
  return PyBool_FromLong(self->stream == nullptr || self->stream->closed());
}

int tcp_traverse(StreamObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->loop);
  Py_VISIT(self->on_read);
  Py_VISIT(self->on_write);
  Py_VISIT(self->on_shutdown);
  Py_VISIT(self->data_received);
  Py_VISIT(self->stream_protocol);
  Py_VISIT(self->on_protocol_error);
  Py_VISIT(self->slow_write);
  Py_VISIT(self->over_high_water);
  Py_VISIT(self->context);
  return 0;
}

int tcp_clear(StreamObject* self) {
  Py_CLEAR(self->on_read);
  Py_CLEAR(self->on_write);
  Py_CLEAR(self->on_shutdown);
  Py_CLEAR(self->data_received);
  Py_CLEAR(self->stream_protocol);
  Py_CLEAR(self->on_protocol_error);
  Py_CLEAR(self->slow_write);
  Py_CLEAR(self->over_high_water);
  Py_CLEAR(self->context);
  return 0;
}

void tcp_dealloc(StreamObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->stream) self->stream->release();
  tcp_clear(self);
  Py_CLEAR(self->loop);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef tcp_methods[] = {
    {"read_start", reinterpret_cast<PyCFunction>(tcp_read_start), METH_NOARGS, nullptr},
    {"read_stop", reinterpret_cast<PyCFunction>(tcp_read_stop), METH_NOARGS, nullptr},
    {"write", reinterpret_cast<PyCFunction>(tcp_write), METH_O, "Write now or queue; returns bytes queued."},
    {"write_fast", reinterpret_cast<PyCFunction>(tcp_write_fast), METH_O, "transport.write's common case."},
    {"set_fast_paths", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(tcp_set_fast_paths)), METH_FASTCALL,
     nullptr},
    {"is_closing", reinterpret_cast<PyCFunction>(tcp_is_closing), METH_NOARGS,
     "transport.is_closing(), from the flag the transport keeps in `closing`."},
    {"shutdown", reinterpret_cast<PyCFunction>(tcp_shutdown), METH_NOARGS, nullptr},
    {"close", reinterpret_cast<PyCFunction>(tcp_close), METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyObject* tcp_get_uses_ring(StreamObject* self, void*) {
  return PyBool_FromLong(self->stream != nullptr && !self->stream->closed() && self->stream->uses_ring());
}

PyGetSetDef tcp_getset[] = {
    {"uses_ring", reinterpret_cast<getter>(tcp_get_uses_ring), nullptr, "on the loop's io_uring", nullptr},
    {"queued", reinterpret_cast<getter>(tcp_get_queued), nullptr, nullptr, nullptr},
    {"closed", reinterpret_cast<getter>(tcp_get_closed), nullptr, nullptr, nullptr},
    {"read_this_iteration", reinterpret_cast<getter>(tcp_get_read_this_iteration), nullptr, nullptr, nullptr},
    {"closing", reinterpret_cast<getter>(tcp_get_closing), reinterpret_cast<setter>(tcp_set_closing), nullptr,
     nullptr},
    {"fast_write", reinterpret_cast<getter>(tcp_get_fast_write), reinterpret_cast<setter>(tcp_set_fast_write), nullptr,
     nullptr},
    {"high_water", reinterpret_cast<getter>(tcp_get_high_water), reinterpret_cast<setter>(tcp_set_high_water), nullptr,
     nullptr},
    {"notify_writes", reinterpret_cast<getter>(tcp_get_notify_writes), reinterpret_cast<setter>(tcp_set_notify_writes),
     nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot tcp_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(tcp_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(tcp_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(tcp_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(tcp_clear)},
    {Py_tp_methods, tcp_methods},
    {Py_tp_getset, tcp_getset},
    {0, nullptr},
};

PyType_Spec tcp_spec = {
    "shardloop._core.Stream", sizeof(StreamObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, tcp_slots,
};

}  // namespace

int init_stream_type(PyObject* module) {
  return add_type(module, tcp_spec, StreamType);
}

}  // namespace shardloop::py
