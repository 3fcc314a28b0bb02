// trace_overhead: what the execution tracer costs the channel ping-pong.
//
// Usage: trace_overhead [PAIRS] [ROUND_TRIPS]
//
// Runs PAIRS (default 15) pairs of urge::run, one with tracing off and one
// with URGE_TRACE=/dev/null (the file is written, and thrown away, after the
// timed loop), each doing ROUND_TRIPS (default 200000) round trips of an
// unbuffered channel ping-pong on one P, and prints
//
//   RESULT trace_overhead off_ns <median> ns
//   RESULT trace_overhead on_ns <median> ns
//   RESULT trace_overhead on_pct <median over the pairs of on/off - 1> %
//
// The two runs of a pair are a fraction of a second apart in one process, so
// their ratio cancels what drifts between processes (frequency, other load,
// page placement), and the median drops the pairs a burst disturbed. The
// order alternates from pair to pair. Exit status 1 if a run loses a value.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <vector>

#include <urge/urge.hpp>

namespace {

using clk = std::chrono::steady_clock;

bool parse_count(const char* s, long& out) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (!*s || *end || v <= 0) return false;
  out = v;
  return true;
}

// ns per round trip, or a negative value if a round trip went wrong.
double pingpong(bool traced, long n) {
  if (traced) {
    setenv("URGE_TRACE", "/dev/null", 1);
  } else {
    unsetenv("URGE_TRACE");
  }
  urge::config cfg;
  cfg.maxprocs = 1;
  double ns = -1;
  urge::run(cfg, [&] {
    urge::chan<long> ping, pong;
    urge::go([ping, pong]() mutable {
      while (std::optional<long> v = ping.recv()) pong.send(*v + 1);
      pong.close();
    });
    auto t0 = clk::now();
    long v = 0;
    for (long i = 0; i < n; ++i) {
      ping.send(v);
      std::optional<long> r = pong.recv();
      if (!r) return;
      v = *r;
    }
    double elapsed = std::chrono::duration<double, std::nano>(clk::now() - t0).count();
    ping.close();
    if (v == n) ns = elapsed / static_cast<double>(n);
  });
  return ns;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  long pairs = 15, n = 200000;
  if (argc > 3 || (argc > 1 && !parse_count(argv[1], pairs)) ||
      (argc > 2 && !parse_count(argv[2], n))) {
    std::fprintf(stderr, "usage: trace_overhead [PAIRS] [ROUND_TRIPS]\n");
    return 2;
  }
  pingpong(false, n);  // warm-up: the first run() maps stacks and loads code
  pingpong(true, n);
  std::vector<double> off, on, pct;
  for (long i = 0; i < pairs; ++i) {
    double a, b;
    if (i % 2 == 0) {
      a = pingpong(false, n);
      b = pingpong(true, n);
    } else {
      b = pingpong(true, n);
      a = pingpong(false, n);
    }
    if (a < 0 || b < 0) {
      std::fprintf(stderr, "trace_overhead: a round trip lost its value\n");
      return 1;
    }
    std::printf("# pair %ld: off %.1f ns on %.1f ns\n", i, a, b);
    off.push_back(a);
    on.push_back(b);
    pct.push_back((b / a - 1) * 100);
  }
  std::printf("RESULT trace_overhead off_ns %.2f ns\n", median(off));
  std::printf("RESULT trace_overhead on_ns %.2f ns\n", median(on));
  std::printf("RESULT trace_overhead on_pct %.1f %%\n", median(pct));
  return 0;
}
