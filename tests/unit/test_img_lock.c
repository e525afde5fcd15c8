/*
 * Image locks: the rules between modes, QEMU's byte layout, locks taken by
 * every open of a file (backing chains, force-share), and that two opens in
 * one process conflict like two processes.
 */
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
#include "block/lock.h"
#include "block/qcow2.h"
#include "qcow2_util.h"

struct fixture {
	char *dir;
	char *base; /* qcow2, 1 MiB */
	char *top;  /* qcow2 backed by base */
	char *raw;  /* raw, 64 KiB */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct qcow2_create_opts o = {.size = 1 << 20};
	int fd;

	f->dir = qt_mkdtemp();
	f->base = qt_path(f->dir, "base.qcow2");
	f->top = qt_path(f->dir, "top.qcow2");
	f->raw = qt_path(f->dir, "disk.raw");
	assert_int_equal(qcow2_create(f->base, &o), 0);
	o.backing = "base.qcow2";
	o.backing_fmt = "qcow2";
	assert_int_equal(qcow2_create(f->top, &o), 0);
	fd = open(f->raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 65536), 0);
	close(fd);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	free(f->base);
	free(f->top);
	free(f->raw);
	qt_rmrf(f->dir);
	free(f);
	return 0;
}

/* Can a second holder take mode b while the first holds mode a? */
static int pair(const char *path, enum img_lock_mode a, enum img_lock_mode b)
{
	struct img_lock *la, *lb = NULL;
	int r;

	assert_int_equal(img_lock_take(path, a, &la), 0);
	r = img_lock_take(path, b, &lb);
	img_lock_release(lb);
	img_lock_release(la);
	return r;
}

static void test_rules(void **state)
{
	struct fixture *f = *state;
	const enum img_lock_mode S = IMG_LOCK_SHARED, R = IMG_LOCK_READ, W = IMG_LOCK_WRITE;

	/* Readers share; a writer excludes readers and writers, not force-share readers. */
	assert_int_equal(pair(f->raw, R, R), 0);
	assert_int_equal(pair(f->raw, R, W), -EBUSY);
	assert_int_equal(pair(f->raw, W, R), -EBUSY);
	assert_int_equal(pair(f->raw, W, W), -EBUSY);
	assert_int_equal(pair(f->raw, W, S), 0);
	assert_int_equal(pair(f->raw, S, W), 0);
	assert_int_equal(pair(f->raw, S, R), 0);
	assert_int_equal(pair(f->raw, S, S), 0);
}

/* Which of bytes 100..104 and 200..204 someone other than fd's description holds. */
static unsigned held_bytes(const char *path)
{
	unsigned mask = 0;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	for (int i = 0; i < 5; i++) {
		for (int k = 0; k < 2; k++) {
			struct flock fl = {.l_type = F_WRLCK,
					   .l_whence = SEEK_SET,
					   .l_start = (k ? 200 : 100) + i,
					   .l_len = 1};

			assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
			if (fl.l_type != F_UNLCK)
				mask |= 1u << (i + 5 * k);
		}
	}
	close(fd);
	return mask;
}

#define PERM(i) (1u << (i))
#define UNSHARE(i) (1u << (5 + (i)))

static void test_qemu_layout(void **state)
{
	struct fixture *f = *state;
	struct img_lock *l;

	/* QEMU's bytes: 100 + permission used, 200 + permission not shared. */
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_WRITE, &l), 0);
	assert_int_equal(held_bytes(f->raw), PERM(0) | PERM(1) | PERM(3) | UNSHARE(1) | UNSHARE(3));
	assert_int_equal(img_lock_change(l, IMG_LOCK_READ), 0);
	assert_int_equal(held_bytes(f->raw), PERM(0) | UNSHARE(1) | UNSHARE(3));
	assert_int_equal(img_lock_change(l, IMG_LOCK_SHARED), 0);
	assert_int_equal(held_bytes(f->raw), PERM(0));
	img_lock_release(l);
	assert_int_equal(held_bytes(f->raw), 0);
}

static void test_change(void **state)
{
	struct fixture *f = *state;
	struct img_lock *a, *b, *c = NULL;

	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_READ, &a), 0);
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_READ, &b), 0);
	/* Another reader is there: no upgrade, and b keeps reading. */
	assert_int_equal(img_lock_change(b, IMG_LOCK_WRITE), -EBUSY);
	assert_int_equal(img_lock_mode(b), IMG_LOCK_READ);
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_WRITE, &c), -EBUSY);
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_READ, &c), 0);
	img_lock_release(c);
	/* Once a is gone, b may write, and then excludes readers. */
	img_lock_release(a);
	assert_int_equal(img_lock_change(b, IMG_LOCK_WRITE), 0);
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_READ, &c), -EBUSY);
	img_lock_release(b);
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_WRITE, &c), 0);
	img_lock_release(c);
}

static void test_holder_pid(void **state)
{
	struct fixture *f = *state;
	struct img_lock *l;
	int fd = open(f->raw, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(img_lock_holder(fd, 101), 0);
	assert_int_equal(img_lock_take(f->raw, IMG_LOCK_WRITE, &l), 0);
	/* OFD locks record no pid: found through /proc, here our own. */
	assert_int_equal(img_lock_holder(fd, 101), getpid());
	assert_int_equal(img_lock_holder(fd, 102), 0);
	img_lock_release(l);
	assert_int_equal(img_lock_holder(fd, 101), 0);
	close(fd);
}

static void test_chain(void **state)
{
	struct fixture *f = *state;
	struct blockdev *top, *other = NULL;

	assert_int_equal(blk_open(f->top, false, &top), 0);
	/* The top is written; its backing file is read and may not be written. */
	assert_int_equal(blk_open(f->top, true, &other), -EBUSY);
	assert_int_equal(blk_open(f->base, false, &other), -EBUSY);
	assert_int_equal(blk_open(f->base, true, &other), 0);
	blk_close(other);
	/* Force-share reads the whole chain while it is written. */
	assert_int_equal(blk_open_shared(f->top, NULL, &other), 0);
	assert_non_null(other->lock);
	assert_int_equal(img_lock_mode(other->lock), IMG_LOCK_SHARED);
	blk_close(other);
	blk_close(top);
	/* Closed: the locks went with it. */
	assert_int_equal(blk_open(f->base, false, &other), 0);
	blk_close(other);
}

static void test_clones_share_base(void **state)
{
	struct fixture *f = *state;
	struct qcow2_create_opts o = {
	    .size = 1 << 20, .backing = "base.qcow2", .backing_fmt = "qcow2"};
	char *second = qt_path(f->dir, "second.qcow2");
	struct blockdev *a, *b;

	assert_int_equal(qcow2_create(second, &o), 0);
	/* Two overlays of one base, each written by its own VM. */
	assert_int_equal(blk_open(f->top, false, &a), 0);
	assert_int_equal(blk_open(second, false, &b), 0);
	blk_close(b);
	blk_close(a);
	free(second);
}

static void test_set_lock(void **state)
{
	struct fixture *f = *state;
	struct blockdev *base, *top;

	/* A written image becomes a backing file: its writer steps down to a reader first. */
	assert_int_equal(blk_open(f->base, false, &base), 0);
	assert_int_equal(blk_open(f->top, false, &top), -EBUSY);
	assert_int_equal(blk_set_lock(base, IMG_LOCK_READ), 0);
	assert_int_equal(blk_open(f->top, false, &top), 0);
	assert_int_equal(blk_set_lock(base, IMG_LOCK_WRITE), -EBUSY);
	blk_close(top);
	blk_close(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rules),    cmocka_unit_test(test_qemu_layout),
	    cmocka_unit_test(test_change),   cmocka_unit_test(test_holder_pid),
	    cmocka_unit_test(test_chain),    cmocka_unit_test(test_clones_share_base),
	    cmocka_unit_test(test_set_lock),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
