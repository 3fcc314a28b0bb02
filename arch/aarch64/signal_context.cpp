// AArch64 half of asynchronous preemption; see arch/preempt.hpp.
#include <asm/sigcontext.h>
#include <signal.h>
#include <ucontext.h>

#include <cstddef>
#include <cstring>

#include "arch/preempt.hpp"

namespace urge::arch {

namespace {

constexpr std::uint64_t saved_magic = 0x75726765'70726565;  // "urgepree"
constexpr std::size_t below_sp = 128;  // AAPCS64 has no red zone; stay clear anyway

// The buffer on the goroutine's stack. preempt.S's CFI knows the offsets of
// the registers, sp and pc: keep the static_asserts in step with it.
struct saved_context {
  std::uint64_t magic;
  std::uint64_t size;
  mcontext_t mc;  // registers, sp, pc, pstate and the FPSIMD/SVE records
};
static_assert(offsetof(saved_context, mc) == 16);
static_assert(offsetof(saved_context, mc) + offsetof(mcontext_t, regs) == 24);
static_assert(offsetof(saved_context, mc) + offsetof(mcontext_t, sp) == 272);
static_assert(offsetof(saved_context, mc) + offsetof(mcontext_t, pc) == 280);

// Walks the records of __reserved. False if one needs data outside it (an
// EXTRA record, used for large SVE/SME state): such frames are not moved.
bool records_self_contained(const mcontext_t& mc) {
  std::size_t off = 0;
  while (off + sizeof(_aarch64_ctx) <= sizeof mc.__reserved) {
    _aarch64_ctx head;
    std::memcpy(&head, mc.__reserved + off, sizeof head);
    if (head.magic == 0) return true;  // terminator
    if (head.magic == EXTRA_MAGIC || head.size == 0) return false;
    off += head.size;
  }
  return false;
}

// True if both frames have the same records in the same places.
bool same_layout(const mcontext_t& a, const mcontext_t& b) {
  std::size_t off = 0;
  while (off + sizeof(_aarch64_ctx) <= sizeof a.__reserved) {
    _aarch64_ctx ha, hb;
    std::memcpy(&ha, a.__reserved + off, sizeof ha);
    std::memcpy(&hb, b.__reserved + off, sizeof hb);
    if (ha.magic != hb.magic || ha.size != hb.size) return false;
    if (ha.magic == 0) return true;
    if (ha.size == 0) return false;
    off += ha.size;
  }
  return false;
}

}  // namespace

std::uintptr_t context_pc(const ucontext_t* uc) {
  return uc->uc_mcontext.pc;
}
std::uintptr_t context_sp(const ucontext_t* uc) {
  return uc->uc_mcontext.sp;
}

std::size_t saved_context_size(const ucontext_t* uc) {
  if (!records_self_contained(uc->uc_mcontext)) return 0;
  return (sizeof(saved_context) + 63) & ~std::size_t{63};
}

bool redirect_to_trampoline(ucontext_t* uc, std::uintptr_t stack_lo, std::size_t reserve) {
  std::size_t size = saved_context_size(uc);
  if (size == 0) return false;
  std::uintptr_t sp = context_sp(uc);
  std::uintptr_t buf = ((sp - below_sp) & ~std::uintptr_t{63}) - size;
  if (buf < stack_lo + reserve || buf > sp) return false;
  auto* s = reinterpret_cast<saved_context*>(buf);
  s->magic = saved_magic;
  s->size = size;
  std::memcpy(&s->mc, &uc->uc_mcontext, sizeof s->mc);

  mcontext_t& mc = uc->uc_mcontext;
  mc.sp = buf;
  mc.pc = reinterpret_cast<std::uintptr_t>(&urge_preempt_trampoline);
  mc.regs[0] = buf;
  mc.regs[19] = buf;
  mc.regs[29] = 0;
  mc.regs[30] = 0;
  return true;
}

bool restore_interrupted(ucontext_t* uc, const void* saved) {
  const auto* s = static_cast<const saved_context*>(saved);
  if (s->magic != saved_magic || !same_layout(s->mc, uc->uc_mcontext)) return false;
  std::memcpy(&uc->uc_mcontext, &s->mc, sizeof s->mc);
  return true;
}

}  // namespace urge::arch
