// A program for the observability tests and for measuring the tracer.
//
//   debug_helper spin MS       four goroutines burn CPU for MS milliseconds in
//                              debug_helper_spin_target (tests/perf_test.sh)
//   debug_helper park          goroutines parked on a channel, in sleep and on
//                              a mutex, one spinning; prints "ready" and waits
//                              to be killed (the gdb tests)
//   debug_helper pingpong N    N channel round trips and N yield round trips
//                              between two goroutines on one P; prints ns per
//                              round trip (run with and without URGE_TRACE)
//   debug_helper emitcost N    N tracer events from a goroutine; prints ns per
//                              event (run with URGE_TRACE)
//   debug_helper events        makes every scheduler event with a USDT probe
//                              happen at least once (create, start, block,
//                              unblock, preempt, steal, blocking call enter and
//                              exit, end); prints urge::stats() counts
//                              (tests/usdt_test.sh)
//
// The functions that tests look for have C linkage, so that perf and gdb show
// them under exactly these names, and are noinline with a call after the
// interesting one, so that no frame disappears into a tail call.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/runtime2.hpp"
#include "runtime/trace.hpp"
#include "urge/urge.hpp"

namespace {

using clk = std::chrono::steady_clock;

// Keeps the compiler from deleting or merging the work.
std::atomic<std::uint64_t> g_sink{0};

}  // namespace

extern "C" {

// A non-leaf (it calls spin_step), so that GCC gives it a frame record and a
// frame-pointer walk from a sample in it misses no caller.
__attribute__((noinline)) std::uint64_t debug_helper_spin_step(std::uint64_t x) {
  for (int i = 0; i < 64; ++i) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
  asm volatile("" : "+r"(x));
  return x;
}

// Most samples land here, in its own loop: the clock is read rarely, and
// spin_step only makes it a non-leaf.
__attribute__((noinline)) void debug_helper_spin_target(clk::time_point until) {
  std::uint64_t x = 1;
  while (clk::now() < until) {
    for (int i = 0; i < 200'000; ++i) {
      x = x * 2862933555777941757ULL + 3037000493ULL;
      x ^= x >> 7;
      asm volatile("" : "+r"(x));
    }
    x = debug_helper_spin_step(x);
  }
  g_sink.fetch_add(x, std::memory_order_relaxed);
}

__attribute__((noinline)) void debug_helper_spin_outer(clk::time_point until) {
  debug_helper_spin_target(until);
  g_sink.fetch_add(1, std::memory_order_relaxed);
}

__attribute__((noinline)) void debug_helper_park_recv(urge::chan<int> c) {
  c.recv();
  g_sink.fetch_add(1, std::memory_order_relaxed);
}

__attribute__((noinline)) void debug_helper_park_sleep() {
  urge::sleep(std::chrono::hours(1));
  g_sink.fetch_add(1, std::memory_order_relaxed);
}

__attribute__((noinline)) void debug_helper_park_mutex(urge::mutex* mu) {
  mu->lock();
  mu->unlock();
  g_sink.fetch_add(1, std::memory_order_relaxed);
}

__attribute__((noinline)) void debug_helper_busy(std::atomic<bool>* started) {
  started->store(true);
  std::uint64_t x = 1;
  for (;;) {
    x = debug_helper_spin_step(x);
    if ((x & 0xffff) == 0) g_sink.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // extern "C"

namespace {

int spin(int ms) {
  urge::config cfg;
  cfg.maxprocs = 2;
  urge::run(cfg, [ms] {
    auto until = clk::now() + std::chrono::milliseconds(ms);
    urge::wait_group wg;
    for (int i = 0; i < 4; ++i) {
      wg.add(1);
      urge::go([&wg, until] {
        debug_helper_spin_outer(until);
        wg.done();
      });
    }
    wg.wait();
  });
  return 0;
}

int park() {
  urge::config cfg;
  cfg.maxprocs = 2;
  urge::run(cfg, [] {
    urge::chan<int> never;
    urge::go([never] { debug_helper_park_recv(never); });
    urge::go([] { debug_helper_park_sleep(); });
    auto* mu = new urge::mutex;  // leaked: the process is killed
    mu->lock();
    urge::go([mu] { debug_helper_park_mutex(mu); });
    std::atomic<bool> started{false};
    urge::go([&started] { debug_helper_busy(&started); });
    while (!started.load()) urge::sleep(std::chrono::milliseconds(1));
    // Let the others reach their parking points.
    urge::sleep(std::chrono::milliseconds(100));
    // "ready" comes from a goroutine of its own once main is parked: printed
    // by main itself, the parent could take its core while main was still
    // inside write(2), not yet on the channel the tests look for.
    urge::runtime::g* main_g = urge::runtime::getg();
    urge::go([main_g] {
      while (main_g->status.load() != urge::runtime::gstatus::waiting) urge::yield();
      std::printf("ready %d\n", static_cast<int>(getpid()));
      std::fflush(stdout);
    });
    urge::chan<int> forever;
    forever.recv();
  });
  return 0;
}

int pingpong(long n) {
  urge::config cfg;
  cfg.maxprocs = 1;
  double chan_ns = 0, yield_ns = 0;
  urge::run(cfg, [&] {
    urge::chan<int> ping, pong;
    urge::go([ping, pong, n] {
      for (long i = 0; i < n; ++i) pong.send(*ping.recv());
    });
    auto t0 = clk::now();
    for (long i = 0; i < n; ++i) {
      ping.send(1);
      pong.recv();
    }
    chan_ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count() / n;

    std::atomic<bool> stop{false};
    urge::wait_group wg;
    wg.add(1);
    urge::go([&] {
      while (!stop.load(std::memory_order_relaxed)) urge::yield();
      wg.done();
    });
    urge::yield();
    t0 = clk::now();
    for (long i = 0; i < n; ++i) urge::yield();
    yield_ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count() / n;
    stop = true;
    wg.wait();
  });
  std::printf("chan_roundtrip_ns %.1f\nyield_roundtrip_ns %.1f\n", chan_ns, yield_ns);
  return 0;
}

int emitcost(long n) {
  double ns = 0;
  bool on = false;
  urge::run([&] {
    on = urge::runtime::trace_on;
    auto t0 = clk::now();
    for (long i = 0; i < n; ++i) {
      URGE_TRACE_EVENT(go_preempt, static_cast<std::uint64_t>(i), 0);
    }
    ns = std::chrono::duration<double, std::nano>(clk::now() - t0).count() / n;
  });
  std::printf("trace_on %d\nns_per_event %.1f\n", on ? 1 : 0, ns);
  return 0;
}

// Rounds of goroutines blocking on a channel and being woken, a blocking
// call and a hog stopped by sysmon, with two Ps, until both a steal and an
// asynchronous preemption have happened (each round makes them likely, none
// certain).
int events() {
  urge::config cfg;
  cfg.maxprocs = 2;
  cfg.quantum = std::chrono::milliseconds(1);
  std::uint64_t rounds = 0;
  urge::sched_stats st;
  urge::run(cfg, [&] {
    const auto deadline = clk::now() + std::chrono::seconds(20);
    do {
      ++rounds;
      urge::chan<int> c;
      urge::wait_group wg;
      for (int i = 0; i < 64; ++i) {
        wg.add(1);
        urge::go([c, &wg] {
          c.recv();
          wg.done();
        });
      }
      for (int i = 0; i < 64; ++i) c.send(i);
      wg.wait();
      urge::blocking([] { usleep(100); });
      std::atomic<bool> stop{false};
      wg.add(1);
      urge::go([&stop, &wg] {
        while (!stop.load(std::memory_order_relaxed)) {
        }
        wg.done();
      });
      urge::sleep(std::chrono::milliseconds(3));
      stop.store(true);
      wg.wait();
      st = urge::stats();
    } while ((st.steals == 0 || st.preempts_taken == 0) && clk::now() < deadline);
  });
  std::printf("rounds %llu\nsteals %llu\npreempts_taken %llu\n",
              static_cast<unsigned long long>(rounds), static_cast<unsigned long long>(st.steals),
              static_cast<unsigned long long>(st.preempts_taken));
  return st.steals != 0 && st.preempts_taken != 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  long arg = argc > 2 ? std::atol(argv[2]) : 0;
  if (mode == "spin" && arg > 0) return spin(static_cast<int>(arg));
  if (mode == "park") return park();
  if (mode == "events") return events();
  if (mode == "pingpong" && arg > 0) return pingpong(arg);
  if (mode == "emitcost" && arg > 0) return emitcost(arg);
  std::fprintf(stderr, "usage: debug_helper spin MS | park | pingpong N | emitcost N\n");
  return 2;
}
