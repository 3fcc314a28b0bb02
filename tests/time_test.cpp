// Timers on channels: after, ticker, timer, after_func (after Go's
// time/sleep_test.go and tick_test.go). Timing is checked to an order of
// magnitude only: never early, and late by less than a generous margin that
// URGE_TEST_SLOW widens tenfold.
#include <algorithm>
#include <atomic>
#include <random>
#include <stdexcept>
#include <vector>

#include "procs_fixture.hpp"
#include "runtime/chan.hpp"
#include "runtime/runtime2.hpp"

namespace {

using namespace urge_test;
using urge::chan;

class Time : public procs_test {};
URGE_PROCS_SUITE(Time);

using time_point = clk::time_point;

// How late a timer may be: scheduling on a loaded two-core machine.
clk::duration late() {
  return tolerance(100ms);
}

TEST_P(Time, AfterFiresOnTime) {
  run([] {
    auto start = clk::now();
    chan<time_point> c = urge::after(20ms);
    EXPECT_EQ(c.capacity(), 1u);
    time_point fired = *c.recv();
    auto now = clk::now();
    EXPECT_GE(fired - start, 20ms);
    EXPECT_LE(fired, now);
    EXPECT_LT(now - start, 20ms + late()) << ms(now - start) << " ms";
  });
}

TEST_P(Time, AfterWithNonPositiveDurationIsReadyAtOnce) {
  run([] {
    EXPECT_TRUE(urge::after(0ns).recv().has_value());
    EXPECT_TRUE(urge::after(-5s).recv().has_value());
  });
}

TEST_P(Time, TimersFireInOrder) {
  run([] {
    // Added without parking in between, so all on one P's heap.
    std::vector<int> order = {7, 2, 9, 0, 4, 1, 8, 3, 6, 5};
    const clk::duration step = tolerance(3ms);
    auto start = clk::now();
    std::vector<chan<time_point>> c(order.size(), chan<time_point>::nil());
    for (int i : order) c[static_cast<std::size_t>(i)] = urge::after(step * (i + 1));
    time_point prev{};
    for (std::size_t i = 0; i < c.size(); ++i) {
      time_point t = *c[i].recv();
      EXPECT_GE(t - start, step * static_cast<int>(i + 1)) << "timer " << i << " early";
      EXPECT_GE(t, prev) << "timer " << i << " fired before timer " << i - 1;
      prev = t;
    }
    EXPECT_LT(clk::now() - start, step * 10 + late());
  });
}

TEST_P(Time, ManyTimersAllFireAndNoneEarly) {
  run([] {
    constexpr int n = 1000;
    std::mt19937 rng(42);
    std::uniform_int_distribution<int> us(0, 20000);
    urge::wait_group wg;
    std::atomic<int> early{0}, fired{0};
    for (int i = 0; i < n; ++i) {
      auto d = std::chrono::microseconds(us(rng));
      wg.add(1);
      urge::go([&, d] {
        auto start = clk::now();
        time_point t = *urge::after(d).recv();
        if (t - start < d) ++early;
        ++fired;
        wg.done();
      });
    }
    wg.wait();
    EXPECT_EQ(fired.load(), n);
    EXPECT_EQ(early.load(), 0);
  });
}

// Regression: a timer callback sending on the channel its receiver is just
// parking on (holding the channel's lock until the switch completes) must
// not deadlock the M.
TEST_P(Time, TimerDueWhileItsReceiverParks) {
  run([] {
    chan<int> never;
    for (int i = 0; i < 2000; ++i) {
      urge::after(1us).recv();
      urge::select(urge::on_recv(never), urge::on_recv(urge::after(1us)));
    }
  });
}

// Timers still pending when run() returns are discarded with their heaps:
// what only they held is released. after()'s channel reference, here: the
// handle kept beyond run() must end as the channel's only reference.
TEST(TimeShutdown, PendingTimersReleaseWhatTheyHoldWhenRunEnds) {
  urge::chan<time_point> kept;
  urge::run([&] {
    kept = urge::after(std::chrono::hours(1));
    urge::timer t(std::chrono::hours(1));  // its handle dies here, the timer stays pending
  });
  EXPECT_EQ(urge::detail::chan_access::get(kept)->refs.load(), 1u);
}

TEST_P(Time, SelectWithTimeout) {
  run([] {
    chan<int> data;
    auto start = clk::now();
    bool timed_out = false;
    std::size_t k = urge::select(urge::on_recv(data),
                                 urge::on_recv(urge::after(10ms), [&] { timed_out = true; }));
    EXPECT_EQ(k, 1u);
    EXPECT_TRUE(timed_out);
    EXPECT_GE(clk::now() - start, 10ms);
    // Data first: the timeout loses.
    urge::go([data] { data.send(1); });
    EXPECT_EQ(urge::select(urge::on_recv(data), urge::on_recv(urge::after(tolerance(10s)))), 0u);
  });
}

TEST_P(Time, TickerTicks) {
  run([] {
    const clk::duration period = tolerance(5ms);
    // Before the ticker: its ticks are due a whole number of periods after its
    // creation, which a clock read after it could see as a little less.
    auto start = clk::now();
    urge::ticker t(period);
    time_point prev = start;
    for (int i = 0; i < 5; ++i) {
      time_point tick = *t.c().recv();
      EXPECT_GT(tick, prev);
      prev = tick;
    }
    auto elapsed = clk::now() - start;
    EXPECT_GE(elapsed, period * 5);
    EXPECT_LT(elapsed, period * 5 + late());
    t.stop();
  });
}

TEST_P(Time, TickerDropsTicksForASlowReader) {
  run([] {
    urge::ticker t(1ms);
    urge::sleep(tolerance(30ms));  // the slow reader: ~30 ticks due meanwhile
    EXPECT_EQ(t.c().size(), 1u);   // only one waits
    time_point first = *t.c().recv();
    time_point second = *t.c().recv();  // a fresh tick, not a backlog
    EXPECT_GT(second, first);
  });
}

TEST_P(Time, TickerStopStopsTicks) {
  run([] {
    urge::ticker t(1ms);
    t.c().recv();
    t.stop();
    t.c().try_recv();  // one may have been buffered before stop
    urge::sleep(tolerance(10ms));
    EXPECT_EQ(t.c().try_recv(), std::nullopt);
    t.stop();  // again: harmless
    // reset restarts it.
    t.reset(2ms);
    EXPECT_TRUE(t.c().recv().has_value());
    EXPECT_THROW(t.reset(0ns), std::invalid_argument);
  });
  EXPECT_THROW(urge::ticker(0ns), std::invalid_argument);
}

TEST_P(Time, TickerStopsWhenDestroyed) {
  run([] {
    chan<time_point> c = chan<time_point>::nil();
    {
      urge::ticker t(1ms);
      c = t.c();
      c.recv();
    }
    c.try_recv();
    urge::sleep(tolerance(10ms));
    EXPECT_EQ(c.try_recv(), std::nullopt);
  });
}

TEST_P(Time, TimerStopAndReset) {
  run([] {
    // Stopped before it fires: nothing arrives.
    urge::timer t(tolerance(20ms));
    EXPECT_TRUE(t.stop());
    EXPECT_FALSE(t.stop());
    urge::sleep(tolerance(40ms));
    EXPECT_EQ(t.c().try_recv(), std::nullopt);
    // Reset a stopped timer: it fires once.
    auto start = clk::now();
    EXPECT_FALSE(t.reset(5ms));
    time_point fired = *t.c().recv();
    EXPECT_GE(fired - start, 5ms);
    EXPECT_FALSE(t.stop());  // already fired
    // Reset a pending timer: true, and it fires at the new time only.
    EXPECT_FALSE(t.reset(tolerance(10s)));
    EXPECT_TRUE(t.reset(5ms));
    EXPECT_TRUE(t.c().recv().has_value());
    EXPECT_EQ(t.c().try_recv(), std::nullopt);
  });
}

TEST_P(Time, DroppingATimerDoesNotStopIt) {
  run([] {
    chan<time_point> c = chan<time_point>::nil();
    {
      urge::timer t(2ms);
      c = t.c();
    }
    EXPECT_TRUE(c.recv().has_value());
  });
}

TEST_P(Time, AfterFuncRunsInItsOwnGoroutine) {
  run([] {
    chan<urge::runtime::g*> ran;
    urge::runtime::g* self = urge::runtime::getg();
    urge::after_func(2ms, [ran] { ran.send(urge::runtime::getg()); });  // blocks: a goroutine
    urge::runtime::g* gp = *ran.recv();
    EXPECT_NE(gp, self);
    EXPECT_NE(gp, nullptr);
    // Stopped in time, it never runs.
    std::atomic<bool> did{false};
    urge::timer t = urge::after_func(tolerance(20ms), [&did] { did = true; });
    EXPECT_TRUE(t.c().is_nil());
    EXPECT_TRUE(t.stop());
    urge::sleep(tolerance(40ms));
    EXPECT_FALSE(did.load());
    EXPECT_FALSE(t.reset(1ms));
    while (!did.load()) urge::sleep(1ms);
  });
}

TEST(TimeOutsideRun, Throws) {
  EXPECT_THROW(urge::after(1ms), std::logic_error);
  EXPECT_THROW(urge::ticker(1ms), std::logic_error);
  EXPECT_THROW(urge::timer(1ms), std::logic_error);
}

}  // namespace
