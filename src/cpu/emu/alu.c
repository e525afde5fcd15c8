/*
 * Integer arithmetic, logic, shifts, multiply/divide, bit instructions and
 * the atomic read-modify-write family. LOCK-prefixed forms run as host
 * atomics on the guest page so other vCPUs never see a torn update.
 */
#include <Zydis/Zydis.h>

#include "cpu/emu/core.h"

enum alu_op { A_ADD, A_OR, A_ADC, A_SBB, A_AND, A_SUB, A_XOR, A_CMP, A_TEST };

/* ---- Atomic helpers on a host pointer into guest RAM ---- */

static bool cas_n(void *p, unsigned size, uint64_t *expected, uint64_t desired)
{
	switch (size) {
	case 1: {
		uint8_t e = (uint8_t)*expected;
		bool ok = __atomic_compare_exchange_n((uint8_t *)p, &e, (uint8_t)desired, false,
						      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		*expected = e;
		return ok;
	}
	case 2: {
		uint16_t e = (uint16_t)*expected;
		bool ok = __atomic_compare_exchange_n((uint16_t *)p, &e, (uint16_t)desired, false,
						      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		*expected = e;
		return ok;
	}
	case 4: {
		uint32_t e = (uint32_t)*expected;
		bool ok = __atomic_compare_exchange_n((uint32_t *)p, &e, (uint32_t)desired, false,
						      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
		*expected = e;
		return ok;
	}
	default:
		return __atomic_compare_exchange_n((uint64_t *)p, expected, desired, false,
						   __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	}
}

static uint64_t atomic_load_sz(const void *p, unsigned size)
{
	switch (size) {
	case 1:
		return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED);
	case 2:
		return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
	case 4:
		return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
	default:
		return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
	}
}

/* ---- Two-operand ALU ---- */

static inline uint64_t alu_calc(enum alu_op op, uint64_t a, uint64_t b, uint64_t cin)
{
	switch (op) {
	case A_ADD:
		return a + b;
	case A_ADC:
		return a + b + cin;
	case A_SUB:
	case A_CMP:
		return a - b;
	case A_SBB:
		return a - b - cin;
	case A_AND:
	case A_TEST:
		return a & b;
	case A_OR:
		return a | b;
	default:
		return a ^ b;
	}
}

static inline enum lf_op alu_lf(enum alu_op op)
{
	switch (op) {
	case A_ADD:
		return LF_ADD;
	case A_ADC:
		return LF_ADC;
	case A_SUB:
	case A_CMP:
		return LF_SUB;
	case A_SBB:
		return LF_SBB;
	default:
		return LF_LOGIC;
	}
}

static inline void alu(struct emu_cpu *c, const struct emu_insn *i, enum alu_op op)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size;
	uint64_t m = size_mask(sz);
	uint64_t b = op_rd(c, i, 1) & m;
	uint64_t cin = (op == A_ADC || op == A_SBB) ? emu_cf(c) : 0;
	bool wb = op != A_CMP && op != A_TEST;
	uint64_t a, r;

	if (d->kind == EMU_OP_REG) {
		a = reg_rd(c, d->reg, sz);
		r = alu_calc(op, a, b, cin) & m;
		if (wb)
			reg_wr(c, d->reg, sz, r);
	} else {
		uint64_t la = ea_la(c, d);
		void *p;

		if ((i->pfx & EMU_PFX_LOCK) && wb && (p = emu_host_ptr_rw(c, la, sz))) {
			a = atomic_load_sz(p, sz);
			do
				r = alu_calc(op, a, b, cin) & m;
			while (!cas_n(p, sz, &a, r));
		} else {
			a = mem_rd(c, la, sz);
			r = alu_calc(op, a, b, cin) & m;
			if (wb)
				mem_wr(c, la, sz, r);
		}
	}
	set_lf(c, alu_lf(op), sz, r, a, b);
}

/* Register destination with a register or immediate source: no operand-kind dispatch. */
enum src_kind { SRC_REG, SRC_IMM, SRC_MEM };

static inline void alu_reg(struct emu_cpu *c, const struct emu_insn *i, enum alu_op op,
			   enum src_kind k)
{
	unsigned sz = i->op[0].size, d = i->op[0].reg;
	uint64_t m = size_mask(sz);
	uint64_t b = (k == SRC_IMM   ? (uint64_t)i->op[1].disp
		      : k == SRC_REG ? c->gpr[i->op[1].reg]
				     : mem_rd(c, ea_la(c, &i->op[1]), sz)) &
		     m;
	uint64_t cin = (op == A_ADC || op == A_SBB) ? emu_cf(c) : 0;
	uint64_t a = c->gpr[d] & m, r = alu_calc(op, a, b, cin) & m;

	if (op != A_CMP && op != A_TEST)
		reg_wr(c, d, sz, r);
	set_lf(c, alu_lf(op), sz, r, a, b);
}

#define ALU_H(name, op)                                                                            \
	static void h_##name(struct emu_cpu *c, const struct emu_insn *i)                          \
	{                                                                                          \
		alu(c, i, op);                                                                     \
	}                                                                                          \
	static void h_##name##_rr(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		alu_reg(c, i, op, SRC_REG);                                                        \
	}                                                                                          \
	static void h_##name##_ri(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		alu_reg(c, i, op, SRC_IMM);                                                        \
	}                                                                                          \
	static void h_##name##_rm(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		alu_reg(c, i, op, SRC_MEM);                                                        \
	}
ALU_H(add, A_ADD)
ALU_H(or, A_OR)
ALU_H(adc, A_ADC)
ALU_H(sbb, A_SBB)
ALU_H(and, A_AND)
ALU_H(sub, A_SUB)
ALU_H(xor, A_XOR)
ALU_H(cmp, A_CMP)
ALU_H(test, A_TEST)

/* ---- One-operand read-modify-write: INC DEC NEG NOT ---- */

enum un_op { U_INC, U_DEC, U_NEG, U_NOT };

static inline uint64_t un_calc(enum un_op op, uint64_t a)
{
	switch (op) {
	case U_INC:
		return a + 1;
	case U_DEC:
		return a - 1;
	case U_NEG:
		return -a;
	default:
		return ~a;
	}
}

static inline void unary(struct emu_cpu *c, const struct emu_insn *i, enum un_op op)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size;
	uint64_t m = size_mask(sz), a, r;
	uint64_t cf = (op == U_INC || op == U_DEC) ? emu_cf(c) : 0;

	if (d->kind == EMU_OP_REG) {
		a = reg_rd(c, d->reg, sz);
		r = un_calc(op, a) & m;
		reg_wr(c, d->reg, sz, r);
	} else {
		uint64_t la = ea_la(c, d);
		void *p;

		if ((i->pfx & EMU_PFX_LOCK) && (p = emu_host_ptr_rw(c, la, sz))) {
			a = atomic_load_sz(p, sz);
			do
				r = un_calc(op, a) & m;
			while (!cas_n(p, sz, &a, r));
		} else {
			a = mem_rd(c, la, sz);
			r = un_calc(op, a) & m;
			mem_wr(c, la, sz, r);
		}
	}
	if (op == U_INC)
		set_lf(c, LF_INC, sz, r, a, cf);
	else if (op == U_DEC)
		set_lf(c, LF_DEC, sz, r, a, cf);
	else if (op == U_NEG)
		set_lf(c, LF_SUB, sz, r, 0, a);
}

/* INC/DEC of a general register: CF carried over without a call in the common cases. */
static inline void incdec_reg(struct emu_cpu *c, const struct emu_insn *i, bool inc)
{
	unsigned sz = i->op[0].size, d = i->op[0].reg;
	uint64_t m = size_mask(sz), cf = cf_fast(c);
	uint64_t a = c->gpr[d] & m, r = (inc ? a + 1 : a - 1) & m;

	reg_wr(c, d, sz, r);
	set_lf(c, inc ? LF_INC : LF_DEC, sz, r, a, cf);
}

static void h_inc_r(struct emu_cpu *c, const struct emu_insn *i)
{
	incdec_reg(c, i, true);
}

static void h_dec_r(struct emu_cpu *c, const struct emu_insn *i)
{
	incdec_reg(c, i, false);
}

static void h_inc(struct emu_cpu *c, const struct emu_insn *i)
{
	unary(c, i, U_INC);
}

static void h_dec(struct emu_cpu *c, const struct emu_insn *i)
{
	unary(c, i, U_DEC);
}

static void h_neg(struct emu_cpu *c, const struct emu_insn *i)
{
	unary(c, i, U_NEG);
}

static void h_not(struct emu_cpu *c, const struct emu_insn *i)
{
	unary(c, i, U_NOT);
}

/* ---- Multiply and divide ---- */

/* Flags after MUL/IMUL: CF = OF = overflow; SF ZF PF AF are undefined, we derive them. */
static void mul_flags(struct emu_cpu *c, unsigned sz, uint64_t lo, bool ovf)
{
	uint64_t f = 0;

	if (ovf)
		f |= FL_CF | FL_OF;
	if (!((__builtin_parity((unsigned)(lo & 0xff)))))
		f |= FL_PF;
	if (lo & sign_bit(sz))
		f |= FL_SF;
	if ((lo & size_mask(sz)) == 0)
		f |= FL_ZF;
	set_lf(c, LF_RAW, sz, f, 0, 0);
}

static void h_mul(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->op[0].size;
	uint64_t b = op_rd(c, i, 0);
	uint64_t m = size_mask(sz);

	if (sz == 1) {
		uint64_t r = (c->gpr[0] & 0xff) * b;

		reg_wr(c, 0, 2, r);
		mul_flags(c, 1, r, r >> 8);
		return;
	}
	unsigned __int128 r = (unsigned __int128)(c->gpr[0] & m) * b;
	uint64_t lo = (uint64_t)r & m, hi;

	hi = sz == 8 ? (uint64_t)(r >> 64) : (uint64_t)(r >> (sz * 8)) & m;
	reg_wr(c, 0, sz, lo);
	reg_wr(c, 2, sz, hi);
	mul_flags(c, sz, lo, hi != 0);
}

static void imul1(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->op[0].size;
	int64_t b = sext(op_rd(c, i, 0), sz);
	int64_t a = sext(c->gpr[0], sz);
	__int128 r = (__int128)a * b;
	uint64_t m = size_mask(sz), lo = (uint64_t)r & m;
	bool ovf = (__int128)sext(lo, sz) != r;

	if (sz == 1) {
		reg_wr(c, 0, 2, (uint64_t)r);
	} else {
		reg_wr(c, 0, sz, lo);
		reg_wr(c, 2, sz, (uint64_t)(r >> (sz * 8)) & m);
	}
	mul_flags(c, sz, lo, ovf);
}

static void h_imul(struct emu_cpu *c, const struct emu_insn *i)
{
	if (i->nops == 1) {
		imul1(c, i);
		return;
	}
	unsigned sz = i->op[0].size;
	int src = i->nops == 3 ? 1 : 0, src2 = i->nops == 3 ? 2 : 1;
	int64_t a = sext(op_rd(c, i, src), sz);
	int64_t b = i->op[src2].kind == EMU_OP_IMM ? i->op[src2].disp : sext(op_rd(c, i, src2), sz);
	__int128 r = (__int128)a * b;
	uint64_t lo = (uint64_t)r & size_mask(sz);

	reg_wr(c, i->op[0].reg, sz, lo);
	mul_flags(c, sz, lo, (__int128)sext(lo, sz) != r);
}

/* DIV/IDIV leave the flags undefined; we leave them unchanged. */
static void h_div(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->op[0].size;
	uint64_t d = op_rd(c, i, 0), m = size_mask(sz);
	unsigned __int128 n;

	if (d == 0)
		emu_raise(c, EMU_DE, EMU_NO_ERR);
	if (sz == 1)
		n = c->gpr[0] & 0xffff;
	else if (sz == 8)
		n = ((unsigned __int128)c->gpr[2] << 64) | c->gpr[0];
	else
		n = ((c->gpr[2] & m) << (sz * 8)) | (c->gpr[0] & m);
	unsigned __int128 q = n / d, r = n % d;

	if (q > m)
		emu_raise(c, EMU_DE, EMU_NO_ERR);
	if (sz == 1) {
		reg_wr(c, 0, 2, (uint64_t)q | ((uint64_t)r << 8));
		return;
	}
	reg_wr(c, 0, sz, (uint64_t)q);
	reg_wr(c, 2, sz, (uint64_t)r);
}

static void h_idiv(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->op[0].size;
	int64_t d = sext(op_rd(c, i, 0), sz);
	uint64_t m = size_mask(sz);
	__int128 n;

	if (d == 0)
		emu_raise(c, EMU_DE, EMU_NO_ERR);
	if (sz == 1)
		n = (int16_t)c->gpr[0];
	else if (sz == 8)
		n = (__int128)(((unsigned __int128)c->gpr[2] << 64) | c->gpr[0]);
	else
		n = sext(((c->gpr[2] & m) << (sz * 8)) | (c->gpr[0] & m), sz * 2);
	/* INT128_MIN / -1 would overflow the host division itself. */
	if (sz == 8 && n == (__int128)((unsigned __int128)1 << 127) && d == -1)
		emu_raise(c, EMU_DE, EMU_NO_ERR);
	__int128 q = n / d, r = n % d;
	__int128 qmax = (__int128)(m >> 1), qmin = -qmax - 1;

	if (q > qmax || q < qmin)
		emu_raise(c, EMU_DE, EMU_NO_ERR);
	if (sz == 1) {
		reg_wr(c, 0, 2, ((uint64_t)q & 0xff) | (((uint64_t)r & 0xff) << 8));
		return;
	}
	reg_wr(c, 0, sz, (uint64_t)q);
	reg_wr(c, 2, sz, (uint64_t)r);
}

/* ---- Shifts and rotates ---- */

enum sh_op { S_ROL, S_ROR, S_RCL, S_RCR, S_SHL, S_SHR, S_SAL, S_SAR };

/* Destination value: read once, written back through the same address. */
struct rmw {
	uint64_t la;
	bool mem;
};

static uint64_t rmw_read(struct emu_cpu *c, const struct emu_operand *d, struct rmw *w)
{
	w->mem = d->kind == EMU_OP_MEM;
	if (!w->mem)
		return reg_rd(c, d->reg, d->size);
	w->la = ea_la(c, d);
	return mem_rd(c, w->la, d->size);
}

static void rmw_write(struct emu_cpu *c, const struct emu_operand *d, const struct rmw *w,
		      uint64_t v)
{
	if (w->mem)
		mem_wr(c, w->la, d->size, v);
	else
		reg_wr(c, d->reg, d->size, v);
}

/* Result flags SF ZF PF from r plus the given CF/OF/AF. */
static void shift_flags(struct emu_cpu *c, unsigned sz, uint64_t r, bool cf, bool of)
{
	uint64_t f = 0;

	if (cf)
		f |= FL_CF;
	if (of)
		f |= FL_OF;
	if (!__builtin_parity((unsigned)(r & 0xff)))
		f |= FL_PF;
	if ((r & size_mask(sz)) == 0)
		f |= FL_ZF;
	if (r & sign_bit(sz))
		f |= FL_SF;
	set_lf(c, LF_RAW, sz, f, 0, 0);
}

static void shift(struct emu_cpu *c, const struct emu_insn *i, enum sh_op op)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size, bits = sz * 8;
	uint64_t m = size_mask(sz), sb = sign_bit(sz);
	unsigned cnt = (unsigned)op_rd(c, i, 1) & (sz == 8 ? 63 : 31);
	struct rmw w;
	uint64_t a = rmw_read(c, d, &w), r;
	bool cf, of;

	if (cnt == 0) {
		/* No flag changes; 32-bit register destinations are still written. */
		if (!w.mem)
			rmw_write(c, d, &w, a);
		return;
	}
	switch (op) {
	case S_SHL:
	case S_SAL:
		r = cnt < 64 ? (a << cnt) & m : 0;
		cf = cnt <= bits ? (a >> (bits - cnt)) & 1 : 0;
		of = !!(r & sb) != cf;
		shift_flags(c, sz, r, cf, of);
		break;
	case S_SHR:
		r = a >> cnt;
		cf = (a >> (cnt - 1)) & 1;
		of = a & sb;
		shift_flags(c, sz, r, cf, of);
		break;
	case S_SAR: {
		int64_t s = sext(a, sz);

		r = (uint64_t)(s >> (cnt > 63 ? 63 : cnt)) & m;
		cf = (s >> (cnt - 1 > 63 ? 63 : cnt - 1)) & 1;
		shift_flags(c, sz, r, cf, false);
		break;
	}
	case S_ROL: {
		unsigned n = cnt % bits;

		r = n ? ((a << n) | (a >> (bits - n))) & m : a;
		cf = r & 1;
		of = !!(r & sb) != cf;
		emu_set_arith(c, FL_CF | FL_OF, (cf ? FL_CF : 0) | (of ? FL_OF : 0));
		break;
	}
	case S_ROR: {
		unsigned n = cnt % bits;

		r = n ? ((a >> n) | (a << (bits - n))) & m : a;
		cf = r & sb;
		of = !!(r & sb) != !!(r & (sb >> 1));
		emu_set_arith(c, FL_CF | FL_OF, (cf ? FL_CF : 0) | (of ? FL_OF : 0));
		break;
	}
	case S_RCL:
	case S_RCR: {
		unsigned n = sz == 1 ? cnt % 9 : sz == 2 ? cnt % 17 : cnt;
		bool carry = emu_cf(c);

		r = a;
		of = false;
		if (op == S_RCR)
			of = !!(a & sb) != carry;
		for (unsigned k = 0; k < n; k++) {
			bool out;

			if (op == S_RCL) {
				out = r & sb;
				r = ((r << 1) | carry) & m;
			} else {
				out = r & 1;
				r = (r >> 1) | (carry ? sb : 0);
			}
			carry = out;
		}
		if (op == S_RCL)
			of = !!(r & sb) != carry;
		emu_set_arith(c, FL_CF | FL_OF, (carry ? FL_CF : 0) | (of ? FL_OF : 0));
		break;
	}
	default:
		r = a;
		break;
	}
	rmw_write(c, d, &w, r);
}

/*
 * Register destination, immediate count that is not zero after masking
 * (emu_alu_specialize checks): the common kernel forms, without the operand
 * and operation dispatch of shift().
 */
static inline __attribute__((always_inline)) void shift_ri(struct emu_cpu *c,
							   const struct emu_insn *i, enum sh_op op)
{
	unsigned sz = i->op[0].size, bits = sz * 8, d = i->op[0].reg;
	unsigned cnt = (unsigned)i->op[1].disp & (sz == 8 ? 63 : 31);
	uint64_t m = size_mask(sz), sb = sign_bit(sz), a = c->gpr[d] & m, r;
	bool cf, of;

	switch (op) {
	case S_SHL:
		r = (a << cnt) & m;
		cf = cnt <= bits ? (a >> (bits - cnt)) & 1 : 0;
		shift_flags(c, sz, r, cf, !!(r & sb) != cf);
		break;
	case S_SHR:
		r = a >> cnt;
		shift_flags(c, sz, r, (a >> (cnt - 1)) & 1, a & sb);
		break;
	case S_SAR: {
		int64_t sv = sext(a, sz);

		r = (uint64_t)(sv >> cnt) & m;
		shift_flags(c, sz, r, (sv >> (cnt - 1)) & 1, false);
		break;
	}
	case S_ROL: {
		unsigned n = cnt % bits;

		r = n ? ((a << n) | (a >> (bits - n))) & m : a;
		cf = r & 1;
		of = !!(r & sb) != cf;
		emu_set_arith(c, FL_CF | FL_OF, (cf ? FL_CF : 0) | (of ? FL_OF : 0));
		break;
	}
	default: {
		unsigned n = cnt % bits;

		r = n ? ((a >> n) | (a << (bits - n))) & m : a;
		cf = r & sb;
		of = !!(r & sb) != !!(r & (sb >> 1));
		emu_set_arith(c, FL_CF | FL_OF, (cf ? FL_CF : 0) | (of ? FL_OF : 0));
		break;
	}
	}
	reg_wr(c, d, sz, r);
}

#define SH_H(name, op)                                                                             \
	static void h_##name(struct emu_cpu *c, const struct emu_insn *i)                          \
	{                                                                                          \
		shift(c, i, op);                                                                   \
	}
SH_H(rol, S_ROL)
SH_H(ror, S_ROR)
SH_H(rcl, S_RCL)
SH_H(rcr, S_RCR)
SH_H(shl, S_SHL)
SH_H(shr, S_SHR)
SH_H(sar, S_SAR)

#define SH_RI_H(name, op)                                                                          \
	static void h_##name##_ri(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		shift_ri(c, i, op);                                                                \
	}
SH_RI_H(rol, S_ROL)
SH_RI_H(ror, S_ROR)
SH_RI_H(shl, S_SHL)
SH_RI_H(shr, S_SHR)
SH_RI_H(sar, S_SAR)

static void shxd(struct emu_cpu *c, const struct emu_insn *i, bool left)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size, bits = sz * 8;
	uint64_t m = size_mask(sz), sb = sign_bit(sz);
	unsigned cnt = (unsigned)op_rd(c, i, 2) & (sz == 8 ? 63 : 31);
	uint64_t src = reg_rd(c, i->op[1].reg, sz);
	struct rmw w;
	uint64_t a = rmw_read(c, d, &w), r;
	bool cf;

	if (cnt == 0) {
		if (!w.mem)
			rmw_write(c, d, &w, a);
		return;
	}
	if (sz == 2 && cnt > 16) {
		/* Undefined result; keep the destination, report no carry. */
		r = a;
		cf = false;
	} else if (left) {
		r = ((a << cnt) | (src >> (bits - cnt))) & m;
		cf = (a >> (bits - cnt)) & 1;
	} else {
		r = ((a >> cnt) | (src << (bits - cnt))) & m;
		cf = (a >> (cnt - 1)) & 1;
	}
	shift_flags(c, sz, r, cf, !!(r & sb) != !!(a & sb));
	rmw_write(c, d, &w, r);
}

static void h_shld(struct emu_cpu *c, const struct emu_insn *i)
{
	shxd(c, i, true);
}

static void h_shrd(struct emu_cpu *c, const struct emu_insn *i)
{
	shxd(c, i, false);
}

/* ---- Bit test family ---- */

enum bt_op { B_BT, B_BTS, B_BTR, B_BTC };

static void bittest(struct emu_cpu *c, const struct emu_insn *i, enum bt_op op)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size, bits = sz * 8;
	uint64_t off = op_rd(c, i, 1), a, r, bit;

	if (d->kind == EMU_OP_REG) {
		bit = 1ull << (off & (bits - 1));
		a = reg_rd(c, d->reg, sz);
	} else {
		uint64_t la = ea_la(c, d);
		void *p;

		/* A register bit offset is signed and may address far outside the operand. */
		if (i->op[1].kind == EMU_OP_REG) {
			int64_t s = sext(off, i->op[1].size);

			la += (uint64_t)((s >> (bits == 64   ? 6
						: bits == 32 ? 5
							     : 4)) *
					 (int64_t)sz);
			if (!c->mode64)
				la = (uint32_t)la;
		}
		bit = 1ull << (off & (bits - 1));
		if (op != B_BT && (i->pfx & EMU_PFX_LOCK) && (p = emu_host_ptr_rw(c, la, sz))) {
			a = atomic_load_sz(p, sz);
			do
				r = op == B_BTS ? a | bit : op == B_BTR ? a & ~bit : a ^ bit;
			while (!cas_n(p, sz, &a, r));
		} else {
			a = mem_rd(c, la, sz);
			if (op != B_BT) {
				r = op == B_BTS ? a | bit : op == B_BTR ? a & ~bit : a ^ bit;
				mem_wr(c, la, sz, r);
			}
		}
		emu_set_arith(c, FL_CF, (a & bit) ? FL_CF : 0);
		return;
	}
	if (op != B_BT) {
		r = op == B_BTS ? a | bit : op == B_BTR ? a & ~bit : a ^ bit;
		reg_wr(c, d->reg, sz, r);
	}
	emu_set_arith(c, FL_CF, (a & bit) ? FL_CF : 0);
}

static void h_bt(struct emu_cpu *c, const struct emu_insn *i)
{
	bittest(c, i, B_BT);
}

static void h_bts(struct emu_cpu *c, const struct emu_insn *i)
{
	bittest(c, i, B_BTS);
}

static void h_btr(struct emu_cpu *c, const struct emu_insn *i)
{
	bittest(c, i, B_BTR);
}

static void h_btc(struct emu_cpu *c, const struct emu_insn *i)
{
	bittest(c, i, B_BTC);
}

/* BSF/BSR: a zero source sets ZF and leaves the destination unchanged (as AMD documents). */
static void bitscan(struct emu_cpu *c, const struct emu_insn *i, bool reverse)
{
	unsigned sz = i->op[0].size;
	uint64_t v = op_rd(c, i, 1);

	if (v == 0) {
		emu_set_arith(c, FL_ARITH, FL_ZF);
		reg_wr(c, i->op[0].reg, sz, reg_rd(c, i->op[0].reg, sz));
		return;
	}
	uint64_t r = reverse ? 63 - (unsigned)__builtin_clzll(v) : (unsigned)__builtin_ctzll(v);

	reg_wr(c, i->op[0].reg, sz, r);
	shift_flags(c, sz, r, false, false);
	emu_set_arith(c, FL_ZF, 0);
}

static void h_bsf(struct emu_cpu *c, const struct emu_insn *i)
{
	bitscan(c, i, false);
}

static void h_bsr(struct emu_cpu *c, const struct emu_insn *i)
{
	bitscan(c, i, true);
}

static void h_tzcnt(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->op[0].size;
	uint64_t v = op_rd(c, i, 1);
	uint64_t r = v ? (unsigned)__builtin_ctzll(v) : sz * 8;

	reg_wr(c, i->op[0].reg, sz, r);
	emu_set_arith(c, FL_ARITH, (v == 0 ? FL_CF : 0) | (r == 0 ? FL_ZF : 0));
}

static void h_lzcnt(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->op[0].size;
	uint64_t v = op_rd(c, i, 1);
	uint64_t r = v ? (unsigned)__builtin_clzll(v) - (64 - sz * 8) : sz * 8;

	reg_wr(c, i->op[0].reg, sz, r);
	emu_set_arith(c, FL_ARITH, (v == 0 ? FL_CF : 0) | (r == 0 ? FL_ZF : 0));
}

static void h_popcnt(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = op_rd(c, i, 1);

	reg_wr(c, i->op[0].reg, i->op[0].size, (uint64_t)__builtin_popcountll(v));
	emu_set_arith(c, FL_ARITH, v == 0 ? FL_ZF : 0);
}

/* ---- Exchange-and-operate ---- */

static void h_xadd(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size;
	uint64_t m = size_mask(sz), b = reg_rd(c, i->op[1].reg, sz), a, r;

	if (d->kind == EMU_OP_REG) {
		a = reg_rd(c, d->reg, sz);
		r = (a + b) & m;
		reg_wr(c, i->op[1].reg, sz, a);
		reg_wr(c, d->reg, sz, r);
	} else {
		uint64_t la = ea_la(c, d);
		void *p = (i->pfx & EMU_PFX_LOCK) ? emu_host_ptr_rw(c, la, sz) : NULL;

		if (p) {
			a = atomic_load_sz(p, sz);
			while (!cas_n(p, sz, &a, (a + b) & m))
				;
		} else {
			a = mem_rd(c, la, sz);
			mem_wr(c, la, sz, (a + b) & m);
		}
		r = (a + b) & m;
		reg_wr(c, i->op[1].reg, sz, a);
	}
	set_lf(c, LF_ADD, sz, r, a, b);
}

static void h_cmpxchg(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct emu_operand *d = &i->op[0];
	unsigned sz = d->size;
	uint64_t acc = reg_rd(c, 0, sz), src = reg_rd(c, i->op[1].reg, sz), cur;
	bool eq;

	if (d->kind == EMU_OP_REG) {
		cur = reg_rd(c, d->reg, sz);
		eq = cur == acc;
		if (eq)
			reg_wr(c, d->reg, sz, src);
	} else {
		uint64_t la = ea_la(c, d);
		void *p = emu_host_ptr_rw(c, la, sz);

		if (p) {
			cur = acc;
			eq = cas_n(p, sz, &cur, src);
		} else {
			cur = mem_rd(c, la, sz);
			eq = cur == acc;
			/* The destination is written either way, as hardware does. */
			mem_wr(c, la, sz, eq ? src : cur);
		}
	}
	if (!eq)
		reg_wr(c, 0, sz, cur);
	set_lf(c, LF_SUB, sz, (acc - cur) & size_mask(sz), acc, cur);
}

static void h_cmpxchg8b(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t la = ea_la(c, &i->op[0]);
	uint64_t exp = (c->gpr[0] & 0xffffffff) | (c->gpr[2] << 32);
	uint64_t des = (c->gpr[3] & 0xffffffff) | (c->gpr[1] << 32);
	void *p = emu_host_ptr_rw(c, la, 8);
	uint64_t cur = exp;
	bool eq;

	if (p) {
		eq = cas_n(p, 8, &cur, des);
	} else {
		cur = mem_rd(c, la, 8);
		eq = cur == exp;
		mem_wr(c, la, 8, eq ? des : cur);
	}
	if (!eq) {
		reg_wr(c, 0, 4, cur);
		reg_wr(c, 2, 4, cur >> 32);
	}
	emu_set_arith(c, FL_ZF, eq ? FL_ZF : 0);
}

static void h_cmpxchg16b(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t la = ea_la(c, &i->op[0]);
	uint64_t lo = c->gpr[0], hi = c->gpr[2];
	bool eq;

	if (la & 15)
		emu_raise(c, EMU_GP, 0);
	void *p = emu_host_ptr_rw(c, la, 16);

	if (p) {
		__asm__ volatile("lock cmpxchg16b %1"
				 : "=@ccz"(eq), "+m"(*(unsigned __int128 *)p), "+a"(lo), "+d"(hi)
				 : "b"(c->gpr[3]), "c"(c->gpr[1])
				 : "memory");
	} else {
		uint64_t m0 = mem_rd(c, la, 8), m1 = mem_rd(c, la + 8, 8);

		eq = m0 == lo && m1 == hi;
		if (eq) {
			m0 = c->gpr[3];
			m1 = c->gpr[1];
		}
		mem_wr(c, la, 8, m0);
		mem_wr(c, la + 8, 8, m1);
		lo = eq ? lo : m0;
		hi = eq ? hi : m1;
	}
	if (!eq) {
		c->gpr[0] = lo;
		c->gpr[2] = hi;
	}
	emu_set_arith(c, FL_ZF, eq ? FL_ZF : 0);
}

emu_handler emu_alu_handler(unsigned m)
{
	switch (m) {
	case ZYDIS_MNEMONIC_ADD:
		return h_add;
	case ZYDIS_MNEMONIC_OR:
		return h_or;
	case ZYDIS_MNEMONIC_ADC:
		return h_adc;
	case ZYDIS_MNEMONIC_SBB:
		return h_sbb;
	case ZYDIS_MNEMONIC_AND:
		return h_and;
	case ZYDIS_MNEMONIC_SUB:
		return h_sub;
	case ZYDIS_MNEMONIC_XOR:
		return h_xor;
	case ZYDIS_MNEMONIC_CMP:
		return h_cmp;
	case ZYDIS_MNEMONIC_TEST:
		return h_test;
	case ZYDIS_MNEMONIC_INC:
		return h_inc;
	case ZYDIS_MNEMONIC_DEC:
		return h_dec;
	case ZYDIS_MNEMONIC_NEG:
		return h_neg;
	case ZYDIS_MNEMONIC_NOT:
		return h_not;
	case ZYDIS_MNEMONIC_MUL:
		return h_mul;
	case ZYDIS_MNEMONIC_IMUL:
		return h_imul;
	case ZYDIS_MNEMONIC_DIV:
		return h_div;
	case ZYDIS_MNEMONIC_IDIV:
		return h_idiv;
	case ZYDIS_MNEMONIC_ROL:
		return h_rol;
	case ZYDIS_MNEMONIC_ROR:
		return h_ror;
	case ZYDIS_MNEMONIC_RCL:
		return h_rcl;
	case ZYDIS_MNEMONIC_RCR:
		return h_rcr;
	case ZYDIS_MNEMONIC_SHL:
		return h_shl;
	case ZYDIS_MNEMONIC_SHR:
		return h_shr;
	case ZYDIS_MNEMONIC_SAR:
		return h_sar;
	case ZYDIS_MNEMONIC_SHLD:
		return h_shld;
	case ZYDIS_MNEMONIC_SHRD:
		return h_shrd;
	case ZYDIS_MNEMONIC_BT:
		return h_bt;
	case ZYDIS_MNEMONIC_BTS:
		return h_bts;
	case ZYDIS_MNEMONIC_BTR:
		return h_btr;
	case ZYDIS_MNEMONIC_BTC:
		return h_btc;
	case ZYDIS_MNEMONIC_BSF:
		return h_bsf;
	case ZYDIS_MNEMONIC_BSR:
		return h_bsr;
	case ZYDIS_MNEMONIC_TZCNT:
		return h_tzcnt;
	case ZYDIS_MNEMONIC_LZCNT:
		return h_lzcnt;
	case ZYDIS_MNEMONIC_POPCNT:
		return h_popcnt;
	case ZYDIS_MNEMONIC_XADD:
		return h_xadd;
	case ZYDIS_MNEMONIC_CMPXCHG:
		return h_cmpxchg;
	case ZYDIS_MNEMONIC_CMPXCHG8B:
		return h_cmpxchg8b;
	case ZYDIS_MNEMONIC_CMPXCHG16B:
		return h_cmpxchg16b;
	}
	return NULL;
}

static bool is_gpr(const struct emu_operand *o)
{
	return o->kind == EMU_OP_REG && o->reg < 16;
}

/* Faster variants of the two-operand ALU handlers for register destinations. */
emu_handler emu_alu_specialize(const struct emu_insn *i, emu_handler h)
{
	static const struct {
		emu_handler gen, rr, ri, rm;
	} v[] = {
	    {h_add, h_add_rr, h_add_ri, h_add_rm},     {h_or, h_or_rr, h_or_ri, h_or_rm},
	    {h_adc, h_adc_rr, h_adc_ri, h_adc_rm},     {h_sbb, h_sbb_rr, h_sbb_ri, h_sbb_rm},
	    {h_and, h_and_rr, h_and_ri, h_and_rm},     {h_sub, h_sub_rr, h_sub_ri, h_sub_rm},
	    {h_xor, h_xor_rr, h_xor_ri, h_xor_rm},     {h_cmp, h_cmp_rr, h_cmp_ri, h_cmp_rm},
	    {h_test, h_test_rr, h_test_ri, h_test_rm},
	};

	static const struct {
		emu_handler gen, ri;
	} sh[] = {
	    {h_rol, h_rol_ri}, {h_ror, h_ror_ri}, {h_shl, h_shl_ri},
	    {h_shr, h_shr_ri}, {h_sar, h_sar_ri},
	};

	if (i->nops == 1 && is_gpr(&i->op[0]) && (h == h_inc || h == h_dec))
		return h == h_inc ? h_inc_r : h_dec_r;
	if (i->nops != 2 || !is_gpr(&i->op[0]))
		return h;
	/* Count 0 changes no flags: those keep the general path. */
	if (i->op[1].kind == EMU_OP_IMM &&
	    ((uint64_t)i->op[1].disp & (i->op[0].size == 8 ? 63 : 31)) != 0) {
		for (unsigned k = 0; k < sizeof(sh) / sizeof(sh[0]); k++)
			if (sh[k].gen == h)
				return sh[k].ri;
	}
	for (unsigned k = 0; k < sizeof(v) / sizeof(v[0]); k++) {
		if (v[k].gen != h)
			continue;
		if (is_gpr(&i->op[1]))
			return v[k].rr;
		if (i->op[1].kind == EMU_OP_IMM)
			return v[k].ri;
		if (i->op[1].kind == EMU_OP_MEM && i->op[1].size == i->op[0].size)
			return v[k].rm;
	}
	return h;
}
