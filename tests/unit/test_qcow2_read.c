/*
 * qcow2 images qemu-img makes, read by tern: cluster sizes 512 B..2 MiB,
 * backing chains three deep (raw and qcow2, relative names, a backing file
 * shorter than its overlay), compressed clusters, version 2 images. The
 * expected bytes come from `qemu-img convert -O raw`. Then tern writes on top
 * of such chains and qemu-img must still find the image sound.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "block/block.h"
#include "block/qcow2.h"
#include "qcow2_util.h"

static char *dir;

static int setup(void **state)
{
	if (!qt_have_qemu_img()) {
		print_message("qemu-img/qemu-io not installed (Debian: qemu-utils)\n");
		return -1;
	}
	dir = qt_mkdtemp();
	return dir ? 0 : -1;
}

static int teardown(void **state)
{
	qt_rmrf(dir);
	return 0;
}

static uint8_t *slurp(const char *path, uint64_t *size)
{
	struct stat st;
	uint8_t *b;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	b = malloc(st.st_size ? (size_t)st.st_size : 1);
	assert_non_null(b);
	assert_int_equal(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*size = (uint64_t)st.st_size;
	return b;
}

/* Everything tern reads from img equals what qemu-img converts it to. */
static void assert_reads_like_qemu(const char *img)
{
	char *raw = qt_path(dir, "expect.raw");
	struct blockdev *bd;
	uint64_t size;
	uint8_t *want, *got;

	assert_int_equal(qt_sh("qemu-img convert -O raw '%s' '%s'", img, raw), 0);
	want = slurp(raw, &size);
	assert_int_equal(blk_open(img, true, &bd), 0);
	assert_int_equal(bd->size, size);
	got = malloc(size ? size : 1);
	assert_non_null(got);
	/* Odd-sized reads across cluster boundaries, then the whole disk at once. */
	for (uint64_t off = 0; off < size; off += 12289) {
		uint64_t n = size - off < 12289 ? size - off : 12289;

		assert_int_equal(blk_pread(bd, got + off, n, off), 0);
	}
	assert_memory_equal(got, want, size);
	memset(got, 0x55, size);
	assert_int_equal(blk_pread(bd, got, size, 0), 0);
	assert_memory_equal(got, want, size);
	blk_close(bd);
	free(want);
	free(got);
	unlink(raw);
	free(raw);
}

/* A raw file with random, zero and repetitive (compressible) stretches. */
static void make_seed(const char *path, uint64_t size, uint64_t seed)
{
	uint8_t *b = malloc(size);
	FILE *f;

	assert_non_null(b);
	for (uint64_t off = 0; off < size; off += 65536) {
		uint64_t n = size - off < 65536 ? size - off : 65536, kind = qt_rand(&seed) % 3;

		for (uint64_t i = 0; i < n; i++)
			b[off + i] = kind == 0	 ? (uint8_t)qt_rand(&seed)
				     : kind == 1 ? 0
						 : (uint8_t)("tern qcow2 "[i % 11]);
	}
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b, 1, size, f), size);
	fclose(f);
	free(b);
}

static void test_cluster_sizes(void **state)
{
	static const char *const sizes[] = {"512", "1k", "4k", "64k", "256k", "2M"};
	char *seed = qt_path(dir, "seed.raw"), *img = qt_path(dir, "cs.qcow2");

	make_seed(seed, 5 << 20, 1);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		assert_int_equal(qt_sh("qemu-img convert -O qcow2 -o cluster_size=%s '%s' '%s'",
				       sizes[i], seed, img),
				 0);
		assert_int_equal(
		    qt_sh("qemu-io -c 'write -P 0x5c 1000 70000' -c 'write -z 2M 300k' "
			  "-c 'discard 4M 128k' '%s' >/dev/null",
			  img),
		    0);
		assert_reads_like_qemu(img);
	}
	free(seed);
	free(img);
}

static void test_compressed(void **state)
{
	char *seed = qt_path(dir, "cseed.raw"), *img = qt_path(dir, "c.qcow2");
	static const char *const sizes[] = {"4k", "64k", "2M"};
	struct qcow2_check_result res;
	struct blockdev *bd;

	make_seed(seed, 6 << 20, 2);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		assert_int_equal(qt_sh("qemu-img convert -c -O qcow2 -o cluster_size=%s '%s' '%s'",
				       sizes[i], seed, img),
				 0);
		assert_reads_like_qemu(img);
		assert_int_equal(blk_open(img, true, &bd), 0);
		assert_int_equal(qcow2_check(bd, false, &res), 0);
		assert_true(res.compressed > 0);
		assert_int_equal(res.corruptions + res.leaks, 0);
		blk_close(bd);
	}
	free(seed);
	free(img);
}

/* base.raw (3 MiB) <- mid.qcow2 (v2, 4 KiB clusters) <- top.qcow2 (8 MiB), relative names. */
static void make_chain(void)
{
	char *base = qt_path(dir, "base.raw");

	make_seed(base, 3 << 20, 3);
	assert_int_equal(
	    qt_sh("cd '%s' && qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k "
		  "-b base.raw -F raw mid.qcow2 5M && "
		  "qemu-io -c 'write -P 0xa1 100k 300k' -c 'write -P 0xa2 4M 200k' "
		  "-c 'write -z 1M 64k' mid.qcow2 >/dev/null && "
		  "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 8M && "
		  "qemu-io -c 'write -P 0xb1 200k 10k' -c 'write -P 0xb2 7M 1000' "
		  "-c 'write -z 2M 128k' top.qcow2 >/dev/null",
		  dir),
	    0);
	free(base);
}

static void test_chain(void **state)
{
	char *top = qt_path(dir, "top.qcow2"), *mid = qt_path(dir, "mid.qcow2");
	struct qcow2_info qi;
	struct blockdev *bd;

	make_chain();
	assert_reads_like_qemu(mid);
	assert_reads_like_qemu(top);
	assert_int_equal(blk_open(top, true, &bd), 0);
	qcow2_get_info(bd, &qi);
	assert_string_equal(qi.backing_name, "mid.qcow2");
	assert_string_equal(qi.backing_fmt, "qcow2");
	assert_non_null(qi.backing);
	assert_int_equal(qi.backing->size, 5 << 20);
	blk_close(bd);
	free(top);
	free(mid);
}

/* tern writes over img (random data, zeroes, discards); qemu-img must agree on every byte. */
static void write_and_compare(const char *img, uint64_t s)
{
	char *ref = qt_path(dir, "ref.raw");
	uint64_t size;
	uint8_t *want, buf[70000];
	struct blockdev *bd;
	int fd;

	assert_int_equal(qt_sh("qemu-img convert -O raw '%s' '%s'", img, ref), 0);
	want = slurp(ref, &size);
	assert_int_equal(blk_open(img, false, &bd), 0);
	for (int i = 0; i < 300; i++) {
		uint64_t len = 1 + qt_rand(&s) % sizeof(buf), off = qt_rand(&s) % (size - len);

		for (uint64_t j = 0; j < len; j++)
			buf[j] = (uint8_t)qt_rand(&s);
		if (i % 5 == 4) {
			assert_int_equal(blk_write_zeroes(bd, off, len), 0);
			memset(want + off, 0, len);
		} else {
			assert_int_equal(blk_pwrite(bd, buf, len, off), 0);
			memcpy(want + off, buf, len);
		}
	}
	blk_close(bd);
	fd = open(ref, O_WRONLY);
	assert_int_equal(pwrite(fd, want, size, 0), (ssize_t)size);
	close(fd);
	assert_int_equal(qt_sh("qemu-img check -q '%s'", img), 0);
	assert_int_equal(qt_sh("qemu-img compare -q -F raw '%s' '%s'", img, ref), 0);
	free(want);
	unlink(ref);
	free(ref);
}

static void test_write_over_chain(void **state)
{
	char *top = qt_path(dir, "top.qcow2");

	make_chain();
	write_and_compare(top, 77);
	free(top);
}

/* Overwriting compressed clusters, partly and wholly, frees their sectors correctly. */
static void test_write_over_compressed(void **state)
{
	char *seed = qt_path(dir, "wcseed.raw"), *img = qt_path(dir, "wc.qcow2");

	make_seed(seed, 4 << 20, 9);
	assert_int_equal(
	    qt_sh("qemu-img convert -c -O qcow2 -o cluster_size=4k '%s' '%s'", seed, img), 0);
	write_and_compare(img, 31);
	free(seed);
	free(img);
}

static void test_v2_plain(void **state)
{
	char *img = qt_path(dir, "v2.qcow2");

	assert_int_equal(qt_sh("qemu-img create -q -f qcow2 -o compat=0.10 '%s' 3M && "
			       "qemu-io -c 'write -P 0x33 12345 200000' -c 'write -z 1M 100k' '%s' "
			       ">/dev/null",
			       img, img),
			 0);
	assert_reads_like_qemu(img);
	free(img);
}

/* Images with internal snapshots still read (the active layer); writes are refused. */
static void test_snapshot_readonly(void **state)
{
	char *img = qt_path(dir, "snap.qcow2");
	struct blockdev *bd = NULL;

	assert_int_equal(qt_sh("qemu-img create -q -f qcow2 '%s' 1M && "
			       "qemu-io -c 'write -P 1 0 64k' '%s' >/dev/null && "
			       "qemu-img snapshot -c s1 '%s' && "
			       "qemu-io -c 'write -P 2 0 4k' '%s' >/dev/null",
			       img, img, img, img),
			 0);
	assert_reads_like_qemu(img);
	assert_int_equal(blk_open(img, false, &bd), -EROFS);
	free(img);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cluster_sizes),
	    cmocka_unit_test(test_compressed),
	    cmocka_unit_test(test_chain),
	    cmocka_unit_test(test_write_over_chain),
	    cmocka_unit_test(test_write_over_compressed),
	    cmocka_unit_test(test_v2_plain),
	    cmocka_unit_test(test_snapshot_readonly),
	};

	if (!qt_have_qemu_img()) {
		printf("skip: qemu-img/qemu-io not installed (Debian: qemu-utils)\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, setup, teardown);
}
