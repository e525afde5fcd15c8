/*
 * qcow2 images tern writes: random writes, zeroes and discards of random
 * sizes at random offsets, mirrored into a reference buffer, across cluster
 * sizes, refcount widths and both versions; then qemu-img must find no errors
 * and read the same bytes as the reference.
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

struct rw_case {
	unsigned cluster_bits, version, refcount_order;
	uint64_t size;
	int ops;
	uint64_t max_io;
	uint32_t min_rt_clusters; /* the refcount table must have grown to this */
};

static uint32_t file_be32(const char *path, off_t off)
{
	uint8_t b[4];
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, 4, off), 4);
	close(fd);
	return (uint32_t)b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3];
}

static void write_ref_file(const char *path, const uint8_t *ref, uint64_t size)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(ref, 1, size, f), size);
	assert_int_equal(fclose(f), 0);
}

static void verify_whole(struct blockdev *bd, const uint8_t *ref, uint64_t size)
{
	uint8_t *buf = malloc(size);

	assert_non_null(buf);
	assert_int_equal(blk_pread(bd, buf, size, 0), 0);
	for (uint64_t i = 0; i < size; i++) {
		if (buf[i] != ref[i])
			fail_msg("byte %llu: got 0x%02x want 0x%02x", (unsigned long long)i, buf[i],
				 ref[i]);
	}
	free(buf);
}

/* Model of discard: whole clusters read as zero afterwards, partial ones keep data. */
static void ref_discard(uint8_t *ref, uint64_t size, uint64_t cs, uint64_t off, uint64_t len)
{
	uint64_t a = (off + cs - 1) & ~(cs - 1), b = (off + len) & ~(cs - 1);

	if (off + len == size)
		b = size;
	if (a < b)
		memset(ref + a, 0, b - a);
}

static void one_op(struct blockdev *bd, uint8_t *ref, const struct rw_case *c, uint64_t *seed,
		   uint8_t *buf)
{
	uint64_t len = 1 + qt_rand(seed) % c->max_io, off, kind = qt_rand(seed) % 10;

	if (len > c->size)
		len = c->size;
	off = qt_rand(seed) % (c->size - len + 1);
	if (qt_rand(seed) % 3 == 0) /* favour aligned requests too */
		off &= ~((1ull << c->cluster_bits) - 1);
	if (kind < 7) {
		for (uint64_t i = 0; i < len; i++)
			buf[i] = (uint8_t)qt_rand(seed);
		buf[0] |= 1;
		assert_int_equal(blk_pwrite(bd, buf, len, off), 0);
		memcpy(ref + off, buf, len);
	} else if (kind < 9) {
		assert_int_equal(blk_write_zeroes(bd, off, len), 0);
		memset(ref + off, 0, len);
	} else {
		assert_int_equal(blk_discard(bd, off, len), 0);
		ref_discard(ref, c->size, 1ull << c->cluster_bits, off, len);
	}
}

static void run_case(const struct rw_case *c, uint64_t seed)
{
	char *dir = qt_mkdtemp(), *img = qt_path(dir, "t.qcow2"), *raw = qt_path(dir, "ref.raw");
	struct qcow2_create_opts o = {.size = c->size,
				      .cluster_bits = c->cluster_bits,
				      .version = c->version,
				      .refcount_order = c->refcount_order};
	uint8_t *ref = calloc(1, c->size), *buf = malloc(c->max_io);
	struct blockdev *bd;

	assert_non_null(ref);
	assert_non_null(buf);
	assert_int_equal(qcow2_create(img, &o), 0);
	assert_int_equal(blk_open(img, false, &bd), 0);
	assert_string_equal(bd->ops->format, "qcow2");
	assert_int_equal(bd->size, c->size);
	for (int i = 0; i < c->ops; i++) {
		one_op(bd, ref, c, &seed, buf);
		if (i % 97 == 0)
			assert_int_equal(blk_flush(bd), 0);
		if (i % 211 == 0) { /* state must survive close and reopen */
			blk_close(bd);
			assert_int_equal(blk_open(img, false, &bd), 0);
		}
	}
	verify_whole(bd, ref, c->size);
	blk_close(bd);
	assert_int_equal(blk_open(img, true, &bd), 0);
	verify_whole(bd, ref, c->size);
	{
		struct qcow2_check_result res;

		assert_int_equal(qcow2_check(bd, false, &res), 0);
		assert_int_equal(res.corruptions, 0);
		assert_int_equal(res.leaks, 0);
	}
	blk_close(bd);
	assert_true(file_be32(img, 56) >= c->min_rt_clusters);
	if (qt_have_qemu_img()) {
		write_ref_file(raw, ref, c->size);
		assert_int_equal(qt_sh("qemu-img check -q '%s'", img), 0);
		assert_int_equal(qt_sh("qemu-img compare -q -f qcow2 -F raw '%s' '%s'", img, raw),
				 0);
	}
	free(ref);
	free(buf);
	free(img);
	free(raw);
	qt_rmrf(dir);
}

static void test_v3_64k(void **state)
{
	struct rw_case c = {16, 3, 4, 48 << 20, 600, 300000, 1};

	run_case(&c, 0x1234567);
}

static void test_v3_512_grows_refcount_table(void **state)
{
	/* 512-byte clusters: the refcount table has to grow several times. */
	struct rw_case c = {9, 3, 4, 24 << 20, 400, 200000, 2};

	run_case(&c, 42);
}

static void test_v3_4k_refcount1(void **state)
{
	struct rw_case c = {12, 3, 0, 8 << 20, 500, 20000, 1};

	run_case(&c, 7);
}

static void test_v3_2m_refcount64(void **state)
{
	struct rw_case c = {21, 3, 6, (64 << 20) + 12345, 200, 5 << 20, 1};

	run_case(&c, 99);
}

static void test_v2_4k(void **state)
{
	struct rw_case c = {12, 2, 4, 6 << 20, 500, 70000, 1};

	run_case(&c, 2024);
}

static void test_v3_odd_size_small_io(void **state)
{
	struct rw_case c = {10, 3, 3, 1000003, 1500, 3000, 1};

	run_case(&c, 555);
}

/*
 * The file as it stands between any two requests is what a crash would
 * leave: qemu-img may find leaked clusters there, never corruption.
 */
static void test_crash_points_only_leak(void **state)
{
	char *dir = qt_mkdtemp(), *img = qt_path(dir, "c.qcow2"), *snap = qt_path(dir, "s.qcow2");
	struct qcow2_create_opts o = {.size = 16 << 20, .cluster_bits = 12};
	uint8_t buf[20000];
	uint64_t s = 4242;
	struct blockdev *bd;

	if (!qt_have_qemu_img()) {
		free(img);
		free(snap);
		qt_rmrf(dir);
		skip();
	}
	assert_int_equal(qcow2_create(img, &o), 0);
	assert_int_equal(blk_open(img, false, &bd), 0);
	for (int i = 0; i < 40; i++) {
		uint64_t len = 1 + qt_rand(&s) % sizeof(buf), off = qt_rand(&s) % (o.size - len);
		int rc;

		memset(buf, i + 1, len);
		if (i % 4 == 3)
			assert_int_equal(blk_discard(bd, off, len), 0);
		else
			assert_int_equal(blk_pwrite(bd, buf, len, off), 0);
		assert_int_equal(qt_sh("cp '%s' '%s'", img, snap), 0);
		rc = qt_sh("qemu-img check -q '%s' >/dev/null 2>&1", snap);
		if (rc != 0 && rc != 3)
			fail_msg("after request %d qemu-img check exits %d", i, rc);
	}
	blk_close(bd);
	assert_int_equal(qt_sh("qemu-img check -q '%s'", img), 0);
	free(img);
	free(snap);
	qt_rmrf(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_v3_64k),
	    cmocka_unit_test(test_v3_512_grows_refcount_table),
	    cmocka_unit_test(test_v3_4k_refcount1),
	    cmocka_unit_test(test_v3_2m_refcount64),
	    cmocka_unit_test(test_v2_4k),
	    cmocka_unit_test(test_v3_odd_size_small_io),
	    cmocka_unit_test(test_crash_points_only_leak),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
