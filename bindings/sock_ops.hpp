// The sock_* methods of shardloop._core.Loop: asyncio's selector-loop
// semantics (try the call at once; only when the kernel says "later", a
// future that the engine's SockWaits completes on readiness), with the
// system calls of sock_recv, sock_recv_into and sock_sendall made here.
#pragma once

#include "common.hpp"

namespace shardloop::py {

struct LoopObject;
struct SockOps;

SockOps* sock_ops_new();
void sock_ops_free(SockOps* ops);
// Drops every waiting operation (their futures stay pending, as asyncio's
// do when the loop closes) and the engine's SockWaits.
void sock_ops_clear(LoopObject* loop);
int sock_ops_traverse(SockOps* ops, visitproc visit, void* arg);
// Before the loop first runs: the epoll set sock_* calls wait in, made
// now so a call near the descriptor limit needs no new fd. Quietly left
// for the first wait to make (and report) if it cannot be made now.
void sock_ops_prepare(LoopObject* loop) noexcept;
// In a fork child: a fresh epoll set for the waiting sockets.
void sock_ops_after_fork(LoopObject* loop);

// add_reader/add_writer and remove_* take over fd's side (0 reader, 1
// writer) from a sock_* call waiting there, as asyncio's selector replaces
// the call's handle: its future is left pending. True when a call was
// waiting (its future not yet done).
bool sock_ops_displace(LoopObject* loop, int fd, int side);

// _core._set_socket_types(socket.socket, ssl.SSLSocket or None)
PyObject* set_socket_types(PyObject* module, PyObject* args);

// Loop methods. Each returns the result when the call completes at once,
// else a pending future (the Python layer awaits it).
PyObject* loop_sock_recv(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_sock_recv_into(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_sock_recvfrom(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_sock_recvfrom_into(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_sock_sendto(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_sock_sendall(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* loop_sock_accept(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
// _sock_connect(sock, address): address already resolved by the caller.
PyObject* loop_sock_connect(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);
// _sock_forget(sock, future): the awaiting coroutine was cancelled (or its
// future failed): stop waiting now rather than at the socket's next event.
PyObject* loop_sock_forget(LoopObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace shardloop::py
