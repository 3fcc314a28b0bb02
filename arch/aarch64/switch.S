/* AArch64 context switch and first-entry trampoline (AAPCS64).
 *
 * The frame stored here is described once, in arch/switch_frame.h, and checked
 * against the C++ view of it in arch/context.hpp. The frame on the new stack has
 * the same layout as the one on the old stack, so one set of CFI describes both
 * halves of urge_context_switch.
 */
#include "../switch_frame.h"

        .text

/* void* urge_context_switch(void** save_sp, void* load_sp, void* transfer)
 *   x0: where to store the current stack pointer
 *   x1: the stack pointer of the context to resume (a frame of this layout)
 *   x2: a value handed to the resumed context as this call's return value
 */
        .globl  urge_context_switch
        .type   urge_context_switch, %function
        .p2align 4
urge_context_switch:
        .cfi_startproc
        sub     sp, sp, #URGE_FRAME_SIZE          // make room for the frame
        .cfi_def_cfa_offset URGE_FRAME_SIZE
        stp     d8, d9, [sp, #URGE_FRAME_D8 + 0]  // callee-saved FP/SIMD (low halves)
        .cfi_offset d8, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 0
        .cfi_offset d9, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 8
        stp     d10, d11, [sp, #URGE_FRAME_D8 + 16]
        .cfi_offset d10, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 16
        .cfi_offset d11, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 24
        stp     d12, d13, [sp, #URGE_FRAME_D8 + 32]
        .cfi_offset d12, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 32
        .cfi_offset d13, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 40
        stp     d14, d15, [sp, #URGE_FRAME_D8 + 48]
        .cfi_offset d14, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 48
        .cfi_offset d15, -URGE_FRAME_SIZE + URGE_FRAME_D8 + 56
        stp     x19, x20, [sp, #URGE_FRAME_X19 + 0] // callee-saved integer registers
        .cfi_offset x19, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 0
        .cfi_offset x20, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 8
        stp     x21, x22, [sp, #URGE_FRAME_X19 + 16]
        .cfi_offset x21, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 16
        .cfi_offset x22, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 24
        stp     x23, x24, [sp, #URGE_FRAME_X19 + 32]
        .cfi_offset x23, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 32
        .cfi_offset x24, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 40
        stp     x25, x26, [sp, #URGE_FRAME_X19 + 48]
        .cfi_offset x25, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 48
        .cfi_offset x26, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 56
        stp     x27, x28, [sp, #URGE_FRAME_X19 + 64]
        .cfi_offset x27, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 64
        .cfi_offset x28, -URGE_FRAME_SIZE + URGE_FRAME_X19 + 72
        stp     x29, x30, [sp, #URGE_FRAME_X29]   // frame pointer and return address
        .cfi_offset x29, -URGE_FRAME_SIZE + URGE_FRAME_X29
        .cfi_offset x30, -URGE_FRAME_SIZE + URGE_FRAME_X30
        mrs     x9, fpcr                          // rounding mode, FZ, default-NaN
        str     x9, [sp, #URGE_FRAME_FPCR]

        mov     x9, sp                            // publish the old context: *save_sp = sp
        str     x9, [x0]
        mov     sp, x1                            // enter the new stack; its frame has this layout

        ldr     x9, [sp, #URGE_FRAME_FPCR]        // the new context's FPCR
        mrs     x10, fpcr
        cmp     x9, x10
        b.eq    1f                                // writing FPCR can stall: skip when unchanged
        msr     fpcr, x9
1:      ldp     d8, d9, [sp, #URGE_FRAME_D8 + 0]
        ldp     d10, d11, [sp, #URGE_FRAME_D8 + 16]
        ldp     d12, d13, [sp, #URGE_FRAME_D8 + 32]
        ldp     d14, d15, [sp, #URGE_FRAME_D8 + 48]
        ldp     x19, x20, [sp, #URGE_FRAME_X19 + 0]
        ldp     x21, x22, [sp, #URGE_FRAME_X19 + 16]
        ldp     x23, x24, [sp, #URGE_FRAME_X19 + 32]
        ldp     x25, x26, [sp, #URGE_FRAME_X19 + 48]
        ldp     x27, x28, [sp, #URGE_FRAME_X19 + 64]
        ldp     x29, x30, [sp, #URGE_FRAME_X29]
        add     sp, sp, #URGE_FRAME_SIZE          // pop the frame
        .cfi_def_cfa_offset 0
        mov     x0, x2                            // the transfer value is the return value
        ret                                       // to the new context's saved x30
        .cfi_endproc
        .size   urge_context_switch, .-urge_context_switch

/* urge_context_start: where a new context's first switch "returns" to.
 * make_context leaves x19 = entry, x20 = its argument and x29 = 0, so frame
 * pointer walkers stop at the zero frame record and DWARF unwinders at the
 * undefined return address. entry(arg, transfer) must never return; brk makes
 * a return a clean trap.
 */
        .globl  urge_context_start
        .type   urge_context_start, %function
        .p2align 4
urge_context_start:
        .cfi_startproc
        .cfi_undefined x30                        // the bottom of the goroutine's stack
        mov     x1, x0                            // second argument: the switch's transfer value
        mov     x0, x20                           // first argument: the entry's argument
        mov     x30, xzr                          // no return address below this frame
        blr     x19                               // entry(arg, transfer)
        brk     #0x1                              // entry returned: a bug, trap
        .cfi_endproc
        .size   urge_context_start, .-urge_context_start

        .section .note.GNU-stack, "", %progbits
