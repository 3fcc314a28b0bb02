// The scheduler's data structures (Go's runtime2.go).
//
// The main concepts are:
//   G - goroutine: a stack, a saved context and a status.
//   M - worker thread ("machine"): runs Gs, one at a time.
//   P - processor: the resource an M needs to run Gs (a local run queue, a
//       timer heap, a stack cache). There are exactly maxprocs Ps.
// An M holds a P while it runs goroutines; an M in a blocking call gives its
// P up (or has it taken by sysmon) so that other Ms keep maxprocs Ps busy.
// Statuses and wait reasons use Go's names and numbers so that schedtrace,
// goroutine dumps and Go readers agree.
//
// Synchronisation is noted on every field: "owner" means only the M that
// holds the P (or runs the G) touches it; "sched.lock" means the global lock;
// atomics say so.
#pragma once

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "arch/context.hpp"
#include "platform/futex.hpp"
#include "platform/stack.hpp"
#include "platform/thread_timer.hpp"
#include "runtime/globrunq.hpp"
#include "runtime/lock.hpp"
#include "runtime/runq.hpp"
#include "runtime/timer.hpp"
#include "urge/runtime.hpp"

namespace urge::runtime {

struct g;
struct m;
struct p;

// Go's _G* values (runtime2.go).
enum class gstatus : std::uint32_t {
  idle = 0,
  runnable = 1,
  running = 2,
  syscall = 3,
  waiting = 4,
  dead = 6,
  preempted = 9,
};
const char* to_string(gstatus s);

// Go's _P* values.
enum class pstatus : std::uint32_t { idle = 0, running = 1, syscall = 2, dead = 4 };

// Go's waitReason strings, for dumps and scheddetail.
enum class waitreason : std::uint8_t {
  zero,
  chan_receive_nil_chan,
  chan_send_nil_chan,
  select_no_cases,
  chan_receive,
  chan_send,
  select,
  sleep,
  io_wait,
  sync_mutex_lock,
  sync_rwmutex_rlock,
  sync_rwmutex_lock,
  sync_cond_wait,
  semacquire,
  preempted,
};
const char* to_string(waitreason w);

// What the context we switched to must do for the goroutine we left, once we
// are off its stack. See "Parking" in proc.cpp.
enum class after_switch : std::uint8_t {
  none,
  ready_local,    // yield: make it runnable at the tail of the local queue
  ready_global,   // preempted: make it runnable on the global queue (Go's gopreempt_m)
  park,           // park: call unlockf; if it says no, make it runnable again
  exit,           // it returned: recycle its stack
  exit_blocking,  // back from a blocking call with no P: queue it globally (exitsyscall0)
  ready_locked,   // stopped asynchronously: runnable on this M's private queue only
};

using unlock_fn = bool (*)(g* gp, void* arg);

// The C++ runtime's per-thread exception state (what abi::__cxa_get_globals
// returns), as libstdc++ (unwind-cxx.h) and libc++abi (cxa_exception.h) lay
// it out outside ARM EHABI: the stack of exceptions being handled (catch
// blocks entered and not left) and the count of exceptions being unwound.
// It belongs to the goroutine, not the thread: see "Exception state" in
// proc.cpp.
#if defined(__ARM_EABI_UNWINDER__)
#error "urge: the ARM EHABI exception state has another layout"
#endif
struct eh_globals {
  void* caught_exceptions = nullptr;
  unsigned int uncaught_exceptions = 0;
};

inline constexpr std::uint32_t g_magic = 0x676f7267;  // "gorg"

// Room in a g for the callable of `go` and its arguments. A closure that
// fits lives here, and the goroutine's stack is bound at its first run (see
// "Stacks of new goroutines" in proc.cpp); a larger one goes to the top of
// its stack at once. 64 bytes, which make the G 256: a lambda with a few
// captures fits, as does a function with seven word-sized arguments.
inline constexpr std::size_t g_closure_room = 64;

// A goroutine. Gs are allocated in blocks, never freed, and reused from
// per-P and global free lists (Go's gFree); every G ever made is on allgs.
//
// Aligned to cache lines: a G is written by the P that creates the goroutine
// and by the P that runs it, often at the same time as its neighbours in the
// block, by other Ps. 240-byte Gs packed end to end shared lines with them
// (spawn at two Ps: 10% faster aligned, in a series of 21 pairs), for 16
// bytes more per parked goroutine.
struct alignas(64) g {
  // Saved context while not running; owner. sp == nullptr until the first
  // run of a goroutine created with its stack unbound (see above).
  arch::context ctx;
  // Owner. Reserved at creation (that is where running out of stacks is
  // reported), but exchanged at the first run for a recently used one.
  platform::stack stk;
  std::atomic<gstatus> status{gstatus::idle};
  std::uint32_t magic = 0;  // g_magic from allocation on (for debuggers walking allgs)
  std::uint64_t goid = 0;   // set at creation
  g* schedlink = nullptr;   // run queue batches, the global queue, free lists; their lock
  // Set only in an M's proxy (m::lockedproxy): this run-queue entry stands
  // for that M's stopped goroutines. See "Stopped goroutines and their
  // threads" in proc.cpp. Fixed.
  m* lockedm = nullptr;
  m* curm = nullptr;                     // the M running it (running, syscall); owner
  std::atomic<bool> preempt{false};      // cooperative preemption request, set by sysmon
  waitreason reason = waitreason::zero;  // why it is waiting; set before parking
  // pthread locks held, while not running (preempt.hpp). With the fields
  // around it, near the g's first cache line: every switch reads and writes it.
  int user_locks = 0;
  eh_globals eh;                    // its exception state, while not running; owner (every switch)
  std::int64_t waitsince = 0;       // nanotime when it parked
  void* param = nullptr;            // set by whoever readies it (channels: the winning case)
  detail::closure_fn fn = nullptr;  // entry: fn(closure)
  void* closure = nullptr;          // in closure_room, or at the top of stk
  void* creator_pc = nullptr;       // the `go` statement's return address
  std::uint64_t parent_goid = 0;
  g* alllink = nullptr;  // allgs: push-only list, read lock-free
  // For sleep(): allocated at the G's first sleep and kept with it (Go's
  // g.timer); most goroutines never sleep. Owner.
  timer* sleep_timer = nullptr;
  std::uint32_t closure_size = 0;  // bytes at closure (the tracer names goroutines by them)
  arch::fp_control fp{};           // its creator's, for the context made at its first run
  bool is_main = false;
  alignas(8) unsigned char closure_room[g_closure_room];

  // Makes a dead G as galloc_block left it, for a new goroutine: every field
  // but its place in allgs (alllink, magic) and its sleep timer; a new field
  // belongs here. By assignment, not by destroying and constructing the G
  // again: sysmon may look at a G through a stale curg at any time (a racy
  // look, as Go's, with atomics on both sides), and constructing an atomic is
  // a plain write.
  void reset_for_reuse() {
    ctx = {};
    stk = {};
    status.store(gstatus::idle, std::memory_order_relaxed);
    goid = 0;
    schedlink = nullptr;
    lockedm = nullptr;
    curm = nullptr;
    preempt.store(false, std::memory_order_relaxed);
    reason = waitreason::zero;
    user_locks = 0;
    eh = {};
    waitsince = 0;
    param = nullptr;
    fn = nullptr;
    closure = nullptr;
    creator_pc = nullptr;
    parent_goid = 0;
    closure_size = 0;
    fp = {};
    is_main = false;
  }
};
#if !URGE_ASAN && !URGE_TSAN  // the sanitizers add to arch::context
static_assert(sizeof(g) <= 256, "see g_closure_room: a parked goroutine pays for its G");
#endif

// A worker thread.
struct m {
  m() { lockedproxy.lockedm = this; }
  m(const m&) = delete;
  m& operator=(const m&) = delete;

  int id = 0;
  arch::context g0;               // the thread's own stack, running schedule(); owner
  std::atomic<g*> curg{nullptr};  // the G it runs, or nullptr on g0; owner writes, sysmon reads
  p* curp = nullptr;              // the attached P (Go's m.p); owner
  p* nextp = nullptr;             // P handed over by startm; sched.lock / its note
  p* oldp = nullptr;              // P it held before a blocking call; owner
  bool spinning = false;          // looking for work, counted in sched.nmspinning; owner
  bool blocked = false;           // asleep on `park` (for scheddetail); owner
  int pinned_cpu = -1;            // the CPU its thread is bound to, or -1; owner
  platform::note park;            // sleeps here when idle
  m* schedlink = nullptr;         // idle list; sched.lock
  m* alllink = nullptr;           // allm; sched.lock
  int tid = 0;                    // kernel thread id
  std::thread thread;             // joined at shutdown (not for M0, the caller of run)
  bool exited = false;            // left the scheduler loop; sched.lock
  // The pending after-switch action (see "Parking"). Written by the context
  // switching away, consumed by the context switched to, on this M.
  after_switch pending = after_switch::none;
  g* pending_g = nullptr;
  unlock_fn pending_unlock = nullptr;
  void* pending_arg = nullptr;
  std::uint64_t fastrand = 0;  // owner
  eh_globals* eh = nullptr;    // this thread's exception state; set at start
  eh_globals g0_eh;            // g0's, while a goroutine runs; owner
  // Asynchronous preemption (preempt.cpp). Goroutines stopped at an arbitrary
  // instruction wait here, to resume on this thread; owner only. See
  // "Stopped goroutines and their threads" in proc.cpp.
  g* lockedq_head = nullptr;
  g* lockedq_tail = nullptr;
  std::uint32_t lockedtick = 0;
  // Goroutines of the P's queue that run before lockedq's next turn: those
  // queued when the network readied some (see "Busy Ps" in netpoll.cpp); owner.
  std::uint32_t io_first = 0;
  // Parked without a P while lockedq is not empty (Go's stoplockedm), its
  // proxy queued; sched.lock.
  bool lockedwait = false;
  g lockedproxy;                            // lockedm == this; in a run queue only while lockedwait
  g* handoff = nullptr;                     // a proxy pick_local took, for g0 to act on; owner
  std::atomic<bool> signal_pending{false};  // a SIGURG is in flight to this M
  bool in_preempt = false;                  // between the handler's redirect and the switch; owner
  void* resume_ctx = nullptr;               // saved state to resume through the next SIGURG; owner
  sigset_t resume_mask{};                   // the thread's mask to restore with it; owner
  // The kernel timer that asks for the preemption of the time slice running
  // here when sysmon could be late; see "Preemption timers" in sysmon.cpp.
  // Created, armed and deleted by sysmon (deleted once sysmon has stopped).
  platform::thread_timer preempt_timer;
  bool preempt_timer_failed = false;    // the kernel refused to create it; sysmon
  std::uint64_t preempt_timer_gen = 0;  // armings so far; sysmon
  // The generation of the arming in force, or 0: set (seq_cst) before every
  // arming; cleared by whoever disarms it first, sysmon or this M entering a
  // blocking call, and by the handler when it takes the timer's signal (by
  // compare-and-swap, so that a late signal never clears a newer arming).
  std::atomic<std::uint64_t> preempt_timer_armed{0};
  // What the armed timer is for, read by the handler when it fires: the
  // slice (slice_key: the P and its schedtick) and the time it is due; sysmon
  // writes both before arming.
  std::atomic<std::uint64_t> preempt_timer_slice{0};
  std::atomic<std::int64_t> preempt_timer_when{0};
  // The slice the timer's signal last made a request for; the handler
  // writes, sysmon reads (it does not signal again right after).
  std::atomic<std::uint64_t> preempt_timer_fired{0};
};

// The preempt_timer_slice of P id's slice `schedtick`.
inline std::uint64_t slice_key(int id, std::uint32_t schedtick) {
  return std::uint64_t(std::uint32_t(id) + 1) << 32 | schedtick;
}

// A processor.
struct p {
  int id = 0;
  std::atomic<pstatus> status{pstatus::idle};
  std::atomic<m*> curm{nullptr};  // the M it is attached to; owner writes, sysmon reads
  p* link = nullptr;              // idle list; sched.lock
  std::uint32_t schedtick = 0;    // incremented on every schedule that does not inherit; owner
  // gopark's clock reading and the schedtick it was taken at; owner.
  std::int64_t park_clock = 0;
  std::uint32_t park_clock_tick = 0;
  std::atomic<std::uint32_t> schedtick_pub{0};  // schedtick, published for sysmon
  std::atomic<std::uint32_t> syscalltick{0};    // incremented on every blocking call
  // When it last left the idle list (pidleget): a slice sysmon sees for the
  // first time started no earlier (see retake); sched.lock writes.
  std::atomic<std::int64_t> left_idle_at{0};
  run_queue<g> runq;
  timer_heap timers;
  platform::stack_cache stackcache;  // owner
  // Dead Gs to reuse (Go's p.gFree), newest last; see "Free Gs" in proc.cpp.
  // Owner.
  static constexpr int gfree_max = 64;
  g* gfree[gfree_max] = {};
  int gfreecnt = 0;
  // Goroutine ids to hand out, [goidcache, goidcacheend): taken from
  // sched.next_goid goid_batch at a time (Go's goidcache); owner.
  std::uint64_t goidcache = 0;
  std::uint64_t goidcacheend = 0;
  // Goroutines created and ended on this P. Written by the owner alone
  // (relaxed load and store, no locked instruction), read racily by
  // num_goroutines and stats, which sum them over every P: see "Counting
  // goroutines" in proc.cpp.
  std::atomic<std::int64_t> gcreated{0};
  std::atomic<std::int64_t> gexited{0};
  int cpu = -1;  // the CPU its M is pinned to, or -1
  // sysmon put goroutines the network readied on the global queue and asks
  // the preemption it requests from this P to take them first (see
  // take_polled_first in proc.cpp); sysmon sets, the owner clears.
  std::atomic<bool> global_first{false};
  // sysmon's view (sysmon only).
  std::uint32_t sysmon_schedtick = 0;
  std::int64_t sysmon_schedwhen = 0;
  std::uint32_t sysmon_syscalltick = 0;
  std::int64_t sysmon_syscallwhen = 0;
  // The preemption timer sysmon armed for this P's slice: on which M, for
  // when; nullptr if none (see "Preemption timers" in sysmon.cpp).
  m* sysmon_timer_m = nullptr;
  std::uint32_t sysmon_timer_tick = 0;
  std::int64_t sysmon_timer_when = 0;
};

// The global scheduler state (Go's schedt).
struct schedt {
  futex_mutex lock;

  m* midle = nullptr;    // idle Ms waiting for work; lock
  int nmidle = 0;        // lock
  int nmidlelocked = 0;  // Ms parked with stopped goroutines (m::lockedwait); lock
  int mcount = 0;        // Ms created, excluding sysmon; lock
  int mexited = 0;       // Ms that left the loop at shutdown; lock
  m* allm = nullptr;     // lock
  p* pidle = nullptr;    // idle Ps; lock
  std::atomic<int> npidle{0};
  std::atomic<int> nmspinning{0};  // see "Worker thread parking/unparking"

  global_run_queue<g> runq;      // lock
  std::atomic<int> runqsize{0};  // written under lock, read racily as a hint

  std::vector<p*> allp;                 // fixed for the runtime's life
  std::vector<std::uint32_t> coprimes;  // strides coprime with gomaxprocs, for steal order
  int gomaxprocs = 0;
  // Goroutines created and ended by Ms without a P (the per-P counts hold the
  // rest: see "Counting goroutines" in proc.cpp).
  std::atomic<std::int64_t> gcreated_nop{0};
  std::atomic<std::int64_t> gexited_nop{0};
  std::atomic<std::uint64_t> next_goid{1};  // the next goid, or batch of goid_batch

  // Timed wait (see "Timed wait" in proc.cpp): the M sleeping until the next
  // timer, and until when. lock.
  m* timer_waiter = nullptr;
  std::atomic<std::int64_t> poll_until{0};

  // sysmon.
  platform::note sysmon_note;
  std::atomic<bool> sysmon_wait{false};  // sysmon sleeps on sysmon_note until woken
  std::thread sysmon_thread;

  // Lifecycle.
  std::atomic<bool> stopping{false};  // main returned, or deadlock: Ms leave their loops
  bool deadlock = false;              // lock
  std::exception_ptr main_exception;  // main goroutine only
  g* main_g = nullptr;

  // Configuration.
  std::int64_t quantum_ns = 10'000'000;
  bool async_preempt = true;
  bool pin_threads = false;
  std::vector<int> cpus;  // affinity mask, for pinning
  std::int64_t schedtrace_ms = 0;
  bool scheddetail = false;
  std::int64_t start_time = 0;
  platform::stack_pool* stacks = nullptr;

  // Counters (relaxed).
  std::atomic<std::uint64_t> steals{0};
  std::atomic<std::uint64_t> handoffs{0};
  std::atomic<std::uint64_t> lockedhandoffs{0};  // Ps handed to Ms for their stopped goroutines
  std::atomic<std::uint64_t> preempt_requests{0};
  int preempt_timers = 0;  // created by sysmon in this run (see arm_preempt_timer); sysmon
  std::atomic<std::uint64_t> threads_created{0};
};

extern schedt* sched;  // the running runtime, or nullptr

// ---- Scheduler entry points used by the rest of the runtime (proc.cpp) ----

g* getg();  // the running goroutine, or nullptr on g0 / outside the runtime
m* getm();

// Parks the running goroutine with `reason`. After the switch away, the
// scheduler calls unlockf(gp, arg) (if non-null) from the next context; if it
// returns false the goroutine is made runnable again at once. Typical use:
// hold a lock, enqueue a waiter record, park with an unlockf that releases
// the lock. Go's gopark.
void gopark(unlock_fn unlockf, void* arg, waitreason reason);
// The same for a caller that has the running goroutine at hand (gp ==
// getg()), saving the lookup on the channel paths.
void gopark(g* gp, unlock_fn unlockf, void* arg, waitreason reason);

// The unlockf of goparkunlock: releases the futex_mutex at lock. The
// scheduler recognises it and unlocks inline, without the indirect call.
bool parkunlock(g* gp, void* lock);

// Parks gp (the running goroutine), releasing l once it is off the CPU: the
// common case of gopark (Go's goparkunlock).
inline void goparkunlock(g* gp, futex_mutex* l, waitreason reason) {
  gopark(gp, parkunlock, l, reason);
}

// Makes a parked goroutine runnable, in the caller's runnext (it inherits the
// time slice) when `next`, and wakes an idle P if there is one. Callable from
// a goroutine, g0 or a timer callback; from a thread without a P it uses the
// global queue. Go's goready.
void goready(g* gp, bool next = true);
// goready's first half: marks the parked goroutine runnable (and traces the
// wake-up) without queueing it; the caller queues it (the network poller's
// batch, see netpoll_block).
void goready_mark(g* gp);

// The calling thread's M (getm() is the out-of-line reader). Read inline only
// in a frame that has not switched goroutines since it began (see
// check_preempt_inline).
extern thread_local m* tls_m __attribute__((tls_model("initial-exec")));

// Cooperative preemption point: yields if sysmon asked this goroutine to.
// Does nothing while preempt_off is raised (in the scheduler, in a timer
// callback, under a runtime lock): timer callbacks and the netpoller run code
// with preemption points (a channel send, go()) mid-switch, while the
// goroutine being left is still current, and yielding it there would switch
// inside a switch. Out of line: it reads the thread-locals from a fresh frame,
// so it may follow a switch in its caller's frame.
void check_preempt();

// The same test inline (a few loads, no call), for the channel operations'
// ways out that do not park, where the cost of a call showed. Only in a frame
// that has not switched goroutines since it began: a thread-local address
// the compiler computed before a switch may be another thread's after it
// (TSan caught it in semrelease, which may yield before its check).
__attribute__((always_inline)) inline void check_preempt_inline() {
  if (preempt_off != 0) return;
  m* mp = tls_m;
  g* gp = mp ? mp->curg.load(std::memory_order_relaxed) : nullptr;
  if (__builtin_expect(gp != nullptr && gp->preempt.load(std::memory_order_relaxed), 0)) {
    check_preempt();
  }
}

// Timers on the current P's heap (P 0's when called without a P).
void add_timer(timer* t);
bool del_timer(timer* t);

}  // namespace urge::runtime
