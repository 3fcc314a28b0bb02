// Per-P timer heaps; see runtime/timer.hpp.
#include "runtime/timer.hpp"

#include <sched.h>

#include <mutex>

namespace urge::runtime {

// A 4-ary heap is shallower than a binary one (log4 n levels), and each
// sift-down compares four children that sit in one or two cache lines.
static constexpr std::size_t kArity = 4;

void timer_heap::sift_up(std::size_t i) {
  timer* t = heap_[i];
  while (i > 0) {
    std::size_t parent = (i - 1) / kArity;
    if (t->when >= heap_[parent]->when) break;
    heap_[i] = heap_[parent];
    heap_[i]->index = static_cast<std::int32_t>(i);
    i = parent;
  }
  heap_[i] = t;
  t->index = static_cast<std::int32_t>(i);
}

void timer_heap::sift_down(std::size_t i) {
  const std::size_t n = heap_.size();
  timer* t = heap_[i];
  for (;;) {
    std::size_t first = i * kArity + 1;
    if (first >= n) break;
    std::size_t best = first;
    for (std::size_t c = first + 1; c < first + kArity && c < n; ++c) {
      if (heap_[c]->when < heap_[best]->when) best = c;
    }
    if (t->when <= heap_[best]->when) break;
    heap_[i] = heap_[best];
    heap_[i]->index = static_cast<std::int32_t>(i);
    i = best;
  }
  heap_[i] = t;
  t->index = static_cast<std::int32_t>(i);
}

void timer_heap::publish() {
  earliest_.store(heap_.empty() ? 0 : heap_[0]->when, std::memory_order_release);
  size_.store(heap_.size(), std::memory_order_relaxed);
}

void timer_heap::remove_at(std::size_t i) {
  timer* t = heap_[i];
  timer* last = heap_.back();
  heap_.pop_back();
  if (last != t) {
    heap_[i] = last;
    last->index = static_cast<std::int32_t>(i);
    sift_down(i);
    sift_up(static_cast<std::size_t>(last->index));
  }
  t->index = -1;
  t->heap.store(nullptr, std::memory_order_release);
}

timer_heap::~timer_heap() {
  std::vector<timer*> pending;
  pending.swap(heap_);
  for (timer* t : pending) {
    t->heap.store(nullptr, std::memory_order_relaxed);
    t->index = -1;
  }
  for (timer* t : pending) {
    if (t->discard) t->discard(t, t->arg, 0);  // may free t
  }
}

bool timer_heap::add(timer* t) {
  std::lock_guard lock(mu_);
  t->cancelled.store(false, std::memory_order_relaxed);
  t->heap.store(this, std::memory_order_release);
  heap_.push_back(t);
  sift_up(heap_.size() - 1);
  publish();
  return heap_[0] == t;
}

bool timer_heap::del(timer* t) {
  t->cancelled.store(true, std::memory_order_seq_cst);
  for (;;) {
    timer_heap* h = t->heap.load(std::memory_order_acquire);
    if (!h) break;
    std::lock_guard lock(h->mu_);
    if (t->heap.load(std::memory_order_relaxed) != h) continue;  // moved meanwhile: retry
    h->remove_at(static_cast<std::size_t>(t->index));
    h->publish();
    return true;
  }
  // Not in a heap: fired (one-shot) or firing. A periodic timer is out of its
  // heap only while its callback runs; wait for it, as Go's deltimer does.
  while (t->period > 0 && t->firing.load(std::memory_order_acquire)) sched_yield();
  return false;
}

int timer_heap::run_due(std::int64_t now) {
  int ran = 0;
  std::unique_lock lock(mu_);
  while (!heap_.empty() && heap_[0]->when <= now) {
    timer* t = heap_[0];
    timer_fn f = t->f;
    void* arg = t->arg;
    if (t->period > 0) {
      // Take it out while the callback runs (so del waits for it), then put it
      // back at its next multiple of the period after now.
      t->firing.store(true, std::memory_order_relaxed);
      remove_at(0);
      publish();
      lock.unlock();
      f(t, arg, now);
      lock.lock();
      // A del() that ran meanwhile set `cancelled` and now waits on `firing`:
      // leave the timer out. Otherwise re-arm it; a del() that comes later
      // finds it in the heap and removes it under the lock.
      if (!t->cancelled.load(std::memory_order_seq_cst)) {
        t->when += t->period * (1 + (now - t->when) / t->period);
        t->heap.store(this, std::memory_order_release);
        heap_.push_back(t);
        sift_up(heap_.size() - 1);
      }
      t->firing.store(false, std::memory_order_release);
    } else {
      remove_at(0);
      publish();
      lock.unlock();
      f(t, arg, now);  // t may be gone from here on
      lock.lock();
    }
    ++ran;
  }
  publish();
  return ran;
}

}  // namespace urge::runtime
