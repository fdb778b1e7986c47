#include "shardloop/timer_heap.hpp"

namespace shardloop {

void TimerHeap::push(TimerNode* node) {
  node->seq = next_seq_++;
  heap_.push_back(node);
  node->heap_index = heap_.size() - 1;
  sift_up(node->heap_index);
}

TimerNode* TimerHeap::pop() noexcept {
  if (heap_.empty()) return nullptr;
  TimerNode* node = heap_.front();
  erase(node);
  return node;
}

void TimerHeap::erase(TimerNode* node) noexcept {
  std::size_t i = node->heap_index;
  if (i >= heap_.size() || heap_[i] != node) return;
  TimerNode* last = heap_.back();
  heap_.pop_back();
  node->heap_index = TimerNode::kNotScheduled;
  if (last == node) return;
  place(i, last);
  // The moved node may belong above or below its new slot.
  sift_up(i);
  sift_down(last->heap_index);
}

void TimerHeap::sift_up(std::size_t i) noexcept {
  TimerNode* node = heap_[i];
  while (i > 0) {
    std::size_t parent = (i - 1) / 2;
    if (!before(node, heap_[parent])) break;
    place(i, heap_[parent]);
    i = parent;
  }
  place(i, node);
}

void TimerHeap::sift_down(std::size_t i) noexcept {
  TimerNode* node = heap_[i];
  const std::size_t n = heap_.size();
  for (;;) {
    std::size_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && before(heap_[child + 1], heap_[child])) ++child;
    if (!before(heap_[child], node)) break;
    place(i, heap_[child]);
    i = child;
  }
  place(i, node);
}

}  // namespace shardloop
