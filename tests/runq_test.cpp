// runtime/runq.hpp and runtime/globrunq.hpp: the per-P and the global run
// queues, driven with plain structs.
//
// run_queue<G> only needs `G* schedlink`, so these tests use a small item type
// and std::thread: no runtime, no goroutines.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <thread>
#include <vector>

#include "runtime/globrunq.hpp"
#include "runtime/runq.hpp"

namespace {

struct item {
  item* schedlink = nullptr;
  int id = 0;
  std::atomic<int> seen{0};  // the concurrent test: times it left the queues
};

using queue = urge::runtime::run_queue<item>;
constexpr int kCap = static_cast<int>(queue::capacity);

std::vector<std::unique_ptr<item>> make_items(int n) {
  std::vector<std::unique_ptr<item>> v;
  for (int i = 0; i < n; ++i) {
    v.push_back(std::make_unique<item>());
    v.back()->id = i;
  }
  return v;
}

// Takes everything out of q (owner side) and returns the ids in order.
std::vector<int> drain_ids(queue& q) {
  std::vector<int> ids;
  bool inherit = false;
  while (item* it = q.get(inherit)) ids.push_back(it->id);
  return ids;
}

std::vector<int> iota_ids(int from, int to) {
  std::vector<int> v;
  for (int i = from; i < to; ++i) v.push_back(i);
  return v;
}

TEST(RunQueue, StartsEmpty) {
  queue q;
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  bool inherit = true;
  EXPECT_EQ(q.get(inherit), nullptr);
}

TEST(RunQueue, IsFifo) {
  queue q;
  auto items = make_items(100);
  for (auto& it : items) EXPECT_EQ(q.put(it.get(), false).n, 0u);
  EXPECT_EQ(q.size(), 100u);
  EXPECT_FALSE(q.empty());
  bool inherit = true;
  for (int i = 0; i < 100; ++i) {
    item* got = q.get(inherit);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->id, i);
    EXPECT_FALSE(inherit) << "a ring entry does not inherit the time slice";
    EXPECT_EQ(q.size(), static_cast<std::uint32_t>(99 - i));
  }
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.get(inherit), nullptr);
}

TEST(RunQueue, StaysFifoAcrossManyWrapArounds) {
  queue q;
  auto items = make_items(kCap);
  std::vector<int> order;
  int next_put = 0, next_get = 0;
  bool inherit = false;
  // Keep about 200 in flight, so the indexes wrap around the ring many times.
  for (int round = 0; round < 50 * kCap; ++round) {
    if (next_put - next_get < 200) {
      EXPECT_EQ(q.put(items[next_put % kCap].get(), false).n, 0u);
      ++next_put;
    } else {
      item* got = q.get(inherit);
      ASSERT_NE(got, nullptr);
      ASSERT_EQ(got->id, next_get % kCap);
      ++next_get;
    }
  }
  EXPECT_EQ(q.size(), static_cast<std::uint32_t>(next_put - next_get));
}

TEST(RunQueue, RunnextIsTakenFirstAndInherits) {
  queue q;
  auto items = make_items(4);
  q.put(items[0].get(), false);
  q.put(items[1].get(), false);
  q.put(items[2].get(), true);
  EXPECT_EQ(q.size(), 3u) << "size() counts runnext";
  bool inherit = false;
  item* got = q.get(inherit);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->id, 2);
  EXPECT_TRUE(inherit);
  got = q.get(inherit);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->id, 0);
  EXPECT_FALSE(inherit);
  EXPECT_EQ(drain_ids(q), std::vector<int>{1});
}

TEST(RunQueue, RunnextAloneCountsAsNonEmpty) {
  queue q;
  auto items = make_items(1);
  q.put(items[0].get(), true);
  EXPECT_FALSE(q.empty());
  EXPECT_EQ(q.size(), 1u);
  bool inherit = false;
  EXPECT_EQ(q.get(inherit), items[0].get());
  EXPECT_TRUE(inherit);
  EXPECT_TRUE(q.empty());
}

TEST(RunQueue, NewRunnextKicksTheOldOneToTheTail) {
  queue q;
  auto items = make_items(4);
  q.put(items[0].get(), false);
  q.put(items[1].get(), true);
  q.put(items[2].get(), true);  // kicks 1 behind 0
  q.put(items[3].get(), true);  // kicks 2 behind 1
  EXPECT_EQ(q.size(), 4u);
  bool inherit = false;
  item* got = q.get(inherit);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->id, 3);
  EXPECT_TRUE(inherit);
  EXPECT_EQ(drain_ids(q), (std::vector<int>{0, 1, 2}));
}

// Checks an overflow batch: `n` items linked through schedlink from head to
// tail in the order `ids`, the tail's link null.
void expect_batch(const queue::batch& b, const std::vector<int>& ids) {
  ASSERT_EQ(b.n, ids.size());
  ASSERT_NE(b.head, nullptr);
  ASSERT_NE(b.tail, nullptr);
  std::vector<int> got;
  item* last = nullptr;
  for (item* it = b.head; it && got.size() <= ids.size(); it = it->schedlink) {
    got.push_back(it->id);
    last = it;
  }
  EXPECT_EQ(got, ids);
  EXPECT_EQ(last, b.tail);
  EXPECT_EQ(b.tail->schedlink, nullptr);
}

TEST(RunQueue, FullRingOverflowsHalfPlusTheNewOneInFifoOrder) {
  queue q;
  auto items = make_items(kCap + 1);
  for (int i = 0; i < kCap; ++i) {
    auto b = q.put(items[static_cast<std::size_t>(i)].get(), false);
    ASSERT_EQ(b.n, 0u) << "overflowed early, at " << i;
  }
  EXPECT_EQ(q.size(), queue::capacity);
  auto b = q.put(items[kCap].get(), false);
  std::vector<int> want = iota_ids(0, kCap / 2);
  want.push_back(kCap);
  expect_batch(b, want);
  EXPECT_EQ(b.n, 129u);
  // The ring keeps the newer half, still in order.
  EXPECT_EQ(q.size(), queue::capacity / 2);
  EXPECT_EQ(drain_ids(q), iota_ids(kCap / 2, kCap));
}

TEST(RunQueue, KickedRunnextOverflowsWhenTheRingIsFull) {
  queue q;
  auto items = make_items(kCap + 2);
  for (int i = 0; i < kCap; ++i) q.put(items[static_cast<std::size_t>(i)].get(), false);
  EXPECT_EQ(q.put(items[kCap].get(), true).n, 0u) << "runnext is not part of the ring";
  EXPECT_EQ(q.size(), queue::capacity + 1);
  // A new runnext kicks kCap out, into a full ring: it leaves with the old half.
  auto b = q.put(items[kCap + 1].get(), true);
  std::vector<int> want = iota_ids(0, kCap / 2);
  want.push_back(kCap);
  expect_batch(b, want);
  bool inherit = false;
  item* got = q.get(inherit);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->id, kCap + 1);
  EXPECT_TRUE(inherit);
  EXPECT_EQ(drain_ids(q), iota_ids(kCap / 2, kCap));
}

TEST(RunQueue, RingKeepsWorkingAfterOverflow) {
  queue q;
  auto items = make_items(3 * kCap);
  std::vector<int> all;
  int batches = 0;
  for (int i = 0; i < 3 * kCap; ++i) {
    auto b = q.put(items[static_cast<std::size_t>(i)].get(), false);
    if (!b.n) continue;
    ++batches;
    // Each batch is the oldest half in order, then the goroutine being put
    // (newer than what stays in the ring).
    std::vector<int> ids;
    for (item* it = b.head; it; it = it->schedlink) ids.push_back(it->id);
    ASSERT_EQ(ids.size(), 129u);
    EXPECT_EQ(ids.back(), i);
    EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
    all.insert(all.end(), ids.begin(), ids.end());
  }
  // 256 fill the ring; then every 129th put overflows: at 256, 385, 514, 643.
  EXPECT_EQ(batches, 4);
  std::vector<int> rest = drain_ids(q);
  EXPECT_TRUE(std::is_sorted(rest.begin(), rest.end()));
  all.insert(all.end(), rest.begin(), rest.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, iota_ids(0, 3 * kCap)) << "every item exactly once";
}

// A thief steals from a victim holding n items in its ring: it gets ceil(n/2),
// the oldest ones, one returned to run and the rest in its own ring.
TEST(RunQueue, StealTakesHalfRoundedUp) {
  for (int n = 0; n <= kCap; ++n) {
    SCOPED_TRACE(n);
    queue victim, thief;
    auto items = make_items(n);
    for (auto& it : items) victim.put(it.get(), false);
    item* got = thief.steal(victim, false, false);
    const int want = n - n / 2;
    if (n == 0) {
      EXPECT_EQ(got, nullptr);
      continue;
    }
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(thief.size(), static_cast<std::uint32_t>(want - 1));
    EXPECT_EQ(victim.size(), static_cast<std::uint32_t>(n / 2));
    // The thief took the oldest want items; it runs the newest of them and
    // queues the others in order.
    EXPECT_EQ(got->id, want - 1);
    ASSERT_EQ(drain_ids(thief), iota_ids(0, want - 1));
    ASSERT_EQ(drain_ids(victim), iota_ids(want, n));
  }
}

TEST(RunQueue, StealAppendsAfterTheThiefsOwnIndexes) {
  // The thief's indexes are not at zero: the stolen items land at its tail.
  queue victim, thief;
  auto mine = make_items(kCap);
  bool inherit = false;
  for (int i = 0; i < 300; ++i) {
    thief.put(mine[static_cast<std::size_t>(i % kCap)].get(), false);
    ASSERT_NE(thief.get(inherit), nullptr);
  }
  auto items = make_items(10);
  for (auto& it : items) victim.put(it.get(), false);
  item* got = thief.steal(victim, false, false);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->id, 4);
  EXPECT_EQ(drain_ids(thief), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(drain_ids(victim), (std::vector<int>{5, 6, 7, 8, 9}));
}

TEST(RunQueue, RunnextIsStolenOnlyWhenAskedAndTheRingIsEmpty) {
  auto items = make_items(3);
  {
    queue victim, thief;
    victim.put(items[0].get(), true);
    EXPECT_EQ(thief.steal(victim, false, false), nullptr) << "runnext taken without asking";
    EXPECT_EQ(victim.size(), 1u);
    EXPECT_EQ(thief.steal(victim, true, false), items[0].get());
    EXPECT_TRUE(victim.empty());
    EXPECT_TRUE(thief.empty()) << "the stolen runnext is returned, not queued";
  }
  {
    // With something in the ring, the ring is stolen and runnext stays.
    queue victim, thief;
    victim.put(items[0].get(), false);
    victim.put(items[1].get(), true);
    EXPECT_EQ(thief.steal(victim, true, false), items[0].get());
    EXPECT_EQ(victim.size(), 1u);
    bool inherit = false;
    EXPECT_EQ(victim.get(inherit), items[1].get());
    EXPECT_TRUE(inherit);
  }
  {
    // A running victim: the thief waits a little, then still takes it.
    queue victim, thief;
    victim.put(items[2].get(), true);
    EXPECT_EQ(thief.steal(victim, true, true), items[2].get());
    EXPECT_TRUE(victim.empty());
  }
}

TEST(RunQueue, DrainTakesEverythingRunnextFirst) {
  queue q;
  auto items = make_items(5);
  for (int i = 0; i < 4; ++i) q.put(items[static_cast<std::size_t>(i)].get(), false);
  q.put(items[4].get(), true);
  std::vector<int> ids;
  q.drain([&](item* it) { ids.push_back(it->id); });
  EXPECT_EQ(ids, (std::vector<int>{4, 0, 1, 2, 3}));
  EXPECT_TRUE(q.empty());
}

// xorshift32, one per thread.
struct rng {
  std::uint32_t s;
  std::uint32_t next() {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
  }
};

bool slow_env() {
  const char* v = std::getenv("URGE_TEST_SLOW");
  return v && *v && std::string_view(v) != "0";
}

// One producer puts and gets on its own queue (overflow batches count as
// taken, as they would go to the global queue) while three thieves steal
// into their own queues, from it and from each other, and take from those.
// Every item must come out exactly once.
TEST(RunQueue, ConcurrentProducerAndThievesLoseAndDuplicateNothing) {
  constexpr int kThieves = 3;
  const auto duration = std::chrono::milliseconds(500);
  const std::size_t max_items = slow_env() ? 1'500'000 : 6'000'000;

  // Items are never reused (a reused one could hide a duplicate): the run
  // ends after `duration` or when they are used up (~0.5 s natively).
  std::vector<item> pool(max_items);
  for (std::size_t i = 0; i < max_items; ++i) pool[i].id = static_cast<int>(i);

  queue producer_q;
  queue thief_q[kThieves];
  std::atomic<bool> stop{false};
  std::atomic<int> thieves_ready{0};
  std::atomic<std::uint64_t> stolen_total{0};

  auto take = [](item* it) { it->seen.fetch_add(1, std::memory_order_relaxed); };

  std::vector<std::thread> thieves;
  for (int t = 0; t < kThieves; ++t) {
    thieves.emplace_back([&, t] {
      rng r{0x9E3779B9u * static_cast<std::uint32_t>(t + 1)};
      std::uint64_t stolen = 0;
      bool inherit = false;
      thieves_ready.fetch_add(1);
      for (;;) {
        // Steal only into an empty queue, as findrunnable does.
        while (item* it = thief_q[t].get(inherit)) take(it);
        if (stop.load(std::memory_order_acquire)) break;
        std::uint32_t x = r.next();
        queue* victim = &producer_q;
        if (x % 4 == 0)
          victim = &thief_q[(t + 1 + static_cast<int>(x / 4 % (kThieves - 1))) % kThieves];
        if (item* it = thief_q[t].steal(*victim, (x & 16) != 0, (x & 0xff00) == 0)) {
          take(it);
          ++stolen;
        }
      }
      stolen_total.fetch_add(stolen);
    });
  }
  while (thieves_ready.load() < kThieves) std::this_thread::yield();

  rng r{12345};
  std::size_t produced = 0;
  std::uint64_t overflow_batches = 0;
  bool inherit = false;
  const auto deadline = std::chrono::steady_clock::now() + duration;
  while (produced < max_items && std::chrono::steady_clock::now() < deadline) {
    std::uint32_t x = r.next();
    // Bursts of up to 64, now and then one big enough to overflow the ring.
    std::size_t burst = x % 16 == 0 ? 300 : 1 + x % 64;
    for (std::size_t i = 0; i < burst && produced < max_items; ++i) {
      auto b = producer_q.put(&pool[produced++], (r.next() & 3) == 0);
      if (b.n) {
        ++overflow_batches;
        std::uint32_t count = 0;
        for (item* it = b.head; it; it = it->schedlink) {
          take(it);
          ++count;
        }
        EXPECT_EQ(count, b.n);
      }
    }
    std::uint32_t gets = r.next() % 48;
    for (std::uint32_t i = 0; i < gets; ++i) {
      if (item* it = producer_q.get(inherit)) take(it);
    }
  }
  stop.store(true, std::memory_order_release);
  for (auto& th : thieves) th.join();
  // Whatever is left, single-threaded now.
  while (item* it = producer_q.get(inherit)) take(it);
  for (auto& q : thief_q) {
    while (item* it = q.get(inherit)) take(it);
  }

  std::size_t lost = 0, duplicated = 0;
  for (std::size_t i = 0; i < produced; ++i) {
    int s = pool[i].seen.load();
    if (s == 0) ++lost;
    if (s > 1) ++duplicated;
  }
  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(duplicated, 0u);
  for (std::size_t i = produced; i < max_items; ++i) ASSERT_EQ(pool[i].seen.load(), 0);
  EXPECT_GT(produced, 10'000u);
  EXPECT_GT(stolen_total.load(), 0u) << "the thieves never stole: the test proved nothing";
  RecordProperty("produced", static_cast<int>(produced));
  RecordProperty("stolen", static_cast<int>(stolen_total.load()));
  RecordProperty("overflow_batches", static_cast<int>(overflow_batches));
}

// ---- runtime/globrunq.hpp: the global run queue ------------------------------

// Chunks from the heap, counted, refused while `refuse` is set.
struct test_chunks {
  static inline bool refuse = false;
  static inline int live = 0;
  static void* allocate(std::size_t bytes) {
    if (refuse) return nullptr;
    ++live;
    return ::operator new(bytes);
  }
  static void free(void* p) {
    --live;
    ::operator delete(p);
  }
};

using global_queue = urge::runtime::global_run_queue<item, test_chunks>;
constexpr int kChunk = static_cast<int>(global_queue::chunk_slots);

std::vector<int> drain_ids(global_queue& q) {
  std::vector<int> ids;
  while (item* it = q.pop()) ids.push_back(it->id);
  return ids;
}

TEST(GlobalRunQueue, FifoAcrossChunksAndReusesEmptiedOnes) {
  test_chunks::refuse = false;
  test_chunks::live = 0;
  {
    global_queue q;
    EXPECT_EQ(q.pop(), nullptr);
    auto items = make_items(3 * kChunk + 7);
    for (auto& it : items) q.put(it.get());
    EXPECT_EQ(q.size(), items.size());
    EXPECT_EQ(test_chunks::live, 4);
    EXPECT_EQ(drain_ids(q), iota_ids(0, 3 * kChunk + 7));
    EXPECT_EQ(q.size(), 0u);
    // Emptied chunks are freed but for a spare and the last one, kept for reuse.
    EXPECT_EQ(test_chunks::live, 2);
    // Growing and shrinking around a chunk boundary allocates nothing more.
    for (int round = 0; round < 100; ++round) {
      for (int i = 0; i < kChunk + 1; ++i) q.put(items[static_cast<std::size_t>(i)].get());
      ASSERT_EQ(drain_ids(q), iota_ids(0, kChunk + 1));
    }
    EXPECT_EQ(test_chunks::live, 2);
  }
  EXPECT_EQ(test_chunks::live, 0) << "chunks leaked";
}

TEST(GlobalRunQueue, RefusedChunkLosesNothingAndKeepsTheOrder) {
  test_chunks::refuse = false;
  test_chunks::live = 0;
  {
    global_queue q;
    auto items = make_items(4 * kChunk);
    int next = 0;
    // One full chunk, then no more memory: the rest goes on the fallback list.
    for (; next < kChunk + 10; ++next) {
      if (next == kChunk) test_chunks::refuse = true;
      q.put(items[static_cast<std::size_t>(next)].get());
    }
    EXPECT_EQ(test_chunks::live, 1);
    // Half of the chunk leaves; memory is back, but what is put now must
    // still wait behind the fallback list.
    std::vector<int> got;
    for (int i = 0; i < kChunk / 2; ++i) got.push_back(q.pop()->id);
    test_chunks::refuse = false;
    for (; next < kChunk + 20; ++next) q.put(items[static_cast<std::size_t>(next)].get());
    EXPECT_EQ(q.size(), static_cast<std::size_t>(kChunk + 20 - kChunk / 2));
    for (int id : drain_ids(q)) got.push_back(id);
    EXPECT_EQ(got, iota_ids(0, kChunk + 20));
    // Drained: chunks are used again.
    for (int i = 0; i < 2 * kChunk; ++i) q.put(items[static_cast<std::size_t>(i)].get());
    EXPECT_EQ(drain_ids(q), iota_ids(0, 2 * kChunk));
  }
  EXPECT_EQ(test_chunks::live, 0) << "chunks leaked";
}

// pop_newest (the free-G list's end): LIFO across chunk boundaries, mixed
// with pop from the other end, emptied chunks let go from either end.
TEST(GlobalRunQueue, PopNewestIsLifoAcrossChunksAndMixesWithPop) {
  test_chunks::refuse = false;
  test_chunks::live = 0;
  {
    global_queue q;
    EXPECT_EQ(q.pop_newest(), nullptr);
    auto items = make_items(3 * kChunk + 7);
    for (auto& it : items) q.put(it.get());
    EXPECT_EQ(test_chunks::live, 4);
    // Down past two chunk boundaries from the newest end...
    std::vector<int> got;
    for (int i = 0; i < 2 * kChunk + 10; ++i) got.push_back(q.pop_newest()->id);
    std::vector<int> want;
    for (int id = 3 * kChunk + 6; id >= kChunk - 3; --id) want.push_back(id);
    EXPECT_EQ(got, want);
    EXPECT_EQ(test_chunks::live, 2) << "three emptied chunks: two freed, one kept as the spare";
    // ...while the oldest are still first at the other end.
    EXPECT_EQ(q.pop()->id, 0);
    EXPECT_EQ(q.size(), static_cast<std::size_t>(kChunk - 4));
    // Growing again uses the spare and keeps both ends right.
    for (int i = 0; i < kChunk; ++i) q.put(items[static_cast<std::size_t>(i)].get());
    EXPECT_EQ(q.pop_newest()->id, kChunk - 1);
    EXPECT_EQ(q.pop()->id, 1);
    std::vector<int> rest;
    while (item* it = q.pop_newest()) rest.push_back(it->id);
    EXPECT_EQ(rest.size(), static_cast<std::size_t>(2 * kChunk - 6));
    EXPECT_EQ(rest.back(), 2);
    EXPECT_EQ(q.size(), 0u);
    // Empty: a lone chunk is reset, and works from both ends.
    q.put(items[5].get());
    q.put(items[6].get());
    EXPECT_EQ(q.pop_newest()->id, 6);
    EXPECT_EQ(q.pop()->id, 5);
    EXPECT_EQ(q.pop_newest(), nullptr);
  }
  EXPECT_EQ(test_chunks::live, 0) << "chunks leaked";
}

TEST(GlobalRunQueue, PopNewestTakesTheFallbackListFirstAndLosesNothing) {
  test_chunks::refuse = false;
  test_chunks::live = 0;
  {
    global_queue q;
    auto items = make_items(kChunk + 10);
    for (int i = 0; i < kChunk + 10; ++i) {
      if (i == kChunk) test_chunks::refuse = true;
      q.put(items[static_cast<std::size_t>(i)].get());
    }
    test_chunks::refuse = false;
    std::vector<int> got;
    while (item* it = q.pop_newest()) got.push_back(it->id);
    std::vector<int> want;
    for (int id = kChunk; id < kChunk + 10; ++id) want.push_back(id);  // the list, oldest first
    for (int id = kChunk - 1; id >= 0; --id) want.push_back(id);  // then the chunk, newest first
    EXPECT_EQ(got, want);
    EXPECT_EQ(q.size(), 0u);
  }
  EXPECT_EQ(test_chunks::live, 0) << "chunks leaked";
}

}  // namespace
