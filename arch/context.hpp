// Execution contexts: the one C++ interface to arch/<isa>/switch.S.
//
// A context is a stack pointer plus the bounds of its stack. make_context
// prepares a fresh stack so that the first switch to it calls entry(arg,
// transfer) through urge_context_start; switch_context saves the callee-saved
// state of the current context and resumes another. Nothing here knows a
// goroutine: the runtime builds Gs on top of this.
//
// Sanitizers and Valgrind must be told about every switch, or they report
// false errors (ASan's stack bookkeeping, TSan's happens-before per thread).
// switch_context does that when the build has them, and compiles to the bare
// assembly call otherwise. Valgrind stack registration lives with the stacks
// (platform/stack.cpp) because it is about memory, not switching.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arch/switch_frame.h"

#if defined(__SANITIZE_ADDRESS__)
#define URGE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define URGE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define URGE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define URGE_TSAN 1
#endif
#endif

#if URGE_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if URGE_TSAN
#include <sanitizer/tsan_interface.h>
#endif

extern "C" {
// arch/<isa>/switch.S. Stores the current stack pointer (pointing at a switch
// frame) into *save_sp, resumes load_sp, and returns there with `transfer`.
void* urge_context_switch(void** save_sp, void* load_sp, void* transfer);
// The first-entry trampoline; see switch.S.
void urge_context_start();
}

namespace urge::arch {

// entry(arg, transfer): arg as given to make_context, transfer as given to the
// switch that first resumed the context. It must never return.
using entry_fn = void (*)(void* arg, void* transfer);

// The switch frame as C++ sees it; the assembly uses the offsets in
// switch_frame.h, and the static_asserts below keep the two in step.
#if defined(__x86_64__)
struct switch_frame {
  std::uint32_t mxcsr;
  std::uint16_t x87cw;
  std::uint16_t pad;
  std::uint64_t r15, r14, r13, r12, rbx, rbp;
  std::uint64_t rip;
};
static_assert(offsetof(switch_frame, mxcsr) == URGE_FRAME_MXCSR);
static_assert(offsetof(switch_frame, x87cw) == URGE_FRAME_X87CW);
static_assert(offsetof(switch_frame, r15) == URGE_FRAME_R15);
static_assert(offsetof(switch_frame, r14) == URGE_FRAME_R14);
static_assert(offsetof(switch_frame, r13) == URGE_FRAME_R13);
static_assert(offsetof(switch_frame, r12) == URGE_FRAME_R12);
static_assert(offsetof(switch_frame, rbx) == URGE_FRAME_RBX);
static_assert(offsetof(switch_frame, rbp) == URGE_FRAME_RBP);
static_assert(offsetof(switch_frame, rip) == URGE_FRAME_RIP);
#elif defined(__aarch64__)
struct switch_frame {
  std::uint64_t d[8];   // d8..d15
  std::uint64_t x[10];  // x19..x28
  std::uint64_t x29;    // frame pointer
  std::uint64_t x30;    // link register: where the switch returns
  std::uint64_t fpcr;
  std::uint64_t pad;
};
static_assert(offsetof(switch_frame, d) == URGE_FRAME_D8);
static_assert(offsetof(switch_frame, x) == URGE_FRAME_X19);
static_assert(offsetof(switch_frame, x) + 8 == URGE_FRAME_X20);
static_assert(offsetof(switch_frame, x29) == URGE_FRAME_X29);
static_assert(offsetof(switch_frame, x30) == URGE_FRAME_X30);
static_assert(offsetof(switch_frame, fpcr) == URGE_FRAME_FPCR);
#endif
static_assert(sizeof(switch_frame) == URGE_FRAME_SIZE);
static_assert(sizeof(switch_frame) % 16 == 0);

struct context {
  void* sp = nullptr;        // saved stack pointer while not running; owned by whoever switches
  void* stack_lo = nullptr;  // lowest address of the stack, for sanitizers and tracebacks
  std::size_t stack_size = 0;
#if URGE_ASAN
  void* asan_fake_stack = nullptr;  // ASan's per-context fake stack handle
#endif
#if URGE_TSAN
  void* tsan_fiber = nullptr;
  bool tsan_owned = false;  // created by make_context (destroy it), or the thread's own
#endif
};

// The floating-point control state a new context starts with: the creator's,
// as a new thread inherits its creator's floating-point environment. Taken
// apart from make_context so that a context made later than its creation
// (the runtime binds a goroutine's stack at its first run) starts with the
// state of its creator, not of whoever made the context.
struct fp_control {
#if defined(__x86_64__)
  std::uint32_t mxcsr;  // control bits only; the sticky exception flags start clear
  std::uint16_t x87cw;
#else
  std::uint32_t fpcr;
#endif
};

inline fp_control current_fp_control() {
  fp_control c;
#if defined(__x86_64__)
  std::uint32_t mxcsr;
  std::uint16_t cw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(cw));
  c.mxcsr = mxcsr & 0xffc0;
  c.x87cw = cw;
#else
  std::uint64_t fpcr;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  c.fpcr = static_cast<std::uint32_t>(fpcr);  // the upper half is RES0
#endif
  return c;
}

// Prepares a context that runs entry(arg, transfer) on [lo, lo + size) when
// first switched to, with floating-point control state fp. The stack's top
// holds one switch frame and a zero word.
inline void make_context(context& c, void* lo, std::size_t size, entry_fn entry, void* arg,
                         fp_control fp) {
#if URGE_ASAN
  // A reused stack still carries the redzones of the frames its last context
  // abandoned; clear them or ASan reports the new context's own locals.
  __asan_unpoison_memory_region(lo, size);
#endif
  auto top = (reinterpret_cast<std::uintptr_t>(lo) + size) & ~std::uintptr_t{15};
  // Two zero words above the frame: the fake return address and frame record
  // the unwinders stop at, and padding that keeps the frame 16-byte aligned.
  auto* zero = reinterpret_cast<std::uint64_t*>(top - 16);
  zero[0] = zero[1] = 0;
  auto* f = reinterpret_cast<switch_frame*>(top - 16 - sizeof(switch_frame));
  *f = switch_frame{};
#if defined(__x86_64__)
  f->mxcsr = fp.mxcsr;
  f->x87cw = fp.x87cw;
  f->r12 = reinterpret_cast<std::uint64_t>(entry);
  f->r13 = reinterpret_cast<std::uint64_t>(arg);
  f->rbp = 0;
  f->rip = reinterpret_cast<std::uint64_t>(&urge_context_start);
#else
  f->fpcr = fp.fpcr;
  f->x[0] = reinterpret_cast<std::uint64_t>(entry);
  f->x[1] = reinterpret_cast<std::uint64_t>(arg);
  f->x29 = 0;
  f->x30 = reinterpret_cast<std::uint64_t>(&urge_context_start);
#endif
  c.sp = f;
  c.stack_lo = lo;
  c.stack_size = size;
#if URGE_ASAN
  c.asan_fake_stack = nullptr;
#endif
#if URGE_TSAN
  if (!c.tsan_owned) {
    c.tsan_fiber = __tsan_create_fiber(0);
    c.tsan_owned = true;
  }
#endif
}

// The same, starting with the calling context's floating-point control state.
inline void make_context(context& c, void* lo, std::size_t size, entry_fn entry, void* arg) {
  make_context(c, lo, size, entry, arg, current_fp_control());
}

// Describes the calling thread's own stack as a context (the scheduler's g0),
// so that switching back to it keeps the sanitizers informed. Defined in
// arch/context.cpp.
void init_thread_context(context& c);

// Releases what make_context acquired for sanitizers. Never on the running context.
inline void destroy_context(context& c) {
#if URGE_TSAN
  if (c.tsan_owned && c.tsan_fiber) __tsan_destroy_fiber(c.tsan_fiber);
  c.tsan_fiber = nullptr;
  c.tsan_owned = false;
#endif
  c.sp = nullptr;
  (void)c;
}

// Called first thing by every entry function: completes the sanitizer half of
// the switch that started the context.
inline void context_started() {
#if URGE_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

// Entering the switch without a call (x86-64).
//
// urge_context_switch returns with pop and an indirect jump, not ret: ret is
// predicted from the return stack, which holds where *this* context called
// from, and after a switch the target is wherever the other context called
// from. But a call pushes onto that predictor's stack too, and the switch never
// pops it: the first ret the resumed context makes afterwards (out of
// resumed(), then out of yield) is predicted from the stale entry and
// mispredicts, every switch. So the switch is entered with push and jmp: the
// return stack is left as it was, and the resumed goroutine's rets are
// predicted from the frames of the one that switched to it (right whenever
// both run the same code: two goroutines yielding, or workers of one pool).
// Yield: 27-29 ns a switch before, 19-22 ns after.
//
// The push lands below the stack pointer, where a leaf function may keep data
// (the 128-byte red zone): the asm steps over it first. While suspended the
// stack pointer is then 128 bytes below what the compiler's CFI for the caller
// assumes at that point; unwinders are unaffected because the runtime is built
// with frame pointers (meson.build), and the CFA of a function with a frame is
// rbp-based. AArch64 needs none of this: bl and ret pair up in its switch.

// Suspends `from` and resumes `to`; returns the transfer value of the switch
// that later resumes `from`.
inline void* switch_context(context& from, context& to, void* transfer) {
#if URGE_ASAN
  __sanitizer_start_switch_fiber(&from.asan_fake_stack, to.stack_lo, to.stack_size);
#endif
#if URGE_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
#if defined(__x86_64__)
  // See "Entering the switch without a call" above.
  // The operands go in the registers of the C call through constraints
  // (D, S, d), not register variables: a sanitizer's instrumentation call
  // between such a variable's assignment and the asm clobbers it.
  void* r;
  void** save = &from.sp;
  void* load = to.sp;
  void* xfer = transfer;
  asm volatile(
      "subq    $128, %%rsp\n\t"        // step over the red zone
      "leaq    1f(%%rip), %%rcx\n\t"   // where this context resumes
      "pushq   %%rcx\n\t"              // as a call would push it
      "jmp     urge_context_switch\n"  // but leaving the return stack alone
      "1:\n\t"
      "addq    $128, %%rsp"  // back from the switch that resumed us
      : "=a"(r), "+D"(save), "+S"(load), "+d"(xfer)
      :
      // What a call may change: the ABI's caller-saved registers.
      : "rcx", "r8", "r9", "r10", "r11", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
        "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
        "xmm15", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)"
#if defined(__AVX512F__)
        ,
        "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25",
        "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3", "k4", "k5", "k6",
        "k7"
#endif
  );
#else
  void* r = urge_context_switch(&from.sp, to.sp, transfer);
#endif
#if URGE_ASAN
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, nullptr, nullptr);
#endif
  return r;
}

// Leaves `from` for good (its stack is about to be reused or freed): ASan drops
// the context's fake stack instead of keeping it for a resumption.
[[noreturn]] inline void exit_to_context(context& from, context& to, void* transfer) {
#if URGE_ASAN
  __sanitizer_start_switch_fiber(nullptr, to.stack_lo, to.stack_size);
#endif
#if URGE_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
  urge_context_switch(&from.sp, to.sp, transfer);
  __builtin_trap();
}

}  // namespace urge::arch
