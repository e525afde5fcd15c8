/*
 * Instruction decoding (Zydis) into struct emu_insn, and the decoded-block
 * cache.
 *
 * A block is a run of instructions starting at one guest-physical address in
 * one decode mode; it ends at an unconditional branch, call or return (a
 * taken conditional branch leaves it early), at an instruction the system part
 * handles (it may change modes), at #UD, or at the page end. Blocks live in a
 * per-vCPU cache, found through a hash on (gpa, mode), and stay valid while
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

/*
 * Blocks are carved from chunks mapped on demand (a clone that runs little
 * code stays small), stale blocks are reused, and the whole cache is dropped
 * once BC_MAX_BYTES of chunks are full of live code. A 6.1 kernel's boot
 * fills about 24 MiB; 16 MiB costs one flush and no measurable time, 8 MiB
 * costs about a tenth of the boot time.
 */
#define BC_CHUNK_SIZE (256u << 10)
#define BC_MAX_BYTES (16ull << 20)
#define BC_HASH_MIN_BITS 10
#define BC_HASH_MAX_BITS 16
#define BLOCK_MAX_INSNS 64
/*
 * A vCPU that ran fewer than BC_IDLE_INSNS instructions in the last
 * BC_IDLE_NS when it halts gives its decoded code back to the host (idle
 * clones and VMs waiting for work): what it runs next is decoded again.
 */
#define BC_IDLE_NS 2000000000ull
#define BC_IDLE_INSNS 20000000ull
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

struct bc_chunk {
	struct bc_chunk *next;
	size_t used;
	uint8_t data[] __attribute__((aligned(16)));
};

struct emu_block_cache {
	struct jc_entry jc[JC_SIZE];
	struct emu_block **hash;
	unsigned hash_bits;
	size_t nblocks;		       /* blocks in the hash */
	struct bc_chunk *chunks, *cur; /* all chunks; the one blocks are carved from */
	size_t chunk_bytes;	       /* mapped for chunks */
	/* Unlinked stale blocks: reusable once no shortcut can reach them. */
	struct emu_block *pending;
	struct emu_block *free[BLOCK_MAX_INSNS + 1]; /* reusable, by capacity */
	uint64_t swept_wgen;	       /* emu_vm.code_wgen at the last sweep for stale blocks */
	uint64_t idle_ns, idle_icount; /* when and at which icount emu_bc_idle() last looked */
	ZydisDecoder dec[DM_COUNT];
	/* One uncached block for an instruction that crosses a page boundary. */
	union {
		struct emu_block b;
		uint8_t bytes[sizeof(struct emu_block) + sizeof(struct emu_insn)];
	} scratch;
	/* A block being decoded, copied into the cache at its final size. */
	union {
		struct emu_block b;
		uint8_t bytes[sizeof(struct emu_block) + BLOCK_MAX_INSNS * sizeof(struct emu_insn)];
	} tmp;
};

static struct bc_chunk *chunk_new(void)
{
	struct bc_chunk *ch = mmap(NULL, BC_CHUNK_SIZE, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (ch == MAP_FAILED)
		return NULL;
	ch->next = NULL;
	ch->used = 0;
	return ch;
}

static void chunks_free(struct bc_chunk *ch)
{
	while (ch) {
		struct bc_chunk *next = ch->next;

		munmap(ch, BC_CHUNK_SIZE);
		ch = next;
	}
}

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
	int err = -ENOMEM;

	if (!bc)
		return -ENOMEM;
	bc->hash_bits = BC_HASH_MIN_BITS;
	bc->idle_ns = emu_now_ns(); /* the first look comes a whole period after start */
	bc->hash = calloc(1u << bc->hash_bits, sizeof(*bc->hash));
	bc->chunks = bc->cur = chunk_new();
	if (!bc->hash || !bc->chunks)
		goto fail;
	bc->chunk_bytes = BC_CHUNK_SIZE;
	for (int m = 0; m < DM_COUNT; m++) {
		if (ZYAN_FAILED(ZydisDecoderInit(&bc->dec[m], modes[m].mode, modes[m].sw))) {
			err = -EINVAL;
			goto fail;
		}
	}
	c->bc = bc;
	c->jc_epoch = 0;
	c->jc_gepoch = EMU_JC_GLOBAL;
	return 0;
fail:
	chunks_free(bc->chunks);
	free(bc->hash);
	free(bc);
	return err;
}

void emu_bc_destroy(struct emu_cpu *c)
{
	if (!c->bc)
		return;
	chunks_free(c->bc->chunks);
	free(c->bc->hash);
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
		o->disp = (int64_t)((uint64_t)zo->ptr.segment << 32 | zo->ptr.offset);
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
	if (zi.operand_count_visible > EMU_MAX_OPS) {
		i->fn = emu_h_ud;
		*ends = true;
		return 0;
	}
	i->nops = zi.operand_count_visible;
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

static inline unsigned bc_hash(const struct emu_block_cache *bc, uint64_t gpa, enum emu_dmode dm)
{
	uint64_t h = (gpa ^ ((uint64_t)dm << 56)) * 0x9E3779B97F4A7C15ull;

	return (unsigned)(h >> (64 - bc->hash_bits));
}

void emu_bc_jc_flush(struct emu_cpu *c, bool include_global)
{
	c->jc_epoch++;
	if (include_global)
		c->jc_gepoch++;
}

static size_t block_bytes(unsigned n)
{
	return (sizeof(struct emu_block) + n * sizeof(struct emu_insn) + 15) & ~(size_t)15;
}

/* Drop every block; keep one chunk to start over in. */
static void bc_flush(struct emu_cpu *c)
{
	struct emu_block_cache *bc = c->bc;

	memset(bc->hash, 0, sizeof(*bc->hash) << bc->hash_bits);
	bc->nblocks = 0;
	memset(bc->free, 0, sizeof(bc->free));
	bc->pending = NULL;
	emu_bc_jc_flush(c, true);
	chunks_free(bc->chunks->next);
	bc->chunks->next = NULL;
	bc->chunks->used = 0;
	bc->cur = bc->chunks;
	bc->chunk_bytes = BC_CHUNK_SIZE;
}

/* Give every page the cache holds back to the host; it starts over empty. */
static void bc_trim(struct emu_cpu *c)
{
	struct emu_block_cache *bc = c->bc;
	struct emu_block **small = calloc(1u << BC_HASH_MIN_BITS, sizeof(*small));
	uintptr_t jc0 = ((uintptr_t)bc->jc + 4095) & ~(uintptr_t)4095,
		  jc1 = ((uintptr_t)(bc->jc + JC_SIZE)) & ~(uintptr_t)4095;

	bc_flush(c);
	/* Zeroed pages read back as an empty chunk and empty jump-cache slots. */
	madvise(bc->chunks, BC_CHUNK_SIZE, MADV_DONTNEED);
	if (jc1 > jc0)
		madvise((void *)jc0, jc1 - jc0, MADV_DONTNEED);
	if (small) {
		free(bc->hash);
		bc->hash = small;
		bc->hash_bits = BC_HASH_MIN_BITS;
	}
}

void emu_bc_idle(struct emu_cpu *c, uint64_t now_ns)
{
	struct emu_block_cache *bc = c->bc;

	if (!bc || now_ns - bc->idle_ns < BC_IDLE_NS)
		return;
	uint64_t ran = c->icount - bc->idle_icount;

	bc->idle_ns = now_ns;
	bc->idle_icount = c->icount;
	if (ran < BC_IDLE_INSNS && (bc->nblocks || bc->chunk_bytes > BC_CHUNK_SIZE))
		bc_trim(c);
}

void emu_bc_stats(const struct emu_cpu *c, size_t *blocks, size_t *chunk_bytes)
{
	*blocks = c->bc->nblocks;
	*chunk_bytes = c->bc->chunk_bytes;
}

/* Quadruple the hash when chains grow past two blocks on average (failure: keep it). */
static void hash_grow(struct emu_block_cache *bc)
{
	unsigned bits = bc->hash_bits + 2, old = 1u << bc->hash_bits;
	struct emu_block **nh = calloc(1u << bits, sizeof(*nh));

	if (!nh)
		return;
	bc->hash_bits = bits;
	for (unsigned k = 0; k < old; k++) {
		struct emu_block *b = bc->hash[k], *next;

		for (; b; b = next) {
			unsigned h = bc_hash(bc, b->gpa, b->dmode);

			next = b->next;
			b->next = nh[h];
			nh[h] = b;
		}
	}
	free(bc->hash);
	bc->hash = nh;
}

/* Move blocks whose code changed from the hash to the pending list. */
static void sweep_stale(struct emu_block_cache *bc)
{
	for (unsigned k = 0; k < 1u << bc->hash_bits; k++) {
		struct emu_block **pp = &bc->hash[k];

		for (struct emu_block *b = *pp; b; b = *pp) {
			if (block_valid(b)) {
				pp = &b->next;
				continue;
			}
			*pp = b->next;
			b->next = bc->pending;
			bc->pending = b;
			bc->nblocks--;
		}
	}
}

/*
 * Make pending blocks reusable. Jump-cache entries and successor links may
 * still point at them: retiring every epoch kills those shortcuts first.
 */
static bool reclaim_pending(struct emu_cpu *c)
{
	struct emu_block_cache *bc = c->bc;
	struct emu_block *b = bc->pending, *next;

	if (!b)
		return false;
	emu_bc_jc_flush(c, true);
	for (; b; b = next) {
		next = b->next;
		b->next = bc->free[b->cap];
		bc->free[b->cap] = b;
	}
	bc->pending = NULL;
	return true;
}

/* A free block holding n instructions without wasting more than half of it. */
static struct emu_block *take_free(struct emu_block_cache *bc, unsigned n)
{
	unsigned lim = n * 2 < BLOCK_MAX_INSNS ? n * 2 : BLOCK_MAX_INSNS;

	for (unsigned k = n; k <= lim; k++) {
		struct emu_block *b = bc->free[k];

		if (b) {
			bc->free[k] = b->next;
			return b;
		}
	}
	return NULL;
}

static struct emu_block *carve(struct emu_block_cache *bc, unsigned n)
{
	size_t sz = block_bytes(n);
	struct emu_block *b;

	if (bc->cur->used + sz > BC_CHUNK_SIZE - sizeof(struct bc_chunk))
		return NULL;
	b = (struct emu_block *)(bc->cur->data + bc->cur->used);
	bc->cur->used += sz;
	b->cap = (uint16_t)n;
	return b;
}

/*
 * Memory for a block of n instructions: a reused stale block, the current
 * chunk, reclaimed stale blocks, a new chunk, or (at the limit) an emptied
 * cache. Anything but the first two retires every shortcut.
 */
static struct emu_block *block_alloc(struct emu_cpu *c, unsigned n)
{
	struct emu_block_cache *bc = c->bc;
	uint64_t wgen = __atomic_load_n(&c->vm->code_wgen, __ATOMIC_ACQUIRE);
	struct emu_block *b = take_free(bc, n);

	if (b || (b = carve(bc, n)))
		return b;
	if (wgen != bc->swept_wgen) {
		bc->swept_wgen = wgen;
		sweep_stale(bc);
	}
	if (reclaim_pending(c) && (b = take_free(bc, n)))
		return b;
	if (bc->chunk_bytes + BC_CHUNK_SIZE <= BC_MAX_BYTES) {
		struct bc_chunk *ch = chunk_new();

		if (ch) {
			ch->next = bc->chunks;
			bc->chunks = bc->cur = ch;
			bc->chunk_bytes += BC_CHUNK_SIZE;
			return carve(bc, n);
		}
	}
	bc_flush(c);
	return carve(bc, n);
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
	unsigned off = (unsigned)(la & EMU_PAGE_MASK);
	struct emu_block *t = &bc->tmp.b, *b;
	bool ends = false;

	t->n = 0;
	while (!ends && off < 4096 && t->n < BLOCK_MAX_INSNS) {
		struct emu_insn *i = &t->insn[t->n];

		if (decode_one(c, dm, page + off, 4096 - off, i, &ends) == -EAGAIN)
			break;
		t->n++;
		off += i->len;
	}
	if (t->n == 0)
		return decode_crossing(c, dm, la, page, idx);
	/* May empty the cache (and retire every shortcut) to make room. */
	b = block_alloc(c, t->n);
	mark_code_page(c, idx);
	b->gpa = gpa;
	b->page = idx;
	b->genp = &c->vm->code_gen[idx];
	b->gen = __atomic_load_n(b->genp, __ATOMIC_ACQUIRE);
	b->dmode = (uint8_t)dm;
	b->n = t->n;
	memset(b->succ, 0, sizeof(b->succ));
	memcpy(b->insn, t->insn, t->n * sizeof(struct emu_insn));
	if (bc->nblocks >= 2u << bc->hash_bits && bc->hash_bits < BC_HASH_MAX_BITS)
		hash_grow(bc);
	unsigned h = bc_hash(bc, gpa, dm);

	b->next = bc->hash[h];
	bc->hash[h] = b;
	bc->nblocks++;
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

	struct emu_block_cache *bc = c->bc;
	struct emu_block **pp = &bc->hash[bc_hash(bc, gpa, dm)];
	uint32_t gen = __atomic_load_n(&ev->code_gen[idx], __ATOMIC_ACQUIRE);

	for (struct emu_block *b = *pp; b; b = *pp) {
		if (b->gpa == gpa && b->dmode == dm) {
			if (b->gen == gen)
				return b;
			/* Stale: unlink; its memory is reused once no shortcut reaches it. */
			*pp = b->next;
			b->next = bc->pending;
			bc->pending = b;
			bc->nblocks--;
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
