// The execution tracer; see runtime/trace.hpp for the events and the file.
//
// Buffers. Each P has a chunk of fixed-size records that only its owner (the
// M holding it: getm()->curp) appends to, with no lock and no atomic: the
// hand-over of a P between Ms already synchronises (sched.lock or the P's
// status CAS), so the next owner sees the last one's writes. A full chunk
// moves to a locked list. The few events emitted by an M without a P (a
// goroutine leaving a blocking call before it has a P again, the network
// poller's M readying goroutines) go to one small locked buffer. trace_stop
// runs once every other M has been joined, so it reads the buffers with no
// writer left; it merges them by time, names the goroutines and writes the file.
//
// Timestamps. Reading the clock is most of an event's cost: clock_gettime
// through the vDSO takes ~20 ns on bare metal (over 100 ns in some VMs).
// Events therefore record the CPU's counter, which the vDSO itself reads
// underneath: RDTSCP on x86-64 when the kernel's clocksource is the TSC
// (then it is invariant and synchronised across CPUs; RDTSCP, unlike RDTSC,
// waits for earlier loads, so an event that follows a wakeup seen in memory
// is never stamped before that wakeup), CNTVCT_EL0 after an ISB on AArch64.
// trace_stop converts counts to CLOCK_MONOTONIC nanoseconds with the pairs of
// (counter, clock) read at start and stop. Elsewhere (a kvm-clock or hpet
// clocksource) events read CLOCK_MONOTONIC directly.
//
// Naming. Resolving symbols costs microseconds, so go_create only notes
// addresses (the entry function g::fn, the `go` statement's return address and
// two words of the closure) and trace_stop turns them into names, once per
// distinct address. g::fn is always urge::detail::run_closure<std::tuple<F,
// A...>>, whose demangled name carries F's type: a lambda's type names its
// enclosing function ("main_fn()::{lambda()#1}"), which is what a reader
// wants. When F is a function pointer the type says only "void (*)(int)", so
// the pointer itself is looked for in the closure: libstdc++'s tuple keeps its
// first element last, just below the g (allocg places the closure there, and
// its end is the g's address for any alignment up to 64); libc++ keeps it
// first, at the closure's start. A word there that is the exact start of a
// function is the callable.
#include "runtime/trace.hpp"

#include <cxxabi.h>
#include <dlfcn.h>
#include <libunwind.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "platform/clock.hpp"
#include "runtime/lock.hpp"
#include "runtime/preempt.hpp"
#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"

namespace urge::runtime {

// traceback.cpp: a goroutine's callable from the name of its entry glue;
// libunwind's local address space, initialised (its accessors are lazy).
std::string friendly_function_name(const std::string& demangled);
void unwinder_ready();

bool trace_on = false;

namespace {

// A (counter, CLOCK_MONOTONIC) pair, read as close together as possible.
struct clock_pair {
  std::int64_t counter = 0, ns = 0;
};

// The file's event record (trace.hpp), also the in-memory one.
struct record {
  std::int64_t ts;
  std::uint64_t a;
  std::uint64_t b;
  std::int16_t p;
  std::uint8_t ev;
  std::uint8_t reserved;
  std::int32_t m;
};
static_assert(sizeof(record) == 32);

// 64 KiB per chunk: few enough allocations, little waste for an idle P.
constexpr std::size_t chunk_records = 2044;
struct chunk {
  chunk* next = nullptr;
  int owner = 0;          // the buffer: P id, or -1 for the global one
  std::uint32_t seq = 0;  // its order among that buffer's chunks
  std::size_t n = 0;
  record r[chunk_records];
};

// What names a goroutine; resolved at stop.
struct goinfo {
  std::uint64_t goid;
  std::uint64_t parent;
  std::uintptr_t fn;
  std::uintptr_t creator_pc;
  std::uintptr_t w_first;  // the closure's first word (libc++ keeps F there)
  std::uintptr_t w_last;   // its last word (libstdc++ keeps F there)
  bool is_main;
};

struct alignas(64) buffer {
  chunk* cur = nullptr;
  std::uint32_t nchunks = 0;
  std::vector<goinfo> gos;
};

struct tracer {
  std::FILE* file = nullptr;
  std::string path;
  std::int64_t start_ns = 0;
  std::int64_t wall_ns = 0;
  clock_pair start_pair;  // when events read the counter
  int gomaxprocs = 0;
  std::unique_ptr<buffer[]> per_p;
  futex_mutex lock;                       // guards full and global
  chunk* full = nullptr;                  // full chunks of every buffer
  buffer global;                          // events emitted without a P
  std::atomic<std::uint64_t> dropped{0};  // records lost to a failed allocation
};

tracer* g_tracer = nullptr;  // set before trace_on, cleared after it

// ---- Clock ---------------------------------------------------------------------

bool g_use_counter = false;  // chosen at trace_start, fixed while tracing

inline std::int64_t read_counter() {
#if defined(__x86_64__)
  unsigned aux;
  return static_cast<std::int64_t>(__rdtscp(&aux));
#elif defined(__aarch64__)
  std::uint64_t v;
  asm volatile("isb; mrs %0, cntvct_el0" : "=r"(v)::"memory");
  return static_cast<std::int64_t>(v);
#else
  return platform::nanotime();
#endif
}

inline std::int64_t trace_clock() {
  return g_use_counter ? read_counter() : platform::nanotime();
}

bool counter_is_usable() {
#if defined(__x86_64__)
  // The kernel uses the TSC as its clock only when it is invariant and in
  // step across CPUs.
  std::FILE* f =
      std::fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  if (!f) return false;
  char name[32] = {};
  bool tsc = std::fgets(name, sizeof name, f) && std::strncmp(name, "tsc", 3) == 0;
  std::fclose(f);
  return tsc;
#elif defined(__aarch64__)
  return true;  // the architected generic timer
#else
  return false;
#endif
}

clock_pair read_pair() {
  clock_pair best;
  std::int64_t best_gap = INT64_MAX;
  for (int i = 0; i < 5; ++i) {  // the tightest of a few tries
    std::int64_t c0 = read_counter();
    std::int64_t ns = platform::nanotime();
    std::int64_t c1 = read_counter();
    if (c1 - c0 < best_gap) {
      best_gap = c1 - c0;
      best = {c0 + (c1 - c0) / 2, ns};
    }
  }
  return best;
}

// Slow path of append: retire the full chunk, start a new one. `locked`: the
// caller holds t->lock (the global buffer).
chunk* next_chunk(tracer* t, buffer& b, int owner, bool locked) {
  auto* c = new (std::nothrow) chunk;
  if (c) {
    c->owner = owner;
    c->seq = b.nchunks++;
  }
  if (b.cur) {
    if (!locked) t->lock.lock();
    b.cur->next = t->full;
    t->full = b.cur;
    if (!locked) t->lock.unlock();
  }
  b.cur = c;
  return c;
}

inline void append(tracer* t, buffer& b, int owner, bool locked, const record& r) {
  chunk* c = b.cur;
  if (__builtin_expect(!c || c->n == chunk_records, 0)) {
    c = next_chunk(t, b, owner, locked);
    if (!c) {
      t->dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  c->r[c->n++] = r;
}

// Appends one event (and the naming record of a go_create) to the buffer of
// the emitting M's P, or to the global one.
void emit(tracer* t, trace_ev ev, std::uint64_t a, std::uint64_t b, const goinfo* gi) {
  // Not stopped asynchronously halfway through a P's buffer (a statically
  // linked runtime is preemptible code as far as the PC goes).
  preempt_off_scope no_preempt;
  record r;
  r.ts = trace_clock();
  r.a = a;
  r.b = b;
  r.ev = static_cast<std::uint8_t>(ev);
  r.reserved = 0;
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  r.m = mp ? mp->id : -1;
  r.p = static_cast<std::int16_t>(pp ? pp->id : -1);
  if (pp && pp->id < t->gomaxprocs) {
    buffer& buf = t->per_p[static_cast<std::size_t>(pp->id)];
    append(t, buf, pp->id, false, r);
    if (gi) buf.gos.push_back(*gi);
  } else {
    std::lock_guard lock(t->lock);
    append(t, t->global, -1, true, r);
    if (gi) t->global.gos.push_back(*gi);
  }
}

// ---- Names -------------------------------------------------------------------

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = d ? d : name;
  std::free(d);
  return s;
}

// The demangled name of the function containing ip; exact: only if ip is its
// first instruction. libunwind reads .symtab too, so static functions and the
// template instances of an executable (which dladdr cannot see) resolve.
std::string symbol_at(std::uintptr_t ip, bool exact) {
  if (ip == 0) return {};
  unwinder_ready();
  char name[1024];
  unw_word_t off = 0;
  unw_accessors_t* acc = unw_get_accessors(unw_local_addr_space);
  if (acc->get_proc_name &&
      acc->get_proc_name(unw_local_addr_space, ip, name, sizeof name, &off, nullptr) == 0) {
    if (exact && off != 0) return {};
    return demangle(name);
  }
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(ip), &info) && info.dli_sname) {
    if (exact && reinterpret_cast<std::uintptr_t>(info.dli_saddr) != ip) return {};
    return demangle(info.dli_sname);
  }
  return {};
}

struct namer {
  std::unordered_map<std::uintptr_t, std::string> exact, containing;

  const std::string& at(std::uintptr_t ip, bool want_exact) {
    auto& cache = want_exact ? exact : containing;
    auto it = cache.find(ip);
    if (it != cache.end()) return it->second;
    return cache.emplace(ip, symbol_at(ip, want_exact)).first->second;
  }

  std::string entry_name(const goinfo& gi) {
    if (gi.is_main) return "main";
    const std::string& fn = at(gi.fn, false);
    if (fn.empty()) return "?";
    std::string callable = friendly_function_name(fn);
    if (callable.find("(*)") != std::string::npos || callable.find("(&)") != std::string::npos) {
      for (std::uintptr_t w : {gi.w_last, gi.w_first}) {
        const std::string& f = at(w, true);
        if (!f.empty()) return f;
      }
    }
    return callable;
  }
};

void put_u32(std::string& out, std::uint32_t v) {
  out.append(reinterpret_cast<char*>(&v), 4);
}
void put_u64(std::string& out, std::uint64_t v) {
  out.append(reinterpret_cast<char*>(&v), 8);
}

}  // namespace

void trace_emit(trace_ev ev, std::uint64_t a, std::uint64_t b) {
  if (tracer* t = g_tracer) emit(t, ev, a, b, nullptr);
}

void trace_go_create(g* gp) {
  tracer* t = g_tracer;
  if (!t) return;
  goinfo gi{};
  gi.goid = gp->goid;
  gi.parent = gp->parent_goid;
  gi.fn = reinterpret_cast<std::uintptr_t>(gp->fn);
  gi.creator_pc = reinterpret_cast<std::uintptr_t>(gp->creator_pc);
  gi.is_main = gp->is_main;
  auto* start = static_cast<char*>(gp->closure);
  char* end = start ? start + gp->closure_size : nullptr;
  if (!gp->is_main && start && start + sizeof(std::uintptr_t) <= end) {
    std::memcpy(&gi.w_first, start, sizeof gi.w_first);
    std::memcpy(&gi.w_last, end - sizeof gi.w_last, sizeof gi.w_last);
  }
  emit(t, trace_ev::go_create, gp->goid, gp->parent_goid, &gi);
}

void trace_start() {
  const char* path = std::getenv("URGE_TRACE");
  if (!path || !*path || g_tracer) return;
  // Open now, so that a bad path is reported at once, not after the run.
  std::FILE* f = std::fopen(path, "wb");
  if (!f) {
    std::fprintf(stderr, "urge: URGE_TRACE=%s: %s; not tracing\n", path, std::strerror(errno));
    return;
  }
  auto* t = new tracer;
  t->file = f;
  t->path = path;
  t->gomaxprocs = sched->gomaxprocs;
  t->per_p = std::make_unique<buffer[]>(static_cast<std::size_t>(t->gomaxprocs));
  timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  t->wall_ns = std::int64_t{wall.tv_sec} * 1'000'000'000 + wall.tv_nsec;
  g_use_counter = counter_is_usable();
  if (g_use_counter) t->start_pair = read_pair();
  t->start_ns = g_use_counter ? t->start_pair.ns : platform::nanotime();
  g_tracer = t;
  // Goroutines that exist already (main, created just before) are recorded
  // as created now, as Go's tracer does when it starts.
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    gstatus st = gp->status.load(std::memory_order_acquire);
    if (st != gstatus::dead && st != gstatus::idle) trace_go_create(gp);
  }
  trace_on = true;
}

void trace_stop() {
  tracer* t = g_tracer;
  if (!t) return;
  trace_on = false;
  g_tracer = nullptr;
  std::int64_t end_ns = platform::nanotime();
  // Counter values to nanoseconds, on the line through the start and stop
  // pairs (monotonic, so the order by time is kept).
  double ns_per_tick = 1.0;
  clock_pair end_pair;
  if (g_use_counter) {
    end_pair = read_pair();
    end_ns = end_pair.ns;
    std::int64_t ticks = end_pair.counter - t->start_pair.counter;
    ns_per_tick = ticks > 0 ? static_cast<double>(end_pair.ns - t->start_pair.ns) / ticks : 0.0;
  }
  auto to_ns = [&](std::int64_t counter) {
    if (!g_use_counter) return counter;
    std::int64_t ns = t->start_pair.ns +
                      static_cast<std::int64_t>((counter - t->start_pair.counter) * ns_per_tick);
    return std::clamp(ns, t->start_ns, end_ns);
  };

  // Every chunk, in each buffer's own order, then a stable sort by time: the
  // events of one buffer stay in emission order when timestamps tie.
  std::vector<chunk*> chunks;
  for (chunk* c = t->full; c; c = c->next) chunks.push_back(c);
  for (int i = 0; i < t->gomaxprocs; ++i) {
    if (chunk* c = t->per_p[static_cast<std::size_t>(i)].cur) chunks.push_back(c);
  }
  if (t->global.cur) chunks.push_back(t->global.cur);
  std::sort(chunks.begin(), chunks.end(), [](const chunk* x, const chunk* y) {
    return x->owner != y->owner ? x->owner < y->owner : x->seq < y->seq;
  });
  std::vector<record> events;
  std::size_t total = 0;
  for (chunk* c : chunks) total += c->n;
  events.reserve(total);
  for (chunk* c : chunks) events.insert(events.end(), c->r, c->r + c->n);
  for (record& r : events) r.ts = to_ns(r.ts);
  for (chunk* c : chunks) delete c;
  std::stable_sort(events.begin(), events.end(),
                   [](const record& x, const record& y) { return x.ts < y.ts; });

  std::vector<goinfo> gos;
  for (int i = 0; i < t->gomaxprocs; ++i) {
    auto& v = t->per_p[static_cast<std::size_t>(i)].gos;
    gos.insert(gos.end(), v.begin(), v.end());
  }
  gos.insert(gos.end(), t->global.gos.begin(), t->global.gos.end());
  std::sort(gos.begin(), gos.end(),
            [](const goinfo& x, const goinfo& y) { return x.goid < y.goid; });

  std::string table;
  namer names;
  for (const goinfo& gi : gos) {
    std::string name = names.entry_name(gi);
    std::string creator = friendly_function_name(names.at(gi.creator_pc, false));
    put_u64(table, gi.goid);
    put_u64(table, gi.parent);
    put_u32(table, static_cast<std::uint32_t>(name.size()));
    put_u32(table, static_cast<std::uint32_t>(creator.size()));
    table += name;
    table += creator;
  }

  std::string header;
  header.append("URGETRC\0", 8);
  put_u32(header, 1);
  put_u32(header, static_cast<std::uint32_t>(t->gomaxprocs));
  put_u64(header, static_cast<std::uint64_t>(t->start_ns));
  put_u64(header, static_cast<std::uint64_t>(end_ns));
  put_u64(header, static_cast<std::uint64_t>(t->wall_ns));
  put_u64(header, events.size());
  put_u64(header, gos.size());
  put_u32(header, static_cast<std::uint32_t>(getpid()));
  put_u32(header, sizeof(record));

  // The wait reasons' names, so that the file explains itself.
  std::string reasons;
  std::uint32_t nreasons = 0;
  for (int i = 0; i < 256; ++i, ++nreasons) {
    const char* r = to_string(static_cast<waitreason>(i));
    if (std::strcmp(r, "?") == 0) break;
    put_u32(reasons, static_cast<std::uint32_t>(std::strlen(r)));
    reasons += r;
  }
  put_u32(table, nreasons);
  table += reasons;

  bool ok = std::fwrite(header.data(), 1, header.size(), t->file) == header.size();
  if (ok && !events.empty()) {
    ok = std::fwrite(events.data(), sizeof(record), events.size(), t->file) == events.size();
  }
  ok = ok && std::fwrite(table.data(), 1, table.size(), t->file) == table.size();
  ok = std::fclose(t->file) == 0 && ok;
  if (!ok) {
    std::fprintf(stderr, "urge: URGE_TRACE=%s: write failed: %s\n", t->path.c_str(),
                 std::strerror(errno));
  }
  if (std::uint64_t lost = t->dropped.load(std::memory_order_relaxed)) {
    std::fprintf(stderr, "urge: URGE_TRACE: %llu events lost (out of memory)\n",
                 static_cast<unsigned long long>(lost));
  }
  delete t;
}

}  // namespace urge::runtime
