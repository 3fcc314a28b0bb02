// urge::net: sockets on top of the network poller (runtime/netpoll.hpp).
#include "urge/net.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "platform/clock.hpp"
#include "runtime/netpoll.hpp"
#include "urge/runtime.hpp"

namespace urge::net {

const std::error_category& category() {
  return runtime::net_category();
}

namespace {

using runtime::poll_desc;

[[noreturn]] void throw_input(std::string_view what, std::string_view network,
                              std::string_view address) {
  throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                          "urge::net: " + std::string(what) + " (network \"" +
                              std::string(network) + "\", address \"" + std::string(address) +
                              "\")");
}

[[noreturn]] void throw_errno(int e, const std::string& what) {
  throw std::system_error(e, std::generic_category(), "urge::net: " + what);
}

enum class family { any, v4, v6, unix_stream };

family parse_network(std::string_view network, std::string_view address) {
  if (network == "tcp") return family::any;
  if (network == "tcp4") return family::v4;
  if (network == "tcp6") return family::v6;
  if (network == "unix") return family::unix_stream;
  throw_input("unknown network", network, address);
}

struct endpoint {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int af() const { return ss.ss_family; }
};

// Splits "host:port" / "[v6]:port" / ":port".
void split_host_port(std::string_view network, std::string_view address, std::string& host,
                     std::uint16_t& port) {
  std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) throw_input("missing port in address", network, address);
  std::string_view h = address.substr(0, colon);
  std::string_view p = address.substr(colon + 1);
  if (!h.empty() && h.front() == '[') {
    if (h.back() != ']') throw_input("missing ']' in address", network, address);
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string_view::npos) {
    throw_input("too many colons in address (bracket IPv6 hosts)", network, address);
  }
  if (p.empty()) throw_input("missing port in address", network, address);
  unsigned long v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') throw_input("invalid port", network, address);
    v = v * 10 + static_cast<unsigned long>(c - '0');
    if (v > 65535) throw_input("invalid port", network, address);
  }
  host.assign(h);
  port = static_cast<std::uint16_t>(v);
}

bool literal(const std::string& host, family fam, std::uint16_t port, endpoint& ep) {
  if (fam != family::v6) {
    sockaddr_in a{};
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) == 1) {
      a.sin_family = AF_INET;
      a.sin_port = htons(port);
      std::memcpy(&ep.ss, &a, sizeof a);
      ep.len = sizeof a;
      return true;
    }
  }
  if (fam != family::v4) {
    sockaddr_in6 a{};
    if (inet_pton(AF_INET6, host.c_str(), &a.sin6_addr) == 1) {
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(port);
      std::memcpy(&ep.ss, &a, sizeof a);
      ep.len = sizeof a;
      return true;
    }
  }
  return false;
}

// Resolves network/address to endpoints (literals directly, names through
// getaddrinfo in a blocking call so that the P keeps running goroutines).
std::vector<endpoint> resolve(std::string_view network, std::string_view address, bool passive) {
  family fam = parse_network(network, address);
  std::vector<endpoint> out;
  if (fam == family::unix_stream) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (address.empty() || address.size() >= sizeof a.sun_path) {
      throw_input("unix socket path empty or too long", network, address);
    }
    std::memcpy(a.sun_path, address.data(), address.size());
    if (a.sun_path[0] == '@') a.sun_path[0] = '\0';  // abstract namespace
    endpoint ep;
    std::memcpy(&ep.ss, &a, sizeof a);
    ep.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
    out.push_back(ep);
    return out;
  }
  std::string host;
  std::uint16_t port = 0;
  split_host_port(network, address, host, port);
  endpoint ep;
  if (host.empty()) {
    if (!passive)
      host = fam == family::v6 ? "::1" : "127.0.0.1";  // Go dials the local system
    else
      host = fam == family::v6 ? "::" : "0.0.0.0";
  }
  if (literal(host, fam, port, ep)) {
    out.push_back(ep);
    return out;
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = fam == family::v4 ? AF_INET : fam == family::v6 ? AF_INET6 : AF_UNSPEC;
  addrinfo* res = nullptr;
  int rc = urge::blocking([&] { return getaddrinfo(host.c_str(), nullptr, &hints, &res); });
  if (rc != 0) {
    throw std::system_error(std::make_error_code(std::errc::host_unreachable),
                            "urge::net: cannot resolve \"" + host + "\" (address \"" +
                                std::string(address) + "\"): " + gai_strerror(rc));
  }
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    endpoint e;
    std::memcpy(&e.ss, ai->ai_addr, ai->ai_addrlen);
    e.len = ai->ai_addrlen;
    if (e.af() == AF_INET) reinterpret_cast<sockaddr_in*>(&e.ss)->sin_port = htons(port);
    if (e.af() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&e.ss)->sin6_port = htons(port);
    out.push_back(e);
  }
  freeaddrinfo(res);
  if (out.empty()) throw_input("no addresses for host", network, address);
  return out;
}

std::string format(const sockaddr_storage& ss, socklen_t len) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a.sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    inet_ntop(AF_INET6, &a.sin6_addr, buf, sizeof buf);
    // Appended piecewise: GCC 12 warns (-Wrestrict, a false positive) on
    // "[" + std::string(buf) + ... in release builds.
    std::string s = "[";
    s += buf;
    s += "]:";
    s += std::to_string(ntohs(a.sin6_port));
    return s;
  }
  if (ss.ss_family == AF_UNIX) {
    const auto& a = reinterpret_cast<const sockaddr_un&>(ss);
    std::size_t n =
        len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    std::string path(a.sun_path, n);
    if (!path.empty() && path[0] == '\0') path[0] = '@';
    while (!path.empty() && path.back() == '\0') path.pop_back();
    return path;
  }
  return "?";
}

std::int64_t to_nanotime(std::chrono::steady_clock::time_point t) {
  if (t == std::chrono::steady_clock::time_point{}) return 0;
  // steady_clock and nanotime are both CLOCK_MONOTONIC.
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  return ns <= 0 ? 1 : ns;
}

poll_desc* open_pd(int fd) {
  std::error_code ec;  // on failure fd is still ours
  poll_desc* pd = runtime::pd_open(fd, ec);
  if (!pd) {
    ::close(fd);
    if (ec == std::errc::operation_not_permitted) {
      throw std::logic_error("urge::net used outside urge::run");
    }
    throw std::system_error(ec, "urge::net: registering a socket with the poller");
  }
  return pd;
}

// The socket, held open while f uses it (a close from another goroutine
// closes it only after f); f is not called once the descriptor is closed.
template <class F>
auto with_fd(poll_desc* pd, F&& f) {
  const int fd = pd ? runtime::pd_fd_acquire(pd) : -1;
  if (fd < 0) throw std::system_error(closed_error(), "urge::net");
  struct release {
    poll_desc* pd;
    ~release() { runtime::pd_fd_release(pd); }
  } r{pd};
  return f(fd);
}

}  // namespace

// ---- conn ------------------------------------------------------------------

conn& conn::operator=(conn&& o) noexcept {
  if (this != &o) {
    reset();
    pd_ = o.pd_;
    o.pd_ = nullptr;
  }
  return *this;
}

std::size_t conn::read(std::span<std::byte> buf, std::error_code& ec) noexcept {
  if (!pd_) {
    ec = closed_error();
    return 0;
  }
  if (buf.empty()) {
    ec.clear();
    return 0;
  }
  return runtime::pd_read(pd_, buf.data(), buf.size(), ec);
}

std::size_t conn::read(std::span<std::byte> buf) {
  std::error_code ec;
  std::size_t n = read(buf, ec);
  if (ec) throw std::system_error(ec, "urge::net: read");
  return n;
}

std::size_t conn::write(std::span<const std::byte> buf, std::error_code& ec) noexcept {
  if (!pd_) {
    ec = closed_error();
    return 0;
  }
  // One call: pd_write loops over partial writes itself, holding the write
  // side (pd_ must not be read again: close() from another goroutine clears it).
  return runtime::pd_write(pd_, buf.data(), buf.size(), ec);
}

std::size_t conn::write(std::span<const std::byte> buf) {
  std::error_code ec;
  std::size_t n = write(buf, ec);
  if (ec) throw std::system_error(ec, "urge::net: write");
  return n;
}

namespace {

void set_deadline_or_throw(poll_desc* pd, char mode, std::chrono::steady_clock::time_point t) {
  if (!pd || !runtime::pd_set_deadline(pd, mode, to_nanotime(t))) {
    throw std::system_error(closed_error(), "urge::net: set deadline");
  }
}

// native_handle: the number, or -1 when closed. Only a snapshot: the caller
// races with a close from another goroutine as it would with Go's Fd().
int snapshot_fd(poll_desc* pd) {
  const int fd = pd ? runtime::pd_fd_acquire(pd) : -1;
  if (fd >= 0) runtime::pd_fd_release(pd);
  return fd;
}

}  // namespace

void conn::set_deadline(std::chrono::steady_clock::time_point t) {
  set_deadline_or_throw(pd_, 'b', t);
}

void conn::set_read_deadline(std::chrono::steady_clock::time_point t) {
  set_deadline_or_throw(pd_, 'r', t);
}

void conn::set_write_deadline(std::chrono::steady_clock::time_point t) {
  set_deadline_or_throw(pd_, 'w', t);
}

void conn::close() noexcept {
  if (pd_) runtime::pd_close(pd_);
}

void conn::reset() noexcept {
  if (!pd_) return;
  runtime::pd_close(pd_);
  runtime::pd_release(pd_);
  pd_ = nullptr;
}

conn::operator bool() const {
  return pd_ && !runtime::pd_closed(pd_);
}

void conn::close_write() {
  with_fd(pd_, [](int fd) {
    if (::shutdown(fd, SHUT_WR) != 0) throw_errno(errno, "shutdown");
  });
}

std::string conn::local_address() const {
  return with_fd(pd_, [](int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    return format(ss, len);
  });
}

std::string conn::remote_address() const {
  return with_fd(pd_, [](int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    return format(ss, len);
  });
}

int conn::native_handle() const {
  return snapshot_fd(pd_);
}

// ---- listener ----------------------------------------------------------------

listener& listener::operator=(listener&& o) noexcept {
  if (this != &o) {
    reset();
    pd_ = o.pd_;
    unix_path_ = std::move(o.unix_path_);
    o.pd_ = nullptr;
  }
  return *this;
}

conn listener::accept(std::error_code& ec) noexcept {
  if (!pd_) {
    ec = closed_error();
    return conn();
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int fd = runtime::pd_accept(pd_, reinterpret_cast<sockaddr*>(&ss), &len, ec);
  if (fd < 0) return conn();
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  poll_desc* pd = runtime::pd_open(fd, ec);
  if (!pd) {
    ::close(fd);  // still ours when pd_open fails
    return conn();
  }
  return conn(pd);
}

conn listener::accept() {
  std::error_code ec;
  conn c = accept(ec);
  if (ec) throw std::system_error(ec, "urge::net: accept");
  return c;
}

std::uint16_t listener::port() const {
  return with_fd(pd_, [](int fd) -> std::uint16_t {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in&>(ss).sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6&>(ss).sin6_port);
    return 0;
  });
}

std::string listener::address() const {
  return with_fd(pd_, [](int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    return format(ss, len);
  });
}

// Only the close that closes the socket removes a unix socket's path: a
// second close() racing with the first must not touch unix_path_.
void listener::close() noexcept {
  if (!pd_ || !runtime::pd_close(pd_)) return;
  if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
}

void listener::reset() noexcept {
  if (!pd_) return;
  close();
  runtime::pd_release(pd_);
  pd_ = nullptr;
  unix_path_.clear();
}

listener::operator bool() const {
  return pd_ && !runtime::pd_closed(pd_);
}

int listener::native_handle() const {
  return snapshot_fd(pd_);
}

listener listen(std::string_view network, std::string_view address) {
  std::vector<endpoint> eps = resolve(network, address, true);
  const endpoint& ep = eps.front();
  int fd = ::socket(ep.af(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_errno(errno, "socket");
  if (ep.af() != AF_UNIX) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  }
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&ep.ss), ep.len) != 0) {
    int e = errno;
    ::close(fd);
    throw_errno(e, "listen " + std::string(network) + " " + std::string(address) + ": bind");
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    int e = errno;
    ::close(fd);
    throw_errno(e, "listen " + std::string(network) + " " + std::string(address));
  }
  listener l;
  l.pd_ = open_pd(fd);
  if (ep.af() == AF_UNIX && !address.empty() && address[0] != '@') l.unix_path_ = address;
  return l;
}

conn dial(std::string_view network, std::string_view address, std::chrono::nanoseconds timeout) {
  std::vector<endpoint> eps = resolve(network, address, false);
  std::error_code last;
  const auto deadline = timeout.count() > 0 ? std::chrono::steady_clock::now() + timeout
                                            : std::chrono::steady_clock::time_point{};
  for (const endpoint& ep : eps) {
    int fd = ::socket(ep.af(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw_errno(errno, "socket");
    if (ep.af() != AF_UNIX) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    conn c(open_pd(fd));
    if (deadline != std::chrono::steady_clock::time_point{}) c.set_deadline(deadline);
    runtime::pd_connect(c.pd_, reinterpret_cast<const sockaddr*>(&ep.ss), ep.len, last);
    if (!last) {
      if (deadline != std::chrono::steady_clock::time_point{}) {
        c.set_deadline(std::chrono::steady_clock::time_point{});
      }
      return c;
    }
  }
  throw std::system_error(last,
                          "urge::net: dial " + std::string(network) + " " + std::string(address));
}

conn dial(std::string_view network, std::string_view address) {
  return dial(network, address, std::chrono::nanoseconds{0});
}

}  // namespace urge::net
