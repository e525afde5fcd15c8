/*
 * The emulated MMU: 4-level paging with accessed/dirty bits, #PF error
 * codes, and a soft TLB per vCPU (separate read / write / fetch arrays,
 * direct-mapped by linear page). A TLB entry maps a linear page to the host
 * address of a RAM page; MMIO pages never get an entry.
 *
 * Write entries exist only for pages already marked dirty in gm->dirty that
 * hold no decoded code, so the slow path sees the first write after the
 * dirty log is reset (emu_vm.tlb_flush_gen makes vCPUs drop write entries)
 * and every write to a code page (self-modifying code).
 */
#include "cpu/emu/core.h"
#include "util/log.h"

enum acc { ACC_R, ACC_W, ACC_X };

#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_U 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_G 0x100ull
#define PTE_NX (1ull << 63)
#define PTE_ADDR 0x000ffffffffff000ull

#define PF_P 0x1u
#define PF_W 0x2u
#define PF_U 0x4u
#define PF_RSVD 0x8u
#define PF_I 0x10u

struct xlate {
	uint64_t gpa;	/* guest-physical address of the page containing la */
	unsigned shift; /* 12, 21 or 30: size of the mapping */
	bool global;
};

static noreturn void page_fault(struct emu_cpu *c, uint64_t la, enum acc acc, bool user,
				uint32_t err)
{
	if (acc == ACC_W)
		err |= PF_W;
	if (user)
		err |= PF_U;
	if (acc == ACC_X && (c->efer & EFER_NXE))
		err |= PF_I;
	c->cr2 = la;
	emu_raise(c, EMU_PF, err);
}

static void set_bits(uint64_t *pte, uint64_t bits)
{
	if ((__atomic_load_n(pte, __ATOMIC_RELAXED) & bits) != bits)
		__atomic_fetch_or(pte, bits, __ATOMIC_RELAXED);
}

static bool canonical(uint64_t la)
{
	return (uint64_t)((int64_t)(la << 16) >> 16) == la;
}

/* Walk the 4-level tables for la; raises #PF/#GP, sets A/D bits as the walk succeeds. */
static void walk(struct emu_cpu *c, uint64_t la, enum acc acc, bool user, struct xlate *x)
{
	struct guest_mem *gm = c->vm->gm;
	bool nxe = c->efer & EFER_NXE, w_ok = true, u_ok = true, nx = false;
	uint64_t table = c->cr3 & PTE_ADDR;
	uint64_t *ptes[4];

	if (!canonical(la))
		emu_raise(c, EMU_GP, 0);
	for (int level = 4; level >= 1; level--) {
		unsigned shift = 12 + 9 * (unsigned)(level - 1);
		uint64_t *pp = gm_ptr(gm, table + ((la >> shift) & 511) * 8, 8);
		uint64_t pte;

		if (!pp) {
			pr_warn_once("emu: page table at %#llx is not RAM\n",
				     (unsigned long long)table);
			page_fault(c, la, acc, user, PF_RSVD);
		}
		pte = __atomic_load_n(pp, __ATOMIC_RELAXED);
		ptes[4 - level] = pp;
		if (!(pte & PTE_P))
			page_fault(c, la, acc, user, 0);
		if (((pte & PTE_NX) && !nxe) || (level == 4 && (pte & PTE_PS)))
			page_fault(c, la, acc, user, PF_P | PF_RSVD);
		u_ok &= !!(pte & PTE_U);
		w_ok &= !!(pte & PTE_W);
		nx |= nxe && (pte & PTE_NX);
		if (level > 1 && !(level <= 3 && (pte & PTE_PS))) {
			table = pte & PTE_ADDR;
			continue;
		}
		/* Leaf: check permissions before touching A/D. */
		if (user && !u_ok)
			page_fault(c, la, acc, user, PF_P);
		if (acc == ACC_W && !w_ok && (user || (c->cr0 & CR0_WP)))
			page_fault(c, la, acc, user, PF_P);
		if (acc == ACC_X && nx)
			page_fault(c, la, acc, user, PF_P);
		for (int k = 0; k < 4 - level; k++)
			set_bits(ptes[k], PTE_A);
		set_bits(pp, acc == ACC_W ? PTE_A | PTE_D : PTE_A);
		uint64_t off_mask = (1ull << shift) - 1;

		x->gpa = ((pte & PTE_ADDR) & ~off_mask) | (la & off_mask & ~EMU_PAGE_MASK);
		x->shift = shift;
		x->global = (pte & PTE_G) && (c->cr4 & CR4_PGE);
		return;
	}
}

static void translate(struct emu_cpu *c, uint64_t la, enum acc acc, bool user, struct xlate *x)
{
	if (!(c->cr0 & CR0_PG)) {
		x->gpa = la & ~EMU_PAGE_MASK & 0xffffffffull;
		x->shift = 12;
		x->global = false;
		return;
	}
	if (!(c->efer & EFER_LMA)) {
		/* Linux goes from unpaged protected mode straight to long mode. */
		pr_warn_once("emu: legacy 32-bit paging is not supported\n");
		emu_raise(c, EMU_GP, 0);
	}
	walk(c, la, acc, user, x);
}

static inline uint64_t tag_of(uint64_t la, bool user)
{
	return (la & ~EMU_PAGE_MASK) | 1 | ((uint64_t)user << 1);
}

static struct emu_tlb_entry *tlb_array(struct emu_cpu *c, enum acc acc)
{
	return acc == ACC_R ? c->tlb_r : acc == ACC_W ? c->tlb_w : c->tlb_x;
}

/* A CPU write reached RAM page idx: dirty log, and drop decoded code on it. */
static bool note_write(struct emu_cpu *c, uint64_t idx)
{
	struct emu_vm *ev = c->vm;
	struct guest_mem *gm = ev->gm;
	uint64_t bit = 1ull << (idx % 64);

	if (!(__atomic_load_n(&gm->dirty[idx / 64], __ATOMIC_RELAXED) & bit))
		__atomic_fetch_or(&gm->dirty[idx / 64], bit, __ATOMIC_RELAXED);
	if (__atomic_load_n(&ev->code_pages[idx / 64], __ATOMIC_ACQUIRE) & bit) {
		emu_code_written(ev, idx);
		if (idx == c->block_page)
			c->stop_block = true;
		return true;
	}
	return false;
}

/*
 * Translate la for acc and return the host address of its RAM page (NULL for
 * MMIO, *gpa set either way), filling the TLB where allowed.
 */
static uint8_t *fill(struct emu_cpu *c, uint64_t la, enum acc acc, bool user, uint64_t *gpa)
{
	struct guest_mem *gm = c->vm->gm;
	struct xlate x;
	uint8_t *host;

	translate(c, la, acc, user, &x);
	*gpa = x.gpa;
	host = gm_ptr(gm, x.gpa, GM_PAGE_SIZE);
	if (!host)
		return NULL;
	if (acc == ACC_W && note_write(c, (uint64_t)(host - gm->hva) >> GM_PAGE_SHIFT))
		return host; /* a code page: keep writes on the slow path */
	struct emu_tlb_entry *e = &tlb_array(c, acc)[(la >> 12) % EMU_TLB_SIZE];

	e->tag = tag_of(la, user);
	e->host = host;
	e->gpa = x.gpa;
	e->global = x.global;
	e->shift = (uint8_t)x.shift;
	return host;
}

static uint64_t mmio_read(struct emu_cpu *c, uint64_t gpa, unsigned size)
{
	uint64_t v = ~0ull;
	struct emu_io *io = &c->vm->io;

	if (io->mmio)
		io->mmio(io->opaque, c, gpa, &v, size, 0);
	return v & size_mask(size);
}

static void mmio_write(struct emu_cpu *c, uint64_t gpa, unsigned size, uint64_t v)
{
	struct emu_io *io = &c->vm->io;

	if (io->mmio)
		io->mmio(io->opaque, c, gpa, &v, size, 1);
}

/* One access within a page, or the pieces of one that crosses (writes check both pages first). */
static uint64_t read_slow(struct emu_cpu *c, uint64_t la, unsigned size, bool user)
{
	unsigned off = (unsigned)(la & EMU_PAGE_MASK);
	uint64_t gpa;

	if (off + size <= 4096) {
		uint8_t *h = fill(c, la, ACC_R, user, &gpa);

		return h ? load_n(h + off, size) : mmio_read(c, gpa + off, size);
	}
	uint64_t v = 0;

	for (unsigned b = 0; b < size; b++)
		v |= read_slow(c, la + b, 1, user) << (8 * b);
	return v;
}

static void write_slow(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v, bool user)
{
	unsigned off = (unsigned)(la & EMU_PAGE_MASK);
	uint64_t gpa;

	if (off + size <= 4096) {
		uint8_t *h = fill(c, la, ACC_W, user, &gpa);

		if (h)
			store_n(h + off, size, v);
		else
			mmio_write(c, gpa + off, size, v);
		return;
	}
	/* Fault on either page before writing any byte. */
	uint64_t next = (la | EMU_PAGE_MASK) + 1;
	struct xlate x;

	translate(c, la, ACC_W, user, &x);
	translate(c, c->mode64 ? next : (uint32_t)next, ACC_W, user, &x);
	for (unsigned b = 0; b < size; b++) {
		uint64_t a = la + b;

		write_slow(c, c->mode64 ? a : (uint32_t)a, 1, (v >> (8 * b)) & 0xff, user);
	}
}

uint64_t mmu_read_slow(struct emu_cpu *c, uint64_t la, unsigned size, bool sys)
{
	return read_slow(c, la, size, !sys && c->cpl == 3);
}

void mmu_write_slow(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v, bool sys)
{
	write_slow(c, la, size, v, !sys && c->cpl == 3);
}

uint8_t *mmu_page_r(struct emu_cpu *c, uint64_t la)
{
	const struct emu_tlb_entry *e = &c->tlb_r[(la >> 12) % EMU_TLB_SIZE];
	uint64_t gpa;

	if (e->tag == tlb_tag(c, la))
		return e->host;
	return fill(c, la, ACC_R, c->cpl == 3, &gpa);
}

uint8_t *mmu_page_w(struct emu_cpu *c, uint64_t la)
{
	const struct emu_tlb_entry *e = &c->tlb_w[(la >> 12) % EMU_TLB_SIZE];
	uint64_t gpa;
	uint8_t *h;

	if (e->tag == tlb_tag(c, la))
		return e->host;
	h = fill(c, la, ACC_W, c->cpl == 3, &gpa);
	/* Code pages stay on the element-by-element path so the block can stop. */
	if (h && c->tlb_w[(la >> 12) % EMU_TLB_SIZE].tag != tlb_tag(c, la))
		return NULL;
	return h;
}

uint8_t *mmu_page_x(struct emu_cpu *c, uint64_t la, uint64_t *gpa)
{
	const struct emu_tlb_entry *e = &c->tlb_x[(la >> 12) % EMU_TLB_SIZE];

	if (e->tag == tlb_tag(c, la)) {
		*gpa = e->gpa;
		return e->host;
	}
	return fill(c, la, ACC_X, c->cpl == 3, gpa);
}

void mmu_sync(struct emu_cpu *c)
{
	c->tlb_flush_seen = __atomic_load_n(&c->vm->tlb_flush_gen, __ATOMIC_ACQUIRE);
	for (unsigned k = 0; k < EMU_TLB_SIZE; k++)
		c->tlb_w[k].tag = 0;
}

/*
 * A flush requester bumps tlb_flush_gen, then waits only for active vCPUs.
 * Both sides store, then load the other's word, sequentially consistent:
 * either the requester sees the vCPU active (and waits for it), or the vCPU
 * sees the new generation here and drops its write entries before it
 * writes again.
 */
void mmu_set_active(struct emu_cpu *c, bool on)
{
	__atomic_store_n(&c->active, on, __ATOMIC_SEQ_CST);
	if (on && c->tlb_flush_seen != __atomic_load_n(&c->vm->tlb_flush_gen, __ATOMIC_SEQ_CST))
		mmu_sync(c);
}

/* ---- Public accessors (emu.h) ---- */

uint64_t emu_read(struct emu_cpu *c, uint64_t la, unsigned size)
{
	return mem_rd(c, la, size);
}

void emu_write(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v)
{
	mem_wr(c, la, size, v);
}

uint64_t emu_read_sys(struct emu_cpu *c, uint64_t la, unsigned size)
{
	return read_slow(c, la, size, false);
}

void emu_write_sys(struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v)
{
	write_slow(c, la, size, v, false);
}

void emu_read_buf(struct emu_cpu *c, uint64_t la, void *buf, unsigned len)
{
	uint8_t *out = buf;

	while (len) {
		unsigned n = len >= 8 && (la & EMU_PAGE_MASK) <= 4096 - 8 ? 8 : 1;
		uint64_t v = mem_rd(c, la, n);

		memcpy(out, &v, n);
		out += n;
		la += n;
		len -= n;
	}
}

void emu_write_buf(struct emu_cpu *c, uint64_t la, const void *buf, unsigned len)
{
	const uint8_t *in = buf;

	/* Probe every page first so a fault leaves memory untouched. */
	for (uint64_t p = la & ~EMU_PAGE_MASK; len && p < la + len; p += GM_PAGE_SIZE) {
		struct xlate x;

		translate(c, p < la ? la : p, ACC_W, c->cpl == 3, &x);
	}
	while (len) {
		unsigned n = len >= 8 && (la & EMU_PAGE_MASK) <= 4096 - 8 ? 8 : 1;
		uint64_t v = 0;

		memcpy(&v, in, n);
		mem_wr(c, la, n, v);
		in += n;
		la += n;
		len -= n;
	}
}

void *emu_host_ptr_rw(struct emu_cpu *c, uint64_t la, unsigned size)
{
	const struct emu_tlb_entry *e = &c->tlb_w[(la >> 12) % EMU_TLB_SIZE];
	uint64_t gpa;
	uint8_t *h;

	if ((la & EMU_PAGE_MASK) + size > 4096)
		return NULL;
	if (e->tag == tlb_tag(c, la))
		return e->host + (la & EMU_PAGE_MASK);
	h = fill(c, la, ACC_W, c->cpl == 3, &gpa);
	return h ? h + (la & EMU_PAGE_MASK) : NULL;
}

void emu_tlb_flush(struct emu_cpu *c, bool include_global)
{
	struct emu_tlb_entry *arr[3] = {c->tlb_r, c->tlb_w, c->tlb_x};

	for (int a = 0; a < 3; a++)
		for (unsigned k = 0; k < EMU_TLB_SIZE; k++)
			if (include_global || !arr[a][k].global)
				arr[a][k].tag = 0;
	emu_bc_jc_flush(c, include_global);
}

/* INVLPG drops every entry that came from the mapping covering la, large pages included. */
void emu_tlb_flush_page(struct emu_cpu *c, uint64_t la)
{
	struct emu_tlb_entry *arr[3] = {c->tlb_r, c->tlb_w, c->tlb_x};

	for (int a = 0; a < 3; a++) {
		for (unsigned k = 0; k < EMU_TLB_SIZE; k++) {
			struct emu_tlb_entry *e = &arr[a][k];
			unsigned sh = e->shift ? e->shift : 12;

			if (e->tag && ((e->tag ^ la) >> sh) == 0)
				e->tag = 0;
		}
	}
	/* The page may have been global: retire every shortcut. */
	emu_bc_jc_flush(c, true);
}
