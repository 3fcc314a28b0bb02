/* The saved-context layout, shared by the C++ side (arch/context.hpp) and the
 * assembly (arch/<isa>/switch.S). It is plain C preprocessor so that GNU as can
 * include it.
 *
 * A context that is not running is a stack pointer. urge_context_switch pushes
 * the callee-saved state of the ABI onto the current stack, stores the stack
 * pointer, loads the other one and pops the same frame from there. The frame
 * below is what the saved stack pointer points at. Caller-saved registers need
 * no saving: the switch is an ordinary call as far as the compiler knows.
 *
 * Asynchronous preemption saves every register and is a different frame; it is
 * not described here.
 */
#ifndef URGE_ARCH_SWITCH_FRAME_H
#define URGE_ARCH_SWITCH_FRAME_H

#if defined(__x86_64__)
/* System V x86-64: rbx, rbp, r12-r15 are callee-saved, as are the control
 * bits of MXCSR and the x87 control word (the ABI says so for both). */
#define URGE_FRAME_MXCSR 0  /* 4 bytes: SSE control and status */
#define URGE_FRAME_X87CW 4  /* 2 bytes: x87 control word; 2 bytes of padding follow */
#define URGE_FRAME_R15 8
#define URGE_FRAME_R14 16
#define URGE_FRAME_R13 24 /* the first entry's argument (see urge_context_start) */
#define URGE_FRAME_R12 32 /* the first entry's function */
#define URGE_FRAME_RBX 40
#define URGE_FRAME_RBP 48
#define URGE_FRAME_RIP 56 /* the return address of urge_context_switch */
#define URGE_FRAME_SIZE 64

#elif defined(__aarch64__)
/* AAPCS64: x19-x28, x29 (fp), x30 (lr), the low 64 bits of v8-v15 and FPCR
 * (rounding mode, flush-to-zero) are preserved across calls. */
#define URGE_FRAME_D8 0 /* d8..d15, 8 bytes each */
#define URGE_FRAME_X19 64 /* x19..x28, 8 bytes each; x19 holds the first entry's function */
#define URGE_FRAME_X20 72 /* the first entry's argument */
#define URGE_FRAME_X29 144
#define URGE_FRAME_X30 152 /* the return address of urge_context_switch */
#define URGE_FRAME_FPCR 160
#define URGE_FRAME_SIZE 176 /* 8 bytes of padding keep sp 16-byte aligned */

#else
#error "urge supports x86_64 and aarch64"
#endif

#endif /* URGE_ARCH_SWITCH_FRAME_H */
