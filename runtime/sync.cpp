// The sync package: mutex, wait_group, rw_mutex, cond, once, semaphore (Go's
// sync/mutex.go, waitgroup.go, rwmutex.go, cond.go with runtime/sema.go's
// notifyList, and golang.org/x/sync/semaphore).
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "platform/clock.hpp"
#include "platform/cpu.hpp"
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
      platform::procyield(30);  // Go's runtime_doSpin
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
  if (v > 0 || w == 0) {
    check_preempt();  // a preemption point, as channel operations are
    return;
  }
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
    if ((state >> 32) == 0) {
      check_preempt();
      return;
    }
    if (state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) {
      semacquire(&sema_, false, waitreason::semacquire);
      return;
    }
  }
}

// ---- rw_mutex (Go's rwmutex.go) ---------------------------------------------

void rw_mutex::lock_shared_slow() {
  // A writer is pending: wait until its unlock lets us in.
  semacquire(&reader_sem_, false, waitreason::sync_rwmutex_rlock);
}

void rw_mutex::unlock_shared_slow(std::int32_t r) {
  if (r + 1 == 0 || r + 1 == -max_readers) {
    std::fputs("fatal error: sync: RUnlock of unlocked RWMutex\n", stderr);
    std::abort();
  }
  // A writer is pending; the last reader it waits for wakes it.
  if (reader_wait_.fetch_sub(1, std::memory_order_seq_cst) - 1 == 0) {
    semrelease(&writer_sem_, 1, false);
  }
}

void rw_mutex::lock() {
  // First beat the other writers.
  w_.lock();
  // Announce ourselves: new readers now wait. r readers are inside.
  std::int32_t r = reader_count_.fetch_sub(max_readers, std::memory_order_seq_cst);
  // Wait for them (each leaving one decrements reader_wait_).
  if (r != 0 && reader_wait_.fetch_add(r, std::memory_order_seq_cst) + r != 0) {
    semacquire(&writer_sem_, false, waitreason::sync_rwmutex_lock);
  }
}

bool rw_mutex::try_lock() {
  if (!w_.try_lock()) return false;
  std::int32_t zero = 0;
  if (!reader_count_.compare_exchange_strong(zero, -max_readers, std::memory_order_acquire)) {
    w_.unlock();
    return false;
  }
  return true;
}

void rw_mutex::unlock() {
  // Let the readers in again: r of them are waiting.
  std::int32_t r = reader_count_.fetch_add(max_readers, std::memory_order_seq_cst) + max_readers;
  if (r >= max_readers) {
    std::fputs("fatal error: sync: Unlock of unlocked RWMutex\n", stderr);
    std::abort();
  }
  if (r > 0) semrelease(&reader_sem_, static_cast<std::uint32_t>(r), false);
  w_.unlock();
}

// ---- Waiter lists of cond and semaphore -------------------------------------

namespace {

// cond and semaphore keep their waiters in the object but lock them with a
// lock from this table, hashed by the object's address: the objects stay
// plain (no runtime type in the public header), and a releaser's last touch
// of the object is under the lock, before it readies anyone.
struct alignas(64) stripe {
  futex_mutex lock;
};
constexpr std::size_t kStripes = 61;
stripe stripes[kStripes];

futex_mutex& lock_for(const void* obj) {
  return stripes[(reinterpret_cast<std::uintptr_t>(obj) >> 4) % kStripes].lock;
}

bool unlock_stripe(g*, void* arg) {
  static_cast<futex_mutex*>(arg)->unlock();
  return true;
}

// Backoff for a plain thread (outside urge::run) waiting on a condition.
void thread_backoff(int& i) {
  if (i < 100) {
    sched_yield();
  } else {
    platform::usleep_thread(i < 1000 ? 10 : 200);
  }
  ++i;
}

// A goroutine waiting in a cond or semaphore; on its stack.
struct list_waiter {
  g* gp = nullptr;
  list_waiter* next = nullptr;
  std::uint32_t ticket = 0;  // cond
  std::int64_t n = 0;        // semaphore: units wanted
};

bool ticket_less(std::uint32_t a, std::uint32_t b) {
  return static_cast<std::int32_t>(a - b) < 0;
}

}  // namespace

// ---- cond (Go's notifyList, runtime/sema.go) ----------------------------------

void cond::wait(std::unique_lock<mutex>& lock) {
  // Take a ticket before unlocking: a signal after this point is ours.
  const std::uint32_t t = wait_.fetch_add(1, std::memory_order_seq_cst);
  lock.unlock();
  futex_mutex& l = lock_for(this);
  if (g* gp = getg()) {
    l.lock();
    if (ticket_less(t, notify_.load(std::memory_order_relaxed))) {
      l.unlock();  // already notified
    } else {
      list_waiter w;
      w.gp = gp;
      w.ticket = t;
      if (tail_) {
        static_cast<list_waiter*>(tail_)->next = &w;
      } else {
        head_ = &w;
      }
      tail_ = &w;
      gopark(unlock_stripe, &l, waitreason::sync_cond_wait);
    }
  } else {
    // A plain thread: wait for the notify counter to pass our ticket.
    for (int i = 0; !ticket_less(t, notify_.load(std::memory_order_acquire));) thread_backoff(i);
  }
  lock.lock();
}

void cond::signal() {
  // Fast path: no waiters since the last notification.
  if (wait_.load(std::memory_order_seq_cst) == notify_.load(std::memory_order_seq_cst)) return;
  futex_mutex& l = lock_for(this);
  l.lock();
  const std::uint32_t t = notify_.load(std::memory_order_relaxed);
  if (t == wait_.load(std::memory_order_seq_cst)) {
    l.unlock();
    return;
  }
  notify_.store(t + 1, std::memory_order_release);
  // Ticket t's owner may not have queued yet; it will see notify_ past t.
  list_waiter* prev = nullptr;
  for (auto* w = static_cast<list_waiter*>(head_); w; prev = w, w = w->next) {
    if (w->ticket != t) continue;
    if (prev) {
      prev->next = w->next;
    } else {
      head_ = w->next;
    }
    if (!w->next) tail_ = prev;
    g* gp = w->gp;  // w dies with its goroutine's frame once readied
    l.unlock();
    goready(gp, true);
    return;
  }
  l.unlock();
}

void cond::broadcast() {
  if (wait_.load(std::memory_order_seq_cst) == notify_.load(std::memory_order_seq_cst)) return;
  futex_mutex& l = lock_for(this);
  l.lock();
  auto* w = static_cast<list_waiter*>(head_);
  head_ = tail_ = nullptr;
  notify_.store(wait_.load(std::memory_order_seq_cst), std::memory_order_release);
  l.unlock();
  while (w) {
    list_waiter* next = w->next;
    goready(w->gp, true);
    w = next;
  }
}

// ---- semaphore ----------------------------------------------------------------

void semaphore::acquire(std::int64_t n) {
  if (n < 0) throw std::invalid_argument("urge::semaphore::acquire: negative count");
  futex_mutex& l = lock_for(this);
  l.lock();
  if (!head_ && count_ >= n) {
    count_ -= n;
    l.unlock();
    check_preempt();
    return;
  }
  g* gp = getg();
  if (!gp) {
    // A plain thread cannot queue: retry until it fits (no FIFO promise).
    l.unlock();
    for (int i = 0; !try_acquire(n);) thread_backoff(i);
    return;
  }
  list_waiter w;
  w.gp = gp;
  w.n = n;
  if (tail_) {
    static_cast<list_waiter*>(tail_)->next = &w;
  } else {
    head_ = &w;
  }
  tail_ = &w;
  // release() takes our units off the count before it readies us.
  gopark(unlock_stripe, &l, waitreason::semacquire);
}

bool semaphore::try_acquire(std::int64_t n) {
  if (n < 0) throw std::invalid_argument("urge::semaphore::try_acquire: negative count");
  futex_mutex& l = lock_for(this);
  bool taken = false;
  {
    std::lock_guard lock(l);
    if (!head_ && count_ >= n) {
      count_ -= n;
      taken = true;
    }
  }
  check_preempt();  // a try_acquire polling loop must yield when asked too
  return taken;
}

void semaphore::release(std::int64_t n) {
  if (n < 0) throw std::invalid_argument("urge::semaphore::release: negative count");
  futex_mutex& l = lock_for(this);
  l.lock();
  count_ += n;
  // Serve the queue in order; stop at the first waiter that does not fit,
  // even if a later one would (that is the fairness).
  list_waiter* wake = nullptr;
  list_waiter** wake_tail = &wake;
  while (head_) {
    auto* w = static_cast<list_waiter*>(head_);
    if (w->n > count_) break;
    count_ -= w->n;
    head_ = w->next;
    if (!head_) tail_ = nullptr;
    w->next = nullptr;
    *wake_tail = w;
    wake_tail = &w->next;
  }
  l.unlock();
  while (wake) {
    list_waiter* next = wake->next;
    goready(wake->gp, true);
    wake = next;
  }
  check_preempt();
}

std::int64_t semaphore::available() const {
  futex_mutex& l = lock_for(this);
  std::lock_guard lock(l);
  return count_;
}

}  // namespace urge
