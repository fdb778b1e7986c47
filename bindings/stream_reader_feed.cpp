// StreamReaderProtocol.data_received -> StreamReader.feed_data, natively.
//
// A streams request spends a quarter of its server instructions in those
// four Python frames (data_received, the _stream_reader property,
// feed_data, _wakeup_waiter) and in the bytes object made only to be copied
// into the reader's bytearray. This file does the same steps, in the same
// order, on the same attributes, so user code sees asyncio's classes and
// asyncio's state. It stands in only while the methods are asyncio's own:
// the exact classes, whose method objects are checked again whenever the
// class changes (type version tags). Everything else goes to Python.
#include "stream_reader_feed.hpp"

#include <cstring>

namespace shardloop::py {

namespace {

// A class and the methods of it the feed stands in for.
struct Watched {
  PyTypeObject* type = nullptr;
  unsigned int tag = 0;  // the class's version tag when last checked
  static constexpr int kMethods = 2;
  PyObject* names[kMethods] = {};
  PyObject* originals[kMethods] = {};
};

Watched protocol_class;  // StreamReaderProtocol: data_received, _stream_reader
Watched reader_class;    // StreamReader: feed_data, _wakeup_waiter

PyObject *s_reader_wr, *s_eof, *s_buffer, *s_waiter, *s_transport, *s_paused, *s_limit, *s_cancelled,
    *s_set_result, *s_pause_reading;

bool intern(PyObject** slot, const char* text) {
  if (*slot == nullptr) *slot = PyUnicode_InternFromString(text);
  return *slot != nullptr;
}

bool watch(Watched& w, PyObject* type, const char* first, const char* second) {
  if (!PyType_Check(type)) {
    PyErr_SetString(PyExc_TypeError, "_set_stream_types() takes two classes");
    return false;
  }
  const char* names[Watched::kMethods] = {first, second};
  for (int k = 0; k < Watched::kMethods; ++k) {
    if (!intern(&w.names[k], names[k])) return false;
    PyObject* found = _PyType_Lookup(reinterpret_cast<PyTypeObject*>(type), w.names[k]);  // borrowed
    if (found == nullptr) {
      PyErr_Format(PyExc_TypeError, "%R has no %U", type, w.names[k]);
      return false;
    }
    Py_XSETREF(w.originals[k], Py_NewRef(found));
  }
  Py_XSETREF(w.type, reinterpret_cast<PyTypeObject*>(Py_NewRef(type)));
  w.tag = w.type->tp_version_tag;  // _PyType_Lookup gave it one, where tags are left
  return true;
}

// Whether the class still has asyncio's methods. A class that was changed
// at all (any attribute assigned, on it or a base) has a new version tag;
// its methods are then looked up again, which assigns the next tag.
bool unchanged(Watched& w) {
  if (w.tag != 0 && w.type->tp_version_tag == w.tag) return true;
  for (int k = 0; k < Watched::kMethods; ++k) {
    if (_PyType_Lookup(w.type, w.names[k]) != w.originals[k]) return false;
  }
  w.tag = w.type->tp_version_tag;
  return true;
}

// The protocol's reader, as its _stream_reader property gives it: a new
// reference, or None (no reader, or no longer alive); nullptr on error.
PyObject* reader_of(PyObject* protocol) {
  PyObject* wr = PyObject_GetAttr(protocol, s_reader_wr);
  if (wr == nullptr || wr == Py_None) return wr;
  PyObject* reader;
  if (!PyWeakref_CheckRef(wr)) {
    reader = PyObject_CallNoArgs(wr);  // not asyncio's weakref: call it as the property does
  } else {
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(wr, &reader) == 0) reader = Py_NewRef(Py_None);
#else
    reader = Py_NewRef(PyWeakref_GetObject(wr));
#endif
  }
  Py_DECREF(wr);
  return reader;
}

// 1: true, 0: false, -1: error; reads attribute `name` of `obj`.
int attr_is_true(PyObject* obj, PyObject* name) {
  PyObject* v = PyObject_GetAttr(obj, name);
  if (v == nullptr) return -1;
  int truth = PyObject_IsTrue(v);
  Py_DECREF(v);
  return truth;
}

// bytearray.extend(data) for the pieces: the same resize (and so the same
// BufferError while a memoryview of the buffer is alive), then the copy.
int extend(PyObject* buffer, const iovec* parts, int count, std::size_t total) {
  int rc = 0;
  Py_BEGIN_CRITICAL_SECTION(buffer);
  const Py_ssize_t old = PyByteArray_GET_SIZE(buffer);
  if (PyByteArray_Resize(buffer, old + static_cast<Py_ssize_t>(total)) < 0) {
    rc = -1;
  } else {
    char* out = PyByteArray_AS_STRING(buffer) + old;
    for (int k = 0; k < count; ++k) {
      std::memcpy(out, parts[k].iov_base, parts[k].iov_len);
      out += parts[k].iov_len;
    }
  }
  Py_END_CRITICAL_SECTION();
  return rc;
}

// StreamReader._wakeup_waiter.
int wake_waiter(PyObject* reader) {
  PyObject* waiter = PyObject_GetAttr(reader, s_waiter);
  if (waiter == nullptr) return -1;
  int rc = 0;
  if (waiter != Py_None) {
    rc = PyObject_SetAttr(reader, s_waiter, Py_None);
    if (rc == 0) {
      PyObject* cancelled = PyObject_CallMethodNoArgs(waiter, s_cancelled);
      int truth = cancelled ? PyObject_IsTrue(cancelled) : -1;
      Py_XDECREF(cancelled);
      if (truth < 0) {
        rc = -1;
      } else if (truth == 0) {
        PyObject* r = PyObject_CallMethodOneArg(waiter, s_set_result, Py_None);
        if (r == nullptr) rc = -1;
        Py_XDECREF(r);
      }
    }
  }
  Py_DECREF(waiter);
  return rc;
}

// len(buffer) > 2 * limit, for whatever the limit is (an int, normally).
int over_limit(PyObject* buffer, PyObject* limit) {
  const Py_ssize_t size = PyByteArray_GET_SIZE(buffer);
  if (PyLong_CheckExact(limit)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(limit, &overflow);
    if (overflow != 0) return overflow < 0;
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0) return 1;
    return static_cast<unsigned long long>(size) > 2 * static_cast<unsigned long long>(v);
  }
  PyObject* two = PyLong_FromLong(2);
  PyObject* twice = two ? PyNumber_Multiply(two, limit) : nullptr;
  PyObject* len = PyLong_FromSsize_t(size);
  int r = twice && len ? PyObject_RichCompareBool(len, twice, Py_GT) : -1;
  Py_XDECREF(two);
  Py_XDECREF(twice);
  Py_XDECREF(len);
  return r;
}

// The end of feed_data: pause the transport once the buffer holds more
// than twice the limit; a transport that cannot pause is forgotten.
int maybe_pause(PyObject* reader, PyObject* buffer) {
  PyObject* transport = PyObject_GetAttr(reader, s_transport);
  if (transport == nullptr) return -1;
  int rc = 0;
  if (transport != Py_None) {
    int paused = attr_is_true(reader, s_paused);
    int over = 0;
    if (paused == 0) {
      PyObject* limit = PyObject_GetAttr(reader, s_limit);
      over = limit ? over_limit(buffer, limit) : -1;
      Py_XDECREF(limit);
    }
    if (paused < 0 || over < 0) {
      rc = -1;
    } else if (over) {
      PyObject* r = PyObject_CallMethodNoArgs(transport, s_pause_reading);
      if (r != nullptr) {
        Py_DECREF(r);
        rc = PyObject_SetAttr(reader, s_paused, Py_True);
      } else if (PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
        PyErr_Clear();
        rc = PyObject_SetAttr(reader, s_transport, Py_None);
      } else {
        rc = -1;
      }
    }
  }
  Py_DECREF(transport);
  return rc;
}

}  // namespace

PyObject* set_stream_types(PyObject*, PyObject* args) {
  PyObject *protocol, *reader;
  if (!PyArg_ParseTuple(args, "OO", &protocol, &reader)) return nullptr;
  if (!intern(&s_reader_wr, "_stream_reader_wr") || !intern(&s_eof, "_eof") || !intern(&s_buffer, "_buffer") ||
      !intern(&s_waiter, "_waiter") || !intern(&s_transport, "_transport") || !intern(&s_paused, "_paused") ||
      !intern(&s_limit, "_limit") || !intern(&s_cancelled, "cancelled") || !intern(&s_set_result, "set_result") ||
      !intern(&s_pause_reading, "pause_reading")) {
    return nullptr;
  }
  if (!watch(protocol_class, protocol, "data_received", "_stream_reader") ||
      !watch(reader_class, reader, "feed_data", "_wakeup_waiter")) {
    return nullptr;
  }
  Py_RETURN_NONE;
}

bool is_plain_stream_protocol(PyObject* protocol) {
  return protocol_class.type != nullptr && Py_TYPE(protocol) == protocol_class.type && unchanged(protocol_class);
}

int feed_stream_reader(PyObject* protocol, const iovec* parts, int count, std::size_t total) {
  if (!is_plain_stream_protocol(protocol)) return 0;
  PyObject* reader = reader_of(protocol);
  if (reader == nullptr) return -1;
  if (reader == Py_None) {  // data_received drops what comes with no reader
    Py_DECREF(reader);
    return 1;
  }
  int rc = 0;
  PyObject* buffer = nullptr;
  if (Py_TYPE(reader) != reader_class.type || !unchanged(reader_class)) goto done;
  // At EOF feed_data asserts; let it, in Python.
  if ((rc = attr_is_true(reader, s_eof)) != 0) {
    rc = rc < 0 ? -1 : 0;
    goto done;
  }
  if (total == 0) {
    rc = 1;
    goto done;
  }
  buffer = PyObject_GetAttr(reader, s_buffer);
  if (buffer == nullptr) {
    rc = -1;
    goto done;
  }
  if (!PyByteArray_CheckExact(buffer)) goto done;  // rc 0: feed_data knows what to do with it
  if (extend(buffer, parts, count, total) < 0 || wake_waiter(reader) < 0 || maybe_pause(reader, buffer) < 0) {
    rc = -1;
  } else {
    rc = 1;
  }
done:
  Py_XDECREF(buffer);
  Py_DECREF(reader);
  return rc;
}

}  // namespace shardloop::py
