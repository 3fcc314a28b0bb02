// epoll: the readiness-based poller (Go's netpoll_epoll.go), used where
// io_uring is unavailable (old kernels, seccomp profiles, qemu-user).
#pragma once

#include <sys/epoll.h>

#include <cstdint>

namespace urge::platform {

class epoll_poller {
 public:
  epoll_poller();
  ~epoll_poller();
  epoll_poller(const epoll_poller&) = delete;
  epoll_poller& operator=(const epoll_poller&) = delete;

  bool ok() const { return epfd_ >= 0; }
  // Edge-triggered interest in reads and writes; tag comes back with events.
  int add(int fd, void* tag);
  int del(int fd);
  // Waits up to timeout_ns (-1: for ever, 0: just look); retries on EINTR
  // only when not blocking. Returns the number of events, 0 on timeout/EINTR.
  int wait(epoll_event* events, int max, std::int64_t timeout_ns);
  // Makes a blocked wait return (an eventfd in the set).
  void wake();
  // True if the event is the wake-up, which it then consumes.
  bool is_wake(const epoll_event& ev);

 private:
  int epfd_ = -1;
  int wakefd_ = -1;
};

}  // namespace urge::platform
