#include "shardloop/timer_heap.hpp"

namespace shardloop {

void TimerHeap::push(TimerNode* node) {
  node->seq = next_seq_++;
  heap_.push_back(Entry{key(node->when), node->seq, node});
  node->heap_index = heap_.size() - 1;
  sift_up(node->heap_index);
}

void TimerHeap::restore(TimerNode* node) {
  heap_.push_back(Entry{key(node->when), node->seq, node});
  node->heap_index = heap_.size() - 1;
  sift_up(node->heap_index);
}

TimerNode* TimerHeap::pop() noexcept {
  if (heap_.empty()) return nullptr;
  TimerNode* node = heap_.front().node;
  erase(node);
  return node;
}

void TimerHeap::erase(TimerNode* node) noexcept {
  std::size_t i = node->heap_index;
  if (i >= heap_.size() || heap_[i].node != node) return;
  Entry last = heap_.back();
  heap_.pop_back();
  node->heap_index = TimerNode::kNotScheduled;
  if (last.node == node) return;
  place(i, last);
  // The moved entry may belong above or below its new slot.
  sift_up(i);
  sift_down(last.node->heap_index);
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
