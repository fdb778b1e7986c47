// The read half of asyncio's streams, done natively: bytes a transport read
// for an asyncio.StreamReaderProtocol go straight into its StreamReader's
// buffer, as StreamReaderProtocol.data_received -> StreamReader.feed_data
// would put them, without the four Python frames and the bytes object in
// between. Both classes stay asyncio's own; only their unchanged methods
// are stood in for (see feed_stream_reader).
#pragma once

#include <sys/uio.h>

#include "common.hpp"

namespace shardloop::py {

// _core._set_stream_types(StreamReaderProtocol, StreamReader): the classes
// whose data_received / feed_data the native feed stands for.
PyObject* set_stream_types(PyObject* module, PyObject* args);

// Whether `protocol` is exactly asyncio's StreamReaderProtocol with its own
// data_received: a transport may then use feed_stream_reader for it.
bool is_plain_stream_protocol(PyObject* protocol);

// Feeds the `count` pieces (`total` bytes) to `protocol`'s reader.
// Returns 1 when done natively (the reader had its bytes, or the protocol
// had no reader, as data_received would drop them), 0 when the caller must
// call protocol.data_received itself (a StreamReader subclass, a changed
// class, a reader at EOF: asyncio's code then runs, with its errors), and
// -1 with a Python error set when a step failed as it would have in
// feed_data (the transport reports it as data_received's failure).
int feed_stream_reader(PyObject* protocol, const iovec* parts, int count, std::size_t total);

}  // namespace shardloop::py
