/*
 * x87 FPU state and instructions, MXCSR, FXSAVE/FXRSTOR for the emulator.
 *
 * The x87 registers are host long doubles: on an x86-64 host that is the
 * same 80-bit extended format, so loads and stores of m80 are byte copies
 * and arithmetic runs on the host's x87 with the guest's control word
 * (precision, rounding) loaded and every exception masked; the flags the host
 * raises become the guest's status word.
 */
#include <string.h>

#include <Zydis/Zydis.h>

#include "cpu/emu/fpu_int.h"

/* ---- Tags and state ---- */

static unsigned fpu_top(const struct emu_fpu *f)
{
	return (f->fsw >> 11) & 7;
}

unsigned emu_fpu_classify(long double v)
{
	uint8_t raw[10];
	uint64_t mant;
	uint16_t exp;

	memcpy(raw, &v, 10);
	memcpy(&mant, raw, 8);
	memcpy(&exp, raw + 8, 2);
	exp &= 0x7fff;
	if (exp == 0)
		return mant == 0 ? FTAG_ZERO : FTAG_SPECIAL;
	if (exp == 0x7fff || !(mant >> 63))
		return FTAG_SPECIAL; /* inf, NaN, unnormal */
	return FTAG_VALID;
}

uint8_t emu_fpu_ftw_abridge(uint16_t ftw)
{
	uint8_t t = 0;

	for (int r = 0; r < 8; r++)
		if (((ftw >> (2 * r)) & 3) != FTAG_EMPTY)
			t |= 1u << r;
	return t;
}

static void fpu_finit(struct emu_fpu *f)
{
	f->fcw = 0x037f;
	f->fsw = 0;
	f->ftw = 0xffff;
	f->fop = 0;
	f->fip = 0;
	f->fdp = 0;
}

void emu_fpu_reset(struct emu_cpu *c)
{
	struct emu_fpu *f = &c->fpu;

	memset(f, 0, sizeof(*f));
	fpu_finit(f);
	f->mxcsr = MXCSR_DEFAULT;
}

/* 64-bit FXSAVE layout; bytes 416..511 are left as the caller had them. */
static void fxsave_image(const struct emu_fpu *f, uint8_t out[512])
{
	uint8_t ftw = emu_fpu_ftw_abridge(f->ftw);
	uint32_t mask = MXCSR_MASK;
	unsigned top = fpu_top(f);

	memset(out, 0, 416);
	memcpy(out + 0, &f->fcw, 2);
	memcpy(out + 2, &f->fsw, 2);
	out[4] = ftw;
	memcpy(out + 6, &f->fop, 2);
	memcpy(out + 8, &f->fip, 8);
	memcpy(out + 16, &f->fdp, 8);
	memcpy(out + 24, &f->mxcsr, 4);
	memcpy(out + 28, &mask, 4);
	/* Registers in stack order: ST(0) first. */
	for (unsigned i = 0; i < 8; i++)
		memcpy(out + 32 + 16 * i, &f->st[(top + i) & 7], 10);
	memcpy(out + 160, f->xmm, 256);
}

void emu_fpu_to_fxsave(const struct emu_cpu *c, uint8_t out[512])
{
	memset(out + 416, 0, 96);
	fxsave_image(&c->fpu, out);
}

/* Full tag word from the abridged one: non-empty registers are tagged by their contents. */
static uint16_t ftw_expand(const struct emu_fpu *f, uint8_t abridged)
{
	uint16_t ftw = 0;

	for (int r = 0; r < 8; r++) {
		unsigned tag = (abridged >> r) & 1 ? emu_fpu_classify(f->st[r]) : FTAG_EMPTY;

		ftw |= (uint16_t)(tag << (2 * r));
	}
	return ftw;
}

/* Load an image whose MXCSR was already checked (or is trusted, for set_state). */
static void fxrstor_image(struct emu_fpu *f, const uint8_t in[512])
{
	unsigned top;

	memcpy(&f->fcw, in + 0, 2);
	memcpy(&f->fsw, in + 2, 2);
	memcpy(&f->fop, in + 6, 2);
	f->fop &= 0x7ff;
	memcpy(&f->fip, in + 8, 8);
	memcpy(&f->fdp, in + 16, 8);
	memcpy(&f->mxcsr, in + 24, 4);
	f->mxcsr &= MXCSR_MASK;
	top = fpu_top(f);
	for (unsigned i = 0; i < 8; i++) {
		long double v = 0;

		memcpy(&v, in + 32 + 16 * i, 10);
		f->st[(top + i) & 7] = v;
	}
	f->ftw = ftw_expand(f, in[4]);
	memcpy(f->xmm, in + 160, 256);
}

void emu_fpu_from_fxsave(struct emu_cpu *c, const uint8_t in[512])
{
	fxrstor_image(&c->fpu, in);
}

/* ---- Availability checks ---- */

/* x87 instructions: #NM when CR0.EM or CR0.TS is set. */
static void fpu_check(struct emu_cpu *c)
{
	if (c->cr0 & (CR0_EM | CR0_TS))
		emu_raise(c, EMU_NM, EMU_NO_ERR);
}

/* FXSAVE/FXRSTOR: #NM on TS or EM (they do not depend on OSFXSR for the x87 part). */
static void fx_check(struct emu_cpu *c)
{
	if (c->cr0 & (CR0_EM | CR0_TS))
		emu_raise(c, EMU_NM, EMU_NO_ERR);
}

static uint64_t mem_addr(struct emu_cpu *c, const struct emu_insn *i, unsigned align)
{
	uint64_t la;

	if (i->nops < 1 || i->op[0].kind != EMU_OP_MEM)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	la = emu_ea(c, &i->op[0]);
	if (align && (la & (align - 1)))
		emu_raise(c, EMU_GP, 0);
	return la;
}

/* ---- FXSAVE / FXRSTOR / MXCSR ---- */

static void do_fxsave(struct emu_cpu *c, const struct emu_insn *i)
{
	uint8_t img[512];
	uint64_t la;

	fx_check(c);
	la = mem_addr(c, i, 16);
	fxsave_image(&c->fpu, img);
	if (i->mnemonic == ZYDIS_MNEMONIC_FXSAVE) {
		/* Legacy form: 32-bit FIP/FDP with selectors, which we do not track. */
		memset(img + 12, 0, 4);
		memset(img + 20, 0, 4);
	}
	emu_write_buf(c, la, img, 416);
}

static void do_fxrstor(struct emu_cpu *c, const struct emu_insn *i)
{
	uint8_t img[512];
	uint32_t mxcsr;
	uint64_t la;

	fx_check(c);
	la = mem_addr(c, i, 16);
	emu_read_buf(c, la, img, 416);
	memcpy(&mxcsr, img + 24, 4);
	if (mxcsr & ~MXCSR_MASK)
		emu_raise(c, EMU_GP, 0);
	if (i->mnemonic == ZYDIS_MNEMONIC_FXRSTOR) {
		memset(img + 12, 0, 4);
		memset(img + 20, 0, 4);
	}
	fxrstor_image(&c->fpu, img);
}

static void do_ldmxcsr(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t la, v;

	emu_sse_check(c);
	la = mem_addr(c, i, 0);
	v = emu_read(c, la, 4);
	if (v & ~(uint64_t)MXCSR_MASK)
		emu_raise(c, EMU_GP, 0);
	c->fpu.mxcsr = (uint32_t)v;
}

static void do_stmxcsr(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t la;

	emu_sse_check(c);
	la = mem_addr(c, i, 0);
	emu_write(c, la, 4, c->fpu.mxcsr);
}

static void set_top(struct emu_fpu *f, unsigned top);

/* ---- x87 control ---- */

/* ES and B mirror whether any exception flag is unmasked. */
static void fsw_update_es(struct emu_fpu *f)
{
	if (f->fsw & ~f->fcw & 0x3f)
		f->fsw |= FSW_ES | FSW_B;
	else
		f->fsw &= (uint16_t) ~(FSW_ES | FSW_B);
}

static void do_fninit(struct emu_cpu *c, const struct emu_insn *i)
{
	fpu_check(c);
	fpu_finit(&c->fpu);
}

static void do_fnclex(struct emu_cpu *c, const struct emu_insn *i)
{
	fpu_check(c);
	c->fpu.fsw &= (uint16_t) ~(0x3f | FSW_SF | FSW_ES | FSW_B);
}

static void do_fnstcw(struct emu_cpu *c, const struct emu_insn *i)
{
	fpu_check(c);
	emu_write(c, mem_addr(c, i, 0), 2, c->fpu.fcw);
}

static void do_fldcw(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v;

	fpu_check(c);
	v = emu_read(c, mem_addr(c, i, 0), 2);
	/* Bit 6 reads as one; 13-15 are reserved and read as zero. */
	c->fpu.fcw = (uint16_t)((v & 0x1f3f) | 0x40);
	fsw_update_es(&c->fpu);
}

static void do_fnstsw(struct emu_cpu *c, const struct emu_insn *i)
{
	fpu_check(c);
	if (i->nops >= 1 && i->op[0].kind == EMU_OP_REG)
		emu_reg_write(c, EMU_R_RAX, 2, c->fpu.fsw);
	else
		emu_write(c, mem_addr(c, i, 0), 2, c->fpu.fsw);
}

/* FWAIT: a pending unmasked x87 exception is delivered here (#MF with CR0.NE). */
static void do_fwait(struct emu_cpu *c, const struct emu_insn *i)
{
	if ((c->cr0 & (CR0_MP | CR0_TS)) == (CR0_MP | CR0_TS))
		emu_raise(c, EMU_NM, EMU_NO_ERR);
	if ((c->fpu.fsw & FSW_ES) && (c->cr0 & CR0_NE))
		emu_raise(c, EMU_MF, EMU_NO_ERR);
}

static void do_emms(struct emu_cpu *c, const struct emu_insn *i)
{
	fpu_check(c);
	c->fpu.ftw = 0xffff;
	/* Like the other MMX instructions, the hardware tern runs on also resets TOP. */
	set_top(&c->fpu, 0);
}

/* ---- x87 stack ---- */

static unsigned ftag(const struct emu_fpu *f, unsigned phys)
{
	return (f->ftw >> (2 * phys)) & 3;
}

static void set_ftag(struct emu_fpu *f, unsigned phys, unsigned t)
{
	f->ftw = (uint16_t)((f->ftw & ~(3u << (2 * phys))) | (t << (2 * phys)));
}

static void set_top(struct emu_fpu *f, unsigned top)
{
	f->fsw = (uint16_t)((f->fsw & ~FSW_TOP) | ((top & 7) << 11));
}

static unsigned st_phys(const struct emu_fpu *f, unsigned i)
{
	return (fpu_top(f) + i) & 7;
}

static bool st_empty(const struct emu_fpu *f, unsigned i)
{
	return ftag(f, st_phys(f, i)) == FTAG_EMPTY;
}

static long double st_get(const struct emu_fpu *f, unsigned i)
{
	return f->st[st_phys(f, i)];
}

static void st_set(struct emu_fpu *f, unsigned i, long double v)
{
	unsigned p = st_phys(f, i);

	f->st[p] = v;
	set_ftag(f, p, emu_fpu_classify(v));
}

static void st_push(struct emu_fpu *f, long double v)
{
	set_top(f, fpu_top(f) - 1);
	st_set(f, 0, v);
}

static void st_pop(struct emu_fpu *f)
{
	set_ftag(f, fpu_top(f), FTAG_EMPTY);
	set_top(f, fpu_top(f) + 1);
}

static bool ld_is_nan(long double v)
{
	uint8_t raw[10];
	uint64_t mant;
	uint16_t exp;

	memcpy(raw, &v, 10);
	memcpy(&mant, raw, 8);
	memcpy(&exp, raw + 8, 2);
	return (exp & 0x7fff) == 0x7fff && (mant << 1) != 0;
}

/* The QNaN "real indefinite" that masked invalid operations produce. */
static long double ld_indefinite(void)
{
	static const uint8_t raw[10] = {0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff};
	long double v = 0;

	memcpy(&v, raw, 10);
	return v;
}

/*
 * Stack fault (underflow: reading an empty register; overflow: pushing onto a
 * full one). Returns true if invalid is masked and the caller should go on
 * with the indefinite value.
 */
static bool stack_fault(struct emu_fpu *f, bool overflow)
{
	f->fsw |= FSW_IE | FSW_SF;
	if (overflow)
		f->fsw |= FSW_C1;
	else
		f->fsw &= (uint16_t)~FSW_C1;
	fsw_update_es(f);
	return f->fcw & FSW_IE;
}

/*
 * Merge the host status word of one operation into the guest's: exception
 * flags and the condition codes in cmask. Returns false if an unmasked
 * invalid, denormal or divide-by-zero exception stops the instruction (no
 * result stored, no pop).
 */
static bool x87_commit(struct emu_fpu *f, uint16_t sw, uint16_t cmask)
{
	uint16_t flags = sw & 0x3f;

	f->fsw = (uint16_t)((f->fsw & ~cmask) | (sw & cmask) | flags);
	fsw_update_es(f);
	return !(flags & ~f->fcw & (FSW_IE | FSW_DE | FSW_ZE));
}

/*
 * Host x87 state around one guest operation. The guest's own control word is
 * loaded, unmasked exceptions included: the host then produces exactly the
 * architectural result (e.g. the exponent-wrapped value of an unmasked
 * overflow), and since only non-waiting FNSTSW/FNCLEX follow the operation
 * the pending exception is recorded and cleared, never delivered to tern.
 */
struct x87_env {
	uint16_t g, h, sw;
};

static void x87_env_init(struct x87_env *e, const struct emu_fpu *f)
{
	e->g = f->fcw;
	e->h = 0;
	e->sw = 0;
}

/*
 * outs and ins are parenthesized operand lists, possibly empty. outs come
 * first so that matching constraints ("0") refer to them.
 */
#define X87_OUTS(...) __VA_ARGS__ __VA_OPT__(, )
#define X87_INS(...) __VA_OPT__(, ) __VA_ARGS__
#define X87_ASM(e, body, outs, ins, ...)                                                           \
	__asm__ volatile("fnstcw %[h]\n\tfldcw %[g]\n\tfnclex\n\t" body                            \
			 "\n\tfnstsw %[sw]\n\tfnclex\n\tfldcw %[h]"                                \
			 : X87_OUTS outs[h] "=m"((e)->h), [sw] "=m"((e)->sw)                       \
			 : [g] "m"((e)->g)X87_INS ins                                              \
			 : __VA_ARGS__)

/* ---- Operands ---- */

/* Memory operand kinds of x87 instructions. */
enum x87_mem { XM_ST, XM_F32, XM_F64, XM_F80, XM_I16, XM_I32, XM_I64 };

struct x87_src {
	enum x87_mem kind;
	long double st;
	union {
		float f32;
		double f64;
		int16_t i16;
		int32_t i32;
		int64_t i64;
		uint8_t raw[10];
	} m;
};

static bool mnemonic_is_int(unsigned m)
{
	switch (m) {
	case ZYDIS_MNEMONIC_FIADD:
	case ZYDIS_MNEMONIC_FISUB:
	case ZYDIS_MNEMONIC_FISUBR:
	case ZYDIS_MNEMONIC_FIMUL:
	case ZYDIS_MNEMONIC_FIDIV:
	case ZYDIS_MNEMONIC_FIDIVR:
	case ZYDIS_MNEMONIC_FICOM:
	case ZYDIS_MNEMONIC_FICOMP:
	case ZYDIS_MNEMONIC_FILD:
	case ZYDIS_MNEMONIC_FIST:
	case ZYDIS_MNEMONIC_FISTP:
	case ZYDIS_MNEMONIC_FISTTP:
		return true;
	default:
		return false;
	}
}

static enum x87_mem mem_kind(struct emu_cpu *c, const struct emu_insn *i,
			     const struct emu_operand *o)
{
	bool integer = mnemonic_is_int(i->mnemonic);

	switch (o->size) {
	case 2:
		if (integer)
			return XM_I16;
		break;
	case 4:
		return integer ? XM_I32 : XM_F32;
	case 8:
		return integer ? XM_I64 : XM_F64;
	case 10:
		if (!integer)
			return XM_F80;
		break;
	}
	emu_raise(c, EMU_UD, EMU_NO_ERR);
}

static unsigned mem_kind_size(enum x87_mem k)
{
	static const uint8_t sz[] = {
	    [XM_F32] = 4, [XM_F64] = 8, [XM_F80] = 10, [XM_I16] = 2, [XM_I32] = 4, [XM_I64] = 8};
	return sz[k];
}

static void read_mem_src(struct emu_cpu *c, const struct emu_operand *o, enum x87_mem k,
			 struct x87_src *s)
{
	s->kind = k;
	memset(&s->m, 0, sizeof(s->m));
	emu_read_buf(c, emu_ea(c, o), s->m.raw, mem_kind_size(k));
}

/* ST(i) index of a register operand. */
static unsigned st_index(struct emu_cpu *c, const struct emu_operand *o)
{
	if (o->kind != EMU_OP_REG || o->reg < EMU_R_ST0 || o->reg > EMU_R_ST0 + 7)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	return o->reg - EMU_R_ST0;
}

/* The ST(i) of a one-register form (FCOM ST(i), FXCH ST(i)) or the second of two (FCOMI ST0,
 * ST(i)). */
static unsigned sti_operand(struct emu_cpu *c, const struct emu_insn *i, unsigned dflt)
{
	if (i->nops >= 2)
		return st_index(c, &i->op[1]);
	if (i->nops == 1)
		return st_index(c, &i->op[0]);
	return dflt;
}

/* Start of every x87 instruction that waits: availability and pending exceptions. */
static void x87_begin(struct emu_cpu *c)
{
	fpu_check(c);
	if ((c->fpu.fsw & FSW_ES) && (c->cr0 & CR0_NE))
		emu_raise(c, EMU_MF, EMU_NO_ERR);
	c->fpu.fip = c->rip;
}

/* ---- Arithmetic: dst = dst op src on the host x87 ---- */

enum x87_arith { XA_ADD, XA_MUL, XA_SUB, XA_SUBR, XA_DIV, XA_DIVR };

#define ARITH_ST(e, a, b, insn) X87_ASM(e, insn " %%st(1), %%st", ("+t"(a)), ("u"(b)), )
#define ARITH_M(e, a, mem, insn) X87_ASM(e, insn " %[m]", ("+t"(a)), ([m] "m"(mem)), )

#define ARITH_ALL(e, a, s, op)                                                                     \
	switch ((s)->kind) {                                                                       \
	case XM_ST:                                                                                \
		ARITH_ST(e, a, (s)->st, "f" op);                                                   \
		break;                                                                             \
	case XM_F32:                                                                               \
		ARITH_M(e, a, (s)->m.f32, "f" op "s");                                             \
		break;                                                                             \
	case XM_F64:                                                                               \
		ARITH_M(e, a, (s)->m.f64, "f" op "l");                                             \
		break;                                                                             \
	case XM_I16:                                                                               \
		ARITH_M(e, a, (s)->m.i16, "fi" op "s");                                            \
		break;                                                                             \
	case XM_I32:                                                                               \
		ARITH_M(e, a, (s)->m.i32, "fi" op "l");                                            \
		break;                                                                             \
	default:                                                                                   \
		break;                                                                             \
	}

static long double x87_arith(enum x87_arith op, long double a, const struct x87_src *s,
			     struct x87_env *e)
{
	switch (op) {
	case XA_ADD:
		ARITH_ALL(e, a, s, "add");
		break;
	case XA_MUL:
		ARITH_ALL(e, a, s, "mul");
		break;
	case XA_SUB:
		ARITH_ALL(e, a, s, "sub");
		break;
	case XA_SUBR:
		ARITH_ALL(e, a, s, "subr");
		break;
	case XA_DIV:
		ARITH_ALL(e, a, s, "div");
		break;
	case XA_DIVR:
		ARITH_ALL(e, a, s, "divr");
		break;
	}
	return a;
}

static enum x87_arith arith_of(unsigned m)
{
	switch (m) {
	case ZYDIS_MNEMONIC_FADD:
	case ZYDIS_MNEMONIC_FADDP:
	case ZYDIS_MNEMONIC_FIADD:
		return XA_ADD;
	case ZYDIS_MNEMONIC_FMUL:
	case ZYDIS_MNEMONIC_FMULP:
	case ZYDIS_MNEMONIC_FIMUL:
		return XA_MUL;
	case ZYDIS_MNEMONIC_FSUB:
	case ZYDIS_MNEMONIC_FSUBP:
	case ZYDIS_MNEMONIC_FISUB:
		return XA_SUB;
	case ZYDIS_MNEMONIC_FSUBR:
	case ZYDIS_MNEMONIC_FSUBRP:
	case ZYDIS_MNEMONIC_FISUBR:
		return XA_SUBR;
	case ZYDIS_MNEMONIC_FDIV:
	case ZYDIS_MNEMONIC_FDIVP:
	case ZYDIS_MNEMONIC_FIDIV:
		return XA_DIV;
	default:
		return XA_DIVR;
	}
}

static bool pops(unsigned m)
{
	switch (m) {
	case ZYDIS_MNEMONIC_FADDP:
	case ZYDIS_MNEMONIC_FMULP:
	case ZYDIS_MNEMONIC_FSUBP:
	case ZYDIS_MNEMONIC_FSUBRP:
	case ZYDIS_MNEMONIC_FDIVP:
	case ZYDIS_MNEMONIC_FDIVRP:
	case ZYDIS_MNEMONIC_FSTP:
	case ZYDIS_MNEMONIC_FISTP:
	case ZYDIS_MNEMONIC_FISTTP:
	case ZYDIS_MNEMONIC_FCOMP:
	case ZYDIS_MNEMONIC_FICOMP:
	case ZYDIS_MNEMONIC_FUCOMP:
	case ZYDIS_MNEMONIC_FCOMIP:
	case ZYDIS_MNEMONIC_FUCOMIP:
		return true;
	default:
		return false;
	}
}

/*
 * FADD & co. Memory form: ST(0) = ST(0) op m. Register forms: op[0] =
 * op[0] op op[1], one of them ST(0); the P forms pop afterwards.
 */
static void do_farith(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	enum x87_arith op = arith_of(i->mnemonic);
	struct x87_src s;
	struct x87_env e;
	unsigned d;
	long double r;

	x87_begin(c);
	if (i->nops == 1 && i->op[0].kind == EMU_OP_MEM) {
		read_mem_src(c, &i->op[0], mem_kind(c, i, &i->op[0]), &s);
		d = 0;
		if (st_empty(f, 0))
			goto underflow;
	} else if (i->nops >= 2) {
		unsigned src = st_index(c, &i->op[1]);

		d = st_index(c, &i->op[0]);
		if (st_empty(f, d) || st_empty(f, src))
			goto underflow;
		s.kind = XM_ST;
		s.st = st_get(f, src);
	} else {
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
	x87_env_init(&e, f);
	r = x87_arith(op, st_get(f, d), &s, &e);
	if (!x87_commit(f, e.sw, FSW_C1))
		return;
	st_set(f, d, r);
	if (pops(i->mnemonic))
		st_pop(f);
	return;
underflow:
	if (!stack_fault(f, false))
		return;
	st_set(f, d, ld_indefinite());
	if (pops(i->mnemonic))
		st_pop(f);
}

/* ---- Loads and stores ---- */

static long double load_conv(const struct x87_src *s, struct x87_env *e)
{
	long double r = 0;

	switch (s->kind) {
	case XM_F32:
		X87_ASM(e, "flds %[m]", ("=t"(r)), ([m] "m"(s->m.f32)));
		break;
	case XM_F64:
		X87_ASM(e, "fldl %[m]", ("=t"(r)), ([m] "m"(s->m.f64)));
		break;
	case XM_F80:
		memcpy(&r, s->m.raw, 10);
		break;
	case XM_I16:
		r = s->m.i16;
		break;
	case XM_I32:
		r = s->m.i32;
		break;
	case XM_I64:
		r = s->m.i64;
		break;
	case XM_ST:
		r = s->st;
		break;
	}
	return r;
}

/* FLD / FILD: push a memory operand or a copy of ST(i). */
static void do_fld(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_src s;
	struct x87_env e;
	long double r;

	x87_begin(c);
	if (i->nops < 1)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	if (i->op[0].kind == EMU_OP_MEM) {
		read_mem_src(c, &i->op[0], mem_kind(c, i, &i->op[0]), &s);
	} else {
		unsigned src = st_index(c, &i->op[0]);

		if (st_empty(f, src)) {
			if (stack_fault(f, false))
				st_push(f, ld_indefinite());
			return;
		}
		s.kind = XM_ST;
		s.st = st_get(f, src);
	}
	if (!st_empty(f, 7)) {
		if (stack_fault(f, true))
			st_push(f, ld_indefinite());
		return;
	}
	x87_env_init(&e, f);
	r = load_conv(&s, &e);
	if (!x87_commit(f, e.sw, FSW_C1))
		return;
	f->fsw &= (uint16_t)~FSW_C1;
	st_push(f, r);
}

/* Convert ST(0) for a store to memory kind k on the host, with the guest's rounding. */
static void store_conv(enum x87_mem k, long double v, bool truncate, struct x87_src *out,
		       struct x87_env *e)
{
	out->kind = k;
	switch (k) {
	case XM_F32:
		X87_ASM(e, "fsts %[m]", ([m] "=m"(out->m.f32)), ("t"(v)));
		break;
	case XM_F64:
		X87_ASM(e, "fstl %[m]", ([m] "=m"(out->m.f64)), ("t"(v)));
		break;
	case XM_F80:
		memcpy(out->m.raw, &v, 10);
		break;
	case XM_I16:
		if (truncate)
			X87_ASM(e, "fld %%st(0)\n\tfisttps %[m]", ([m] "=m"(out->m.i16)), ("t"(v)));
		else
			X87_ASM(e, "fists %[m]", ([m] "=m"(out->m.i16)), ("t"(v)));
		break;
	case XM_I32:
		if (truncate)
			X87_ASM(e, "fld %%st(0)\n\tfisttpl %[m]", ([m] "=m"(out->m.i32)), ("t"(v)));
		else
			X87_ASM(e, "fistl %[m]", ([m] "=m"(out->m.i32)), ("t"(v)));
		break;
	case XM_I64:
		/* There is no non-popping 64-bit integer store. */
		if (truncate)
			X87_ASM(e, "fld %%st(0)\n\tfisttpll %[m]", ([m] "=m"(out->m.i64)),
				("t"(v)));
		else
			X87_ASM(e, "fld %%st(0)\n\tfistpll %[m]", ([m] "=m"(out->m.i64)), ("t"(v)));
		break;
	case XM_ST:
		out->st = v;
		break;
	}
}

/* FST/FSTP/FIST/FISTP/FISTTP to memory or (FST/FSTP) to ST(i). */
static void do_fst(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	bool trunc = i->mnemonic == ZYDIS_MNEMONIC_FISTTP;
	struct x87_src out;
	struct x87_env e;
	enum x87_mem k;
	uint64_t la = 0;

	x87_begin(c);
	if (i->nops < 1)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	if (i->op[0].kind == EMU_OP_MEM) {
		k = mem_kind(c, i, &i->op[0]);
		la = emu_ea(c, &i->op[0]);
	} else {
		k = XM_ST;
	}
	if (st_empty(f, 0)) {
		if (!stack_fault(f, false))
			return;
		/* Masked underflow stores the indefinite (integer indefinite for integers). */
		x87_env_init(&e, f);
		store_conv(k, ld_indefinite(), trunc, &out, &e);
	} else {
		x87_env_init(&e, f);
		store_conv(k, st_get(f, 0), trunc, &out, &e);
		if (!x87_commit(f, e.sw, FSW_C1))
			return;
		/* Unmasked overflow/underflow (or invalid, for integers) leaves memory alone. */
		if (k != XM_ST && (e.sw & ~f->fcw & (FSW_IE | FSW_OE | FSW_UE)))
			return;
	}
	if (k == XM_ST)
		st_set(f, st_index(c, &i->op[0]), out.st);
	else
		emu_write_buf(c, la, out.m.raw, mem_kind_size(k));
	if (pops(i->mnemonic))
		st_pop(f);
}

static void do_fldconst(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_env e;
	long double r = 0;

	x87_begin(c);
	if (!st_empty(f, 7)) {
		if (stack_fault(f, true))
			st_push(f, ld_indefinite());
		return;
	}
	x87_env_init(&e, f);
	/* The host rounds the constants by the guest's RC, as the hardware does. */
	switch (i->mnemonic) {
	case ZYDIS_MNEMONIC_FLD1:
		X87_ASM(&e, "fld1", ("=t"(r)), ());
		break;
	case ZYDIS_MNEMONIC_FLDZ:
		X87_ASM(&e, "fldz", ("=t"(r)), ());
		break;
	case ZYDIS_MNEMONIC_FLDPI:
		X87_ASM(&e, "fldpi", ("=t"(r)), ());
		break;
	case ZYDIS_MNEMONIC_FLDL2E:
		X87_ASM(&e, "fldl2e", ("=t"(r)), ());
		break;
	case ZYDIS_MNEMONIC_FLDL2T:
		X87_ASM(&e, "fldl2t", ("=t"(r)), ());
		break;
	case ZYDIS_MNEMONIC_FLDLG2:
		X87_ASM(&e, "fldlg2", ("=t"(r)), ());
		break;
	default:
		X87_ASM(&e, "fldln2", ("=t"(r)), ());
		break;
	}
	f->fsw &= (uint16_t)~FSW_C1;
	st_push(f, r);
}

/* ---- Compares ---- */

#define CMP_C (FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3)

/* FCOM, FCOMP, FCOMPP, FUCOM(P)(P), FICOM(P): C3 C2 C0 from comparing ST(0) with the source. */
static void do_fcom(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	bool unordered = i->mnemonic == ZYDIS_MNEMONIC_FUCOM ||
			 i->mnemonic == ZYDIS_MNEMONIC_FUCOMP ||
			 i->mnemonic == ZYDIS_MNEMONIC_FUCOMPP;
	unsigned npop = pops(i->mnemonic) ? 1 : 0;
	struct x87_src s = {.kind = XM_ST};
	struct x87_env e;
	long double a;
	unsigned src = 1;

	if (i->mnemonic == ZYDIS_MNEMONIC_FCOMPP || i->mnemonic == ZYDIS_MNEMONIC_FUCOMPP)
		npop = 2;
	x87_begin(c);
	if (i->nops >= 1 && i->op[0].kind == EMU_OP_MEM) {
		read_mem_src(c, &i->op[0], mem_kind(c, i, &i->op[0]), &s);
	} else {
		src = sti_operand(c, i, 1);
		if (st_empty(f, src))
			goto underflow;
		s.st = st_get(f, src);
	}
	if (st_empty(f, 0))
		goto underflow;
	a = st_get(f, 0);
	x87_env_init(&e, f);
	switch (s.kind) {
	case XM_ST:
		if (unordered)
			X87_ASM(&e, "fucom %%st(1)", (), ("t"(a), "u"(s.st)));
		else
			X87_ASM(&e, "fcom %%st(1)", (), ("t"(a), "u"(s.st)));
		break;
	case XM_F32:
		X87_ASM(&e, "fcoms %[m]", (), ("t"(a), [m] "m"(s.m.f32)));
		break;
	case XM_F64:
		X87_ASM(&e, "fcoml %[m]", (), ("t"(a), [m] "m"(s.m.f64)));
		break;
	case XM_I16:
		X87_ASM(&e, "ficoms %[m]", (), ("t"(a), [m] "m"(s.m.i16)));
		break;
	case XM_I32:
		X87_ASM(&e, "ficoml %[m]", (), ("t"(a), [m] "m"(s.m.i32)));
		break;
	default:
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
	if (!x87_commit(f, e.sw, CMP_C))
		return;
	goto out;
underflow:
	f->fsw |= FSW_C0 | FSW_C2 | FSW_C3;
	if (!stack_fault(f, false))
		return;
out:
	while (npop--)
		st_pop(f);
}

/* FCOMI/FCOMIP/FUCOMI/FUCOMIP: ZF PF CF. */
static void do_fcomi(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	bool unordered =
	    i->mnemonic == ZYDIS_MNEMONIC_FUCOMI || i->mnemonic == ZYDIS_MNEMONIC_FUCOMIP;
	unsigned src = 1;
	uint64_t fl = emu_rflags(c) & ~0x8d5ull;
	struct x87_env e;
	uint8_t zf, pf, cf;
	long double a, b;

	x87_begin(c);
	src = sti_operand(c, i, 1);
	if (st_empty(f, 0) || st_empty(f, src)) {
		emu_set_rflags(c, fl | 0x45);
		if (!stack_fault(f, false))
			return;
		goto out;
	}
	a = st_get(f, 0);
	b = st_get(f, src);
	x87_env_init(&e, f);
	if (unordered)
		X87_ASM(&e, "fucomi %%st(1), %%st\n\tsetz %[zf]\n\tsetp %[pf]\n\tsetc %[cf]",
			([zf] "=&q"(zf), [pf] "=&q"(pf), [cf] "=&q"(cf)), ("t"(a), "u"(b)), "cc");
	else
		X87_ASM(&e, "fcomi %%st(1), %%st\n\tsetz %[zf]\n\tsetp %[pf]\n\tsetc %[cf]",
			([zf] "=&q"(zf), [pf] "=&q"(pf), [cf] "=&q"(cf)), ("t"(a), "u"(b)), "cc");
	if (!x87_commit(f, e.sw, FSW_C1))
		return;
	emu_set_rflags(c, fl | cf | (uint64_t)pf << 2 | (uint64_t)zf << 6);
out:
	if (pops(i->mnemonic))
		st_pop(f);
}

/* FTST / FXAM: condition codes about ST(0). */
static void do_ftst(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_env e;
	long double a;

	x87_begin(c);
	if (i->mnemonic == ZYDIS_MNEMONIC_FXAM && st_empty(f, 0)) {
		/* Empty: C3 C0 set; C1 is the sign of whatever the register holds. */
		uint8_t raw[10];

		memcpy(raw, &f->st[st_phys(f, 0)], 10);
		f->fsw =
		    (uint16_t)((f->fsw & ~CMP_C) | FSW_C3 | FSW_C0 | (raw[9] & 0x80 ? FSW_C1 : 0));
		return;
	}
	if (st_empty(f, 0)) {
		f->fsw |= FSW_C0 | FSW_C2 | FSW_C3;
		stack_fault(f, false);
		return;
	}
	a = st_get(f, 0);
	x87_env_init(&e, f);
	if (i->mnemonic == ZYDIS_MNEMONIC_FXAM)
		X87_ASM(&e, "fxam", (), ("t"(a)));
	else
		X87_ASM(&e, "ftst", (), ("t"(a)));
	x87_commit(f, e.sw, CMP_C);
}

/* ---- One-operand and two-operand functions on ST(0) (and ST(1)) ---- */

/* FCHS/FABS/FSQRT/FRNDINT/FSIN/FCOS/F2XM1: ST(0) = fn(ST(0)). */
static void do_funary(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_env e;
	long double a;

	x87_begin(c);
	if (st_empty(f, 0)) {
		if (stack_fault(f, false))
			st_set(f, 0, ld_indefinite());
		return;
	}
	a = st_get(f, 0);
	x87_env_init(&e, f);
	switch (i->mnemonic) {
	case ZYDIS_MNEMONIC_FCHS:
		X87_ASM(&e, "fchs", ("+t"(a)), ());
		break;
	case ZYDIS_MNEMONIC_FABS:
		X87_ASM(&e, "fabs", ("+t"(a)), ());
		break;
	case ZYDIS_MNEMONIC_FSQRT:
		X87_ASM(&e, "fsqrt", ("+t"(a)), ());
		break;
	case ZYDIS_MNEMONIC_FRNDINT:
		X87_ASM(&e, "frndint", ("+t"(a)), ());
		break;
	case ZYDIS_MNEMONIC_FSIN:
		X87_ASM(&e, "fsin", ("+t"(a)), ());
		break;
	case ZYDIS_MNEMONIC_FCOS:
		X87_ASM(&e, "fcos", ("+t"(a)), ());
		break;
	default:
		X87_ASM(&e, "f2xm1", ("+t"(a)), ());
		break;
	}
	/* FSIN/FCOS report an out-of-range operand in C2 and leave it alone. */
	if (!x87_commit(f, e.sw, FSW_C1 | FSW_C2))
		return;
	st_set(f, 0, a);
}

/* FSCALE/FPREM/FPREM1: ST(0) = fn(ST(0), ST(1)); condition codes from the host. */
static void do_fbinary01(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_env e;
	long double a, b;

	x87_begin(c);
	if (st_empty(f, 0) || st_empty(f, 1)) {
		if (stack_fault(f, false))
			st_set(f, 0, ld_indefinite());
		return;
	}
	a = st_get(f, 0);
	b = st_get(f, 1);
	x87_env_init(&e, f);
	if (i->mnemonic == ZYDIS_MNEMONIC_FSCALE)
		X87_ASM(&e, "fscale", ("+t"(a), "+u"(b)), ());
	else if (i->mnemonic == ZYDIS_MNEMONIC_FPREM)
		X87_ASM(&e, "fprem", ("+t"(a), "+u"(b)), ());
	else
		X87_ASM(&e, "fprem1", ("+t"(a), "+u"(b)), ());
	/*
	 * FPREM with a NaN result, an invalid operand or an unmasked denormal
	 * leaves C0..C3 as they were; the host's would be stale.
	 */
	if (!x87_commit(f, e.sw,
			i->mnemonic == ZYDIS_MNEMONIC_FSCALE			 ? FSW_C1
			: (e.sw & (FSW_IE | (~f->fcw & FSW_DE))) || ld_is_nan(a) ? 0
										 : CMP_C))
		return;
	st_set(f, 0, a);
}

/* FPATAN/FYL2X/FYL2XP1: ST(1) = fn(ST(1), ST(0)), then pop. */
static void do_fbinary_pop(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_env e;
	long double a, b;
	uint16_t sw2 = 0;

	x87_begin(c);
	if (st_empty(f, 0) || st_empty(f, 1)) {
		if (!stack_fault(f, false))
			return;
		st_set(f, 1, ld_indefinite());
		st_pop(f);
		return;
	}
	a = st_get(f, 0);
	b = st_get(f, 1);
	x87_env_init(&e, f);
	/*
	 * The op pops; FLD ST(0) restores the depth the compiler expects (both
	 * then hold the result) but clears C1, so the status is taken before it.
	 */
	if (i->mnemonic == ZYDIS_MNEMONIC_FPATAN)
		X87_ASM(&e, "fpatan\n\tfnstsw %[sw2]\n\tfnclex\n\tfld %%st(0)",
			("+t"(a), "+u"(b), [sw2] "=m"(sw2)), ());
	else if (i->mnemonic == ZYDIS_MNEMONIC_FYL2X)
		X87_ASM(&e, "fyl2x\n\tfnstsw %[sw2]\n\tfnclex\n\tfld %%st(0)",
			("+t"(a), "+u"(b), [sw2] "=m"(sw2)), ());
	else
		X87_ASM(&e, "fyl2xp1\n\tfnstsw %[sw2]\n\tfnclex\n\tfld %%st(0)",
			("+t"(a), "+u"(b), [sw2] "=m"(sw2)), ());
	if (!x87_commit(f, sw2, FSW_C1))
		return;
	st_set(f, 1, a);
	st_pop(f);
}

/* True if |v| >= 2^63 or v is not finite: the range FPTAN/FSINCOS refuse with C2. */
static bool trig_out_of_range(long double v)
{
	uint8_t raw[10];
	uint16_t exp;

	memcpy(raw, &v, 10);
	memcpy(&exp, raw + 8, 2);
	exp &= 0x7fff;
	return exp >= 0x3fff + 63 && exp != 0x7fff;
}

/* FPTAN/FSINCOS/FXTRACT: replace ST(0) and push a second result. */
static void do_fpush2(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	struct x87_env e;
	long double a, lo = 0, hi = 0;

	x87_begin(c);
	if (st_empty(f, 0)) {
		if (!stack_fault(f, false))
			return;
		st_set(f, 0, ld_indefinite());
		st_push(f, ld_indefinite());
		return;
	}
	if (!st_empty(f, 7)) {
		if (!stack_fault(f, true))
			return;
		st_set(f, 0, ld_indefinite());
		st_push(f, ld_indefinite());
		return;
	}
	a = st_get(f, 0);
	if (i->mnemonic != ZYDIS_MNEMONIC_FXTRACT && trig_out_of_range(a)) {
		f->fsw |= FSW_C2;
		return;
	}
	x87_env_init(&e, f);
	if (i->mnemonic == ZYDIS_MNEMONIC_FPTAN)
		X87_ASM(&e, "fptan", ("=t"(hi), "=u"(lo)), ("0"(a)));
	else if (i->mnemonic == ZYDIS_MNEMONIC_FSINCOS)
		X87_ASM(&e, "fsincos", ("=t"(hi), "=u"(lo)), ("0"(a)));
	else
		X87_ASM(&e, "fxtract", ("=t"(hi), "=u"(lo)), ("0"(a)));
	if (!x87_commit(f, e.sw, FSW_C1 | FSW_C2))
		return;
	st_set(f, 0, lo);
	st_push(f, hi);
}

/* ---- Register management ---- */

static void do_fxch(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	unsigned n = 1;
	long double a, b;

	x87_begin(c);
	n = sti_operand(c, i, 1);
	if (st_empty(f, 0) || st_empty(f, n)) {
		if (!stack_fault(f, false))
			return;
		/* Masked: empty registers take the indefinite before the exchange. */
		if (st_empty(f, 0))
			st_set(f, 0, ld_indefinite());
		if (st_empty(f, n))
			st_set(f, n, ld_indefinite());
	} else {
		f->fsw &= (uint16_t)~FSW_C1;
	}
	a = st_get(f, 0);
	b = st_get(f, n);
	st_set(f, 0, b);
	st_set(f, n, a);
}

static void do_ffree(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;

	x87_begin(c);
	if (i->nops < 1)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	set_ftag(f, st_phys(f, st_index(c, &i->op[0])), FTAG_EMPTY);
	if (i->mnemonic == ZYDIS_MNEMONIC_FFREEP)
		st_pop(f);
}

static void do_fincdecstp(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;

	x87_begin(c);
	f->fsw &= (uint16_t)~FSW_C1;
	set_top(f, fpu_top(f) + (i->mnemonic == ZYDIS_MNEMONIC_FINCSTP ? 1 : 7));
}

static void do_fnop(struct emu_cpu *c, const struct emu_insn *i)
{
	x87_begin(c);
}

static bool fcmov_cond(struct emu_cpu *c, unsigned m)
{
	uint64_t fl = emu_rflags(c);
	bool cf = fl & 1, pf = fl & 4, zf = fl & 0x40;

	switch (m) {
	case ZYDIS_MNEMONIC_FCMOVB:
		return cf;
	case ZYDIS_MNEMONIC_FCMOVNB:
		return !cf;
	case ZYDIS_MNEMONIC_FCMOVE:
		return zf;
	case ZYDIS_MNEMONIC_FCMOVNE:
		return !zf;
	case ZYDIS_MNEMONIC_FCMOVBE:
		return cf || zf;
	case ZYDIS_MNEMONIC_FCMOVNBE:
		return !cf && !zf;
	case ZYDIS_MNEMONIC_FCMOVU:
		return pf;
	default:
		return !pf;
	}
}

static void do_fcmov(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	unsigned src = 1;

	x87_begin(c);
	src = sti_operand(c, i, 1);
	if (st_empty(f, 0) || st_empty(f, src)) {
		/* Masked underflow writes the indefinite whatever the condition. */
		if (stack_fault(f, false))
			st_set(f, 0, ld_indefinite());
		return;
	}
	f->fsw &= (uint16_t)~FSW_C1;
	if (fcmov_cond(c, i->mnemonic))
		st_set(f, 0, st_get(f, src));
}

/* ---- Environment: FNSTENV/FLDENV/FNSAVE/FRSTOR, 32-bit protected-mode layout ---- */

static void env_image(const struct emu_fpu *f, uint8_t out[28])
{
	uint32_t w[7] = {0xffff0000u | f->fcw, 0xffff0000u | f->fsw,   0xffff0000u | f->ftw,
			 (uint32_t)f->fip,     (uint32_t)f->fop << 16, (uint32_t)f->fdp,
			 0xffff0000u};

	memcpy(out, w, 28);
}

static void env_load(struct emu_fpu *f, const uint8_t in[28])
{
	uint32_t w[7];

	memcpy(w, in, 28);
	f->fcw = (uint16_t)((w[0] & 0x1f3f) | 0x40);
	f->fsw = (uint16_t)w[1];
	f->ftw = (uint16_t)w[2];
	f->fip = w[3];
	f->fop = (uint16_t)((w[4] >> 16) & 0x7ff);
	f->fdp = w[5];
	fsw_update_es(f);
}

static void do_fnstenv(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	uint8_t img[108];
	uint64_t la;
	unsigned len = 28;

	fpu_check(c);
	la = mem_addr(c, i, 0);
	env_image(f, img);
	if (i->mnemonic == ZYDIS_MNEMONIC_FNSAVE) {
		for (unsigned k = 0; k < 8; k++)
			memcpy(img + 28 + 10 * k, &f->st[st_phys(f, k)], 10);
		len = 108;
	}
	emu_write_buf(c, la, img, len);
	/* FNSTENV masks all exceptions afterwards; FNSAVE reinitializes. */
	if (i->mnemonic == ZYDIS_MNEMONIC_FNSAVE) {
		fpu_finit(f);
	} else {
		f->fcw |= 0x3f;
		fsw_update_es(f);
	}
}

static void do_fldenv(struct emu_cpu *c, const struct emu_insn *i)
{
	struct emu_fpu *f = &c->fpu;
	uint8_t img[108];
	uint64_t la;
	bool full = i->mnemonic == ZYDIS_MNEMONIC_FRSTOR;

	fpu_check(c);
	la = mem_addr(c, i, 0);
	emu_read_buf(c, la, img, full ? 108 : 28);
	env_load(f, img);
	if (full)
		for (unsigned k = 0; k < 8; k++)
			memcpy(&f->st[st_phys(f, k)], img + 28 + 10 * k, 10);
}

emu_handler emu_fpu_handler(unsigned mnemonic)
{
	switch (mnemonic) {
	case ZYDIS_MNEMONIC_FXSAVE:
	case ZYDIS_MNEMONIC_FXSAVE64:
		return do_fxsave;
	case ZYDIS_MNEMONIC_FXRSTOR:
	case ZYDIS_MNEMONIC_FXRSTOR64:
		return do_fxrstor;
	case ZYDIS_MNEMONIC_LDMXCSR:
		return do_ldmxcsr;
	case ZYDIS_MNEMONIC_STMXCSR:
		return do_stmxcsr;
	case ZYDIS_MNEMONIC_FNINIT:
		return do_fninit;
	case ZYDIS_MNEMONIC_FNCLEX:
		return do_fnclex;
	case ZYDIS_MNEMONIC_FNSTCW:
		return do_fnstcw;
	case ZYDIS_MNEMONIC_FLDCW:
		return do_fldcw;
	case ZYDIS_MNEMONIC_FNSTSW:
		return do_fnstsw;
	case ZYDIS_MNEMONIC_FWAIT:
		return do_fwait;
	case ZYDIS_MNEMONIC_EMMS:
		return do_emms;
	case ZYDIS_MNEMONIC_FADD:
	case ZYDIS_MNEMONIC_FADDP:
	case ZYDIS_MNEMONIC_FIADD:
	case ZYDIS_MNEMONIC_FMUL:
	case ZYDIS_MNEMONIC_FMULP:
	case ZYDIS_MNEMONIC_FIMUL:
	case ZYDIS_MNEMONIC_FSUB:
	case ZYDIS_MNEMONIC_FSUBP:
	case ZYDIS_MNEMONIC_FISUB:
	case ZYDIS_MNEMONIC_FSUBR:
	case ZYDIS_MNEMONIC_FSUBRP:
	case ZYDIS_MNEMONIC_FISUBR:
	case ZYDIS_MNEMONIC_FDIV:
	case ZYDIS_MNEMONIC_FDIVP:
	case ZYDIS_MNEMONIC_FIDIV:
	case ZYDIS_MNEMONIC_FDIVR:
	case ZYDIS_MNEMONIC_FDIVRP:
	case ZYDIS_MNEMONIC_FIDIVR:
		return do_farith;
	case ZYDIS_MNEMONIC_FLD:
	case ZYDIS_MNEMONIC_FILD:
		return do_fld;
	case ZYDIS_MNEMONIC_FST:
	case ZYDIS_MNEMONIC_FSTP:
	case ZYDIS_MNEMONIC_FIST:
	case ZYDIS_MNEMONIC_FISTP:
	case ZYDIS_MNEMONIC_FISTTP:
		return do_fst;
	case ZYDIS_MNEMONIC_FLD1:
	case ZYDIS_MNEMONIC_FLDZ:
	case ZYDIS_MNEMONIC_FLDPI:
	case ZYDIS_MNEMONIC_FLDL2E:
	case ZYDIS_MNEMONIC_FLDL2T:
	case ZYDIS_MNEMONIC_FLDLG2:
	case ZYDIS_MNEMONIC_FLDLN2:
		return do_fldconst;
	case ZYDIS_MNEMONIC_FCOM:
	case ZYDIS_MNEMONIC_FCOMP:
	case ZYDIS_MNEMONIC_FCOMPP:
	case ZYDIS_MNEMONIC_FUCOM:
	case ZYDIS_MNEMONIC_FUCOMP:
	case ZYDIS_MNEMONIC_FUCOMPP:
	case ZYDIS_MNEMONIC_FICOM:
	case ZYDIS_MNEMONIC_FICOMP:
		return do_fcom;
	case ZYDIS_MNEMONIC_FCOMI:
	case ZYDIS_MNEMONIC_FCOMIP:
	case ZYDIS_MNEMONIC_FUCOMI:
	case ZYDIS_MNEMONIC_FUCOMIP:
		return do_fcomi;
	case ZYDIS_MNEMONIC_FTST:
	case ZYDIS_MNEMONIC_FXAM:
		return do_ftst;
	case ZYDIS_MNEMONIC_FCHS:
	case ZYDIS_MNEMONIC_FABS:
	case ZYDIS_MNEMONIC_FSQRT:
	case ZYDIS_MNEMONIC_FRNDINT:
	case ZYDIS_MNEMONIC_FSIN:
	case ZYDIS_MNEMONIC_FCOS:
	case ZYDIS_MNEMONIC_F2XM1:
		return do_funary;
	case ZYDIS_MNEMONIC_FSCALE:
	case ZYDIS_MNEMONIC_FPREM:
	case ZYDIS_MNEMONIC_FPREM1:
		return do_fbinary01;
	case ZYDIS_MNEMONIC_FPATAN:
	case ZYDIS_MNEMONIC_FYL2X:
	case ZYDIS_MNEMONIC_FYL2XP1:
		return do_fbinary_pop;
	case ZYDIS_MNEMONIC_FPTAN:
	case ZYDIS_MNEMONIC_FSINCOS:
	case ZYDIS_MNEMONIC_FXTRACT:
		return do_fpush2;
	case ZYDIS_MNEMONIC_FXCH:
		return do_fxch;
	case ZYDIS_MNEMONIC_FFREE:
	case ZYDIS_MNEMONIC_FFREEP:
		return do_ffree;
	case ZYDIS_MNEMONIC_FINCSTP:
	case ZYDIS_MNEMONIC_FDECSTP:
		return do_fincdecstp;
	case ZYDIS_MNEMONIC_FNOP:
		return do_fnop;
	case ZYDIS_MNEMONIC_FCMOVB:
	case ZYDIS_MNEMONIC_FCMOVNB:
	case ZYDIS_MNEMONIC_FCMOVE:
	case ZYDIS_MNEMONIC_FCMOVNE:
	case ZYDIS_MNEMONIC_FCMOVBE:
	case ZYDIS_MNEMONIC_FCMOVNBE:
	case ZYDIS_MNEMONIC_FCMOVU:
	case ZYDIS_MNEMONIC_FCMOVNU:
		return do_fcmov;
	case ZYDIS_MNEMONIC_FNSTENV:
	case ZYDIS_MNEMONIC_FNSAVE:
		return do_fnstenv;
	case ZYDIS_MNEMONIC_FLDENV:
	case ZYDIS_MNEMONIC_FRSTOR:
		return do_fldenv;
	default:
		return emu_sse_handler(mnemonic);
	}
}
