// io_uring: probing and one ring (liburing underneath).
//
// The runtime keeps one ring per P (runtime/netpoll.cpp). A ring is not
// thread-safe, so its submission side and its completion side each have a
// lock: the P's owner takes them uncontended; another thread takes them to
// cancel a request or to reap completions of an idle P. That is what
// io_uring requires (serialised access per side), without
// IORING_SETUP_SINGLE_ISSUER, whose "one task" rule a P that moves between
// threads could not keep.
//
// Task work. A request that has to wait (a recv with no data yet) completes
// in "task work" that the kernel runs in the thread that submitted it, on
// that thread's next way out of the kernel. By default the kernel forces
// that way out: it wakes the thread if it sleeps and interrupts it with an
// IPI if it runs. In the echo benchmark that was one IPI per ten round
// trips (6% of the completions that waited), and in a virtual machine each
// one is a pair of exits to the hypervisor. The rings
// are set up with IORING_SETUP_COOP_TASKRUN (Linux 5.19) where the kernel
// has it: no IPI. A sleeping thread is still woken (futex, ppoll and
// io_uring_enter waits are interruptible, and the call restarts), and a
// running one runs the work at its next system call or interrupt: a busy M
// enters the kernel at every flush of its ring, and one that runs a CPU hog
// at its next timer tick (4 ms at HZ=250) or preemption signal, whichever
// comes first. That wait is the cost: a completion that another P's idle M
// could have run at once would wait for it when the M that submitted the
// request went on to run code without system calls (measured: p90 of such
// wake-ups 0.1 ms -> 1-3 ms). IORING_SETUP_TASKRUN_FLAG makes the kernel say
// when work is pending (IORING_SQ_TASKRUN), and sysmon, finding it pending
// for 200 us with no completion posted meanwhile, sends the Ms running
// goroutines a signal that only makes them pass through the kernel
// (netpoll_sysmon, preempt_kick): such a wake-up then waits about 0.2 ms
// plus a sysmon look, not a tick. peek_batch ignores the flag, unlike
// liburing's, which would enter the kernel to run work that is usually
// another thread's.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <string>

namespace urge::platform {

// Sets up a small ring and checks that it works under the live seccomp
// profile: a NOP round trip, then the opcodes the runtime needs. On failure
// returns false with `why` saying which step failed.
bool uring_probe(std::string& why);

// True if the kernel supports multishot accept (IORING_ACCEPT_MULTISHOT).
bool uring_has_multishot_accept();

// True if a recv may ask to wait for data before its first attempt
// (IORING_RECVSEND_POLL_FIRST, Linux 5.19): tried on a socket pair, since an
// older kernel rejects the flag with EINVAL and the probe has no bit for it.
bool uring_has_recv_poll_first();

class uring {
 public:
  // entries: submission queue size; cq_entries: completion queue size.
  uring(unsigned entries, unsigned cq_entries);
  ~uring();
  uring(const uring&) = delete;
  uring& operator=(const uring&) = delete;

  bool ok() const { return ok_; }
  // Set up with IORING_SETUP_COOP_TASKRUN (see "Task work").
  bool coop() const { return coop_; }
  io_uring* raw() { return &ring_; }
  int fd() const { return ring_.ring_fd; }

  // A free submission entry, or nullptr when the queue is full (the caller
  // submits and retries).
  io_uring_sqe* get_sqe() { return io_uring_get_sqe(&ring_); }
  unsigned pending() const { return io_uring_sq_ready(&ring_); }
  // Submits everything queued; retries on EINTR. Returns what the kernel took.
  int submit();
  // Completions waiting, read from shared memory without a system call; any
  // thread (liburing's io_uring_cq_ready reads the head with a plain load,
  // a data race with another thread's advance).
  unsigned ready() const { return cq_tail() - cq_head(); }
  unsigned peek_batch(io_uring_cqe** cqes, unsigned n);
  // IORING_SQ_TASKRUN: some thread has task work pending for this ring.
  bool taskrun_pending() const {
    return (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN) != 0;
  }
  // Completions posted so far (the kernel's tail, wrapping).
  unsigned cq_tail() const { return io_uring_smp_load_acquire(ring_.cq.ktail); }
  // Completions consumed so far (advance's head, wrapping); any thread.
  unsigned cq_head() const { return io_uring_smp_load_acquire(ring_.cq.khead); }
  void advance(unsigned n) { io_uring_cq_advance(&ring_, n); }
  // Completions are signalled on this eventfd as well.
  bool register_eventfd(int efd) { return io_uring_register_eventfd(&ring_, efd) == 0; }

 private:
  io_uring ring_{};
  bool ok_ = false;
  bool coop_ = false;
};

}  // namespace urge::platform
