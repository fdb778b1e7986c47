// Engine objects that own a libuv handle register with their loop, so that
// Loop::close() can close whatever their owners left open.
#pragma once

namespace shardloop {

class Loop;

class OwnedHandle {
 public:
  OwnedHandle(const OwnedHandle&) = delete;
  OwnedHandle& operator=(const OwnedHandle&) = delete;

  // Stops callbacks at once and closes the libuv handle; idempotent. The
  // object is freed once libuv is done with it and its owner has let go.
  virtual void close() noexcept = 0;

 protected:
  explicit OwnedHandle(Loop& loop);
  virtual ~OwnedHandle();
  // Called by close(): the loop no longer needs to close this one.
  void detach() noexcept;

  Loop& loop_;

 private:
  friend class Loop;
  OwnedHandle* prev_ = nullptr;
  OwnedHandle* next_ = nullptr;
  bool attached_ = false;
};

}  // namespace shardloop
