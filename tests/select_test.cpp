// select and selector: fairness, default, nil and closed channels, wakeups,
// withdrawal of the losing cases, and a stress run (after Go's
// runtime/chan_test.go and select tests).
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "procs_fixture.hpp"
#include "runtime/chan.hpp"
#include "runtime/runtime2.hpp"

namespace {

using namespace urge_test;
using urge::chan;
using urge::on_default;
using urge::on_recv;
using urge::on_send;

class Select : public procs_test {};
URGE_PROCS_SUITE(Select);

template <class T>
std::size_t queued(const chan<T>& ch, bool senders) {
  urge::detail::hchan* c = urge::detail::chan_access::get(ch);
  std::lock_guard lock(c->lock);
  std::size_t n = 0;
  for (auto* s = (senders ? c->sendq : c->recvq).first; s; s = s->next) ++n;
  return n;
}

template <class T>
bool await_queued(const chan<T>& ch, bool senders, std::size_t n) {
  auto deadline = clk::now() + tolerance(10s);
  while (queued(ch, senders) < n) {
    if (clk::now() > deadline) return false;
    urge::yield();
  }
  return true;
}

TEST_P(Select, ReadyCasesAreChosenUniformly) {
  run([] {
    constexpr int n = 100000;
    chan<int> a(1), b(1);
    a.send(0);
    b.send(0);
    int na = 0, nb = 0;
    for (int i = 0; i < n; ++i) {
      switch (urge::select(on_recv(a, [&] { ++na; }), on_recv(b, [&] { ++nb; }))) {
        case 0:
          a.send(0);  // keep both ready
          break;
        case 1:
          b.send(0);
          break;
      }
    }
    EXPECT_EQ(na + nb, n);
    EXPECT_GE(na, n * 45 / 100);
    EXPECT_LE(na, n * 55 / 100);
    EXPECT_GE(nb, n * 45 / 100);
    EXPECT_LE(nb, n * 55 / 100);
  });
}

TEST_P(Select, ThreeReadyCasesAreAllChosen) {
  run([] {
    chan<int> c[3] = {chan<int>(1), chan<int>(1), chan<int>(1)};
    for (auto& ch : c) ch.send(0);
    std::array<int, 3> hits{};
    for (int i = 0; i < 30000; ++i) {
      std::size_t k = urge::select(on_recv(c[0]), on_recv(c[1]), on_recv(c[2]));
      ++hits[k];
      c[k].send(0);
    }
    for (int h : hits) {
      EXPECT_GT(h, 9000);
      EXPECT_LT(h, 11000);
    }
  });
}

TEST_P(Select, DefaultRunsOnlyWhenNothingIsReady) {
  run([] {
    chan<int> ch(1);
    bool dflt = false;
    EXPECT_EQ(urge::select(on_recv(ch), on_default([&] { dflt = true; })), 1u);
    EXPECT_TRUE(dflt);
    ch.send(5);
    std::optional<int> got;
    EXPECT_EQ(urge::select(on_recv(ch, [&](std::optional<int> v) { got = v; }), on_default([] {})),
              0u);
    EXPECT_EQ(got, 5);
    // f may also take the optional by reference, or take nothing.
    ch.send(6);
    urge::select(on_recv(ch, [&](std::optional<int>& v) { got = v; }), on_default([] {}));
    EXPECT_EQ(got, 6);
    ch.send(7);
    urge::select(on_recv(ch, [&](auto&& v) { got = v; }), on_default([] {}));
    EXPECT_EQ(got, 7);
    // Default first in the argument list, and with several cases.
    chan<int> other;
    EXPECT_EQ(urge::select(on_default([] {}), on_recv(ch), on_recv(other)), 0u);
    ch.send(6);
    EXPECT_EQ(urge::select(on_default([] {}), on_recv(ch), on_recv(other)), 1u);
    // A send case with a default: no receiver, no room.
    chan<int> unbuf;
    EXPECT_EQ(urge::select(on_send(unbuf, 1), on_default([] {})), 1u);
    EXPECT_EQ(urge::select(on_send(ch, 1), on_default([] {})), 0u);
    EXPECT_EQ(ch.recv(), 1);
    EXPECT_EQ(urge::select(on_default([] {})), 0u);
  });
}

TEST_P(Select, NilChannelCasesNeverProceed) {
  run([] {
    chan<int> nil = chan<int>::nil();
    chan<int> ready(1);
    for (int i = 0; i < 100; ++i) {
      ready.send(i);
      EXPECT_EQ(urge::select(on_recv(nil), on_send(nil, 1), on_recv(ready)), 2u);
    }
    EXPECT_EQ(urge::select(on_recv(nil), on_send(nil, 1), on_default([] {})), 2u);
    EXPECT_EQ(urge::select(on_recv(nil), on_default([] {})), 1u);
  });
}

TEST_P(Select, OnlyNilChannelsBlocksForEver) {
  EXPECT_THROW(run([] {
                 chan<int> nil = chan<int>::nil();
                 urge::select(on_recv(nil), on_send(nil, 1));
               }),
               urge::deadlock_error);
  EXPECT_THROW(run([] { urge::select(); }), urge::deadlock_error);
}

TEST_P(Select, ClosedChannels) {
  run([] {
    chan<int> closed;
    closed.close();
    chan<int> quiet;
    bool was_closed = false;
    EXPECT_EQ(urge::select(on_recv(quiet),
                           on_recv(closed, [&](std::optional<int> v) { was_closed = !v; })),
              1u);
    EXPECT_TRUE(was_closed);
    EXPECT_THROW(urge::select(on_recv(quiet), on_send(closed, 1)), urge::closed_channel_error);
    EXPECT_THROW(urge::select(on_send(closed, 1), on_default([] {})), urge::closed_channel_error);
    // The channel's lock was released on the way out.
    EXPECT_EQ(closed.try_recv(), std::nullopt);
    EXPECT_EQ(quiet.try_recv(), std::nullopt);
  });
}

TEST_P(Select, BlockedSelectIsWokenBySendAndWithdrawsItsOtherCases) {
  run([] {
    chan<int> a, b, c;
    chan<int> res(1);
    urge::go([=] {
      std::optional<int> got;
      std::size_t k =
          urge::select(on_recv(a, [&](std::optional<int> v) { got = v; }),
                       on_recv(b, [&](std::optional<int> v) { got = v; }), on_send(c, 3));
      res.send(static_cast<int>(k) * 100 + *got);
    });
    ASSERT_TRUE(await_queued(b, false, 1));
    EXPECT_EQ(queued(a, false), 1u);
    b.send(7);
    EXPECT_EQ(res.recv(), 107);
    EXPECT_EQ(queued(a, false), 0u);  // withdrawn
    EXPECT_EQ(queued(b, false), 0u);
    EXPECT_EQ(queued(c, true), 0u);
  });
}

TEST_P(Select, OnlyTheFirstOfTwoConcurrentSendsWins) {
  run([] {
    for (int round = 0; round < 200; ++round) {
      chan<int> a, b;
      chan<int> res(1);
      urge::go([=] {
        int got = 0;
        urge::select(on_recv(a, [&](std::optional<int> v) { got = *v; }),
                     on_recv(b, [&](std::optional<int> v) { got = *v; }));
        res.send(got);
      });
      ASSERT_TRUE(await_queued(a, false, 1));
      urge::wait_group wg;
      wg.add(2);
      urge::go([&wg, a] {
        a.send(1);
        wg.done();
      });
      urge::go([&wg, b] {
        b.send(2);
        wg.done();
      });
      int won = *res.recv();
      ASSERT_TRUE(won == 1 || won == 2);
      // The loser is still blocked sending: exactly one value went through.
      chan<int>& loser = won == 1 ? b : a;
      ASSERT_TRUE(await_queued(loser, true, 1));
      EXPECT_EQ(loser.recv(), won == 1 ? 2 : 1);
      wg.wait();
    }
  });
}

TEST_P(Select, SendCasesHandToWaitingReceivers) {
  run([] {
    chan<std::string> out;
    chan<std::string> res(1);
    urge::go([=] { res.send(*out.recv()); });
    ASSERT_TRUE(await_queued(out, false, 1));
    bool sent = false;
    chan<int> never;
    EXPECT_EQ(urge::select(on_recv(never), on_send(out, "hi", [&] { sent = true; })), 1u);
    EXPECT_TRUE(sent);
    EXPECT_EQ(res.recv(), "hi");
    // And a blocked send case, picked up later by a receiver.
    urge::go([=] {
      urge::select(on_recv(never), on_send(out, std::string("later")));
      res.send("sent");
    });
    ASSERT_TRUE(await_queued(out, true, 1));
    EXPECT_EQ(out.recv(), "later");
    EXPECT_EQ(res.recv(), "sent");
  });
}

TEST_P(Select, BlockedSelectIsWokenByClose) {
  run([] {
    chan<int> a, b;
    chan<std::string> res(2);
    urge::go([=] {
      std::size_t k = urge::select(
          on_recv(a), on_recv(b, [&](std::optional<int> v) { res.send(v ? "value" : "closed"); }));
      res.send(std::to_string(k));
    });
    ASSERT_TRUE(await_queued(b, false, 1));
    b.close();
    EXPECT_EQ(res.recv(), "closed");
    EXPECT_EQ(res.recv(), "1");
    EXPECT_EQ(queued(a, false), 0u);
    // A blocked send case woken by close throws.
    chan<int> s;
    urge::go([=] {
      try {
        urge::select(on_recv(a), on_send(s, 1));
        res.send("returned");
      } catch (const urge::closed_channel_error&) {
        res.send("threw");
      }
    });
    ASSERT_TRUE(await_queued(s, true, 1));
    s.close();
    EXPECT_EQ(res.recv(), "threw");
    EXPECT_EQ(queued(a, false), 0u);
  });
}

TEST_P(Select, SameChannelInSeveralCases) {
  run([] {
    chan<int> ch;
    chan<int> res(1);
    urge::go([=] {
      std::size_t k = urge::select(on_recv(ch), on_recv(ch), on_recv(ch));
      res.send(static_cast<int>(k));
    });
    ASSERT_TRUE(await_queued(ch, false, 3));
    ch.send(1);
    EXPECT_LT(res.recv().value(), 3);
    EXPECT_EQ(queued(ch, false), 0u);
    // Send and receive on one channel: a peer completes either.
    chan<int> buf(1);
    for (int i = 0; i < 50; ++i) {
      std::size_t k = urge::select(on_send(buf, i), on_recv(buf));
      EXPECT_EQ(k, i % 2 == 0 ? 0u : 1u);  // empty: only send; full: only recv
    }
  });
}

TEST_P(Select, MoveOnlyValuesAreSentOrDropped) {
  run([] {
    chan<std::unique_ptr<int>> ready(1), full(1);
    full.send(std::make_unique<int>(0));
    auto p = std::make_unique<int>(5);
    std::size_t k =
        urge::select(on_send(ready, std::move(p)), on_send(full, std::make_unique<int>(6)));
    EXPECT_EQ(k, 0u);
    EXPECT_EQ(**ready.recv(), 5);
    EXPECT_EQ(**full.recv(), 0);  // 6 was never sent
    EXPECT_EQ(full.try_recv(), std::nullopt);
  });
}

TEST_P(Select, WaitReasonIsSelect) {
  run([] {
    std::atomic<urge::runtime::g*> gp{nullptr};
    chan<int> a, b;
    urge::go([&gp, a, b] {
      gp = urge::runtime::getg();
      urge::select(on_recv(a), on_recv(b));
    });
    ASSERT_TRUE(await_queued(b, false, 1));
    EXPECT_EQ(gp.load()->reason, urge::runtime::waitreason::select);
    a.send(1);
  });
}

TEST_P(Select, Selector) {
  run([] {
    constexpr int inputs = 20, per = 100;  // > 16 cases: the sorted lock order path
    std::vector<chan<int>> in;
    for (int i = 0; i < inputs; ++i) in.emplace_back(i % 2 ? 0 : 4);
    for (int i = 0; i < inputs; ++i) {
      urge::go([ch = in[i], i] {
        for (int j = 0; j < per; ++j) ch.send(i * per + j);
        ch.close();
      });
    }
    urge::selector sel;
    long sum = 0;
    int open = inputs, got = 0;
    for (int i = 0; i < inputs; ++i) {
      std::size_t idx = sel.on_recv(in[i], [&, i](std::optional<int> v) {
        if (v) {
          sum += *v;
          ++got;
        } else {
          sel.disable(static_cast<std::size_t>(i));  // a closed channel stays ready
          --open;
        }
      });
      EXPECT_EQ(idx, static_cast<std::size_t>(i));
    }
    EXPECT_EQ(sel.size(), static_cast<std::size_t>(inputs));
    while (open > 0) sel.select();
    EXPECT_EQ(got, inputs * per);
    EXPECT_EQ(sum, static_cast<long>(inputs * per) * (inputs * per - 1) / 2);

    // Send cases, a default, and the send case switching itself off.
    urge::selector out;
    chan<int> dst(1);
    std::size_t si = out.on_send(dst, 9);
    std::size_t di = out.on_default([] {});
    EXPECT_THROW(out.on_default([] {}), std::logic_error);
    EXPECT_EQ(out.select(), si);
    EXPECT_EQ(out.select(), di);  // the send case is off now
    EXPECT_EQ(dst.recv(), 9);
    EXPECT_EQ(out.select(), di);
  });
}

TEST_P(Select, EmptySelectorBlocksForEver) {
  EXPECT_THROW(run([] { urge::selector().select(); }), urge::deadlock_error);
}

// Go's TestSelectStress, bounded by time: plain and select senders and
// receivers on buffered and unbuffered channels at once. Every value sent
// arrives exactly once.
TEST_P(Select, Stress) {
  run([] {
    constexpr int nch = 4;
    std::array<chan<long>, nch> c = {chan<long>(0), chan<long>(0), chan<long>(3), chan<long>(10)};
    const auto deadline = clk::now() + 1s;
    std::atomic<long> sent_sum{0}, sent_n{0}, recv_sum{0}, recv_n{0};
    std::atomic<long> next{1};
    urge::wait_group senders, receivers;
    auto count_recv = [&](long v) {
      recv_sum += v;
      ++recv_n;
    };
    for (int i = 0; i < nch; ++i) {
      // A plain sender and a plain receiver per channel.
      senders.add(1);
      urge::go([&, ch = c[i]] {
        while (clk::now() < deadline) {
          long v = next++;
          ch.send(v);
          sent_sum += v;
          ++sent_n;
        }
        senders.done();
      });
      receivers.add(1);
      urge::go([&, ch = c[i]] {
        for (long v : ch) count_recv(v);
        receivers.done();
      });
    }
    for (int k = 0; k < 2; ++k) {
      // Select senders over all channels.
      senders.add(1);
      urge::go([&] {
        while (clk::now() < deadline) {
          long v = next++;
          urge::select(on_send(c[0], v), on_send(c[1], v), on_send(c[2], v), on_send(c[3], v));
          sent_sum += v;
          ++sent_n;
        }
        senders.done();
      });
      // Select receivers over all channels, switching closed ones off.
      receivers.add(1);
      urge::go([&] {
        std::array<chan<long>, nch> mine = c;
        int open = nch;
        while (open > 0) {
          auto on = [&](int i) {
            return on_recv(mine[i], [&, i](std::optional<long> v) {
              if (v) {
                count_recv(*v);
              } else {
                mine[i] = chan<long>::nil();
                --open;
              }
            });
          };
          urge::select(on(0), on(1), on(2), on(3));
        }
        receivers.done();
      });
    }
    senders.wait();
    for (auto& ch : c) ch.close();
    receivers.wait();
    EXPECT_GT(sent_n.load(), 1000);
    EXPECT_EQ(recv_n.load(), sent_n.load());
    EXPECT_EQ(recv_sum.load(), sent_sum.load());
  });
}

}  // namespace
