/*
 * Instruction decoding (Zydis) into struct emu_insn, and the decoded-block
 * cache.
 *
 * A block is a run of instructions starting at one guest-physical address in
 * one decode mode; it ends at an unconditional branch, call or return (a
 * taken conditional branch leaves it early), at an instruction the system part
 * handles (it may change modes), at #UD, or at the page end. Blocks live in a
 * per-vCPU arena, found through a hash on (gpa, mode), and stay valid while
 * their page's emu_vm.code_gen is unchanged. An instruction that crosses a
 * page boundary is decoded on every execution, never cached: the next page's
 * mapping may differ between address spaces.
 */
#include <Zydis/Zydis.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "cpu/emu/core.h"
#include "util/log.h"

#define BC_HASH_BITS 16
#define BC_HASH_SIZE (1u << BC_HASH_BITS)
#define BC_ARENA_SIZE (32ull << 20)
#define BLOCK_MAX_INSNS 64
#define JC_SIZE 8192 /* linear-address jump cache entries */

_Static_assert(ZYDIS_MNEMONIC_MAX_VALUE < EMU_MN_CRDR, "mnemonic flags overlap Zydis mnemonics");
_Static_assert(ZYDIS_MNEMONIC_MAX_VALUE < 64 * EMU_UD_LOG_WORDS, "ud_logged bitmap too small");

/*
 * Jump cache: linear address -> block, skipping the fetch translation and
 * the hash walk. Valid while the fetch translation is (its epoch, see
 * emu_cpu.jc_epoch, is live) and while the block's code generation matches.
 */
struct jc_entry {
	uint64_t la;
	const struct emu_block *b;
	uint64_t epoch;
	uint64_t wgen; /* emu_vm.code_wgen when b was last found valid */
	uint8_t dmode, user;
};

struct emu_block_cache {
	struct jc_entry jc[JC_SIZE];
	struct emu_block *hash[BC_HASH_SIZE];
	uint8_t *arena;
	size_t used;
	ZydisDecoder dec[DM_COUNT];
	/* One uncached block for an instruction that crosses a page boundary. */
	union {
		struct emu_block b;
		uint8_t bytes[sizeof(struct emu_block) + sizeof(struct emu_insn)];
	} scratch;
};

int emu_bc_init(struct emu_cpu *c)
{
	static const struct {
		ZydisMachineMode mode;
		ZydisStackWidth sw;
	} modes[DM_COUNT] = {
	    [DM_64] = {ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64},
	    [DM_COMPAT32] = {ZYDIS_MACHINE_MODE_LONG_COMPAT_32, ZYDIS_STACK_WIDTH_32},
	    [DM_COMPAT16] = {ZYDIS_MACHINE_MODE_LONG_COMPAT_16, ZYDIS_STACK_WIDTH_16},
	    [DM_PROT32] = {ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32},
	    [DM_PROT16] = {ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_STACK_WIDTH_16},
	    [DM_REAL] = {ZYDIS_MACHINE_MODE_REAL_16, ZYDIS_STACK_WIDTH_16},
	};
	struct emu_block_cache *bc = calloc(1, sizeof(*bc));

	if (!bc)
		return -ENOMEM;
	bc->arena = mmap(NULL, BC_ARENA_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (bc->arena == MAP_FAILED) {
		free(bc);
		return -ENOMEM;
	}
	for (int m = 0; m < DM_COUNT; m++) {
		if (ZYAN_FAILED(ZydisDecoderInit(&bc->dec[m], modes[m].mode, modes[m].sw))) {
			munmap(bc->arena, BC_ARENA_SIZE);
			free(bc);
			return -EINVAL;
		}
	}
	c->bc = bc;
	c->jc_epoch = 0;
	c->jc_gepoch = EMU_JC_GLOBAL;
	return 0;
}

void emu_bc_destroy(struct emu_cpu *c)
{
	if (!c->bc)
		return;
	munmap(c->bc->arena, BC_ARENA_SIZE);
	free(c->bc);
	c->bc = NULL;
}

enum emu_dmode emu_cur_dmode(const struct emu_cpu *c)
{
	const struct cpu_seg *cs = &c->seg[SEG_CS];

	if (!(c->cr0 & CR0_PE))
		return DM_REAL;
	if (c->efer & EFER_LMA) {
		if (cs->l)
			return DM_64;
		return cs->db ? DM_COMPAT32 : DM_COMPAT16;
	}
	return cs->db ? DM_PROT32 : DM_PROT16;
}

void emu_code_written(struct emu_vm *ev, uint64_t page)
{
	__atomic_fetch_and(&ev->code_pages[page / 64], ~(1ull << (page % 64)), __ATOMIC_RELEASE);
	__atomic_fetch_add(&ev->code_gen[page], 1, __ATOMIC_RELEASE);
	__atomic_fetch_add(&ev->code_wgen, 1, __ATOMIC_RELEASE);
}

/* ---- Zydis -> emu_insn ---- */

static uint8_t map_reg(ZydisRegister r)
{
	int id = ZydisRegisterGetId(r);

	switch (ZydisRegisterGetClass(r)) {
	case ZYDIS_REGCLASS_GPR8:
		if (id < 4)
			return (uint8_t)id;
		if (id < 8)
			return (uint8_t)(EMU_R_AH + id - 4);
		return (uint8_t)(id - 4);
	case ZYDIS_REGCLASS_GPR16:
	case ZYDIS_REGCLASS_GPR32:
	case ZYDIS_REGCLASS_GPR64:
		return (uint8_t)id;
	case ZYDIS_REGCLASS_IP:
		return EMU_R_RIP;
	case ZYDIS_REGCLASS_SEGMENT:
		return (uint8_t)(EMU_R_ES + id);
	case ZYDIS_REGCLASS_CONTROL:
		return (uint8_t)(EMU_R_CR0 + id);
	case ZYDIS_REGCLASS_DEBUG:
		return (uint8_t)(EMU_R_DR0 + id);
	case ZYDIS_REGCLASS_X87:
		return (uint8_t)(EMU_R_ST0 + id);
	case ZYDIS_REGCLASS_MMX:
		return (uint8_t)(EMU_R_MM0 + id);
	case ZYDIS_REGCLASS_XMM:
		return (uint8_t)(EMU_R_XMM0 + id);
	default:
		return EMU_R_NONE;
	}
}

static uint8_t map_seg(ZydisRegister r)
{
	if (r >= ZYDIS_REGISTER_ES && r <= ZYDIS_REGISTER_GS)
		return (uint8_t)(r - ZYDIS_REGISTER_ES);
	return SEG_DS;
}

static uint8_t clamp_size(unsigned bits)
{
	unsigned b = bits / 8;

	return (uint8_t)(b > 255 ? 255 : b);
}

static void conv_operand(const ZydisDecodedInstruction *zi, const ZydisDecodedOperand *zo,
			 struct emu_operand *o)
{
	memset(o, 0, sizeof(*o));
	o->base = o->index = EMU_R_NONE;
	o->size = clamp_size(zo->size);
	switch (zo->type) {
	case ZYDIS_OPERAND_TYPE_REGISTER:
		o->kind = EMU_OP_REG;
		o->reg = map_reg(zo->reg.value);
		break;
	case ZYDIS_OPERAND_TYPE_MEMORY:
		o->kind = EMU_OP_MEM;
		if (zo->mem.base != ZYDIS_REGISTER_NONE)
			o->base = map_reg(zo->mem.base);
		if (zo->mem.index != ZYDIS_REGISTER_NONE)
			o->index = map_reg(zo->mem.index);
		o->scale = zo->mem.scale ? zo->mem.scale : 1;
		o->seg = map_seg(zo->mem.segment);
		o->disp = zo->mem.disp.value;
		o->asize = zi->address_width / 8;
		break;
	case ZYDIS_OPERAND_TYPE_IMMEDIATE:
		if (zo->imm.is_relative) {
			o->kind = EMU_OP_REL;
			o->disp = zo->imm.value.s;
			break;
		}
		o->kind = EMU_OP_IMM;
		o->disp = (int64_t)zo->imm.value.u;
		/* Sign-extended immediates take the operation's size, so masking keeps the
		 * extension. */
		if (zo->imm.is_signed && zi->operand_width / 8 > o->size)
			o->size = zi->operand_width / 8;
		break;
	case ZYDIS_OPERAND_TYPE_POINTER:
		o->kind = EMU_OP_PTR;
		o->sel = zo->ptr.segment;
		o->disp = zo->ptr.offset;
		break;
	default:
		break;
	}
}

static uint8_t insn_seg(const ZydisDecodedInstruction *zi)
{
	static const struct {
		uint64_t attr;
		uint8_t seg;
	} ov[] = {
	    {ZYDIS_ATTRIB_HAS_SEGMENT_ES, SEG_ES}, {ZYDIS_ATTRIB_HAS_SEGMENT_CS, SEG_CS},
	    {ZYDIS_ATTRIB_HAS_SEGMENT_SS, SEG_SS}, {ZYDIS_ATTRIB_HAS_SEGMENT_DS, SEG_DS},
	    {ZYDIS_ATTRIB_HAS_SEGMENT_FS, SEG_FS}, {ZYDIS_ATTRIB_HAS_SEGMENT_GS, SEG_GS},
	};

	for (unsigned k = 0; k < sizeof(ov) / sizeof(ov[0]); k++)
		if (zi->attributes & ov[k].attr)
			return ov[k].seg;
	return SEG_DS;
}

/*
 * An instruction nobody implements: #UD, logged once per mnemonic when it
 * executes (blocks are decoded past branches, so decoding alone proves
 * nothing: e.g. XRSTOR behind a CPUID-feature test that is never taken).
 */
static void h_unimplemented(struct emu_cpu *c, const struct emu_insn *i)
{
	unsigned m = i->mnemonic & ~(EMU_MN_FAR | EMU_MN_CRDR);
	uint64_t bit = 1ull << (m % 64);

	if (m < 64 * EMU_UD_LOG_WORDS &&
	    !(__atomic_fetch_or(&c->vm->ud_logged[m / 64], bit, __ATOMIC_RELAXED) & bit))
		pr_warn("emu: no handler for %s%s, raising #UD\n",
			ZydisMnemonicGetString((ZydisMnemonic)m),
			(i->mnemonic & EMU_MN_FAR) ? " (far)" : "");
	emu_raise(c, EMU_UD, EMU_NO_ERR);
}

/* Pick the handler; *ends is set when the instruction must end its block. */
static emu_handler resolve(struct emu_cpu *c, const ZydisDecodedInstruction *zi,
			   const ZydisDecodedOperand *zo, struct emu_insn *i, bool *ends)
{
	unsigned m = zi->mnemonic;
	emu_handler h = NULL;
	bool crdr = false;

	for (unsigned k = 0; k < zi->operand_count_visible; k++) {
		if (zo[k].type == ZYDIS_OPERAND_TYPE_REGISTER &&
		    (ZydisRegisterGetClass(zo[k].reg.value) == ZYDIS_REGCLASS_CONTROL ||
		     ZydisRegisterGetClass(zo[k].reg.value) == ZYDIS_REGCLASS_DEBUG))
			crdr = true;
	}
	if (zi->meta.branch_type == ZYDIS_BRANCH_TYPE_FAR)
		m |= EMU_MN_FAR;
	else if (crdr)
		m |= EMU_MN_CRDR;
	i->mnemonic = (uint16_t)m;

	/* MOVSD/CMPSD with operands are the SSE instructions, not the string ones. */
	bool sse_alias = (m == ZYDIS_MNEMONIC_MOVSD || m == ZYDIS_MNEMONIC_CMPSD) &&
			 zi->operand_count_visible > 0;

	if (m == zi->mnemonic && !sse_alias) {
		h = emu_int_handler(m);
		if (h)
			h = emu_int_specialize(i, h);
	}
	if (!h) {
		h = emu_sys_handler(m);
		if (h)
			*ends = true;
	}
	if (!h && m == zi->mnemonic)
		h = emu_fpu_handler(m);
	if (!h) {
		*ends = true;
		return h_unimplemented;
	}
	/* Conditional branches do not end a block: a taken one leaves it early (exec.c). */
	switch (zi->meta.category) {
	case ZYDIS_CATEGORY_UNCOND_BR:
	case ZYDIS_CATEGORY_CALL:
	case ZYDIS_CATEGORY_RET:
	case ZYDIS_CATEGORY_SYSCALL:
	case ZYDIS_CATEGORY_SYSRET:
	case ZYDIS_CATEGORY_INTERRUPT:
	case ZYDIS_CATEGORY_SYSTEM:
		*ends = true;
		break;
	default:
		break;
	}
	if (h == emu_h_ud)
		*ends = true;
	return h;
}

/*
 * Decode one instruction from bytes[0..avail). Returns 0, -EAGAIN if more
 * bytes are needed (it crosses the page), or -EINVAL for invalid encodings
 * (the insn is then a #UD).
 */
static int decode_one(struct emu_cpu *c, enum emu_dmode dm, const uint8_t *bytes, size_t avail,
		      struct emu_insn *i, bool *ends)
{
	ZydisDecodedInstruction zi;
	ZydisDecodedOperand zo[ZYDIS_MAX_OPERAND_COUNT];
	ZyanStatus st = ZydisDecoderDecodeFull(&c->bc->dec[dm], bytes, avail, &zi, zo);

	memset(i, 0, sizeof(*i));
	if (st == ZYDIS_STATUS_NO_MORE_DATA && avail < ZYDIS_MAX_INSTRUCTION_LENGTH)
		return -EAGAIN;
	if (ZYAN_FAILED(st)) {
		i->fn = emu_h_ud;
		i->len = 1;
		*ends = true;
		return -EINVAL;
	}
	i->len = zi.length;
	i->osize = zi.operand_width / 8;
	i->asize = zi.address_width / 8;
	i->seg = insn_seg(&zi);
	if (zi.attributes & ZYDIS_ATTRIB_HAS_LOCK)
		i->pfx |= EMU_PFX_LOCK;
	if (zi.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE))
		i->pfx |= EMU_PFX_REP;
	if (zi.attributes & ZYDIS_ATTRIB_HAS_REPNE)
		i->pfx |= EMU_PFX_REPNE;
	if (zi.meta.category == ZYDIS_CATEGORY_STRINGOP &&
	    !(i->pfx & (EMU_PFX_REP | EMU_PFX_REPNE))) {
		/* F2 on MOVS/STOS/LODS repeats like F3; Zydis reports it as ignored. */
		for (unsigned k = 0; k < zi.raw.prefix_count; k++)
			if (zi.raw.prefixes[k].value == 0xf2 || zi.raw.prefixes[k].value == 0xf3)
				i->pfx |= EMU_PFX_REP;
	}
	if (zi.attributes & ZYDIS_ATTRIB_HAS_OPERANDSIZE)
		i->pfx |= EMU_PFX_OSIZE;
	i->nops = zi.operand_count_visible > 4 ? 4 : zi.operand_count_visible;
	for (unsigned k = 0; k < i->nops; k++)
		conv_operand(&zi, &zo[k], &i->op[k]);
	i->fn = resolve(c, &zi, zo, i, ends);
	for (unsigned k = 0; k < i->nops; k++) {
		const struct emu_operand *o = &i->op[k];

		/* Addresses only from GPRs and RIP: VSIB (vector index) forms are AVX, not offered.
		 */
		if (o->kind == EMU_OP_MEM &&
		    ((o->base != EMU_R_NONE && o->base >= 16 && o->base != EMU_R_RIP) ||
		     (o->index != EMU_R_NONE && o->index >= 16))) {
			i->fn = emu_h_ud;
			*ends = true;
		}
	}
	return 0;
}

/* Fetch and decode one instruction that straddles two pages, uncached. */
static const struct emu_block *decode_crossing(struct emu_cpu *c, enum emu_dmode dm, uint64_t la,
					       const uint8_t *page, uint64_t idx)
{
	uint8_t buf[ZYDIS_MAX_INSTRUCTION_LENGTH];
	unsigned off = (unsigned)(la & EMU_PAGE_MASK), first = 4096 - off;
	uint64_t next = (la | EMU_PAGE_MASK) + 1, gpa;
	uint8_t *np;
	struct emu_block *b = &c->bc->scratch.b;
	bool ends = true;

	if (!c->mode64)
		next = (uint32_t)next;
	memcpy(buf, page + off, first);
	np = mmu_page_x(c, next, &gpa);
	if (!np) {
		pr_warn_once("emu: instruction fetch from non-RAM %#llx\n",
			     (unsigned long long)gpa);
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
	memcpy(buf + first, np, sizeof(buf) - first);
	decode_one(c, dm, buf, sizeof(buf), &b->insn[0], &ends);
	b->n = 1;
	b->page = idx;
	b->dmode = (uint8_t)dm;
	return b;
}

static inline unsigned bc_hash(uint64_t gpa, enum emu_dmode dm)
{
	uint64_t h = (gpa ^ ((uint64_t)dm << 56)) * 0x9E3779B97F4A7C15ull;

	return (unsigned)(h >> (64 - BC_HASH_BITS));
}

void emu_bc_jc_flush(struct emu_cpu *c, bool include_global)
{
	c->jc_epoch++;
	if (include_global)
		c->jc_gepoch++;
}

static void bc_flush(struct emu_cpu *c)
{
	memset(c->bc->hash, 0, sizeof(c->bc->hash));
	emu_bc_jc_flush(c, true);
	c->bc->used = 0;
}

/* Mark page idx as holding code; the first time, make every vCPU drop write TLB entries. */
static void mark_code_page(struct emu_cpu *c, uint64_t idx)
{
	struct emu_vm *ev = c->vm;
	uint64_t bit = 1ull << (idx % 64);

	if (__atomic_load_n(&ev->code_pages[idx / 64], __ATOMIC_ACQUIRE) & bit)
		return;
	__atomic_fetch_or(&ev->code_pages[idx / 64], bit, __ATOMIC_ACQ_REL);
	__atomic_fetch_add(&ev->tlb_flush_gen, 1, __ATOMIC_ACQ_REL);
	mmu_sync(c);
}

static const struct emu_block *decode_block(struct emu_cpu *c, enum emu_dmode dm, uint64_t la,
					    const uint8_t *page, uint64_t gpa, uint64_t idx)
{
	struct emu_block_cache *bc = c->bc;
	size_t need = sizeof(struct emu_block) + BLOCK_MAX_INSNS * sizeof(struct emu_insn);
	unsigned off = (unsigned)(la & EMU_PAGE_MASK);
	struct emu_block *b;
	bool ends = false;

	if (bc->used + need > BC_ARENA_SIZE)
		bc_flush(c);
	mark_code_page(c, idx);
	b = (struct emu_block *)(bc->arena + bc->used);
	b->gpa = gpa;
	b->page = idx;
	b->genp = &c->vm->code_gen[idx];
	b->gen = __atomic_load_n(b->genp, __ATOMIC_ACQUIRE);
	b->dmode = (uint8_t)dm;
	b->n = 0;
	memset(b->succ, 0, sizeof(b->succ));
	while (!ends && off < 4096 && b->n < BLOCK_MAX_INSNS) {
		struct emu_insn *i = &b->insn[b->n];

		if (decode_one(c, dm, page + off, 4096 - off, i, &ends) == -EAGAIN)
			break;
		b->n++;
		off += i->len;
	}
	if (b->n == 0)
		return decode_crossing(c, dm, la, page, idx);
	bc->used += sizeof(struct emu_block) + b->n * sizeof(struct emu_insn);
	bc->used = (bc->used + 15) & ~(size_t)15;
	unsigned h = bc_hash(gpa, dm);

	b->next = bc->hash[h];
	bc->hash[h] = b;
	return b;
}

static inline struct jc_entry *jc_slot(struct emu_block_cache *bc, uint64_t la)
{
	return &bc->jc[(la ^ (la >> 10)) & (JC_SIZE - 1)];
}

static const struct emu_block *block_lookup(struct emu_cpu *c, enum emu_dmode dm, uint64_t la)
{
	struct emu_vm *ev = c->vm;
	uint64_t gpa_page, gpa, idx;
	const uint8_t *page;

	page = mmu_page_x(c, la, &gpa_page);
	if (!page) {
		pr_warn_once("emu: instruction fetch from non-RAM %#llx\n",
			     (unsigned long long)gpa_page);
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
	gpa = gpa_page | (la & EMU_PAGE_MASK);
	idx = (uint64_t)(page - ev->gm->hva) >> GM_PAGE_SHIFT;

	struct emu_block **pp = &c->bc->hash[bc_hash(gpa, dm)];
	uint32_t gen = __atomic_load_n(&ev->code_gen[idx], __ATOMIC_ACQUIRE);

	for (struct emu_block *b = *pp; b; b = *pp) {
		if (b->gpa == gpa && b->dmode == dm) {
			if (b->gen == gen)
				return b;
			*pp = b->next; /* stale: unlink, the arena space is reclaimed at flush */
			continue;
		}
		pp = &b->next;
	}
	return decode_block(c, dm, la, page, gpa, idx);
}

/*
 * The epoch a shortcut to a block fetched through la depends on: the global
 * one if la's fetch translation is global (it survives CR3 writes), else the
 * one every TLB flush retires.
 */
static uint64_t fetch_epoch(const struct emu_cpu *c, uint64_t la)
{
	const struct emu_tlb_entry *t = &c->tlb_x[(la >> 12) % EMU_TLB_SIZE];

	return t->tag == tlb_tag(c, la) && t->global ? c->jc_gepoch : c->jc_epoch;
}

/* emu_block_get(), also giving the epoch that a link to the block must carry. */
static const struct emu_block *block_get(struct emu_cpu *c, uint64_t *epoch)
{
	enum emu_dmode dm = emu_cur_dmode(c);
	struct emu_block_cache *bc = c->bc;
	uint8_t user = c->cpl == 3;
	uint64_t la;
	struct jc_entry *e;
	const struct emu_block *b;

	c->dmode = (uint8_t)dm;
	c->mode64 = dm == DM_64;
	la = c->mode64 ? c->rip : (uint32_t)(c->rip + c->seg[SEG_CS].base);
	e = jc_slot(bc, la);
	b = e->b;
	if (likely(b && e->la == la && epoch_live(c, e->epoch) && e->dmode == dm &&
		   e->user == user)) {
		uint64_t wgen = __atomic_load_n(&c->vm->code_wgen, __ATOMIC_ACQUIRE);

		if (likely(e->wgen == wgen || block_valid(b))) {
			e->wgen = wgen;
			*epoch = e->epoch;
			return b;
		}
	}
	uint64_t wgen = __atomic_load_n(&c->vm->code_wgen, __ATOMIC_ACQUIRE);

	b = block_lookup(c, dm, la);
	*epoch = fetch_epoch(c, la);
	if (b != &bc->scratch.b) {
		e->la = la;
		e->b = b;
		e->epoch = *epoch;
		e->wgen = wgen;
		e->dmode = (uint8_t)dm;
		e->user = user;
	}
	return b;
}

const struct emu_block *emu_block_get(struct emu_cpu *c)
{
	uint64_t epoch;

	return block_get(c, &epoch);
}

struct emu_block *emu_block_next(struct emu_cpu *c, struct emu_block *prev)
{
	struct emu_block_cache *bc = c->bc;
	struct emu_block *b;
	uint64_t gepoch = c->jc_gepoch, epoch;
	/* Read before any generation is checked: a write after this retires the link. */
	uint64_t wgen = __atomic_load_n(&c->vm->code_wgen, __ATOMIC_ACQUIRE);
	int k;

	if (!prev)
		return (struct emu_block *)emu_block_get(c);
	k = prev->succ_rip[0] == c->rip ? 0 : prev->succ_rip[1] == c->rip ? 1 : -1;
	if (k >= 0) {
		b = prev->succ[k];
		if (likely(b && epoch_live(c, prev->succ_epoch[k]) && block_valid(b))) {
			prev->succ_wgen[k] = wgen;
			return b;
		}
	}
	b = (struct emu_block *)block_get(c, &epoch);
	/* A cache flush inside block_get() freed prev; the scratch block is never linked. */
	if (c->jc_gepoch != gepoch || b == &bc->scratch.b)
		return b;
	if (k < 0)
		k = prev->succ[0] && epoch_live(c, prev->succ_epoch[0]) ? 1 : 0;
	prev->succ[k] = b;
	prev->succ_rip[k] = c->rip;
	prev->succ_epoch[k] = epoch;
	prev->succ_wgen[k] = wgen;
	return b;
}
