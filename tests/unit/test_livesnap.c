/*
 * Live disk snapshots at the block layer: the copy filter over raw and
 * qcow2 disks while a writer thread keeps changing them (the target must
 * equal the disk at the instant the filter was armed, the disk must hold
 * every write), discard and write-zeroes through the filter, a second
 * snapshot after the first finished, bad options, and the overlay form.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "block/block.h"
#include "block/livesnap.h"
#include "block/qcow2.h"
#include "qcow2_util.h"

#define DISK (16u << 20)
#define WBLK 4096u

struct fix {
	char *dir;
	char disk[512], target[512];
	uint8_t *before; /* the disk at the snapshot instant */
	uint8_t *after;	 /* what the disk must hold at the end */
};

static void fill_rand(uint8_t *p, size_t n, uint64_t *seed)
{
	for (size_t i = 0; i < n; i += 8) {
		uint64_t v = qt_rand(seed);

		memcpy(p + i, &v, n - i < 8 ? n - i : 8);
	}
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	f->dir = qt_mkdtemp();
	f->before = malloc(DISK);
	f->after = malloc(DISK);
	if (!f->dir || !f->before || !f->after)
		return -1;
	snprintf(f->disk, sizeof(f->disk), "%s/disk", f->dir);
	snprintf(f->target, sizeof(f->target), "%s/snap", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	qt_rmrf(f->dir);
	free(f->before);
	free(f->after);
	free(f);
	return 0;
}

/* A disk of the format with random content, zero in its second quarter (skipped by the copy). */
static struct blockdev *make_disk(struct fix *f, const char *fmt)
{
	struct blockdev *bd;
	uint64_t seed = 42;

	fill_rand(f->before, DISK, &seed);
	memset(f->before + DISK / 4, 0, DISK / 4);
	if (!strcmp(fmt, "qcow2")) {
		struct qcow2_create_opts o = {.size = DISK, .cluster_bits = 16};

		assert_int_equal(qcow2_create(f->disk, &o), 0);
	} else {
		assert_int_equal(qt_sh("truncate -s %u '%s'", DISK, f->disk), 0);
	}
	assert_int_equal(blk_open(f->disk, false, &bd), 0);
	assert_int_equal(blk_pwrite(bd, f->before, DISK, 0), 0);
	memcpy(f->after, f->before, DISK);
	return bd;
}

static void assert_file_equals(const char *path, const char *fmt, const uint8_t *want)
{
	struct blockdev *bd;
	uint8_t *got = malloc(DISK);

	assert_non_null(got);
	assert_int_equal(blk_open_fmt(path, fmt, true, &bd), 0);
	assert_int_equal(bd->size, DISK);
	assert_int_equal(blk_pread(bd, got, DISK, 0), 0);
	for (uint64_t i = 0; i < DISK; i += WBLK)
		if (memcmp(got + i, want + i, WBLK))
			fail_msg("%s differs at offset %#llx", path, (unsigned long long)i);
	blk_close(bd);
	free(got);
}

struct writer {
	struct blockdev *bd;
	struct fix *f;
	uint64_t seed;
	int nwrites;
};

/* Writes spread over the disk, the last block first: the copier starts at block 0. */
static void *writer_thread(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[3 * WBLK];

	for (int i = 0; i < w->nwrites; i++) {
		uint64_t blocks = DISK / WBLK - 2;
		uint64_t b = i == 0 ? blocks : qt_rand(&w->seed) % blocks;
		uint64_t len = (1 + qt_rand(&w->seed) % 3) * WBLK;
		uint64_t off = b * WBLK;

		if (off + len > DISK)
			len = DISK - off;
		fill_rand(buf, len, &w->seed);
		assert_int_equal(blk_pwrite(w->bd, buf, len, off), 0);
		memcpy(w->f->after + off, buf, len);
	}
	return NULL;
}

static void snapshot_under_writes(struct fix *f, const char *disk_fmt, const char *target_fmt,
				  uint32_t bs)
{
	/* At 64 MiB/s the copier needs 250 ms: the writer gets ahead of it. */
	struct livesnap_opts o = {
	    .target = f->target, .format = target_fmt, .block_size = bs, .rate = 64u << 20};
	struct blockdev *base = make_disk(f, disk_fmt), *filter;
	struct writer w = {.f = f, .seed = 7, .nwrites = 400};
	struct livesnap_status st;
	struct livesnap *ls;
	pthread_t t;

	assert_int_equal(livesnap_prepare(DISK, &o, &ls), 0);
	assert_int_equal(livesnap_arm(ls, base, &filter), 0);
	assert_true(livesnap_is_filter(filter));
	w.bd = filter;
	assert_int_equal(pthread_create(&t, NULL, writer_thread, &w), 0);
	pthread_join(t, NULL);
	assert_int_equal(livesnap_wait(filter), 0);
	livesnap_get_status(filter, &st);
	assert_int_equal(st.state, LIVESNAP_DONE);
	assert_int_equal(st.copied, st.blocks);
	assert_int_equal(st.blocks, DISK / (bs ? bs : LIVESNAP_DEFAULT_BLOCK));
	/* The very first write went to the last block, long before the copier got there. */
	assert_true(st.cbw >= 1);
	assert_true(st.seconds >= 0.2);
	/* The zero quarter was not written: the target stays sparse there. */
	assert_true(st.bytes <= (uint64_t)DISK * 3 / 4 + st.block_size);
	/* Writes after completion pass straight through. */
	assert_int_equal(blk_pwrite(filter, "late", 4, 0), 0);
	memcpy(f->after, "late", 4);
	assert_int_equal(blk_flush(filter), 0);
	blk_close(filter);
	assert_file_equals(f->target, target_fmt, f->before);
	assert_file_equals(f->disk, disk_fmt, f->after);
	if (!strcmp(disk_fmt, "qcow2") && qt_have_qemu_img())
		assert_int_equal(qt_sh("qemu-img check -q '%s'", f->disk), 0);
	if (!strcmp(target_fmt, "qcow2") && qt_have_qemu_img())
		assert_int_equal(qt_sh("qemu-img check -q '%s'", f->target), 0);
}

static void test_raw_to_raw(void **state)
{
	snapshot_under_writes(*state, "raw", "raw", 4096);
}

static void test_qcow2_to_raw(void **state)
{
	snapshot_under_writes(*state, "qcow2", "raw", 0);
}

static void test_raw_to_qcow2(void **state)
{
	snapshot_under_writes(*state, "raw", "qcow2", 65536);
}

/* A disk whose size is not a whole number of copy blocks: its short last block is copied too. */
static void test_short_last_block(void **state)
{
	const uint64_t size = DISK - 3 * WBLK; /* 64 KiB blocks: the last one holds 52 KiB */
	struct fix *f = *state;
	struct livesnap_opts o = {.target = f->target, .block_size = 65536};
	struct blockdev *base, *filter, *bd;
	uint8_t *got = malloc(size);
	struct livesnap *ls;
	uint64_t seed = 9;

	assert_non_null(got);
	fill_rand(f->before, size, &seed);
	assert_int_equal(qt_sh("truncate -s %llu '%s'", (unsigned long long)size, f->disk), 0);
	assert_int_equal(blk_open(f->disk, false, &base), 0);
	assert_int_equal(blk_pwrite(base, f->before, size, 0), 0);
	assert_int_equal(livesnap_prepare(size, &o, &ls), 0);
	assert_int_equal(livesnap_arm(ls, base, &filter), 0);
	assert_int_equal(livesnap_wait(filter), 0);
	blk_close(filter);
	assert_int_equal(blk_open_fmt(f->target, "raw", true, &bd), 0);
	assert_int_equal(bd->size, size);
	assert_int_equal(blk_pread(bd, got, size, 0), 0);
	assert_memory_equal(got + size - 65536, f->before + size - 65536, 65536);
	assert_memory_equal(got, f->before, size);
	blk_close(bd);
	free(got);
}

static void test_zeroes_and_discard(void **state)
{
	struct fix *f = *state;
	struct livesnap_opts o = {.target = f->target, .block_size = 4096, .rate = 64u << 20};
	struct blockdev *base = make_disk(f, "raw"), *filter;
	struct livesnap *ls;

	assert_int_equal(livesnap_prepare(DISK, &o, &ls), 0);
	assert_int_equal(livesnap_arm(ls, base, &filter), 0);
	/* At the end of the disk, so the copier has not reached them. */
	assert_int_equal(blk_write_zeroes(filter, DISK - 8 * WBLK, 4 * WBLK), 0);
	assert_int_equal(blk_discard(filter, DISK - 4 * WBLK, 4 * WBLK), 0);
	assert_int_equal(livesnap_wait(filter), 0);
	blk_close(filter);
	assert_file_equals(f->target, "raw", f->before);
}

/* A finished filter comes off, and a second snapshot stacks on the same disk. */
static void test_unwrap_and_again(void **state)
{
	struct fix *f = *state;
	struct livesnap_opts o = {.target = f->target};
	struct blockdev *base = make_disk(f, "raw"), *filter, *inner;
	struct livesnap *ls;
	char second[600];

	assert_int_equal(livesnap_prepare(DISK, &o, &ls), 0);
	assert_int_equal(livesnap_arm(ls, base, &filter), 0);
	assert_int_equal(livesnap_wait(filter), 0);
	assert_ptr_equal(livesnap_base(filter), base);
	inner = livesnap_unwrap(filter);
	assert_ptr_equal(inner, base);
	assert_int_equal(blk_pwrite(base, "XYZ", 3, 100), 0);
	memcpy(f->before + 100, "XYZ", 3);
	snprintf(second, sizeof(second), "%s/snap2", f->dir);
	o.target = second;
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), 0);
	assert_int_equal(livesnap_arm(ls, base, &filter), 0);
	assert_int_equal(livesnap_wait(filter), 0);
	blk_close(filter);
	assert_file_equals(second, "raw", f->before);
}

static void test_bad_options(void **state)
{
	struct fix *f = *state;
	struct livesnap *ls;
	struct livesnap_opts o = {.target = f->target};

	o.block_size = 3000;
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), -EINVAL);
	o.block_size = 1024;
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), -EINVAL);
	o.block_size = 0;
	o.format = "vmdk";
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), -EINVAL);
	o.format = NULL;
	o.target = "";
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), -EINVAL);
	/* An existing target is never overwritten. */
	o.target = f->target;
	assert_int_equal(qt_sh("echo keep >'%s'", f->target), 0);
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), -EEXIST);
	assert_int_equal(qt_sh("grep -q keep '%s'", f->target), 0);
	/* A prepared job that is discarded leaves no file. */
	unlink(f->target);
	assert_int_equal(livesnap_prepare(DISK, &o, &ls), 0);
	livesnap_discard(ls);
	assert_int_equal(access(f->target, F_OK), -1);
}

static void test_overlay(void **state)
{
	struct fix *f = *state;
	struct blockdev *base = make_disk(f, "qcow2"), *ov;
	struct qcow2_info qi;
	char abs[600];

	assert_int_equal(blk_pwrite(base, "unflushed", 9, 5000), 0);
	memcpy(f->before + 5000, "unflushed", 9);
	assert_int_equal(livesnap_overlay_create(base, f->target), 0);
	assert_int_equal(livesnap_overlay_create(base, f->target), -EEXIST);
	assert_int_equal(livesnap_overlay_open(base, f->target, &ov), 0);
	blk_close(base);
	qcow2_get_info(ov, &qi);
	assert_non_null(qi.backing_name);
	assert_non_null(realpath(f->disk, abs));
	assert_string_equal(qi.backing_name, abs);
	assert_string_equal(qi.backing_fmt, "qcow2");
	memcpy(f->after, f->before, DISK);
	assert_int_equal(blk_pwrite(ov, "new", 3, DISK - 100), 0);
	memcpy(f->after + DISK - 100, "new", 3);
	blk_close(ov);
	assert_file_equals(f->disk, "qcow2", f->before);
	assert_file_equals(f->target, "qcow2", f->after);
	if (qt_have_qemu_img()) {
		assert_int_equal(qt_sh("qemu-img check -q '%s'", f->target), 0);
		assert_int_equal(qt_sh("qemu-img compare -q '%s' '%s' >/dev/null; test $? = 1",
				       f->disk, f->target),
				 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_raw_to_raw, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_qcow2_to_raw, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_raw_to_qcow2, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_short_last_block, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_zeroes_and_discard, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unwrap_and_again, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_overlay, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
