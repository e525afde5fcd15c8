/*
 * System instructions: control and debug registers, descriptor tables, far
 * branches, IRET, INT n, SYSCALL/SYSRET, SWAPGS, MSRs, CPUID, TSC, port I/O,
 * HLT/CLI/STI and cache/TLB maintenance. sys_insn_handler() maps Zydis
 * mnemonics (with the core's EMU_MN_* flags) to them.
 *
 * Every handler does its checks and loads before changing architectural
 * state, so a fault leaves the instruction restartable.
 */
#include <string.h>

#include <Zydis/Zydis.h>

#include "cpu/emu/sys_int.h"
#include "util/log.h"

static void need_cpl0(struct emu_cpu *c)
{
	if (c->cpl != 0)
		emu_raise(c, EMU_GP, 0);
}

static void set_zf(struct emu_cpu *c, bool z)
{
	uint64_t f = emu_rflags(c);

	emu_set_rflags(c, z ? f | X_ZF : f & ~X_ZF);
}

/* Linear address of data segment seg at offset off (bases apply outside 64-bit mode, FS/GS always).
 */
static uint64_t seg_la(struct emu_cpu *c, int seg, uint64_t off)
{
	if (c->mode64 && seg != SEG_FS && seg != SEG_GS)
		return off;
	return c->seg[seg].base + off;
}

/* ---- Control and debug registers ---- */

static void write_cr0(struct emu_cpu *c, uint64_t v)
{
	const uint64_t ok = X_CR0_PE | X_CR0_MP | X_CR0_EM | X_CR0_TS | X_CR0_ET | X_CR0_NE |
			    X_CR0_WP | X_CR0_AM | X_CR0_NW | X_CR0_CD | X_CR0_PG;
	uint64_t old = c->cr0;

	if (v & ~ok)
		emu_raise(c, EMU_GP, 0);
	v |= X_CR0_ET;
	if ((v & X_CR0_PG) && !(v & X_CR0_PE))
		emu_raise(c, EMU_GP, 0);
	if ((v & X_CR0_NW) && !(v & X_CR0_CD))
		emu_raise(c, EMU_GP, 0);
	if ((v & X_CR0_PG) && !(old & X_CR0_PG) && (c->efer & X_EFER_LME)) {
		if (!(c->cr4 & X_CR4_PAE))
			emu_raise(c, EMU_GP, 0);
		c->efer |= X_EFER_LMA;
	}
	if (!(v & X_CR0_PG) && (old & X_CR0_PG)) {
		/* Leaving long mode is only legal from compatibility mode. */
		if (c->mode64)
			emu_raise(c, EMU_GP, 0);
		c->efer &= ~X_EFER_LMA;
	}
	c->cr0 = v;
	if ((v ^ old) & (X_CR0_PG | X_CR0_WP | X_CR0_PE))
		emu_tlb_flush(c, true);
	sys_update_mode(c);
}

static void write_cr4(struct emu_cpu *c, uint64_t v)
{
	const uint64_t ok = X_CR4_TSD | X_CR4_DE | X_CR4_PSE | X_CR4_PAE | X_CR4_MCE | X_CR4_PGE |
			    X_CR4_PCE | X_CR4_OSFXSR | X_CR4_OSXMMEXCPT;
	uint64_t old = c->cr4;

	if (v & ~ok)
		emu_raise(c, EMU_GP, 0);
	if ((c->efer & X_EFER_LMA) && !(v & X_CR4_PAE))
		emu_raise(c, EMU_GP, 0);
	c->cr4 = v;
	if ((v ^ old) & (X_CR4_PGE | X_CR4_PAE | X_CR4_PSE))
		emu_tlb_flush(c, true);
	c->stop_block = true;
}

static void write_cr(struct emu_cpu *c, unsigned n, uint64_t v)
{
	switch (n) {
	case 0:
		write_cr0(c, v);
		break;
	case 2:
		c->cr2 = v;
		break;
	case 3:
		if ((c->efer & X_EFER_LMA) && (v >> 52))
			emu_raise(c, EMU_GP, 0);
		c->cr3 = v;
		emu_tlb_flush(c, false);
		c->stop_block = true;
		break;
	case 4:
		write_cr4(c, v);
		break;
	case 8:
		if (v & ~0xfull)
			emu_raise(c, EMU_GP, 0);
		emu_apic_set_cr8(c, v);
		c->stop_block = true;
		break;
	default:
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
}

static uint64_t read_cr(struct emu_cpu *c, unsigned n)
{
	switch (n) {
	case 0:
		return c->cr0;
	case 2:
		return c->cr2;
	case 3:
		return c->cr3;
	case 4:
		return c->cr4;
	case 8:
		return emu_apic_get_cr8(c);
	default:
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
}

/* DR4/DR5 alias DR6/DR7 unless CR4.DE. Breakpoints are stored, not armed. */
static unsigned dr_index(struct emu_cpu *c, unsigned n)
{
	if (n == 4 || n == 5) {
		if (c->cr4 & X_CR4_DE)
			emu_raise(c, EMU_UD, EMU_NO_ERR);
		return n + 2;
	}
	return n;
}

static bool is_cr(unsigned r)
{
	return r >= EMU_R_CR0 && r < EMU_R_CR0 + 16;
}

static bool is_dr(unsigned r)
{
	return r >= EMU_R_DR0 && r < EMU_R_DR0 + 8;
}

static void op_mov_crdr(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct emu_operand *d = &i->op[0], *s = &i->op[1];
	unsigned size = c->mode64 ? 8 : 4;

	need_cpl0(c);
	if (d->kind == EMU_OP_REG && is_cr(d->reg)) {
		write_cr(c, d->reg - EMU_R_CR0, emu_reg_read(c, s->reg, size));
	} else if (d->kind == EMU_OP_REG && is_dr(d->reg)) {
		unsigned n = dr_index(c, d->reg - EMU_R_DR0);
		uint64_t v = emu_reg_read(c, s->reg, size);

		if (n >= 6 && (v >> 32))
			emu_raise(c, EMU_GP, 0);
		c->dr[n] = n == 6 ? (v | 0xffff0ff0) : n == 7 ? (v | 0x400) : v;
	} else if (is_cr(s->reg)) {
		emu_reg_write(c, d->reg, size, read_cr(c, s->reg - EMU_R_CR0));
	} else if (is_dr(s->reg)) {
		emu_reg_write(c, d->reg, size, c->dr[dr_index(c, s->reg - EMU_R_DR0)]);
	} else {
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
}

static void op_clts(struct emu_cpu *c, const struct emu_insn *i)
{
	need_cpl0(c);
	c->cr0 &= ~X_CR0_TS;
}

static void op_lmsw(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = emu_op_read(c, i, 0) & 0xf;

	need_cpl0(c);
	/* LMSW sets PE but never clears it. */
	write_cr0(c, (c->cr0 & ~0xeull) | v | (c->cr0 & X_CR0_PE));
}

static void op_smsw(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned size = i->op[0].kind == EMU_OP_MEM ? 2 : i->op[0].size;

	emu_op_write(c, i, 0, c->cr0 & (size >= 8 ? ~0ull : size == 4 ? 0xffffffffull : 0xffff));
}

/* ---- Descriptor tables ---- */

static void read_dtable(struct emu_cpu *c, const struct emu_insn *i, struct cpu_dtable *t)
{
	uint64_t ea = emu_ea(c, &i->op[0]);
	uint16_t limit = (uint16_t)emu_read(c, ea, 2);
	uint64_t base;

	if (c->mode64) {
		base = emu_read(c, ea + 2, 8);
		if (!sys_canonical(base))
			emu_raise(c, EMU_GP, 0);
	} else {
		base = emu_read(c, ea + 2, 4);
		if (i->osize == 2)
			base &= 0xffffff;
	}
	t->base = base;
	t->limit = limit;
}

static void write_dtable(struct emu_cpu *c, const struct emu_insn *i, const struct cpu_dtable *t)
{
	uint64_t ea = emu_ea(c, &i->op[0]);

	/* Probe the far end first so a fault leaves nothing half written. */
	if (c->mode64) {
		emu_write(c, ea + 2, 8, t->base);
	} else {
		emu_write(c, ea + 2, 4, t->base & (i->osize == 2 ? 0xffffff : 0xffffffff));
	}
	emu_write(c, ea, 2, t->limit);
}

static void op_lgdt(struct emu_cpu *c, const struct emu_insn *i)
{
	need_cpl0(c);
	read_dtable(c, i, &c->gdtr);
}

static void op_lidt(struct emu_cpu *c, const struct emu_insn *i)
{
	need_cpl0(c);
	read_dtable(c, i, &c->idtr);
}

static void op_sgdt(struct emu_cpu *c, const struct emu_insn *i)
{
	write_dtable(c, i, &c->gdtr);
}

static void op_sidt(struct emu_cpu *c, const struct emu_insn *i)
{
	write_dtable(c, i, &c->idtr);
}

/* SLDT/STR: a register gets the selector zero-extended, memory gets 16 bits. */
static void store_sel(struct emu_cpu *c, const struct emu_insn *i, uint16_t sel)
{
	emu_op_write(c, i, 0, sel);
}

static void op_sldt(struct emu_cpu *c, const struct emu_insn *i)
{
	if (!(c->cr0 & X_CR0_PE))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	store_sel(c, i, c->ldtr.sel);
}

static void op_str(struct emu_cpu *c, const struct emu_insn *i)
{
	if (!(c->cr0 & X_CR0_PE))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	store_sel(c, i, c->tr.sel);
}

static void load_system_seg(struct emu_cpu *c, uint16_t sel, uint64_t lo, uint64_t hi,
			    struct cpu_seg *s)
{
	sys_desc_to_seg(lo, sel, s);
	if (c->efer & X_EFER_LMA)
		s->base |= hi << 32;
}

static void op_lldt(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel = (uint16_t)emu_op_read(c, i, 0);
	uint64_t lo, hi;
	struct cpu_seg s;

	if (!(c->cr0 & X_CR0_PE))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	need_cpl0(c);
	if ((sel & ~3u) == 0) {
		memset(&c->ldtr, 0, sizeof(c->ldtr));
		c->ldtr.sel = sel;
		c->ldtr.unusable = 1;
		return;
	}
	if (sel & 4)
		emu_raise(c, EMU_GP, sel & 0xfffc);
	lo = sys_read_desc(c, sel, true, &hi);
	load_system_seg(c, sel, lo, hi, &s);
	if (s.s || s.type != 2)
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if (!s.present)
		emu_raise(c, EMU_NP, sel & 0xfffc);
	c->ldtr = s;
}

static void op_ltr(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel = (uint16_t)emu_op_read(c, i, 0);
	uint64_t lo, hi, addr;
	struct cpu_seg s;

	if (!(c->cr0 & X_CR0_PE))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	need_cpl0(c);
	if ((sel & ~3u) == 0 || (sel & 4))
		emu_raise(c, EMU_GP, sel & 0xfffc);
	lo = sys_read_desc(c, sel, true, &hi);
	load_system_seg(c, sel, lo, hi, &s);
	/* An available TSS: 32/64-bit (9), or 16-bit (1) outside long mode. */
	if (s.s || (s.type != 9 && !(s.type == 1 && !(c->efer & X_EFER_LMA))))
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if (!s.present)
		emu_raise(c, EMU_NP, sel & 0xfffc);
	addr = c->gdtr.base + (sel & ~7u);
	emu_write_sys(c, addr, 8, lo | (2ull << 40)); /* mark busy */
	s.type |= 2;
	c->tr = s;
}

/*
 * LAR/LSL/VERR/VERW: probe a selector without faulting on it. Returns false
 * (ZF=0) for null, out-of-table or inaccessible selectors.
 */
static bool probe_desc(struct emu_cpu *c, uint16_t sel, bool sys16, struct cpu_seg *s, uint64_t *lo)
{
	uint64_t limit = (sel & 4) ? c->ldtr.limit : c->gdtr.limit;
	uint64_t hi;

	if ((sel & ~3u) == 0 || ((sel & 4) && (c->ldtr.unusable || !c->ldtr.present)))
		return false;
	if ((sel & ~7u) + 7 > limit)
		return false;
	*lo = sys_read_desc(c, sel, false, NULL);
	sys_desc_to_seg(*lo, sel, s);
	if (!s->s && sys16 && (c->efer & X_EFER_LMA)) {
		if ((sel & ~7u) + 15 > limit)
			return false;
		sys_read_desc(c, sel, true, &hi);
	}
	bool conforming = s->s && (s->type & DESC_CODE) && (s->type & DESC_CONFORMING);

	return conforming || (s->dpl >= c->cpl && s->dpl >= (sel & 3));
}

static void op_lar_lsl(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel = (uint16_t)emu_op_read(c, i, 1);
	struct cpu_seg s;
	uint64_t lo;
	bool lsl = (i->mnemonic & 0x3fff) == ZYDIS_MNEMONIC_LSL;
	bool ok;

	if (!(c->cr0 & X_CR0_PE))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	ok = probe_desc(c, sel, true, &s, &lo);
	if (ok && !s.s) {
		bool lm = c->efer & X_EFER_LMA;

		/* LDT and TSS descriptors; LAR also accepts call gates. */
		ok = s.type == 2 || s.type == 9 || s.type == 0xb ||
		     (!lm && (s.type == 1 || s.type == 3)) || (!lsl && s.type == 0xc);
	}
	set_zf(c, ok);
	if (!ok)
		return;
	emu_op_write(c, i, 0, lsl ? s.limit : (lo >> 32) & 0x00f0ff00);
}

static void op_verr_verw(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel = (uint16_t)emu_op_read(c, i, 0);
	struct cpu_seg s;
	uint64_t lo;
	bool ok, w = (i->mnemonic & 0x3fff) == ZYDIS_MNEMONIC_VERW;

	if (!(c->cr0 & X_CR0_PE))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	ok = probe_desc(c, sel, false, &s, &lo) && s.s;
	if (ok && w)
		ok = !(s.type & DESC_CODE) && (s.type & DESC_RW);
	else if (ok)
		ok = !(s.type & DESC_CODE) || (s.type & DESC_RW);
	set_zf(c, ok);
}

/* ---- Far branches ---- */

static uint64_t ip_mask(const struct cpu_seg *cs, bool lma, unsigned osize)
{
	if (lma && cs->l)
		return ~0ull;
	return osize == 2 || !cs->db ? (osize == 2 ? 0xffff : 0xffffffffull) : 0xffffffffull;
}

static void push_n(struct emu_cpu *c, uint64_t *rsp, unsigned size, uint64_t v)
{
	*rsp = (*rsp - size) & sys_rsp_mask(c);
	emu_write(c, sys_stack_base(c) + *rsp, size, v);
}

static uint64_t pop_n(struct emu_cpu *c, uint64_t *rsp, unsigned size)
{
	uint64_t v = emu_read(c, sys_stack_base(c) + (*rsp & sys_rsp_mask(c)), size);

	*rsp = (*rsp + size) & sys_rsp_mask(c);
	return v;
}

static void set_rsp(struct emu_cpu *c, uint64_t rsp)
{
	uint64_t m = sys_rsp_mask(c);

	c->gpr[4] = (c->gpr[4] & ~m) | (rsp & m);
}

/* Check a code segment for a far JMP/CALL at the current CPL (no gates, no task switches). */
static uint64_t check_far_target(struct emu_cpu *c, uint16_t sel, struct cpu_seg *n)
{
	uint64_t d;

	if ((sel & ~3u) == 0)
		emu_raise(c, EMU_GP, 0);
	d = sys_read_desc(c, sel, false, NULL);
	sys_desc_to_seg(d, sel, n);
	if (!n->s) {
		pr_warn_once("emu: far branch through a gate or TSS is not supported\n");
		emu_raise(c, EMU_GP, sel & 0xfffc);
	}
	if (!(n->type & DESC_CODE))
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if (n->type & DESC_CONFORMING) {
		if (n->dpl > c->cpl)
			emu_raise(c, EMU_GP, sel & 0xfffc);
	} else if ((sel & 3u) > c->cpl || n->dpl != c->cpl) {
		emu_raise(c, EMU_GP, sel & 0xfffc);
	}
	if (!n->present)
		emu_raise(c, EMU_NP, sel & 0xfffc);
	return d;
}

static void far_branch(struct emu_cpu *c, uint16_t sel, uint64_t off, unsigned osize, bool call)
{
	uint64_t rsp = c->gpr[4], d = 0;
	struct cpu_seg n;
	bool lma = c->efer & X_EFER_LMA;

	if (!(c->cr0 & X_CR0_PE)) {
		if (call) {
			push_n(c, &rsp, osize, c->seg[SEG_CS].sel);
			push_n(c, &rsp, osize, c->next_rip);
			set_rsp(c, rsp);
		}
		c->seg[SEG_CS].sel = sel;
		c->seg[SEG_CS].base = (uint64_t)sel << 4;
		c->next_rip = off & (osize == 2 ? 0xffff : 0xffffffffull);
		sys_update_mode(c);
		return;
	}
	d = check_far_target(c, sel, &n);
	off &= ip_mask(&n, lma, osize);
	if (lma && n.l && !sys_canonical(off))
		emu_raise(c, EMU_GP, 0);
	if (call) {
		push_n(c, &rsp, osize, c->seg[SEG_CS].sel);
		push_n(c, &rsp, osize, c->next_rip);
		set_rsp(c, rsp);
	}
	sys_load_cs(c, sel, d, c->cpl);
	c->next_rip = off;
}

/* The far pointer operand: ptr16:xx immediate or m16:xx in memory. */
static void far_operand(struct emu_cpu *c, const struct emu_insn *i, uint16_t *sel, uint64_t *off)
{
	const struct emu_operand *o = &i->op[0];

	if (o->kind == EMU_OP_PTR) {
		*sel = (uint16_t)((uint64_t)o->disp >> 32);
		*off = (uint64_t)o->disp & (i->osize == 2 ? 0xffff : 0xffffffffull);
		return;
	}
	if (o->kind != EMU_OP_MEM)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	uint64_t ea = emu_ea(c, o);

	*off = emu_read(c, ea, i->osize);
	*sel = (uint16_t)emu_read(c, ea + i->osize, 2);
}

static void op_far_jmp(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel;
	uint64_t off;

	far_operand(c, i, &sel, &off);
	far_branch(c, sel, off, i->osize, false);
}

static void op_far_call(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel;
	uint64_t off;

	far_operand(c, i, &sel, &off);
	far_branch(c, sel, off, i->osize, true);
}

static void op_far_ret(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned osize = i->osize;
	uint64_t rsp = c->gpr[4], off, imm = 0, d;
	uint16_t sel;
	struct cpu_seg n;
	unsigned rpl;

	if (i->nops > 0 && i->op[0].kind == EMU_OP_IMM)
		imm = (uint64_t)i->op[0].disp & 0xffff;
	off = pop_n(c, &rsp, osize);
	sel = (uint16_t)pop_n(c, &rsp, osize);
	if (!(c->cr0 & X_CR0_PE)) {
		set_rsp(c, rsp + imm);
		c->seg[SEG_CS].sel = sel;
		c->seg[SEG_CS].base = (uint64_t)sel << 4;
		c->next_rip = off & (osize == 2 ? 0xffff : 0xffffffffull);
		sys_update_mode(c);
		return;
	}
	rpl = sel & 3u;
	if ((sel & ~3u) == 0)
		emu_raise(c, EMU_GP, 0);
	d = sys_read_desc(c, sel, false, NULL);
	sys_desc_to_seg(d, sel, &n);
	if (!n.s || !(n.type & DESC_CODE) || rpl < c->cpl)
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if ((n.type & DESC_CONFORMING) ? n.dpl > rpl : n.dpl != rpl)
		emu_raise(c, EMU_GP, sel & 0xfffc);
	if (!n.present)
		emu_raise(c, EMU_NP, sel & 0xfffc);
	off &= ip_mask(&n, c->efer & X_EFER_LMA, osize);
	if (rpl == c->cpl) {
		set_rsp(c, rsp + imm);
		sys_load_cs(c, sel, d, rpl);
		c->next_rip = off;
		return;
	}
	/* To an outer level: the caller's SS:RSP follow. */
	rsp += imm;
	uint64_t nrsp = pop_n(c, &rsp, osize);
	uint16_t nss = (uint16_t)pop_n(c, &rsp, osize);

	sys_load_cs(c, sel, d, rpl);
	emu_load_seg(c, SEG_SS, nss);
	c->gpr[4] = nrsp + imm;
	c->next_rip = off;
}

/* ---- Interrupts ---- */

static void op_int(struct emu_cpu *c, const struct emu_insn *i)
{
	sys_deliver(c, (unsigned)emu_op_read(c, i, 0) & 0xff, EMU_NO_ERR, EV_SOFT, c->next_rip);
}

static void op_int3(struct emu_cpu *c, const struct emu_insn *i)
{
	sys_deliver(c, EMU_BP, EMU_NO_ERR, EV_SOFTEXC, c->next_rip);
}

static void op_into(struct emu_cpu *c, const struct emu_insn *i)
{
	if (emu_rflags(c) & X_OF)
		sys_deliver(c, EMU_OF, EMU_NO_ERR, EV_SOFTEXC, c->next_rip);
}

static void op_int1(struct emu_cpu *c, const struct emu_insn *i)
{
	sys_deliver(c, EMU_DB, EMU_NO_ERR, EV_ICEBP, c->next_rip);
}

static void iret_real(struct emu_cpu *c, unsigned osize)
{
	uint64_t rsp = c->gpr[4], ip, cs, fl;

	ip = pop_n(c, &rsp, osize);
	cs = pop_n(c, &rsp, osize);
	fl = pop_n(c, &rsp, osize);
	set_rsp(c, rsp);
	c->seg[SEG_CS].sel = (uint16_t)cs;
	c->seg[SEG_CS].base = (cs & 0xffff) << 4;
	emu_set_rflags(c, (emu_rflags(c) & ~sys_flags_mask(c, osize)) |
			      (fl & sys_flags_mask(c, osize)) | 2);
	c->next_rip = ip & (osize == 2 ? 0xffff : 0xffffffffull);
	sys_update_mode(c);
}

/* After a return to an outer level, data segments the new CPL may not use become null. */
static void drop_inner_segs(struct emu_cpu *c)
{
	static const int segs[] = {SEG_ES, SEG_DS, SEG_FS, SEG_GS};

	for (unsigned k = 0; k < 4; k++) {
		struct cpu_seg *s = &c->seg[segs[k]];
		bool conforming = (s->type & DESC_CODE) && (s->type & DESC_CONFORMING);

		if (!s->unusable && !conforming && s->dpl < c->cpl) {
			uint64_t base = s->base;

			memset(s, 0, sizeof(*s));
			s->unusable = 1;
			/* FS/GS bases come from MSRs in 64-bit mode; keep them. */
			if (segs[k] == SEG_FS || segs[k] == SEG_GS)
				s->base = base;
		}
	}
}

static void op_iret(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned osize = i->osize, rpl;
	uint64_t rsp = c->gpr[4], ip, fl, nrsp = 0, d, mask;
	uint16_t cs, ss = 0;
	bool lma = c->efer & X_EFER_LMA, pop_ss;
	struct cpu_seg n, nss;

	if (!(c->cr0 & X_CR0_PE)) {
		iret_real(c, osize);
		c->sys.nmi_blocked = false;
		return;
	}
	if (c->rflags & X_NT)
		emu_raise(c, EMU_GP, 0); /* task return: no hardware task switching */
	ip = pop_n(c, &rsp, osize);
	cs = (uint16_t)pop_n(c, &rsp, osize);
	fl = pop_n(c, &rsp, osize);
	rpl = cs & 3u;
	pop_ss = c->mode64 || rpl > c->cpl;
	if (pop_ss) {
		nrsp = pop_n(c, &rsp, osize);
		ss = (uint16_t)pop_n(c, &rsp, osize);
	}
	if ((cs & ~3u) == 0)
		emu_raise(c, EMU_GP, 0);
	d = sys_read_desc(c, cs, false, NULL);
	sys_desc_to_seg(d, cs, &n);
	if (!n.s || !(n.type & DESC_CODE) || rpl < c->cpl)
		emu_raise(c, EMU_GP, cs & 0xfffc);
	if ((n.type & DESC_CONFORMING) ? n.dpl > rpl : n.dpl != rpl)
		emu_raise(c, EMU_GP, cs & 0xfffc);
	if (!n.present)
		emu_raise(c, EMU_NP, cs & 0xfffc);
	ip &= ip_mask(&n, lma, osize);
	if (lma && n.l && !sys_canonical(ip))
		emu_raise(c, EMU_GP, 0);
	if (pop_ss) {
		if ((ss & ~3u) == 0) {
			/* Null SS is fine for a 64-bit CS below CPL 3. */
			if (!(lma && n.l && rpl != 3) || (ss & 3u) != rpl)
				emu_raise(c, EMU_GP, 0);
			memset(&nss, 0, sizeof(nss));
			nss.sel = ss;
			nss.unusable = 1;
			nss.dpl = (uint8_t)rpl;
		} else {
			uint64_t sd = sys_read_desc(c, ss, false, NULL);

			sys_desc_to_seg(sd, ss, &nss);
			if ((ss & 3u) != rpl || !nss.s || (nss.type & DESC_CODE) ||
			    !(nss.type & DESC_RW) || nss.dpl != rpl)
				emu_raise(c, EMU_GP, ss & 0xfffc);
			if (!nss.present)
				emu_raise(c, EMU_SS, ss & 0xfffc);
		}
	}

	/* Commit: flags under the old CPL's rules, then CS, then the stack. */
	mask = sys_flags_mask(c, osize);
	emu_set_rflags(c, ((emu_rflags(c) & ~mask) | (fl & mask) | 2) & ~X_VM);
	sys_load_cs(c, cs, d, rpl);
	if (pop_ss) {
		c->seg[SEG_SS] = nss;
		c->gpr[4] = nrsp;
		if (!c->mode64 && !nss.db)
			c->gpr[4] &= 0xffff;
	} else {
		set_rsp(c, rsp);
	}
	drop_inner_segs(c);
	c->next_rip = ip;
	c->sys.nmi_blocked = false;
	/* Interrupts may have become deliverable. */
	sys_set_pending(c);
}

/* ---- SYSCALL / SYSRET / SWAPGS ---- */

static void flat_seg(struct cpu_seg *s, uint16_t sel, bool code, unsigned dpl, bool l)
{
	memset(s, 0, sizeof(*s));
	s->sel = sel;
	s->limit = 0xffffffff;
	s->type = code ? 0xb : 0x3;
	s->s = 1;
	s->present = 1;
	s->dpl = (uint8_t)dpl;
	s->g = 1;
	s->l = l;
	s->db = !l;
}

static void op_syscall(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel = (uint16_t)(c->sys.star >> 32);
	uint64_t fl = emu_rflags(c);
	bool from64 = c->mode64;

	if (!(c->efer & X_EFER_SCE) || !(c->efer & X_EFER_LMA))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	c->gpr[1] = c->next_rip;
	c->gpr[11] = fl & ~X_RF;
	emu_set_rflags(c, (fl & ~(c->sys.sfmask | X_RF)) | 2);
	flat_seg(&c->seg[SEG_CS], sel & 0xfffc, true, 0, true);
	flat_seg(&c->seg[SEG_SS], (uint16_t)(sel + 8), false, 0, false);
	sys_update_mode(c);
	c->next_rip = from64 ? c->sys.lstar : c->sys.cstar;
}

static void op_sysret(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t sel = (uint16_t)(c->sys.star >> 48);
	bool to64 = i->osize == 8;
	uint64_t rip = c->gpr[1];

	if (!(c->efer & X_EFER_SCE) || !(c->efer & X_EFER_LMA))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	if (c->cpl != 0 || !c->mode64)
		emu_raise(c, EMU_GP, 0);
	if (to64 && !sys_canonical(rip))
		emu_raise(c, EMU_GP, 0);
	emu_set_rflags(c, (c->gpr[11] & 0x3c7fd7) | 2);
	if (to64) {
		flat_seg(&c->seg[SEG_CS], (uint16_t)((sel + 16) | 3), true, 3, true);
	} else {
		flat_seg(&c->seg[SEG_CS], (uint16_t)(sel | 3), true, 3, false);
		rip &= 0xffffffff;
	}
	flat_seg(&c->seg[SEG_SS], (uint16_t)((sel + 8) | 3), false, 3, false);
	sys_update_mode(c);
	c->next_rip = rip;
	sys_set_pending(c);
}

static void op_swapgs(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t t;

	if (!c->mode64)
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	need_cpl0(c);
	t = c->seg[SEG_GS].base;
	c->seg[SEG_GS].base = c->sys.kernel_gs_base;
	c->sys.kernel_gs_base = t;
}

/* ---- MSR, CPUID, TSC ---- */

static void set_edx_eax(struct emu_cpu *c, uint64_t v)
{
	c->gpr[0] = v & 0xffffffff;
	c->gpr[2] = v >> 32;
}

static void op_rdmsr(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v;

	need_cpl0(c);
	if (!emu_msr_read(c, (uint32_t)c->gpr[1], &v))
		emu_raise(c, EMU_GP, 0);
	set_edx_eax(c, v);
}

static void op_wrmsr(struct emu_cpu *c, const struct emu_insn *i)
{
	uint64_t v = (c->gpr[2] << 32) | (c->gpr[0] & 0xffffffff);

	need_cpl0(c);
	if (!emu_msr_write(c, (uint32_t)c->gpr[1], v))
		emu_raise(c, EMU_GP, 0);
	/* EFER, FS/GS bases and the APIC may change how code runs. */
	c->stop_block = true;
}

static void op_cpuid(struct emu_cpu *c, const struct emu_insn *i)
{
	uint32_t r[4];

	emu_cpuid(c, (uint32_t)c->gpr[0], (uint32_t)c->gpr[1], r);
	c->gpr[0] = r[0];
	c->gpr[3] = r[1];
	c->gpr[1] = r[2];
	c->gpr[2] = r[3];
}

static void op_rdtsc(struct emu_cpu *c, const struct emu_insn *i)
{
	if ((c->cr4 & X_CR4_TSD) && c->cpl)
		emu_raise(c, EMU_GP, 0);
	set_edx_eax(c, emu_rdtsc(c));
}

static void op_rdtscp(struct emu_cpu *c, const struct emu_insn *i)
{
	op_rdtsc(c, i);
	c->gpr[1] = c->sys.tsc_aux & 0xffffffff;
}

/* ---- Port I/O ---- */

/*
 * CPL > IOPL may still use the ports its TSS I/O permission bitmap clears
 * (how Linux implements ioperm() and iopl()): every bit of the access must
 * be 0 and inside the TSS limit.
 */
static void io_check(struct emu_cpu *c, uint16_t port, unsigned size)
{
	const struct cpu_seg *tr = &c->tr;
	uint64_t base, byte;
	uint32_t bits;

	if (!(c->cr0 & X_CR0_PE) || c->cpl <= ((c->rflags & X_IOPL) >> 12))
		return;
	if (tr->unusable || !tr->present || tr->limit < 0x67)
		emu_raise(c, EMU_GP, 0);
	base = emu_read_sys(c, tr->base + 0x66, 2);
	byte = base + port / 8;
	if (byte + 1 > tr->limit)
		emu_raise(c, EMU_GP, 0);
	bits = (uint32_t)emu_read_sys(c, tr->base + byte, 2);
	if ((bits >> (port % 8)) & ((1u << size) - 1))
		emu_raise(c, EMU_GP, 0);
}

static uint32_t pio(struct emu_cpu *c, uint16_t port, unsigned size, int is_write, uint32_t v)
{
	struct emu_io *io = &c->vm->io;

	if (!io->pio) {
		return is_write ? 0 : 0xffffffffu;
	}
	io->pio(io->opaque, c, port, &v, size, is_write);
	return v;
}

static void op_in(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t port = (uint16_t)emu_op_read(c, i, 1);
	unsigned size = i->op[0].size;
	uint32_t v;

	io_check(c, port, size);
	v = pio(c, port, size, 0, 0xffffffffu);
	emu_reg_write(c, i->op[0].reg, size, size == 4 ? v : v & ((1u << (size * 8)) - 1));
}

static void op_out(struct emu_cpu *c, const struct emu_insn *i)
{
	uint16_t port = (uint16_t)emu_op_read(c, i, 0);
	unsigned size = i->op[1].size;

	io_check(c, port, size);
	pio(c, port, size, 1, (uint32_t)emu_op_read(c, i, 1));
}

static unsigned string_size(unsigned mn)
{
	switch (mn) {
	case ZYDIS_MNEMONIC_INSB:
	case ZYDIS_MNEMONIC_OUTSB:
		return 1;
	case ZYDIS_MNEMONIC_INSW:
	case ZYDIS_MNEMONIC_OUTSW:
		return 2;
	default:
		return 4;
	}
}

/*
 * INS/OUTS, REP or not. Registers advance per element so a fault mid-way
 * restarts where it stopped; a long REP yields every 4096 elements (the
 * instruction re-executes) so events are not held off.
 */
static void op_ins_outs(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned mn = i->mnemonic & 0x3fff, size = string_size(mn);
	bool in =
	    mn == ZYDIS_MNEMONIC_INSB || mn == ZYDIS_MNEMONIC_INSW || mn == ZYDIS_MNEMONIC_INSD;
	bool rep = i->pfx & (EMU_PFX_REP | EMU_PFX_REPNE);
	uint64_t am = i->asize >= 8 ? ~0ull : i->asize == 4 ? 0xffffffffull : 0xffff;
	int64_t step = (emu_rflags(c) & X_DF) ? -(int64_t)size : (int64_t)size;
	uint16_t port = (uint16_t)c->gpr[2];
	unsigned idx = in ? 7 : 6; /* RDI / RSI */

	io_check(c, port, size);
	for (unsigned n = 0; n < 4096; n++) {
		if (rep && !(c->gpr[1] & am))
			return;
		uint64_t off = c->gpr[idx] & am;

		if (in) {
			uint64_t la = seg_la(c, SEG_ES, off);

			/* Probe the destination first: a port read has side effects. */
			emu_write(c, la, size, 0);
			emu_write(c, la, size, pio(c, port, size, 0, 0xffffffffu));
		} else {
			int seg = i->seg <= SEG_GS ? i->seg : SEG_DS;

			pio(c, port, size, 1, (uint32_t)emu_read(c, seg_la(c, seg, off), size));
		}
		c->gpr[idx] = (c->gpr[idx] & ~am) | ((off + (uint64_t)step) & am);
		if (!rep)
			return;
		c->gpr[1] = (c->gpr[1] & ~am) | (((c->gpr[1] & am) - 1) & am);
	}
	if (c->gpr[1] & am)
		c->next_rip = c->rip;
}

/* ---- HLT, CLI, STI, caches, TLB ---- */

static void op_hlt(struct emu_cpu *c, const struct emu_insn *i)
{
	need_cpl0(c);
	c->sys.halted = true;
	c->stop_block = true;
	sys_set_pending(c);
}

static void if_check(struct emu_cpu *c)
{
	if ((c->cr0 & X_CR0_PE) && c->cpl > ((c->rflags & X_IOPL) >> 12))
		emu_raise(c, EMU_GP, 0);
}

static void op_cli(struct emu_cpu *c, const struct emu_insn *i)
{
	if_check(c);
	c->rflags &= ~X_IF;
}

static void op_sti(struct emu_cpu *c, const struct emu_insn *i)
{
	if_check(c);
	if (!(c->rflags & X_IF)) {
		c->rflags |= X_IF;
		c->sys.intr_shadow = true;
		c->sys.shadow_rip = c->next_rip;
	}
	c->stop_block = true;
	sys_set_pending(c);
}

static void op_nop_cpl0(struct emu_cpu *c, const struct emu_insn *i)
{
	need_cpl0(c);
}

static void op_invlpg(struct emu_cpu *c, const struct emu_insn *i)
{
	need_cpl0(c);
	emu_tlb_flush_page(c, emu_ea(c, &i->op[0]));
	c->stop_block = true;
}

emu_handler sys_insn_handler(unsigned mnemonic)
{
	if (mnemonic & EMU_MN_FAR) {
		switch (mnemonic & ~EMU_MN_FAR) {
		case ZYDIS_MNEMONIC_JMP:
			return op_far_jmp;
		case ZYDIS_MNEMONIC_CALL:
			return op_far_call;
		case ZYDIS_MNEMONIC_RET:
			return op_far_ret;
		default:
			return NULL;
		}
	}
	if (mnemonic & EMU_MN_CRDR)
		return (mnemonic & ~EMU_MN_CRDR) == ZYDIS_MNEMONIC_MOV ? op_mov_crdr : NULL;
	switch (mnemonic) {
	case ZYDIS_MNEMONIC_CLTS:
		return op_clts;
	case ZYDIS_MNEMONIC_LMSW:
		return op_lmsw;
	case ZYDIS_MNEMONIC_SMSW:
		return op_smsw;
	case ZYDIS_MNEMONIC_LGDT:
		return op_lgdt;
	case ZYDIS_MNEMONIC_LIDT:
		return op_lidt;
	case ZYDIS_MNEMONIC_SGDT:
		return op_sgdt;
	case ZYDIS_MNEMONIC_SIDT:
		return op_sidt;
	case ZYDIS_MNEMONIC_LLDT:
		return op_lldt;
	case ZYDIS_MNEMONIC_SLDT:
		return op_sldt;
	case ZYDIS_MNEMONIC_LTR:
		return op_ltr;
	case ZYDIS_MNEMONIC_STR:
		return op_str;
	case ZYDIS_MNEMONIC_LAR:
	case ZYDIS_MNEMONIC_LSL:
		return op_lar_lsl;
	case ZYDIS_MNEMONIC_VERR:
	case ZYDIS_MNEMONIC_VERW:
		return op_verr_verw;
	case ZYDIS_MNEMONIC_INT:
		return op_int;
	case ZYDIS_MNEMONIC_INT3:
		return op_int3;
	case ZYDIS_MNEMONIC_INTO:
		return op_into;
	case ZYDIS_MNEMONIC_INT1:
		return op_int1;
	case ZYDIS_MNEMONIC_IRET:
	case ZYDIS_MNEMONIC_IRETD:
	case ZYDIS_MNEMONIC_IRETQ:
		return op_iret;
	case ZYDIS_MNEMONIC_SYSCALL:
		return op_syscall;
	case ZYDIS_MNEMONIC_SYSRET:
		return op_sysret;
	case ZYDIS_MNEMONIC_SWAPGS:
		return op_swapgs;
	case ZYDIS_MNEMONIC_RDMSR:
		return op_rdmsr;
	case ZYDIS_MNEMONIC_WRMSR:
		return op_wrmsr;
	case ZYDIS_MNEMONIC_CPUID:
		return op_cpuid;
	case ZYDIS_MNEMONIC_RDTSC:
		return op_rdtsc;
	case ZYDIS_MNEMONIC_RDTSCP:
		return op_rdtscp;
	case ZYDIS_MNEMONIC_IN:
		return op_in;
	case ZYDIS_MNEMONIC_OUT:
		return op_out;
	case ZYDIS_MNEMONIC_INSB:
	case ZYDIS_MNEMONIC_INSW:
	case ZYDIS_MNEMONIC_INSD:
	case ZYDIS_MNEMONIC_OUTSB:
	case ZYDIS_MNEMONIC_OUTSW:
	case ZYDIS_MNEMONIC_OUTSD:
		return op_ins_outs;
	case ZYDIS_MNEMONIC_HLT:
		return op_hlt;
	case ZYDIS_MNEMONIC_CLI:
		return op_cli;
	case ZYDIS_MNEMONIC_STI:
		return op_sti;
	case ZYDIS_MNEMONIC_WBINVD:
	case ZYDIS_MNEMONIC_INVD:
		return op_nop_cpl0;
	case ZYDIS_MNEMONIC_INVLPG:
		return op_invlpg;
	default:
		return NULL;
	}
}
