// Channels (Go's chan.go): the channel object and its wait queues, shared by
// chan.cpp (send, receive, close) and select.cpp.
//
// A channel is a ring buffer of `capacity` elements plus two FIFO queues of
// waiter records (Go's sudogs): goroutines blocked sending (sendq) and
// receiving (recvq). One lock protects all of it. A waiter record lives on
// the blocked goroutine's stack; whoever dequeues it moves the value straight
// to (or from) that goroutine's own variable, marks the record and readies
// the goroutine, and must not touch the record afterwards: the goroutine may
// already be running on another M and have returned.
//
// The element type is erased: detail::chan_elem (urge/chan.hpp) moves and
// destroys elements. Receivers always receive into a std::optional<T>; a
// sender's value is a T that the sender destroys itself after the send.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "runtime/lock.hpp"
#include "runtime/runtime2.hpp"
#include "urge/chan.hpp"

namespace urge::runtime {

// A goroutine blocked on a channel (Go's sudog). On the goroutine's stack.
// The owner fills gp, elem and select_done before queueing it; from then on
// the record belongs to whoever holds the channel's lock, until a waker has
// dequeued it and readied gp (then to nobody: the frame may be gone).
struct sudog {
  g* gp = nullptr;
  // send: the T to move from; receive: the std::optional<T> to emplace into.
  void* elem = nullptr;
  sudog* next = nullptr;  // queue links: the channel's lock
  sudog* prev = nullptr;
  // A select's records share one flag: the first waker to set it wins the
  // select and the others pass over its records (Go's g.selectDone). nullptr
  // for a plain send or receive.
  std::atomic<std::uint32_t>* select_done = nullptr;
  // Set by the waker before it readies gp: true if a value was passed, false
  // if the channel was closed.
  bool success = false;
};

// A FIFO of waiter records. Needs the channel's lock.
struct waitq {
  sudog* first = nullptr;
  sudog* last = nullptr;

  void enqueue(sudog* s) {
    s->next = nullptr;
    s->prev = last;
    if (last) {
      last->next = s;
    } else {
      first = s;
    }
    last = s;
  }

  // Removes and returns the first waiter that can still be woken: a select's
  // record whose select another case already won is dropped on the way.
  sudog* dequeue() {
    for (;;) {
      sudog* s = first;
      if (!s) return nullptr;
      first = s->next;
      if (first) {
        first->prev = nullptr;
      } else {
        last = nullptr;
      }
      s->next = s->prev = nullptr;
      if (s->select_done) {
        std::uint32_t expect = 0;
        if (!s->select_done->compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) {
          continue;
        }
      }
      return s;
    }
  }

  // Removes s if it is still queued (a select withdrawing its losing cases;
  // dequeue may have dropped it already, leaving next == prev == nullptr).
  void remove(sudog* s) {
    if (s->prev) {
      s->prev->next = s->next;
    } else if (first == s) {
      first = s->next;
    } else {
      return;  // not queued
    }
    if (s->next) {
      s->next->prev = s->prev;
    } else {
      last = s->prev;
    }
    s->next = s->prev = nullptr;
  }
};

}  // namespace urge::runtime

namespace urge::detail {

// The channel (Go's hchan). Allocated with its buffer right behind it.
struct hchan {
  // Handles and other owners (a pending timer); the last release frees it.
  std::atomic<std::size_t> refs{1};
  runtime::futex_mutex lock;
  // Elements in the buffer. Written under lock; read without it by len()
  // and by the lock-free fast paths of the non-blocking operations.
  std::atomic<std::size_t> qcount{0};
  std::size_t dataqsiz = 0;  // capacity; immutable
  std::size_t sendx = 0;     // next slot to fill; lock
  std::size_t recvx = 0;     // next slot to drain; lock
  // Written under lock (release); read without it by the fast paths. Never
  // goes back to false.
  std::atomic<bool> closed{false};
  runtime::waitq recvq;             // blocked receivers; lock
  runtime::waitq sendq;             // blocked senders; lock
  const chan_elem* type = nullptr;  // immutable
  unsigned char* buf = nullptr;     // dataqsiz elements; immutable pointer

  void* slot(std::size_t i) const { return buf + i * type->size; }

  // Moves the T at src into raw storage at dst.
  void construct(void* dst, void* src) const {
    if (type->trivial) {
      // The common sizes with a constant length, which the compiler turns
      // into a move; a run-time length is a call into libc's memcpy.
      switch (type->size) {
        case 8:
          std::memcpy(dst, src, 8);
          break;
        case 4:
          std::memcpy(dst, src, 4);
          break;
        default:
          std::memcpy(dst, src, type->size);
      }
    } else {
      type->construct(dst, src);
    }
  }
  void destroy(void* p) const {
    if (!type->trivial) type->destroy(p);
  }
};

}  // namespace urge::detail

namespace urge::runtime {

using detail::hchan;

// The parts of a channel operation that need the lock, shared with select.
// Each returns the goroutine to ready (after the caller drops the lock), if
// any.

// Go's send: moves *src into the waiting receiver sg (dequeued from recvq).
inline g* send_to_waiter(hchan* c, sudog* sg, void* src) {
  c->type->emplace(sg->elem, src);
  sg->success = true;
  g* gp = sg->gp;
  gp->param = sg;  // a select learns from this which case won
  return gp;
}

// Go's recv: takes a value for *opt from the waiting sender sg (dequeued
// from sendq): the sender's own value if unbuffered, else the head of the
// full buffer, the sender's value going to its tail.
inline g* recv_from_waiter(hchan* c, sudog* sg, void* opt) {
  if (c->dataqsiz == 0) {
    c->type->emplace(opt, sg->elem);
  } else {
    // The buffer is full (a sender waits): take its head and put the
    // sender's value in the slot freed, which becomes the tail.
    void* qp = c->slot(c->recvx);
    c->type->emplace(opt, qp);
    c->destroy(qp);
    c->construct(qp, sg->elem);
    if (++c->recvx == c->dataqsiz) c->recvx = 0;
    c->sendx = c->recvx;
  }
  sg->success = true;
  g* gp = sg->gp;
  gp->param = sg;
  return gp;
}
// Buffer operations; the caller checked there is room / a value.
inline void buf_send(hchan* c, void* src) {
  c->construct(c->slot(c->sendx), src);
  if (++c->sendx == c->dataqsiz) c->sendx = 0;
  c->qcount.store(c->qcount.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

inline void buf_recv(hchan* c, void* opt) {
  void* qp = c->slot(c->recvx);
  c->type->emplace(opt, qp);
  c->destroy(qp);
  if (++c->recvx == c->dataqsiz) c->recvx = 0;
  c->qcount.store(c->qcount.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
}

// Parks the calling goroutine for ever (nil channel, empty select).
[[noreturn]] void block_forever(waitreason reason);

}  // namespace urge::runtime

namespace urge::runtime {

// A non-blocking send that never throws, for timer callbacks: false if the
// value was not sent (no room, no receiver, closed or nil channel).
bool chan_send_nonblocking(hchan* c, void* elem);

}  // namespace urge::runtime
