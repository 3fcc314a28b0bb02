// The network poller front end (Go's netpoll.go), shared by both backends.
//
// Go parks a goroutine on a pollDesc until epoll says its fd is ready, then
// lets it retry the system call. urge does that with epoll, and with io_uring
// does what io_uring is for: the goroutine's read, write, accept or connect
// is itself the request; it parks until the completion arrives, and the
// completion carries the result. Either way a goroutine waiting for the
// network costs no thread.
//
// Rings. One io_uring per P. Requests are queued in the P's submission ring
// and submitted in batches: when the P runs out of goroutines (findrunnable),
// every few schedules while it stays busy, and before it goes idle, so that a
// busy server makes one io_uring_enter for many requests; a P whose goroutine
// computes for long is made to submit, and to read its completions, within
// a few milliseconds ("Busy Ps" in netpoll.cpp). Completions are
// read from shared memory at every schedule (no system call) and ready their
// goroutines in batches. Every ring also signals one eventfd, which the M
// blocked waiting for work (the poller, see "Timed wait" in proc.cpp) sleeps
// on, so completions on the ring of an idle P still wake someone. At most
// `max_inflight` requests per ring are in the kernel; beyond that requests
// wait in a backlog, submitted as completions come back (back-pressure
// instead of failure, and the completion ring can never overflow).
// A request that waits completes in kernel task work of the thread that
// submitted it; the rings ask the kernel not to interrupt a running thread
// for it, and sysmon interrupts the Ms running goroutines when such work
// stays pending with nothing completing ("Task work" in platform/uring.hpp).
//
// Deadlines are runtime timers on the descriptor. When one passes with a
// request in flight, or the descriptor is closed, the request is cancelled
// with IORING_OP_ASYNC_CANCEL on the ring it was submitted to; the woken
// goroutine sees why from the descriptor. Extending a deadline while a
// request waits simply moves the timer.
//
// Closing (Go's fdMutex). A descriptor number is reused by the kernel as soon
// as it is closed, so closing it while another goroutine is about to name it
// in a system call or an io_uring request would send that call to whatever
// file is opened next. Every operation therefore holds a reference to the fd
// for as long as it may name it; close only marks the descriptor closed
// (operations that start later fail without touching the fd), wakes or
// cancels the waiters, and the fd is closed by whoever drops the last
// reference. The poll_desc itself lives until its owner (the conn or
// listener object) has released it as well, so an operation racing with
// close always finds the descriptor it started with.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <system_error>

namespace urge::runtime {

struct p;
struct g;

enum class netpoll_backend { none, epoll, uring };

// run(): picks the backend from URGE_DEBUG's netpoll setting ("" or "1":
// io_uring if the probe passes, else epoll; "uring" or "epoll" forces one,
// and forcing an unavailable one throws std::runtime_error saying why).
void netpoll_init(const std::string& setting);
void netpoll_shutdown();
netpoll_backend netpoll_kind();
const char* netpoll_name();
// Tests: make the io_uring probe fail as it does under seccomp.
void netpoll_simulate_probe_failure(bool on);

// ---- Scheduler integration ----------------------------------------------
// Goroutines waiting on I/O right now (Go's netpollWaiters).
extern std::atomic<int> netpoll_waiters;
inline bool netpoll_has_waiters() {
  return netpoll_waiters.load(std::memory_order_relaxed) > 0;
}
// pp's owner, at every schedule: reap pp's completions; submit its queued
// requests if `flush`, or if sysmon found them overdue (io_uring only).
// Returns how many goroutines it readied.
int netpoll_check_local(p* pp, bool flush);
// Non-blocking poll (findrunnable, sysmon). Returns goroutines readied.
int netpoll_poll_now(p* pp);
// Goroutines made runnable but not yet queued, linked by schedlink (Go's
// gList as netpoll returns it).
struct glist {
  g* head = nullptr;
  g* tail = nullptr;
  int n = 0;
};
// The poller: blocks the calling M, which holds no P, until an I/O event, the
// timeout (ns, -1 for ever) or netpoll_break. What completed is marked
// runnable and left in `out` for the caller to queue: it takes a P and runs
// them itself where it can (Go's findrunnable), instead of queueing them
// globally and waking another thread to run them while it goes to sleep.
int netpoll_block(std::int64_t timeout_ns, glist& out);
void netpoll_break();
// sysmon, at every look: where a ring's task work has been pending for a
// while with no completion posted meanwhile, the thread that holds it runs
// code without entering the kernel; makes the Ms running goroutines pass
// through it (once per such episode). See "Task work" in platform/uring.hpp.
void netpoll_sysmon(std::int64_t now);
// sysmon, at every look at a running P: true if pp's ring has held requests
// queued and unsubmitted, or completions posted and unread, since a look at
// least `age` ago (the P's goroutine has run all that time without a
// schedule); queued requests are then marked, so that pp's next schedule
// submits them. See "Busy Ps" in netpoll.cpp.
bool netpoll_overdue(p* pp, std::int64_t now, std::int64_t age);

// ---- Descriptors (net.cpp) ------------------------------------------------
struct poll_desc;

// Takes ownership of fd (a socket) and registers it. The fd is made
// non-blocking for epoll and left blocking for io_uring. On failure the
// caller still owns fd.
poll_desc* pd_open(int fd, std::error_code& ec);
// Closes, as Go's FD.Close: from then on every operation fails with net_errc
// closed without touching the fd; waiters are woken (epoll) or their requests
// cancelled (io_uring). The fd itself is closed once the last operation in
// progress has let go of it; a goroutine calling pd_close waits for that, so
// that the address is free when it returns. Returns false if the descriptor
// was already closed (nothing done).
bool pd_close(poll_desc* pd);
// Drops the owner's reference to the poll_desc (after pd_close).
void pd_release(poll_desc* pd);
bool pd_closed(poll_desc* pd);
// The fd, held open until pd_fd_release (an operation's reference); -1 once
// closed, and then nothing to release.
int pd_fd_acquire(poll_desc* pd);
void pd_fd_release(poll_desc* pd);

// pd_read: one system call's worth, like read(2): bytes moved, 0 at EOF.
// pd_write: all of buf (fewer bytes only with ec set), as Go's Write.
std::size_t pd_read(poll_desc* pd, void* buf, std::size_t n, std::error_code& ec);
std::size_t pd_write(poll_desc* pd, const void* buf, std::size_t n, std::error_code& ec);
int pd_accept(poll_desc* pd, sockaddr* addr, socklen_t* len, std::error_code& ec);
void pd_connect(poll_desc* pd, const sockaddr* addr, socklen_t len, std::error_code& ec);
// mode: 'r', 'w' or 'b' (both); deadline: nanotime, 0 for none. False if
// the descriptor is closed.
bool pd_set_deadline(poll_desc* pd, char mode, std::int64_t deadline);

// The error of an operation on a closed descriptor ("use of closed network
// connection", as Go's net.ErrClosed).
const std::error_category& net_category();
enum class net_errc { closed = 1 };
std::error_code make_error_code(net_errc e);

}  // namespace urge::runtime
