// The runtime's own lock (Go's lock_futex.go): spin briefly, then sleep on
// a futex. Used for the scheduler's global state, per-P timer heaps and
// channels. Runtime code never switches goroutines while holding one (the
// unlock of a parking goroutine's lock happens after the switch, see
// "Parking" in runtime/proc.cpp), so a holder is always running and the
// spin usually succeeds.
//
// Tried and rejected: unlocking with a plain store instead of the exchange,
// with sleepers counted apart and a membarrier(2) on the sleeping side to
// keep wake-ups from being lost. A locked instruction costs ~2.5 ns in a
// loop of them, but in a channel round trip (four lock/unlock pairs) its
// latency overlaps the switch: no gain at one P, 4% slower at two, and 2%
// more instructions.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>

#include "platform/futex.hpp"
#include "runtime/preempt.hpp"

namespace urge::runtime {

class futex_mutex {
 public:
  // Holding a runtime lock makes the thread unsafe for asynchronous
  // preemption (see "Unsafe points" in runtime/preempt.hpp).
  void lock() {
    ++preempt_off;
    std::uint32_t c = 0;
    if (key_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
    lock_slow();
  }
  bool try_lock() {
    std::uint32_t c = 0;
    if (!key_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return false;
    ++preempt_off;
    return true;
  }
  void unlock() {
    if (key_.exchange(0, std::memory_order_release) == 2) platform::futex_wake(&key_, 1);
    --preempt_off;
  }

 private:
  void lock_slow() {
    // Active spinning first: the holder is running on another CPU.
    for (int i = 0; i < 64; ++i) {
      std::uint32_t c = 0;
      if (key_.load(std::memory_order_relaxed) == 0 &&
          key_.compare_exchange_weak(c, 1, std::memory_order_acquire)) {
        return;
      }
#if defined(__x86_64__)
      __builtin_ia32_pause();
#else
      asm volatile("yield");
#endif
    }
    // Then sleep: state 2 tells unlock that a waiter needs a wake.
    while (key_.exchange(2, std::memory_order_acquire) != 0) platform::futex_wait(&key_, 2);
  }

  std::atomic<std::uint32_t> key_{0};  // 0 unlocked, 1 locked, 2 locked with sleepers
};

}  // namespace urge::runtime
