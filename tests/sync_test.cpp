// The sync library: mutex (normal and starvation modes), rw_mutex, cond,
// once, semaphore, wait_group; all parking goroutines, none blocking threads.
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "procs_fixture.hpp"
#include "runtime/lock.hpp"
#include "runtime/runtime2.hpp"

namespace urge::detail {
// Declared by urge/sync.hpp for tests; the library never defines it.
struct mutex_probe {
  static std::int32_t state(const urge::mutex& m) { return m.state_.load(); }
  static constexpr std::int32_t locked = urge::mutex::locked;
  static constexpr std::int32_t starving = urge::mutex::starving;
  static constexpr std::int32_t waiter_shift = urge::mutex::waiter_shift;
};
}  // namespace urge::detail

namespace {

using namespace urge_test;
using urge::chan;
using urge::detail::mutex_probe;
using urge::runtime::waitreason;

class Sync : public procs_test {};
URGE_PROCS_SUITE(Sync);

void busy_for(clk::duration d) {
  auto end = clk::now() + d;
  while (clk::now() < end) {
  }
}

// Yields until pred() holds or a generous deadline passes; returns pred().
template <class Pred>
bool eventually(Pred pred) {
  auto deadline = clk::now() + tolerance(10s);
  while (!pred() && clk::now() < deadline) urge::yield();
  return pred();
}

// Runs f in a goroutine and returns a pointer to that goroutine, for
// looking at its wait reason.
template <class F>
urge::runtime::g* go_probe(F f) {
  chan<urge::runtime::g*> self(1);
  urge::go([self, f]() mutable {
    self.send(urge::runtime::getg());
    f();
  });
  return *self.recv();
}

bool waits_with(urge::runtime::g* gp, waitreason r) {
  return eventually(
      [&] { return gp->status.load() == urge::runtime::gstatus::waiting && gp->reason == r; });
}

TEST_P(Sync, MutexCounts) {
  run([] {
    urge::mutex mu;
    long counter = 0;
    urge::wait_group wg;
    for (int i = 0; i < 8; ++i) {
      wg.add(1);
      urge::go([&] {
        for (int j = 0; j < 10000; ++j) {
          std::lock_guard lock(mu);
          ++counter;
          if (j % 1000 == 0) urge::yield();
        }
        wg.done();
      });
    }
    wg.wait();
    EXPECT_EQ(counter, 80000);
    EXPECT_TRUE(mu.try_lock());
    EXPECT_FALSE(mu.try_lock());
    mu.unlock();
  });
}

// A waiter passed over for more than 1 ms switches the mutex to starvation
// mode, where the lock is handed to it; once served, the mutex goes back to
// normal mode. In normal mode a woken waiter may still win the race for the
// lock (on another P), as in Go; then the round is tried again.
TEST_P(Sync, MutexStarvationModeIsReachedAndLeft) {
  run([] {
    bool saw_starving = false;
    for (int round = 0; round < 20 && !saw_starving; ++round) {
      urge::mutex mu;
      std::atomic<bool> b_done{false};
      mu.lock();
      urge::runtime::g* b = go_probe([&] {
        mu.lock();
        b_done = true;
        mu.unlock();
      });
      ASSERT_TRUE(waits_with(b, waitreason::sync_mutex_lock));
      auto starving = [&] { return (mutex_probe::state(mu) & mutex_probe::starving) != 0; };
      auto deadline = clk::now() + tolerance(1s);
      while (!b_done && clk::now() < deadline) {
        busy_for(2ms);  // b has now waited for more than 1 ms
        if ((saw_starving = starving())) break;
        // Barge: unlock (waking b) and take the lock again before b runs.
        mu.unlock();
        mu.lock();
        // b wakes, finds the lock taken and, having starved, flags the mutex.
        auto until = clk::now() + tolerance(100ms);
        while (!starving() && !b_done && clk::now() < until) urge::yield();
        if ((saw_starving = starving())) break;
      }
      // In starvation mode this unlock hands the mutex to b directly.
      mu.unlock();
      ASSERT_TRUE(eventually([&] { return b_done.load(); }));
      // Served (b was the last waiter): normal mode again, nobody waiting.
      ASSERT_TRUE(eventually([&] { return mutex_probe::state(mu) == 0; }))
          << mutex_probe::state(mu);
      EXPECT_TRUE(mu.try_lock());  // barging allowed again
      mu.unlock();
    }
    EXPECT_TRUE(saw_starving);
  });
}

TEST_P(Sync, MutexMayBeDestroyedRightAfterItsLastUnlock) {
  run([] {
    for (int i = 0; i < 1000; ++i) {
      auto mu = std::make_unique<urge::mutex>();
      chan<bool> done;
      mu->lock();
      urge::go([&mu, done] {
        mu->lock();
        mu->unlock();
        done.send(true);
      });
      urge::yield();
      mu->unlock();
      done.recv();
      mu.reset();
    }
  });
}

TEST_P(Sync, RwMutexReadersShareWritersExclude) {
  run([] {
    urge::rw_mutex mu;
    mu.lock_shared();
    EXPECT_TRUE(mu.try_lock_shared());  // a second reader
    EXPECT_FALSE(mu.try_lock());
    mu.unlock_shared();
    mu.unlock_shared();
    EXPECT_TRUE(mu.try_lock());
    EXPECT_FALSE(mu.try_lock_shared());
    EXPECT_FALSE(mu.try_lock());
    mu.unlock();
    // With the standard wrappers.
    { std::shared_lock r(mu); }
    { std::lock_guard w(mu); }
    // A writer waits for the readers inside; a reader waits for the writer.
    mu.lock_shared();
    std::atomic<bool> wrote{false};
    urge::runtime::g* w = go_probe([&] {
      std::lock_guard lock(mu);
      wrote = true;
    });
    ASSERT_TRUE(waits_with(w, waitreason::sync_rwmutex_lock));
    EXPECT_FALSE(wrote.load());
    EXPECT_FALSE(mu.try_lock_shared());  // a writer is pending: no new readers
    mu.unlock_shared();
    EXPECT_TRUE(eventually([&] { return wrote.load(); }));
    mu.lock();
    chan<bool> read(1);
    urge::runtime::g* r = go_probe([&] {
      mu.lock_shared();
      mu.unlock_shared();
      read.send(true);  // mu is ours: wait for the reader before it goes
    });
    EXPECT_TRUE(waits_with(r, waitreason::sync_rwmutex_rlock));
    mu.unlock();
    EXPECT_EQ(read.recv(), true);
  });
}

// Readers holding the lock in overlapping turns would keep it for ever if
// new readers could always enter; a pending writer must get it.
TEST_P(Sync, RwMutexWriterIsNotStarvedByReaders) {
  run([] {
    urge::rw_mutex mu;
    std::atomic<bool> stop{false};
    std::atomic<int> inside{0};
    std::atomic<long> reads{0};
    urge::wait_group wg;
    for (int i = 0; i < 4; ++i) {
      wg.add(1);
      urge::go([&] {
        while (!stop) {
          std::shared_lock lock(mu);
          ++inside;
          ++reads;
          urge::yield();  // hold it across a switch: the readers overlap
          --inside;
        }
        wg.done();
      });
    }
    ASSERT_TRUE(eventually([&] { return reads.load() > 100; }));
    for (int round = 0; round < 20; ++round) {
      auto start = clk::now();
      mu.lock();
      EXPECT_LT(clk::now() - start, tolerance(1s));
      EXPECT_EQ(inside.load(), 0);
      long before = reads.load();
      urge::yield();
      EXPECT_EQ(reads.load(), before);  // nobody reads while we write
      mu.unlock();
      urge::yield();
    }
    stop = true;
    wg.wait();
  });
}

TEST_P(Sync, CondSignalWakesWaitersInOrder) {
  run([] {
    constexpr int n = 8;
    urge::mutex mu;
    urge::cond cv;
    int arrived = 0;
    chan<int> woke(n);
    for (int i = 0; i < n; ++i) {
      urge::go([&, i] {
        std::unique_lock lock(mu);
        ++arrived;
        cv.wait(lock);  // takes its ticket before unlocking
        lock.unlock();  // before main may see the last value and return
        woke.send(i);
      });
      // Once we can see it arrived, it holds its ticket.
      ASSERT_TRUE(eventually([&] {
        std::lock_guard lock(mu);
        return arrived == i + 1;
      }));
    }
    for (int i = 0; i < n; ++i) {
      cv.signal();
      EXPECT_EQ(woke.recv(), i);
    }
  });
}

TEST_P(Sync, CondBroadcastWakesAllAndPredicateWaits) {
  run([] {
    constexpr int n = 10;
    urge::mutex mu;
    urge::cond cv;
    bool go_ahead = false;
    urge::wait_group wg;
    std::vector<urge::runtime::g*> gs;
    for (int i = 0; i < n; ++i) {
      wg.add(1);
      gs.push_back(go_probe([&] {
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return go_ahead; });
        }
        wg.done();
      }));
    }
    for (auto* gp : gs) ASSERT_TRUE(waits_with(gp, waitreason::sync_cond_wait));
    cv.broadcast();  // spurious for the predicate: they wait again
    for (auto* gp : gs) ASSERT_TRUE(waits_with(gp, waitreason::sync_cond_wait));
    {
      std::lock_guard lock(mu);
      go_ahead = true;
    }
    cv.notify_all();
    wg.wait();
  });
}

TEST_P(Sync, CondSignalIsNotRemembered) {
  run([] {
    urge::mutex mu;
    urge::cond cv;
    cv.signal();  // nobody waits: lost, as in Go
    std::atomic<bool> woke{false};
    chan<bool> done(1);
    urge::runtime::g* gp = go_probe([&] {
      {
        std::unique_lock lock(mu);
        cv.wait(lock);
        woke = true;
      }
      done.send(true);
    });
    ASSERT_TRUE(waits_with(gp, waitreason::sync_cond_wait));
    urge::sleep(tolerance(5ms));
    EXPECT_FALSE(woke.load());
    cv.signal();
    EXPECT_EQ(done.recv(), true);
    EXPECT_TRUE(woke.load());
  });
}

TEST_P(Sync, OnceRunsOnceAndParksConcurrentCallers) {
  run([] {
    urge::once once;
    std::atomic<int> calls{0};
    std::atomic<bool> ready{false};
    urge::wait_group wg;
    for (int i = 0; i < 10; ++i) {
      wg.add(1);
      urge::go([&] {
        once.call([&] {
          ++calls;
          for (int k = 0; k < 10; ++k) urge::yield();  // let the others pile up
          ready = true;
        });
        EXPECT_TRUE(ready.load());  // nobody returns before f is done
        wg.done();
      });
    }
    wg.wait();
    EXPECT_EQ(calls.load(), 1);
    EXPECT_TRUE(once.done());
    // An exception leaves it not done, like std::call_once.
    urge::once flaky;
    EXPECT_THROW(flaky.call([] { throw std::runtime_error("no"); }), std::runtime_error);
    EXPECT_FALSE(flaky.done());
    int n = 0;
    urge::call_once(
        flaky, [&n](int k) { n = k; }, 5);
    EXPECT_EQ(n, 5);
    EXPECT_TRUE(flaky.done());
  });
}

TEST_P(Sync, SemaphoreBoundsConcurrency) {
  run([] {
    urge::semaphore sem(3);
    std::atomic<int> inside{0}, most{0};
    urge::wait_group wg;
    for (int i = 0; i < 20; ++i) {
      wg.add(1);
      urge::go([&] {
        for (int k = 0; k < 50; ++k) {
          sem.acquire();
          int now = ++inside;
          int m = most.load();
          while (now > m && !most.compare_exchange_weak(m, now)) {
          }
          urge::yield();
          --inside;
          sem.release();
        }
        wg.done();
      });
    }
    wg.wait();
    EXPECT_LE(most.load(), 3);
    EXPECT_GE(most.load(), 1);
    EXPECT_EQ(sem.available(), 3);
    EXPECT_THROW(sem.acquire(-1), std::invalid_argument);
  });
}

TEST_P(Sync, SemaphoreServesWaitersFirstComeFirstServed) {
  run([] {
    urge::semaphore sem(0);
    chan<int> order(2);
    urge::runtime::g* big = go_probe([&] {
      sem.acquire(3);
      order.send(3);
    });
    ASSERT_TRUE(waits_with(big, waitreason::semacquire));
    urge::runtime::g* small = go_probe([&] {
      sem.acquire(1);
      order.send(1);
    });
    ASSERT_TRUE(waits_with(small, waitreason::semacquire));
    sem.release(1);                    // enough for the small one, but the big one is first
    EXPECT_FALSE(sem.try_acquire(1));  // and newcomers queue too
    for (int i = 0; i < 10; ++i) urge::yield();
    EXPECT_EQ(order.size(), 0u);
    sem.release(2);  // 3: the big one
    EXPECT_EQ(order.recv(), 3);
    EXPECT_EQ(order.try_recv(), std::nullopt);
    sem.release(1);
    EXPECT_EQ(order.recv(), 1);
    EXPECT_EQ(sem.available(), 0);
    EXPECT_TRUE(sem.try_acquire(0));
  });
}

TEST_P(Sync, WaitGroup) {
  run([] {
    urge::wait_group wg;
    wg.wait();  // zero: returns at once
    std::atomic<int> n{0};
    for (int i = 0; i < 100; ++i) {
      wg.add(1);
      urge::go([&] {
        ++n;
        wg.done();
      });
    }
    wg.wait();
    EXPECT_EQ(n.load(), 100);
    EXPECT_THROW(wg.done(), std::logic_error);  // negative counter: Go panics
  });
}

TEST(SyncOutsideRun, CondAndSemaphoreWorkOnPlainThreads) {
  urge::semaphore sem(0);
  urge::mutex mu;
  urge::cond cv;
  bool flag = false;
  std::thread t([&] {
    sem.acquire(2);
    std::lock_guard lock(mu);
    flag = true;
    cv.signal();
  });
  sem.release(1);
  sem.release(1);
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return flag; });
  }
  t.join();
  EXPECT_TRUE(flag);
}

// The runtime's own lock (runtime/lock.hpp) on plain threads, spinning and
// not: holders that sleep inside the critical section send the waiters to
// the futex, and an unlock that failed to wake the next sleeper (the state of
// a lock taken after a wake-up) would leave this test hung.
TEST(RuntimeLock, ExcludesAndWakesEverySleeper) {
  const int saved_spin = urge::runtime::futex_mutex::active_spin;
  for (int spin : {4, 0}) {
    urge::runtime::futex_mutex::active_spin = spin;
    urge::runtime::futex_mutex lock;
    long counter = 0;  // guarded by lock, deliberately not atomic
    constexpr int threads = 4, rounds = 20000;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&] {
        for (int i = 0; i < rounds; ++i) {
          lock.lock();
          long seen = counter;
          if (i % 256 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
          counter = seen + 1;
          lock.unlock();
        }
      });
    }
    for (std::thread& t : ts) t.join();
    EXPECT_EQ(counter, long{threads} * rounds) << "active_spin " << spin;
    EXPECT_TRUE(lock.try_lock()) << "left locked, active_spin " << spin;
    lock.unlock();
  }
  urge::runtime::futex_mutex::active_spin = saved_spin;
}

}  // namespace
