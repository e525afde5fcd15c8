/*
 * Memory reclaim on a real struct vm with a fake CPU backend whose
 * sync_dirty() can play a vCPU writing at the worst moment: zero pages are
 * released (checked with mincore()), data pages survive, whole 2 MiB ranges
 * count as such, pinned and re-written pages are kept, dirty bits survive for
 * other consumers, and release_range refuses bad ranges. Every test runs on
 * both backings (memfd and anonymous memory) with 4 KiB pages; the huge-page
 * tests then check that the sweep and the balloon split huge pages right.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "vmm/reclaim.h"
#include "vmm/vm.h"

#define MiB (1ull << 20)
#define PG GM_PAGE_SIZE

/* What the fake backend's sync_dirty() does on its nth call (1-based). */
struct fake_sync {
	int calls;
	int write_on_call; /* 0: never */
	uint64_t write_gpa;
	uint8_t write_byte;
};

static struct fake_sync fsync_state;

static int fake_vm_create(struct vm *vm)
{
	return 0;
}

static void fake_vm_destroy(struct vm *vm)
{
}

static int fake_vcpu_create(struct vcpu *v)
{
	return 0;
}

static void fake_vcpu_destroy(struct vcpu *v)
{
}

static enum vcpu_exit fake_run(struct vcpu *v)
{
	return VCPU_EXIT_HLT;
}

static void fake_kick(struct vcpu *v)
{
}

/* A "vCPU" write that the backend reports at this sync: memory changes, the bit is set. */
static int fake_sync_dirty(struct vm *vm)
{
	struct fake_sync *f = &fsync_state;

	f->calls++;
	if (f->calls == f->write_on_call) {
		uint8_t *p = gm_ptr(&vm->mem, f->write_gpa, 1);

		*p = f->write_byte;
		gm_mark_dirty(&vm->mem, (uint64_t)(p - vm->mem.hva), 1);
	}
	return 0;
}

static const struct cpu_backend fake_backend = {
    .name = "fake",
    .vm_create = fake_vm_create,
    .vm_destroy = fake_vm_destroy,
    .vcpu_create = fake_vcpu_create,
    .vcpu_destroy = fake_vcpu_destroy,
    .run = fake_run,
    .kick = fake_kick,
    .sync_dirty = fake_sync_dirty,
};

/* The backing of the VMs the next test makes (set by the group's setup). */
static enum gm_backing test_backing;

static void make_vm_huge(struct vm *vm, uint64_t size, enum gm_backing backing, bool huge)
{
	struct vm_config cfg = {
	    .mem_size = size, .mem_backing = backing, .ncpus = 1, .cpu = &fake_backend};

	memset(&fsync_state, 0, sizeof(fsync_state));
	assert_int_equal(vm_create(vm, &cfg), 0);
	assert_int_equal(vm->mem.backing, backing);
	/* The residency counts below are per 4 KiB page: no huge page may round them up. */
	if (!huge)
		assert_int_equal(madvise(vm->mem.hva, size, MADV_NOHUGEPAGE), 0);
}

static void make_vm(struct vm *vm, uint64_t size)
{
	make_vm_huge(vm, size, test_backing, false);
}

static int on_memfd(void **state)
{
	test_backing = GM_BACKING_MEMFD;
	return 0;
}

static int on_anon(void **state)
{
	test_backing = GM_BACKING_ANON;
	return 0;
}

static bool resident(struct vm *vm, uint64_t gpa)
{
	unsigned char v = 0;
	uint8_t *p = gm_ptr(&vm->mem, gpa & ~(PG - 1), PG);

	assert_non_null(p);
	assert_int_equal(mincore(p, PG, &v), 0);
	return v & 1;
}

/* Make a page resident and zero: written, then cleared, as a guest frees memory. */
static void touch_zero(struct vm *vm, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gm_ptr_w(&vm->mem, gpa, len);

	assert_non_null(p);
	for (uint64_t i = 0; i < len; i += PG)
		p[i] = 1;
	memset(p, 0, len);
}

static uint8_t pattern(uint64_t gpa)
{
	return (uint8_t)((gpa >> 12) * 31 + (gpa & 0xfff) * 7 + 1);
}

static void fill(struct vm *vm, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gm_ptr_w(&vm->mem, gpa, len);

	for (uint64_t i = 0; i < len; i++)
		p[i] = pattern(gpa + i);
}

static void check_fill(struct vm *vm, uint64_t gpa, uint64_t len)
{
	const uint8_t *p = gm_ptr(&vm->mem, gpa, len);

	for (uint64_t i = 0; i < len; i++) {
		if (p[i] != pattern(gpa + i))
			fail_msg("byte at %#llx is %#x, expected %#x",
				 (unsigned long long)(gpa + i), p[i], pattern(gpa + i));
	}
}

static void check_zero(struct vm *vm, uint64_t gpa, uint64_t len)
{
	const uint8_t *p = gm_ptr(&vm->mem, gpa, len);

	for (uint64_t i = 0; i < len; i++)
		assert_int_equal(p[i], 0);
}

static void test_page_is_zero(void **state)
{
	uint8_t *p = aligned_alloc(PG, PG);

	memset(p, 0, PG);
	assert_true(reclaim_page_is_zero(p));
	/* Every byte position counts, including those inside a 64-byte line. */
	for (unsigned i = 0; i < PG; i += 61) {
		p[i] = 0x80;
		assert_false(reclaim_page_is_zero(p));
		p[i] = 0;
	}
	p[PG - 1] = 1;
	assert_false(reclaim_page_is_zero(p));
	free(p);
}

/*
 * 16 MiB: data pages, zero 4 KiB pages between them, one zero 2 MiB chunk,
 * a chunk with a single data byte, and untouched memory.
 */
static void test_sweep_releases_zero_keeps_data(void **state)
{
	struct reclaim_stats st;
	struct vm vm;

	make_vm(&vm, 16 * MiB);
	fill(&vm, 0x100000, 4 * PG);	   /* data: pages 0x100..0x103 */
	touch_zero(&vm, 0x104000, 3 * PG); /* zero: 0x104..0x106 */
	fill(&vm, 0x107000, PG);
	touch_zero(&vm, 4 * MiB, 2 * MiB); /* a whole zero 2 MiB chunk */
	touch_zero(&vm, 8 * MiB, 2 * MiB);
	fill(&vm, 9 * MiB + 0x123, 1); /* ...and one with one data byte in it */

	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.scanned, 5 * PG + 3 * PG + 4 * MiB);
	assert_int_equal(st.nonresident, 16 * MiB - st.scanned);
	assert_int_equal(st.released_2m, 2 * MiB);
	assert_int_equal(st.released_4k, 3 * PG + 2 * MiB - PG);
	assert_int_equal(st.kept_dirty + st.kept_pinned, 0);
	assert_int_equal(vm.mem.released_sweep, st.released_2m + st.released_4k);
	assert_true(st.pauses >= 1);

	check_fill(&vm, 0x100000, 4 * PG);
	check_fill(&vm, 0x107000, PG);
	assert_int_equal(*(uint8_t *)gm_ptr(&vm.mem, 9 * MiB + 0x123, 1), pattern(9 * MiB + 0x123));
	for (uint64_t g = 0x100000; g < 0x108000; g += PG)
		assert_int_equal(resident(&vm, g), g < 0x104000 || g == 0x107000);
	for (uint64_t g = 4 * MiB; g < 6 * MiB; g += PG)
		assert_false(resident(&vm, g));
	for (uint64_t g = 8 * MiB; g < 10 * MiB; g += PG)
		assert_int_equal(resident(&vm, g), g == 9 * MiB);
	/* Untouched memory was not read (reading would have allocated it). */
	assert_false(resident(&vm, 12 * MiB));
	/* Released pages read as zero (this faults them back in). */
	check_zero(&vm, 0x104000, 3 * PG);
	check_zero(&vm, 4 * MiB, 2 * MiB);

	/* A second sweep finds nothing more to release but the pages just read. */
	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.released_4k, 3 * PG);
	assert_int_equal(st.released_2m, 2 * MiB);
	vm_destroy(&vm);
}

static void test_sweep_skips_pinned(void **state)
{
	struct reclaim_stats st;
	struct vm vm;

	make_vm(&vm, 8 * MiB);
	touch_zero(&vm, 2 * MiB, 2 * MiB);
	assert_int_equal(gm_pin(&vm.mem, 2 * MiB + 5 * PG + 100, 2 * PG), 0); /* pages 5..7 */
	assert_true(gm_page_pinned(&vm.mem, (2 * MiB >> 12) + 6));

	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.kept_pinned, 3 * PG);
	assert_int_equal(st.released_2m, 0);
	assert_int_equal(st.released_4k, 2 * MiB - 3 * PG);
	for (int i = 5; i < 8; i++)
		assert_true(resident(&vm, 2 * MiB + i * PG));
	assert_false(resident(&vm, 2 * MiB + 8 * PG));

	gm_unpin(&vm.mem, 2 * MiB + 5 * PG + 100, 2 * PG);
	assert_false(gm_page_pinned(&vm.mem, (2 * MiB >> 12) + 6));
	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.released_4k, 3 * PG);
	assert_int_equal(st.kept_pinned, 0);
	vm_destroy(&vm);
}

/*
 * A vCPU writes a zero page after it was scanned, before the final check:
 * the sync under the pause reports it, the page is kept with its byte.
 * Then the same with the write happening between taking the dirty bits
 * and the scan (the scan itself sees it).
 */
static void test_sweep_write_after_scan_kept(void **state)
{
	struct reclaim_stats st;
	struct vm vm;
	uint64_t gpa = 2 * MiB + 17 * PG + 9;

	make_vm(&vm, 4 * MiB);
	touch_zero(&vm, 2 * MiB, 2 * MiB);
	fsync_state.write_on_call = 3; /* 1: before taking bits, 2: after, 3: under the pause */
	fsync_state.write_gpa = gpa;
	fsync_state.write_byte = 0x5a;
	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(fsync_state.calls, 3);
	assert_int_equal(st.kept_dirty, PG);
	assert_int_equal(st.released_4k, 2 * MiB - PG);
	assert_int_equal(*(uint8_t *)gm_ptr(&vm.mem, gpa, 1), 0x5a);
	assert_true(resident(&vm, gpa));

	/* Written between taking the bits and the scan: not even a candidate. */
	touch_zero(&vm, 2 * MiB, 2 * MiB);
	memset(&fsync_state, 0, sizeof(fsync_state));
	fsync_state.write_on_call = 2;
	fsync_state.write_gpa = gpa + PG;
	fsync_state.write_byte = 0xa5;
	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.kept_dirty, 0);
	assert_int_equal(st.released_4k, 2 * MiB - PG);
	assert_int_equal(*(uint8_t *)gm_ptr(&vm.mem, gpa + PG, 1), 0xa5);
	assert_true(resident(&vm, gpa + PG));
	assert_false(resident(&vm, gpa));
	vm_destroy(&vm);
}

static bool dirty_bit(struct vm *vm, uint64_t gpa)
{
	uint64_t p = gm_page_index(&vm->mem, gpa);

	return (vm->mem.dirty[p / 64] >> (p % 64)) & 1;
}

/* Dirty bits taken for the sweep are handed back: other consumers miss nothing. */
static void test_sweep_keeps_dirty_bits(void **state)
{
	struct reclaim_stats st;
	struct vm vm;

	make_vm(&vm, 4 * MiB);
	fill(&vm, 0x10000, PG);
	touch_zero(&vm, 0x20000, 2 * PG);
	assert_true(gm_test_clear_dirty(&vm.mem, 0x21));
	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.released_4k, 2 * PG);
	assert_true(dirty_bit(&vm, 0x10000));
	assert_true(dirty_bit(&vm, 0x20000));
	assert_false(dirty_bit(&vm, 0x21000));
	assert_false(dirty_bit(&vm, 0x30000));
	vm_destroy(&vm);
}

/* RAM above 4 GiB (the high region) is swept too; the hole is not RAM. */
static void test_sweep_high_memory(void **state)
{
	struct reclaim_stats st;
	struct vm vm;

	make_vm(&vm, MEM_HOLE_START + 4 * MiB);
	touch_zero(&vm, MEM_HIGH_START + 2 * MiB, 2 * MiB);
	fill(&vm, MEM_HIGH_START + PG, PG);
	touch_zero(&vm, MEM_HOLE_START - PG, PG);
	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.released_2m, 2 * MiB);
	assert_int_equal(st.released_4k, PG);
	assert_int_equal(st.scanned, 2 * MiB + 2 * PG);
	check_fill(&vm, MEM_HIGH_START + PG, PG);
	assert_false(resident(&vm, MEM_HIGH_START + 3 * MiB));
	assert_int_equal(reclaim_release_range(&vm, MEM_HOLE_START, PG), -EFAULT);
	vm_destroy(&vm);
}

static void test_release_range(void **state)
{
	struct vm vm;

	make_vm(&vm, 8 * MiB);
	fill(&vm, 1 * MiB, 64 * PG);
	memset(vm.mem.dirty, 0, (vm.mem.npages + 63) / 64 * 8);

	/* Refused: unaligned, empty, outside RAM, wrapping. */
	assert_int_equal(reclaim_release_range(&vm, 1 * MiB + 1, PG), -EINVAL);
	assert_int_equal(reclaim_release_range(&vm, 1 * MiB, PG + 1), -EINVAL);
	assert_int_equal(reclaim_release_range(&vm, 1 * MiB, 0), -EINVAL);
	assert_int_equal(reclaim_release_range(&vm, 8 * MiB - PG, 2 * PG), -EFAULT);
	assert_int_equal(reclaim_release_range(&vm, 8 * MiB, PG), -EFAULT);
	assert_int_equal(reclaim_release_range(&vm, UINT64_MAX - PG + 1, 2 * PG), -EFAULT);

	/* One pinned page refuses the whole range; nothing is released. */
	assert_int_equal(gm_pin(&vm.mem, 1 * MiB + 10 * PG, 1), 0);
	assert_int_equal(reclaim_release_range(&vm, 1 * MiB, 16 * PG), -EBUSY);
	check_fill(&vm, 1 * MiB, 64 * PG);
	assert_false(gm_page_claimed(&vm.mem, (1 * MiB >> 12) + 3));
	gm_unpin(&vm.mem, 1 * MiB + 10 * PG, 1);
	assert_int_equal(vm.mem.released_balloon, 0);

	assert_int_equal(reclaim_release_range(&vm, 1 * MiB, 16 * PG), 0);
	assert_int_equal(vm.mem.released_balloon, 16 * PG);
	assert_int_equal(
	    reclaim_release_range_src(&vm, 1 * MiB + 32 * PG, 8 * PG, RECLAIM_FREE_REPORT), 0);
	assert_int_equal(vm.mem.released_free_report, 8 * PG);
	for (int i = 0; i < 64; i++) {
		bool gone = i < 16 || (i >= 32 && i < 40);

		assert_int_equal(resident(&vm, 1 * MiB + i * PG), !gone);
		assert_int_equal(dirty_bit(&vm, 1 * MiB + i * PG), gone);
	}
	check_zero(&vm, 1 * MiB, 16 * PG);
	check_fill(&vm, 1 * MiB + 16 * PG, 16 * PG);
	check_fill(&vm, 1 * MiB + 40 * PG, 24 * PG);
	vm_destroy(&vm);
}

static void test_pin_api(void **state)
{
	struct vm vm;
	struct guest_mem *gm;

	make_vm(&vm, 4 * MiB);
	gm = &vm.mem;
	assert_int_equal(gm_pin(gm, 4 * MiB - 8, 16), -EFAULT);
	assert_int_equal(gm_pin(gm, UINT64_MAX - 4, 16), -EFAULT);
	assert_int_equal(gm_pin(gm, 0, 0), 0);
	/* Counts nest; a range crossing pages pins both. */
	assert_int_equal(gm_pin(gm, PG - 4, 8), 0);
	assert_int_equal(gm_pin(gm, PG, 1), 0);
	assert_int_equal(gm->pins[0], 1);
	assert_int_equal(gm->pins[1], 2);
	assert_false(gm_claim_page(gm, 1));
	gm_unpin(gm, PG - 4, 8);
	assert_false(gm_page_pinned(gm, 0));
	assert_true(gm_page_pinned(gm, 1));
	gm_unpin(gm, PG, 1);
	assert_true(gm_claim_page(gm, 1));
	assert_false(gm_claim_page(gm, 1));
	assert_true(gm_page_claimed(gm, 1));
	gm_unclaim_page(gm, 1);
	assert_int_equal(gm->pins[1], 0);

	/* A saturated count is refused and leaves nothing pinned. */
	gm->pins[2] = GM_PIN_MAX;
	assert_int_equal(gm_pin(gm, PG, 2 * PG), -EBUSY);
	assert_int_equal(gm->pins[1], 0);
	assert_int_equal(gm->pins[2], GM_PIN_MAX);
	gm->pins[2] = 0;
	vm_destroy(&vm);
}

struct writer {
	struct vm *vm;
	uint64_t gpa;
	int done;
};

static void *write_thread(void *arg)
{
	struct writer *w = arg;
	uint8_t b = 0x77;

	assert_int_equal(gm_write(&w->vm->mem, w->gpa, &b, 1), 0);
	__atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* gm_write() to a page under release waits for the release, then lands. */
static void test_write_waits_for_claim(void **state)
{
	struct writer w;
	pthread_t t;
	struct vm vm;
	uint64_t page;

	make_vm(&vm, 4 * MiB);
	w = (struct writer){.vm = &vm, .gpa = 3 * PG + 5};
	page = 3;
	assert_true(gm_claim_page(&vm.mem, page));
	assert_int_equal(pthread_create(&t, NULL, write_thread, &w), 0);
	usleep(50000);
	assert_int_equal(__atomic_load_n(&w.done, __ATOMIC_SEQ_CST), 0);
	gm_unclaim_page(&vm.mem, page);
	pthread_join(t, NULL);
	assert_int_equal(w.done, 1);
	assert_int_equal(*(uint8_t *)gm_ptr(&vm.mem, w.gpa, 1), 0x77);
	assert_int_equal(vm.mem.pins[page], 0);
	vm_destroy(&vm);
}

/*
 * A device thread writes single bytes (often zero, often into zero pages)
 * through gm_write() while sweeps run back to back: at the end every page
 * holds exactly the last byte written to it.
 */
struct hammer {
	struct vm *vm;
	uint8_t *last; /* last byte written per page, at offset 0x800 */
	uint64_t pages;
	int stop;
	uint64_t writes;
};

static void *hammer_thread(void *arg)
{
	struct hammer *h = arg;
	uint64_t x = 88172645463325252ull;

	while (!__atomic_load_n(&h->stop, __ATOMIC_SEQ_CST)) {
		uint64_t page;
		uint8_t b;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		page = x % h->pages;
		b = (x >> 32) & 1 ? (uint8_t)(x >> 40) : 0;
		assert_int_equal(gm_write(&h->vm->mem, page * PG + 0x800, &b, 1), 0);
		h->last[page] = b;
		h->writes++;
	}
	return NULL;
}

static void test_sweep_concurrent_device_writes(void **state)
{
	struct hammer h = {0};
	struct reclaim_stats st;
	uint64_t released = 0;
	pthread_t t;
	struct vm vm;
	int sweeps = 0;

	make_vm(&vm, 8 * MiB);
	h.vm = &vm;
	h.pages = 1024;
	h.last = calloc(h.pages, 1);
	touch_zero(&vm, 0, h.pages * PG);
	assert_int_equal(pthread_create(&t, NULL, hammer_thread, &h), 0);
	for (uint64_t t0 = (uint64_t)time(NULL); (uint64_t)time(NULL) - t0 < 2 || sweeps < 20;
	     sweeps++) {
		assert_int_equal(reclaim_sweep(&vm, &st), 0);
		released += st.released_4k + st.released_2m;
	}
	__atomic_store_n(&h.stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(t, NULL);
	print_message("%d sweeps, %llu writes, %llu KiB released\n", sweeps,
		      (unsigned long long)h.writes, (unsigned long long)(released >> 10));
	assert_true(released > 0);
	for (uint64_t p = 0; p < h.pages; p++) {
		const uint8_t *q = gm_ptr(&vm.mem, p * PG, PG);

		for (uint64_t i = 0; i < PG; i++)
			assert_int_equal(q[i], i == 0x800 ? h.last[p] : 0);
	}
	free(h.last);
	vm_destroy(&vm);
}

static uint64_t huge_bytes(struct vm *vm)
{
	uint64_t n;

	assert_int_equal(gm_huge_bytes(&vm->mem, &n), 0);
	return n;
}

/*
 * 8 MiB in four huge pages: A all zero, B zero but for two data pages, C
 * all data, D all data with five 4 KiB pages then ballooned out of it. The
 * sweep frees A whole (released_2m) and splits B (released_4k) keeping its
 * data; the balloon splits D without touching the pages around its holes.
 */
static void thp_split(enum gm_backing backing)
{
	const uint64_t A = 0, B = 2 * MiB, C = 4 * MiB, D = 6 * MiB;
	struct reclaim_stats st;
	struct vm vm;
	uint64_t have;

	if (!gm_backing_thp_allowed(backing)) {
		print_message("SKIP: this host gives no transparent huge pages to %s memory "
			      "(/sys/kernel/mm/transparent_hugepage)\n",
			      gm_backing_name(backing));
		skip();
	}
	make_vm_huge(&vm, 8 * MiB, backing, true);
	touch_zero(&vm, A, 4 * MiB);
	fill(&vm, B + 3 * PG, PG);
	fill(&vm, B + 300 * PG + 17, 100);
	fill(&vm, C, 4 * MiB);
	have = huge_bytes(&vm);
	if (have != 8 * MiB) {
		print_message("SKIP: only %llu of 8 MiB got huge pages (host memory fragmented?)\n",
			      (unsigned long long)(have >> 10));
		vm_destroy(&vm);
		skip();
	}

	assert_int_equal(reclaim_sweep(&vm, &st), 0);
	assert_int_equal(st.scanned, 8 * MiB);
	assert_int_equal(st.released_2m, 2 * MiB);
	assert_int_equal(st.released_4k, 2 * MiB - 2 * PG);
	assert_int_equal(st.kept_dirty + st.kept_pinned, 0);
	assert_int_equal(huge_bytes(&vm), 4 * MiB); /* C and D */
	for (uint64_t g = A; g < C; g += PG)
		assert_int_equal(resident(&vm, g), g == B + 3 * PG || g == B + 300 * PG);
	check_fill(&vm, B + 3 * PG, PG);
	check_fill(&vm, B + 300 * PG + 17, 100);
	check_zero(&vm, B + 300 * PG, 17);
	check_zero(&vm, B + 300 * PG + 117, PG - 117);
	check_zero(&vm, A, 2 * MiB + 3 * PG);
	check_zero(&vm, B + 4 * PG, 296 * PG);
	check_zero(&vm, B + 301 * PG, 211 * PG);

	/* Balloon: 4 KiB pages out of D's huge page; the neighbours keep their bytes. */
	assert_int_equal(reclaim_release_range(&vm, D + 10 * PG, 4 * PG), 0);
	assert_int_equal(reclaim_release_range(&vm, D + 511 * PG, PG), 0);
	assert_int_equal(vm.mem.released_balloon, 5 * PG);
	assert_int_equal(huge_bytes(&vm), 2 * MiB); /* C */
	for (uint64_t i = 0; i < 512; i++) {
		bool gone = (i >= 10 && i < 14) || i == 511;

		assert_int_equal(resident(&vm, D + i * PG), !gone);
	}
	check_fill(&vm, D, 10 * PG);
	check_fill(&vm, D + 14 * PG, 497 * PG);
	check_zero(&vm, D + 10 * PG, 4 * PG);
	check_zero(&vm, D + 511 * PG, PG);
	check_fill(&vm, C, 2 * MiB);
	vm_destroy(&vm);
}

static void test_thp_split_anon(void **state)
{
	thp_split(GM_BACKING_ANON);
}

static void test_thp_split_memfd(void **state)
{
	thp_split(GM_BACKING_MEMFD);
}

/* The backing names the CLI takes; "file" is only ever the result of a restore. */
static void test_backing_names(void **state)
{
	enum gm_backing b = GM_BACKING_FILE;

	assert_int_equal(gm_backing_parse("anon", &b), 0);
	assert_int_equal(b, GM_BACKING_ANON);
	assert_int_equal(gm_backing_parse("memfd", &b), 0);
	assert_int_equal(b, GM_BACKING_MEMFD);
	assert_int_equal(gm_backing_parse("auto", &b), 0);
	assert_int_equal(b, GM_BACKING_AUTO);
	assert_int_equal(gm_backing_parse("file", &b), -EINVAL);
	assert_int_equal(gm_backing_parse("", &b), -EINVAL);
	assert_string_equal(gm_backing_name(GM_BACKING_ANON), "anon");
	assert_true(gm_backing_auto() == GM_BACKING_MEMFD || gm_backing_auto() == GM_BACKING_ANON);
}

#define BOTH(t) cmocka_unit_test_setup(t, on_memfd), cmocka_unit_test_setup(t, on_anon)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_page_is_zero),
	    BOTH(test_sweep_releases_zero_keeps_data),
	    BOTH(test_sweep_skips_pinned),
	    BOTH(test_sweep_write_after_scan_kept),
	    BOTH(test_sweep_keeps_dirty_bits),
	    BOTH(test_sweep_high_memory),
	    BOTH(test_release_range),
	    BOTH(test_pin_api),
	    BOTH(test_write_waits_for_claim),
	    BOTH(test_sweep_concurrent_device_writes),
	    cmocka_unit_test(test_thp_split_anon),
	    cmocka_unit_test(test_thp_split_memfd),
	    cmocka_unit_test(test_backing_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
