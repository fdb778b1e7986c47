#include "shardloop/owned_handle.hpp"

#include "shardloop/loop.hpp"

namespace shardloop {

OwnedHandle::OwnedHandle(Loop& loop) : loop_(loop) { loop.adopt(this); }

OwnedHandle::~OwnedHandle() { detach(); }

void OwnedHandle::detach() noexcept {
  if (attached_) loop_.disown(this);
}

}  // namespace shardloop
