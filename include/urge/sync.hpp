// urge/sync.hpp: goroutine-aware synchronisation (Go's sync package).
//
// These park goroutines, never threads: a goroutine waiting for a mutex lets
// its thread run other goroutines. Used outside urge::run (on a plain
// thread) they still work, by spinning and sleeping.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>         // std::lock_guard, std::unique_lock
#include <shared_mutex>  // std::shared_lock, for rw_mutex
#include <utility>

namespace urge {

namespace detail {
struct mutex_probe;  // tests look at a mutex's state through it
}  // namespace detail

// A mutual exclusion lock, Lockable (works with std::lock_guard and
// std::unique_lock). Go's sync.Mutex: waiters spin briefly, then park; a
// waiter that has waited for more than 1 ms switches the mutex to starvation
// mode, where ownership is handed directly to the waiter at the head of the
// queue, so no goroutine waits for ever behind newcomers.
//
// A mutex may be destroyed as soon as its last unlock() returns, even if the
// goroutine it woke has not run yet.
//
//   urge::mutex mu;
//   int counter = 0;
//   urge::go([&] { std::lock_guard lock(mu); ++counter; });
class mutex {
 public:
  mutex() = default;
  mutex(const mutex&) = delete;
  mutex& operator=(const mutex&) = delete;

  void lock() {
    std::int32_t expect = 0;
    if (state_.compare_exchange_strong(expect, locked, std::memory_order_acquire)) return;
    lock_slow();
  }
  bool try_lock() {
    std::int32_t old = state_.load(std::memory_order_relaxed);
    if (old & (locked | starving)) return false;
    return state_.compare_exchange_strong(old, old | locked, std::memory_order_acquire);
  }
  // Unlocking an unlocked mutex is a fatal error, as in Go.
  void unlock() {
    std::int32_t now = state_.fetch_sub(locked, std::memory_order_release) - locked;
    if (now != 0) unlock_slow(now);
  }

 private:
  friend struct detail::mutex_probe;
  static constexpr std::int32_t locked = 1, woken = 2, starving = 4, waiter_shift = 3;
  void lock_slow();
  void unlock_slow(std::int32_t now);

  std::atomic<std::int32_t> state_{0};
  std::atomic<std::uint32_t> sema_{0};
};

// Waits for a collection of goroutines to finish (Go's sync.WaitGroup).
// add(n) before starting them, done() in each, wait() until the count is 0.
// A negative count throws std::logic_error (a panic, as in Go). A wait_group
// may be destroyed as soon as wait() returns.
//
//   urge::wait_group wg;
//   for (int i = 0; i < 10; ++i) {
//     wg.add(1);
//     urge::go([&wg] { work(); wg.done(); });
//   }
//   wg.wait();
class wait_group {
 public:
  wait_group() = default;
  wait_group(const wait_group&) = delete;
  wait_group& operator=(const wait_group&) = delete;

  void add(int delta);
  void done() { add(-1); }
  void wait();

 private:
  std::atomic<std::uint64_t> state_{0};  // high 32 bits: counter; low 32: waiters
  std::atomic<std::uint32_t> sema_{0};
};

// A reader/writer mutex, SharedLockable (works with std::shared_lock too).
// Go's sync.RWMutex: any number of readers or one writer. A writer that
// calls lock() stops new readers from entering, so a steady stream of readers
// cannot starve it; the readers already inside finish first.
//
//   urge::rw_mutex mu;
//   std::map<std::string, int> table;
//   { std::shared_lock r(mu); auto it = table.find(k); ... }   // many at once
//   { std::lock_guard w(mu); table[k] = v; }                   // alone
class rw_mutex {
 public:
  rw_mutex() = default;
  rw_mutex(const rw_mutex&) = delete;
  rw_mutex& operator=(const rw_mutex&) = delete;

  // Writer side (Go's Lock/TryLock/Unlock).
  void lock();
  bool try_lock();
  void unlock();

  // Reader side (Go's RLock/TryRLock/RUnlock).
  void lock_shared() {
    if (reader_count_.fetch_add(1, std::memory_order_seq_cst) + 1 < 0) lock_shared_slow();
  }
  bool try_lock_shared() {
    std::int32_t c = reader_count_.load(std::memory_order_relaxed);
    while (c >= 0) {
      if (reader_count_.compare_exchange_weak(c, c + 1, std::memory_order_acquire)) return true;
    }
    return false;
  }
  void unlock_shared() {
    std::int32_t r = reader_count_.fetch_sub(1, std::memory_order_seq_cst) - 1;
    if (r < 0) unlock_shared_slow(r);
  }

 private:
  static constexpr std::int32_t max_readers = 1 << 30;
  void lock_shared_slow();
  void unlock_shared_slow(std::int32_t r);

  mutex w_;  // held by the writer, and by a writer waiting for readers to leave
  std::atomic<std::uint32_t> writer_sem_{0};  // the writer waits here for readers
  std::atomic<std::uint32_t> reader_sem_{0};  // readers wait here for the writer
  // Readers inside or waiting; minus max_readers while a writer holds or
  // wants the lock.
  std::atomic<std::int32_t> reader_count_{0};
  std::atomic<std::int32_t> reader_wait_{0};  // readers the pending writer waits for
};

// A condition variable for urge::mutex (Go's sync.Cond, with its notify list
// semantics): wait() atomically unlocks, parks until signalled and relocks.
// signal() wakes the longest-waiting goroutine, broadcast() all current
// waiters; a goroutine that starts waiting after a signal is not woken by it.
// Spurious wakeups do not happen, but as with any condition variable, check
// the condition in a loop (or use the predicate form).
//
//   urge::mutex mu;
//   urge::cond ready;
//   std::deque<job> q;
//   // consumer
//   std::unique_lock lock(mu);
//   ready.wait(lock, [&] { return !q.empty(); });
//   // producer
//   { std::lock_guard lock(mu); q.push_back(j); }
//   ready.signal();
class cond {
 public:
  cond() = default;
  cond(const cond&) = delete;
  cond& operator=(const cond&) = delete;

  // lock must be locked; it is locked again when wait returns.
  void wait(std::unique_lock<mutex>& lock);
  template <class Pred>
  void wait(std::unique_lock<mutex>& lock, Pred pred) {
    while (!pred()) wait(lock);
  }
  void signal();
  void broadcast();
  // std::condition_variable's names.
  void notify_one() { signal(); }
  void notify_all() { broadcast(); }

 private:
  // Go's notifyList: tickets are taken from wait_ and served in order by
  // notify_; waiters queue under a lock from a runtime-wide table (hashed by
  // address, as semaphores are) so that the object stays small and plain.
  std::atomic<std::uint32_t> wait_{0};    // next ticket
  std::atomic<std::uint32_t> notify_{0};  // next ticket to notify; changed under the lock
  void* head_ = nullptr;                  // waiters in ticket order; the table's lock
  void* tail_ = nullptr;
};

// Runs a function once (Go's sync.Once, std::call_once). Concurrent callers
// park until the first call has returned. If f throws, the exception
// propagates and the once is not done: the next call runs its f.
//
//   urge::once init;
//   init.call([] { load_config(); });   // from any number of goroutines
class once {
 public:
  once() = default;
  once(const once&) = delete;
  once& operator=(const once&) = delete;

  template <class F, class... A>
  void call(F&& f, A&&... args) {
    if (done_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(m_);
    if (done_.load(std::memory_order_relaxed)) return;
    std::invoke(std::forward<F>(f), std::forward<A>(args)...);
    done_.store(true, std::memory_order_release);
  }
  bool done() const noexcept { return done_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> done_{false};  // the fast path's flag; set under m_
  mutex m_;
};

// call_once(flag, f, args...), as std::call_once.
template <class F, class... A>
void call_once(once& flag, F&& f, A&&... args) {
  flag.call(std::forward<F>(f), std::forward<A>(args)...);
}

// A counting semaphore with FIFO fairness (golang.org/x/sync/semaphore's
// Weighted, with std::counting_semaphore's counting): acquire(n) waits until
// n units are available and no earlier waiter is still waiting, so a large
// request is not starved by a stream of small ones.
//
//   urge::semaphore slots(4);            // at most 4 at a time
//   slots.acquire();
//   fetch(url);
//   slots.release();
class semaphore {
 public:
  explicit semaphore(std::int64_t initial) : count_(initial) {}
  semaphore(const semaphore&) = delete;
  semaphore& operator=(const semaphore&) = delete;

  // Takes n units, waiting as long as needed. n < 0 throws std::invalid_argument.
  void acquire(std::int64_t n = 1);
  // Takes n units if that needs no waiting (and nobody waits before us).
  bool try_acquire(std::int64_t n = 1);
  // Returns n units, waking the waiters at the front that now fit.
  void release(std::int64_t n = 1);
  // Units available now (a snapshot).
  std::int64_t available() const;

 private:
  // Under a lock from the same runtime-wide table as cond's.
  std::int64_t count_;
  void* head_ = nullptr;  // FIFO of waiters
  void* tail_ = nullptr;
};

}  // namespace urge
