#include "shardloop/owned_handle.hpp"

#include "shardloop/loop.hpp"

namespace shardloop {

OwnedHandle::OwnedHandle(Loop& loop) : loop_(loop) { loop.adopt(this); }

OwnedHandle::~OwnedHandle() {
  if (attached_) loop_.disown(this);
}

void OwnedHandle::close() noexcept {
  if (closed_) return;
  closed_ = true;
  on_close();
  if (attached_) loop_.disown(this);
  close_handle();
}

void OwnedHandle::close_handle() noexcept {
  uv_handle_t* handle = uv_handle();
  handle->data = this;
  uv_close(handle, [](uv_handle_t* h) { static_cast<OwnedHandle*>(h->data)->handle_closed(); });
}

void OwnedHandle::handle_closed() noexcept {
  uv_closed_ = true;
  maybe_delete();
}

void OwnedHandle::release() noexcept {
  close();
  released_ = true;
  maybe_delete();
}

void OwnedHandle::maybe_delete() noexcept {
  if (uv_closed_ && released_) delete this;
}

}  // namespace shardloop
