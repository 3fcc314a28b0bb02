// urge::net and the network poller. Every behaviour runs inside urge::run at
// maxprocs 2, once per backend (io_uring and epoll, forced through
// URGE_DEBUG=netpoll=...). Where io_uring is unavailable (qemu-user, seccomp)
// the io_uring half skips and says why.
//
// Synchronisation is through wait_group, semaphores and atomics. Where a test
// must act on a goroutine that is blocked in the poller (close it, extend its
// deadline), it waits until the scheduler shows the goroutine parked in
// "IO wait" instead of guessing with a sleep. Sleeps appear only where time
// is the subject (deadlines). URGE_TEST_SLOW (ASan, qemu) widens time
// tolerances and shrinks the heavy workloads.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/netpoll.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "urge/net.hpp"
#include "urge/urge.hpp"

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using urge::net::conn;
using urge::net::listener;
using urge::runtime::netpoll_backend;

bool slow() {
  const char* v = std::getenv("URGE_TEST_SLOW");
  return v && *v && std::string_view(v) != "0";
}

clk::duration tolerance(clk::duration native) {
  return slow() ? native * 10 : native;
}

double ms(clk::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Sets an environment variable for one scope; run() reads URGE_DEBUG when it
// starts, so the variable must not outlive the run it was meant for.
class scoped_env {
 public:
  scoped_env(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~scoped_env() { ::unsetenv(name_); }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  const char* name_;
};

urge::config procs2() {
  urge::config c;
  c.maxprocs = 2;
  return c;
}

// Whether io_uring works here, found out once by trying: forcing it where it
// is unavailable makes run throw. The reason is kept for the skip message.
const std::optional<std::string>& uring_unavailable() {
  static const std::optional<std::string> why = []() -> std::optional<std::string> {
    scoped_env env("URGE_DEBUG", "netpoll=uring");
    try {
      urge::run(procs2(), [] {});
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::nullopt;
  }();
  return why;
}

bool ipv6_loopback_available() {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// Raises the soft descriptor limit to the hard one; returns the limit.
long raise_nofile() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur == RLIM_INFINITY ? 1 << 20 : static_cast<long>(rl.rlim_cur);
}

// ---- Goroutine helpers ---------------------------------------------------------

// Starts f(args...) as a goroutine counted by wg. An exception escaping f is
// a test failure here; left alone it would be a panic that ends the whole
// test program.
template <class F, class... A>
void spawn(urge::wait_group& wg, F&& f, A&&... args) {
  wg.add(1);
  urge::go(
      [&wg](std::decay_t<F> fn, std::decay_t<A>... a) {
        try {
          std::invoke(std::move(fn), std::move(a)...);
        } catch (const std::exception& e) {
          ADD_FAILURE() << "goroutine threw: " << e.what();
        }
        wg.done();
      },
      std::forward<F>(f), std::forward<A>(args)...);
}

// Goroutines parked in the network poller right now.
int io_parked() {
  using namespace urge::runtime;
  int n = 0;
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    if (gp->status.load(std::memory_order_acquire) == gstatus::waiting &&
        gp->reason == waitreason::io_wait) {
      ++n;
    }
  }
  return n;
}

// Waits until at least n goroutines are parked in the poller: a goroutine
// about to read is not yet blocked, and closing or re-arming a connection
// under it would test something else. Polls the scheduler's state.
void wait_io_parked(int n) {
  const auto give_up = clk::now() + 60s;
  while (io_parked() < n) {
    if (clk::now() > give_up) {
      ADD_FAILURE() << "only " << io_parked() << " of " << n << " goroutines parked in IO wait";
      return;
    }
    urge::sleep(200us);
  }
}

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span(s));
}

std::string str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Reads exactly buf.size() bytes; false at a premature end of stream.
bool read_full(conn& c, std::span<std::byte> buf) {
  std::size_t got = 0;
  while (got < buf.size()) {
    std::size_t n = c.read(buf.subspan(got));
    if (n == 0) return false;
    got += n;
  }
  return true;
}

// Reads until end of stream; returns what arrived.
std::string read_all(conn& c) {
  std::string out;
  std::byte buf[512];
  while (std::size_t n = c.read(buf)) out += str(std::span(buf, n));
  return out;
}

void echo_server(conn c) {
  std::vector<std::byte> buf(16 * 1024);
  while (std::size_t n = c.read(buf)) c.write(std::span(buf.data(), n));
}

// Accepts n connections, each echoed by its own goroutine (all counted by wg).
void serve_echo(listener& ln, int n, urge::wait_group& wg) {
  spawn(wg, [&ln, n, &wg] {
    for (int i = 0; i < n; ++i) spawn(wg, echo_server, ln.accept());
  });
}

// One write and the echo of it.
void round_trip(conn& c, std::string_view msg) {
  c.write(msg);
  std::string got(msg.size(), '\0');
  ASSERT_TRUE(read_full(c, std::as_writable_bytes(std::span(got))));
  EXPECT_EQ(got, msg);
}

// A small send buffer: a 64 KiB message then takes many partial writes. (Not
// the receive buffer: a window far below loopback's 64 KiB MSS makes Linux
// TCP crawl on persist-timer probes.)
void shrink_send_buffer(conn& c) {
  int small = 4096;
  setsockopt(c.native_handle(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
}

// Message j of connection i: a slice of a fixed pseudo-random pattern, of one
// of several sizes up to 64 KiB, at an offset that differs per message, so a
// message delivered to the wrong connection or out of order is noticed.
constexpr std::size_t kSizes[] = {1, 64, 1000, 4096, 65536, 17, 30000, 512, 65535, 8191};
constexpr std::size_t kMaxSize = 65536;

std::span<const std::byte> message(int i, int j) {
  static const std::vector<std::byte> pattern = [] {
    std::vector<std::byte> p(kMaxSize + 4096);
    std::uint32_t x = 0x9E3779B9u;
    for (auto& b : p) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      b = static_cast<std::byte>(x);
    }
    return p;
  }();
  std::size_t size = kSizes[static_cast<std::size_t>(i + j) % std::size(kSizes)];
  std::size_t offset = static_cast<std::size_t>(i * 131 + j * 31) % 4096;
  return std::span(pattern).subspan(offset, size);
}

// Client side of the echo test: `trips` round trips in lockstep. The writer
// is a goroutine of its own because a 64 KiB message written by the goroutine
// that would read its echo deadlocks once both directions' buffers are full
// (the server stops reading while its echo cannot be written).
void echo_client(conn& c, int id, int trips, std::atomic<long>& checked) {
  urge::semaphore echoed(0);
  std::atomic<bool> failed{false};
  urge::wait_group writer;
  spawn(writer, [&] {
    for (int j = 0; j < trips && !failed.load(); ++j) {
      c.write(message(id, j));
      echoed.acquire();
    }
    c.close_write();
  });
  std::vector<std::byte> got(kMaxSize);
  for (int j = 0; j < trips; ++j) {
    auto want = message(id, j);
    auto buf = std::span(got).first(want.size());
    if (!read_full(c, buf)) {
      ADD_FAILURE() << "conn " << id << ": end of stream before echo " << j;
      failed = true;
    } else if (std::memcmp(buf.data(), want.data(), want.size()) != 0) {
      ADD_FAILURE() << "conn " << id << ": echo " << j << " (" << want.size()
                    << " bytes) differs from what was sent";
      failed = true;
    }
    if (failed) {
      echoed.release(trips);  // let the writer finish
      break;
    }
    checked.fetch_add(1);
    echoed.release();
  }
  // The server closes once it has read our close_write.
  while (c.read(got) != 0) {
  }
  writer.wait();
}

void echo_many(std::string_view network, std::string_view address, int conns, int trips) {
  listener ln = urge::net::listen(network, address);
  const std::string addr = ln.address();
  urge::wait_group servers, clients;
  serve_echo(ln, conns, servers);
  std::atomic<long> checked{0};
  for (int i = 0; i < conns; ++i) {
    spawn(clients, [&, i] {
      conn c = urge::net::dial(network, addr);
      if (i % 4 == 0) shrink_send_buffer(c);
      echo_client(c, i, trips, checked);
    });
  }
  clients.wait();
  servers.wait();
  EXPECT_EQ(checked.load(), static_cast<long>(conns) * trips);
}

// A connected pair over loopback TCP: {dialled side, accepted side}.
std::pair<conn, conn> tcp_pair(listener& ln) {
  conn c = urge::net::dial("tcp", ln.address());
  conn s = ln.accept();
  return {std::move(c), std::move(s)};
}

// Expects f to throw std::system_error with code `want`.
template <class F>
void expect_error(F&& f, std::error_code want, const char* what) {
  try {
    f();
    ADD_FAILURE() << what << ": no error, expected " << want.message();
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), want) << what << ": " << e.what();
  }
}

// ---- The fixture -------------------------------------------------------------

enum class backend { uring, epoll };

class net_test : public ::testing::TestWithParam<backend> {
 protected:
  void SetUp() override {
    if (GetParam() == backend::uring && uring_unavailable()) {
      GTEST_SKIP() << "io_uring is unavailable here (qemu-user or seccomp): "
                   << *uring_unavailable();
    }
  }

  // Runs f as the main goroutine at maxprocs 2 (or procs) on this test's
  // backend.
  template <class F>
  void run(F&& f, int procs = 2) {
    const bool uring = GetParam() == backend::uring;
    scoped_env env("URGE_DEBUG", uring ? "netpoll=uring" : "netpoll=epoll");
    urge::config cfg = procs2();
    cfg.maxprocs = procs;
    urge::run(cfg, [&] {
      ASSERT_EQ(urge::runtime::netpoll_kind(),
                uring ? netpoll_backend::uring : netpoll_backend::epoll);
      f();
    });
  }
};

std::string backend_name(const ::testing::TestParamInfo<backend>& info) {
  return info.param == backend::uring ? "uring" : "epoll";
}

INSTANTIATE_TEST_SUITE_P(backends, net_test, ::testing::Values(backend::uring, backend::epoll),
                         backend_name);

// ---- Echo --------------------------------------------------------------------

TEST_P(net_test, echo_many_concurrent_connections_tcp4) {
  const int conns = slow() ? 50 : 100, trips = slow() ? 100 : 200;
  run([&] { echo_many("tcp", "127.0.0.1:0", conns, trips); });
}

TEST_P(net_test, echo_tcp6) {
  if (!ipv6_loopback_available()) GTEST_SKIP() << "no IPv6 loopback ([::1]) on this host";
  run([] {
    {
      listener ln = urge::net::listen("tcp6", "[::1]:0");
      EXPECT_EQ(ln.address(), "[::1]:" + std::to_string(ln.port()));
    }
    echo_many("tcp", "[::1]:0", 10, 20);
  });
}

TEST_P(net_test, echo_unix_path) {
  char dir[] = "/tmp/urge-net-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/echo.sock";
  run([&] {
    {
      listener ln = urge::net::listen("unix", path);
      EXPECT_EQ(ln.address(), path);
      EXPECT_EQ(ln.port(), 0);
      conn c = urge::net::dial("unix", path);
      conn s = ln.accept();
      EXPECT_EQ(c.remote_address(), path);
      c.write("ping");
      std::byte buf[4];
      ASSERT_TRUE(read_full(s, buf));
      EXPECT_EQ(str(buf), "ping");
    }
    echo_many("unix", path, 10, 40);
  });
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0) << "closing the listener removes the socket file";
  ::rmdir(dir);
}

// The same abstract name in both backends' runs: each run's listeners must
// have released it when they were closed.
TEST_P(net_test, echo_unix_abstract) {
  const std::string name = "@urge-net-test-" + std::to_string(::getpid());
  run([&] {
    {
      listener ln = urge::net::listen("unix", name);
      EXPECT_EQ(ln.address(), name);
    }
    echo_many("unix", name, 10, 40);
  });
}

// After a read that emptied the socket, io_uring waits for data before the
// next read's first attempt ("Reading first or waiting first" in
// netpoll.cpp): data that is already there by then must still come back at
// once. Over loopback a write's bytes are in the peer's queue when it returns.
TEST_P(net_test, read_after_a_draining_read_returns_data_already_there) {
  const std::string name = "@urge-net-drain-" + std::to_string(::getpid());
  run([&] {
    listener tcp = urge::net::listen("tcp", "127.0.0.1:0");
    listener unx = urge::net::listen("unix", name);
    std::pair<conn, conn> pairs[2] = {tcp_pair(tcp), {urge::net::dial("unix", name), unx.accept()}};
    for (auto& [c, s] : pairs) {
      std::byte b[16];
      for (int i = 0; i < 20; ++i) {
        const std::string msg = "m" + std::to_string(i);
        c.write(msg);
        s.set_read_deadline(clk::now() + 10s);  // a lost wake-up fails instead of hanging
        const std::size_t n = s.read(b);
        ASSERT_EQ(str(std::span(b, n)), msg);
      }
    }
  });
}

// One P, two goroutines that compute without a call, and a reader parked on
// the same P: a byte written just before the hogs take the P reaches the
// reader within a few milliseconds, though the P schedules only once a
// quantum. With io_uring sysmon has the P submit its queued requests and read
// its completions; with epoll sysmon polls every millisecond while a
// goroutine computes; either way what the network readied runs before a
// hog's next turn ("Busy Ps" in runtime/netpoll.cpp). Before: 44-120 ms with
// io_uring, 33-42 ms with epoll.
TEST_P(net_test, io_beside_cpu_hogs_is_not_held_for_their_quanta) {
  std::vector<double> took;
  run(
      [&] {
        listener ln = urge::net::listen("tcp", "127.0.0.1:0");
        auto [c, s] = tcp_pair(ln);
        for (int round = 0; round < 5; ++round) {
          urge::chan<clk::duration> got;
          clk::time_point t0;
          urge::go([&s, &t0, got]() mutable {
            std::byte b[1];
            s.read(b);
            got.send(clk::now() - t0);
          });
          wait_io_parked(1);
          std::atomic<bool> stop{false};
          urge::wait_group hogs;
          for (int h = 0; h < 2; ++h) {
            hogs.add(1);
            urge::go([&stop, &hogs] {
              while (!stop.load(std::memory_order_relaxed)) {
              }
              hogs.done();
            });
          }
          t0 = clk::now();
          c.write(bytes("x"));
          took.push_back(ms(*got.recv()));
          stop.store(true, std::memory_order_relaxed);
          hogs.wait();
        }
      },
      1);
  ASSERT_EQ(took.size(), 5u);
  std::sort(took.begin(), took.end());
  const double median = took[2];
  const double bound = ms(tolerance(20ms));
  EXPECT_LT(median, bound) << "write to read, ms, sorted: " << took[0] << " " << took[1] << " "
                           << took[2] << " " << took[3] << " " << took[4];
}

TEST_P(net_test, addresses_and_nodelay) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    ASSERT_NE(ln.port(), 0);
    EXPECT_EQ(ln.address(), "127.0.0.1:" + std::to_string(ln.port()));
    auto [c, s] = tcp_pair(ln);
    EXPECT_EQ(c.remote_address(), ln.address());
    EXPECT_EQ(s.local_address(), ln.address());
    EXPECT_EQ(c.local_address(), s.remote_address());
    for (conn* x : {&c, &s}) {
      int v = 0;
      socklen_t len = sizeof v;
      ASSERT_EQ(getsockopt(x->native_handle(), IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
      EXPECT_NE(v, 0) << "TCP_NODELAY is on by default, as in Go";
    }
  });
}

TEST_P(net_test, dial_by_host_name) {
  run([] {
    listener ln = urge::net::listen("tcp4", "127.0.0.1:0");
    urge::wait_group wg;
    serve_echo(ln, 1, wg);
    // "localhost" may resolve to ::1 first, which refuses: dial tries the next.
    conn c = urge::net::dial("tcp", "localhost:" + std::to_string(ln.port()));
    round_trip(c, "by name");
    c.close();
    wg.wait();
  });
}

// ---- Deadlines ---------------------------------------------------------------

TEST_P(net_test, read_deadline_in_the_past_fails_at_once) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    s.write("data waiting");  // even with data available, a passed deadline wins (as Go)
    c.set_read_deadline(clk::now() - 1s);
    std::byte buf[64];
    auto t0 = clk::now();
    expect_error([&] { c.read(buf); }, std::make_error_code(std::errc::timed_out), "read");
    std::error_code ec;
    EXPECT_EQ(c.read(buf, ec), 0u);
    EXPECT_EQ(ec, std::errc::timed_out);
    EXPECT_LT(clk::now() - t0, tolerance(100ms));
  });
}

TEST_P(net_test, blocked_read_times_out_at_its_deadline) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    std::byte buf[64];
    auto t0 = clk::now();
    c.set_read_deadline(t0 + 50ms);
    std::error_code ec;
    EXPECT_EQ(c.read(buf, ec), 0u);
    auto took = clk::now() - t0;
    EXPECT_EQ(ec, std::errc::timed_out);
    EXPECT_GE(took, 50ms);
    EXPECT_LT(took, tolerance(500ms)) << ms(took) << " ms";
  });
}

TEST_P(net_test, deadline_extended_while_blocked) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    const auto t0 = clk::now();
    c.set_read_deadline(t0 + 100ms);
    urge::wait_group wg;
    spawn(wg, [&c, t0] {
      std::byte buf[64];
      std::size_t n = c.read(buf);  // blocks past the first deadline
      EXPECT_EQ(str(std::span(buf, n)), "late");
      EXPECT_GE(clk::now() - t0, 150ms);
    });
    wait_io_parked(1);
    c.set_read_deadline(clk::now() + 60s);  // while the read waits
    urge::sleep(t0 + 150ms - clk::now());   // past the first deadline: time is the subject
    s.write("late");
    wg.wait();
  });
}

TEST_P(net_test, later_deadline_makes_the_conn_usable_again) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    std::byte buf[64];
    c.set_read_deadline(clk::now() + 20ms);
    expect_error([&] { c.read(buf); }, std::make_error_code(std::errc::timed_out), "read");
    c.set_read_deadline(clk::now() + 60s);
    s.write("again");
    EXPECT_EQ(str(std::span(buf, c.read(buf))), "again");
    c.set_deadline(clk::now() - 1s);
    expect_error([&] { c.write("x"); }, std::make_error_code(std::errc::timed_out), "write");
    c.set_deadline({});  // none
    s.write("and again");
    EXPECT_EQ(str(std::span(buf, c.read(buf))), "and again");
    round_trip(c, "");  // a zero-byte write and read
  });
}

TEST_P(net_test, write_deadline_with_a_peer_that_does_not_read) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    shrink_send_buffer(c);
    std::vector<std::byte> big(16 << 20, std::byte{'w'});
    auto t0 = clk::now();
    c.set_write_deadline(t0 + 100ms);
    std::error_code ec;
    std::size_t n = c.write(big, ec);  // s reads nothing: the buffers fill, then the write waits
    auto took = clk::now() - t0;
    EXPECT_EQ(ec, std::errc::timed_out);
    EXPECT_LT(n, big.size());
    EXPECT_GE(took, 100ms);
    EXPECT_LT(took, tolerance(1s)) << ms(took) << " ms";

    // Usable again: with no deadline and a reader draining, a write completes.
    c.set_write_deadline({});
    urge::wait_group wg;
    std::size_t drained = 0;
    spawn(wg, [&] { drained = read_all(s).size(); });
    c.write(std::span(big).first(1 << 20));
    c.close_write();
    wg.wait();
    EXPECT_EQ(drained, n + (1 << 20));
  });
}

TEST_P(net_test, dial_timeout) {
  // A listener whose accept queue is full drops SYNs (Linux with
  // tcp_abort_on_overflow=0), so a dial to it waits until its timeout. Built
  // with the raw socket API: urge's listen always asks for SOMAXCONN.
  int raw = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(raw, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  ASSERT_EQ(::bind(raw, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(raw, 0), 0);  // room for one pending connection
  ASSERT_EQ(::getsockname(raw, reinterpret_cast<sockaddr*>(&a), &alen), 0);
  const std::string full = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  run([&] {
    // The success path of the timeout variant.
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    urge::wait_group wg;
    serve_echo(ln, 1, wg);
    {
      conn c = urge::net::dial("tcp", ln.address(), 5s);
      round_trip(c, "timely");
      // The dial's deadline is cleared once connected.
      c.set_read_deadline({});
      round_trip(c, "still");
    }
    wg.wait();

    // Fill the backlog, then time out.
    std::vector<conn> queued;
    bool timed_out = false;
    for (int i = 0; i < 8 && !timed_out; ++i) {
      auto t0 = clk::now();
      try {
        queued.push_back(urge::net::dial("tcp", full, 100ms));
      } catch (const std::system_error& e) {
        auto took = clk::now() - t0;
        EXPECT_EQ(e.code(), std::errc::timed_out) << e.what();
        EXPECT_GE(took, 100ms);
        EXPECT_LT(took, tolerance(1s)) << ms(took) << " ms";
        EXPECT_NE(std::string(e.what()).find(full), std::string::npos) << e.what();
        timed_out = true;
      }
    }
    EXPECT_TRUE(timed_out) << "no dial timed out against a full accept queue";
    EXPECT_GE(queued.size(), 1u);
  });
  ::close(raw);
}

// ---- End of stream, half-close, close -------------------------------------------

TEST_P(net_test, eof_and_half_close) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    urge::wait_group wg;
    spawn(wg, [&s] {
      EXPECT_EQ(read_all(s), "question");  // ends at the peer's close_write
      s.write("answer");                   // this side may still write
      s.close();
    });
    c.write("question");
    c.close_write();
    EXPECT_EQ(read_all(c), "answer");  // then end of stream: read returns 0
    std::byte b[8];
    EXPECT_EQ(c.read(b), 0u) << "end of stream stays end of stream";
    expect_error([&] { c.write("x"); }, std::make_error_code(std::errc::broken_pipe),
                 "write after close_write");
    wg.wait();
  });
}

TEST_P(net_test, close_wakes_blocked_reader_and_writer) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    shrink_send_buffer(c);
    urge::wait_group wg;
    spawn(wg, [&c] {
      std::byte buf[64];
      std::error_code ec;
      EXPECT_EQ(c.read(buf, ec), 0u);
      EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
      EXPECT_EQ(ec.message(), "use of closed network connection");
    });
    spawn(wg, [&c] {
      std::vector<std::byte> big(16 << 20);
      std::error_code ec;
      EXPECT_LT(c.write(big, ec), big.size());  // s never reads
      EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
    });
    wait_io_parked(2);
    c.close();
    wg.wait();
    EXPECT_GT(read_all(s).size(), 0u);  // what was written, then end of stream
  });
}

TEST_P(net_test, close_wakes_blocked_accept) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    urge::wait_group wg;
    spawn(wg, [&ln] {
      std::error_code ec;
      conn c = ln.accept(ec);
      EXPECT_FALSE(c);
      EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
    });
    wait_io_parked(1);
    ln.close();
    wg.wait();
    expect_error([&] { ln.accept(); }, urge::net::closed_error(), "accept after close");
  });
}

TEST_P(net_test, close_twice_and_destroy_are_harmless) {
  char dir[] = "/tmp/urge-net-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/twice.sock";
  run([&] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    c.close();
    c.close();
    EXPECT_FALSE(c);
    EXPECT_EQ(c.native_handle(), -1);
    std::byte buf[8];
    std::error_code ec;
    EXPECT_EQ(c.read(buf, ec), 0u);
    EXPECT_EQ(ec, urge::net::closed_error());
    EXPECT_EQ(c.write(bytes("x"), ec), 0u);
    EXPECT_EQ(ec, urge::net::closed_error());
    expect_error([&] { c.read(buf); }, urge::net::closed_error(), "read after close");
    expect_error([&] { c.set_deadline(clk::now()); }, urge::net::closed_error(), "set_deadline");
    EXPECT_EQ(s.read(buf), 0u) << "the peer sees end of stream";
    s.close();  // and s is destroyed closed at the end of the scope

    listener u = urge::net::listen("unix", path);
    u.close();
    u.close();
    struct stat st;
    EXPECT_NE(::stat(path.c_str(), &st), 0);
    ln.close();
    ln.close();
    EXPECT_FALSE(ln);
    // Moving over a live conn closes it.
    listener ln2 = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c2, s2] = tcp_pair(ln2);
    auto [c3, s3] = tcp_pair(ln2);
    c2 = std::move(c3);
    EXPECT_FALSE(c3);
    EXPECT_EQ(s2.read(buf), 0u) << "the conn moved over was closed";
    round_trip(c2, "");
  });
  ::rmdir(dir);
}

// close() while several goroutines read and write the same conn (a peer
// echoes, so every side keeps making progress until the close), and two
// goroutines close it at once. Every operation either completes or fails with
// closed_error(): none sees an error from a descriptor closed under it.
TEST_P(net_test, close_races_with_reads_and_writes) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    const int rounds = slow() ? 15 : 60;
    for (int round = 0; round < rounds; ++round) {
      auto [c, s] = tcp_pair(ln);
      urge::wait_group peer, wg;
      spawn(peer, [&s] {
        std::byte buf[4096];
        std::error_code ec;
        while (std::size_t n = s.read(buf, ec)) {
          s.write(std::span(buf, n), ec);
          if (ec) break;
        }
      });
      // The closers start once traffic flows: after `start` operations.
      const int start = 20 + (round % 7) * 15;
      std::atomic<int> progress{0};
      urge::semaphore go_close(0);
      auto made_progress = [&progress, &go_close, start] {
        if (progress.fetch_add(1) + 1 == start) go_close.release(2);
      };
      for (int k = 0; k < 3; ++k) {
        spawn(wg, [&c, &made_progress] {
          std::byte buf[48];
          std::error_code ec;
          while (c.read(buf, ec) > 0) made_progress();
          // End of stream is impossible: the peer closes only after our close.
          EXPECT_EQ(ec, urge::net::closed_error()) << "read: " << ec.message();
        });
        spawn(wg, [&c, &made_progress, k] {
          std::byte msg[64];
          std::memset(msg, 'a' + k, sizeof msg);
          std::error_code ec;
          while (c.write(msg, ec) == sizeof msg) made_progress();
          EXPECT_EQ(ec, urge::net::closed_error()) << "write: " << ec.message();
        });
      }
      for (int k = 0; k < 2; ++k) {
        spawn(wg, [&c, &go_close] {
          go_close.acquire();
          c.close();
          EXPECT_FALSE(c);
          EXPECT_EQ(c.native_handle(), -1);
        });
      }
      wg.wait();
      peer.wait();  // the peer read end of stream: our socket is closed
    }
  });
}

// accept() on several goroutines while connections arrive and two
// goroutines close the listener: every accept returns a connection or
// closed_error(), and the address is free once close returns.
TEST_P(net_test, close_races_with_accepts) {
  run([] {
    std::string addr;
    const int rounds = slow() ? 10 : 40;
    for (int round = 0; round < rounds; ++round) {
      listener ln = urge::net::listen("tcp", addr.empty() ? "127.0.0.1:0" : addr);
      addr = ln.address();
      urge::wait_group wg, dialers;
      // The closers start after a few accepts.
      const int start = 1 + round % 5;
      std::atomic<int> accepted{0};
      urge::semaphore go_close(0);
      for (int k = 0; k < 3; ++k) {
        spawn(wg, [&ln, &accepted, &go_close, start] {
          for (;;) {
            std::error_code ec;
            conn c = ln.accept(ec);
            if (ec) {
              EXPECT_EQ(ec, urge::net::closed_error()) << "accept: " << ec.message();
              EXPECT_FALSE(c);
              return;
            }
            if (accepted.fetch_add(1) + 1 == start) go_close.release(2);
          }
        });
      }
      std::atomic<bool> stop{false};
      spawn(dialers, [&addr, &stop] {
        while (!stop.load()) {
          try {
            conn c = urge::net::dial("tcp", addr);
          } catch (const std::system_error&) {
            return;  // refused once the listener is gone
          }
        }
      });
      for (int k = 0; k < 2; ++k) {
        spawn(wg, [&ln, &go_close] {
          go_close.acquire();
          ln.close();
          EXPECT_FALSE(ln);
        });
      }
      wg.wait();
      stop = true;
      dialers.wait();
    }
  });
}

// After close() returns, the descriptor number is free and the kernel hands
// it to the next open. Operations that were blocked on the conn when it
// closed, and ones started later, must fail without touching that number:
// here it becomes one end of a socketpair, which must neither receive the
// late writes nor lose its data to the late reads.
TEST_P(net_test, late_operations_never_touch_a_recycled_descriptor) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    shrink_send_buffer(c);
    const int old_fd = c.native_handle();
    ASSERT_GE(old_fd, 0);
    urge::wait_group wg;
    urge::semaphore recycled(0);
    constexpr int kEach = 3;
    for (int k = 0; k < kEach; ++k) {
      spawn(wg, [&c, &recycled] {
        std::byte buf[64];
        std::error_code ec;
        EXPECT_EQ(c.read(buf, ec), 0u);  // the peer never writes
        EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
        recycled.acquire();
        for (int i = 0; i < 3; ++i) {
          EXPECT_EQ(c.read(buf, ec), 0u);
          EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
        }
      });
      spawn(wg, [&c, &recycled] {
        std::vector<std::byte> big(4 << 20, std::byte{'W'});
        std::error_code ec;
        EXPECT_LT(c.write(big, ec), big.size());  // the peer does not read yet
        EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
        recycled.acquire();
        for (int i = 0; i < 3; ++i) {
          EXPECT_EQ(c.write(bytes("late"), ec), 0u);
          EXPECT_EQ(ec, urge::net::closed_error()) << ec.message();
        }
      });
    }
    wait_io_parked(2);  // a reader and a writer in the poller (the others queue behind them)
    c.close();
    // Open until the number comes back; keep every pair open meanwhile.
    std::vector<int> opened;
    int victim = -1, victim_peer = -1;
    for (int i = 0; i < 64 && victim < 0; ++i) {
      int sv[2];
      ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
      opened.insert(opened.end(), {sv[0], sv[1]});
      if (sv[0] == old_fd || sv[1] == old_fd) {
        victim = old_fd;
        victim_peer = sv[0] == old_fd ? sv[1] : sv[0];
      }
    }
    EXPECT_GE(victim, 0) << "descriptor " << old_fd << " still open after close() returned";
    if (victim >= 0) {
      ASSERT_EQ(::send(victim_peer, "mine", 4, MSG_NOSIGNAL), 4);
    }
    recycled.release(2 * kEach);
    std::byte buf[64];
    std::error_code ec;
    EXPECT_EQ(c.read(buf, ec), 0u);
    EXPECT_EQ(ec, urge::net::closed_error());
    EXPECT_EQ(c.write(bytes("late"), ec), 0u);
    EXPECT_EQ(ec, urge::net::closed_error());
    expect_error([&] { c.close_write(); }, urge::net::closed_error(), "close_write after close");
    expect_error([&] { (void)c.local_address(); }, urge::net::closed_error(), "local_address");
    expect_error([&] { c.set_read_deadline(clk::now()); }, urge::net::closed_error(),
                 "set_read_deadline");
    EXPECT_EQ(c.native_handle(), -1);
    wg.wait();
    if (victim >= 0) {
      char got[16];
      EXPECT_EQ(::recv(victim_peer, got, sizeof got, MSG_DONTWAIT), -1)
          << "a late write reached the recycled descriptor";
      EXPECT_EQ(::recv(victim, got, sizeof got, MSG_DONTWAIT), 4)
          << "a late read took data from the recycled descriptor";
      int type = 0;
      socklen_t len = sizeof type;
      EXPECT_EQ(::getsockopt(victim, SOL_SOCKET, SO_DOMAIN, &type, &len), 0);
      EXPECT_EQ(type, AF_UNIX);
    }
    for (int fd : opened) ::close(fd);
    // The peer gets what was written before the close, then end of stream.
    const std::string got = read_all(s);
    EXPECT_EQ(got.find_first_not_of('W'), std::string::npos);
  });
}

TEST_P(net_test, move_only_conn_passed_to_go) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    urge::wait_group wg;
    std::atomic<int> served{0};
    spawn(wg, [&] {
      for (int i = 0; i < 3; ++i) {
        urge::go(
            [&wg, &served](conn c, int k) {
              std::string got = read_all(c);
              c.write(got + "#" + std::to_string(k));
              served.fetch_add(1);
              wg.done();
            },
            (wg.add(1), ln.accept()), i);
      }
    });
    for (int i = 0; i < 3; ++i) {
      conn c = urge::net::dial("tcp", ln.address());
      c.write("hi");
      c.close_write();
      EXPECT_EQ(read_all(c), "hi#" + std::to_string(i));
    }
    wg.wait();
    EXPECT_EQ(served.load(), 3);
  });
}

// ---- Many idle connections ------------------------------------------------------

TEST_P(net_test, thousands_of_idle_connections_park) {
  const long limit = raise_nofile();
  const int pairs = static_cast<int>(std::min<long>(2000, (limit - 64) / 2));
  ASSERT_GE(pairs, 200) << "RLIMIT_NOFILE " << limit << " leaves room for too few connections";
  run([&] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    urge::wait_group started, done;
    started.add(2 * pairs);
    spawn(done, [&] {
      for (int i = 0; i < pairs; ++i) {
        spawn(
            done,
            [&started](conn s) {
              started.done();
              std::byte b[1];
              ASSERT_EQ(s.read(b), 1u);  // parks until released
              s.write(std::span(b));
              EXPECT_EQ(s.read(b), 0u);
            },
            ln.accept());
      }
    });
    std::vector<conn> clients;
    clients.reserve(static_cast<std::size_t>(pairs));
    for (int i = 0; i < pairs; ++i) clients.push_back(urge::net::dial("tcp", ln.address()));
    urge::wait_group echoed;
    for (int i = 0; i < pairs; ++i) {
      spawn(echoed, [&started, &c = clients[static_cast<std::size_t>(i)], i] {
        started.done();
        std::byte b[1];
        ASSERT_EQ(c.read(b), 1u);  // parks until its server echoes
        EXPECT_EQ(b[0], static_cast<std::byte>(i));
      });
    }
    started.wait();
    wait_io_parked(2 * pairs);
    EXPECT_GE(urge::num_goroutines(), static_cast<std::size_t>(2 * pairs + 1));
    // Release: one byte per connection goes round; then end of stream.
    for (int i = 0; i < pairs; ++i) {
      std::byte b[1] = {static_cast<std::byte>(i)};
      clients[static_cast<std::size_t>(i)].write(b);
    }
    echoed.wait();
    clients.clear();  // the servers read end of stream and return
    done.wait();
  });
}

// ---- Faults ------------------------------------------------------------------

TEST_P(net_test, peer_reset_fails_only_that_connection) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c1, s1] = tcp_pair(ln);
    auto [c2, s2] = tcp_pair(ln);
    urge::wait_group wg;
    spawn(wg, [&s1] {
      std::byte buf[16];
      std::error_code ec;
      EXPECT_EQ(s1.read(buf, ec), 0u);
      EXPECT_EQ(ec, std::errc::connection_reset) << ec.message();
    });
    wait_io_parked(1);
    linger lg{1, 0};  // close with RST
    ASSERT_EQ(setsockopt(c1.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    c1.close();
    wg.wait();
    // The other connection is untouched.
    urge::wait_group echo;
    spawn(echo, echo_server, std::move(s2));
    round_trip(c2, "still here");
    c2.close();
    echo.wait();
  });
}

TEST_P(net_test, write_to_closed_peer_is_an_error_not_sigpipe) {
  // SIGPIPE at its default disposition would kill this test program.
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGPIPE, nullptr, &old), 0);
  ASSERT_EQ(old.sa_handler, SIG_DFL);
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    auto [c, s] = tcp_pair(ln);
    c.close();
    std::byte b[1];
    EXPECT_EQ(s.read(b), 0u);
    // The first write may be accepted (the peer answers it with RST); later
    // ones fail.
    std::error_code ec;
    const auto give_up = clk::now() + 10s;
    while (!ec && clk::now() < give_up) {
      s.write(bytes("into the void"), ec);
      if (!ec) urge::yield();
    }
    EXPECT_TRUE(ec == std::errc::broken_pipe || ec == std::errc::connection_reset) << ec.message();
  });
}

TEST_P(net_test, malformed_addresses_name_the_input) {
  run([] {
    struct bad {
      const char* network;
      const char* address;
      const char* named;  // what the message must contain
    };
    const bad cases[] = {
        {"tcp", "127.0.0.1", "127.0.0.1"},          // no port
        {"tcp", "[::1:80", "[::1:80"},              // unclosed bracket
        {"tcp", "1.2.3.4:99999", "1.2.3.4:99999"},  // port out of range
        {"tcp", "::1:80", "::1:80"},                // IPv6 without brackets
        {"tcp", "127.0.0.1:http", "127.0.0.1:http"},
        {"udp", "127.0.0.1:0", "udp"},  // unknown network
        {"", "127.0.0.1:0", "network \"\""},
    };
    for (const bad& b : cases) {
      for (int dial = 0; dial < 2; ++dial) {
        try {
          if (dial) {
            urge::net::dial(b.network, b.address);
          } else {
            urge::net::listen(b.network, b.address);
          }
          ADD_FAILURE() << (dial ? "dial" : "listen") << " " << b.network << " " << b.address
                        << " succeeded";
        } catch (const std::system_error& e) {
          EXPECT_EQ(e.code(), std::errc::invalid_argument) << e.what();
          EXPECT_NE(std::string(e.what()).find(b.named), std::string::npos)
              << "\"" << e.what() << "\" does not name " << b.named;
        }
      }
    }
  });
}

TEST_P(net_test, dial_closed_port_is_refused) {
  run([] {
    std::string addr;
    {
      listener ln = urge::net::listen("tcp", "127.0.0.1:0");
      addr = ln.address();
    }  // closed: nothing listens on the port now
    try {
      urge::net::dial("tcp", addr);
      ADD_FAILURE() << "dial to a closed port succeeded";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::connection_refused) << e.what();
      EXPECT_NE(std::string(e.what()).find(addr), std::string::npos) << e.what();
    }
  });
}

// As Go's Close: once close returns the address is free, even for a listener
// that has accepted (with io_uring, its multishot accept is still being
// cancelled in the kernel at that point).
TEST_P(net_test, closed_listener_frees_its_address) {
  run([] {
    std::string addr;
    for (int i = 0; i < 3; ++i) {
      listener ln = urge::net::listen("tcp", addr.empty() ? "127.0.0.1:0" : addr);
      addr = ln.address();
      urge::wait_group wg;
      serve_echo(ln, 1, wg);
      conn c = urge::net::dial("tcp", addr);
      round_trip(c, "once");
      c.close();
      wg.wait();
      ln.close();  // the next listen on addr must not find it in use
    }
  });
}

TEST_P(net_test, listen_on_a_used_address_fails) {
  run([] {
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    expect_error([&] { urge::net::listen("tcp", ln.address()); },
                 std::make_error_code(std::errc::address_in_use), "second listen");
  });
}

// In a child process (the descriptor limit is process-wide): with the table
// full, accept reports EMFILE and the listener keeps the connection queued;
// once descriptors are free the same listener accepts it.
TEST_P(net_test, accept_reports_emfile_and_recovers) {
  const bool uring = GetParam() == backend::uring;
  std::fflush(nullptr);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto check = [](bool ok, const char* what) {
      if (!ok) {
        std::fprintf(stderr, "child: check failed: %s\n", what);
        std::fflush(stderr);
        ::_exit(1);
      }
    };
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = 256;
    check(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
    ::setenv("URGE_DEBUG", uring ? "netpoll=uring" : "netpoll=epoll", 1);
    int status = 1;
    try {
      status = urge::run(procs2(), [&]() -> int {
        listener ln = urge::net::listen("tcp", "127.0.0.1:0");
        conn c = urge::net::dial("tcp", ln.address());  // queued, not yet accepted
        std::vector<int> fillers;
        for (;;) {
          int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
          if (fd < 0) {
            check(errno == EMFILE, "filling the table ends with EMFILE");
            break;
          }
          fillers.push_back(fd);
        }
        std::error_code ec;
        conn s = ln.accept(ec);
        check(!s, "no conn while the table is full");
        check(ec == std::errc::too_many_files_open, "accept reports EMFILE");
        try {
          ln.accept();
          check(false, "accept throws while the table is full");
        } catch (const std::system_error& e) {
          check(e.code() == std::errc::too_many_files_open, "accept throws EMFILE");
        }
        for (int i = 0; i < 4; ++i) {
          ::close(fillers.back());
          fillers.pop_back();
        }
        s = ln.accept(ec);
        check(!ec && s, "the same listener accepts once descriptors are free");
        c.write("after EMFILE");
        c.close_write();
        check(read_all(s) == "after EMFILE", "the queued connection was kept");
        for (int fd : fillers) ::close(fd);
        return 0;
      });
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    std::fflush(stderr);
    ::_exit(status);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st)) << "child killed by signal " << WTERMSIG(st);
  EXPECT_EQ(WEXITSTATUS(st), 0) << "see the child's message above";
}

// ---- Backend selection -----------------------------------------------------------

TEST(net_backend, falls_back_to_epoll_when_io_uring_setup_fails) {
  ::unsetenv("URGE_DEBUG");
  urge::runtime::netpoll_simulate_probe_failure(true);
  struct restore {
    ~restore() { urge::runtime::netpoll_simulate_probe_failure(false); }
  } r;
  urge::run(procs2(), [] {
    EXPECT_EQ(urge::runtime::netpoll_kind(), netpoll_backend::epoll);
    EXPECT_STREQ(urge::runtime::netpoll_name(), "epoll");
    listener ln = urge::net::listen("tcp", "127.0.0.1:0");
    urge::wait_group wg;
    serve_echo(ln, 1, wg);
    conn c = urge::net::dial("tcp", ln.address());
    round_trip(c, "over epoll");
    c.close();
    wg.wait();
  });
  {
    scoped_env env("URGE_DEBUG", "netpoll=uring");
    try {
      urge::run(procs2(), [] { ADD_FAILURE() << "ran without io_uring"; });
      ADD_FAILURE() << "forcing an unavailable io_uring did not throw";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("io_uring"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(urge::runtime::netpoll_kind(), netpoll_backend::none) << "only valid inside run";
}

TEST(net_backend, default_prefers_io_uring_and_epoll_can_be_forced) {
  ::unsetenv("URGE_DEBUG");
  const bool have_uring = !uring_unavailable();
  urge::run(procs2(), [&] {
    EXPECT_EQ(urge::runtime::netpoll_kind(),
              have_uring ? netpoll_backend::uring : netpoll_backend::epoll);
  });
  scoped_env env("URGE_DEBUG", "netpoll=epoll");
  urge::run(procs2(), [] { EXPECT_EQ(urge::runtime::netpoll_kind(), netpoll_backend::epoll); });
}

TEST(net_backend, net_outside_run_is_a_logic_error) {
  EXPECT_THROW(urge::net::listen("tcp", "127.0.0.1:0"), std::logic_error);
}

}  // namespace
