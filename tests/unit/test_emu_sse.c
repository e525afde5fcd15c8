/*
 * SSE/SSE2 semantics of the emulator, differentially against the host CPU.
 *
 * Semantic tests: each instruction (register form) is assembled into a small
 * host code page that loads XMM0, XMM1, RAX and MXCSR, runs it and stores
 * the results; the same bytes are decoded with Zydis and run through
 * emu_sse_compute(). Operands come from a fixed-seed PRNG mixed with special
 * values (NaN, infinities, denormals, -0, integer-conversion edges), under
 * every MXCSR rounding mode with and without DAZ/FTZ.
 *
 * Instruction tests: with the emulator core's differential harness, whole
 * instructions (memory operands, alignment faults, MXCSR exceptions) run
 * natively and in the emulator; they skip while the harness is absent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>
#include <Zydis/Zydis.h>

#include "cpu/emu/fpu_int.h"
#include "unit/emu_fpu_stubs.h"
#include "unit/lib/emu_harness.h"

/* The harness may be absent from this build: its tests then skip. */
#pragma weak eh_create
#pragma weak eh_destroy
#pragma weak eh_state_init
#pragma weak eh_mask_default
#pragma weak eh_check

/* ---- PRNG and operand values ---- */

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

static const uint32_t special_f32[] = {
    0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x3fc00000, 0x40200000, 0x7f800000,
    0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001, 0x7fa00000, 0x00000001, 0x807fffff,
    0x00800000, 0x7f7fffff, 0x4f000000, 0xcf000000, 0x4effffff, 0x5f000000, 0xdf000000,
    0x3f000000, 0xbf000000, 0x4b800000, 0x00400000,
};

static const uint64_t special_f64[] = {
    0x0000000000000000ull, 0x8000000000000000ull, 0x3ff0000000000000ull, 0xbff0000000000000ull,
    0x3ff8000000000000ull, 0x4004000000000000ull, 0x7ff0000000000000ull, 0xfff0000000000000ull,
    0x7ff8000000000000ull, 0xfff8000000000001ull, 0x7ff0000000000001ull, 0x7ff4000000000000ull,
    0x0000000000000001ull, 0x800fffffffffffffull, 0x0010000000000000ull, 0x7fefffffffffffffull,
    0x41e0000000000000ull, 0xc1e0000000000000ull, 0x41dfffffffffffffull, 0x43e0000000000000ull,
    0xc3e0000000000000ull, 0x3fe0000000000000ull, 0xbfe0000000000000ull, 0x41dfffffffc00000ull,
    0x36a0000000000000ull, 0x47efffffe0000000ull,
};

static const uint64_t special_int[] = {
    0,
    1,
    ~0ull,
    0x7fffffff,
    0x80000000,
    0x7fffffffffffffffull,
    0x8000000000000000ull,
    0x00ff00ff00ff00ffull,
    0x8000800080008000ull,
    0x7fff7fff7fff7fffull,
    16,
    15,
    31,
    32,
    63,
    64,
};

/* One 16-byte value: random bits, or lanes of special FP values, or integer edges. */
static void rand_xmm(uint64_t *s, emu_xmm *x)
{
	unsigned kind = rng_next(s) % 5;

	x->q[0] = rng_next(s);
	x->q[1] = rng_next(s);
	switch (kind) {
	case 1:
		for (int k = 0; k < 4; k++)
			if (rng_next(s) & 1)
				x->d[k] = special_f32[rng_next(s) % (sizeof(special_f32) / 4)];
		break;
	case 2:
		for (int k = 0; k < 2; k++)
			if (rng_next(s) & 1)
				x->q[k] = special_f64[rng_next(s) % (sizeof(special_f64) / 8)];
		break;
	case 3:
		for (int k = 0; k < 2; k++)
			x->q[k] = special_int[rng_next(s) % (sizeof(special_int) / 8)];
		break;
	case 4: /* small, nearby values: equal lanes and moderate exponents matter to compares */
		for (int k = 0; k < 4; k++)
			x->d[k] = 0x3f800000 + (uint32_t)(rng_next(s) % 4) * 0x00400000;
		break;
	}
}

/* ---- Host execution of one register-form instruction ---- */

struct jit_ctx {
	emu_xmm x0, x1;	     /* 0, 16 */
	uint32_t mxcsr;	     /* 32 */
	uint32_t pad;	     /* 36 */
	uint64_t rax;	     /* 40 */
	uint64_t rflags;     /* 48 */
	uint32_t host_mxcsr; /* 56 */
};

struct jit {
	uint8_t *page;
};

static const uint8_t jit_pro[] = {
    0xf3, 0x0f, 0x6f, 0x07,	  /* movdqu xmm0, [rdi] */
    0xf3, 0x0f, 0x6f, 0x4f, 0x10, /* movdqu xmm1, [rdi+16] */
    0x0f, 0xae, 0x5f, 0x38,	  /* stmxcsr [rdi+56] */
    0x0f, 0xae, 0x57, 0x20,	  /* ldmxcsr [rdi+32] */
    0x48, 0x8b, 0x47, 0x28,	  /* mov rax, [rdi+40] */
    0x31, 0xc9,			  /* xor ecx, ecx: known flags before the instruction */
};
static const uint8_t jit_epi[] = {
    0x9c, 0x59, 0x48, 0x89, 0x4f, 0x30, /* pushfq; pop rcx; mov [rdi+48], rcx */
    0x0f, 0xae, 0x5f, 0x20,		/* stmxcsr [rdi+32] */
    0x0f, 0xae, 0x57, 0x38,		/* ldmxcsr [rdi+56] */
    0xf3, 0x0f, 0x7f, 0x07,		/* movdqu [rdi], xmm0 */
    0xf3, 0x0f, 0x7f, 0x4f, 0x10,	/* movdqu [rdi+16], xmm1 */
    0x48, 0x89, 0x47, 0x28,		/* mov [rdi+40], rax */
    0xc3,				/* ret */
};

static void jit_run(struct jit *j, const uint8_t *insn, size_t len, struct jit_ctx *ctx)
{
	uint8_t *p = j->page;
	void (*fn)(struct jit_ctx *);

	memcpy(p, jit_pro, sizeof(jit_pro));
	p += sizeof(jit_pro);
	memcpy(p, insn, len);
	p += len;
	memcpy(p, jit_epi, sizeof(jit_epi));
	__builtin___clear_cache((char *)j->page, (char *)p + sizeof(jit_epi));
	*(void **)&fn = j->page;
	fn(ctx);
}

/* ---- Emulated execution of the same bytes through emu_sse_compute() ---- */

static bool is_xmm(ZydisRegister r)
{
	return r >= ZYDIS_REGISTER_XMM0 && r <= ZYDIS_REGISTER_XMM15;
}

/*
 * Decode insn (its operands are XMM0/XMM1/RAX/EAX/imm) and compute it; the
 * results land in ctx like the host run's. Returns the mnemonic.
 */
static unsigned emu_run(const uint8_t *insn, size_t len, struct jit_ctx *ctx)
{
	ZydisDecoder dec;
	ZydisDecodedInstruction in;
	ZydisDecodedOperand op[ZYDIS_MAX_OPERAND_COUNT];
	struct sse_args a;
	int raised;

	ZydisDecoderInit(&dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
	assert_true(ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, insn, len, &in, op)));
	memset(&a, 0, sizeof(a));
	a.mxcsr = ctx->mxcsr;
	for (int n = 1; n < in.operand_count_visible; n++)
		if (op[n].type == ZYDIS_OPERAND_TYPE_IMMEDIATE)
			a.imm = (uint8_t)op[n].imm.value.u;
	if (op[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
		a.s.q[0] = a.imm;
		a.ssize = 1;
	} else if (is_xmm(op[1].reg.value)) {
		a.s = op[1].reg.value == ZYDIS_REGISTER_XMM0 ? ctx->x0 : ctx->x1;
		a.ssize = 16;
	} else {
		a.ssize = (uint8_t)(op[1].size / 8);
		a.s.q[0] = ctx->rax & (a.ssize == 8 ? ~0ull : (1ull << (8 * a.ssize)) - 1);
	}
	if (is_xmm(op[0].reg.value)) {
		a.d = op[0].reg.value == ZYDIS_REGISTER_XMM0 ? ctx->x0 : ctx->x1;
		a.dxmm = true;
		a.dsize = 16;
	} else {
		a.dsize = (uint8_t)(op[0].size / 8);
	}
	raised = emu_sse_compute(in.mnemonic, &a);
	assert_int_not_equal(raised, -1);
	ctx->mxcsr |= (uint32_t)raised;
	if (in.mnemonic == ZYDIS_MNEMONIC_COMISS || in.mnemonic == ZYDIS_MNEMONIC_COMISD ||
	    in.mnemonic == ZYDIS_MNEMONIC_UCOMISS || in.mnemonic == ZYDIS_MNEMONIC_UCOMISD)
		ctx->rflags = a.d.q[0];
	else if (a.dxmm && op[0].reg.value == ZYDIS_REGISTER_XMM0)
		ctx->x0 = a.d;
	else if (a.dxmm)
		ctx->x1 = a.d;
	else if (a.dsize == 4)
		ctx->rax = a.d.d[0];
	else
		ctx->rax = a.d.q[0];
	return in.mnemonic;
}

/* ---- The differential loop ---- */

struct case_insn {
	const char *name;
	uint8_t bytes[8];
	uint8_t len;
	bool imm;   /* last byte is an imm8 the test varies */
	bool flags; /* compare ZF/PF/CF */
	bool fp;    /* vary MXCSR */
};

#define I(n, ...)                                                                                  \
	{                                                                                          \
		n, {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__}), false, false, false            \
	}
#define IMM(n, ...)                                                                                \
	{                                                                                          \
		n, {__VA_ARGS__, 0}, sizeof((uint8_t[]){__VA_ARGS__, 0}), true, false, false       \
	}
#define FP(n, ...)                                                                                 \
	{                                                                                          \
		n, {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__}), false, false, true             \
	}
#define FPIMM(n, ...)                                                                              \
	{                                                                                          \
		n, {__VA_ARGS__, 0}, sizeof((uint8_t[]){__VA_ARGS__, 0}), true, false, true        \
	}
#define FPFL(n, ...)                                                                               \
	{                                                                                          \
		n, {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__}), false, true, true              \
	}

/* ModRM 0xc1: xmm0, xmm1. 0xc0 with a GPR: rax/eax and xmm0. */
static const struct case_insn int_cases[] = {
    I("paddb", 0x66, 0x0f, 0xfc, 0xc1),
    I("paddw", 0x66, 0x0f, 0xfd, 0xc1),
    I("paddd", 0x66, 0x0f, 0xfe, 0xc1),
    I("paddq", 0x66, 0x0f, 0xd4, 0xc1),
    I("psubb", 0x66, 0x0f, 0xf8, 0xc1),
    I("psubw", 0x66, 0x0f, 0xf9, 0xc1),
    I("psubd", 0x66, 0x0f, 0xfa, 0xc1),
    I("psubq", 0x66, 0x0f, 0xfb, 0xc1),
    I("paddsb", 0x66, 0x0f, 0xec, 0xc1),
    I("paddsw", 0x66, 0x0f, 0xed, 0xc1),
    I("psubsb", 0x66, 0x0f, 0xe8, 0xc1),
    I("psubsw", 0x66, 0x0f, 0xe9, 0xc1),
    I("paddusb", 0x66, 0x0f, 0xdc, 0xc1),
    I("paddusw", 0x66, 0x0f, 0xdd, 0xc1),
    I("psubusb", 0x66, 0x0f, 0xd8, 0xc1),
    I("psubusw", 0x66, 0x0f, 0xd9, 0xc1),
    I("pcmpeqb", 0x66, 0x0f, 0x74, 0xc1),
    I("pcmpeqw", 0x66, 0x0f, 0x75, 0xc1),
    I("pcmpeqd", 0x66, 0x0f, 0x76, 0xc1),
    I("pcmpgtb", 0x66, 0x0f, 0x64, 0xc1),
    I("pcmpgtw", 0x66, 0x0f, 0x65, 0xc1),
    I("pcmpgtd", 0x66, 0x0f, 0x66, 0xc1),
    I("pand", 0x66, 0x0f, 0xdb, 0xc1),
    I("pandn", 0x66, 0x0f, 0xdf, 0xc1),
    I("por", 0x66, 0x0f, 0xeb, 0xc1),
    I("pxor", 0x66, 0x0f, 0xef, 0xc1),
    I("andps", 0x0f, 0x54, 0xc1),
    I("andpd", 0x66, 0x0f, 0x54, 0xc1),
    I("andnps", 0x0f, 0x55, 0xc1),
    I("andnpd", 0x66, 0x0f, 0x55, 0xc1),
    I("orps", 0x0f, 0x56, 0xc1),
    I("orpd", 0x66, 0x0f, 0x56, 0xc1),
    I("xorps", 0x0f, 0x57, 0xc1),
    I("xorpd", 0x66, 0x0f, 0x57, 0xc1),
    I("pminub", 0x66, 0x0f, 0xda, 0xc1),
    I("pmaxub", 0x66, 0x0f, 0xde, 0xc1),
    I("pminsw", 0x66, 0x0f, 0xea, 0xc1),
    I("pmaxsw", 0x66, 0x0f, 0xee, 0xc1),
    I("pavgb", 0x66, 0x0f, 0xe0, 0xc1),
    I("pavgw", 0x66, 0x0f, 0xe3, 0xc1),
    I("pmullw", 0x66, 0x0f, 0xd5, 0xc1),
    I("pmulhw", 0x66, 0x0f, 0xe5, 0xc1),
    I("pmulhuw", 0x66, 0x0f, 0xe4, 0xc1),
    I("pmuludq", 0x66, 0x0f, 0xf4, 0xc1),
    I("pmaddwd", 0x66, 0x0f, 0xf5, 0xc1),
    I("psadbw", 0x66, 0x0f, 0xf6, 0xc1),
    I("psllw", 0x66, 0x0f, 0xf1, 0xc1),
    I("pslld", 0x66, 0x0f, 0xf2, 0xc1),
    I("psllq", 0x66, 0x0f, 0xf3, 0xc1),
    I("psrlw", 0x66, 0x0f, 0xd1, 0xc1),
    I("psrld", 0x66, 0x0f, 0xd2, 0xc1),
    I("psrlq", 0x66, 0x0f, 0xd3, 0xc1),
    I("psraw", 0x66, 0x0f, 0xe1, 0xc1),
    I("psrad", 0x66, 0x0f, 0xe2, 0xc1),
    IMM("psllw imm", 0x66, 0x0f, 0x71, 0xf0),
    IMM("pslld imm", 0x66, 0x0f, 0x72, 0xf0),
    IMM("psllq imm", 0x66, 0x0f, 0x73, 0xf0),
    IMM("psrlw imm", 0x66, 0x0f, 0x71, 0xd0),
    IMM("psrld imm", 0x66, 0x0f, 0x72, 0xd0),
    IMM("psrlq imm", 0x66, 0x0f, 0x73, 0xd0),
    IMM("psraw imm", 0x66, 0x0f, 0x71, 0xe0),
    IMM("psrad imm", 0x66, 0x0f, 0x72, 0xe0),
    IMM("pslldq", 0x66, 0x0f, 0x73, 0xf8),
    IMM("psrldq", 0x66, 0x0f, 0x73, 0xd8),
    IMM("pshufd", 0x66, 0x0f, 0x70, 0xc1),
    IMM("pshuflw", 0xf2, 0x0f, 0x70, 0xc1),
    IMM("pshufhw", 0xf3, 0x0f, 0x70, 0xc1),
    IMM("shufps", 0x0f, 0xc6, 0xc1),
    IMM("shufpd", 0x66, 0x0f, 0xc6, 0xc1),
    I("punpcklbw", 0x66, 0x0f, 0x60, 0xc1),
    I("punpcklwd", 0x66, 0x0f, 0x61, 0xc1),
    I("punpckldq", 0x66, 0x0f, 0x62, 0xc1),
    I("punpcklqdq", 0x66, 0x0f, 0x6c, 0xc1),
    I("punpckhbw", 0x66, 0x0f, 0x68, 0xc1),
    I("punpckhwd", 0x66, 0x0f, 0x69, 0xc1),
    I("punpckhdq", 0x66, 0x0f, 0x6a, 0xc1),
    I("punpckhqdq", 0x66, 0x0f, 0x6d, 0xc1),
    I("unpcklps", 0x0f, 0x14, 0xc1),
    I("unpckhps", 0x0f, 0x15, 0xc1),
    I("unpcklpd", 0x66, 0x0f, 0x14, 0xc1),
    I("unpckhpd", 0x66, 0x0f, 0x15, 0xc1),
    I("packsswb", 0x66, 0x0f, 0x63, 0xc1),
    I("packssdw", 0x66, 0x0f, 0x6b, 0xc1),
    I("packuswb", 0x66, 0x0f, 0x67, 0xc1),
    I("pmovmskb eax", 0x66, 0x0f, 0xd7, 0xc1),
    I("movmskps eax", 0x0f, 0x50, 0xc1),
    I("movmskpd eax", 0x66, 0x0f, 0x50, 0xc1),
    IMM("pextrw eax", 0x66, 0x0f, 0xc5, 0xc1),
    IMM("pinsrw eax", 0x66, 0x0f, 0xc4, 0xc0),
    I("movd xmm0, eax", 0x66, 0x0f, 0x6e, 0xc0),
    I("movq xmm0, rax", 0x66, 0x48, 0x0f, 0x6e, 0xc0),
    I("movd eax, xmm0", 0x66, 0x0f, 0x7e, 0xc0),
    I("movq rax, xmm0", 0x66, 0x48, 0x0f, 0x7e, 0xc0),
    I("movq xmm0, xmm1", 0xf3, 0x0f, 0x7e, 0xc1),
    I("movq xmm1, xmm0 (d6)", 0x66, 0x0f, 0xd6, 0xc1),
    I("movss", 0xf3, 0x0f, 0x10, 0xc1),
    I("movsd", 0xf2, 0x0f, 0x10, 0xc1),
    I("movss store form", 0xf3, 0x0f, 0x11, 0xc1),
    I("movaps", 0x0f, 0x28, 0xc1),
    I("movapd", 0x66, 0x0f, 0x28, 0xc1),
    I("movups", 0x0f, 0x10, 0xc1),
    I("movdqa", 0x66, 0x0f, 0x6f, 0xc1),
    I("movdqu", 0xf3, 0x0f, 0x6f, 0xc1),
    I("movdqa store form", 0x66, 0x0f, 0x7f, 0xc1),
    I("movhlps", 0x0f, 0x12, 0xc1),
    I("movlhps", 0x0f, 0x16, 0xc1),
};

static const struct case_insn fp_cases[] = {
    FP("addps", 0x0f, 0x58, 0xc1),
    FP("addpd", 0x66, 0x0f, 0x58, 0xc1),
    FP("addss", 0xf3, 0x0f, 0x58, 0xc1),
    FP("addsd", 0xf2, 0x0f, 0x58, 0xc1),
    FP("subps", 0x0f, 0x5c, 0xc1),
    FP("subpd", 0x66, 0x0f, 0x5c, 0xc1),
    FP("subss", 0xf3, 0x0f, 0x5c, 0xc1),
    FP("subsd", 0xf2, 0x0f, 0x5c, 0xc1),
    FP("mulps", 0x0f, 0x59, 0xc1),
    FP("mulpd", 0x66, 0x0f, 0x59, 0xc1),
    FP("mulss", 0xf3, 0x0f, 0x59, 0xc1),
    FP("mulsd", 0xf2, 0x0f, 0x59, 0xc1),
    FP("divps", 0x0f, 0x5e, 0xc1),
    FP("divpd", 0x66, 0x0f, 0x5e, 0xc1),
    FP("divss", 0xf3, 0x0f, 0x5e, 0xc1),
    FP("divsd", 0xf2, 0x0f, 0x5e, 0xc1),
    FP("minps", 0x0f, 0x5d, 0xc1),
    FP("minpd", 0x66, 0x0f, 0x5d, 0xc1),
    FP("minss", 0xf3, 0x0f, 0x5d, 0xc1),
    FP("minsd", 0xf2, 0x0f, 0x5d, 0xc1),
    FP("maxps", 0x0f, 0x5f, 0xc1),
    FP("maxpd", 0x66, 0x0f, 0x5f, 0xc1),
    FP("maxss", 0xf3, 0x0f, 0x5f, 0xc1),
    FP("maxsd", 0xf2, 0x0f, 0x5f, 0xc1),
    FP("sqrtps", 0x0f, 0x51, 0xc1),
    FP("sqrtpd", 0x66, 0x0f, 0x51, 0xc1),
    FP("sqrtss", 0xf3, 0x0f, 0x51, 0xc1),
    FP("sqrtsd", 0xf2, 0x0f, 0x51, 0xc1),
    FP("rcpps", 0x0f, 0x53, 0xc1),
    FP("rsqrtss", 0xf3, 0x0f, 0x52, 0xc1),
    FPIMM("cmpps", 0x0f, 0xc2, 0xc1),
    FPIMM("cmppd", 0x66, 0x0f, 0xc2, 0xc1),
    FPIMM("cmpss", 0xf3, 0x0f, 0xc2, 0xc1),
    FPIMM("cmpsd", 0xf2, 0x0f, 0xc2, 0xc1),
    FPFL("comiss", 0x0f, 0x2f, 0xc1),
    FPFL("comisd", 0x66, 0x0f, 0x2f, 0xc1),
    FPFL("ucomiss", 0x0f, 0x2e, 0xc1),
    FPFL("ucomisd", 0x66, 0x0f, 0x2e, 0xc1),
    FP("cvtps2pd", 0x0f, 0x5a, 0xc1),
    FP("cvtpd2ps", 0x66, 0x0f, 0x5a, 0xc1),
    FP("cvtss2sd", 0xf3, 0x0f, 0x5a, 0xc1),
    FP("cvtsd2ss", 0xf2, 0x0f, 0x5a, 0xc1),
    FP("cvtdq2ps", 0x0f, 0x5b, 0xc1),
    FP("cvtps2dq", 0x66, 0x0f, 0x5b, 0xc1),
    FP("cvttps2dq", 0xf3, 0x0f, 0x5b, 0xc1),
    FP("cvtdq2pd", 0xf3, 0x0f, 0xe6, 0xc1),
    FP("cvtpd2dq", 0xf2, 0x0f, 0xe6, 0xc1),
    FP("cvttpd2dq", 0x66, 0x0f, 0xe6, 0xc1),
    FP("cvtss2si eax", 0xf3, 0x0f, 0x2d, 0xc1),
    FP("cvtss2si rax", 0xf3, 0x48, 0x0f, 0x2d, 0xc1),
    FP("cvtsd2si eax", 0xf2, 0x0f, 0x2d, 0xc1),
    FP("cvtsd2si rax", 0xf2, 0x48, 0x0f, 0x2d, 0xc1),
    FP("cvttss2si eax", 0xf3, 0x0f, 0x2c, 0xc1),
    FP("cvttss2si rax", 0xf3, 0x48, 0x0f, 0x2c, 0xc1),
    FP("cvttsd2si eax", 0xf2, 0x0f, 0x2c, 0xc1),
    FP("cvttsd2si rax", 0xf2, 0x48, 0x0f, 0x2c, 0xc1),
    FP("cvtsi2ss eax", 0xf3, 0x0f, 0x2a, 0xc0),
    FP("cvtsi2ss rax", 0xf3, 0x48, 0x0f, 0x2a, 0xc0),
    FP("cvtsi2sd eax", 0xf2, 0x0f, 0x2a, 0xc0),
    FP("cvtsi2sd rax", 0xf2, 0x48, 0x0f, 0x2a, 0xc0),
};

static int jit_setup(void **state)
{
	static struct jit j;

	j.page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (j.page == MAP_FAILED)
		return -1;
	*state = &j;
	return 0;
}

static int jit_teardown(void **state)
{
	struct jit *j = *state;

	munmap(j->page, 4096);
	return 0;
}

static bool ctx_equal(const struct jit_ctx *n, const struct jit_ctx *e, bool flags)
{
	if (memcmp(&n->x0, &e->x0, 16) || memcmp(&n->x1, &e->x1, 16) || n->rax != e->rax ||
	    n->mxcsr != e->mxcsr)
		return false;
	return !flags || (n->rflags & 0x45) == (e->rflags & 0x45);
}

static void dump_ctx(const char *who, const struct jit_ctx *x)
{
	fprintf(stderr, "  %s: x0=%016llx:%016llx x1=%016llx:%016llx rax=%llx mxcsr=%x fl=%llx\n",
		who, (unsigned long long)x->x0.q[1], (unsigned long long)x->x0.q[0],
		(unsigned long long)x->x1.q[1], (unsigned long long)x->x1.q[0],
		(unsigned long long)x->rax, x->mxcsr, (unsigned long long)x->rflags);
}

static const uint8_t imm_values[] = {0,	 1,  2,	 3,  4,	   5,	 6,    7,    8,	   15,	 16,  17,
				     31, 32, 63, 64, 0x1b, 0x4e, 0xb1, 0xe4, 0xff, 0x80, 0x39};

static unsigned run_cases(struct jit *j, const struct case_insn *cases, size_t n, unsigned iters)
{
	uint64_t seed = 0x7e57c0de12345678ull;
	unsigned failures = 0;

	for (size_t k = 0; k < n; k++) {
		const struct case_insn *ci = &cases[k];
		unsigned bad = 0;

		for (unsigned it = 0; it < iters && bad < 3; it++) {
			struct jit_ctx in, nat, emu;
			uint8_t insn[8];

			memset(&in, 0, sizeof(in));
			rand_xmm(&seed, &in.x0);
			rand_xmm(&seed, &in.x1);
			in.rax = rng_next(&seed) % 3 == 0 ? special_int[it % 16] : rng_next(&seed);
			in.mxcsr = MXCSR_DEFAULT;
			if (ci->fp) /* rounding mode, DAZ and FTZ vary; all exceptions masked */
				in.mxcsr |= (uint32_t)(it & 3) << 13 | (it & 4 ? 0x40 : 0) |
					    (it & 8 ? 0x8000 : 0);
			memcpy(insn, ci->bytes, ci->len);
			if (ci->imm)
				insn[ci->len - 1] = it < sizeof(imm_values)
							? imm_values[it]
							: (uint8_t)rng_next(&seed);
			nat = in;
			emu = in;
			jit_run(j, insn, ci->len, &nat);
			emu_run(insn, ci->len, &emu);
			if (!ctx_equal(&nat, &emu, ci->flags)) {
				fprintf(stderr, "%s (imm %#x) differs\n", ci->name,
					ci->imm ? insn[ci->len - 1] : 0);
				dump_ctx("in    ", &in);
				dump_ctx("native", &nat);
				dump_ctx("emu   ", &emu);
				bad++;
			}
		}
		failures += bad;
	}
	return failures;
}

static void test_integer_and_moves(void **state)
{
	assert_int_equal(
	    run_cases(*state, int_cases, sizeof(int_cases) / sizeof(int_cases[0]), 400), 0);
}

static void test_floating_point(void **state)
{
	assert_int_equal(run_cases(*state, fp_cases, sizeof(fp_cases) / sizeof(fp_cases[0]), 2000),
			 0);
}

/* ---- Whole instructions through the emulator core (differential harness) ---- */

struct hcase {
	const char *name;
	uint8_t code[40];
	uint8_t len;
};

#define H(n, ...)                                                                                  \
	{                                                                                          \
		n, {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__})                                 \
	}

/* [rsi] is the buffer start (16-aligned), [rdi] the second page. */
static const struct hcase mem_cases[] = {
    H("movdqa load", 0x66, 0x0f, 0x6f, 0x06),
    H("movdqu load unaligned", 0xf3, 0x0f, 0x6f, 0x46, 0x01),
    H("movdqa load misaligned #GP", 0x66, 0x0f, 0x6f, 0x46, 0x08),
    H("movaps store", 0x0f, 0x29, 0x0f),
    H("movaps store misaligned #GP", 0x0f, 0x29, 0x4f, 0x04),
    H("movups store unaligned", 0x0f, 0x11, 0x4f, 0x03),
    H("movq load", 0xf3, 0x0f, 0x7e, 0x06),
    H("movq store", 0x66, 0x0f, 0xd6, 0x0f),
    H("movd load", 0x66, 0x0f, 0x6e, 0x06),
    H("movd store", 0x66, 0x0f, 0x7e, 0x0f),
    H("movq rax, xmm1; movd ecx, xmm2", 0x66, 0x48, 0x0f, 0x7e, 0xc8, 0x66, 0x0f, 0x7e, 0xd1),
    H("movss load", 0xf3, 0x0f, 0x10, 0x06),
    H("movsd load", 0xf2, 0x0f, 0x10, 0x06),
    H("movss store", 0xf3, 0x0f, 0x11, 0x0f),
    H("movsd store", 0xf2, 0x0f, 0x11, 0x0f),
    H("movlps load", 0x0f, 0x12, 0x06),
    H("movhps load", 0x0f, 0x16, 0x06),
    H("movhps store", 0x0f, 0x17, 0x0f),
    H("movlpd store", 0x66, 0x0f, 0x13, 0x0f),
    H("movntdq", 0x66, 0x0f, 0xe7, 0x0f),
    H("movnti 32", 0x0f, 0xc3, 0x07),
    H("movnti 64", 0x48, 0x0f, 0xc3, 0x07),
    H("paddb mem", 0x66, 0x0f, 0xfc, 0x06),
    H("pcmpeqb mem+16", 0x66, 0x0f, 0x74, 0x46, 0x10),
    H("pxor misaligned #GP", 0x66, 0x0f, 0xef, 0x46, 0x04),
    H("pmovmskb eax", 0x66, 0x0f, 0xd7, 0xc0),
    H("pinsrw mem", 0x66, 0x0f, 0xc4, 0x06, 0x03),
    H("pextrw ecx", 0x66, 0x0f, 0xc5, 0xc9, 0x05),
    H("pshufd mem", 0x66, 0x0f, 0x70, 0x06, 0x1b),
    H("psrldq; pslldq", 0x66, 0x0f, 0x73, 0xd8, 0x05, 0x66, 0x0f, 0x73, 0xf9, 0x03),
    H("addss mem", 0xf3, 0x0f, 0x58, 0x06),
    H("addpd mem", 0x66, 0x0f, 0x58, 0x06),
    H("cvtsi2sd m64", 0xf2, 0x48, 0x0f, 0x2a, 0x06),
    H("cvtsi2ss m32", 0xf3, 0x0f, 0x2a, 0x06),
    H("cvttsd2si rax, m64", 0xf2, 0x48, 0x0f, 0x2c, 0x06),
    H("cvtss2si ecx, xmm3", 0xf3, 0x0f, 0x2d, 0xcb),
    H("comisd mem", 0x66, 0x0f, 0x2f, 0x06),
    H("ucomiss xmm0, xmm1", 0x0f, 0x2e, 0xc1),
    H("stmxcsr", 0x0f, 0xae, 0x1f),
    H("ldmxcsr; addps; stmxcsr", 0x0f, 0xae, 0x56, 0x40, 0x0f, 0x58, 0xc1, 0x0f, 0xae, 0x1f),
    H("ldmxcsr reserved #GP", 0x0f, 0xae, 0x56, 0x44),
    /* FXSAVE: the host's MXCSR_MASK, FOP, FIP and FDP are model-specific; clear them. */
    H("fxsave64", 0x48, 0x0f, 0xae, 0x07, 0xc7, 0x47, 0x1c, 0, 0, 0, 0, 0x66, 0xc7, 0x47, 0x06, 0,
      0, 0x48, 0xc7, 0x47, 0x08, 0, 0, 0, 0, 0x48, 0xc7, 0x47, 0x10, 0, 0, 0, 0),
    H("fxsave64 misaligned #GP", 0x48, 0x0f, 0xae, 0x47, 0x08),
    H("fxrstor64", 0x48, 0x0f, 0xae, 0x8e, 0x00, 0x02, 0x00, 0x00),
    H("fxrstor64 bad mxcsr #GP", 0x48, 0x0f, 0xae, 0x8e, 0x00, 0x04, 0x00, 0x00),
};

static void harness_input(struct emu_harness *h, uint64_t *seed, struct eh_state *in)
{
	uint32_t mx;

	eh_state_init(h, in);
	for (int k = 0; k < 16; k++)
		rand_xmm(seed, (emu_xmm *)(in->fxsave + 160 + 16 * k));
	for (size_t k = 0; k < 512; k += 16)
		rand_xmm(seed, (emu_xmm *)(in->mem + k));
	in->gpr[EH_RAX] = rng_next(seed);
	in->rflags = rng_next(seed) & EH_FLAGS_ARITH;
	/* [rsi+0x40]: an MXCSR for LDMXCSR; [rsi+0x44]: one with a reserved bit. */
	mx = MXCSR_DEFAULT | ((uint32_t)(rng_next(seed) & 3) << 13);
	memcpy(in->mem + 0x40, &mx, 4);
	mx |= 0x10000;
	memcpy(in->mem + 0x44, &mx, 4);
	/* [rsi+0x200]: a valid FXSAVE image; [rsi+0x400]: the same with a bad MXCSR. */
	memcpy(in->mem + 0x200, in->fxsave, 512);
	for (size_t k = 0; k < 256; k++)
		in->mem[0x200 + 160 + k] = (uint8_t)rng_next(seed);
	mx = MXCSR_DEFAULT | 0x6000;
	memcpy(in->mem + 0x200 + 24, &mx, 4);
	memcpy(in->mem + 0x400, in->mem + 0x200, 512);
	mx = 0x80001f80;
	memcpy(in->mem + 0x400 + 24, &mx, 4);
}

static void test_harness_instructions(void **state)
{
	struct emu_harness *h;
	uint64_t seed = 0x4a11e55ull;
	unsigned failures = 0;

	if (!eh_create) {
		printf("differential harness not linked in\n");
		skip();
	}
	h = eh_create();
	assert_non_null(h);
	for (size_t k = 0; k < sizeof(mem_cases) / sizeof(mem_cases[0]); k++) {
		const struct hcase *hc = &mem_cases[k];

		for (int it = 0; it < 40; it++) {
			struct eh_state in;
			struct eh_mask m = eh_mask_default();

			m.xmm = true;
			m.mxcsr = true;
			m.x87 = true;
			harness_input(h, &seed, &in);
			if (!eh_check(h, hc->code, hc->len, &in, &m, hc->name)) {
				failures++;
				break;
			}
		}
	}
	eh_destroy(h);
	assert_int_equal(failures, 0);
}

/* Unknown mnemonics are refused, so decode.c falls through to #UD. */
static void test_unknown_mnemonic(void **state)
{
	struct sse_args a;

	memset(&a, 0, sizeof(a));
	assert_int_equal(emu_sse_compute(ZYDIS_MNEMONIC_ADD, &a), -1);
	assert_null(emu_sse_handler(ZYDIS_MNEMONIC_ADD));
	assert_non_null(emu_sse_handler(ZYDIS_MNEMONIC_PXOR));
	assert_non_null(emu_fpu_handler(ZYDIS_MNEMONIC_PXOR));
	assert_non_null(emu_fpu_handler(ZYDIS_MNEMONIC_FXSAVE64));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_integer_and_moves),
	    cmocka_unit_test(test_floating_point),
	    cmocka_unit_test(test_unknown_mnemonic),
	    cmocka_unit_test(test_harness_instructions),
	};

	return cmocka_run_group_tests(tests, jit_setup, jit_teardown);
}
