// Tracebacks in Go's shape, with libunwind.
//
//   goroutine 7 [chan receive, 3 minutes]:
//   worker(urge::chan<int>)
//   	/src/app/worker.cpp:42
//   created by main_fn() in goroutine 1
//   	/src/app/main.cpp:17
//
// The current goroutine is unwound from here; unwinding stops at
// urge_context_start, whose CFI marks the bottom of every goroutine stack.
// File and line come from the DWARF line tables through libdw's dwfl when the
// build has libdw (URGE_HAVE_LIBDW) and the module has debug info; otherwise
// a frame shows its module and offset ("\t/usr/lib/libfoo.so+0x1d2c"), which
// addr2line -e turns into a line later.

#include <cxxabi.h>
#include <dlfcn.h>
#include <libunwind.h>
#if URGE_HAVE_LIBDW
#include <dwarf.h>
#include <elfutils/libdwfl.h>
#endif

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
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

// The demangled `mangled`, or it unchanged.
std::string demangle(const char* mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = d ? d : mangled;
  std::free(d);
  return s;
}

// Runtime frames a reader does not need in a traceback.
bool starts_with(const char* s, const char* prefix) {
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0;
}

// The first template argument at s[pos...], up to its ',' or the list's '>'.
std::string first_template_arg(const std::string& s, std::size_t pos) {
  int depth = 0;
  for (std::size_t i = pos; i < s.size(); ++i) {
    char c = s[i];
    if (c == '<' || c == '(' || c == '{' || c == '[') {
      ++depth;
    } else if (c == '>' || c == ')' || c == '}' || c == ']') {
      if (depth == 0) return s.substr(pos, i - pos);
      --depth;
    } else if (c == ',' && depth == 0) {
      return s.substr(pos, i - pos);
    }
  }
  return {};
}

// Frames of the glue between the runtime and a goroutine's callable, shown
// under the callable's name: run_closure<tuple<F, A...>> is where F's body
// is (often inlined), urge::run<F>'s lambdas are the main goroutine's.
bool is_entry_glue(const char* mangled) {
  return starts_with(mangled, "_ZN4urge6detail11run_closure") ||
         starts_with(mangled, "_ZZN4urge3run");
}

bool is_runtime_frame(const char* name) {
  return starts_with(name, "_ZN4urge7runtime") || starts_with(name, "_ZN4urge6detail") ||
         starts_with(name, "_ZN4urge4arch") || starts_with(name, "urge_") || false;
}

// The C++ exception machinery: __cxa_throw and friends, the unwinder, the
// personality routine, std::terminate.
bool is_exception_frame(const char* name) {
  return std::strstr(name, "__cxa_") || std::strstr(name, "_Unwind") ||
         starts_with(name, "_ZN10__cxxabiv1") || starts_with(name, "__gxx_personality") ||
         starts_with(name, "_ZSt9terminate") || starts_with(name, "_ZSt17rethrow_exception");
}

// Where an exception starts its way up: a traceback "from the throw" begins
// with the caller of the last of these.
bool is_raise_frame(const char* name) {
  return std::strcmp(name, "__cxa_throw") == 0 || std::strcmp(name, "__cxa_rethrow") == 0 ||
         starts_with(name, "_ZSt17rethrow_exception") ||
         std::strcmp(name, "_Unwind_RaiseException") == 0 ||
         std::strcmp(name, "_Unwind_Resume") == 0 ||
         std::strcmp(name, "_Unwind_Resume_or_Rethrow") == 0;
}

// "/a/build/../src/x.cpp" -> "/a/src/x.cpp": DWARF joins the compilation
// directory and a relative source path.
std::string clean_path(const char* path) {
  std::vector<std::string> parts;
  std::string cur;
  const bool absolute = path[0] == '/';
  auto flush = [&] {
    if (cur == "..") {
      if (!parts.empty() && parts.back() != "..") {
        parts.pop_back();
      } else if (!absolute) {
        parts.push_back(cur);
      }
    } else if (!cur.empty() && cur != ".") {
      parts.push_back(cur);
    }
    cur.clear();
  };
  for (const char* c = path; *c; ++c) {
    if (*c == '/') {
      flush();
    } else {
      cur += *c;
    }
  }
  flush();
  std::string out = absolute ? "/" : "";
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i) out += '/';
    out += parts[i];
  }
  return out;
}

// Where a pc is, innermost first: one entry per function inlined there (its
// name, mangled where DWARF gives a linkage name, and the line executing in
// it), then the real function's line (name empty: the symbol table names it).
struct site {
  std::string inlined;
  std::string where;  // "file:line"
};

// Source lines for addresses of this process, for one traceback.
class line_finder {
 public:
  line_finder() = default;
  line_finder(const line_finder&) = delete;
  line_finder& operator=(const line_finder&) = delete;
  ~line_finder() {
#if URGE_HAVE_LIBDW
    if (dwfl_) dwfl_end(dwfl_);
#endif
  }

  // The sites of the code at pc, which is a return address unless `exact`
  // (then pc itself is looked up, not the call before it). Empty: no line
  // information.
  std::vector<site> locate(std::uintptr_t pc, bool exact) {
    std::vector<site> out;
#if URGE_HAVE_LIBDW
    if (!tried_) {
      tried_ = true;
      // Created lazily, once per traceback: it reads /proc/self/maps, and the
      // modules' debug info is loaded on first use.
      static const Dwfl_Callbacks callbacks = {dwfl_linux_proc_find_elf,
                                               dwfl_standard_find_debuginfo, nullptr, nullptr};
      dwfl_ = dwfl_begin(&callbacks);
      if (dwfl_ && (dwfl_linux_proc_report(dwfl_, getpid()) != 0 ||
                    dwfl_report_end(dwfl_, nullptr, nullptr) != 0)) {
        dwfl_end(dwfl_);
        dwfl_ = nullptr;
      }
    }
    if (!dwfl_) return out;
    // A return address may already belong to the next line: look up the call.
    Dwarf_Addr addr = exact ? pc : pc - 1;
    Dwfl_Module* mod = dwfl_addrmodule(dwfl_, addr);
    if (!mod) return out;
    Dwfl_Line* line = dwfl_module_getsrc(mod, addr);
    if (!line) return out;
    int lineno = 0;
    const char* file = dwfl_lineinfo(line, nullptr, &lineno, nullptr, nullptr, nullptr);
    if (!file || lineno <= 0) return out;
    // Relative names (meson compiles "../src/x.cpp") are relative to the
    // compilation directory.
    Dwarf_Addr bias = 0;
    Dwarf_Die* cu = dwfl_module_addrdie(mod, addr, &bias);
    Dwarf_Attribute comp_dir_attr;
    const char* comp_dir =
        cu ? dwarf_formstring(dwarf_attr(cu, DW_AT_comp_dir, &comp_dir_attr)) : nullptr;
    if (!comp_dir) comp_dir = dwfl_line_comp_dir(line);
    auto format = [comp_dir](const char* f, long l) {
      std::string path = f[0] != '/' && comp_dir ? std::string(comp_dir) + "/" + f : f;
      return clean_path(path.c_str()) + ":" + std::to_string(l);
    };
    std::string where = format(file, static_cast<long>(lineno));
    // The inlined calls around addr: each DW_TAG_inlined_subroutine scope
    // runs `where`, and was called from its DW_AT_call_file:call_line.
    Dwarf_Files* files = nullptr;
    std::size_t nfiles = 0;
    if (cu && dwarf_getsrcfiles(cu, &files, &nfiles) != 0) files = nullptr;
    Dwarf_Die* scopes = nullptr;
    int n = cu ? dwarf_getscopes(cu, addr - bias, &scopes) : 0;
    for (int i = 0; i < n; ++i) {
      Dwarf_Die* d = &scopes[i];
      int tag = dwarf_tag(d);
      if (tag == DW_TAG_subprogram) break;
      if (tag != DW_TAG_inlined_subroutine) continue;
      out.push_back({inlined_name(d), where});
      Dwarf_Attribute a;
      Dwarf_Word call_file = 0, call_line = 0;
      const char* caller_file = nullptr;
      if (files && dwarf_formudata(dwarf_attr(d, DW_AT_call_file, &a), &call_file) == 0 &&
          dwarf_formudata(dwarf_attr(d, DW_AT_call_line, &a), &call_line) == 0 &&
          call_file < nfiles) {
        caller_file = dwarf_filesrc(files, call_file, nullptr, nullptr);
      }
      where = caller_file ? format(caller_file, static_cast<long>(call_line)) : std::string("?");
    }
    std::free(scopes);
    out.push_back({std::string(), where});
#else
    (void)pc;
    (void)exact;
#endif
    return out;
  }

 private:
#if URGE_HAVE_LIBDW
  static std::string inlined_name(Dwarf_Die* d) {
    Dwarf_Attribute a;
    const char* name = dwarf_formstring(dwarf_attr_integrate(d, DW_AT_linkage_name, &a));
    if (!name) name = dwarf_formstring(dwarf_attr_integrate(d, DW_AT_MIPS_linkage_name, &a));
    if (!name) name = dwarf_diename(d);
    return name ? name : "?";
  }
  Dwfl* dwfl_ = nullptr;
  bool tried_ = false;
#endif
};

// dump_all shares one line_finder among all the goroutines it prints: the
// debug info is then read once per dump, not once per goroutine.
thread_local line_finder* t_shared_lines = nullptr;

// The where-line of a frame without line information: module+offset (for
// addr2line), else the bare address.
void print_fallback_location(std::FILE* out, std::uintptr_t pc) {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(pc), &info) && info.dli_fname) {
    std::fprintf(out, "\t%s+0x%" PRIxPTR "\n", info.dli_fname,
                 pc - reinterpret_cast<std::uintptr_t>(info.dli_fbase));
  } else {
    std::fprintf(out, "\t0x%" PRIxPTR "\n", pc);
  }
}

// Inlined functions not worth a line of their own: the plumbing of the
// standard library and of the runtime (std::invoke, std::apply, ...).
bool is_hidden_inline(const std::string& name) {
  auto has = [&](const char* prefix) { return name.compare(0, std::strlen(prefix), prefix) == 0; };
  return has("std::") || has("__gnu_cxx::") || has("__cxx") || has("urge::runtime::") ||
         has("urge::detail::") || has("urge::arch::");
}

}  // namespace

// The local address space's accessors are filled in by libunwind's lazy
// initialisation, which the first local unwind does: it must have happened
// before we use or copy them (in a process that never unwound locally they
// are null). Also for trace.cpp's symbol lookups.
void unwinder_ready() {
  static std::once_flag ready;
  std::call_once(ready, [] {
    unw_context_t uc;
    unw_cursor_t c;
    if (unw_getcontext(&uc) == 0) unw_init_local(&c, &uc);
  });
}

// "void urge::detail::run_closure<std::tuple<worker(int)::{lambda()#1}, int> >(void*)"
// -> "worker(int)::{lambda()#1}"; "urge::run<main::{lambda()#1}>(...)::{lambda(void*)#2}::
// _FUN(void*)" -> "main::{lambda()#1}"; anything else unchanged.
std::string friendly_function_name(const std::string& demangled) {
  static const char closure_key[] = "urge::detail::run_closure<std::tuple<";
  static const char run_key[] = "urge::run<";
  std::size_t pos = demangled.find(closure_key);
  if (pos != std::string::npos) {
    std::string f = first_template_arg(demangled, pos + sizeof closure_key - 1);
    if (!f.empty()) return f;
  }
  if (demangled.compare(0, sizeof run_key - 1, run_key) == 0) {
    std::string f = first_template_arg(demangled, sizeof run_key - 1);
    if (!f.empty()) return f;
  }
  return demangled;
}

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

struct frame {
  std::uintptr_t ip = 0;
  bool named = false;
  char name[512];  // mangled
};

constexpr int max_frames = 100;

// Unwinds from the cursor's frame (or its caller: step_first) to the bottom
// of the stack, at most max_frames + 1 frames (the extra one says "more").
void collect_frames(unw_cursor_t* cursor, bool step_first, std::vector<frame>& frames) {
  if (step_first && unw_step(cursor) <= 0) return;
  do {
    unw_word_t ip = 0;
    unw_get_reg(cursor, UNW_REG_IP, &ip);
    if (ip == 0) break;
    frame& f = frames.emplace_back();
    f.ip = static_cast<std::uintptr_t>(ip);
    unw_word_t off = 0;
    f.named = unw_get_proc_name(cursor, f.name, sizeof f.name, &off) == 0;
    if (static_cast<int>(frames.size()) > max_frames) break;
  } while (unw_step(cursor) > 0);
}

// Prints frames in Go's shape, the function and then where its code lives,
// leaving out the runtime's own frames and the exception machinery's.
// from_throw: start below the frame that raised the exception in flight.
void print_frames(std::FILE* out, const std::vector<frame>& frames, bool from_throw) {
  std::size_t first = 0;
  if (from_throw) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      if (frames[i].named && is_raise_frame(frames[i].name)) first = i + 1;
    }
  }
  line_finder own;
  line_finder& lines = t_shared_lines ? *t_shared_lines : own;
  std::string last;  // the last function printed
  for (std::size_t i = first; i < frames.size(); ++i) {
    if (static_cast<int>(i) >= max_frames) {
      std::fputs("...additional frames elided...\n", out);
      break;
    }
    const frame& f = frames[i];
    std::string name = "?()";
    bool glue = false;
    if (f.named) {
      glue = is_entry_glue(f.name);
      if (!glue && (is_runtime_frame(f.name) || is_exception_frame(f.name))) continue;
      // C++ names carry their parameter types: no "(...)" as Go prints.
      name = glue ? friendly_function_name(demangle(f.name)) : demangle(f.name);
    }
    std::vector<site> sites = lines.locate(f.ip, false);
    // Functions inlined here, innermost first, each as a frame of its own.
    for (std::size_t k = 0; k + 1 < sites.size(); ++k) {
      std::string inl = demangle(sites[k].inlined.c_str());
      if (is_hidden_inline(inl)) continue;
      // An inlined lambda body has no linkage name in DWARF, only
      // "operator()"; in the glue it is the callable, which has a name.
      if (glue && inl.compare(0, 10, "operator()") == 0) inl = name;
      std::fprintf(out, "%s\n\t%s\n", inl.c_str(), sites[k].where.c_str());
      last = inl;
    }
    // The glue between the runtime and the callable shows as the callable,
    // unless its own frame (a lambda's operator(), not inlined, or the
    // function that a function pointer names) is already printed.
    if (glue &&
        (last.compare(0, name.size(), name) == 0 || name.find("(*)") != std::string::npos)) {
      continue;
    }
    std::fprintf(out, "%s\n", name.c_str());
    last = name;
    if (sites.empty()) {
      print_fallback_location(out, f.ip);
    } else {
      std::fprintf(out, "\t%s\n", sites.back().where.c_str());
    }
  }
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

// Copies from another goroutine's stack. Under ASan that stack carries the
// poisoned redzones of its frames, which memcpy (intercepted) would report:
// read it uninstrumented, through volatile so that the loop does not become
// a memcpy call again.
__attribute__((no_sanitize_address)) void copy_stack(void* dst, const void* src, std::size_t n) {
  auto d = reinterpret_cast<std::uintptr_t>(dst);
  auto s = reinterpret_cast<std::uintptr_t>(src);
  std::size_t i = 0;
  if (((d | s | n) & 7) == 0) {
    for (; i < n; i += 8) {
      *reinterpret_cast<std::uint64_t*>(d + i) =
          *reinterpret_cast<const volatile std::uint64_t*>(s + i);
    }
  }
  for (; i < n; ++i) {
    *reinterpret_cast<unsigned char*>(d + i) =
        *reinterpret_cast<const volatile unsigned char*>(s + i);
  }
}

struct snapshot {
  std::uintptr_t lo = 0, hi = 0;
  std::vector<unsigned char> bytes;
  parked_regs regs;
  int pipe_fds[2] = {-1, -1};  // for safe_read without process_vm_readv
  ~snapshot() {
    if (pipe_fds[0] >= 0) close(pipe_fds[0]);
    if (pipe_fds[1] >= 0) close(pipe_fds[1]);
  }
};

// process_vm_readv is missing under qemu-user (ENOSYS) and may be denied by
// seccomp (EPERM); then a write of the word into a pipe, which fails with
// EFAULT on a bad address instead of faulting, reads it as safely.
std::atomic<bool> g_vm_readv_broken{false};

bool safe_read(snapshot& s, std::uintptr_t addr, unw_word_t* val) {
  if (!g_vm_readv_broken.load(std::memory_order_relaxed)) {
    iovec local{val, sizeof(unw_word_t)};
    iovec remote{reinterpret_cast<void*>(addr), sizeof(unw_word_t)};
    ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    if (n == sizeof(unw_word_t)) return true;
    if (n >= 0 || (errno != ENOSYS && errno != EPERM)) return false;  // a bad address
    g_vm_readv_broken.store(true, std::memory_order_relaxed);
  }
  if (s.pipe_fds[0] < 0 && pipe2(s.pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  if (write(s.pipe_fds[1], reinterpret_cast<void*>(addr), sizeof(unw_word_t)) !=
      static_cast<ssize_t>(sizeof(unw_word_t))) {
    return false;
  }
  return read(s.pipe_fds[0], val, sizeof(unw_word_t)) == static_cast<ssize_t>(sizeof(unw_word_t));
}

int snap_access_mem(unw_addr_space_t, unw_word_t addr, unw_word_t* val, int write, void* arg) {
  if (write) return -UNW_EINVAL;
  auto* s = static_cast<snapshot*>(arg);
  if (addr >= s->lo && addr + sizeof(unw_word_t) <= s->hi) {
    std::memcpy(val, s->bytes.data() + (addr - s->lo), sizeof(unw_word_t));
    return 0;
  }
  return safe_read(*s, static_cast<std::uintptr_t>(addr), val) ? 0 : -UNW_EINVAL;
}

int snap_access_reg(unw_addr_space_t, unw_regnum_t reg, unw_word_t* val, int write, void* arg) {
  if (write) return -UNW_EINVAL;
  const parked_regs& r = static_cast<snapshot*>(arg)->regs;
#if defined(__x86_64__)
  switch (reg) {
    case UNW_X86_64_RIP:
      *val = r.ip;
      return 0;
    case UNW_X86_64_RSP:
      *val = r.sp;
      return 0;
    case UNW_X86_64_RBP:
      *val = r.fp;
      return 0;
    case UNW_X86_64_RBX:
      *val = r.callee[0];
      return 0;
    case UNW_X86_64_R12:
      *val = r.callee[1];
      return 0;
    case UNW_X86_64_R13:
      *val = r.callee[2];
      return 0;
    case UNW_X86_64_R14:
      *val = r.callee[3];
      return 0;
    case UNW_X86_64_R15:
      *val = r.callee[4];
      return 0;
    default:
      *val = 0;
      return 0;
  }
#else
  if (reg == UNW_AARCH64_PC) {
    *val = r.ip;
    return 0;
  }
  if (reg == UNW_AARCH64_SP) {
    *val = r.sp;
    return 0;
  }
  if (reg == UNW_AARCH64_X29) {
    *val = r.fp;
    return 0;
  }
  if (reg == UNW_AARCH64_X30) {
    *val = r.ip;
    return 0;
  }
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

int snap_resume(unw_addr_space_t, unw_cursor_t*, void*) {
  return -UNW_EINVAL;
}

bool read_parked_regs(g* gp, parked_regs& r) {
  auto sp = reinterpret_cast<std::uintptr_t>(gp->ctx.sp);
  auto lo = reinterpret_cast<std::uintptr_t>(gp->stk.lo);
  auto hi = reinterpret_cast<std::uintptr_t>(gp->stk.hi());
  if (sp < lo || sp + sizeof(arch::switch_frame) > hi) return false;
  arch::switch_frame f;
  copy_stack(&f, gp->ctx.sp, sizeof f);
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

namespace {
void ensure_local_accessors() {
  unwinder_ready();
}

// Symbolizing needs more stack than a goroutine has: libdw's DWARF readers
// and libunwind's cursors want tens of KiB, and a goroutine's default stack
// is 64 KiB. So on a goroutine the work runs on a helper thread, with an
// ordinary thread stack, while the goroutine's M waits for it (Go switches to
// the system stack for the same reason). Elsewhere (sysmon's SIGQUIT dump,
// or already on the helper) it runs in place.
template <class F>
void on_system_stack(F&& f) {
  if (!getg()) {
    f();
    return;
  }
  try {
    std::thread t([&f] { f(); });
    t.join();
  } catch (const std::system_error&) {
    f();  // no thread to be had: try on the goroutine's stack
  }
}

// Unwinds a context captured by unw_getcontext in a frame that is still live
// (its thread waits for us), skipping that frame.
void print_local_traceback(std::FILE* out, unw_context_t* uc, bool from_throw) {
  unw_cursor_t cursor;
  if (!uc || unw_init_local(&cursor, uc) != 0) {
    std::fputs("\t(no traceback: libunwind failed)\n", out);
    return;
  }
  std::vector<frame> frames;
  collect_frames(&cursor, true, frames);
  print_frames(out, frames, from_throw);
}

void print_traceback_parked_impl(std::FILE* out, g* gp);
void print_created_by_impl(std::FILE* out, g* gp);
}  // namespace

// noinline: the context is captured in this frame, which the traceback skips.
__attribute__((noinline)) void print_traceback_here(std::FILE* out) {
  unw_context_t uc;
  bool ok = unw_getcontext(&uc) == 0;
  on_system_stack([&] { print_local_traceback(out, ok ? &uc : nullptr, false); });
}

// For a panic, from std::terminate: the frames of the exception machinery
// above the throw are not the reader's concern.
__attribute__((noinline)) void print_traceback_from_throw(std::FILE* out) {
  unw_context_t uc;
  bool ok = unw_getcontext(&uc) == 0;
  on_system_stack([&] { print_local_traceback(out, ok ? &uc : nullptr, true); });
}

void print_traceback_parked(std::FILE* out, g* gp) {
  on_system_stack([&] { print_traceback_parked_impl(out, gp); });
}

void print_created_by(std::FILE* out, g* gp) {
  on_system_stack([&] { print_created_by_impl(out, gp); });
}

namespace {
void print_traceback_parked_impl(std::FILE* out, g* gp) {
  snapshot s;
  if (!gp->ctx.sp) {
    // Its stack is bound at its first run ("Stacks of new goroutines" in proc.cpp).
    std::fputs("\t(not started yet)\n", out);
    return;
  }
  if (!read_parked_regs(gp, s.regs)) {
    std::fputs("\t(no saved context)\n", out);
    return;
  }
  s.lo = s.regs.sp - sizeof(arch::switch_frame);
  s.hi = reinterpret_cast<std::uintptr_t>(gp->stk.hi());
  s.bytes.resize(s.hi - s.lo);
  copy_stack(s.bytes.data(), reinterpret_cast<const void*>(s.lo), s.bytes.size());
  // The switch frame may have changed while we copied (the goroutine ran):
  // take the registers from the copy, which is consistent with itself.
  if (!read_parked_regs(gp, s.regs) || s.regs.sp - sizeof(arch::switch_frame) != s.lo) {
    std::fputs("\tgoroutine running on other thread; stack unavailable\n", out);
    return;
  }
  ensure_local_accessors();
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
    std::vector<frame> frames;
    collect_frames(&cursor, false, frames);
    print_frames(out, frames, false);
  } else {
    std::fprintf(out, "\t(no traceback: libunwind error %d)\n", rc);
  }
  unw_destroy_addr_space(as);
}

void print_created_by_impl(std::FILE* out, g* gp) {
  if (!gp->creator_pc) return;
  auto ip = reinterpret_cast<unw_word_t>(gp->creator_pc);
  char name[512];
  unw_word_t off = 0;
  std::fputs("created by ", out);
  ensure_local_accessors();
  unw_accessors_t* acc = unw_get_accessors(unw_local_addr_space);
  if (acc->get_proc_name &&
      acc->get_proc_name(unw_local_addr_space, ip, name, sizeof name, &off, nullptr) == 0) {
    std::fputs(friendly_function_name(demangle(name)).c_str(), out);
  } else {
    std::fputs("?", out);
  }
  std::fprintf(out, " in goroutine %llu\n", static_cast<unsigned long long>(gp->parent_goid));
  // Where the `go` statement is: the innermost line, inlined or not.
  line_finder own;
  line_finder& lines = t_shared_lines ? *t_shared_lines : own;
  std::vector<site> sites = lines.locate(static_cast<std::uintptr_t>(ip), false);
  if (sites.empty()) {
    print_fallback_location(out, static_cast<std::uintptr_t>(ip));
  } else {
    std::fprintf(out, "\t%s\n", sites.front().where.c_str());
  }
}

void dump_all_impl(std::FILE* out, g* self, unw_context_t* self_uc) {
  line_finder lines;
  t_shared_lines = &lines;
  bool first = true;
  for (g* gp = allgs(); gp; gp = gp->alllink) {
    gstatus st = gp->status.load(std::memory_order_acquire);
    if (st == gstatus::dead || st == gstatus::idle) continue;
    if (!first) std::fputc('\n', out);
    first = false;
    print_goroutine_header(out, gp, nullptr);
    if (gp == self) {
      print_local_traceback(out, self_uc, false);
    } else if (st == gstatus::running || st == gstatus::syscall) {
      std::fputs("\tgoroutine running on other thread; stack unavailable\n", out);
    } else {
      print_traceback_parked_impl(out, gp);
    }
    print_created_by_impl(out, gp);
  }
  t_shared_lines = nullptr;
  std::fflush(out);
}
}  // namespace

// noinline: the calling goroutine's traceback starts at our caller.
__attribute__((noinline)) void dump_all(std::FILE* out) {
  unw_context_t uc;
  bool ok = unw_getcontext(&uc) == 0;
  g* self = getg();
  on_system_stack([&] { dump_all_impl(out, self, ok ? &uc : nullptr); });
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
