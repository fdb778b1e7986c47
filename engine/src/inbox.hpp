// The cross-thread inbox: moodycamel's lock-free MPMC queue, drained in bulk
// by its owner thread only, behind the gate that makes closing it safe.
// One type for both places work arrives from foreign threads: a Loop's
// call_soon_threadsafe and a Runtime shard's posts from non-shard threads.
//
// The gate: writers announce themselves before looking at `closed`; close()
// sets `closed` and then waits for the announced writers. So no push lands
// in a queue that its owner has started to settle, and nothing a writer
// touches after its push (the wake-up of a sleeping owner) is freed under it.
// Writers holding an embedder's lock that the owner holds too (the GIL) use
// push_locked() instead: a plain FIFO of chunks, no gate.
#pragma once

#include <concurrentqueue/concurrentqueue.h>

#include <atomic>
#include <cstddef>
#include <limits>
#include <new>
#include <thread>

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
  // Any thread. False when the inbox is closed (`work` untouched). Throws
  // std::bad_alloc when the queue cannot grow: the caller still owns `work`
  // and must hear that it was not queued. `wake` runs after the push, while
  // this writer is still announced, so it may touch what close() guards.
  //
  // Only the push that raises the flag runs `wake`. One that finds it up
  // follows a push the owner has not drained yet, whose `wake` already made
  // sure the owner will not sleep past it: the owner looks at the flag (not
  // at the queue) before it sleeps, and the flag stays up until a drain,
  // which takes this item too (drain() lowers the flag with an exchange
  // that reads this push's, so the item is visible to it). A burst of pushes so pays for one fence and
  // one look at the owner's sleep state, not one each.
  template <typename Wake>
  bool push(const Work& work, Wake&& wake) {
    Announced announced{writers_};
    if (closed_.load(std::memory_order_seq_cst)) return false;
    if (!queue_.enqueue(work)) throw std::bad_alloc();
    if (!pending_.exchange(true, std::memory_order_acq_rel)) wake();
    return true;
  }

  Inbox() = default;
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;
  // Work still queued is not discarded here: its owner drains it first.
  ~Inbox() {
    free_chunks(head_);
    free_chunks(spare_);
  }

  // push() for a writer holding a lock that close() and every drain() also
  // hold (a Python loop's GIL): the lock orders this push against them, so
  // it needs neither the gate nor a read-modify-write of the flag, and its
  // work goes to a plain FIFO of chunks that only the lock guards, not to
  // the lock-free queue. The owner may look at the flag without the lock
  // (before it sleeps, or a Runtime's idle watch), so the push that raises
  // it still runs `wake`, which fences before it looks at the owner's sleep
  // state, as push()'s does. One that finds the flag up relies on a drain
  // still to come, which the lock orders after it. Locked pushes keep their
  // order among themselves; a drain hands over the lock-free queue's items
  // before theirs.
  template <typename Wake>
  bool push_locked(const Work& work, Wake&& wake) {
    if (closed_.load(std::memory_order_relaxed)) return false;
    if (tail_ == nullptr || tail_pos_ == Chunk::kItems) add_chunk();  // may throw: `work` is still the caller's
    tail_->items[tail_pos_++] = work;
    if (pending_.load(std::memory_order_relaxed)) return true;
    pending_.store(true, std::memory_order_release);
    wake();
    return true;
  }

  // Any thread: runs `fn` unless the inbox is closed, as a writer would.
  template <typename Fn>
  void if_open(Fn&& fn) {
    Announced announced{writers_};
    if (!closed_.load(std::memory_order_seq_cst)) fn();
  }

  // Refuses pushes from now on, and returns once the writers that got past
  // the gate before are done. Idempotent.
  void close() noexcept {
    closed_.store(true, std::memory_order_seq_cst);
    while (writers_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }

  // Raised by every push: cheap to look at each iteration, unlike the queue.
  bool pending() const noexcept { return pending_.load(std::memory_order_acquire); }
  const std::atomic<bool>& pending_flag() const noexcept { return pending_; }

  // Owner thread: hands up to `limit` items to `sink` in queue order and
  // returns how many. The flag is cleared first (a push racing with the
  // drain raises it again) and raised again when the limit cut the drain
  // short. `sink` may throw (out of memory while queueing): what was taken
  // out but not handed over is discarded (its owner released), not leaked.
  template <typename Sink>
  std::size_t drain(Sink&& sink, std::size_t limit = std::numeric_limits<std::size_t>::max()) {
    pending_.exchange(false, std::memory_order_acq_rel);
    Work batch[64];
    std::size_t taken = 0, n;
    while (taken < limit && (n = queue_.try_dequeue_bulk(batch, 64)) != 0) {
      taken += n;
      std::size_t i = 0;
      try {
        for (; i < n; ++i) sink(batch[i]);
      } catch (...) {
        for (; i < n; ++i) batch[i].discard();
        throw;
      }
    }
    if (taken < limit && head_ != nullptr) taken += drain_locked(sink, limit - taken);
    if (taken >= limit) pending_.store(true, std::memory_order_relaxed);
    return taken;
  }

 private:
  // push_locked()'s FIFO: chunks of a page, linked oldest to newest. An
  // emptied chunk is kept for reuse, so a loop that had a burst of N
  // pending items keeps N * 16 bytes (as the lock-free queue keeps its
  // blocks) and never copies or touches fresh memory for the next one.
  struct Chunk {
    static constexpr std::size_t kItems = 255;  // 4088 bytes
    Chunk* next;
    Work items[kItems];
  };

  void add_chunk() {
    Chunk* chunk = spare_;
    if (chunk != nullptr) {
      spare_ = chunk->next;
    } else {
      chunk = static_cast<Chunk*>(::operator new(sizeof(Chunk)));  // throws std::bad_alloc
    }
    chunk->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = chunk;
    } else {
      head_ = chunk;
      head_pos_ = 0;
    }
    tail_ = chunk;
    tail_pos_ = 0;
  }

  // drain()'s part for push_locked()'s items, under the lock, in push
  // order (a sink's own locked pushes included). An item the sink throws
  // on is discarded and the rest stay queued, with the flag raised again so
  // a later drain takes them.
  template <typename Sink>
  std::size_t drain_locked(Sink& sink, std::size_t limit) {
    std::size_t n = 0;
    while (n < limit) {
      if (head_ == tail_) {
        if (head_pos_ == tail_pos_) {
          head_pos_ = tail_pos_ = 0;  // empty: the last chunk stays for the next push
          break;
        }
      } else if (head_pos_ == Chunk::kItems) {
        Chunk* done = head_;
        head_ = done->next;
        head_pos_ = 0;
        done->next = spare_;
        spare_ = done;
        continue;
      }
      const Work& work = head_->items[head_pos_++];
      ++n;
      try {
        sink(work);
      } catch (...) {
        work.discard();
        pending_.store(true, std::memory_order_relaxed);
        throw;
      }
    }
    return n;
  }

  static void free_chunks(Chunk* chunk) noexcept {
    while (chunk != nullptr) {
      Chunk* next = chunk->next;
      ::operator delete(chunk);
      chunk = next;
    }
  }

  // Released on every way out of a writer, a failed push's throw included:
  // close() waits for this count.
  struct Announced {
    std::atomic<int>& writers;
    explicit Announced(std::atomic<int>& w) : writers(w) { writers.fetch_add(1, std::memory_order_seq_cst); }
    ~Announced() { writers.fetch_sub(1, std::memory_order_release); }
  };

  moodycamel::ConcurrentQueue<Work, InboxTraits> queue_;
  // push_locked()'s chunks (head_pos_: the oldest item's slot in head_,
  // tail_pos_: the next free one in tail_) and the emptied ones kept for
  // reuse; all guarded by the embedder's lock.
  Chunk* head_ = nullptr;
  Chunk* tail_ = nullptr;
  std::size_t head_pos_ = 0;
  std::size_t tail_pos_ = 0;
  Chunk* spare_ = nullptr;
  std::atomic<int> writers_{0};
  std::atomic<bool> closed_{false};
  // Its own cache line: written by every push, read by the owner each
  // iteration.
  alignas(64) std::atomic<bool> pending_{false};
};

}  // namespace shardloop
