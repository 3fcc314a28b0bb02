// Tracebacks in Go's shape, with libunwind.
//
//   goroutine 7 [chan receive, 3 minutes]:
//   worker(urge::chan<int>)
//   	+0x1d
//   created by main_fn in goroutine 1
//
// The current goroutine is unwound from here; unwinding stops at
// urge_context_start, whose CFI marks the bottom of every goroutine stack.
#define UNW_LOCAL_ONLY
#include <cxxabi.h>
#include <dlfcn.h>
#include <libunwind.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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
bool is_runtime_frame(const char* name) {
  return std::strstr(name, "urge::runtime::") != nullptr ||
         std::strstr(name, "urge::detail::run_closure") != nullptr ||
         std::strncmp(name, "_ZN4urge7runtime", 17) == 0 ||
         std::strncmp(name, "_ZN4urge6detail11run_closure", 28) == 0 ||
         std::strcmp(name, "urge_context_start") == 0;
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

void print_traceback_here(std::FILE* out) {
  unw_context_t uc;
  unw_cursor_t cursor;
  if (unw_getcontext(&uc) != 0 || unw_init_local(&cursor, &uc) != 0) {
    std::fputs("\t(no traceback: libunwind failed)\n", out);
    return;
  }
  int shown = 0;
  while (unw_step(&cursor) > 0 && shown < 64) {
    unw_word_t ip = 0, off = 0;
    unw_get_reg(&cursor, UNW_REG_IP, &ip);
    if (ip == 0) break;
    char name[512];
    if (unw_get_proc_name(&cursor, name, sizeof name, &off) == 0) {
      if (is_runtime_frame(name) || std::strstr(name, "__cxa_") || std::strstr(name, "_Unwind")) {
        continue;
      }
      print_demangled(out, name);
      std::fprintf(out, "(...)\n\t+0x%" PRIxPTR "\n", static_cast<std::uintptr_t>(off));
    } else {
      std::fprintf(out, "?()\n\t0x%" PRIxPTR "\n", static_cast<std::uintptr_t>(ip));
    }
    ++shown;
  }
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
