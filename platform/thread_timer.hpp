// A kernel timer that signals one thread of this process (timer_create with
// SIGEV_THREAD_ID). The signal is raised by the timer interrupt itself, on
// time even when no other thread of the process gets a CPU then.
#pragma once

#include <time.h>

#include <cstdint>

namespace urge::platform {

// One-shot, on CLOCK_MONOTONIC (nanotime's clock). Not thread-safe as an
// object: create and destroy from one thread at a time; arm_at and disarm may
// race with each other (the kernel orders them).
class thread_timer {
 public:
  // Creates the timer, to send `signo` (si_code SI_TIMER) to thread `tid`.
  // False, with errno set, if the kernel refused (out of timers, or an
  // emulator without SIGEV_THREAD_ID).
  bool create(int tid, int signo);
  bool created() const { return created_; }
  // Fires once at the absolute time when_ns (nanotime), replacing any earlier
  // arming; a time already past fires at once.
  void arm_at(std::int64_t when_ns);
  // Cancels a pending firing (a signal already raised stays pending).
  void disarm();
  void destroy();

 private:
  timer_t id_{};
  bool created_ = false;
};

}  // namespace urge::platform
