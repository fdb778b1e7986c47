// The cross-thread inbox: moodycamel's lock-free MPMC queue, drained in bulk
// by the loop thread only.
#pragma once

#include <concurrentqueue/concurrentqueue.h>

#include <cstddef>
#include <new>

#include "shardloop/work.hpp"

namespace shardloop {

// The queue allocates through operator new (nothrow): an allocation failure
// is then the same event here as everywhere else in the engine.
struct InboxTraits : moodycamel::ConcurrentQueueDefaultTraits {
  static void* malloc(std::size_t size) { return ::operator new(size, std::nothrow); }
  static void free(void* ptr) { ::operator delete(ptr); }
};

class Inbox {
 public:
  // Throws std::bad_alloc when the queue cannot grow: the caller still owns
  // `work` and must hear that it was not queued.
  void push(const Work& work) {
    if (!queue_.enqueue(work)) throw std::bad_alloc();
  }
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
  moodycamel::ConcurrentQueue<Work, InboxTraits> queue_;
};

}  // namespace shardloop
