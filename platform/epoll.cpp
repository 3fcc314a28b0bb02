// epoll; see platform/epoll.hpp.
#include "platform/epoll.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

namespace urge::platform {

epoll_poller::epoll_poller() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return;
  wakefd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = &wakefd_;
  if (wakefd_ < 0 || epoll_ctl(epfd_, EPOLL_CTL_ADD, wakefd_, &ev) != 0) {
    close(epfd_);
    epfd_ = -1;
  }
}

epoll_poller::~epoll_poller() {
  if (wakefd_ >= 0) close(wakefd_);
  if (epfd_ >= 0) close(epfd_);
}

int epoll_poller::add(int fd, void* tag) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = tag;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
}

int epoll_poller::del(int fd) {
  epoll_event ev{};
  return epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, &ev) == 0 ? 0 : -errno;
}

namespace {
// epoll_pwait2 (Linux 5.11) takes a timespec: timers need better than the
// millisecond of epoll_wait. qemu-user and old kernels lack it.
std::atomic<bool> g_no_pwait2{false};
}  // namespace

int epoll_poller::wait(epoll_event* events, int max, std::int64_t timeout_ns) {
  for (;;) {
    int n;
    if (!g_no_pwait2.load(std::memory_order_relaxed)) {
      timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000),
                  static_cast<long>(timeout_ns % 1'000'000'000)};
      n = epoll_pwait2(epfd_, events, max, timeout_ns < 0 ? nullptr : &ts, nullptr);
      if (n < 0 && errno == ENOSYS) {
        g_no_pwait2.store(true, std::memory_order_relaxed);
        continue;
      }
    } else {
      int ms;
      if (timeout_ns < 0) {
        ms = -1;
      } else if (timeout_ns == 0) {
        ms = 0;
      } else {
        // Round up: waking early would spin.
        ms = static_cast<int>(
            std::min<std::int64_t>((timeout_ns + 999'999) / 1'000'000, 1'000'000'000));
      }
      n = epoll_wait(epfd_, events, max, ms);
    }
    if (n >= 0) return n;
    if (errno != EINTR) return 0;
    if (timeout_ns != 0) return 0;  // a signal woke a blocking wait: let the caller re-evaluate
  }
}

void epoll_poller::wake() {
  std::uint64_t one = 1;
  while (write(wakefd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

bool epoll_poller::is_wake(const epoll_event& ev) {
  if (ev.data.ptr != &wakefd_) return false;
  std::uint64_t v;
  while (read(wakefd_, &v, sizeof v) < 0 && errno == EINTR) {
  }
  return true;
}

}  // namespace urge::platform
