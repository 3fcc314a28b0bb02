#include "platform/thread_timer.hpp"

#include <signal.h>

#include <cerrno>

namespace urge::platform {

bool thread_timer::create(int tid, int signo) {
  sigevent sev{};
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = signo;
  sev._sigev_un._tid = tid;  // glibc's sigev_notify_thread_id
  created_ = timer_create(CLOCK_MONOTONIC, &sev, &id_) == 0;
  return created_;
}

void thread_timer::arm_at(std::int64_t when_ns) {
  // A zero it_value would disarm: the earliest time that arms is 1 ns.
  if (when_ns <= 0) when_ns = 1;
  itimerspec its{};
  its.it_value.tv_sec = static_cast<time_t>(when_ns / 1'000'000'000);
  its.it_value.tv_nsec = static_cast<long>(when_ns % 1'000'000'000);
  timer_settime(id_, TIMER_ABSTIME, &its, nullptr);
}

void thread_timer::disarm() {
  itimerspec its{};
  timer_settime(id_, 0, &its, nullptr);
}

void thread_timer::destroy() {
  if (created_) timer_delete(id_);
  created_ = false;
}

}  // namespace urge::platform
