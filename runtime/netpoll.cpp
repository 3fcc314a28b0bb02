// The network poller; the design is in runtime/netpoll.hpp.
#include "runtime/netpoll.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "platform/clock.hpp"
#include "platform/epoll.hpp"
#include "platform/uring.hpp"
#include "runtime/preempt.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "urge/sync.hpp"

namespace urge::runtime {

std::atomic<int> netpoll_waiters{0};

namespace {

// Sizes. Requests on idle connections stay in the kernel indefinitely, so
// the bound on requests in flight must exceed the connections a P serves, or
// the backlog would hold back the writes that complete them; it is there to
// cap kernel memory, and the completion queue is sized so that it can never
// overflow (2 x max_inflight; IORING_FEAT_NODROP would keep overflow anyway).
constexpr unsigned ring_entries = 4096;  // submission queue per P
constexpr int max_inflight = 32768;      // per ring

struct ring_state;

enum class op_kind : std::uint8_t { read, write, accept, connect };

// One request, on the waiting goroutine's stack. Touched by the reaper until
// it readies the goroutine, never after.
struct uring_op {
  g* gp = nullptr;
  poll_desc* pd = nullptr;
  op_kind kind = op_kind::read;
  bool poll_first = false;  // a recv: wait for data before the first attempt
  void* buf = nullptr;
  std::size_t n = 0;
  sockaddr* addr = nullptr;
  socklen_t* addrlen = nullptr;
  const sockaddr* caddr = nullptr;
  socklen_t clen = 0;
  ring_state* ring = nullptr;  // where it was queued; the ring's sq_mu
  bool queued = false;         // in the backlog, not yet in the kernel; sq_mu
  uring_op* next = nullptr;    // backlog link; sq_mu
  std::int32_t res = 0;        // the completion's result
  std::uint32_t cflags = 0;    // and its flags
};

// user_data of a multishot accept: the poll_desc with the low bit set
// (uring_op and poll_desc are at least 8-byte aligned).
constexpr std::uintptr_t ms_tag = 1;

struct ring_state {
  ring_state(unsigned entries, unsigned cq_entries) : ring(entries, cq_entries) {}
  platform::uring ring;
  futex_mutex sq_mu;                 // submission side
  futex_mutex cq_mu;                 // completion side
  std::atomic<int> inflight{0};      // requests in the kernel
  uring_op* backlog_head = nullptr;  // sq_mu
  uring_op* backlog_tail = nullptr;
  // See "Busy Ps". sq_mu writes the first two; sysmon sets flush_wanted and
  // submit_locked clears it; the seen_ fields are sysmon's.
  std::atomic<bool> sq_queued{false};        // requests queued, not yet submitted
  std::atomic<std::uint32_t> sq_submits{0};  // submissions so far
  std::atomic<bool> flush_wanted{false};     // the owner's next schedule submits
  std::int64_t sq_seen_since = 0;            // when sysmon first saw them queued
  std::uint32_t sq_seen_submits = 0;
  std::int64_t cq_seen_since = 0;  // when sysmon first saw completions unread
  unsigned cq_seen_head = 0;
  // netpoll_sysmon's state (sysmon's alone): since when task work has been
  // pending with the completion tail at seen_tail (0: it is not).
  std::int64_t pending_since = 0;
  unsigned seen_tail = 0;
  bool kicked = false;
};

netpoll_backend g_kind = netpoll_backend::none;
bool g_multishot_accept = false;
bool g_recv_poll_first = false;                    // IORING_RECVSEND_POLL_FIRST understood
std::atomic<int> g_ms_armed{0};                    // multishot accepts still in the kernel
std::vector<std::unique_ptr<ring_state>> g_rings;  // by P id
int g_efd = -1;                                    // io_uring completions and breaks
std::unique_ptr<platform::epoll_poller> g_epoll;
bool g_simulate_failure = false;

class net_category_impl : public std::error_category {
 public:
  const char* name() const noexcept override { return "urge.net"; }
  std::string message(int) const override { return "use of closed network connection"; }
};

}  // namespace

const std::error_category& net_category() {
  static net_category_impl c;
  return c;
}

std::error_code make_error_code(net_errc e) {
  return {static_cast<int>(e), net_category()};
}

struct pd_extra;

// A descriptor. Reused, never freed (Go's pollCache does the same): an epoll
// event that raced with a close may still name it, and must find memory that
// is a poll_desc; at worst it sets a readiness latch spuriously, and the
// waiter retries its system call.
//
// Two counts keep it alive ("Closing" in netpoll.hpp). fdref is Go's fdMutex
// reduced to what urge needs: a closed bit and the number of references to
// the fd (the owner's while it is open, one per operation in progress); the
// fd is closed when that count drops to zero after the bit is set. refs
// counts references to the memory: the owner object, the open fd, each armed
// deadline timer and an armed multishot accept; at zero the poll_desc goes
// back to the free list.
struct poll_desc {
  futex_mutex mu;
  int fd = -1;  // -1 once closed; mu (read without it under an fdref)
  std::atomic<std::uint32_t> fdref{0};
  std::atomic<int> refs{0};
  bool closing = false;       // mu; set with fdref's closed bit
  g* close_waiter = nullptr;  // the goroutine in pd_close waiting for the fd to close; mu
  bool rready = false;        // epoll: readable since the last EAGAIN; mu
  bool wready = false;        // mu
  bool rdrained = false;      // io_uring: the last recv left nothing behind; mu
  g* rg = nullptr;            // epoll: the goroutine waiting to read; mu
  g* wg = nullptr;            // mu
  uring_op* rop = nullptr;    // io_uring: the read-side request in flight; mu
  uring_op* wop = nullptr;    // mu
  // Deadlines (nanotime, 0 for none): written under mu, read without it by
  // an operation's first check.
  std::atomic<std::int64_t> rd{0};
  std::atomic<std::int64_t> wd{0};
  urge::mutex rlock, wlock;        // one reader and one writer at a time (Go's fdMutex)
  pd_extra* x = nullptr;           // set once under mu, kept across reuse
  poll_desc* free_next = nullptr;  // free list; g_pd_mu
};

// What only some descriptors use: deadline timers, and a listener's
// multishot accept. Allocated on first use, so that an idle connection
// costs a small poll_desc (128 bytes with malloc's header; it was 272 with
// these inline, per side of every connection), and kept with its poll_desc
// when that is reused. Fields other than the timers: the descriptor's mu.
struct pd_extra {
  timer rt, wt;  // the deadline timers
  // io_uring multishot accept (listeners): one request that keeps producing
  // connections. Its completions queue fds here; an accept takes one.
  bool ms_armed = false;       // the request is in the kernel
  void* ms_ring = nullptr;     // ring_state it was submitted to
  g* accept_waiter = nullptr;  // the goroutine waiting in accept
  std::vector<int> accepted;   // connections not yet taken
  int accept_error = 0;        // an error to report to the next accept (EMFILE...)
};

namespace {

constexpr std::uint32_t fd_closed_bit = 1u << 31;

// pd->x, allocated if need be. pd->mu held.
pd_extra* extra(poll_desc* pd) {
  if (!pd->x) pd->x = new pd_extra;
  return pd->x;
}

std::mutex g_pd_mu;
poll_desc* g_pd_free = nullptr;

void pd_ref(poll_desc* pd) {
  pd->refs.fetch_add(1, std::memory_order_relaxed);
}

void pd_unref(poll_desc* pd) {
  if (pd->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  std::lock_guard lock(g_pd_mu);
  pd->free_next = g_pd_free;
  g_pd_free = pd;
}

// An operation's reference to the fd; false (take none) once closed.
bool fd_incref(poll_desc* pd) {
  std::uint32_t v = pd->fdref.load(std::memory_order_relaxed);
  do {
    if (v & fd_closed_bit) return false;
  } while (!pd->fdref.compare_exchange_weak(v, v + 1, std::memory_order_acquire,
                                            std::memory_order_relaxed));
  return true;
}

// Closes the fd: the descriptor is closed and nobody names the fd any more.
void fd_destroy(poll_desc* pd) {
  pd->mu.lock();
  const int fd = pd->fd;
  pd->fd = -1;
  // A multishot accept still in the kernel holds the socket open after our
  // close, until its cancellation completes on whichever thread armed it. A
  // TCP listener stops listening at shutdown, which frees its port at once.
  const bool ms = pd->x && pd->x->ms_armed;
  g* waiter = pd->close_waiter;
  pd->close_waiter = nullptr;
  pd->mu.unlock();
  if (fd >= 0) {
    if (g_kind == netpoll_backend::epoll && g_epoll) g_epoll->del(fd);
    if (ms) ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
  }
  if (waiter) goready(waiter, false);
  pd_unref(pd);  // the open fd's reference
}

void fd_decref(poll_desc* pd) {
  if (pd->fdref.fetch_sub(1, std::memory_order_acq_rel) == (fd_closed_bit | 1)) fd_destroy(pd);
}

// Readies gp: queued now, or (the poller) collected in out for its caller.
void ready(g* gp, glist* out) {
  if (!out) {
    goready(gp, false);
    return;
  }
  goready_mark(gp);
  gp->schedlink = nullptr;
  if (out->tail) {
    out->tail->schedlink = gp;
  } else {
    out->head = gp;
  }
  out->tail = gp;
  ++out->n;
}

// ---- io_uring ----------------------------------------------------------------

ring_state* ring_of(p* pp) {
  return g_rings[static_cast<std::size_t>(pp->id)].get();
}

// Busy Ps
// -------
// Queued requests go to the kernel when their P submits: in findrunnable,
// before it sleeps, and every 8th schedule; completions are read at every
// schedule. A P whose goroutines park on the network and then switches to
// one that computes for long would hold both for its whole quantum and more:
// parks do not count as schedules that submit (their unlockf runs later), a
// CPU hog schedules once a quantum, and the goroutine a completion readies
// then waits its turn behind the hogs. With two hogs sharing one P, a byte
// written before them took 44-120 ms to reach a reader parked on the same P
// (a response held back while its server computes something else). sysmon
// cannot submit for the P: the work of a request that has to wait runs in
// kernel task work of the thread that submitted it (see "Task work" in
// platform/uring.hpp), and sysmon sleeps in the kernel without being woken
// for such work. So it treats overdue I/O as it treats an overdue timer
// (retake in sysmon.cpp): when a ring has held queued requests, or unread
// completions, since a look 1 ms ago or more, and the P's goroutine has run
// that long, it marks the ring (flush_wanted, for the requests) and asks the
// goroutine to stop; the next schedule on that P submits and reads them, and
// runs what the completions readied before a stopped hog's next turn. The
// hot paths pay two relaxed stores under the lock they hold anyway, and no
// clock read: sysmon dates what it sees itself (sq_seen_since and
// cq_seen_since), by the submission count and completion head it last saw.
// Rejected: submitting at every park that leaves other goroutines runnable
// (a system call per request in a busy server, the batching lost).
//
// With epoll a write is a system call and goes out at once, but readiness is
// only seen by a poll: a P polls when it runs out of goroutines, and sysmon
// when nobody else has for 10 ms (Go's rule), so a reader beside two hogs
// waited 33-42 ms. While some goroutine has computed for 1 ms, sysmon polls
// every millisecond instead, puts what it readied on the global queue, and
// has a P whose goroutine has run that long stop and take them first
// (p::global_first).

// Submits what is queued. Needs r->sq_mu.
void submit_locked(ring_state* r) {
  r->ring.submit();
  r->sq_submits.store(r->sq_submits.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  r->sq_queued.store(false, std::memory_order_relaxed);
  r->flush_wanted.store(false, std::memory_order_relaxed);
}

// Puts op into the submission queue, or the backlog when the ring already
// has max_inflight requests. Needs r->sq_mu.
void queue_op_locked(ring_state* r, uring_op* op) {
  op->ring = r;
  if (r->inflight.load(std::memory_order_relaxed) >= max_inflight) {
    op->queued = true;
    op->next = nullptr;
    if (r->backlog_tail) {
      r->backlog_tail->next = op;
    } else {
      r->backlog_head = op;
    }
    r->backlog_tail = op;
    return;
  }
  io_uring_sqe* sqe = r->ring.get_sqe();
  if (!sqe) {
    submit_locked(r);
    sqe = r->ring.get_sqe();
  }
  switch (op->kind) {
    case op_kind::read:
      io_uring_prep_recv(sqe, op->pd->fd, op->buf, op->n, 0);
      if (op->poll_first) sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
      break;
    case op_kind::write:
      io_uring_prep_send(sqe, op->pd->fd, op->buf, op->n, MSG_NOSIGNAL);
      break;
    case op_kind::accept:
      io_uring_prep_accept(sqe, op->pd->fd, op->addr, op->addrlen, SOCK_CLOEXEC);
      break;
    case op_kind::connect:
      io_uring_prep_connect(sqe, op->pd->fd, op->caddr, op->clen);
      break;
  }
  io_uring_sqe_set_data(sqe, op);
  if (!r->sq_queued.load(std::memory_order_relaxed)) {
    r->sq_queued.store(true, std::memory_order_relaxed);
  }
  op->queued = false;
  r->inflight.fetch_add(1, std::memory_order_relaxed);
}

void flush(ring_state* r) {
  std::lock_guard lock(r->sq_mu);
  if (r->ring.pending()) submit_locked(r);
}

// Moves backlog requests into the kernel as room appears.
void drain_backlog(ring_state* r) {
  std::lock_guard lock(r->sq_mu);
  bool moved = false;
  while (r->backlog_head && r->inflight.load(std::memory_order_relaxed) < max_inflight) {
    uring_op* op = r->backlog_head;
    r->backlog_head = op->next;
    if (!r->backlog_head) r->backlog_tail = nullptr;
    queue_op_locked(r, op);
    moved = true;
  }
  if (moved) submit_locked(r);
}

void ms_accept_complete(poll_desc* pd, std::int32_t res, std::uint32_t flags, int& readied,
                        glist* out);

// Reads completions and readies their goroutines, in batches.
// wait: take the completion lock even if someone holds it. The poller must:
// it has consumed the eventfd's count, so a completion that the holder's last
// peek missed would otherwise stay unreaped with nothing left to wake anyone.
int reap(ring_state* r, bool wait = false, glist* out = nullptr) {
  if (wait) {
    r->cq_mu.lock();
  } else if (!r->cq_mu.try_lock()) {
    return 0;  // someone else is reaping this ring
  }
  int readied = 0;
  io_uring_cqe* cqes[64];
  for (;;) {
    unsigned n = r->ring.peek_batch(cqes, 64);
    for (unsigned i = 0; i < n; ++i) {
      auto data = reinterpret_cast<std::uintptr_t>(io_uring_cqe_get_data(cqes[i]));
      if (data & ms_tag) {
        if (!(cqes[i]->flags & IORING_CQE_F_MORE)) {
          r->inflight.fetch_sub(1, std::memory_order_relaxed);
        }
        ms_accept_complete(reinterpret_cast<poll_desc*>(data & ~ms_tag), cqes[i]->res,
                           cqes[i]->flags, readied, out);
        continue;
      }
      auto* op = reinterpret_cast<uring_op*>(data);
      if (!op) continue;  // a cancellation's own completion
      op->res = cqes[i]->res;
      op->cflags = cqes[i]->flags;
      g* gp = op->gp;  // op lives on gp's stack: read everything first
      r->inflight.fetch_sub(1, std::memory_order_relaxed);
      ready(gp, out);
      ++readied;
    }
    r->ring.advance(n);
    if (n < 64) break;
  }
  r->cq_mu.unlock();
  if (r->backlog_head) drain_backlog(r);
  return readied;
}

// Cancels op (the descriptor's lock is held, so op's goroutine cannot
// return and take op with it).
void cancel_op(uring_op* op) {
  ring_state* r = op->ring;
  if (!r) return;  // not submitted yet: the submitter will see `closing`/the deadline
  std::lock_guard lock(r->sq_mu);
  if (op->queued) {
    // Still in the backlog: take it out and complete it here.
    uring_op** link = &r->backlog_head;
    uring_op* prev = nullptr;
    while (*link && *link != op) {
      prev = *link;
      link = &(*link)->next;
    }
    if (*link) {
      *link = op->next;
      if (r->backlog_tail == op) r->backlog_tail = prev;
      op->queued = false;
      op->res = -ECANCELED;
      goready(op->gp, false);
    }
    return;
  }
  io_uring_sqe* sqe = r->ring.get_sqe();
  if (!sqe) {
    submit_locked(r);
    sqe = r->ring.get_sqe();
  }
  io_uring_prep_cancel(sqe, op, 0);
  io_uring_sqe_set_data(sqe, nullptr);
  submit_locked(r);  // cancellations go out at once
}

// park's unlockf: queue the request on this M's P ring, release the descriptor.
bool submit_and_unlock(g*, void* arg) {
  auto* op = static_cast<uring_op*>(arg);
  m* mp = getm();
  ring_state* r = ring_of(mp->curp);
  {
    std::lock_guard lock(r->sq_mu);
    queue_op_locked(r, op);
  }
  op->pd->mu.unlock();
  return true;
}

bool unlock_pd(g*, void* arg) {
  static_cast<poll_desc*>(arg)->mu.unlock();
  return true;
}

bool deadline_passed(std::int64_t d) {
  return d != 0 && d <= platform::nanotime();
}

// The checks every operation makes before it waits, and again after each
// wake-up: closed, or past the side's deadline. pd->mu held, or not: then
// the closed bit stands for `closing` (it is set first), and a close or
// deadline that comes later is seen under mu before the operation waits.
bool side_unusable(poll_desc* pd, bool read_side, std::error_code& ec, bool locked = true) {
  if (locked ? pd->closing : (pd->fdref.load(std::memory_order_acquire) & fd_closed_bit) != 0) {
    ec = make_error_code(net_errc::closed);
    return true;
  }
  if (deadline_passed((read_side ? pd->rd : pd->wd).load(std::memory_order_relaxed))) {
    ec = std::make_error_code(std::errc::timed_out);
    return true;
  }
  return false;
}

// Reading first or waiting first
// ------------------------------
// The kernel tries a recv as soon as it is submitted and arms a poll only
// when that finds nothing. In request/response traffic (an echo, RPC) the
// read that follows a write almost never finds its answer there yet, and the
// failed attempt costs a socket lock and tcp_recvmsg for nothing (3% of an
// echo round trip's CPU). A recv completion says whether the socket still
// held data afterwards (IORING_CQE_F_SOCK_NONEMPTY); when it did not, the
// next recv on the descriptor waits for data before its first attempt
// (IORING_RECVSEND_POLL_FIRST). A reader that keeps finding data (a bulk
// transfer) keeps reading at once. When the guess is wrong the poll fires as
// soon as it is armed and the recv runs from task work: the same completion,
// a little later. Sockets whose recv does not report the flag (it depends on
// the protocol) are always treated as drained.

// Runs one request through io_uring; pd->mu held on entry and exit.
// Returns the kernel's result; sets ec when it failed (closed, timed out, or
// the kernel's error).
std::int32_t uring_run(poll_desc* pd, uring_op& op, bool read_side, std::error_code& ec) {
  for (;;) {
    if (side_unusable(pd, read_side, ec)) return -1;
    op.gp = getg();
    op.pd = pd;
    op.ring = nullptr;
    op.res = 0;
    (read_side ? pd->rop : pd->wop) = &op;
    netpoll_waiters.fetch_add(1, std::memory_order_relaxed);
    gopark(submit_and_unlock, &op, waitreason::io_wait);
    netpoll_waiters.fetch_sub(1, std::memory_order_relaxed);
    pd->mu.lock();
    (read_side ? pd->rop : pd->wop) = nullptr;
    if (op.res == -ECANCELED || op.res == -EINTR)
      continue;  // closed, deadline, or moved: look again
    if (op.res < 0) ec = std::error_code(-op.res, std::generic_category());
    return op.res;
  }
}

// ---- epoll ----------------------------------------------------------------

// The epoll side of an operation makes its system call without pd->mu (Go
// holds no lock across read(2) either; the operation's fd reference keeps the
// number valid), and takes mu only to wait after EAGAIN. Readiness is a
// latch set by epoll_dispatch: an event that arrives between the EAGAIN and
// the wait leaves it set and the operation retries instead of waiting; a
// latch left over from an event whose data an earlier call already consumed
// costs one more EAGAIN, not a lost wake-up. (Resetting the latch before
// every call, as Go's prepareRead does, would cost a store per operation to
// save that rare extra call.)
//
// Waits until the side may be ready again; pd->mu not held on entry or exit.
bool epoll_wait_ready(poll_desc* pd, bool read_side, std::error_code& ec) {
  pd->mu.lock();
  for (;;) {
    if (side_unusable(pd, read_side, ec)) break;
    bool& ready = read_side ? pd->rready : pd->wready;
    if (ready) {
      ready = false;
      pd->mu.unlock();
      return true;
    }
    (read_side ? pd->rg : pd->wg) = getg();
    netpoll_waiters.fetch_add(1, std::memory_order_relaxed);
    gopark(unlock_pd, pd, waitreason::io_wait);
    netpoll_waiters.fetch_sub(1, std::memory_order_relaxed);
    pd->mu.lock();
  }
  pd->mu.unlock();
  return false;
}

void epoll_dispatch(epoll_event* evs, int n, int& readied, glist* out = nullptr) {
  for (int i = 0; i < n; ++i) {
    if (g_epoll->is_wake(evs[i])) continue;
    auto* pd = static_cast<poll_desc*>(evs[i].data.ptr);
    std::uint32_t e = evs[i].events;
    g* r = nullptr;
    g* w = nullptr;
    pd->mu.lock();
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      pd->rready = true;
      r = pd->rg;
      pd->rg = nullptr;
    }
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
      pd->wready = true;
      w = pd->wg;
      pd->wg = nullptr;
    }
    pd->mu.unlock();
    if (r) {
      ready(r, out);
      ++readied;
    }
    if (w) {
      ready(w, out);
      ++readied;
    }
  }
}

// ---- Multishot accept ------------------------------------------------------

void ms_accept_complete(poll_desc* pd, std::int32_t res, std::uint32_t flags, int& readied,
                        glist* out) {
  pd->mu.lock();
  pd_extra* x = pd->x;  // set by ms_arm
  if (res >= 0) {
    if (pd->closing) {
      ::close(res);  // nobody will take it
    } else {
      x->accepted.push_back(res);
    }
  } else if (res != -ECANCELED) {
    x->accept_error = -res;  // reported to the next accept, which re-arms
  }
  const bool ended = !(flags & IORING_CQE_F_MORE);
  if (ended) {
    x->ms_armed = false;
    g_ms_armed.fetch_sub(1, std::memory_order_relaxed);
  }
  g* gp = x->accept_waiter;
  x->accept_waiter = nullptr;
  pd->mu.unlock();
  if (gp) {
    ready(gp, out);
    ++readied;
  }
  if (ended) pd_unref(pd);  // the armed request's reference
}

// Submits the multishot accept on this M's ring. pd->mu held.
void ms_arm(poll_desc* pd) {
  ring_state* r = ring_of(getm()->curp);
  std::lock_guard lock(r->sq_mu);
  io_uring_sqe* sqe = r->ring.get_sqe();
  if (!sqe) {
    submit_locked(r);
    sqe = r->ring.get_sqe();
  }
  io_uring_prep_multishot_accept(sqe, pd->fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data(sqe,
                        reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(pd) | ms_tag));
  r->inflight.fetch_add(1, std::memory_order_relaxed);
  pd->x->ms_armed = true;
  pd->x->ms_ring = r;
  g_ms_armed.fetch_add(1, std::memory_order_relaxed);
  pd_ref(pd);        // dropped by the final completion
  submit_locked(r);  // a listener wants its first connection at once
}

// Cancels the multishot accept. pd->mu held.
void ms_cancel(poll_desc* pd) {
  if (!pd->x || !pd->x->ms_armed) return;
  auto* r = static_cast<ring_state*>(pd->x->ms_ring);
  std::lock_guard lock(r->sq_mu);
  io_uring_sqe* sqe = r->ring.get_sqe();
  if (!sqe) {
    submit_locked(r);
    sqe = r->ring.get_sqe();
  }
  io_uring_prep_cancel64(sqe, reinterpret_cast<std::uintptr_t>(pd) | ms_tag, 0);
  io_uring_sqe_set_data(sqe, nullptr);
  submit_locked(r);
}

// accept through the multishot request. pd->mu held.
int ms_accept(poll_desc* pd, sockaddr* addr, socklen_t* len, std::error_code& ec) {
  pd_extra* x = extra(pd);
  for (;;) {
    if (pd->closing) {
      ec = make_error_code(net_errc::closed);
      return -1;
    }
    if (!x->accepted.empty()) {
      int fd = x->accepted.front();
      x->accepted.erase(x->accepted.begin());
      if (addr && len) getpeername(fd, addr, len);
      return fd;
    }
    if (x->accept_error) {
      ec = std::error_code(x->accept_error, std::generic_category());
      x->accept_error = 0;
      return -1;
    }
    if (deadline_passed(pd->rd.load(std::memory_order_relaxed))) {
      ec = std::make_error_code(std::errc::timed_out);
      return -1;
    }
    if (!x->ms_armed) ms_arm(pd);
    x->accept_waiter = getg();
    netpoll_waiters.fetch_add(1, std::memory_order_relaxed);
    gopark(unlock_pd, pd, waitreason::io_wait);
    netpoll_waiters.fetch_sub(1, std::memory_order_relaxed);
    pd->mu.lock();
    if (x->accept_waiter == getg()) x->accept_waiter = nullptr;
  }
}

// ---- Deadlines -------------------------------------------------------------

// Wakes (epoll) or cancels (io_uring) the waiter of one side. pd->mu held.
g* interrupt_side(poll_desc* pd, bool read_side) {
  if (g_kind == netpoll_backend::uring) {
    if (uring_op* op = read_side ? pd->rop : pd->wop) cancel_op(op);
    if (read_side && pd->x && pd->x->accept_waiter) {
      g* gp = pd->x->accept_waiter;
      pd->x->accept_waiter = nullptr;
      return gp;
    }
    return nullptr;
  }
  g*& slot = read_side ? pd->rg : pd->wg;
  g* gp = slot;
  slot = nullptr;
  return gp;
}

void deadline_fire(timer* t, void* arg, std::int64_t now) {
  auto* pd = static_cast<poll_desc*>(arg);
  const bool read_side = t == &pd->x->rt;  // x: set before the timer was armed
  pd->mu.lock();
  std::int64_t d = (read_side ? pd->rd : pd->wd).load(std::memory_order_relaxed);
  g* gp = nullptr;
  if (d != 0 && d <= now) gp = interrupt_side(pd, read_side);
  pd->mu.unlock();
  if (gp) goready(gp, false);
  pd_unref(pd);  // the armed timer's reference
}

}  // namespace

// ---- Backend selection and scheduler integration ------------------------------

void netpoll_simulate_probe_failure(bool on) {
  g_simulate_failure = on;
}

void netpoll_init(const std::string& setting) {
  std::string why;
  bool want_uring = setting != "epoll";
  bool uring_ok = false;
  if (want_uring) {
    if (g_simulate_failure) {
      why = "io_uring_setup: Operation not permitted (simulated)";
    } else {
      uring_ok = platform::uring_probe(why);
    }
  }
  if (setting == "uring" && !uring_ok) {
    throw std::runtime_error("urge: URGE_DEBUG=netpoll=uring, but io_uring is unavailable: " + why);
  }
  if (uring_ok) {
    g_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    for (p* pp : sched->allp) {
      (void)pp;
      auto r = std::make_unique<ring_state>(ring_entries, 2 * max_inflight);
      if (!r->ring.ok() || g_efd < 0 || !r->ring.register_eventfd(g_efd)) {
        uring_ok = false;
        why = "per-P ring set-up failed";
        break;
      }
      g_rings.push_back(std::move(r));
    }
    if (!uring_ok) {
      g_rings.clear();
      if (g_efd >= 0) ::close(g_efd);
      g_efd = -1;
      if (setting == "uring") throw std::runtime_error("urge: io_uring unavailable: " + why);
    }
  }
  if (uring_ok) {
    g_kind = netpoll_backend::uring;
    g_multishot_accept = platform::uring_has_multishot_accept();
    g_recv_poll_first = platform::uring_has_recv_poll_first();
  } else {
    g_epoll = std::make_unique<platform::epoll_poller>();
    if (!g_epoll->ok()) throw std::runtime_error("urge: cannot create the epoll poller");
    g_kind = netpoll_backend::epoll;
  }
  if (setting == "1" || setting == "uring" || setting == "epoll") {
    std::fprintf(stderr, "urge: netpoll backend: %s%s%s\n", netpoll_name(),
                 !uring_ok && want_uring ? "; io_uring unavailable: " : "",
                 !uring_ok && want_uring ? why.c_str() : "");
  }
}

// At shutdown, a listener closed while its multishot accept was still in the
// kernel keeps its socket open until the cancellation completes: wait for
// those completions (briefly), so that the address is free when run()
// returns. Other completions belong to abandoned goroutines: dropped.
static void drain_multishot_accepts() {
  const std::int64_t deadline = platform::nanotime() + 200'000'000;
  while (g_ms_armed.load(std::memory_order_relaxed) > 0 && platform::nanotime() < deadline) {
    for (auto& r : g_rings) {
      flush(r.get());
      io_uring_cqe* cqes[64];
      unsigned n;
      while ((n = r->ring.peek_batch(cqes, 64)) > 0) {
        for (unsigned i = 0; i < n; ++i) {
          auto data = reinterpret_cast<std::uintptr_t>(io_uring_cqe_get_data(cqes[i]));
          if (!(data & ms_tag) || (cqes[i]->flags & IORING_CQE_F_MORE)) {
            if ((data & ms_tag) && cqes[i]->res >= 0) ::close(cqes[i]->res);
            continue;
          }
          auto* pd = reinterpret_cast<poll_desc*>(data & ~ms_tag);
          if (cqes[i]->res >= 0) ::close(cqes[i]->res);
          pd->x->ms_armed = false;
          g_ms_armed.fetch_sub(1, std::memory_order_relaxed);
          pd_unref(pd);
        }
        r->ring.advance(n);
      }
    }
    pollfd pfd{g_efd, POLLIN, 0};
    timespec ts{0, 1'000'000};
    ppoll(&pfd, 1, &ts, nullptr);
  }
}

void netpoll_shutdown() {
  if (g_kind == netpoll_backend::uring) drain_multishot_accepts();
  g_ms_armed.store(0, std::memory_order_relaxed);
  g_rings.clear();
  if (g_efd >= 0) ::close(g_efd);
  g_efd = -1;
  g_epoll.reset();
  g_kind = netpoll_backend::none;
  netpoll_waiters.store(0, std::memory_order_relaxed);
}

netpoll_backend netpoll_kind() {
  return g_kind;
}

const char* netpoll_name() {
  switch (g_kind) {
    case netpoll_backend::uring:
      return "io_uring";
    case netpoll_backend::epoll:
      return "epoll";
    case netpoll_backend::none:
      break;
  }
  return "none";
}

int netpoll_check_local(p* pp, bool do_flush) {
  if (g_kind != netpoll_backend::uring) return 0;
  ring_state* r = ring_of(pp);
  // The common case on a P that does no I/O: nothing in flight, nothing queued.
  if (r->inflight.load(std::memory_order_relaxed) == 0 && r->ring.pending() == 0) return 0;
  int n = r->ring.ready() ? reap(r) : 0;
  if ((do_flush || r->flush_wanted.load(std::memory_order_relaxed)) && r->ring.pending()) {
    flush(r);
  }
  return n;
}

int netpoll_poll_now(p* pp) {
  if (g_kind == netpoll_backend::uring) {
    int n = 0;
    if (pp) {
      ring_state* r = ring_of(pp);
      flush(r);
      n += reap(r);
    } else {
      for (auto& r : g_rings) n += r->ring.ready() ? reap(r.get()) : 0;
    }
    return n;
  }
  if (g_kind == netpoll_backend::epoll) {
    epoll_event evs[128];
    int n = g_epoll->wait(evs, 128, 0);
    int readied = 0;
    epoll_dispatch(evs, n, readied);
    return readied;
  }
  return 0;
}

int netpoll_block(std::int64_t timeout_ns, glist& out) {
  if (g_kind == netpoll_backend::uring) {
    pollfd pfd{g_efd, POLLIN, 0};
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout_ns >= 0) {
      ts.tv_sec = timeout_ns / 1'000'000'000;
      ts.tv_nsec = timeout_ns % 1'000'000'000;
      tsp = &ts;
    }
    ppoll(&pfd, 1, tsp, nullptr);  // EINTR: return and let the caller look again
    std::uint64_t v;
    while (read(g_efd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    int n = 0;
    for (auto& r : g_rings) n += r->ring.ready() ? reap(r.get(), true, &out) : 0;
    return n;
  }
  if (g_kind == netpoll_backend::epoll) {
    epoll_event evs[128];
    int n = g_epoll->wait(evs, 128, timeout_ns);
    int readied = 0;
    epoll_dispatch(evs, n, readied, &out);
    return readied;
  }
  if (timeout_ns > 0) platform::usleep_thread(timeout_ns / 1000);
  return 0;
}

// How long task work may stay pending, with nothing completing on the ring,
// before sysmon interrupts: an M running goroutines between two flushes
// holds its work that long in normal operation (an echo's M enters the
// kernel every 30-60 us), and each interruption costs a signal. Well under
// the 4 ms tick that bounds the wait otherwise.
constexpr std::int64_t task_work_stuck_ns = 200'000;

// sysmon's watch on a ring (overdue requests and completions, task work held
// back): true once `busy` has held, with `mark` unchanged, since a look at
// least `age` ago; `since` is when that look was (0 while !busy).
static bool seen_stuck(bool busy, unsigned mark, std::int64_t now, std::int64_t age,
                       std::int64_t& since, unsigned& seen_mark) {
  if (!busy) {
    since = 0;
    return false;
  }
  if (since == 0 || mark != seen_mark) {
    since = now;  // since this look at the latest
    seen_mark = mark;
    return false;
  }
  return now - since >= age;
}

bool netpoll_overdue(p* pp, std::int64_t now, std::int64_t age) {
  if (g_kind != netpoll_backend::uring) return false;
  ring_state* r = ring_of(pp);
  const bool submit = seen_stuck(r->sq_queued.load(std::memory_order_relaxed),
                                 r->sq_submits.load(std::memory_order_relaxed), now, age,
                                 r->sq_seen_since, r->sq_seen_submits);
  if (submit) r->flush_wanted.store(true, std::memory_order_relaxed);
  const unsigned head = r->ring.cq_head();
  const bool read =
      seen_stuck(r->ring.cq_tail() != head, head, now, age, r->cq_seen_since, r->cq_seen_head);
  return submit || read;
}

void netpoll_sysmon(std::int64_t now) {
  if (g_kind != netpoll_backend::uring || !netpoll_has_waiters()) return;
  bool stuck = false;
  for (auto& r : g_rings) {
    if (!r->ring.coop()) return;  // the kernel interrupts the thread itself
    if (seen_stuck(r->ring.taskrun_pending(), r->ring.cq_tail(), now, task_work_stuck_ns,
                   r->pending_since, r->seen_tail)) {
      if (!r->kicked) {
        r->kicked = true;  // once: if that was not enough, the tick will do
        stuck = true;
      }
    } else if (r->pending_since == now) {
      r->kicked = false;  // dated just now: a new episode
    }
  }
  if (!stuck) return;
  // Whose work it is nobody knows: each request's submitter, and a P's ring
  // is submitted to by whichever M holds the P at the time, while the work
  // waits on an M that has since moved to another P (seen: the M that
  // submitted to the ring last was asleep, the work held by the M running a
  // hog on another P). An M that sleeps has been woken for it, one in a
  // system call runs it on the way out: so every M running a goroutine.
  for (p* pp : sched->allp) {
    if (pp->status.load(std::memory_order_acquire) != pstatus::running) continue;
    m* mp = pp->curm.load(std::memory_order_relaxed);
    g* gp = mp ? mp->curg.load(std::memory_order_relaxed) : nullptr;
    // As preempt_request: never a goroutine in a blocking call.
    if (gp && gp->status.load(std::memory_order_relaxed) == gstatus::running) preempt_kick(mp);
  }
}

void netpoll_break() {
  if (g_kind == netpoll_backend::uring) {
    std::uint64_t one = 1;
    while (write(g_efd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  } else if (g_kind == netpoll_backend::epoll) {
    g_epoll->wake();
  }
}

// ---- Descriptors -------------------------------------------------------------

poll_desc* pd_open(int fd, std::error_code& ec) {
  if (g_kind == netpoll_backend::none) {
    ec = std::make_error_code(std::errc::operation_not_permitted);
    return nullptr;
  }
  poll_desc* pd;
  {
    std::lock_guard lock(g_pd_mu);
    pd = g_pd_free;
    if (pd) g_pd_free = pd->free_next;
  }
  if (!pd) pd = new poll_desc;
  pd->mu.lock();
  pd->fd = fd;
  pd->fdref.store(1, std::memory_order_relaxed);  // the owner's, until pd_close
  pd->refs.store(2, std::memory_order_relaxed);   // the owner object and the open fd
  pd->closing = false;
  pd->close_waiter = nullptr;
  pd->rready = pd->wready = false;
  pd->rg = pd->wg = nullptr;
  pd->rop = pd->wop = nullptr;
  pd->rd.store(0, std::memory_order_relaxed);
  pd->wd.store(0, std::memory_order_relaxed);
  if (pd_extra* x = pd->x) {
    x->ms_armed = false;
    x->ms_ring = nullptr;
    x->accept_waiter = nullptr;
    x->accepted.clear();
    x->accept_error = 0;
  }
  pd->mu.unlock();
  int flags = fcntl(fd, F_GETFL);
  if (g_kind == netpoll_backend::epoll) {
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    if (int rc = g_epoll->add(fd, pd); rc != 0) {
      ec = std::error_code(-rc, std::generic_category());
      pd->fd = -1;  // the caller keeps fd
      pd->fdref.store(0, std::memory_order_relaxed);
      pd->refs.store(1, std::memory_order_relaxed);
      pd_unref(pd);
      return nullptr;
    }
  } else {
    // io_uring does the waiting; a blocking socket lets it (an O_NONBLOCK one
    // would make some kernels fail requests with EAGAIN instead).
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  }
  return pd;
}

int pd_fd_acquire(poll_desc* pd) {
  return fd_incref(pd) ? pd->fd : -1;
}

void pd_fd_release(poll_desc* pd) {
  fd_decref(pd);
}

bool pd_closed(poll_desc* pd) {
  return pd->fdref.load(std::memory_order_acquire) & fd_closed_bit;
}

bool pd_close(poll_desc* pd) {
  if (pd->fdref.fetch_or(fd_closed_bit, std::memory_order_acq_rel) & fd_closed_bit) return false;
  // From here no operation takes a new reference. Those holding one are
  // woken or cancelled below; each sees `closing` under mu before it would
  // name the fd again, fails, and drops its reference.
  pd->mu.lock();
  pd->closing = true;
  g* r = interrupt_side(pd, true);
  g* w = interrupt_side(pd, false);
  ms_cancel(pd);
  if (pd->x) {
    for (int fd : pd->x->accepted) ::close(fd);
    pd->x->accepted.clear();
  }
  pd_extra* x = pd->x;
  pd->mu.unlock();
  if (r) goready(r, false);
  if (w) goready(w, false);
  if (x && del_timer(&x->rt)) pd_unref(pd);
  if (x && del_timer(&x->wt)) pd_unref(pd);
  // Drop the owner's reference to the fd; with operations still in progress
  // the last of them closes it. As Go's Close, wait for that: callers expect
  // the address to be free, and the peer to see the close, once close
  // returns. The wait is short (the operations are failing already); off a
  // goroutine (a conn destroyed outside run) there is nobody to park.
  g* gp = getg();
  if (gp) pd_ref(pd);  // pd must outlive the wait even if the owner drops it
  fd_decref(pd);
  if (!gp) return true;
  pd->mu.lock();
  if (pd->fd >= 0) {
    pd->close_waiter = gp;
    gopark(unlock_pd, pd, waitreason::semacquire);  // Go's runtime_Semacquire(&fd.csema)
  } else {
    pd->mu.unlock();
  }
  pd_unref(pd);
  return true;
}

void pd_release(poll_desc* pd) {
  pd_unref(pd);
}

bool pd_set_deadline(poll_desc* pd, char mode, std::int64_t deadline) {
  if (!fd_incref(pd)) return false;
  pd->mu.lock();
  pd_extra* x = extra(pd);
  pd->mu.unlock();
  for (int side = 0; side < 2; ++side) {
    const bool read_side = side == 0;
    if (read_side && mode == 'w') continue;
    if (!read_side && mode == 'r') continue;
    timer& t = read_side ? x->rt : x->wt;
    if (del_timer(&t)) pd_unref(pd);
    pd->mu.lock();
    (read_side ? pd->rd : pd->wd).store(deadline, std::memory_order_relaxed);
    g* gp = nullptr;
    if (deadline != 0 && deadline <= platform::nanotime()) {
      gp = interrupt_side(pd, read_side);  // already passed: fail the waiter now
    } else if (deadline != 0 && !pd->closing) {
      t.when = deadline;
      t.period = 0;
      t.f = deadline_fire;
      t.arg = pd;
      pd_ref(pd);
      add_timer(&t);
    }
    pd->mu.unlock();
    if (gp) goready(gp, false);
  }
  fd_decref(pd);
  return true;
}

namespace {

// Common shape of an operation: hold a reference to the fd and the side's
// lock; fail with `closed` without touching the fd once it is closed.
template <class R, class F>
R with_side(poll_desc* pd, bool read_side, std::error_code& ec, R failed, F&& f) {
  if (!fd_incref(pd)) {
    ec = make_error_code(net_errc::closed);
    return failed;
  }
  urge::mutex& side = read_side ? pd->rlock : pd->wlock;
  side.lock();
  auto r = f();
  side.unlock();
  fd_decref(pd);
  return r;
}

std::error_code errno_code(int e) {
  return {e, std::generic_category()};
}

}  // namespace

std::size_t pd_read(poll_desc* pd, void* buf, std::size_t n, std::error_code& ec) {
  ec.clear();
  return with_side(pd, true, ec, std::size_t{0}, [&]() -> std::size_t {
    if (g_kind == netpoll_backend::uring) {
      std::lock_guard lock(pd->mu);
      uring_op op;
      op.kind = op_kind::read;
      op.buf = buf;
      op.n = n;
      op.poll_first = pd->rdrained;
      std::int32_t res = uring_run(pd, op, true, ec);
      // See "Reading first or waiting first".
      pd->rdrained = g_recv_poll_first && res > 0 && !(op.cflags & IORING_CQE_F_SOCK_NONEMPTY);
      if (ec) return 0;
      return static_cast<std::size_t>(res);
    }
    for (;;) {
      if (side_unusable(pd, true, ec, false)) return 0;
      ssize_t r = ::recv(pd->fd, buf, n, 0);
      if (r >= 0) return static_cast<std::size_t>(r);
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        ec = errno_code(errno);
        return 0;
      }
      if (!epoll_wait_ready(pd, true, ec)) return 0;
    }
  });
}

namespace {

// One send's worth.
std::size_t write_some(poll_desc* pd, const void* buf, std::size_t n, std::error_code& ec) {
  if (g_kind == netpoll_backend::uring) {
    std::lock_guard lock(pd->mu);
    uring_op op;
    op.kind = op_kind::write;
    op.buf = const_cast<void*>(buf);
    op.n = n;
    std::int32_t res = uring_run(pd, op, false, ec);
    if (ec) return 0;
    return static_cast<std::size_t>(res);
  }
  for (;;) {
    if (side_unusable(pd, false, ec, false)) return 0;
    ssize_t r = ::send(pd->fd, buf, n, MSG_NOSIGNAL);
    if (r >= 0) return static_cast<std::size_t>(r);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      ec = errno_code(errno);
      return 0;
    }
    if (!epoll_wait_ready(pd, false, ec)) return 0;
  }
}

}  // namespace

// All of buf in one hold of the write side, as Go's Write: concurrent writers
// do not interleave their partial writes, and the descriptor stays referenced
// between them (a close from another goroutine between two partial writes
// must not let it be recycled under the writer).
std::size_t pd_write(poll_desc* pd, const void* buf, std::size_t n, std::error_code& ec) {
  ec.clear();
  return with_side(pd, false, ec, std::size_t{0}, [&]() -> std::size_t {
    std::size_t done = 0;
    while (done < n) {
      std::size_t k = write_some(pd, static_cast<const char*>(buf) + done, n - done, ec);
      if (ec) break;
      if (k == 0) {  // no progress on a stream socket: not expected, but never spin
        ec = std::make_error_code(std::errc::io_error);
        break;
      }
      done += k;
    }
    return done;
  });
}

int pd_accept(poll_desc* pd, sockaddr* addr, socklen_t* len, std::error_code& ec) {
  ec.clear();
  return with_side(pd, true, ec, -1, [&]() -> int {
    if (g_kind == netpoll_backend::uring && g_multishot_accept) {
      std::lock_guard lock(pd->mu);
      return ms_accept(pd, addr, len, ec);
    }
    if (g_kind == netpoll_backend::uring) {
      std::lock_guard lock(pd->mu);
      uring_op op;
      op.kind = op_kind::accept;
      op.addr = addr;
      op.addrlen = len;
      std::int32_t res = uring_run(pd, op, true, ec);
      if (ec) return -1;
      return res;
    }
    for (;;) {
      if (side_unusable(pd, true, ec, false)) return -1;
      int fd = ::accept4(pd->fd, addr, len, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) return fd;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        ec = errno_code(errno);
        return -1;
      }
      if (!epoll_wait_ready(pd, true, ec)) return -1;
    }
  });
}

void pd_connect(poll_desc* pd, const sockaddr* addr, socklen_t len, std::error_code& ec) {
  ec.clear();
  with_side(pd, false, ec, 0, [&]() -> int {
    if (g_kind == netpoll_backend::uring) {
      std::lock_guard lock(pd->mu);
      uring_op op;
      op.kind = op_kind::connect;
      op.caddr = addr;
      op.clen = len;
      uring_run(pd, op, false, ec);
      return 0;
    }
    // An unconnected socket reports writable (and hung up) when registered:
    // forget that before connecting, so that what sets the latch from here
    // on is the connection's own progress.
    pd->mu.lock();
    pd->wready = false;
    pd->mu.unlock();
    if (::connect(pd->fd, addr, len) == 0) return 0;
    if (errno != EINPROGRESS && errno != EINTR) {
      ec = errno_code(errno);
      return 0;
    }
    for (;;) {
      if (!epoll_wait_ready(pd, false, ec)) return 0;
      int err = 0;
      socklen_t elen = sizeof err;
      getsockopt(pd->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
      if (err == 0) {
        // Writable with no error: connected (or still in progress on a
        // spurious wake-up; getpeername tells).
        sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        if (getpeername(pd->fd, reinterpret_cast<sockaddr*>(&peer), &plen) == 0) return 0;
        continue;
      }
      ec = errno_code(err);
      return 0;
    }
  });
}

}  // namespace urge::runtime
