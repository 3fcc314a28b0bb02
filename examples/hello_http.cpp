// hello_http: a minimal HTTP/1.1 server answering "Hello, World!" to GET /.
//
//   hello_http [ADDR]      listen on ADDR (default 127.0.0.1:8080)
//
// One goroutine per connection, keep-alive by default (HTTP/1.1; HTTP/1.0
// with "Connection: keep-alive"), "Connection: close" honoured. Pipelining-
// safe: requests are parsed from the connection's buffer in a loop, each
// complete one is answered in order, and the answers to everything that
// arrived together go out in one write. Garbage gets 400, headers beyond
// 8 KiB get 431, and the connection is closed after either. It doubles as
// the benchmark server for bench/peers/http_compare.sh:
//
//   ./build/examples/hello_http &
//   curl -i http://127.0.0.1:8080/
//   wrk -t2 -c64 -d10s --latency http://127.0.0.1:8080/
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "urge/net.hpp"
#include "urge/urge.hpp"

namespace {

constexpr std::size_t kMaxHeader = 8 * 1024;         // request line + headers
constexpr std::size_t kMaxBody = 1 << 20;            // bodies are read and dropped
constexpr std::size_t kBufSize = kMaxHeader + 4096;  // > kMaxHeader + 4: too_large is seen

struct request {
  std::string_view method, target;
  bool http11 = true;
  bool keep_alive = true;
  std::size_t header_len = 0;      // through the blank line
  std::size_t content_length = 0;  // body bytes that follow
};

enum class parse_result { ok, incomplete, bad, too_large, unsupported };

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Does a comma-separated header value contain `token` (case-insensitive)?
bool has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    std::size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (iequals(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

// Parses one request head from the front of `in`.
parse_result parse(std::string_view in, request& r) {
  std::size_t end = in.substr(0, kMaxHeader + 4).find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (in.size() >= kMaxHeader + 4) return parse_result::too_large;
    // A request line that is already malformed need not wait for more.
    std::size_t eol = in.find("\r\n");
    if (eol == std::string_view::npos && in.size() > 16 && in.find(' ') == std::string_view::npos) {
      return parse_result::bad;
    }
    return parse_result::incomplete;
  }
  if (end + 4 > kMaxHeader) return parse_result::too_large;
  r = request{};
  r.header_len = end + 4;
  std::string_view head = in.substr(0, end + 2);  // every line ends in CRLF
  std::size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  head.remove_prefix(eol + 2);

  // Request line: METHOD SP TARGET SP HTTP/1.x
  std::size_t sp1 = line.find(' ');
  std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == 0 || sp2 == std::string_view::npos || sp2 == sp1 + 1) return parse_result::bad;
  r.method = line.substr(0, sp1);
  r.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  for (char ch : r.method) {
    if (ch < 'A' || ch > 'Z') return parse_result::bad;
  }
  if (version == "HTTP/1.1") {
    r.http11 = true;
  } else if (version == "HTTP/1.0") {
    r.http11 = false;
  } else {
    return parse_result::bad;
  }
  r.keep_alive = r.http11;

  // Headers.
  bool have_length = false;
  while (!head.empty()) {
    eol = head.find("\r\n");
    line = head.substr(0, eol);
    head.remove_prefix(eol + 2);
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return parse_result::bad;
    std::string_view name = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    if (name.find_first_of(" \t") != std::string_view::npos) return parse_result::bad;
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (iequals(name, "connection")) {
      if (has_token(value, "close")) r.keep_alive = false;
      if (has_token(value, "keep-alive")) r.keep_alive = r.keep_alive || !r.http11;
    } else if (iequals(name, "content-length")) {
      std::size_t v = 0;
      if (value.empty() || have_length) return parse_result::bad;
      for (char ch : value) {
        if (ch < '0' || ch > '9') return parse_result::bad;
        v = v * 10 + static_cast<std::size_t>(ch - '0');
        if (v > kMaxBody) return parse_result::unsupported;
      }
      r.content_length = v;
      have_length = true;
    } else if (iequals(name, "transfer-encoding")) {
      return parse_result::unsupported;  // chunked bodies: not in a hello server
    }
  }
  return parse_result::ok;
}

// "Date: Fri, 27 Nov 2026 12:00:00 GMT\r\n", as Go's net/http sends it;
// formatted once a second per connection.
class date_header {
 public:
  std::string_view get() {
    std::time_t now = std::time(nullptr);
    if (now != last_) {
      last_ = now;
      std::tm tm{};
      gmtime_r(&now, &tm);
      len_ = std::strftime(buf_, sizeof buf_, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    }
    return {buf_, len_};
  }

 private:
  std::time_t last_ = 0;
  char buf_[64] = {};
  std::size_t len_ = 0;
};

// keep_alive: the connection stays open; `connection` says so to an
// HTTP/1.0 client, for which closing is the default.
void respond(std::string& out, date_header& date, int status, std::string_view reason,
             std::string_view body, bool keep_alive, bool head_only, std::string_view extra = {},
             std::string_view connection = {}) {
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out += ' ';
  out += reason;
  out += "\r\n";
  out += date.get();
  out += "Content-Length: ";
  out += std::to_string(body.size());
  out += "\r\nContent-Type: text/plain; charset=utf-8\r\n";
  out += extra;
  out += keep_alive ? connection : "Connection: close\r\n";
  out += "\r\n";
  if (!head_only) out += body;
}

void answer(const request& r, std::string& out, date_header& date) {
  const bool head = r.method == "HEAD";
  const std::string_view conn = r.http11 ? "" : "Connection: keep-alive\r\n";
  if (r.method != "GET" && !head) {
    respond(out, date, 405, "Method Not Allowed", "405 method not allowed\n", r.keep_alive, false,
            "Allow: GET, HEAD\r\n", conn);
  } else if (r.target == "/") {
    respond(out, date, 200, "OK", "Hello, World!", r.keep_alive, head, {}, conn);
  } else {
    respond(out, date, 404, "Not Found", "404 page not found\n", r.keep_alive, head, {}, conn);
  }
}

void serve(urge::net::conn c) {
  auto in = std::make_unique<char[]>(kBufSize);
  std::size_t len = 0;      // bytes in `in`
  std::size_t discard = 0;  // body bytes still to drop
  std::string out;
  out.reserve(4096);
  date_header date;
  std::error_code ec;
  for (;;) {
    std::size_t n = c.read(std::as_writable_bytes(std::span(in.get() + len, kBufSize - len)), ec);
    if (ec || n == 0) return;
    len += n;
    std::size_t pos = 0;
    bool close_after = false;
    bool need_more = false;  // the next request is not all here yet
    out.clear();
    while (pos < len && !close_after && !need_more) {
      if (discard > 0) {
        std::size_t k = std::min(discard, len - pos);
        pos += k;
        discard -= k;
        continue;
      }
      request r;
      switch (parse(std::string_view(in.get() + pos, len - pos), r)) {
        case parse_result::incomplete:
          need_more = true;
          break;
        case parse_result::too_large:
          respond(out, date, 431, "Request Header Fields Too Large",
                  "431 request header fields too large\n", false, false);
          close_after = true;
          break;
        case parse_result::bad:
          respond(out, date, 400, "Bad Request", "400 bad request\n", false, false);
          close_after = true;
          break;
        case parse_result::unsupported:
          respond(out, date, 501, "Not Implemented", "501 not implemented\n", false, false);
          close_after = true;
          break;
        case parse_result::ok:
          pos += r.header_len;
          discard = r.content_length;
          answer(r, out, date);
          close_after = !r.keep_alive;
          break;
      }
    }
    // One write for everything answered from this read: pipelined requests
    // cost one system call (or one io_uring request) for all their responses.
    if (!out.empty()) c.write(std::as_bytes(std::span(out.data(), out.size())), ec);
    if (ec || close_after) return;
    std::memmove(in.get(), in.get() + pos, len - pos);
    len -= pos;
  }
}

bool temporary(const std::error_code& ec) {
  return ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system ||
         ec == std::errc::no_buffer_space || ec == std::errc::not_enough_memory ||
         ec == std::errc::connection_aborted;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2 ||
      (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help"))) {
    std::fprintf(stderr, "usage: hello_http [ADDR]   (default 127.0.0.1:8080)\n");
    return 2;
  }
  const std::string addr = argc == 2 ? argv[1] : "127.0.0.1:8080";
  try {
    return urge::run([&] {
      urge::net::listener ln = urge::net::listen("tcp", addr);
      std::printf("hello_http: listening on http://%s/\n", ln.address().c_str());
      std::fflush(stdout);
      auto backoff = std::chrono::milliseconds(5);
      for (;;) {
        std::error_code ec;
        urge::net::conn c = ln.accept(ec);
        if (ec) {
          if (!temporary(ec)) throw std::system_error(ec, "accept");
          std::fprintf(stderr, "hello_http: accept: %s; retrying in %lld ms\n",
                       ec.message().c_str(), static_cast<long long>(backoff.count()));
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
    std::fprintf(stderr, "hello_http: %s\n", e.what());
    return 1;
  }
}
