// The runtime's own lock (Go's lock_futex.go): spin briefly, then sleep on
// a futex. Used for the scheduler's global state, per-P timer heaps and
// channels. Runtime code never switches goroutines while holding one (the
// unlock of a parking goroutine's lock happens after the switch, see
// "Parking" in runtime/proc.cpp), so a holder is always running and the
// spin usually succeeds.
//
// Spinning. A waiter polls the lock four times, 30 PAUSEs apart, then
// sleeps (Go's lock2: active_spin, active_spin_cnt). Every poll pulls the
// lock's cache line over to the waiter, and the holder's next locked
// instruction (its unlock's exchange) must pull it back: a waiter that polls
// between every PAUSE, as this lock once did (64 polls), makes each of the
// holder's operations pay two line transfers. With two Ps hammering one
// channel (buffered, 4 producers and 4 consumers) that cost 89-110 ns an item
// against Go's 35-50; polling as Go does, 17-18 ns. Measured alternatives:
// 2 polls (24 ns), 8 polls 15 PAUSEs apart (20 ns), 16 polls 8 apart (28 ns),
// 4 polls 60 apart (16 ns, but a waiter may then notice a released lock
// 60 PAUSEs late); polls 4, 8, 16 and 32 PAUSEs apart (the goroutine mutex
// 6% faster, the channel 25% slower); a sched_yield before sleeping (Go's
// passive_spin) gained nothing. With one CPU, spinning only delays the
// holder: no spin at all.
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

#include "platform/cpu.hpp"
#include "platform/futex.hpp"
#include "runtime/preempt.hpp"

namespace urge::runtime {

class futex_mutex {
 public:
  // Polls of the lock before sleeping, and PAUSEs between two polls (Go's
  // active_spin and active_spin_cnt). active_spin is 0 with a single CPU,
  // where the holder cannot run while this thread spins; set by run() before
  // any other thread exists. See "Spinning".
  static inline int active_spin = 4;
  static constexpr int active_spin_pauses = 30;

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
  // See "Spinning" above.
  void lock_slow() {
    // What the lock is taken as: 1 until this thread has slept on it, then 2,
    // since other sleepers may remain and the unlock must wake the next one.
    std::uint32_t taken = 1;
    for (;;) {
      for (int i = 0; i < active_spin; ++i) {
        platform::procyield(active_spin_pauses);  // first: the lock was just seen taken
        std::uint32_t c = 0;
        if (key_.load(std::memory_order_relaxed) == 0 &&
            key_.compare_exchange_weak(c, taken, std::memory_order_acquire)) {
          return;
        }
      }
      // Then sleep: state 2 tells unlock that a waiter needs a wake. Woken,
      // spin again before sleeping again (the lock may be taken by then).
      if (key_.exchange(2, std::memory_order_acquire) == 0) return;
      platform::futex_wait(&key_, 2);
      taken = 2;
    }
  }

  std::atomic<std::uint32_t> key_{0};  // 0 unlocked, 1 locked, 2 locked with sleepers
};

}  // namespace urge::runtime
