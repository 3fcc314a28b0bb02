// urge/net.hpp: TCP and Unix stream sockets for goroutines (Go's net).
//
// Every operation parks the calling goroutine, never its thread, until the
// network poller (io_uring, or epoll where io_uring is unavailable) completes
// it. Errors are thrown as std::system_error; each operation also has an
// overload that reports through a std::error_code instead, as Asio's do.
//
//   auto ln = urge::net::listen("tcp", "127.0.0.1:0");
//   urge::go([&ln] {
//     for (;;) {
//       urge::go([](urge::net::conn c) {           // one goroutine per connection
//         std::byte buf[4096];
//         while (std::size_t n = c.read(buf)) c.write(std::span(buf, n));
//       }, ln.accept());
//     }
//   });
//   auto c = urge::net::dial("tcp", "127.0.0.1:" + std::to_string(ln.port()));
//
// Networks: "tcp" (IPv4 or IPv6), "tcp4", "tcp6" and "unix" (a path, or a
// name starting with '@' in the abstract namespace). Addresses: "host:port",
// "[v6 address]:port", ":port" (every local address, when listening). A host
// name is resolved with the system resolver, off the scheduler's threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

namespace urge::runtime {
struct poll_desc;
}

namespace urge::net {

// The error of an operation on a closed connection or listener:
// "use of closed network connection" (Go's net.ErrClosed). A passed deadline
// is std::errc::timed_out.
const std::error_category& category();
inline const std::error_code& closed_error() {
  static const std::error_code e(1, category());
  return e;
}

// A connection. Move-only; closes on destruction. One goroutine may read
// while another writes, as in Go; close() from any goroutine wakes both
// with closed_error().
class conn {
 public:
  conn() = default;
  conn(conn&& o) noexcept : pd_(o.pd_) { o.pd_ = nullptr; }
  conn& operator=(conn&& o) noexcept;
  ~conn() { reset(); }
  conn(const conn&) = delete;
  conn& operator=(const conn&) = delete;

  // Reads some bytes; 0 at end of stream.
  std::size_t read(std::span<std::byte> buf);
  std::size_t read(std::span<std::byte> buf, std::error_code& ec) noexcept;
  // Writes all of buf (or fails), as Go's Write.
  std::size_t write(std::span<const std::byte> buf);
  std::size_t write(std::span<const std::byte> buf, std::error_code& ec) noexcept;
  std::size_t write(std::string_view s) { return write(std::as_bytes(std::span(s))); }

  // Reads and writes after t fail with std::errc::timed_out, including ones
  // already waiting. A later deadline (or time_point{}, none) makes the
  // connection usable again.
  void set_deadline(std::chrono::steady_clock::time_point t);
  void set_read_deadline(std::chrono::steady_clock::time_point t);
  void set_write_deadline(std::chrono::steady_clock::time_point t);

  // Closes the connection; harmless when already closed. Operations in
  // progress on other goroutines fail with closed_error(), and so does any
  // started later: none of them touches the descriptor again, whatever the
  // kernel hands its number to next.
  void close() noexcept;
  // Half-close: the peer reads end of stream; this side may still read.
  void close_write();

  std::string local_address() const;  // "127.0.0.1:34567", "[::1]:80", "/tmp/s.sock"
  std::string remote_address() const;
  int native_handle() const;       // -1 when closed
  explicit operator bool() const;  // open: not closed, moved from or default-constructed

 private:
  friend class listener;
  friend conn dial(std::string_view, std::string_view, std::chrono::nanoseconds);
  explicit conn(runtime::poll_desc* pd) : pd_(pd) {}
  void reset() noexcept;  // close, then let go of the descriptor
  // Set at construction and kept until destruction or a move, not cleared by
  // close(): a goroutine still using the conn must find the same (closed)
  // descriptor, never a null pointer or a recycled one.
  runtime::poll_desc* pd_ = nullptr;
};

// A listening socket. Move-only; closes on destruction.
class listener {
 public:
  listener() = default;
  listener(listener&& o) noexcept : pd_(o.pd_), unix_path_(std::move(o.unix_path_)) {
    o.pd_ = nullptr;
  }
  listener& operator=(listener&& o) noexcept;
  ~listener() { reset(); }
  listener(const listener&) = delete;
  listener& operator=(const listener&) = delete;

  // Waits for the next connection. Running out of file descriptors
  // (EMFILE/ENFILE) is reported as an error; the listener keeps serving and
  // a later accept succeeds once descriptors are free again.
  conn accept();
  conn accept(std::error_code& ec) noexcept;
  std::uint16_t port() const;  // the bound port (for "host:0"); 0 for unix
  std::string address() const;
  void close() noexcept;           // wakes a goroutine blocked in accept
  int native_handle() const;       // -1 when closed
  explicit operator bool() const;  // open

 private:
  friend listener listen(std::string_view, std::string_view);
  void reset() noexcept;
  runtime::poll_desc* pd_ = nullptr;  // as conn's: kept until destruction or a move
  std::string unix_path_;             // removed by the close() that closes the socket
};

// Throws std::system_error: a malformed address or unknown network names the
// input (std::errc::invalid_argument); bind/listen failures carry errno.
listener listen(std::string_view network, std::string_view address);

// Connects; TCP_NODELAY is on, as in Go. The timeout variant gives up with
// std::errc::timed_out.
conn dial(std::string_view network, std::string_view address);
conn dial(std::string_view network, std::string_view address, std::chrono::nanoseconds timeout);

}  // namespace urge::net
