// Semaphores for the sync package; see runtime/sema.hpp.
#include "runtime/sema.hpp"

#include <sched.h>

#include "platform/clock.hpp"
#include "runtime/sched_internal.hpp"

namespace urge::runtime {

namespace {

// A waiter record. It lives on the waiting goroutine's stack: once the
// goroutine is readied, nobody else may touch it.
struct sudog {
  g* gp = nullptr;
  const void* addr = nullptr;
  sudog* next = nullptr;
  sudog* prev = nullptr;
  bool ticket = false;  // handoff: the count was given to this waiter directly
};

struct alignas(64) semaroot {
  futex_mutex lock;
  sudog* head = nullptr;                // lock
  sudog* tail = nullptr;                // lock
  std::atomic<std::uint32_t> nwait{0};  // waiters of any address in this root
  // The run (sched->start_time) whose waiters the list holds; lock. The table
  // outlives run(): goroutines abandoned when main returns leave their
  // records (on stacks since freed) behind, which a later run must not walk.
  std::int64_t epoch = 0;
};

constexpr std::size_t semtabsize = 251;  // prime, as Go's
semaroot semtable[semtabsize];

semaroot* root_for(const void* addr) {
  return &semtable[(reinterpret_cast<std::uintptr_t>(addr) >> 3) % semtabsize];
}

bool cansemacquire(std::atomic<std::uint32_t>* addr) {
  std::uint32_t v = addr->load(std::memory_order_seq_cst);
  while (v != 0) {
    if (addr->compare_exchange_weak(v, v - 1, std::memory_order_seq_cst)) return true;
  }
  return false;
}

void enqueue(semaroot* r, sudog* s, bool lifo) {
  if (lifo && r->head) {
    s->next = r->head;
    r->head->prev = s;
    r->head = s;
    return;
  }
  s->prev = r->tail;
  if (r->tail) {
    r->tail->next = s;
  } else {
    r->head = s;
  }
  r->tail = s;
}

void dequeue(semaroot* r, sudog* s) {
  if (s->prev) {
    s->prev->next = s->next;
  } else {
    r->head = s->next;
  }
  if (s->next) {
    s->next->prev = s->prev;
  } else {
    r->tail = s->prev;
  }
  s->next = s->prev = nullptr;
}

// Locks r, first forgetting the waiters of an earlier run (see epoch).
void lock_root(semaroot* r) {
  r->lock.lock();
  const std::int64_t epoch = sched ? sched->start_time : 0;
  if (r->epoch != epoch) {
    r->head = r->tail = nullptr;
    r->nwait.store(0, std::memory_order_relaxed);
    r->epoch = epoch;
  }
}

}  // namespace

// Both are cooperative preemption points when they do not park (see
// chansend in chan.cpp): a loop of uncontended semaphore operations must
// still give its P up when sysmon asks.
void semacquire(std::atomic<std::uint32_t>* addr, bool lifo, waitreason reason) {
  if (cansemacquire(addr)) {
    check_preempt();
    return;
  }
  if (!getg()) {
    // A plain thread (outside urge::run): spin, then sleep in growing steps.
    for (int i = 0; !cansemacquire(addr); ++i) {
      if (i < 100) {
        sched_yield();
      } else {
        platform::usleep_thread(i < 1000 ? 10 : 200);
      }
    }
    return;
  }
  sudog s;
  s.gp = getg();
  s.addr = addr;
  semaroot* root = root_for(addr);
  for (;;) {
    lock_root(root);
    // Announce the waiter before the final check: semrelease increments the
    // count and then reads nwait, so one of the two sees the other (seq_cst).
    root->nwait.fetch_add(1, std::memory_order_seq_cst);
    if (cansemacquire(addr)) {
      root->nwait.fetch_sub(1, std::memory_order_seq_cst);
      root->lock.unlock();
      check_preempt();
      return;
    }
    enqueue(root, &s, lifo);
    goparkunlock(s.gp, &root->lock, reason);
    if (s.ticket || cansemacquire(addr)) return;
    lifo = true;  // woken but beaten to it: wait at the front
  }
}

static void semrelease_wake(std::atomic<std::uint32_t>* addr, std::uint32_t n, bool handoff);

void semrelease(std::atomic<std::uint32_t>* addr, std::uint32_t n, bool handoff) {
  semrelease_wake(addr, n, handoff);
  check_preempt();
}

static void semrelease_wake(std::atomic<std::uint32_t>* addr, std::uint32_t n, bool handoff) {
  addr->fetch_add(n, std::memory_order_seq_cst);
  // From here on the object holding *addr may be gone: touch only the table.
  semaroot* root = root_for(addr);
  if (root->nwait.load(std::memory_order_seq_cst) == 0) return;
  for (std::uint32_t i = 0; i < n; ++i) {
    lock_root(root);
    if (root->nwait.load(std::memory_order_relaxed) == 0) {
      root->lock.unlock();
      return;
    }
    sudog* s = root->head;
    while (s && s->addr != addr) s = s->next;
    if (!s) {
      root->lock.unlock();
      return;
    }
    dequeue(root, s);
    root->nwait.fetch_sub(1, std::memory_order_seq_cst);
    root->lock.unlock();
    if (handoff && cansemacquire(addr)) s->ticket = true;
    g* gp = s->gp;  // s lives on gp's stack: read it before readying gp
    goready(gp, true);
    if (handoff && getg()) {
      // Starvation mode: let the waiter, now in runnext, run at once.
      yield();
    }
  }
}

}  // namespace urge::runtime
