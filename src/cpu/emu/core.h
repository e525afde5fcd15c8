/*
 * Private interface between the emulator core's files (decode.c, exec.c,
 * alu.c, string.c, mmu.c). Other parts use emu.h only.
 */
#ifndef TERN_CPU_EMU_CORE_H
#define TERN_CPU_EMU_CORE_H

#include <string.h>

#include "cpu/emu/emu.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define EMU_PAGE_MASK 0xfffull

/* RFLAGS bits. */
#define FL_CF 0x1ull
#define FL_PF 0x4ull
#define FL_AF 0x10ull
#define FL_ZF 0x40ull
#define FL_SF 0x80ull
#define FL_TF 0x100ull
#define FL_IF 0x200ull
#define FL_DF 0x400ull
#define FL_OF 0x800ull
#define FL_IOPL 0x3000ull
#define FL_NT 0x4000ull
#define FL_RF 0x10000ull
#define FL_VM 0x20000ull
#define FL_AC 0x40000ull
#define FL_ID 0x200000ull
#define FL_ARITH (FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF)

/* Control register bits the core looks at. */
#define CR0_PE 0x1ull
#define CR0_WP 0x10000ull
#define CR0_PG 0x80000000ull
#define CR4_PSE 0x10ull
#define CR4_PAE 0x20ull
#define CR4_PGE 0x80ull
#define EFER_LME 0x100ull
#define EFER_LMA 0x400ull
#define EFER_NXE 0x800ull

/* Lazy flag producers (struct emu_lazyflags.op). */
enum lf_op {
	LF_RAW, /* res holds the six arithmetic flags themselves */
	LF_ADD, /* res = src1 + src2 (+ carry, recovered from the three values) */
	LF_ADC,
	LF_SUB, /* res = src1 - src2 (- borrow); also CMP and NEG (src1 = 0) */
	LF_SBB,
	LF_LOGIC, /* AND OR XOR TEST: CF = OF = AF = 0 */
	LF_INC,	  /* res = src1 + 1; src2 = CF before */
	LF_DEC,
};

/* Decode modes; the block cache keys on them. */
enum emu_dmode { DM_64, DM_COMPAT32, DM_COMPAT16, DM_PROT32, DM_PROT16, DM_REAL, DM_COUNT };

static inline uint64_t size_mask(unsigned size)
{
	return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1;
}

static inline uint64_t sign_bit(unsigned size)
{
	return 1ull << (size * 8 - 1);
}

static inline int64_t sext(uint64_t v, unsigned size)
{
	unsigned sh = 64 - size * 8;

	return (int64_t)(v << sh) >> sh;
}

static inline void set_lf(struct emu_cpu *c, enum lf_op op, unsigned size, uint64_t res,
			  uint64_t s1, uint64_t s2)
{
	c->lf.op = op;
	c->lf.size = size;
	c->lf.res = res;
	c->lf.src1 = s1;
	c->lf.src2 = s2;
}

/* The six arithmetic flags, evaluated from c->lf. */
uint64_t emu_arith_flags(const struct emu_cpu *c);
/* Condition code cc (0..15, Jcc encoding order) from the lazy flags. */
bool emu_cond(const struct emu_cpu *c, unsigned cc);
/* emu_cond() with the common cases inline: after CMP/SUB, after logic, ZF and SF. */
static inline bool cond(const struct emu_cpu *c, unsigned cc)
{
	const struct emu_lazyflags *l = &c->lf;
	uint64_t m = size_mask(l->size);

	if (l->op == LF_SUB) {
		uint64_t a = l->src1 & m, b = l->src2 & m;

		switch (cc) {
		case 2:
			return a < b;
		case 3:
			return a >= b;
		case 4:
			return a == b;
		case 5:
			return a != b;
		case 6:
			return a <= b;
		case 7:
			return a > b;
		case 12:
			return sext(a, l->size) < sext(b, l->size);
		case 13:
			return sext(a, l->size) >= sext(b, l->size);
		case 14:
			return sext(a, l->size) <= sext(b, l->size);
		case 15:
			return sext(a, l->size) > sext(b, l->size);
		}
	}
	if (l->op != LF_RAW && (cc == 4 || cc == 5))
		return ((l->res & m) == 0) ^ (cc & 1);
	return emu_cond(c, cc);
}

/* The carry flag alone. */
bool emu_cf(const struct emu_cpu *c);
/* emu_cf() with the common producers inline. */
static inline bool cf_fast(const struct emu_cpu *c)
{
	const struct emu_lazyflags *l = &c->lf;

	switch (l->op) {
	case LF_SUB:
		return (l->src1 & size_mask(l->size)) < (l->src2 & size_mask(l->size));
	case LF_LOGIC:
		return false;
	case LF_INC:
	case LF_DEC:
		return l->src2 & 1;
	case LF_RAW:
		return l->res & FL_CF;
	default:
		return emu_cf(c);
	}
}

/* Replace the arithmetic flags selected by mask with those in v. */
void emu_set_arith(struct emu_cpu *c, uint64_t mask, uint64_t v);

/* ---- Memory (mmu.c); inline TLB-hit paths, slow paths out of line ---- */
uint64_t mmu_read_slow(struct emu_cpu *c, uint64_t la, unsigned size, bool sys);
void mmu_write_slow(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v, bool sys);
/* Host pointer to the page holding la for a read / write / fetch, or NULL (MMIO). */
uint8_t *mmu_page_r(struct emu_cpu *c, uint64_t la);
uint8_t *mmu_page_w(struct emu_cpu *c, uint64_t la);
/* Translate for instruction fetch; sets *gpa; NULL if the page is not RAM. */
uint8_t *mmu_page_x(struct emu_cpu *c, uint64_t la, uint64_t *gpa);
/* Make vCPUs drop write TLB entries if emu_vm.tlb_flush_gen moved. */
void mmu_sync(struct emu_cpu *c);
/* Enter or leave the state in which the vCPU writes guest memory (emu_cpu.active). */
void mmu_set_active(struct emu_cpu *c, bool on);

static inline uint64_t tlb_tag(const struct emu_cpu *c, uint64_t la)
{
	return (la & ~EMU_PAGE_MASK) | 1 | ((uint64_t)(c->cpl == 3) << 1);
}

static inline uint64_t load_n(const uint8_t *p, unsigned size)
{
	switch (size) {
	case 1:
		return *p;
	case 2: {
		uint16_t v;
		memcpy(&v, p, 2);
		return v;
	}
	case 4: {
		uint32_t v;
		memcpy(&v, p, 4);
		return v;
	}
	default: {
		uint64_t v;
		memcpy(&v, p, 8);
		return v;
	}
	}
}

static inline void store_n(uint8_t *p, unsigned size, uint64_t v)
{
	switch (size) {
	case 1:
		*p = (uint8_t)v;
		break;
	case 2: {
		uint16_t x = (uint16_t)v;
		memcpy(p, &x, 2);
		break;
	}
	case 4: {
		uint32_t x = (uint32_t)v;
		memcpy(p, &x, 4);
		break;
	}
	default:
		memcpy(p, &v, 8);
		break;
	}
}

static inline uint64_t mem_rd(struct emu_cpu *c, uint64_t la, unsigned size)
{
	const struct emu_tlb_entry *e = &c->tlb_r[(la >> 12) % EMU_TLB_SIZE];

	if (likely(e->tag == tlb_tag(c, la) && (la & EMU_PAGE_MASK) + size <= 4096))
		return load_n(e->host + (la & EMU_PAGE_MASK), size);
	return mmu_read_slow(c, la, size, false);
}

static inline void mem_wr(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v)
{
	const struct emu_tlb_entry *e = &c->tlb_w[(la >> 12) % EMU_TLB_SIZE];

	if (likely(e->tag == tlb_tag(c, la) && (la & EMU_PAGE_MASK) + size <= 4096)) {
		store_n(e->host + (la & EMU_PAGE_MASK), size, v);
		return;
	}
	mmu_write_slow(c, la, size, v, false);
}

/* ---- Registers and operands (exec.c) ---- */
static inline uint64_t reg_rd(const struct emu_cpu *c, unsigned reg, unsigned size)
{
	if (likely(reg < 16))
		return c->gpr[reg] & size_mask(size);
	return emu_reg_read((struct emu_cpu *)c, reg, size);
}

static inline void reg_wr(struct emu_cpu *c, unsigned reg, unsigned size, uint64_t v)
{
	if (likely(reg < 16)) {
		if (size == 8)
			c->gpr[reg] = v;
		else if (size == 4)
			c->gpr[reg] = (uint32_t)v;
		else if (size == 2)
			c->gpr[reg] = (c->gpr[reg] & ~0xffffull) | (uint16_t)v;
		else
			c->gpr[reg] = (c->gpr[reg] & ~0xffull) | (uint8_t)v;
		return;
	}
	emu_reg_write(c, reg, size, v);
}

/* Linear address of seg:off for implicit operands (string ops, stack). */
static inline uint64_t seg_la(const struct emu_cpu *c, unsigned seg, uint64_t off)
{
	if (likely(c->mode64))
		return seg >= SEG_FS && seg != SEG_NONE ? off + c->seg[seg].base : off;
	return (uint32_t)(off + c->seg[seg].base);
}

/* Effective address (offset within the segment), masked to the address size. */
static inline uint64_t ea_off(const struct emu_cpu *c, const struct emu_operand *o)
{
	uint64_t a = (uint64_t)o->disp;

	if (o->base != EMU_R_NONE)
		a += o->base == EMU_R_RIP ? c->next_rip : c->gpr[o->base];
	if (o->index != EMU_R_NONE)
		a += c->gpr[o->index] * o->scale;
	return a & size_mask(o->asize);
}

static inline uint64_t ea_la(const struct emu_cpu *c, const struct emu_operand *o)
{
	return seg_la(c, o->seg, ea_off(c, o));
}

/*
 * Memory operand forms picked at decode time so the hottest handlers skip
 * the general address computation: in 64-bit code (address size 8) with
 * ES/CS/SS/DS, whose bases are ignored, [base + disp] and [rip + disp].
 */
enum ea_form { EA_GEN, EA_BD, EA_RIP };

static inline enum ea_form ea_form_of(const struct emu_operand *o)
{
	if (o->kind != EMU_OP_MEM || o->asize != 8 || o->seg >= SEG_FS || o->index != EMU_R_NONE)
		return EA_GEN;
	if (o->base < 16)
		return EA_BD;
	return o->base == EMU_R_RIP ? EA_RIP : EA_GEN;
}

static inline uint64_t ea_form_la(const struct emu_cpu *c, const struct emu_operand *o,
				  enum ea_form f)
{
	if (f == EA_BD)
		return c->gpr[o->base] + (uint64_t)o->disp;
	if (f == EA_RIP)
		return c->next_rip + (uint64_t)o->disp;
	return ea_la(c, o);
}

/* Inline forms of emu_op_read()/emu_op_write() for the core's handlers. */
static inline uint64_t op_rd(struct emu_cpu *c, const struct emu_insn *i, int n)
{
	const struct emu_operand *o = &i->op[n];

	switch (o->kind) {
	case EMU_OP_REG:
		return reg_rd(c, o->reg, o->size);
	case EMU_OP_MEM:
		return mem_rd(c, ea_la(c, o), o->size);
	case EMU_OP_IMM:
		return (uint64_t)o->disp & size_mask(o->size);
	case EMU_OP_REL:
		return c->next_rip + (uint64_t)o->disp;
	default:
		return 0;
	}
}

static inline void op_wr(struct emu_cpu *c, const struct emu_insn *i, int n, uint64_t v)
{
	const struct emu_operand *o = &i->op[n];

	if (o->kind == EMU_OP_REG)
		reg_wr(c, o->reg, o->size, v);
	else if (o->kind == EMU_OP_MEM)
		mem_wr(c, ea_la(c, o), o->size, v);
}

/* Address-size-masked register (RSI/RDI/RCX for string ops, LOOP). */
static inline uint64_t areg(const struct emu_cpu *c, const struct emu_insn *i, unsigned reg)
{
	return c->gpr[reg] & size_mask(i->asize);
}

static inline void areg_set(struct emu_cpu *c, const struct emu_insn *i, unsigned reg, uint64_t v)
{
	if (i->asize == 8)
		c->gpr[reg] = v;
	else if (i->asize == 4)
		c->gpr[reg] = (uint32_t)v;
	else
		c->gpr[reg] = (c->gpr[reg] & ~0xffffull) | (uint16_t)v;
}

/* Stack (exec.c): width from the mode and SS.B. */
unsigned emu_stack_size(const struct emu_cpu *c);
void emu_push(struct emu_cpu *c, unsigned size, uint64_t v);
uint64_t emu_pop(struct emu_cpu *c, unsigned size);

/* Handler tables of the integer ISA, asked by emu_int_handler(). */
emu_handler emu_alu_handler(unsigned mnemonic); /* alu.c */
emu_handler emu_str_handler(unsigned mnemonic); /* string.c */
emu_handler emu_ctl_handler(unsigned mnemonic); /* exec.c: branches, stack, flags, moves */
/* Operand-kind-specific variants of an integer handler for one decoded insn (exec.c, alu.c). */
emu_handler emu_int_specialize(const struct emu_insn *i, emu_handler h);
emu_handler emu_alu_specialize(const struct emu_insn *i, emu_handler h);

/* ---- Decoded blocks (decode.c) ---- */
struct emu_block {
	uint64_t gpa;	      /* guest-physical address of the first instruction */
	uint64_t page;	      /* gm page index of gpa */
	uint32_t gen;	      /* emu_vm.code_gen[page] when decoded */
	const uint32_t *genp; /* &emu_vm.code_gen[page]: one load to revalidate */
	uint8_t dmode;
	uint16_t n;		/* instructions */
	uint16_t cap;		/* instructions the block's memory holds */
	struct emu_block *next; /* hash chain, or pending/free list */
	/* Successors seen after this block (taken / fall-through), valid while epoch_live(). */
	struct emu_block *succ[2];
	uint64_t succ_rip[2];
	uint64_t succ_epoch[2];
	uint64_t succ_wgen[2]; /* emu_vm.code_wgen when the link was checked */
	struct emu_insn insn[];
};

int emu_bc_init(struct emu_cpu *c);
void emu_bc_destroy(struct emu_cpu *c);
/* The decoded block at c->rip (decodes on a miss); may raise #PF on the fetch. */
const struct emu_block *emu_block_get(struct emu_cpu *c);
/*
 * As emu_block_get(), following prev's remembered successors first. prev is
 * the block that just ran and ended normally, with no mode, CPL or event
 * change since (NULL otherwise).
 */
struct emu_block *emu_block_next(struct emu_cpu *c, struct emu_block *prev);

/* A shortcut carrying this epoch still holds (emu_cpu.jc_epoch). */
static inline bool epoch_live(const struct emu_cpu *c, uint64_t epoch)
{
	return epoch == c->jc_epoch || epoch == c->jc_gepoch;
}

/* A block's code is unchanged since it was decoded. */
static inline bool block_valid(const struct emu_block *b)
{
	return b->gen == __atomic_load_n(b->genp, __ATOMIC_ACQUIRE);
}

/* No code page was written since wgen was read from emu_vm.code_wgen. */
static inline bool code_unchanged(const struct emu_cpu *c, uint64_t wgen)
{
	return wgen == __atomic_load_n(&c->vm->code_wgen, __ATOMIC_ACQUIRE);
}

/* emu_block_next() with the remembered-successor hit inline (the run loop's common case). */
static inline struct emu_block *block_next(struct emu_cpu *c, struct emu_block *prev)
{
	if (likely(prev)) {
		unsigned k = prev->succ_rip[0] == c->rip ? 0 : 1;
		struct emu_block *b = prev->succ[k];

		if (likely(b && prev->succ_rip[k] == c->rip && epoch_live(c, prev->succ_epoch[k]) &&
			   code_unchanged(c, prev->succ_wgen[k])))
			return b;
	}
	return emu_block_next(c, prev);
}
enum emu_dmode emu_cur_dmode(const struct emu_cpu *c);
/* Forget linear-address shortcuts to blocks (with every TLB flush): all, or non-global ones. */
void emu_bc_jc_flush(struct emu_cpu *c, bool include_global);
/* A write hit a page holding decoded code: invalidate its blocks. */
void emu_code_written(struct emu_vm *ev, uint64_t page);
/* Handler for instructions nobody implements: #UD. */
void emu_h_ud(struct emu_cpu *c, const struct emu_insn *i);

#endif
