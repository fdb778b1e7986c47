#include "shardloop/timer_heap.hpp"

#include <algorithm>
#include <stdexcept>

namespace shardloop {

void TimerHeap::push(TimerNode* node) {
  node->seq = next_seq_++;
  insert(node);
}

void TimerHeap::restore(TimerNode* node) { insert(node); }

namespace {
// Geometric growth for reserve(), which alone would grow by exactly one.
template <typename V>
void make_room(V& v, std::size_t n) {
  if (v.capacity() < n) v.reserve(std::max<std::size_t>(n, 2 * v.capacity()));
}
}  // namespace

// Everything that can allocate happens before anything changes, so a
// bad_alloc leaves the heap as it was, and remove_at() never allocates.
void TimerHeap::insert(TimerNode* node) {
  make_room(heap_, heap_.size() + 1);
  Slot slot;
  if (free_slots_.empty()) {
    if (nodes_.size() >= std::numeric_limits<Slot>::max()) throw std::length_error("too many timers");
    const std::size_t n = nodes_.size() + 1;
    make_room(nodes_, n);
    make_room(pos_, n);
    make_room(free_slots_, n);
    slot = static_cast<Slot>(nodes_.size());
    nodes_.push_back(node);
    pos_.push_back(0);
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
    nodes_[slot] = node;
  }
  node->heap_slot = slot;
  heap_.push_back(Entry{key(node->when), node->seq, slot});
  sift_up(heap_.size() - 1);
}

TimerNode* TimerHeap::pop() noexcept {
  if (heap_.empty()) return nullptr;
  TimerNode* node = nodes_[heap_.front().slot];
  remove_at(0);
  return node;
}

void TimerHeap::erase(TimerNode* node) noexcept {
  std::size_t slot = node->heap_slot;
  if (slot >= nodes_.size() || nodes_[slot] != node) return;
  remove_at(pos_[slot]);
}

void TimerHeap::remove_at(std::size_t i) noexcept {
  const Slot slot = heap_[i].slot;
  nodes_[slot]->heap_slot = TimerNode::kNotScheduled;
  nodes_[slot] = nullptr;
  free_slots_.push_back(slot);  // within the capacity insert() reserved
  Entry last = heap_.back();
  heap_.pop_back();
  if (i == heap_.size()) return;
  place(i, last);
  // The moved entry may belong above or below its new slot.
  sift_up(i);
  sift_down(pos_[last.slot]);
}

void TimerHeap::sift_up(std::size_t i) noexcept {
  Entry entry = heap_[i];
  while (i > 0) {
    std::size_t parent = (i - 1) / kArity;
    if (!before(entry, heap_[parent])) break;
    place(i, heap_[parent]);
    i = parent;
  }
  place(i, entry);
}

void TimerHeap::sift_down(std::size_t i) noexcept {
  Entry entry = heap_[i];
  const std::size_t n = heap_.size();
  for (;;) {
    std::size_t first = kArity * i + 1;
    if (first >= n) break;
    std::size_t child = first;
    const std::size_t last = first + kArity < n ? first + kArity : n;
    for (std::size_t c = first + 1; c < last; ++c) {
      if (before(heap_[c], heap_[child])) child = c;
    }
    if (!before(heap_[child], entry)) break;
    place(i, heap_[child]);
    i = child;
  }
  place(i, entry);
}

}  // namespace shardloop
