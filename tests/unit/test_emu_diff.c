/*
 * Differential tests of the emulator's integer ISA against the host CPU.
 * Instructions are generated with the Zydis encoder from a fixed-seed PRNG,
 * run natively and in the emulator (tests/unit/lib/emu_harness.h), and
 * compared on every GPR, the architecturally defined flags and the data
 * buffer. Faulting cases (#DE) compare the vector and the state at the fault.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <Zydis/Zydis.h>
#include <cmocka.h>

#include "unit/lib/emu_harness.h"

#define CF 0x1ull
#define PF 0x4ull
#define AF 0x10ull
#define ZF 0x40ull
#define SF 0x80ull
#define OF 0x800ull
#define ARITH EH_FLAGS_ARITH

struct ctx {
	struct emu_harness *h;
	uint64_t rng;
	struct eh_state in;
	unsigned cases, failures;
};

/* ---- PRNG and operand values ---- */

static uint64_t rnd(struct ctx *t)
{
	uint64_t x = t->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	t->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static unsigned rn(struct ctx *t, unsigned n)
{
	return (unsigned)(rnd(t) % n);
}

/* Random values biased towards the edges where flags change. */
static uint64_t rval(struct ctx *t)
{
	static const uint64_t edge[] = {0,
					1,
					2,
					0x7f,
					0x80,
					0xff,
					0x7fff,
					0x8000,
					0xffff,
					0x7fffffff,
					0x80000000,
					0xffffffff,
					0x7fffffffffffffffull,
					0x8000000000000000ull,
					~0ull,
					0x100000000ull};

	switch (rn(t, 4)) {
	case 0:
		return edge[rn(t, sizeof(edge) / sizeof(edge[0]))];
	case 1:
		return rnd(t) & 0xff;
	case 2:
		return edge[rn(t, sizeof(edge) / sizeof(edge[0]))] + (rnd(t) & 3) - 1;
	default:
		return rnd(t);
	}
}

/* ---- Encoding ---- */

static const ZydisRegister gpr64[16] = {
    ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RBX,
    ZYDIS_REGISTER_RSP, ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI,
    ZYDIS_REGISTER_R8,	ZYDIS_REGISTER_R9,  ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11,
    ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13, ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};

/* Register n (encoding order) at size bytes; AH..BH when high8 is set (n 0..3). */
static ZydisRegister reg_of(unsigned n, unsigned size, bool high8)
{
	ZydisRegister r64 = gpr64[n];

	if (size == 8)
		return r64;
	if (size == 4)
		return ZYDIS_REGISTER_EAX + (r64 - ZYDIS_REGISTER_RAX);
	if (size == 2)
		return ZYDIS_REGISTER_AX + (r64 - ZYDIS_REGISTER_RAX);
	if (high8)
		return ZYDIS_REGISTER_AH + n;
	if (n < 4)
		return ZYDIS_REGISTER_AL + n;
	if (n < 8)
		return ZYDIS_REGISTER_SPL + (n - 4);
	return ZYDIS_REGISTER_R8B + (n - 8);
}

/* Registers a test may freely clobber: not RSP, RSI, RDI (pointers into the buffer). */
static unsigned free_reg(struct ctx *t)
{
	static const unsigned ok[] = {0, 1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15};

	return ok[rn(t, sizeof(ok) / sizeof(ok[0]))];
}

struct enc {
	ZydisEncoderRequest req;
};

static void enc_init(struct enc *e, ZydisMnemonic m)
{
	memset(&e->req, 0, sizeof(e->req));
	e->req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
	e->req.mnemonic = m;
}

static void op_reg(struct enc *e, ZydisRegister r)
{
	ZydisEncoderOperand *o = &e->req.operands[e->req.operand_count++];

	o->type = ZYDIS_OPERAND_TYPE_REGISTER;
	o->reg.value = r;
}

static void op_imm(struct enc *e, int64_t v)
{
	ZydisEncoderOperand *o = &e->req.operands[e->req.operand_count++];

	o->type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
	o->imm.s = v;
}

/* [rsi/rdi + disp] of size bytes; disp keeps the access inside the buffer. */
static void op_mem(struct ctx *t, struct enc *e, unsigned size)
{
	ZydisEncoderOperand *o = &e->req.operands[e->req.operand_count++];

	o->type = ZYDIS_OPERAND_TYPE_MEMORY;
	o->mem.base = rn(t, 2) ? ZYDIS_REGISTER_RSI : ZYDIS_REGISTER_RDI;
	o->mem.displacement = rn(t, 3) == 0 ? (int64_t)rn(t, 64) : (int64_t)rn(t, 3000);
	if (o->mem.base == ZYDIS_REGISTER_RDI && rn(t, 4) == 0)
		o->mem.displacement = -(int64_t)rn(t, 16); /* straddle the page boundary */
	o->mem.size = (ZyanU16)size;
}

/* Append the encoded instruction to buf; returns false if Zydis refuses the form. */
static bool emit(struct enc *e, uint8_t *buf, size_t *len)
{
	ZyanUSize n = EH_CODE_MAX - *len;

	if (ZYAN_FAILED(ZydisEncoderEncodeInstruction(&e->req, buf + *len, &n)))
		return false;
	*len += n;
	return true;
}

/* ---- Running cases ---- */

static void randomize_state(struct ctx *t)
{
	eh_state_init(t->h, &t->in);
	for (int r = 0; r < 16; r++)
		if (r != EH_RSP && r != EH_RSI && r != EH_RDI)
			t->in.gpr[r] = rval(t);
	t->in.gpr[EH_RSI] += 64 * rn(t, 8);
	t->in.rflags = rnd(t) & ARITH;
	for (int b = 0; b < EH_MEM_SIZE; b += 8) {
		uint64_t v = rval(t);

		memcpy(t->in.mem + b, &v, 8);
	}
}

static void run_case(struct ctx *t, const uint8_t *code, size_t len, const struct eh_mask *m,
		     const char *what)
{
	char label[256];
	int n = snprintf(label, sizeof(label), "%s [", what);

	for (size_t k = 0; k < len && k < 24 && n < (int)sizeof(label) - 4; k++)
		n += snprintf(label + n, sizeof(label) - (size_t)n, "%02x", code[k]);
	snprintf(label + n, sizeof(label) - (size_t)n, "]");
	t->cases++;
	if (!eh_check(t->h, code, len, &t->in, m, label))
		t->failures++;
}

static struct eh_mask mask_flags(uint64_t flags)
{
	struct eh_mask m = eh_mask_default();

	m.flags = flags | EH_FLAG_DF;
	return m;
}

static unsigned rsize(struct ctx *t)
{
	return 1u << rn(t, 4);
}

/* ---- Families ---- */

static void t_alu(struct ctx *t, unsigned iters)
{
	static const ZydisMnemonic ops[] = {
	    ZYDIS_MNEMONIC_ADD, ZYDIS_MNEMONIC_OR,  ZYDIS_MNEMONIC_ADC,
	    ZYDIS_MNEMONIC_SBB, ZYDIS_MNEMONIC_AND, ZYDIS_MNEMONIC_SUB,
	    ZYDIS_MNEMONIC_XOR, ZYDIS_MNEMONIC_CMP, ZYDIS_MNEMONIC_TEST};

	for (unsigned k = 0; k < iters; k++) {
		ZydisMnemonic mn = ops[rn(t, 9)];
		unsigned sz = rsize(t), form = rn(t, 5);
		bool logic = mn == ZYDIS_MNEMONIC_OR || mn == ZYDIS_MNEMONIC_AND ||
			     mn == ZYDIS_MNEMONIC_XOR || mn == ZYDIS_MNEMONIC_TEST;
		struct enc e;
		uint8_t code[64];
		size_t len = 0;

		randomize_state(t);
		enc_init(&e, mn);
		if (form == 0 || form == 1) {
			op_reg(&e, reg_of(free_reg(t), sz, sz == 1 && rn(t, 4) == 0));
			if (form == 0)
				op_reg(&e, reg_of(free_reg(t), sz, false));
			else
				op_imm(&e, sz == 1 ? (int8_t)rval(t) : (int32_t)rval(t));
		} else if (form == 2 || form == 3) {
			op_mem(t, &e, sz);
			if (form == 2)
				op_reg(&e, reg_of(free_reg(t), sz, false));
			else
				op_imm(&e, sz == 1 ? (int8_t)rval(t) : (int32_t)rval(t));
			if (mn != ZYDIS_MNEMONIC_CMP && mn != ZYDIS_MNEMONIC_TEST && rn(t, 3) == 0)
				e.req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
		} else {
			if (mn == ZYDIS_MNEMONIC_TEST)
				continue;
			op_reg(&e, reg_of(free_reg(t), sz, false));
			op_mem(t, &e, sz);
		}
		if (!emit(&e, code, &len))
			continue;
		struct eh_mask m = mask_flags(logic ? ARITH & ~AF : ARITH);

		run_case(t, code, len, &m, "alu");
	}
}

static void t_unary(struct ctx *t, unsigned iters)
{
	static const ZydisMnemonic ops[] = {ZYDIS_MNEMONIC_INC, ZYDIS_MNEMONIC_DEC,
					    ZYDIS_MNEMONIC_NEG, ZYDIS_MNEMONIC_NOT};

	for (unsigned k = 0; k < iters; k++) {
		struct enc e;
		uint8_t code[32];
		size_t len = 0;
		unsigned sz = rsize(t);

		randomize_state(t);
		enc_init(&e, ops[rn(t, 4)]);
		if (rn(t, 2)) {
			op_reg(&e, reg_of(free_reg(t), sz, false));
		} else {
			op_mem(t, &e, sz);
			if (rn(t, 2))
				e.req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
		}
		if (!emit(&e, code, &len))
			continue;
		struct eh_mask m = mask_flags(ARITH);

		run_case(t, code, len, &m, "unary");
	}
}

/* Count after masking, as the hardware sees it. */
static unsigned shift_count(unsigned raw, unsigned sz)
{
	return raw & (sz == 8 ? 63 : 31);
}

static void t_shift(struct ctx *t, unsigned iters)
{
	static const ZydisMnemonic ops[] = {
	    ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_SHR, ZYDIS_MNEMONIC_SAR, ZYDIS_MNEMONIC_ROL,
	    ZYDIS_MNEMONIC_ROR, ZYDIS_MNEMONIC_RCL, ZYDIS_MNEMONIC_RCR};

	for (unsigned k = 0; k < iters; k++) {
		ZydisMnemonic mn = ops[rn(t, 7)];
		unsigned sz = rsize(t), bits = sz * 8, raw;
		struct enc e;
		uint8_t code[32];
		size_t len = 0;
		int how = (int)rn(t, 3);

		randomize_state(t);
		raw = rn(t, 4) == 0 ? rn(t, 256) : rn(t, bits + 2);
		enc_init(&e, mn);
		if (rn(t, 3))
			op_reg(&e, reg_of(rn(t, 2) ? 0 : 2 + rn(t, 2), sz, false));
		else
			op_mem(t, &e, sz);
		if (how == 0) {
			op_reg(&e, ZYDIS_REGISTER_CL);
			t->in.gpr[EH_RCX] = (t->in.gpr[EH_RCX] & ~0xffull) | raw;
		} else if (how == 1) {
			op_imm(&e, raw);
		} else {
			raw = 1;
			op_imm(&e, 1);
		}
		if (!emit(&e, code, &len))
			continue;
		unsigned cnt = shift_count(raw, sz);
		uint64_t f = ARITH;
		bool rot = mn == ZYDIS_MNEMONIC_ROL || mn == ZYDIS_MNEMONIC_ROR;
		bool rc = mn == ZYDIS_MNEMONIC_RCL || mn == ZYDIS_MNEMONIC_RCR;

		if (cnt != 0) {
			if (!rot && !rc)
				f &= ~AF;
			if (cnt != 1)
				f &= ~OF;
			if (!rot && !rc && cnt > bits)
				f &= ~CF;
		}
		struct eh_mask m = mask_flags(f);

		run_case(t, code, len, &m, "shift");
	}
}

static void t_shxd(struct ctx *t, unsigned iters)
{
	for (unsigned k = 0; k < iters; k++) {
		unsigned sz = 2u << rn(t, 3), bits = sz * 8, raw = rn(t, bits + 1);
		struct enc e;
		uint8_t code[32];
		size_t len = 0;

		randomize_state(t);
		enc_init(&e, rn(t, 2) ? ZYDIS_MNEMONIC_SHLD : ZYDIS_MNEMONIC_SHRD);
		if (rn(t, 2))
			op_reg(&e, reg_of(rn(t, 2) ? 0 : 3, sz, false));
		else
			op_mem(t, &e, sz);
		op_reg(&e, reg_of(2, sz, false));
		if (rn(t, 2)) {
			op_reg(&e, ZYDIS_REGISTER_CL);
			t->in.gpr[EH_RCX] = (t->in.gpr[EH_RCX] & ~0xffull) | raw;
		} else {
			op_imm(&e, raw);
		}
		if (!emit(&e, code, &len))
			continue;
		unsigned cnt = shift_count(raw, sz);
		uint64_t f = ARITH;

		if (sz == 2 && cnt > 16)
			continue; /* result undefined */
		if (cnt) {
			f &= ~AF;
			if (cnt != 1)
				f &= ~OF;
		}
		struct eh_mask m = mask_flags(f);

		run_case(t, code, len, &m, "shxd");
	}
}

static void t_muldiv(struct ctx *t, unsigned iters)
{
	for (unsigned k = 0; k < iters; k++) {
		unsigned sz = rsize(t), form = rn(t, 6);
		struct enc e;
		uint8_t code[32];
		size_t len = 0;
		static const ZydisMnemonic one[] = {ZYDIS_MNEMONIC_MUL, ZYDIS_MNEMONIC_IMUL,
						    ZYDIS_MNEMONIC_DIV, ZYDIS_MNEMONIC_IDIV};
		ZydisMnemonic mn;
		unsigned src = 3 + rn(t, 2) * 6; /* rbx or r9 */

		randomize_state(t);
		if (form < 4) {
			mn = one[form];
			enc_init(&e, mn);
			if (rn(t, 3))
				op_reg(&e, reg_of(src, sz, false));
			else
				op_mem(t, &e, sz);
			if (mn == ZYDIS_MNEMONIC_DIV || mn == ZYDIS_MNEMONIC_IDIV) {
				/* Mostly divisions that succeed; some #DE by zero or overflow. */
				if (rn(t, 4)) {
					t->in.gpr[EH_RDX] = rn(t, 2) ? 0 : rval(t) & 0xff;
					if (mn == ZYDIS_MNEMONIC_IDIV && rn(t, 2))
						t->in.gpr[EH_RDX] = ~0ull;
				}
				if (rn(t, 8) == 0)
					t->in.gpr[src] = 0;
			}
		} else {
			if (sz == 1)
				sz = 4;
			mn = ZYDIS_MNEMONIC_IMUL;
			enc_init(&e, mn);
			op_reg(&e, reg_of(free_reg(t), sz, false));
			if (rn(t, 2))
				op_reg(&e, reg_of(src, sz, false));
			else
				op_mem(t, &e, sz);
			if (form == 5)
				op_imm(&e, rn(t, 2) ? (int8_t)rval(t) : (int32_t)rval(t));
		}
		if (!emit(&e, code, &len))
			continue;
		uint64_t f = (mn == ZYDIS_MNEMONIC_MUL || mn == ZYDIS_MNEMONIC_IMUL) ? CF | OF : 0;
		struct eh_mask m = mask_flags(f);

		run_case(t, code, len, &m, "muldiv");
	}
}

static void t_bits(struct ctx *t, unsigned iters)
{
	static const ZydisMnemonic bt[] = {ZYDIS_MNEMONIC_BT, ZYDIS_MNEMONIC_BTS,
					   ZYDIS_MNEMONIC_BTR, ZYDIS_MNEMONIC_BTC};
	static const ZydisMnemonic scan[] = {ZYDIS_MNEMONIC_BSF, ZYDIS_MNEMONIC_BSR,
					     ZYDIS_MNEMONIC_TZCNT, ZYDIS_MNEMONIC_LZCNT,
					     ZYDIS_MNEMONIC_POPCNT};

	for (unsigned k = 0; k < iters; k++) {
		unsigned sz = 2u << rn(t, 3);
		struct enc e;
		uint8_t code[32];
		size_t len = 0;
		struct eh_mask m;

		randomize_state(t);
		if (rn(t, 2)) {
			ZydisMnemonic mn = bt[rn(t, 4)];

			enc_init(&e, mn);
			int form = (int)rn(t, 3);

			if (form == 0) {
				op_reg(&e, reg_of(0, sz, false));
				op_reg(&e, reg_of(3, sz, false));
			} else if (form == 1) {
				op_mem(t, &e, sz);
				op_imm(&e, rn(t, 256));
			} else {
				/* Memory with a register bit offset: base mid-buffer, offset +-2
				 * KiB. */
				ZydisEncoderOperand *o = &e.req.operands[e.req.operand_count++];

				o->type = ZYDIS_OPERAND_TYPE_MEMORY;
				o->mem.base = ZYDIS_REGISTER_RDI;
				o->mem.size = (ZyanU16)sz;
				op_reg(&e, reg_of(3, sz, false));
				t->in.gpr[EH_RBX] = (uint64_t)((int64_t)rn(t, 32768) - 16384);
				if (sz == 2)
					t->in.gpr[EH_RBX] = (uint64_t)(int64_t)(int16_t)rnd(t);
			}
			if (mn != ZYDIS_MNEMONIC_BT && form != 0 && rn(t, 2))
				e.req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
			m = mask_flags(CF);
		} else {
			ZydisMnemonic mn = scan[rn(t, 5)];

			enc_init(&e, mn);
			op_reg(&e, reg_of(free_reg(t), sz, false));
			if (rn(t, 2)) {
				unsigned s = 3;

				op_reg(&e, reg_of(s, sz, false));
				if (rn(t, 4) == 0)
					t->in.gpr[s] = 0;
				else if (rn(t, 2))
					t->in.gpr[s] = 1ull << rn(t, 64);
			} else {
				op_mem(t, &e, sz);
			}
			m = mask_flags(mn == ZYDIS_MNEMONIC_POPCNT ? ARITH
				       : (mn == ZYDIS_MNEMONIC_BSF || mn == ZYDIS_MNEMONIC_BSR)
					   ? ZF
					   : CF | ZF);
			if (mn == ZYDIS_MNEMONIC_BSF || mn == ZYDIS_MNEMONIC_BSR) {
				/*
				 * A zero source leaves the destination undefined (Intel):
				 * follow with CMOVZ dst, r12 so the result is defined.
				 */
				struct enc e2;

				if (!emit(&e, code, &len))
					continue;
				enc_init(&e2, ZYDIS_MNEMONIC_CMOVZ);
				op_reg(&e2, e.req.operands[0].reg.value);
				op_reg(&e2, reg_of(12, sz, false));
				if (!emit(&e2, code, &len))
					continue;
				run_case(t, code, len, &m, "bitscan");
				continue;
			}
		}
		if (!emit(&e, code, &len))
			continue;
		run_case(t, code, len, &m, "bits");
	}
}

static void t_moves(struct ctx *t, unsigned iters)
{
	for (unsigned k = 0; k < iters; k++) {
		struct enc e;
		uint8_t code[32];
		size_t len = 0;
		unsigned sz = rsize(t), kind = rn(t, 12);
		uint64_t f = ARITH;

		randomize_state(t);
		switch (kind) {
		case 0:
			enc_init(&e, ZYDIS_MNEMONIC_MOV);
			op_reg(&e, reg_of(free_reg(t), sz, sz == 1 && rn(t, 3) == 0));
			if (rn(t, 2))
				op_mem(t, &e, sz);
			else
				op_imm(&e,
				       sz == 8 && rn(t, 2) ? (int64_t)rval(t) : (int32_t)rval(t));
			break;
		case 1:
			enc_init(&e, ZYDIS_MNEMONIC_MOV);
			op_mem(t, &e, sz);
			op_reg(&e, reg_of(free_reg(t), sz, false));
			break;
		case 2:
		case 3: {
			unsigned ssz = rn(t, 2) ? 1 : 2,
				 dsz = ssz == 1 ? 2u << rn(t, 3) : 4u << rn(t, 2);

			enc_init(&e, kind == 2 ? ZYDIS_MNEMONIC_MOVZX : ZYDIS_MNEMONIC_MOVSX);
			op_reg(&e, reg_of(free_reg(t), dsz, false));
			if (rn(t, 2))
				op_reg(&e, reg_of(free_reg(t), ssz, false));
			else
				op_mem(t, &e, ssz);
			break;
		}
		case 4:
			enc_init(&e, ZYDIS_MNEMONIC_MOVSXD);
			op_reg(&e, reg_of(free_reg(t), 8, false));
			op_reg(&e, reg_of(free_reg(t), 4, false));
			break;
		case 5: {
			ZydisEncoderOperand *o;

			enc_init(&e, ZYDIS_MNEMONIC_LEA);
			op_reg(&e, reg_of(free_reg(t), sz == 1 ? 8 : sz, false));
			o = &e.req.operands[e.req.operand_count++];
			o->type = ZYDIS_OPERAND_TYPE_MEMORY;
			o->mem.base = gpr64[free_reg(t)];
			o->mem.index = gpr64[free_reg(t)];
			o->mem.scale = (ZyanU8)(1u << rn(t, 4));
			o->mem.displacement = (int32_t)rval(t);
			o->mem.size = 0;
			break;
		}
		case 6:
			enc_init(&e, ZYDIS_MNEMONIC_XCHG);
			if (rn(t, 2))
				op_mem(t, &e, sz);
			else
				op_reg(&e, reg_of(free_reg(t), sz, false));
			op_reg(&e, reg_of(free_reg(t), sz, false));
			break;
		case 7:
			enc_init(&e, ZYDIS_MNEMONIC_BSWAP);
			op_reg(&e, reg_of(free_reg(t), rn(t, 2) ? 4 : 8, false));
			break;
		case 8:
			enc_init(&e, rn(t, 2) ? ZYDIS_MNEMONIC_XADD : ZYDIS_MNEMONIC_CMPXCHG);
			if (rn(t, 2)) {
				op_mem(t, &e, sz);
				if (rn(t, 2))
					e.req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
			} else {
				op_reg(&e, reg_of(free_reg(t), sz, false));
			}
			op_reg(&e, reg_of(3 + 6 * rn(t, 2), sz, false));
			if (rn(t, 2)) /* make CMPXCHG succeed sometimes */
				t->in.gpr[EH_RAX] = t->in.gpr[EH_RBX];
			break;
		case 9: {
			static const ZydisMnemonic cv[] = {ZYDIS_MNEMONIC_CBW,	ZYDIS_MNEMONIC_CWDE,
							   ZYDIS_MNEMONIC_CDQE, ZYDIS_MNEMONIC_CWD,
							   ZYDIS_MNEMONIC_CDQ,	ZYDIS_MNEMONIC_CQO};

			enc_init(&e, cv[rn(t, 6)]);
			break;
		}
		case 10: {
			/* SETcc / CMOVcc on random flags. */
			unsigned cc = rn(t, 16);

			if (rn(t, 2)) {
				enc_init(&e, ZYDIS_MNEMONIC_SETO + 0);
				static const ZydisMnemonic setcc[16] = {
				    ZYDIS_MNEMONIC_SETO,  ZYDIS_MNEMONIC_SETNO,
				    ZYDIS_MNEMONIC_SETB,  ZYDIS_MNEMONIC_SETNB,
				    ZYDIS_MNEMONIC_SETZ,  ZYDIS_MNEMONIC_SETNZ,
				    ZYDIS_MNEMONIC_SETBE, ZYDIS_MNEMONIC_SETNBE,
				    ZYDIS_MNEMONIC_SETS,  ZYDIS_MNEMONIC_SETNS,
				    ZYDIS_MNEMONIC_SETP,  ZYDIS_MNEMONIC_SETNP,
				    ZYDIS_MNEMONIC_SETL,  ZYDIS_MNEMONIC_SETNL,
				    ZYDIS_MNEMONIC_SETLE, ZYDIS_MNEMONIC_SETNLE};

				e.req.mnemonic = setcc[cc];
				if (rn(t, 2))
					op_reg(&e, reg_of(free_reg(t), 1, false));
				else
					op_mem(t, &e, 1);
			} else {
				static const ZydisMnemonic cmov[16] = {
				    ZYDIS_MNEMONIC_CMOVO,  ZYDIS_MNEMONIC_CMOVNO,
				    ZYDIS_MNEMONIC_CMOVB,  ZYDIS_MNEMONIC_CMOVNB,
				    ZYDIS_MNEMONIC_CMOVZ,  ZYDIS_MNEMONIC_CMOVNZ,
				    ZYDIS_MNEMONIC_CMOVBE, ZYDIS_MNEMONIC_CMOVNBE,
				    ZYDIS_MNEMONIC_CMOVS,  ZYDIS_MNEMONIC_CMOVNS,
				    ZYDIS_MNEMONIC_CMOVP,  ZYDIS_MNEMONIC_CMOVNP,
				    ZYDIS_MNEMONIC_CMOVL,  ZYDIS_MNEMONIC_CMOVNL,
				    ZYDIS_MNEMONIC_CMOVLE, ZYDIS_MNEMONIC_CMOVNLE};
				unsigned csz = 2u << rn(t, 3);

				enc_init(&e, cmov[cc]);
				op_reg(&e, reg_of(free_reg(t), csz, false));
				if (rn(t, 2))
					op_reg(&e, reg_of(free_reg(t), csz, false));
				else
					op_mem(t, &e, csz);
			}
			break;
		}
		default:
			enc_init(&e,
				 rn(t, 2) ? ZYDIS_MNEMONIC_CMPXCHG8B : ZYDIS_MNEMONIC_CMPXCHG16B);
			{
				ZydisEncoderOperand *o = &e.req.operands[e.req.operand_count++];
				bool wide = e.req.mnemonic == ZYDIS_MNEMONIC_CMPXCHG16B;

				o->type = ZYDIS_OPERAND_TYPE_MEMORY;
				o->mem.base = ZYDIS_REGISTER_RSI;
				o->mem.displacement = 16 * rn(t, 100) + (rn(t, 8) == 0 ? 8 : 0);
				o->mem.size = wide ? 16 : 8;
				if (rn(t, 2))
					e.req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
				if (rn(t, 2)) {
					uint64_t lo, hi;
					uint8_t *p =
					    t->in.mem + 64 * 0 + (size_t)o->mem.displacement;

					(void)p;
					memcpy(&lo,
					       t->in.mem + (t->in.gpr[EH_RSI] - eh_mem_addr(t->h)) +
						   (size_t)o->mem.displacement,
					       8);
					memcpy(&hi,
					       t->in.mem + (t->in.gpr[EH_RSI] - eh_mem_addr(t->h)) +
						   (size_t)o->mem.displacement + 8,
					       8);
					if (wide) {
						t->in.gpr[EH_RAX] = lo;
						t->in.gpr[EH_RDX] = hi;
					} else {
						t->in.gpr[EH_RAX] = (uint32_t)lo;
						t->in.gpr[EH_RDX] = lo >> 32;
					}
				}
				f = ZF;
			}
			break;
		}
		if (!emit(&e, code, &len))
			continue;
		struct eh_mask m = mask_flags(f);

		run_case(t, code, len, &m, "moves");
	}
}

/* Hand-written sequences: branches, stack, flag instructions. */
static void t_control(struct ctx *t, unsigned iters)
{
	static const struct {
		const char *name;
		uint8_t len;
		uint8_t code[24];
	} seq[] = {
	    {"call/pop", 6, {0xe8, 0x00, 0x00, 0x00, 0x00, 0x58}},
	    {"call/ret", 9, {0xe8, 0x02, 0x00, 0x00, 0x00, 0xeb, 0x02, 0xc3, 0x90}},
	    {"call/ret8",
	     15,
	     {0x6a, 0x05, 0x6a, 0x06, 0xe8, 0x02, 0x00, 0x00, 0x00, 0xeb, 0x04, 0xc2, 0x08, 0x00,
	      0x90}},
	    {"push/pop", 8, {0x50, 0x53, 0x41, 0x51, 0x5a, 0x41, 0x5b, 0x5d}},
	    {"push imm", 9, {0x6a, 0x80, 0x68, 0x78, 0x56, 0x34, 0x82, 0x58, 0x5b}},
	    {"push/pop mem", 8, {0xff, 0x76, 0x08, 0x8f, 0x47, 0x10, 0x66, 0x50}},
	    {"pushf/popf", 4, {0x9c, 0x58, 0x50, 0x9d}},
	    {"popf all", 9, {0x48, 0xc7, 0xc0, 0xd5, 0x0c, 0x00, 0x00, 0x50, 0x9d}},
	    {"lahf/sahf", 5, {0x9f, 0x80, 0xf4, 0xd5, 0x9e}},
	    {"clc/stc/cmc", 4, {0xf8, 0xf9, 0xf5, 0x9c}},
	    {"cld/std", 3, {0xfd, 0x9c, 0xfc}},
	    {"enter/leave", 9, {0xc8, 0x20, 0x00, 0x00, 0x48, 0x89, 0xe0, 0xc9, 0x90}},
	    {"enter lvl2", 9, {0xc8, 0x10, 0x00, 0x02, 0x48, 0x89, 0xe0, 0xc9, 0x90}},
	    {"jrcxz", 5, {0xe3, 0x02, 0xff, 0xc3, 0x90}},
	    {"loop body", 10, {0xb9, 0x07, 0x00, 0x00, 0x00, 0x48, 0xff, 0xc3, 0xe2, 0xfb}},
	    {"loope", 11, {0xb9, 0x07, 0x00, 0x00, 0x00, 0x48, 0x39, 0xc0, 0xe1, 0xfc, 0x90}},
	    {"jmp ind", 11, {0x48, 0x8d, 0x05, 0x02, 0x00, 0x00, 0x00, 0xff, 0xe0, 0x90, 0x90}},
	    {"xlat", 4, {0x48, 0x89, 0xf3, 0xd7}},
	    {"jmp rel32", 7, {0xe9, 0x01, 0x00, 0x00, 0x00, 0x90, 0x90}},
	    {"call ind",
	     12,
	     {0x48, 0x8d, 0x05, 0x05, 0x00, 0x00, 0x00, 0xff, 0xd0, 0xeb, 0x01, 0xc3}},
	};
	static const uint8_t jcc_tpl[] = {0x70, 0x03, 0x48, 0xff, 0xc3, 0x90};

	for (unsigned k = 0; k < iters; k++) {
		randomize_state(t);
		t->in.gpr[EH_RCX] &= 0xffff;
		struct eh_mask m = mask_flags(ARITH);

		if (rn(t, 2)) {
			uint8_t code[8];

			memcpy(code, jcc_tpl, sizeof(jcc_tpl));
			code[0] = (uint8_t)(0x70 + rn(t, 16));
			run_case(t, code, sizeof(jcc_tpl), &m, "jcc");
			/* And the rel32 form, 0f 8x. */
			uint8_t c2[12] = {
			    0x0f, (uint8_t)(0x80 + rn(t, 16)), 3, 0, 0, 0, 0x48, 0xff, 0xc3, 0x90};

			run_case(t, c2, 10, &m, "jcc32");
			continue;
		}
		unsigned s = rn(t, sizeof(seq) / sizeof(seq[0]));

		if (!strncmp(seq[s].name, "enter", 5))
			t->in.gpr[EH_RBP] = eh_mem_addr(t->h) + 0x400 + 8 * rn(t, 64);
		if (!strcmp(seq[s].name, "jrcxz") && rn(t, 2))
			t->in.gpr[EH_RCX] = 0;
		run_case(t, seq[s].code, seq[s].len, &m, seq[s].name);
	}
}

/* Hints and fences that must do nothing architectural, and UD2's #UD. */
static void t_misc(struct ctx *t, unsigned iters)
{
	static const struct {
		uint8_t len;
		uint8_t code[8];
	} seq[] = {
	    {1, {0x90}},
	    {4, {0x0f, 0x1f, 0x40, 0x00}},	 /* nopl [rax] */
	    {2, {0xf3, 0x90}},			 /* pause */
	    {3, {0x0f, 0x18, 0x0e}},		 /* prefetcht0 [rsi] */
	    {3, {0x0f, 0x0d, 0x0e}},		 /* prefetchw [rsi] */
	    {4, {0xf3, 0x0f, 0x1e, 0xfa}},	 /* endbr64 */
	    {3, {0x0f, 0xae, 0xf0}},		 /* mfence */
	    {3, {0x0f, 0xae, 0xe8}},		 /* lfence */
	    {3, {0x0f, 0xae, 0xf8}},		 /* sfence */
	    {3, {0x0f, 0xae, 0x3e}},		 /* clflush [rsi] */
	    {4, {0x48, 0x0f, 0xc3, 0x06}},	 /* movnti [rsi], rax */
	    {5, {0x48, 0x01, 0xd8, 0x0f, 0x0b}}, /* add rax, rbx; ud2 */
	    {2, {0xf0, 0x90}},			 /* lock nop: #UD */
	};

	for (unsigned k = 0; k < iters; k++) {
		unsigned s = rn(t, sizeof(seq) / sizeof(seq[0]));
		struct eh_mask m = mask_flags(ARITH);

		randomize_state(t);
		run_case(t, seq[s].code, seq[s].len, &m, "misc");
	}
}

static void t_string(struct ctx *t, unsigned iters)
{
	/* op bytes: movs a4/a5, stos aa/ab, lods ac/ad, scas ae/af, cmps a6/a7 */
	static const uint8_t ops[] = {0xa4, 0xaa, 0xac, 0xae, 0xa6};

	for (unsigned k = 0; k < iters; k++) {
		uint8_t code[16];
		size_t len = 0;
		unsigned op = rn(t, 5), szc = rn(t, 4);
		unsigned sz = 1u << szc;
		bool df = rn(t, 4) == 0;

		randomize_state(t);
		/* Pointers with room either way; counts small enough to stay inside. */
		t->in.gpr[EH_RSI] = eh_mem_addr(t->h) + 0x800 + rn(t, 0x600);
		t->in.gpr[EH_RDI] = eh_mem_addr(t->h) + 0x800 + rn(t, 0x800);
		if (rn(t, 3) == 0)
			t->in.gpr[EH_RDI] = t->in.gpr[EH_RSI] + rn(t, 5); /* overlapping copy */
		t->in.gpr[EH_RCX] = rn(t, 6) == 0 ? 0 : rn(t, 0x600 / sz / 2 + 1);
		if (df) {
			t->in.rflags |= EH_FLAG_DF;
			code[len++] = 0xfd; /* std: flags load covers it too */
		}
		if (op >= 3 && rn(t, 2)) {
			/* Make SCAS/CMPS find a match or mismatch part-way. */
			memmove(t->in.mem + (t->in.gpr[EH_RDI] - eh_mem_addr(t->h)),
				t->in.mem + (t->in.gpr[EH_RSI] - eh_mem_addr(t->h)), 0x100);
		}
		unsigned rep = rn(t, 3); /* none, f3, f2 */

		if (rep == 1)
			code[len++] = 0xf3;
		else if (rep == 2)
			code[len++] = 0xf2;
		if (sz == 2)
			code[len++] = 0x66;
		if (sz == 8)
			code[len++] = 0x48;
		code[len++] = (uint8_t)(ops[op] + (sz > 1));
		code[len++] = 0xfc; /* cld: leave DF clear for the epilogue's ABI */
		struct eh_mask m = mask_flags(ARITH);

		m.flags &= ~EH_FLAG_DF;
		run_case(t, code, len, &m, "string");
	}
}

/* Random sequences of instructions whose flags are all defined (AF aside). */
static void t_mix(struct ctx *t, unsigned iters)
{
	static const ZydisMnemonic ops[] = {
	    ZYDIS_MNEMONIC_ADD,	 ZYDIS_MNEMONIC_ADC,  ZYDIS_MNEMONIC_SUB,    ZYDIS_MNEMONIC_SBB,
	    ZYDIS_MNEMONIC_AND,	 ZYDIS_MNEMONIC_OR,   ZYDIS_MNEMONIC_XOR,    ZYDIS_MNEMONIC_CMP,
	    ZYDIS_MNEMONIC_INC,	 ZYDIS_MNEMONIC_DEC,  ZYDIS_MNEMONIC_NEG,    ZYDIS_MNEMONIC_NOT,
	    ZYDIS_MNEMONIC_MOV,	 ZYDIS_MNEMONIC_SETB, ZYDIS_MNEMONIC_CMOVLE, ZYDIS_MNEMONIC_SHL,
	    ZYDIS_MNEMONIC_XCHG, ZYDIS_MNEMONIC_TEST};

	for (unsigned k = 0; k < iters; k++) {
		uint8_t code[EH_CODE_MAX];
		size_t len = 0;
		unsigned n = 5 + rn(t, 25);

		randomize_state(t);
		for (unsigned q = 0; q < n; q++) {
			ZydisMnemonic mn = ops[rn(t, sizeof(ops) / sizeof(ops[0]))];
			unsigned sz = rsize(t);
			struct enc e;

			enc_init(&e, mn);
			if (mn == ZYDIS_MNEMONIC_SETB) {
				op_reg(&e, reg_of(free_reg(t), 1, false));
			} else if (mn == ZYDIS_MNEMONIC_CMOVLE) {
				sz = sz == 1 ? 4 : sz;
				op_reg(&e, reg_of(free_reg(t), sz, false));
				op_reg(&e, reg_of(free_reg(t), sz, false));
			} else if (mn == ZYDIS_MNEMONIC_SHL) {
				rn(t, 2) ? op_reg(&e, reg_of(free_reg(t), sz, false))
					 : op_mem(t, &e, sz);
				op_imm(&e, 1);
			} else if (mn >= ZYDIS_MNEMONIC_INC &&
				   (mn == ZYDIS_MNEMONIC_INC || mn == ZYDIS_MNEMONIC_DEC ||
				    mn == ZYDIS_MNEMONIC_NEG || mn == ZYDIS_MNEMONIC_NOT)) {
				rn(t, 2) ? op_reg(&e, reg_of(free_reg(t), sz, false))
					 : op_mem(t, &e, sz);
			} else {
				if (rn(t, 3))
					op_reg(&e, reg_of(free_reg(t), sz, false));
				else
					op_mem(t, &e, sz);
				if (e.req.operands[0].type == ZYDIS_OPERAND_TYPE_MEMORY || rn(t, 2))
					op_reg(&e, reg_of(free_reg(t), sz, false));
				else
					op_imm(&e, (int8_t)rval(t));
			}
			if (!emit(&e, code, &len))
				continue;
		}
		struct eh_mask m = mask_flags(ARITH & ~AF);

		run_case(t, code, len, &m, "mix");
	}
}

#ifndef EMU_DIFF_NO_MAIN
/* ---- cmocka glue ---- */

static int setup(void **state)
{
	struct ctx *t = calloc(1, sizeof(*t));

	if (!t)
		return -1;
	t->h = eh_create();
	if (!t->h) {
		free(t);
		return -1;
	}
	t->rng = 0x9e3779b97f4a7c15ull;
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *t = *state;

	eh_destroy(t->h);
	free(t);
	return 0;
}

#define FAMILY(fn, n)                                                                              \
	static void test_##fn(void **state)                                                        \
	{                                                                                          \
		struct ctx *t = *state;                                                            \
		unsigned before = t->cases;                                                        \
		t->failures = 0;                                                                   \
		fn(t, n);                                                                          \
		printf("%s: %u cases, %u failures\n", #fn, t->cases - before, t->failures);        \
		assert_true(t->cases - before > (n) / 2);                                          \
		assert_int_equal(t->failures, 0);                                                  \
	}
FAMILY(t_alu, 3000)
FAMILY(t_unary, 800)
FAMILY(t_shift, 3000)
FAMILY(t_shxd, 1000)
FAMILY(t_muldiv, 2000)
FAMILY(t_bits, 2000)
FAMILY(t_moves, 2000)
FAMILY(t_control, 1000)
FAMILY(t_string, 1500)
FAMILY(t_mix, 500)
FAMILY(t_misc, 200)

static void test_smoke(void **state)
{
	struct ctx *t = *state;
	struct eh_state *n = malloc(sizeof(*n)), *e = malloc(sizeof(*e));
	/* add rax, rbx; mov [rsi], rax */
	static const uint8_t code[] = {0x48, 0x01, 0xd8, 0x48, 0x89, 0x06};

	assert_non_null(n);
	assert_non_null(e);
	eh_state_init(t->h, &t->in);
	t->in.gpr[EH_RAX] = 40;
	t->in.gpr[EH_RBX] = 2;
	assert_int_equal(eh_run_native(t->h, code, sizeof(code), &t->in, n), 0);
	assert_int_equal(eh_run_emu(t->h, code, sizeof(code), &t->in, e), 0);
	assert_int_equal(n->gpr[EH_RAX], 42);
	assert_int_equal(e->gpr[EH_RAX], 42);
	assert_int_equal(e->mem[0], 42);
	assert_int_equal(e->fault, -1);
	struct eh_mask m = eh_mask_default();

	assert_true(eh_compare(n, e, &m, "smoke"));
	/* The comparison must be able to fail. */
	e->gpr[EH_RBX] ^= 1;
	assert_false(eh_compare(n, e, &m, "smoke (expected mismatch)"));
	free(n);
	free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_smoke),     cmocka_unit_test(test_t_alu),
	    cmocka_unit_test(test_t_unary),   cmocka_unit_test(test_t_shift),
	    cmocka_unit_test(test_t_shxd),    cmocka_unit_test(test_t_muldiv),
	    cmocka_unit_test(test_t_bits),    cmocka_unit_test(test_t_moves),
	    cmocka_unit_test(test_t_control), cmocka_unit_test(test_t_string),
	    cmocka_unit_test(test_t_mix),     cmocka_unit_test(test_t_misc),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
#endif
