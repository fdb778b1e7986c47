// add_reader/add_writer of shardloop._core.Loop: one FdWatcher per fd, whose
// readiness queues the registered Handle like any ready callback.
#pragma once

#include "common.hpp"

namespace shardloop::py {

struct LoopObject;
struct FdWatches;

FdWatches* fd_watches_new();
// Drops every watch (the loop is closing or being collected).
void fd_watches_clear(LoopObject* loop);
void fd_watches_free(FdWatches* watches);
int fd_watches_traverse(FdWatches* watches, visitproc visit, void* arg);

// Loop methods: _add_reader(fd, callback, *args) -> Handle, _remove_reader(fd)
// -> bool and the writer pair; the Python layer converts file objects first.
PyObject* loop_add_reader(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_add_writer(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
// _add_listener(fd, callback, *args): _add_reader for a listening socket,
// watched without spending a descriptor on a duplicate (accepting near the
// descriptor limit must not compete with its own watch).
PyObject* loop_add_listener(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_remove_reader(LoopObject* self, PyObject* fd);
// _ring_accept_start(fd, callback) -> bool: on an io_uring loop whose
// kernel has multishot accept, the listening socket fd accepts on the ring
// and callback(new_fd) runs for each connection, callback(-errno) for a
// failure (acceptor.hpp says which); False: accept on readiness instead.
// _ring_accept_stop(fd) -> bool: stops it (the kernel lets go of fd before
// this returns when it can); False if fd was not accepting on the ring.
PyObject* loop_ring_accept_start(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_ring_accept_stop(LoopObject* self, PyObject* fd);
// _ring_accept_resume(fd) -> bool: accepting starts again after the
// callback heard of running out of descriptors (-EMFILE and the like).
PyObject* loop_ring_accept_resume(LoopObject* self, PyObject* fd);
// _note_fileobj(fd, fileobj): remembers the file object of fd's watch (until
// the watch goes); _watched_fd(fileobj) -> the fd of the watch noted with
// that very object, or None: how a socket closed while watched is found.
PyObject* loop_note_fileobj(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_watched_fd(LoopObject* self, PyObject* fileobj);
PyObject* loop_remove_writer(LoopObject* self, PyObject* fd);
// A sock_* call starts waiting on fd's side (0 reader, 1 writer): the
// add_reader/add_writer callback there is cancelled and removed, as
// asyncio's selector replaces it. 1 if there was one, 0 if not, -1 with an
// error raised (its cancel() failed; it is removed all the same).
int fd_watch_take_side(LoopObject* loop, int fd, int side);

}  // namespace shardloop::py
