// Channels: make, send, receive, close (Go's chan.go). See runtime/chan.hpp.
#include "runtime/chan.hpp"

#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "runtime/sched_internal.hpp"

namespace urge::runtime {

namespace {

[[noreturn]] __attribute__((noinline, cold)) void throw_no_goroutine(hchan* c, const char* what) {
  if (c) c->lock.unlock();
  throw std::logic_error(std::string("urge::chan: ") + what +
                         " would block outside a goroutine (call it from urge::run)");
}

// Blocking needs a goroutine to park: a plain thread cannot wait here.
inline g* parking_goroutine(hchan* c, const char* what) {
  g* gp = getg();
  if (__builtin_expect(!gp, 0)) throw_no_goroutine(c, what);
  return gp;
}

constexpr std::size_t buf_offset(std::size_t align) {
  return (sizeof(hchan) + align - 1) / align * align;
}

std::align_val_t chan_align(const detail::chan_elem* t) {
  return std::align_val_t{t->align > alignof(hchan) ? t->align : alignof(hchan)};
}

// Which way a channel operation went.
enum class op { done, closed, would_block };

// Go's chansend. ep is the T to move from.
//
// Every way out that does not park is a cooperative preemption point
// (check_preempt): a goroutine whose channel operations never block (a
// buffer with room, a waiting partner, a polling try_send) must still give
// its P up when sysmon asks, even with asynchronous preemption off. A park
// needs no check: the switch is one.
__attribute__((always_inline)) inline op chansend(hchan* c, void* ep, bool block) {
  if (!c) {
    if (!block) return op::would_block;
    parking_goroutine(nullptr, "send on a nil channel");
    block_forever(waitreason::chan_send_nil_chan);
  }
  // Fast path for a failing non-blocking send: an open, full buffer. Reading
  // closed before qcount is what makes the two loads a valid snapshot: once
  // closed is seen false, the channel was open when qcount was read too
  // (Go's reasoning in chansend).
  if (!block && c->dataqsiz != 0 && !c->closed.load(std::memory_order_relaxed) &&
      c->qcount.load(std::memory_order_relaxed) == c->dataqsiz) {
    check_preempt_inline();
    return op::would_block;
  }
  c->lock.lock();
  if (c->closed.load(std::memory_order_relaxed)) {
    c->lock.unlock();
    return op::closed;
  }
  if (sudog* sg = c->recvq.dequeue()) {
    g* gp = send_to_waiter(c, sg, ep);
    c->lock.unlock();
    goready(gp, true);
    check_preempt_inline();
    return op::done;
  }
  if (c->qcount.load(std::memory_order_relaxed) < c->dataqsiz) {
    buf_send(c, ep);
    c->lock.unlock();
    check_preempt_inline();
    return op::done;
  }
  if (!block) {
    c->lock.unlock();
    check_preempt_inline();
    return op::would_block;
  }
  sudog s;
  s.gp = parking_goroutine(c, "send");
  s.elem = ep;
  c->sendq.enqueue(&s);
  goparkunlock(s.gp, &c->lock, waitreason::chan_send);
  // Woken by a receiver (it took our value) or by close.
  return s.success ? op::done : op::closed;
}

// Go's chanrecv. opt is the std::optional<T> to emplace into; left empty
// when the channel is closed.
__attribute__((always_inline)) inline op chanrecv(hchan* c, void* opt, bool block) {
  if (!c) {
    if (!block) return op::would_block;
    parking_goroutine(nullptr, "receive from a nil channel");
    block_forever(waitreason::chan_receive_nil_chan);
  }
  // Fast path for a failing non-blocking receive on a buffered channel (Go's):
  // empty and open, or empty after being seen closed (a closed channel never
  // fills again, so the second look settles it).
  if (!block && c->dataqsiz != 0 && c->qcount.load(std::memory_order_relaxed) == 0) {
    if (!c->closed.load(std::memory_order_acquire)) {
      check_preempt_inline();
      return op::would_block;
    }
    if (c->qcount.load(std::memory_order_relaxed) == 0) return op::closed;
  }
  c->lock.lock();
  if (c->closed.load(std::memory_order_relaxed) && c->qcount.load(std::memory_order_relaxed) == 0) {
    c->lock.unlock();
    check_preempt_inline();  // a loop draining a closed channel is a loop too
    return op::closed;
  }
  if (sudog* sg = c->sendq.dequeue()) {
    g* gp = recv_from_waiter(c, sg, opt);
    c->lock.unlock();
    goready(gp, true);
    check_preempt_inline();
    return op::done;
  }
  if (c->qcount.load(std::memory_order_relaxed) > 0) {
    buf_recv(c, opt);
    c->lock.unlock();
    check_preempt_inline();
    return op::done;
  }
  if (!block) {
    c->lock.unlock();
    check_preempt_inline();
    return op::would_block;
  }
  sudog s;
  s.gp = parking_goroutine(c, "receive");
  s.elem = opt;
  c->recvq.enqueue(&s);
  goparkunlock(s.gp, &c->lock, waitreason::chan_receive);
  return s.success ? op::done : op::closed;
}

[[noreturn]] void throw_closed(const char* what) {
  throw closed_channel_error(what);
}

}  // namespace

bool chan_send_nonblocking(hchan* c, void* elem) {
  return chansend(c, elem, false) == op::done;
}

void block_forever(waitreason reason) {
  gopark(nullptr, nullptr, reason);
  // Nobody can ready us: gopark returns only if the runtime is broken.
  std::fputs("fatal error: urge: a goroutine blocked for ever was woken\n", stderr);
  std::abort();
}

}  // namespace urge::runtime

namespace urge::detail {

using namespace urge::runtime;

hchan* chan_make(const chan_elem* type, std::size_t capacity) {
  // Go's makechan limits: the buffer's size in bytes must fit.
  if (type->size != 0 && capacity > (std::size_t{1} << 40) / type->size) {
    throw std::length_error("urge::chan: capacity out of range");
  }
  const std::size_t off = buf_offset(type->align);
  void* mem = ::operator new(off + capacity * type->size, chan_align(type));
  auto* c = ::new (mem) hchan;
  c->dataqsiz = capacity;
  c->type = type;
  c->buf = static_cast<unsigned char*>(mem) + off;
  return c;
}

void chan_retain(hchan* c) noexcept {
  c->refs.fetch_add(1, std::memory_order_relaxed);
}

void chan_release(hchan* c) noexcept {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // The last handle: nobody can be blocked on it (a blocked goroutine holds
  // a handle). Destroy what is still buffered.
  for (std::size_t i = 0, n = c->qcount.load(std::memory_order_relaxed); i < n; ++i) {
    c->destroy(c->slot((c->recvx + i) % c->dataqsiz));
  }
  std::align_val_t align = chan_align(c->type);
  c->~hchan();
  ::operator delete(c, align);
}

void chan_send(hchan* c, void* elem) {
  if (chansend(c, elem, true) == op::closed) throw_closed("send on closed channel");
}

bool chan_recv(hchan* c, void* opt) {
  return chanrecv(c, opt, true) == op::done;
}

bool chan_try_send(hchan* c, void* elem) {
  op r = chansend(c, elem, false);
  if (r == op::closed) throw_closed("send on closed channel");
  return r == op::done;
}

recv_status chan_try_recv(hchan* c, void* opt) {
  switch (chanrecv(c, opt, false)) {
    case op::done:
      return recv_status::received;
    case op::closed:
      return recv_status::closed;
    case op::would_block:
      break;
  }
  return recv_status::empty;
}

void chan_close(hchan* c) {
  if (!c) throw_closed("close of nil channel");
  c->lock.lock();
  if (c->closed.load(std::memory_order_relaxed)) {
    c->lock.unlock();
    throw_closed("close of closed channel");
  }
  c->closed.store(true, std::memory_order_release);
  // Collect every waiter, chained through `next` (they are out of the
  // queues now), and ready them after unlocking. Receivers get nothing
  // (their optional stays empty); senders learn from success == false.
  sudog* wake = nullptr;
  for (waitq* q : {&c->recvq, &c->sendq}) {
    while (sudog* sg = q->dequeue()) {
      sg->success = false;
      sg->gp->param = sg;
      sg->next = wake;
      wake = sg;
    }
  }
  c->lock.unlock();
  while (wake) {
    sudog* next = wake->next;  // read before readying: the record dies with its goroutine's frame
    goready(wake->gp, true);
    wake = next;
  }
}

std::size_t chan_len(const hchan* c) noexcept {
  return c ? c->qcount.load(std::memory_order_relaxed) : 0;
}

std::size_t chan_cap(const hchan* c) noexcept {
  return c ? c->dataqsiz : 0;
}

}  // namespace urge::detail
