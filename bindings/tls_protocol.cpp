// shardloop._core.TlsProtocol: the native steady state of a TLS connection.
//
// python_pkg/shardloop/_tls.py's NativeSSLProtocol is asyncio's own
// sslproto.SSLProtocol (its state machine, handshake, shutdown, timeouts,
// errors) with this object doing the two paths every request takes once the
// handshake is done: encrypted bytes in -> SSLObject.read -> the app's
// data_received (or get_buffer/buffer_updated), and app transport.write ->
// SSLObject.write -> the raw transport. It drives the connection's SSLObject and its two MemoryBIOs
// through their methods (Python's SSLContext does not expose its SSL*).
//
// The Python side tells it, through sync(), whether each path may run
// here: only in the WRAPPED state with no flow control engaged and nothing
// backlogged. Anything else (handshake, shutdown, pauses, errors) is
// handed to the SSLProtocol's own methods, so the rules stay
// asyncio's. What both paths skip, they skip because it is a no-op in that
// state: see feed() and write() below.
#include <cstdlib>
#include <cstring>

#include "common.hpp"
#include "stream_reader_feed.hpp"

namespace shardloop::py {

namespace {

struct TlsObject {
  PyObject_HEAD
  // Weak: the protocol and its app transport own this object (the feed
  // and write paths), and a cycle would keep the SSL context alive past the
  // connection until a collection (test_ssl's leak tests check it is not).
  PyObject* proto_ref;       // weakref to the NativeSSLProtocol
  PyObject* transport_ref;   // weakref to its _SSLProtocolTransport
  PyObject* slow_write;      // _SSLProtocolTransport.write, the class's function
  PyObject* incoming;        // MemoryBIO: encrypted bytes in
  PyObject* incoming_write;  // incoming.write
  PyObject* outgoing;        // MemoryBIO: encrypted bytes out
  PyObject* outgoing_read;   // outgoing.read
  PyObject* ssl_read;        // the SSL object's read/write/pending
  PyObject* ssl_write;
  PyObject* ssl_pending;
  PyObject* backlog;         // the SSLProtocol's _write_backlog (a deque)
  PyObject* again;           // (SSLWantReadError, SSLWantWriteError)
  PyObject* data_received;   // a Protocol app's, or nullptr
  PyObject* stream_app;      // the app, when an asyncio.StreamReaderProtocol (stream_reader_feed)
  PyObject* get_buffer;      // a BufferedProtocol app's, or nullptr
  PyObject* buffer_updated;
  PyObject* raw_write;       // the raw transport's write, or nullptr
  bool fast_read;
  bool fast_write;
  Py_ssize_t incoming_high_water;
  // Plaintext lands here (SSLObject.read into a buffer) and leaves as one
  // bytes object: no 256 KiB bytes allocated and shrunk per read, no join.
  char* buf;
  Py_ssize_t cap;
};

PyTypeObject* TlsType = nullptr;

PyObject* s_pending;
PyObject* s_fatal_error;
PyObject* s_do_write;
PyObject* s_process_outgoing;
PyObject* s_control_ssl_reading;
PyObject* s_feed_slow;
PyObject* s_close_notify;
PyObject* s_write_appdata;
PyObject* s_read_later;
PyObject* s_fatal_message;

// An SSL record carries at most 16 KiB of plaintext; one read returns at
// most one record, so this much room is always asked for.
constexpr Py_ssize_t kRecord = 16 * 1024 + 256;

// The MemoryBIO's byte count; -1 with an error set.
Py_ssize_t pending_of(PyObject* bio) {
  PyObject* n = PyObject_GetAttr(bio, s_pending);
  if (n == nullptr) return -1;
  Py_ssize_t v = PyLong_AsSsize_t(n);
  Py_DECREF(n);
  return v;
}

PyObject* call0(PyObject* fn) { return PyObject_CallNoArgs(fn); }

// The object behind a weakref (new reference), or nullptr with an error.
PyObject* deref(PyObject* ref, const char* what) {
  PyObject* obj = nullptr;
  if (ref != nullptr) {
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(ref, &obj) < 0) return nullptr;
#else
    obj = Py_XNewRef(PyWeakref_GetObject(ref));
    if (obj == Py_None) Py_CLEAR(obj);
#endif
  }
  if (obj == nullptr) PyErr_Format(PyExc_RuntimeError, "the TLS %s is gone", what);
  return obj;
}

// proto.<name>(*args)
PyObject* call_proto(TlsObject* self, PyObject* name, PyObject* const* args, Py_ssize_t nargs) {
  PyObject* proto = deref(self->proto_ref, "protocol");
  if (proto == nullptr) return nullptr;
  PyObject* stack[4] = {proto};
  for (Py_ssize_t i = 0; i < nargs && i < 3; ++i) stack[i + 1] = args[i];
  PyObject* r = PyObject_VectorcallMethod(name, stack, (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  Py_DECREF(proto);
  return r;
}

PyObject* call_method0(TlsObject* self, PyObject* name) { return call_proto(self, name, nullptr, 0); }

// What asyncio's `except Exception as ex: self._fatal_error(ex, 'Fatal error
// on SSL protocol')` does around the data path: an Exception goes to the
// protocol (returns true), anything else (KeyboardInterrupt, SystemExit,
// CancelledError...) stays raised for the caller (returns false).
bool to_fatal_error(TlsObject* self) {
  if (!PyErr_ExceptionMatches(PyExc_Exception)) return false;
  PyObject* exc = fetch_exception();
  PyObject* args[] = {exc, s_fatal_message};
  PyObject* r = call_proto(self, s_fatal_error, args, 2);
  Py_DECREF(exc);
  if (r == nullptr) return false;
  Py_DECREF(r);
  return true;
}

// An error leaving the data path: None once _fatal_error() has it, nullptr
// while it stays raised for the caller.
PyObject* finish_error(TlsObject* self) {
  if (to_fatal_error(self)) Py_RETURN_NONE;
  return nullptr;
}

// _process_outgoing() when nothing is paused and nothing backlogged: the
// encrypted bytes go to the raw transport, and _control_app_writing() has
// nothing to do (the write buffer is empty, below any low-water mark, and
// the app is not paused).
int flush_outgoing(TlsObject* self) {
  PyObject* data = call0(self->outgoing_read);  // b"" when empty: one call, not pending then read
  if (data == nullptr) return -1;
  if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) == 0) {
    Py_DECREF(data);
    return 0;
  }
  PyObject* write = Py_NewRef(self->raw_write);
  PyObject* r = PyObject_Vectorcall(write, &data, 1, nullptr);
  Py_DECREF(write);
  Py_DECREF(data);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// One SSLObject.read(room, buffer) into [at, at + room): 1 with *count set
// (0 at the peer's close_notify), 0 when OpenSSL wants more bytes (asyncio's
// SSLAgainErrors), -1 with an error set.
int ssl_read_into(TlsObject* self, char* at, Py_ssize_t room, Py_ssize_t* count) {
  if (self->ssl_read == nullptr) return 0;  // detached by a callback of OpenSSL's
  PyObject* size = PyLong_FromSsize_t(room);
  PyObject* view = PyMemoryView_FromMemory(at, room, PyBUF_WRITE);
  PyObject* n = nullptr;
  if (size != nullptr && view != nullptr) {
    PyObject* args[] = {size, view};
    n = PyObject_Vectorcall(self->ssl_read, args, 2, nullptr);
  }
  Py_XDECREF(size);
  Py_XDECREF(view);
  if (n == nullptr) {
    if (!PyErr_ExceptionMatches(self->again)) return -1;
    PyErr_Clear();
    return 0;
  }
  *count = PyLong_AsSsize_t(n);
  Py_DECREF(n);
  return *count < 0 ? -1 : 1;
}

// After a read of `count` bytes into `room`: 1 if the next read can only
// raise SSLWantReadError, 0 if it may return more, -1 with an error set.
// asyncio reads until that error; the read can only fail when the BIO is
// empty and OpenSSL holds no decrypted bytes (Python never turns on
// read-ahead, so OpenSSL takes from the BIO one record at a time, and a
// read that did not fill its room has emptied its record). Not making it
// saves building an exception per request.
int drained(TlsObject* self, Py_ssize_t count, Py_ssize_t room) {
  if (self->incoming == nullptr || self->ssl_pending == nullptr) return 1;
  Py_ssize_t in = pending_of(self->incoming);
  if (in != 0) return in < 0 ? -1 : 0;
  if (count < room) return 1;
  PyObject* p = call0(self->ssl_pending);
  if (p == nullptr) return -1;
  Py_ssize_t held = PyLong_AsSsize_t(p);
  Py_DECREF(p);
  if (held < 0) return -1;
  return held == 0 ? 1 : 0;
}

// The app's data_received(bytes) or buffer_updated(n), taking `arg`; 0, or
// -1 with an error set.
int call_app(PyObject* callback, PyObject* arg) {
  PyObject* cb = Py_XNewRef(callback);
  PyObject* r = arg && cb ? PyObject_Vectorcall(cb, &arg, 1, nullptr) : nullptr;
  if (arg && cb == nullptr) PyErr_SetString(PyExc_RuntimeError, "no app protocol");
  Py_XDECREF(cb);
  Py_XDECREF(arg);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// _do_read__copied(): everything the incoming BIO holds, decrypted into
// self->buf, then one data_received(); *eof when the peer's close_notify
// came. -1 with an error set: asyncio drops what was read before an error,
// as here.
int read_copied(TlsObject* self, bool* eof) {
  Py_ssize_t total = 0;
  for (;;) {
    if (self->cap - total < kRecord) {
      Py_ssize_t cap = self->cap ? self->cap * 2 : 64 * 1024;
      while (cap - total < kRecord) cap *= 2;
      char* grown = static_cast<char*>(std::realloc(self->buf, static_cast<std::size_t>(cap)));
      if (grown == nullptr) {
        PyErr_NoMemory();
        return -1;
      }
      self->buf = grown;
      self->cap = cap;
    }
    Py_ssize_t room = self->cap - total, count = 0;
    int rc = ssl_read_into(self, self->buf + total, room, &count);
    if (rc < 0) return -1;
    if (rc == 0) break;
    if (count == 0) {
      *eof = true;
      break;
    }
    total += count;
    rc = drained(self, count, room);
    if (rc < 0) return -1;
    if (rc == 1) break;
  }
  if (total == 0) return 0;
  if (self->stream_app != nullptr) {
    iovec plain{self->buf, static_cast<std::size_t>(total)};
    PyObject* app = Py_NewRef(self->stream_app);
    int fed = feed_stream_reader(app, &plain, 1, plain.iov_len);
    Py_DECREF(app);
    if (fed != 0) return fed < 0 ? -1 : 0;
  }
  return call_app(self->data_received, PyBytes_FromStringAndSize(self->buf, total));
}

// _do_read__buffered(): get_buffer(bytes in the BIO), decrypt into it until
// it is full (then read again on the next iteration, as asyncio schedules
// it) or OpenSSL wants more, one buffer_updated(); *eof as above.
int read_buffered(TlsObject* self, bool* eof) {
  Py_ssize_t size = pending_of(self->incoming);
  if (size < 0) return -1;
  PyObject* hint = PyLong_FromSsize_t(size);
  if (hint == nullptr) return -1;
  PyObject* get_buffer = Py_NewRef(self->get_buffer);
  PyObject* buf = PyObject_Vectorcall(get_buffer, &hint, 1, nullptr);
  Py_DECREF(get_buffer);
  Py_DECREF(hint);
  if (buf == nullptr) return -1;
  Py_buffer view;
  int got = PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE);
  Py_DECREF(buf);
  if (got < 0) return -1;
  const Py_ssize_t wants = view.len;
  Py_ssize_t offset = 0, count = wants > 0 ? 1 : 0;
  bool full = false;
  // asyncio's first read asks for len(buf) bytes; an empty buffer reads
  // nothing and counts as the peer's close_notify there too.
  while (wants > 0) {
    Py_ssize_t room = wants - offset;
    int rc = ssl_read_into(self, static_cast<char*>(view.buf) + offset, room, &count);
    if (rc < 0) {
      PyBuffer_Release(&view);
      return -1;
    }
    if (rc == 0 || count == 0) break;
    offset += count;
    if (offset >= wants) {
      full = true;
      break;
    }
    rc = drained(self, count, room);
    if (rc < 0) {
      PyBuffer_Release(&view);
      return -1;
    }
    if (rc == 1) break;
  }
  PyBuffer_Release(&view);
  if (full) {
    PyObject* r = call_method0(self, s_read_later);
    if (r == nullptr) return -1;
    Py_DECREF(r);
  }
  if (offset > 0 && call_app(self->buffer_updated, PyLong_FromSsize_t(offset)) < 0) return -1;
  if (count == 0) *eof = true;
  return 0;
}

// feed(data): the raw transport's bytes (its data_received fast path).
// In the steady state this is SSLProtocol.buffer_updated() -> _do_read()
// -> _do_read__copied(), then the tail of _do_read(); otherwise the
// protocol's own get_buffer()/buffer_updated() take the bytes.
PyObject* tls_feed(TlsObject* self, PyObject* data) {
  const bool buffered = self->data_received == nullptr;
  if (!self->fast_read || self->raw_write == nullptr ||
      (buffered && (self->get_buffer == nullptr || self->buffer_updated == nullptr))) {
    return call_proto(self, s_feed_slow, &data, 1);
  }
  Py_INCREF(self);  // the app may close and drop everything
  PyObject* result = nullptr;
  PyObject* r = PyObject_Vectorcall(self->incoming_write, &data, 1, nullptr);
  if (r == nullptr) goto done;  // buffer_updated() raising, as in asyncio
  Py_DECREF(r);
  {
    bool eof = false;
    if ((buffered ? read_buffered(self, &eof) : read_copied(self, &eof)) < 0) {
      result = finish_error(self);
      goto done;
    }
    if (eof) {
      r = call_method0(self, s_close_notify);
      if (r == nullptr) {
        result = finish_error(self);
        goto done;
      }
      Py_DECREF(r);
    }
    // The tail of _do_read(): flush what the app wrote meanwhile, then
    // read-side flow control. Flags may have changed in data_received, and
    // a connection lost meanwhile has detached this object: nothing is left.
    if (self->backlog == nullptr) {
      result = Py_NewRef(Py_None);
      goto done;
    }
    Py_ssize_t backlogged = PyObject_Length(self->backlog);
    if (backlogged < 0) {
      result = finish_error(self);
      goto done;
    }
    if (backlogged > 0) {
      r = call_method0(self, s_do_write);
    } else if (self->fast_write && self->raw_write != nullptr) {
      r = flush_outgoing(self) < 0 ? nullptr : Py_NewRef(Py_None);
    } else {
      r = call_method0(self, s_process_outgoing);
    }
    if (r == nullptr) {
      result = finish_error(self);
      goto done;
    }
    Py_DECREF(r);
    bool control = !self->fast_read;
    if (!control && self->incoming != nullptr) {
      // Not paused: only a BIO over the high-water mark would change anything.
      Py_ssize_t in = pending_of(self->incoming);
      if (in < 0) {
        result = finish_error(self);
        goto done;
      }
      control = in >= self->incoming_high_water;
    }
    if (control) {
      r = call_method0(self, s_control_ssl_reading);
      if (r == nullptr) {
        result = finish_error(self);
        goto done;
      }
      Py_DECREF(r);
    }
    result = Py_NewRef(Py_None);
  }
done:
  Py_DECREF(self);
  return result;
}

// write(data): the app transport's write. In the steady state this is
// _SSLProtocolTransport.write() -> _write_appdata() -> _do_write() ->
// _process_outgoing() with the backlog staying empty; everything else is
// the class's own write().
PyObject* tls_write(TlsObject* self, PyObject* data) {
  const bool plain = PyBytes_CheckExact(data) || PyByteArray_CheckExact(data);
  if (!plain || !self->fast_write || self->raw_write == nullptr || self->backlog == nullptr ||
      PyObject_Length(self->backlog) != 0) {
    if (PyErr_Occurred()) return nullptr;
    PyObject* transport = deref(self->transport_ref, "transport");
    if (transport == nullptr) return nullptr;
    PyObject* slow = Py_NewRef(self->slow_write);
    PyObject* args[] = {transport, data};
    PyObject* r = PyObject_Vectorcall(slow, args, 2, nullptr);
    Py_DECREF(slow);
    Py_DECREF(transport);
    return r;
  }
  const Py_ssize_t len = Py_SIZE(data);
  if (len == 0) Py_RETURN_NONE;
  Py_INCREF(self);
  PyObject* result = nullptr;
  PyObject* n = PyObject_Vectorcall(self->ssl_write, &data, 1, nullptr);
  if (n == nullptr) {
    if (PyErr_ExceptionMatches(self->again)) {
      // asyncio keeps the data in its backlog and tries again later.
      PyErr_Clear();
      PyObject* items = PyTuple_Pack(1, data);
      PyObject* r = items ? call_proto(self, s_write_appdata, &items, 1) : nullptr;
      Py_XDECREF(items);
      result = r;
    } else {
      result = finish_error(self);
    }
    Py_DECREF(self);
    return result;
  }
  Py_ssize_t count = PyLong_AsSsize_t(n);
  Py_DECREF(n);
  if (count < 0 && PyErr_Occurred()) {
    result = finish_error(self);
  } else if (count < len) {
    // A partial write (not seen with memory BIOs): the rest goes to the
    // protocol's backlog the way asyncio's _do_write keeps it.
    PyObject* rest = PySequence_GetSlice(data, count, len);
    PyObject* items = rest ? PyTuple_Pack(1, rest) : nullptr;
    Py_XDECREF(rest);
    result = items ? call_proto(self, s_write_appdata, &items, 1) : nullptr;
    Py_XDECREF(items);
  } else if (flush_outgoing(self) < 0) {
    result = finish_error(self);
  } else {
    result = Py_NewRef(Py_None);
  }
  Py_DECREF(self);
  return result;
}

// sync(fast_read, fast_write, incoming_high_water): what the protocol's
// state allows, recomputed by the Python side on every change of it.
PyObject* tls_sync(TlsObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "sync(fast_read, fast_write, incoming_high_water)");
    return nullptr;
  }
  int rd = PyObject_IsTrue(args[0]);
  int wr = PyObject_IsTrue(args[1]);
  if (rd < 0 || wr < 0) return nullptr;
  Py_ssize_t high = PyLong_AsSsize_t(args[2]);
  if (high == -1 && PyErr_Occurred()) return nullptr;
  self->fast_read = rd;
  self->fast_write = wr;
  self->incoming_high_water = high;
  Py_RETURN_NONE;
}

// set_peers(data_received, get_buffer, buffer_updated, raw_write, app=None):
// None for what is gone or does not apply; with `app` an
// asyncio.StreamReaderProtocol, plaintext goes to its reader natively. The protocol sets them all to None when
// the connection is lost (detach), which also breaks the cycles through the
// app protocol and the raw transport.
PyObject* tls_set_peers(TlsObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 && nargs != 5) {
    PyErr_SetString(PyExc_TypeError, "set_peers(data_received, get_buffer, buffer_updated, raw_write, app=None)");
    return nullptr;
  }
  PyObject* stream_app = nargs == 5 && args[0] != Py_None && is_plain_stream_protocol(args[4]) ? args[4] : Py_None;
  Py_XSETREF(self->stream_app, new_ref_unless_none(stream_app));
  Py_XSETREF(self->data_received, new_ref_unless_none(args[0]));
  Py_XSETREF(self->get_buffer, new_ref_unless_none(args[1]));
  Py_XSETREF(self->buffer_updated, new_ref_unless_none(args[2]));
  Py_XSETREF(self->raw_write, new_ref_unless_none(args[3]));
  if (self->raw_write == nullptr) {
    self->fast_read = false;
    self->fast_write = false;
  }
  Py_RETURN_NONE;
}

// detach(): the connection is lost. Drops everything that reaches the SSL
// object (and so the context), the app and the raw transport: the raw
// transport's stream may outlive the protocol holding our feed. What is
// left (weak references, the class's write) keeps the app transport's
// write() answering as asyncio's does after the connection is gone.
PyObject* tls_detach(TlsObject* self, PyObject*) {
  self->fast_read = false;
  self->fast_write = false;
  Py_CLEAR(self->data_received);
  Py_CLEAR(self->stream_app);
  Py_CLEAR(self->get_buffer);
  Py_CLEAR(self->buffer_updated);
  Py_CLEAR(self->raw_write);
  Py_CLEAR(self->incoming);
  Py_CLEAR(self->incoming_write);
  Py_CLEAR(self->outgoing);
  Py_CLEAR(self->outgoing_read);
  Py_CLEAR(self->ssl_read);
  Py_CLEAR(self->ssl_write);
  Py_CLEAR(self->ssl_pending);
  Py_CLEAR(self->backlog);
  Py_RETURN_NONE;
}

PyObject* bound(PyObject* obj, const char* name) { return PyObject_GetAttrString(obj, name); }

// TlsProtocol(proto, app_transport, slow_write, sslobj, incoming, outgoing, backlog, again)
PyObject* tls_new(PyTypeObject* type, PyObject* args, PyObject* kwds) {
  PyObject *proto, *transport, *slow_write, *sslobj, *incoming, *outgoing, *backlog, *again;
  if (kwds != nullptr && PyDict_GET_SIZE(kwds) != 0) {
    PyErr_SetString(PyExc_TypeError, "TlsProtocol() takes no keyword arguments");
    return nullptr;
  }
  if (!PyArg_ParseTuple(args, "OOOOOOOO!", &proto, &transport, &slow_write, &sslobj, &incoming, &outgoing, &backlog,
                        &PyTuple_Type, &again)) {
    return nullptr;
  }
  auto* self = reinterpret_cast<TlsObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->proto_ref = PyWeakref_NewRef(proto, nullptr);
  self->transport_ref = PyWeakref_NewRef(transport, nullptr);
  self->slow_write = Py_NewRef(slow_write);
  self->incoming = Py_NewRef(incoming);
  self->outgoing = Py_NewRef(outgoing);
  self->backlog = Py_NewRef(backlog);
  self->again = Py_NewRef(again);
  self->incoming_write = bound(incoming, "write");
  self->outgoing_read = bound(outgoing, "read");
  self->ssl_read = bound(sslobj, "read");
  self->ssl_write = bound(sslobj, "write");
  self->ssl_pending = bound(sslobj, "pending");
  if (!self->proto_ref || !self->transport_ref || !self->incoming_write || !self->outgoing_read || !self->ssl_read ||
      !self->ssl_write || !self->ssl_pending) {
    Py_DECREF(self);
    return nullptr;
  }
  return reinterpret_cast<PyObject*>(self);
}

int tls_traverse(TlsObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->proto_ref);
  Py_VISIT(self->transport_ref);
  Py_VISIT(self->incoming);
  Py_VISIT(self->incoming_write);
  Py_VISIT(self->outgoing);
  Py_VISIT(self->outgoing_read);
  Py_VISIT(self->ssl_read);
  Py_VISIT(self->ssl_write);
  Py_VISIT(self->ssl_pending);
  Py_VISIT(self->backlog);
  Py_VISIT(self->again);
  Py_VISIT(self->data_received);
  Py_VISIT(self->stream_app);
  Py_VISIT(self->get_buffer);
  Py_VISIT(self->buffer_updated);
  Py_VISIT(self->raw_write);
  Py_VISIT(self->slow_write);
  return 0;
}

int tls_clear(TlsObject* self) {
  Py_XDECREF(tls_detach(self, nullptr));
  Py_CLEAR(self->proto_ref);
  Py_CLEAR(self->transport_ref);
  Py_CLEAR(self->again);
  Py_CLEAR(self->slow_write);
  return 0;
}

void tls_dealloc(TlsObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  tls_clear(self);
  std::free(self->buf);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef tls_methods[] = {
    {"feed", reinterpret_cast<PyCFunction>(tls_feed), METH_O, "The raw transport's bytes."},
    {"write", reinterpret_cast<PyCFunction>(tls_write), METH_O, "The app transport's write."},
    {"sync", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(tls_sync)), METH_FASTCALL, nullptr},
    {"detach", reinterpret_cast<PyCFunction>(tls_detach), METH_NOARGS, "The connection is lost."},
    {"set_peers", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(tls_set_peers)), METH_FASTCALL,
     nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyObject* tls_get_fast_read(TlsObject* self, void*) { return PyBool_FromLong(self->fast_read); }
PyObject* tls_get_fast_write(TlsObject* self, void*) { return PyBool_FromLong(self->fast_write); }

PyGetSetDef tls_getset[] = {
    {"fast_read", reinterpret_cast<getter>(tls_get_fast_read), nullptr, nullptr, nullptr},
    {"fast_write", reinterpret_cast<getter>(tls_get_fast_write), nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot tls_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(tls_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(tls_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(tls_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(tls_clear)},
    {Py_tp_methods, tls_methods},
    {Py_tp_getset, tls_getset},
    {0, nullptr},
};

PyType_Spec tls_spec = {
    "shardloop._core.TlsProtocol", sizeof(TlsObject), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, tls_slots,
};

bool intern(PyObject** slot, const char* text) {
  *slot = PyUnicode_InternFromString(text);
  return *slot != nullptr;
}

}  // namespace

int init_tls_type(PyObject* module) {
  if (!intern(&s_pending, "pending") || !intern(&s_fatal_error, "_fatal_error") || !intern(&s_do_write, "_do_write") ||
      !intern(&s_process_outgoing, "_process_outgoing") || !intern(&s_control_ssl_reading, "_control_ssl_reading") ||
      !intern(&s_feed_slow, "_shardloop_feed_slow") || !intern(&s_close_notify, "_shardloop_close_notify") ||
      !intern(&s_write_appdata, "_write_appdata") ||
      !intern(&s_read_later, "_shardloop_read_later") || !intern(&s_fatal_message, "Fatal error on SSL protocol")) {
    return -1;
  }
  return add_type(module, tls_spec, TlsType);
}

}  // namespace shardloop::py
