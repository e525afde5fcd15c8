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
	default:
		return emu_sse_handler(mnemonic);
	}
}
