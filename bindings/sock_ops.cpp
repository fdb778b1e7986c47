#include "sock_ops.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <system_error>
#include <vector>

#include "fd_watch.hpp"
#include "loop_object.hpp"
#include "loop_upcalls.hpp"
#include "shardloop/sock_op.hpp"

namespace shardloop::py {

namespace {

// socket.socket and ssl.SSLSocket, handed over by the Python package.
PyObject* socket_type = nullptr;
PyObject* ssl_socket_type = nullptr;

enum class Kind { kRecv, kRecvInto, kRecvFrom, kRecvFromInto, kSendTo, kSendAll, kAccept, kConnect };

struct PySockOp;

}  // namespace

struct SockOps {
  SockWaits* waits = nullptr;  // opened by the first call that waits
  // By fd: a weak reference to the socket object whose wait registered that
  // number in the engine's set. Another object under the same number may be
  // another file (the old socket was closed), so it registers again.
  std::vector<PyObject*> owners;
  PySockOp* head = nullptr;  // every waiting call, for clear and traverse
};

namespace {

struct PySockOp final : SockOp {
  LoopObject* loop;  // borrowed: the loop drops its calls before it goes
  Kind kind;
  PyObject* fut;
  PyObject* sock;
  PyObject* arg1;
  PyObject* arg2;
  Py_buffer view{};  // sock_sendall's data, held while it waits (as asyncio's memoryview is)
  Py_ssize_t sent = 0;
  PySockOp* prev = nullptr;
  PySockOp* next = nullptr;
  bool running = false;  // inside on_ready: freeing waits for its end
  bool dropped = false;

  PySockOp(LoopObject* l, Kind k, PyObject* f, PyObject* s, PyObject* a1, PyObject* a2)
      : loop(l), kind(k), fut(Py_NewRef(f)), sock(Py_NewRef(s)), arg1(Py_XNewRef(a1)), arg2(Py_XNewRef(a2)) {}
  ~PySockOp() {
    if (view.obj != nullptr) PyBuffer_Release(&view);
    Py_DECREF(fut);
    Py_DECREF(sock);
    Py_XDECREF(arg1);
    Py_XDECREF(arg2);
  }
  void on_ready() noexcept override;
};

// What attempt() returns when the call would block (no reference): the
// kernel's EAGAIN, or BlockingIOError/InterruptedError from a socket method.
PyObject* const kLater = reinterpret_cast<PyObject*>(&socket_type);

// No longer waiting, out of the loop's list, and freed (once its own
// on_ready, if running, has finished).
void drop_op(PySockOp* op) noexcept {
  SockOps* ops = op->loop->sock_ops;
  if (ops->waits != nullptr) ops->waits->cancel(op);
  if (!op->dropped) {
    op->dropped = true;
    if (op->prev) op->prev->next = op->next;
    if (op->next) op->next->prev = op->prev;
    if (ops->head == op) ops->head = op->next;
  }
  if (!op->running) delete op;
}

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

bool is_later_error() {
  return PyErr_ExceptionMatches(PyExc_BlockingIOError) || PyErr_ExceptionMatches(PyExc_InterruptedError);
}

// sock.<name>(*args): what asyncio calls, looked up on every try.
PyObject* call_method(PyObject* sock, const char* name, PyObject* a1 = nullptr, PyObject* a2 = nullptr) {
  PyObject* meth = PyObject_GetAttrString(sock, name);
  if (meth == nullptr) return nullptr;
  PyObject* args[2] = {a1, a2};
  PyObject* r = PyObject_Vectorcall(meth, args, a1 == nullptr ? 0 : a2 == nullptr ? 1 : 2, nullptr);
  Py_DECREF(meth);
  return r;
}

// The calls shardloop makes itself when `sock` is a plain socket.socket
// (a subclass may override recv/send: then its methods are called).
bool native_socket(PyObject* sock, int fd) {
  return fd >= 0 && reinterpret_cast<PyObject*>(Py_TYPE(sock)) == socket_type;
}

PyObject* recv_native(LoopObject* loop, int fd, Py_ssize_t n) {
  char* buf;
  PyObject* bytes = nullptr;
  if (static_cast<std::size_t>(n) <= Loop::kReadBufferSize) {
    try {
      buf = loop->engine->read_buffer();
    } catch (...) {
      return PyErr_NoMemory();
    }
  } else {
    bytes = PyBytes_FromStringAndSize(nullptr, n);
    if (bytes == nullptr) return nullptr;
    buf = PyBytes_AS_STRING(bytes);
  }
  for (;;) {
    ssize_t r = ::recv(fd, buf, static_cast<std::size_t>(n), 0);
    if (r >= 0) {
      if (bytes == nullptr) return PyBytes_FromStringAndSize(buf, r);
      if (r != n) _PyBytes_Resize(&bytes, r);
      return bytes;
    }
    if (errno == EINTR) {
      if (PyErr_CheckSignals() == 0) continue;  // as socket.recv retries
    } else if (would_block(errno)) {
      Py_XDECREF(bytes);
      return kLater;
    } else {
      PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_XDECREF(bytes);
    return nullptr;
  }
}

PyObject* recv_into_native(PyObject* sock, int fd, PyObject* target) {
  Py_buffer view;
  if (PyObject_GetBuffer(target, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
    PyErr_Clear();  // socket.recv_into raises its own error for this buffer
    return call_method(sock, "recv_into", target);
  }
  ssize_t r;
  for (;;) {
    r = ::recv(fd, view.buf, static_cast<std::size_t>(view.len), 0);
    if (r >= 0 || errno != EINTR || PyErr_CheckSignals() != 0) break;
  }
  const int err = errno;
  PyBuffer_Release(&view);
  if (r >= 0) return PyLong_FromSsize_t(r);
  if (PyErr_Occurred()) return nullptr;  // a signal handler raised
  if (would_block(err)) return kLater;
  errno = err;
  return PyErr_SetFromErrno(PyExc_OSError);
}

// Sends what it can of view[sent:]; the result is None once all is sent.
PyObject* send_some(PyObject* sock, int fd, Py_buffer& view, Py_ssize_t& sent) {
  while (sent < view.len) {
    const char* p = static_cast<const char*>(view.buf) + sent;
    const Py_ssize_t left = view.len - sent;
    if (native_socket(sock, fd)) {
      ssize_t n = ::send(fd, p, static_cast<std::size_t>(left), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) {
          if (PyErr_CheckSignals() != 0) return nullptr;
          continue;
        }
        if (would_block(errno)) return kLater;
        return PyErr_SetFromErrno(PyExc_OSError);
      }
      sent += n;  // a short send tries again, as far as the kernel takes it
    } else {
      PyObject* rest = PyMemoryView_FromMemory(const_cast<char*>(p), left, PyBUF_READ);
      if (rest == nullptr) return nullptr;
      PyObject* r = call_method(sock, "send", rest);
      Py_DECREF(rest);
      if (r == nullptr) {
        if (is_later_error()) {
          PyErr_Clear();
          return kLater;
        }
        return nullptr;
      }
      Py_ssize_t n = PyLong_AsSsize_t(r);
      Py_DECREF(r);
      if (n == -1 && PyErr_Occurred()) return nullptr;
      sent += n;
      return sent < view.len ? kLater : Py_NewRef(Py_None);
    }
  }
  return Py_NewRef(Py_None);
}

PyObject* accept_once(PyObject* sock) {
  PyObject* r = call_method(sock, "accept");
  if (r == nullptr) return nullptr;
  if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) < 1) return r;
  PyObject* ok = call_method(PyTuple_GET_ITEM(r, 0), "setblocking", Py_False);
  if (ok == nullptr) {
    Py_DECREF(r);
    return nullptr;
  }
  Py_DECREF(ok);
  return r;
}

// After a non-blocking connect said "in progress": SO_ERROR says how it ended.
PyObject* connect_result(PyObject* sock, PyObject* address) {
  PyObject* level = PyLong_FromLong(SOL_SOCKET);
  PyObject* opt = PyLong_FromLong(SO_ERROR);
  PyObject* r = level && opt ? call_method(sock, "getsockopt", level, opt) : nullptr;
  Py_XDECREF(level);
  Py_XDECREF(opt);
  if (r == nullptr) return nullptr;
  long err = PyLong_AsLong(r);
  Py_DECREF(r);
  if (err == -1 && PyErr_Occurred()) return nullptr;
  if (err == 0) Py_RETURN_NONE;
  PyObject* msg = PyUnicode_FromFormat("Connect call failed %S", address);
  if (msg == nullptr) return nullptr;
  PyObject* exc = PyObject_CallFunction(PyExc_OSError, "lO", err, msg);
  Py_DECREF(msg);
  if (exc != nullptr) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    Py_DECREF(exc);
  }
  return nullptr;
}

// One try of the call: its result (new reference), nullptr with an error
// raised, or kLater. `retry`: after a wait (sock_connect then asks SO_ERROR).
PyObject* attempt(LoopObject* loop, Kind kind, PyObject* sock, int fd, PyObject* a1, PyObject* a2,
                  Py_buffer* view, Py_ssize_t* sent, bool retry) {
  PyObject* r;
  switch (kind) {
    case Kind::kRecv:
      if (native_socket(sock, fd)) {
        Py_ssize_t n = PyLong_AsSsize_t(a1);
        if (n >= 0) return recv_native(loop, fd, n);
        PyErr_Clear();  // socket.recv raises the right error below
      }
      r = call_method(sock, "recv", a1);
      break;
    case Kind::kRecvInto:
      r = native_socket(sock, fd) ? recv_into_native(sock, fd, a1) : call_method(sock, "recv_into", a1);
      if (r == kLater) return r;
      break;
    case Kind::kRecvFrom:
      r = call_method(sock, "recvfrom", a1);
      break;
    case Kind::kRecvFromInto:
      r = call_method(sock, "recvfrom_into", a1, a2);
      break;
    case Kind::kSendTo:
      r = call_method(sock, "sendto", a1, a2);
      break;
    case Kind::kSendAll:
      return send_some(sock, fd, *view, *sent);
    case Kind::kAccept:
      r = accept_once(sock);
      break;
    case Kind::kConnect:
      r = retry ? connect_result(sock, a1) : call_method(sock, "connect", a1);
      break;
    default:
      r = nullptr;
  }
  if (r == nullptr && is_later_error()) {
    PyErr_Clear();
    return kLater;
  }
  return r;
}

PyObject* str_fileno = nullptr;
PyObject* str_gettimeout = nullptr;
PyObject* str_done = nullptr;
PyObject* str_set_result = nullptr;
PyObject* str_set_exception = nullptr;
PyObject* zero = nullptr;

bool intern_names() {
  if (str_fileno != nullptr) return true;
  str_fileno = PyUnicode_InternFromString("fileno");
  str_gettimeout = PyUnicode_InternFromString("gettimeout");
  str_done = PyUnicode_InternFromString("done");
  str_set_result = PyUnicode_InternFromString("set_result");
  str_set_exception = PyUnicode_InternFromString("set_exception");
  zero = PyLong_FromLong(0);
  return str_fileno && str_gettimeout && str_done && str_set_result && str_set_exception && zero;
}

// sock.fileno() as an int, -1 for a closed socket; -2 with an error raised.
int fileno_of(PyObject* sock) {
  PyObject* r = PyObject_CallMethodNoArgs(sock, str_fileno);
  if (r == nullptr) return -2;
  long fd = PyLong_AsLong(r);
  Py_DECREF(r);
  if (fd == -1 && PyErr_Occurred()) return -2;
  return fd < 0 || fd > INT32_MAX ? -1 : static_cast<int>(fd);
}

// asyncio's checks before any sock_* call: no SSL socket, a non-blocking
// one (asyncio checks that in debug mode only; shardloop always does, see
// test_blocking_socket_without_debug_mode). Then the fd (or -1 if closed).
bool check_socket(PyObject* sock, int* fd) {
  if (ssl_socket_type != nullptr && reinterpret_cast<PyObject*>(Py_TYPE(sock)) != socket_type) {
    int is_ssl = PyObject_IsInstance(sock, ssl_socket_type);
    if (is_ssl < 0) return false;
    if (is_ssl) {
      PyErr_SetString(PyExc_TypeError, "Socket cannot be of type SSLSocket");
      return false;
    }
  }
  PyObject* timeout = PyObject_CallMethodNoArgs(sock, str_gettimeout);
  if (timeout == nullptr) return false;
  int blocking = PyObject_RichCompareBool(timeout, zero, Py_NE);
  Py_DECREF(timeout);
  if (blocking < 0) return false;
  if (blocking) {
    PyErr_SetString(PyExc_ValueError, "the socket must be non-blocking");
    return false;
  }
  *fd = fileno_of(sock);
  return *fd != -2;
}

bool check_args(Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max, const char* name) {
  if (nargs >= min && nargs <= max) return true;
  PyErr_Format(PyExc_TypeError, "%s() takes from %zd to %zd positional arguments but %zd were given", name, min,
               max, nargs);
  return false;
}

// asyncio refuses to wait on an fd that a live transport owns.
bool check_no_transport(LoopObject* loop, int fd) {
  if (loop->fd_transports == nullptr || PyDict_GET_SIZE(loop->fd_transports) == 0) return true;
  PyObject* fd_obj = PyLong_FromLong(fd);
  if (fd_obj == nullptr) return false;
  PyObject* args[] = {fd_obj, fd_obj};
  PyObject* r = upcall(loop, Upcall::ensure_fd_no_transport, args, 2);
  Py_DECREF(fd_obj);
  Py_XDECREF(r);
  return r != nullptr;
}

// Whether the engine's registration of `fd` may belong to another file.
bool fresh_owner(SockOps* ops, int fd, PyObject* sock) {
  if (static_cast<std::size_t>(fd) >= ops->owners.size()) ops->owners.resize(static_cast<std::size_t>(fd) + 1);
  PyObject*& owner = ops->owners[static_cast<std::size_t>(fd)];
  if (owner != nullptr) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject* obj = nullptr;
    if (PyWeakref_GetRef(owner, &obj) < 0) PyErr_Clear();
    Py_XDECREF(obj);  // compared by identity only
#else
    PyObject* obj = PyWeakref_GetObject(owner);
#endif
    if (obj == sock) return false;
  }
  PyObject* ref = PyWeakref_NewRef(sock, nullptr);
  if (ref == nullptr) PyErr_Clear();  // not weakly referenceable: register every time
  Py_XSETREF(owner, ref);
  return true;
}

// The call must wait: a future that the engine completes.
PyObject* start_wait(LoopObject* loop, Kind kind, PyObject* sock, int fd, PyObject* a1, PyObject* a2,
                     Py_buffer* view = nullptr, Py_ssize_t sent = 0) {
  if (loop->closing || loop->engine->is_closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (fd < 0) {
    // Closed while the first try ran (only a Python override can do that).
    errno = EBADF;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  if (!check_no_transport(loop, fd)) return nullptr;
  SockOps* ops = loop->sock_ops;
  if (ops->waits == nullptr) {
    try {
      ops->waits = SockWaits::open(*loop->engine);
    } catch (const std::system_error& e) {
      errno = e.code().value();
      return PyErr_SetFromErrno(PyExc_OSError);
    } catch (...) {
      set_error_from_cpp();
      return nullptr;
    }
  }
  PyObject* fut = loop_new_future(loop);
  if (fut == nullptr) return nullptr;
  auto* op = new (std::nothrow) PySockOp(loop, kind, fut, sock, a1, a2);
  if (op == nullptr) {
    Py_DECREF(fut);
    return PyErr_NoMemory();
  }
  const int side = kind == Kind::kSendTo || kind == Kind::kSendAll || kind == Kind::kConnect ? SockOp::kWrite
                                                                                               : SockOp::kRead;
  SockOp* previous;
  try {
    previous = ops->waits->wait(op, fd, static_cast<SockOp::Side>(side), fresh_owner(ops, fd, sock));
  } catch (const std::system_error& e) {
    delete op;
    Py_DECREF(fut);
    errno = e.code().value();
    return PyErr_SetFromErrno(PyExc_OSError);
  } catch (...) {
    delete op;
    Py_DECREF(fut);
    set_error_from_cpp();
    return nullptr;
  }
  if (view != nullptr) {
    op->view = *view;  // the buffer is the call's from here on
    view->obj = nullptr;
    op->sent = sent;
  }
  op->next = ops->head;
  if (ops->head) ops->head->prev = op;
  ops->head = op;
  // A second call waiting on the same side replaces the first, as in
  // asyncio: that one's future stays pending. So does an add_reader or
  // add_writer callback registered there.
  if (previous != nullptr) drop_op(static_cast<PySockOp*>(previous));
  if (fd_watch_take_side(loop, fd, side) < 0) {
    // Cancelling the replaced handle failed: the call still waits.
    PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
  }
  return fut;
}

// Calls fut.<method>(arg), reporting what goes wrong to the loop.
void resolve(LoopObject* loop, PyObject* fut, PyObject* method, PyObject* arg) {
  PyObject* args[] = {fut, arg};
  PyObject* r = PyObject_VectorcallMethod(method, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  if (r == nullptr) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
  Py_XDECREF(r);
}

void PySockOp::on_ready() noexcept {
  running = true;
  PyObject* done = PyObject_CallMethodNoArgs(fut, str_done);
  const int is_done = done == nullptr ? -1 : PyObject_IsTrue(done);
  Py_XDECREF(done);
  if (is_done != 0) {
    // Cancelled while waiting (the awaiting coroutine did not forget it
    // yet): the data stays in the socket for the next call.
    if (is_done < 0) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
    running = false;
    drop_op(this);
    return;
  }
  // The socket may have been closed, and its number reused, while waiting:
  // only its own methods then say what happens (EBADF, as in asyncio).
  int now = fileno_of(sock);
  if (now == -2) PyErr_Clear();
  PyObject* r = attempt(loop, kind, sock, now == fd() ? now : -1, arg1, arg2, &view, &sent, true);
  if ((r == kLater) && !dropped) {
    running = false;
    return;  // spurious wake-up: keep waiting, as asyncio's handler does
  }
  if (r == nullptr && exception_must_propagate()) {
    // As from asyncio's handler: out of run_forever; the call still waits.
    loop_abort_with_exception(loop);
    running = false;
    if (dropped) delete this;
    return;
  }
  PyObject* keep_fut = Py_NewRef(fut);
  LoopObject* l = loop;
  running = false;
  drop_op(this);  // before the future's callbacks can start another call on this fd
  if (r == nullptr) {
    PyObject* exc = fetch_exception();
    resolve(l, keep_fut, str_set_exception, exc);
    Py_DECREF(exc);
  } else if (r != kLater) {
    resolve(l, keep_fut, str_set_result, r);
    Py_DECREF(r);
  }
  Py_DECREF(keep_fut);
}

// The shape shared by every method: checks, one try, else a future.
PyObject* run_call(LoopObject* self, Kind kind, PyObject* sock, PyObject* a1, PyObject* a2) {
  int fd;
  if (!intern_names() || !check_socket(sock, &fd)) return nullptr;
  PyObject* r = attempt(self, kind, sock, fd, a1, a2, nullptr, nullptr, false);
  if (r != kLater) return r;
  return start_wait(self, kind, sock, fd, a1, a2);
}

}  // namespace

SockOps* sock_ops_new() { return new SockOps(); }

void sock_ops_free(SockOps* ops) { delete ops; }

void sock_ops_clear(LoopObject* loop) {
  SockOps* ops = loop->sock_ops;
  if (ops == nullptr) return;
  while (ops->head != nullptr) drop_op(ops->head);
  if (ops->waits != nullptr) ops->waits->release();
  ops->waits = nullptr;
  std::vector<PyObject*> owners = std::move(ops->owners);
  ops->owners.clear();
  for (PyObject* owner : owners) Py_XDECREF(owner);
}

int sock_ops_traverse(SockOps* ops, visitproc visit, void* arg) {
  if (ops == nullptr) return 0;
  for (PySockOp* op = ops->head; op != nullptr; op = op->next) {
    Py_VISIT(op->fut);
    Py_VISIT(op->sock);
    Py_VISIT(op->arg1);
    Py_VISIT(op->arg2);
  }
  return 0;
}

void sock_ops_prepare(LoopObject* loop) noexcept {
  SockOps* ops = loop->sock_ops;
  if (ops == nullptr || ops->waits != nullptr) return;
  try {
    ops->waits = SockWaits::open(*loop->engine);
  } catch (...) {
  }
}

void sock_ops_after_fork(LoopObject* loop) {
  if (loop->sock_ops->waits != nullptr) loop->sock_ops->waits->after_fork();
}

bool sock_ops_displace(LoopObject* loop, int fd, int side) {
  SockOps* ops = loop->sock_ops;
  if (ops->waits == nullptr) return false;
  auto* op = static_cast<PySockOp*>(ops->waits->waiter(fd, static_cast<SockOp::Side>(side)));
  if (op == nullptr) return false;
  bool live = true;
  if (intern_names()) {
    PyObject* done = PyObject_CallMethodNoArgs(op->fut, str_done);
    live = done == nullptr || !PyObject_IsTrue(done);
    Py_XDECREF(done);
    PyErr_Clear();
  }
  drop_op(op);
  return live;
}

PyObject* set_socket_types(PyObject*, PyObject* args) {
  PyObject *sock, *ssl_sock;
  if (!PyArg_ParseTuple(args, "OO", &sock, &ssl_sock)) return nullptr;
  Py_XSETREF(socket_type, Py_NewRef(sock));
  Py_XSETREF(ssl_socket_type, ssl_sock == Py_None ? nullptr : Py_NewRef(ssl_sock));
  Py_RETURN_NONE;
}

PyObject* loop_sock_recv(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 2, 2, "sock_recv")) return nullptr;
  return run_call(self, Kind::kRecv, args[0], args[1], nullptr);
}

PyObject* loop_sock_recv_into(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 2, 2, "sock_recv_into")) return nullptr;
  return run_call(self, Kind::kRecvInto, args[0], args[1], nullptr);
}

PyObject* loop_sock_recvfrom(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 2, 2, "sock_recvfrom")) return nullptr;
  return run_call(self, Kind::kRecvFrom, args[0], args[1], nullptr);
}

PyObject* loop_sock_recvfrom_into(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 2, 3, "sock_recvfrom_into")) return nullptr;
  PyObject* nbytes = nargs > 2 ? args[2] : zero;
  if (!intern_names()) return nullptr;
  int given = PyObject_IsTrue(nbytes);
  if (given < 0) return nullptr;
  PyObject* size = nullptr;
  if (!given) {  // asyncio: `if not nbytes: nbytes = len(buf)`
    Py_ssize_t len = PyObject_Size(args[1]);
    if (len < 0) return nullptr;
    size = PyLong_FromSsize_t(len);
    if (size == nullptr) return nullptr;
    nbytes = size;
  }
  PyObject* r = run_call(self, Kind::kRecvFromInto, args[0], args[1], nbytes);
  Py_XDECREF(size);
  return r;
}

PyObject* loop_sock_sendto(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 3, 3, "sock_sendto")) return nullptr;
  return run_call(self, Kind::kSendTo, args[0], args[1], args[2]);
}

PyObject* loop_sock_accept(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 1, 1, "sock_accept")) return nullptr;
  return run_call(self, Kind::kAccept, args[0], nullptr, nullptr);
}

PyObject* loop_sock_connect(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 2, 2, "sock_connect")) return nullptr;
  return run_call(self, Kind::kConnect, args[0], args[1], nullptr);
}

PyObject* loop_sock_sendall(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args(nargs, 2, 2, "sock_sendall")) return nullptr;
  PyObject* sock = args[0];
  int fd;
  if (!intern_names() || !check_socket(sock, &fd)) return nullptr;
  // sock.send(data)'s own conversion: the same TypeError for a str.
  Py_buffer view;
  if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) != 0) return nullptr;
  Py_ssize_t sent = 0;
  PyObject* r = send_some(sock, fd, view, sent);
  if (r != kLater) {
    PyBuffer_Release(&view);
    return r;
  }
  r = start_wait(self, Kind::kSendAll, sock, fd, args[1], nullptr, &view, sent);
  if (view.obj != nullptr) PyBuffer_Release(&view);  // not taken: the wait failed
  return r;
}

PyObject* loop_sock_forget(LoopObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_sock_forget(sock, future)");
    return nullptr;
  }
  SockOps* ops = self->sock_ops;
  if (ops->waits == nullptr) Py_RETURN_NONE;
  PyObject* fut = args[1];
  int fd = intern_names() ? fileno_of(args[0]) : -2;
  if (fd == -2) PyErr_Clear();
  for (int side = 0; fd >= 0 && side < 2; ++side) {
    auto* op = static_cast<PySockOp*>(ops->waits->waiter(fd, static_cast<SockOp::Side>(side)));
    if (op != nullptr && op->fut == fut) {
      drop_op(op);
      Py_RETURN_NONE;
    }
  }
  if (fd >= 0) Py_RETURN_NONE;  // not waiting (any more) under its fd
  // The socket was closed since: look through every waiting call.
  for (PySockOp* op = ops->head; op != nullptr; op = op->next) {
    if (op->fut == fut) {
      drop_op(op);
      break;
    }
  }
  Py_RETURN_NONE;
}

}  // namespace shardloop::py
