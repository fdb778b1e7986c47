// An engine object other than a Stream that has operations on its loop's
// io_uring (Acceptor, Connector): the ring hands each of their completions
// to on_ring_completion(). Their SQEs carry Ring::client_tag(this), the
// address of this base; the object lives at least until the last
// completion of every operation it submitted has been handed over.
#pragma once

namespace shardloop {

class RingClient {
 public:
  RingClient(const RingClient&) = delete;
  RingClient& operator=(const RingClient&) = delete;

  // One completion (`res`, `flags` as in the CQE); called by Ring only, on
  // the loop's thread. Multishot operations report IORING_CQE_F_MORE on
  // every completion but their last. May delete the object.
  virtual void on_ring_completion(int res, unsigned flags) noexcept = 0;

 protected:
  RingClient() = default;
  ~RingClient() = default;
};

}  // namespace shardloop
