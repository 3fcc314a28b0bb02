// Per-P timers (Go's runtime/time.go): a 4-ary min-heap per P.
//
// Each P owns a heap of timers ordered by `when`. The P's own M checks it at
// every schedule; an idle M checks the other Ps' heaps while stealing, and
// the M that blocks waiting for work sleeps until the earliest `when` over all
// Ps (see "Timed wait" in runtime/proc.cpp), so a timer on a P whose M is busy
// still fires on time. A heap is protected by its own lock; `earliest` mirrors
// the top for lock-free peeks (Go's timer0When).
//
// Lifetime contract (Go relies on the GC here; we state it):
//  - A one-shot timer is not touched by the runtime once its callback has been
//    called: the callback may free or reuse it.
//  - A periodic timer must stay valid until del() returns; del() waits for a
//    callback in progress to finish.
//  - Callbacks run on an M with a P, on whatever stack the scheduler is on,
//    and must not block or switch goroutines; readying a goroutine or a
//    non-blocking channel send is what they are for.
//  - When run() ends, the heaps go with their Ps: each timer still pending is
//    unlinked (a later del() finds it in no heap and returns false) and its
//    `discard` is called, so that state only the pending timer held (after()'s
//    channel reference, a timer handle's second reference) is freed, not
//    leaked.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "runtime/lock.hpp"

namespace urge::runtime {

struct timer;
class timer_heap;
using timer_fn = void (*)(timer* t, void* arg, std::int64_t now);

struct timer {
  std::int64_t when = 0;    // nanotime at which to fire; heap owner's lock
  std::int64_t period = 0;  // > 0: periodic
  timer_fn f = nullptr;
  void* arg = nullptr;
  // Called instead of f, with `now` 0, if the timer is still pending when its
  // heap is destroyed (run() ended); may free the timer. Optional.
  timer_fn discard = nullptr;
  // The heap holding this timer, or nullptr. Written under that heap's lock.
  std::atomic<timer_heap*> heap{nullptr};
  std::int32_t index = -1;             // position in heap; heap's lock
  std::atomic<bool> firing{false};     // a periodic callback is running
  std::atomic<bool> cancelled{false};  // del() was called: do not re-arm a periodic timer
};

class timer_heap {
 public:
  timer_heap() = default;
  timer_heap(const timer_heap&) = delete;
  timer_heap& operator=(const timer_heap&) = delete;
  // Unlinks every pending timer and calls its discard (see the contract).
  // Single-threaded: run() has joined every thread.
  ~timer_heap();

  // Adds t (not in any heap) firing at t->when. Returns true if it became the
  // earliest timer of this heap (the caller may need to wake a sleeping M).
  bool add(timer* t);
  // Removes t if it has not fired; true if it was removed. For a periodic timer
  // also waits out a callback in progress.
  static bool del(timer* t);
  // Runs the callbacks of every timer due at `now`; returns how many ran.
  int run_due(std::int64_t now);
  // The earliest `when`, or 0 when empty (lock-free peek).
  std::int64_t earliest() const { return earliest_.load(std::memory_order_acquire); }
  std::size_t size() const { return size_.load(std::memory_order_relaxed); }

 private:
  void sift_up(std::size_t i);
  void sift_down(std::size_t i);
  void remove_at(std::size_t i);  // needs mu_
  void publish();                 // needs mu_

  futex_mutex mu_;
  std::vector<timer*> heap_;  // mu_
  std::atomic<std::int64_t> earliest_{0};
  std::atomic<std::size_t> size_{0};
};

}  // namespace urge::runtime
