// Engine objects that own a libuv handle share one lifecycle: they register
// with their loop (so Loop::close() closes whatever their owners left open),
// close() stops callbacks at once, and the object is freed when both libuv
// has finished closing the handle and its owner has called release().
#pragma once

#include <uv.h>

namespace shardloop {

class Loop;

class OwnedHandle {
 public:
  OwnedHandle(const OwnedHandle&) = delete;
  OwnedHandle& operator=(const OwnedHandle&) = delete;

  // Stops callbacks and closes the libuv handle; idempotent.
  void close() noexcept;
  // close(), and the owner will not touch this object again.
  void release() noexcept;
  bool closed() const noexcept { return closed_; }

 protected:
  explicit OwnedHandle(Loop& loop);
  virtual ~OwnedHandle();
  virtual uv_handle_t* uv_handle() noexcept = 0;
  // Runs first in close(): cancel what the subclass has in flight.
  virtual void on_close() noexcept {}
  // Runs last in close(): gives the handle back to libuv. An object whose
  // resource is not a libuv handle (an io_uring stream) overrides it and
  // calls handle_closed() itself, later, never from inside close().
  virtual void close_handle() noexcept;
  void handle_closed() noexcept;

  Loop& loop_;

 private:
  friend class Loop;
  void maybe_delete() noexcept;

  OwnedHandle* prev_ = nullptr;
  OwnedHandle* next_ = nullptr;
  bool attached_ = false;
  bool closed_ = false;
  bool uv_closed_ = false;
  bool released_ = false;
};

}  // namespace shardloop
