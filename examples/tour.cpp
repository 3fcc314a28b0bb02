// The urge tour: what the runtime is made of, shown one layer at a time.
//
// Each section is one function that prints a header, runs something small and
// explains what just happened in plain words. To add a section, write it as the
// next section_... function, give it the next header number and call it from
// main. The whole tour must stay well under a second, so sections time fixed,
// small workloads and sleep only where time is the subject, briefly.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "arch/context.hpp"
#include "platform/stack.hpp"
#include "runtime/netpoll.hpp"
#include "urge/net.hpp"
#include "urge/urge.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

void header(int number, const char* title) {
  int n = std::printf("\n%d. %s\n", number, title);
  // Underline the title: n counts the leading and trailing newlines too.
  for (int i = 2; i < n; ++i) std::putchar('-');
  std::putchar('\n');
}

double ns_since(clock_type::time_point start) {
  return std::chrono::duration<double, std::nano>(clock_type::now() - start).count();
}

// 1234 -> 1200: a ratio between timings is not worth more than two digits.
long two_digits(double x) {
  if (x < 100) return std::lround(x);
  double unit = std::pow(10.0, std::floor(std::log10(x)) - 1);
  return std::lround(x / unit) * std::lround(unit);
}

// 1000000 -> "1,000,000": big counts are easier to read grouped.
std::string grouped(long n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// ---- 1. Context switching ----------------------------------------------------
//
// Two contexts, ping and pong, pass a counter back and forth. Neither is a
// thread: each is a function running on its own stack from urge's pool, and
// switch_context jumps from one stack to the other. main's own stack is a third
// context, which pong returns to when the rally is over.

struct rally {
  urge::arch::context main, ping, pong;
  long count = 0;  // ping adds one per visit
  long until = 0;  // pong hands control back to main when count reaches this
  bool show = false;
};

void ping_entry(void* arg, void*) {
  urge::arch::context_started();
  auto* r = static_cast<rally*>(arg);
  for (;;) {
    ++r->count;
    if (r->show) std::printf("  ping %ld", r->count);
    urge::arch::switch_context(r->ping, r->pong, nullptr);
  }
}

void pong_entry(void* arg, void*) {
  urge::arch::context_started();
  auto* r = static_cast<rally*>(arg);
  for (;;) {
    if (r->show) std::printf("  ->  pong %ld\n", r->count);
    // Either way pong stops here, and resumes here when next switched to.
    urge::arch::switch_context(r->pong, r->count == r->until ? r->main : r->ping, nullptr);
  }
}

// The same ping-pong between two OS threads: each hop is a write to a pipe that
// wakes the other thread and a read that puts this one to sleep, so the kernel
// switches threads twice per round trip. Bounded by time as well as count,
// because a loaded machine can make thread wake-ups slow.
double thread_switch_ns() {
  int to_peer[2], to_main[2];
  if (pipe2(to_peer, O_CLOEXEC) != 0) return 0;
  if (pipe2(to_main, O_CLOEXEC) != 0) {
    close(to_peer[0]);
    close(to_peer[1]);
    return 0;
  }
  std::thread peer([&] {
    char c = 0;
    while (read(to_peer[0], &c, 1) == 1) {  // until main closes its end
      if (write(to_main[1], &c, 1) != 1) break;
    }
  });
  constexpr long kMaxRoundTrips = 10'000;
  constexpr double kMaxNs = 100e6;  // 100 ms
  long trips = 0;
  char c = 1;
  auto start = clock_type::now();
  double elapsed = 0;
  while (trips < kMaxRoundTrips && elapsed < kMaxNs) {
    if (write(to_peer[1], &c, 1) != 1 || read(to_main[0], &c, 1) != 1) break;
    ++trips;
    if (trips % 256 == 0) elapsed = ns_since(start);
  }
  elapsed = ns_since(start);
  close(to_peer[1]);  // the peer reads end-of-file and returns
  peer.join();
  close(to_peer[0]);
  close(to_main[0]);
  close(to_main[1]);
  return trips > 0 ? elapsed / (2.0 * static_cast<double>(trips)) : 0;
}

void section_context_switching() {
  header(1, "Context switching");
  urge::platform::stack_pool pool;
  urge::platform::stack ping_stack = pool.acquire(), pong_stack = pool.acquire();
  rally r;
  urge::arch::init_thread_context(r.main);
  urge::arch::make_context(r.ping, ping_stack.lo, ping_stack.size, ping_entry, &r);
  urge::arch::make_context(r.pong, pong_stack.lo, pong_stack.size, pong_entry, &r);

  std::printf(
      "Two contexts, ping and pong, each on its own %zu KiB stack from urge's pool,\n"
      "pass a counter back and forth on this one thread:\n\n",
      pool.stack_size() / 1024);
  r.show = true;
  r.until = 3;
  urge::arch::switch_context(r.main, r.ping, nullptr);  // returns when pong says so

  // Now the same rally without printing, a million times, against the clock.
  constexpr long kRoundTrips = 1'000'000;
  r.show = false;
  r.until = r.count + kRoundTrips;
  long first = r.count;
  auto start = clock_type::now();
  urge::arch::switch_context(r.main, r.ping, nullptr);
  double total_ns = ns_since(start);
  long done = r.count - first;
  double per_switch = total_ns / (2.0 * static_cast<double>(done));  // two switches per trip
  double thread_ns = thread_switch_ns();

  std::printf("\n%s round trips (%s switches) took %.1f ms. One switch costs:\n",
              grouped(done).c_str(), grouped(2 * done).c_str(), total_ns / 1e6);
  std::printf("  between two contexts:     %7.1f ns\n", per_switch);
  if (thread_ns > 0) {
    std::printf("  between two OS threads:   %7.1f µs  (the same ping-pong, through a pipe)\n",
                thread_ns / 1e3);
  }
  std::printf(
      "\nThis is what a goroutine switch is: an ordinary function call that saves a few\n"
      "registers, swaps the stack pointer and returns on the other stack. The kernel\n"
      "never hears of it, which is why it costs nanoseconds");
  if (thread_ns > 0) {
    std::printf(
        ": about %s times less than\n"
        "the microseconds the kernel needs to put one thread to sleep and wake another",
        grouped(two_digits(thread_ns / per_switch)).c_str());
  }
  std::printf(".\n");

  // ping and pong stay suspended mid-loop: nothing on their stacks needs
  // unwinding, so the stacks simply go back to the pool.
  urge::arch::destroy_context(r.ping);
  urge::arch::destroy_context(r.pong);
  pool.release(ping_stack);
  pool.release(pong_stack);
}

// ---- 2. Channels and select ---------------------------------------------------
//
// Goroutines share data by sending it over channels. Three small programs run
// inside urge::run, on one thread: a pipeline of goroutines, a select that
// gives up after a timeout, and a group of workers stopped by cancelling their
// context.

// Stage one of a pipeline: sends 1..n, then closes its channel, which is how
// the next stage learns that nothing more is coming.
void generate(urge::chan<long> out, long n) {
  for (long i = 1; i <= n; ++i) out.send(i);
  out.close();
}

// Stage two: squares what it receives until its input is closed.
void square(urge::chan<long> in, urge::chan<long> out) {
  for (long v : in) out.send(v * v);
  out.close();
}

void section_channels() {
  header(2, "Channels and select");
  // One P: every goroutine of this section takes turns on a single thread.
  urge::config cfg;
  cfg.maxprocs = 1;
  urge::run(cfg, [] {
    // A pipeline: generate -> square -> this goroutine.
    urge::chan<long> numbers, squares;
    urge::go(generate, numbers, 5L);
    urge::go(square, numbers, squares);
    std::printf(
        "A pipeline of three goroutines joined by two channels:\n\n  generate 1..5 -> square ->");
    long sum = 0;
    for (long v : squares) {
      std::printf(" %ld", v);
      sum += v;
    }
    std::printf("   (sum %ld)\n", sum);

    // The same pipeline with many more numbers, against the clock.
    constexpr long kValues = 200'000;
    urge::chan<long> big_numbers, big_squares;
    auto start = clock_type::now();
    urge::go(generate, big_numbers, kValues);
    urge::go(square, big_numbers, big_squares);
    long count = 0;
    for (long v : big_squares) count += v > 0;
    double per_value = ns_since(start) / static_cast<double>(kValues);
    std::printf(
        "\nPushing %s numbers through it takes %.0f ns per number, all on one\n"
        "thread: two hand-overs, each moving the value straight into the goroutine\n"
        "waiting for it, which then runs next.\n",
        grouped(count).c_str(), per_value);

    // select: whichever comes first, a reply or the timeout.
    urge::chan<std::string> replies;  // nobody will answer
    start = clock_type::now();
    urge::select(
        urge::on_recv(replies,
                      [](std::optional<std::string> r) {
                        std::printf("\nreply: %s\n", r ? r->c_str() : "(closed)");
                      }),
        urge::on_recv(urge::after(std::chrono::milliseconds(20)), [&] {
          std::printf(
              "\nA select waited for a reply or a 20 ms timer, whichever came first: no reply,\n"
              "so it gave up after %.1f ms. While it waited, its goroutine was parked on both\n"
              "channels at once and cost no CPU.\n",
              ns_since(start) / 1e6);
        }));

    // Cancellation: workers stop when their context's deadline passes.
    auto [ctx, cancel] =
        urge::with_timeout(urge::context::background(), std::chrono::milliseconds(10));
    urge::chan<long> jobs(64);
    std::atomic<long> done_jobs{0};
    urge::wait_group wg;
    constexpr int kWorkers = 4;
    for (int w = 0; w < kWorkers; ++w) {
      wg.add(1);
      urge::go([&, ctx = ctx, jobs] {
        for (bool stop = false; !stop;) {
          urge::select(urge::on_recv(jobs, [&](std::optional<long>) { ++done_jobs; }),
                       urge::on_recv(ctx.done(), [&] { stop = true; }));
        }
        wg.done();
      });
    }
    wg.add(1);
    urge::go([&, ctx = ctx, jobs] {
      bool stop = false;
      for (long i = 0; !stop; ++i) {
        urge::select(urge::on_send(jobs, i), urge::on_recv(ctx.done(), [&] { stop = true; }));
      }
      wg.done();
    });
    wg.wait();
    cancel();  // the deadline did it already; calling cancel is still good manners
    std::printf(
        "\n%d workers and a feeder shared a context with a 10 ms deadline. They handled\n"
        "%s jobs, then the deadline closed ctx.done() and every one of them returned\n"
        "(ctx.err(): \"%s\").\n",
        kWorkers, grouped(done_jobs.load()).c_str(), ctx.err().message().c_str());
  });
}

// ---- 3. Preemption ---------------------------------------------------------------
//
// One P, two goroutines: one spins in a loop without calls for about 50 ms, a
// ticker sleeps 10 ms at a time and says when it wakes. The loop never reaches
// a point where the scheduler could step in, so only a signal can take the
// thread from it. Run twice: with asynchronous preemption (the default), then
// with config::async_preempt = false (Go's asyncpreemptoff=1).

constexpr int kTicks = 4;

// xorshift: arithmetic on one register, no call, no memory access.
inline std::uint64_t spin_steps(std::uint64_t x, long steps) {
  for (long i = 0; i < steps; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
  }
  return x;
}

// How many steps take about `ms` milliseconds on this machine, measured on
// this thread before the runtime starts.
long steps_for_ms(double ms) {
  constexpr long kProbe = 1'000'000;
  double best_ms = 1e9;  // the fastest of a few probes: the others were interrupted
  for (int i = 0; i < 3; ++i) {
    auto start = clock_type::now();
    volatile std::uint64_t sink = spin_steps(1, kProbe);
    (void)sink;
    best_ms = std::min(best_ms, ns_since(start) / 1e6);
  }
  return static_cast<long>(static_cast<double>(kProbe) * ms / std::max(best_ms, 1e-3));
}

struct loop_and_ticker {
  double loop_end_ms = 0;
  double first_tick_ms = 0;
  std::uint64_t preemptions = 0;
};

loop_and_ticker run_loop_beside_ticker(bool async_preempt, long steps) {
  urge::config cfg;
  cfg.maxprocs = 1;
  cfg.async_preempt = async_preempt;
  loop_and_ticker r;
  urge::run(cfg, [&] {
    const std::uint64_t taken = urge::stats().preempts_taken;
    const auto start = clock_type::now();
    urge::wait_group wg;
    wg.add(2);
    urge::go([&] {  // the ticker
      double last = 0;
      for (int i = 1; i <= kTicks; ++i) {
        urge::sleep(std::chrono::milliseconds(10));
        double at = ns_since(start) / 1e6;
        if (i == 1) r.first_tick_ms = at;
        std::printf("    tick %d at %5.1f ms  (%+5.1f ms after the last one)\n", i, at, at - last);
        last = at;
      }
      wg.done();
    });
    urge::yield();  // the ticker starts first and goes to sleep
    urge::go([&] {  // the loop
      volatile std::uint64_t sink = spin_steps(1, steps);
      (void)sink;
      r.loop_end_ms = ns_since(start) / 1e6;
      wg.done();
    });
    wg.wait();
    r.preemptions = urge::stats().preempts_taken - taken;
  });
  return r;
}

void section_preemption() {
  header(3, "Preemption");
  const long steps = steps_for_ms(50);
  std::printf(
      "One P, so one thread, shared by two goroutines: one spins in a loop without\n"
      "calls for about 50 ms, a ticker sleeps 10 ms at a time and says when it wakes.\n\n"
      "  With asynchronous preemption (the default):\n");
  loop_and_ticker on = run_loop_beside_ticker(true, steps);
  std::printf("    the loop ended at %.1f ms, stopped %llu times along the way\n\n", on.loop_end_ms,
              static_cast<unsigned long long>(on.preemptions));
  std::printf("  With config::async_preempt = false:\n");
  loop_and_ticker off = run_loop_beside_ticker(false, steps);
  std::printf("    the loop ended at %.1f ms, stopped %llu times\n", off.loop_end_ms,
              static_cast<unsigned long long>(off.preemptions));
  std::printf(
      "\nThe loop never calls into the runtime, so it never offers the thread back. With\n"
      "preemption on, the runtime's monitor thread sends the loop's thread a signal\n"
      "(SIGURG, as Go does) when a timer is due there, or when the loop has had the\n"
      "thread for a whole 10 ms quantum. The signal handler saves every register of\n"
      "the loop, parks it where it stood and lets the ticker run, so each tick comes\n"
      "about on time (the first after %.1f ms). Later the loop resumes on the same\n"
      "thread at the very instruction it was stopped at, none the wiser.\n"
      "With preemption off, the scheduler can only ask politely: the ticker's first\n"
      "tick waits until the loop ends by itself (%.1f ms), and its rhythm is lost.\n",
      on.first_tick_ms, off.first_tick_ms);
}

// ---- 4. Network ----------------------------------------------------------------
//
// A loopback echo server and a few clients, all goroutines of one run. The
// server gives each connection a goroutine of its own; every goroutine blocked
// on a socket is parked in the network poller.

void echo_connection(urge::net::conn c, urge::wait_group* done) {
  std::byte buf[4096];
  std::error_code ec;
  while (std::size_t n = c.read(buf, ec)) {
    c.write(std::span(buf, n), ec);
    if (ec) break;
  }
  done->done();
}

void section_network() {
  header(4, "Network");
  constexpr int kClients = 4;
  constexpr long kMaxTrips = 5'000;    // per client
  constexpr double kBudgetNs = 100e6;  // stop early on a slow machine
  urge::config cfg;
  cfg.maxprocs = 2;
  urge::run(cfg, [] {
    urge::net::listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    urge::wait_group servers, clients;
    servers.add(kClients);
    urge::go([&ln, &servers] {
      for (int i = 0; i < kClients; ++i) urge::go(echo_connection, ln.accept(), &servers);
    });
    std::atomic<long> trips{0};
    const auto start = clock_type::now();
    for (int i = 0; i < kClients; ++i) {
      clients.add(1);
      urge::go([&ln, &clients, &trips, start] {
        urge::net::conn c = urge::net::dial("tcp", ln.address());
        std::byte msg[64] = {}, back[64];
        for (long t = 0; t < kMaxTrips; ++t) {
          c.write(std::span(msg));
          for (std::size_t got = 0; got < sizeof back;) {
            got += c.read(std::span(back).subspan(got));
          }
          trips.fetch_add(1, std::memory_order_relaxed);
          if (t % 256 == 255 && ns_since(start) > kBudgetNs) break;
        }
        clients.done();
      });
    }
    clients.wait();
    const double total_ns = ns_since(start);
    servers.wait();  // each server goroutine saw its client close
    const long n = trips.load();
    std::printf(
        "An echo server and %d clients on loopback TCP, all goroutines of one process\n"
        "(2 Ps): the server gives each connection a goroutine that reads and writes\n"
        "back; each client sends 64 bytes and waits for the echo, again and again.\n\n",
        kClients);
    std::printf("  poller backend:  %s\n", urge::runtime::netpoll_name());
    std::printf("  round trips:     %s in %.1f ms: %s per second, %.1f µs each\n",
                grouped(n).c_str(), total_ns / 1e6,
                grouped(two_digits(static_cast<double>(n) / (total_ns / 1e9))).c_str(),
                total_ns / 1e3 / static_cast<double>(n) * kClients);
    std::printf(
        "\nA goroutine waiting for the network is parked, not a thread: with io_uring its\n"
        "read is itself the request in the kernel's queue, submitted in a batch with\n"
        "others, and the completion readies it with the bytes already in its buffer.\n"
        "Where io_uring is unavailable (an old kernel, seccomp, qemu) the runtime falls\n"
        "back to epoll, which says when a socket is ready so the goroutine can retry;\n"
        "URGE_DEBUG=netpoll=epoll picks it on purpose. Either way the ten goroutines\n"
        "here share two threads, and ten thousand idle connections would cost ten\n"
        "thousand parked goroutines, not ten thousand threads.\n");
  });
}

}  // namespace

int main() {
  std::printf("A tour of urge, a Go-style goroutine runtime for C++, from the bottom up.\n");
  section_context_switching();
  section_channels();
  section_preemption();
  section_network();
  return 0;
}
