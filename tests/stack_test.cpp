// platform/stack: pooled, guarded goroutine stacks.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "arch/context.hpp"
#include "platform/stack.hpp"

namespace {

using urge::arch::context;
using urge::platform::guard_kind;
using urge::platform::stack;
using urge::platform::stack_pool;

std::size_t count_mappings() {
  std::size_t n = 0;
  if (FILE* f = std::fopen("/proc/self/maps", "r")) {
    int c;
    while ((c = std::fgetc(f)) != EOF) n += c == '\n';
    std::fclose(f);
  }
  return n;
}

std::size_t max_map_count() {
  unsigned long v = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    if (std::fscanf(f, "%lu", &v) != 1) v = 65530;
    std::fclose(f);
  }
  return v;
}

TEST(StackPool, ReusesReleasedStacks) {
  stack_pool pool;
  stack a = pool.acquire();
  ASSERT_TRUE(a);
  EXPECT_EQ(a.size, pool.stack_size());
  EXPECT_EQ(a.size % 4096, 0u);
  std::memset(a.lo, 0xab, a.size);  // the whole stack is usable
  pool.release(a);
  stack b = pool.acquire();
  EXPECT_EQ(b.lo, a.lo);  // LIFO: the warm stack comes back first
  pool.release(b);
  auto st = pool.get_stats();
  EXPECT_EQ(st.stacks_free, st.stacks_total);
}

TEST(StackPool, DefaultSizeIsRoundedAndConfigurable) {
  stack_pool::options o;
  o.stack_size = 10000;
  stack_pool pool(o);
  EXPECT_EQ(pool.stack_size(), 12288u);
  EXPECT_GE(urge::platform::default_stack_size(), 64u * 1024);
}

TEST(StackPool, CacheMovesStacksInBatches) {
  stack_pool pool;
  urge::platform::stack_cache cache;
  std::vector<stack> got;
  for (int i = 0; i < 100; ++i) got.push_back(cache.get(pool));
  std::set<char*> distinct;
  for (auto& s : got) distinct.insert(s.lo);
  EXPECT_EQ(distinct.size(), got.size());
  for (auto& s : got) cache.put(pool, s);
  EXPECT_LE(cache.size(), urge::platform::stack_cache::capacity);
  cache.flush(pool);
  EXPECT_EQ(cache.size(), 0u);
  auto st = pool.get_stats();
  EXPECT_EQ(st.stacks_free, st.stacks_total);
}

// exchange_top hands out the most recently put stack and files the given
// one at the bottom: the next exchange finds the next warm stack, not the
// one just filed, and an overflow returns the filed ones to the pool first.
TEST(StackPool, CacheExchangeTakesTheWarmestAndFilesTheColdAtTheBottom) {
  stack_pool pool;
  urge::platform::stack_cache cache;
  stack empty_probe = pool.acquire();
  stack before = empty_probe;
  cache.exchange_top(empty_probe);  // an empty cache has nothing to give
  EXPECT_EQ(empty_probe.lo, before.lo);
  EXPECT_EQ(cache.size(), 0u);

  stack warm1 = pool.acquire(), warm2 = pool.acquire(), cold1 = pool.acquire(),
        cold2 = pool.acquire();
  cache.put(pool, warm1);
  cache.put(pool, warm2);
  stack s = cold1;
  cache.exchange_top(s);
  EXPECT_EQ(s.lo, warm2.lo) << "the most recently put stack";
  stack t = cold2;
  cache.exchange_top(t);
  EXPECT_EQ(t.lo, warm1.lo) << "the next warm one, not the cold one just filed";
  EXPECT_EQ(cache.size(), 2u);
  // Then the cold ones, in the order they were filed (each went below the other).
  stack a = cache.get(pool), b = cache.get(pool);
  EXPECT_EQ(a.lo, cold1.lo);
  EXPECT_EQ(b.lo, cold2.lo);
  EXPECT_EQ(cache.size(), 0u);

  // Overflow returns the bottom half: fill with `capacity` stacks, the first
  // half marked by address; one more put sends exactly those to the pool.
  constexpr std::size_t cap = urge::platform::stack_cache::capacity;
  std::vector<stack> fill;
  for (std::size_t i = 0; i < cap; ++i) fill.push_back(pool.acquire());
  for (const stack& f : fill) cache.put(pool, f);
  const std::size_t free_before = pool.get_stats().stacks_free;
  cache.put(pool, a);
  EXPECT_EQ(pool.get_stats().stacks_free, free_before + cap / 2);
  EXPECT_EQ(cache.size(), cap / 2 + 1);
  std::vector<stack> kept;
  while (cache.size()) kept.push_back(cache.get(pool));
  std::set<char*> kept_lo;
  for (const stack& k : kept) kept_lo.insert(k.lo);
  for (std::size_t i = 0; i < cap; ++i) {
    EXPECT_EQ(kept_lo.count(fill[i].lo), i < cap / 2 ? 0u : 1u) << "stack " << i;
  }
  EXPECT_EQ(kept_lo.count(a.lo), 1u);
  for (const stack& k : kept) pool.release(k);
  pool.release(empty_probe);
  pool.release(s);
  pool.release(t);
  pool.release(b);
  auto st = pool.get_stats();
  EXPECT_EQ(st.stacks_free, st.stacks_total);
}

TEST(StackPool, BudgetExhaustionIsAClearError) {
  stack_pool::options o;
  o.max_stacks = 3;
  stack_pool pool(o);
  std::vector<stack> s;
  for (int i = 0; i < 3; ++i) s.push_back(pool.acquire());
  try {
    pool.acquire();
    FAIL() << "a fourth stack was handed out";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::not_enough_memory);
    EXPECT_NE(std::string(e.what()).find("stack budget exhausted"), std::string::npos) << e.what();
  }
  for (auto& x : s) pool.release(x);
}

TEST(StackPool, ProtectedPagesGiveWayToCanariesWhenTheBudgetRunsOut) {
  stack_pool::options o;
  o.force_guard = true;
  o.forced = guard_kind::protected_page;
  o.protected_page_budget = 2 * 10;  // ten guarded slots
  stack_pool pool(o);
  std::vector<stack> s;
  for (int i = 0; i < 40; ++i) s.push_back(pool.acquire());
  auto st = pool.get_stats();
  EXPECT_EQ(st.protected_page, 10u);
  EXPECT_EQ(st.canary, st.stacks_total - 10);
  for (auto& x : s) EXPECT_TRUE(urge::platform::canary_intact(x));
  for (auto& x : s) pool.release(x);
}

// One million stacks under the default vm.max_map_count: the mapping count
// must stay well below the limit.
TEST(StackPool, OneMillionStacks) {
  const std::size_t before = count_mappings();
  stack_pool pool;
  constexpr std::size_t kStacks = 1'000'000;
  std::vector<stack> s;
  s.reserve(kStacks);
  for (std::size_t i = 0; i < kStacks; ++i) s.push_back(pool.acquire());
  const std::size_t during = count_mappings();
  EXPECT_LT(during, max_map_count());
  std::vector<char*> lo;
  lo.reserve(kStacks);
  for (auto& x : s) lo.push_back(x.lo);
  std::sort(lo.begin(), lo.end());
  EXPECT_EQ(std::adjacent_find(lo.begin(), lo.end()), lo.end()) << "a stack was handed out twice";
  for (std::size_t i = 1; i < lo.size(); ++i) {
    ASSERT_GE(static_cast<std::size_t>(lo[i] - lo[i - 1]), pool.stack_size()) << "stacks overlap";
  }
  auto st = pool.get_stats();
  RecordProperty("guard_region", static_cast<int>(st.guard_region));
  RecordProperty("protected_page", static_cast<int>(st.protected_page));
  RecordProperty("canary", static_cast<int>(st.canary));
  std::printf(
      "1M stacks: %zu mappings before, %zu during (limit %zu); guards: %zu region, %zu "
      "protected, %zu canary\n",
      before, during, max_map_count(), st.guard_region, st.protected_page, st.canary);
  for (auto& x : s) pool.release(x);
  EXPECT_EQ(pool.get_stats().stacks_free, pool.get_stats().stacks_total);
}

// Every slot of every slab gets its guard, however the guards are installed
// (guard regions go in batches of a thousand ranges per system call). The
// kernel refuses to read a guard page: write(2) from it fails with EFAULT.
// 4,000 stacks span slabs of every size (16, 32, ... 1024 slots).
TEST(StackPool, EveryStackHasAFaultingGuard) {
  stack_pool pool;
  if (pool.preferred_guard() == guard_kind::canary) GTEST_SKIP() << "no faulting guards here";
  constexpr std::size_t kStacks = 4000;
  std::vector<stack> s;
  for (std::size_t i = 0; i < kStacks; ++i) s.push_back(pool.acquire());
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::size_t faulting = 0, checked = 0;
  for (const stack& x : s) {
    if (x.guard == guard_kind::canary) continue;  // the mapping budget ran out (protected pages)
    ++checked;
    const char* guard = x.lo - 1;  // the last byte of the guard page
    errno = 0;
    ssize_t w = write(fds[1], guard, 1);
    if (w < 0 && errno == EFAULT) {
      ++faulting;
    } else if (w == 1) {
      char c;
      ASSERT_EQ(read(fds[0], &c, 1), 1);
    }
    // The stack itself is ordinary memory.
    ASSERT_EQ(write(fds[1], x.hi() - 1, 1), 1);
    char c;
    ASSERT_EQ(read(fds[0], &c, 1), 1);
  }
  close(fds[0]);
  close(fds[1]);
  EXPECT_GT(checked, 0u);
  EXPECT_EQ(faulting, checked);
  for (auto& x : s) pool.release(x);
}

// ---- Overflow ---------------------------------------------------------------

context g_home;
context g_victim;
volatile std::size_t g_depth_reached;

// Recursion that uses about 1 KiB per level and cannot be turned into a loop.
__attribute__((noinline)) std::size_t recurse(std::size_t depth, std::size_t limit) {
  volatile char pad[1024];
  pad[0] = static_cast<char>(depth);
  pad[sizeof pad - 1] = static_cast<char>(depth);
  g_depth_reached = depth;
  if (depth == limit) return pad[0];
  return recurse(depth + 1, limit) + pad[sizeof pad - 1];
}

struct recursion_job {
  std::size_t limit;
};

void recursion_entry(void* arg, void*) {
  urge::arch::context_started();
  auto* job = static_cast<recursion_job*>(arg);
  recurse(0, job->limit);
  for (;;) urge::arch::switch_context(g_victim, g_home, nullptr);
}

void run_recursion(stack_pool& pool, std::size_t limit, bool check_canary) {
  urge::arch::init_thread_context(g_home);
  // The lowest slot of a slab has nothing mapped below its guard page; take
  // the one above it so that an overflow past a canary page stays in memory.
  stack spare = pool.acquire();
  stack s = pool.acquire();
  recursion_job job{limit};
  urge::arch::make_context(g_victim, s.lo, s.size, recursion_entry, &job);
  urge::arch::switch_context(g_home, g_victim, nullptr);
  if (check_canary && !urge::platform::canary_intact(s)) {
    urge::platform::report_stack_overflow(s, s.lo - 8);
  }
  urge::arch::destroy_context(g_victim);
  pool.release(s);
  pool.release(spare);
}

TEST(StackOverflow, DeepRecursionWithinTheStackIsFine) {
  stack_pool pool;
  // Three quarters of the stack, in 1 KiB frames.
  std::size_t levels = pool.stack_size() / 1024 * 3 / 4;
  run_recursion(pool, levels, true);
  EXPECT_EQ(g_depth_reached, levels);
}

void overflow_with(guard_kind kind) {
  stack_pool::options o;
  o.force_guard = true;
  o.forced = kind;
  stack_pool pool(o);
  // Canary: overflow by a little, within the canary page, and let the check
  // at the switch back report it. Guards: recurse until the guard faults.
  std::size_t levels = pool.stack_size() / 1024 + (kind == guard_kind::canary ? 2 : 1000);
  run_recursion(pool, levels, true);
}

TEST(StackOverflowDeathTest, GuardRegionFaultIsReported) {
  if (!stack_pool::guard_regions_supported()) GTEST_SKIP() << "no MADV_GUARD_INSTALL here";
  EXPECT_EXIT(overflow_with(guard_kind::guard_region), testing::ExitedWithCode(2),
              "goroutine stack overflow: fault in the guard page");
}

TEST(StackOverflowDeathTest, ProtectedPageFaultIsReported) {
  EXPECT_EXIT(overflow_with(guard_kind::protected_page), testing::ExitedWithCode(2),
              "fatal error: stack overflow");
}

TEST(StackOverflowDeathTest, CanaryDamageIsReported) {
  EXPECT_EXIT(overflow_with(guard_kind::canary), testing::ExitedWithCode(2),
              "goroutine stack overflow: canary overwritten");
}

}  // namespace
