// The cross-thread inbox: moodycamel's lock-free MPMC queue, drained in bulk
// by the loop thread only.
#pragma once

#include <concurrentqueue/concurrentqueue.h>

#include "shardloop/work.hpp"

namespace shardloop {

class Inbox {
 public:
  void push(const Work& work) { queue_.enqueue(work); }
  bool maybe_nonempty() const { return queue_.size_approx() != 0; }

  template <typename Sink>
  void drain(Sink&& sink) {
    Work batch[64];
    std::size_t n;
    while ((n = queue_.try_dequeue_bulk(batch, 64)) != 0) {
      std::size_t i = 0;
      try {
        for (; i < n; ++i) sink(batch[i]);
      } catch (...) {
        // Out of memory while queueing: what was taken out but not queued
        // is discarded (its owner is released) rather than leaked.
        for (; i < n; ++i) batch[i].discard();
        throw;
      }
    }
  }

 private:
  moodycamel::ConcurrentQueue<Work> queue_;
};

}  // namespace shardloop
