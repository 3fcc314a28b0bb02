// The goroutine scheduler (Go's proc.go).
//
// The main concepts (G, M, P) are described in runtime2.hpp. This file holds
// the scheduler proper: creating goroutines, switching between them, finding
// work (local queue, global queue, stealing), parking and unparking Ms,
// blocking calls, the run() lifecycle and deadlock detection. sysmon lives in
// sysmon.cpp, timers in timer.cpp, the run queue in runq.hpp.
//
// Parking
// -------
// Go switches from a goroutine to the scheduler's own stack (g0) on every
// reschedule: mcall(park_m), schedule(), gogo(next). That is two context
// switches per goroutine switch. urge switches straight from one goroutine to
// the next when the P has local work, and to g0 only when it must look
// further (steal, sleep). The difficulty is the goroutine being left: it may
// only become visible to other Ms (runnable in a queue, or findable by a
// channel operation once a lock is dropped) after its context is saved, or
// another M could resume it while we are still running on its stack. So the
// leaving context does not publish itself: it records what must be done
// (m::pending: "make it runnable", "call unlockf", "recycle its stack") and
// the context that is switched to performs it, first thing, on the same M
// (run_pending). Go's gopark/park_m split is the same idea: unlockf runs on
// g0, after the switch.
//
// Worker thread parking/unparking
// -------------------------------
// As in Go: we want enough running Ms to use the available Ps, and to park
// the rest so that an idle runtime uses no CPU. An M that runs out of local
// work becomes "spinning" (counted in sched.nmspinning) while it looks for
// work in the global queue, in timers and in other Ps' queues. We unpark an
// M (wakep) when there is an idle P, no M is spinning, and new work appears;
// a spinning M that finds work and was the last spinner unparks another
// (resetspinning), so bursts of work spread without a thundering herd. At
// most half of the busy Ps may have spinning Ms, so spinning does not eat
// the CPU that running goroutines need.
//
// Delicate dance: an M that finds nothing must release its P, decrement
// nmspinning and only then re-check every run queue (and timers) before
// sleeping. A goroutine made ready in between either sees nmspinning == 0 and
// an idle P and calls wakep, or is seen by the re-check. Doing the re-check
// before the decrement would lose wakeups.
//
// Timed wait
// ----------
// When no M finds work but timers are pending on some P, one M (the timer
// waiter, sched.timer_waiter) sleeps until the earliest of them, on its own
// note, and the others park indefinitely. Adding a timer earlier than the
// waiter's deadline wakes it (wake_netpoller, named after Go's, whose role
// the network poller takes over once it blocks with a timeout). Ms stay out
// of the idle list while they are the timer waiter, so deadlock detection
// does not fire while a timer can still wake a goroutine. When the poll
// readies goroutines, the waiter takes an idle P and runs them itself, as
// Go's findrunnable does with netpoll's list; only when every P is busy do
// they go to the global queue.
//
// Stopped goroutines and their threads
// ------------------------------------
// A goroutine stopped asynchronously (preempt.cpp) may hold addresses derived
// from the thread pointer in registers (a thread_local, errno), so only its
// own M may resume it: it waits on that M's private queue (m::lockedq), which
// the M serves in turns with its P's queues (pick_local, findrunnable) and
// which findrunnable empties before it gives the P up. Go has the same
// constraint for a goroutine locked to its thread (LockOSThread), with one
// goroutine per M; here an M may hold several.
//
// The M can still lose its P with goroutines on lockedq: one of them (or
// another goroutine it runs) makes a blocking call, sysmon hands the P to
// another M, and the call returns while every P is busy. The M then must not
// park as an ordinary idle M, where nothing would ever hand it a P for them
// (run() would report a deadlock, or they would starve while the other Ps
// stay busy). As Go's stoplockedm, it parks outside the idle list
// (m::lockedwait, counted in sched.nmidlelocked) and waits for a P to be
// handed to it; and since the goroutines themselves cannot sit in a run
// queue, a proxy does for them: a g of the M's own (m::lockedproxy, its
// lockedm set), queued globally. Whichever M takes the proxy from a run queue
// (it moves like any goroutine: a batch of the global queue, a steal) hands
// its P to the waiting M and stops itself (startlockedm, as Go's, where the
// taker finds a goroutine whose lockedm is another M). So the proxy competes
// for a P on the same terms as the goroutines in the run queues: the next
// idle P takes it at once, a busy one at its next look at the global queue.
// pick_local cannot act on a proxy while it switches from one goroutine to
// the next (the P must be handed over from g0, after the leaving goroutine's
// pending action), so it leaves it in m::handoff for the g0 loop.
//
// Rejected: letting the waiting M steal an idle P by itself (it would still
// wait for ever while all Ps are busy); queuing the stopped goroutines
// themselves (each taker would have to pass one goroutine to its M, and the
// M to come back for the next: one handoff per goroutine instead of one per
// M); resuming them on another thread after all (see preempt.hpp for why
// that is not safe).
//
// Deadlock detection counts a waiting M as idle, as Go counts nmidlelocked,
// and finds its proxy in a run queue, so it never reports a deadlock while a
// stopped goroutine can still run. Shutdown wakes the waiting Ms with the
// idle ones, so that run() joins every thread.
//
// Exception state
// ---------------
// The C++ runtime keeps the exception state per thread (__cxa_get_globals:
// the stack of exceptions whose catch blocks were entered and not left, and
// the count of exceptions being unwound), but a goroutine may switch inside a
// catch block or in a destructor run by unwinding (a channel operation, a
// lock, a yield, a preemption) and resume on another thread, while other
// goroutines catch and throw on its thread. Each switch therefore saves the
// leaving context's two words into its g (g0's into m::g0_eh) and installs
// those of the context it switches to, as other fiber libraries do (folly's
// fibers, Boost.Fiber with Boost.Context). Otherwise `throw;`,
// std::current_exception() and the end of a catch block act on whatever
// exception was caught last on the thread, and may free it under its owner,
// and std::uncaught_exceptions() counts other goroutines' unwinding. The
// thread's state is reached through m::eh, computed once per thread:
// __cxa_get_globals is a call into libstdc++ with a dynamic TLS access.
#include <cxxabi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <typeinfo>

#include "platform/cpu.hpp"
#include "runtime/netpoll.hpp"
#include "runtime/preempt.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "runtime/trace.hpp"

namespace urge::runtime {

schedt* sched = nullptr;

// initial-exec: one %fs/tpidr-relative load, not a __tls_get_addr call.
thread_local m* tls_m __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

std::atomic<g*> allgs_head{nullptr};  // push-only; Gs are never freed

// Coarse monotonic time (a jiffy's resolution, ~5 ns to read): enough for
// "how long has it waited" and far cheaper than a precise clock per park.
std::int64_t coarse_nanotime() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::uint32_t fastrand(m* mp) {
  // xorshift64*: per-M state, no locks.
  std::uint64_t x = mp->fastrand;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  mp->fastrand = x;
  return static_cast<std::uint32_t>((x * 0x2545F4914F6CDD1DULL) >> 32);
}

[[noreturn]] void fatal(const char* msg) {
  std::fprintf(stderr, "fatal error: %s\n", msg);
  std::fflush(stderr);
  _exit(2);
}

}  // namespace

// getm and getg read a thread-local; they must not be inlined into code that
// runs before and after a context switch, or the compiler may reuse the
// thread-local's address computed on the previous thread.
__attribute__((noinline)) m* getm() {
  asm volatile("" ::: "memory");
  return tls_m;
}

__attribute__((noinline)) g* getg() {
  asm volatile("" ::: "memory");
  m* mp = tls_m;
  return mp ? mp->curg.load(std::memory_order_relaxed) : nullptr;
}

g* allgs() {
  return allgs_head.load(std::memory_order_acquire);
}

// ---- Global run queue (sched.lock) ------------------------------------------

// runqsize mirrors runq.size() for readers without the lock (a hint).
static void globrunq_published() {
  sched->runqsize.store(static_cast<int>(sched->runq.size()), std::memory_order_relaxed);
}

void globrunqput(g* gp) {
  sched->runq.put(gp);
  globrunq_published();
}

// Appends a batch linked through schedlink (a local ring's overflow, the
// poller's readied goroutines: Gs touched just now, so the walk is cheap).
static void globrunqputbatch(g* head, std::uint32_t n) {
  for (g* gp = head; n != 0; --n) {
    g* next = gp->schedlink;
    sched->runq.put(gp);
    gp = next;
  }
  globrunq_published();
}

// Takes a fair share of the global queue (len/gomaxprocs + 1, at most max
// when max > 0, at most half a local ring): returns one, puts the rest in
// pp's local queue. Needs sched.lock. What does not fit in pp's local queue
// (only possible for take_polled_first, which may find it half full) goes
// back to the global queue.
static g* globrunqget(p* pp, int max) {
  int size = sched->runqsize.load(std::memory_order_relaxed);
  if (size == 0) return nullptr;
  int n = size / sched->gomaxprocs + 1;
  if (n > size) n = size;
  if (max > 0 && n > max) n = max;
  if (n > static_cast<int>(run_queue<g>::capacity / 2)) n = run_queue<g>::capacity / 2;
  g* gp = sched->runq.pop();
  for (int i = 1; i < n; ++i) {
    auto overflow = pp->runq.put(sched->runq.pop(), false);
    if (overflow.n) globrunqputbatch(overflow.head, overflow.n);
  }
  globrunq_published();
  return gp;
}

// Puts gp on pp's local queue (runnext if next); overflow goes global.
__attribute__((noinline)) static void runqput_overflow(run_queue<g>::batch overflow) {
  std::lock_guard lock(sched->lock);
  globrunqputbatch(overflow.head, overflow.n);
}

void runqput(p* pp, g* gp, bool next) {
  auto overflow = pp->runq.put(gp, next);
  if (__builtin_expect(overflow.n != 0, 0)) runqput_overflow(overflow);
}

// ---- Idle P and M lists (sched.lock) -----------------------------------------

static void pidleput(p* pp) {
  pp->status.store(pstatus::idle, std::memory_order_release);
  pp->link = sched->pidle;
  sched->pidle = pp;
  sched->npidle.fetch_add(1, std::memory_order_acq_rel);
}

static p* pidleget() {
  p* pp = sched->pidle;
  if (pp) {
    sched->pidle = pp->link;
    sched->npidle.fetch_sub(1, std::memory_order_acq_rel);
    // A new tick for sysmon (nobody owns the P now): it saw this P run
    // before it went idle, and a goroutine that now inherits a time slice
    // from runnext (one a timer readied, say) must not be charged for the
    // idle time as if it had run all along (it was preempted at once). Not
    // in acquirep: a goroutine back from a quick blocking call on its own P
    // keeps its slice, as in Go, or a loop of such calls would never be
    // preempted.
    pp->schedtick++;
    pp->schedtick_pub.store(pp->schedtick, std::memory_order_relaxed);
    pp->left_idle_at.store(platform::nanotime(), std::memory_order_relaxed);
    // A P leaving the idle list means work: sysmon must watch again.
    if (sched->sysmon_wait.load(std::memory_order_relaxed)) {
      sched->sysmon_wait.store(false, std::memory_order_relaxed);
      platform::notewakeup(sched->sysmon_note);
    }
  }
  return pp;
}

static void mput(m* mp) {
  mp->schedlink = sched->midle;
  sched->midle = mp;
  sched->nmidle++;
}

static m* mget() {
  m* mp = sched->midle;
  if (mp) {
    sched->midle = mp->schedlink;
    sched->nmidle--;
  }
  return mp;
}

// ---- P ownership -------------------------------------------------------------

void acquirep(m* mp, p* pp) {
  mp->curp = pp;
  pp->curm.store(mp, std::memory_order_relaxed);
  pp->status.store(pstatus::running, std::memory_order_release);
  if (sched->pin_threads && pp->cpu >= 0 && mp->pinned_cpu != pp->cpu) {
    // Pinning: P i runs on CPU i of the mask. Only a change costs a syscall.
    if (platform::pin_current_thread(pp->cpu)) mp->pinned_cpu = pp->cpu;
  }
}

static p* releasep(m* mp) {
  p* pp = mp->curp;
  pp->curm.store(nullptr, std::memory_order_relaxed);
  mp->curp = nullptr;
  return pp;
}

// ---- Starting and stopping Ms ----------------------------------------------

static void mstart(m* mp);
static void checkdead();

static void newm(p* pp, bool spinning) {
  auto* mp = new m;
  mp->nextp = pp;
  mp->spinning = spinning;
  // The check, the push on allm and the thread's start under one hold of
  // the lock: shutdown joins the Ms on allm after setting `stopping` under
  // it, and an M added later (a wakep from a completion reaped while the
  // runtime stops) would be destroyed unjoined, or seen before it has a
  // thread.
  std::lock_guard lock(sched->lock);
  if (sched->stopping.load(std::memory_order_relaxed)) {
    delete mp;
    if (pp) pidleput(pp);
    return;
  }
  mp->id = sched->mcount++;
  mp->alllink = sched->allm;
  sched->allm = mp;
  mp->fastrand = 0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(mp->id + 1);
  sched->threads_created.fetch_add(1, std::memory_order_relaxed);
  try {
    mp->thread = std::thread(mstart, mp);
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "fatal error: urge: cannot create a worker thread: %s\n", e.what());
    _exit(2);
  }
}

// Schedules some M to run pp (or an idle P if pp is null). If spinning, the
// caller has incremented nmspinning and the M starts spinning.
void startm(p* pp, bool spinning) {
  sched->lock.lock();
  if (!pp) {
    pp = pidleget();
    if (!pp) {
      sched->lock.unlock();
      // The caller counted a spinning M that will not exist: undo it.
      if (spinning) sched->nmspinning.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
  }
  m* mp = mget();
  sched->lock.unlock();
  if (!mp) {
    newm(pp, spinning);
    return;
  }
  mp->spinning = spinning;
  mp->nextp = pp;
  platform::notewakeup(mp->park);
}

// Tries to add one more spinning M to run goroutines, if a P is idle and no
// M is spinning already (see "Worker thread parking/unparking").
void wakep() {
  if (sched->npidle.load(std::memory_order_acquire) == 0) return;
  int zero = 0;
  if (sched->nmspinning.load(std::memory_order_acquire) != 0 ||
      !sched->nmspinning.compare_exchange_strong(zero, 1, std::memory_order_acq_rel)) {
    return;
  }
  startm(nullptr, true);
}

// Hands off a P whose M is gone (a blocking call, sysmon's retake).
void handoffp(p* pp) {
  if (!pp->runq.empty() || sched->runqsize.load(std::memory_order_relaxed) != 0) {
    startm(pp, false);
    return;
  }
  // No spinning or idle M: start a spinning one to steal work elsewhere.
  int zero = 0;
  if (sched->nmspinning.load(std::memory_order_acquire) +
              sched->npidle.load(std::memory_order_acquire) ==
          0 &&
      sched->nmspinning.compare_exchange_strong(zero, 1, std::memory_order_acq_rel)) {
    startm(pp, true);
    return;
  }
  sched->lock.lock();
  if (sched->stopping.load(std::memory_order_relaxed)) {
    pidleput(pp);
    sched->lock.unlock();
    return;
  }
  if (sched->runqsize.load(std::memory_order_relaxed) != 0) {
    sched->lock.unlock();
    startm(pp, false);
    return;
  }
  pidleput(pp);
  sched->lock.unlock();
  if (std::int64_t when = pp->timers.earliest()) wake_netpoller(when);
}

// Parks the M until startm hands it a P (or the runtime stops). An M with
// stopped goroutines instead waits for startlockedm to hand it one, its proxy
// queued (Go's stoplockedm; see "Stopped goroutines and their threads").
static void stopm(m* mp) {
  const bool locked = mp->lockedq_head != nullptr;
  sched->lock.lock();
  if (sched->stopping.load(std::memory_order_relaxed)) {
    sched->lock.unlock();
    return;
  }
  if (locked) {
    mp->lockedwait = true;
    sched->nmidlelocked++;
    globrunqput(&mp->lockedproxy);
  } else {
    mput(mp);
  }
  checkdead();
  sched->lock.unlock();
  // The proxy is work like any goroutine: a P that went idle before it was
  // queued must come for it.
  if (locked) wakep();
  for (;;) {
    mp->blocked = true;
    platform::notesleep(mp->park);
    mp->blocked = false;
    platform::noteclear(mp->park);
    if (mp->nextp || sched->stopping.load(std::memory_order_acquire)) break;
  }
  if (p* pp = mp->nextp) {
    mp->nextp = nullptr;
    acquirep(mp, pp);
    // The P was handed over for the stopped goroutines: they go first.
    if (locked) mp->lockedtick = 0;
  }
}

// mp took lm's proxy from a run queue: hands its P to lm, which waits for one
// to run its stopped goroutines, and stops (Go's startlockedm).
static void startlockedm(m* mp, g* proxy) {
  m* lm = proxy->lockedm;
  if (lm == mp) fatal("startlockedm: locked to me");
  p* pp = releasep(mp);
  sched->lock.lock();
  if (!lm->lockedwait || lm->nextp) fatal("startlockedm: m is not waiting for a P");
  lm->lockedwait = false;
  sched->nmidlelocked--;
  lm->nextp = pp;
  sched->lock.unlock();
  sched->lockedhandoffs.fetch_add(1, std::memory_order_relaxed);
  platform::notewakeup(lm->park);
  stopm(mp);
}

static void resetspinning(m* mp) {
  mp->spinning = false;
  int n = sched->nmspinning.fetch_sub(1, std::memory_order_acq_rel) - 1;
  if (n < 0) fatal("resetspinning: negative nmspinning");
  if (n == 0 && sched->npidle.load(std::memory_order_acquire) > 0) wakep();
}

// ---- Timers and the timed wait ----------------------------------------------

// Wakes the timer waiter if `when` is earlier than what it sleeps until, or
// gets an M going if nobody waits (see "Timed wait").
void wake_netpoller(std::int64_t when) {
  std::int64_t until = sched->poll_until.load(std::memory_order_acquire);
  if (until != 0) {
    if (until <= when) return;
    std::lock_guard lock(sched->lock);
    if (sched->timer_waiter && sched->poll_until.load(std::memory_order_relaxed) > when) {
      netpoll_break();
    }
    return;
  }
  wakep();
}

void add_timer(timer* t) {
  preempt_off_scope no_preempt;
  m* mp = getm();
  p* pp = mp && mp->curp ? mp->curp : sched->allp[0];
  // Read before adding: once t is in the heap another M may fire it, and a
  // one-shot timer's callback may free it (urge::after's does).
  const std::int64_t when = t->when;
  if (pp->timers.add(t)) wake_netpoller(when);
}

bool del_timer(timer* t) {
  return timer_heap::del(t);
}

// The earliest timer over all Ps, or 0.
static std::int64_t earliest_timer() {
  std::int64_t best = 0;
  for (p* pp : sched->allp) {
    std::int64_t w = pp->timers.earliest();
    if (w != 0 && (best == 0 || w < best)) best = w;
  }
  return best;
}

// ---- Switching -------------------------------------------------------------

// Makes gp the running goroutine of mp. inherit: it came from runnext and
// keeps the time slice, so the tick sysmon watches does not advance.
static void bind_stack(p* pp, g* gp);
static void gfput(p* pp, g* gp);

// switching: called by switch_away, which tested the tracer's flag already
// and says in traced whether it is on; its go_start shares the time of the
// event the switch recorded for the goroutine it leaves (see trace.hpp).
__attribute__((always_inline)) inline static void prepare_execute(m* mp, p* pp, g* gp, bool inherit,
                                                                  bool switching = false,
                                                                  bool traced = false) {
  if (switching) {
    URGE_USDT(go_start, gp->goid, pp->id);
    if (traced) trace_emit_m(mp, trace_ev::go_start, gp->goid, pp->id, /*share=*/true);
  } else {
    URGE_TRACE_EVENT_M(mp, go_start, gp->goid, pp->id);
  }
  if (__builtin_expect(gp->ctx.sp == nullptr, 0)) bind_stack(pp, gp);  // its first run
  // The new tick first: a preemption timer of the previous slice that fires
  // from here on finds another slice, and leaves gp alone.
  if (!inherit) {
    pp->schedtick++;
    pp->schedtick_pub.store(pp->schedtick, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  gp->status.store(gstatus::running, std::memory_order_relaxed);
  gp->curm = mp;
  gp->preempt.store(false, std::memory_order_relaxed);
  mp->curg.store(gp, std::memory_order_relaxed);
}

// The cheap part of schedule(): the global queue every 61st tick (so that a
// P whose goroutines keep each other busy cannot starve it), due timers, then
// the local queue. nullptr: the caller must go to g0 and look further.
static g* lockedq_pop(m* mp) {
  g* gp = mp->lockedq_head;
  if (gp) {
    mp->lockedq_head = gp->schedlink;
    if (!mp->lockedq_head) mp->lockedq_tail = nullptr;
  }
  return gp;
}

static void run_due_timers(p* pp) {
  if (std::int64_t when = pp->timers.earliest(); when != 0 && when <= platform::nanotime()) {
    pp->timers.run_due(platform::nanotime());
  }
}

__attribute__((noinline)) static g* pick_local_slow(m* mp, p* pp, bool& inherit) {
  if (pp->schedtick % 61 == 0 && sched->runqsize.load(std::memory_order_relaxed) > 0) {
    std::lock_guard lock(sched->lock);
    if (g* gp = globrunqget(pp, 1)) {
      inherit = false;
      return gp;
    }
  }
  // Not while a parking goroutine still holds the locks its unlockf will
  // drop: a callback sending on that channel would deadlock on this M.
  // run_pending runs them after the unlockf instead.
  if (!(mp->pending == after_switch::park && mp->pending_unlock)) run_due_timers(pp);
  // io_uring completions are read from shared memory, without a system call;
  // queued requests go out every 8th schedule while the P stays busy.
  // (Not while a parking goroutine holds a descriptor lock either: a
  // multishot accept completion takes it. run_pending polls instead.)
  int io_readied = 0;
  if (netpoll_has_waiters() && !(mp->pending == after_switch::park && mp->pending_unlock)) {
    io_readied = netpoll_check_local(pp, (pp->schedtick & 7) == 0);
  }
  // Goroutines stopped asynchronously on this M take turns with the P's
  // queue, so that two CPU hogs on one P alternate. After the timers: with
  // two hogs taking turns the queue is never empty, and timers would starve.
  // What the network readied goes first, with whatever was queued before it
  // (see "Busy Ps" in netpoll.cpp).
  if (io_readied != 0 && mp->lockedq_head) mp->io_first = pp->runq.size();
  if (mp->io_first != 0 && !pp->runq.empty()) {
    --mp->io_first;
  } else if (mp->lockedq_head) {
    mp->io_first = 0;
    const bool turn = (mp->lockedtick++ & 1) == 0;
    if (pp->runq.empty()) {
      // Then only the global queue competes (a goroutine back from a blocking
      // call waits there): take turns with it too, not every 61st tick.
      if (!turn && sched->runqsize.load(std::memory_order_relaxed) > 0) {
        std::lock_guard lock(sched->lock);
        if (g* gp = globrunqget(pp, 1)) {
          inherit = false;
          return gp;
        }
      }
      inherit = false;
      return lockedq_pop(mp);
    }
    if (turn) {
      inherit = false;
      return lockedq_pop(mp);
    }
  }
  // With one P nobody steals (thieves are the owners of other Ps).
  return pp->runq.get(inherit, sched->gomaxprocs == 1);
}

// pick_local_slow when none of its checks can find anything: only the run
// queue is left, taken inline (a switch path with few registers to save).
__attribute__((always_inline)) inline static g* pick_local(m* mp, p* pp, bool& inherit) {
  if (__builtin_expect(
          (pp->schedtick % 61 == 0 && sched->runqsize.load(std::memory_order_relaxed) > 0) ||
              pp->timers.earliest() != 0 || netpoll_has_waiters() || mp->lockedq_head != nullptr,
          0)) {
    return pick_local_slow(mp, pp, inherit);
  }
  return pp->runq.get(inherit, sched->gomaxprocs == 1);
}

bool parkunlock(g*, void* lock) {
  static_cast<futex_mutex*>(lock)->unlock();
  return true;
}

// Performs the after-switch action recorded by the context that switched to
// us (see "Parking"). Runs on whatever context now runs on mp.
__attribute__((noinline)) static void run_pending_slow(m* mp, after_switch act);

// A park called off by its unlockf (the awaited event already happened): the
// goroutine runs next instead.
__attribute__((noinline)) static void park_called_off(m* mp, g* gp) {
  URGE_TRACE_EVENT_M(mp, go_unblock, gp->goid, 0);
  gp->status.store(gstatus::runnable, std::memory_order_release);
  runqput(mp->curp, gp, true);
}

// The timers and completions pick_local left for after a parking goroutine's
// unlockf (see pick_local).
__attribute__((noinline)) static void after_park_poll(p* pp) {
  run_due_timers(pp);
  if (netpoll_has_waiters()) netpoll_check_local(pp, false);
}

// The cases of nearly every switch inline, a park (a goroutine blocked on a
// channel, a semaphore, the network) and a yield; the rest out of line, so
// that these paths need few registers saved.
__attribute__((always_inline)) inline void run_pending(m* mp) {
  after_switch act = mp->pending;
  if (act == after_switch::none) return;
  if (act == after_switch::park) {
    mp->pending = after_switch::none;
    unlock_fn f = mp->pending_unlock;
    if (!f) return;
    if (f == parkunlock) {
      static_cast<futex_mutex*>(mp->pending_arg)->unlock();
    } else if (__builtin_expect(!f(mp->pending_g, mp->pending_arg), 0)) {
      park_called_off(mp, mp->pending_g);
    }
    if (p* pp = mp->curp) {
      if (pp->timers.earliest() != 0 || netpoll_has_waiters()) after_park_poll(pp);
    }
    return;
  }
  if (act == after_switch::ready_local) {  // a yield
    mp->pending = after_switch::none;
    g* gp = mp->pending_g;
    gp->status.store(gstatus::runnable, std::memory_order_release);
    if (!mp->curp->runq.put_tail_fast(gp)) runqput(mp->curp, gp, false);
    return;
  }
  run_pending_slow(mp, act);
}

static void run_pending_slow(m* mp, after_switch act) {
  mp->pending = after_switch::none;
  g* gp = mp->pending_g;
  switch (act) {
    case after_switch::ready_local: {
      gp->status.store(gstatus::runnable, std::memory_order_release);
      auto overflow = mp->curp->runq.put(gp, false);
      if (__builtin_expect(overflow.n != 0, 0)) runqput_overflow(overflow);
      break;
    }
    case after_switch::ready_global: {
      gp->status.store(gstatus::runnable, std::memory_order_release);
      {
        std::lock_guard lock(sched->lock);
        globrunqput(gp);
      }
      // An idle P must come for it: this P may go on with a goroutine that
      // never schedules again (one that holds preempt_off, or runs code no
      // signal may stop), and nothing else looks at the global queue while
      // every M with a P is busy and the others are parked. That starved main
      // when go() preempted it in favour of the goroutine it had just made
      // (a spinner that keeps its P), with the other P idle. A spinning M that
      // wakep relies on re-checks the global queue before it sleeps
      // (findrunnable).
      wakep();
      break;
    }
    case after_switch::park:  // done by run_pending, inline
      break;
    case after_switch::exit:
      arch::destroy_context(gp->ctx);
      if (mp->curp) {
        mp->curp->stackcache.put(*sched->stacks, gp->stk);
      } else {
        sched->stacks->release(gp->stk);
      }
      gfput(mp->curp, gp);
      break;
    case after_switch::exit_blocking: {
      // exitsyscall0: the goroutine came back from a blocking call and found
      // no P. Queue it globally; this M parks (the g0 loop sees no P).
      gp->status.store(gstatus::runnable, std::memory_order_release);
      sched->lock.lock();
      p* pp = pidleget();
      if (!pp) globrunqput(gp);
      sched->lock.unlock();
      if (pp) {
        acquirep(mp, pp);
        runqput(pp, gp, true);
      }
      break;
    }
    case after_switch::ready_locked:
      gp->status.store(gstatus::runnable, std::memory_order_release);
      gp->schedlink = nullptr;
      if (mp->lockedq_tail) {
        mp->lockedq_tail->schedlink = gp;
      } else {
        mp->lockedq_head = gp;
      }
      mp->lockedq_tail = gp;
      // gp is off the CPU: the goroutines this M runs next may be stopped in
      // turn (the flag covers only the redirect-to-switch window).
      mp->in_preempt = false;
      break;
    case after_switch::none:
      break;
  }
}

// The first thing a goroutine does when it runs again after switch_away. Not
// inlined, on purpose: we may be on another thread than before the switch,
// and the compiler may keep the thread pointer in a register across a call
// (AArch64 does), so the thread-locals must be reached from a fresh frame.
__attribute__((noinline)) static void resumed(m* back) {
  asm volatile("" ::: "memory");
  run_pending(back);
  --preempt_off;
}

// Leaves the running goroutine gp for the next runnable goroutine of this P,
// or for g0 when there is none; `act` is done for gp by the next context.
// Returns once gp runs again, after doing the pending action of whoever
// switched back to it; returns the M it now runs on.
//
// Every switch is made with preempt_off raised by one, and the context that
// resumes lowers it after run_pending (g0 keeps a baseline of one instead):
// no signal may stop a goroutine halfway through the scheduler.
//
// traced: the out-of-line copy taken when the tracer is on, which records the
// event of the goroutine it leaves (the probe fired at the caller) and the
// go_start of the one it picks: one test of the flag per switch, and none of
// the recording code in the hot copy (see "Tracing off" in trace.hpp).
template <bool traced>
__attribute__((always_inline)) inline static m* switch_to_as(g* gp, m* mp, after_switch act,
                                                             g* next, bool inherit);

template <bool traced>
__attribute__((always_inline)) inline static m* switch_away_as(g* gp, m* mp, after_switch act,
                                                               unlock_fn f, void* arg) {
  ++preempt_off;
  if (traced) {
    // Before the pick: a timer it runs may ready gp's waker, or gp itself.
    switch (act) {
      case after_switch::park:
        trace_emit_m(mp, trace_ev::go_block, gp->goid, static_cast<std::uint64_t>(gp->reason));
        break;
      case after_switch::ready_global:
        trace_emit_m(mp, trace_ev::go_preempt, gp->goid, 0);
        break;
      case after_switch::ready_locked:
        trace_emit_m(mp, trace_ev::go_preempt, gp->goid, 1);
        break;
      case after_switch::exit:
        trace_emit_m(mp, trace_ev::go_end, gp->goid, 0);
        break;
      default:  // a yield: the next go_start on this P ends its run
        break;
    }
  }
  mp->pending = act;
  mp->pending_g = gp;
  mp->pending_unlock = f;
  mp->pending_arg = arg;
  p* pp = mp->curp;
  g* next = nullptr;
  bool inherit = false;
  if (pp && !sched->stopping.load(std::memory_order_relaxed)) next = pick_local(mp, pp, inherit);
  return switch_to_as<traced>(gp, mp, act, next, inherit);
}

// switch_away's second half: gp leaves for next, picked already (nullptr:
// for g0). Called with preempt_off raised and mp->pending set.
template <bool traced>
__attribute__((always_inline)) inline static m* switch_to_as(g* gp, m* mp, after_switch act,
                                                             g* next, bool inherit) {
  if (!platform::canary_intact(gp->stk)) platform::report_stack_overflow(gp->stk, gp->stk.lo - 8);
  if (__builtin_expect(next && next->lockedm, 0)) {
    // Another M's proxy: g0 hands the P over (see "Stopped goroutines and
    // their threads").
    mp->handoff = next;
    next = nullptr;
  }
  arch::context* to;
  if (next) {
    prepare_execute(mp, mp->curp, next, inherit, /*switching=*/true, traced);
    to = &next->ctx;
  } else {
    mp->curg.store(nullptr, std::memory_order_relaxed);
    to = &mp->g0;
  }
  // user_locks follows the goroutine, not the thread (see "Unsafe points"),
  // and so does the exception state (see "Exception state").
  gp->user_locks = user_locks;
  user_locks = next ? next->user_locks : 0;
  eh_globals* eh = mp->eh;
  gp->eh = *eh;
  *eh = next ? next->eh : mp->g0_eh;
  if (act == after_switch::exit) arch::exit_to_context(gp->ctx, *to, mp);
  m* back = static_cast<m*>(arch::switch_context(gp->ctx, *to, mp));
  resumed(back);
  return back;
}

// Not cold: a cold function is optimised for size, and the recording code's
// helpers (the clock read, the varints) would become calls.
__attribute__((noinline)) static m* switch_away_traced(g* gp, m* mp, after_switch act, unlock_fn f,
                                                       void* arg) {
  return switch_away_as<true>(gp, mp, act, f, arg);
}

__attribute__((always_inline)) inline static m* switch_away(g* gp, m* mp, after_switch act,
                                                            unlock_fn f = nullptr,
                                                            void* arg = nullptr) {
  if (URGE_TRACE_ENABLED()) return switch_away_traced(gp, mp, act, f, arg);
  return switch_away_as<false>(gp, mp, act, f, arg);
}

// sysmon's poll readied goroutines onto the global queue and asked this
// P's goroutine to stop for them (p::global_first; see "Busy Ps" in
// netpoll.cpp): the switch that stop makes runs them first, before a stopped
// hog's next turn. Called on the two preemption paths only, so that no other
// switch pays for the test.
static void take_polled_first(m* mp) {
  p* pp = mp->curp;
  if (!pp || !pp->global_first.load(std::memory_order_relaxed)) return;
  pp->global_first.store(false, std::memory_order_relaxed);
  if (sched->runqsize.load(std::memory_order_relaxed) == 0) return;
  g* gp;
  {
    std::lock_guard lock(sched->lock);
    gp = globrunqget(pp, 0);
  }
  if (!gp) return;
  runqput(pp, gp, true);  // runnext: the switch picks it
  if (mp->lockedq_head) mp->io_first = pp->runq.size();
}

void gopark_locked_to_m() {
  g* gp = getg();
  take_polled_first(gp->curm);
  URGE_USDT(go_preempt, gp->goid, 1);  // traced by switch_away
  switch_away(gp, gp->curm, after_switch::ready_locked);
}

// Parks the running goroutine; see runtime2.hpp.
void gopark(unlock_fn unlockf, void* arg, waitreason reason) {
  g* gp = getg();
  if (!gp) fatal("gopark outside a goroutine");
  gopark(gp, unlockf, arg, reason);
}

void gopark(g* gp, unlock_fn unlockf, void* arg, waitreason reason) {
  // First, while its arguments are still in the registers they came in (a
  // byte register and a memory operand: no moves, no callee-saved register
  // across the clock call). Traced by switch_away.
  URGE_USDT(go_block, gp->goid, reason);
  gp->reason = reason;
  // Even the coarse clock costs ~9 ns here, a third of a switch; dumps only
  // show whole minutes. So reuse the P's reading while it is on the same
  // time slice (schedtick unchanged): stale by at most about a quantum.
  if (p* pp = gp->curm->curp) {
    if (pp->park_clock_tick != pp->schedtick || pp->park_clock == 0) {
      pp->park_clock = coarse_nanotime();
      pp->park_clock_tick = pp->schedtick;
    }
    gp->waitsince = pp->park_clock;
  } else {
    gp->waitsince = coarse_nanotime();
  }
  gp->status.store(gstatus::waiting, std::memory_order_release);
  switch_away(gp, gp->curm, after_switch::park, unlockf, arg);
}

[[noreturn]] __attribute__((noinline, cold)) static void goready_bad_status(g* gp, gstatus st) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "goready: goroutine %llu has status %s, not waiting",
                static_cast<unsigned long long>(gp->goid), to_string(st));
  fatal(buf);
}

static void trace_unblock(g* gp, m* mp) {
  if (URGE_TRACE_ENABLED()) {
    g* by = mp ? mp->curg.load(std::memory_order_relaxed) : nullptr;
    URGE_TRACE_EVENT_M(mp, go_unblock, gp->goid, by ? by->goid : 0);
  } else {
    URGE_USDT(go_unblock, gp->goid, 0);
  }
}

// gp, parked, becomes runnable. A load and a store, not Go's CAS: exactly one
// waker readies a parked goroutine (the one that took its waiter record out
// of a queue under that queue's lock, won its select, or completed its I/O
// request), so nothing races with this write and the locked instruction would
// buy nothing on the wakeup path. The check still catches a waker that comes
// after another one (a double wakeup).
__attribute__((always_inline)) inline static void mark_ready(g* gp) {
  gstatus st = gp->status.load(std::memory_order_relaxed);
  if (__builtin_expect(st != gstatus::waiting, 0)) goready_bad_status(gp, st);
  gp->status.store(gstatus::runnable, std::memory_order_release);
  gp->reason = waitreason::zero;
}

// The netpoller's readying of what a poll completed: the caller queues the
// goroutine or runs it itself.
void goready_mark(g* gp) {
  mark_ready(gp);
  trace_unblock(gp, getm());
}

// goready's less common cases: tracing on, or no P (a thread outside the
// scheduler, a timer callback on an M without one).
__attribute__((noinline)) static void goready_slow(g* gp, bool next, m* mp) {
  trace_unblock(gp, mp);
  if (p* pp = mp ? mp->curp : nullptr) {
    runqput(pp, gp, next);
  } else {
    std::lock_guard lock(sched->lock);
    globrunqput(gp);
  }
  wakep();
}

// Not inlined: it reads tls_m directly (see getm), which is safe only in a
// frame that no context switch crosses.
__attribute__((noinline)) void goready(g* gp, bool next) {
  preempt_off_scope no_preempt;
  mark_ready(gp);
  m* mp = tls_m;
  p* pp = mp ? mp->curp : nullptr;
  if (__builtin_expect(URGE_TRACE_ENABLED() || !pp, 0)) {
    goready_slow(gp, next, mp);
    return;
  }
  URGE_USDT(go_unblock, gp->goid, 0);
  if (!(next ? pp->runq.put_runnext_fast(gp) : pp->runq.put_tail_fast(gp))) runqput(pp, gp, next);
  if (sched->npidle.load(std::memory_order_acquire) != 0) wakep();
}

static void gosched_global(g* gp) {
  take_polled_first(gp->curm);
  URGE_USDT(go_preempt, gp->goid, 0);  // traced by switch_away
  switch_away(gp, gp->curm, after_switch::ready_global);
}

__attribute__((noinline)) void check_preempt() {
  if (preempt_off != 0) return;
  g* gp = getg();
  if (gp && gp->preempt.load(std::memory_order_relaxed)) {
    gp->preempt.store(false, std::memory_order_relaxed);
    gosched_global(gp);
  }
}

// ---- findrunnable -------------------------------------------------------

// Finds a runnable goroutine for mp (which holds a P), blocking until there is
// one. nullptr only when the runtime is stopping. On return mp holds a P.
static g* findrunnable(m* mp, bool& inherit) {
top:
  if (sched->stopping.load(std::memory_order_acquire)) return nullptr;
  p* pp = mp->curp;
  inherit = false;
  std::int64_t now = platform::nanotime();
  if (std::int64_t when = pp->timers.earliest(); when != 0 && when <= now) pp->timers.run_due(now);
  // Goroutines stopped asynchronously here (only this M may run them) take
  // turns with the queues: first, they would starve the global queue, which
  // goroutines back from a blocking call wait in.
  if (mp->lockedq_head &&
      ((pp->runq.empty() && sched->runqsize.load(std::memory_order_relaxed) == 0) ||
       (mp->lockedtick++ & 1) == 0)) {
    return lockedq_pop(mp);
  }

  if (pp->schedtick % 61 == 0 && sched->runqsize.load(std::memory_order_relaxed) > 0) {
    std::lock_guard lock(sched->lock);
    if (g* gp = globrunqget(pp, 1)) return gp;
  }
  if (g* gp = pp->runq.get(inherit)) return gp;
  if (sched->runqsize.load(std::memory_order_relaxed) != 0) {
    std::lock_guard lock(sched->lock);
    if (g* gp = globrunqget(pp, 0)) return gp;
  }
  if (g* gp = lockedq_pop(mp)) return gp;  // the queues were emptied meanwhile
  // The network, without blocking: submits this P's queued requests (they
  // must be in the kernel before anyone sleeps) and takes what completed.
  if (netpoll_has_waiters() && netpoll_poll_now(pp) > 0) {
    if (g* gp = pp->runq.get(inherit)) return gp;
    if (sched->runqsize.load(std::memory_order_relaxed) != 0) goto top;
  }

  // Steal. Limit the number of spinning Ms to half the busy Ps, so that
  // spinning does not burn the CPU running goroutines need (Go's rule).
  {
    const int procs = sched->gomaxprocs;
    if (mp->spinning || 2 * sched->nmspinning.load(std::memory_order_acquire) <
                            procs - sched->npidle.load(std::memory_order_acquire)) {
      if (!mp->spinning) {
        mp->spinning = true;
        sched->nmspinning.fetch_add(1, std::memory_order_acq_rel);
      }
      // Four passes over all Ps in a random order (a random start and a
      // stride coprime with the count visits each P once per pass); only the
      // last pass takes runnext and runs other Ps' due timers.
      for (int pass = 0; pass < 4; ++pass) {
        const bool last = pass == 3;
        std::uint32_t start = fastrand(mp) % static_cast<std::uint32_t>(procs);
        std::uint32_t stride = coprime_stride(static_cast<std::uint32_t>(procs), fastrand(mp));
        for (int k = 0; k < procs; ++k) {
          if (sched->stopping.load(std::memory_order_relaxed)) return nullptr;
          p* p2 = sched->allp[(start + static_cast<std::uint32_t>(k) * stride) %
                              static_cast<std::uint32_t>(procs)];
          if (p2 == pp) continue;
          if (last) {
            if (std::int64_t when = p2->timers.earliest(); when != 0 && when <= now) {
              // Timers of a P whose M is busy: run them here (Go steals timers).
              p2->timers.run_due(now);
              if (g* gp = pp->runq.get(inherit)) return gp;
            }
          }
          bool victim_running = p2->status.load(std::memory_order_relaxed) == pstatus::running;
          if (g* gp = pp->runq.steal(p2->runq, last, victim_running)) {
            sched->steals.fetch_add(1, std::memory_order_relaxed);
            URGE_TRACE_EVENT(steal, pp->id, p2->id);
            return gp;
          }
        }
      }
    }
  }

  // Nothing found: give up the P and get ready to sleep.
  sched->lock.lock();
  if (sched->stopping.load(std::memory_order_relaxed)) {
    sched->lock.unlock();
    return nullptr;
  }
  if (sched->runqsize.load(std::memory_order_relaxed) != 0) {
    g* gp = globrunqget(pp, 0);
    sched->lock.unlock();
    return gp;
  }
  releasep(mp);
  pidleput(pp);
  sched->lock.unlock();

  // Delicate dance (see the comment at the top): decrement nmspinning first,
  // then re-check every queue.
  const bool was_spinning = mp->spinning;
  if (mp->spinning) {
    mp->spinning = false;
    if (sched->nmspinning.fetch_sub(1, std::memory_order_acq_rel) - 1 < 0) {
      fatal("findrunnable: negative nmspinning");
    }
  }
  // The global queue as well as the Ps': a goroutine that gave way at a
  // preemption point went there, and its thread's wakep may have found this
  // M still spinning and woken nobody.
  const bool global_work = sched->runqsize.load(std::memory_order_acquire) != 0;
  for (p* p2 : sched->allp) {
    if (global_work || !p2->runq.empty()) {
      sched->lock.lock();
      p* idle = pidleget();
      sched->lock.unlock();
      if (idle) {
        acquirep(mp, idle);
        if (was_spinning) {
          mp->spinning = true;
          sched->nmspinning.fetch_add(1, std::memory_order_acq_rel);
        }
        goto top;
      }
      break;
    }
  }

  // Timers pending somewhere, or goroutines waiting on the network: become
  // the poller (Go's M blocked in netpoll) unless there is one.
  std::int64_t until = earliest_timer();
  if (until != 0 || netpoll_has_waiters()) {
    sched->lock.lock();
    if (!sched->timer_waiter && !sched->stopping.load(std::memory_order_relaxed)) {
      sched->timer_waiter = mp;
      sched->poll_until.store(until != 0 ? until : INT64_MAX, std::memory_order_release);
      sched->lock.unlock();
      // A timer already due is 0 (poll without blocking), not -1 (for ever).
      std::int64_t delay =
          until != 0 ? std::max<std::int64_t>(until - platform::nanotime(), 0) : -1;
      glist ready;
      if (delay != 0) {
        mp->blocked = true;
        netpoll_block(delay < 0 ? -1 : delay, ready);
        mp->blocked = false;
      }
      sched->lock.lock();
      sched->timer_waiter = nullptr;
      sched->poll_until.store(0, std::memory_order_release);
      const bool stopping = sched->stopping.load(std::memory_order_relaxed);
      p* idle = stopping ? nullptr : pidleget();
      // With a P, this M runs what the poll readied (Go's findrunnable):
      // queueing it globally and waking another M to run it while this one
      // goes to sleep would cost two thread switches per wake-up. Without
      // one, the busy Ps take it from the global queue.
      if (!idle && ready.head) globrunqputbatch(ready.head, ready.n);
      sched->lock.unlock();
      if (stopping) return nullptr;
      if (idle) {
        acquirep(mp, idle);
        for (g* gp = ready.head; gp;) {
          g* next = gp->schedlink;
          runqput(idle, gp, false);
          gp = next;
        }
        if (ready.n > 1) wakep();  // more than this M will run at once: another idle P may help
        goto top;
      }
      // Every P is busy; they will run their own timers.
    } else {
      // The poller may have read the timers before ours was added, when
      // wake_netpoller found no poller to break (poll_until still 0): then
      // it sleeps past our timer, for ever if it only waits for the network.
      // Make it look again.
      const bool later = until != 0 && sched->timer_waiter &&
                         sched->poll_until.load(std::memory_order_relaxed) > until;
      sched->lock.unlock();
      if (later) netpoll_break();
    }
  }
  stopm(mp);
  if (!mp->curp) return nullptr;  // stopping
  goto top;
}

// ---- The scheduler loop, on each M's own stack (g0) -------------------------

static void schedule_loop(m* mp) {
  for (;;) {
    run_pending(mp);
    if (sched->stopping.load(std::memory_order_acquire)) break;
    if (g* proxy = mp->handoff) {  // pick_local took it
      mp->handoff = nullptr;
      startlockedm(mp, proxy);
      continue;
    }
    if (!mp->curp) {
      stopm(mp);
      continue;
    }
    bool inherit = false;
    g* gp = findrunnable(mp, inherit);
    if (!gp) continue;  // stopping: checked at the top
    // main may have returned while findrunnable looked: a goroutine must not
    // start then (its frame's references to main's locals are dangling; run()
    // frees what is left of it).
    if (sched->stopping.load(std::memory_order_acquire)) break;
    if (mp->spinning) resetspinning(mp);
    if (gp->lockedm) {
      startlockedm(mp, gp);
      continue;
    }
    prepare_execute(mp, mp->curp, gp, inherit);
    user_locks = gp->user_locks;
    mp->g0_eh = *mp->eh;
    *mp->eh = gp->eh;
    m* back = static_cast<m*>(arch::switch_context(mp->g0, gp->ctx, mp));
    user_locks = 0;
    (void)back;  // g0 belongs to this thread: `back` is always mp
  }
}

static void mstart(m* mp) {
  tls_m = mp;
  preempt_off = 1;  // g0's baseline: see switch_away
  mp->tid = platform::current_tid();
  mp->eh = reinterpret_cast<eh_globals*>(abi::__cxa_get_globals());
  arch::init_thread_context(mp->g0);
  platform::ensure_alt_stack();
  if (p* pp = mp->nextp) {
    mp->nextp = nullptr;
    acquirep(mp, pp);
  }
  schedule_loop(mp);
  std::lock_guard lock(sched->lock);
  mp->exited = true;
  sched->mexited++;
}

// ---- Goroutine creation and exit ----------------------------------------

[[noreturn]] static void goexit(g* gp);

// Counting goroutines
// -------------------
// Creating a goroutine used to take three locked instructions on the
// scheduler's shared state (the goid counter, the live count and the created
// count) and ending one a fourth: with two Ps creating and running goroutines
// (spawn, skynet), every one of them pulled those cache lines from the other
// CPU. Each P now counts what it creates and ends, written by its owner alone
// with a plain load and store, and num_goroutines() and stats() add up the
// Ps' counts (a goroutine made on one P may end on another: only the sums
// mean anything). An M without a P counts on sched's own counters, atomically.
// The sums are read racily, as Go's NumGoroutine is: exact when nothing is
// being created or ending. Goroutine ids come from a per-P batch of goid_batch
// (Go's goidcache), so ids are unique and dense but not in creation order
// across Ps.
constexpr std::uint64_t goid_batch = 16;  // Go's _GoidCacheBatch

static void count_goroutine(p* pp, std::atomic<std::int64_t> p::*counter,
                            std::atomic<std::int64_t>& nop_counter) {
  if (pp) {
    std::atomic<std::int64_t>& c = pp->*counter;
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  } else {
    nop_counter.fetch_add(1, std::memory_order_relaxed);
  }
}

static std::uint64_t new_goid(p* pp) {
  if (!pp) return sched->next_goid.fetch_add(1, std::memory_order_relaxed);
  if (pp->goidcache == pp->goidcacheend) {
    pp->goidcache = sched->next_goid.fetch_add(goid_batch, std::memory_order_relaxed);
    pp->goidcacheend = pp->goidcache + goid_batch;
  }
  return pp->goidcache++;
}

// Goroutines created minus ended, over every P and the P-less counts.
static std::int64_t count_sum(std::atomic<std::int64_t> p::*counter,
                              const std::atomic<std::int64_t>& nop_counter) {
  std::int64_t n = nop_counter.load(std::memory_order_relaxed);
  for (p* pp : sched->allp) n += (pp->*counter).load(std::memory_order_relaxed);
  return n;
}

// traceback.cpp: the current stack from the frame that threw.
void print_traceback_from_throw(std::FILE* out);

[[noreturn]] static void panic_exit(g* gp, std::exception_ptr ep) {
  ++preempt_off;  // the goroutine must not be stopped while it reports
  // Two goroutines panicking at once: the first one reports and exits.
  static std::atomic<bool> panicking{false};
  if (panicking.exchange(true)) {
    for (;;) pause();
  }
  std::string what;
  const char* type = nullptr;
  try {
    std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    what = e.what();
    type = typeid(e).name();
  } catch (...) {
    what = "unknown exception";
    if (auto* ti = abi::__cxa_current_exception_type()) type = ti->name();
  }
  std::string type_name = type ? type : "?";
  if (type) {
    int status = 0;
    if (char* d = abi::__cxa_demangle(type, nullptr, nullptr, &status)) {
      type_name = d;
      std::free(d);
    }
  }
  std::fprintf(stderr, "panic: %s\n[exception of type %s]\n\n", what.c_str(), type_name.c_str());
  print_goroutine_header(stderr, gp, "running");
  print_traceback_from_throw(stderr);
  print_created_by(stderr, gp);
  std::fflush(stderr);
  _exit(2);
}

// An exception escaping a goroutine other than main finds no handler (see
// goroutine_entry), so __cxa_throw calls std::terminate with the throwing
// frames still on the stack; run() installs this handler to report it as a
// panic from there. Anything else goes to the handler that was in force.
static std::terminate_handler g_prev_terminate = nullptr;
[[noreturn]] static void panic_terminate() {
  g* gp = getg();
  std::exception_ptr ep = std::current_exception();
  if (gp && ep && !gp->is_main) panic_exit(gp, ep);
  if (g_prev_terminate) g_prev_terminate();
  std::abort();
}

// Every goroutine starts here, through urge_context_start.
static void goroutine_entry(void* arg, void* transfer) {
  arch::context_started();
  auto* gp = static_cast<g*>(arg);
  resumed(static_cast<m*>(transfer));  // we were switched to with preempt_off raised
  if (gp->is_main) {
    try {
      gp->fn(gp->closure);
    } catch (...) {
      sched->main_exception = std::current_exception();
    }
    std::lock_guard lock(sched->lock);
    begin_stop_locked();
  } else {
    // No try here: an exception that escapes must find no handler in its
    // search phase, so that the stack is still intact when panic_terminate
    // prints the traceback of the throw (a catch would unwind it first).
    gp->fn(gp->closure);
  }
  goexit(gp);
}

[[noreturn]] static void goexit(g* gp) {
  URGE_USDT(go_end, gp->goid, 0);  // traced by switch_away
  gp->status.store(gstatus::dead, std::memory_order_release);
  count_goroutine(gp->curm->curp, &p::gexited, sched->gexited_nop);
  switch_away(gp, gp->curm, after_switch::exit);
  __builtin_unreachable();
}

// Stacks of new goroutines
// -------------------------
// A burst of goroutines (a spawning loop preempted once a quantum, a fan-out)
// makes thousands of Gs before the first of them runs. If each were built on
// the top page of its own stack, as urge first did, the creator would write
// to thousands of distinct pages and each goroutine would later run on a page
// last touched thousands of goroutines ago: a TLB and cache miss or several
// per goroutine, which cost ~1 us each on this class of machine, ten times
// the work of creating and running a goroutine. So a G is a small object of
// its own (Gs are allocated densely and reused LIFO from free lists, as Go's
// gFree), the closure of `go` lives inside it when it fits (g_closure_room),
// and the stack is only reserved at creation: no byte of it is touched. At
// its first run (bind_stack, from prepare_execute) the goroutine exchanges
// the reserved stack for the one most recently put in its P's stack cache,
// usually the stack of the goroutine that ran just before, still in cache.
// A burst of short goroutines then runs on a handful of warm stacks.
//
// Rejected: taking the stack only at the first run. Running out of stacks
// (address space, config limits) must be an exception from go(), where the
// caller can handle it (api.md), not a fatal error in the scheduler; the
// reservation keeps that and costs a pointer move. Rejected: building the
// closure in a separate heap allocation when it does not fit in the G: a
// malloc and free per goroutine; such closures go on the top of the reserved
// stack, which is then bound at once (the old scheme).
//
// The cost: a parked goroutine now holds its G (256 bytes: see g_closure_room)
// besides its stack page, where the G used to share the page.

// Free Gs
// --------
// A dead G waits for reuse on its P's free list, newest last; a P with too
// many moves its oldest half to the global list, and a P with none takes a
// batch from there (Go's gFree lists and their sizes). Both lists are arrays
// of pointers, not lists linked through the Gs as in Go: in a spawning loop
// the Gs die on the Ps that stole them and come back to the spawner through
// the global list, and by then they sit in another CPU's cache. Refilling a
// linked list reads each G's link to find the next, 32 misses one after the
// other under gfree_lock (about 30% of the spawner's time at two Ps, and the
// freeing P waited for the lock meanwhile). An array moves pointers, and a G
// is first touched when allocg writes it, where the next one to be reused is
// known and prefetched.
//
// The global list is a global_run_queue (an array in chunks, with a list
// through schedlink when a chunk cannot be allocated) taken from its newest
// end, like the Ps' lists: the Gs freed last are the likeliest to be in a
// cache (FIFO made skynet at one P 8% slower).

namespace {
// Gs outlive run() (allgs is for the life of the process), so these are not
// part of schedt.
futex_mutex gfree_lock;
global_run_queue<g> gfree_global;  // gfree_lock

constexpr int gfree_batch = p::gfree_max / 2;  // moved between a P and the global list at once
constexpr int galloc_block = 64;               // Gs allocated at once (16 KiB)

// Allocates a block of Gs, puts them on allgs and on the global free list.
// Needs gfree_lock.
void galloc_block_locked() {
  auto* block =
      static_cast<g*>(::operator new (sizeof(g) * galloc_block, std::align_val_t{alignof(g)}));
  for (int i = 0; i < galloc_block; ++i) {
    g* gp = new (&block[i]) g;
    gp->magic = g_magic;
    gp->status.store(gstatus::dead, std::memory_order_relaxed);
    gp->alllink = i + 1 < galloc_block ? &block[i + 1] : nullptr;
  }
  g* head = allgs_head.load(std::memory_order_relaxed);
  do {
    block[galloc_block - 1].alllink = head;
  } while (!allgs_head.compare_exchange_weak(head, &block[0], std::memory_order_release,
                                             std::memory_order_relaxed));
  for (int i = galloc_block; i-- > 0;) gfree_global.put(&block[i]);
}

// Asks for the lines of the G that gfget hands out next, which allocg will
// write whole.
inline void prefetch_g(const g* gp) {
  const char* bytes = reinterpret_cast<const char*>(gp);
  for (std::size_t off = 0; off < sizeof(g); off += 64) __builtin_prefetch(bytes + off, 1);
}
}  // namespace

// A dead G for reuse: the P's list, refilled from the global list or a new
// block (Go's gfget).
static g* gfget(p* pp) {
  if (pp && pp->gfreecnt > 0) {
    g* gp = pp->gfree[--pp->gfreecnt];
    if (pp->gfreecnt > 0) prefetch_g(pp->gfree[pp->gfreecnt - 1]);
    return gp;
  }
  std::lock_guard lock(gfree_lock);
  if (gfree_global.size() == 0) galloc_block_locked();
  g* gp = gfree_global.pop_newest();
  if (pp) {
    // Refill the P's list with a batch, so that the lock is taken once for it.
    while (pp->gfreecnt < gfree_batch) {
      g* g2 = gfree_global.pop_newest();
      if (!g2) break;
      pp->gfree[pp->gfreecnt++] = g2;
    }
    if (pp->gfreecnt > 0) prefetch_g(pp->gfree[pp->gfreecnt - 1]);
  }
  return gp;
}

// Puts a dead G on pp's free list, or the global one (Go's gfput).
static void gfput(p* pp, g* gp) {
  if (pp) {
    if (pp->gfreecnt == p::gfree_max) {
      // Full: the oldest half goes to the global list, for other Ps.
      std::lock_guard lock(gfree_lock);
      for (int i = 0; i < gfree_batch; ++i) gfree_global.put(pp->gfree[i]);
      std::memmove(pp->gfree, pp->gfree + gfree_batch,
                   sizeof(g*) * static_cast<std::size_t>(p::gfree_max - gfree_batch));
      pp->gfreecnt -= gfree_batch;
    }
    pp->gfree[pp->gfreecnt++] = gp;
    return;
  }
  std::lock_guard lock(gfree_lock);
  gfree_global.put(gp);
}

// At shutdown: pp's free Gs go to the global list (Ps do not outlive run()).
static void gfpurge(p* pp) {
  std::lock_guard lock(gfree_lock);
  for (int i = 0; i < pp->gfreecnt; ++i) gfree_global.put(pp->gfree[i]);
  pp->gfreecnt = 0;
}

// A G for a new goroutine, with its stack reserved and room for its closure:
// in the G when the closure fits (the stack is bound at the first run), else
// at the top of the stack, below which the context is made now.
static g* allocg(p* pp, std::size_t closure_size, std::size_t closure_align, void** closure) {
  const bool fits = closure_size <= g_closure_room && closure_align <= alignof(std::uint64_t);
  if (!fits) {
    // Checked before anything is taken; the stack's size is the pool's.
    const std::size_t room = (closure_size + closure_align - 1) & ~(closure_align - 1);
    if (room + 16 * 1024 > sched->stacks->stack_size()) {
      throw std::length_error("urge::go: the goroutine's arguments (" +
                              std::to_string(closure_size) +
                              " bytes) do not fit its stack; pass large objects by pointer");
    }
  }
  platform::stack stk = pp ? pp->stackcache.get(*sched->stacks) : sched->stacks->acquire();
  g* gp;
  try {
    gp = gfget(pp);  // may allocate a block of Gs: std::bad_alloc
  } catch (...) {
    if (pp) {
      pp->stackcache.put(*sched->stacks, stk);
    } else {
      sched->stacks->release(stk);
    }
    throw;
  }
  gp->reset_for_reuse();
  if (timer* sleep_timer = gp->sleep_timer) {
    // As new: the state it keeps may name a heap that is gone (the last use
    // may have been in an earlier run()).
    sleep_timer->~timer();
    gp->sleep_timer = new (sleep_timer) timer;
  }
  gp->stk = stk;
  gp->closure_size = static_cast<std::uint32_t>(closure_size);
  if (fits) {
    *closure = gp->closure_room;  // ctx.sp stays null: bind_stack makes the context
    gp->fp = arch::current_fp_control();
    return gp;
  }
  auto top = reinterpret_cast<std::uintptr_t>(stk.hi());
  auto caddr = (top - closure_size) & ~(std::uintptr_t{closure_align} - 1);
  *closure = reinterpret_cast<void*>(caddr);
  // The context's stack ends below the closure.
  arch::make_context(gp->ctx, stk.lo, caddr - reinterpret_cast<std::uintptr_t>(stk.lo),
                     goroutine_entry, gp);
  return gp;
}

// First run of a goroutine whose stack is not bound (see "Stacks of new
// goroutines"): trade the reserved stack for the warmest one of pp's cache
// and make the context on it.
__attribute__((noinline)) static void bind_stack(p* pp, g* gp) {
  pp->stackcache.exchange_top(gp->stk);
  arch::make_context(gp->ctx, gp->stk.lo, gp->stk.size, goroutine_entry, gp, gp->fp);
}

static void freeg_unused(p* pp, g* gp) {
  arch::destroy_context(gp->ctx);
  gp->status.store(gstatus::dead, std::memory_order_relaxed);
  if (pp) {
    pp->stackcache.put(*sched->stacks, gp->stk);
  } else {
    sched->stacks->release(gp->stk);
  }
  gfput(pp, gp);
}

// Makes a newly built G runnable on mp's P (runnext), or globally without a P.
static void newproc_ready(m* mp, g* gp) {
  p* pp = mp ? mp->curp : nullptr;
  gp->goid = new_goid(pp);
  URGE_TRACE_GO_CREATE(gp);  // go_create, plus what names gp in a trace
  gp->status.store(gstatus::runnable, std::memory_order_release);
  count_goroutine(pp, &p::gcreated, sched->gcreated_nop);
  if (pp) {
    runqput(pp, gp, true);
  } else {
    std::lock_guard lock(sched->lock);
    globrunqput(gp);
  }
  if (sched->npidle.load(std::memory_order_relaxed) != 0 &&
      sched->nmspinning.load(std::memory_order_relaxed) == 0) {
    wakep();
  }
}

// ---- Blocking calls (Go's entersyscall / exitsyscall) ----------------------

void enter_blocking_call() {
  preempt_off_scope no_preempt;
  g* gp = getg();
  m* mp = gp->curm;
  p* pp = mp->curp;
  URGE_TRACE_EVENT(syscall_enter, gp->goid, pp->id);
  gp->status.store(gstatus::syscall, std::memory_order_release);
  pp->syscalltick.fetch_add(1, std::memory_order_relaxed);
  mp->oldp = pp;
  releasep(mp);
  // The P stays attached in spirit (status syscall) so that a quick call can
  // take it back without any lock; sysmon retakes it if the call lasts.
  pp->status.store(pstatus::syscall, std::memory_order_release);
  // The call must not be signalled. One fence orders both statuses before
  // the loads of the preemption timer's flag and of a signal in flight (see
  // "Preemption timers" in sysmon.cpp, "Signals and blocking calls" in
  // preempt.cpp); both are rarely set.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (mp->preempt_timer_armed.load(std::memory_order_relaxed) != 0 &&
      mp->preempt_timer_armed.exchange(0, std::memory_order_relaxed) != 0) {
    mp->preempt_timer.disarm();
  }
  if (mp->signal_pending.load(std::memory_order_relaxed)) preempt_signal_drain(mp);
  if (sched->sysmon_wait.load(std::memory_order_acquire)) {
    std::lock_guard lock(sched->lock);
    if (sched->sysmon_wait.load(std::memory_order_relaxed)) {
      sched->sysmon_wait.store(false, std::memory_order_relaxed);
      platform::notewakeup(sched->sysmon_note);
    }
  }
}

void exit_blocking_call() {
  // Raised by hand, not by a preempt_off_scope: the slow path below switches
  // away with it raised, as every switch is, and resumed() lowers it on
  // whichever thread the goroutine comes back on. A scope would lower it a
  // second time there (leaving -1: that thread's goroutines unpreemptible),
  // and leave the parked thread's g0 at 2 (+1 for every goroutine it runs).
  ++preempt_off;
  g* gp = getg();
  m* mp = gp->curm;
  p* oldp = mp->oldp;
  mp->oldp = nullptr;
  URGE_TRACE_EVENT(syscall_exit, gp->goid, oldp ? oldp->id : -1);
  // Fast path: the P is still ours.
  pstatus expect = pstatus::syscall;
  if (oldp &&
      oldp->status.compare_exchange_strong(expect, pstatus::running, std::memory_order_acq_rel)) {
    acquirep(mp, oldp);
    oldp->syscalltick.fetch_add(1, std::memory_order_relaxed);
    gp->status.store(gstatus::running, std::memory_order_release);
    --preempt_off;
    check_preempt();  // a request that came during the call (Go's exitsyscall)
    return;
  }
  // Sysmon took it and handed it to another M, which moved to the P's CPU
  // (pinning): this thread no longer belongs there. Unpinned until it takes
  // a P again (acquirep pins it to that P's CPU).
  if (mp->pinned_cpu >= 0) {
    platform::unpin_current_thread(sched->cpus);
    mp->pinned_cpu = -1;
  }
  // Another idle P will do.
  sched->lock.lock();
  p* pp = sched->stopping.load(std::memory_order_relaxed) ? nullptr : pidleget();
  sched->lock.unlock();
  if (pp) {
    acquirep(mp, pp);
    gp->status.store(gstatus::running, std::memory_order_release);
    --preempt_off;
    check_preempt();
    return;
  }
  // Slow path (exitsyscall0): queue the goroutine and park this M, from g0.
  mp->pending = after_switch::exit_blocking;
  mp->pending_g = gp;
  mp->curg.store(nullptr, std::memory_order_relaxed);
  gp->user_locks = user_locks;
  user_locks = 0;
  gp->eh = *mp->eh;
  *mp->eh = mp->g0_eh;
  m* back = static_cast<m*>(arch::switch_context(gp->ctx, mp->g0, mp));
  resumed(back);
}

// ---- Deadlock detection and shutdown ----------------------------------------

void begin_stop_locked() {
  if (sched->stopping.exchange(true, std::memory_order_acq_rel)) return;
  for (m* mp = sched->midle; mp; mp = mp->schedlink) platform::notewakeup(mp->park);
  for (m* mp = sched->allm; mp; mp = mp->alllink) {
    if (mp->lockedwait) platform::notewakeup(mp->park);
  }
  if (sched->timer_waiter) netpoll_break();
  platform::notewakeup(sched->sysmon_note);
}

// Called with sched.lock held when an M goes idle. If no M is running any
// more (none spinning, none in a blocking call, none waiting for a timer),
// nothing can ever make a goroutine runnable again: Go's checkdead. An M
// waiting for a P for its stopped goroutines is idle, but its proxy is in a
// run queue (see "Stopped goroutines and their threads").
static void checkdead() {
  if (sched->stopping.load(std::memory_order_relaxed)) return;
  int running = sched->mcount - sched->nmidle - sched->nmidlelocked - sched->mexited;
  if (running > 0) return;
  if (sched->runqsize.load(std::memory_order_relaxed) != 0) return;
  for (p* pp : sched->allp) {
    if (!pp->runq.empty() || pp->timers.size() != 0) return;
  }
  sched->deadlock = true;
  begin_stop_locked();
}

// ---- Configuration --------------------------------------------------------

static int parse_positive(const std::string& what, const std::string& text) {
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v <= 0 || v > 1'000'000) {
    throw std::invalid_argument("urge: " + what + "=\"" + text + "\" is not a positive integer");
  }
  return static_cast<int>(v);
}

int default_maxprocs(const char* env_value, const std::vector<int>& cpus,
                     std::optional<int> cgroup_limit) {
  if (env_value) return parse_positive("URGE_MAXPROCS", env_value);
  int n = static_cast<int>(cpus.size());
  if (cgroup_limit && *cgroup_limit < n) n = std::max(1, *cgroup_limit);
  return std::max(1, n);
}

void parse_debug(const char* text, debug_settings& out) {
  if (!text) return;
  std::string s(text);
  std::size_t pos = 0;
  while (pos <= s.size()) {
    std::size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? s.size() + 1 : comma + 1;
    if (item.empty()) continue;
    std::size_t eq = item.find('=');
    std::string key = item.substr(0, eq);
    std::string val = eq == std::string::npos ? "" : item.substr(eq + 1);
    auto number = [&]() -> long {
      std::size_t used = 0;
      long v = -1;
      try {
        v = std::stol(val, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (val.empty() || used != val.size() || v < 0) {
        throw std::invalid_argument("urge: URGE_DEBUG: " + key + "=\"" + val +
                                    "\" is not a non-negative integer");
      }
      return v;
    };
    if (key == "schedtrace") {
      out.schedtrace_ms = number();
    } else if (key == "scheddetail") {
      out.scheddetail = number() != 0;
    } else if (key == "asyncpreemptoff") {
      out.asyncpreemptoff = number() != 0;
    } else if (key == "pin") {
      out.pin = number() != 0;
    } else if (key == "netpoll") {
      out.netpoll = val;
    }
    // Unknown keys are ignored, as GODEBUG ignores them.
  }
}

// One pool per stack size, kept for the life of the process: goroutine
// slots (and the g at their top) are reused across run() calls.
static platform::stack_pool* stack_pool_for(std::size_t size) {
  static std::mutex mu;
  static std::map<std::size_t, std::unique_ptr<platform::stack_pool>> pools;
  std::lock_guard lock(mu);
  auto& slot = pools[size];
  if (!slot) {
    platform::stack_pool::options o;
    o.stack_size = size;
    slot = std::make_unique<platform::stack_pool>(o);
  }
  return slot.get();
}

}  // namespace urge::runtime

// ---- The public API -----------------------------------------------------------

namespace urge {

using namespace urge::runtime;

namespace detail {

bool in_goroutine() noexcept {
  return getg() != nullptr;
}

spawn_slot newproc_begin(std::size_t closure_size, std::size_t closure_align, closure_fn run,
                         void* creator_pc) {
  m* mp = getm();
  if (!sched || !mp) throw std::logic_error("urge::go called outside urge::run");
  preempt_off_scope no_preempt;
  void* closure = nullptr;
  g* gp = allocg(mp->curp, closure_size, closure_align, &closure);
  gp->fn = run;
  gp->closure = closure;
  gp->creator_pc = creator_pc;
  g* parent = mp->curg.load(std::memory_order_relaxed);
  gp->parent_goid = parent ? parent->goid : 0;
  return {closure, gp};
}

void newproc_commit(spawn_slot slot) noexcept {
  {
    preempt_off_scope no_preempt;
    m* mp = getm();
    // newproc_begin ran on this goroutine; a closure constructor that yields
    // may have moved us to another M, which getm() accounts for.
    newproc_ready(mp, static_cast<g*>(slot.g));
  }
  // A preemption point, as every call is in Go (the callee's stack check
  // sees the request). A goroutine that only spawns is otherwise seldom
  // stoppable: it spends most of its time in the runtime, and when a signal
  // does stop it, it resumes from its M's private queue after a single other
  // goroutine. Without this, a loop of go() on one P kept the P until it was
  // done, and every goroutine it made was alive at once (a million stacks
  // touched where Go, preempting it to the back of the global queue every
  // quantum, has a quantum's worth).
  check_preempt();
}

void newproc_abort(spawn_slot slot) noexcept {
  preempt_off_scope no_preempt;
  m* mp = getm();
  freeg_unused(mp ? mp->curp : nullptr, static_cast<g*>(slot.g));
}

void enter_blocking() noexcept {
  enter_blocking_call();
}
void exit_blocking() noexcept {
  exit_blocking_call();
}

void run_main(const config& cfg, closure_fn main_fn, void* main_arg) {
  if (getg()) throw std::logic_error("urge::run called from inside a goroutine");
  if (sched) throw std::logic_error("urge::run: another runtime is running in this process");

  debug_settings dbg;
  parse_debug(std::getenv("URGE_DEBUG"), dbg);
  if (cfg.maxprocs < 0) {
    throw std::invalid_argument("urge: config::maxprocs = " + std::to_string(cfg.maxprocs) +
                                " is negative");
  }
  auto s = std::make_unique<schedt>();
  s->cpus = platform::affinity_cpus();
  futex_mutex::active_spin = s->cpus.size() > 1 ? 4 : 0;  // Go's ncpu > 1 test in lock2
  s->gomaxprocs = cfg.maxprocs > 0 ? cfg.maxprocs
                                   : default_maxprocs(std::getenv("URGE_MAXPROCS"), s->cpus,
                                                      platform::cgroup_cpu_limit());
  s->quantum_ns = cfg.quantum.count() > 0 ? cfg.quantum.count() : 10'000'000;
  s->async_preempt = cfg.async_preempt && !dbg.asyncpreemptoff;
  s->pin_threads = cfg.pin_threads || dbg.pin;
  s->schedtrace_ms = dbg.schedtrace_ms;
  s->scheddetail = dbg.scheddetail;
  s->start_time = platform::nanotime();
  s->stacks = stack_pool_for(cfg.stack_size ? cfg.stack_size : platform::default_stack_size());

  for (int i = 0; i < s->gomaxprocs; ++i) {
    auto* pp = new p;
    pp->id = i;
    pp->cpu = i < static_cast<int>(s->cpus.size()) ? s->cpus[static_cast<std::size_t>(i)] : -1;
    s->allp.push_back(pp);
  }
  for (std::uint32_t i = 1; i <= static_cast<std::uint32_t>(s->gomaxprocs); ++i) {
    std::uint32_t a = i, b = static_cast<std::uint32_t>(s->gomaxprocs);
    while (b) {
      std::uint32_t t = a % b;
      a = b;
      b = t;
    }
    if (a == 1) s->coprimes.push_back(i);
  }
  sched = s.get();
  try {
    netpoll_init(dbg.netpoll);
  } catch (...) {
    for (p* pp : sched->allp) delete pp;
    sched = nullptr;
    throw;
  }

  m m0;
  m0.id = 0;
  m0.tid = platform::current_tid();
  m0.eh = reinterpret_cast<eh_globals*>(abi::__cxa_get_globals());
  m0.fastrand = 0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(platform::nanotime());
  arch::init_thread_context(m0.g0);
  platform::ensure_alt_stack();
  sched->mcount = 1;
  sched->allm = &m0;
  tls_m = &m0;
  // Pinning moves the caller's thread to P0's CPU (in acquirep, just below):
  // take its mask first, to give it back after.
  cpu_set_t caller_mask;
  const bool have_caller_mask = sched_getaffinity(0, sizeof caller_mask, &caller_mask) == 0;
  // P0 to M0; the rest idle (in reverse so that pidleget hands out P1 first).
  for (int i = sched->gomaxprocs - 1; i >= 1; --i)
    pidleput(sched->allp[static_cast<std::size_t>(i)]);
  acquirep(&m0, sched->allp[0]);

  // The main goroutine.
  void* unused = nullptr;
  g* maing = allocg(m0.curp, 0, 1, &unused);
  maing->fn = main_fn;
  maing->closure = main_arg;
  maing->is_main = true;
  sched->main_g = maing;
  sched->next_goid.store(1, std::memory_order_relaxed);
  preempt_init();
  install_sigquit();
  g_prev_terminate = std::set_terminate(panic_terminate);
  trace_start();
  start_sysmon();
  // Only now, with everything above in force: newproc_ready may start an M
  // that steals main (and what main spawns) before this thread goes on.
  newproc_ready(&m0, maing);
  preempt_off = 1;  // g0's baseline: see switch_away
  schedule_loop(&m0);
  preempt_off = 0;

  // Shutdown: every other M leaves its loop at its next scheduling point.
  {
    std::lock_guard lock(sched->lock);
    m0.exited = true;
    sched->mexited++;
  }
  stop_sysmon();
  restore_sigquit();
  std::set_terminate(g_prev_terminate);
  for (m* mp = sched->allm; mp; mp = mp->alllink) {
    if (mp != &m0 && mp->thread.joinable()) mp->thread.join();
  }
  // sysmon armed them, and nothing uses them now. Deleting one cancels it.
  for (m* mp = sched->allm; mp; mp = mp->alllink) mp->preempt_timer.destroy();
  trace_stop();  // after the joins: no M may still be writing to a trace buffer
  // Abandon the goroutines still alive: their stacks go back to the pool,
  // their destructors never run (as Go's goroutines end with main). Their Gs
  // are not reused: a closure kept in the G (closure_room) stays as it was, so
  // that what it holds is still reachable, as in a process that exits here,
  // and a leak checker does not report it. (Reusing the G overwrote the
  // closure, or not, depending on the order of the free lists.)
  for (p* pp : sched->allp) {
    pp->stackcache.flush(*sched->stacks);
    gfpurge(pp);
  }
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    gstatus st = gp->status.load(std::memory_order_acquire);
    if (st != gstatus::dead && st != gstatus::idle) {
      arch::destroy_context(gp->ctx);
      gp->status.store(gstatus::dead, std::memory_order_release);
      sched->stacks->release(gp->stk);
    }
  }
  const bool deadlock = sched->deadlock;
  std::exception_ptr main_exception = sched->main_exception;
  for (m* mp = sched->allm; mp;) {
    m* next = mp->alllink;
    if (mp != &m0) delete mp;
    mp = next;
  }
  netpoll_shutdown();
  if (sched->pin_threads && have_caller_mask)
    sched_setaffinity(0, sizeof caller_mask, &caller_mask);
  for (p* pp : sched->allp) delete pp;
  sched = nullptr;
  tls_m = nullptr;
  if (deadlock) throw deadlock_error("fatal error: all goroutines are asleep - deadlock!");
  if (main_exception) std::rethrow_exception(main_exception);
}

}  // namespace detail

// yield() of a goroutine alone on its P. Go's Gosched goes through the
// global queue, which spreads yielding goroutines over the Ps; a local yield
// must take its share itself, or a goroutine alone on its P keeps it for
// ever while goroutines queue on another. Takes half of another P's queue
// into pp's (empty) one; false if there was nothing to take.
static bool steal_for_yield(m* mp, p* pp) {
  const auto procs = static_cast<std::uint32_t>(sched->gomaxprocs);
  const std::uint32_t start = procs > 1 ? fastrand(mp) % procs : 0;
  for (std::uint32_t k = 1; k < procs; ++k) {
    p* p2 = sched->allp[(start + k) % procs];
    if (p2 == pp || p2->runq.empty()) continue;
    if (g* gp = pp->runq.steal(p2->runq, false, false)) {
      sched->steals.fetch_add(1, std::memory_order_relaxed);
      runqput(pp, gp, false);
      return true;
    }
  }
  return false;
}

__attribute__((noinline)) static void yield_traced(g* gp, m* mp, g* next, bool inherit) {
  switch_to_as<true>(gp, mp, after_switch::ready_local, next, inherit);
}

// yield picks the next goroutine before it commits to a switch: finding
// nothing (a goroutine alone on its P) costs no switch, and finding one, the
// common case, costs one look at the queues instead of two.
void yield() {
  g* gp = getg();
  if (!gp) {
    std::this_thread::yield();
    return;
  }
  gp->preempt.store(false, std::memory_order_relaxed);
  m* mp = gp->curm;
  p* pp = mp->curp;
  ++preempt_off;
  bool inherit = false;
  g* next = nullptr;
  if (!sched->stopping.load(std::memory_order_relaxed)) {
    // Runs this P's due timers and gives stopped goroutines their turns
    // (see pick_local), as any switch does.
    next = pick_local(mp, pp, inherit);
    // Nothing here: the global queue is g0's to look at; failing that, a
    // share of another P's queue; failing that, go on.
    if (!next && sched->runqsize.load(std::memory_order_relaxed) == 0) {
      if (!steal_for_yield(mp, pp)) {
        --preempt_off;
        return;
      }
      next = pp->runq.get(inherit);
    }
  }
  mp->pending = after_switch::ready_local;
  mp->pending_g = gp;
  mp->pending_unlock = nullptr;
  mp->pending_arg = nullptr;
  if (URGE_TRACE_ENABLED()) {
    yield_traced(gp, mp, next, inherit);
  } else {
    switch_to_as<false>(gp, mp, after_switch::ready_local, next, inherit);
  }
}

namespace {
void sleep_wake(timer*, void* arg, std::int64_t) {
  goready(static_cast<g*>(arg), true);
}
bool sleep_arm(g* gp, void*) {
  add_timer(gp->sleep_timer);
  return true;
}
}  // namespace

void sleep(std::chrono::nanoseconds d) {
  g* gp = getg();
  if (!gp) {
    std::this_thread::sleep_for(d);
    return;
  }
  if (d.count() <= 0) {
    check_preempt();
    return;
  }
  if (!gp->sleep_timer) gp->sleep_timer = new timer;
  timer* t = gp->sleep_timer;
  t->when = platform::nanotime() + d.count();
  t->period = 0;
  t->f = sleep_wake;
  t->arg = gp;
  gopark(sleep_arm, nullptr, waitreason::sleep);
}

int maxprocs() {
  return sched ? sched->gomaxprocs : 0;
}

std::size_t num_goroutines() {
  if (!sched) return 0;
  std::int64_t n =
      count_sum(&p::gcreated, sched->gcreated_nop) - count_sum(&p::gexited, sched->gexited_nop);
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

sched_stats stats() {
  sched_stats st;
  if (!sched) return st;
  st.goroutines_created = static_cast<std::uint64_t>(count_sum(&p::gcreated, sched->gcreated_nop));
  st.steals = sched->steals.load(std::memory_order_relaxed);
  st.handoffs = sched->handoffs.load(std::memory_order_relaxed);
  st.preempt_requests = sched->preempt_requests.load(std::memory_order_relaxed);
  st.threads = sched->threads_created.load(std::memory_order_relaxed) + 1;
  preempt_counters pc = preempt_stats();
  st.preempt_signals = pc.signals;
  st.preempt_timer_signals = pc.timer;
  st.preempts_taken = pc.taken;
  st.preempts_deferred = pc.deferred;
  return st;
}

}  // namespace urge
