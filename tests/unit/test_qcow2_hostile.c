/*
 * Corrupt and hostile qcow2 images: each is refused with a clean -errno (and
 * a message in the log), never read out of bounds (ASan watches).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "block/block.h"
#include "block/qcow2.h"
#include "qcow2_util.h"

static char *dir;

static int setup(void **state)
{
	dir = qt_mkdtemp();
	return dir ? 0 : -1;
}

static int teardown(void **state)
{
	qt_rmrf(dir);
	return 0;
}

static void put(const char *path, uint64_t off, const void *b, size_t n)
{
	int fd = open(path, O_WRONLY);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, b, n, (off_t)off), (ssize_t)n);
	close(fd);
}

static void put32(const char *path, uint64_t off, uint32_t v)
{
	uint8_t b[4] = {v >> 24, v >> 16, v >> 8, v};

	put(path, off, b, 4);
}

static void put64(const char *path, uint64_t off, uint64_t v)
{
	put32(path, off, (uint32_t)(v >> 32));
	put32(path, off + 4, (uint32_t)v);
}

static uint64_t get64(const char *path, uint64_t off)
{
	uint8_t b[8];
	uint64_t v = 0;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, 8, (off_t)off), 8);
	close(fd);
	for (int i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

/* A sound 4 MiB image (64 KiB clusters) with data at the start: one L2 table. */
static char *good_image(const char *name)
{
	char *p = qt_path(dir, name);
	struct qcow2_create_opts o = {.size = 4 << 20};
	struct blockdev *bd;
	char data[1000];

	memset(data, 0x7e, sizeof(data));
	assert_int_equal(qcow2_create(p, &o), 0);
	assert_int_equal(blk_open(p, false, &bd), 0);
	assert_int_equal(blk_pwrite(bd, data, sizeof(data), 0), 0);
	blk_close(bd);
	return p;
}

static int open_q(const char *p, bool ro)
{
	struct blockdev *bd = NULL;
	int r = blk_open_fmt(p, "qcow2", ro, &bd);

	if (r == 0)
		blk_close(bd);
	return r;
}

static int read_first(const char *p)
{
	struct blockdev *bd = NULL;
	char buf[4096];
	int r = blk_open_fmt(p, "qcow2", true, &bd);

	if (r < 0)
		return r;
	r = blk_pread(bd, buf, sizeof(buf), 0);
	blk_close(bd);
	return r;
}

static void test_header_fields(void **state)
{
	static const struct {
		uint64_t off;
		int width;
		uint64_t val;
		int err;
	} cases[] = {
	    {0, 4, 0x514649fa, -EINVAL},   /* magic */
	    {4, 4, 4, -ENOTSUP},	   /* version */
	    {20, 4, 8, -EINVAL},	   /* cluster_bits too small */
	    {20, 4, 22, -EINVAL},	   /* cluster_bits too large */
	    {20, 4, 0xffffffff, -EINVAL},  /* shift overflow bait */
	    {24, 8, 1ull << 62, -EINVAL},  /* virtual size */
	    {24, 8, 1ull << 40, -EINVAL},  /* size beyond what L1 covers */
	    {32, 4, 1, -ENOTSUP},	   /* encryption */
	    {36, 4, 0x10000000, -EINVAL},  /* huge L1 */
	    {40, 8, 0x30001, -EINVAL},	   /* L1 misaligned */
	    {40, 8, 1ull << 50, -EINVAL},  /* L1 past the file */
	    {40, 8, 0x10000, -EINVAL},	   /* L1 over the refcount table */
	    {48, 8, 0x10008, -EINVAL},	   /* refcount table misaligned */
	    {48, 8, 1ull << 45, -EINVAL},  /* refcount table past the file */
	    {56, 4, 0, -EINVAL},	   /* no refcount table */
	    {56, 4, 0xfffffff, -EINVAL},   /* huge refcount table */
	    {72, 8, 1ull << 40, -ENOTSUP}, /* unknown incompatible feature */
	    {72, 8, 1ull << 2, -ENOTSUP},  /* external data file */
	    {96, 4, 7, -EINVAL},	   /* refcount order */
	    {100, 4, 50, -EINVAL},	   /* header length too short */
	    {100, 4, 0x20000, -EINVAL},	   /* header length past the cluster */
	    {100, 4, 108, -EINVAL},	   /* header length not 8-aligned */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *p = good_image("hdr.qcow2");

		if (cases[i].width == 4)
			put32(p, cases[i].off, (uint32_t)cases[i].val);
		else
			put64(p, cases[i].off, cases[i].val);
		print_message("case %zu: field at %llu\n", i, (unsigned long long)cases[i].off);
		assert_int_equal(open_q(p, true), cases[i].err);
		free(p);
	}
}

static void test_feature_bits_and_compression_type(void **state)
{
	char *p = good_image("feat.qcow2");

	put64(p, 72, 1); /* dirty: readable, not writable */
	assert_int_equal(open_q(p, true), 0);
	assert_int_equal(open_q(p, false), -EROFS);
	put64(p, 72, 2); /* corrupt */
	assert_int_equal(open_q(p, true), 0);
	assert_int_equal(open_q(p, false), -EROFS);
	put64(p, 72, 8); /* compression type field: zstd is refused */
	put(p, 104, "\x01", 1);
	assert_int_equal(open_q(p, true), -ENOTSUP);
	put(p, 104, "\x00", 1);
	assert_int_equal(open_q(p, true), 0);
	free(p);
}

static void test_short_file(void **state)
{
	char *p = good_image("short.qcow2");

	assert_int_equal(truncate(p, 300), 0);
	assert_int_equal(open_q(p, true), -EINVAL);
	free(p);
}

static void test_bad_l1_entries(void **state)
{
	static const uint64_t bad[] = {
	    0x8000000000000000ull | (1ull << 40), /* L2 past the end of the file */
	    0x8000000000000000ull | 0x50200,	  /* L2 misaligned */
	    0x8000000000000000ull | 0x10000,	  /* L2 on the refcount table */
	    0x8000000000000000ull | 0x30000,	  /* L2 on the L1 table */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *p = good_image("l1.qcow2");

		put64(p, get64(p, 40), bad[i]);
		assert_int_equal(read_first(p), -EIO);
		free(p);
	}
}

static void test_bad_l2_entries(void **state)
{
	static const uint64_t bad[] = {
	    0x8000000000000000ull | (1ull << 44), /* data past the end */
	    0x8000000000000000ull | 0x50100,	  /* misaligned: low bits */
	    0x8000000000000000ull | 0x0,	  /* header as data: refused */
	    0x4000000000000000ull | (1ull << 50), /* compressed data past the end */
	    0x4000000000000000ull | 0x20000,	  /* compressed garbage (the refblock) */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *p = good_image("l2.qcow2");
		uint64_t l2 = get64(p, get64(p, 40)) & 0x00fffffffffffe00ull;

		put64(p, l2,
		      bad[i] == 0x8000000000000000ull ? 0x8000000000000001ull | 0x10000 : bad[i]);
		print_message("case %zu\n", i);
		/* A zero flag with an offset reads as zeroes (valid); others fail. */
		if (bad[i] == 0x8000000000000000ull)
			assert_int_equal(read_first(p), 0);
		else
			assert_int_equal(read_first(p), -EIO);
		free(p);
	}
}

static void test_writes_never_hit_metadata(void **state)
{
	char *p = good_image("ovl.qcow2");
	uint64_t l2 = get64(p, get64(p, 40)) & 0x00fffffffffffe00ull;
	struct blockdev *bd;
	char buf[512] = {1};

	/* An L2 entry claiming the refcount table as a data cluster. */
	put64(p, l2, 0x8000000000000000ull | 0x10000);
	assert_int_equal(blk_open(p, false, &bd), 0);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), 0), -EIO);
	blk_close(bd);
	free(p);
}

static void test_refcount_mismatch_found_by_check(void **state)
{
	char *p = good_image("rc.qcow2");
	uint64_t rb = get64(p, get64(p, 48));
	struct qcow2_check_result res;
	struct blockdev *bd;

	put(p, rb + 2 * 4, "\x00\x00", 2);  /* cluster 4 (the L2 table): refcount 0 */
	put(p, rb + 2 * 20, "\x00\x01", 2); /* cluster 20: a leak */
	assert_int_equal(blk_open(p, true, &bd), 0);
	assert_int_equal(qcow2_check(bd, false, &res), 0);
	assert_true(res.corruptions >= 1);
	assert_int_equal(res.leaks, 1);
	blk_close(bd);
	free(p);
}

static void test_leak_repair(void **state)
{
	char *p = good_image("leak.qcow2");
	uint64_t rb = get64(p, get64(p, 48));
	struct qcow2_check_result res;
	struct blockdev *bd;

	put(p, rb + 2 * 30, "\x00\x01", 2);
	assert_int_equal(blk_open(p, false, &bd), 0);
	assert_int_equal(qcow2_check(bd, true, &res), 0);
	assert_int_equal(res.leaks, 1);
	assert_int_equal(res.repaired, 1);
	blk_close(bd);
	assert_int_equal(blk_open(p, true, &bd), 0);
	assert_int_equal(qcow2_check(bd, false, &res), 0);
	assert_int_equal(res.leaks + res.corruptions, 0);
	blk_close(bd);
	free(p);
}

static void test_backing_name_and_extensions(void **state)
{
	char *p = good_image("ext.qcow2");

	put64(p, 8, 0xfff0); /* backing name crossing the header cluster */
	put32(p, 16, 100);
	assert_int_equal(open_q(p, true), -EINVAL);
	put64(p, 8, 200);
	put32(p, 16, 5000); /* too long */
	assert_int_equal(open_q(p, true), -EINVAL);
	put64(p, 8, 0);
	put32(p, 16, 0);
	put32(p, 112, 0x12345678); /* an extension whose length runs past the cluster */
	put32(p, 116, 0x7ffffff0);
	assert_int_equal(open_q(p, true), -EINVAL);
	put32(p, 112, 0xe2792aca); /* backing format extension with a NUL inside */
	put32(p, 116, 4);
	put(p, 120, "ra\0w", 4);
	assert_int_equal(open_q(p, true), -EINVAL);
	free(p);
}

static void test_backing_loops_and_depth(void **state)
{
	char *a = qt_path(dir, "loop_a.qcow2"), *b = qt_path(dir, "loop_b.qcow2");
	struct qcow2_create_opts o = {.size = 1 << 20, .backing_fmt = "qcow2"};
	struct blockdev *bd;
	char name[64];

	/* a -> b -> a */
	o.backing = "loop_b.qcow2";
	assert_int_equal(qcow2_create(a, &o), 0);
	o.backing = "loop_a.qcow2";
	assert_int_equal(qcow2_create(b, &o), 0);
	assert_int_equal(open_q(a, true), -ELOOP);
	/* self */
	o.backing = "loop_a.qcow2";
	assert_int_equal(qcow2_create(a, &o), 0);
	assert_int_equal(open_q(a, true), -ELOOP);
	/* a chain of 80 distinct images is too deep; 20 is fine */
	for (int i = 0; i < 80; i++) {
		char *p;

		snprintf(name, sizeof(name), "deep%d.qcow2", i);
		p = qt_path(dir, name);
		snprintf(name, sizeof(name), "deep%d.qcow2", i - 1);
		o.backing = i ? name : NULL;
		assert_int_equal(qcow2_create(p, &o), 0);
		free(p);
	}
	{
		char *p20 = qt_path(dir, "deep20.qcow2"), *p79 = qt_path(dir, "deep79.qcow2");

		assert_int_equal(blk_open(p20, true, &bd), 0);
		blk_close(bd);
		assert_int_equal(open_q(p79, true), -ELOOP);
		free(p20);
		free(p79);
	}
	free(a);
	free(b);
}

static void test_missing_backing(void **state)
{
	char *p = qt_path(dir, "orphan.qcow2");
	struct qcow2_create_opts o = {.size = 1 << 20, .backing = "no-such-base.qcow2"};

	assert_int_equal(qcow2_create(p, &o), 0);
	assert_int_equal(open_q(p, true), -ENOENT);
	/* a character device as backing file would stream forever: refused */
	o.backing = "/dev/zero";
	assert_int_equal(qcow2_create(p, &o), 0);
	assert_int_equal(open_q(p, true), -EINVAL);
	/* an image must not make tern connect anywhere through its backing name */
	o.backing = "nbd://127.0.0.1:10809/export";
	o.backing_fmt = "raw";
	assert_int_equal(qcow2_create(p, &o), 0);
	assert_int_equal(open_q(p, true), -EPERM);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_header_fields),
	    cmocka_unit_test(test_feature_bits_and_compression_type),
	    cmocka_unit_test(test_short_file),
	    cmocka_unit_test(test_bad_l1_entries),
	    cmocka_unit_test(test_bad_l2_entries),
	    cmocka_unit_test(test_writes_never_hit_metadata),
	    cmocka_unit_test(test_refcount_mismatch_found_by_check),
	    cmocka_unit_test(test_leak_repair),
	    cmocka_unit_test(test_backing_name_and_extensions),
	    cmocka_unit_test(test_backing_loops_and_depth),
	    cmocka_unit_test(test_missing_backing),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
