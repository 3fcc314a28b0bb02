// Goroutine stacks: mmap'd, guarded, pooled.
//
// The problem. A goroutine's C++ stack cannot move or grow, so it must be
// reserved at full size up front (ordinary C++ needs tens of KiB: iostreams,
// printf, exception unwinding), and an overflow must never corrupt memory
// silently. The classic answer, one mmap per stack with a PROT_NONE guard
// page, costs two kernel mappings per stack, and Linux allows 65530 mappings
// per process by default (vm.max_map_count): such a runtime dies near 32k
// goroutines where Go holds a million.
//
// The design. Stacks are carved out of slabs: one mapping holds many slots,
// each a guard page followed by the stack (MAP_NORESERVE, so untouched pages
// cost neither memory nor commit charge). Each slot's guard page is, in order
// of preference:
//   1. a lightweight guard region (madvise MADV_GUARD_INSTALL, Linux 6.13):
//      faults like PROT_NONE but does not split the mapping, so a million
//      stacks cost about a thousand mappings. Probed at start-up, because
//      older kernels, seccomp filters and qemu-user reject or ignore it;
//   2. a PROT_NONE page (mprotect), while a mapping budget lasts: a quarter
//      of vm.max_map_count's headroom is left for the rest of the process;
//   3. beyond that, a canary page: ordinary memory that must stay zero. The
//      runtime checks the words just below the stack at every switch and the
//      whole page when the stack is released, and stops the process with a
//      message on damage. Zero is chosen so that an untouched canary page
//      reads from the kernel's zero page and costs no memory.
// A fault in a guard page (kinds 1 and 2) reaches a SIGSEGV handler running
// on an alternate signal stack, which names the stack and its size and exits
// with status 2, as Go's "fatal error: stack overflow" does.
//
// Released stacks go back to the pool with their pages still resident: the
// next goroutine reuses them without faults. The pool itself is shared and
// locked; stack_cache is a small per-P front that takes and returns stacks in
// batches, so the common acquire+release is a few loads and stores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace urge::platform {

enum class guard_kind : std::uint8_t {
  guard_region,    // MADV_GUARD_INSTALL
  protected_page,  // mprotect(PROT_NONE)
  canary,          // zero-filled page checked in software
};

const char* to_string(guard_kind k);

struct stack {
  char* lo = nullptr;    // lowest usable byte; the guard page is just below
  std::size_t size = 0;  // usable bytes: the stack is [lo, lo + size)
  guard_kind guard = guard_kind::canary;

  char* hi() const { return lo + size; }
  explicit operator bool() const { return lo != nullptr; }
};

// The canary words checked at every switch of a canary-guarded stack: the
// 64 bytes below lo, which a gradual overflow writes first.
inline constexpr std::size_t canary_check_bytes = 64;

inline bool canary_intact(const stack& s) {
  if (s.guard != guard_kind::canary) return true;
  auto* w = reinterpret_cast<const volatile std::uint64_t*>(s.lo - canary_check_bytes);
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < canary_check_bytes / 8; ++i) acc |= w[i];
  return acc == 0;
}

// Ends the process with the stack-overflow message for s (canary damage).
[[noreturn]] void report_stack_overflow(const stack& s, const void* fault_addr);

// The default usable stack size: 64 KiB (256 KiB under AddressSanitizer,
// whose redzones inflate frames). Room for iostreams, printf and exception
// unwinding, which need up to ~20 KiB; raise it through config::stack_size.
std::size_t default_stack_size();

// Installs the process-wide SIGSEGV/SIGBUS handler that reports guard-page
// hits (idempotent; chains to any earlier handler for other faults), and an
// alternate signal stack for the calling thread if it has none.
void install_overflow_handler();
void ensure_alt_stack();

class stack_pool {
 public:
  struct options {
    std::size_t stack_size = 0;  // 0: default_stack_size(); rounded up to pages
    // Forces a guard kind for tests; by default the best available is used.
    bool force_guard = false;
    guard_kind forced = guard_kind::canary;
    // Mapping budget for protected_page guards; SIZE_MAX: derived from
    // vm.max_map_count at construction.
    std::size_t protected_page_budget = SIZE_MAX;
    std::size_t max_stacks = 0;  // 0: no limit beyond memory
  };

  stack_pool() : stack_pool(options{}) {}
  explicit stack_pool(const options& opts);
  ~stack_pool();  // unmaps every slab: every stack must have been released
  stack_pool(const stack_pool&) = delete;
  stack_pool& operator=(const stack_pool&) = delete;

  // Throws std::system_error (ENOMEM) with a message naming the stack size,
  // the number of live stacks and the cause when no stack can be had.
  stack acquire();
  void release(const stack& s);
  // Batch forms for stack_cache: return how many were moved.
  std::size_t acquire_batch(stack* out, std::size_t n);
  void release_batch(const stack* in, std::size_t n);

  std::size_t stack_size() const { return stack_size_; }
  guard_kind preferred_guard() const { return preferred_; }

  struct stats {
    std::size_t slabs = 0;
    std::size_t stacks_total = 0;  // carved so far
    std::size_t stacks_free = 0;   // in the pool (not counting caches)
    std::size_t guard_region = 0, protected_page = 0, canary = 0;  // slots by guard kind
  };
  stats get_stats() const;

  // True when this kernel honours MADV_GUARD_INSTALL (probed once).
  static bool guard_regions_supported();

 private:
  struct slab;
  void grow_locked();  // needs mu_
  void check_released(const stack& s);

  std::size_t stack_size_;
  std::size_t slot_size_;
  std::size_t page_;
  options opts_;
  guard_kind preferred_;

  mutable std::mutex mu_;  // protects everything below
  std::vector<stack> free_;
  std::vector<slab*> slabs_;
  std::size_t next_slab_slots_ = 16;  // doubles up to 1024
  std::size_t protected_budget_left_;
  std::size_t total_ = 0;
  std::size_t by_kind_[3] = {};
};

// A small per-P front for a stack_pool (Go's stackcache). Owner-only: not
// thread-safe. Keeps up to `capacity` stacks, moving half at a time.
//
// The stacks form a stack (LIFO) whose top is the most recently released,
// the one likeliest to be in the CPU's caches and TLB: get and put work at
// the top. exchange_top trades a stack that was never run on (a reservation,
// see "Stacks of new goroutines" in runtime/proc.cpp) for the top one, and
// files the cold one at the bottom, so that the next exchange finds a warm
// stack again; an overflow returns the bottom half, the coldest, to the
// pool. A ring of slots makes the bottom as cheap to reach as the top.
class stack_cache {
 public:
  static constexpr std::size_t capacity = 32;  // a power of two (ring indices)

  stack get(stack_pool& pool) {
    if (n_ == 0) {
      stack batch[capacity / 2];
      std::size_t k = pool.acquire_batch(batch, capacity / 2);
      if (k == 0) return pool.acquire();  // throws with the pool's message
      bot_ = 0;
      for (std::size_t i = 0; i < k; ++i) items_[i] = batch[k - 1 - i];  // the pool's top on top
      n_ = k;
    }
    return items_[slot(--n_)];
  }
  void put(stack_pool& pool, const stack& s) {
    if (n_ == capacity) release_bottom(pool, capacity / 2);
    items_[slot(n_++)] = s;
  }
  // Exchanges s for the top stack, if any; s goes to the bottom. Never
  // allocates or fails.
  void exchange_top(stack& s) {
    if (n_ == 0) return;
    stack cold = s;
    s = items_[slot(n_ - 1)];
    // Shift the ring down by one: the old top's slot becomes free at the top
    // end, the bottom gains cold.
    bot_ = (bot_ - 1) & (capacity - 1);
    items_[bot_] = cold;
  }
  void flush(stack_pool& pool) { release_bottom(pool, n_); }
  std::size_t size() const { return n_; }

 private:
  std::size_t slot(std::size_t i) const { return (bot_ + i) & (capacity - 1); }
  void release_bottom(stack_pool& pool, std::size_t k) {
    stack batch[capacity];
    for (std::size_t i = 0; i < k; ++i) batch[i] = items_[slot(i)];
    // Coldest first into the pool, so that the warmest of them is the pool's top.
    pool.release_batch(batch, k);
    bot_ = (bot_ + k) & (capacity - 1);
    n_ -= k;
  }

  stack items_[capacity];
  std::size_t bot_ = 0;  // ring index of the bottom stack
  std::size_t n_ = 0;
};

}  // namespace urge::platform
