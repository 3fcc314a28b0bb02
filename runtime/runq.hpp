// The per-P local run queue (Go's runqput/runqget/runqgrab/runqsteal).
//
// A 256-slot ring with head and tail indexes that only grow (wrapping as
// uint32), plus a one-element `runnext` slot. Exactly one producer, the P's
// owner, appends at the tail and takes from the head; any number of
// consumers (thieves on other Ms) take from the head with a CAS. The owner
// writes a slot and then release-stores tail, so a thief that acquire-loads
// tail sees the slot filled; a thief that reads a slot which is then
// overwritten loses the CAS on head and retries, so slots are atomics read
// and written relaxed (the CAS on head is what validates a read).
//
// runnext holds the goroutine made ready by the running one (a channel
// wakeup, a new goroutine). It runs next and inherits the rest of the time
// slice, which keeps producer/consumer pairs on one P without penalising
// the others: a goroutine kicked out of runnext goes to the tail.
//
// When the ring is full, put moves half of it plus the new goroutine to the
// global queue in one batch (runqputslow), so the lock is taken once per 128
// goroutines. The queue is templated on the goroutine type so that tests can
// drive it with plain structs; G must have a `G* schedlink` member.
#pragma once

#include <atomic>
#include <cstdint>

#include "platform/clock.hpp"

namespace urge::runtime {

template <class G>
class run_queue {
 public:
  static constexpr std::uint32_t capacity = 256;

  // A batch for the global queue, linked through schedlink (head..tail, n).
  struct batch {
    G* head = nullptr;
    G* tail = nullptr;
    std::uint32_t n = 0;
  };

  // Owner only. Appends gp (to runnext if `next`). Returns an empty batch, or
  // when the ring was full, the goroutines the caller must put on the global
  // queue.
  batch put(G* gp, bool next) {
    if (next) {
      // Only the owner makes runnext non-null; thieves only empty it. So an
      // empty runnext stays empty until we store, and a failed CAS means a
      // thief just emptied it: a plain store does in both cases, saving the
      // locked instruction on the common path (a channel wakeup into an
      // empty runnext).
      G* old = runnext_.load(std::memory_order_relaxed);
      if (!old || !runnext_.compare_exchange_strong(old, gp, std::memory_order_acq_rel)) {
        runnext_.store(gp, std::memory_order_release);
        return {};
      }
      gp = old;  // kick the old runnext to the tail
    }
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_relaxed);
      if (t - h < capacity) {
        slots_[t % capacity].store(gp, std::memory_order_relaxed);
        tail_.store(t + 1, std::memory_order_release);
        return {};
      }
      batch b;
      if (put_slow(gp, h, t, b)) return b;
      // The ring is no longer full (a thief took some): retry the fast path.
    }
  }

  // Owner only. Appends gp at the tail if the ring has room (no runnext, no
  // overflow); false otherwise, leaving the rest to put.
  bool put_tail_fast(G* gp) {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    std::uint32_t t = tail_.load(std::memory_order_relaxed);
    if (t - h >= capacity) return false;
    slots_[t % capacity].store(gp, std::memory_order_relaxed);
    tail_.store(t + 1, std::memory_order_release);
    return true;
  }

  // Owner only. Puts gp in runnext if it is empty (nothing to kick out);
  // false otherwise, leaving the rest to put. See put for why a plain store
  // does.
  bool put_runnext_fast(G* gp) {
    if (runnext_.load(std::memory_order_relaxed)) return false;
    runnext_.store(gp, std::memory_order_release);
    return true;
  }

  // Owner only. Takes runnext (inherit = true: it keeps the time slice), else
  // the head of the ring. nullptr when empty. no_thieves: the caller knows
  // nobody else can take from this queue (the only P: thieves are other Ps'
  // owners), so plain stores replace the CASes.
  G* get(bool& inherit, bool no_thieves = false) {
    G* next = runnext_.load(std::memory_order_relaxed);
    if (next) {
      if (no_thieves) {
        runnext_.store(nullptr, std::memory_order_relaxed);
        inherit = true;
        return next;
      }
      // Only the owner sets runnext to non-null, so a failed CAS means a
      // thief took it: fall through to the ring.
      if (runnext_.compare_exchange_strong(next, nullptr, std::memory_order_acq_rel)) {
        inherit = true;
        return next;
      }
    }
    inherit = false;
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_relaxed);
      if (t == h) return nullptr;
      G* gp = slots_[h % capacity].load(std::memory_order_relaxed);
      if (no_thieves) {
        head_.store(h + 1, std::memory_order_release);
        return gp;
      }
      if (head_.compare_exchange_weak(h, h + 1, std::memory_order_release)) return gp;
    }
  }

  // Called on the thief's own queue (owner only): steals about half of
  // victim's goroutines into this ring and returns one of them to run, or
  // nullptr. runnext is taken only if steal_runnext; if the victim is running
  // (victim_running), the thief first waits ~3 us, since the victim is likely
  // about to schedule that goroutine itself (Go's comment in runqgrab).
  G* steal(run_queue& victim, bool steal_runnext, bool victim_running) {
    std::uint32_t t = tail_.load(std::memory_order_relaxed);
    std::uint32_t n = victim.grab(slots_, t, steal_runnext, victim_running);
    if (n == 0) return nullptr;
    --n;
    G* gp = slots_[(t + n) % capacity].load(std::memory_order_relaxed);
    if (n == 0) return gp;
    tail_.store(t + n, std::memory_order_release);
    return gp;
  }

  // Any thread: a snapshot of the length (runnext counted).
  std::uint32_t size() const {
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_acquire);
      if (h == head_.load(std::memory_order_acquire)) {
        return t - h + (runnext_.load(std::memory_order_relaxed) ? 1 : 0);
      }
    }
  }

  bool empty() const {
    // Go's runqempty: head, tail and runnext must be read consistently, or a
    // goroutine moving from runnext to the ring could be missed by both reads.
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_acquire);
      G* next = runnext_.load(std::memory_order_acquire);
      if (tail_.load(std::memory_order_acquire) == t) return h == t && next == nullptr;
    }
  }

  // Owner only, with the world stopped for this queue (shutdown): removes all.
  template <class F>
  void drain(F&& f) {
    bool inherit;
    while (G* gp = get(inherit)) f(gp);
  }

 private:
  bool put_slow(G* gp, std::uint32_t h, std::uint32_t t, batch& b) {
    constexpr std::uint32_t n = capacity / 2;
    if (t - h != capacity) return false;  // not full after all
    G* moved[n + 1];
    for (std::uint32_t i = 0; i < n; ++i) {
      moved[i] = slots_[(h + i) % capacity].load(std::memory_order_relaxed);
    }
    if (!head_.compare_exchange_strong(h, h + n, std::memory_order_release)) return false;
    moved[n] = gp;
    for (std::uint32_t i = 0; i < n; ++i) moved[i]->schedlink = moved[i + 1];
    moved[n]->schedlink = nullptr;
    b.head = moved[0];
    b.tail = moved[n];
    b.n = n + 1;
    return true;
  }

  // Copies about half of this queue into dst starting at dst_head; returns
  // how many. Any thread.
  std::uint32_t grab(std::atomic<G*>* dst, std::uint32_t dst_head, bool steal_runnext,
                     bool victim_running) {
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t t = tail_.load(std::memory_order_acquire);
      std::uint32_t n = t - h;
      n = n - n / 2;
      if (n == 0) {
        if (!steal_runnext) return 0;
        G* next = runnext_.load(std::memory_order_acquire);
        if (!next) return 0;
        if (victim_running) {
          // The victim is about to run it; stealing now would bounce it
          // between Ps. Go sleeps 3 us here.
          platform::usleep_thread(3);
        }
        if (!runnext_.compare_exchange_strong(next, nullptr, std::memory_order_acq_rel)) continue;
        dst[dst_head % capacity].store(next, std::memory_order_relaxed);
        return 1;
      }
      if (n > capacity / 2) continue;  // read an inconsistent h and t
      for (std::uint32_t i = 0; i < n; ++i) {
        dst[(dst_head + i) % capacity].store(
            slots_[(h + i) % capacity].load(std::memory_order_relaxed), std::memory_order_relaxed);
      }
      if (head_.compare_exchange_strong(h, h + n, std::memory_order_release)) return n;
    }
  }

  alignas(64) std::atomic<std::uint32_t> head_{0};  // consumers: CAS
  std::atomic<std::uint32_t> tail_{0};              // owner only writes
  std::atomic<G*> runnext_{nullptr};
  std::atomic<G*> slots_[capacity] = {};
};

}  // namespace urge::runtime
