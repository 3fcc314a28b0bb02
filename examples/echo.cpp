// echo: a TCP echo server, one goroutine per connection.
//
//   echo [ADDR]        listen on ADDR (default 127.0.0.1:7000)
//
// Every connection gets its own goroutine that reads and writes back until
// the peer closes; a goroutine waiting for its client costs a parked stack,
// not a thread. URGE_DEBUG=netpoll=epoll (or =uring) picks the poller backend,
// URGE_MAXPROCS the number of Ps. It doubles as a benchmark server:
//
//   ./build/examples/echo 127.0.0.1:7000 &
//   printf 'hello\n' | nc -q1 127.0.0.1 7000
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <span>
#include <string>
#include <system_error>

#include "urge/net.hpp"
#include "urge/urge.hpp"

namespace {

void serve(urge::net::conn c) {
  std::byte buf[16 * 1024];  // on the goroutine's 64 KiB stack
  std::error_code ec;
  while (std::size_t n = c.read(buf, ec)) {
    c.write(std::span(buf, n), ec);
    if (ec) break;
  }
  // A reset or a failed write ends this connection only; c closes here.
}

// Errors that say the process is short of something (descriptors, memory)
// rather than that the listener is broken: wait and try again, as Go's
// net/http server does, instead of giving up.
bool temporary(const std::error_code& ec) {
  return ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system ||
         ec == std::errc::no_buffer_space || ec == std::errc::not_enough_memory ||
         ec == std::errc::connection_aborted;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2 ||
      (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help"))) {
    std::fprintf(stderr, "usage: echo [ADDR]   (default 127.0.0.1:7000)\n");
    return 2;
  }
  const std::string addr = argc == 2 ? argv[1] : "127.0.0.1:7000";
  try {
    return urge::run([&] {
      urge::net::listener ln = urge::net::listen("tcp", addr);
      std::printf("echo: listening on %s\n", ln.address().c_str());
      std::fflush(stdout);
      auto backoff = std::chrono::milliseconds(5);
      for (;;) {
        std::error_code ec;
        urge::net::conn c = ln.accept(ec);
        if (ec) {
          if (!temporary(ec)) throw std::system_error(ec, "accept");
          std::fprintf(stderr, "echo: accept: %s; retrying in %lld ms\n", ec.message().c_str(),
                       static_cast<long long>(backoff.count()));
          urge::sleep(backoff);
          backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
          continue;
        }
        backoff = std::chrono::milliseconds(5);
        urge::go(serve, std::move(c));
      }
      return 0;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo: %s\n", e.what());
    return 1;
  }
}
