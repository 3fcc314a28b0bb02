// sysmon: the system monitor (Go's sysmon in proc.go).
//
// A thread of its own, without a P, that watches the Ps:
//  - a P whose goroutine has run for longer than the quantum on one schedtick
//    gets a preemption request (preemptone), made on time by a kernel timer
//    that sysmon arms for it (see "Preemption timers");
//  - a P whose M has been in a blocking call for more than one sysmon tick is
//    retaken and handed to another M when there is work for it (retake);
//  - every schedtrace interval it prints Go's SCHED line.
// It sleeps 20 us between looks, doubling after 1 ms without anything to do,
// up to 10 ms (1 ms while goroutines run, and never past the moment a running
// goroutine's quantum runs out); when every P is idle it sleeps until a P
// wakes up (pidleget and enter_blocking_call wake it), so an idle runtime
// costs no CPU.
#include <sys/prctl.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <mutex>

#include "platform/cpu.hpp"
#include "runtime/netpoll.hpp"
#include "runtime/preempt.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"

namespace urge::runtime {

namespace {

// Beyond Go: a timer due on a P whose goroutine has run for this long gets
// the goroutine preempted, instead of waiting out the quantum
// (golang/go#38860: CPU hogs delayed timers by ~10 ms).
constexpr std::int64_t timer_preempt_ns = 1'000'000;

// Preemption timers
// -----------------
// sysmon sees that a slice has run past its quantum by waking up and looking.
// On a busy host its thread can be kept off a CPU for milliseconds (seen: a
// 1 ms sleep that took 2.8 ms, on a 2-CPU machine where the hog had one CPU
// and other processes the other), and each preemption it makes is then that
// much late. So sysmon, once it has seen a slice at two looks in a row (it is
// not one of the many short ones), arms a kernel timer of the M running it,
// due when sysmon would ask it to stop (slice_deadline). The timer interrupt
// raises SIGURG on that thread itself, with no other thread needing a CPU;
// the handler checks that the slice still runs and is due
// (m::preempt_timer_slice and _when) and makes sysmon's request itself.
// sysmon still looks at the deadline: within timer_preempt_ns of the
// timer's time it leaves the request to the timer (preemptone), later it
// signals as before, and where no timer could be armed (the kernel refused
// one: out of timers, an emulator without SIGEV_THREAD_ID) it always does.
//
// A goroutine inside a blocking call is never signalled, so a timer armed for
// its slice must be disarmed first. enter_blocking_call stores the P's status
// and, after a seq_cst fence, disarms the timer if m::preempt_timer_armed is
// set; sysmon sets that flag (seq_cst) before arming and loads the P's status
// (seq_cst) after. If that load sees the call, sysmon disarms. If it does
// not, it came before the M's fence, hence before the M's load of the flag:
// the M sees the flag and disarms, after the arming. But a call entered and
// left before that load leaves the P as it was, and the M's disarm may have
// come before the arming: so sysmon loads the flag again too, and disarms if
// the M took it. No interleaving leaves the timer armed in a call. A timer
// whose slice ended otherwise is disarmed at sysmon's next look; one that
// fires before that finds another slice (or the M idle) and does nothing.
//
// A timer that has fired is left alone until its signal has been taken (the
// handler clears m::preempt_timer_armed): its thread may be off the CPU, or
// the kernel a few microseconds behind sysmon's clock. Re-arming or
// disarming it then would drop the queued signal (recent kernels discard the
// pending signal of an earlier arming), and the request with it: the hog ran
// on for another quantum (seen: 1-3% of preemptions a quantum or more late
// with a busy loop on the other CPU).
//
// Rejected: arming at every new slice (a syscall per P per look on a busy
// runtime whose slices are short: the second look leaves only slices of
// 20 us to 1 ms and more); the M arming its own timer (a syscall on the
// scheduling path); sysmon alone, as Go (the worst latency follows sysmon's
// wake-up delays: 12-13.6 ms at a 10 ms quantum on a busy host).

// When sysmon asks pp's running slice to stop: at the end of its quantum, or
// earlier when a timer on the P is due and the slice has run for
// timer_preempt_ns (see retake).
std::int64_t slice_deadline(p* pp) {
  std::int64_t d = pp->sysmon_schedwhen + sched->quantum_ns;
  if (std::int64_t when = pp->timers.earliest(); when != 0) {
    d = std::min(d, std::max(when, pp->sysmon_schedwhen + timer_preempt_ns));
  }
  return d;
}

void disarm_preempt_timer(p* pp) {
  m* mp = pp->sysmon_timer_m;
  if (!mp) return;
  pp->sysmon_timer_m = nullptr;
  if (mp->preempt_timer_armed.exchange(0, std::memory_order_relaxed) != 0) {
    mp->preempt_timer.disarm();
  }
}

// Preemption timers in force at once, at most: a timer for each P, and some
// for Ms that held one and moved on (qemu-user has 32 for the whole process).
int max_preempt_timers() {
  return sched->gomaxprocs + 4;
}

// Arms mp's timer for pp's slice `tick`, due at `when`, unless it already is.
void arm_preempt_timer(p* pp, m* mp, std::uint32_t tick, std::int64_t now, std::int64_t when) {
  if (pp->sysmon_timer_m == mp && pp->sysmon_timer_tick == tick &&
      mp->preempt_timer_armed.load(std::memory_order_relaxed) != 0 &&
      (pp->sysmon_timer_when == when || pp->sysmon_timer_when <= now)) {
    return;  // armed as wanted, or fired and its signal not yet taken
  }
  disarm_preempt_timer(pp);
  if (!mp->preempt_timer.created()) {
    if (mp->preempt_timer_failed || mp->tid == 0) return;
    if (sched->preempt_timers >= max_preempt_timers()) return;  // sysmon's own signals
    if (!mp->preempt_timer.create(mp->tid, SIGURG)) {
      mp->preempt_timer_failed = true;  // sysmon's own signals do the job
      return;
    }
    sched->preempt_timers++;
  }
  const std::uint64_t gen = ++mp->preempt_timer_gen;
  mp->preempt_timer_slice.store(slice_key(pp->id, tick), std::memory_order_relaxed);
  mp->preempt_timer_when.store(when, std::memory_order_relaxed);
  mp->preempt_timer_armed.store(gen, std::memory_order_seq_cst);
  mp->preempt_timer.arm_at(when);
  pp->sysmon_timer_m = mp;
  pp->sysmon_timer_tick = tick;
  pp->sysmon_timer_when = when;
  // The M may have entered a blocking call, or left the P, since the look,
  // or entered a call and come back (its disarm, seeing our flag, may have
  // come before arm_at): see "Preemption timers".
  if (pp->status.load(std::memory_order_seq_cst) != pstatus::running ||
      mp->preempt_timer_armed.load(std::memory_order_seq_cst) != gen ||
      pp->curm.load(std::memory_order_relaxed) != mp ||
      pp->schedtick_pub.load(std::memory_order_relaxed) != tick) {
    pp->sysmon_timer_m = nullptr;
    std::uint64_t expect = gen;
    mp->preempt_timer_armed.compare_exchange_strong(expect, 0, std::memory_order_relaxed);
    mp->preempt_timer.disarm();
  }
}

// Asks the goroutine running on pp to stop: by flag at its next scheduling
// point, and by signal where asynchronous preemption is on (preempt.cpp),
// unless the preemption timer of this slice fired less than
// timer_preempt_ns ago and its signal has made the request or is on its way
// (sysmon, waking at the same deadline, often looks while the handler runs):
// a second one would only interrupt the stop. Later looks signal.
void preemptone(p* pp, std::int64_t now) {
  m* mp = pp->curm.load(std::memory_order_relaxed);
  if (!mp) return;
  g* gp = mp->curg.load(std::memory_order_relaxed);
  if (!gp) return;
  const std::uint32_t tick = pp->schedtick_pub.load(std::memory_order_relaxed);
  const bool timer_recent = pp->sysmon_timer_m == mp && pp->sysmon_timer_tick == tick &&
                            pp->sysmon_timer_when <= now &&
                            now - pp->sysmon_timer_when < timer_preempt_ns;
  const bool timer_did =
      timer_recent &&
      (mp->preempt_timer_armed.load(std::memory_order_relaxed) != 0 ||  // raised, not yet taken
       mp->preempt_timer_fired.load(std::memory_order_relaxed) == slice_key(pp->id, tick));
  preempt_request(mp, gp, !timer_did);
}

// The first running P whose goroutine (or inherited time slice) has run for
// timer_preempt_ns or more, as of sysmon's previous look; nullptr if none.
p* computing_p(std::int64_t now) {
  for (p* pp : sched->allp) {
    if (pp->status.load(std::memory_order_acquire) == pstatus::running &&
        pp->sysmon_schedwhen + timer_preempt_ns <= now) {
      return pp;
    }
  }
  return nullptr;
}

// sysmon's poll readied goroutines onto the global queue. An idle P was woken
// for them if there is one; else a P whose goroutine has run for
// timer_preempt_ns is asked to stop and to take them first.
void run_polled_soon(std::int64_t now) {
  if (sched->npidle.load(std::memory_order_relaxed) != 0) return;
  if (p* pp = computing_p(now)) {
    pp->global_first.store(true, std::memory_order_relaxed);
    preemptone(pp, now);
  }
}

// Returns how many Ps were retaken from blocking calls. *next_deadline is
// lowered to the earliest time a running goroutine's quantum (as sysmon
// measures it) runs out, so that sysmon can wake right then.
int retake(std::int64_t now, std::int64_t prev_look, std::int64_t* next_deadline) {
  int n = 0;
  for (p* pp : sched->allp) {
    pstatus s = pp->status.load(std::memory_order_acquire);
    if (s != pstatus::running) disarm_preempt_timer(pp);
    if (s == pstatus::syscall) {
      // Retake the P if its M has been blocked for more than one sysmon tick
      // (the tick changes on every call: a fresh call is left alone).
      std::uint32_t t = pp->syscalltick.load(std::memory_order_relaxed);
      if (pp->sysmon_syscalltick != t) {
        pp->sysmon_syscalltick = t;
        pp->sysmon_syscallwhen = now;
        continue;
      }
      // No work for it and someone else could take new work: leave it, for
      // up to 10 ms, so that the blocked M gets it back without a handoff.
      if (pp->runq.empty() &&
          sched->nmspinning.load(std::memory_order_relaxed) +
                  sched->npidle.load(std::memory_order_relaxed) >
              0 &&
          pp->sysmon_syscallwhen + 10'000'000 > now) {
        continue;
      }
      pstatus expect = pstatus::syscall;
      if (pp->status.compare_exchange_strong(expect, pstatus::idle, std::memory_order_acq_rel)) {
        ++n;
        pp->syscalltick.fetch_add(1, std::memory_order_relaxed);
        sched->handoffs.fetch_add(1, std::memory_order_relaxed);
        handoffp(pp);
      }
    } else if (s == pstatus::running) {
      std::uint32_t t = pp->schedtick_pub.load(std::memory_order_relaxed);
      if (pp->sysmon_schedtick != t) {
        // A new time slice, dated now as in Go: a hog is stopped up to one
        // look (1 ms while goroutines run) past its quantum. Rejected: dating
        // it at the previous look (stopped within one quantum of starting,
        // the worst latency ~1 ms lower), which shortened slices by up to a
        // look: 10-17% more preemptions, and over the overhead target at a
        // 1 ms quantum (+3.7% CPU against +1.7%).
        // But a P that has left the idle list since the previous look
        // started this slice no earlier than that: dated then. A goroutine
        // woken on an idle runtime (a timer, the network) that turns into a
        // hog is stopped one quantum after it woke, not up to a look later
        // (seen: 11.3-12 ms at a 10 ms quantum, sysmon having slept through
        // the wake-up). Only Ps that were idle a moment ago: hogs that keep
        // their Ps busy are dated as before.
        pp->sysmon_schedtick = t;
        const std::int64_t left_idle = pp->left_idle_at.load(std::memory_order_relaxed);
        pp->sysmon_schedwhen = left_idle > prev_look ? left_idle : now;
        disarm_preempt_timer(pp);  // armed for a slice that has ended
      } else if (pp->sysmon_schedwhen + sched->quantum_ns <= now) {
        preemptone(pp, now);
        // Ask again one quantum later if it keeps running.
        pp->sysmon_schedwhen = now;
      } else if (std::int64_t when = pp->timers.earliest();
                 when != 0 && when <= now && pp->sysmon_schedwhen + timer_preempt_ns <= now) {
        preemptone(pp, now);
      } else if (netpoll_overdue(pp, now, timer_preempt_ns) &&
                 pp->sysmon_schedwhen + timer_preempt_ns <= now) {
        // I/O held by a goroutine that computes: the same rule as a due
        // timer ("Busy Ps" in netpoll.cpp).
        preemptone(pp, now);
      } else if (sched->async_preempt) {
        // Seen twice: see "Preemption timers".
        if (m* mp = pp->curm.load(std::memory_order_relaxed)) {
          arm_preempt_timer(pp, mp, t, now, slice_deadline(pp));
        }
      }
      *next_deadline = std::min(*next_deadline, pp->sysmon_schedwhen + sched->quantum_ns);
    }
  }
  return n;
}

void sysmon_main() {
  // sysmon is never pinned: it inherits M0's mask, which pinning narrowed.
  if (sched->pin_threads) platform::unpin_current_thread(sched->cpus);
  // sysmon wakes often and runs for microseconds; on a busy machine a late
  // wake-up delays every preemption (seen: 4 ms behind a compiler running on
  // the other CPU). A short slice lets its wake-ups preempt sooner.
  platform::request_short_slice(100'000);
  // And wakes within a microsecond of its deadline, not the default 50.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
  std::int64_t idle = 0;   // consecutive ticks with nothing to do
  std::int64_t delay = 0;  // microseconds
  std::int64_t last_trace = platform::nanotime();
  std::int64_t last_poll = last_trace;
  std::int64_t last_look = last_trace;  // the previous retake's time
  // The earliest end of a running goroutine's quantum seen by the last look.
  std::int64_t next_deadline = INT64_MAX;
  for (;;) {
    if (idle == 0) {
      delay = 20;
    } else if (idle > 50) {
      delay *= 2;  // start doubling after 1 ms of idleness
    }
    if (delay > 10'000) delay = 10'000;
    // While goroutines run, look often enough that a hog is noticed within
    // ~1 ms of its quantum ending and a due timer within ~1 ms.
    const std::int64_t cap =
        std::max<std::int64_t>(20, std::min<std::int64_t>(1'000, sched->quantum_ns / 10'000));
    bool woken_by_work = false;  // see "Long sleeps" below
    if (delay > cap) {
      // Long sleeps: a sleep longer than cap is only for a runtime whose Ps
      // are all idle, and it must end when one of them starts running, or a
      // goroutine starting right after it would go unwatched for up to 10 ms
      // more than its quantum (seen: a goroutine that slept 1-3 ms and then
      // hogged its P was preempted 13-15 ms later). pidleget wakes sysmon
      // when sysmon_wait is set, as for the deep sleep below; both sides
      // hold sched->lock, so no start is missed.
      sched->lock.lock();
      if (sched->npidle.load(std::memory_order_relaxed) == sched->gomaxprocs) {
        sched->sysmon_wait.store(true, std::memory_order_relaxed);
        woken_by_work = true;
      } else {
        delay = cap;
      }
      sched->lock.unlock();
    }
    // Wake right when a quantum runs out rather than up to one delay later:
    // that lag would add to every preemption's latency.
    std::int64_t sleep_ns = delay * 1000;
    if (next_deadline != INT64_MAX) {
      sleep_ns = std::clamp<std::int64_t>(next_deadline - platform::nanotime(), 20'000, sleep_ns);
    }
    platform::notetsleep(sched->sysmon_note, sleep_ns);
    if (woken_by_work) {
      sched->lock.lock();
      sched->sysmon_wait.store(false, std::memory_order_relaxed);
      sched->lock.unlock();
    }
    check_sigquit();
    if (sched->stopping.load(std::memory_order_acquire)) return;
    platform::noteclear(sched->sysmon_note);

    // Deep sleep while every P is idle and no trace is wanted.
    if (sched->schedtrace_ms <= 0 &&
        sched->npidle.load(std::memory_order_acquire) == sched->gomaxprocs) {
      sched->lock.lock();
      if (sched->npidle.load(std::memory_order_relaxed) == sched->gomaxprocs &&
          !sched->stopping.load(std::memory_order_relaxed)) {
        sched->sysmon_wait.store(true, std::memory_order_relaxed);
        sched->lock.unlock();
        platform::notesleep(sched->sysmon_note);
        check_sigquit();
        sched->lock.lock();
        sched->sysmon_wait.store(false, std::memory_order_relaxed);
        platform::noteclear(sched->sysmon_note);
        idle = 0;
        delay = 20;
      }
      sched->lock.unlock();
      if (sched->stopping.load(std::memory_order_acquire)) return;
    }

    std::int64_t now = platform::nanotime();
    // Nobody waits in the poller (every M busy running goroutines): look,
    // so that I/O-bound goroutines are not starved. Go looks every 10 ms.
    // With epoll, every millisecond here while a goroutine has computed for
    // a millisecond or more (a P that schedules often polls by itself), and
    // what it readies runs within one more ("Busy Ps" in netpoll.cpp). With
    // io_uring the busy Ps read their own completions (netpoll_overdue, in
    // retake): taken from them every millisecond instead, the completions'
    // goroutines went through the global queue and echo lost 10-25%.
    const std::int64_t poll_every = netpoll_kind() == netpoll_backend::epoll && computing_p(now)
                                        ? timer_preempt_ns
                                        : 10'000'000;
    if (netpoll_has_waiters() && !sched->timer_waiter && now - last_poll >= poll_every) {
      if (netpoll_poll_now(nullptr) > 0) run_polled_soon(now);
      last_poll = now;
    }
    // io_uring task work held by an M that runs without entering the kernel.
    netpoll_sysmon(now);
    next_deadline = INT64_MAX;
    if (retake(now, last_look, &next_deadline) != 0) {
      idle = 0;
    } else {
      ++idle;
    }
    last_look = now;
    if (sched->schedtrace_ms > 0 && now - last_trace >= sched->schedtrace_ms * 1'000'000) {
      last_trace = now;
      schedtrace(sched->scheddetail);
    }
  }
}

}  // namespace

void start_sysmon() {
  sched->sysmon_thread = std::thread(sysmon_main);
}

void stop_sysmon() {
  {
    std::lock_guard lock(sched->lock);
    sched->stopping.store(true, std::memory_order_release);
  }
  platform::notewakeup(sched->sysmon_note);
  if (sched->sysmon_thread.joinable()) sched->sysmon_thread.join();
}

// Go's schedtrace: one SCHED line; with detail, one line per P, M and G.
void schedtrace(bool detailed) {
  std::int64_t now = platform::nanotime();
  std::lock_guard lock(sched->lock);
  std::FILE* out = stderr;
  std::fprintf(out,
               "SCHED %" PRId64
               "ms: gomaxprocs=%d idleprocs=%d threads=%d spinningthreads=%d "
               "idlethreads=%d runqueue=%d",
               (now - sched->start_time) / 1'000'000, sched->gomaxprocs,
               sched->npidle.load(std::memory_order_relaxed),
               sched->mcount - sched->mexited + 1,  // + sysmon, as Go counts it
               sched->nmspinning.load(std::memory_order_relaxed), sched->nmidle,
               sched->runqsize.load(std::memory_order_relaxed));
  if (detailed) {
    std::fprintf(out, " gcwaiting=0 nmidlelocked=%d stopwait=0 sysmonwait=%d\n",
                 sched->nmidlelocked, sched->sysmon_wait.load(std::memory_order_relaxed) ? 1 : 0);
    // Not Go's: the preemption counters (urge::stats()).
    const preempt_counters pc = preempt_stats();
    std::fprintf(out,
                 "  preempt: requests=%" PRIu64 " signals=%" PRIu64 " timer=%" PRIu64
                 " taken=%" PRIu64 " deferred=%" PRIu64 "\n",
                 std::uint64_t{sched->preempt_requests.load(std::memory_order_relaxed)},
                 std::uint64_t{pc.signals}, std::uint64_t{pc.timer}, std::uint64_t{pc.taken},
                 std::uint64_t{pc.deferred});
  } else {
    std::fputs(" [", out);
    for (std::size_t i = 0; i < sched->allp.size(); ++i) {
      std::fprintf(out, i ? " %u" : "%u", sched->allp[i]->runq.size());
    }
    std::fputs("]\n", out);
    std::fflush(out);
    return;
  }
  for (p* pp : sched->allp) {
    m* mp = pp->curm.load(std::memory_order_relaxed);
    std::fprintf(out,
                 "  P%d: status=%u schedtick=%u syscalltick=%u m=%d runqsize=%u gfreecnt=%zu "
                 "timerslen=%zu\n",
                 pp->id, static_cast<unsigned>(pp->status.load(std::memory_order_relaxed)),
                 pp->schedtick_pub.load(std::memory_order_relaxed),
                 pp->syscalltick.load(std::memory_order_relaxed), mp ? mp->id : -1, pp->runq.size(),
                 static_cast<std::size_t>(pp->gfreecnt), pp->timers.size());
  }
  for (m* mp = sched->allm; mp; mp = mp->alllink) {
    if (mp->exited) continue;
    g* gp = mp->curg.load(std::memory_order_relaxed);
    p* pp = mp->curp;
    std::fprintf(out,
                 "  M%d: p=%d curg=%lld mallocing=0 throwing=0 preemptoff= locks=0 dying=0 "
                 "spinning=%s blocked=%s lockedg=-1\n",
                 mp->id, pp ? pp->id : -1, gp ? static_cast<long long>(gp->goid) : -1LL,
                 mp->spinning ? "true" : "false", mp->blocked ? "true" : "false");
  }
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    gstatus st = gp->status.load(std::memory_order_relaxed);
    if (st == gstatus::dead || st == gstatus::idle) continue;
    m* mp = gp->curm;
    std::fprintf(out, "  G%llu: status=%u(%s) m=%d lockedm=-1\n",
                 static_cast<unsigned long long>(gp->goid), static_cast<unsigned>(st),
                 st == gstatus::waiting ? to_string(gp->reason) : "",
                 st == gstatus::running || st == gstatus::syscall ? (mp ? mp->id : -1) : -1);
  }
  std::fflush(out);
}

}  // namespace urge::runtime
