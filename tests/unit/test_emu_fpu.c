/*
 * x87 and FXSAVE state of the emulator, differentially against the host CPU.
 *
 * State: the reset state and FXSAVE images must match what the host's own
 * FNINIT/FXSAVE produce, and FXSAVE images round-trip.
 *
 * x87 instructions (register forms): a random x87 state (values incl. NaNs,
 * infinities, denormals, unnormals, empty registers; every rounding and
 * precision mode; masked and unmasked exceptions) is loaded into the host with
 * FXRSTOR, the instruction runs, FXSAVE captures the result; the emulator
 * runs the same bytes (decoded with Zydis) on the same image. FCW, FSW, the
 * tag word and ST0..7 must be equal.
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
#pragma weak eh_run_native
#pragma weak eh_run_emu
#pragma weak eh_compare

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

struct fx_img {
	uint8_t b[512] __attribute__((aligned(16)));
};

/* ---- Host side ---- */

struct jit {
	uint8_t *page;
	struct fx_img *host; /* the test's own FPU state while guest code runs */
};

static const uint8_t jit_pro[] = {
    0x48, 0x0f, 0xae, 0x06, /* fxsave64 [rsi] */
    0x48, 0x0f, 0xae, 0x0f, /* fxrstor64 [rdi] */
};
static const uint8_t jit_epi[] = {
    0x48, 0x0f, 0xae, 0x07, /* fxsave64 [rdi] */
    0x48, 0x0f, 0xae, 0x0e, /* fxrstor64 [rsi] */
    0xc3,		    /* ret */
};

static void jit_run(struct jit *j, const uint8_t *insn, size_t len, struct fx_img *img)
{
	uint8_t *p = j->page;
	void (*fn)(struct fx_img *, struct fx_img *);

	memcpy(p, jit_pro, sizeof(jit_pro));
	p += sizeof(jit_pro);
	memcpy(p, insn, len);
	p += len;
	memcpy(p, jit_epi, sizeof(jit_epi));
	__builtin___clear_cache((char *)j->page, (char *)p + sizeof(jit_epi));
	*(void **)&fn = j->page;
	fn(img, j->host);
}

static int jit_setup(void **state)
{
	static struct jit j;
	static struct fx_img host;

	j.page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (j.page == MAP_FAILED)
		return -1;
	j.host = &host;
	*state = &j;
	return 0;
}

static int jit_teardown(void **state)
{
	struct jit *j = *state;

	munmap(j->page, 4096);
	return 0;
}

static struct emu_cpu *new_cpu(void)
{
	struct emu_cpu *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	c->cr0 = 0x80000033; /* PG NE ET MP PE */
	c->cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT;
	emu_fpu_reset(c);
	return c;
}

/* ---- State ---- */

static void dump_img(const char *who, const uint8_t *x)
{
	fprintf(stderr, "  %s fcw=%04x fsw=%04x ftw=%02x mxcsr=%08x st:", who, x[0] | x[1] << 8,
		x[2] | x[3] << 8, x[4], x[24] | x[25] << 8 | x[26] << 16 | (unsigned)x[27] << 24);
	for (int i = 0; i < 8; i++) {
		fprintf(stderr, " ");
		for (int n = 9; n >= 0; n--)
			fprintf(stderr, "%02x", x[32 + 16 * i + n]);
	}
	fprintf(stderr, "\n");
}

/* Compare the architectural parts of two FXSAVE images (no FIP/FDP/FOP, no MXCSR_MASK). */
static bool fx_equal(const uint8_t *a, const uint8_t *b, bool xmm, const char *label)
{
	bool ok = !memcmp(a, b, 5) && !memcmp(a + 24, b + 24, 4);

	for (int i = 0; i < 8; i++)
		ok = ok && !memcmp(a + 32 + 16 * i, b + 32 + 16 * i, 10);
	if (xmm)
		ok = ok && !memcmp(a + 160, b + 160, 256);
	if (!ok) {
		fprintf(stderr, "%s:\n", label);
		dump_img("nat", a);
		dump_img("emu", b);
	}
	return ok;
}

static void test_reset_matches_fninit(void **state)
{
	struct fx_img nat, emu;
	struct emu_cpu *c = new_cpu();
	uint32_t mx = MXCSR_DEFAULT, host_mx;
	struct fx_img saved;

	memset(&nat, 0, sizeof(nat));
	__asm__ volatile("fxsave64 %[s]\n\tstmxcsr %[hm]\n\tfninit\n\tldmxcsr %[m]\n\t"
			 "pxor %%xmm0, %%xmm0\n\tfxsave64 %[n]\n\tfxrstor64 %[s]\n\tldmxcsr %[hm]"
			 : [n] "=m"(nat), [s] "=m"(saved), [hm] "=m"(host_mx)
			 : [m] "m"(mx)
			 : "xmm0", "memory");
	emu_fpu_to_fxsave(c, emu.b);
	/* Only XMM0 was cleared natively; compare the x87 part and MXCSR. */
	assert_true(fx_equal(nat.b, emu.b, false, "reset"));
	assert_int_equal(c->fpu.mxcsr, 0x1f80);
	assert_int_equal(c->fpu.fcw, 0x37f);
	assert_int_equal(c->fpu.ftw, 0xffff);
	free(c);
}

static const uint8_t special_ld[][10] = {
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f},			  /* 1.0 */
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0xbf},			  /* -1.0 */
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0},				  /* +0 */
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80},				  /* -0 */
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x7f},			  /* +inf */
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0xff},			  /* -inf */
    {0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0x7f},			  /* QNaN */
    {1, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x7f},			  /* SNaN */
    {1, 0, 0, 0, 0, 0, 0, 0, 0, 0},				  /* denormal */
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0},				  /* pseudo-denormal */
    {0, 0, 0, 0, 0, 0, 0, 0x40, 0xff, 0x3f},			  /* unnormal */
    {0x35, 0xc2, 0x68, 0x21, 0xa2, 0xda, 0x0f, 0xc9, 0x00, 0x40}, /* pi */
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0x3e, 0x40},			  /* 2^63 */
    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0x7f}, /* max */
    {0, 0, 0, 0, 0, 0, 0, 0x80, 0x01, 0x00},			  /* min normal */
    {0, 0, 0, 0, 0, 0, 0, 0xc0, 0x00, 0x40},			  /* 3.0 */
    {0, 0, 0, 0, 0, 0, 0, 0xa0, 0xfe, 0x3f},			  /* 0.625 */
};

/* A random but plausible x87 state in an FXSAVE image. */
static void rand_state(uint64_t *s, struct fx_img *img, bool unmasked_ok)
{
	static const uint16_t pcs[] = {0x000, 0x200, 0x300, 0x300};
	uint16_t fcw = 0x0040 | 0x3f | pcs[rng_next(s) & 3] | (uint16_t)((rng_next(s) & 3) << 10);
	unsigned top = rng_next(s) & 7;
	uint16_t fsw = (uint16_t)(top << 11);
	unsigned depth = rng_next(s) % 9; /* registers in use from ST(0) */

	if (unmasked_ok && rng_next(s) % 4 == 0)
		fcw &= (uint16_t) ~(rng_next(s) & 0x3f);
	if (rng_next(s) & 1) /* sometimes a hole in the stack */
		depth = 8;
	memset(img, 0, sizeof(*img));
	memcpy(img->b, &fcw, 2);
	memcpy(img->b + 2, &fsw, 2);
	for (unsigned i = 0; i < 8; i++) {
		uint8_t *r = img->b + 32 + 16 * i;
		unsigned phys = (top + i) & 7;

		if (i < depth && !(depth == 8 && rng_next(s) % 6 == 0))
			img->b[4] |= (uint8_t)(1u << phys);
		if (rng_next(s) % 3 == 0) {
			memcpy(r, special_ld[rng_next(s) % (sizeof(special_ld) / 10)], 10);
		} else {
			/* Normal numbers of moderate size, random sign. */
			uint64_t m = rng_next(s) | (1ull << 63);
			uint16_t e = (uint16_t)(0x3fff - 70 + rng_next(s) % 140) |
				     (rng_next(s) & 1 ? 0x8000 : 0);

			memcpy(r, &m, 8);
			memcpy(r + 8, &e, 2);
		}
	}
	{
		uint32_t mx = MXCSR_DEFAULT;

		memcpy(img->b + 24, &mx, 4);
	}
}

static void test_fxsave_roundtrip(void **state)
{
	uint64_t seed = 0x5eed0f9u;
	struct emu_cpu *c = new_cpu();

	for (int it = 0; it < 200; it++) {
		struct fx_img in, out;

		rand_state(&seed, &in, true);
		for (int k = 0; k < 32; k++)
			in.b[160 + rng_next(&seed) % 256] = (uint8_t)rng_next(&seed);
		emu_fpu_from_fxsave(c, in.b);
		emu_fpu_to_fxsave(c, out.b);
		assert_true(fx_equal(in.b, out.b, true, "roundtrip"));
		/* The full tag word marks exactly the registers the abridged one does. */
		assert_int_equal(emu_fpu_ftw_abridge(c->fpu.ftw), in.b[4]);
	}
	free(c);
}

/* The tag the host computes for each kind of value, seen through FNSTENV's full tag word. */
static void test_classify_matches_host(void **state)
{
	for (size_t k = 0; k < sizeof(special_ld) / 10; k++) {
		long double v = 0;
		uint8_t env[28];
		uint16_t ftw;

		memcpy(&v, special_ld[k], 10);
		__asm__ volatile("fninit\n\tfldt %[v]\n\tfnstenv %[e]\n\tfninit"
				 : [e] "=m"(env)
				 : [v] "m"(v));
		memcpy(&ftw, env + 8, 2);
		/* ST(0) is physical register 7 after one push from TOP 0. */
		assert_int_equal(emu_fpu_classify(v), (ftw >> 14) & 3);
	}
}

/* ---- x87 register-form instructions ---- */

static void to_insn(const uint8_t *bytes, size_t len, struct emu_insn *i)
{
	ZydisDecoder dec;
	ZydisDecodedInstruction in;
	ZydisDecodedOperand op[ZYDIS_MAX_OPERAND_COUNT];

	ZydisDecoderInit(&dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
	assert_true(ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, bytes, len, &in, op)));
	memset(i, 0, sizeof(*i));
	i->mnemonic = in.mnemonic;
	i->len = in.length;
	i->nops = in.operand_count_visible;
	for (int n = 0; n < i->nops; n++) {
		assert_int_equal(op[n].type, ZYDIS_OPERAND_TYPE_REGISTER);
		assert_true(op[n].reg.value >= ZYDIS_REGISTER_ST0 &&
			    op[n].reg.value <= ZYDIS_REGISTER_ST7);
		i->op[n].kind = EMU_OP_REG;
		i->op[n].reg = (uint8_t)(EMU_R_ST0 + op[n].reg.value - ZYDIS_REGISTER_ST0);
		i->op[n].size = 10;
	}
}

/* Returns the fault vector, or -1. */
static int emu_step(struct emu_cpu *c, const uint8_t *bytes, size_t len)
{
	struct emu_insn i;
	emu_handler h;

	to_insn(bytes, len, &i);
	h = emu_fpu_handler(i.mnemonic);
	assert_non_null(h);
	if (setjmp(c->jmp))
		return c->fault_vec;
	h(c, &i);
	return -1;
}

struct x87_case {
	uint8_t b0, b1;
	bool sti; /* low three bits of b1 select ST(i): test all eight */
};

static const struct x87_case x87_cases[] = {
    {0xd8, 0xc0, true},	 {0xd8, 0xc8, true},  {0xd8, 0xd0, true},  {0xd8, 0xd8, true},
    {0xd8, 0xe0, true},	 {0xd8, 0xe8, true},  {0xd8, 0xf0, true},  {0xd8, 0xf8, true},
    {0xd9, 0xc0, true},	 {0xd9, 0xc8, true},  {0xd9, 0xd0, false}, {0xd9, 0xe0, false},
    {0xd9, 0xe1, false}, {0xd9, 0xe4, false}, {0xd9, 0xe5, false}, {0xd9, 0xe8, false},
    {0xd9, 0xe9, false}, {0xd9, 0xea, false}, {0xd9, 0xeb, false}, {0xd9, 0xec, false},
    {0xd9, 0xed, false}, {0xd9, 0xee, false}, {0xd9, 0xf0, false}, {0xd9, 0xf1, false},
    {0xd9, 0xf2, false}, {0xd9, 0xf3, false}, {0xd9, 0xf4, false}, {0xd9, 0xf5, false},
    {0xd9, 0xf6, false}, {0xd9, 0xf7, false}, {0xd9, 0xf8, false}, {0xd9, 0xf9, false},
    {0xd9, 0xfa, false}, {0xd9, 0xfb, false}, {0xd9, 0xfc, false}, {0xd9, 0xfd, false},
    {0xd9, 0xfe, false}, {0xd9, 0xff, false}, {0xda, 0xe9, false}, {0xdb, 0xe2, false},
    {0xdb, 0xe3, false}, {0xdc, 0xc0, true},  {0xdc, 0xc8, true},  {0xdc, 0xe0, true},
    {0xdc, 0xe8, true},	 {0xdc, 0xf0, true},  {0xdc, 0xf8, true},  {0xdd, 0xc0, true},
    {0xdd, 0xd0, true},	 {0xdd, 0xd8, true},  {0xdd, 0xe0, true},  {0xdd, 0xe8, true},
    {0xde, 0xc0, true},	 {0xde, 0xc8, true},  {0xde, 0xd9, false}, {0xde, 0xe0, true},
    {0xde, 0xe8, true},	 {0xde, 0xf0, true},  {0xde, 0xf8, true},
};

/* Condition codes the SDM leaves undefined after the instruction; not compared. */
static uint16_t undefined_cc(unsigned b0, unsigned b1)
{
	if (b0 == 0xd9 && (b1 == 0xe4 || b1 == 0xe5)) /* FTST/FXAM define all */
		return 0;
	if ((b0 == 0xd8 && (b1 & 0xf0) == 0xd0) || (b0 == 0xdd && (b1 & 0xf0) == 0xe0) ||
	    (b0 == 0xda && b1 == 0xe9) || (b0 == 0xde && b1 == 0xd9)) /* compares */
		return 0;
	if (b0 == 0xd9 && (b1 == 0xf5 || b1 == 0xf8)) /* FPREM/FPREM1 define all */
		return 0;
	if (b0 == 0xd9 && (b1 == 0xf2 || b1 == 0xfb || b1 == 0xfe || b1 == 0xff))
		return FSW_C0 | FSW_C3; /* trig: C1, C2 defined */
	if (b0 == 0xdb)
		return 0; /* FNCLEX leaves them, FNINIT clears them */
	return FSW_C0 | FSW_C2 | FSW_C3;
}

static void test_x87_register_forms(void **state)
{
	struct jit *j = *state;
	uint64_t seed = 0x87878787u;
	struct emu_cpu *c = new_cpu();
	unsigned failures = 0;

	for (size_t k = 0; k < sizeof(x87_cases) / sizeof(x87_cases[0]); k++) {
		const struct x87_case *xc = &x87_cases[k];
		unsigned bad = 0;

		for (int it = 0; it < 600 && bad < 3; it++) {
			uint8_t insn[2] = {xc->b0, (uint8_t)(xc->b1 + (xc->sti ? it & 7 : 0))};
			struct fx_img in, nat, emu;
			uint16_t skip = undefined_cc(insn[0], insn[1]);
			int fault;

			rand_state(&seed, &in, true);
			nat = in;
			jit_run(j, insn, 2, &nat);
			emu_fpu_from_fxsave(c, in.b);
			fault = emu_step(c, insn, 2);
			emu_fpu_to_fxsave(c, emu.b);
			nat.b[2] &= (uint8_t)~skip;
			nat.b[3] &= (uint8_t) ~(skip >> 8);
			emu.b[2] &= (uint8_t)~skip;
			emu.b[3] &= (uint8_t) ~(skip >> 8);
			if (fault != -1 || !fx_equal(nat.b, emu.b, false, "x87")) {
				fprintf(stderr, "%02x %02x (fault %d) differs\n", insn[0], insn[1],
					fault);
				dump_img("in ", in.b);
				bad++;
			}
		}
		failures += bad;
	}
	free(c);
	assert_int_equal(failures, 0);
}

/* ---- Memory forms and status/control stores through the emulator core ---- */

struct hcase {
	const char *name;
	uint8_t code[16];
	uint8_t len;
};

#define H(n, ...)                                                                                  \
	{                                                                                          \
		n, {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__})                                 \
	}

/* [rsi]: operands (random, with special values), [rdi]: stores. */
static const struct hcase x87_mem_cases[] = {
    H("fld m32", 0xd9, 0x06),
    H("fld m64", 0xdd, 0x06),
    H("fld m80", 0xdb, 0x2e),
    H("fild m16", 0xdf, 0x06),
    H("fild m32", 0xdb, 0x06),
    H("fild m64", 0xdf, 0x2e),
    H("fst m32", 0xd9, 0x17),
    H("fstp m64", 0xdd, 0x1f),
    H("fstp m80", 0xdb, 0x3f),
    H("fist m16", 0xdf, 0x17),
    H("fistp m32", 0xdb, 0x1f),
    H("fistp m64", 0xdf, 0x3f),
    H("fisttp m16", 0xdf, 0x0f),
    H("fisttp m32", 0xdb, 0x0f),
    H("fisttp m64", 0xdd, 0x0f),
    H("fadd m32", 0xd8, 0x06),
    H("fmul m64", 0xdc, 0x0e),
    H("fsub m32", 0xd8, 0x26),
    H("fsubr m64", 0xdc, 0x2e),
    H("fdiv m32", 0xd8, 0x36),
    H("fdivr m64", 0xdc, 0x3e),
    H("fiadd m16", 0xde, 0x06),
    H("fimul m32", 0xda, 0x0e),
    H("fisub m16", 0xde, 0x26),
    H("fidivr m32", 0xda, 0x3e),
    H("fcom m32", 0xd8, 0x16),
    H("fcomp m64", 0xdc, 0x1e),
    H("ficom m16", 0xde, 0x16),
    H("ficomp m32", 0xda, 0x1e),
    H("fnstsw ax", 0xdf, 0xe0),
    H("fnstsw m16", 0xdd, 0x3f),
    H("fnstcw m16", 0xd9, 0x3f),
    H("fldcw; fld1; fld m64; faddp", 0xd9, 0x6e, 0x40, 0xd9, 0xe8, 0xdd, 0x06, 0xde, 0xc1),
    H("fcomi st0, st1", 0xdb, 0xf1),
    H("fucomip st0, st2", 0xdf, 0xea),
    H("fcmovb st0, st1", 0xda, 0xc1),
    H("fcmovnbe st0, st3", 0xdb, 0xd3),
    H("fcmovu st0, st1", 0xda, 0xd9),
    H("fnstenv", 0xd9, 0x37),
    H("fldenv", 0xd9, 0x26),
    H("emms", 0x0f, 0x77),
};

/* Random operands: doubles/floats/ints, some of them special values. */
static void fill_operands(uint64_t *seed, uint8_t *p)
{
	static const uint64_t f64[] = {0x7ff8000000000000ull, 0x7ff0000000000001ull,
				       0xfff0000000000000ull, 0x0000000000000001ull,
				       0x8000000000000000ull, 0x43e0000000000000ull};
	uint64_t v;

	switch (rng_next(seed) % 4) {
	case 0:
		v = f64[rng_next(seed) % 6];
		break;
	case 1: /* a double of moderate size */
		v = (rng_next(seed) & 0x800fffffffffffffull) | (0x3f0ull + rng_next(seed) % 0x40)
								   << 52;
		break;
	case 2:
		v = rng_next(seed) % 100000;
		break;
	default:
		v = rng_next(seed);
		break;
	}
	memcpy(p, &v, 8);
	v = rng_next(seed) & 0x3fff;
	memcpy(p + 8, &v, 2);
}

/*
 * Native run, then the emulator, then compare. The host's x87 stack and
 * MXCSR are reset between the two: the native run leaves the guest's x87
 * registers on the host, where the compiler expects an empty stack.
 */
static bool check_pair(struct emu_harness *h, const struct hcase *hc, const struct eh_state *in,
		       const struct eh_mask *m)
{
	static struct eh_state nat, emu;
	uint32_t mx = MXCSR_DEFAULT;

	assert_int_equal(eh_run_native(h, hc->code, hc->len, in, &nat), 0);
	__asm__ volatile("fninit\n\tldmxcsr %0" : : "m"(mx));
	assert_int_equal(eh_run_emu(h, hc->code, hc->len, in, &emu), 0);
	if (eh_compare(&nat, &emu, m, hc->name))
		return true;
	dump_img("in ", in->fxsave);
	dump_img("nat", nat.fxsave);
	dump_img("emu", emu.fxsave);
	return false;
}

static void test_harness_x87(void **state)
{
	struct emu_harness *h;
	uint64_t seed = 0xf00d87ull;
	unsigned failures = 0;

	if (!eh_create) {
		printf("differential harness not linked in\n");
		skip();
	}
	h = eh_create();
	assert_non_null(h);
	for (size_t k = 0; k < sizeof(x87_mem_cases) / sizeof(x87_mem_cases[0]); k++) {
		const struct hcase *hc = &x87_mem_cases[k];

		for (int it = 0; it < 100; it++) {
			struct eh_state in;
			struct eh_mask m = eh_mask_default();
			struct fx_img img;
			uint16_t cw;

			eh_state_init(h, &in);
			/* Masked exceptions only: an unmasked one would be #MF at the next insn. */
			rand_state(&seed, &img, false);
			memcpy(in.fxsave, img.b, 160);
			fill_operands(&seed, in.mem);
			/* [rsi+0x40]: a control word for FLDCW; [rsi]: also an FLDENV image. */
			cw = (uint16_t)(0x037f | (rng_next(&seed) & 0xf00));
			memcpy(in.mem + 0x40, &cw, 2);
			in.rflags = rng_next(&seed) & EH_FLAGS_ARITH;
			m.x87 = true;
			if (hc->code[0] == 0xd9 && hc->code[1] == 0x26) {
				/* FLDENV: a valid environment with masked exceptions. */
				uint32_t env[7] = {
				    0xffff037f, 0xffff0000 | (rng_next(&seed) & 0x3f00),
				    0xffff0000 | (uint32_t)(rng_next(&seed) & 0xffff)};

				memcpy(in.mem, env, sizeof(env));
			}
			if (hc->code[0] == 0xd9 && hc->code[1] == 0x37)
				m.skip_mem = true; /* FIP/FDP/FOP are model-specific */
			if (!check_pair(h, hc, &in, &m)) {
				failures++;
				break;
			}
		}
	}
	eh_destroy(h);
	assert_int_equal(failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_reset_matches_fninit),  cmocka_unit_test(test_fxsave_roundtrip),
	    cmocka_unit_test(test_classify_matches_host), cmocka_unit_test(test_x87_register_forms),
	    cmocka_unit_test(test_harness_x87),
	};

	return cmocka_run_group_tests(tests, jit_setup, jit_teardown);
}
