// Goroutine stacks: what acquiring one costs, and what an idle one weighs.
//
//   BM_stack_cache/<burst>        acquire+release through a per-P stack_cache in
//                                 front of the pool: the path every go statement
//                                 takes (target: < 50 ns per pair)
//   BM_stack_pool_direct/<burst>  the same on the pool itself: a mutex per call
//   BM_stack_rss_per_idle_stack   physical memory of 100k stacks whose top page
//                                 has been touched, as a parked goroutine's has
//
// <burst> is how many stacks are held at once. With 1 the cache never reaches
// the pool (the steady state of a server spawning short goroutines); with 64 it
// overflows and refills in batches, so the pool's lock is in the figure,
// amortised. ns_per_pair is the cost of one acquire plus one release. Both run
// on one and on two threads sharing a pool, to show what the cache saves under
// contention.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "platform/stack.hpp"

namespace {

using urge::platform::stack;
using urge::platform::stack_cache;
using urge::platform::stack_pool;

// One pool for all threads of a multi-threaded run, as the runtime has one for
// all Ps. Never destroyed: benchmark threads must not outlive it.
stack_pool& shared_pool() {
  static auto* pool = new stack_pool;
  return *pool;
}

void report_pairs(benchmark::State& state, std::int64_t burst) {
  state.SetItemsProcessed(state.iterations() * burst);
  state.counters["ns_per_pair"] =
      benchmark::Counter(static_cast<double>(state.iterations() * burst),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_stack_cache(benchmark::State& state) {
  const auto burst = static_cast<std::size_t>(state.range(0));
  stack_pool& pool = shared_pool();
  stack_cache cache;  // per thread, as per P in the runtime
  std::vector<stack> held(burst);
  for (auto _ : state) {
    for (auto& s : held) {
      s = cache.get(pool);
      benchmark::DoNotOptimize(s);
    }
    // get and put are inline: without this the compiler could fold a get
    // followed by a put of the same slot into nothing. In the runtime a
    // goroutine's whole life separates them.
    benchmark::ClobberMemory();
    for (auto& s : held) cache.put(pool, s);
  }
  cache.flush(pool);
  report_pairs(state, static_cast<std::int64_t>(burst));
}
BENCHMARK(BM_stack_cache)->Arg(1)->Arg(64)->Threads(1)->Threads(2);

void BM_stack_pool_direct(benchmark::State& state) {
  const auto burst = static_cast<std::size_t>(state.range(0));
  stack_pool& pool = shared_pool();
  std::vector<stack> held(burst);
  for (auto _ : state) {
    for (auto& s : held) {
      s = pool.acquire();
      benchmark::DoNotOptimize(s);
    }
    for (auto& s : held) pool.release(s);
  }
  report_pairs(state, static_cast<std::int64_t>(burst));
}
BENCHMARK(BM_stack_pool_direct)->Arg(1)->Arg(64)->Threads(1)->Threads(2);

// ---- Physical memory per idle stack -------------------------------------------

// Resident set in bytes, from /proc/self/statm (its second field, in pages).
long resident_bytes() {
  long size = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "re")) {
    if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * sysconf(_SC_PAGESIZE);
}

// Page-table memory in bytes (VmPTE in /proc/self/status), which RSS leaves out.
long page_table_bytes() {
  long kib = 0;
  if (FILE* f = std::fopen("/proc/self/status", "re")) {
    char line[256];
    while (std::fgets(line, sizeof line, f)) {
      if (std::strncmp(line, "VmPTE:", 6) == 0) {
        kib = std::strtol(line + 6, nullptr, 10);
        break;
      }
    }
    std::fclose(f);
  }
  return kib * 1024;
}

void BM_stack_rss_per_idle_stack(benchmark::State& state) {
  constexpr std::size_t kStacks = 100'000;
  double rss_per_stack = 0, pte_per_stack = 0;
  std::string label;
  for (auto _ : state) {
    // A fresh pool every time: its slabs have never been touched, so every
    // stack costs what a new goroutine's would on a cold process.
    const long pte_before_pool = page_table_bytes();
    stack_pool pool;
    std::vector<stack> stacks;
    stacks.reserve(kStacks);
    for (std::size_t i = 0; i < kStacks; ++i) stacks.push_back(pool.acquire());

    // Measured after the acquires so that the bookkeeping (the pool's free
    // list, this vector) is not counted: only the stacks' own pages are.
    const long rss_before = resident_bytes();
    auto t0 = std::chrono::steady_clock::now();
    for (const stack& s : stacks) {
      // One byte just below hi(): the page a parked goroutine's first frames
      // (and its switch frame) live in.
      *reinterpret_cast<volatile char*>(s.hi() - 1) = 1;
    }
    auto t1 = std::chrono::steady_clock::now();
    const long rss_after = resident_bytes();
    // Page tables from before the pool existed: guard regions are page-table
    // entries, so some of this is paid when the slabs are mapped, not touched.
    const long pte_after = page_table_bytes();

    // The time column is the touching alone: 100k first-touch page faults.
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    rss_per_stack = static_cast<double>(rss_after - rss_before) / kStacks;
    pte_per_stack = static_cast<double>(pte_after - pte_before_pool) / kStacks;
    auto st = pool.get_stats();
    label = "guards: " + std::to_string(st.guard_region) + " region, " +
            std::to_string(st.protected_page) + " protected page, " + std::to_string(st.canary) +
            " canary";

    for (const stack& s : stacks) pool.release(s);
  }
  state.counters["rss_bytes_per_stack"] = rss_per_stack;
  state.counters["pte_bytes_per_stack"] = pte_per_stack;
  state.SetLabel(label);
}
BENCHMARK(BM_stack_rss_per_idle_stack)
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
