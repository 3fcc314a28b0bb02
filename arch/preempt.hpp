// Asynchronous preemption: redirecting an interrupted context (the ISA half).
//
// The runtime's SIGURG handler (runtime/preempt.cpp) decides whether the
// interrupted goroutine may be stopped where it is. If so, this code moves the
// whole interrupted state that the kernel saved in the signal frame (every
// general register, flags, the full FP/vector state in whatever format the
// kernel chose: XSAVE with AVX/AVX-512, or AArch64's FPSIMD and SVE records)
// into a buffer on the goroutine's own stack, below the red zone, and makes
// the signal return into urge_preempt_trampoline on that stack. The
// trampoline calls urge_preempt_park(buffer), which switches to other
// goroutines like any voluntary switch.
//
// Resuming is the mirror image: the goroutine, back on the same thread, sends
// itself a signal; the handler copies the buffer back over its own signal
// frame (restore_interrupted) and returns, and rt_sigreturn restores every
// register exactly as it was, including the program counter and stack
// pointer. Only the thread's signal mask and alternate stack, which are not
// part of the copied machine context, are the thread's current ones.
//
// Why not save the registers in the trampoline, as Go's asyncPreempt does?
// Because returning from it to an arbitrary instruction needs a scratch
// register on AArch64 (Go reserves R27; C++ code reserves nothing), and
// because the kernel already knows every state component this CPU has.
#pragma once

#include <signal.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>

extern "C" {
// arch/<isa>/preempt.S: entered by signal return with the buffer pointer as
// its first argument; calls urge_preempt_park and never returns.
void urge_preempt_trampoline();
// runtime/preempt.cpp.
[[noreturn]] void urge_preempt_park(void* saved);
}

namespace urge::arch {

std::uintptr_t context_pc(const ucontext_t* uc);
std::uintptr_t context_sp(const ucontext_t* uc);

// Bytes needed on the goroutine stack for the interrupted state of uc, or 0
// when the signal frame holds something this code does not know how to move
// (the preemption is then declined and retried later).
std::size_t saved_context_size(const ucontext_t* uc);

// Copies the interrupted state of uc onto the interrupted stack (below the
// red zone) and redirects uc to urge_preempt_trampoline. Returns false, with
// uc untouched, if the copy would come closer than `reserve` bytes to
// stack_lo (the trampoline and the scheduler need that much stack).
bool redirect_to_trampoline(ucontext_t* uc, std::uintptr_t stack_lo, std::size_t reserve);

// Overwrites uc's machine context with the state saved by
// redirect_to_trampoline. False if the frames are incompatible.
bool restore_interrupted(ucontext_t* uc, const void* saved);

}  // namespace urge::arch
