/*
 * String instructions: MOVS STOS LODS SCAS CMPS, with REP/REPE/REPNE.
 *
 * REP MOVSB/STOSB are the kernel's memcpy/memset, so forward repeats run in
 * page-sized chunks directly on host memory. A long repeat yields after a
 * budget of elements (RIP stays on the instruction, the registers say how
 * far it got) so interrupts are not held off.
 */
#include <Zydis/Zydis.h>

#include "cpu/emu/core.h"

#define REP_BUDGET 16384 /* elements per execution before yielding to the run loop */

enum { R_RCX = 1, R_RSI = 6, R_RDI = 7 };

static inline int64_t str_step(const struct emu_cpu *c, unsigned sz)
{
	return (c->rflags & FL_DF) ? -(int64_t)sz : (int64_t)sz;
}

static inline bool is_rep(const struct emu_insn *i)
{
	return i->pfx & (EMU_PFX_REP | EMU_PFX_REPNE);
}

/* Elements that fit before the end of the page holding la. */
static inline uint64_t page_room(uint64_t la, unsigned sz)
{
	return (4096 - (la & EMU_PAGE_MASK)) / sz;
}

/* Leave the instruction unfinished: it restarts with the updated registers. */
static void rep_yield(struct emu_cpu *c)
{
	c->next_rip = c->rip;
	c->stop_block = true;
}

/* Forward MOVS chunk on host memory; returns elements copied (0: take the slow path). */
static uint64_t movs_fast(struct emu_cpu *c, const struct emu_insn *i, unsigned sz, uint64_t n)
{
	uint64_t src = seg_la(c, i->seg, areg(c, i, R_RSI));
	uint64_t dst = seg_la(c, SEG_ES, areg(c, i, R_RDI));
	uint64_t k = n, room;
	uint8_t *ps, *pd;

	room = page_room(src, sz);
	if (room < k)
		k = room;
	room = page_room(dst, sz);
	if (room < k)
		k = room;
	if (k < 2)
		return 0;
	ps = mmu_page_r(c, src);
	if (!ps)
		return 0;
	pd = mmu_page_w(c, dst);
	if (!pd)
		return 0;
	ps += src & EMU_PAGE_MASK;
	pd += dst & EMU_PAGE_MASK;
	uint64_t bytes = k * sz;

	if (pd > ps && pd < ps + bytes) {
		/* Overlap with the destination ahead: element order is visible (pattern fill). */
		for (uint64_t e = 0; e < k; e++)
			store_n(pd + e * sz, sz, load_n(ps + e * sz, sz));
	} else {
		memmove(pd, ps, bytes);
	}
	return k;
}

static uint64_t stos_fast(struct emu_cpu *c, const struct emu_insn *i, unsigned sz, uint64_t n)
{
	uint64_t dst = seg_la(c, SEG_ES, areg(c, i, R_RDI));
	uint64_t k = n, room = page_room(dst, sz), v = c->gpr[0];
	uint8_t *pd;

	if (room < k)
		k = room;
	if (k < 2)
		return 0;
	pd = mmu_page_w(c, dst);
	if (!pd)
		return 0;
	pd += dst & EMU_PAGE_MASK;
	/* Zeroing and byte patterns (the common memset values) go to memset() whatever the size. */
	if (sz == 1 ||
	    (v & size_mask(sz)) == (v & 0xff) * (0x0101010101010101ull & size_mask(sz))) {
		memset(pd, (int)(v & 0xff), k * sz);
	} else {
		for (uint64_t e = 0; e < k; e++)
			store_n(pd + e * sz, sz, v);
	}
	return k;
}

static void adv(struct emu_cpu *c, const struct emu_insn *i, unsigned reg, int64_t delta)
{
	areg_set(c, i, reg, areg(c, i, reg) + (uint64_t)delta);
}

static void h_movs(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->osize;
	int64_t step = str_step(c, sz);
	uint64_t n, budget = REP_BUDGET;

	if (!is_rep(i)) {
		uint64_t v = mem_rd(c, seg_la(c, i->seg, areg(c, i, R_RSI)), sz);

		mem_wr(c, seg_la(c, SEG_ES, areg(c, i, R_RDI)), sz, v);
		adv(c, i, R_RSI, step);
		adv(c, i, R_RDI, step);
		return;
	}
	n = areg(c, i, R_RCX);
	while (n) {
		uint64_t k = step > 0 ? movs_fast(c, i, sz, n < budget ? n : budget) : 0;

		if (k) {
			adv(c, i, R_RSI, (int64_t)k * step);
			adv(c, i, R_RDI, (int64_t)k * step);
		} else {
			uint64_t v = mem_rd(c, seg_la(c, i->seg, areg(c, i, R_RSI)), sz);

			mem_wr(c, seg_la(c, SEG_ES, areg(c, i, R_RDI)), sz, v);
			adv(c, i, R_RSI, step);
			adv(c, i, R_RDI, step);
			k = 1;
		}
		n -= k;
		areg_set(c, i, R_RCX, n);
		budget = budget > k ? budget - k : 0;
		if (n && !budget) {
			rep_yield(c);
			return;
		}
	}
}

static void h_stos(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->osize;
	int64_t step = str_step(c, sz);
	uint64_t n, budget = REP_BUDGET;

	if (!is_rep(i)) {
		mem_wr(c, seg_la(c, SEG_ES, areg(c, i, R_RDI)), sz, c->gpr[0]);
		adv(c, i, R_RDI, step);
		return;
	}
	n = areg(c, i, R_RCX);
	while (n) {
		uint64_t k = step > 0 ? stos_fast(c, i, sz, n < budget ? n : budget) : 0;

		if (k) {
			adv(c, i, R_RDI, (int64_t)k * step);
		} else {
			mem_wr(c, seg_la(c, SEG_ES, areg(c, i, R_RDI)), sz, c->gpr[0]);
			adv(c, i, R_RDI, step);
			k = 1;
		}
		n -= k;
		areg_set(c, i, R_RCX, n);
		budget = budget > k ? budget - k : 0;
		if (n && !budget) {
			rep_yield(c);
			return;
		}
	}
}

static void h_lods(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned sz = i->osize;
	int64_t step = str_step(c, sz);
	uint64_t n = is_rep(i) ? areg(c, i, R_RCX) : 1, budget = REP_BUDGET;

	while (n) {
		reg_wr(c, 0, sz, mem_rd(c, seg_la(c, i->seg, areg(c, i, R_RSI)), sz));
		adv(c, i, R_RSI, step);
		n--;
		if (is_rep(i)) {
			areg_set(c, i, R_RCX, n);
			if (n && !--budget) {
				rep_yield(c);
				return;
			}
		}
	}
}

/* SCAS and CMPS: REPE stops when ZF becomes 0, REPNE when it becomes 1. */
static void scan_cmp(struct emu_cpu *c, const struct emu_insn *i, bool cmps)
{
	unsigned sz = i->osize;
	int64_t step = str_step(c, sz);
	bool rep = is_rep(i);
	uint64_t n = rep ? areg(c, i, R_RCX) : 1, budget = REP_BUDGET;

	while (n) {
		uint64_t a, b;

		if (cmps) {
			a = mem_rd(c, seg_la(c, i->seg, areg(c, i, R_RSI)), sz);
			b = mem_rd(c, seg_la(c, SEG_ES, areg(c, i, R_RDI)), sz);
			adv(c, i, R_RSI, step);
		} else {
			a = reg_rd(c, 0, sz);
			b = mem_rd(c, seg_la(c, SEG_ES, areg(c, i, R_RDI)), sz);
		}
		adv(c, i, R_RDI, step);
		set_lf(c, LF_SUB, sz, (a - b) & size_mask(sz), a, b);
		n--;
		if (!rep)
			return;
		areg_set(c, i, R_RCX, n);
		if ((i->pfx & EMU_PFX_REP) ? a != b : a == b)
			return;
		if (n && !--budget) {
			rep_yield(c);
			return;
		}
	}
}

static void h_scas(struct emu_cpu *c, const struct emu_insn *i)
{
	scan_cmp(c, i, false);
}

static void h_cmps(struct emu_cpu *c, const struct emu_insn *i)
{
	scan_cmp(c, i, true);
}

emu_handler emu_str_handler(unsigned m)
{
	switch (m) {
	case ZYDIS_MNEMONIC_MOVSB:
	case ZYDIS_MNEMONIC_MOVSW:
	case ZYDIS_MNEMONIC_MOVSD:
	case ZYDIS_MNEMONIC_MOVSQ:
		return h_movs;
	case ZYDIS_MNEMONIC_STOSB:
	case ZYDIS_MNEMONIC_STOSW:
	case ZYDIS_MNEMONIC_STOSD:
	case ZYDIS_MNEMONIC_STOSQ:
		return h_stos;
	case ZYDIS_MNEMONIC_LODSB:
	case ZYDIS_MNEMONIC_LODSW:
	case ZYDIS_MNEMONIC_LODSD:
	case ZYDIS_MNEMONIC_LODSQ:
		return h_lods;
	case ZYDIS_MNEMONIC_SCASB:
	case ZYDIS_MNEMONIC_SCASW:
	case ZYDIS_MNEMONIC_SCASD:
	case ZYDIS_MNEMONIC_SCASQ:
		return h_scas;
	case ZYDIS_MNEMONIC_CMPSB:
	case ZYDIS_MNEMONIC_CMPSW:
	case ZYDIS_MNEMONIC_CMPSD:
	case ZYDIS_MNEMONIC_CMPSQ:
		return h_cmps;
	}
	return NULL;
}
