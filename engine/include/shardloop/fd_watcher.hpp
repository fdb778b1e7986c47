// Readiness of one file descriptor (uv_poll_t): what add_reader/add_writer
// and the sock_* methods are built on.
#pragma once

#include <uv.h>

#include "shardloop/owned_handle.hpp"

namespace shardloop {

class FdWatcher final : public OwnedHandle {
 public:
  static constexpr int kReadable = UV_READABLE;
  static constexpr int kWritable = UV_WRITABLE;
  // `events` is the subset of the watched events that are ready; an error
  // on the fd reports every watched event, as a selector would.
  using Callback = void (*)(void* ctx, int events) noexcept;

  // With `duplicate`, watches a private duplicate of `fd`: an owner that
  // closes its fd while a watch is set (asyncio tolerates that) then cannot
  // make libuv register a dead fd, or collide with the next fd given that
  // number. Without (a listener that must not spend a descriptor), or when
  // out of descriptors, watches `fd` itself.
  // Throws std::system_error (e.g. EPERM for a regular file).
  static FdWatcher* open(Loop& loop, int fd, Callback callback, void* ctx, bool duplicate = true);

  // Starts watching `events` (kReadable | kWritable); 0 stops.
  void watch(int events);
  int events() const noexcept { return events_; }
  int fd() const noexcept { return fd_; }

 private:
  FdWatcher(Loop& loop, int fd, Callback callback, void* ctx);
  ~FdWatcher() override = default;
  uv_handle_t* uv_handle() noexcept override { return reinterpret_cast<uv_handle_t*>(&poll_); }
  void on_close() noexcept override;
  static void on_poll(uv_poll_t* handle, int status, int events);

  uv_poll_t poll_{};
  Callback callback_;
  void* ctx_;
  int fd_;
  int poll_fd_ = -1;  // our duplicate of fd_, -1 when watching fd_ itself
  int events_ = 0;
};

}  // namespace shardloop
