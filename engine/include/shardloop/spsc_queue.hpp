// Single-producer/single-consumer FIFO between two threads: a bounded ring
// on the fast path; when the ring is full the producer links a fresh ring
// behind it and carries on there, so a push never blocks, never fails (short
// of memory) and never reorders. The consumer frees a ring once it has
// emptied it and found the next one linked.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <utility>

namespace shardloop {

template <typename T>
class SpscQueue {
 public:
  // `capacity` is rounded up to a power of two.
  explicit SpscQueue(std::size_t capacity = 1024) {
    std::size_t cap = 16;
    while (cap < capacity) cap *= 2;
    cap_ = cap;
    Segment* seg = new Segment(cap_);
    prod_.seg = cons_.seg = seg;
  }
  ~SpscQueue() {
    Segment* seg = cons_.seg;
    while (seg) {
      Segment* next = seg->next.load(std::memory_order_relaxed);
      delete seg;
      seg = next;
    }
  }
  SpscQueue(const SpscQueue&) = delete;
  SpscQueue& operator=(const SpscQueue&) = delete;

  // Producer thread. Publishes with release order; the caller adds the
  // fence its wake-up protocol needs.
  void push(T value) {
    Segment* seg = prod_.seg;
    if (prod_.tail - prod_.head_cache == seg->mask + 1) {
      prod_.head_cache = seg->head.load(std::memory_order_acquire);
      if (prod_.tail - prod_.head_cache == seg->mask + 1) {
        overflow(std::move(value));
        return;
      }
    }
    seg->slots[prod_.tail & seg->mask] = std::move(value);
    seg->tail.store(++prod_.tail, std::memory_order_release);
  }

  // Times the ring was full and a new one was linked (producer thread).
  std::size_t overflows() const noexcept { return prod_.overflows; }

  // Consumer thread: whether anything is queued (exact once the producer's
  // push and this load are ordered by the caller's fences).
  bool empty() const noexcept {
    const Segment* seg = cons_.seg;
    if (seg->tail.load(std::memory_order_acquire) != cons_.head) return false;
    return seg->next.load(std::memory_order_acquire) == nullptr;
  }

  // Consumer thread: hands `sink` every item queued when the call started
  // (later pushes wait for the next call); returns how many.
  template <typename Sink>
  std::size_t drain(Sink&& sink) {
    std::size_t n = 0;
    Segment* seg = cons_.seg;
    for (;;) {
      std::size_t tail = seg->tail.load(std::memory_order_acquire);
      std::size_t head = cons_.head;
      if (head == tail) {
        Segment* next = seg->next.load(std::memory_order_acquire);
        if (next == nullptr) break;
        // The producer writes no more to `seg` once `next` is linked, but
        // its last items may have been published just before the link.
        if (seg->tail.load(std::memory_order_acquire) != head) continue;
        delete seg;
        seg = cons_.seg = next;
        cons_.head = 0;
        // Bounded even when the sink keeps the producer overflowing (a
        // shard sending to itself): the rest waits for the next call.
        if (n >= cap_) break;
        continue;
      }
      for (; head != tail; ++head) {
        T item = std::move(seg->slots[head & seg->mask]);
        ++n;
        cons_.head = head + 1;
        seg->head.store(head + 1, std::memory_order_release);
        sink(item);
        // A sink may have pushed to this very queue (a shard sending to
        // itself): those wait for the next call, `tail` was read once.
      }
      cons_.head = head;
      if (seg->next.load(std::memory_order_acquire) == nullptr) break;
    }
    return n;
  }

 private:
  struct Segment {
    explicit Segment(std::size_t cap) : mask(cap - 1), slots(new T[cap]) {}
    alignas(64) std::atomic<std::size_t> tail{0};  // producer writes
    alignas(64) std::atomic<std::size_t> head{0};  // consumer writes
    alignas(64) std::atomic<Segment*> next{nullptr};
    const std::size_t mask;
    std::unique_ptr<T[]> slots;
  };

  void overflow(T value) {
    Segment* seg = new Segment(cap_);
    seg->slots[0] = std::move(value);
    seg->tail.store(1, std::memory_order_relaxed);
    prod_.seg->next.store(seg, std::memory_order_release);
    prod_.seg = seg;
    prod_.tail = 1;
    prod_.head_cache = 0;
    ++prod_.overflows;
  }

  std::size_t cap_;
  struct alignas(64) {
    Segment* seg;
    std::size_t tail = 0;
    std::size_t head_cache = 0;
    std::size_t overflows = 0;
  } prod_;
  struct alignas(64) {
    Segment* seg;
    std::size_t head = 0;
  } cons_;
};

}  // namespace shardloop
