#include "sock_ops.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <vector>

#include "fd_watch.hpp"
#include "loop_object.hpp"
#include "loop_upcalls.hpp"
#include "shardloop/connector.hpp"
#include "shardloop/sock_op.hpp"

namespace shardloop::py {

namespace {

// socket.socket and ssl.SSLSocket, handed over by the Python package.
PyObject* socket_type = nullptr;
PyObject* ssl_socket_type = nullptr;

enum class Kind { kRecv, kRecvInto, kRecvFrom, kRecvFromInto, kSendTo, kSendAll, kAccept, kConnect };

struct PySockOp;
struct RingConnect;

}  // namespace

struct SockOps {
  SockWaits* waits = nullptr;  // opened by the first call that waits
  // By fd: a weak reference to the socket object whose wait registered that
  // number in the engine's set. Another object under the same number may be
  // another file (the old socket was closed), so it registers again.
  std::vector<PyObject*> owners;
  PySockOp* head = nullptr;  // every waiting call, for clear and traverse
  RingConnect* connects = nullptr;  // every sock_connect in flight on the ring
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

bool displace_connect(LoopObject* loop, int fd);

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
  // add_writer callback registered there, and a connect on the ring.
  if (previous != nullptr) drop_op(static_cast<PySockOp*>(previous));
  if (side == SockOp::kWrite && ops->connects != nullptr) displace_connect(loop, fd);
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

// ---- sock_connect on the ring ---------------------------------------------
//
// On an io_uring loop a TCP socket's connect is one IORING_OP_CONNECT
// (engine Connector): the kernel makes the connect(2), waits for the
// handshake and reports what SO_ERROR would say, with no wait in SockWaits.
// The call keeps asyncio's rules: it is its fd's writer while in flight
// (add_writer, remove_writer or another call waiting to write takes over,
// and its future stays pending), a cancelled call forgets it at once
// (_sock_forget: the kernel's connect is cancelled, and lets go of the
// socket, before create_connection closes it), and a socket closed
// meanwhile answers through its own methods (EBADF), as on epoll.

struct RingConnect {
  LoopObject* loop;  // borrowed: the loop drops its calls before it goes
  PyObject* fut;
  PyObject* sock;
  PyObject* address;
  Connector* connector = nullptr;
  int fd;
  RingConnect* prev = nullptr;
  RingConnect* next = nullptr;

  RingConnect(LoopObject* l, PyObject* f, PyObject* s, PyObject* a, int d)
      : loop(l), fut(Py_NewRef(f)), sock(Py_NewRef(s)), address(Py_NewRef(a)), fd(d) {}
  ~RingConnect() {
    Py_DECREF(fut);
    Py_DECREF(sock);
    Py_DECREF(address);
  }
};

// Out of the loop's list, its connect cancelled (unless it completed), freed.
void drop_connect(RingConnect* c) noexcept {
  SockOps* ops = c->loop->sock_ops;
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  if (ops->connects == c) ops->connects = c->next;
  if (c->connector != nullptr) c->connector->release();
  delete c;
}

// A ring connect on `fd` stops being its writer (a newer writer takes
// over): its future stays pending. True if its future was not done.
bool displace_connect(LoopObject* loop, int fd) {
  for (RingConnect* c = loop->sock_ops->connects; c != nullptr; c = c->next) {
    if (c->fd != fd) continue;
    PyObject* done = PyObject_CallMethodNoArgs(c->fut, str_done);
    const bool live = done == nullptr || !PyObject_IsTrue(done);
    Py_XDECREF(done);
    PyErr_Clear();
    drop_connect(c);
    return live;
  }
  return false;
}

// The exception the epoll path raises for `err`: connect(2)'s own (the
// socket module's OSError, strerror's message) for what a TCP connect
// reports at once, and "Connect call failed" (from SO_ERROR after the wait
// for writability) for what it reports only once the handshake failed.
// Which errno comes which way is the usual cause's: EHOSTUNREACH after a
// neighbour that never answered, ENETUNREACH at once for want of a route.
void set_connect_error(int err, PyObject* address) {
  const bool later = err == ECONNREFUSED || err == ETIMEDOUT || err == ECONNRESET || err == EHOSTUNREACH;
  if (!later) {
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return;
  }
  PyObject* msg = PyUnicode_FromFormat("Connect call failed %S", address);
  if (msg == nullptr) return;
  PyObject* exc = PyObject_CallFunction(PyExc_OSError, "iO", err, msg);
  Py_DECREF(msg);
  if (exc != nullptr) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    Py_DECREF(exc);
  }
}

// From the ring's completion pass (the GIL held, as for stream reads).
void on_connect_done(void* ctx, int status) noexcept {
  auto* c = static_cast<RingConnect*>(ctx);
  LoopObject* loop = c->loop;
  PyObject* fut = Py_NewRef(c->fut);
  PyObject* sock = Py_NewRef(c->sock);
  PyObject* address = Py_NewRef(c->address);
  const int fd = c->fd;
  drop_connect(c);  // first: the future's callbacks may start another call on this fd
  PyObject* done = PyObject_CallMethodNoArgs(fut, str_done);
  const int is_done = done == nullptr ? -1 : PyObject_IsTrue(done);
  Py_XDECREF(done);
  if (is_done != 0) {
    // Cancelled, not yet forgotten: the socket is connected (or not) all
    // the same, as it is on epoll once the kernel has finished.
    if (is_done < 0) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
  } else {
    int now = fileno_of(sock);
    if (now == -2) PyErr_Clear();
    PyObject* r;
    if (now != fd)
      r = connect_result(sock, address);  // closed meanwhile: its own method says so (EBADF)
    else if (status == 0)
      r = Py_NewRef(Py_None);
    else
      r = (set_connect_error(-status, address), nullptr);
    if (r == nullptr) {
      PyObject* exc = fetch_exception();
      resolve(loop, fut, str_set_exception, exc);
      Py_DECREF(exc);
    } else {
      resolve(loop, fut, str_set_result, r);
      Py_DECREF(r);
    }
  }
  Py_DECREF(fut);
  Py_DECREF(sock);
  Py_DECREF(address);
}

// `address` as a sockaddr of `family` when it is what asyncio hands over
// after resolving (a numeric host, a port in range; IPv6's optional
// flowinfo and scope id); false for anything else, which the socket's own
// connect() then converts (or rejects with its own error).
bool ip_sockaddr(PyObject* address, int family, sockaddr_storage& ss, socklen_t& len) {
  if (!PyTuple_Check(address)) return false;
  const Py_ssize_t n = PyTuple_GET_SIZE(address);
  if (n < 2 || n > (family == AF_INET ? 2 : 4)) return false;
  PyObject* host = PyTuple_GET_ITEM(address, 0);
  PyObject* port = PyTuple_GET_ITEM(address, 1);
  if (!PyUnicode_Check(host) || !PyLong_CheckExact(port)) return false;
  const char* name = PyUnicode_AsUTF8(host);
  const long p = PyLong_AsLong(port);
  if (name == nullptr || p < 0 || p > 65535) {
    PyErr_Clear();
    return false;
  }
  ss = {};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    if (::inet_pton(AF_INET, name, &a->sin_addr) != 1) return false;
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<std::uint16_t>(p));
    len = sizeof *a;
    return true;
  }
  unsigned long extra[2] = {0, 0};  // flowinfo, scope id
  for (Py_ssize_t i = 2; i < n; ++i) {
    PyObject* v = PyTuple_GET_ITEM(address, i);
    if (!PyLong_CheckExact(v)) return false;
    extra[i - 2] = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
  }
  if (extra[0] > 0xfffff || extra[1] > 0xffffffffUL) return false;
  auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET6, name, &a->sin6_addr) != 1) return false;
  a->sin6_family = AF_INET6;
  a->sin6_port = htons(static_cast<std::uint16_t>(p));
  a->sin6_flowinfo = htonl(static_cast<std::uint32_t>(extra[0]));
  a->sin6_scope_id = static_cast<std::uint32_t>(extra[1]);
  len = sizeof *a;
  return true;
}

// What ring_connect() returns when this connect is not the ring's.
PyObject* const kDecline = kLater;

// sock_connect of a plain TCP socket on a loop with a ring: a future the
// Connector's completion resolves; kDecline for everything else (other
// socket kinds and classes, addresses the socket module must convert, an
// epoll loop), nullptr with an error raised.
PyObject* ring_connect(LoopObject* loop, PyObject* sock, int fd, PyObject* address) {
  if (!native_socket(sock, fd)) return kDecline;
  int type = 0, domain = 0;
  socklen_t olen = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &olen) != 0 || type != SOCK_STREAM) return kDecline;
  olen = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &olen) != 0 || (domain != AF_INET && domain != AF_INET6))
    return kDecline;
  sockaddr_storage ss;
  socklen_t len;
  if (!ip_sockaddr(address, domain, ss, len)) return kDecline;
  if (loop->closing || loop->engine->is_closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (!check_no_transport(loop, fd)) return nullptr;
  if (PySys_Audit("socket.connect", "OO", sock, address) < 0) return nullptr;  // as sock.connect() would
  PyObject* fut = loop_new_future(loop);
  if (fut == nullptr) return nullptr;
  auto* c = new (std::nothrow) RingConnect(loop, fut, sock, address, fd);
  if (c == nullptr) {
    Py_DECREF(fut);
    return PyErr_NoMemory();
  }
  try {
    c->connector = Connector::start(*loop->engine, fd, reinterpret_cast<const sockaddr*>(&ss), len,
                                    Connector::Callbacks{c, &on_connect_done});
  } catch (...) {
    delete c;
    Py_DECREF(fut);
    set_error_from_cpp();
    return nullptr;
  }
  if (c->connector == nullptr) {  // no ring on this thread (yet)
    delete c;
    Py_DECREF(fut);
    return kDecline;
  }
  // It is the fd's writer now, as asyncio's add_writer makes it: whoever
  // waited to write there (a sock_* call, an add_writer callback, an
  // earlier connect) is replaced, its future left pending.
  SockOps* ops = loop->sock_ops;
  displace_connect(loop, fd);
  if (ops->waits != nullptr) {
    if (auto* previous = static_cast<PySockOp*>(ops->waits->waiter(fd, SockOp::kWrite))) drop_op(previous);
  }
  c->next = ops->connects;
  if (ops->connects) ops->connects->prev = c;
  ops->connects = c;
  if (fd_watch_take_side(loop, fd, SockOp::kWrite) < 0) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
  return fut;
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
  while (ops->connects != nullptr) drop_connect(ops->connects);
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
  for (RingConnect* c = ops->connects; c != nullptr; c = c->next) {
    Py_VISIT(c->fut);
    Py_VISIT(c->sock);
    Py_VISIT(c->address);
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
  if (side == SockOp::kWrite && ops->connects != nullptr && displace_connect(loop, fd)) return true;
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
  if (self->engine->io_backend() != IoBackend::kIoUring) return run_call(self, Kind::kConnect, args[0], args[1], nullptr);
  int fd;
  if (!intern_names() || !check_socket(args[0], &fd)) return nullptr;
  PyObject* r = ring_connect(self, args[0], fd, args[1]);
  if (r != kDecline) return r;
  r = attempt(self, Kind::kConnect, args[0], fd, args[1], nullptr, nullptr, nullptr, false);
  if (r != kLater) return r;
  return start_wait(self, Kind::kConnect, args[0], fd, args[1], nullptr);
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
  PyObject* fut = args[1];
  for (RingConnect* c = ops->connects; c != nullptr; c = c->next) {
    if (c->fut == fut) {
      drop_connect(c);  // the kernel's connect is cancelled now
      Py_RETURN_NONE;
    }
  }
  if (ops->waits == nullptr) Py_RETURN_NONE;
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
