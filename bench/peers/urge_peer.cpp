// urge_peer: the urge side of the Go-vs-urge peer benchmarks.
//
// Usage: urge_peer CASE PROCS [N]
//
// Runs one workload under urge::run with config::maxprocs = PROCS and prints
//
//   RESULT <case> <procs> <metric> <value> <unit>
//
// bench/peers/go/main.go is the same program in Go; keep the two in step (same
// cases, defaults, metrics and checks). bench/peers/compare.py runs both.
//
// Written only against the public API (/work/shared/api.md): <urge/urge.hpp>.

#include <urge/net.hpp>
#include <urge/urge.hpp>

#include <sys/resource.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;
using std::int64_t;
using std::uint64_t;

const char* g_case = "";
int g_procs = 0;

// A failed check: thrown from the main goroutine, rethrown by urge::run,
// reported by main() with exit status 1 (as the Go peer's fail()).
struct bench_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& msg) {
  throw bench_failure(msg);
}

void result(const char* metric, double value, const char* unit) {
  std::printf("RESULT %s %d %s %.6g %s\n", g_case, g_procs, metric, value, unit);
  std::fflush(stdout);
}

double ns_since(clk::time_point t0) {
  return static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now() - t0).count());
}

double ns_per(double ns, int64_t n) {
  return ns / static_cast<double>(n);
}

// ---------------------------------------------------------------- yield

void bench_yield(int64_t n) {
  urge::wait_group wg;
  urge::chan<int> start;  // closed to release both goroutines at once
  wg.add(2);
  for (int i = 0; i < 2; i++) {
    urge::go([&wg, start, n]() mutable {
      start.recv();
      for (int64_t j = 0; j < n; j++) urge::yield();
      wg.done();
    });
  }
  auto t0 = clk::now();
  start.close();
  wg.wait();
  result("ns_per_switch", ns_per(ns_since(t0), 2 * n), "ns");
}

// ---------------------------------------------------------------- spawn

void bench_spawn(int64_t n) {
  urge::wait_group wg;
  wg.add(static_cast<int>(n));
  auto t0 = clk::now();
  for (int64_t i = 0; i < n; i++) {
    urge::go([&wg] { wg.done(); });
  }
  wg.wait();
  result("ns_per_goroutine", ns_per(ns_since(t0), n), "ns");
}

// ---------------------------------------------------------------- skynet

void skynet(urge::chan<int64_t> out, int64_t num, int64_t size, int64_t div) {
  if (size == 1) {
    out.send(num);
    return;
  }
  urge::chan<int64_t> rc(static_cast<std::size_t>(div));
  size /= div;
  for (int64_t i = 0; i < div; i++) {
    urge::go(skynet, rc, num + i * size, size, div);
  }
  int64_t sum = 0;
  for (int64_t i = 0; i < div; i++) sum += *rc.recv();
  out.send(sum);
}

// skynet with n leaves (n a power of 10; 1000000 is the classic benchmark,
// whose sum is 499999500000).
void bench_skynet(int64_t n) {
  for (int64_t m = n; m > 1; m /= 10) {
    if (m % 10 != 0) fail("N must be a power of 10, got " + std::to_string(n));
  }
  urge::chan<int64_t> out(1);
  auto t0 = clk::now();
  urge::go(skynet, out, int64_t{0}, n, int64_t{10});
  std::optional<int64_t> sum = out.recv();
  double ns = ns_since(t0);
  int64_t want = n * (n - 1) / 2;
  if (!sum || *sum != want) {
    fail("wrong sum " + (sum ? std::to_string(*sum) : std::string("(none)")) + ", want " +
         std::to_string(want));
  }
  result("ms_total", ns / 1e6, "ms");
}

// ---------------------------------------------------------------- parked

int64_t vm_rss() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) fail("open /proc/self/status failed");
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "VmRSS:", 6) == 0) {
      kb = std::strtoll(line + 6, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  if (kb < 0) fail("no VmRSS line in /proc/self/status");
  return kb * 1024;
}

void bench_parked(int64_t n) {
  urge::chan<int> ch;  // never sent on: every goroutine parks in recv until close
  urge::wait_group ready, exited;
  ready.add(static_cast<int>(n));
  exited.add(static_cast<int>(n));
  int64_t rss0 = vm_rss();
  auto t0 = clk::now();
  for (int64_t i = 0; i < n; i++) {
    urge::go([&ready, &exited, &ch] {
      ready.done();
      ch.recv();
      exited.done();
    });
  }
  ready.wait();
  double ns = ns_since(t0);
  int64_t rss1 = vm_rss();
  result("create_ms", ns / 1e6, "ms");
  result("rss_bytes_per_goroutine", static_cast<double>(rss1 - rss0) / static_cast<double>(n), "B");
  ch.close();
  exited.wait();
}

// ---------------------------------------------------------------- idle

double cpu_ns() {
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) != 0) fail("getrusage failed");
  auto tv_ns = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) * 1e9 + static_cast<double>(tv.tv_usec) * 1e3;
  };
  return tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime);
}

void bench_idle(int64_t seconds) {
  urge::wait_group wg;
  for (int i = 0; i < 4; i++) {
    wg.add(1);
    urge::go([&wg] {
      urge::yield();
      wg.done();
    });
  }
  wg.wait();
  double c0 = cpu_ns();
  auto t0 = clk::now();
  urge::sleep(std::chrono::seconds(seconds));
  double wall = ns_since(t0);
  double c1 = cpu_ns();
  result("cpu_percent", (c1 - c0) / wall * 100, "%");
}

// ---------------------------------------------------------------- pingpong

void bench_pingpong(int64_t n) {
  urge::chan<int64_t> ping, pong;
  urge::go([ping, pong]() mutable {
    while (std::optional<int64_t> v = ping.recv()) pong.send(*v + 1);
    pong.close();
  });
  auto t0 = clk::now();
  int64_t v = 0;
  for (int64_t i = 0; i < n; i++) {
    ping.send(v);
    std::optional<int64_t> r = pong.recv();
    if (!r) fail("pong closed early");
    v = *r;
  }
  double ns = ns_since(t0);
  ping.close();
  if (v != n) fail("wrong final value " + std::to_string(v) + ", want " + std::to_string(n));
  result("ns_per_roundtrip", ns_per(ns, n), "ns");
}

// ---------------------------------------------------------------- buffered

void bench_buffered(int64_t n) {
  constexpr int producers = 4, consumers = 4;
  urge::chan<int64_t> ch(128);
  urge::wait_group pwg, cwg;
  // Per-consumer count, sum and sum of squares (mod 2^64): together they check
  // that every item 0..n-1 arrived exactly once.
  struct alignas(64) tally {
    uint64_t k = 0, s = 0, q = 0;
  };
  tally tallies[consumers];
  auto t0 = clk::now();
  for (int p = 0; p < producers; p++) {
    pwg.add(1);
    urge::go(
        [&pwg, ch, n](int64_t first) mutable {
          for (int64_t v = first; v < n; v += producers) ch.send(v);
          pwg.done();
        },
        int64_t{p});
  }
  for (int c = 0; c < consumers; c++) {
    cwg.add(1);
    urge::go(
        [&cwg, &tallies, ch](int idx) mutable {
          uint64_t k = 0, s = 0, q = 0;
          while (std::optional<int64_t> v = ch.recv()) {
            auto u = static_cast<uint64_t>(*v);
            k++;
            s += u;
            q += u * u;
          }
          tallies[idx].k = k;
          tallies[idx].s = s;
          tallies[idx].q = q;
          cwg.done();
        },
        c);
  }
  pwg.wait();
  ch.close();
  cwg.wait();
  double ns = ns_since(t0);
  uint64_t k = 0, s = 0, q = 0;
  for (const tally& t : tallies) {
    k += t.k;
    s += t.s;
    q += t.q;
  }
  uint64_t want_s = 0, want_q = 0;
  for (uint64_t v = 0; v < static_cast<uint64_t>(n); v++) {
    want_s += v;
    want_q += v * v;
  }
  if (k != static_cast<uint64_t>(n) || s != want_s || q != want_q) {
    fail("received " + std::to_string(k) + " items (sum " + std::to_string(s) +
         ", sum of squares " + std::to_string(q) + "), want " + std::to_string(n) + " (sum " +
         std::to_string(want_s) + ", sum of squares " + std::to_string(want_q) + ")");
  }
  result("ns_per_item", ns_per(ns, n), "ns");
}

// ---------------------------------------------------------------- select2

void bench_select2(int64_t n) {
  urge::chan<int64_t> a, b;
  const int64_t half = n / 2;
  urge::go([a, half]() mutable {
    for (int64_t i = 0; i < half; i++) a.send(i);
  });
  urge::go([b, n, half]() mutable {
    for (int64_t i = 0; i < n - half; i++) b.send(i);
  });
  auto t0 = clk::now();
  int64_t s = 0, na = 0, nb = 0;
  bool closed = false;
  for (int64_t i = 0; i < n; i++) {
    urge::select(urge::on_recv(a,
                               [&](std::optional<int64_t> v) {
                                 if (!v) {
                                   closed = true;
                                   return;
                                 }
                                 s += *v;
                                 na++;
                               }),
                 urge::on_recv(b, [&](std::optional<int64_t> v) {
                   if (!v) {
                     closed = true;
                     return;
                   }
                   s += *v;
                   nb++;
                 }));
    if (closed) fail("a channel was unexpectedly closed");
  }
  double ns = ns_since(t0);
  int64_t want = half * (half - 1) / 2 + (n - half) * (n - half - 1) / 2;
  if (na != half || nb != n - half || s != want) {
    fail("received " + std::to_string(na) + " from a, " + std::to_string(nb) + " from b, sum " +
         std::to_string(s) + "; want " + std::to_string(half) + ", " + std::to_string(n - half) +
         ", sum " + std::to_string(want));
  }
  result("ns_per_select", ns_per(ns, n), "ns");
}

// ---------------------------------------------------------------- mutex

void bench_mutex(int64_t n) {
  constexpr int workers = 4;
  const int64_t per = n / workers;
  urge::mutex mu;
  int64_t counter = 0;
  urge::wait_group wg;
  auto t0 = clk::now();
  for (int w = 0; w < workers; w++) {
    wg.add(1);
    urge::go([&mu, &counter, &wg, per] {
      for (int64_t i = 0; i < per; i++) {
        mu.lock();
        counter++;
        mu.unlock();
      }
      wg.done();
    });
  }
  wg.wait();
  double ns = ns_since(t0);
  if (counter != per * workers) {
    fail("counter " + std::to_string(counter) + ", want " + std::to_string(per * workers));
  }
  result("ns_per_lockunlock", ns_per(ns, per * workers), "ns");
}

// ---------------------------------------------------------------- preemptlat

// The p-th percentile (0 < p <= 1) of sorted xs: the smallest value with at
// least p of the samples at or below it (as the Go peer's percentile).
double percentile(const std::vector<double>& xs, double p) {
  auto i = static_cast<int64_t>(static_cast<double>(xs.size()) * p + 0.999999) - 1;
  i = std::clamp<int64_t>(i, 0, static_cast<int64_t>(xs.size()) - 1);
  return xs[static_cast<std::size_t>(i)];
}

double us_between(clk::time_point a, clk::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

// The time from a goroutine becoming runnable behind a CPU hog until it runs
// (run with PROCS 1). Each of n samples: a goroutine w parks in wg.wait();
// main sleeps 1-3 ms (so that the sample starts afresh), readies w with
// wg.done() and turns into the hog: a loop without calls, which only an
// asynchronous preemption stops, until w has run. w records when.
void bench_preemptlat(int64_t n) {
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; i++) {
    urge::wait_group wg;
    std::atomic<bool> ran{false};
    clk::time_point ran_at;
    wg.add(1);
    urge::go([&wg, &ran, &ran_at] {
      wg.wait();
      ran_at = clk::now();
      ran.store(true, std::memory_order_release);
    });
    urge::sleep(std::chrono::milliseconds(1 + i % 3));
    const clk::time_point t0 = clk::now();
    wg.done();
    while (!ran.load(std::memory_order_acquire)) {
    }
    lat.push_back(us_between(t0, ran_at));
  }
  std::sort(lat.begin(), lat.end());
  result("p50_us", percentile(lat, 0.5), "us");
  result("max_us", lat.back(), "us");
}

// ---------------------------------------------------------------- timerlat

// How late sleep(1 ms) returns while a CPU hog (a loop without calls) shares
// the P (run with PROCS 1); n samples.
void bench_timerlat(int64_t n) {
  std::atomic<bool> stop{false};
  urge::wait_group hog;
  hog.add(1);
  urge::go([&stop, &hog] {
    while (!stop.load(std::memory_order_relaxed)) {
    }
    hog.done();
  });
  urge::sleep(std::chrono::milliseconds(1));  // the hog holds the P from here on
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; i++) {
    const clk::time_point t0 = clk::now();
    urge::sleep(std::chrono::milliseconds(1));
    lat.push_back(us_between(t0, clk::now()) - 1000.0);
  }
  stop.store(true, std::memory_order_relaxed);
  hog.wait();
  std::sort(lat.begin(), lat.end());
  result("p50_us", percentile(lat, 0.5), "us");
  result("p99_us", percentile(lat, 0.99), "us");
}

// ---------------------------------------------------------------- echo

// As the Go peer: kEchoConns loopback TCP connections, server and clients in
// this process; each accepted connection gets a goroutine that echoes, each
// client goroutine does n/kEchoConns round trips of 64 bytes and checks every
// echo. The poller backend is the runtime's choice, or URGE_DEBUG=netpoll=...
// (compare.py runs echo with io_uring and echo_epoll with epoll).
constexpr int kEchoConns = 64;

void echo_serve(urge::net::conn c, urge::wait_group* done) {
  std::byte buf[4096];
  std::error_code ec;
  while (std::size_t k = c.read(buf, ec)) {
    c.write(std::span(buf, k), ec);
    if (ec) break;
  }
  c.close();
  done->done();
}

void bench_echo(int64_t n) {
  urge::net::listener ln = urge::net::listen("tcp", "127.0.0.1:0");
  urge::wait_group servers;
  servers.add(kEchoConns);
  urge::go([&ln, &servers] {
    for (int i = 0; i < kEchoConns; i++) urge::go(echo_serve, ln.accept(), &servers);
  });
  const int64_t per = std::max<int64_t>(1, n / kEchoConns);
  std::vector<urge::net::conn> conns;
  for (int i = 0; i < kEchoConns; i++) conns.push_back(urge::net::dial("tcp", ln.address()));
  urge::wait_group wg;
  std::atomic<bool> bad{false};
  urge::chan<int> start;  // closed to release every client at once
  wg.add(kEchoConns);
  for (int i = 0; i < kEchoConns; i++) {
    urge::go([&wg, &bad, start, per, &c = conns[static_cast<std::size_t>(i)], i]() mutable {
      std::byte msg[64] = {}, back[64];
      msg[0] = static_cast<std::byte>(i);
      start.recv();
      std::error_code ec;
      for (int64_t j = 0; j < per && !ec; j++) {
        msg[1] = static_cast<std::byte>(j);
        msg[2] = static_cast<std::byte>(j >> 8);
        c.write(msg, ec);
        for (std::size_t got = 0; got < sizeof back && !ec;) {
          std::size_t k = c.read(std::span(back).subspan(got), ec);
          if (k == 0 && !ec) ec = std::make_error_code(std::errc::connection_reset);
          got += k;
        }
        if (!ec && std::memcmp(msg, back, sizeof msg) != 0) {
          ec = std::make_error_code(std::errc::illegal_byte_sequence);
        }
      }
      if (ec) bad = true;
      wg.done();
    });
  }
  auto t0 = clk::now();
  start.close();
  wg.wait();
  double ns = ns_since(t0);
  if (bad) fail("an echo failed or differed from what was sent");
  conns.clear();  // closes: every server goroutine reads end of stream
  servers.wait();
  result("roundtrips_per_sec", static_cast<double>(per * kEchoConns) / (ns / 1e9), "1/s");
}

// ---------------------------------------------------------------- idleconns

// As the Go peer: n idle loopback TCP connections, each accepted end served
// by a goroutine parked in read; RSS growth per connection, and n (lowered to
// fit RLIMIT_NOFILE's hard limit, two descriptors per connection).
void bench_idleconns(int64_t n) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) fail("getrlimit failed");
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_max != RLIM_INFINITY) {
    n = std::min<int64_t>(n, (static_cast<int64_t>(rl.rlim_max) - 64) / 2);
  }
  urge::net::listener ln = urge::net::listen("tcp", "127.0.0.1:0");
  int64_t rss0 = vm_rss();
  urge::wait_group parked, exited;
  parked.add(static_cast<int>(n));
  exited.add(static_cast<int>(n));
  urge::go([&ln, &parked, &exited, n] {
    for (int64_t i = 0; i < n; i++) {
      urge::go(
          [&parked, &exited](urge::net::conn c) {
            std::byte buf[64];
            std::error_code ec;
            parked.done();
            c.read(buf, ec);  // until the client closes
            c.close();
            exited.done();
          },
          ln.accept());
    }
  });
  std::vector<urge::net::conn> clients;
  clients.reserve(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; i++) clients.push_back(urge::net::dial("tcp", ln.address()));
  parked.wait();
  urge::sleep(std::chrono::milliseconds(100));  // let the last goroutines reach read
  int64_t rss1 = vm_rss();
  result("rss_bytes_per_conn", static_cast<double>(rss1 - rss0) / static_cast<double>(n), "B");
  result("conns", static_cast<double>(n), "conns");
  clients.clear();
  exited.wait();
}

// ---------------------------------------------------------------- main

struct bench_case {
  const char* name;
  void (*run)(int64_t);
  int64_t default_n;
};

constexpr bench_case cases[] = {
    {"yield", bench_yield, 2000000},
    {"spawn", bench_spawn, 1000000},
    {"skynet", bench_skynet, 1000000},
    {"parked", bench_parked, 1000000},
    {"idle", bench_idle, 5},
    {"pingpong", bench_pingpong, 1000000},
    {"buffered", bench_buffered, 4000000},
    {"select2", bench_select2, 2000000},
    {"mutex", bench_mutex, 4000000},
    {"preemptlat", bench_preemptlat, 200},
    {"timerlat", bench_timerlat, 500},
    {"echo", bench_echo, 320000},
    {"idleconns", bench_idleconns, 10000},
};

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: urge_peer CASE PROCS [N]\ncases:");
  for (const bench_case& c : cases) std::fprintf(stderr, " %s", c.name);
  std::fprintf(stderr, "\n");
  std::exit(2);
}

bool parse_int(const char* s, int64_t& out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || *end != '\0') return false;
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) usage();
  const bench_case* bc = nullptr;
  for (const bench_case& c : cases) {
    if (std::string_view(argv[1]) == c.name) bc = &c;
  }
  if (!bc) {
    std::fprintf(stderr, "urge_peer: unknown case \"%s\"\n", argv[1]);
    usage();
  }
  g_case = bc->name;
  int64_t procs = 0;
  if (!parse_int(argv[2], procs) || procs < 1 || procs > 4096) {
    std::fprintf(stderr, "urge_peer: bad PROCS \"%s\"\n", argv[2]);
    usage();
  }
  g_procs = static_cast<int>(procs);
  int64_t n = bc->default_n;
  if (argc == 4 && (!parse_int(argv[3], n) || n < 1 || n > (int64_t{1} << 31) - 1)) {
    std::fprintf(stderr, "urge_peer: bad N \"%s\"\n", argv[3]);
    usage();
  }

  urge::config cfg;
  cfg.maxprocs = g_procs;
  try {
    return urge::run(cfg, [bc, n]() -> int {
      bc->run(n);
      return 0;
    });
  } catch (const bench_failure& e) {
    std::fprintf(stderr, "urge_peer %s: %s\n", g_case, e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "urge_peer %s: uncaught exception: %s\n", g_case, e.what());
  } catch (...) {
    std::fprintf(stderr, "urge_peer %s: uncaught non-standard exception\n", g_case);
  }
  return 1;
}
