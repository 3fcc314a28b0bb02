// Tracebacks in Go's shape, with libunwind.
//
//   goroutine 7 [chan receive, 3 minutes]:
//   worker(urge::chan<int>)
//   	+0x1d
//   created by main_fn in goroutine 1
//
// The current goroutine is unwound from here; unwinding stops at
// urge_context_start, whose CFI marks the bottom of every goroutine stack.

#include <cxxabi.h>
#include <dlfcn.h>
#include <libunwind.h>

#include <sys/uio.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"

namespace urge::runtime {

namespace {

std::int64_t coarse_now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Writes a demangled name for `mangled` (or it unchanged) to out.
void print_demangled(std::FILE* out, const char* mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::fputs(d ? d : mangled, out);
  std::free(d);
}

// Runtime frames a reader does not need in a traceback.
bool starts_with(const char* s, const char* prefix) {
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0;
}

bool is_runtime_frame(const char* name) {
  return starts_with(name, "_ZN4urge7runtime") || starts_with(name, "_ZN4urge6detail") ||
         starts_with(name, "_ZN4urge4arch") || starts_with(name, "urge_") ||
         false;
}

}  // namespace

void print_goroutine_header(std::FILE* out, g* gp, const char* state_override) {
  gstatus st = gp->status.load(std::memory_order_relaxed);
  const char* state = state_override;
  if (!state) {
    state = st == gstatus::waiting ? to_string(gp->reason) : to_string(st);
  }
  std::fprintf(out, "goroutine %llu [%s", static_cast<unsigned long long>(gp->goid), state);
  if (st == gstatus::waiting && gp->waitsince != 0) {
    std::int64_t minutes = (coarse_now() - gp->waitsince) / 60'000'000'000;
    if (minutes >= 1) std::fprintf(out, ", %" PRId64 " minutes", minutes);
  }
  std::fputs("]:\n", out);
}

namespace {

// Prints one frame in Go's shape: the function, then where its code lives.
void print_frame(std::FILE* out, unw_cursor_t* cursor, unw_word_t ip, bool& skipped_runtime) {
  char name[512];
  unw_word_t off = 0;
  if (unw_get_proc_name(cursor, name, sizeof name, &off) == 0) {
    if (is_runtime_frame(name) || std::strstr(name, "__cxa_") || std::strstr(name, "_Unwind")) {
      skipped_runtime = true;
      return;
    }
    print_demangled(out, name);  // C++ names carry their parameter types: no "(...)"
    std::fputc('\n', out);
  } else {
    std::fputs("?()\n", out);
  }
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(ip), &info) && info.dli_fname) {
    std::fprintf(out, "\t%s+0x%" PRIxPTR "\n", info.dli_fname,
                 static_cast<std::uintptr_t>(ip - reinterpret_cast<std::uintptr_t>(info.dli_fbase)));
  } else {
    std::fprintf(out, "\t0x%" PRIxPTR "\n", static_cast<std::uintptr_t>(ip));
  }
}

void print_frames(std::FILE* out, unw_cursor_t* cursor, bool step_first) {
  int shown = 0;
  bool skipped = false;
  if (step_first && unw_step(cursor) <= 0) return;
  do {
    unw_word_t ip = 0;
    unw_get_reg(cursor, UNW_REG_IP, &ip);
    if (ip == 0) break;
    print_frame(out, cursor, ip, skipped);
    if (++shown >= 100) {
      std::fputs("...additional frames elided...\n", out);
      break;
    }
  } while (unw_step(cursor) > 0);
}

// ---- Unwinding a goroutine that is not running -------------------------
// Its registers are in the switch frame at ctx.sp. It may be resumed on
// another M while we look, so we unwind a snapshot of its stack, through a
// libunwind address space whose memory reads come from the snapshot and,
// elsewhere, from process_vm_readv (which fails cleanly on a bad address
// instead of faulting).

struct parked_regs {
  std::uintptr_t ip = 0, sp = 0, fp = 0;
  std::uintptr_t callee[10] = {};  // x86-64: rbx r12 r13 r14 r15; AArch64: x19..x28
};

struct snapshot {
  std::uintptr_t lo = 0, hi = 0;
  std::vector<unsigned char> bytes;
  parked_regs regs;
};

int snap_access_mem(unw_addr_space_t, unw_word_t addr, unw_word_t* val, int write, void* arg) {
  if (write) return -UNW_EINVAL;
  auto* s = static_cast<snapshot*>(arg);
  if (addr >= s->lo && addr + sizeof(unw_word_t) <= s->hi) {
    std::memcpy(val, s->bytes.data() + (addr - s->lo), sizeof(unw_word_t));
    return 0;
  }
  iovec local{val, sizeof(unw_word_t)};
  iovec remote{reinterpret_cast<void*>(addr), sizeof(unw_word_t)};
  if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != sizeof(unw_word_t)) {
    return -UNW_EINVAL;
  }
  return 0;
}

int snap_access_reg(unw_addr_space_t, unw_regnum_t reg, unw_word_t* val, int write, void* arg) {
  if (write) return -UNW_EINVAL;
  const parked_regs& r = static_cast<snapshot*>(arg)->regs;
#if defined(__x86_64__)
  switch (reg) {
    case UNW_X86_64_RIP: *val = r.ip; return 0;
    case UNW_X86_64_RSP: *val = r.sp; return 0;
    case UNW_X86_64_RBP: *val = r.fp; return 0;
    case UNW_X86_64_RBX: *val = r.callee[0]; return 0;
    case UNW_X86_64_R12: *val = r.callee[1]; return 0;
    case UNW_X86_64_R13: *val = r.callee[2]; return 0;
    case UNW_X86_64_R14: *val = r.callee[3]; return 0;
    case UNW_X86_64_R15: *val = r.callee[4]; return 0;
    default: *val = 0; return 0;
  }
#else
  if (reg == UNW_AARCH64_PC) { *val = r.ip; return 0; }
  if (reg == UNW_AARCH64_SP) { *val = r.sp; return 0; }
  if (reg == UNW_AARCH64_X29) { *val = r.fp; return 0; }
  if (reg == UNW_AARCH64_X30) { *val = r.ip; return 0; }
  if (reg >= UNW_AARCH64_X19 && reg <= UNW_AARCH64_X28) {
    *val = r.callee[reg - UNW_AARCH64_X19];
    return 0;
  }
  *val = 0;
  return 0;
#endif
}

int snap_access_fpreg(unw_addr_space_t, unw_regnum_t, unw_fpreg_t*, int, void*) {
  return -UNW_EBADREG;
}

int snap_resume(unw_addr_space_t, unw_cursor_t*, void*) { return -UNW_EINVAL; }

bool read_parked_regs(g* gp, parked_regs& r) {
  auto sp = reinterpret_cast<std::uintptr_t>(gp->ctx.sp);
  auto lo = reinterpret_cast<std::uintptr_t>(gp->stk.lo);
  auto hi = reinterpret_cast<std::uintptr_t>(gp->stk.hi());
  if (sp < lo || sp + sizeof(arch::switch_frame) > hi) return false;
  arch::switch_frame f;
  std::memcpy(&f, gp->ctx.sp, sizeof f);
#if defined(__x86_64__)
  r.ip = f.rip;
  r.sp = sp + sizeof f;
  r.fp = f.rbp;
  r.callee[0] = f.rbx;
  r.callee[1] = f.r12;
  r.callee[2] = f.r13;
  r.callee[3] = f.r14;
  r.callee[4] = f.r15;
#else
  r.ip = f.x30;
  r.sp = sp + sizeof f;
  r.fp = f.x29;
  for (int i = 0; i < 10; ++i) r.callee[i] = f.x[i];
#endif
  return true;
}

}  // namespace

void print_traceback_here(std::FILE* out) {
  unw_context_t uc;
  unw_cursor_t cursor;
  if (unw_getcontext(&uc) != 0 || unw_init_local(&cursor, &uc) != 0) {
    std::fputs("\t(no traceback: libunwind failed)\n", out);
    return;
  }
  print_frames(out, &cursor, true);
}

void print_traceback_parked(std::FILE* out, g* gp) {
  snapshot s;
  if (!read_parked_regs(gp, s.regs)) {
    std::fputs("\t(no saved context)\n", out);
    return;
  }
  s.lo = s.regs.sp - sizeof(arch::switch_frame);
  s.hi = reinterpret_cast<std::uintptr_t>(gp->stk.hi());
  s.bytes.resize(s.hi - s.lo);
  std::memcpy(s.bytes.data(), reinterpret_cast<void*>(s.lo), s.bytes.size());
  // The switch frame may have changed while we copied (the goroutine ran):
  // take the registers from the copy, which is consistent with itself.
  if (!read_parked_regs(gp, s.regs) || s.regs.sp - sizeof(arch::switch_frame) != s.lo) {
    std::fputs("\tgoroutine running on other thread; stack unavailable\n", out);
    return;
  }
  unw_accessors_t acc = *unw_get_accessors(unw_local_addr_space);
  acc.access_mem = snap_access_mem;
  acc.access_reg = snap_access_reg;
  acc.access_fpreg = snap_access_fpreg;
  acc.resume = snap_resume;
  unw_addr_space_t as = unw_create_addr_space(&acc, 0);
  if (!as) return;
  unw_cursor_t cursor;
  int rc = unw_init_remote(&cursor, as, &s);
  if (rc == 0) {
    print_frames(out, &cursor, false);
  } else {
    std::fprintf(out, "\t(no traceback: libunwind error %d)\n", rc);
  }
  unw_destroy_addr_space(as);
}

void print_created_by(std::FILE* out, g* gp) {
  if (!gp->creator_pc) return;
  auto ip = reinterpret_cast<unw_word_t>(gp->creator_pc);
  char name[512];
  unw_word_t off = 0;
  std::fputs("created by ", out);
  unw_accessors_t* acc = unw_get_accessors(unw_local_addr_space);
  if (acc->get_proc_name &&
      acc->get_proc_name(unw_local_addr_space, ip, name, sizeof name, &off, nullptr) == 0) {
    print_demangled(out, name);
  } else {
    std::fputs("?", out);
  }
  std::fprintf(out, " in goroutine %llu\n", static_cast<unsigned long long>(gp->parent_goid));
  Dl_info info;
  if (dladdr(gp->creator_pc, &info) && info.dli_fname) {
    std::fprintf(out, "\t%s+0x%" PRIxPTR "\n", info.dli_fname,
                 static_cast<std::uintptr_t>(ip - reinterpret_cast<std::uintptr_t>(info.dli_fbase)));
  }
}

void dump_all(std::FILE* out) {
  g* self = getg();
  bool first = true;
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    gstatus st = gp->status.load(std::memory_order_acquire);
    if (st == gstatus::dead || st == gstatus::idle) continue;
    if (!first) std::fputc('\n', out);
    first = false;
    print_goroutine_header(out, gp, nullptr);
    if (gp == self) {
      print_traceback_here(out);
    } else if (st == gstatus::running || st == gstatus::syscall) {
      std::fputs("\tgoroutine running on other thread; stack unavailable\n", out);
    } else {
      print_traceback_parked(out, gp);
    }
    print_created_by(out, gp);
  }
  std::fflush(out);
}

const char* to_string(gstatus s) {
  switch (s) {
    case gstatus::idle:
      return "idle";
    case gstatus::runnable:
      return "runnable";
    case gstatus::running:
      return "running";
    case gstatus::syscall:
      return "syscall";
    case gstatus::waiting:
      return "waiting";
    case gstatus::dead:
      return "dead";
    case gstatus::preempted:
      return "preempted";
  }
  return "?";
}

const char* to_string(waitreason w) {
  switch (w) {
    case waitreason::zero:
      return "";
    case waitreason::chan_receive_nil_chan:
      return "chan receive (nil chan)";
    case waitreason::chan_send_nil_chan:
      return "chan send (nil chan)";
    case waitreason::select_no_cases:
      return "select (no cases)";
    case waitreason::chan_receive:
      return "chan receive";
    case waitreason::chan_send:
      return "chan send";
    case waitreason::select:
      return "select";
    case waitreason::sleep:
      return "sleep";
    case waitreason::io_wait:
      return "IO wait";
    case waitreason::sync_mutex_lock:
      return "sync.Mutex.Lock";
    case waitreason::sync_rwmutex_rlock:
      return "sync.RWMutex.RLock";
    case waitreason::sync_rwmutex_lock:
      return "sync.RWMutex.Lock";
    case waitreason::sync_cond_wait:
      return "sync.Cond.Wait";
    case waitreason::semacquire:
      return "semacquire";
    case waitreason::preempted:
      return "preempted";
  }
  return "?";
}

}  // namespace urge::runtime
