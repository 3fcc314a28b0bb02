// Futexes and one-shot notifications (Go's note, lock_futex.go).
//
// A note is a one-shot event for a single sleeper: notesleep blocks until
// notewakeup; noteclear re-arms it. Parked Ms sleep on their own note, so
// waking a particular M is one atomic exchange and at most one FUTEX_WAKE.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <ctime>

#include "platform/clock.hpp"

namespace urge::platform {

// Waits while *addr == val, at most `ns` nanoseconds if ns >= 0. Spurious
// returns are possible; callers recheck their condition.
inline void futex_wait(std::atomic<std::uint32_t>* addr, std::uint32_t val, std::int64_t ns = -1) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (ns >= 0) {
    ts.tv_sec = ns / 1'000'000'000;
    ts.tv_nsec = ns % 1'000'000'000;
    tsp = &ts;
  }
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAIT_PRIVATE, val, tsp, nullptr,
          0);
}

inline void futex_wake(std::atomic<std::uint32_t>* addr, int n) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAKE_PRIVATE, n, nullptr,
          nullptr, 0);
}

struct note {
  std::atomic<std::uint32_t> key{0};  // 0: not signalled, 1: signalled
};

inline void noteclear(note& n) {
  n.key.store(0, std::memory_order_relaxed);
}

inline void notewakeup(note& n) {
  if (n.key.exchange(1, std::memory_order_release) == 0) futex_wake(&n.key, 1);
}

inline void notesleep(note& n) {
  while (n.key.load(std::memory_order_acquire) == 0) futex_wait(&n.key, 0);
}

// Sleeps until woken or `ns` nanoseconds have passed; true if woken.
inline bool notetsleep(note& n, std::int64_t ns) {
  if (ns < 0) {
    notesleep(n);
    return true;
  }
  const std::int64_t deadline = nanotime() + ns;
  while (n.key.load(std::memory_order_acquire) == 0) {
    std::int64_t left = deadline - nanotime();
    if (left <= 0) return n.key.load(std::memory_order_acquire) != 0;
    futex_wait(&n.key, 0, left);
  }
  return true;
}

}  // namespace urge::platform
