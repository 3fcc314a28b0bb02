/* x86-64 preemption trampoline. See arch/preempt.hpp.
 *
 * The SIGURG handler makes the signal return here, on the goroutine's stack,
 * with rdi = rbx = the buffer holding the interrupted state (the layout of
 * saved_context in arch/x86_64/signal_context.cpp: two words, then the
 * kernel's gregs array, then the FP/XSAVE area). The CFI below is that of a
 * signal frame: it tells unwinders that the caller's registers are in the
 * buffer, so a traceback of a preempted goroutine continues into the
 * interrupted function.
 */
        .text
        .globl  urge_preempt_trampoline
        .type   urge_preempt_trampoline, @function
        .p2align 4
        nop                               /* unwinders look up pc-1 in caller frames: keep it inside */
urge_preempt_trampoline:
        .cfi_startproc
        .cfi_signal_frame
        .cfi_escape 0x0f, 0x04, 0x73, 0x88, 0x01, 0x06  /* DW_CFA_def_cfa_expression: CFA = *(rbx + RSP slot) */
        .cfi_escape 0x10, 0x08, 0x02, 0x73, 0x10  /* r8 saved at rbx + 16 */
        .cfi_escape 0x10, 0x09, 0x02, 0x73, 0x18  /* r9 saved at rbx + 24 */
        .cfi_escape 0x10, 0x0a, 0x02, 0x73, 0x20  /* r10 saved at rbx + 32 */
        .cfi_escape 0x10, 0x0b, 0x02, 0x73, 0x28  /* r11 saved at rbx + 40 */
        .cfi_escape 0x10, 0x0c, 0x02, 0x73, 0x30  /* r12 saved at rbx + 48 */
        .cfi_escape 0x10, 0x0d, 0x02, 0x73, 0x38  /* r13 saved at rbx + 56 */
        .cfi_escape 0x10, 0x0e, 0x03, 0x73, 0xc0, 0x00  /* r14 saved at rbx + 64 */
        .cfi_escape 0x10, 0x0f, 0x03, 0x73, 0xc8, 0x00  /* r15 saved at rbx + 72 */
        .cfi_escape 0x10, 0x05, 0x03, 0x73, 0xd0, 0x00  /* rdi saved at rbx + 80 */
        .cfi_escape 0x10, 0x04, 0x03, 0x73, 0xd8, 0x00  /* rsi saved at rbx + 88 */
        .cfi_escape 0x10, 0x06, 0x03, 0x73, 0xe0, 0x00  /* rbp saved at rbx + 96 */
        .cfi_escape 0x10, 0x03, 0x03, 0x73, 0xe8, 0x00  /* rbx saved at rbx + 104 */
        .cfi_escape 0x10, 0x01, 0x03, 0x73, 0xf0, 0x00  /* rdx saved at rbx + 112 */
        .cfi_escape 0x10, 0x00, 0x03, 0x73, 0xf8, 0x00  /* rax saved at rbx + 120 */
        .cfi_escape 0x10, 0x02, 0x03, 0x73, 0x80, 0x01  /* rcx saved at rbx + 128 */
        .cfi_escape 0x10, 0x10, 0x03, 0x73, 0x90, 0x01  /* rip saved at rbx + 144 */
        /* rsp is 16-byte aligned here (the buffer is 64-byte aligned). */
        call    urge_preempt_park         /* switches away; resumption never returns here */
        ud2
        .cfi_endproc
        .size   urge_preempt_trampoline, .-urge_preempt_trampoline

        .section .note.GNU-stack, "", @progbits
