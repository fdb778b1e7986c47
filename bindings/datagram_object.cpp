// shardloop._core.Datagram: the native half of the datagram transport
// (python_pkg/shardloop/_udp.py keeps asyncio's rules; this type moves the
// datagrams). Each received datagram goes straight to the protocol's
// datagram_received(data, addr), with the address as Python's socket
// module gives it; sendto() takes the common address forms itself.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <system_error>

#include "common.hpp"
#include "loop_object.hpp"
#include "shardloop/datagram.hpp"

namespace shardloop::py {

namespace {

struct DatagramObject {
  PyObject_HEAD
  LoopObject* loop;
  Datagram* dgram;
  PyObject* datagram_received;  // the protocol's bound method (set by the transport)
  PyObject* on_recv_error;      // on_recv_error(OSError): a receive failed
  PyObject* on_write;           // on_write(OSError or None, datagrams still queued)
  PyObject* on_callback_error;  // on_callback_error(exc): one of the above raised
  PyObject* context;            // the transport's context; nullptr: the current one
  // transport.sendto's common case is sendto_fast (see there); the rest
  // goes to the transport's Python sendto.
  PyObject* slow_sendto;      // the transport's full sendto(data, addr)
  PyObject* on_send_error;    // on_send_error(OSError): the kernel refused a datagram at once
  PyObject* on_queued;        // on_queued(): a datagram was queued (flow control)
  int family;
  bool connected;   // sends go to the peer: the address must be None
  bool send_empty;  // empty datagrams are sent (3.13), else dropped by the transport
  bool fast_send;   // the transport is open and allows the fast path
  // An open socket keeps itself alive, as a selector's registration keeps
  // asyncio's transport: a protocol need not hold on to its transport.
  bool self_ref;
  // Recent source addresses and their Python forms: a peer usually sends
  // more than one datagram, and a tuple is immutable. Formatting an IPv4
  // address (inet_ntop) was a third of a UDP echo server's instructions
  // with ten peers and one cached address. A reply to the same tuple then
  // finds its sockaddr here too, unparsed.
  static constexpr int kAddrCache = 64;  // two-way: a pair of slots per hash
  struct CachedAddr {
    sockaddr_in6 addr;  // IP addresses only: the others need no inet_ntop
    socklen_t len;
    PyObject* obj;  // nullptr: empty
  } addr_cache[kAddrCache];
};

PyTypeObject* DatagramType = nullptr;

// The address as socket.recvfrom() gives it (CPython's makesockaddr).
PyObject* address_object(const sockaddr* addr, socklen_t addrlen) {
  if (addr == nullptr || addrlen == 0) Py_RETURN_NONE;
  char host[INET6_ADDRSTRLEN];
  switch (addr->sa_family) {
    case AF_INET: {
      auto* a = reinterpret_cast<const sockaddr_in*>(addr);
      if (::inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == nullptr) break;
      return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    case AF_INET6: {
      auto* a = reinterpret_cast<const sockaddr_in6*>(addr);
      if (::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host) == nullptr) break;
      return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    case AF_UNIX: {
      auto* a = reinterpret_cast<const sockaddr_un*>(addr);
      const std::size_t len = addrlen > offsetof(sockaddr_un, sun_path) ? addrlen - offsetof(sockaddr_un, sun_path) : 0;
      if (len > 0 && a->sun_path[0] == '\0') return PyBytes_FromStringAndSize(a->sun_path, len);  // abstract
      // An unnamed sender has no path: ''.
      return PyUnicode_DecodeFSDefaultAndSize(a->sun_path, static_cast<Py_ssize_t>(strnlen(a->sun_path, len)));
    }
    default:
      break;
  }
  return Py_BuildValue("(iy#)", addr->sa_family, addr->sa_data, static_cast<Py_ssize_t>(sizeof addr->sa_data));
}

// The first of the two slots an address may be in: a hash of its bytes.
int addr_slot(const sockaddr* addr, socklen_t addrlen) {
  std::uint32_t h = 2166136261u;
  const auto* p = reinterpret_cast<const unsigned char*>(addr);
  for (socklen_t i = 0; i < addrlen; ++i) h = (h ^ p[i]) * 16777619u;
  return static_cast<int>((h ^ (h >> 15)) % DatagramObject::kAddrCache) & ~1;
}

PyObject* cached_address(DatagramObject* self, const sockaddr* addr, socklen_t addrlen) {
  if (addr == nullptr || addrlen == 0) Py_RETURN_NONE;
  if (addrlen > sizeof(sockaddr_in6)) return address_object(addr, addrlen);
  DatagramObject::CachedAddr* pair = &self->addr_cache[addr_slot(addr, addrlen)];
  for (int k = 0; k < 2; ++k) {
    DatagramObject::CachedAddr& e = pair[k];
    if (e.obj != nullptr && e.len == addrlen && std::memcmp(addr, &e.addr, addrlen) == 0) {
      if (k == 1) std::swap(pair[0], pair[1]);  // the newer first: it is evicted last
      return Py_NewRef(pair[0].obj);
    }
  }
  PyObject* obj = address_object(addr, addrlen);
  if (obj != nullptr) {
    Py_XDECREF(pair[1].obj);
    pair[1] = pair[0];
    std::memcpy(&pair[0].addr, addr, addrlen);
    pair[0].len = addrlen;
    pair[0].obj = Py_NewRef(obj);
  }
  return obj;
}

// The sockaddr of an address object this transport handed out (a reply to
// a sender passes its tuple back): false when `addr` is not one of them.
bool known_address(DatagramObject* self, PyObject* addr, sockaddr_storage* out, socklen_t* len) {
  for (const auto& e : self->addr_cache) {
    if (e.obj == addr) {
      std::memcpy(out, &e.addr, e.len);
      *len = e.len;
      return true;
    }
  }
  return false;
}

// A callback raised: KeyboardInterrupt and SystemExit end the run, the
// rest goes to the transport (the loop's exception handler, as asyncio's
// reader callback would). Nothing leaves through libuv.
void callback_failed(DatagramObject* self, PyObject* callback) {
  if (exception_must_propagate()) return loop_abort_with_exception(self->loop);
  PyObject* exc = fetch_exception();
  PyObject* handler = Py_XNewRef(self->on_callback_error);
  PyObject* r = handler && exc ? PyObject_Vectorcall(handler, &exc, 1, nullptr) : nullptr;
  Py_XDECREF(exc);
  Py_XDECREF(handler);
  if (r != nullptr) {
    Py_DECREF(r);
  } else if (PyErr_Occurred()) {
    if (exception_must_propagate()) return loop_abort_with_exception(self->loop);
    PyErr_WriteUnraisable(callback);
  }
}

// Calls `callback(*args)` in the transport's context; steals `args`.
void call_back(DatagramObject* self, PyObject* callback, PyObject** args, Py_ssize_t nargs) {
  bool built = callback != nullptr;
  for (Py_ssize_t i = 0; i < nargs; ++i) built = built && args[i] != nullptr;
  PyObject* cb = Py_XNewRef(callback);
  PyObject* r = built ? PyObject_Vectorcall(cb, args, nargs, nullptr) : nullptr;
  for (Py_ssize_t i = 0; i < nargs; ++i) Py_XDECREF(args[i]);
  if (r != nullptr) {
    Py_DECREF(r);
  } else if (PyErr_Occurred()) {
    callback_failed(self, cb);
  }
  Py_XDECREF(cb);
}

void on_datagram(void* ctx, const char* data, std::size_t len, const sockaddr* addr, socklen_t addrlen) noexcept {
  auto* self = static_cast<DatagramObject*>(ctx);
  Py_INCREF(self);  // the protocol may drop the transport's last reference
  {
    ContextScope scope(self->context);
    PyObject* args[] = {PyBytes_FromStringAndSize(data, static_cast<Py_ssize_t>(len)),
                        cached_address(self, addr, addrlen)};
    call_back(self, self->datagram_received, args, 2);
  }
  Py_DECREF(self);
}

void on_recv_error(void* ctx, int err) noexcept {
  auto* self = static_cast<DatagramObject*>(ctx);
  Py_INCREF(self);
  {
    ContextScope scope(self->context);
    PyObject* args[] = {uv_os_error(err)};
    call_back(self, self->on_recv_error, args, 1);
  }
  Py_DECREF(self);
}

void on_write(void* ctx, int status, std::size_t queued) noexcept {
  auto* self = static_cast<DatagramObject*>(ctx);
  Py_INCREF(self);
  {
    ContextScope scope(self->context);
    PyObject* args[] = {status < 0 ? uv_os_error(status) : Py_NewRef(Py_None), PyLong_FromSize_t(queued)};
    call_back(self, self->on_write, args, 2);
  }
  Py_DECREF(self);
}

void on_close(void* ctx) noexcept {
  auto* self = static_cast<DatagramObject*>(ctx);
  if (self->self_ref) {
    self->self_ref = false;
    Py_DECREF(self);
  }
}

// Datagram(loop, fd, family, on_recv_error, on_write, on_callback_error, *, context=None)
PyObject* dgram_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  static const char* kwlist[] = {"loop", "fd", "family", "on_recv_error", "on_write", "on_callback_error", "context",
                                 nullptr};
  PyObject *loop, *recv_error_cb, *write_cb, *callback_error_cb;
  PyObject* context = Py_None;
  int fd, family;
  if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iiOOO|$O", const_cast<char**>(kwlist), LoopType, &loop, &fd,
                                   &family, &recv_error_cb, &write_cb, &callback_error_cb, &context)) {
    return nullptr;
  }
  if (!check_context_arg(context)) return nullptr;
  auto* lp = reinterpret_cast<LoopObject*>(loop);
  if (lp->engine->is_closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  auto* self = reinterpret_cast<DatagramObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->loop = reinterpret_cast<LoopObject*>(Py_NewRef(loop));
  self->on_recv_error = Py_NewRef(recv_error_cb);
  self->on_write = Py_NewRef(write_cb);
  self->on_callback_error = Py_NewRef(callback_error_cb);
  self->context = context == Py_None ? nullptr : Py_NewRef(context);
  self->family = family;
  try {
    self->dgram = Datagram::open(*lp->engine, fd, Datagram::Callbacks{self, &on_datagram, &on_recv_error, &on_write,
                                                                      &on_close});
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

bool open_now(DatagramObject* self) { return self->dgram != nullptr && !self->dgram->closed(); }

bool usable(DatagramObject* self) {
  if (self->dgram == nullptr || self->dgram->closed()) {
    PyErr_SetString(PyExc_RuntimeError, "datagram socket is closed");
    return false;
  }
  return true;
}

PyObject* check(int rc) {
  if (rc < 0) {
    errno = -rc;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_RETURN_NONE;
}

PyObject* dgram_read_start(DatagramObject* self, PyObject*) {
  return usable(self) ? check(self->dgram->read_start()) : nullptr;
}

PyObject* dgram_read_stop(DatagramObject* self, PyObject*) {
  return usable(self) ? check(self->dgram->read_stop()) : nullptr;
}

// An exact int in [lo, hi], else false (the socket module then decides).
bool small_int(PyObject* o, long lo, long hi, long* out) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  long v = PyLong_AsLongAndOverflow(o, &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  if (v < lo || v > hi) return false;
  *out = v;
  return true;
}

// The common address forms as the kernel takes them: an (IP literal, port)
// tuple of the socket's family, an IPv6 4-tuple, an AF_UNIX path. False for
// anything else (host names, '', '<broadcast>', out-of-range numbers,
// wrong types): the transport then leaves the conversion, and its errors,
// to the socket module.
bool parse_address(int family, PyObject* addr, sockaddr_storage* out, socklen_t* len) {
  std::memset(out, 0, sizeof *out);
  if (family == AF_INET || family == AF_INET6) {
    if (!PyTuple_CheckExact(addr)) return false;
    const Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n < 2 || n > (family == AF_INET ? 2 : 4) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(addr, 0))) return false;
    const char* host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    long port, flowinfo = 0, scope_id = 0;
    if (host == nullptr) {
      PyErr_Clear();
      return false;
    }
    if (!small_int(PyTuple_GET_ITEM(addr, 1), 0, 65535, &port)) return false;
    if (family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(out);
      if (::inet_pton(AF_INET, host, &a->sin_addr) != 1) return false;
      a->sin_family = AF_INET;
      a->sin_port = htons(static_cast<uint16_t>(port));
      *len = sizeof *a;
      return true;
    }
    if (n > 2 && !small_int(PyTuple_GET_ITEM(addr, 2), 0, 0xfffff, &flowinfo)) return false;
    if (n > 3 && !small_int(PyTuple_GET_ITEM(addr, 3), 0, 0xffffffffL, &scope_id)) return false;
    auto* a = reinterpret_cast<sockaddr_in6*>(out);
    if (::inet_pton(AF_INET6, host, &a->sin6_addr) != 1) return false;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    a->sin6_flowinfo = htonl(static_cast<uint32_t>(flowinfo));
    a->sin6_scope_id = static_cast<uint32_t>(scope_id);
    *len = sizeof *a;
    return true;
  }
  if (family != AF_UNIX) return false;
  PyObject* path;
  if (PyUnicode_CheckExact(addr)) {
    path = PyUnicode_EncodeFSDefault(addr);
    if (path == nullptr) {
      PyErr_Clear();
      return false;
    }
    // The socket module refuses a str with a NUL in it.
    if (std::memchr(PyBytes_AS_STRING(path), '\0', PyBytes_GET_SIZE(path)) != nullptr) {
      Py_DECREF(path);
      return false;
    }
  } else if (PyBytes_CheckExact(addr)) {
    path = Py_NewRef(addr);
  } else {
    return false;
  }
  auto* a = reinterpret_cast<sockaddr_un*>(out);
  const auto n = static_cast<std::size_t>(PyBytes_GET_SIZE(path));
  const bool abstract = n > 0 && PyBytes_AS_STRING(path)[0] == '\0';
  // Too long, or empty (autobind): the socket module's answer.
  const bool fits = n > 0 && (abstract ? n <= sizeof a->sun_path : n < sizeof a->sun_path);
  if (fits) {
    a->sun_family = AF_UNIX;
    std::memcpy(a->sun_path, PyBytes_AS_STRING(path), n);
    *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
  }
  Py_DECREF(path);
  return fits;
}

// sendto(data, addr): addr None sends to the connected peer. Returns
// False (sent), True (queued: the kernel refused it for now) or
// NotImplemented (data or address not in a form taken here); raises the
// OSError the kernel gave at once.
PyObject* dgram_sendto(DatagramObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "sendto() takes 2 arguments");
    return nullptr;
  }
  if (!usable(self)) return nullptr;
  sockaddr_storage addr;
  socklen_t addrlen = 0;
  if (args[1] != Py_None && !parse_address(self->family, args[1], &addr, &addrlen)) Py_RETURN_NOTIMPLEMENTED;
  Py_buffer view;
  if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
  }
  const int rc = self->dgram->send(static_cast<const char*>(view.buf), static_cast<std::size_t>(view.len),
                                   addrlen ? reinterpret_cast<const sockaddr*>(&addr) : nullptr, addrlen);
  PyBuffer_Release(&view);
  if (rc < 0) return check(rc);
  return PyBool_FromLong(self->dgram->queued() != 0);
}

// Calls `callback(arg)` for a caller in Python (sendto): its exception
// goes to that caller; steals `arg`.
PyObject* call_for_caller(PyObject* callback, PyObject* arg) {
  if (arg == nullptr) return nullptr;
  PyObject* r = PyObject_Vectorcall(callback, &arg, 1, nullptr);
  Py_DECREF(arg);
  if (r == nullptr) return nullptr;
  Py_DECREF(r);
  Py_RETURN_NONE;
}

// transport.sendto(data, addr) for the common case: bytes or bytearray, an
// address the engine converts (None on a connected socket), an open
// transport. Anything else, keywords included, goes to the transport's
// Python sendto, which applies asyncio's rules and messages.
PyObject* dgram_sendto_fast(DatagramObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* data = nargs >= 1 ? args[0] : nullptr;
  PyObject* addr = nargs >= 2 ? args[1] : Py_None;
  sockaddr_storage ss;
  socklen_t sslen = 0;
  const bool plain = data != nullptr && (PyBytes_CheckExact(data) || PyByteArray_CheckExact(data));
  bool fast = self->fast_send && kwnames == nullptr && nargs <= 2 && plain && open_now(self) &&
              (Py_SIZE(data) != 0 || self->send_empty);
  if (fast) {
    fast = self->connected ? addr == Py_None
                           : addr != Py_None && (known_address(self, addr, &ss, &sslen) ||
                                                 parse_address(self->family, addr, &ss, &sslen));
  }
  if (!fast) {
    if (self->slow_sendto == nullptr) return check(UV_EBADF);
    PyObject* slow = Py_NewRef(self->slow_sendto);
    PyObject* r = PyObject_Vectorcall(slow, args, nargsf, kwnames);
    Py_DECREF(slow);
    return r;
  }
  const char* buf = PyBytes_CheckExact(data) ? PyBytes_AS_STRING(data) : PyByteArray_AS_STRING(data);
  const int rc = self->dgram->send(buf, static_cast<std::size_t>(Py_SIZE(data)),
                                   sslen ? reinterpret_cast<const sockaddr*>(&ss) : nullptr, sslen);
  if (rc < 0) return call_for_caller(self->on_send_error, uv_os_error(rc));  // error_received, as asyncio
  if (self->dgram->queued() != 0) {
    PyObject* cb = Py_NewRef(self->on_queued);
    PyObject* r = PyObject_CallNoArgs(cb);
    Py_DECREF(cb);
    if (r == nullptr) return nullptr;
    Py_DECREF(r);
  }
  Py_RETURN_NONE;
}

// set_fast_send(slow_sendto, on_send_error, on_queued, connected, send_empty)
PyObject* dgram_set_fast_send(DatagramObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "set_fast_send() takes 5 arguments");
    return nullptr;
  }
  const int connected = PyObject_IsTrue(args[3]);
  const int send_empty = PyObject_IsTrue(args[4]);
  if (connected < 0 || send_empty < 0) return nullptr;
  Py_XSETREF(self->slow_sendto, Py_NewRef(args[0]));
  Py_XSETREF(self->on_send_error, Py_NewRef(args[1]));
  Py_XSETREF(self->on_queued, Py_NewRef(args[2]));
  self->connected = connected;
  self->send_empty = send_empty;
  Py_RETURN_NONE;
}

PyObject* dgram_get_fast_send(DatagramObject* self, void*) { return PyBool_FromLong(self->fast_send); }

int dgram_set_fast_send_flag(DatagramObject* self, PyObject* value, void*) {
  const int flag = value ? PyObject_IsTrue(value) : 0;
  if (flag < 0) return -1;
  self->fast_send = flag && self->slow_sendto != nullptr;
  return 0;
}

PyObject* dgram_close(DatagramObject* self, PyObject*) {
  if (self->dgram) {
    self->dgram->release();
    self->dgram = nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* dgram_get_queued(DatagramObject* self, void*) {
  return PyLong_FromSize_t(open_now(self) ? self->dgram->queued() : 0);
}

PyObject* dgram_get_queued_bytes(DatagramObject* self, void*) {
  return PyLong_FromSize_t(open_now(self) ? self->dgram->queued_bytes() : 0);
}

PyObject* dgram_get_closed(DatagramObject* self, void*) { return PyBool_FromLong(!open_now(self)); }

PyObject* dgram_get_datagram_received(DatagramObject* self, void*) {
  return Py_NewRef(self->datagram_received ? self->datagram_received : Py_None);
}

int dgram_set_datagram_received(DatagramObject* self, PyObject* value, void*) {
  Py_XSETREF(self->datagram_received, value == nullptr || value == Py_None ? nullptr : Py_NewRef(value));
  return 0;
}

int dgram_traverse(DatagramObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->loop);
  Py_VISIT(self->datagram_received);
  Py_VISIT(self->on_recv_error);
  Py_VISIT(self->on_write);
  Py_VISIT(self->on_callback_error);
  Py_VISIT(self->context);
  for (const auto& e : self->addr_cache) Py_VISIT(e.obj);
  Py_VISIT(self->slow_sendto);
  Py_VISIT(self->on_send_error);
  Py_VISIT(self->on_queued);
  return 0;
}

int dgram_clear(DatagramObject* self) {
  Py_CLEAR(self->datagram_received);
  Py_CLEAR(self->on_recv_error);
  Py_CLEAR(self->on_write);
  Py_CLEAR(self->on_callback_error);
  Py_CLEAR(self->context);
  for (auto& e : self->addr_cache) Py_CLEAR(e.obj);
  Py_CLEAR(self->slow_sendto);
  Py_CLEAR(self->on_send_error);
  Py_CLEAR(self->on_queued);
  self->fast_send = false;
  return 0;
}

void dgram_dealloc(DatagramObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->dgram) self->dgram->release();
  dgram_clear(self);
  Py_CLEAR(self->loop);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef dgram_methods[] = {
    {"read_start", reinterpret_cast<PyCFunction>(dgram_read_start), METH_NOARGS, nullptr},
    {"read_stop", reinterpret_cast<PyCFunction>(dgram_read_stop), METH_NOARGS, nullptr},
    {"sendto", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(dgram_sendto)), METH_FASTCALL,
     "Send now or queue: False (sent), True (queued) or NotImplemented."},
    {"sendto_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(dgram_sendto_fast)),
     METH_FASTCALL | METH_KEYWORDS, "transport.sendto's common case."},
    {"set_fast_send", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(dgram_set_fast_send)), METH_FASTCALL,
     nullptr},
    {"close", reinterpret_cast<PyCFunction>(dgram_close), METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef dgram_getset[] = {
    {"queued", reinterpret_cast<getter>(dgram_get_queued), nullptr, "datagrams queued", nullptr},
    {"queued_bytes", reinterpret_cast<getter>(dgram_get_queued_bytes), nullptr, "their bytes", nullptr},
    {"closed", reinterpret_cast<getter>(dgram_get_closed), nullptr, nullptr, nullptr},
    {"fast_send", reinterpret_cast<getter>(dgram_get_fast_send), reinterpret_cast<setter>(dgram_set_fast_send_flag),
     "sendto_fast may send (set by the transport while open)", nullptr},
    {"datagram_received", reinterpret_cast<getter>(dgram_get_datagram_received),
     reinterpret_cast<setter>(dgram_set_datagram_received), "called per datagram with (data, addr)", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot dgram_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(dgram_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(dgram_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(dgram_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(dgram_clear)},
    {Py_tp_methods, dgram_methods},
    {Py_tp_getset, dgram_getset},
    {0, nullptr},
};

PyType_Spec dgram_spec = {
    "shardloop._core.Datagram", sizeof(DatagramObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, dgram_slots,
};

}  // namespace

int init_datagram_type(PyObject* module) {
  return add_type(module, dgram_spec, DatagramType);
}

}  // namespace shardloop::py
