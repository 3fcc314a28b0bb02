// Cancellation contexts (after Go's context/context_test.go): cancel,
// deadlines, propagation to children, detaching, and races between a
// deadline firing, cancel and handles going away.
#include <atomic>
#include <system_error>
#include <vector>

#include "procs_fixture.hpp"

namespace {

using namespace urge_test;
using urge::context;
using urge::context_errc;

class Cancel : public procs_test {};
URGE_PROCS_SUITE(Cancel);

bool is_done(const context& ctx) {
  return urge::select(urge::on_recv(ctx.done()), urge::on_default([] {})) == 0;
}

TEST_P(Cancel, BackgroundIsNeverDone) {
  run([] {
    context bg = context::background();
    EXPECT_FALSE(is_done(bg));
    EXPECT_TRUE(bg.done().is_nil());
    EXPECT_FALSE(bg.err());
    EXPECT_FALSE(bg.deadline().has_value());
    EXPECT_FALSE(is_done(context::todo()));
  });
}

TEST_P(Cancel, CancelClosesDone) {
  run([] {
    auto [ctx, cancel] = urge::with_cancel(context::background());
    EXPECT_FALSE(is_done(ctx));
    EXPECT_FALSE(ctx.err());
    urge::chan<bool> saw(1);
    urge::go([ctx = ctx, saw] {
      ctx.done().recv();  // parks until cancel
      saw.send(ctx.err() == context_errc::canceled);
    });
    cancel();
    EXPECT_EQ(saw.recv(), true);
    EXPECT_TRUE(is_done(ctx));
    EXPECT_EQ(ctx.err(), context_errc::canceled);
    EXPECT_EQ(ctx.err(), std::errc::operation_canceled);
    EXPECT_EQ(ctx.err().message(), "context canceled");
    cancel();  // again: nothing
    EXPECT_EQ(ctx.err(), context_errc::canceled);
  });
}

TEST_P(Cancel, ParentCancellationPropagatesDownOnly) {
  run([] {
    auto [root, cancel_root] = urge::with_cancel(context::background());
    auto [a, cancel_a] = urge::with_cancel(root);
    auto [b, cancel_b] = urge::with_cancel(root);
    auto [a1, cancel_a1] = urge::with_cancel(a);
    auto [a2, cancel_a2] = urge::with_timeout(a, 1h);
    EXPECT_EQ(urge::detail::context_children(root), 2u);
    EXPECT_EQ(urge::detail::context_children(a), 2u);
    // A child's cancellation reaches neither its parent nor its siblings.
    cancel_b();
    EXPECT_TRUE(is_done(b));
    EXPECT_FALSE(is_done(root));
    EXPECT_FALSE(is_done(a));
    EXPECT_EQ(urge::detail::context_children(root), 1u);  // b detached
    // The root's reaches everything below it.
    cancel_root();
    for (const context* c : {&root, &a, &a1, &a2}) {
      EXPECT_TRUE(is_done(*c));
      EXPECT_EQ(c->err(), context_errc::canceled);
    }
    EXPECT_EQ(urge::detail::context_children(root), 0u);
    EXPECT_EQ(urge::detail::context_children(a), 0u);
    // A child of a cancelled context is born cancelled.
    auto [late, cancel_late] = urge::with_cancel(a);
    EXPECT_TRUE(is_done(late));
    EXPECT_EQ(late.err(), context_errc::canceled);
    cancel_a();
    cancel_a1();
    cancel_a2();
    cancel_late();
  });
}

TEST_P(Cancel, DroppedChildrenDetach) {
  run([] {
    auto [root, cancel_root] = urge::with_cancel(context::background());
    {
      auto [c1, k1] = urge::with_cancel(root);
      auto [c2, k2] = urge::with_cancel(c1);
      EXPECT_EQ(urge::detail::context_children(root), 1u);
      EXPECT_EQ(urge::detail::context_children(c1), 1u);
    }  // never cancelled, but nobody can observe them any more
    EXPECT_EQ(urge::detail::context_children(root), 0u);
    cancel_root();
  });
}

TEST_P(Cancel, TimeoutCancelsWithDeadlineExceeded) {
  run([] {
    auto start = clk::now();
    auto [ctx, cancel] = urge::with_timeout(context::background(), 20ms);
    ASSERT_TRUE(ctx.deadline().has_value());
    EXPECT_GE(*ctx.deadline() - start, 20ms);
    ctx.done().recv();
    auto elapsed = clk::now() - start;
    EXPECT_GE(elapsed, 20ms);
    EXPECT_LT(elapsed, 20ms + tolerance(100ms)) << ms(elapsed) << " ms";
    EXPECT_EQ(ctx.err(), context_errc::deadline_exceeded);
    EXPECT_EQ(ctx.err(), std::errc::timed_out);
    EXPECT_EQ(ctx.err().message(), "context deadline exceeded");
    cancel();  // after the deadline: nothing changes
    EXPECT_EQ(ctx.err(), context_errc::deadline_exceeded);
  });
}

TEST_P(Cancel, DeadlinesInheritAndExpire) {
  run([] {
    auto now = clk::now();
    // Already past: cancelled at once.
    auto [past, k1] = urge::with_deadline(context::background(), now - 1s);
    EXPECT_TRUE(is_done(past));
    EXPECT_EQ(past.err(), context_errc::deadline_exceeded);
    // A later deadline under an earlier one keeps the earlier.
    auto [parent, k2] = urge::with_deadline(context::background(), now + 1h);
    auto [child, k3] = urge::with_deadline(parent, now + 2h);
    EXPECT_EQ(child.deadline(), parent.deadline());
    auto [sooner, k4] = urge::with_timeout(parent, 5ms);
    EXPECT_LT(*sooner.deadline(), *parent.deadline());
    sooner.done().recv();
    EXPECT_EQ(sooner.err(), context_errc::deadline_exceeded);
    EXPECT_FALSE(is_done(parent));
    // A parent's deadline reaches its plain children.
    auto [short_parent, k5] = urge::with_timeout(context::background(), 5ms);
    auto [kid, k6] = urge::with_cancel(short_parent);
    EXPECT_EQ(kid.deadline(), short_parent.deadline());
    kid.done().recv();
    EXPECT_EQ(kid.err(), context_errc::deadline_exceeded);
    // A cancel before the deadline wins.
    auto [early, k7] = urge::with_timeout(context::background(), tolerance(20ms));
    k7();
    urge::sleep(tolerance(40ms));
    EXPECT_EQ(early.err(), context_errc::canceled);
    k1();
    k2();
    k3();
    k4();
    k5();
    k6();
  });
}

TEST_P(Cancel, CancellingTheRootStopsAGoroutineTree) {
  run([] {
    auto [root, cancel] = urge::with_cancel(context::background());
    urge::wait_group wg;
    std::atomic<int> stopped{0};
    urge::chan<int> work;  // never fed: the workers wait on it and on done()
    for (int i = 0; i < 5; ++i) {
      auto [mid, mid_cancel] = urge::with_cancel(root);
      for (int j = 0; j < 5; ++j) {
        wg.add(1);
        urge::go([&, ctx = mid, mid_cancel = mid_cancel, work] {
          bool done = false;
          while (!done) {
            urge::select(urge::on_recv(work), urge::on_recv(ctx.done(), [&] { done = true; }));
          }
          if (ctx.err() == context_errc::canceled) ++stopped;
          mid_cancel();
          wg.done();
        });
      }
    }
    cancel();
    wg.wait();
    EXPECT_EQ(stopped.load(), 25);
    EXPECT_EQ(urge::detail::context_children(root), 0u);
  });
}

// Deadlines firing on one M while cancel runs on another, and handles going
// away meanwhile: nothing is freed early or twice (ASan watches).
TEST_P(Cancel, RacesBetweenDeadlineCancelAndRelease) {
  run([] {
    // Not a structured binding: lambdas capture root (clang 14 cannot capture those).
    urge::cancel_pair rc = urge::with_cancel(context::background());
    context& root = rc.ctx;
    urge::cancel_func& cancel_root = rc.cancel;
    urge::wait_group wg;
    for (int g = 0; g < 4; ++g) {
      wg.add(1);
      urge::go([&, g] {
        for (int i = 0; i < 2000; ++i) {
          auto [ctx, cancel] = urge::with_timeout(root, std::chrono::microseconds((i + g) % 50));
          auto [kid, kid_cancel] = urge::with_cancel(ctx);
          if (i % 3 == 0) urge::yield();
          if (i % 2 == 0) cancel();
          if (i % 5 == 0) ctx.done().recv();
        }
        wg.done();
      });
    }
    wg.wait();
    // Some deadlines may still be pending; they fire into contexts nobody holds.
    cancel_root();
    EXPECT_EQ(urge::detail::context_children(root), 0u);
  });
}

}  // namespace
