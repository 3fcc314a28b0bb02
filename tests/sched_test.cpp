// The scheduler through urge::run: goroutines, fairness, wakeups across Ps,
// blocking calls, timers, deadlock detection, the run() lifecycle, maxprocs,
// pinning, panics, schedtrace and the idle runtime.
//
// Timing: tests that measure time read URGE_TEST_SLOW (tools/dev sets it to 1
// for the ASan+UBSan and the qemu-user runs) and widen their tolerances ten
// times; the idle-CPU test is skipped then. Everything else synchronises with
// wait_group, mutex and atomics: sleeps appear only where time is under test.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cfenv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "platform/cpu.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "urge/chan.hpp"
#include "urge/runtime.hpp"
#include "urge/select.hpp"
#include "urge/sync.hpp"
#include "urge/time.hpp"

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using urge::runtime::gstatus;

bool slow() {
  const char* v = std::getenv("URGE_TEST_SLOW");
  return v && *v && std::string_view(v) != "0";
}

// A time tolerance: `native`, or ten times it under URGE_TEST_SLOW.
clk::duration tolerance(clk::duration native) {
  return slow() ? native * 10 : native;
}

// How late the kernel wakes a thread that sleeps for d, right now. Timing
// tests allow for it on top of their own tolerance: a machine loaded by other
// programs (tests run in parallel, builds) delays every wakeup, the runtime's
// included, while a runtime that is late by itself is still caught.
clk::duration os_overshoot(clk::duration d) {
  const auto t0 = clk::now();
  std::this_thread::sleep_for(d);
  return clk::now() - t0 - d;
}

clk::duration median_of(std::vector<clk::duration> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? clk::duration{} : v[v.size() / 2];
}

urge::config procs(int n) {
  urge::config c;
  c.maxprocs = n;
  return c;
}

double ms(clk::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// The P the calling goroutine runs on.
int current_p() {
  urge::runtime::m* mp = urge::runtime::getm();
  return mp && mp->curp ? mp->curp->id : -1;
}

void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#else
  asm volatile("yield");
#endif
}

// Busy-waits (without a scheduling point) until pred() holds. A runtime bug
// that never satisfies it aborts with `what` instead of hanging the suite.
template <class Pred>
void spin_until(Pred pred, const char* what) {
  const auto deadline = clk::now() + 60s;
  while (!pred()) {
    cpu_relax();
    if (clk::now() > deadline) {
      std::fprintf(stderr, "sched_test: timed out spinning until %s\n", what);
      std::abort();
    }
  }
}

// Yields until pred() holds, for a goroutine waiting on others that may need
// its P. A runtime bug that never satisfies it aborts with `what` instead of
// hanging the suite.
template <class Pred>
void yield_until(Pred pred, const char* what) {
  const auto deadline = clk::now() + 60s;
  while (!pred()) {
    urge::yield();
    if (clk::now() > deadline) {
      std::fprintf(stderr, "sched_test: timed out yielding until %s\n", what);
      std::abort();
    }
  }
}

// Goroutines parked in urge::mutex::lock right now. Those of earlier runs
// are all dead: run() marks the abandoned ones so.
int parked_on_mutexes() {
  int n = 0;
  for (urge::runtime::g* gp = urge::runtime::allgs(); gp; gp = gp->alllink) {
    // The reason is written before the status is published (release).
    if (gp->status.load(std::memory_order_acquire) == gstatus::waiting &&
        gp->reason == urge::runtime::waitreason::sync_mutex_lock) {
      ++n;
    }
  }
  return n;
}

// Sets (or unsets, with nullptr) an environment variable for one scope.
class env_guard {
 public:
  env_guard(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~env_guard() {
    if (old_) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  env_guard(const env_guard&) = delete;
  env_guard& operator=(const env_guard&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

class Procs : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Sched, Procs, ::testing::Values(1, 2),
                         [](const auto& info) { return "maxprocs" + std::to_string(info.param); });

// ---- Goroutines ---------------------------------------------------------------

TEST_P(Procs, YieldIsFair) {
  const int n = 4 * GetParam();
  std::vector<std::atomic<long>> counts(static_cast<std::size_t>(n));
  urge::run(procs(GetParam()), [&] {
    std::atomic<bool> stop{false};
    urge::wait_group started, done;
    started.add(n);
    done.add(n);
    for (int i = 0; i < n; ++i) {
      urge::go([&, i] {
        started.done();
        while (!stop.load(std::memory_order_relaxed)) {
          counts[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed);
          urge::yield();
        }
        done.done();
      });
    }
    started.wait();
    urge::sleep(slow() ? 500ms : 100ms);  // the window over which fairness is measured
    stop = true;
    done.wait();
  });
  long total = 0, lo = counts[0].load(), hi = lo;
  for (auto& c : counts) {
    total += c.load();
    lo = std::min(lo, c.load());
    hi = std::max(hi, c.load());
  }
  const double mean = static_cast<double>(total) / n;
  EXPECT_GT(total, 1000) << "the goroutines hardly ran";
  // One P is a strict round robin. With two, the count of a goroutine also
  // depends on how fast its P's thread goes, which is the OS's business on a
  // machine loaded by other tests, so the bound only catches starvation.
  const double floor = GetParam() == 1 ? mean / 2 : mean / 10;
  EXPECT_GE(static_cast<double>(lo), floor) << "min " << lo << " max " << hi << " mean " << mean;
}

// A goroutine alone on its P that yields must not keep the P to itself while
// goroutines queue on another P (in Go, Gosched goes through the global queue
// and so spreads them). Here the lone yielder starts on one P while six
// yielders queue on the other; some of them must come to run on its P.
TEST(Sched, LoneYielderTakesWorkFromABusyP) {
  urge::config cfg = procs(2);
  cfg.async_preempt = false;  // placement by construction, not by preemption
  int lone_p = -1;
  std::set<int> queued_ps;
  urge::run(cfg, [&] {
    std::atomic<bool> lone_running{false}, spawned{false}, stop{false};
    std::atomic<int> on_lone_p{0};
    urge::mutex mu;
    urge::wait_group wg;
    wg.add(7);
    urge::go([&] {
      lone_p = current_p();
      lone_running = true;
      spin_until([&] { return spawned.load(); }, "the others are queued");
      const auto give_up = clk::now() + 30s;
      while (on_lone_p.load() == 0 && clk::now() < give_up) urge::yield();
      stop = true;
      wg.done();
    });
    // It runs on the other P once stolen: we keep this one busy until then.
    spin_until([&] { return lone_running.load(); }, "the lone yielder runs");
    for (int i = 0; i < 6; ++i) {
      urge::go([&] {
        do {  // at least once: each records where it ran first
          const int p = current_p();
          if (p == lone_p) on_lone_p.fetch_add(1);
          {
            std::lock_guard lock(mu);
            queued_ps.insert(p);
          }
          urge::yield();
        } while (!stop.load());
        wg.done();
      });
    }
    spawned = true;
    wg.wait();
  });
  ASSERT_GE(lone_p, 0);
  EXPECT_TRUE(queued_ps.count(lone_p)) << "no queued goroutine ever ran on the yielder's P";
  EXPECT_EQ(queued_ps.size(), 2u);
}

TEST_P(Procs, HundredThousandGoroutinesAllComplete) {
  constexpr long kN = 100'000;
  std::atomic<long> ran{0}, sum{0};
  std::uint64_t created = 0;
  urge::run(procs(GetParam()), [&] {
    urge::wait_group wg;
    wg.add(static_cast<int>(kN));
    for (long i = 0; i < kN; ++i) {
      urge::go(
          [&](long v) {
            ran.fetch_add(1, std::memory_order_relaxed);
            sum.fetch_add(v, std::memory_order_relaxed);
            wg.done();
          },
          i);
    }
    wg.wait();
    created = urge::stats().goroutines_created;
  });
  EXPECT_EQ(ran.load(), kN);
  EXPECT_EQ(sum.load(), kN * (kN - 1) / 2) << "each goroutine got its own argument";
  EXPECT_EQ(created, static_cast<std::uint64_t>(kN) + 1) << "main counts as one";
}

// A goroutine that does nothing but spawn must still give up its P after a
// quantum: go() is a preemption point (in Go every call is, through the
// callee's stack check). With one P and cooperative preemption only, the
// spawned goroutines can run only if the spawner yields at a go(). (Before,
// the spawner kept the P until it stopped spawning, and a burst of a million
// goroutines lived all at once: a million stacks touched.)
TEST(Sched, SpawningLoopIsPreemptedAtGo) {
  urge::config cfg = procs(1);
  cfg.async_preempt = false;  // only the cooperative request can stop the loop
  cfg.quantum = 1ms;
  // Far more than a quantum allows even on a loaded machine or under qemu;
  // bounds a failure (every goroutine spawned then is live at once).
  constexpr long kLimit = 1'000'000;
  long spawned = 0;
  urge::run(cfg, [&] {
    std::atomic<bool> ran{false};
    std::atomic<long> live{0};
    urge::wait_group wg;
    while (!ran.load(std::memory_order_relaxed) && spawned < kLimit) {
      wg.add(1);
      live.fetch_add(1, std::memory_order_relaxed);
      urge::go([&] {
        ran.store(true, std::memory_order_relaxed);
        live.fetch_sub(1, std::memory_order_relaxed);
        wg.done();
      });
      ++spawned;
    }
    wg.wait();
    EXPECT_EQ(live.load(), 0);
  });
  EXPECT_LT(spawned, kLimit) << "the spawning loop was never preempted";
}

// Every runtime operation that completes without parking is a cooperative
// preemption point (issue: "a flag the runtime checks at every scheduling
// point: yield, channel and sync operations, timers, blocking calls"). With
// one P and asynchronous preemption off, a loop of such operations is the
// only thing running; the other goroutine runs only if the loop gives the P
// up when sysmon asks. Each case loops until the other goroutine has run,
// or until a time limit that means it never did: 300 quanta. (A loop of
// blocking calls also loses its P when sysmon retakes it during a call, but
// that took about a second here; the check on return takes a quantum.)
struct coop_case {
  const char* name;
  std::function<void()> op;  // one iteration; never parks
};

class CooperativePreemption : public ::testing::TestWithParam<int> {};

std::vector<coop_case> coop_cases() {
  static urge::chan<int> buffered(1), empty(1);
  static urge::wait_group wg;
  static urge::semaphore sem(1);
  return {
      {"BufferedSendRecv", [] { buffered.send(1), (void)buffered.recv(); }},
      {"TryRecvOnEmpty", [] { (void)empty.try_recv(); }},
      {"SelectWithDefault",
       [] {
         urge::select(urge::on_recv(empty, [](std::optional<int>) {}), urge::on_default([] {}));
       }},
      {"SelectReadyCase",
       [] {
         buffered.send(1);
         urge::select(urge::on_recv(buffered, [](std::optional<int>) {}));
       }},
      {"WaitGroupAddDoneWait",
       [] {
         wg.add(1);
         wg.done();
         wg.wait();
       }},
      {"SemaphoreAcquireRelease",
       [] {
         sem.acquire(1);
         sem.release(1);
         (void)sem.try_acquire(1);
         sem.release(1);
       }},
      {"BlockingCall", [] { urge::blocking([] {}); }},
      {"TimerResetStop",
       [] {
         urge::timer t(std::chrono::hours(1));  // a timer belongs to one run()
         t.reset(std::chrono::hours(1));
         t.stop();
       }},
  };
}

INSTANTIATE_TEST_SUITE_P(Sched, CooperativePreemption, ::testing::Range(0, 8),
                         [](const auto& info) { return coop_cases()[info.param].name; });

TEST_P(CooperativePreemption, LoopOfNonParkingOperationsGivesThePUp) {
  const coop_case c = coop_cases()[GetParam()];
  urge::config cfg = procs(1);
  cfg.async_preempt = false;  // only the cooperative request can stop the loop
  cfg.quantum = 1ms;
  bool ran_in_time = false;
  urge::run(cfg, [&] {
    std::atomic<bool> ran{false};
    urge::wait_group done;
    done.add(1);
    urge::go([&] {
      ran.store(true, std::memory_order_relaxed);
      done.done();
    });
    const auto deadline = clk::now() + tolerance(300ms);
    while (!ran.load(std::memory_order_relaxed) && clk::now() < deadline) c.op();
    ran_in_time = ran.load();
    done.wait();
  });
  EXPECT_TRUE(ran_in_time) << c.name << ": the loop never gave its P up";
}

// Timer callbacks run inside the scheduler, here in the middle of a switch
// while the goroutine being left is still current. after()'s callback sends
// on a channel, and a send is a cooperative preemption point: it must not act
// on the preemption request of the goroutine being left (that would switch it
// away inside its own switch; seen as a lost channel reference under ASan).
TEST(Sched, TimerCallbackDuringASwitchIgnoresTheLeavingGoroutinesRequest) {
  urge::config cfg = procs(1);
  cfg.async_preempt = false;
  cfg.quantum = std::chrono::seconds(60);  // the only request is the test's
  for (int round = 0; round < 50; ++round) {
    urge::run(cfg, [] {
      urge::chan<std::chrono::steady_clock::time_point> fired;
      std::atomic<urge::runtime::g*> x{nullptr};
      urge::go([&] {
        urge::runtime::g* self = urge::runtime::getg();
        // A due timer can still get this goroutine preempted at after()'s
        // own preemption point when it has run for a millisecond (sysmon's
        // timer rule; slow under TSan and qemu): main waits below until it
        // is parked, whichever way it got there.
        fired = urge::after(std::chrono::nanoseconds(0));  // due at once
        self->preempt.store(true);                         // as if sysmon asked
        x.store(self);
        // Parks for good without an unlock step, so the switch runs the due
        // timer before it picks main.
        urge::chan<int>::nil().recv();
      });
      while (x.load() == nullptr ||
             x.load()->status.load() != urge::runtime::gstatus::waiting) {
        urge::yield();
      }
      EXPECT_TRUE(fired.recv().has_value());
      // The callback's send left the request alone (acting on it clears it).
      EXPECT_TRUE(x.load()->preempt.load());
    });
  }
}

// A goroutine starts with its creator's floating-point control state (as a
// thread does), even though its stack and context are made only when it
// first runs, here while main runs with another rounding mode.
TEST(Sched, GoroutineStartsWithItsCreatorsRoundingMode) {
  urge::config cfg = procs(1);
  cfg.async_preempt = false;
  int seen = -1;
  urge::run(cfg, [&] {
    urge::wait_group wg;
    wg.add(1);
    std::fesetround(FE_TOWARDZERO);
    urge::go([&] {
      seen = std::fegetround();
      wg.done();
    });
    std::fesetround(FE_TONEAREST);
    wg.wait();  // the child first runs from here
  });
  EXPECT_EQ(seen, FE_TOWARDZERO);
}

// A node spawns kFanout children and adds up what they report; leaves report
// their own number. depth 4 makes 11,111 goroutines.
void tree_node(int depth, long value, long* out, urge::wait_group* parent) {
  if (depth == 0) {
    *out = value;
    parent->done();
    return;
  }
  constexpr int kFanout = 10;
  long results[kFanout] = {};
  urge::wait_group wg;
  wg.add(kFanout);
  for (int i = 0; i < kFanout; ++i) {
    urge::go(tree_node, depth - 1, value * kFanout + i, &results[i], &wg);
  }
  wg.wait();
  long sum = 0;
  for (long r : results) sum += r;
  *out = sum;
  parent->done();
}

TEST_P(Procs, NestedSpawningSumsATree) {
  long result = -1;
  std::uint64_t created = 0;
  urge::run(procs(GetParam()), [&] {
    urge::wait_group wg;
    wg.add(1);
    urge::go(tree_node, 4, 0L, &result, &wg);
    wg.wait();
    created = urge::stats().goroutines_created;
  });
  EXPECT_EQ(result, 9999L * 10000 / 2) << "the leaves are 0..9999";
  EXPECT_EQ(created, 1u + 11111u);
}

TEST(Sched, MoveOnlyArgumentsAndCallables) {
  int from_arg = 0, from_capture = 0, from_rvalue_call = 0;
  urge::run(procs(1), [&] {
    urge::wait_group wg;
    wg.add(3);
    urge::go(
        [&](std::unique_ptr<int> p, std::unique_ptr<std::string> s) {
          from_arg = *p + static_cast<int>(s->size());
          wg.done();
        },
        std::make_unique<int>(40), std::make_unique<std::string>("ab"));
    auto owned = std::make_unique<int>(7);
    urge::go([&, p = std::move(owned)] {
      from_capture = *p;
      wg.done();
    });
    // go invokes the callable as an rvalue, as std::thread does.
    struct rvalue_only {
      std::unique_ptr<int> v;
      int* out;
      urge::wait_group* wg;
      void operator()(std::unique_ptr<int> extra) && {
        *out = *v + *extra;
        wg->done();
      }
    };
    urge::go(rvalue_only{std::make_unique<int>(5), &from_rvalue_call, &wg},
             std::make_unique<int>(6));
    wg.wait();
  });
  EXPECT_EQ(from_arg, 42);
  EXPECT_EQ(from_capture, 7);
  EXPECT_EQ(from_rvalue_call, 11);
}

TEST(Sched, NumGoroutinesCountsMainAndLiveOnes) {
  std::size_t alone = 0, with_ten = 0, after = 0;
  urge::run(procs(2), [&] {
    alone = urge::num_goroutines();
    urge::wait_group started, gate, finished;
    started.add(10);
    gate.add(1);
    finished.add(10);
    for (int i = 0; i < 10; ++i) {
      urge::go([&] {
        started.done();
        gate.wait();
        finished.done();
      });
    }
    started.wait();
    with_ten = urge::num_goroutines();
    gate.done();
    finished.wait();
    // They still have to return after done(): give them the processor.
    const auto deadline = clk::now() + 30s;
    while (urge::num_goroutines() != 1 && clk::now() < deadline) urge::yield();
    after = urge::num_goroutines();
  });
  EXPECT_EQ(alone, 1u);
  EXPECT_EQ(with_ten, 11u);
  EXPECT_EQ(after, 1u);
  EXPECT_EQ(urge::num_goroutines(), 0u) << "outside run";
}

// ---- Wakeups across Ps ----------------------------------------------------------

// A waiter parks (on a wait_group or a mutex) and a goroutine running on the
// other P at that moment wakes it. Both first spin until the other one runs,
// so they run at once, hence on different Ps.
TEST(Sched, WakeupsAcrossPs) {
  const int rounds = slow() ? 50 : 300;
  int crossed = 0, woken = 0;
  urge::config cfg = procs(2);
  cfg.async_preempt = false;  // a spinning goroutine keeps its P
  urge::run(cfg, [&] {
    for (int round = 0; round < rounds; ++round) {
      const bool use_mutex = round % 2 == 1;
      urge::wait_group gate, done;
      urge::mutex mu;
      gate.add(1);
      done.add(2);
      std::atomic<bool> w_ready{false}, r_ready{false};
      std::atomic<urge::runtime::g*> w_g{nullptr};
      int w_p = -1, r_p = -1;
      bool w_woke = false;
      urge::go([&] {  // the waiter
        w_g = urge::runtime::getg();
        w_ready = true;
        spin_until([&] { return r_ready.load(); }, "the releaser runs");
        w_p = current_p();
        if (use_mutex) {
          mu.lock();
          mu.unlock();
        } else {
          gate.wait();
        }
        w_woke = true;
        done.done();
      });
      urge::go([&] {  // the releaser
        if (use_mutex) mu.lock();
        r_ready = true;
        spin_until([&] { return w_ready.load(); }, "the waiter runs");
        spin_until([&] { return w_g.load()->status.load() == gstatus::waiting; },
                   "the waiter parks");
        r_p = current_p();
        if (use_mutex) {
          mu.unlock();
        } else {
          gate.done();
        }
        done.done();
      });
      done.wait();
      if (w_woke) ++woken;
      if (w_p != r_p && w_p >= 0 && r_p >= 0) ++crossed;
    }
  });
  EXPECT_EQ(woken, rounds);
  EXPECT_EQ(crossed, rounds) << "the two ran at once, so on different Ps";
}

// ---- Blocking calls -------------------------------------------------------------

// With one P, a goroutine blocks its thread on something only another
// goroutine can provide: it can only return if the P was handed off.
TEST(Sched, BlockingHandsThePOffWithOneProc) {
  const int rounds = 6;
  int completed = 0;
  urge::sched_stats st;
  urge::config cfg = procs(1);
  cfg.async_preempt = false;  // nothing may take the P between `entered` and blocking()
  urge::run(cfg, [&] {
    for (int round = 0; round < rounds; ++round) {
      const bool use_pipe = round % 2 == 0;
      int fds[2];
      ASSERT_EQ(::pipe(fds), 0);
      std::promise<int> promise;
      std::future<int> future = promise.get_future();
      std::atomic<bool> entered{false};
      int got = 0;
      urge::wait_group wg;
      wg.add(2);
      urge::go([&] {
        entered = true;
        // No scheduling point between here and the blocking call: the other
        // goroutine can only run once this one has left the P.
        got = urge::blocking([&]() -> int {
          if (use_pipe) {
            pollfd pfd{fds[0], POLLIN, 0};
            if (::poll(&pfd, 1, 60'000) != 1) return -1;  // never: the P was not handed off
            char c = 0;
            return ::read(fds[0], &c, 1) == 1 ? c : -2;
          }
          if (future.wait_for(60s) != std::future_status::ready) return -1;
          return future.get();
        });
        wg.done();
      });
      urge::go([&] {
        while (!entered.load()) urge::yield();
        if (use_pipe) {
          char c = 42;
          EXPECT_EQ(::write(fds[1], &c, 1), 1);
        } else {
          promise.set_value(42);
        }
        wg.done();
      });
      wg.wait();
      ::close(fds[0]);
      ::close(fds[1]);
      EXPECT_EQ(got, 42) << "round " << round;
      if (got == 42) ++completed;
    }
    st = urge::stats();
  });
  EXPECT_EQ(completed, rounds);
  EXPECT_GE(st.handoffs, static_cast<std::uint64_t>(rounds)) << "one handoff per round";
  EXPECT_GE(st.threads, 2u) << "the handed-off P needs a second thread";
}

TEST(Sched, BlockingReturnsValuesAndExceptions) {
  urge::run(procs(1), [&] {
    EXPECT_EQ(urge::blocking([] { return 5; }), 5);
    EXPECT_THROW(urge::blocking([]() -> int { throw std::out_of_range("x"); }), std::out_of_range);
    // Still a working goroutine afterwards.
    urge::wait_group wg;
    wg.add(1);
    urge::go([&] { wg.done(); });
    wg.wait();
  });
  EXPECT_EQ(urge::blocking([] { return 6; }), 6) << "outside run it just calls f";
}

// ---- Exceptions across switches -------------------------------------------------

// The C++ runtime keeps per-thread exception state: the stack of exceptions
// whose catch blocks were entered and not left (what `throw;` and
// std::current_exception() read, what the end of a catch block pops) and the
// count of exceptions being unwound (std::uncaught_exceptions()). A goroutine
// that switches inside a catch block or an unwinding destructor must find its
// own state when it resumes, on whatever thread, with other goroutines having
// thrown and caught on its thread in between.

struct tagged {
  int owner;
  long seq;
};

// Two goroutines that meet on an unbuffered channel: each call parks one of
// them until the other arrives (with two Ps, often on another thread), and
// yields on the way, so that the other goroutines of the test run in between.
class rendezvous {
 public:
  void meet(bool first) const {
    urge::yield();
    if (first) {
      ch_.send(1);
      (void)ch_.recv();
    } else {
      (void)ch_.recv();
      ch_.send(2);
    }
  }

 private:
  urge::chan<int> ch_;
};

// True if the exception being handled is tagged {owner, seq}.
bool current_is(int owner, long seq) {
  std::exception_ptr ep = std::current_exception();
  if (!ep) return false;
  try {
    std::rethrow_exception(ep);
  } catch (const tagged& t) {
    return t.owner == owner && t.seq == seq;
  } catch (...) {
  }
  return false;
}

TEST_P(Procs, CatchBlocksKeepTheirExceptionAcrossSwitches) {
  constexpr int kPairs = 3;
  constexpr long kIters = 300;
  std::atomic<long> bad_current{0}, bad_nested{0}, bad_rethrow{0}, bad_after{0}, rethrown{0};
  urge::run(procs(GetParam()), [&] {
    std::vector<rendezvous> pairs(kPairs);
    urge::wait_group wg;
    for (int g = 0; g < 2 * kPairs; ++g) {
      wg.add(1);
      urge::go([&, g] {
        const rendezvous& r = pairs[static_cast<std::size_t>(g / 2)];
        const bool first = g % 2 == 0;
        for (long i = 0; i < kIters; ++i) {
          try {
            try {
              throw tagged{g, i};
            } catch (const tagged& e) {
              r.meet(first);
              if (e.owner != g || e.seq != i || !current_is(g, i)) bad_current.fetch_add(1);
              try {
                throw tagged{g, -i - 1};
              } catch (const tagged&) {
                r.meet(first);
                if (!current_is(g, -i - 1)) bad_nested.fetch_add(1);
              }
              // The nested handler is over: the outer exception is current again.
              r.meet(first);
              if (!current_is(g, i)) bad_current.fetch_add(1);
              throw;
            }
          } catch (const tagged& e) {
            if (e.owner != g || e.seq != i) bad_rethrow.fetch_add(1);
            rethrown.fetch_add(1);
          }
          if (std::current_exception() || std::uncaught_exceptions() != 0) bad_after.fetch_add(1);
        }
        wg.done();
      });
    }
    wg.wait();
  });
  EXPECT_EQ(bad_current.load(), 0) << "std::current_exception() was another goroutine's";
  EXPECT_EQ(bad_nested.load(), 0) << "a nested handler saw another goroutine's exception";
  EXPECT_EQ(bad_rethrow.load(), 0) << "`throw;` rethrew another goroutine's exception";
  EXPECT_EQ(bad_after.load(), 0) << "a goroutine outside any handler saw exceptions";
  EXPECT_EQ(rethrown.load(), 2 * kPairs * kIters);
}

// Runs `meet` from its destructor, which the test reaches by unwinding.
struct switching_guard {
  const rendezvous& r;
  bool first;
  std::atomic<long>& bad;
  ~switching_guard() {
    const int before = std::uncaught_exceptions();
    r.meet(first);
    if (before != 1 || std::uncaught_exceptions() != 1) bad.fetch_add(1);
  }
};

// Half of the goroutines switch in destructors run by unwinding (one
// exception in flight), the other half inside catch blocks (none in
// flight), on the same threads.
TEST_P(Procs, UnwindingDestructorsKeepTheirUncaughtCountAcrossSwitches) {
  constexpr int kPairs = 3;
  constexpr long kIters = 300;
  std::atomic<long> bad_unwinding{0}, bad_catching{0}, bad_caught{0}, caught{0};
  urge::run(procs(GetParam()), [&] {
    std::vector<rendezvous> pairs(kPairs);
    urge::wait_group wg;
    for (int g = 0; g < 2 * kPairs; ++g) {
      wg.add(1);
      urge::go([&, g] {
        const rendezvous& r = pairs[static_cast<std::size_t>(g / 2)];
        const bool first = g % 2 == 0;
        const bool unwinder = g % 2 == 0;  // one of each in every pair
        for (long i = 0; i < kIters; ++i) {
          try {
            if (unwinder) {
              switching_guard guard{r, first, bad_unwinding};
              throw tagged{g, i};
            }
            throw tagged{g, i};
          } catch (const tagged& e) {
            if (!unwinder) {
              r.meet(first);
              if (std::uncaught_exceptions() != 0) bad_catching.fetch_add(1);
            }
            if (e.owner != g || e.seq != i || !current_is(g, i)) bad_caught.fetch_add(1);
            caught.fetch_add(1);
          }
          if (std::uncaught_exceptions() != 0) bad_caught.fetch_add(1);
        }
        wg.done();
      });
    }
    wg.wait();
  });
  EXPECT_EQ(bad_unwinding.load(), 0) << "a destructor run by unwinding miscounted, across a switch";
  EXPECT_EQ(bad_catching.load(), 0) << "a catch block counted another goroutine's unwinding";
  EXPECT_EQ(bad_caught.load(), 0);
  EXPECT_EQ(caught.load(), 2 * kPairs * kIters);
}

// ---- Timers ---------------------------------------------------------------------

// Timing claims are checked over up to three attempts: a machine loaded by
// other test programs can make one attempt late, while a runtime that gets it
// wrong gets it wrong every time.
constexpr int kTimingAttempts = 3;

// Timers fire in the order of their deadlines. Timers that fall due together
// (when the M wakes late) are readied into runnext one after the other, which
// reverses them, as in Go; the steps are wide enough that only a wakeup late
// by a whole step can make that happen.
TEST_P(Procs, TimersFireInOrder) {
  // Three times what the kernel's own wakeups are late by now, at least 15 ms.
  clk::duration os_late{};
  for (int i = 0; i < 5; ++i) os_late = std::max(os_late, os_overshoot(1ms));
  const clk::duration step = std::max<clk::duration>(tolerance(15ms), 3 * os_late);
  const int order[] = {4, 1, 3, 5, 2, 6};  // goroutine i sleeps order[i] * step
  std::vector<int> woke;
  std::string late;  // the last attempt's overshoots, for the failure message
  for (int attempt = 0; attempt < kTimingAttempts; ++attempt) {
    woke.clear();
    std::vector<clk::duration> overshoot;
    urge::run(procs(GetParam()), [&] {
      urge::mutex mu;
      urge::wait_group wg;
      wg.add(static_cast<int>(std::size(order)));
      for (int k : order) {
        urge::go([&, k] {
          const auto t0 = clk::now();
          urge::sleep(step * k);
          const auto elapsed = clk::now() - t0;
          {
            std::lock_guard lock(mu);
            woke.push_back(k);
            overshoot.push_back(elapsed - step * k);
          }
          wg.done();
        });
      }
      wg.wait();
    });
    late.clear();
    for (std::size_t i = 0; i < overshoot.size(); ++i) {
      EXPECT_GE(overshoot[i].count(), 0) << "woke early";
      late += " " + std::to_string(woke[i]) + ":+" + std::to_string(ms(overshoot[i])) + "ms";
    }
    if (std::is_sorted(woke.begin(), woke.end())) break;
  }
  EXPECT_EQ(woke, (std::vector<int>{1, 2, 3, 4, 5, 6}))
      << "step " << ms(step) << " ms; woke late by" << late;
}

// On an idle runtime the M waiting for the next timer sleeps until it and no
// longer: sleep(d) lasts d plus a wakeup latency well under 2 ms, beyond what
// the kernel adds to a thread's own sleep(d) at the same moment (measured in
// between, on the same thread: nothing else runs).
TEST_P(Procs, SleepIsOnTimeOnAnIdleRuntime) {
  const clk::duration durations[] = {1ms, 2ms, 3ms, 5ms, 1ms, 8ms, 2ms, 13ms, 1ms, 4ms, 6ms};
  clk::duration median{}, worst{}, os_median{}, os_worst{};
  for (int attempt = 0; attempt < kTimingAttempts; ++attempt) {
    std::vector<clk::duration> over, os;
    urge::run(procs(GetParam()), [&] {
      for (auto d : durations) {
        os.push_back(os_overshoot(d));
        const auto t0 = clk::now();
        urge::sleep(d);
        over.push_back(clk::now() - t0 - d);
      }
    });
    ASSERT_EQ(over.size(), std::size(durations));
    for (auto o : over) EXPECT_GE(o.count(), 0) << "woke early";
    median = median_of(over);
    worst = *std::max_element(over.begin(), over.end());
    os_median = median_of(os);
    os_worst = *std::max_element(os.begin(), os.end());
    // The median is the claim; the worst case allows for a loaded machine.
    if (median < os_median + tolerance(2ms) && worst < os_worst + tolerance(10ms)) break;
  }
  EXPECT_LT(median, os_median + tolerance(2ms))
      << "median overshoot " << ms(median) << " ms; the kernel's " << ms(os_median) << " ms";
  EXPECT_LT(worst, os_worst + tolerance(10ms))
      << "worst overshoot " << ms(worst) << " ms; the kernel's " << ms(os_worst) << " ms";
}

// A timer on a P whose M is busy with a goroutine that never reaches a
// scheduling point is run by the other P (Go steals timers), on time.
TEST(Sched, TimerOnABusyPFiresOnTime) {
  urge::config cfg = procs(2);
  cfg.async_preempt = false;  // the hog must keep its P
  const clk::duration d = 5ms, hog = tolerance(2s);
  int same_p = 0;
  std::vector<clk::duration> over, os;
  urge::run(cfg, [&] {
    for (int attempt = 0; attempt < 5; ++attempt) {
      os.push_back(os_overshoot(d));  // the kernel's latency, for comparison
      std::atomic<bool> woke{false};
      std::atomic<int> hog_p{-1};
      int sleeper_p = -1;
      clk::duration overshoot{};
      urge::wait_group wg;
      wg.add(2);
      urge::go([&] {
        // The hog goes to this P's runnext and runs as soon as we park.
        urge::go([&] {
          hog_p = current_p();
          const auto give_up = clk::now() + hog;
          while (!woke.load() && clk::now() < give_up) cpu_relax();
          wg.done();
        });
        sleeper_p = current_p();
        const auto t0 = clk::now();
        urge::sleep(d);
        overshoot = clk::now() - t0 - d;
        woke = true;
        wg.done();
      });
      wg.wait();
      over.push_back(overshoot);
      if (hog_p.load() == sleeper_p) ++same_p;
    }
  });
  EXPECT_GT(same_p, 0) << "the hog never ran on the sleeper's P: the test proved nothing";
  // Unless another M runs the timer, it fires when the hog gives up.
  for (auto o : over) {
    EXPECT_GE(o.count(), 0);
    EXPECT_LT(o, hog / 4) << "overshoot " << ms(o) << " ms: the timer waited for the hog";
  }
  EXPECT_LT(median_of(over), median_of(os) + tolerance(5ms))
      << "median overshoot " << ms(median_of(over)) << " ms; the kernel's " << ms(median_of(os))
      << " ms";
}

// ---- Deadlock detection ---------------------------------------------------------

template <class F>
void expect_deadlock(int maxprocs, F&& main_fn) {
  try {
    urge::run(procs(maxprocs), std::forward<F>(main_fn));
    ADD_FAILURE() << "run returned: no deadlock detected";
  } catch (const urge::deadlock_error& e) {
    EXPECT_TRUE(contains(e.what(), "all goroutines are asleep - deadlock!")) << e.what();
  }
}

TEST_P(Procs, DeadlockIsDetected) {
  SCOPED_TRACE("main waits on a wait_group nobody will signal");
  expect_deadlock(GetParam(), [] {
    urge::wait_group wg;
    wg.add(1);
    wg.wait();
  });
}

TEST_P(Procs, DeadlockOnAMutexIsDetected) {
  expect_deadlock(GetParam(), [] {
    urge::mutex mu;
    mu.lock();
    mu.lock();
  });
}

TEST_P(Procs, DeadlockWithEveryGoroutineBlockedIsDetected) {
  expect_deadlock(GetParam(), [] {
    urge::wait_group never, started;
    never.add(1);
    started.add(20);
    for (int i = 0; i < 20; ++i) {
      urge::go([&] {
        started.done();
        never.wait();
      });
    }
    started.wait();
    urge::sleep(1ms);  // a timer that fires first must not hide the deadlock
    never.wait();
  });
}

TEST_P(Procs, NoDeadlockWhileASleeperWillWakeThings) {
  int v = urge::run(procs(GetParam()), [] {
    urge::wait_group wg;
    wg.add(1);
    urge::go([&] {
      urge::sleep(30ms);
      wg.done();
    });
    wg.wait();
    return 7;
  });
  EXPECT_EQ(v, 7);
}

TEST_P(Procs, NoDeadlockWhileABlockingCallWillWakeThings) {
  int v = urge::run(procs(GetParam()), [] {
    urge::wait_group wg;
    wg.add(1);
    urge::go([&] {
      urge::blocking([] { std::this_thread::sleep_for(30ms); });
      wg.done();
    });
    wg.wait();
    return 8;
  });
  EXPECT_EQ(v, 8);
}

// A run that ends with goroutines parked (deadlock, or main returning)
// abandons them; the next run must not trip over what they left behind (their
// waiter records in the semaphore table were found by the next run's wait
// groups at the same addresses, and the real waiter was never woken).
TEST(Sched, RunWorksAgainAfterAbandoningParkedGoroutines) {
  for (int i = 0; i < 20; ++i) {
    SCOPED_TRACE(i);
    expect_deadlock(1 + i % 2, [] {
      urge::wait_group wg;
      wg.add(1);
      wg.wait();
    });
    EXPECT_EQ(urge::run(procs(1 + i % 2),
                        [] {
                          urge::wait_group wg;
                          wg.add(1);
                          urge::go([&] { wg.done(); });
                          wg.wait();
                          urge::mutex mu;
                          mu.lock();
                          for (int k = 0; k < 3; ++k) urge::go([&] { mu.lock(); });
                          // Not before all three are parked: mu dies with this
                          // frame, and a goroutine still running, or started on
                          // the other P, as main returns would lock it after
                          // that, writing into main's stack where the runtime's
                          // shutdown then has its frames (under TSan's slower
                          // timing: a return address in begin_stop_locked).
                          yield_until([] { return parked_on_mutexes() == 3; },
                                      "the three goroutines park on mu");
                          return 3;  // with three goroutines parked on mu
                        }),
              3);
    EXPECT_EQ(urge::run(procs(1 + i % 2),
                        [] {
                          urge::mutex mu;
                          urge::wait_group wg;
                          wg.add(4);
                          for (int k = 0; k < 4; ++k) {
                            urge::go([&] {
                              // Unlocked before done: main's return ends mu.
                              { std::lock_guard lock(mu); }
                              wg.done();
                            });
                          }
                          wg.wait();
                          return 4;
                        }),
              4);
  }
}

// ---- The run() lifecycle --------------------------------------------------------

TEST(Sched, RunCanBeCalledManyTimes) {
  for (int i = 0; i < 10; ++i) {
    urge::config cfg = procs(1 + i % 3);
    long sum = urge::run(cfg, [i] {
      urge::wait_group wg;
      std::atomic<long> total{0};
      wg.add(100);
      for (int k = 0; k < 100; ++k) {
        urge::go([&, k] {
          total += k + i;
          wg.done();
        });
      }
      wg.wait();
      return total.load();
    });
    EXPECT_EQ(sum, 4950 + 100L * i);
  }
}

TEST(Sched, RunInsideAGoroutineThrowsLogicError) {
  bool in_main = false, in_child = false;
  urge::run(procs(2), [&] {
    try {
      urge::run([] {});
    } catch (const std::logic_error&) {
      in_main = true;
    }
    urge::wait_group wg;
    wg.add(1);
    urge::go([&] {
      try {
        urge::run([] {});
      } catch (const std::logic_error&) {
        in_child = true;
      }
      wg.done();
    });
    wg.wait();
  });
  EXPECT_TRUE(in_main);
  EXPECT_TRUE(in_child);
}

TEST(Sched, RunReturnsMainsValue) {
  EXPECT_EQ(urge::run([] { return 42; }), 42);
  EXPECT_EQ(urge::run(procs(2), [] { return std::string("forty-two"); }), "forty-two");
  std::unique_ptr<int> p = urge::run(procs(1), [] { return std::make_unique<int>(9); });
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 9);
  bool ran = false;
  urge::run(procs(1), [&] { ran = true; });
  EXPECT_TRUE(ran);
}

struct custom_error : std::runtime_error {
  using std::runtime_error::runtime_error;
  int code = 17;
};

TEST(Sched, RunRethrowsMainsExceptionWithItsType) {
  try {
    urge::run(procs(2), []() -> int { throw custom_error("from main"); });
    ADD_FAILURE() << "no exception";
  } catch (const custom_error& e) {
    EXPECT_STREQ(e.what(), "from main");
    EXPECT_EQ(e.code, 17);
  }
  try {
    urge::run(procs(1), [] { throw 5; });
    ADD_FAILURE() << "no exception";
  } catch (int v) {
    EXPECT_EQ(v, 5);
  }
  // With other goroutines still blocked: they are abandoned, the exception
  // still comes through, and the next run is clean.
  EXPECT_THROW(urge::run(procs(2),
                         [] {
                           static urge::wait_group never;
                           never.add(1);
                           for (int i = 0; i < 10; ++i) urge::go([] { never.wait(); });
                           throw std::domain_error("bail out");
                         }),
               std::domain_error);
  EXPECT_EQ(urge::run([] { return urge::num_goroutines(); }), 1u);
}

TEST(Sched, GoOutsideRunThrowsLogicError) {
  EXPECT_THROW(urge::go([] {}), std::logic_error);
  // And from a plain thread while a runtime runs elsewhere.
  urge::run(procs(1), [] {
    std::atomic<int> outcome{0};
    urge::blocking([&] {
      std::thread([&] {
        try {
          urge::go([] {});
          outcome = 1;
        } catch (const std::logic_error&) {
          outcome = 2;
        }
      }).join();
    });
    EXPECT_EQ(outcome.load(), 2);
  });
}

// ---- maxprocs -------------------------------------------------------------------

TEST(Sched, MaxprocsFromConfig) {
  EXPECT_EQ(urge::maxprocs(), 0) << "outside run";
  for (int n : {1, 2, 3, 5}) {
    EXPECT_EQ(urge::run(procs(n), [] { return urge::maxprocs(); }), n);
  }
  env_guard env("URGE_MAXPROCS", "abc");
  EXPECT_EQ(urge::run(procs(2), [] { return urge::maxprocs(); }), 2)
      << "config.maxprocs wins over the environment";
}

TEST(Sched, MaxprocsNegativeInConfigThrows) {
  try {
    urge::run(procs(-1), [] {});
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(contains(e.what(), "-1")) << e.what();
  }
}

TEST(Sched, MaxprocsFromEnvironment) {
  {
    env_guard env("URGE_MAXPROCS", "3");
    EXPECT_EQ(urge::run([] { return urge::maxprocs(); }), 3);
  }
  for (const char* bad : {"0", "-1", "abc", "2x"}) {
    SCOPED_TRACE(bad);
    env_guard env("URGE_MAXPROCS", bad);
    try {
      urge::run([] {});
      ADD_FAILURE() << "no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_TRUE(contains(e.what(), "URGE_MAXPROCS")) << e.what();
      EXPECT_TRUE(contains(e.what(), std::string("\"") + bad + "\"")) << e.what();
    }
  }
}

TEST(Sched, MaxprocsDefaultsToTheMaskLoweredToTheQuota) {
  env_guard env("URGE_MAXPROCS", nullptr);
  const auto cpus = urge::platform::affinity_cpus();
  const auto limit = urge::platform::cgroup_cpu_limit();
  int n = urge::run([] { return urge::maxprocs(); });
  EXPECT_EQ(n, urge::runtime::default_maxprocs(nullptr, cpus, limit));
  EXPECT_GE(n, 1);
  EXPECT_LE(n, static_cast<int>(cpus.size()));
  if (limit) {
    EXPECT_LE(n, std::max(1, *limit));
  }
}

class CgroupFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/urge_cgroup_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const auto& f : files_) ::unlink(f.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string file(const std::string& contents) {
    std::string path = dir_ + "/cpu.max." + std::to_string(files_.size());
    std::ofstream(path) << contents;
    files_.push_back(path);
    return path;
  }
  std::string dir_;
  std::vector<std::string> files_;
};

TEST_F(CgroupFiles, QuotaIsRoundedUpToCpus) {
  using urge::platform::cgroup_cpu_limit_from;
  EXPECT_EQ(cgroup_cpu_limit_from(file("max 100000\n")), std::nullopt);
  EXPECT_EQ(cgroup_cpu_limit_from(file("150000 100000\n")), 2);
  EXPECT_EQ(cgroup_cpu_limit_from(file("50000 100000\n")), 1);
  EXPECT_EQ(cgroup_cpu_limit_from(file("100000 100000\n")), 1);
  EXPECT_EQ(cgroup_cpu_limit_from(file("200000 100000\n")), 2);
  EXPECT_EQ(cgroup_cpu_limit_from(file("1 100000\n")), 1);
  EXPECT_EQ(cgroup_cpu_limit_from(file("250000 50000\n")), 5);
  EXPECT_EQ(cgroup_cpu_limit_from(dir_ + "/does-not-exist"), std::nullopt);
}

TEST_F(CgroupFiles, GarbageIsAnErrorNamingTheFile) {
  using urge::platform::cgroup_cpu_limit_from;
  for (const char* bad :
       {"garbage\n", "abc 100000\n", "100000 xyz\n", "-5 100000\n", "150000 0\n", "1.5 100000\n"}) {
    SCOPED_TRACE(bad);
    const std::string path = file(bad);
    try {
      auto v = cgroup_cpu_limit_from(path);
      ADD_FAILURE() << "no exception; got " << (v ? std::to_string(*v) : "nullopt");
    } catch (const std::runtime_error& e) {
      EXPECT_TRUE(contains(e.what(), path)) << e.what();
    }
  }
}

TEST(Maxprocs, DefaultIsLoweredToTheQuota) {
  using urge::runtime::default_maxprocs;
  const std::vector<int> four = {0, 1, 2, 3}, two = {4, 7};
  EXPECT_EQ(default_maxprocs(nullptr, four, std::nullopt), 4);
  EXPECT_EQ(default_maxprocs(nullptr, four, 2), 2);
  EXPECT_EQ(default_maxprocs(nullptr, four, 1), 1);
  EXPECT_EQ(default_maxprocs(nullptr, two, 8), 2) << "a quota never raises it";
  EXPECT_EQ(default_maxprocs("3", two, 1), 3) << "URGE_MAXPROCS overrides both";
  EXPECT_THROW(default_maxprocs("0", four, std::nullopt), std::invalid_argument);
  EXPECT_THROW(default_maxprocs("-2", four, std::nullopt), std::invalid_argument);
  EXPECT_THROW(default_maxprocs("four", four, std::nullopt), std::invalid_argument);
}

// ---- Pinning --------------------------------------------------------------------

std::vector<int> thread_affinity(pthread_t th) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (pthread_getaffinity_np(th, sizeof set, &set) != 0) return cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i) {
    if (CPU_ISSET(i, &set)) cpus.push_back(i);
  }
  return cpus;
}

// With pinning, a thread whose P was handed to another thread during a
// blocking call must not stay on that P's CPU: the new owner runs there. A's
// call lasts until B, which runs only once sysmon has handed the only P to
// another thread, has started. B then keeps the P (a loop without scheduling
// points, asynchronous preemption off) while A's call returns, so A's thread
// finds no P; B watches that thread's affinity widen to the whole mask.
TEST(Sched, ThreadThatLostItsPInABlockingCallIsUnpinned) {
  const std::vector<int> mask = urge::platform::affinity_cpus();
  if (mask.size() < 2) GTEST_SKIP() << "the affinity mask has one CPU: nothing to unpin";
  urge::config cfg = procs(1);
  cfg.pin_threads = true;
  cfg.async_preempt = false;
  std::vector<int> in_call, after_return;
  urge::run(cfg, [&] {
    std::atomic<pthread_t> a_thread{};
    std::atomic<bool> b_started{false}, a_returning{false};
    urge::wait_group wg;
    wg.add(2);
    urge::go([&] {  // A
      // B waits in the run queue while A is in the call.
      urge::go([&] {  // B
        b_started.store(true);
        while (!a_returning.load()) cpu_relax();
        const auto deadline = clk::now() + tolerance(2s);
        do {
          after_return = thread_affinity(a_thread.load());
        } while (after_return != mask && clk::now() < deadline);
        wg.done();
      });
      urge::blocking([&] {
        a_thread.store(pthread_self());
        in_call = thread_affinity(pthread_self());
        const auto deadline = clk::now() + tolerance(10s);
        while (!b_started.load() && clk::now() < deadline) usleep(100);
        a_returning.store(true);
      });
      wg.done();
    });
    wg.wait();
  });
  EXPECT_EQ(in_call, std::vector<int>{mask[0]}) << "A's thread held P0 when the call began";
  EXPECT_EQ(after_return, mask) << "A's thread kept P0's CPU after losing P0";
}

TEST(Sched, PinnedThreadsRunOnTheirPsCpu) {
  const std::vector<int> mask = urge::platform::affinity_cpus();
  constexpr int kNeed = 2;
  if (static_cast<int>(mask.size()) < kNeed) {
    GTEST_SKIP() << "the affinity mask has " << mask.size() << " CPU(s); pinning needs " << kNeed;
  }
  urge::config cfg = procs(kNeed);
  cfg.pin_threads = true;
  cfg.async_preempt = false;  // no migration between reading the P and the CPU
  struct sample {
    int p, cpu;
    std::vector<int> affinity;
  };
  std::vector<sample> samples;
  std::vector<int> sysmon_affinity;
  urge::run(cfg, [&] {
    urge::mutex mu;
    urge::wait_group wg;
    constexpr int kWorkers = 16;
    wg.add(kWorkers);
    for (int i = 0; i < kWorkers; ++i) {
      urge::go([&] {
        for (int k = 0; k < 20; ++k) {
          sample s{current_p(), sched_getcpu(), thread_affinity(pthread_self())};
          {
            std::lock_guard lock(mu);
            samples.push_back(std::move(s));
          }
          const auto until = clk::now() + 50us;
          while (clk::now() < until) cpu_relax();
          urge::yield();
        }
        wg.done();
      });
    }
    wg.wait();
    sysmon_affinity = thread_affinity(urge::runtime::sched->sysmon_thread.native_handle());
  });
  std::set<int> ps;
  for (const auto& s : samples) {
    ASSERT_GE(s.p, 0);
    ASSERT_LT(s.p, kNeed);
    const int want = mask[static_cast<std::size_t>(s.p)];
    ps.insert(s.p);
    EXPECT_EQ(s.affinity, std::vector<int>{want}) << "P" << s.p;
    EXPECT_EQ(s.cpu, want) << "P" << s.p;
  }
  EXPECT_EQ(ps.size(), static_cast<std::size_t>(kNeed)) << "every P ran something";
  EXPECT_EQ(sysmon_affinity, mask) << "sysmon is not pinned";
  EXPECT_EQ(thread_affinity(pthread_self()), mask) << "run() restores the caller's thread";
}

// ---- Panics ---------------------------------------------------------------------

TEST(SchedDeathTest, PanicPrintsTheExceptionAndExitsWithStatus2) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(
      {
        urge::run(procs(2), [] {
          urge::wait_group wg;
          wg.add(1);
          urge::go([] { throw std::runtime_error("boom in a goroutine"); });
          wg.wait();
        });
        std::exit(0);
      },
      ::testing::ExitedWithCode(2), "panic: boom in a goroutine.*goroutine [0-9]+ ");
}

// ---- schedtrace -----------------------------------------------------------------

// Runs body in a forked child (no exec: qemu-user could not exec the test
// binary again) with URGE_DEBUG=debug, and returns its stderr. The child
// exits 0 if body returned.
std::string child_stderr(const char* debug, const std::function<void()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 2);
    ::close(fds[1]);
    ::setenv("URGE_DEBUG", debug, 1);
    try {
      body();
    } catch (...) {
      ::_exit(3);
    }
    std::fflush(nullptr);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  return out;
}

// Keeps two Ps busy on and off for a while, so schedtrace has something to say.
void trace_workload() {
  urge::run(procs(2), [] {
    urge::wait_group wg;
    wg.add(4);
    for (int i = 0; i < 4; ++i) {
      urge::go([&] {
        for (int k = 0; k < 15; ++k) urge::sleep(10ms);
        wg.done();
      });
    }
    wg.wait();
  });
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A matcher for Go's trace formats, without std::regex (whose headers make
// g++ 12 warn under the sanitizers). It matches `text` against `fmt` in full;
// '#' in fmt stands for one or more digits (\d+), every other character for
// itself.
bool matches(std::string_view text, std::string_view fmt) {
  std::size_t i = 0;
  for (char c : fmt) {
    if (c == '#') {
      const std::size_t start = i;
      while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
      if (i == start) return false;
    } else if (i < text.size() && text[i] == c) {
      ++i;
    } else {
      return false;
    }
  }
  return i == text.size();
}

// The number of entries in a per-P run queue list matching (\d+ ?)+, or -1.
int list_entries(std::string_view list) {
  int n = 0;
  std::size_t i = 0;
  while (i < list.size()) {
    const std::size_t start = i;
    while (i < list.size() && list[i] >= '0' && list[i] <= '9') ++i;
    if (i == start) return -1;
    ++n;
    if (i < list.size() && list[i] == ' ') ++i;
  }
  return n > 0 ? n : -1;
}

TEST(Sched, TraceMatcherIsRight) {
  // The matcher itself: what the tests below rely on.
  EXPECT_TRUE(matches("SCHED 12ms: x=3", "SCHED #ms: x=#"));
  EXPECT_FALSE(matches("SCHED ms: x=3", "SCHED #ms: x=#"));
  EXPECT_FALSE(matches("SCHED 12ms: x=3 ", "SCHED #ms: x=#"));
  EXPECT_FALSE(matches("SCHED 12ms: x=-3", "SCHED #ms: x=#"));
  EXPECT_EQ(list_entries("0 1"), 2);
  EXPECT_EQ(list_entries("5"), 1);
  EXPECT_EQ(list_entries("0 1 "), 2);
  EXPECT_EQ(list_entries(""), -1);
  EXPECT_EQ(list_entries("0  1"), -1);
  EXPECT_EQ(list_entries("a"), -1);
}

// Go's `SCHED` line: the regex
//   ^SCHED \d+ms: gomaxprocs=\d+ idleprocs=\d+ threads=\d+ spinningthreads=\d+
//   idlethreads=\d+ runqueue=\d+ \[(\d+ ?)+\]$
// (one line). Returns the number of per-P entries, or -1 if it does not match.
int sched_line_entries(const std::string& line) {
  const std::size_t open = line.rfind(" [");
  if (open == std::string::npos || line.empty() || line.back() != ']') return -1;
  if (!matches(std::string_view(line).substr(0, open),
               "SCHED #ms: gomaxprocs=# idleprocs=# threads=# spinningthreads=# idlethreads=# "
               "runqueue=#")) {
    return -1;
  }
  return list_entries(std::string_view(line).substr(open + 2, line.size() - open - 3));
}

TEST(Sched, SchedtracePrintsGoFormat) {
  const std::string err = child_stderr("schedtrace=10", trace_workload);
  int n = 0;
  for (const auto& line : lines_of(err)) {
    if (line.rfind("SCHED", 0) != 0) continue;
    ++n;
    EXPECT_EQ(sched_line_entries(line), 2) << "Go's format, one count per P: " << line;
    EXPECT_TRUE(contains(line, " gomaxprocs=2 ")) << line;
  }
  EXPECT_GE(n, 3) << "a 150 ms run traced every 10 ms:\n" << err;
}

TEST(Sched, ScheddetailPrintsPMAndGLines) {
  const std::string err = child_stderr("schedtrace=10,scheddetail=1", trace_workload);
  int sched = 0, counters = 0, p0 = 0, p1 = 0, m0 = 0, g1 = 0;
  for (const auto& line : lines_of(err)) {
    if (line.rfind("SCHED", 0) == 0) {
      ++sched;
      EXPECT_TRUE(matches(line,
                          "SCHED #ms: gomaxprocs=2 idleprocs=# threads=# spinningthreads=# "
                          "idlethreads=# runqueue=# gcwaiting=# nmidlelocked=# stopwait=# "
                          "sysmonwait=#"))
          << line;
    }
    if (line.rfind("  preempt: ", 0) == 0) {
      ++counters;
      EXPECT_TRUE(matches(line, "  preempt: requests=# signals=# timer=# taken=# deferred=#"))
          << line;
    }
    if (line.rfind("  P0: status=", 0) == 0) ++p0;
    if (line.rfind("  P1: status=", 0) == 0) ++p1;
    if (line.rfind("  M0: p=", 0) == 0) ++m0;
    if (line.rfind("  G1: status=", 0) == 0) ++g1;
  }
  EXPECT_GE(sched, 3) << err;
  EXPECT_EQ(counters, sched) << "the preemption counters under every SCHED line:\n" << err;
  EXPECT_GE(p0, 3) << err;
  EXPECT_GE(p1, 3) << err;
  EXPECT_GE(m0, 3) << err;
  EXPECT_GE(g1, 3) << err;
}

// ---- The idle runtime -----------------------------------------------------------

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

TEST(Sched, IdleRuntimeUsesNoCpu) {
  if (slow()) GTEST_SKIP() << "URGE_TEST_SLOW: CPU time under emulation or ASan says little";
  double used = -1;
  urge::run(procs(2), [&] {
    urge::wait_group gate, started;
    gate.add(1);
    started.add(8);
    for (int i = 0; i < 8; ++i) {
      urge::go([&] {
        started.done();
        gate.wait();
      });
    }
    started.wait();
    const double before = cpu_seconds();
    urge::sleep(300ms);  // everything parked; only main's timer pending
    used = cpu_seconds() - before;
    gate.done();
  });
  EXPECT_GE(used, 0);
  EXPECT_LT(used, 0.030) << "CPU seconds used by an idle runtime in 300 ms";
}

// ---- Counters -------------------------------------------------------------------

TEST(Sched, FanOutIsStolen) {
  urge::sched_stats st;
  std::set<int> ps;
  urge::run(procs(2), [&] {
    urge::mutex mu;
    urge::wait_group wg;
    // Fewer than a run queue holds, so nothing overflows to the global queue:
    // the other P can only get work by stealing it.
    constexpr int kN = 200;
    wg.add(kN);
    for (int i = 0; i < kN; ++i) {
      urge::go([&] {
        const auto until = clk::now() + 100us;
        while (clk::now() < until) cpu_relax();
        {
          std::lock_guard lock(mu);
          ps.insert(current_p());
        }
        wg.done();
      });
    }
    wg.wait();
    st = urge::stats();
  });
  EXPECT_GT(st.steals, 0u);
  EXPECT_EQ(ps.size(), 2u) << "both Ps ran goroutines";
}

}  // namespace
