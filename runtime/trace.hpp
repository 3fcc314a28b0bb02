// Scheduler event tracing: USDT probes and the execution tracer.
//
// Every event site calls URGE_TRACE_EVENT(name, a, b). It expands to
//  - a USDT probe (sys/sdt.h) in provider "urge": a nop until perf or
//    bpftrace attaches (`perf record -e sdt_urge:go_create`), and
//  - when URGE_TRACE=file was set at run(), a record in the current P's
//    buffer with a nanosecond timestamp (trace.cpp), written to the file when
//    the runtime stops and converted by tools/urge-trace.
// When tracing is off the cost is one predictable branch on a global.
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
// run(): start if URGE_TRACE names a file; stop writes it.
void trace_start();
void trace_stop();

}  // namespace urge::runtime

#define URGE_TRACE_EVENT(name, a, b)                                                      \
  do {                                                                                    \
    URGE_USDT(name, a, b);                                                                \
    if (__builtin_expect(::urge::runtime::trace_on, 0)) {                                 \
      ::urge::runtime::trace_emit(::urge::runtime::trace_ev::name,                        \
                                  static_cast<std::uint64_t>(a), static_cast<std::uint64_t>(b)); \
    }                                                                                     \
  } while (0)
