// Asynchronous preemption by SIGURG: the policy half. The mechanism (moving
// the interrupted registers, the trampoline) is in arch/preempt.hpp; the
// rules for where a goroutine may be stopped are in runtime/preempt.hpp.
//
// Sequence, for a goroutine G running on M for longer than the quantum:
//  1. sysmon sets G.preempt and, unless a signal is already in flight for M,
//     sends SIGURG to M's thread with tgkill (preempt_request). Or M's
//     preemption timer, which sysmon armed for the end of the quantum, raises
//     SIGURG at that time, and the handler sets G.preempt itself (see
//     "Preemption timers" in sysmon.cpp).
//  2. The handler (on the thread's alternate stack) checks the rules. If G
//     may stop here it moves the interrupted state onto G's stack and returns
//     into urge_preempt_trampoline, which calls urge_preempt_park: a normal
//     switch away, with G queued on M's private queue.
//  3. When M picks G again, urge_preempt_park sends SIGURG to its own thread
//     with m::resume_ctx set; the handler copies the saved state over its
//     signal frame and rt_sigreturn resumes G at the interrupted instruction.
// SIGURG because debuggers pass it through, libc does not use it, and a
// spurious one is harmless (Go's choice). SA_RESTART, so interrupted system
// calls of user code restart.
#include "runtime/preempt.hpp"

#include <link.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "arch/preempt.hpp"
#include "platform/clock.hpp"
#include "platform/cpu.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"

namespace urge::runtime {

constinit thread_local int preempt_off = 0;
constinit thread_local int user_locks = 0;
constinit thread_local bool preempt_deferred = false;

namespace {

// ---- Preemptible code --------------------------------------------------
// Built once, before any handler can look: a fixed table, read without locks.

struct text_range {
  std::uintptr_t lo, hi;
};
constexpr int max_ranges = 64;
text_range g_ranges[max_ranges];
std::atomic<int> g_nranges{0};

// Names (substrings of library paths) that opt into asynchronous preemption.
std::string g_extra_libs;

bool lib_opted_in(const char* name) {
  if (!name || !*name || g_extra_libs.empty()) return false;
  std::size_t pos = 0;
  while (pos <= g_extra_libs.size()) {
    std::size_t colon = g_extra_libs.find(':', pos);
    std::string item =
        g_extra_libs.substr(pos, colon == std::string::npos ? std::string::npos : colon - pos);
    if (!item.empty() && std::strstr(name, item.c_str())) return true;
    if (colon == std::string::npos) break;
    pos = colon + 1;
  }
  return false;
}

struct collect_state {
  int n = 0;
  bool first = true;
};

int collect_ranges(dl_phdr_info* info, std::size_t, void* data) {
  auto& st = *static_cast<collect_state*>(data);
  int& n = st.n;
  // dl_iterate_phdr reports the main executable first; others by opt-in.
  const bool main_exe = st.first;
  st.first = false;
  if (!main_exe && !lib_opted_in(info->dlpi_name)) return 0;
  for (int i = 0; i < info->dlpi_phnum && n < max_ranges; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    g_ranges[n++] = {lo, lo + ph.p_memsz};
  }
  return 0;
}

// ---- Counters ---------------------------------------------------------------
std::atomic<std::uint64_t> g_signals_sent{0};
std::atomic<std::uint64_t> g_timer_requests{0};
std::atomic<std::uint64_t> g_taken{0};
std::atomic<std::uint64_t> g_deferred{0};

// Stack the trampoline and the scheduler need below the saved state.
#if URGE_ASAN
constexpr std::size_t park_reserve = 48 * 1024;
#else
constexpr std::size_t park_reserve = 12 * 1024;
#endif

// A due preemption timer's signal: true if the slice it was armed for still
// runs on this M (not a timer of a slice that has ended).
bool preempt_timer_slice_runs(const m* mp) {
  const p* pp = mp->curp;
  return pp && mp->preempt_timer_slice.load(std::memory_order_relaxed) ==
                   slice_key(pp->id, pp->schedtick);
}

void sigurg_handler(int, siginfo_t* info, void* ctx) {
  const int saved_errno = errno;
  auto* uc = static_cast<ucontext_t*>(ctx);
  m* mp = getm();
  if (!mp) {
    errno = saved_errno;
    return;
  }
  // Whatever this delivery is for, no signal from sysmon is in flight any
  // more: a request sent while the goroutine resumes merges with the resume
  // signal (one SIGURG pending at a time) and is consumed by step 3. Cleared
  // only in step 2, it would stay set, and sysmon would never signal this M
  // again.
  mp->signal_pending.store(false, std::memory_order_relaxed);
  // A preemption timer's signal, due: not one of an arming that sysmon has
  // replaced with a later one since it was raised (older kernels deliver it
  // still). Taken: sysmon may arm the timer again (see "Preemption timers"
  // in sysmon.cpp).
  bool timer_due = false;
  if (info && info->si_code == SI_TIMER) {
    std::uint64_t gen = mp->preempt_timer_armed.load(std::memory_order_acquire);
    timer_due = platform::nanotime() >= mp->preempt_timer_when.load(std::memory_order_relaxed);
    if (gen != 0 && timer_due) {
      mp->preempt_timer_armed.compare_exchange_strong(gen, 0, std::memory_order_relaxed);
    }
  }
  // Step 3: the goroutine asks to be resumed where it was interrupted. (A
  // timer's signal that merged with the resume signal is lost: sysmon's own
  // signal at the deadline asks again.)
  if (void* buf = mp->resume_ctx) {
    mp->resume_ctx = nullptr;
#if URGE_ASAN
    const std::uintptr_t park_sp = arch::context_sp(uc);
#endif
    if (!arch::restore_interrupted(uc, buf)) {
      static const char msg[] = "fatal error: urge: cannot restore a preempted goroutine\n";
      (void)!write(2, msg, sizeof msg - 1);
      _exit(2);
    }
#if URGE_ASAN
    // The frames between here and the interrupted code (urge_preempt_park's,
    // the trampoline's, the saved state) are abandoned, never returned from:
    // their redzones would stay poisoned under the goroutine's stack pointer,
    // and the next preemption's copy of its state would trip on them.
    if (const std::uintptr_t sp = arch::context_sp(uc); park_sp < sp) {
      __asan_unpoison_memory_region(reinterpret_cast<void*>(park_sp), sp - park_sp);
    }
#endif
    uc->uc_sigmask = mp->resume_mask;  // the thread's mask before the resume signal
    errno = saved_errno;
    return;
  }
  // Step 2: a preemption request.
  g* gp = mp->curg.load(std::memory_order_relaxed);
  if (timer_due && gp && sched && sched->async_preempt && preempt_timer_slice_runs(mp)) {
    // The request sysmon would make at the deadline, made on time.
    mp->preempt_timer_fired.store(mp->preempt_timer_slice.load(std::memory_order_relaxed),
                                  std::memory_order_relaxed);
    if (!gp->preempt.exchange(true, std::memory_order_relaxed)) {
      sched->preempt_requests.fetch_add(1, std::memory_order_relaxed);
    }
    g_signals_sent.fetch_add(1, std::memory_order_relaxed);
    g_timer_requests.fetch_add(1, std::memory_order_relaxed);
  }
  if (!gp || !sched || !sched->async_preempt || mp->in_preempt ||
      !gp->preempt.load(std::memory_order_relaxed) ||
      gp->status.load(std::memory_order_relaxed) != gstatus::running) {
    errno = saved_errno;
    return;
  }
  bool safe = preempt_off == 0 && user_locks == 0 && pc_is_preemptible(arch::context_pc(uc));
  std::uintptr_t sp = arch::context_sp(uc);
  auto lo = reinterpret_cast<std::uintptr_t>(gp->stk.lo);
  auto hi = reinterpret_cast<std::uintptr_t>(gp->stk.hi());
  safe = safe && sp > lo && sp <= hi;  // not on some other stack the user switched to
  if (safe && arch::redirect_to_trampoline(uc, lo, park_reserve)) {
    gp->preempt.store(false, std::memory_order_relaxed);
    mp->in_preempt = true;
    g_taken.fetch_add(1, std::memory_order_relaxed);
  } else {
    if (user_locks != 0) preempt_deferred = true;
    g_deferred.fetch_add(1, std::memory_order_relaxed);
  }
  errno = saved_errno;
}

}  // namespace

bool pc_is_preemptible(std::uintptr_t pc) {
  int n = g_nranges.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    if (pc >= g_ranges[i].lo && pc < g_ranges[i].hi) {
      // The runtime's own code, when linked into the executable, is excluded
      // by preempt_off; the trampoline itself explicitly here.
      auto t = reinterpret_cast<std::uintptr_t>(&urge_preempt_trampoline);
      return !(pc >= t - 16 && pc < t + 64);
    }
  }
  return false;
}

void preempt_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (const char* libs = std::getenv("URGE_PREEMPT_LIBS")) g_extra_libs = libs;
    collect_state st;
    dl_iterate_phdr(collect_ranges, &st);
    g_nranges.store(st.n, std::memory_order_release);
    struct sigaction sa {};
    sa.sa_sigaction = sigurg_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGURG, &sa, nullptr);
  });
}

namespace {

// Signals and blocking calls
// --------------------------
// A goroutine inside blocking(f) is never signalled: a signal there would cut
// short a call that SA_RESTART does not restart (nanosleep, poll, epoll_wait)
// with EINTR. Checking that the goroutine runs and then sending leaves a
// window in which it enters the call (Go has it; seen here about once in a
// hundred runs of a test making twenty calls beside a hog, once preemption
// timers made sysmon look just as the hog stopped and the caller started).
// So the sender claims m::signal_pending (seq_cst) before it checks the
// goroutine's status (seq_cst), and enter_blocking_call stores that status
// and, after a seq_cst fence, loads signal_pending: either the sender sees
// the call and sends nothing, or the M sees the claim and waits, before the
// call, for the handler to take the signal (preempt_signal_drain). The wait
// is short: the M is running, and the signal interrupts it at once. It gives
// up after 100 us, for a thread that has SIGURG blocked (then no signal can
// cut the call short either).

// Sends SIGURG to mp's thread, unless asynchronous preemption is off
// (asyncpreemptoff promises no preemption signals at all), the M has no
// thread yet, or a signal is already in flight to it; and, for a request to
// gp, only while gp is running (see "Signals and blocking calls"). True if
// sent.
bool signal_m(m* mp, const g* gp) {
  if (!sched->async_preempt || mp->tid == 0) return false;
  if (mp->signal_pending.exchange(true, std::memory_order_seq_cst)) return false;
  if (gp && gp->status.load(std::memory_order_seq_cst) != gstatus::running) {
    mp->signal_pending.store(false, std::memory_order_relaxed);  // never a blocking call
    return false;
  }
  syscall(SYS_tgkill, getpid(), mp->tid, SIGURG);
  return true;
}

}  // namespace

void preempt_request(m* mp, g* gp, bool signal) {
  gp->preempt.store(true, std::memory_order_relaxed);
  sched->preempt_requests.fetch_add(1, std::memory_order_relaxed);
  if (signal && signal_m(mp, gp)) g_signals_sent.fetch_add(1, std::memory_order_relaxed);
}

void preempt_signal_drain(m* mp) {
  const std::int64_t give_up = platform::nanotime() + 100'000;
  while (mp->signal_pending.load(std::memory_order_relaxed) && platform::nanotime() < give_up) {
    platform::procyield(10);
  }
}

// Without asynchronous preemption the task work waits for the thread's next
// kernel entry (its timer tick at worst). Not counted in preempt_signals: it
// asks nothing of the goroutine.
void preempt_kick(m* mp) {
  signal_m(mp, nullptr);
}

void preempt_deferred_now(std::uintptr_t caller_pc) {
  preempt_deferred = false;
  g* gp = getg();
  if (!gp || !sched || !gp->preempt.load(std::memory_order_relaxed)) return;
  if (preempt_off != 0 || !pc_is_preemptible(caller_pc)) return;
  // At a call boundary: a voluntary switch is enough, but the caller did not
  // ask for one, so it resumes on this thread like an asynchronous one.
  const int saved_errno = errno;
  gp->preempt.store(false, std::memory_order_relaxed);
  g_taken.fetch_add(1, std::memory_order_relaxed);
  gopark_locked_to_m();
  errno = saved_errno;
}

preempt_counters preempt_stats() {
  return {g_signals_sent.load(std::memory_order_relaxed),
          g_timer_requests.load(std::memory_order_relaxed), g_taken.load(std::memory_order_relaxed),
          g_deferred.load(std::memory_order_relaxed)};
}

}  // namespace urge::runtime

using namespace urge::runtime;

// Called by urge_preempt_trampoline on the goroutine's stack; see step 2/3.
// The goroutine's exception state (it may be stopped inside a catch block or
// in a destructor run by unwinding) is kept aside by the switch, as for every
// switch: see "Exception state" in proc.cpp.
extern "C" void urge_preempt_park(void* saved) {
  const int saved_errno = errno;
  gopark_locked_to_m();  // returns on the same M, when it is our turn again
  m* mp = getm();
  errno = saved_errno;
  // Step 3: resume the interrupted instruction through a signal to ourselves.
  sigset_t urg;
  sigemptyset(&urg);
  sigaddset(&urg, SIGURG);
  pthread_sigmask(SIG_UNBLOCK, &urg, &mp->resume_mask);
  mp->resume_ctx = saved;
  mp->in_preempt = false;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  // Delivered before tgkill returns, and the handler does not come back
  // here. Unless a SIGURG was already pending: this one merges with it (one
  // pending at a time), and if that was a preemption timer's signal which
  // the kernel then discards as stale (its timer re-armed or disarmed since
  // it fired), nothing is delivered at all (seen under ASan, about one run in
  // eight of a 1 ms quantum test). Then send again.
  for (int attempt = 0; attempt < 100; ++attempt) syscall(SYS_tgkill, getpid(), mp->tid, SIGURG);
  static const char msg[] = "fatal error: urge: the resume signal was not delivered\n";
  (void)!write(2, msg, sizeof msg - 1);
  _exit(2);
}
