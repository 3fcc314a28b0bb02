// What one execution-tracer event costs, off and on (runtime/trace.hpp).
//
//   BM_trace_event_off      an event site with tracing off: the probe's nop and
//                           one predictable branch (ns_per_event)
//   BM_trace_event_on       an event (go_unblock, small arguments) recorded
//                           into the P's buffer: clock read, varints, and the
//                           buffer's memory (ns_per_event)
//   BM_trace_switch_on      the three events of one side of a channel round
//                           trip: go_unblock, then go_block and a go_start
//                           that shares its time (ns_per_event, averaged)
//   BM_trace_clock          the counter read alone (ns_per_read)
//
// The "on" benchmarks run with URGE_TRACE naming /dev/null: the file is
// written (and discarded) when run() returns, outside the timed loop. Their
// iteration count is fixed so that the buffers stay at a few tens of MiB.
// Each body checks that tracing was on, or off, as it claims.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>

#include "runtime/runtime2.hpp"
#include "runtime/trace.hpp"
#include "urge/runtime.hpp"

namespace {

using urge::runtime::getm;
using urge::runtime::m;
using urge::runtime::trace_ev;

urge::config one_proc() {
  urge::config c;
  c.maxprocs = 1;
  return c;
}

void per_event(benchmark::State& state, std::int64_t per_iteration) {
  state.counters["ns_per_event"] =
      benchmark::Counter(static_cast<double>(state.iterations() * per_iteration),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Runs body(state, mp) on the main goroutine with tracing on or off.
template <class Body>
void traced(benchmark::State& state, bool on, Body body) {
  if (on) {
    setenv("URGE_TRACE", "/dev/null", 1);
  } else {
    unsetenv("URGE_TRACE");
  }
  urge::run(one_proc(), [&] {
    if (urge::runtime::trace_on != on) {
      state.SkipWithError(on ? "tracing did not start" : "tracing is on");
      for (auto _ : state) {
      }
      return;
    }
    body(state, getm());
  });
  unsetenv("URGE_TRACE");
}

void event_loop(benchmark::State& state, m* mp) {
  std::uint64_t goid = 2;
  for (auto _ : state) {
    URGE_TRACE_EVENT_M(mp, go_unblock, goid, 1);
    benchmark::DoNotOptimize(goid);
  }
}

void BM_trace_event_off(benchmark::State& state) {
  traced(state, false, event_loop);
  per_event(state, 1);
}

void BM_trace_event_on(benchmark::State& state) {
  traced(state, true, event_loop);
  per_event(state, 1);
}

void BM_trace_switch_on(benchmark::State& state) {
  traced(state, true, [](benchmark::State& st, m* mp) {
    std::uint64_t a = 1, b = 2;
    for (auto _ : st) {
      URGE_TRACE_EVENT_M(mp, go_unblock, b, a);
      URGE_TRACE_EVENT_M(mp, go_block, a, 5);
      URGE_TRACE_SWITCH_START(mp, b, 0);
      benchmark::DoNotOptimize(a);
      benchmark::DoNotOptimize(b);
    }
  });
  per_event(state, 3);
}

void BM_trace_clock(benchmark::State& state) {
  traced(state, true, [](benchmark::State& st, m*) {
    for (auto _ : st) benchmark::DoNotOptimize(urge::runtime::trace_ticks());
  });
  state.counters["ns_per_read"] =
      benchmark::Counter(static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

BENCHMARK(BM_trace_event_off);
BENCHMARK(BM_trace_event_on)->Iterations(8'000'000);
BENCHMARK(BM_trace_switch_on)->Iterations(3'000'000);
BENCHMARK(BM_trace_clock)->Iterations(8'000'000);

}  // namespace

BENCHMARK_MAIN();
