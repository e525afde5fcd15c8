/*
 * Differential test harness for the x86-64 emulator.
 *
 * The same instruction bytes run twice: natively on the host CPU (user mode,
 * in an RWX page between a generated prologue and epilogue) and in tern's
 * emulator (CPL 3, long mode, identity-style page tables built by the
 * harness). Code and data live at the SAME linear addresses in both worlds,
 * so pointer registers, pushed return addresses and RIP-relative operands
 * compare equal.
 *
 * Usage:
 *	struct emu_harness *h = eh_create();
 *	struct eh_state in, nat, emu;
 *	eh_state_init(h, &in);          // zero GPRs, RSP/RDI/RSI into the buffer
 *	in.gpr[EH_RAX] = 5; ...
 *	eh_run_native(h, code, len, &in, &nat);
 *	eh_run_emu(h, code, len, &in, &emu);
 *	eh_compare(&nat, &emu, &mask, "add rax, rbx");
 *
 * The code under test runs until it falls off its end (the harness appends
 * the sentinel); a fault ends it early and is reported as the vector in
 * eh_state.fault (natively: SIGFPE -> #DE, SIGSEGV -> #GP/#PF, SIGILL -> #UD,
 * SIGTRAP -> #BP/#DB). The code must not branch outside itself.
 */
#ifndef TERN_TESTS_EMU_HARNESS_H
#define TERN_TESTS_EMU_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Data buffer: two pages so cross-page accesses can be tested. */
#define EH_MEM_SIZE 8192
/* Longest code under test. */
#define EH_CODE_MAX 3072

enum { EH_RAX, EH_RCX, EH_RDX, EH_RBX, EH_RSP, EH_RBP, EH_RSI, EH_RDI };

/* Arithmetic flags and DF: the bits of RFLAGS a test may set and compare. */
#define EH_FLAGS_ARITH 0x8d5ull /* CF PF AF ZF SF OF */
#define EH_FLAG_DF 0x400ull

struct eh_state {
	uint64_t gpr[16]; /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
	uint64_t rflags;  /* in: only EH_FLAGS_ARITH | EH_FLAG_DF are used */
	uint8_t fxsave[512] __attribute__((aligned(16))); /* x87/SSE state, FXSAVE layout */
	uint8_t mem[EH_MEM_SIZE];			  /* the data buffer */
	int fault;					  /* out: vector, or -1 */
};

/* What eh_compare() compares. */
struct eh_mask {
	uint64_t flags;	   /* RFLAGS bits compared (e.g. EH_FLAGS_ARITH & ~undefined) */
	uint16_t gpr_skip; /* bit n: do not compare gpr[n] */
	bool xmm;	   /* compare XMM0..15 */
	bool mxcsr;	   /* compare MXCSR */
	bool x87;	   /* compare FCW, FSW, tag word and ST0..7 (80-bit images) */
	bool skip_mem;	   /* do not compare the data buffer */
};

struct emu_harness;

struct emu_harness *eh_create(void);
void eh_destroy(struct emu_harness *h);
/* Linear address of the data buffer, identical natively and in the guest. */
uint64_t eh_mem_addr(const struct emu_harness *h);
/*
 * Default input: GPRs zero except RSP (top of the buffer's second page minus
 * 256), RSI (buffer start), RDI (buffer start + 4096); flags 0; FXSAVE image
 * of FNINIT state with MXCSR 0x1f80; buffer zero.
 */
void eh_state_init(const struct emu_harness *h, struct eh_state *s);
/* Run code natively / in the emulator. Return 0, or -errno on harness failure. */
int eh_run_native(struct emu_harness *h, const void *code, size_t len, const struct eh_state *in,
		  struct eh_state *out);
int eh_run_emu(struct emu_harness *h, const void *code, size_t len, const struct eh_state *in,
	       struct eh_state *out);
/* Default mask: all GPRs, EH_FLAGS_ARITH | DF, memory, no FPU state. */
struct eh_mask eh_mask_default(void);
/* True if equal under mask; otherwise prints the differences, prefixed by label, to stderr. */
bool eh_compare(const struct eh_state *native, const struct eh_state *emu, const struct eh_mask *m,
		const char *label);
/* Both runs and the comparison in one call. */
bool eh_check(struct emu_harness *h, const void *code, size_t len, const struct eh_state *in,
	      const struct eh_mask *m, const char *label);

#endif
