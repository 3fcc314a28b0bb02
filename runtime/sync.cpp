// urge::mutex and urge::wait_group (Go's sync/mutex.go and waitgroup.go).
#include <stdexcept>

#include "platform/clock.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "runtime/sema.hpp"
#include "urge/sync.hpp"

namespace urge {

using namespace urge::runtime;

namespace {

constexpr std::int64_t starvation_threshold_ns = 1'000'000;

// Go's sync_runtime_canSpin: spin only a few times, only if there are other
// running Ps (the holder may be running on one) and nothing else to run here.
bool can_spin(int iter) {
  if (iter >= 4 || !sched || sched->gomaxprocs <= 1) return false;
  if (sched->gomaxprocs <= sched->npidle.load(std::memory_order_relaxed) +
                               sched->nmspinning.load(std::memory_order_relaxed) + 1) {
    return false;
  }
  m* mp = getm();
  return mp && mp->curp && mp->curp->runq.empty();
}

void do_spin() {
  for (int i = 0; i < 30; ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#else
    asm volatile("yield");
#endif
  }
}

}  // namespace

void mutex::lock_slow() {
  std::int64_t wait_start = 0;
  bool is_starving = false;
  bool awoke = false;
  int iter = 0;
  std::int32_t old = state_.load(std::memory_order_relaxed);
  for (;;) {
    // Spin while the mutex is locked in normal mode and spinning may pay off.
    if ((old & (locked | starving)) == locked && can_spin(iter)) {
      // Set the woken flag so that unlock does not wake another waiter.
      if (!awoke && (old & woken) == 0 && (old >> waiter_shift) != 0 &&
          state_.compare_exchange_weak(old, old | woken, std::memory_order_relaxed)) {
        awoke = true;
      }
      do_spin();
      ++iter;
      old = state_.load(std::memory_order_relaxed);
      continue;
    }
    std::int32_t next = old;
    if ((old & starving) == 0) next |= locked;  // don't grab a starving mutex: queue
    if (old & (locked | starving)) next += 1 << waiter_shift;
    if (is_starving && (old & locked)) next |= starving;
    if (awoke) next &= ~woken;
    if (state_.compare_exchange_weak(old, next, std::memory_order_acquire)) {
      if ((old & (locked | starving)) == 0) break;  // locked it
      const bool lifo = wait_start != 0;            // waited before: go to the front
      if (wait_start == 0) wait_start = platform::nanotime();
      semacquire(&sema_, lifo, waitreason::sync_mutex_lock);
      is_starving = is_starving || platform::nanotime() - wait_start > starvation_threshold_ns;
      old = state_.load(std::memory_order_relaxed);
      if (old & starving) {
        // Ownership was handed to us; fix up the state for it.
        std::int32_t delta = locked - (1 << waiter_shift);
        if (!is_starving || (old >> waiter_shift) == 1) {
          // Leave starvation mode: we are the last waiter, or waited < 1 ms.
          delta -= starving;
        }
        state_.fetch_add(delta, std::memory_order_acquire);
        break;
      }
      awoke = true;
      iter = 0;
    } else {
      old = state_.load(std::memory_order_relaxed);
    }
  }
}

void mutex::unlock_slow(std::int32_t now) {
  if (((now + locked) & locked) == 0) {
    std::fputs("fatal error: sync: unlock of unlocked mutex\n", stderr);
    std::abort();
  }
  if ((now & starving) == 0) {
    std::int32_t old = now;
    for (;;) {
      // No waiters, or one is already awake or has the lock: nothing to do.
      if ((old >> waiter_shift) == 0 || (old & (locked | woken | starving)) != 0) return;
      std::int32_t next = (old - (1 << waiter_shift)) | woken;
      if (state_.compare_exchange_weak(old, next, std::memory_order_release)) {
        semrelease(&sema_, 1, false);
        return;
      }
    }
  }
  // Starvation mode: hand the mutex to the first waiter.
  semrelease(&sema_, 1, true);
}

void wait_group::add(int delta) {
  std::uint64_t state =
      state_.fetch_add(static_cast<std::uint64_t>(static_cast<std::int64_t>(delta)) << 32,
                       std::memory_order_acq_rel) +
      (static_cast<std::uint64_t>(static_cast<std::int64_t>(delta)) << 32);
  auto v = static_cast<std::int32_t>(state >> 32);
  auto w = static_cast<std::uint32_t>(state);
  if (v < 0) throw std::logic_error("sync: negative WaitGroup counter");
  if (w != 0 && delta > 0 && v == delta) {
    throw std::logic_error("sync: WaitGroup misuse: add called concurrently with wait");
  }
  if (v > 0 || w == 0) return;
  // The counter reached zero with waiters: reset and wake them all at once
  // (one semrelease of w, so that our last touch of *this is its increment).
  if (state_.load(std::memory_order_relaxed) != state) {
    throw std::logic_error("sync: WaitGroup misuse: add called concurrently with wait");
  }
  state_.store(0, std::memory_order_relaxed);
  semrelease(&sema_, w, false);
}

void wait_group::wait() {
  for (;;) {
    std::uint64_t state = state_.load(std::memory_order_acquire);
    if ((state >> 32) == 0) return;
    if (state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) {
      semacquire(&sema_, false, waitreason::semacquire);
      return;
    }
  }
}

}  // namespace urge
