/*
 * The emulator's MMU and code cache: page walks (4 KiB, 2 MiB, 1 GiB),
 * accessed/dirty bits, #PF error codes and CR2, NX, U/S, CR0.WP, global
 * pages and INVLPG, MMIO dispatch, dirty logging, cross-page accesses and
 * instructions, self-modifying code, and 16-bit real-mode addressing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/emu/emu.h"
#include "vmm/mem.h"

#define RAM (16ull << 20)
#define PML4 0x1000ull
#define CODE_LA 0x400000ull /* code runs here (a 4 KiB mapping) */
#define CODE_PA 0x300000ull

#define P 0x1ull
#define W 0x2ull
#define U 0x4ull
#define A 0x20ull
#define D 0x40ull
#define PS 0x80ull
#define G 0x100ull
#define NX (1ull << 63)

struct mmio_log {
	uint64_t gpa, data;
	unsigned size, count;
	int is_write;
};

struct t {
	struct guest_mem gm;
	struct emu_vm ev;
	struct emu_cpu *c;
	uint64_t next_table;
	struct mmio_log mmio;
};

static void on_mmio(void *opaque, struct emu_cpu *c, uint64_t gpa, void *data, unsigned size,
		    int is_write)
{
	struct mmio_log *l = opaque;

	l->gpa = gpa;
	l->size = size;
	l->is_write = is_write;
	l->count++;
	if (is_write) {
		l->data = 0;
		memcpy(&l->data, data, size);
	} else {
		uint64_t v = 0x1122334455667788ull;

		memcpy(data, &v, size);
	}
}

static uint64_t *pte_at(struct t *t, uint64_t gpa)
{
	uint64_t *p = gm_ptr(&t->gm, gpa, 8);

	assert_non_null(p);
	return p;
}

/* Map la at the given level (1: 4 KiB, 2: 2 MiB, 3: 1 GiB); returns the leaf entry. */
static uint64_t *map(struct t *t, uint64_t la, uint64_t pa, int level, uint64_t flags)
{
	uint64_t table = PML4;

	for (int l = 4; l > level; l--) {
		uint64_t *e = pte_at(t, table + ((la >> (12 + 9 * (l - 1))) & 511) * 8);

		if (!(*e & P)) {
			*e = t->next_table | P | W | U;
			t->next_table += 4096;
		}
		table = *e & 0x000ffffffffff000ull;
	}
	uint64_t *leaf = pte_at(t, table + ((la >> (12 + 9 * (level - 1))) & 511) * 8);

	*leaf = pa | flags | (level > 1 ? PS : 0);
	return leaf;
}

/* Upper-level entries of la (PML4E, PDPTE, PDE) for A-bit checks. */
static uint64_t *upper(struct t *t, uint64_t la, int level)
{
	uint64_t table = PML4;
	uint64_t *e = NULL;

	for (int l = 4; l >= level; l--) {
		e = pte_at(t, table + ((la >> (12 + 9 * (l - 1))) & 511) * 8);
		table = *e & 0x000ffffffffff000ull;
	}
	return e;
}

static void set_long_mode(struct t *t, unsigned cpl)
{
	struct emu_cpu *c = t->c;

	memset(c->seg, 0, sizeof(c->seg));
	for (int s = 0; s < 6; s++) {
		c->seg[s].present = 1;
		c->seg[s].s = 1;
		c->seg[s].type = 3;
		c->seg[s].dpl = (uint8_t)cpl;
		c->seg[s].limit = 0xffffffff;
	}
	c->seg[SEG_CS].type = 0xb;
	c->seg[SEG_CS].l = 1;
	c->cpl = cpl;
	c->cr0 = 0x80050033;
	c->cr4 = 0x6a0;
	c->efer = 0xd01;
	c->cr3 = PML4;
	emu_set_rflags(c, 2);
	emu_tlb_flush(c, true);
}

static int setup(void **state)
{
	struct t *t = calloc(1, sizeof(*t));

	if (!t || gm_init(&t->gm, RAM) || emu_vm_init(&t->ev, &t->gm))
		return -1;
	t->c = aligned_alloc(64, (sizeof(struct emu_cpu) + 63) & ~63ul);
	if (!t->c || emu_cpu_init(t->c, &t->ev, 0))
		return -1;
	t->ev.io.mmio = on_mmio;
	t->ev.io.opaque = &t->mmio;
	t->next_table = 0x2000;
	map(t, CODE_LA, CODE_PA, 1, P | W | U);
	set_long_mode(t, 0);
	t->c->stop_on_fault = true;
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct t *t = *state;

	emu_cpu_destroy(t->c);
	free(t->c);
	emu_vm_destroy(&t->ev);
	gm_destroy(&t->gm);
	free(t);
	return 0;
}

/* Load code at CODE_LA + off followed by UD2 and run it; returns the fault vector or -1. */
static int run_at(struct t *t, uint64_t la, uint64_t pa, const void *code, size_t len)
{
	static const uint8_t ud2[] = {0x0f, 0x0b};

	assert_int_equal(gm_write(&t->gm, pa, code, len), 0);
	assert_int_equal(gm_write(&t->gm, pa + len, ud2, 2), 0);
	t->c->rip = la;
	t->c->fault_vec = -1;
	assert_int_equal(emu_exec(t->c, 1000000), VCPU_EXIT_ERROR);
	if (t->c->fault_vec == 6 && t->c->rip == la + len)
		return -1;
	return t->c->fault_vec;
}

static int run(struct t *t, const void *code, size_t len)
{
	return run_at(t, CODE_LA, CODE_PA, code, len);
}

/* mov rax, [rbx] */
static const uint8_t LOAD[] = {0x48, 0x8b, 0x03};
/* mov [rbx], rax */
static const uint8_t STORE[] = {0x48, 0x89, 0x03};

static void test_walk_sizes(void **state)
{
	struct t *t = *state;
	static const struct {
		uint64_t la, pa;
		int level;
	} m[] = {
	    {0x7f0000001000ull, 0x500000, 1},
	    {0x7f0040200000ull, 0x600000, 2},
	    {0x7f0080000000ull, 0x0, 3},
	};

	for (unsigned k = 0; k < 3; k++) {
		uint64_t off = 0x238, v = 0xabcdef0011223344ull + k;

		map(t, m[k].la, m[k].pa, m[k].level, P | W);
		assert_int_equal(gm_write(&t->gm, m[k].pa + off, &v, 8), 0);
		t->c->gpr[3] = m[k].la + off;
		if (run(t, LOAD, sizeof(LOAD)) != -1)
			fail_msg("mapping %u: fault %d err %#x cr2 %#llx", k, t->c->fault_vec,
				 t->c->fault_err, (unsigned long long)t->c->cr2);
		assert_int_equal(t->c->gpr[0], v);
	}
}

static void test_accessed_dirty(void **state)
{
	struct t *t = *state;
	uint64_t la = 0x7f1000003000ull;
	uint64_t *leaf = map(t, la, 0x700000, 1, P | W);

	t->c->gpr[3] = la;
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	assert_true(*leaf & A);
	assert_false(*leaf & D);
	for (int l = 4; l >= 2; l--)
		assert_true(*upper(t, la, l) & A);
	t->c->gpr[0] = 77;
	assert_int_equal(run(t, STORE, sizeof(STORE)), -1);
	assert_true(*leaf & D);
	/* A 2 MiB leaf gets its D bit too. */
	uint64_t *big = map(t, 0x7f1000400000ull, 0x800000, 2, P | W);

	t->c->gpr[3] = 0x7f1000400010ull;
	assert_int_equal(run(t, STORE, sizeof(STORE)), -1);
	assert_true(*big & D);
}

static void expect_pf(struct t *t, const uint8_t *code, size_t len, uint64_t la, uint32_t err)
{
	assert_int_equal(run(t, code, len), 14);
	assert_int_equal(t->c->cr2, la);
	assert_int_equal(t->c->fault_err, err);
	assert_int_equal(t->c->rip, CODE_LA); /* the faulting instruction, not after it */
}

static void test_pf_codes(void **state)
{
	struct t *t = *state;
	uint64_t ro = 0x7f2000000000ull, sup = 0x7f2000001000ull, absent = 0x7f2000002000ull;
	uint64_t nxp = 0x7f2000003000ull;

	map(t, ro, 0x900000, 1, P | U);
	map(t, sup, 0x901000, 1, P | W);
	map(t, nxp, 0x902000, 1, P | W | U | NX);
	/* Not present, supervisor read: 0. */
	t->c->gpr[3] = absent + 8;
	expect_pf(t, LOAD, sizeof(LOAD), absent + 8, 0);
	/* Not present, write: W. */
	expect_pf(t, STORE, sizeof(STORE), absent + 8, 2);
	/* CPL 3: write to a read-only user page: P|W|U. */
	set_long_mode(t, 3);
	t->c->gpr[3] = ro;
	expect_pf(t, STORE, sizeof(STORE), ro, 7);
	/* CPL 3: read of a supervisor page: P|U. */
	t->c->gpr[3] = sup + 16;
	expect_pf(t, LOAD, sizeof(LOAD), sup + 16, 5);
	/* Reads of the user page are fine. */
	t->c->gpr[3] = ro;
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	/* A 2-page write whose second page is absent faults on the second page, writes nothing. */
	set_long_mode(t, 0);
	map(t, 0x7f2000004000ull, 0x903000, 1, P | W);
	t->c->gpr[3] = 0x7f2000004ffcull;
	t->c->gpr[0] = ~0ull;
	expect_pf(t, STORE, sizeof(STORE), 0x7f2000005000ull, 2);
	uint32_t before;

	assert_int_equal(gm_read(&t->gm, 0x903ffc, &before, 4), 0);
	assert_int_equal(before, 0);
	/* NX: jumping to an NX page faults on the fetch with I/D. */
	static const uint8_t jmp_rbx[] = {0xff, 0xe3};

	t->c->gpr[3] = nxp;
	assert_int_equal(run(t, jmp_rbx, sizeof(jmp_rbx)), 14);
	assert_int_equal(t->c->cr2, nxp);
	assert_int_equal(t->c->fault_err, 0x11);
	assert_int_equal(t->c->rip, nxp);
	/* NX set while EFER.NXE is clear is a reserved-bit fault. */
	t->c->efer &= ~0x800ull;
	emu_tlb_flush(t->c, true);
	t->c->gpr[3] = nxp;
	expect_pf(t, LOAD, sizeof(LOAD), nxp, 9);
	t->c->efer |= 0x800;
	/* Non-canonical addresses are #GP, not #PF. */
	t->c->gpr[3] = 0x0000800000000000ull;
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), 13);
}

static void test_wp(void **state)
{
	struct t *t = *state;
	uint64_t la = 0x7f3000000000ull;

	map(t, la, 0xa00000, 1, P);
	t->c->gpr[3] = la;
	t->c->gpr[0] = 5;
	t->c->cr0 &= ~0x10000ull;
	emu_tlb_flush(t->c, true);
	assert_int_equal(run(t, STORE, sizeof(STORE)), -1); /* WP=0: supervisor may write */
	t->c->cr0 |= 0x10000ull;
	emu_tlb_flush(t->c, true);
	expect_pf(t, STORE, sizeof(STORE), la, 3);
}

static void test_tlb_global_invlpg(void **state)
{
	struct t *t = *state;
	uint64_t la = 0x7f4000000000ull, glob = 0x7f4000001000ull;
	uint64_t x = 0x1111, y = 0x2222;
	uint64_t *leaf = map(t, la, 0xb00000, 1, P | W);
	uint64_t *gleaf = map(t, glob, 0xb02000, 1, P | W | G);

	gm_write(&t->gm, 0xb00000, &x, 8);
	gm_write(&t->gm, 0xb01000, &y, 8);
	gm_write(&t->gm, 0xb02000, &x, 8);
	gm_write(&t->gm, 0xb03000, &y, 8);
	t->c->gpr[3] = la;
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	t->c->gpr[3] = glob;
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	/* Repoint both PTEs without flushing: the TLB still has the old translation. */
	*leaf = 0xb01000 | P | W;
	*gleaf = 0xb03000 | P | W | G;
	t->c->gpr[3] = la;
	run(t, LOAD, sizeof(LOAD));
	assert_int_equal(t->c->gpr[0], x);
	/* A CR3-style flush drops the normal entry but keeps the global one. */
	emu_tlb_flush(t->c, false);
	run(t, LOAD, sizeof(LOAD));
	assert_int_equal(t->c->gpr[0], y);
	t->c->gpr[3] = glob;
	run(t, LOAD, sizeof(LOAD));
	assert_int_equal(t->c->gpr[0], x);
	/* INVLPG drops it. */
	emu_tlb_flush_page(t->c, glob);
	run(t, LOAD, sizeof(LOAD));
	assert_int_equal(t->c->gpr[0], y);
	/* INVLPG of any address inside a 2 MiB mapping drops the whole mapping. */
	uint64_t big = 0x7f4000200000ull;
	uint64_t *bleaf = map(t, big, 0xc00000, 2, P | W);

	gm_write(&t->gm, 0xc00000 + 0x5000, &x, 8);
	gm_write(&t->gm, 0xe00000 + 0x5000, &y, 8);
	t->c->gpr[3] = big + 0x5000;
	run(t, LOAD, sizeof(LOAD));
	assert_int_equal(t->c->gpr[0], x);
	*bleaf = 0xe00000 | P | W | PS;
	emu_tlb_flush_page(t->c, big + 0x1ff000);
	run(t, LOAD, sizeof(LOAD));
	assert_int_equal(t->c->gpr[0], y);
}

static void test_mmio_and_cross_page(void **state)
{
	struct t *t = *state;
	uint64_t mm = 0x7f5000000000ull, split = 0x7f5000010000ull;

	map(t, mm, 0xfeb00000ull, 1, P | W);
	t->c->gpr[3] = mm + 0x40;
	memset(&t->mmio, 0, sizeof(t->mmio));
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	assert_int_equal(t->mmio.count, 1);
	assert_int_equal(t->mmio.gpa, 0xfeb00040ull);
	assert_int_equal(t->mmio.size, 8);
	assert_int_equal(t->c->gpr[0], 0x1122334455667788ull);
	static const uint8_t store32[] = {0x89, 0x03}; /* mov [rbx], eax */

	t->c->gpr[0] = 0xdeadbeef;
	assert_int_equal(run(t, store32, sizeof(store32)), -1);
	assert_int_equal(t->mmio.count, 2);
	assert_int_equal(t->mmio.is_write, 1);
	assert_int_equal(t->mmio.size, 4);
	assert_int_equal(t->mmio.data, 0xdeadbeef);
	/* An 8-byte access split over two pages that are far apart physically. */
	map(t, split, 0xd00000, 1, P | W);
	map(t, split + 0x1000, 0x500000 + 0x7000, 1, P | W);
	uint64_t v = 0x0807060504030201ull;

	t->c->gpr[3] = split + 0xffd;
	t->c->gpr[0] = v;
	assert_int_equal(run(t, STORE, sizeof(STORE)), -1);
	uint8_t lo[3], hi[5];

	gm_read(&t->gm, 0xd00ffd, lo, 3);
	gm_read(&t->gm, 0x507000, hi, 5);
	assert_int_equal(lo[0], 1);
	assert_int_equal(lo[2], 3);
	assert_int_equal(hi[0], 4);
	assert_int_equal(hi[4], 8);
	t->c->gpr[0] = 0;
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	assert_int_equal(t->c->gpr[0], v);
}

static void test_dirty_log(void **state)
{
	struct t *t = *state;
	uint64_t la = 0x7f6000000000ull, pa = 0xf00000;
	uint64_t idx = gm_page_index(&t->gm, pa);

	map(t, la, pa, 1, P | W);
	t->c->gpr[3] = la;
	assert_int_equal(run(t, STORE, sizeof(STORE)), -1);
	assert_true(gm_test_clear_dirty(&t->gm, idx));
	/* The dirty log was reset: bump the flush generation, the next write is seen again. */
	__atomic_fetch_add(&t->ev.tlb_flush_gen, 1, __ATOMIC_SEQ_CST);
	assert_int_equal(run(t, STORE, sizeof(STORE)), -1);
	assert_true(gm_test_clear_dirty(&t->gm, idx));
	/* Reads do not dirty. */
	assert_int_equal(run(t, LOAD, sizeof(LOAD)), -1);
	assert_false(gm_test_clear_dirty(&t->gm, idx));
}

static void test_self_modifying(void **state)
{
	struct t *t = *state;
	/*
	 * mov byte [rip+1], 0x07   ; patch the imm8 of the next instruction
	 * mov al, 0x00             ; becomes mov al, 7
	 */
	static const uint8_t smc[] = {0xc6, 0x05, 0x01, 0x00, 0x00, 0x00, 0x07, 0xb0, 0x00};

	t->c->gpr[0] = 0;
	assert_int_equal(run(t, smc, sizeof(smc)), -1);
	assert_int_equal(t->c->gpr[0] & 0xff, 7);

	/* Code cached, then rewritten by a store from another page; the new code runs. */
	uint64_t fla = 0x7f7000000000ull, fpa = 0x340000;
	static const uint8_t f1[] = {0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3}; /* mov eax,1; ret */
	static const uint8_t call[] = {0xff, 0xd3};			  /* call rbx */

	map(t, fla, fpa, 1, P | W);
	gm_write(&t->gm, fpa, f1, sizeof(f1));
	t->c->gpr[3] = fla;
	t->c->gpr[4] = 0x7f7000000ff0ull;
	assert_int_equal(run(t, call, sizeof(call)), -1);
	assert_int_equal(t->c->gpr[0], 1);
	/* mov byte [rbx+1], 2 ; call rbx */
	static const uint8_t patch_call[] = {0xc6, 0x43, 0x01, 0x02, 0xff, 0xd3};

	t->c->gpr[4] = 0x7f7000000ff0ull;
	assert_int_equal(run(t, patch_call, sizeof(patch_call)), -1);
	assert_int_equal(t->c->gpr[0], 2);
	/* A device (DMA) write through gm_write invalidates it too. */
	uint8_t three = 3;

	gm_write(&t->gm, fpa + 1, &three, 1);
	t->c->gpr[4] = 0x7f7000000ff0ull;
	assert_int_equal(run(t, call, sizeof(call)), -1);
	assert_int_equal(t->c->gpr[0], 3);
}

static void test_cross_page_insn(void **state)
{
	struct t *t = *state;
	/* mov rax, imm64 split 3/7 over two pages whose frames are not adjacent. */
	uint64_t la = 0x7f8000000000ull;
	static const uint8_t mov[] = {0x48, 0xb8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
	static const uint8_t ud2[] = {0x0f, 0x0b};

	map(t, la, 0x360000, 1, P | W);
	map(t, la + 0x1000, 0x380000, 1, P | W);
	gm_write(&t->gm, 0x360000 + 0xffd, mov, 3);
	gm_write(&t->gm, 0x380000, mov + 3, 7);
	gm_write(&t->gm, 0x380007, ud2, 2);
	t->c->rip = la + 0xffd;
	assert_int_equal(emu_exec(t->c, 1000), VCPU_EXIT_ERROR);
	assert_int_equal(t->c->fault_vec, 6);
	assert_int_equal(t->c->rip, la + 0x1007);
	assert_int_equal(t->c->gpr[0], 0x8877665544332211ull);
	/* Remap the second page: the straddling instruction must see the new bytes. */
	static const uint8_t other[] = {0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x0f, 0x0b};

	gm_write(&t->gm, 0x390000, other, sizeof(other));
	map(t, la + 0x1000, 0x390000, 1, P | W);
	emu_tlb_flush_page(t->c, la + 0x1000);
	t->c->rip = la + 0xffd;
	assert_int_equal(emu_exec(t->c, 1000), VCPU_EXIT_ERROR);
	assert_int_equal(t->c->gpr[0], 0x0101010101010111ull);
	/* And a fetch fault on the second page reports its address. */
	map(t, la + 0x1000, 0x390000, 1, 0);
	emu_tlb_flush_page(t->c, la + 0x1000);
	t->c->rip = la + 0xffd;
	assert_int_equal(emu_exec(t->c, 1000), VCPU_EXIT_ERROR);
	assert_int_equal(t->c->fault_vec, 14);
	assert_int_equal(t->c->cr2, la + 0x1000);
	assert_int_equal(t->c->rip, la + 0xffd);
}

static void test_real_mode(void **state)
{
	struct t *t = *state;
	struct emu_cpu *c = t->c;
	/*
	 * 16-bit: mov ax, [bx+si+4]; add ax, 1; mov [di], ax; push ax; pop cx; ud2
	 * at CS=0x1000 (base 0x10000), DS=0x2000 (base 0x20000), SS=0x3000.
	 */
	static const uint8_t code[] = {0x8b, 0x40, 0x04, 0x05, 0x01, 0x00,
				       0x89, 0x05, 0x50, 0x59, 0x0f, 0x0b};
	uint16_t v = 0x4141;

	memset(c->seg, 0, sizeof(c->seg));
	for (int s = 0; s < 6; s++) {
		c->seg[s].limit = 0xffff;
		c->seg[s].present = 1;
		c->seg[s].s = 1;
		c->seg[s].type = 3;
	}
	c->seg[SEG_CS].sel = 0x1000;
	c->seg[SEG_CS].base = 0x10000;
	c->seg[SEG_DS].sel = 0x2000;
	c->seg[SEG_DS].base = 0x20000;
	c->seg[SEG_SS].sel = 0x3000;
	c->seg[SEG_SS].base = 0x30000;
	c->cr0 = 0x10;
	c->cr4 = 0;
	c->efer = 0;
	c->cpl = 0;
	emu_tlb_flush(c, true);
	gm_write(&t->gm, 0x10100, code, sizeof(code));
	gm_write(&t->gm, 0x20000 + 0x10 + 0x20 + 4, &v, 2);
	c->gpr[3] = 0xffff00000010ull; /* only BX counts */
	c->gpr[6] = 0x20;
	c->gpr[7] = 0x80;
	c->gpr[4] = 0x100;
	c->rip = 0x100;
	assert_int_equal(emu_exec(c, 1000), VCPU_EXIT_ERROR);
	assert_int_equal(c->fault_vec, 6);
	assert_int_equal(c->rip, 0x100 + sizeof(code) - 2);
	assert_int_equal(c->gpr[0] & 0xffff, 0x4142);
	assert_int_equal(c->gpr[1] & 0xffff, 0x4142);
	uint16_t out;

	gm_read(&t->gm, 0x20080, &out, 2);
	assert_int_equal(out, 0x4142);
	gm_read(&t->gm, 0x30000 + 0xfe, &out, 2);
	assert_int_equal(out, 0x4142);
	assert_int_equal(c->gpr[4], 0x100);
	set_long_mode(t, 0);
}

static void test_compat_mode(void **state)
{
	struct t *t = *state;
	struct emu_cpu *c = t->c;
	/*
	 * 32-bit compatibility-mode code: push imm32; pop ecx; call next; next: pop edx;
	 * mov eax, [ebx]; ud2. Stack pushes are 4 bytes, addresses 32 bits.
	 */
	static const uint8_t code[] = {0x68, 0x44, 0x33, 0x22, 0x11, 0x59, 0xe8, 0x00,
				       0x00, 0x00, 0x00, 0x5a, 0x8b, 0x03, 0x0f, 0x0b};
	uint32_t v = 0xcafe1234;

	map(t, 0x600000, 0x610000, 1, P | W | U);
	gm_write(&t->gm, 0x610100, &v, 4);
	c->seg[SEG_CS].l = 0;
	c->seg[SEG_CS].db = 1;
	c->seg[SEG_SS].db = 1;
	c->gpr[4] = 0x600800;
	c->gpr[3] = 0x600100;
	c->gpr[1] = c->gpr[2] = ~0ull;
	gm_write(&t->gm, CODE_PA, code, sizeof(code));
	c->rip = CODE_LA;
	assert_int_equal(emu_exec(c, 1000), VCPU_EXIT_ERROR);
	assert_int_equal(c->fault_vec, 6);
	assert_int_equal(c->rip, CODE_LA + sizeof(code) - 2);
	assert_int_equal(c->gpr[1], 0x11223344);
	assert_int_equal(c->gpr[2], CODE_LA + 11);
	assert_int_equal(c->gpr[0], 0xcafe1234);
	assert_int_equal(c->gpr[4], 0x600800);
	uint32_t ret;

	gm_read(&t->gm, 0x610800 - 4, &ret, 4);
	assert_int_equal(ret, CODE_LA + 11);
	set_long_mode(t, 0);
}

static void test_rdrand(void **state)
{
	struct t *t = *state;
	/* rdrand rax; setc bl; rdseed rcx; setc dl */
	static const uint8_t code[] = {0x48, 0x0f, 0xc7, 0xf0, 0x0f, 0x92, 0xc3,
				       0x48, 0x0f, 0xc7, 0xf9, 0x0f, 0x92, 0xc2};

	t->c->gpr[0] = t->c->gpr[1] = t->c->gpr[2] = t->c->gpr[3] = 0;
	assert_int_equal(run(t, code, sizeof(code)), -1);
	assert_int_equal(t->c->gpr[3], 1);
	assert_int_equal(t->c->gpr[2], 1);
	assert_true(t->c->gpr[0] != t->c->gpr[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_walk_sizes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_accessed_dirty, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pf_codes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_wp, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tlb_global_invlpg, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_mmio_and_cross_page, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_dirty_log, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_self_modifying, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cross_page_insn, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_real_mode, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compat_mode, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rdrand, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
