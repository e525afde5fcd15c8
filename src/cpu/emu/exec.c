/*
 * The emulator's run loop, lazy flags, operand access, and the integer
 * instructions that move data or control: MOV family, stack, branches,
 * flag instructions. Arithmetic lives in alu.c, string instructions in
 * string.c.
 */
#include <Zydis/Zydis.h>
#include <sys/random.h>

#include "cpu/emu/core.h"
#include "util/log.h"

/* ---- Lazy flags ---- */

static uint64_t parity_flag(uint64_t res)
{
	return __builtin_parity((unsigned)(res & 0xff)) ? 0 : FL_PF;
}

static uint64_t szp_flags(uint64_t res, unsigned size)
{
	uint64_t f = parity_flag(res);

	if ((res & size_mask(size)) == 0)
		f |= FL_ZF;
	if (res & sign_bit(size))
		f |= FL_SF;
	return f;
}

uint64_t emu_arith_flags(const struct emu_cpu *c)
{
	const struct emu_lazyflags *l = &c->lf;
	uint64_t m = size_mask(l->size), sb = sign_bit(l->size);
	uint64_t r = l->res & m, a = l->src1 & m, b = l->src2 & m, f = 0, cin;

	switch (l->op) {
	case LF_RAW:
		return l->res & FL_ARITH;
	case LF_ADD:
	case LF_ADC:
		cin = l->op == LF_ADC ? (r - a - b) & m : 0;
		if (cin ? r <= a : r < a)
			f |= FL_CF;
		if ((a ^ r) & (b ^ r) & sb)
			f |= FL_OF;
		f |= (a ^ b ^ r) & FL_AF;
		break;
	case LF_SUB:
	case LF_SBB:
		cin = l->op == LF_SBB ? (a - b - r) & m : 0;
		if (cin ? a <= b : a < b)
			f |= FL_CF;
		if ((a ^ b) & (a ^ r) & sb)
			f |= FL_OF;
		f |= (a ^ b ^ r) & FL_AF;
		break;
	case LF_LOGIC:
		break;
	case LF_INC:
		f |= l->src2 & FL_CF;
		if (r == sb)
			f |= FL_OF;
		f |= (a ^ r) & FL_AF;
		break;
	case LF_DEC:
		f |= l->src2 & FL_CF;
		if (a == sb)
			f |= FL_OF;
		f |= (a ^ r) & FL_AF;
		break;
	}
	return f | szp_flags(r, l->size);
}

static bool cond_from_flags(uint64_t f, unsigned cc)
{
	bool r;

	switch (cc >> 1) {
	case 0:
		r = f & FL_OF;
		break;
	case 1:
		r = f & FL_CF;
		break;
	case 2:
		r = f & FL_ZF;
		break;
	case 3:
		r = f & (FL_CF | FL_ZF);
		break;
	case 4:
		r = f & FL_SF;
		break;
	case 5:
		r = f & FL_PF;
		break;
	case 6:
		r = !(f & FL_SF) != !(f & FL_OF);
		break;
	default:
		r = (f & FL_ZF) || (!(f & FL_SF) != !(f & FL_OF));
		break;
	}
	return r ^ (cc & 1);
}

/* CMP/SUB and logic results answer most conditions without materializing flags. */
bool emu_cond(const struct emu_cpu *c, unsigned cc)
{
	const struct emu_lazyflags *l = &c->lf;
	uint64_t m = size_mask(l->size);
	bool r;

	if (l->op == LF_SUB && cc >= 2 && cc != 10 && cc != 11) {
		uint64_t a = l->src1 & m, b = l->src2 & m;
		int64_t sa = sext(a, l->size), sbv = sext(b, l->size);

		switch (cc >> 1) {
		case 1:
			r = a < b;
			break;
		case 2:
			r = a == b;
			break;
		case 3:
			r = a <= b;
			break;
		case 4:
			r = l->res & sign_bit(l->size);
			break;
		case 6:
			r = sa < sbv;
			break;
		default:
			r = sa <= sbv;
			break;
		}
		return r ^ (cc & 1);
	}
	if (l->op == LF_LOGIC && cc >= 2 && cc != 10 && cc != 11) {
		uint64_t res = l->res & m;
		bool s = res & sign_bit(l->size);

		switch (cc >> 1) {
		case 1:
			r = false;
			break;
		case 2:
		case 3:
			r = res == 0;
			break;
		case 4:
		case 6:
			r = s;
			break;
		default:
			r = res == 0 || s;
			break;
		}
		return r ^ (cc & 1);
	}
	if (l->op != LF_RAW) {
		/* ZF and SF come straight from the result for every producer. */
		if ((cc >> 1) == 2)
			return ((l->res & m) == 0) ^ (cc & 1);
		if ((cc >> 1) == 4)
			return !!(l->res & sign_bit(l->size)) ^ (cc & 1);
		if ((cc >> 1) == 1)
			return emu_cf(c) ^ (cc & 1);
	}
	return cond_from_flags(emu_arith_flags(c), cc);
}

/* CF alone: ADC/SBB/INC/DEC and the carry conditions need nothing else. */
bool emu_cf(const struct emu_cpu *c)
{
	const struct emu_lazyflags *l = &c->lf;
	uint64_t m = size_mask(l->size);
	uint64_t r = l->res & m, a = l->src1 & m, b = l->src2 & m;

	switch (l->op) {
	case LF_ADD:
		return r < a;
	case LF_ADC:
		return ((r - a - b) & m) ? r <= a : r < a;
	case LF_SUB:
		return a < b;
	case LF_SBB:
		return ((a - b - r) & m) ? a <= b : a < b;
	case LF_LOGIC:
		return false;
	case LF_INC:
	case LF_DEC:
		return l->src2 & 1;
	default:
		return l->res & FL_CF;
	}
}

void emu_set_arith(struct emu_cpu *c, uint64_t mask, uint64_t v)
{
	uint64_t f = (emu_arith_flags(c) & ~mask) | (v & mask);

	set_lf(c, LF_RAW, 8, f, 0, 0);
}

uint64_t emu_rflags(struct emu_cpu *c)
{
	return (c->rflags & ~FL_ARITH) | emu_arith_flags(c) | 2;
}

void emu_set_rflags(struct emu_cpu *c, uint64_t v)
{
	c->rflags = (v & ~FL_ARITH) | 2;
	set_lf(c, LF_RAW, 8, v & FL_ARITH, 0, 0);
}

/* ---- Registers and operands ---- */

uint64_t emu_reg_read(struct emu_cpu *c, unsigned reg, unsigned size)
{
	if (reg < 16)
		return c->gpr[reg] & size_mask(size);
	if (reg >= EMU_R_AH && reg < EMU_R_AH + 4)
		return (c->gpr[reg - EMU_R_AH] >> 8) & 0xff;
	if (reg == EMU_R_RIP)
		return c->next_rip & size_mask(size);
	if (reg >= EMU_R_ES && reg < EMU_R_ES + 6)
		return c->seg[reg - EMU_R_ES].sel;
	pr_warn_once("emu: read of unsupported register id %u\n", reg);
	emu_raise(c, EMU_UD, EMU_NO_ERR);
}

void emu_reg_write(struct emu_cpu *c, unsigned reg, unsigned size, uint64_t v)
{
	if (reg < 16) {
		reg_wr(c, reg, size, v);
		return;
	}
	if (reg >= EMU_R_AH && reg < EMU_R_AH + 4) {
		uint64_t *g = &c->gpr[reg - EMU_R_AH];

		*g = (*g & ~0xff00ull) | ((v & 0xff) << 8);
		return;
	}
	if (reg >= EMU_R_ES && reg < EMU_R_ES + 6 && reg != EMU_R_ES + SEG_CS) {
		emu_load_seg(c, (int)(reg - EMU_R_ES), (uint16_t)v);
		/* A new SS or segment base changes how following code runs. */
		c->stop_block = true;
		return;
	}
	pr_warn_once("emu: write of unsupported register id %u\n", reg);
	emu_raise(c, EMU_UD, EMU_NO_ERR);
}

uint64_t emu_ea(struct emu_cpu *c, const struct emu_operand *o)
{
	return ea_la(c, o);
}

uint64_t emu_op_read(struct emu_cpu *c, const struct emu_insn *i, int n)
{
	return op_rd(c, i, n);
}

void emu_op_write(struct emu_cpu *c, const struct emu_insn *i, int n, uint64_t v)
{
	op_wr(c, i, n, v);
}

/* ---- Stack ---- */

unsigned emu_stack_size(const struct emu_cpu *c)
{
	if (c->mode64)
		return 8;
	return c->seg[SEG_SS].db ? 4 : 2;
}

void emu_push(struct emu_cpu *c, unsigned size, uint64_t v)
{
	unsigned ss = emu_stack_size(c);
	uint64_t sp = (c->gpr[4] - size) & size_mask(ss);

	mem_wr(c, seg_la(c, SEG_SS, sp), size, v);
	reg_wr(c, 4, ss, sp);
}

uint64_t emu_pop(struct emu_cpu *c, unsigned size)
{
	unsigned ss = emu_stack_size(c);
	uint64_t sp = c->gpr[4] & size_mask(ss);
	uint64_t v = mem_rd(c, seg_la(c, SEG_SS, sp), size);

	reg_wr(c, 4, ss, sp + size);
	return v;
}

/* ---- Data movement ---- */

static void h_mov(struct emu_cpu *c, const struct emu_insn *i)
{
	op_wr(c, i, 0, op_rd(c, i, 1));
}

/* MOV forms by operand kind, picked at decode time (emu_int_specialize). */
static void h_mov_rr(struct emu_cpu *c, const struct emu_insn *i)
{
	reg_wr(c, i->op[0].reg, i->op[0].size, c->gpr[i->op[1].reg]);
}

static void h_mov_rr64(struct emu_cpu *c, const struct emu_insn *i)
{
	c->gpr[i->op[0].reg] = c->gpr[i->op[1].reg];
}

static void h_mov_ri(struct emu_cpu *c, const struct emu_insn *i)
{
	reg_wr(c, i->op[0].reg, i->op[0].size, (uint64_t)i->op[1].disp);
}

/* Loads and stores by addressing form (enum ea_form). */
#define MOV_MEM_H(sfx, f)                                                                          \
	static void h_mov_rm##sfx(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		reg_wr(c, i->op[0].reg, i->op[0].size,                                             \
		       mem_rd(c, ea_form_la(c, &i->op[1], f), i->op[1].size));                     \
	}                                                                                          \
	static void h_mov_mr##sfx(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		mem_wr(c, ea_form_la(c, &i->op[0], f), i->op[0].size, c->gpr[i->op[1].reg]);       \
	}                                                                                          \
	static void h_mov_mi##sfx(struct emu_cpu *c, const struct emu_insn *i)                     \
	{                                                                                          \
		mem_wr(c, ea_form_la(c, &i->op[0], f), i->op[0].size, (uint64_t)i->op[1].disp);    \
	}                                                                                          \
	static void h_movzx_rm##sfx(struct emu_cpu *c, const struct emu_insn *i)                   \
	{                                                                                          \
		reg_wr(c, i->op[0].reg, i->op[0].size,                                             \
		       mem_rd(c, ea_form_la(c, &i->op[1], f), i->op[1].size));                     \
	}                                                                                          \
	static void h_movsx_rm##sfx(struct emu_cpu *c, const struct emu_insn *i)                   \
	{                                                                                          \
		uint64_t v = mem_rd(c, ea_form_la(c, &i->op[1], f), i->op[1].size);                \
		reg_wr(c, i->op[0].reg, i->op[0].size, (uint64_t)sext(v, i->op[1].size));          \
	}
MOV_MEM_H(, EA_GEN)
MOV_MEM_H(_bd, EA_BD)
MOV_MEM_H(_rip, EA_RIP)

static bool is_gpr(const struct emu_operand *o)
{
	return o->kind == EMU_OP_REG && o->reg < 16;
}

static emu_handler mov_specialize(const struct emu_insn *i)
{
	static const emu_handler rm[3] = {h_mov_rm, h_mov_rm_bd, h_mov_rm_rip};
	static const emu_handler mr[3] = {h_mov_mr, h_mov_mr_bd, h_mov_mr_rip};
	static const emu_handler mi[3] = {h_mov_mi, h_mov_mi_bd, h_mov_mi_rip};
	const struct emu_operand *d = &i->op[0], *s = &i->op[1];

	if (is_gpr(d) && is_gpr(s))
		return d->size == 8 ? h_mov_rr64 : h_mov_rr;
	if (is_gpr(d) && s->kind == EMU_OP_IMM)
		return h_mov_ri;
	if (is_gpr(d) && s->kind == EMU_OP_MEM)
		return rm[ea_form_of(s)];
	if (d->kind == EMU_OP_MEM && is_gpr(s))
		return mr[ea_form_of(d)];
	if (d->kind == EMU_OP_MEM && s->kind == EMU_OP_IMM)
		return mi[ea_form_of(d)];
	return h_mov;
}

static void h_movzx_rr(struct emu_cpu *c, const struct emu_insn *i)
{
	reg_wr(c, i->op[0].reg, i->op[0].size, c->gpr[i->op[1].reg] & size_mask(i->op[1].size));
}

static void h_movsx_rr(struct emu_cpu *c, const struct emu_insn *i)
{
	reg_wr(c, i->op[0].reg, i->op[0].size, (uint64_t)sext(c->gpr[i->op[1].reg], i->op[1].size));
}

/* 64-bit code pushes and pops 8-byte registers on a flat stack. */
static void h_push_r64(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t sp = c->gpr[4] - 8;

	mem_wr(c, sp, 8, c->gpr[i->op[0].reg]);
	c->gpr[4] = sp;
}

static void h_pop_r64(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = mem_rd(c, c->gpr[4], 8);

	c->gpr[4] += 8;
	c->gpr[i->op[0].reg] = v;
}

static void h_movzx(struct emu_cpu *c, const struct emu_insn *i)
{
	op_wr(c, i, 0, op_rd(c, i, 1));
}

static void h_movsx(struct emu_cpu *c, const struct emu_insn *i)
{
	op_wr(c, i, 0, (uint64_t)sext(op_rd(c, i, 1), i->op[1].size));
}

static void h_lea(struct emu_cpu *c, const struct emu_insn *i)
{
	reg_wr(c, i->op[0].reg, i->op[0].size, ea_off(c, &i->op[1]));
}

static void h_xchg(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct emu_operand *a = &i->op[0], *b = &i->op[1];
	unsigned sz = a->size;

	if (a->kind == EMU_OP_MEM || b->kind == EMU_OP_MEM) {
		const struct emu_operand *m = a->kind == EMU_OP_MEM ? a : b;
		const struct emu_operand *r = a->kind == EMU_OP_MEM ? b : a;
		uint64_t la = ea_la(c, m), v = reg_rd(c, r->reg, sz), old;
		void *p = emu_host_ptr_rw(c, la, sz);

		/* XCHG with memory is always locked: other vCPUs see one atomic swap. */
		if (p) {
			switch (sz) {
			case 1:
				old =
				    __atomic_exchange_n((uint8_t *)p, (uint8_t)v, __ATOMIC_SEQ_CST);
				break;
			case 2:
				old = __atomic_exchange_n((uint16_t *)p, (uint16_t)v,
							  __ATOMIC_SEQ_CST);
				break;
			case 4:
				old = __atomic_exchange_n((uint32_t *)p, (uint32_t)v,
							  __ATOMIC_SEQ_CST);
				break;
			default:
				old = __atomic_exchange_n((uint64_t *)p, v, __ATOMIC_SEQ_CST);
				break;
			}
		} else {
			old = mem_rd(c, la, sz);
			mem_wr(c, la, sz, v);
		}
		reg_wr(c, r->reg, sz, old);
		return;
	}
	uint64_t va = reg_rd(c, a->reg, sz), vb = reg_rd(c, b->reg, sz);

	reg_wr(c, a->reg, sz, vb);
	reg_wr(c, b->reg, sz, va);
}

static void h_bswap(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct emu_operand *o = &i->op[0];
	uint64_t v = reg_rd(c, o->reg, o->size);

	if (o->size == 8)
		v = __builtin_bswap64(v);
	else if (o->size == 4)
		v = __builtin_bswap32((uint32_t)v);
	else
		v = 0; /* 16-bit BSWAP is undefined; hardware clears the register */
	reg_wr(c, o->reg, o->size, v);
}

static void h_cbw(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned half = i->osize / 2;

	reg_wr(c, 0, i->osize, (uint64_t)sext(c->gpr[0], half));
}

static void h_cwd(struct emu_cpu *c, const struct emu_insn *i)
{
	bool neg = c->gpr[0] & sign_bit(i->osize);

	reg_wr(c, 2, i->osize, neg ? ~0ull : 0);
}

static void h_xlat(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t off = (c->gpr[3] + (c->gpr[0] & 0xff)) & size_mask(i->asize);

	reg_wr(c, 0, 1, mem_rd(c, seg_la(c, i->seg, off), 1));
}

/* ---- Stack instructions ---- */

static void h_push(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = i->op[0].kind == EMU_OP_IMM ? (uint64_t)i->op[0].disp : op_rd(c, i, 0);

	emu_push(c, i->osize, v);
}

static void h_pop(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct emu_operand *o = &i->op[0];
	uint64_t old_sp = c->gpr[4];
	uint64_t v = emu_pop(c, i->osize);

	if (o->kind == EMU_OP_REG && o->reg >= EMU_R_ES) {
		/* POP SS/DS/...: the segment load may fault; keep RSP unchanged then. */
		uint64_t new_sp = c->gpr[4];

		c->gpr[4] = old_sp;
		emu_reg_write(c, o->reg, 2, v);
		c->gpr[4] = new_sp;
		return;
	}
	if (o->kind == EMU_OP_MEM) {
		/* The address is computed with the incremented RSP; a fault undoes the pop. */
		uint64_t la = ea_la(c, o);
		uint64_t new_sp = c->gpr[4];

		c->gpr[4] = old_sp;
		mem_wr(c, la, o->size, v);
		c->gpr[4] = new_sp;
		return;
	}
	reg_wr(c, o->reg, o->size, v);
}

static void h_pushf(struct emu_cpu *c, const struct emu_insn *i)
{
	emu_push(c, i->osize, emu_rflags(c) & ~(FL_VM | FL_RF));
}

static void h_popf(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = emu_pop(c, i->osize);
	uint64_t old = emu_rflags(c);
	uint64_t mask = FL_ARITH | FL_TF | FL_DF | FL_NT | FL_AC | FL_ID;
	unsigned iopl = (unsigned)((old & FL_IOPL) >> 12);

	if (c->cpl == 0)
		mask |= FL_IOPL;
	if (c->cpl <= iopl)
		mask |= FL_IF;
	if (i->osize == 2)
		mask &= 0xffff;
	emu_set_rflags(c, (old & ~mask) | (v & mask));
	/* Setting IF or TF matters to event delivery: let the run loop look. */
	if ((v & mask & ~old) & (FL_IF | FL_TF))
		c->stop_block = true;
}

/* ENTER writes the whole frame before touching RSP/RBP, so a fault leaves them unchanged. */
static void h_enter(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned ss = emu_stack_size(c), osz = i->osize;
	uint64_t m = size_mask(ss);
	uint64_t alloc = (uint64_t)i->op[0].disp & 0xffff;
	unsigned level = (unsigned)i->op[1].disp & 31;
	uint64_t rbp = c->gpr[5] & m, sp = (c->gpr[4] - osz) & m;
	uint64_t frame = sp;

	mem_wr(c, seg_la(c, SEG_SS, sp), osz, c->gpr[5]);
	for (unsigned l = 1; l < level; l++) {
		rbp = (rbp - osz) & m;
		sp = (sp - osz) & m;
		mem_wr(c, seg_la(c, SEG_SS, sp), osz, mem_rd(c, seg_la(c, SEG_SS, rbp), osz));
	}
	if (level) {
		sp = (sp - osz) & m;
		mem_wr(c, seg_la(c, SEG_SS, sp), osz, frame);
	}
	reg_wr(c, 5, osz, frame);
	reg_wr(c, 4, ss, (sp - alloc) & m);
}

static void h_leave(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned ss = emu_stack_size(c);
	uint64_t old_sp = c->gpr[4];
	uint64_t v;

	reg_wr(c, 4, ss, c->gpr[5]);
	/* If the pop faults, RSP must be as before the instruction. */
	{
		uint64_t sp = c->gpr[4] & size_mask(ss);
		uint64_t la = seg_la(c, SEG_SS, sp);

		c->gpr[4] = old_sp;
		v = mem_rd(c, la, i->osize);
		reg_wr(c, 4, ss, sp + i->osize);
	}
	reg_wr(c, 5, i->osize, v);
}

/* ---- Flags ---- */

static void h_lahf(struct emu_cpu *c, const struct emu_insn *i)
{
	emu_reg_write(c, EMU_R_AH, 1, (emu_rflags(c) & 0xd7) | 2);
}

static void h_sahf(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t ah = (c->gpr[0] >> 8) & 0xff;

	emu_set_arith(c, FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF, ah);
}

static void h_clc(struct emu_cpu *c, const struct emu_insn *i)
{
	emu_set_arith(c, FL_CF, 0);
}

static void h_stc(struct emu_cpu *c, const struct emu_insn *i)
{
	emu_set_arith(c, FL_CF, FL_CF);
}

static void h_cmc(struct emu_cpu *c, const struct emu_insn *i)
{
	emu_set_arith(c, FL_CF, emu_arith_flags(c) ^ FL_CF);
}

static void h_cld(struct emu_cpu *c, const struct emu_insn *i)
{
	c->rflags &= ~FL_DF;
}

static void h_std(struct emu_cpu *c, const struct emu_insn *i)
{
	c->rflags |= FL_DF;
}

/* ---- Branches ---- */

/* Branch targets wrap at the operand size outside 64-bit code. */
static inline void branch_to(struct emu_cpu *c, const struct emu_insn *i, uint64_t target)
{
	c->next_rip = target & size_mask(i->osize);
}

static void h_jmp(struct emu_cpu *c, const struct emu_insn *i)
{
	branch_to(c, i, op_rd(c, i, 0));
}

static void h_call(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t target = op_rd(c, i, 0);

	emu_push(c, i->osize, c->next_rip);
	branch_to(c, i, target);
}

static void h_ret(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t target = emu_pop(c, i->osize);

	if (i->nops && i->op[0].kind == EMU_OP_IMM) {
		unsigned ss = emu_stack_size(c);

		reg_wr(c, 4, ss, (c->gpr[4] + ((uint64_t)i->op[0].disp & 0xffff)) & size_mask(ss));
	}
	branch_to(c, i, target);
}

/* 64-bit code forms of the above (emu_int_specialize). */
static void h_jmp_rel64(struct emu_cpu *c, const struct emu_insn *i)
{
	c->next_rip += (uint64_t)i->op[0].disp;
}

static void h_call_rel64(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t sp = c->gpr[4] - 8;

	mem_wr(c, sp, 8, c->next_rip);
	c->gpr[4] = sp;
	c->next_rip += (uint64_t)i->op[0].disp;
}

static void h_ret64(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t target = mem_rd(c, c->gpr[4], 8);

	c->gpr[4] += 8;
	c->next_rip = target;
}

#define JCC(n)                                                                                     \
	static void h_j##n(struct emu_cpu *c, const struct emu_insn *i)                            \
	{                                                                                          \
		if (cond(c, n))                                                                    \
			branch_to(c, i, c->next_rip + (uint64_t)i->op[0].disp);                    \
	}                                                                                          \
	static void h_set##n(struct emu_cpu *c, const struct emu_insn *i)                          \
	{                                                                                          \
		op_wr(c, i, 0, cond(c, n));                                                        \
	}                                                                                          \
	static void h_cmov##n(struct emu_cpu *c, const struct emu_insn *i)                         \
	{                                                                                          \
		uint64_t v = op_rd(c, i, 1);                                                       \
		/* The destination is written even when false: 32-bit forms zero-extend. */        \
		if (!cond(c, n))                                                                   \
			v = reg_rd(c, i->op[0].reg, i->op[0].size);                                \
		reg_wr(c, i->op[0].reg, i->op[0].size, v);                                         \
	}
JCC(0)
JCC(1)
JCC(2)
JCC(3)
JCC(4)
JCC(5)
JCC(6)
JCC(7)
JCC(8)
JCC(9)
JCC(10)
JCC(11)
JCC(12)
JCC(13)
JCC(14)
JCC(15)

static void h_jrcxz(struct emu_cpu *c, const struct emu_insn *i)
{
	if (areg(c, i, 1) == 0)
		branch_to(c, i, c->next_rip + (uint64_t)i->op[0].disp);
}

static void loop_common(struct emu_cpu *c, const struct emu_insn *i, int want_zf)
{
	uint64_t cnt = (areg(c, i, 1) - 1) & size_mask(i->asize);
	bool take = cnt != 0;

	areg_set(c, i, 1, cnt);
	if (take && want_zf >= 0)
		take = emu_cond(c, 4) == (bool)want_zf;
	if (take)
		branch_to(c, i, c->next_rip + (uint64_t)i->op[0].disp);
}

static void h_loop(struct emu_cpu *c, const struct emu_insn *i)
{
	loop_common(c, i, -1);
}

static void h_loope(struct emu_cpu *c, const struct emu_insn *i)
{
	loop_common(c, i, 1);
}

static void h_loopne(struct emu_cpu *c, const struct emu_insn *i)
{
	loop_common(c, i, 0);
}

/* ---- Miscellaneous ---- */

static void h_nop(struct emu_cpu *c, const struct emu_insn *i)
{
}

static void h_fence(struct emu_cpu *c, const struct emu_insn *i)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void emu_h_ud(struct emu_cpu *c, const struct emu_insn *i)
{
	emu_raise(c, EMU_UD, EMU_NO_ERR);
}

/* RDRAND/RDSEED from the host's getrandom(); CF=0 (software retries) if it would block. */
static void h_rdrand(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = 0;
	bool ok = getrandom(&v, sizeof(v), GRND_NONBLOCK) == (ssize_t)sizeof(v);

	op_wr(c, i, 0, v);
	emu_set_arith(c, FL_ARITH, ok ? FL_CF : 0);
}

emu_handler emu_ctl_handler(unsigned m)
{
	static const emu_handler jcc[16] = {h_j0, h_j1, h_j2,  h_j3,  h_j4,  h_j5,  h_j6,  h_j7,
					    h_j8, h_j9, h_j10, h_j11, h_j12, h_j13, h_j14, h_j15};
	static const emu_handler setcc[16] = {h_set0,  h_set1,	h_set2,	 h_set3, h_set4,  h_set5,
					      h_set6,  h_set7,	h_set8,	 h_set9, h_set10, h_set11,
					      h_set12, h_set13, h_set14, h_set15};
	static const emu_handler cmovcc[16] = {
	    h_cmov0, h_cmov1, h_cmov2,	h_cmov3,  h_cmov4,  h_cmov5,  h_cmov6,	h_cmov7,
	    h_cmov8, h_cmov9, h_cmov10, h_cmov11, h_cmov12, h_cmov13, h_cmov14, h_cmov15};
	/* Zydis spells conditions differently from the encoding order; map each. */
	static const uint16_t jn[16] = {
	    ZYDIS_MNEMONIC_JO, ZYDIS_MNEMONIC_JNO, ZYDIS_MNEMONIC_JB,  ZYDIS_MNEMONIC_JNB,
	    ZYDIS_MNEMONIC_JZ, ZYDIS_MNEMONIC_JNZ, ZYDIS_MNEMONIC_JBE, ZYDIS_MNEMONIC_JNBE,
	    ZYDIS_MNEMONIC_JS, ZYDIS_MNEMONIC_JNS, ZYDIS_MNEMONIC_JP,  ZYDIS_MNEMONIC_JNP,
	    ZYDIS_MNEMONIC_JL, ZYDIS_MNEMONIC_JNL, ZYDIS_MNEMONIC_JLE, ZYDIS_MNEMONIC_JNLE};
	static const uint16_t sn[16] = {
	    ZYDIS_MNEMONIC_SETO, ZYDIS_MNEMONIC_SETNO, ZYDIS_MNEMONIC_SETB,  ZYDIS_MNEMONIC_SETNB,
	    ZYDIS_MNEMONIC_SETZ, ZYDIS_MNEMONIC_SETNZ, ZYDIS_MNEMONIC_SETBE, ZYDIS_MNEMONIC_SETNBE,
	    ZYDIS_MNEMONIC_SETS, ZYDIS_MNEMONIC_SETNS, ZYDIS_MNEMONIC_SETP,  ZYDIS_MNEMONIC_SETNP,
	    ZYDIS_MNEMONIC_SETL, ZYDIS_MNEMONIC_SETNL, ZYDIS_MNEMONIC_SETLE, ZYDIS_MNEMONIC_SETNLE};
	static const uint16_t cn[16] = {
	    ZYDIS_MNEMONIC_CMOVO,  ZYDIS_MNEMONIC_CMOVNO,  ZYDIS_MNEMONIC_CMOVB,
	    ZYDIS_MNEMONIC_CMOVNB, ZYDIS_MNEMONIC_CMOVZ,   ZYDIS_MNEMONIC_CMOVNZ,
	    ZYDIS_MNEMONIC_CMOVBE, ZYDIS_MNEMONIC_CMOVNBE, ZYDIS_MNEMONIC_CMOVS,
	    ZYDIS_MNEMONIC_CMOVNS, ZYDIS_MNEMONIC_CMOVP,   ZYDIS_MNEMONIC_CMOVNP,
	    ZYDIS_MNEMONIC_CMOVL,  ZYDIS_MNEMONIC_CMOVNL,  ZYDIS_MNEMONIC_CMOVLE,
	    ZYDIS_MNEMONIC_CMOVNLE};

	for (int k = 0; k < 16; k++) {
		if (m == jn[k])
			return jcc[k];
		if (m == sn[k])
			return setcc[k];
		if (m == cn[k])
			return cmovcc[k];
	}
	switch (m) {
	case ZYDIS_MNEMONIC_MOV:
	case ZYDIS_MNEMONIC_MOVNTI: /* the non-temporal hint means nothing here */
		return h_mov;
	case ZYDIS_MNEMONIC_MOVZX:
		return h_movzx;
	case ZYDIS_MNEMONIC_MOVSX:
	case ZYDIS_MNEMONIC_MOVSXD:
		return h_movsx;
	case ZYDIS_MNEMONIC_LEA:
		return h_lea;
	case ZYDIS_MNEMONIC_XCHG:
		return h_xchg;
	case ZYDIS_MNEMONIC_BSWAP:
		return h_bswap;
	case ZYDIS_MNEMONIC_CBW:
	case ZYDIS_MNEMONIC_CWDE:
	case ZYDIS_MNEMONIC_CDQE:
		return h_cbw;
	case ZYDIS_MNEMONIC_CWD:
	case ZYDIS_MNEMONIC_CDQ:
	case ZYDIS_MNEMONIC_CQO:
		return h_cwd;
	case ZYDIS_MNEMONIC_XLAT:
		return h_xlat;
	case ZYDIS_MNEMONIC_PUSH:
		return h_push;
	case ZYDIS_MNEMONIC_POP:
		return h_pop;
	case ZYDIS_MNEMONIC_PUSHF:
	case ZYDIS_MNEMONIC_PUSHFD:
	case ZYDIS_MNEMONIC_PUSHFQ:
		return h_pushf;
	case ZYDIS_MNEMONIC_POPF:
	case ZYDIS_MNEMONIC_POPFD:
	case ZYDIS_MNEMONIC_POPFQ:
		return h_popf;
	case ZYDIS_MNEMONIC_ENTER:
		return h_enter;
	case ZYDIS_MNEMONIC_LEAVE:
		return h_leave;
	case ZYDIS_MNEMONIC_LAHF:
		return h_lahf;
	case ZYDIS_MNEMONIC_SAHF:
		return h_sahf;
	case ZYDIS_MNEMONIC_CLC:
		return h_clc;
	case ZYDIS_MNEMONIC_STC:
		return h_stc;
	case ZYDIS_MNEMONIC_CMC:
		return h_cmc;
	case ZYDIS_MNEMONIC_CLD:
		return h_cld;
	case ZYDIS_MNEMONIC_STD:
		return h_std;
	case ZYDIS_MNEMONIC_JMP:
		return h_jmp;
	case ZYDIS_MNEMONIC_CALL:
		return h_call;
	case ZYDIS_MNEMONIC_RET:
		return h_ret;
	case ZYDIS_MNEMONIC_JCXZ:
	case ZYDIS_MNEMONIC_JECXZ:
	case ZYDIS_MNEMONIC_JRCXZ:
		return h_jrcxz;
	case ZYDIS_MNEMONIC_LOOP:
		return h_loop;
	case ZYDIS_MNEMONIC_LOOPE:
		return h_loope;
	case ZYDIS_MNEMONIC_LOOPNE:
		return h_loopne;
	case ZYDIS_MNEMONIC_NOP:
	case ZYDIS_MNEMONIC_PAUSE:
	case ZYDIS_MNEMONIC_PREFETCH:
	case ZYDIS_MNEMONIC_PREFETCHNTA:
	case ZYDIS_MNEMONIC_PREFETCHT0:
	case ZYDIS_MNEMONIC_PREFETCHT1:
	case ZYDIS_MNEMONIC_PREFETCHT2:
	case ZYDIS_MNEMONIC_PREFETCHW:
	case ZYDIS_MNEMONIC_ENDBR32:
	case ZYDIS_MNEMONIC_ENDBR64:
	case ZYDIS_MNEMONIC_CLFLUSH:
	case ZYDIS_MNEMONIC_CLFLUSHOPT:
	case ZYDIS_MNEMONIC_CLWB:
		return h_nop;
	case ZYDIS_MNEMONIC_MFENCE:
	case ZYDIS_MNEMONIC_LFENCE:
	case ZYDIS_MNEMONIC_SFENCE:
		return h_fence;
	case ZYDIS_MNEMONIC_RDRAND:
	case ZYDIS_MNEMONIC_RDSEED:
		return h_rdrand;
	case ZYDIS_MNEMONIC_UD0:
	case ZYDIS_MNEMONIC_UD1:
	case ZYDIS_MNEMONIC_UD2:
		return emu_h_ud;
	}
	return NULL;
}

/* A faster handler for this particular instruction's operand kinds, or h itself. */
emu_handler emu_int_specialize(const struct emu_insn *i, emu_handler h)
{
	static const emu_handler zxm[3] = {h_movzx_rm, h_movzx_rm_bd, h_movzx_rm_rip};
	static const emu_handler sxm[3] = {h_movsx_rm, h_movsx_rm_bd, h_movsx_rm_rip};

	if (h == h_mov && i->nops == 2)
		return mov_specialize(i);
	if ((h == h_movzx || h == h_movsx) && i->nops == 2 && is_gpr(&i->op[0])) {
		bool zx = h == h_movzx;

		if (is_gpr(&i->op[1]))
			return zx ? h_movzx_rr : h_movsx_rr;
		if (i->op[1].kind == EMU_OP_MEM)
			return (zx ? zxm : sxm)[ea_form_of(&i->op[1])];
	}
	/* Only when decoded as 64-bit code: the stack is then flat and 8 bytes wide. */
	if ((h == h_push || h == h_pop) && i->osize == 8 && i->asize == 8 && is_gpr(&i->op[0]))
		return h == h_push ? h_push_r64 : h_pop_r64;
	/* Operand size 8 only exists in 64-bit code: flat 8-byte stack, no target wrap. */
	if (h == h_call && i->osize == 8 && i->op[0].kind == EMU_OP_REL)
		return h_call_rel64;
	if (h == h_ret && i->osize == 8 && i->nops == 0)
		return h_ret64;
	if (h == h_jmp && i->osize == 8 && i->op[0].kind == EMU_OP_REL)
		return h_jmp_rel64;
	return emu_alu_specialize(i, h);
}

emu_handler emu_int_handler(unsigned m)
{
	emu_handler h = emu_ctl_handler(m);

	if (!h)
		h = emu_alu_handler(m);
	if (!h)
		h = emu_str_handler(m);
	return h;
}

/* ---- Run loop ---- */

static bool events_due(struct emu_cpu *c)
{
	if (__atomic_load_n(&c->sys.pending_irq, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&c->sys.kick, __ATOMIC_RELAXED) || c->sys.halted)
		return true;
	return ++c->event_tick >= EMU_EVENT_PERIOD;
}

/* Not inlined into emu_exec(): setjmp there would pin this loop's state to memory. */
static __attribute__((noinline)) enum vcpu_exit run_blocks(struct emu_cpu *c)
{
	struct emu_block *prev = NULL;
	enum vcpu_exit ex;

	for (;;) {
		if (unlikely(c->tlb_flush_seen !=
			     __atomic_load_n(&c->vm->tlb_flush_gen, __ATOMIC_ACQUIRE)))
			mmu_sync(c);
		if (unlikely(events_due(c))) {
			c->event_tick = 0;
			/* Delivery may change RIP, CS and CPL: do not follow the chain. */
			prev = NULL;
			if (emu_check_events(c, &ex))
				return ex;
		}
		if (unlikely(c->icount >= c->insn_limit))
			return VCPU_EXIT_KICK;

		struct emu_block *b = block_next(c, prev);
		const struct emu_insn *i = b->insn, *end = b->insn + b->n;
		uint64_t rip = c->rip;

		c->stop_block = false;
		c->block_page = b->page;
		prev = b;
		/*
		 * RIP stays in a register: a handler that branches (or re-runs a REP
		 * string step) moves c->next_rip away from the fall-through, which the
		 * predicted compare below notices. Reloading c->next_rip into the next
		 * address instead would chain every instruction to the previous one
		 * through two store-to-load forwards.
		 */
		do {
			uint64_t fall = rip + i->len;

			c->rip = rip;
			c->next_rip = fall;
			i->fn(c, i);
			i++;
			if (unlikely(c->next_rip != fall || c->stop_block)) {
				/* A taken conditional branch leaves the block here. */
				rip = c->next_rip;
				if (c->stop_block)
					prev = NULL;
				break;
			}
			rip = fall;
		} while (i < end);
		c->rip = rip;
		/* icount is settled per block; a fault mid-block leaves that block's part
		 * uncounted. */
		c->icount += (uint64_t)(i - b->insn);
	}
}

static __attribute__((noinline)) enum vcpu_exit exec_entry(struct emu_cpu *c)
{
	/* One setjmp per entry: emu_raise() longjmps here, the loop resumes after delivery. */
	if (setjmp(c->jmp)) {
		if (c->stop_on_fault)
			return VCPU_EXIT_ERROR;
		emu_deliver_fault(c);
		if (c->fault_unhandled)
			return VCPU_EXIT_ERROR;
	}
	return run_blocks(c);
}

enum vcpu_exit emu_exec(struct emu_cpu *c, uint64_t max_insns)
{
	enum vcpu_exit ex;

	c->insn_limit = max_insns ? c->icount + max_insns : UINT64_MAX;
	mmu_set_active(c, true);
	ex = exec_entry(c);
	mmu_set_active(c, false);
	return ex;
}
