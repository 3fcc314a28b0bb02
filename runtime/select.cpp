// select (Go's select.go): several channel operations, the first that can
// proceed wins.
//
// selectgo follows Go's algorithm:
//  1. Shuffle the cases into a random poll order (so that ready cases are
//     chosen uniformly) and sort them by channel address into a lock order;
//     lock every channel in lock order, once each even if it appears in
//     several cases, so two selects over the same channels cannot deadlock.
//  2. Pass 1: in poll order, look for a case that can proceed now (a waiting
//     peer, buffer room or data, a closed channel); do it and return.
//  3. Pass 2 (nothing ready, no default): queue one waiter record per case,
//     all on this goroutine's stack and sharing one "done" flag, then park;
//     the channels are unlocked after the switch (selparkcommit).
//  4. Whoever wakes us won the flag and recorded its record in g::param.
//     Relock everything, withdraw the other records (pass 3), unlock, return.
// There is no polling: a blocked select costs nothing until a peer arrives.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <stdexcept>

#include "platform/clock.hpp"
#include "runtime/chan.hpp"
#include "urge/select.hpp"

namespace urge::runtime {

namespace {

// A per-thread xorshift64*. Not inlined: a thread_local's address must not be
// cached across a context switch that may move the goroutine to another
// thread (see getm in proc.cpp). initial-exec: no __tls_get_addr call.
thread_local std::uint64_t rand_state __attribute__((tls_model("initial-exec"))) = 0;

__attribute__((noinline)) std::uint32_t cheaprand() {
  std::uint64_t& state = rand_state;
  std::uint64_t x = state;
  if (x == 0) {
    x = static_cast<std::uint64_t>(platform::nanotime()) ^
        reinterpret_cast<std::uintptr_t>(&state) ^ 0x9E3779B97F4A7C15ULL;
    if (x == 0) x = 1;
  }
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  state = x;
  return static_cast<std::uint32_t>((x * 0x2545F4914F6CDD1DULL) >> 32);
}

// Uniform in [0, n) (Lemire's multiply-shift, as Go's fastrandn).
std::uint32_t cheaprandn(std::uint32_t n) {
  return static_cast<std::uint32_t>((std::uint64_t{cheaprand()} * n) >> 32);
}

using detail::scase;

bool chan_less(const hchan* a, const hchan* b) {
  return std::less<const hchan*>{}(a, b);
}

void sellock(const scase* cases, const std::uint16_t* lockorder, std::size_t n) {
  hchan* prev = nullptr;
  for (std::size_t i = 0; i < n; ++i) {
    hchan* c = cases[lockorder[i]].c;
    if (c != prev) {
      c->lock.lock();
      prev = c;
    }
  }
}

// Unlocks in reverse lock order. Also the park's unlockf: the cases and
// orders live on the parked goroutine's stack, which stays valid only while
// we hold at least one of its channels (the goroutine must relock them all
// before it can return). So each entry is read before the lock that guards
// it is dropped, and nothing is read after the last unlock.
void selunlock(const scase* cases, const std::uint16_t* lockorder, std::size_t n) {
  for (std::size_t i = n; i-- > 0;) {
    hchan* c = cases[lockorder[i]].c;
    if (i > 0 && c == cases[lockorder[i - 1]].c) continue;  // unlocked with its last entry
    c->lock.unlock();
  }
}

struct park_state {
  const scase* cases;
  const std::uint16_t* lockorder;
  std::size_t n;
};

bool selparkcommit(g*, void* arg) {
  const auto* ps = static_cast<const park_state*>(arg);
  const scase* cases = ps->cases;
  const std::uint16_t* lockorder = ps->lockorder;
  const std::size_t n = ps->n;
  selunlock(cases, lockorder, n);
  return true;
}

[[noreturn]] void select_on_closed(const scase* cases, const std::uint16_t* lockorder,
                                   std::size_t n) {
  selunlock(cases, lockorder, n);
  throw closed_channel_error("send on closed channel");
}

// Room for small selects without touching the heap.
constexpr std::size_t kSmall = 8;

}  // namespace

}  // namespace urge::runtime

namespace urge::detail {

using namespace urge::runtime;

int selectgo(scase* cases, std::size_t n, bool block, bool* recv_ok) {
  if (n > 0xffff) throw std::length_error("urge::select: more than 65535 cases");
  std::uint16_t small_order[2 * kSmall];
  std::unique_ptr<std::uint16_t[]> big_order;
  std::uint16_t* pollorder = small_order;
  if (n > kSmall) {
    big_order = std::make_unique<std::uint16_t[]>(2 * n);
    pollorder = big_order.get();
  }
  std::uint16_t* lockorder = pollorder + n;

  // Poll order: an inside-out Fisher-Yates shuffle of the non-nil cases.
  std::size_t m = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!cases[i].c) continue;
    std::uint32_t j = m == 0 ? 0 : cheaprandn(static_cast<std::uint32_t>(m + 1));
    pollorder[m] = pollorder[j];
    pollorder[j] = static_cast<std::uint16_t>(i);
    ++m;
  }
  if (m == 0) {
    if (!block) {
      check_preempt_inline();
      return -1;
    }
    if (!getg()) throw std::logic_error("urge::select would block outside a goroutine");
    block_forever(waitreason::select);  // only nil channels: Go blocks for ever too
  }

  // Lock order: by channel address, starting from the poll order so that
  // cases on one channel stay shuffled.
  std::copy(pollorder, pollorder + m, lockorder);
  auto by_chan = [cases](std::uint16_t a, std::uint16_t b) {
    return chan_less(cases[a].c, cases[b].c);
  };
  if (m <= 16) {
    for (std::size_t i = 1; i < m; ++i) {
      std::uint16_t k = lockorder[i];
      std::size_t j = i;
      for (; j > 0 && by_chan(k, lockorder[j - 1]); --j) lockorder[j] = lockorder[j - 1];
      lockorder[j] = k;
    }
  } else {
    std::sort(lockorder, lockorder + m, by_chan);
  }

  sellock(cases, lockorder, m);

  // Pass 1: something ready now? Returning without parking is a cooperative
  // preemption point, as in chansend.
  for (std::size_t i = 0; i < m; ++i) {
    const std::size_t k = pollorder[i];
    scase& cs = cases[k];
    hchan* c = cs.c;
    if (cs.send) {
      if (c->closed.load(std::memory_order_relaxed)) select_on_closed(cases, lockorder, m);
      if (sudog* sg = c->recvq.dequeue()) {
        g* gp = send_to_waiter(c, sg, cs.elem);
        selunlock(cases, lockorder, m);
        goready(gp, true);
        check_preempt_inline();
        return static_cast<int>(k);
      }
      if (c->qcount.load(std::memory_order_relaxed) < c->dataqsiz) {
        buf_send(c, cs.elem);
        selunlock(cases, lockorder, m);
        check_preempt_inline();
        return static_cast<int>(k);
      }
    } else {
      if (sudog* sg = c->sendq.dequeue()) {
        g* gp = recv_from_waiter(c, sg, cs.elem);
        selunlock(cases, lockorder, m);
        goready(gp, true);
        *recv_ok = true;
        check_preempt_inline();
        return static_cast<int>(k);
      }
      if (c->qcount.load(std::memory_order_relaxed) > 0) {
        buf_recv(c, cs.elem);
        selunlock(cases, lockorder, m);
        *recv_ok = true;
        check_preempt_inline();
        return static_cast<int>(k);
      }
      if (c->closed.load(std::memory_order_relaxed)) {
        selunlock(cases, lockorder, m);
        *recv_ok = false;
        check_preempt_inline();
        return static_cast<int>(k);
      }
    }
  }
  if (!block) {
    selunlock(cases, lockorder, m);
    check_preempt_inline();
    return -1;
  }

  // Pass 2: queue on every channel and park.
  g* gp = getg();
  if (!gp) {
    selunlock(cases, lockorder, m);
    throw std::logic_error("urge::select would block outside a goroutine");
  }
  alignas(sudog) unsigned char small_sg[kSmall * sizeof(sudog)];
  std::unique_ptr<sudog[]> big_sg;
  sudog* sgs = reinterpret_cast<sudog*>(small_sg);
  if (n > kSmall) {
    big_sg = std::make_unique<sudog[]>(n);
    sgs = big_sg.get();
  }
  std::atomic<std::uint32_t> done{0};
  for (std::size_t i = 0; i < m; ++i) {
    const std::size_t k = lockorder[i];
    sudog* sg = ::new (&sgs[k]) sudog;
    sg->gp = gp;
    sg->elem = cases[k].elem;
    sg->select_done = &done;
    hchan* c = cases[k].c;
    (cases[k].send ? c->sendq : c->recvq).enqueue(sg);
  }
  gp->param = nullptr;
  park_state ps{cases, lockorder, m};
  gopark(selparkcommit, &ps, waitreason::select);

  // Pass 3: the waker left its record of ours in param; withdraw the rest.
  sellock(cases, lockorder, m);
  auto* win = static_cast<sudog*>(gp->param);
  gp->param = nullptr;
  std::size_t chosen = n;
  bool ok = false;
  for (std::size_t i = 0; i < m; ++i) {
    const std::size_t k = lockorder[i];
    sudog* sg = &sgs[k];
    if (sg == win) {
      chosen = k;
      ok = sg->success;
    } else {
      hchan* c = cases[k].c;
      (cases[k].send ? c->sendq : c->recvq).remove(sg);
    }
  }
  if (chosen == n) {
    std::fputs("fatal error: urge: select woken without a case\n", stderr);
    std::abort();
  }
  if (cases[chosen].send && !ok) select_on_closed(cases, lockorder, m);
  selunlock(cases, lockorder, m);
  *recv_ok = ok;
  return static_cast<int>(chosen);
}

void select_block_forever() {
  if (!getg()) throw std::logic_error("urge::select with no cases outside a goroutine");
  block_forever(waitreason::select_no_cases);
}

}  // namespace urge::detail

namespace urge {

std::size_t selector::select() {
  if (entries_.empty()) detail::select_block_forever();
  bool ok = false;
  int r = detail::selectgo(cases_.data(), cases_.size(), default_ == npos, &ok);
  const std::size_t k = r < 0 ? default_ : static_cast<std::size_t>(r);
  // A send case's value is gone once sent: switch the case off.
  if (cases_[k].send) cases_[k].c = nullptr;
  entries_[k]->fire(ok);
  return k;
}

void selector::check_no_default() const {
  if (default_ != npos) throw std::logic_error("urge::selector: at most one on_default");
}

}  // namespace urge
