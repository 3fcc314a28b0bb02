// Context switch round trip (A -> B -> A): urge's arch::switch_context against
// Boost.Context's fiber, the usual yardstick for user-space switches.
//
// One benchmark iteration is one round trip, so the Time column is the cost of
// two switches; the counter ns_per_switch halves it. To keep the figure honest
// the other side does real work on every visit (it increments a value the
// caller receives back), and the total is checked after the loop: a loop that
// skipped the partner would fail with an error instead of reporting a number.
#include <benchmark/benchmark.h>

#include <cstdint>

#include "arch/context.hpp"
#include "platform/stack.hpp"

#if defined(URGE_HAVE_BOOST_CONTEXT)
#include <boost/context/fiber.hpp>
#include <boost/context/fixedsize_stack.hpp>

#include <memory>
#include <utility>
#endif

namespace {

using urge::arch::context;

void report(benchmark::State& state) {
  // Per round trip is the Time column; per switch and a throughput rate are
  // the figures quoted in docs.
  state.SetItemsProcessed(state.iterations());
  state.counters["ns_per_switch"] =
      benchmark::Counter(static_cast<double>(2 * state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// ---- urge ------------------------------------------------------------------

struct partner {
  context self;
  context* home = nullptr;
};

// The value travels through the switch's transfer register, as the runtime
// hands a G pointer to the scheduler: the partner adds one and sends it back.
void partner_entry(void* arg, void* transfer) {
  urge::arch::context_started();
  auto* p = static_cast<partner*>(arg);
  auto token = reinterpret_cast<std::uintptr_t>(transfer);
  for (;;) {
    token = reinterpret_cast<std::uintptr_t>(
        urge::arch::switch_context(p->self, *p->home, reinterpret_cast<void*>(token + 1)));
  }
}

void BM_urge_switch_context(benchmark::State& state) {
  urge::platform::stack_pool pool;
  urge::platform::stack st = pool.acquire();
  context home;
  urge::arch::init_thread_context(home);
  partner p;
  p.home = &home;
  urge::arch::make_context(p.self, st.lo, st.size, partner_entry, &p);

  std::uintptr_t token = 0;
  for (auto _ : state) {
    // A chain of data dependencies through both switches: each round trip
    // needs the previous one's result.
    token = reinterpret_cast<std::uintptr_t>(
        urge::arch::switch_context(home, p.self, reinterpret_cast<void*>(token)));
  }
  benchmark::DoNotOptimize(token);
  if (token != static_cast<std::uintptr_t>(state.iterations())) {
    state.SkipWithError("the partner context did not run once per round trip");
  }
  report(state);

  // The partner stays suspended inside its loop; nothing on its stack needs
  // unwinding, so the stack goes straight back to the pool.
  urge::arch::destroy_context(p.self);
  pool.release(st);
}
BENCHMARK(BM_urge_switch_context);

// ---- Boost.Context -----------------------------------------------------------

#if defined(URGE_HAVE_BOOST_CONTEXT)
namespace ctx = boost::context;

void BM_boost_fiber_resume(benchmark::State& state) {
  // fiber::resume carries no value, so the partner increments a counter it
  // captured: the same one add per visit as urge's partner.
  std::uint64_t visits = 0;
  auto body = [&visits](ctx::fiber&& caller) {
    for (;;) {
      ++visits;
      caller = std::move(caller).resume();
    }
    return std::move(caller);  // not reached; fiber's signature needs it
  };
  // A 64 KiB stack like urge's default, so that neither side is favoured by
  // its stack layout.
  ctx::fiber f{std::allocator_arg, ctx::fixedsize_stack(64 * 1024), body};
  for (auto _ : state) {
    f = std::move(f).resume();
  }
  benchmark::DoNotOptimize(visits);
  if (visits != static_cast<std::uint64_t>(state.iterations())) {
    state.SkipWithError("the fiber did not run once per round trip");
  }
  report(state);
  // ~fiber unwinds the suspended fiber (forced_unwind) and frees its stack.
}
BENCHMARK(BM_boost_fiber_resume);
#endif

}  // namespace

BENCHMARK_MAIN();
