/* Raw driver and blk_* entry points: real files in a temporary directory. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/block.h"

static char *make_file(size_t size)
{
	char *path = NULL;
	int fd;

	assert_true(asprintf(&path, "%s/tern-raw-XXXXXX", P_tmpdir) > 0);
	fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	close(fd);
	return path;
}

static void test_open_size_rw(void **state)
{
	char *path = make_file(1 << 20);
	struct blockdev *bd;
	char buf[4096], back[4096];

	assert_int_equal(blk_open(path, false, &bd), 0);
	assert_string_equal(bd->ops->format, "raw");
	assert_int_equal(bd->size, 1 << 20);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (char)(i * 7 + 3);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), 12345), 0);
	assert_int_equal(blk_pread(bd, back, sizeof(back), 12345), 0);
	assert_memory_equal(buf, back, sizeof(buf));
	assert_int_equal(blk_flush(bd), 0);
	/* Requests past the end are refused, not silently grown. */
	assert_int_equal(blk_pread(bd, back, 2, (1 << 20) - 1), -EINVAL);
	assert_int_equal(blk_pwrite(bd, buf, 1, UINT64_MAX), -EINVAL);
	blk_close(bd);
	unlink(path);
	free(path);
}

static void test_vectored(void **state)
{
	char *path = make_file(65536);
	struct blockdev *bd;
	char a[100], b[3000], c[1], flat[3101], back[3101];
	struct iovec iov[3] = {{a, sizeof(a)}, {b, sizeof(b)}, {c, sizeof(c)}};

	for (size_t i = 0; i < sizeof(flat); i++)
		flat[i] = (char)(i ^ 0x5a);
	memcpy(a, flat, 100);
	memcpy(b, flat + 100, 3000);
	c[0] = flat[3100];
	assert_int_equal(blk_open(path, false, &bd), 0);
	assert_int_equal(blk_pwritev(bd, iov, 3, 777), 0);
	assert_int_equal(blk_pread(bd, back, sizeof(back), 777), 0);
	assert_memory_equal(flat, back, sizeof(flat));
	memset(a, 0, sizeof(a));
	memset(b, 0, sizeof(b));
	c[0] = 0;
	assert_int_equal(blk_preadv(bd, iov, 3, 777), 0);
	assert_memory_equal(a, flat, 100);
	assert_memory_equal(b, flat + 100, 3000);
	assert_int_equal(c[0], flat[3100]);
	blk_close(bd);
	unlink(path);
	free(path);
}

static void test_zeroes_discard_readonly(void **state)
{
	char *path = make_file(1 << 20);
	struct blockdev *bd;
	char buf[8192], back[8192], zero[8192] = {0};

	memset(buf, 0xab, sizeof(buf));
	assert_int_equal(blk_open(path, false, &bd), 0);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), 4096), 0);
	assert_int_equal(blk_write_zeroes(bd, 4096, 4096), 0);
	assert_int_equal(blk_pread(bd, back, 4096, 4096), 0);
	assert_memory_equal(back, zero, 4096);
	assert_int_equal(blk_pread(bd, back, 4096, 8192), 0);
	assert_memory_equal(back, buf, 4096);
	assert_int_equal(blk_discard(bd, 0, 1 << 20), 0);
	blk_close(bd);

	assert_int_equal(blk_open(path, true, &bd), 0);
	assert_true(bd->readonly);
	assert_int_equal(blk_pwrite(bd, buf, 1, 0), -EROFS);
	assert_int_equal(blk_write_zeroes(bd, 0, 1), -EROFS);
	blk_close(bd);
	unlink(path);
	free(path);
}

static void test_open_errors(void **state)
{
	struct blockdev *bd = NULL;
	char *path;

	assert_int_equal(blk_open("/nonexistent/tern/disk.img", false, &bd), -ENOENT);
	assert_int_equal(blk_open_fmt("/dev/null", "raw", true, &bd), -EINVAL);
	path = make_file(4096);
	assert_int_equal(blk_open_fmt(path, "vmdk", true, &bd), -EINVAL);
	unlink(path);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_open_size_rw),
	    cmocka_unit_test(test_vectored),
	    cmocka_unit_test(test_zeroes_discard_readonly),
	    cmocka_unit_test(test_open_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
