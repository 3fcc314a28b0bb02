// The execution tracer; see runtime/trace.hpp for the events and the file.
//
// Buffers. Each P has a trace_buf (trace.hpp) that only its owner (the M
// holding it: getm()->curp) appends to, inline, with no lock and no atomic.
// Its bytes live in a list of chunks that only grows while tracing: the first
// is 64 KiB (an idle P costs little), the next ones 2 MiB, aligned and
// advised as transparent huge pages where the kernel allows it (one page
// fault and one zeroing per 2 MiB instead of 512 faults: at 3 us a fault in a
// VM, 4 KiB faults cost more than the events written into them). The few
// events emitted by an M without a P (a goroutine leaving a blocking call
// before it has a P again, the network poller's M readying goroutines) go to
// one more trace_buf under a lock. trace_stop runs once every other M has been
// joined, so it reads the buffers with no writer left: it decodes them,
// merges them by time ("Merging"), names the goroutines and writes the file,
// whose records are the fixed 32-byte ones of trace.hpp.
//
// Clock. Reading the clock is most of an event's cost: clock_gettime through
// the vDSO takes ~25 ns in this kind of VM (over 100 ns in some), RDTSCP ~20
// ns, RDTSC ~10 ns. Events therefore record the CPU's counter, which the vDSO
// itself reads underneath: RDTSC on x86-64 when the kernel's clocksource is
// the TSC (then it is invariant and synchronised across CPUs), CNTVCT_EL0 on
// AArch64; both unfenced. trace_stop converts counts to CLOCK_MONOTONIC
// nanoseconds on the line through the (counter, clock) pairs read at start and
// stop. Elsewhere (a kvm-clock or hpet clocksource) events read
// CLOCK_MONOTONIC directly. Go's tracer does the same (cputicks, converted
// with a frequency measured over the trace).
//
// Rejected: RDTSCP, or an ISB before CNTVCT_EL0. They wait for the earlier
// instructions, so an event that follows a wakeup seen in memory is never
// stamped before the wakeup was; without them a counter read may be executed
// a few nanoseconds early, and a go_start on one P can be stamped before the
// go_unblock on another P that made it runnable. That costs twice the clock
// read on every event to settle an order that the events themselves tell (a
// goroutine is unblocked before it starts again), so trace_stop settles it
// instead, as Go's trace parser does.
//
// Merging. Each buffer is in its own order; trace_stop merges them by time,
// except that an event is held back while it cannot have happened yet: a
// go_start or go_end of a goroutine whose latest event is a go_block (it waits
// for its go_unblock, on another P), or a go_unblock of a goroutine that is
// running (it waits for the go_block). The held back event is written with
// the time of the one it waited for (the file stays sorted by time). An
// event is held back for 10 us of the other buffers' time at the most, so
// that one whose wait would never end (events lost to a failed allocation)
// is let through.
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
#include <sys/mman.h>
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
bool trace_on_hidden = false;  // trace_on's twin for the library: see "Tracing off"
trace_buf* trace_bufs = nullptr;
bool trace_use_counter = false;

namespace {

// A (counter, CLOCK_MONOTONIC) pair, read as close together as possible.
struct clock_pair {
  std::int64_t counter = 0, ns = 0;
};

// The file's event record (trace.hpp).
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

// A run of a buffer's bytes, in a mapping of its own.
struct chunk {
  chunk* next = nullptr;
  void* map = nullptr;  // what to munmap
  std::size_t map_len = 0;
  std::uint8_t* data = nullptr;
  std::size_t cap = 0;   // bytes at data
  std::size_t used = 0;  // set when the chunk is left (or at stop)
};

constexpr std::size_t first_chunk_bytes = std::size_t{64} << 10;
constexpr std::size_t huge_chunk_bytes = std::size_t{2} << 20;

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

// A buffer's chunks and naming records; written by the buffer's owner only.
struct buffer_info {
  chunk* head = nullptr;
  chunk* tail = nullptr;
  std::vector<goinfo> gos;
};

struct tracer {
  std::FILE* file = nullptr;
  std::string path;
  std::int64_t start_ns = 0;
  std::int64_t wall_ns = 0;
  std::uint64_t start_ticks = 0;  // what the buffers' deltas start from
  clock_pair start_pair;          // when events read the counter
  int gomaxprocs = 0;
  std::unique_ptr<trace_buf[]> bufs;      // per P, then the global one last
  std::unique_ptr<buffer_info[]> infos;   // likewise
  futex_mutex lock;                       // guards the global buffer
  std::atomic<std::uint64_t> dropped{0};  // events lost to a failed allocation

  trace_buf& global() { return bufs[static_cast<std::size_t>(gomaxprocs)]; }
  buffer_info& global_info() { return infos[static_cast<std::size_t>(gomaxprocs)]; }
};

tracer* g_tracer = nullptr;  // set before trace_on, cleared after it

// ---- Clock ---------------------------------------------------------------------

std::int64_t read_counter() {
#if defined(__x86_64__)
  return static_cast<std::int64_t>(__rdtsc());
#elif defined(__aarch64__)
  std::uint64_t v;
  asm volatile("isb; mrs %0, cntvct_el0" : "=r"(v)::"memory");
  return static_cast<std::int64_t>(v);
#else
  return platform::nanotime();
#endif
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

// ---- Chunks --------------------------------------------------------------------

chunk* new_chunk(std::size_t bytes, bool huge) {
  // Mapped, not allocated: nothing of the heap's is touched on the traced
  // thread, and a huge page needs a 2 MiB-aligned range (mapped twice as
  // large, the ends trimmed).
  std::size_t len = huge ? 2 * bytes : bytes;
  void* map = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return nullptr;
  auto* base = static_cast<std::uint8_t*>(map);
  if (huge) {
    auto addr = reinterpret_cast<std::uintptr_t>(base);
    std::uintptr_t aligned = (addr + bytes - 1) & ~(std::uintptr_t{bytes} - 1);
    std::size_t lead = aligned - addr;
    if (lead) munmap(base, lead);
    std::size_t trail = len - lead - bytes;
    if (trail) munmap(reinterpret_cast<std::uint8_t*>(aligned) + bytes, trail);
    base = reinterpret_cast<std::uint8_t*>(aligned);
    len = bytes;
    map = base;
#ifdef MADV_HUGEPAGE
    madvise(base, len, MADV_HUGEPAGE);  // a hint: without it, 4 KiB pages
#endif
  }
  auto* c = new (std::nothrow) chunk;
  if (!c) {
    munmap(map, len);
    return nullptr;
  }
  c->map = map;
  c->map_len = len;
  c->data = base;
  c->cap = bytes;
  return c;
}

void free_chunks(buffer_info& info) {
  for (chunk* c = info.head; c;) {
    chunk* next = c->next;
    munmap(c->map, c->map_len);
    delete c;
    c = next;
  }
  info.head = info.tail = nullptr;
}

// Closes buf's current chunk and opens another; false if none could be had
// (buf then has no room, and its events are counted as dropped).
bool refill(tracer* t, trace_buf& buf, buffer_info& info) {
  if (info.tail) info.tail->used = static_cast<std::size_t>(buf.pos - info.tail->data);
  buf.pos = buf.limit = nullptr;
  chunk* c = new_chunk(info.head ? huge_chunk_bytes : first_chunk_bytes, info.head != nullptr);
  if (!c) {
    t->dropped.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  (info.tail ? info.tail->next : info.head) = c;
  info.tail = c;
  buf.pos = c->data;
  buf.limit = c->data + c->cap - trace_max_event;
  return true;
}

// Appends one event of mp's (and the naming record of a go_create) to its
// P's buffer, or to the global one.
void emit(tracer* t, m* mp, trace_ev ev, std::uint64_t a, std::uint64_t b, const goinfo* gi) {
  preempt_off_scope no_preempt;  // see trace_emit_m
  p* pp = mp ? mp->curp : nullptr;
  if (pp) {
    auto i = static_cast<std::size_t>(pp->id);
    trace_buf& buf = t->bufs[i];
    if (!trace_encode(buf, mp->id, ev, a, b, false)) {
      if (!refill(t, buf, t->infos[i])) return;
      trace_encode(buf, mp->id, ev, a, b, false);
    }
    if (gi) t->infos[i].gos.push_back(*gi);
    return;
  }
  std::lock_guard lock(t->lock);
  trace_buf& buf = t->global();
  std::int32_t mid = mp ? mp->id : -1;
  if (!trace_encode(buf, mid, ev, a, b, false)) {
    if (!refill(t, buf, t->global_info())) return;
    trace_encode(buf, mid, ev, a, b, false);
  }
  if (gi) t->global_info().gos.push_back(*gi);
}

// ---- Decoding and merging --------------------------------------------------------

struct decoder {
  const std::uint8_t* pos;
  const std::uint8_t* end;
  bool ok = true;

  std::uint64_t uvarint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64 && pos < end; shift += 7) {
      std::uint8_t byte = *pos++;
      v |= std::uint64_t{byte & 0x7fu} << shift;
      if (!(byte & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
};

// Counter ticks to CLOCK_MONOTONIC nanoseconds, on the line through the
// start and stop pairs (monotonic, so the order by time is kept).
struct timebase {
  bool counter = false;  // ticks are the counter's, else nanoseconds already
  clock_pair start;
  double ns_per_tick = 1.0;
  std::int64_t lo = 0, hi = 0;  // the trace's span

  std::int64_t ns(std::uint64_t ticks) const {
    if (!counter) return static_cast<std::int64_t>(ticks);
    std::int64_t d = static_cast<std::int64_t>(ticks - static_cast<std::uint64_t>(start.counter));
    return std::clamp(start.ns + static_cast<std::int64_t>(static_cast<double>(d) * ns_per_tick),
                      lo, hi);
  }
};

// Reads a buffer's events in its order, one at a time (decoded as the merge
// goes: the file's 32-byte records of a long trace would take several times
// the buffers' memory).
struct stream {
  const chunk* c;
  decoder d{nullptr, nullptr};
  std::uint64_t ticks;
  std::int32_t mid = -1;
  int owner;
  const timebase* tb;
  record head{};
  bool has = false;

  stream(const buffer_info& info, std::uint64_t start_ticks, int owner_, const timebase* tb_)
      : c(info.head), ticks(start_ticks), owner(owner_), tb(tb_) {
    if (c) d = {c->data, c->data + c->used};
    next();
  }

  // Decodes the next event into head; has says whether there was one.
  void next() {
    for (;;) {
      while (c && !(d.ok && d.pos < d.end)) {
        c = c->next;
        if (c) d = {c->data, c->data + c->used};
      }
      if (!c) {
        has = false;
        return;
      }
      std::uint8_t tag = *d.pos++;
      if (tag == 0) {
        mid = static_cast<std::int32_t>(static_cast<std::int64_t>(d.uvarint()) - 1);
        continue;
      }
      ticks += d.uvarint();
      head.ts = tb->ns(ticks);
      head.a = d.uvarint();
      head.b = d.uvarint();
      head.p = static_cast<std::int16_t>(owner);
      head.ev = tag;
      head.reserved = 0;
      head.m = mid;
      if (d.ok) {
        has = true;
        return;
      }
    }
  }
};

// The goroutine states the merge needs (see "Merging").
enum class gstate : std::uint8_t { unknown, running, blocked, other };

struct merger {
  std::vector<gstate> states;  // by goid; goids are dense, from 1

  gstate& state(std::uint64_t goid) {
    if (goid >= states.size()) {
      if (goid > (std::uint64_t{1} << 32)) return scratch;  // not worth a table
      states.resize(std::max<std::size_t>(static_cast<std::size_t>(goid) + 1, states.size() * 2),
                    gstate::unknown);
    }
    return states[static_cast<std::size_t>(goid)];
  }
  gstate scratch = gstate::unknown;

  bool can_happen(const record& r) {
    auto ev = static_cast<trace_ev>(r.ev);
    if (ev == trace_ev::go_start || ev == trace_ev::go_end) return state(r.a) != gstate::blocked;
    if (ev == trace_ev::go_unblock) return state(r.a) != gstate::running;
    return true;
  }

  void happened(const record& r) {
    switch (static_cast<trace_ev>(r.ev)) {
      case trace_ev::go_start:
      case trace_ev::syscall_exit:
        state(r.a) = gstate::running;
        break;
      case trace_ev::go_block:
        state(r.a) = gstate::blocked;
        break;
      case trace_ev::go_create:
      case trace_ev::go_unblock:
      case trace_ev::go_preempt:
      case trace_ev::go_end:
      case trace_ev::syscall_enter:
        state(r.a) = gstate::other;
        break;
      case trace_ev::steal:
        break;
    }
  }
};

// How far past a held back event the merge looks for the event it waits for:
// far more than a counter read can be early, far less than a real wait.
constexpr std::int64_t hold_limit_ns = 10'000;

// Merges the buffers' events (each sorted by time) into one sequence sorted
// by time that respects the goroutines' transitions; calls out(record) for each.
template <class Out>
void merge(std::vector<stream>& streams, Out out) {
  merger mg;
  std::int64_t last_ts = INT64_MIN;
  for (;;) {
    // The earliest head that can happen, else the earliest head.
    stream* best = nullptr;
    stream* earliest = nullptr;
    for (stream& st : streams) {
      if (!st.has) continue;
      if (!earliest || st.head.ts < earliest->head.ts) earliest = &st;
      if ((!best || st.head.ts < best->head.ts) && mg.can_happen(st.head)) best = &st;
    }
    if (!earliest) return;
    if (!best || best->head.ts - earliest->head.ts > hold_limit_ns) best = earliest;
    record r = best->head;
    best->next();
    r.ts = std::max(r.ts, last_ts);
    last_ts = r.ts;
    mg.happened(r);
    out(r);
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

void trace_emit_global(m* mp, trace_ev ev, std::uint64_t a, std::uint64_t b) {
  if (tracer* t = g_tracer) emit(t, mp, ev, a, b, nullptr);
}

// trace_emit_m found the P's buffer full; preemption is off.
void trace_emit_refill(m* mp, trace_ev ev, std::uint64_t a, std::uint64_t b, bool share) {
  tracer* t = g_tracer;
  if (!t) return;
  auto i = static_cast<std::size_t>(mp->curp->id);
  if (refill(t, t->bufs[i], t->infos[i])) trace_encode(t->bufs[i], mp->id, ev, a, b, share);
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
  emit(t, getm(), trace_ev::go_create, gp->goid, gp->parent_goid, &gi);
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
  auto nbufs = static_cast<std::size_t>(t->gomaxprocs) + 1;  // the global one last
  t->bufs = std::make_unique<trace_buf[]>(nbufs);
  t->infos = std::make_unique<buffer_info[]>(nbufs);
  timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  t->wall_ns = std::int64_t{wall.tv_sec} * 1'000'000'000 + wall.tv_nsec;
  trace_use_counter = counter_is_usable();
  if (trace_use_counter) t->start_pair = read_pair();
  t->start_ns = trace_use_counter ? t->start_pair.ns : platform::nanotime();
  t->start_ticks =
      static_cast<std::uint64_t>(trace_use_counter ? t->start_pair.counter : t->start_ns);
  for (std::size_t i = 0; i < nbufs; ++i) t->bufs[i].last = t->start_ticks;
  trace_bufs = t->bufs.get();
  g_tracer = t;
  // Goroutines that exist already (main, created just before) are recorded
  // as created now, as Go's tracer does when it starts.
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    gstatus st = gp->status.load(std::memory_order_acquire);
    if (st != gstatus::dead && st != gstatus::idle) trace_go_create(gp);
  }
  trace_on = true;
  trace_on_hidden = true;
}

void trace_stop() {
  tracer* t = g_tracer;
  if (!t) return;
  trace_on = false;
  trace_on_hidden = false;
  g_tracer = nullptr;
  trace_bufs = nullptr;
  std::int64_t end_ns = platform::nanotime();
  timebase tb;
  tb.counter = trace_use_counter;
  if (trace_use_counter) {
    clock_pair end_pair = read_pair();
    end_ns = end_pair.ns;
    std::int64_t ticks = end_pair.counter - t->start_pair.counter;
    tb.start = t->start_pair;
    tb.ns_per_tick =
        ticks > 0 ? static_cast<double>(end_pair.ns - t->start_pair.ns) / static_cast<double>(ticks)
                  : 0.0;
  }
  tb.lo = t->start_ns;
  tb.hi = end_ns;

  // Each buffer in its own order (the global one's owner is -1); counted
  // first, for the header.
  auto nbufs = static_cast<std::size_t>(t->gomaxprocs) + 1;
  std::uint64_t nevents = 0;
  for (std::size_t i = 0; i < nbufs; ++i) {
    buffer_info& info = t->infos[i];
    if (info.tail) info.tail->used = static_cast<std::size_t>(t->bufs[i].pos - info.tail->data);
    for (stream st(info, t->start_ticks, 0, &tb); st.has; st.next()) ++nevents;
  }
  std::vector<stream> streams;
  streams.reserve(nbufs);
  for (std::size_t i = 0; i < nbufs; ++i) {
    streams.emplace_back(t->infos[i], t->start_ticks, i == nbufs - 1 ? -1 : static_cast<int>(i),
                         &tb);
  }

  std::vector<goinfo> gos;
  for (std::size_t i = 0; i < nbufs; ++i) {
    auto& v = t->infos[i].gos;
    gos.insert(gos.end(), v.begin(), v.end());
  }
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
  put_u64(header, nevents);
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
  // The records, merged into a block at a time.
  std::vector<record> block;
  block.reserve(4096);
  auto flush = [&] {
    if (ok && !block.empty()) {
      ok = std::fwrite(block.data(), sizeof(record), block.size(), t->file) == block.size();
    }
    block.clear();
  };
  merge(streams, [&](const record& r) {
    block.push_back(r);
    if (block.size() == block.capacity()) flush();
  });
  flush();
  for (std::size_t i = 0; i < nbufs; ++i) free_chunks(t->infos[i]);
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
