/*
 * tern's NBD client against real servers: qemu-nbd (raw and qcow2 images)
 * and nbdkit (memory and file plugins), on Unix sockets in a private
 * directory. Data written through tern is checked in the image afterwards,
 * and two connections to one export see each other's flushed writes.
 * Skips (exit 77) when neither qemu-nbd nor nbdkit is installed.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/block.h"

#define SIZE (64u << 20)

struct peer {
	pid_t pid;
	char dir[64];
	char sock[128];
	char image[128];
	char uri[256];
};

static bool have(const char *tool)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return system(cmd) == 0;
}

static void run(const char *cmd)
{
	assert_int_equal(system(cmd), 0);
}

static void wait_socket(struct peer *p)
{
	struct stat st;

	/* bounded: 10 s for the server to come up */
	for (int i = 0; i < 1000; i++) {
		if (stat(p->sock, &st) == 0)
			return;
		if (waitpid(p->pid, NULL, WNOHANG) == p->pid)
			fail_msg("server exited before listening");
		usleep(10000);
	}
	fail_msg("server did not listen within 10 s");
}

static void peer_start(struct peer *p, char *const argv[])
{
	p->pid = fork();
	assert_true(p->pid >= 0);
	if (!p->pid) {
		int null = open("/dev/null", O_RDWR);

		dup2(null, 0);
		dup2(null, 1);
		execvp(argv[0], argv);
		_exit(127);
	}
	wait_socket(p);
}

static void peer_dir(struct peer *p)
{
	snprintf(p->dir, sizeof(p->dir), "%s/tern-nbdp-XXXXXX", P_tmpdir);
	assert_non_null(mkdtemp(p->dir));
	snprintf(p->sock, sizeof(p->sock), "%s/s", p->dir);
	snprintf(p->uri, sizeof(p->uri), "nbd+unix:///?socket=%s", p->sock);
}

static void peer_stop(struct peer *p)
{
	int st;

	kill(p->pid, SIGTERM);
	for (int i = 0; i < 500 && waitpid(p->pid, &st, WNOHANG) != p->pid; i++)
		usleep(10000);
	kill(p->pid, SIGKILL);
	waitpid(p->pid, &st, 0);
}

static void peer_clean(struct peer *p)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
	assert_int_equal(system(cmd), 0);
}

static void fill(uint8_t *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(seed + i * 13 + (i >> 12));
}

/*
 * The pattern every peer gets: writes at odd places, a large write that
 * needs several requests, write-zeroes and trim. expect (SIZE bytes) is
 * updated to what the disk must now hold.
 */
static void exercise(struct blockdev *bd, uint8_t *expect)
{
	size_t big = 36u << 20;
	uint8_t *w = malloc(big), *r = malloc(big);

	assert_int_equal(bd->size, SIZE);
	fill(w, big, 3);
	assert_int_equal(blk_pwrite(bd, w, big, 8u << 20), 0);
	memcpy(expect + (8u << 20), w, big);
	fill(w, 4096, 9);
	assert_int_equal(blk_pwrite(bd, w, 4096, 0), 0);
	memcpy(expect, w, 4096);
	assert_int_equal(blk_pwrite(bd, w, 512, SIZE - 512), 0);
	memcpy(expect + SIZE - 512, w, 512);
	assert_int_equal(blk_flush(bd), 0);

	assert_int_equal(blk_write_zeroes(bd, 9u << 20, 1u << 20), 0);
	memset(expect + (9u << 20), 0, 1u << 20);
	/* trim may or may not zero; only check that it is accepted */
	assert_int_equal(blk_discard(bd, 60u << 20, 1u << 20), 0);
	fill(w, 1u << 20, 5);
	assert_int_equal(blk_pwrite(bd, w, 1u << 20, 60u << 20), 0);
	memcpy(expect + (60u << 20), w, 1u << 20);
	assert_int_equal(blk_flush(bd), 0);

	assert_int_equal(blk_pread(bd, r, big, 8u << 20), 0);
	assert_memory_equal(r, expect + (8u << 20), big);
	assert_int_equal(blk_pread(bd, r, 4096, 0), 0);
	assert_memory_equal(r, expect, 4096);
	/* reading past the end never reaches the server */
	assert_int_equal(blk_pread(bd, r, 1024, SIZE - 512), -EINVAL);
	free(w);
	free(r);
}

static void check_image(const char *image, const char *fmt, const uint8_t *expect)
{
	char cmd[512], raw[160];
	uint8_t *got = malloc(SIZE);
	FILE *f;

	snprintf(raw, sizeof(raw), "%s.check", image);
	snprintf(cmd, sizeof(cmd), "qemu-img convert -f %s -O raw '%s' '%s'", fmt, image, raw);
	run(cmd);
	f = fopen(raw, "rb");
	assert_non_null(f);
	assert_int_equal(fread(got, 1, SIZE, f), SIZE);
	fclose(f);
	unlink(raw);
	assert_memory_equal(got, expect, SIZE);
	free(got);
}

static void qemu_nbd_case(const char *fmt)
{
	struct peer p;
	struct blockdev *bd;
	uint8_t *expect = calloc(1, SIZE);
	char cmd[512];

	if (!have("qemu-nbd") || !have("qemu-img"))
		skip();
	peer_dir(&p);
	snprintf(p.image, sizeof(p.image), "%s/disk.%s", p.dir, fmt);
	snprintf(cmd, sizeof(cmd), "qemu-img create -q -f %s '%s' %u", fmt, p.image, SIZE);
	run(cmd);
	char *argv[] = {"qemu-nbd",	"-f",	      (char *)fmt,	   "-k",    p.sock,
			"--persistent", "--shared=4", "--cache=writeback", p.image, NULL};
	peer_start(&p, argv);
	assert_int_equal(blk_open(p.uri, false, &bd), 0);
	exercise(bd, expect);
	blk_close(bd);
	peer_stop(&p);
	check_image(p.image, fmt, expect);
	free(expect);
	peer_clean(&p);
}

static void test_qemu_nbd_raw(void **state)
{
	qemu_nbd_case("raw");
}

static void test_qemu_nbd_qcow2(void **state)
{
	qemu_nbd_case("qcow2");
}

static void test_nbdkit_file(void **state)
{
	struct peer p;
	struct blockdev *bd;
	uint8_t *expect = calloc(1, SIZE);
	char cmd[512];

	if (!have("nbdkit") || !have("qemu-img"))
		skip();
	peer_dir(&p);
	snprintf(p.image, sizeof(p.image), "%s/disk.raw", p.dir);
	snprintf(cmd, sizeof(cmd), "truncate -s %u '%s'", SIZE, p.image);
	run(cmd);
	char file_arg[160];
	snprintf(file_arg, sizeof(file_arg), "file=%s", p.image);
	char *argv[] = {"nbdkit", "-f", "-U", p.sock, "file", file_arg, NULL};
	peer_start(&p, argv);
	assert_int_equal(blk_open(p.uri, false, &bd), 0);
	exercise(bd, expect);
	blk_close(bd);
	peer_stop(&p);
	check_image(p.image, "raw", expect);
	free(expect);
	peer_clean(&p);
}

/* nbdkit memory: two connections, each sees the other's flushed writes. */
static void test_nbdkit_memory_shared(void **state)
{
	struct peer p;
	struct blockdev *a, *b;
	uint8_t *expect = calloc(1, SIZE);
	uint8_t w[8192], r[8192];

	if (!have("nbdkit"))
		skip();
	peer_dir(&p);
	char *argv[] = {"nbdkit", "-f", "-U", p.sock, "memory", "64M", NULL};
	peer_start(&p, argv);
	assert_int_equal(blk_open(p.uri, false, &a), 0);
	assert_int_equal(blk_open(p.uri, false, &b), 0);
	exercise(a, expect);
	assert_int_equal(blk_pread(b, r, sizeof(r), 8u << 20), 0);
	assert_memory_equal(r, expect + (8u << 20), sizeof(r));
	for (unsigned i = 0; i < 20; i++) {
		struct blockdev *from = i % 2 ? a : b, *to = i % 2 ? b : a;

		fill(w, sizeof(w), 100 + i);
		assert_int_equal(blk_pwrite(from, w, sizeof(w), i * 65536), 0);
		assert_int_equal(blk_flush(from), 0);
		assert_int_equal(blk_pread(to, r, sizeof(r), i * 65536), 0);
		assert_memory_equal(w, r, sizeof(w));
	}
	blk_close(a);
	blk_close(b);
	peer_stop(&p);
	peer_clean(&p);
	free(expect);
}

/* A read-only export is honoured. */
static void test_qemu_nbd_readonly(void **state)
{
	struct peer p;
	struct blockdev *bd;
	uint8_t buf[512];
	char cmd[512];

	if (!have("qemu-nbd") || !have("qemu-img"))
		skip();
	peer_dir(&p);
	snprintf(p.image, sizeof(p.image), "%s/ro.raw", p.dir);
	snprintf(cmd, sizeof(cmd), "qemu-img create -q -f raw '%s' 1M", p.image);
	run(cmd);
	char *argv[] = {"qemu-nbd", "-f", "raw", "-r", "-k", p.sock, p.image, NULL};
	peer_start(&p, argv);
	assert_int_equal(blk_open(p.uri, false, &bd), 0);
	assert_true(bd->readonly);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), 0), -EROFS);
	assert_int_equal(blk_pread(bd, buf, sizeof(buf), 0), 0);
	blk_close(bd);
	peer_stop(&p);
	peer_clean(&p);
}

/* The server dies under the client: errors, not a hang. */
static void test_server_dies(void **state)
{
	struct peer p;
	struct blockdev *bd;
	uint8_t buf[4096];

	if (!have("nbdkit"))
		skip();
	peer_dir(&p);
	char *argv[] = {"nbdkit", "-f", "-U", p.sock, "memory", "64M", NULL};
	peer_start(&p, argv);
	assert_int_equal(blk_open(p.uri, false, &bd), 0);
	assert_int_equal(blk_pread(bd, buf, sizeof(buf), 0), 0);
	kill(p.pid, SIGKILL);
	waitpid(p.pid, NULL, 0);
	assert_int_equal(blk_pread(bd, buf, sizeof(buf), 0), -EIO);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), 0), -EIO);
	blk_close(bd);
	peer_clean(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_qemu_nbd_raw),	 cmocka_unit_test(test_qemu_nbd_qcow2),
	    cmocka_unit_test(test_qemu_nbd_readonly),	 cmocka_unit_test(test_nbdkit_file),
	    cmocka_unit_test(test_nbdkit_memory_shared), cmocka_unit_test(test_server_dies),
	};

	if (!have("qemu-nbd") && !have("nbdkit")) {
		printf("SKIP: neither qemu-nbd (qemu-utils) nor nbdkit is installed\n");
		return 77;
	}
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
