/*
 * Private interface between fpu.c (x87, FXSAVE, MXCSR) and sse.c (SSE/SSE2),
 * also used by their unit tests. Not part of the emulator contract (emu.h).
 */
#ifndef TERN_CPU_EMU_FPU_INT_H
#define TERN_CPU_EMU_FPU_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu/emu/emu.h"

/* MXCSR: exception flags (0-5), DAZ (6), masks (7-12), RC (13-14), FTZ (15). */
#define MXCSR_IE 0x0001u
#define MXCSR_DE 0x0002u
#define MXCSR_ZE 0x0004u
#define MXCSR_OE 0x0008u
#define MXCSR_UE 0x0010u
#define MXCSR_PE 0x0020u
#define MXCSR_FLAGS 0x003fu
#define MXCSR_MASKS 0x1f80u
#define MXCSR_DEFAULT 0x1f80u
/* Bits LDMXCSR/FXRSTOR accept; also what FXSAVE reports as MXCSR_MASK (DAZ supported). */
#define MXCSR_MASK 0xffffu

#define CR0_MP (1ull << 1)
#define CR0_EM (1ull << 2)
#define CR0_TS (1ull << 3)
#define CR0_NE (1ull << 5)
#define CR4_OSFXSR (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)

/* x87 status word bits. */
#define FSW_IE 0x0001u
#define FSW_DE 0x0002u
#define FSW_ZE 0x0004u
#define FSW_OE 0x0008u
#define FSW_UE 0x0010u
#define FSW_PE 0x0020u
#define FSW_SF 0x0040u
#define FSW_ES 0x0080u
#define FSW_C0 0x0100u
#define FSW_C1 0x0200u
#define FSW_C2 0x0400u
#define FSW_TOP 0x3800u
#define FSW_C3 0x4000u
#define FSW_B 0x8000u

/* x87 tag values (two bits per physical register). */
enum { FTAG_VALID = 0, FTAG_ZERO = 1, FTAG_SPECIAL = 2, FTAG_EMPTY = 3 };

/*
 * One SSE operation on values already fetched from the guest: d is the
 * destination register's old value (zero when the destination is memory or a
 * general register), s the source (a register's full value, or the memory /
 * general-register operand zero-extended to 16 bytes, or the immediate for
 * shift-by-immediate forms). The operation leaves its result in d.
 */
struct sse_args {
	emu_xmm d, s;
	uint32_t mxcsr; /* guest MXCSR the operation runs under */
	uint8_t imm;	/* imm8 operand, if any */
	uint8_t ssize;	/* source size in bytes (16 for an XMM register) */
	uint8_t dsize;	/* destination size in bytes (16 for an XMM register) */
	bool smem;	/* source was memory */
	bool dxmm;	/* destination is an XMM register */
};

/*
 * Run the SSE semantic of a ZydisMnemonic on a. Returns the MXCSR exception
 * flags it raised (as if all were masked), or -1 if the mnemonic is not an
 * SSE operation sse.c implements. COMISS-style compares leave ZF/PF/CF
 * (RFLAGS layout) in d.q[0].
 */
int emu_sse_compute(unsigned mnemonic, struct sse_args *a);
emu_handler emu_sse_handler(unsigned mnemonic);
/* #UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS. */
void emu_sse_check(struct emu_cpu *c);

/* x87 helpers shared with the tests: tag of a value, abridged <-> full tag word. */
unsigned emu_fpu_classify(long double v);
uint8_t emu_fpu_ftw_abridge(uint16_t ftw);

#endif
