/*
 * NBD client and server in one process: tern's client against tern's server
 * over a socketpair, and the client against scripted hostile servers that
 * lie about cookies, offsets and lengths or stop answering.
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/block.h"
#include "block/nbd.h"
#include "block/nbd_proto.h"

#define DISK_SIZE (48u << 20)

/* ---- helpers ---- */

static char *make_file(size_t size)
{
	char *path = NULL;
	int fd;

	assert_true(asprintf(&path, "%s/tern-nbd-XXXXXX", P_tmpdir) > 0);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	close(fd);
	return path;
}

struct served {
	struct nbd_server s;
	int fd;
	pthread_t t;
	char *path;
};

static void *serve_main(void *arg)
{
	struct served *sv = arg;

	nbd_serve_client(&sv->s, sv->fd);
	return NULL;
}

/* Start tern's server on one end of a socketpair; return the other end. */
static int serve_file(struct served *sv, const char *path, bool readonly, const char *name)
{
	int sp[2];

	memset(sv, 0, sizeof(*sv));
	assert_int_equal(blk_open(path, readonly, &sv->s.bd), 0);
	sv->s.readonly = readonly;
	sv->s.export_name = name;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	sv->fd = sp[0];
	assert_int_equal(pthread_create(&sv->t, NULL, serve_main, sv), 0);
	return sp[1];
}

static void serve_end(struct served *sv)
{
	pthread_join(sv->t, NULL);
	blk_close(sv->s.bd);
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- tern client against tern server ---- */

static void test_roundtrip(void **state)
{
	char *path = make_file(DISK_SIZE);
	struct nbd_client_opts o = {.export_name = "disk"};
	size_t big = 40u << 20; /* more than one request's payload */
	uint8_t *w = malloc(big), *r = malloc(big);
	struct blockdev *bd, *file;
	struct served sv;
	int fd = serve_file(&sv, path, false, "disk");

	assert_int_equal(nbd_open_fd(fd, &o, false, &bd), 0);
	assert_string_equal(bd->ops->format, "nbd");
	assert_int_equal(bd->size, DISK_SIZE);
	assert_false(bd->readonly);

	fill(w, big, 1);
	assert_int_equal(blk_pwrite(bd, w, big, 4096 + 3), 0);
	assert_int_equal(blk_pread(bd, r, big, 4096 + 3), 0);
	assert_memory_equal(w, r, big);
	assert_int_equal(blk_flush(bd), 0);

	/* write-zeroes and trim reach the file */
	assert_int_equal(blk_write_zeroes(bd, 1 << 20, 65536), 0);
	assert_int_equal(blk_discard(bd, 2 << 20, 1 << 20), 0);
	/* requests past the end never reach the wire */
	assert_int_equal(blk_pread(bd, r, 2, DISK_SIZE - 1), -EINVAL);
	blk_close(bd);
	serve_end(&sv);

	assert_int_equal(blk_open(path, true, &file), 0);
	assert_int_equal(blk_pread(file, r, big, 4096 + 3), 0);
	memset(w + (1 << 20) - 4096 - 3, 0, 65536);
	assert_memory_equal(w, r, (2 << 20) - 4096 - 3);
	for (size_t i = 0; i < (1 << 20); i++)
		assert_int_equal(r[(2 << 20) - 4096 - 3 + i], 0);
	blk_close(file);
	unlink(path);
	free(path);
	free(w);
	free(r);
}

static void test_readonly_export(void **state)
{
	char *path = make_file(1 << 20);
	struct nbd_client_opts o = {0};
	struct blockdev *bd;
	struct served sv;
	uint8_t buf[512] = {1};
	int fd = serve_file(&sv, path, true, "");

	/* asked read-write, the read-only export is honoured */
	assert_int_equal(nbd_open_fd(fd, &o, false, &bd), 0);
	assert_true(bd->readonly);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), 0), -EROFS);
	assert_int_equal(blk_pread(bd, buf, sizeof(buf), 0), 0);
	assert_int_equal(buf[0], 0);
	blk_close(bd);
	serve_end(&sv);
	unlink(path);
	free(path);
}

static void test_unknown_export(void **state)
{
	char *path = make_file(1 << 20);
	struct nbd_client_opts o = {.export_name = "nope"};
	struct blockdev *bd = NULL;
	struct served sv;
	int fd = serve_file(&sv, path, false, "disk");

	assert_int_equal(nbd_open_fd(fd, &o, false, &bd), -ENOENT);
	serve_end(&sv);
	unlink(path);
	free(path);
}

struct worker {
	struct blockdev *bd;
	unsigned id;
	int errors;
};

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	uint8_t w[8192], r[8192];

	for (unsigned i = 0; i < 200; i++) {
		uint64_t off = ((uint64_t)wk->id << 20) + (i % 64) * 8192;

		fill(w, sizeof(w), wk->id * 1000 + i);
		if (blk_pwrite(wk->bd, w, sizeof(w), off) || blk_pread(wk->bd, r, sizeof(r), off) ||
		    memcmp(w, r, sizeof(w)))
			wk->errors++;
	}
	return NULL;
}

/* Several threads share one connection: every reply must reach its own caller. */
static void test_threads(void **state)
{
	char *path = make_file(DISK_SIZE);
	struct nbd_client_opts o = {0};
	struct worker wk[6];
	pthread_t t[6];
	struct blockdev *bd;
	struct served sv;
	int fd = serve_file(&sv, path, false, "");

	assert_int_equal(nbd_open_fd(fd, &o, false, &bd), 0);
	for (unsigned i = 0; i < 6; i++) {
		wk[i] = (struct worker){.bd = bd, .id = i};
		assert_int_equal(pthread_create(&t[i], NULL, worker_main, &wk[i]), 0);
	}
	for (unsigned i = 0; i < 6; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(wk[i].errors, 0);
	}
	blk_close(bd);
	serve_end(&sv);
	unlink(path);
	free(path);
}

/* ---- URIs ---- */

static void test_uri(void **state)
{
	struct nbd_uri u;

	assert_int_equal(nbd_uri_parse("nbd://127.0.0.1:10810/disk%20a", &u), 0);
	assert_string_equal(u.host, "127.0.0.1");
	assert_string_equal(u.port, "10810");
	assert_string_equal(u.export_name, "disk a");
	assert_null(u.socket);
	nbd_uri_free(&u);
	assert_int_equal(nbd_uri_parse("nbd://localhost", &u), 0);
	assert_string_equal(u.port, "10809");
	assert_string_equal(u.export_name, "");
	nbd_uri_free(&u);
	assert_int_equal(nbd_uri_parse("nbd://[::1]:99/x", &u), 0);
	assert_string_equal(u.host, "::1");
	assert_string_equal(u.port, "99");
	nbd_uri_free(&u);
	assert_int_equal(nbd_uri_parse("nbd+unix:///exp?socket=/run/a%2bb.sock", &u), 0);
	assert_null(u.host);
	assert_string_equal(u.socket, "/run/a+b.sock");
	assert_string_equal(u.export_name, "exp");
	nbd_uri_free(&u);
	assert_int_equal(nbd_uri_parse("nbd+unix://?socket=/s", &u), 0);
	assert_string_equal(u.export_name, "");
	nbd_uri_free(&u);

	assert_true(nbd_is_uri("nbd://h"));
	assert_false(nbd_is_uri("/tmp/nbd://x"));
	assert_int_equal(nbd_uri_parse("nbd+unix:///exp", &u), -EINVAL);	     /* no socket */
	assert_int_equal(nbd_uri_parse("nbd+unix://host/e?socket=/s", &u), -EINVAL); /* host */
	assert_int_equal(nbd_uri_parse("nbd://:10809/e", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://h:port/e", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://h:123456/e", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://h/e%zz", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://h/e%00", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://h/e%4", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://h/e?socket=/s", &u), -EINVAL);
	assert_int_equal(nbd_uri_parse("nbd://[::1/e", &u), -EINVAL);
}

/* ---- hostile servers ---- */

enum evil {
	EVIL_WRONG_COOKIE,
	EVIL_BAD_MAGIC,
	EVIL_DATA_OUT_OF_RANGE,
	EVIL_HUGE_CHUNK,
	EVIL_SHORT_READ,
	EVIL_TRUNCATED_THEN_CLOSE,
	EVIL_SILENT,
	EVIL_HOLE_OVERFLOW,
	EVIL_ERROR_CHUNK,
	EVIL_HUGE_OPTION_REPLY,
	EVIL_BAD_BLOCK_SIZE,
};

struct evil_server {
	int fd;
	enum evil mode;
	pthread_t t;
};

static void xsend(int fd, const void *p, size_t n)
{
	send(fd, p, n, MSG_NOSIGNAL);
}

static bool xrecv(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t k = recv(fd, (char *)p + got, n - got, 0);

		if (k <= 0)
			return false;
		got += (size_t)k;
	}
	return true;
}

static void opt_reply(int fd, uint32_t opt, uint32_t type, const void *d, uint32_t len)
{
	uint8_t h[20];

	nbd_put64(h, NBD_REP_MAGIC);
	nbd_put32(h + 8, opt);
	nbd_put32(h + 12, type);
	nbd_put32(h + 16, len);
	xsend(fd, h, 20);
	if (len)
		xsend(fd, d, len);
}

/* Just enough of a server to reach transmission with structured replies. */
static bool evil_handshake(struct evil_server *e)
{
	uint8_t b[64], info[14];
	uint8_t *payload;

	nbd_put64(b, NBD_MAGIC);
	nbd_put64(b + 8, NBD_IHAVEOPT);
	nbd_put16(b + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	xsend(e->fd, b, 18);
	if (!xrecv(e->fd, b, 4))
		return false;
	for (;;) {
		uint32_t opt, len;

		if (!xrecv(e->fd, b, 16))
			return false;
		opt = nbd_get32(b + 8);
		len = nbd_get32(b + 12);
		payload = malloc(len + 1);
		if (!xrecv(e->fd, payload, len)) {
			free(payload);
			return false;
		}
		free(payload);
		if (opt == NBD_OPT_STRUCTURED_REPLY) {
			opt_reply(e->fd, opt, NBD_REP_ACK, NULL, 0);
			continue;
		}
		if (e->mode == EVIL_HUGE_OPTION_REPLY) {
			nbd_put64(b, NBD_REP_MAGIC);
			nbd_put32(b + 8, opt);
			nbd_put32(b + 12, NBD_REP_INFO);
			nbd_put32(b + 16, 0xfffffff0u);
			xsend(e->fd, b, 20);
			return false;
		}
		nbd_put16(info, NBD_INFO_EXPORT);
		nbd_put64(info + 2, 1 << 20);
		nbd_put16(info + 10, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
		opt_reply(e->fd, opt, NBD_REP_INFO, info, 12);
		if (e->mode == EVIL_BAD_BLOCK_SIZE) {
			nbd_put16(info, NBD_INFO_BLOCK_SIZE);
			nbd_put32(info + 2, 3); /* not a power of two */
			nbd_put32(info + 6, 4096);
			nbd_put32(info + 10, 1 << 20);
			opt_reply(e->fd, opt, NBD_REP_INFO, info, 14);
		}
		opt_reply(e->fd, opt, NBD_REP_ACK, NULL, 0);
		return true;
	}
}

static void chunk(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len)
{
	uint8_t h[20];

	nbd_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
	nbd_put16(h + 4, flags);
	nbd_put16(h + 6, type);
	nbd_put64(h + 8, cookie);
	nbd_put32(h + 16, len);
	xsend(fd, h, 20);
}

static void evil_answer(struct evil_server *e, const uint8_t *req)
{
	uint64_t cookie = nbd_get64(req + 8), off = nbd_get64(req + 16);
	uint32_t len = nbd_get32(req + 24);
	uint8_t b[64] = {0};

	switch (e->mode) {
	case EVIL_WRONG_COOKIE:
		nbd_put32(b, NBD_SIMPLE_REPLY_MAGIC);
		nbd_put64(b + 8, cookie ^ 0x100);
		xsend(e->fd, b, 16);
		break;
	case EVIL_BAD_MAGIC:
		memset(b, 0xab, 20);
		xsend(e->fd, b, 20);
		break;
	case EVIL_DATA_OUT_OF_RANGE:
		chunk(e->fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + len);
		nbd_put64(b, off + 1); /* one byte past: the last byte would land beyond */
		xsend(e->fd, b, 8);
		break;
	case EVIL_HUGE_CHUNK:
		chunk(e->fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 0xffffffffu);
		nbd_put64(b, off);
		xsend(e->fd, b, 8);
		break;
	case EVIL_SHORT_READ:
		/* half the data, then DONE */
		chunk(e->fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + len / 2);
		nbd_put64(b, off);
		xsend(e->fd, b, 8);
		for (uint32_t i = 0; i < len / 2; i += 8)
			xsend(e->fd, b + 8, 8);
		break;
	case EVIL_TRUNCATED_THEN_CLOSE:
		nbd_put32(b, NBD_SIMPLE_REPLY_MAGIC);
		nbd_put64(b + 8, cookie);
		xsend(e->fd, b, 16);
		xsend(e->fd, b, 10); /* 10 of len bytes */
		break;
	case EVIL_HOLE_OVERFLOW:
		chunk(e->fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12);
		nbd_put64(b, UINT64_MAX - 2); /* offset + size wraps around */
		nbd_put32(b + 8, 16);
		xsend(e->fd, b, 12);
		break;
	case EVIL_ERROR_CHUNK:
		chunk(e->fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6 + 4);
		nbd_put32(b, NBD_EPERM);
		nbd_put16(b + 4, 4);
		memcpy(b + 6, "no\x01!", 4);
		xsend(e->fd, b, 10);
		break;
	default:
		break; /* EVIL_SILENT */
	}
}

static void *evil_main(void *arg)
{
	struct evil_server *e = arg;
	uint8_t req[NBD_REQUEST_SIZE];

	if (evil_handshake(e)) {
		while (xrecv(e->fd, req, sizeof(req))) {
			if (nbd_get16(req + 6) == NBD_CMD_DISC)
				break;
			evil_answer(e, req);
			if (e->mode == EVIL_TRUNCATED_THEN_CLOSE)
				break;
		}
	}
	/* Wait for the client to hang up, so it sees exactly what was sent. */
	while (e->mode != EVIL_TRUNCATED_THEN_CLOSE && xrecv(e->fd, req, 1))
		;
	close(e->fd);
	return NULL;
}

static int evil_open(struct evil_server *e, enum evil mode, struct blockdev **bd)
{
	struct nbd_client_opts o = {.timeout_ms = 400};
	int sp[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	e->fd = sp[0];
	e->mode = mode;
	assert_int_equal(pthread_create(&e->t, NULL, evil_main, e), 0);
	return nbd_open_fd(sp[1], &o, false, bd);
}

/* A misbehaving server costs one -EIO (bounded in time), then every later request fails. */
static void expect_eio(enum evil mode)
{
	struct evil_server e;
	struct blockdev *bd;
	uint8_t *buf = calloc(1, 65536 + 64), canary[64];
	int64_t t0;

	memset(canary, 0x5c, sizeof(canary));
	memcpy(buf + 65536, canary, sizeof(canary));
	assert_int_equal(evil_open(&e, mode, &bd), 0);
	t0 = mono_ms();
	assert_int_equal(blk_pread(bd, buf, 65536, 4096), -EIO);
	assert_true(mono_ms() - t0 < 5000);
	/* nothing written past the caller's buffer */
	assert_memory_equal(buf + 65536, canary, sizeof(canary));
	assert_int_equal(blk_pread(bd, buf, 512, 0), -EIO);
	assert_int_equal(blk_flush(bd), -EIO);
	blk_close(bd);
	pthread_join(e.t, NULL);
	free(buf);
}

static void test_evil_replies(void **state)
{
	expect_eio(EVIL_WRONG_COOKIE);
	expect_eio(EVIL_BAD_MAGIC);
	expect_eio(EVIL_DATA_OUT_OF_RANGE);
	expect_eio(EVIL_HUGE_CHUNK);
	expect_eio(EVIL_SHORT_READ);
	expect_eio(EVIL_TRUNCATED_THEN_CLOSE);
	expect_eio(EVIL_HOLE_OVERFLOW);
}

static void test_evil_silent_times_out(void **state)
{
	expect_eio(EVIL_SILENT);
}

/* An error chunk fails that request only; the connection stays usable. */
static void test_error_chunk(void **state)
{
	struct evil_server e;
	struct blockdev *bd;
	uint8_t buf[512];

	assert_int_equal(evil_open(&e, EVIL_ERROR_CHUNK, &bd), 0);
	assert_int_equal(blk_pread(bd, buf, sizeof(buf), 0), -EPERM);
	assert_int_equal(blk_pread(bd, buf, sizeof(buf), 512), -EPERM);
	blk_close(bd);
	pthread_join(e.t, NULL);
}

static void test_evil_negotiation(void **state)
{
	struct evil_server e;
	struct blockdev *bd = NULL;

	assert_int_equal(evil_open(&e, EVIL_HUGE_OPTION_REPLY, &bd), -EPROTO);
	pthread_join(e.t, NULL);
	assert_int_equal(evil_open(&e, EVIL_BAD_BLOCK_SIZE, &bd), -EPROTO);
	pthread_join(e.t, NULL);
}

/* ---- hostile clients against tern's server ---- */

static int raw_client(struct served *sv, const char *path)
{
	uint8_t b[64];
	int fd = serve_file(sv, path, false, "");

	/* handshake by hand: fixed newstyle, structured replies off, GO "" */
	assert_true(xrecv(fd, b, 18));
	assert_int_equal(nbd_get64(b), NBD_MAGIC);
	nbd_put32(b, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	xsend(fd, b, 4);
	nbd_put64(b, NBD_IHAVEOPT);
	nbd_put32(b + 8, NBD_OPT_GO);
	nbd_put32(b + 12, 6);
	memset(b + 16, 0, 6);
	xsend(fd, b, 22);
	for (;;) {
		assert_true(xrecv(fd, b, 20));
		assert_int_equal(nbd_get64(b), NBD_REP_MAGIC);
		assert_true(xrecv(fd, b + 20, nbd_get32(b + 16)));
		if (nbd_get32(b + 12) == NBD_REP_ACK)
			return fd;
		assert_int_equal(nbd_get32(b + 12), NBD_REP_INFO);
	}
}

static void request(int fd, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len)
{
	uint8_t h[NBD_REQUEST_SIZE];

	nbd_put32(h, NBD_REQUEST_MAGIC);
	nbd_put16(h + 4, 0);
	nbd_put16(h + 6, type);
	nbd_put64(h + 8, cookie);
	nbd_put64(h + 16, off);
	nbd_put32(h + 24, len);
	xsend(fd, h, sizeof(h));
}

static uint32_t simple_error(int fd, uint64_t cookie)
{
	uint8_t b[16];

	assert_true(xrecv(fd, b, 16));
	assert_int_equal(nbd_get32(b), NBD_SIMPLE_REPLY_MAGIC);
	assert_int_equal(nbd_get64(b + 8), cookie);
	return nbd_get32(b + 4);
}

static void test_server_abuse(void **state)
{
	char *path = make_file(1 << 20);
	struct served sv;
	uint8_t b[16];
	int fd = raw_client(&sv, path);

	/* a read larger than the limit, past the end, an unknown command: EINVAL, stay */
	request(fd, NBD_CMD_READ, 1, 0, 0xffffffffu);
	assert_int_equal(simple_error(fd, 1), NBD_EINVAL);
	request(fd, NBD_CMD_READ, 2, (1 << 20) - 1, 2);
	assert_int_equal(simple_error(fd, 2), NBD_EINVAL);
	request(fd, NBD_CMD_READ, 3, UINT64_MAX, 1);
	assert_int_equal(simple_error(fd, 3), NBD_EINVAL);
	request(fd, 77, 4, 0, 0);
	assert_int_equal(simple_error(fd, 4), NBD_EINVAL);
	request(fd, NBD_CMD_WRITE_ZEROES, 5, 1 << 20, 1);
	assert_int_equal(simple_error(fd, 5), NBD_ENOSPC);
	request(fd, NBD_CMD_READ, 6, 0, 8);
	assert_int_equal(simple_error(fd, 6), 0);
	assert_true(xrecv(fd, b, 8));
	/* a write payload too large to take: the server hangs up */
	request(fd, NBD_CMD_WRITE, 7, 0, 0x7fffffffu);
	assert_false(xrecv(fd, b, 1));
	close(fd);
	serve_end(&sv);

	/* garbage instead of a request: hung up, not crashed */
	fd = raw_client(&sv, path);
	memset(b, 0xee, sizeof(b));
	xsend(fd, b, sizeof(b));
	xsend(fd, b, sizeof(b));
	assert_false(xrecv(fd, b, 1));
	close(fd);
	serve_end(&sv);
	unlink(path);
	free(path);
}

/* A client that asks for options forever, or sends a huge option, is cut off. */
static void test_server_option_abuse(void **state)
{
	char *path = make_file(1 << 20);
	struct served sv;
	uint8_t b[64];
	int fd = serve_file(&sv, path, false, "");

	assert_true(xrecv(fd, b, 18));
	nbd_put32(b, NBD_FLAG_C_FIXED_NEWSTYLE);
	xsend(fd, b, 4);
	/* an unknown option gets ERR_UNSUP; LIST names the export */
	nbd_put64(b, NBD_IHAVEOPT);
	nbd_put32(b + 8, 99);
	nbd_put32(b + 12, 0);
	xsend(fd, b, 16);
	assert_true(xrecv(fd, b, 20));
	assert_int_equal(nbd_get32(b + 12), NBD_REP_ERR_UNSUP);
	nbd_put64(b, NBD_IHAVEOPT);
	nbd_put32(b + 8, NBD_OPT_LIST);
	nbd_put32(b + 12, 0);
	xsend(fd, b, 16);
	assert_true(xrecv(fd, b, 20));
	assert_int_equal(nbd_get32(b + 12), NBD_REP_SERVER);
	assert_int_equal(nbd_get32(b + 16), 4);
	assert_true(xrecv(fd, b, 4 + 20));
	assert_int_equal(nbd_get32(b + 4 + 12), NBD_REP_ACK);
	/* GO with a name length that does not fit the option */
	nbd_put64(b, NBD_IHAVEOPT);
	nbd_put32(b + 8, NBD_OPT_GO);
	nbd_put32(b + 12, 6);
	nbd_put32(b + 16, 0xfffffff0u);
	nbd_put16(b + 20, 0);
	xsend(fd, b, 22);
	assert_true(xrecv(fd, b, 20));
	assert_int_equal(nbd_get32(b + 12), NBD_REP_ERR_INVALID);
	/* an option of 1 GiB: hung up */
	nbd_put64(b, NBD_IHAVEOPT);
	nbd_put32(b + 8, NBD_OPT_GO);
	nbd_put32(b + 12, 1u << 30);
	xsend(fd, b, 16);
	assert_false(xrecv(fd, b, 1));
	close(fd);
	serve_end(&sv);
	unlink(path);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),
	    cmocka_unit_test(test_readonly_export),
	    cmocka_unit_test(test_unknown_export),
	    cmocka_unit_test(test_threads),
	    cmocka_unit_test(test_uri),
	    cmocka_unit_test(test_evil_replies),
	    cmocka_unit_test(test_evil_silent_times_out),
	    cmocka_unit_test(test_error_chunk),
	    cmocka_unit_test(test_evil_negotiation),
	    cmocka_unit_test(test_server_abuse),
	    cmocka_unit_test(test_server_option_abuse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
