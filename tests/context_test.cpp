// arch/: context creation and switching on both ISAs.
#include <gtest/gtest.h>

#include <cfenv>
#include <cstdint>
#include <vector>

#include "arch/context.hpp"
#include "platform/stack.hpp"

namespace {

using urge::arch::context;
using urge::platform::stack;
using urge::platform::stack_pool;

struct ring_node {
  context ctx;
  ring_node* next = nullptr;
  context* home = nullptr;
  long visits = 0;
  long rounds = 0;
};

void ring_entry(void* arg, void* transfer) {
  urge::arch::context_started();
  auto* n = static_cast<ring_node*>(arg);
  auto token = reinterpret_cast<std::uintptr_t>(transfer);
  for (;;) {
    ++n->visits;
    ++token;
    // The last node ends a round by switching home; the others pass it on.
    context& to = n->next ? n->next->ctx : *n->home;
    token = reinterpret_cast<std::uintptr_t>(
        urge::arch::switch_context(n->ctx, to, reinterpret_cast<void*>(token)));
  }
}

TEST(Context, RoundTripsThroughARingOfContexts) {
  stack_pool pool;
  constexpr int kNodes = 100;
  constexpr int kRounds = 50;
  context home;
  urge::arch::init_thread_context(home);
  std::vector<ring_node> nodes(kNodes);
  std::vector<stack> stacks;
  for (int i = 0; i < kNodes; ++i) {
    stacks.push_back(pool.acquire());
    nodes[i].home = &home;
    nodes[i].next = i + 1 < kNodes ? &nodes[i + 1] : nullptr;
    urge::arch::make_context(nodes[i].ctx, stacks[i].lo, stacks[i].size, ring_entry, &nodes[i]);
  }
  std::uintptr_t token = 0;
  for (int r = 0; r < kRounds; ++r) {
    token = reinterpret_cast<std::uintptr_t>(
        urge::arch::switch_context(home, nodes[0].ctx, reinterpret_cast<void*>(token)));
  }
  EXPECT_EQ(token, std::uintptr_t{kNodes} * kRounds);  // every node added one per round
  for (auto& n : nodes) EXPECT_EQ(n.visits, kRounds);
  for (auto& n : nodes) urge::arch::destroy_context(n.ctx);
  for (auto& s : stacks) pool.release(s);
}

// ---- Callee-saved registers ------------------------------------------------
// check_callee_saved(save, load) fills every callee-saved register with a
// pattern, switches to `load`, and on return reports which registers changed
// (a bit per register; 0 means all survived). The other context scribbles on
// all of them before switching back.
extern "C" std::uint64_t check_callee_saved(void** save_sp, void* load_sp);
extern "C" void scribble_callee_saved();

#if defined(__x86_64__)
asm(R"(
        .text
        .globl check_callee_saved
        .type check_callee_saved, @function
check_callee_saved:
        pushq %rbp
        pushq %rbx
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        subq $8, %rsp
        movabsq $0x1111111111111111, %rbx
        movabsq $0x2222222222222222, %rbp
        movabsq $0x3333333333333333, %r12
        movabsq $0x4444444444444444, %r13
        movabsq $0x5555555555555555, %r14
        movabsq $0x6666666666666666, %r15
        xorl %edx, %edx
        call urge_context_switch
        xorl %eax, %eax
        movabsq $0x1111111111111111, %rcx
        cmpq %rcx, %rbx
        setne %cl
        orb %cl, %al
        movabsq $0x2222222222222222, %rcx
        cmpq %rcx, %rbp
        setne %cl
        shlb $1, %cl
        orb %cl, %al
        movabsq $0x3333333333333333, %rcx
        cmpq %rcx, %r12
        setne %cl
        shlb $2, %cl
        orb %cl, %al
        movabsq $0x4444444444444444, %rcx
        cmpq %rcx, %r13
        setne %cl
        shlb $3, %cl
        orb %cl, %al
        movabsq $0x5555555555555555, %rcx
        cmpq %rcx, %r14
        setne %cl
        shlb $4, %cl
        orb %cl, %al
        movabsq $0x6666666666666666, %rcx
        cmpq %rcx, %r15
        setne %cl
        shlb $5, %cl
        orb %cl, %al
        addq $8, %rsp
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %rbx
        popq %rbp
        ret
        .size check_callee_saved, .-check_callee_saved

        .globl scribble_callee_saved
        .type scribble_callee_saved, @function
scribble_callee_saved:
        movq $-1, %rbx
        movq $-2, %rbp
        movq $-3, %r12
        movq $-4, %r13
        movq $-5, %r14
        movq $-6, %r15
        ret
        .size scribble_callee_saved, .-scribble_callee_saved
)");
#elif defined(__aarch64__)
asm(R"(
        .text
        .globl check_callee_saved
        .type check_callee_saved, %function
check_callee_saved:
        stp x29, x30, [sp, #-176]!
        stp x19, x20, [sp, #16]
        stp x21, x22, [sp, #32]
        stp x23, x24, [sp, #48]
        stp x25, x26, [sp, #64]
        stp x27, x28, [sp, #80]
        stp d8, d9, [sp, #96]
        stp d10, d11, [sp, #112]
        stp d12, d13, [sp, #128]
        stp d14, d15, [sp, #144]
        mov x19, #19
        mov x20, #20
        mov x21, #21
        mov x22, #22
        mov x23, #23
        mov x24, #24
        mov x25, #25
        mov x26, #26
        mov x27, #27
        mov x28, #28
        mov x29, #29
        fmov d8, x19
        fmov d9, x20
        fmov d10, x21
        fmov d11, x22
        fmov d12, x23
        fmov d13, x24
        fmov d14, x25
        fmov d15, x26
        mov x2, #0
        bl urge_context_switch
        mov x0, #0
        cmp x19, #19
        cset x9, ne
        orr x0, x0, x9
        cmp x20, #20
        cset x9, ne
        orr x0, x0, x9, lsl #1
        cmp x21, #21
        cset x9, ne
        orr x0, x0, x9, lsl #2
        cmp x22, #22
        cset x9, ne
        orr x0, x0, x9, lsl #3
        cmp x23, #23
        cset x9, ne
        orr x0, x0, x9, lsl #4
        cmp x24, #24
        cset x9, ne
        orr x0, x0, x9, lsl #5
        cmp x25, #25
        cset x9, ne
        orr x0, x0, x9, lsl #6
        cmp x26, #26
        cset x9, ne
        orr x0, x0, x9, lsl #7
        cmp x27, #27
        cset x9, ne
        orr x0, x0, x9, lsl #8
        cmp x28, #28
        cset x9, ne
        orr x0, x0, x9, lsl #9
        cmp x29, #29
        cset x9, ne
        orr x0, x0, x9, lsl #10
        fmov x10, d8
        cmp x10, #19
        cset x9, ne
        orr x0, x0, x9, lsl #11
        fmov x10, d9
        cmp x10, #20
        cset x9, ne
        orr x0, x0, x9, lsl #12
        fmov x10, d10
        cmp x10, #21
        cset x9, ne
        orr x0, x0, x9, lsl #13
        fmov x10, d11
        cmp x10, #22
        cset x9, ne
        orr x0, x0, x9, lsl #14
        fmov x10, d12
        cmp x10, #23
        cset x9, ne
        orr x0, x0, x9, lsl #15
        fmov x10, d13
        cmp x10, #24
        cset x9, ne
        orr x0, x0, x9, lsl #16
        fmov x10, d14
        cmp x10, #25
        cset x9, ne
        orr x0, x0, x9, lsl #17
        fmov x10, d15
        cmp x10, #26
        cset x9, ne
        orr x0, x0, x9, lsl #18
        ldp d14, d15, [sp, #144]
        ldp d12, d13, [sp, #128]
        ldp d10, d11, [sp, #112]
        ldp d8, d9, [sp, #96]
        ldp x27, x28, [sp, #80]
        ldp x25, x26, [sp, #64]
        ldp x23, x24, [sp, #48]
        ldp x21, x22, [sp, #32]
        ldp x19, x20, [sp, #16]
        ldp x29, x30, [sp], #176
        ret
        .size check_callee_saved, .-check_callee_saved

        .globl scribble_callee_saved
        .type scribble_callee_saved, %function
scribble_callee_saved:
        mov x19, #-1
        mov x20, #-1
        mov x21, #-1
        mov x22, #-1
        mov x23, #-1
        mov x24, #-1
        mov x25, #-1
        mov x26, #-1
        mov x27, #-1
        mov x28, #-1
        movi d8, #0
        movi d9, #0
        movi d10, #0
        movi d11, #0
        movi d12, #0
        movi d13, #0
        movi d14, #0
        movi d15, #0
        ret
        .size scribble_callee_saved, .-scribble_callee_saved
)");
#endif

struct scribbler {
  context ctx;
  context* home;
};

// Saves the callee-saved registers, scribbles on them, switches home (so the
// scribbled values are what the switch saves for this context and what the
// tester's registers would be if the switch leaked them), then restores.
extern "C" void scribble_then_switch(context* from, context* to);
#if defined(__x86_64__)
asm(R"(
        .text
        .globl scribble_then_switch
        .type scribble_then_switch, @function
scribble_then_switch:
        pushq %rbp
        pushq %rbx
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        subq $8, %rsp
        movq %rdi, %rax
        movq %rsi, %rcx
        call scribble_callee_saved
        movq %rax, %rdi
        movq (%rcx), %rsi
        xorl %edx, %edx
        call urge_context_switch
        addq $8, %rsp
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %rbx
        popq %rbp
        ret
        .size scribble_then_switch, .-scribble_then_switch
)");
#elif defined(__aarch64__)
asm(R"(
        .text
        .globl scribble_then_switch
        .type scribble_then_switch, %function
scribble_then_switch:
        stp x29, x30, [sp, #-176]!
        stp x19, x20, [sp, #16]
        stp x21, x22, [sp, #32]
        stp x23, x24, [sp, #48]
        stp x25, x26, [sp, #64]
        stp x27, x28, [sp, #80]
        stp d8, d9, [sp, #96]
        stp d10, d11, [sp, #112]
        stp d12, d13, [sp, #128]
        stp d14, d15, [sp, #144]
        mov x11, x0
        mov x12, x1
        bl scribble_callee_saved
        mov x29, #-1
        mov x0, x11
        ldr x1, [x12]
        mov x2, #0
        bl urge_context_switch
        ldp d14, d15, [sp, #144]
        ldp d12, d13, [sp, #128]
        ldp d10, d11, [sp, #112]
        ldp d8, d9, [sp, #96]
        ldp x27, x28, [sp, #80]
        ldp x25, x26, [sp, #64]
        ldp x23, x24, [sp, #48]
        ldp x21, x22, [sp, #32]
        ldp x19, x20, [sp, #16]
        ldp x29, x30, [sp], #176
        ret
        .size scribble_then_switch, .-scribble_then_switch
)");
#endif

// context::sp is the first member, so a context* is also a void** to its sp.
static_assert(offsetof(context, sp) == 0);

void scribbler_entry(void* arg, void*) {
  urge::arch::context_started();
  auto* s = static_cast<scribbler*>(arg);
  for (;;) scribble_then_switch(&s->ctx, s->home);
}

TEST(Context, CalleeSavedRegistersSurviveASwitch) {
#if URGE_ASAN || URGE_TSAN
  GTEST_SKIP() << "the raw assembly switch bypasses the sanitizer fiber hooks";
#endif
  stack_pool pool;
  stack st = pool.acquire();
  context home;
  urge::arch::init_thread_context(home);
  scribbler s{{}, &home};
  urge::arch::make_context(s.ctx, st.lo, st.size, scribbler_entry, &s);
  for (int i = 0; i < 3; ++i) {
    std::uint64_t changed = check_callee_saved(&home.sp, s.ctx.sp);
    EXPECT_EQ(changed, 0u) << "bit i set: the i-th callee-saved register was not preserved";
  }
  urge::arch::destroy_context(s.ctx);
  pool.release(st);
}

// ---- Floating-point control state ------------------------------------------

struct fp_ctx {
  context ctx;
  context* home;
  int mode;
  int seen = -1;
  double third = 0;
};

void fp_entry(void* arg, void*) {
  urge::arch::context_started();
  auto* f = static_cast<fp_ctx*>(arg);
  std::fesetround(f->mode);
  for (;;) {
    urge::arch::switch_context(f->ctx, *f->home, nullptr);
    f->seen = std::fegetround();
    volatile double one = 1.0, three = 3.0;
    f->third = one / three;
  }
}

TEST(Context, RoundingModeIsPerContext) {
  stack_pool pool;
  context home;
  urge::arch::init_thread_context(home);
  fp_ctx up{{}, &home, FE_UPWARD}, down{{}, &home, FE_DOWNWARD};
  stack s1 = pool.acquire(), s2 = pool.acquire();
  urge::arch::make_context(up.ctx, s1.lo, s1.size, fp_entry, &up);
  urge::arch::make_context(down.ctx, s2.lo, s2.size, fp_entry, &down);
  urge::arch::switch_context(home, up.ctx, nullptr);  // each sets its mode
  urge::arch::switch_context(home, down.ctx, nullptr);
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);  // home's mode untouched
  for (int i = 0; i < 5; ++i) {
    urge::arch::switch_context(home, up.ctx, nullptr);
    urge::arch::switch_context(home, down.ctx, nullptr);
    EXPECT_EQ(up.seen, FE_UPWARD);
    EXPECT_EQ(down.seen, FE_DOWNWARD);
    EXPECT_EQ(std::fegetround(), FE_TONEAREST);
    EXPECT_GT(up.third, down.third);  // 1/3 rounded up and down differ in the last bit
  }
  urge::arch::destroy_context(up.ctx);
  urge::arch::destroy_context(down.ctx);
  pool.release(s1);
  pool.release(s2);
}

TEST(Context, NewContextInheritsCreatorsRoundingMode) {
  stack_pool pool;
  context home;
  urge::arch::init_thread_context(home);
  struct probe {
    context ctx;
    context* home;
    int mode = -1;
  } p{{}, &home};
  stack s = pool.acquire();
  std::fesetround(FE_TOWARDZERO);
  urge::arch::make_context(
      p.ctx, s.lo, s.size,
      [](void* arg, void*) {
        urge::arch::context_started();
        auto* pr = static_cast<probe*>(arg);
        pr->mode = std::fegetround();
        for (;;) urge::arch::switch_context(pr->ctx, *pr->home, nullptr);
      },
      &p);
  std::fesetround(FE_TONEAREST);
  urge::arch::switch_context(home, p.ctx, nullptr);
  EXPECT_EQ(p.mode, FE_TOWARDZERO);
  urge::arch::destroy_context(p.ctx);
  pool.release(s);
}

}  // namespace
