/*
 * Live memory snapshot (src/state/livemem.c) on guest memory without a VM:
 * writers race the copier through a host pointer (a vCPU), gm_write() (a
 * device) and read() into guest memory (the kernel, as a disk read does);
 * the memory file must hold exactly the content at the instant of
 * livemem_arm() (with what was written between livemem_prepare() and it),
 * zero pages as holes, and the writers' data must all be in
 * guest memory afterwards. Both backings: memfd (shmem) and anonymous.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "state/state_int.h"

#define RAM (32ull << 20)
#define NPAGES (RAM >> GM_PAGE_SHIFT)

static char dir[] = "/tmp/tern-livemem-XXXXXX";
static char mem_path[64], src_path[64];

/* A page's content: its index and a generation in every 8 bytes (generation 0: zero page). */
static void fill(uint8_t *p, uint64_t pg, uint64_t gen)
{
	uint64_t v = gen ? (gen << 32) | pg : 0;

	for (unsigned i = 0; i < GM_PAGE_SIZE; i += 8)
		memcpy(p + i, &v, 8);
}

static uint64_t gen_of(const uint8_t *p, uint64_t pg)
{
	uint64_t v;

	memcpy(&v, p, 8);
	for (unsigned i = 8; i < GM_PAGE_SIZE; i += 8)
		if (memcmp(p + i, &v, 8))
			return UINT64_MAX; /* torn */
	if (v == 0)
		return 0;
	return (v & 0xffffffffu) == pg ? v >> 32 : UINT64_MAX;
}

/* Generation 1 on two pages in three, the rest never touched. */
static bool initially_data(uint64_t pg)
{
	return pg % 3 != 2;
}

/* Written (generation 3) after livemem_prepare(), before the instant. */
static bool early(uint64_t pg)
{
	return pg % 7 == 0;
}

/* What the memory file must hold for a page. */
static uint64_t instant_gen(uint64_t pg)
{
	return early(pg) ? 3 : initially_data(pg) ? 1 : 0;
}

static void mem_init(struct guest_mem *gm, bool anon)
{
	assert_int_equal(gm_init_backing(gm, RAM, anon ? GM_BACKING_ANON : GM_BACKING_MEMFD), 0);
	for (uint64_t pg = 0; pg < NPAGES; pg++)
		if (initially_data(pg))
			fill(gm->hva + (pg << GM_PAGE_SHIFT), pg, 1);
}

struct writer {
	struct guest_mem *gm;
	int kind; /* 0: host pointer, 1: gm_write(), 2: read() from a file */
	uint64_t start, written;
	pthread_t t;
};

/* Each writer rewrites every third page from its own start with generation 2. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[GM_PAGE_SIZE];
	int fd = w->kind == 2 ? open(src_path, O_RDONLY) : -1;

	for (uint64_t pg = w->start; pg < NPAGES; pg += 3) {
		fill(buf, pg, 2);
		if (w->kind == 0)
			memcpy(w->gm->hva + (pg << GM_PAGE_SHIFT), buf, GM_PAGE_SIZE);
		else if (w->kind == 1)
			assert_int_equal(gm_write(w->gm, pg << GM_PAGE_SHIFT, buf, GM_PAGE_SIZE),
					 0);
		else
			assert_int_equal(pread(fd, w->gm->hva + (pg << GM_PAGE_SHIFT), GM_PAGE_SIZE,
					       (off_t)(pg << GM_PAGE_SHIFT)),
					 GM_PAGE_SIZE);
		w->written++;
	}
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* The file the kernel copies from: generation 2 of every page. */
static void make_src(void)
{
	uint8_t buf[GM_PAGE_SIZE];
	int fd = open(src_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	for (uint64_t pg = 0; pg < NPAGES; pg++) {
		fill(buf, pg, 2);
		assert_int_equal(write(fd, buf, sizeof(buf)), sizeof(buf));
	}
	close(fd);
}

static void check_file(void)
{
	uint8_t buf[GM_PAGE_SIZE];
	int fd = open(mem_path, O_RDONLY);
	off_t data;

	assert_true(fd >= 0);
	for (uint64_t pg = 0; pg < NPAGES; pg++) {
		uint64_t gen;

		assert_int_equal(
		    pread(fd, buf, sizeof(buf), (off_t)(SNAP_MEM_DATA_OFF + (pg << GM_PAGE_SHIFT))),
		    sizeof(buf));
		gen = gen_of(buf, pg);
		if (gen != instant_gen(pg))
			fail_msg("page %llu holds generation %lld in the file",
				 (unsigned long long)pg, (long long)gen);
	}
	/* Zero pages stay holes: the first page of RAM has data, the third none. */
	data = lseek(fd, (off_t)(SNAP_MEM_DATA_OFF + 2 * GM_PAGE_SIZE), SEEK_DATA);
	assert_int_equal(data, (off_t)(SNAP_MEM_DATA_OFF + 3 * GM_PAGE_SIZE));
	close(fd);
}

static void unpinned(struct guest_mem *gm)
{
	for (uint64_t pg = 0; pg < NPAGES; pg++)
		assert_false(gm_page_pinned(gm, pg));
}

static void run_live(bool anon)
{
	static const uint8_t id[SNAP_ID_LEN] = {1, 2, 3};
	struct writer w[3];
	struct guest_mem gm;
	struct snap_mem_out o;
	struct livemem *lm;
	int err;

	mem_init(&gm, anon);
	assert_int_equal(snap_mem_create(&o, mem_path, RAM, id), 0);
	err = livemem_prepare(&lm, &gm, o.fd);
	if (err) {
		snap_mem_abort(&o);
		gm_destroy(&gm);
		print_message("userfaultfd write protection unavailable here: %s\n",
			      strerror(-err));
		skip();
	}
	for (uint64_t pg = 0; pg < NPAGES; pg++)
		if (early(pg))
			fill(gm.hva + (pg << GM_PAGE_SHIFT), pg, 3);
	assert_int_equal(livemem_arm(lm), 0);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct writer){.gm = &gm, .kind = i, .start = (uint64_t)i};
		assert_int_equal(pthread_create(&w[i].t, NULL, writer_main, &w[i]), 0);
	}
	assert_int_equal(livemem_copy(lm), 0);
	for (int i = 0; i < 3; i++)
		pthread_join(w[i].t, NULL);
	print_message("%llu pages copied before write\n",
		      (unsigned long long)livemem_cbw_pages(lm));
	livemem_free(lm);
	assert_int_equal(snap_mem_commit(&o), 0);
	check_file();
	unpinned(&gm);
	/* Every write reached guest memory, and it is writable as before. */
	for (uint64_t pg = 0; pg < NPAGES; pg++)
		assert_int_equal(gen_of(gm.hva + (pg << GM_PAGE_SHIFT), pg), 2);
	gm.hva[0] = 7;
	gm_destroy(&gm);
}

static void test_live_shmem(void **state)
{
	run_live(false);
}

static void test_live_anon(void **state)
{
	run_live(true);
}

/* A memory file that cannot be written: the copy fails, writers are not held, nothing pinned. */
static void test_copy_error(void **state)
{
	struct writer w = {.kind = 0, .start = 0};
	struct guest_mem gm;
	struct livemem *lm;
	int fd, err;

	mem_init(&gm, false);
	w.gm = &gm;
	fd = open(src_path, O_RDONLY);
	assert_true(fd >= 0);
	err = livemem_prepare(&lm, &gm, fd);
	if (err) {
		close(fd);
		gm_destroy(&gm);
		skip();
	}
	assert_int_equal(livemem_arm(lm), 0);
	assert_int_equal(pthread_create(&w.t, NULL, writer_main, &w), 0);
	assert_int_equal(livemem_copy(lm), -EBADF);
	livemem_free(lm);
	pthread_join(w.t, NULL);
	assert_int_equal(w.written, (NPAGES + 2) / 3);
	unpinned(&gm);
	close(fd);
	gm_destroy(&gm);
}

static int setup(void **state)
{
	if (!mkdtemp(dir))
		return -1;
	snprintf(mem_path, sizeof(mem_path), "%s/m.mem", dir);
	snprintf(src_path, sizeof(src_path), "%s/src", dir);
	make_src();
	return 0;
}

static int teardown(void **state)
{
	unlink(mem_path);
	unlink(src_path);
	rmdir(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_live_shmem),
	    cmocka_unit_test(test_live_anon),
	    cmocka_unit_test(test_copy_error),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
