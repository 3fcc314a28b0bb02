// Channels, select and the mutex, measured inside urge::run (the benchmark
// loop runs on the main goroutine). The argument is maxprocs.
//
//   BM_chan_pingpong/<procs>      unbuffered ping-pong; ns_per_op = one round trip
//                                 (two sends, two receives, two goroutine switches)
//   BM_chan_buffered/<procs>      cap 128, 4 producers x 4 consumers; ns_per_op = one item
//   BM_chan_uncontended           send + receive on a buffered channel, one goroutine:
//                                 the cost of the operations themselves
//   BM_select2/<procs>            select over 2 channels fed by 2 producers; ns_per_op = one select
//   BM_select_default             select on an empty channel with a default
//   BM_mutex4/<procs>             4 goroutines, tiny critical section; ns_per_op = lock + unlock
//
// bench/peers runs the same workloads side by side with Go.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <optional>

#include "urge/urge.hpp"

namespace {

urge::config procs(const benchmark::State& state) {
  urge::config c;
  c.maxprocs = static_cast<int>(state.range(0));
  return c;
}

void report(benchmark::State& state, std::int64_t ops_per_iteration) {
  state.SetItemsProcessed(state.iterations() * ops_per_iteration);
  state.counters["ns_per_op"] =
      benchmark::Counter(static_cast<double>(state.iterations() * ops_per_iteration),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_chan_pingpong(benchmark::State& state) {
  urge::run(procs(state), [&] {
    urge::chan<std::int64_t> ping, pong;
    urge::go([ping, pong] {
      while (std::optional<std::int64_t> v = ping.recv()) pong.send(*v + 1);
    });
    std::int64_t v = 0;
    for (auto _ : state) {
      ping.send(v);
      v = *pong.recv();
    }
    ping.close();
    if (v != static_cast<std::int64_t>(state.iterations())) state.SkipWithError("lost a value");
  });
  report(state, 1);
}
BENCHMARK(BM_chan_pingpong)->Arg(1)->Arg(2)->UseRealTime();

constexpr int kProducers = 4, kConsumers = 4;
constexpr std::int64_t kItems = 100000;

void BM_chan_buffered(benchmark::State& state) {
  urge::run(procs(state), [&] {
    for (auto _ : state) {
      urge::chan<std::int64_t> ch(128);
      urge::wait_group pwg, cwg;
      std::int64_t sums[kConsumers] = {};
      for (int p = 0; p < kProducers; ++p) {
        pwg.add(1);
        urge::go([&pwg, ch, p] {
          for (std::int64_t v = p; v < kItems; v += kProducers) ch.send(v);
          pwg.done();
        });
      }
      for (int c = 0; c < kConsumers; ++c) {
        cwg.add(1);
        urge::go([&cwg, &sums, ch, c] {
          for (std::int64_t v : ch) sums[c] += v;
          cwg.done();
        });
      }
      pwg.wait();
      ch.close();
      cwg.wait();
      std::int64_t total = 0;
      for (std::int64_t s : sums) total += s;
      if (total != kItems * (kItems - 1) / 2) state.SkipWithError("wrong sum");
    }
  });
  report(state, kItems);
}
BENCHMARK(BM_chan_buffered)->Arg(1)->Arg(2)->UseRealTime();

void BM_chan_uncontended(benchmark::State& state) {
  urge::run(urge::config{}, [&] {
    urge::chan<std::int64_t> ch(16);
    std::int64_t sum = 0;
    for (auto _ : state) {
      ch.send(1);
      sum += *ch.recv();
    }
    benchmark::DoNotOptimize(sum);
  });
  report(state, 1);
}
BENCHMARK(BM_chan_uncontended);

void BM_select2(benchmark::State& state) {
  urge::run(procs(state), [&] {
    urge::chan<std::int64_t> a, b;
    urge::chan<bool> stop;
    for (urge::chan<std::int64_t> ch : {a, b}) {
      urge::go([ch, stop] {
        for (std::int64_t i = 0;; ++i) {
          if (urge::select(urge::on_send(ch, i), urge::on_recv(stop)) == 1) return;
        }
      });
    }
    std::int64_t sum = 0;
    for (auto _ : state) {
      urge::select(urge::on_recv(a, [&](std::optional<std::int64_t> v) { sum += *v; }),
                   urge::on_recv(b, [&](std::optional<std::int64_t> v) { sum += *v; }));
    }
    stop.close();
    benchmark::DoNotOptimize(sum);
  });
  report(state, 1);
}
BENCHMARK(BM_select2)->Arg(1)->Arg(2)->UseRealTime();

void BM_select_default(benchmark::State& state) {
  urge::run(urge::config{}, [&] {
    urge::chan<std::int64_t> a, b;
    std::int64_t misses = 0;
    for (auto _ : state) {
      urge::select(urge::on_recv(a), urge::on_recv(b), urge::on_default([&] { ++misses; }));
    }
    benchmark::DoNotOptimize(misses);
  });
  report(state, 1);
}
BENCHMARK(BM_select_default);

void BM_mutex4(benchmark::State& state) {
  constexpr int workers = 4;
  constexpr std::int64_t per = 250000;
  urge::run(procs(state), [&] {
    for (auto _ : state) {
      urge::mutex mu;
      std::int64_t counter = 0;
      urge::wait_group wg;
      for (int w = 0; w < workers; ++w) {
        wg.add(1);
        urge::go([&] {
          for (std::int64_t i = 0; i < per; ++i) {
            mu.lock();
            ++counter;
            mu.unlock();
          }
          wg.done();
        });
      }
      wg.wait();
      if (counter != workers * per) state.SkipWithError("lost an increment");
    }
  });
  report(state, workers * per);
}
BENCHMARK(BM_mutex4)->Arg(1)->Arg(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
