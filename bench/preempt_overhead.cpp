// preempt_overhead: what asynchronous preemption costs CPU-bound work.
//
// Usage: preempt_overhead on|off QUANTUM_MS [PROCS] [SCALE]
//        preempt_overhead ab QUANTUM_MS [PROCS] [SCALE] [PAIRS]
//
// Runs a fixed, deterministic CPU-bound workload (4 goroutines doing
// floating-point and integer arithmetic on registers and a small private
// buffer, no calls in their loops) under urge::run with config::quantum =
// QUANTUM_MS and config::async_preempt on or off, and prints
//
//   RESULT overhead <procs> wall_ns <value> ns
//   RESULT overhead <procs> cpu_ns <value> ns
//   RESULT overhead <procs> preempts_taken <value> count
//
// With preemption off the goroutines sharing a P run one after the other;
// with it on they take turns every quantum, and each turn costs two signals, two
// switches and some cache refill. The targets: < 0.5% at 10 ms and
// < 3% at 1 ms. The difference is small next to the noise of one run, so time
// several runs of each, alternating (the whole process is meant to be timed,
// e.g. by perf stat -r or hyperfine, as well as by its own lines):
//
//   for i in 1 2 3 4 5 6 7; do
//     for m in off on; do build-release/bench/preempt_overhead $m 1; done
//   done
//
// "ab" runs PAIRS (default 9) pairs of runs in this one process (urge::run is
// re-runnable), off then on, then on then off in the next pair, and prints
// the median over the pairs of each pair's on/off - 1, in percent:
//
//   RESULT overhead <procs> wall_pct <value> %
//   RESULT overhead <procs> cpu_pct <value> %
//   RESULT overhead <procs> preempts_taken <median of the "on" runs> count
//
// A pair's two runs are seconds apart in one process, so a ratio within the
// pair cancels what drifts between processes and over minutes (other load,
// frequency, page placement); the median drops the pairs a burst disturbed.
//
// PROCS defaults to 1: the goroutines take turns on one P, and the difference
// is the cost of the mechanism (signals, switches, cache refill). With more
// Ps, scheduling adds its own effect: a goroutine stopped asynchronously
// resumes on its thread, so it cannot be stolen by an idle P, and 4 goroutines
// on 2 Ps can end up 3 on one thread and 1 on the other (measured: 405 ms
// instead of 272 ms of wall time at a 10 ms quantum, for the same CPU time).
// SCALE (default 1) multiplies the work, about 135 ms of CPU per goroutine at
// 1. Exit status 1 if the goroutines' results differ (they compute the same
// thing).
#include <sys/resource.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include <urge/urge.hpp>

namespace {

using clk = std::chrono::steady_clock;

// The work of one goroutine: the chaotic logistic map on 8 lanes (every bit
// of every step matters to the result) interleaved with integer mixing of a
// 64 KiB buffer, so that a switch costs some cache refill, as real work's do.
std::uint64_t workload(long rounds) {
  constexpr std::size_t kWords = 64 * 1024 / sizeof(std::uint64_t);
  std::vector<std::uint64_t> buf(kWords);
  std::uint64_t r = 0x9E3779B97F4A7C15ULL;
  for (std::uint64_t& w : buf) {
    r ^= r << 13;
    r ^= r >> 7;
    r ^= r << 17;
    w = r;
  }
  double x[8];
  for (int k = 0; k < 8; ++k) x[k] = 0.1 + 0.1 * k;
  for (long i = 0; i < rounds; ++i) {
    for (int j = 0; j < 1000; ++j) {
      for (int k = 0; k < 8; ++k) x[k] = (3.9 + 0.01 * k) * x[k] * (1.0 - x[k]);
    }
    for (std::size_t j = 0; j < kWords; j += 8) {
      r ^= r << 13;
      r ^= r >> 7;
      r ^= r << 17;
      buf[(j + (r & 7)) % kWords] += r;
    }
  }
  std::uint64_t h = r;
  for (std::uint64_t w : buf) h = (h ^ w) * 0x100000001b3ULL;
  for (double v : x) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    h = (h ^ bits) * 0x100000001b3ULL;
  }
  return h;
}

double cpu_ns() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto ns = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) * 1e9 + static_cast<double>(tv.tv_usec) * 1e3;
  };
  return ns(ru.ru_utime) + ns(ru.ru_stime);
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: preempt_overhead on|off QUANTUM_MS [PROCS] [SCALE]\n"
               "       preempt_overhead ab QUANTUM_MS [PROCS] [SCALE] [PAIRS]\n");
  std::exit(2);
}

long parse(const char* s, long lo, long hi) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) usage();
  return v;
}

struct measurement {
  int procs = 0;
  double wall = 0, cpu = 0;
  std::uint64_t taken = 0;
  std::uint64_t checksum = 0;
};

// One run of the workload: 4 goroutines, `rounds` each. Exits with status 1
// if their results differ.
measurement measure(const urge::config& cfg, long rounds) {
  measurement m;
  std::vector<std::uint64_t> results;
  urge::run(cfg, [&] {
    m.procs = urge::maxprocs();
    constexpr int goroutines = 4;
    results.assign(static_cast<std::size_t>(goroutines), 0);
    const std::uint64_t taken0 = urge::stats().preempts_taken;
    const double cpu0 = cpu_ns();
    const clk::time_point t0 = clk::now();
    urge::wait_group wg;
    for (int g = 0; g < goroutines; ++g) {
      wg.add(1);
      urge::go([&, g] {
        results[static_cast<std::size_t>(g)] = workload(rounds);
        wg.done();
      });
    }
    wg.wait();
    m.wall = std::chrono::duration<double, std::nano>(clk::now() - t0).count();
    m.cpu = cpu_ns() - cpu0;
    m.taken = urge::stats().preempts_taken - taken0;
  });
  for (std::uint64_t r : results) {
    if (r != results[0]) {
      std::fprintf(stderr, "preempt_overhead: the goroutines' results differ\n");
      std::exit(1);
    }
  }
  m.checksum = results[0];
  return m;
}

template <typename T>
T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 6) usage();
  const std::string_view mode = argv[1];
  if (mode != "on" && mode != "off" && mode != "ab") usage();
  if (mode != "ab" && argc > 5) usage();
  urge::config cfg;
  cfg.maxprocs = 1;
  cfg.quantum = std::chrono::milliseconds(parse(argv[2], 1, 1000));
  if (argc > 3) cfg.maxprocs = static_cast<int>(parse(argv[3], 1, 1024));
  const long scale = argc > 4 ? parse(argv[4], 1, 1000) : 1;
  const long rounds = 40'000 * scale;

  if (mode == "ab") {
    const long pairs = argc > 5 ? parse(argv[5], 1, 1000) : 9;
    std::vector<double> wall_pct, cpu_pct;
    std::vector<std::uint64_t> taken;
    int procs = 0;
    for (long i = 0; i < pairs; ++i) {
      measurement off, on;
      for (int k = 0; k < 2; ++k) {
        const bool run_on = (k == 0) == (i % 2 == 1);  // off first in even pairs
        cfg.async_preempt = run_on;
        (run_on ? on : off) = measure(cfg, rounds);
      }
      procs = on.procs;
      wall_pct.push_back((on.wall / off.wall - 1.0) * 100.0);
      cpu_pct.push_back((on.cpu / off.cpu - 1.0) * 100.0);
      taken.push_back(on.taken);
      std::printf(
          "# pair %ld: wall off %.1f ms on %.1f ms, cpu off %.1f ms on %.1f ms, %llu taken\n", i,
          off.wall / 1e6, on.wall / 1e6, off.cpu / 1e6, on.cpu / 1e6,
          static_cast<unsigned long long>(on.taken));
    }
    std::printf("RESULT overhead %d wall_pct %.4f %%\n", procs, median(wall_pct));
    std::printf("RESULT overhead %d cpu_pct %.4f %%\n", procs, median(cpu_pct));
    std::printf("RESULT overhead %d preempts_taken %llu count\n", procs,
                static_cast<unsigned long long>(median(taken)));
    return 0;
  }

  cfg.async_preempt = mode == "on";
  const measurement m = measure(cfg, rounds);
  std::printf("# async_preempt=%s quantum=%sms procs=%d goroutines=4 checksum=%016llx\n", argv[1],
              argv[2], m.procs, static_cast<unsigned long long>(m.checksum));
  std::printf("RESULT overhead %d wall_ns %.6g ns\n", m.procs, m.wall);
  std::printf("RESULT overhead %d cpu_ns %.6g ns\n", m.procs, m.cpu);
  std::printf("RESULT overhead %d preempts_taken %llu count\n", m.procs,
              static_cast<unsigned long long>(m.taken));
  return 0;
}
