// x86-64 half of asynchronous preemption; see arch/preempt.hpp.
#include <signal.h>
#include <ucontext.h>

#include <cstddef>
#include <cstring>

#include "arch/preempt.hpp"

namespace urge::arch {

namespace {

constexpr std::uint64_t saved_magic = 0x75726765'70726565;  // "urgepree"
constexpr std::size_t red_zone = 128;

// The buffer on the goroutine's stack. preempt.S's CFI knows that gregs
// starts at offset 16: keep the static_asserts in step with it.
struct saved_context {
  std::uint64_t magic;
  std::uint64_t fp_bytes;          // bytes of fp that are valid
  greg_t gregs[NGREG];             // the kernel's view of every general register
  alignas(64) unsigned char fp[];  // the FXSAVE/XSAVE area, as the kernel wrote it
};
static_assert(offsetof(saved_context, gregs) == 16);
static_assert(NGREG == 23);

// Size of the FP area the kernel put in this frame: XSAVE (with every
// component this CPU has enabled: AVX, AVX-512, ...) or legacy FXSAVE.
std::size_t fp_area_size(const ucontext_t* uc) {
  const auto* fp = reinterpret_cast<const unsigned char*>(uc->uc_mcontext.fpregs);
  if (!fp) return 0;
  _fpx_sw_bytes sw;
  std::memcpy(&sw, fp + 464, sizeof sw);  // software-reserved bytes of the FXSAVE image
  if (sw.magic1 == FP_XSTATE_MAGIC1) return sw.extended_size;
  return 512;
}

}  // namespace

std::uintptr_t context_pc(const ucontext_t* uc) {
  return static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
}

std::uintptr_t context_sp(const ucontext_t* uc) {
  return static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
}

std::size_t saved_context_size(const ucontext_t* uc) {
  std::size_t fp = fp_area_size(uc);
  if (fp == 0) return 0;
  return (sizeof(saved_context) + fp + 63) & ~std::size_t{63};
}

bool redirect_to_trampoline(ucontext_t* uc, std::uintptr_t stack_lo, std::size_t reserve) {
  std::size_t size = saved_context_size(uc);
  if (size == 0) return false;
  std::uintptr_t sp = context_sp(uc);
  // Below the red zone, which the interrupted function may be using.
  std::uintptr_t buf = ((sp - red_zone) & ~std::uintptr_t{63}) - size;
  if (buf < stack_lo + reserve || buf > sp) return false;
  auto* s = reinterpret_cast<saved_context*>(buf);
  s->magic = saved_magic;
  s->fp_bytes = fp_area_size(uc);
  std::memcpy(s->gregs, uc->uc_mcontext.gregs, sizeof s->gregs);
  std::memcpy(s->fp, uc->uc_mcontext.fpregs, s->fp_bytes);

  greg_t* r = uc->uc_mcontext.gregs;
  r[REG_RSP] = static_cast<greg_t>(buf);
  r[REG_RIP] = reinterpret_cast<greg_t>(&urge_preempt_trampoline);
  r[REG_RDI] = static_cast<greg_t>(buf);
  r[REG_RBX] = static_cast<greg_t>(buf);
  r[REG_RBP] = 0;
  r[REG_EFL] &= ~greg_t{0x400};  // DF clear, as the ABI requires at a call
  // The runtime runs with the default FP environment; the goroutine's own is
  // in the saved copy.
  uc->uc_mcontext.fpregs->mxcsr = 0x1f80;
  uc->uc_mcontext.fpregs->cwd = 0x037f;
  // And with an empty x87 register stack, as the ABI requires at a call: the
  // interrupted code may be in the middle of long double arithmetic, and the
  // goroutines this thread runs next would push onto its registers (stack
  // overflow: NaNs and FE_INVALID). Its registers are in the saved copy.
  uc->uc_mcontext.fpregs->swd = 0;
  uc->uc_mcontext.fpregs->ftw = 0;  // abridged tag word: every register empty
  return true;
}

bool restore_interrupted(ucontext_t* uc, const void* saved) {
  const auto* s = static_cast<const saved_context*>(saved);
  if (s->magic != saved_magic || fp_area_size(uc) != s->fp_bytes) return false;
  std::memcpy(uc->uc_mcontext.fpregs, s->fp, s->fp_bytes);
  std::memcpy(uc->uc_mcontext.gregs, s->gregs, sizeof s->gregs);
  return true;
}

}  // namespace urge::arch
