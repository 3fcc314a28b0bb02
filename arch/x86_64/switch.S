/* x86-64 context switch and first-entry trampoline (System V ABI).
 *
 * The frame pushed here is described once, in arch/switch_frame.h, and checked
 * against the C++ view of it in arch/context.hpp. Every routine carries CFI so
 * that gdb, libunwind and perf --call-graph dwarf unwind through a switch: the
 * frame on the new stack has the same layout as the one on the old stack, so
 * the same CFI describes both halves of urge_context_switch.
 */
#include "../switch_frame.h"

        .text

/* void* urge_context_switch(void** save_sp, void* load_sp, void* transfer)
 * Reached by call (exit_to_context) or by push of the return address and jmp
 * (switch_context); either way the return address is at (%rsp) on entry.
 *   rdi: where to store the current stack pointer
 *   rsi: the stack pointer of the context to resume (a frame of this layout)
 *   rdx: a value handed to the resumed context as this call's return value
 */
        .globl  urge_context_switch
        .type   urge_context_switch, @function
        .p2align 4
urge_context_switch:
        .cfi_startproc
        pushq   %rbp                      /* callee-saved; frame pointer */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        pushq   %rbx                      /* callee-saved */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbx, 0
        pushq   %r12                      /* callee-saved */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r12, 0
        pushq   %r13                      /* callee-saved */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r13, 0
        pushq   %r14                      /* callee-saved */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r14, 0
        pushq   %r15                      /* callee-saved */
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r15, 0
        subq    $8, %rsp                  /* room for MXCSR and the x87 control word */
        .cfi_adjust_cfa_offset 8
        stmxcsr URGE_FRAME_MXCSR(%rsp)    /* SSE rounding mode, exception masks, FTZ/DAZ */
        fnstcw  URGE_FRAME_X87CW(%rsp)    /* x87 precision and rounding control */
        movl    URGE_FRAME_MXCSR(%rsp), %eax   /* what this thread has now, to compare below */
        movzwl  URGE_FRAME_X87CW(%rsp), %ecx

        movq    %rsp, (%rdi)              /* publish the old context: *save_sp = rsp */
        movq    %rsi, %rsp                /* enter the new stack; its frame has this layout */

        /* Restore the new context's SSE and x87 control, but only what differs:
         * ldmxcsr right after stmxcsr stalls (about 5 ns a switch measured on
         * AMD EPYC), and nearly always both contexts run with the defaults. The
         * same as the FPCR write on AArch64. */
        cmpl    URGE_FRAME_MXCSR(%rsp), %eax
        je      1f
        ldmxcsr URGE_FRAME_MXCSR(%rsp)
1:      cmpw    URGE_FRAME_X87CW(%rsp), %cx
        je      2f
        fldcw   URGE_FRAME_X87CW(%rsp)
2:
        addq    $8, %rsp
        .cfi_adjust_cfa_offset -8
        popq    %r15
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r15
        popq    %r14
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r14
        popq    %r13
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r13
        popq    %r12
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r12
        popq    %rbx
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbx
        popq    %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbp
        movq    %rdx, %rax                /* the transfer value is the return value */
        /* Return with pop + indirect jump, not ret: the return-stack predictor
         * expects a return to our caller, and after a switch it never is, so
         * ret mispredicts every time (measured: 22 ns vs 11 ns a round trip).
         * The C++ side enters with push and jmp rather than call, so that no
         * return-stack entry is left behind either (see "Entering the switch
         * without a call" in arch/context.hpp). */
        popq    %rcx                      /* the new context's saved rip; rcx is caller-saved */
        .cfi_adjust_cfa_offset -8
        .cfi_register %rip, %rcx
        jmpq    *%rcx
        .cfi_endproc
        .size   urge_context_switch, .-urge_context_switch

/* urge_context_start: where a new context's first switch "returns" to.
 * make_context leaves r12 = entry, r13 = its argument, rbp = 0, and a zero
 * word at (%rsp), so this routine looks as if it had been called from address
 * 0 with a zero frame pointer: frame-pointer walkers stop at the zero rbp and
 * DWARF unwinders at the undefined return address. entry(arg, transfer) must
 * never return; ud2 makes a return a clean crash instead of a jump to 0.
 */
        .globl  urge_context_start
        .type   urge_context_start, @function
        .p2align 4
urge_context_start:
        .cfi_startproc
        .cfi_undefined %rip               /* the bottom of the goroutine's stack */
        movq    %r13, %rdi                /* first argument: the entry's argument */
        movq    %rax, %rsi                /* second: the transfer value of the switch */
        callq   *%r12                     /* entry(arg, transfer); rsp is 16-byte aligned here */
        ud2                               /* entry returned: a bug, trap */
        .cfi_endproc
        .size   urge_context_start, .-urge_context_start

        .section .note.GNU-stack, "", @progbits
