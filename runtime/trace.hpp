// Scheduler event tracing: USDT probes and the execution tracer.
//
// Every event site calls URGE_TRACE_EVENT(name, a, b), or URGE_TRACE_EVENT_M
// (mp, name, a, b) where the emitting M is at hand. It expands to
//  - a USDT probe (sys/sdt.h) in provider "urge": a nop until perf or
//    bpftrace attaches (`perf record -e sdt_urge:go_create`), and
//  - when URGE_TRACE=file was set at run(), a record in the current P's
//    buffer stamped with the CPU's counter (trace.cpp), turned into the file
//    (nanoseconds, merged by time) when the runtime stops and converted by
//    tools/urge-trace.
// When tracing is off a site costs its probe's nop and one predictable branch
// on a global; the scheduler's switch and wakeup paths pay less than that per
// event: see "Tracing off" below. When it is on, an event made by an M with a
// P is written inline, with no call, no lock and no atomic: see "Recording".
// Goroutine creation uses URGE_TRACE_GO_CREATE(gp), which also notes the
// goroutine's entry function and creation site for the file's name table.
//
// Building with -DURGE_TRACE_SITES=0 compiles every site out (no probe, no
// branch): the yardstick for what the sites cost when tracing is off.
//
// Events and their arguments:
//   go_create   new goroutine id, creating goroutine id
//   go_start    goroutine id, P id          (it starts or resumes running)
//   go_block    goroutine id, waitreason    (it parks)
//   go_unblock  goroutine id, readying goroutine id (0: from the scheduler)
//   go_preempt  goroutine id, 1 if asynchronous
//   go_end      goroutine id, 0
//   steal       thief P id, victim P id
//   syscall_enter / syscall_exit   goroutine id, P id
// A goroutine that yields emits no event of its own: the next go_start on its
// P ends its run (it went back to the run queue). A go_start made by the
// switch that parks, preempts or ends the previous goroutine (switch_away)
// takes that go_block's, go_preempt's or go_end's time instead of reading the
// clock again: the two are tens of nanoseconds apart, and one clock read is
// most of an event's cost. An unbuffered channel round trip therefore reads
// the clock four times for its six events (per side: go_unblock; go_block and
// go_start), the same six events Go's tracer records for it.
//
// The trace file (URGE_TRACE=path; written by trace_stop, i.e. when run()
// returns; a later run() in the same process overwrites it). All integers are
// little-endian (the host's order: x86-64 and AArch64 are both little-endian).
//   header, 64 bytes:
//     char magic[8]  "URGETRC\0"
//     u32  version   1
//     u32  gomaxprocs
//     i64  start_ns  CLOCK_MONOTONIC when tracing started
//     i64  end_ns    CLOCK_MONOTONIC when it stopped
//     i64  wall_ns   CLOCK_REALTIME when tracing started
//     u64  nevents
//     u64  ngoroutines   entries in the name table
//     u32  pid
//     u32  record_size   32
//   nevents records of 32 bytes, sorted by time (stable: the events of one P
//   or M keep their order):
//     i64 ts   CLOCK_MONOTONIC nanoseconds
//     u64 a, u64 b   the event's arguments (above)
//     i16 p    the P of the emitting M, -1 without one
//     u8  ev   trace_ev
//     u8  reserved
//     i32 m    the emitting M's id, -1 outside the runtime's threads
//   ngoroutines name-table entries, one per traced goroutine:
//     u64 goid, u64 parent goid
//     u32 name_len, u32 creator_len, then the two strings (no terminator):
//     the entry function ("worker(int)", "main_fn()::{lambda()#1}", "main")
//     and the function that ran the `go` statement ("" if unknown).
//   u32 nreasons, then nreasons strings (u32 len, bytes): the names of the
//   wait reasons go_block's second argument indexes ("chan receive", ...).
#pragma once

#include <atomic>
#include <cstdint>

#include "platform/clock.hpp"
#include "runtime/preempt.hpp"
#include "runtime/runtime2.hpp"

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#ifndef URGE_TRACE_SITES
#define URGE_TRACE_SITES 1
#endif

#if URGE_TRACE_SITES && __has_include(<sys/sdt.h>)
// The sites of one probe must describe their arguments alike, or `perf
// probe` cannot register it at all (the kernel refuses a second location
// with other argument types: "File exists"). So every argument is a 64-bit
// unsigned value, in a register or memory, never an immediate (perf skips
// "$0" arguments, which shortened the list of a site passing a constant).
#define STAP_SDT_ARG_CONSTRAINT or
#include <sys/sdt.h>
#define URGE_USDT(name, a, b) \
  DTRACE_PROBE2(urge, name, static_cast<std::uint64_t>(a), static_cast<std::uint64_t>(b))
#else
#define URGE_USDT(name, a, b) ((void)0)
#endif

namespace urge::runtime {

enum class trace_ev : std::uint8_t {
  go_create = 1,
  go_start,
  go_block,
  go_unblock,
  go_preempt,
  go_end,
  steal,
  syscall_enter,
  syscall_exit,
};

extern bool trace_on;  // set by trace_start, read without synchronisation

// ---- Tracing off ---------------------------------------------------------------
//
// The goal is that a build with the sites costs nothing measurable over one
// without (-DURGE_TRACE_SITES=0) while tracing is off. What a site costs then:
//  - the flag's test. trace_on has default visibility (tests and benchmarks
//    outside the library read it), so code in a shared library would load
//    its address from the GOT first: the library reads trace_on_hidden
//    instead, a hidden twin that trace_start and trace_stop write together
//    with it: one compare with an immediate and a branch. Not an alias of
//    the same byte (glibc's hidden_def): an executable that reads trace_on
//    gets a copy relocation, its own copy of the byte, which the library's
//    GOT then points at, and a hidden alias would go on reading the
//    library's original, never written;
//  - the USDT probe: a nop, plus whatever it takes to put its arguments where
//    the note can name them. Arguments that are a register or a memory
//    operand already cost nothing; a widening cast costs a move, so the
//    probes pass the argument's own type (waitreason's byte, not an int);
//  - the branches themselves, and the registers the recording code's call
//    keeps live in the hot function.
// A channel round trip is two wakeups and two switches. The wakeup (goready)
// folds the flag into the branch it takes anyway for an M without a P. A
// switch (switch_away in proc.cpp) tests the flag once, on entry, and goes
// to an out-of-line copy of itself that records both the leaving goroutine's
// event (go_block, go_preempt, go_end; gopark and its siblings only fire the
// probe) and the go_start of the goroutine it picks: two events, one test,
// and nothing of the recording code in the hot copy.
//
// Rejected: a trace flag in the P (as cheap to test, but Ps come and go with
// procresize, and the events of an M without a P still need the global);
// USDT semaphores (sys/sdt.h's _SDT_HAS_SEMAPHORES: a test and a branch per
// probe, the very cost being removed, to spare arguments that are nearly
// free already).
#if defined(URGE_BUILDING_LIB)
extern bool trace_on_hidden __attribute__((visibility("hidden")));
#define URGE_TRACE_FLAG ::urge::runtime::trace_on_hidden
#else
#define URGE_TRACE_FLAG ::urge::runtime::trace_on
#endif

// ---- Recording -----------------------------------------------------------------
//
// Each P has a trace_buf that only the M holding the P writes (the hand-over
// of a P between Ms synchronises already: sched.lock or the P's status CAS).
// An event is a few bytes: a tag (the trace_ev), then unsigned LEB128
// varints: the counter ticks since the buffer's previous event, a, b. A tag 0
// with a varint m+1 says that the following events are the given M's (a P
// moves between Ms rarely, so the M costs nothing per event). A ping-pong
// event is about 5 bytes, against 32 for the file's record: memory touched
// for the first time costs a page fault per 4 KiB (about 3 us in a VM), which
// at 32 bytes an event cost as much as the clock read.
//
// Rejected: fixed-size records (16 bytes with the arguments' high halves
// escaped, written with two stores and no data-dependent branch: measured
// slower, +71% on the ping-pong against the varints' +65% in the same pairs
// of runs, since three times the bytes means three times the page faults and
// zeroing, which cost more than the varints' loops here); per-event M ids; an atomic or a lock
// per event (the P is the owner's alone); writing chunks to the file as they
// fill (a write costs the kernel the same page allocation and copy, on the
// traced thread).
//
// The counter is RDTSC on x86-64 and CNTVCT_EL0 on AArch64, with no fence
// (RDTSCP or an ISB first costs twice as much): see "Clock" in trace.cpp for
// why an unfenced read can put an event a few nanoseconds before one it
// follows on another CPU, and how trace_stop puts them back in order.
struct trace_buf {
  std::uint8_t* pos = nullptr;    // next free byte
  std::uint8_t* limit = nullptr;  // refill when pos reaches it (room for one event)
  std::uint64_t last = 0;         // ticks of the latest event
  std::int32_t m = -2;            // the M of the latest event (-2: none yet)
  bool switching = false;         // the latest event is a go_block, go_preempt or
                                  // go_end: a go_start in the same switch shares its time
};

// The longest event: tag, 3 varints of up to 10 bytes; plus an M change.
inline constexpr int trace_max_event = 1 + 3 * 10 + 1 + 5;

extern trace_buf* trace_bufs;   // per P, indexed by p::id; set before trace_on
extern bool trace_use_counter;  // ticks are the CPU's counter, not nanotime

inline std::uint64_t trace_ticks() {
#if defined(__x86_64__)
  if (__builtin_expect(trace_use_counter, 1)) return __rdtsc();
#elif defined(__aarch64__)
  if (__builtin_expect(trace_use_counter, 1)) {
    std::uint64_t v;
    asm volatile("mrs %0, cntvct_el0" : "=r"(v));
    return v;
  }
#endif
  return static_cast<std::uint64_t>(platform::nanotime());
}

inline std::uint8_t* trace_put_uvarint(std::uint8_t* pos, std::uint64_t v) {
  while (v >= 0x80) {
    *pos++ = static_cast<std::uint8_t>(v | 0x80);
    v >>= 7;
  }
  *pos++ = static_cast<std::uint8_t>(v);
  return pos;
}

// Appends an event of M mid to buf; false if buf has no room (nothing done).
// share: a go_start made by the switch of a go_block, go_preempt or go_end
// just recorded takes that event's time.
__attribute__((always_inline)) inline bool trace_encode(trace_buf& buf, std::int32_t mid,
                                                        trace_ev ev, std::uint64_t a,
                                                        std::uint64_t b, bool share) {
  std::uint8_t* pos = buf.pos;
  if (__builtin_expect(pos >= buf.limit, 0)) return false;
  if (__builtin_expect(buf.m != mid, 0)) {
    *pos++ = 0;
    pos = trace_put_uvarint(pos, static_cast<std::uint64_t>(static_cast<std::int64_t>(mid) + 1));
    buf.m = mid;
  }
  std::uint64_t dt = 0;
  if (!(share && buf.switching)) {
    // Clamped: a P that moved to another CPU may read a counter a hair
    // behind its previous one; the buffer's order is the truth.
    std::uint64_t now = trace_ticks();
    if (now > buf.last) {
      dt = now - buf.last;
      buf.last = now;
    }
  }
  buf.switching = ev == trace_ev::go_block || ev == trace_ev::go_preempt || ev == trace_ev::go_end;
  *pos++ = static_cast<std::uint8_t>(ev);
  pos = trace_put_uvarint(pos, dt);
  pos = trace_put_uvarint(pos, a);
  pos = trace_put_uvarint(pos, b);
  buf.pos = pos;
  return true;
}

// Out of line: events of an M without a P (one locked buffer), and the P's
// buffer when it is full.
void trace_emit_global(m* mp, trace_ev ev, std::uint64_t a, std::uint64_t b);
void trace_emit_refill(m* mp, trace_ev ev, std::uint64_t a, std::uint64_t b, bool share);

// Records an event made by mp, the calling M (nullptr outside the runtime's
// threads).
__attribute__((always_inline)) inline void trace_emit_m(m* mp, trace_ev ev, std::uint64_t a,
                                                        std::uint64_t b, bool share = false) {
  p* pp = mp ? mp->curp : nullptr;
  if (!pp) {
    trace_emit_global(mp, ev, a, b);
    return;
  }
  // Not stopped asynchronously halfway through the buffer (another goroutine
  // would then write to it): a statically linked runtime is preemptible code
  // as far as the PC goes.
  preempt_off_scope no_preempt;
  if (__builtin_expect(!trace_encode(trace_bufs[pp->id], mp->id, ev, a, b, share), 0)) {
    trace_emit_refill(mp, ev, a, b, share);
  }
}

// go_create for gp, plus what names it (its entry function, its creator).
void trace_go_create(g* gp);
// run(): start if URGE_TRACE names a file, before any M but M0 exists; stop
// writes the file, after every other M has been joined (so that no emitter
// races with the flush).
void trace_start();
void trace_stop();

}  // namespace urge::runtime

#if URGE_TRACE_SITES
#define URGE_TRACE_ENABLED() __builtin_expect(URGE_TRACE_FLAG, 0)
#else
#define URGE_TRACE_ENABLED() false
#endif

#define URGE_TRACE_EVENT_M(mp, name, a, b)                                                         \
  do {                                                                                             \
    URGE_USDT(name, a, b);                                                                         \
    if (URGE_TRACE_ENABLED()) {                                                                    \
      ::urge::runtime::trace_emit_m(mp, ::urge::runtime::trace_ev::name,                           \
                                    static_cast<std::uint64_t>(a), static_cast<std::uint64_t>(b)); \
    }                                                                                              \
  } while (0)

#define URGE_TRACE_EVENT(name, a, b) URGE_TRACE_EVENT_M(::urge::runtime::getm(), name, a, b)

// go_start made by a switch, right after the go_block or go_preempt of the
// goroutine it leaves: shares that event's time. (proc.cpp's switch records
// it with trace_emit_m directly, past its one test: see "Tracing off".)
#define URGE_TRACE_SWITCH_START(mp, goid, pid)                                        \
  do {                                                                                \
    URGE_USDT(go_start, goid, pid);                                                   \
    if (URGE_TRACE_ENABLED()) {                                                       \
      ::urge::runtime::trace_emit_m(mp, ::urge::runtime::trace_ev::go_start,          \
                                    static_cast<std::uint64_t>(goid),                 \
                                    static_cast<std::uint64_t>(pid), /*share=*/true); \
    }                                                                                 \
  } while (0)

#define URGE_TRACE_GO_CREATE(gp)                                    \
  do {                                                              \
    URGE_USDT(go_create, (gp)->goid, (gp)->parent_goid);            \
    if (URGE_TRACE_ENABLED()) ::urge::runtime::trace_go_create(gp); \
  } while (0)
