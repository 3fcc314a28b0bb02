// Preemption: who may be stopped where (Go's preempt.go, signal_unix.go).
//
// Unsafe points
// -------------
// Go's compiler marks where a goroutine may be stopped; C++ has no such map,
// so the SIGURG handler decides from the outside (design.md section 3). A
// goroutine is stopped asynchronously only if all of these hold:
//  - this thread is not in runtime code: preempt_off == 0. The runtime raises
//    it in every critical section (each futex_mutex, the scheduler's switch
//    path, run-queue and stack-cache operations) and across every context
//    switch, so a statically linked runtime is covered too;
//  - this thread holds no pthread mutex, rwlock or spinlock and is not inside
//    a function-local static's initialiser: user_locks == 0 (the lock entry
//    points are wrapped, see lockwrap.cpp). Another goroutine on the same
//    thread waiting for that lock would deadlock;
//  - the interrupted instruction is in the main executable's code or a
//    library named in URGE_PREEMPT_LIBS: never in libc, the dynamic loader,
//    libstdc++, libgcc, libunwind or the runtime itself, which keep locks and
//    per-thread caches (malloc's tcache) of their own;
//  - there is room on the goroutine's stack for the saved state and the
//    scheduler (see arch/preempt.hpp).
// Otherwise the request stays pending: the cooperative flag makes the
// goroutine yield at its next scheduling point, sysmon signals again on its
// next tick, and a request that found user locks held fires as soon as the
// last of them is released (lockwrap.cpp).
//
// A goroutine stopped at an arbitrary instruction may hold addresses derived
// from the thread pointer in registers (a thread_local, errno), so it resumes
// on the same thread: it waits in that M's private queue (m::lockedq), not in
// a run queue other Ms steal from. An M that loses its P with goroutines
// waiting there (a blocking call) gets one handed back through a proxy in the
// run queues: see "Stopped goroutines and their threads" in proc.cpp. While
// the M itself is inside a blocking call, they wait for it to return.
// Voluntary switches may migrate as before.
#pragma once

#include <cstdint>

namespace urge::runtime {

struct g;
struct m;

// Per thread. See "Unsafe points".
extern constinit thread_local int preempt_off __attribute__((tls_model("initial-exec")));
extern constinit thread_local int user_locks __attribute__((tls_model("initial-exec")));
// A request was declined while user locks were held (lockwrap.cpp acts on it).
extern constinit thread_local bool preempt_deferred __attribute__((tls_model("initial-exec")));

struct preempt_off_scope {
  preempt_off_scope() { ++preempt_off; }
  ~preempt_off_scope() { --preempt_off; }
  preempt_off_scope(const preempt_off_scope&) = delete;
  preempt_off_scope& operator=(const preempt_off_scope&) = delete;
};

// Installs the SIGURG handler and builds the table of preemptible code
// (once per process).
void preempt_init();

// sysmon: asks gp (running on mp) to stop, by flag and, when asynchronous
// preemption is on and `signal` (false: mp's preemption timer has just
// raised one), by signal (at most one in flight per M).
void preempt_request(m* mp, g* gp, bool signal = true);

// enter_blocking_call, finding a signal in flight once the goroutine's status
// says so: waits until it has been taken (a request sent while the goroutine
// still ran), so that it does not land in the call (see "Signals and blocking
// calls" in preempt.cpp).
void preempt_signal_drain(m* mp);

// sysmon: makes mp's thread enter the kernel and come back, without asking
// its goroutine to stop (the SIGURG handler finds no request and returns):
// task work the kernel holds for that thread runs on the way (see "Task
// work" in platform/uring.hpp). Shares preempt_request's one signal in flight;
// none with asynchronous preemption off.
void preempt_kick(m* mp);

// True if pc is in code where a goroutine may be stopped (see above).
bool pc_is_preemptible(std::uintptr_t pc);

// lockwrap.cpp: called when user_locks drops to zero with a deferred request.
void preempt_deferred_now(std::uintptr_t caller_pc);

// Switches away from the running goroutine, which waits on this M's private
// queue and resumes on this thread (proc.cpp).
void gopark_locked_to_m();

struct preempt_counters {
  std::uint64_t signals = 0;   // SIGURGs for requests: sent by sysmon or by a timer
  std::uint64_t timer = 0;     // of which raised by a preemption timer
  std::uint64_t taken = 0;     // goroutines actually stopped asynchronously
  std::uint64_t deferred = 0;  // requests that found an unsafe point
};
preempt_counters preempt_stats();

}  // namespace urge::runtime
