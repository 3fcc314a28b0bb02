// Channels: rendezvous, buffering, close, handles, element lifetimes, wait
// reasons and deadlock detection (after Go's runtime/chan_test.go).
#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <vector>

#include "procs_fixture.hpp"
#include "runtime/chan.hpp"
#include "runtime/runtime2.hpp"

namespace {

using namespace urge_test;
using urge::chan;

class Chan : public procs_test {};
URGE_PROCS_SUITE(Chan);

// Range-for, and the standard range algorithms, see a channel as an input range.
static_assert(std::ranges::input_range<chan<int>>);
static_assert(std::input_iterator<chan<int>::iterator>);

// Goroutines queued on a channel, counted under its lock.
template <class T>
std::size_t queued(const chan<T>& ch, bool senders) {
  urge::detail::hchan* c = urge::detail::chan_access::get(ch);
  std::lock_guard lock(c->lock);
  std::size_t n = 0;
  for (auto* s = (senders ? c->sendq : c->recvq).first; s; s = s->next) ++n;
  return n;
}

// Yields until n goroutines wait on ch (they block in a bounded number of
// steps, so this ends; the bound only turns a bug into a failure).
template <class T>
bool await_queued(const chan<T>& ch, bool senders, std::size_t n) {
  auto deadline = clk::now() + tolerance(10s);
  while (queued(ch, senders) < n) {
    if (clk::now() > deadline) return false;
    urge::yield();
  }
  return true;
}

// Counts live instances, to check that the channel neither leaks nor
// destroys a value twice.
struct counted {
  static inline std::atomic<int> live{0};
  int v = 0;
  explicit counted(int x) : v(x) { ++live; }
  counted(const counted& o) : v(o.v) { ++live; }
  counted(counted&& o) noexcept : v(o.v) { ++live; }
  counted& operator=(const counted&) = default;
  ~counted() { --live; }
};

TEST_P(Chan, UnbufferedSendWaitsForTheReceiver) {
  run([] {
    chan<int> ch;
    chan<bool> done;
    std::atomic<bool> sent{false};
    urge::go([=, &sent] {
      ch.send(7);
      sent = true;
      done.send(true);
    });
    ASSERT_TRUE(await_queued(ch, true, 1));
    EXPECT_FALSE(sent.load());  // blocked until we receive
    EXPECT_EQ(ch.recv(), 7);
    done.recv();
    EXPECT_TRUE(sent.load());
  });
}

TEST_P(Chan, BlockedSendersAreServedInArrivalOrder) {
  run([] {
    constexpr int n = 20;
    chan<int> ch;
    for (int i = 0; i < n; ++i) {
      urge::go([ch, i] { ch.send(i); });
      ASSERT_TRUE(await_queued(ch, true, static_cast<std::size_t>(i + 1)));
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(ch.recv(), i);
  });
}

TEST_P(Chan, BlockedReceiversAreServedInArrivalOrder) {
  run([] {
    constexpr int n = 20;
    chan<int> ch;
    chan<std::pair<int, int>> got(n);  // (receiver, value)
    for (int i = 0; i < n; ++i) {
      urge::go([ch, got, i] { got.send({i, *ch.recv()}); });
      ASSERT_TRUE(await_queued(ch, false, static_cast<std::size_t>(i + 1)));
    }
    for (int i = 0; i < n; ++i) ch.send(i * 10);
    for (int i = 0; i < n; ++i) {
      auto [who, v] = *got.recv();
      EXPECT_EQ(v, who * 10);
    }
  });
}

TEST_P(Chan, PingPong) {
  run([] {
    chan<int> ping, pong;
    urge::go([=] {
      while (std::optional<int> v = ping.recv()) pong.send(*v + 1);
      pong.close();
    });
    int v = 0;
    for (int i = 0; i < 20000; ++i) {
      ping.send(v);
      v = *pong.recv();
    }
    ping.close();
    EXPECT_EQ(v, 20000);
    EXPECT_EQ(pong.recv(), std::nullopt);
  });
}

TEST_P(Chan, BufferedIsFifoAndDoesNotBlockUntilFull) {
  run([] {
    chan<int> ch(5);
    EXPECT_EQ(ch.capacity(), 5u);
    for (int i = 0; i < 5; ++i) {
      ch.send(i);  // nobody receives: must not block
      EXPECT_EQ(ch.size(), static_cast<std::size_t>(i + 1));
    }
    int extra = 99;
    EXPECT_FALSE(ch.try_send(extra));
    EXPECT_EQ(extra, 99);  // not moved from
    for (int i = 0; i < 5; ++i) EXPECT_EQ(ch.recv(), i);
    EXPECT_EQ(ch.size(), 0u);
    EXPECT_EQ(ch.try_recv(), std::nullopt);
    EXPECT_TRUE(ch.try_send(extra));
    EXPECT_EQ(ch.try_recv(), 99);
  });
}

TEST_P(Chan, FullBufferHandsTheBlockedSendersValueOver) {
  run([] {
    chan<int> ch(2);
    ch.send(0);
    ch.send(1);
    urge::go([ch] { ch.send(2); });  // blocks: the buffer is full
    ASSERT_TRUE(await_queued(ch, true, 1));
    for (int i = 0; i < 3; ++i) EXPECT_EQ(ch.recv(), i);
  });
}

// Several producers and consumers: every value arrives exactly once, and
// each consumer sees each producer's values in the order they were sent.
void many_to_many(std::size_t capacity) {
  constexpr int producers = 4, consumers = 4, per = 5000;
  chan<int> ch(capacity);
  chan<std::vector<int>> results(consumers);
  urge::wait_group wg;
  for (int p = 0; p < producers; ++p) {
    wg.add(1);
    urge::go([&wg, ch, p] {
      for (int i = 0; i < per; ++i) ch.send(p * per + i);
      wg.done();
    });
  }
  for (int c = 0; c < consumers; ++c) {
    urge::go([ch, results] {
      std::vector<int> got;
      for (int v : ch) got.push_back(v);
      results.send(std::move(got));
    });
  }
  wg.wait();
  ch.close();
  std::vector<int> all;
  for (int c = 0; c < consumers; ++c) {
    std::vector<int> got = *results.recv();
    std::array<int, producers> last;
    last.fill(-1);
    for (int v : got) {
      int p = v / per;
      EXPECT_GT(v, last[p]) << "producer " << p << "'s values out of order";
      last[p] = v;
    }
    all.insert(all.end(), got.begin(), got.end());
  }
  std::sort(all.begin(), all.end());
  std::vector<int> want(producers * per);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(all, want);
}

TEST_P(Chan, ManyToManyBuffered) {
  run([] { many_to_many(8); });
}

TEST_P(Chan, ManyToManyUnbuffered) {
  run([] { many_to_many(0); });
}

TEST_P(Chan, ClosedChannelDrainsThenReportsClosed) {
  run([] {
    chan<int> ch(3);
    ch.send(1);
    ch.send(2);
    ch.close();
    EXPECT_EQ(ch.recv(), 1);
    EXPECT_EQ(ch.recv(), 2);
    EXPECT_EQ(ch.recv(), std::nullopt);
    EXPECT_EQ(ch.recv(), std::nullopt);  // and again
    EXPECT_EQ(ch.try_recv(), std::nullopt);
    EXPECT_THROW(ch.send(3), urge::closed_channel_error);
    int v = 4;
    EXPECT_THROW(ch.try_send(v), urge::closed_channel_error);
    EXPECT_THROW(ch.close(), urge::closed_channel_error);
    EXPECT_THROW(chan<int>::nil().close(), urge::closed_channel_error);
  });
}

TEST_P(Chan, CloseWakesEveryBlockedReceiver) {
  run([] {
    constexpr int n = 10;
    chan<int> ch;
    chan<bool> got_nothing(n);
    for (int i = 0; i < n; ++i) {
      urge::go([=] { got_nothing.send(!ch.recv().has_value()); });
    }
    ASSERT_TRUE(await_queued(ch, false, n));
    ch.close();
    for (int i = 0; i < n; ++i) EXPECT_EQ(got_nothing.recv(), true);
  });
}

TEST_P(Chan, CloseMakesEveryBlockedSenderThrow) {
  run([] {
    constexpr int n = 10;
    chan<int> ch;
    chan<bool> threw(n);
    for (int i = 0; i < n; ++i) {
      urge::go([=] {
        try {
          ch.send(i);
          threw.send(false);
        } catch (const urge::closed_channel_error& e) {
          threw.send(std::string(e.what()) == "send on closed channel");
        }
      });
    }
    ASSERT_TRUE(await_queued(ch, true, n));
    ch.close();
    for (int i = 0; i < n; ++i) EXPECT_EQ(threw.recv(), true);
  });
}

TEST_P(Chan, RangeForReceivesUntilClosed) {
  run([] {
    chan<std::string> ch;
    urge::go([ch] {
      for (int i = 0; i < 5; ++i) ch.send(std::to_string(i));
      ch.close();
    });
    std::string all;
    for (std::string& s : ch) all += s;
    EXPECT_EQ(all, "01234");
  });
}

TEST_P(Chan, MoveOnlyPayloads) {
  run([] {
    for (std::size_t cap : {0u, 4u}) {
      chan<std::unique_ptr<int>> ch(cap);
      urge::go([ch] {
        for (int i = 0; i < 100; ++i) ch.send(std::make_unique<int>(i));
        ch.close();
      });
      int i = 0;
      for (auto& p : ch) EXPECT_EQ(*p, i++);
      EXPECT_EQ(i, 100);
    }
  });
}

TEST_P(Chan, ElementsAreNeitherLeakedNorDestroyedTwice) {
  ASSERT_EQ(counted::live.load(), 0);
  run([] {
    {
      chan<counted> ch(4);
      ch.send(counted(1));
      ch.send(counted(2));
      EXPECT_EQ(ch.recv()->v, 1);
      // counted(2) stays buffered: freed with the channel.
    }
    EXPECT_EQ(counted::live.load(), 0);
    chan<counted> unbuf;
    // The sender is waited for: its moved-from temporary dies when it runs
    // again, and a goroutine still runnable when main returns is abandoned.
    urge::wait_group sent;
    sent.add(1);
    urge::go([unbuf, &sent] {
      unbuf.send(counted(3));
      sent.done();
    });
    EXPECT_EQ(unbuf.recv()->v, 3);
    sent.wait();
    chan<counted> closed;
    closed.close();
    EXPECT_THROW(closed.send(counted(4)), urge::closed_channel_error);
  });
  EXPECT_EQ(counted::live.load(), 0);
}

TEST_P(Chan, LargeAndOverAlignedElements) {
  struct alignas(32) wide {
    std::array<char, 1000> bytes;
  };
  run([] {
    chan<wide> ch(3);
    wide w;
    w.bytes.fill('x');
    w.bytes[999] = 'y';
    urge::go([ch, w] {
      for (int i = 0; i < 10; ++i) ch.send(w);
      ch.close();
    });
    int n = 0;
    for (wide& got : ch) {
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(&got) % 32, 0u);
      EXPECT_EQ(got.bytes[0], 'x');
      EXPECT_EQ(got.bytes[999], 'y');
      ++n;
    }
    EXPECT_EQ(n, 10);
  });
}

TEST_P(Chan, HandlesShareOneChannel) {
  run([] {
    chan<int> a(2);
    chan<int> b = a;
    EXPECT_TRUE(a == b);
    EXPECT_FALSE(a == chan<int>(2));
    a.send(1);
    EXPECT_EQ(b.size(), 1u);
    EXPECT_EQ(b.recv(), 1);
    chan<int> c = std::move(b);
    EXPECT_TRUE(b.is_nil());  // NOLINT(bugprone-use-after-move): documented
    EXPECT_TRUE(c == a);
    chan<int> nil = urge::nil_chan<int>();
    EXPECT_TRUE(nil.is_nil());
    EXPECT_EQ(nil.size(), 0u);
    EXPECT_EQ(nil.capacity(), 0u);
    EXPECT_EQ(nil.try_recv(), std::nullopt);
    EXPECT_FALSE(nil.try_send(1));
  });
}

TEST_P(Chan, ChannelOutlivesItsCreator) {
  run([] {
    chan<chan<int>> handoff;
    urge::go([handoff] {
      chan<int> mine(1);  // only this goroutine's handle, then the receiver's
      handoff.send(mine);
      mine.send(42);
    });
    chan<int> theirs = *handoff.recv();
    EXPECT_EQ(theirs.recv(), 42);
  });
}

TEST_P(Chan, WaitReasonsAreGos) {
  run([] {
    using urge::runtime::waitreason;
    struct probe {
      std::atomic<urge::runtime::g*> gp{nullptr};
    };
    auto reason_of = [](probe& p) {
      urge::runtime::g* gp = nullptr;
      auto deadline = clk::now() + tolerance(10s);
      while (!(gp = p.gp.load())) urge::yield();
      while (gp->status.load() != urge::runtime::gstatus::waiting && clk::now() < deadline) {
        urge::yield();
      }
      return gp->reason;
    };
    probe r, s, nr, ns;
    chan<int> ch;
    urge::go([&r, ch] {
      r.gp = urge::runtime::getg();
      ch.recv();
    });
    EXPECT_EQ(reason_of(r), waitreason::chan_receive);
    ch.send(1);
    urge::go([&s, ch] {
      s.gp = urge::runtime::getg();
      ch.send(1);
    });
    EXPECT_EQ(reason_of(s), waitreason::chan_send);
    ch.recv();
    urge::go([&nr] {
      nr.gp = urge::runtime::getg();
      chan<int>::nil().recv();
    });
    EXPECT_EQ(reason_of(nr), waitreason::chan_receive_nil_chan);
    urge::go([&ns] {
      ns.gp = urge::runtime::getg();
      chan<int>::nil().send(1);
    });
    EXPECT_EQ(reason_of(ns), waitreason::chan_send_nil_chan);
    EXPECT_STREQ(urge::runtime::to_string(waitreason::chan_receive), "chan receive");
  });
}

TEST_P(Chan, AllGoroutinesBlockedOnChannelsIsADeadlock) {
  try {
    run([] {
      chan<int> a, b;
      urge::go([a, b] {
        a.recv();
        b.send(1);
      });
      b.recv();  // nobody will ever send on a
    });
    FAIL() << "run returned";
  } catch (const urge::deadlock_error& e) {
    EXPECT_NE(std::string(e.what()).find("all goroutines are asleep - deadlock!"),
              std::string::npos);
  }
  EXPECT_THROW(run([] { chan<int>::nil().send(1); }), urge::deadlock_error);
}

TEST(ChanOutsideRun, NonBlockingOperationsWorkAndBlockingOnesThrow) {
  chan<int> ch(1);
  ch.send(1);
  EXPECT_EQ(ch.recv(), 1);
  EXPECT_THROW(ch.recv(), std::logic_error);
  ch.send(2);
  EXPECT_THROW(ch.send(3), std::logic_error);
  ch.close();
  EXPECT_EQ(ch.recv(), 2);
  EXPECT_EQ(ch.recv(), std::nullopt);
}

}  // namespace
