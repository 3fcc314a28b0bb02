// The scheduler's primitives, each measured inside a runtime of its own.
//
//   BM_yield_pingpong          two goroutines calling yield on one P: the cost of
//                              one goroutine switch (ns_per_switch; Go 1.19: 54 ns)
//   BM_spawn/procs:N           go + wait_group::done, waited for in batches of
//                              1024: the cost of one goroutine (ns_per_goroutine)
//   BM_sleep_zero              sleep(0): the preemption check alone
//   BM_sleep_1us_idle          sleep(1 us) with nothing else to run: arming a
//                              timer, the M's timed wait and the wakeup
//   BM_sleep_1us_busy          the same while another goroutine keeps the P busy
//                              yielding: the timer is found by schedule()
//
// Every benchmark body calls urge::run and runs the timed loop on the main
// goroutine (Google Benchmark calls the body several times; each call starts a
// fresh runtime). Where the main goroutine may move between threads (maxprocs
// > 1), times are wall-clock. Each loop checks that the work it claims to
// measure happened, and reports an error instead of a number otherwise.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdint>

#include "urge/runtime.hpp"
#include "urge/sync.hpp"

namespace {

urge::config procs(int n) {
  urge::config c;
  c.maxprocs = n;
  return c;
}

void per_item(benchmark::State& state, const char* name, std::int64_t per_iteration = 1) {
  state.SetItemsProcessed(state.iterations() * per_iteration);
  state.counters[name] =
      benchmark::Counter(static_cast<double>(state.iterations() * per_iteration),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Main and a partner take turns: every yield of main runs the partner once,
// whose yield comes straight back. One iteration is two switches.
void BM_yield_pingpong(benchmark::State& state) {
  urge::run(procs(1), [&] {
    std::atomic<bool> stop{false};
    std::int64_t partner_turns = 0;
    urge::wait_group done;
    done.add(1);
    urge::go([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        ++partner_turns;
        urge::yield();
      }
      done.done();
    });
    urge::yield();  // let the partner start
    const std::int64_t before = partner_turns;
    for (auto _ : state) urge::yield();
    const std::int64_t turns = partner_turns - before;
    stop = true;
    done.wait();
    if (turns < static_cast<std::int64_t>(state.iterations())) {
      state.SkipWithError("the partner did not run on every yield: not a ping-pong");
    }
  });
  per_item(state, "ns_per_switch", 2);
}
BENCHMARK(BM_yield_pingpong);

// go + done, the spawn workload of the peer suite.
void BM_spawn(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::int64_t ran_total = 0;
  urge::run(procs(n), [&] {
    std::atomic<std::int64_t> ran{0};
    urge::wait_group wg;
    int batch = 0;
    for (auto _ : state) {
      wg.add(1);
      urge::go([&] {
        ran.fetch_add(1, std::memory_order_relaxed);
        wg.done();
      });
      if (++batch == 1024) {
        wg.wait();
        batch = 0;
      }
    }
    wg.wait();
    ran_total = ran.load();
  });
  if (ran_total != static_cast<std::int64_t>(state.iterations())) {
    state.SkipWithError("not every goroutine ran");
  }
  per_item(state, "ns_per_goroutine");
}
BENCHMARK(BM_spawn)->ArgName("procs")->Arg(1)->Arg(2)->UseRealTime();

void BM_sleep_zero(benchmark::State& state) {
  urge::run(procs(1), [&] {
    for (auto _ : state) urge::sleep(std::chrono::nanoseconds(0));
  });
  per_item(state, "ns_per_call");
}
BENCHMARK(BM_sleep_zero);

void BM_sleep_1us_idle(benchmark::State& state) {
  std::int64_t short_sleeps = 0;
  urge::run(procs(1), [&] {
    for (auto _ : state) {
      const auto t0 = std::chrono::steady_clock::now();
      urge::sleep(std::chrono::microseconds(1));
      if (std::chrono::steady_clock::now() - t0 < std::chrono::microseconds(1)) ++short_sleeps;
    }
  });
  if (short_sleeps) state.SkipWithError("sleep(1us) returned early");
  per_item(state, "ns_per_sleep");
}
BENCHMARK(BM_sleep_1us_idle)->UseRealTime();

void BM_sleep_1us_busy(benchmark::State& state) {
  std::int64_t short_sleeps = 0;
  urge::run(procs(1), [&] {
    std::atomic<bool> stop{false};
    urge::wait_group done;
    done.add(1);
    urge::go([&] {
      while (!stop.load(std::memory_order_relaxed)) urge::yield();
      done.done();
    });
    for (auto _ : state) {
      const auto t0 = std::chrono::steady_clock::now();
      urge::sleep(std::chrono::microseconds(1));
      if (std::chrono::steady_clock::now() - t0 < std::chrono::microseconds(1)) ++short_sleeps;
    }
    stop = true;
    done.wait();
  });
  if (short_sleeps) state.SkipWithError("sleep(1us) returned early");
  per_item(state, "ns_per_sleep");
}
BENCHMARK(BM_sleep_1us_busy)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
