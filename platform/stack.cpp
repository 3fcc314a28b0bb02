// Goroutine stacks; the design is in platform/stack.hpp.
#include "platform/stack.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>

#include "arch/context.hpp"  // URGE_ASAN

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define URGE_VALGRIND 1
#endif

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

namespace urge::platform {

namespace {

std::size_t page_size() {
  static const std::size_t p = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

std::size_t round_up(std::size_t n, std::size_t to) {
  return (n + to - 1) / to * to;
}

// ---- Slab registry -------------------------------------------------------
// The SIGSEGV handler must map a fault address to a stack without locks or
// allocation, so every slab is also recorded here: a fixed table, appended to
// under the owning pool's lock and read by the handler with acquire loads.
// A destroyed pool clears its entries' bases (never reused slots are fine:
// a handler racing with a pool's destruction cannot be on those stacks).

struct slab_record {
  std::atomic<std::uintptr_t> base{0};  // 0: unused or retired
  std::size_t slot_size = 0;
  std::size_t stack_size = 0;
  std::size_t nslots = 0;
  std::size_t guarded_upto = 0;  // slots [0, guarded_upto) have a faulting guard
};

constexpr std::size_t max_slab_records = 1 << 16;
slab_record g_slab_records[max_slab_records];
std::atomic<std::size_t> g_slab_count{0};
std::mutex g_slab_records_mu;  // serialises appends across pools

slab_record* register_slab(std::uintptr_t base, std::size_t slot_size, std::size_t stack_size,
                           std::size_t nslots, std::size_t guarded_upto) {
  std::lock_guard lock(g_slab_records_mu);
  std::size_t n = g_slab_count.load(std::memory_order_relaxed);
  slab_record* r = nullptr;
  for (std::size_t i = 0; i < n; ++i) {  // reuse a retired record first
    if (g_slab_records[i].base.load(std::memory_order_relaxed) == 0) {
      r = &g_slab_records[i];
      break;
    }
  }
  if (!r) {
    if (n == max_slab_records) return nullptr;
    r = &g_slab_records[n];
    g_slab_count.store(n + 1, std::memory_order_release);
  }
  r->slot_size = slot_size;
  r->stack_size = stack_size;
  r->nslots = nslots;
  r->guarded_upto = guarded_upto;
  r->base.store(base, std::memory_order_release);
  return r;
}

// ---- Async-signal-safe formatting ---------------------------------------

struct sigbuf {
  char data[512];
  std::size_t len = 0;
  void put(const char* s) {
    while (*s && len < sizeof data) data[len++] = *s++;
  }
  void put_hex(std::uintptr_t v) {
    char tmp[2 + 16];
    int n = 0;
    do {
      tmp[n++] = "0123456789abcdef"[v & 15];
      v >>= 4;
    } while (v);
    put("0x");
    while (n) {
      char c[2] = {tmp[--n], 0};
      put(c);
    }
  }
  void put_dec(std::size_t v) {
    char tmp[24];
    int n = 0;
    do {
      tmp[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v);
    while (n) {
      char c[2] = {tmp[--n], 0};
      put(c);
    }
  }
  void write_to_stderr() {
    std::size_t off = 0;
    while (off < len) {
      ssize_t w = ::write(2, data + off, len - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += static_cast<std::size_t>(w);
    }
  }
};

[[noreturn]] void die_overflow(std::uintptr_t lo, std::size_t size, std::uintptr_t fault,
                               const char* how) {
  sigbuf b;
  b.put("fatal error: stack overflow\n\nurge: goroutine stack overflow: ");
  b.put(how);
  b.put(" at ");
  b.put_hex(fault);
  b.put(", below the stack [");
  b.put_hex(lo);
  b.put(", ");
  b.put_hex(lo + size);
  b.put(") of ");
  b.put_dec(size);
  b.put(" bytes\nurge: raise urge::config::stack_size for deeper recursion or large locals\n");
  b.write_to_stderr();
  _exit(2);
}

// ---- The overflow handler -------------------------------------------------

struct sigaction g_prev_segv, g_prev_bus;
std::atomic<bool> g_handler_installed{false};

void chain(int sig, siginfo_t* info, void* uctx) {
  struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) return prev.sa_sigaction(sig, info, uctx);
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    return prev.sa_handler(sig);
  }
  // Default action: restore it and return; the faulting instruction runs
  // again and the kernel ends the process with the signal (and a core).
  signal(sig, SIG_DFL);
}

void overflow_handler(int sig, siginfo_t* info, void* uctx) {
  auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  std::size_t n = g_slab_count.load(std::memory_order_acquire);
  std::size_t page = page_size();
  for (std::size_t i = 0; i < n; ++i) {
    const slab_record& r = g_slab_records[i];
    std::uintptr_t base = r.base.load(std::memory_order_acquire);
    if (base == 0 || addr < base || addr >= base + r.nslots * r.slot_size) continue;
    std::size_t slot = (addr - base) / r.slot_size;
    std::uintptr_t lo = base + slot * r.slot_size + page;  // the stack proper
    if (addr < lo) die_overflow(lo, r.stack_size, addr, "fault in the guard page");
    break;  // inside a stack: not an overflow
  }
  chain(sig, info, uctx);
}

}  // namespace

const char* to_string(guard_kind k) {
  switch (k) {
    case guard_kind::guard_region:
      return "guard region";
    case guard_kind::protected_page:
      return "protected page";
    case guard_kind::canary:
      return "canary";
  }
  return "?";
}

void report_stack_overflow(const stack& s, const void* fault_addr) {
  die_overflow(reinterpret_cast<std::uintptr_t>(s.lo), s.size,
               reinterpret_cast<std::uintptr_t>(fault_addr), "canary overwritten");
}

std::size_t default_stack_size() {
#if URGE_ASAN
  return 256 * 1024;
#else
  return 64 * 1024;
#endif
}

void ensure_alt_stack() {
  thread_local bool done = false;
  if (done) return;
  done = true;
  stack_t cur{};
  if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE))
    return;  // the thread has one
  // 64 KiB: the handler itself needs little, but the kernel's signal frame
  // with AVX-512 state is ~3 KiB and chained handlers (ASan's) need more.
  constexpr std::size_t size = 64 * 1024;
  void* mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return;  // no alternate stack: overflows end as plain SIGSEGV
  stack_t ss{};
  ss.ss_sp = mem;
  ss.ss_size = size;
  ss.ss_flags = 0;
  sigaltstack(&ss, nullptr);
  // The mapping lives as long as the thread; a thread that exits leaks 64 KiB
  // of address space, not memory that was ever touched beyond the frames used.
}

void install_overflow_handler() {
  ensure_alt_stack();
  if (g_handler_installed.exchange(true)) return;
  struct sigaction sa {};
  sa.sa_sigaction = overflow_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_prev_segv);
  sigaction(SIGBUS, &sa, &g_prev_bus);
}

// ---- The pool ---------------------------------------------------------------

struct stack_pool::slab {
  char* base;
  std::size_t bytes;
  slab_record* record;
#if URGE_VALGRIND
  std::vector<unsigned> valgrind_ids;
#endif
};

bool stack_pool::guard_regions_supported() {
  static const bool supported = [] {
    std::size_t page = page_size();
    void* p = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    bool ok = madvise(p, page, MADV_GUARD_INSTALL) == 0;
    if (ok) {
      // Some environments (qemu-user) accept the advice and ignore it: check
      // that the kernel now refuses to read the page.
      int fds[2];
      if (pipe2(fds, O_CLOEXEC) == 0) {
        ssize_t w = write(fds[1], p, 1);
        ok = w < 0 && errno == EFAULT;
        close(fds[0]);
        close(fds[1]);
      } else {
        ok = false;
      }
    }
    munmap(p, 2 * page);
    return ok;
  }();
  return supported;
}

namespace {
// Guard regions for slots [0, n) of a slab, in as few system calls as the
// kernel allows: process_madvise takes up to IOV_MAX ranges at once and, for
// the calling process, any advice (Linux 6.13, the release that brought guard
// regions). A slab of 1024 stacks then costs one call where a madvise per
// slot cost 1024 (each ~0.7 us on this class of machine, against ~0.4 us per
// range batched). Where process_madvise is refused (older kernels, seccomp),
// one madvise per slot, as before. Returns how many slots, from the first,
// got their guard.
std::size_t install_guard_regions(char* base, std::size_t n, std::size_t slot_size,
                                  std::size_t page) {
  std::size_t done = 0;
#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
  // A pidfd of our own process; opened again after a fork (the child's pid
  // differs, and a pidfd of the parent would be refused this advice).
  static std::mutex mu;
  static int pidfd = -1;
  static pid_t pidfd_pid = 0;
  static bool refused = false;
  {
    std::lock_guard lock(mu);
    const pid_t me = getpid();
    if (!refused && pidfd_pid != me) {
      if (pidfd >= 0 && pidfd_pid != 0) close(pidfd);
      pidfd = static_cast<int>(syscall(SYS_pidfd_open, me, 0));
      pidfd_pid = me;
      if (pidfd < 0) refused = true;
    }
    if (!refused) {
      constexpr std::size_t max_iov = 1024;  // IOV_MAX
      iovec iov[max_iov];
      while (done < n) {
        std::size_t k = std::min(n - done, max_iov);
        for (std::size_t i = 0; i < k; ++i) {
          iov[i].iov_base = base + (done + i) * slot_size;
          iov[i].iov_len = page;
        }
        long r = syscall(SYS_process_madvise, pidfd, iov, k, MADV_GUARD_INSTALL, 0);
        if (r < 0) {
          if (errno == EINVAL || errno == ENOSYS || errno == EPERM || errno == EBADF) {
            refused = true;  // not for this kernel: per-slot madvise from now on
          }
          break;
        }
        // Ranges are advised in order; a short count means a range failed.
        std::size_t ok = static_cast<std::size_t>(r) / page;
        done += ok;
        if (ok < k) break;
      }
    }
  }
#endif
  for (; done < n; ++done) {
    if (madvise(base + done * slot_size, page, MADV_GUARD_INSTALL) != 0) break;
  }
  return done;
}

std::size_t mapping_budget() {
  std::size_t max_maps = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "re")) {
    unsigned long v;
    if (std::fscanf(f, "%lu", &v) == 1) max_maps = v;
    std::fclose(f);
  }
  std::size_t used = 0;
  if (FILE* f = std::fopen("/proc/self/maps", "re")) {
    int c;
    while ((c = std::fgetc(f)) != EOF) used += c == '\n';
    std::fclose(f);
  }
  if (used >= max_maps) return 0;
  std::size_t headroom = max_maps - used;
  return headroom - headroom / 4;  // leave a quarter to malloc, libraries and the user
}
}  // namespace

stack_pool::stack_pool(const options& opts) : opts_(opts) {
  page_ = page_size();
  stack_size_ = round_up(opts.stack_size ? opts.stack_size : default_stack_size(), page_);
  slot_size_ = stack_size_ + page_;
  if (opts.force_guard) {
    preferred_ = opts.forced;
  } else {
    preferred_ = guard_regions_supported() ? guard_kind::guard_region : guard_kind::protected_page;
  }
  protected_budget_left_ =
      opts.protected_page_budget == SIZE_MAX ? mapping_budget() : opts.protected_page_budget;
  install_overflow_handler();
}

stack_pool::~stack_pool() {
  for (slab* s : slabs_) {
#if URGE_VALGRIND
    for (unsigned id : s->valgrind_ids) VALGRIND_STACK_DEREGISTER(id);
#endif
    if (s->record) s->record->base.store(0, std::memory_order_release);
    munmap(s->base, s->bytes);
    delete s;
  }
}

void stack_pool::grow_locked() {
  std::size_t nslots = next_slab_slots_;
  if (opts_.max_stacks) {
    if (total_ >= opts_.max_stacks) {
      throw std::system_error(ENOMEM, std::generic_category(),
                              "urge: goroutine stack budget exhausted: " + std::to_string(total_) +
                                  " stacks of " + std::to_string(stack_size_) +
                                  " bytes are live (limit " + std::to_string(opts_.max_stacks) +
                                  ")");
    }
    nslots = std::min(nslots, opts_.max_stacks - total_);
  }
  std::size_t bytes = nslots * slot_size_;
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (mem == MAP_FAILED) {
    int e = errno;
    throw std::system_error(e, std::generic_category(),
                            "urge: cannot map " + std::to_string(nslots) + " goroutine stacks of " +
                                std::to_string(stack_size_) + " bytes (" + std::to_string(total_) +
                                " stacks already live)");
  }
  char* base = static_cast<char*>(mem);
  guard_kind kind = preferred_;
  std::size_t guarded = 0;
  if (kind == guard_kind::guard_region) {
    guarded = install_guard_regions(base, nslots, slot_size_, page_);
  } else if (kind == guard_kind::protected_page) {
    // Each protected page splits the mapping: two mappings per slot.
    for (; guarded < nslots && protected_budget_left_ >= 2; ++guarded) {
      if (mprotect(base + guarded * slot_size_, page_, PROT_NONE) != 0) break;
      protected_budget_left_ -= 2;
    }
    if (guarded < nslots)
      protected_budget_left_ = 0;  // budget or kernel said no: canaries from now on
  }
  auto* s = new slab{};
  s->base = base;
  s->bytes = bytes;
  s->record = register_slab(reinterpret_cast<std::uintptr_t>(base), slot_size_, stack_size_, nslots,
                            guarded);
  slabs_.push_back(s);
  free_.reserve(free_.size() + nslots);
  // Push in reverse so that acquire hands out the lowest slot first.
  for (std::size_t i = nslots; i-- > 0;) {
    stack st;
    st.lo = base + i * slot_size_ + page_;
    st.size = stack_size_;
    st.guard = i < guarded ? kind : guard_kind::canary;
    by_kind_[static_cast<int>(st.guard)]++;
#if URGE_VALGRIND
    if (RUNNING_ON_VALGRIND) s->valgrind_ids.push_back(VALGRIND_STACK_REGISTER(st.lo, st.hi()));
#endif
    free_.push_back(st);
  }
  total_ += nslots;
  if (next_slab_slots_ < 1024) next_slab_slots_ *= 2;
}

stack stack_pool::acquire() {
  stack s;
  acquire_batch(&s, 1);
  return s;
}

std::size_t stack_pool::acquire_batch(stack* out, std::size_t n) {
  std::lock_guard lock(mu_);
  if (free_.empty()) grow_locked();
  std::size_t k = std::min(n, free_.size());
  for (std::size_t i = 0; i < k; ++i) {
    out[i] = free_.back();
    free_.pop_back();
  }
  return k;
}

void stack_pool::check_released(const stack& s) {
  if (s.guard != guard_kind::canary) return;
  auto* w = reinterpret_cast<const std::uint64_t*>(s.lo - page_);
  for (std::size_t i = 0; i < page_ / 8; ++i) {
    if (w[i] != 0) report_stack_overflow(s, &w[i]);
  }
}

void stack_pool::release(const stack& s) {
  release_batch(&s, 1);
}

void stack_pool::release_batch(const stack* in, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) check_released(in[i]);
  std::lock_guard lock(mu_);
  free_.insert(free_.end(), in, in + n);
}

stack_pool::stats stack_pool::get_stats() const {
  std::lock_guard lock(mu_);
  stats st;
  st.slabs = slabs_.size();
  st.stacks_total = total_;
  st.stacks_free = free_.size();
  st.guard_region = by_kind_[0];
  st.protected_page = by_kind_[1];
  st.canary = by_kind_[2];
  return st;
}

}  // namespace urge::platform
