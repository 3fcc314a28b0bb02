// Observability: tracebacks of running, parked and panicking goroutines, the
// SIGQUIT dump, the execution tracer's file and tools/urge-trace, and the gdb
// extension (tools/gdb/urge.py) on a live process and on a core file.
//
// Scenarios that end the process (panic, SIGQUIT) or that must not share
// ours (URGE_TRACE is read at run()) run in a forked child with its stdout and
// stderr on pipes. Forking without exec works under qemu-user too, where this
// AArch64 test cannot exec an AArch64 program (no binfmt_misc); host programs
// (python3) exec fine from there. The gdb tests exec tests/debug_helper and
// run natively only.
//
// The functions the tests look for in tracebacks live in namespace dbgtest,
// are noinline and do something after their interesting call, so that no
// frame disappears into a tail call.
#include <fcntl.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "runtime/trace.hpp"
#include "urge/urge.hpp"

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

bool slow() {
  const char* v = std::getenv("URGE_TEST_SLOW");
  return v && *v && std::string_view(v) != "0";
}

urge::config procs(int n) {
  urge::config c;
  c.maxprocs = n;
  return c;
}

// Keeps a call from being the last thing a function does (no tail call).
std::atomic<int> g_after{0};
void after_call() {
  g_after.fetch_add(1, std::memory_order_relaxed);
}

std::string dump_string() {
  char* buf = nullptr;
  std::size_t len = 0;
  std::FILE* f = open_memstream(&buf, &len);
  urge::dump_goroutines(f);
  std::fclose(f);
  std::string s(buf, len);
  std::free(buf);
  return s;
}

// Waits until at least n goroutines besides the caller are parked, and a
// little more, so that they have left their stacks for the scheduler's.
void wait_parked(int n) {
  const auto deadline = clk::now() + (slow() ? 60s : 10s);
  urge::runtime::g* self = urge::runtime::getg();
  while (clk::now() < deadline) {
    int parked = 0;
    for (urge::runtime::g* gp = urge::runtime::allgs(); gp; gp = gp->alllink) {
      if (gp != self && gp->status.load() == urge::runtime::gstatus::waiting) ++parked;
    }
    if (parked >= n) break;
    urge::sleep(1ms);
  }
  urge::sleep(5ms);
}

// The dump's goroutine blocks (separated by blank lines).
std::vector<std::string> blocks(const std::string& dump) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < dump.size()) {
    std::size_t end = dump.find("\n\n", pos);
    if (end == std::string::npos) end = dump.size();
    out.push_back(dump.substr(pos, end - pos) + "\n");  // each block ends its last line
    pos = end + 2;
  }
  return out;
}

// The block that mentions `needle`, or "".
std::string block_with(const std::string& dump, const std::string& needle) {
  for (const std::string& b : blocks(dump)) {
    if (b.find(needle) != std::string::npos) return b;
  }
  return {};
}

// POSIX extended regular expressions (std::regex draws false
// -Wmaybe-uninitialized warnings from GCC 12 under the sanitizers). A "\n"
// in the pattern is a newline; with REG_NEWLINE, '^' also matches after one
// and "[^\n]" never crosses one. Returns the first group in *group.
bool re_search(const std::string& text, const char* pattern, std::string* group = nullptr) {
  regex_t re;
  if (regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE) != 0) {
    ADD_FAILURE() << "bad pattern " << pattern;
    return false;
  }
  regmatch_t m[2];
  bool found = regexec(&re, text.c_str(), 2, m, 0) == 0;
  if (found && group && m[1].rm_so >= 0) {
    *group = text.substr(static_cast<std::size_t>(m[1].rm_so),
                         static_cast<std::size_t>(m[1].rm_eo - m[1].rm_so));
  }
  regfree(&re);
  return found;
}

// True if the strings occur in `text` in this order.
::testing::AssertionResult in_order(const std::string& text, std::vector<std::string> parts) {
  std::size_t pos = 0;
  for (const std::string& p : parts) {
    std::size_t at = text.find(p, pos);
    if (at == std::string::npos) {
      return ::testing::AssertionFailure() << "\"" << p << "\" missing (in this order) from:\n"
                                           << text;
    }
    pos = at + p.size();
  }
  return ::testing::AssertionSuccess();
}

// ---- Child processes ---------------------------------------------------------

struct child_result {
  int status = -1;  // waitpid's
  bool timed_out = false;
  std::string out, err;
  bool exited_with(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
};

// Runs body() in a forked child whose stdout and stderr are captured; the
// child exits with body's result. Once the child's stdout contains `ready`
// (when given), on_ready(pid) runs, once.
child_result run_child(const std::function<int()>& body, const std::string& ready = {},
                       const std::function<void(pid_t)>& on_ready = {}) {
  child_result r;
  int out[2], err[2];
  if (pipe(out) != 0 || pipe(err) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return r;
  }
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return r;
  }
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    close(out[0]);
    close(out[1]);
    close(err[0]);
    close(err[1]);
    int rc = body();
    std::fflush(nullptr);
    _exit(rc);
  }
  close(out[1]);
  close(err[1]);
  const auto deadline = clk::now() + (slow() ? 600s : 120s);
  bool ready_done = ready.empty();
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    if (clk::now() > deadline) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    if (poll(fds, 2, 100) < 0 && errno != EINTR) break;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      }
    }
    if (!ready_done && r.out.find(ready) != std::string::npos) {
      ready_done = true;
      if (on_ready) on_ready(pid);
    }
  }
  close(out[0]);
  close(err[0]);
  waitpid(pid, &r.status, 0);
  return r;
}

// Runs a program (argv[0] through PATH) and captures its output.
child_result run_program(const std::vector<std::string>& argv, const std::string& ready = {},
                         const std::function<void(pid_t)>& on_ready = {},
                         const std::function<void()>& in_child = {}) {
  return run_child(
      [&]() -> int {
        if (in_child) in_child();
        std::vector<char*> args;
        for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
        return 127;
      },
      ready, on_ready);
}

bool have_program(const std::string& name) {
  child_result r = run_program({"sh", "-c", "command -v " + name});
  return r.exited_with(0);
}

std::string source_root() {
  const char* v = std::getenv("URGE_SOURCE_ROOT");
  return v ? v : "";
}

std::string temp_dir() {
  std::string tmpl = (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
  tmpl += "/urge-debug-test-XXXXXX";
  char* d = mkdtemp(tmpl.data());
  return d ? std::string(d) : std::string();
}

void remove_tree(const std::string& dir) {
  if (dir.empty()) return;
  run_program({"rm", "-rf", dir});
}

}  // namespace

// ---- Functions that appear in the tracebacks ----------------------------------

namespace dbgtest {

struct kaboom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

__attribute__((noinline)) void running_inner(std::string* out) {
  *out = dump_string();
  after_call();
}

__attribute__((noinline)) void running_outer(std::string* out) {
  running_inner(out);
  after_call();
}

__attribute__((noinline)) void parked_inner(urge::chan<int> c) {
  c.recv();
  after_call();
}

__attribute__((noinline)) void parked_outer(urge::chan<int> c) {
  parked_inner(c);
  after_call();
}

__attribute__((noinline)) void sleeping_fn(std::chrono::milliseconds d) {
  urge::sleep(d);
  after_call();
}

__attribute__((noinline)) void spawner_fn(urge::chan<int> c) {
  urge::go([c] { parked_inner(c); });
  after_call();
  c.recv();
  after_call();
}

__attribute__((noinline)) void panic_thrower(int x) {
  if (x > 0) throw kaboom_error("kaboom from dbgtest");
  after_call();
}

__attribute__((noinline)) void panic_outer(int x) {
  panic_thrower(x);
  after_call();
}

__attribute__((noinline)) void panic_int_thrower(int x) {
  if (x > 0) throw 42;
  after_call();
}

__attribute__((noinline)) void trace_producer(urge::chan<int> c, int n) {
  for (int i = 0; i < n; ++i) c.send(i);
  c.close();
  after_call();
}

__attribute__((noinline)) void trace_consumer(urge::chan<int> c, urge::wait_group* wg) {
  while (auto v = c.recv()) {
    if (*v % 64 == 0) urge::yield();
  }
  wg->done();
  after_call();
}

__attribute__((noinline)) void trace_sleeper(urge::wait_group* wg) {
  for (int i = 0; i < 3; ++i) urge::sleep(1ms);
  wg->done();
  after_call();
}

__attribute__((noinline)) void trace_syscaller(urge::wait_group* wg) {
  for (int i = 0; i < 3; ++i) urge::blocking([] { usleep(500); });
  wg->done();
  after_call();
}

}  // namespace dbgtest

namespace {

// ---- Tracebacks in the process ----------------------------------------------

TEST(Traceback, RunningGoroutineShowsItsFramesInOrder) {
  std::string dump;
  urge::run(procs(2), [&] {
    urge::wait_group wg;
    wg.add(1);
    urge::runtime::g* main_g = urge::runtime::getg();
    urge::go([&] {
      // Dump only once main has parked in wg.wait(): with two Ps, main may
      // still be on its way there (seen under qemu).
      const auto deadline = clk::now() + (slow() ? 60s : 10s);
      while (main_g->status.load() != urge::runtime::gstatus::waiting && clk::now() < deadline) {
        urge::yield();
      }
      dbgtest::running_outer(&dump);
      wg.done();
    });
    wg.wait();
  });
  std::string b = block_with(dump, "dbgtest::running_inner");
  ASSERT_FALSE(b.empty()) << dump;
  EXPECT_TRUE(re_search(b, "^goroutine [0-9]+ \\[running\\]:\n")) << b;
  EXPECT_TRUE(in_order(b, {"dbgtest::running_inner(", "dbgtest::running_outer(", "created by ",
                           " in goroutine 1\n"}));
  // The main goroutine, parked in wait_group::wait, is in the same dump.
  std::string main_block = block_with(dump, "goroutine 1 [");
  EXPECT_TRUE(in_order(main_block, {"goroutine 1 [semacquire]:"})) << dump;
}

TEST(Traceback, ParkedGoroutinesShowTheirFramesWaitReasonAndCreator) {
  std::string dump;
  urge::run(procs(2), [&] {
    urge::chan<int> c, c2;
    urge::wait_group wg;
    wg.add(1);
    urge::go([c, &wg] {
      dbgtest::parked_outer(c);
      wg.done();
    });
    urge::go(dbgtest::sleeping_fn, std::chrono::milliseconds(60'000));
    urge::go(dbgtest::spawner_fn, c2);
    // Wait until all of them are parked where we expect.
    wait_parked(4);
    const auto deadline = clk::now() + (slow() ? 60s : 10s);
    for (;;) {
      dump = dump_string();
      std::string parked = block_with(dump, "dbgtest::parked_outer");
      if (parked.find("[chan receive]") != std::string::npos &&
          block_with(dump, "dbgtest::sleeping_fn").find("[sleep]") != std::string::npos &&
          block_with(dump, "dbgtest::spawner_fn").find("[chan receive]") != std::string::npos &&
          blocks(dump).size() >= 5) {
        break;
      }
      if (clk::now() > deadline) break;
      urge::sleep(1ms);
    }
    c.send(1);
    wg.wait();
  });
  std::string parked = block_with(dump, "dbgtest::parked_outer");
  ASSERT_FALSE(parked.empty()) << dump;
  EXPECT_TRUE(re_search(parked, "^goroutine [0-9]+ \\[chan receive\\]:\n")) << parked;
  EXPECT_TRUE(in_order(parked, {"dbgtest::parked_inner(", "dbgtest::parked_outer(", "created by ",
                                " in goroutine 1\n"}));
  // Nothing of the runtime's own plumbing.
  EXPECT_EQ(parked.find("urge::runtime::"), std::string::npos) << parked;
  EXPECT_EQ(parked.find("goroutine_entry"), std::string::npos) << parked;

  std::string sleeping = block_with(dump, "dbgtest::sleeping_fn");
  EXPECT_TRUE(re_search(sleeping, "^goroutine [0-9]+ \\[sleep\\]:\n")) << sleeping;
  // A function pointer passed to go() names the goroutine's entry itself.
  EXPECT_TRUE(in_order(sleeping, {"dbgtest::sleeping_fn(", "created by ", " in goroutine 1\n"}));

  // A goroutine created by a goroutine names that one as its creator.
  std::string spawner;
  for (const std::string& b : blocks(dump)) {
    if (b.find("\ndbgtest::spawner_fn(urge::chan<int>)\n") != std::string::npos &&
        b.find("created by dbgtest::spawner_fn") == std::string::npos) {
      spawner = b;
    }
  }
  std::string spawner_id;
  ASSERT_TRUE(re_search(spawner, "^goroutine ([0-9]+) ", &spawner_id)) << dump;
  bool found_child = false;
  for (const std::string& b : blocks(dump)) {
    if (b.find("created by dbgtest::spawner_fn") != std::string::npos) {
      found_child = true;
      EXPECT_TRUE(in_order(b, {"dbgtest::parked_inner(", "created by dbgtest::spawner_fn",
                               " in goroutine " + spawner_id + "\n"}));
    }
  }
  EXPECT_TRUE(found_child) << dump;
}

TEST(Traceback, FramesHaveFileAndLineWithDebugInfo) {
#if !URGE_HAVE_LIBDW
  GTEST_SKIP() << "built without libdw: frames show module+offset";
#else
  std::string dump;
  urge::run(procs(1), [&] {
    urge::chan<int> c;
    urge::wait_group wg;
    wg.add(1);
    urge::go([c, &wg] {
      dbgtest::parked_outer(c);
      wg.done();
    });
    wait_parked(1);
    const auto deadline = clk::now() + (slow() ? 60s : 10s);
    do {
      dump = dump_string();
    } while (block_with(dump, "dbgtest::parked_outer").find("[chan receive]") ==
                 std::string::npos &&
             clk::now() < deadline);
    c.send(1);
    wg.wait();
  });
  std::string parked = block_with(dump, "dbgtest::parked_outer");
  EXPECT_TRUE(
      re_search(parked, "dbgtest::parked_inner\\([^\n]*\n\t/[^\n]*debug_test\\.cpp:[0-9]+\n"))
      << parked;
  EXPECT_TRUE(re_search(parked, "created by [^\n]*\n\t/[^\n]*debug_test\\.cpp:[0-9]+\n")) << parked;
#endif
}

// ---- Panics -------------------------------------------------------------------

TEST(Panic, PrintsWhatTypeAndTheThrowingFunctionThenExits2) {
  child_result r = run_child([] {
    urge::run(procs(2), [] {
      urge::go([] { dbgtest::panic_outer(1); });
      urge::sleep(std::chrono::seconds(60));
    });
    return 0;
  });
  ASSERT_FALSE(r.timed_out) << r.err;
  EXPECT_TRUE(r.exited_with(2)) << "status " << r.status << "\n" << r.err;
  EXPECT_TRUE(in_order(
      r.err, {"panic: kaboom from dbgtest\n", "[exception of type dbgtest::kaboom_error]\n"}));
  EXPECT_TRUE(re_search(r.err, "\ngoroutine [0-9]+ \\[running\\]:\n")) << r.err;
  // The traceback starts at the throw: the thrower, then its caller.
  EXPECT_TRUE(in_order(r.err, {"[running]:\ndbgtest::panic_thrower(", "dbgtest::panic_outer(",
                               "created by ", " in goroutine 1\n"}));
  EXPECT_EQ(r.err.find("__cxa_throw"), std::string::npos) << r.err;
}

TEST(Panic, ANonStandardExceptionNamesItsType) {
  child_result r = run_child([] {
    urge::run(procs(1), [] {
      urge::go([] { dbgtest::panic_int_thrower(1); });
      urge::sleep(std::chrono::seconds(60));
    });
    return 0;
  });
  ASSERT_FALSE(r.timed_out) << r.err;
  EXPECT_TRUE(r.exited_with(2)) << "status " << r.status << "\n" << r.err;
  EXPECT_TRUE(
      in_order(r.err, {"panic: ", "[exception of type int]\n", "dbgtest::panic_int_thrower("}));
}

TEST(Panic, TheMainGoroutinesExceptionStillReachesTheCaller) {
  EXPECT_THROW(urge::run(procs(1), [] { dbgtest::panic_outer(1); }), dbgtest::kaboom_error);
}

// ---- SIGQUIT -----------------------------------------------------------------

TEST(Sigquit, DumpsEveryGoroutineAndExits2) {
  child_result r = run_child(
      [] {
        urge::run(procs(2), [] {
          urge::chan<int> c;
          urge::go(dbgtest::parked_outer, c);
          urge::go(dbgtest::sleeping_fn, std::chrono::milliseconds(600'000));
          wait_parked(2);
          std::printf("ready\n");
          std::fflush(stdout);
          urge::chan<int> forever;
          forever.recv();
        });
        return 0;
      },
      "ready", [](pid_t pid) { kill(pid, SIGQUIT); });
  ASSERT_FALSE(r.timed_out) << r.err;
  EXPECT_TRUE(r.exited_with(2)) << "status " << r.status << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("SIGQUIT: quit\n", 0), 0u) << r.err;
  EXPECT_TRUE(re_search(r.err, "\ngoroutine 1 \\[[a-z ]+\\]:\n")) << r.err;
  std::string parked = block_with(r.err, "dbgtest::parked_outer");
  EXPECT_TRUE(re_search(parked, "goroutine [0-9]+ \\[chan receive\\]:\n")) << r.err;
  EXPECT_TRUE(in_order(parked, {"dbgtest::parked_inner(", "dbgtest::parked_outer(", "created by ",
                                " in goroutine 1\n"}));
  std::string sleeping = block_with(r.err, "dbgtest::sleeping_fn");
  EXPECT_TRUE(re_search(sleeping, "goroutine [0-9]+ \\[sleep\\]:\n")) << r.err;
}

// ---- The execution tracer -------------------------------------------------------

struct trace_record {
  std::int64_t ts;
  std::uint64_t a, b;
  std::int16_t p;
  std::uint8_t ev;
  std::uint8_t reserved;
  std::int32_t m;
};
static_assert(sizeof(trace_record) == 32);

struct trace_file {
  std::uint32_t version = 0, gomaxprocs = 0;
  std::int64_t start_ns = 0, end_ns = 0;
  std::vector<trace_record> events;
  std::map<std::uint64_t, std::string> names, creators;
  std::vector<std::string> reasons;
};

template <class T>
bool take(const std::string& data, std::size_t& off, T& v) {
  if (off + sizeof v > data.size()) return false;
  std::memcpy(&v, data.data() + off, sizeof v);
  off += sizeof v;
  return true;
}

::testing::AssertionResult read_trace(const std::string& path, trace_file& t) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ::testing::AssertionFailure() << "no trace file " << path;
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 64 || data.compare(0, 8, std::string("URGETRC\0", 8)) != 0) {
    return ::testing::AssertionFailure() << "bad trace header (" << data.size() << " bytes)";
  }
  std::size_t off = 8;
  std::int64_t wall = 0;
  std::uint64_t nevents = 0, ngoroutines = 0;
  std::uint32_t pid = 0, record_size = 0;
  take(data, off, t.version);
  take(data, off, t.gomaxprocs);
  take(data, off, t.start_ns);
  take(data, off, t.end_ns);
  take(data, off, wall);
  take(data, off, nevents);
  take(data, off, ngoroutines);
  take(data, off, pid);
  take(data, off, record_size);
  if (record_size != sizeof(trace_record)) {
    return ::testing::AssertionFailure() << "record size " << record_size;
  }
  t.events.resize(nevents);
  if (off + nevents * sizeof(trace_record) > data.size()) {
    return ::testing::AssertionFailure() << "truncated events";
  }
  std::memcpy(t.events.data(), data.data() + off, nevents * sizeof(trace_record));
  off += nevents * sizeof(trace_record);
  for (std::uint64_t i = 0; i < ngoroutines; ++i) {
    std::uint64_t goid = 0, parent = 0;
    std::uint32_t nlen = 0, clen = 0;
    if (!take(data, off, goid) || !take(data, off, parent) || !take(data, off, nlen) ||
        !take(data, off, clen) || off + nlen + clen > data.size()) {
      return ::testing::AssertionFailure() << "truncated name table";
    }
    t.names[goid] = data.substr(off, nlen);
    t.creators[goid] = data.substr(off + nlen, clen);
    off += nlen + clen;
  }
  std::uint32_t nreasons = 0;
  if (!take(data, off, nreasons)) return ::testing::AssertionFailure() << "no reasons";
  for (std::uint32_t i = 0; i < nreasons; ++i) {
    std::uint32_t len = 0;
    if (!take(data, off, len) || off + len > data.size()) {
      return ::testing::AssertionFailure() << "truncated reasons";
    }
    t.reasons.push_back(data.substr(off, len));
    off += len;
  }
  if (off != data.size()) return ::testing::AssertionFailure() << "trailing bytes";
  return ::testing::AssertionSuccess();
}

using urge::runtime::trace_ev;

int traced_workload() {
  urge::run(procs(2), [] {
    urge::wait_group wg;
    urge::chan<int> c(4);
    wg.add(4);
    urge::go(dbgtest::trace_producer, c, 500);
    urge::go(dbgtest::trace_consumer, c, &wg);
    urge::go(dbgtest::trace_consumer, c, &wg);
    urge::go(dbgtest::trace_sleeper, &wg);
    urge::go([&wg] { dbgtest::trace_syscaller(&wg); });
    wg.add(1);  // one more, done at once: create, run, end
    urge::go([&wg] { wg.done(); });
    wg.wait();
  });
  return 0;
}

TEST(Trace, FileRoundTripAndUrgeTraceTool) {
  std::string dir = temp_dir();
  ASSERT_FALSE(dir.empty());
  std::string path = dir + "/trace.bin";
  child_result r = run_child([&] {
    setenv("URGE_TRACE", path.c_str(), 1);
    return traced_workload();
  });
  ASSERT_TRUE(r.exited_with(0)) << "status " << r.status << "\n" << r.err;

  trace_file t;
  ASSERT_TRUE(read_trace(path, t));
  EXPECT_EQ(t.version, 1u);
  EXPECT_EQ(t.gomaxprocs, 2u);
  EXPECT_LE(t.start_ns, t.end_ns);
  ASSERT_FALSE(t.events.empty());

  // Ordered by time, within the trace's span.
  std::set<int> kinds;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const trace_record& e = t.events[i];
    if (i) {
      EXPECT_LE(t.events[i - 1].ts, e.ts) << "event " << i;
    }
    EXPECT_GE(e.ts, t.start_ns);
    EXPECT_LE(e.ts, t.end_ns);
    EXPECT_LT(e.p, 2);
    kinds.insert(e.ev);
  }
  for (trace_ev ev :
       {trace_ev::go_create, trace_ev::go_start, trace_ev::go_block, trace_ev::go_unblock,
        trace_ev::go_end, trace_ev::syscall_enter, trace_ev::syscall_exit}) {
    EXPECT_TRUE(kinds.count(static_cast<int>(ev))) << "no event " << static_cast<int>(ev);
  }
  // Each goroutine's life in order: created, then started, blocked and
  // unblocked alternately, ended last.
  struct life {
    int created = 0, started = 0, ended = 0;
    bool blocked = false;
  };
  std::map<std::uint64_t, life> lives;
  for (const trace_record& e : t.events) {
    auto ev = static_cast<trace_ev>(e.ev);
    if (ev == trace_ev::steal) continue;
    life& l = lives[e.a];
    switch (ev) {
      case trace_ev::go_create:
        EXPECT_EQ(l.created, 0) << "goroutine " << e.a;
        ++l.created;
        break;
      case trace_ev::go_start:
        EXPECT_EQ(l.created, 1) << "goroutine " << e.a << " started before its creation";
        EXPECT_EQ(l.ended, 0);
        EXPECT_FALSE(l.blocked) << "goroutine " << e.a << " started while blocked";
        EXPECT_EQ(static_cast<std::int64_t>(e.b), e.p) << "go_start's P is the emitter's";
        ++l.started;
        break;
      case trace_ev::go_block:
        EXPECT_GT(l.started, 0);
        l.blocked = true;
        EXPECT_LT(e.b, t.reasons.size());
        break;
      case trace_ev::go_unblock:
        l.blocked = false;
        break;
      case trace_ev::go_end:
        EXPECT_GT(l.started, 0);
        ++l.ended;
        break;
      default:
        break;
    }
  }
  // main (1) and the six goroutines it made, in the order of their go_create
  // (goids come from per-P batches: main may have moved to the other P
  // between two go statements); the six all ended.
  std::vector<std::uint64_t> made;
  for (const trace_record& e : t.events) {
    if (static_cast<trace_ev>(e.ev) == trace_ev::go_create && e.b == 1) made.push_back(e.a);
  }
  ASSERT_EQ(made.size(), 6u);
  EXPECT_EQ(lives.size(), 7u);
  for (std::uint64_t id : made) EXPECT_EQ(lives[id].ended, 1) << "goroutine " << id;

  // Names: the entry functions and the creators.
  ASSERT_EQ(t.names.size(), 7u);
  EXPECT_EQ(t.names[1], "main");
  EXPECT_EQ(t.names[made[0]].rfind("dbgtest::trace_producer(", 0), 0u) << t.names[made[0]];
  EXPECT_EQ(t.names[made[1]].rfind("dbgtest::trace_consumer(", 0), 0u) << t.names[made[1]];
  EXPECT_NE(t.names[made[4]].find("traced_workload"), std::string::npos) << t.names[made[4]];
  EXPECT_NE(t.creators[made[0]].find("traced_workload"), std::string::npos) << t.creators[made[0]];
  ASSERT_GT(t.reasons.size(), 5u);
  EXPECT_NE(std::find(t.reasons.begin(), t.reasons.end(), "chan receive"), t.reasons.end());

  // tools/urge-trace: the JSON parses and has the tracks, slices and flows.
  std::string tool = source_root() + "/tools/urge-trace";
  if (source_root().empty() || !have_program("python3")) {
    remove_tree(dir);
    GTEST_SKIP() << "python3 or URGE_SOURCE_ROOT missing: tools/urge-trace not checked";
  }
  std::string json = dir + "/trace.json";
  child_result conv = run_program({"python3", tool, "json", path, json});
  ASSERT_TRUE(conv.exited_with(0)) << conv.err;
  const char* check = R"PY(
import json, sys
d = json.load(open(sys.argv[1]))
ev = d["traceEvents"]
names = {(e["pid"], e["args"]["name"]) for e in ev
         if e.get("ph") == "M" and e["name"] == "thread_name"}
assert (1, "P0") in names and (1, "P1") in names, names
assert any(pid == 2 and n.startswith("M") for pid, n in names), names
slices = [e for e in ev if e.get("ph") == "X" and e["pid"] == 1]
assert any("dbgtest::trace_producer" in e["name"] for e in slices), "no producer slice"
assert all(e["dur"] >= 0 for e in slices)
starts = {e["id"] for e in ev if e.get("ph") == "s"}
ends = {e["id"] for e in ev if e.get("ph") == "f"}
assert starts and starts == ends, (len(starts), len(ends))
print("json ok", len(ev))
)PY";
  child_result chk = run_program({"python3", "-c", check, json});
  EXPECT_TRUE(chk.exited_with(0)) << chk.out << chk.err;
  EXPECT_NE(chk.out.find("json ok"), std::string::npos) << chk.out << chk.err;

  child_result sum = run_program({"python3", tool, "summary", path});
  EXPECT_TRUE(sum.exited_with(0)) << sum.err;
  EXPECT_TRUE(in_order(sum.out, {"gomaxprocs 2", "Goroutines by function",
                                 "dbgtest::trace_consumer(", "Scheduler latency"}));
  remove_tree(dir);
}

// Enough events to fill a P's first buffer chunk several times over, with
// wakeups crossing between two Ps: every goroutine's events come out in an
// order that can have happened (a goroutine starts only once unblocked, and
// is unblocked only after it blocked), each park matched by its wakeup, and
// the times sorted.
TEST(Trace, ManyEventsAcrossPsMergeInAPossibleOrder) {
  std::string dir = temp_dir();
  ASSERT_FALSE(dir.empty());
  std::string path = dir + "/trace.bin";
  constexpr int rounds = 30000;
  child_result r = run_child([&] {
    setenv("URGE_TRACE", path.c_str(), 1);
    urge::run(procs(2), [] {
      urge::wait_group wg;
      wg.add(2);
      for (int pair = 0; pair < 2; ++pair) {
        urge::chan<int> ping, pong;
        urge::go([ping, pong] {
          while (std::optional<int> v = ping.recv()) pong.send(*v + 1);
        });
        urge::go([ping, pong, &wg]() mutable {
          int v = 0;
          for (int i = 0; i < rounds; ++i) {
            ping.send(v);
            v = *pong.recv();
          }
          ping.close();
          wg.done();
        });
      }
      wg.wait();
    });
    return 0;
  });
  ASSERT_TRUE(r.exited_with(0)) << "status " << r.status << "\n" << r.err;
  trace_file t;
  ASSERT_TRUE(read_trace(path, t));
  remove_tree(dir);
  // Each round trip parks one side at least (2 pairs x rounds x ~6 events
  // when they take turns on one P; fewer when a partner is caught running).
  EXPECT_GT(t.events.size(), static_cast<std::size_t>(2 * rounds * 2));

  struct life {
    bool blocked = false;
    long blocks = 0, unblocks = 0;
  };
  std::map<std::uint64_t, life> lives;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const trace_record& e = t.events[i];
    if (i && t.events[i - 1].ts > e.ts && bad++ < 5)
      ADD_FAILURE() << "event " << i << " out of time order";
    if (static_cast<trace_ev>(e.ev) == trace_ev::steal) continue;  // a is a P
    life& l = lives[e.a];
    switch (static_cast<trace_ev>(e.ev)) {
      case trace_ev::go_start:
        if (l.blocked && bad++ < 5)
          ADD_FAILURE() << "event " << i << ": goroutine " << e.a << " started while blocked";
        break;
      case trace_ev::go_block:
        l.blocked = true;
        ++l.blocks;
        break;
      case trace_ev::go_unblock:
        if (!l.blocked && bad++ < 5)
          ADD_FAILURE() << "event " << i << ": goroutine " << e.a << " unblocked while not blocked";
        l.blocked = false;
        ++l.unblocks;
        break;
      default:
        break;
    }
  }
  EXPECT_EQ(bad, 0u);
  // main and the four goroutines; every park ended by its wakeup.
  EXPECT_EQ(lives.size(), 5u);
  for (auto& [goid, l] : lives) {
    EXPECT_EQ(l.blocks, l.unblocks) << "goroutine " << goid;
    EXPECT_FALSE(l.blocked) << "goroutine " << goid;
  }
}

TEST(Trace, AnUnwritablePathIsReportedAndTheProgramRuns) {
  child_result r = run_child([] {
    setenv("URGE_TRACE", "/nonexistent-dir/urge/trace.bin", 1);
    int v = urge::run([] { return 7; });
    return v == 7 ? 0 : 1;
  });
  EXPECT_TRUE(r.exited_with(0)) << r.err;
  EXPECT_NE(r.err.find("urge: URGE_TRACE=/nonexistent-dir/urge/trace.bin: "), std::string::npos)
      << r.err;
}

TEST(Trace, OffUnlessAsked) {
  unsetenv("URGE_TRACE");
  urge::run([] { EXPECT_FALSE(urge::runtime::trace_on); });
}

// ---- gdb ---------------------------------------------------------------------------

// Why the gdb tests cannot run here, or "".
std::string gdb_unavailable() {
#if URGE_TEST_CROSS
  return "cross build under qemu-user: gdb would debug qemu, not the program";
#else
  if (!std::getenv("URGE_DEBUG_HELPER"))
    return "URGE_DEBUG_HELPER not set (run through meson test)";
  if (source_root().empty()) return "URGE_SOURCE_ROOT not set (run through meson test)";
  if (!have_program("gdb")) return "gdb not installed";
  return {};
#endif
}

std::vector<std::string> gdb_args(const std::vector<std::string>& target,
                                  const std::vector<std::string>& commands) {
  std::vector<std::string> a = {"gdb", "-batch", "-nx", "-iex", "set debuginfod enabled off"};
  a.insert(a.end(), target.begin(), target.end());
  a.push_back("-x");
  a.push_back(source_root() + "/tools/gdb/urge.py");
  for (const std::string& c : commands) {
    a.push_back("-ex");
    a.push_back(c);
  }
  return a;
}

// The debug_helper `park` goroutines: one on a channel, one asleep, one on a
// mutex, one spinning (see tests/debug_helper.cpp), besides main (1). Their
// ids come from per-P batches: 2..5 unless main moved to the other P between
// two of its go statements, so the listing is searched by function.
void expect_goroutine_listing(const std::string& out) {
  EXPECT_TRUE(re_search(out, "\n *[0-9]+ +waiting +chan receive +debug_helper_park_recv")) << out;
  EXPECT_TRUE(re_search(out, "\n *[0-9]+ +waiting +sleep +debug_helper_park_sleep")) << out;
  EXPECT_TRUE(re_search(out, "\n *[0-9]+ +waiting +sync.Mutex.Lock +debug_helper_park_mutex"))
      << out;
  // main waits on a channel too; the spinner is running, or runnable just
  // after a preemption. '*' marks the goroutine of gdb's selected thread.
  EXPECT_TRUE(re_search(out, "\n[* ]*1 +waiting +chan receive ")) << out;
  EXPECT_TRUE(re_search(out, "\n[* ]*[0-9]+ +(running|runnable)[^\n]* debug_helper_")) << out;
}

// The id `info goroutines` shows on the row that matches `row` (a regular
// expression for what follows the id), or "?" if there is none.
std::string listed_goid(const std::string& listing, const std::string& row) {
  std::string id;
  if (!re_search(listing, ("\n[* ]*([0-9]+) +" + row).c_str(), &id)) return "?";
  return id;
}

constexpr const char* parked_row = "waiting +chan receive +debug_helper_park_recv";
constexpr const char* spinner_row = "(running|runnable)[^\n]* debug_helper_";

void expect_parked_backtrace(const std::string& out) {
  // The goroutine's frames, innermost first, down to the goroutine entry.
  EXPECT_TRUE(in_order(out, {"\n#1 ", "urge::runtime::", "debug_helper_park_recv",
                             "goroutine_entry", "urge_context_start"}))
      << out;
}

TEST(Gdb, InfoGoroutinesAndBacktraceOnALiveProcess) {
  if (std::string why = gdb_unavailable(); !why.empty()) GTEST_SKIP() << why;
  std::string helper = std::getenv("URGE_DEBUG_HELPER");
  child_result gdb_run;
  child_result r = run_program({helper, "park"}, "ready", [&](pid_t pid) {
    const std::string target = std::to_string(pid);
    child_result listing = run_program(gdb_args({"-p", target}, {"info goroutines"}));
    gdb_run = run_program(
        gdb_args({"-p", target},
                 {"info goroutines", "goroutine " + listed_goid(listing.out, parked_row) + " bt",
                  "echo ==g5==\\n", "goroutine " + listed_goid(listing.out, spinner_row) + " bt"}));
    kill(pid, SIGKILL);
  });
  ASSERT_FALSE(r.timed_out);
  const std::string& out = gdb_run.out;
  if (out.find("ptrace") != std::string::npos &&
      out.find("Operation not permitted") != std::string::npos) {
    GTEST_SKIP() << "ptrace not permitted here: " << out;
  }
  if (gdb_run.err.find("ptrace") != std::string::npos ||
      gdb_run.err.find("Could not attach") != std::string::npos) {
    GTEST_SKIP() << "gdb cannot attach here: " << gdb_run.err;
  }
  expect_goroutine_listing(out);
  std::string g2 = out.substr(0, out.find("==g5=="));
  expect_parked_backtrace(g2);
  // The spinner: running on a thread (shown from that thread), or just
  // preempted (shown from its saved context); either way in its function.
  std::string g5 = out.substr(std::min(out.size(), out.find("==g5==")));
  EXPECT_NE(g5.find("debug_helper_busy"), std::string::npos) << out << gdb_run.err;
  // The thread's own registers are untouched: gdb detached cleanly.
  EXPECT_EQ(gdb_run.err.find("Traceback"), std::string::npos) << gdb_run.err;
}

std::string find_core(const std::string& dir) {
  std::string found;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, "core", 4) == 0) found = dir + "/" + e->d_name;
    }
    closedir(d);
  }
  return found;
}

TEST(Gdb, InfoGoroutinesAndBacktraceOnACoreFile) {
  if (std::string why = gdb_unavailable(); !why.empty()) GTEST_SKIP() << why;
  std::string helper = std::getenv("URGE_DEBUG_HELPER");
  std::string dir = temp_dir();
  ASSERT_FALSE(dir.empty());
  // A core from the kernel (gdb's gcore cannot read past the stacks' guard
  // regions): abort the helper once its goroutines are parked.
  child_result r = run_program(
      {helper, "park"}, "ready", [](pid_t pid) { kill(pid, SIGABRT); },
      [&] {
        rlimit rl{RLIM_INFINITY, RLIM_INFINITY};
        setrlimit(RLIMIT_CORE, &rl);
        if (chdir(dir.c_str()) != 0) _exit(126);
      });
  ASSERT_FALSE(r.timed_out);
  std::string core = find_core(dir);
  if (core.empty()) {
    std::ifstream pattern("/proc/sys/kernel/core_pattern");
    std::string p;
    std::getline(pattern, p);
    remove_tree(dir);
    GTEST_SKIP() << "no core file written (kernel.core_pattern is \"" << p << "\")";
  }
  child_result listing = run_program(gdb_args({helper, core}, {"info goroutines"}));
  child_result gdb_run = run_program(
      gdb_args({helper, core},
               {"info goroutines", "goroutine " + listed_goid(listing.out, parked_row) + " bt"}));
  expect_goroutine_listing(gdb_run.out);
  expect_parked_backtrace(gdb_run.out);
  EXPECT_EQ(gdb_run.err.find("Traceback"), std::string::npos) << gdb_run.err;
  remove_tree(dir);
}

}  // namespace
