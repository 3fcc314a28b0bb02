// Scheduler event tracing: USDT probes and the execution tracer.
//
// Every event site calls URGE_TRACE_EVENT(name, a, b). It expands to
//  - a USDT probe (sys/sdt.h) in provider "urge": a nop until perf or
//    bpftrace attaches (`perf record -e sdt_urge:go_create`), and
//  - when URGE_TRACE=file was set at run(), a record in the current P's
//    buffer with a nanosecond timestamp (trace.cpp), written to the file when
//    the runtime stops and converted by tools/urge-trace.
// When tracing is off the cost is one predictable branch on a global.
// Goroutine creation uses URGE_TRACE_GO_CREATE(gp), which also notes the
// goroutine's entry function and creation site for the file's name table.
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
// P ends its run (it went back to the run queue).
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

#if __has_include(<sys/sdt.h>)
#include <sys/sdt.h>
#define URGE_USDT(name, a, b) DTRACE_PROBE2(urge, name, a, b)
#else
#define URGE_USDT(name, a, b) ((void)0)
#endif

namespace urge::runtime {

struct g;

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

void trace_emit(trace_ev ev, std::uint64_t a, std::uint64_t b);
// go_create for gp, plus what names it (its entry function, its creator).
void trace_go_create(g* gp);
// run(): start if URGE_TRACE names a file, before any M but M0 exists; stop
// writes the file, after every other M has been joined (so that no emitter
// races with the flush).
void trace_start();
void trace_stop();

}  // namespace urge::runtime

#define URGE_TRACE_EVENT(name, a, b)                                                              \
  do {                                                                                            \
    URGE_USDT(name, a, b);                                                                        \
    if (__builtin_expect(::urge::runtime::trace_on, 0)) {                                         \
      ::urge::runtime::trace_emit(::urge::runtime::trace_ev::name, static_cast<std::uint64_t>(a), \
                                  static_cast<std::uint64_t>(b));                                 \
    }                                                                                             \
  } while (0)

#define URGE_TRACE_GO_CREATE(gp)                                                              \
  do {                                                                                        \
    URGE_USDT(go_create, (gp)->goid, (gp)->parent_goid);                                      \
    if (__builtin_expect(::urge::runtime::trace_on, 0)) ::urge::runtime::trace_go_create(gp); \
  } while (0)
