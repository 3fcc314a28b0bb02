// urge/sync.hpp: goroutine-aware synchronisation (Go's sync package).
//
// These park goroutines, never threads: a goroutine waiting for a mutex lets
// its thread run other goroutines. Used outside urge::run (on a plain
// thread) they still work, by spinning and sleeping.
#pragma once

#include <atomic>
#include <cstdint>

namespace urge {

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

}  // namespace urge
