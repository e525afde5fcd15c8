/*
 * Replication to a recovery site: a three-layer chain (raw base, two qcow2
 * overlays) shipped to a directory and over TCP is rebuilt under the
 * replica's names and reads like the original; shipping again moves
 * nothing; a layer with a bad checksum is refused and the latest point
 * stays; an interrupted layer resumes; hostile layer descriptions and a
 * different chain are refused. Over TCP with a key: a wrong key, no key and
 * a stream altered in flight are refused and leave nothing in the replica.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "block/block.h"
#include "block/qcow2.h"
#include "block/replicate.h"
#include "qcow2_util.h"

#define SIZE (4u << 20)

struct fix {
	char *dir;
	char base[512], l1[512], l2[512], rep[512];
};

static void write_pattern(const char *path, uint64_t off, int c)
{
	struct blockdev *bd;
	char buf[65536];

	memset(buf, c, sizeof(buf));
	assert_int_equal(blk_open(path, false, &bd), 0);
	assert_int_equal(blk_pwrite(bd, buf, sizeof(buf), off), 0);
	blk_close(bd);
}

static int setup(void **state)
{
	struct fix *f = calloc(1, sizeof(*f));
	struct qcow2_create_opts o = {.size = SIZE, .backing_fmt = "raw"};

	f->dir = qt_mkdtemp();
	snprintf(f->base, sizeof(f->base), "%s/base.raw", f->dir);
	snprintf(f->l1, sizeof(f->l1), "%s/l1.qcow2", f->dir);
	snprintf(f->l2, sizeof(f->l2), "%s/l2 top.qcow2", f->dir);
	snprintf(f->rep, sizeof(f->rep), "%s/replica", f->dir);
	if (qt_sh("truncate -s %u '%s'", SIZE, f->base))
		return -1;
	write_pattern(f->base, 0, 'a');
	o.backing = f->base;
	if (qcow2_create(f->l1, &o))
		return -1;
	write_pattern(f->l1, 65536, 'b');
	o.backing = f->l1;
	o.backing_fmt = "qcow2";
	if (qcow2_create(f->l2, &o))
		return -1;
	write_pattern(f->l2, 2 * 65536, 'c');
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;

	qt_rmrf(f->dir);
	free(f);
	return 0;
}

static void assert_same_disk(const char *a, const char *b)
{
	struct blockdev *x, *y;
	uint8_t *p = malloc(SIZE), *q = malloc(SIZE);

	assert_int_equal(blk_open(a, true, &x), 0);
	assert_int_equal(blk_open(b, true, &y), 0);
	assert_int_equal(x->size, y->size);
	assert_int_equal(blk_pread(x, p, SIZE, 0), 0);
	assert_int_equal(blk_pread(y, q, SIZE, 0), 0);
	assert_memory_equal(p, q, SIZE);
	blk_close(x);
	blk_close(y);
	free(p);
	free(q);
}

static void assert_replica_top(struct fix *f, const char *want_top_name, unsigned n)
{
	struct replica *r;
	char *top;

	assert_int_equal(replica_open(f->rep, &r), 0);
	assert_int_equal(replica_nlayers(r), n);
	assert_string_equal(replica_get(r, n - 1)->name, want_top_name);
	top = replica_top_path(r);
	assert_non_null(top);
	assert_same_disk(f->l2, top);
	free(top);
	replica_close(r);
}

static void test_directory(void **state)
{
	struct fix *f = *state;
	struct qcow2_info qi;
	struct blockdev *bd;
	unsigned shipped;
	uint64_t bytes;
	char path[600];

	assert_int_equal(replicate_chain(f->l2, f->rep, NULL, &shipped, &bytes), 0);
	assert_int_equal(shipped, 3);
	assert_true(bytes >= SIZE);
	/* The file name's space is made safe; the backing names are the replica's. */
	assert_replica_top(f, "002-l2_top.qcow2", 3);
	snprintf(path, sizeof(path), "%s/002-l2_top.qcow2", f->rep);
	assert_int_equal(blk_open(path, true, &bd), 0);
	qcow2_get_info(bd, &qi);
	assert_string_equal(qi.backing_name, "001-l1.qcow2");
	blk_close(bd);
	/* Again: the replica has everything. */
	assert_int_equal(replicate_chain(f->l2, f->rep, NULL, &shipped, &bytes), 0);
	assert_int_equal(shipped, 0);
	assert_int_equal(bytes, 0);
	if (qt_have_qemu_img())
		assert_int_equal(qt_sh("qemu-img compare -q '%s' '%s'", f->l2, path), 0);
}

static uint32_t file_crc(const char *path, uint64_t *len)
{
	FILE *fp = fopen(path, "rb");
	uint8_t buf[65536];
	uLong c = crc32(0, NULL, 0);
	size_t n;

	assert_non_null(fp);
	*len = 0;
	while ((n = fread(buf, 1, sizeof(buf), fp)) > 0) {
		c = crc32(c, buf, (uInt)n);
		*len += n;
	}
	fclose(fp);
	return (uint32_t)c;
}

/* Feed the file at path to the replica as layer idx, cut after `cut` bytes if nonzero. */
static int feed(struct replica *r, unsigned idx, const char *name, const char *fmt,
		const char *path, uint32_t crc_xor, uint64_t cut, uint64_t *have)
{
	struct replica_layer l = {0};
	uint8_t *data;
	FILE *fp;
	int ret;

	snprintf(l.name, sizeof(l.name), "%s", name);
	snprintf(l.format, sizeof(l.format), "%s", fmt);
	l.crc = file_crc(path, &l.bytes) ^ crc_xor;
	ret = replica_begin(r, idx, &l, have);
	if (ret < 0)
		return ret;
	data = malloc(l.bytes);
	fp = fopen(path, "rb");
	assert_int_equal(fread(data, 1, l.bytes, fp), l.bytes);
	fclose(fp);
	ret = replica_write(r, data + *have, (cut ? cut : l.bytes) - *have);
	free(data);
	if (ret < 0 || cut)
		return ret;
	return replica_commit(r);
}

static void test_bad_crc_and_resume(void **state)
{
	struct fix *f = *state;
	struct replica *r;
	uint64_t have;

	assert_int_equal(replica_open(f->rep, &r), 0);
	assert_int_equal(feed(r, 0, "000-base.raw", "raw", f->base, 0, 0, &have), 0);
	/* A layer that arrives damaged is not installed. */
	assert_int_equal(feed(r, 1, "001-l1.qcow2", "qcow2", f->l1, 1, 0, &have), -EBADMSG);
	assert_int_equal(replica_nlayers(r), 1);
	/* Half a layer, then the connection "breaks". */
	assert_int_equal(feed(r, 1, "001-l1.qcow2", "qcow2", f->l1, 0, 4096, &have), 0);
	assert_int_equal(have, 0);
	replica_abort(r);
	replica_close(r);
	assert_int_equal(replica_open(f->rep, &r), 0);
	assert_int_equal(replica_nlayers(r), 1);
	assert_int_equal(feed(r, 1, "001-l1.qcow2", "qcow2", f->l1, 0, 0, &have), 0);
	assert_int_equal(have, 4096);
	assert_int_equal(replica_nlayers(r), 2);
	replica_close(r);
	/* The sender skips what is there and ships the rest. */
	{
		unsigned shipped;
		uint64_t bytes;

		assert_int_equal(replicate_chain(f->l2, f->rep, NULL, &shipped, &bytes), 0);
		assert_int_equal(shipped, 1);
	}
	assert_replica_top(f, "002-l2_top.qcow2", 3);
	assert_int_equal(qt_sh("ls -A '%s' | grep -q '^\\.part-'", f->rep), 1);
}

static void test_hostile(void **state)
{
	struct fix *f = *state;
	struct replica *r;
	struct replica_layer l = {.bytes = 10, .format = "qcow2"};
	static const char *const names[] = {"../x", "a/b", ".hidden", "MANIFEST", "", "a b"};
	uint64_t have;

	assert_int_equal(replica_open(f->rep, &r), 0);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(l.name, sizeof(l.name), "%s", names[i]);
		assert_int_equal(replica_begin(r, 0, &l, &have), -EINVAL);
	}
	snprintf(l.name, sizeof(l.name), "ok");
	assert_int_equal(replica_begin(r, 1, &l, &have), -EINVAL); /* beyond the chain */
	snprintf(l.format, sizeof(l.format), "vmdk");
	assert_int_equal(replica_begin(r, 0, &l, &have), -EINVAL);
	l.bytes = 1ull << 50;
	snprintf(l.format, sizeof(l.format), "qcow2");
	assert_int_equal(replica_begin(r, 0, &l, &have), -EINVAL);
	/* A raw file cannot sit above the base. */
	assert_int_equal(feed(r, 0, "000-base.raw", "raw", f->base, 0, 0, &have), 0);
	assert_int_equal(feed(r, 1, "001-x.raw", "raw", f->base, 0, 0, &have), -EINVAL);
	/* Bytes beyond the announced length are refused. */
	assert_int_equal(feed(r, 1, "001-l1.qcow2", "qcow2", f->l1, 0, 4096, &have), 0);
	assert_int_equal(replica_write(r, "x", 1 << 30), -EFBIG);
	replica_abort(r);
	/* A different layer where the replica has one. */
	assert_int_equal(feed(r, 0, "000-other.raw", "raw", f->base, 0, 0, &have), -ESTALE);
	replica_close(r);
	/* A damaged manifest is refused, not half-read. */
	assert_int_equal(qt_sh("echo 'layer 1 zz raw ../../etc' >>'%s/MANIFEST'", f->rep), 0);
	assert_int_equal(replica_open(f->rep, &r), -EINVAL);
}

struct server {
	int lfd;
	struct replica *r;
	const struct replicate_key *key;
	int ret;
};

static void *serve_one(void *arg)
{
	struct server *s = arg;
	int fd = accept(s->lfd, NULL, NULL);

	s->ret = fd < 0 ? -errno : replica_serve(s->r, fd, s->key);
	if (fd >= 0)
		close(fd);
	return NULL;
}

static void test_tcp(void **state)
{
	struct fix *f = *state;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	struct server s = {0};
	unsigned shipped;
	uint64_t bytes;
	char dest[64];
	pthread_t t;

	s.lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s.lfd >= 0);
	assert_int_equal(bind(s.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s.lfd, 1), 0);
	assert_int_equal(getsockname(s.lfd, (struct sockaddr *)&a, &alen), 0);
	assert_int_equal(replica_open(f->rep, &s.r), 0);
	assert_int_equal(pthread_create(&t, NULL, serve_one, &s), 0);
	snprintf(dest, sizeof(dest), "tcp:127.0.0.1:%u", ntohs(a.sin_port));
	assert_int_equal(replicate_chain(f->l2, dest, NULL, &shipped, &bytes), 0);
	pthread_join(t, NULL);
	assert_int_equal(s.ret, 0);
	assert_int_equal(shipped, 3);
	replica_close(s.r);
	close(s.lfd);
	assert_replica_top(f, "002-l2_top.qcow2", 3);
}

/* A loopback listener; its port. */
static unsigned listen_any(int *lfd)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);

	*lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(*lfd >= 0);
	assert_int_equal(bind(*lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(*lfd, 1), 0);
	assert_int_equal(getsockname(*lfd, (struct sockaddr *)&a, &alen), 0);
	return ntohs(a.sin_port);
}

/*
 * One transfer of f->l2's chain through a server holding skey, sent with
 * ckey, to port (the server's, or a proxy's in front of it). The server's
 * result in *sret; the sender's returned.
 */
static int transfer(struct fix *f, const struct replicate_key *skey,
		    const struct replicate_key *ckey, int lfd, unsigned port, int *sret)
{
	struct server s = {.lfd = lfd, .key = skey};
	unsigned shipped;
	uint64_t bytes;
	char dest[64];
	pthread_t t;
	int r;

	assert_int_equal(replica_open(f->rep, &s.r), 0);
	assert_int_equal(pthread_create(&t, NULL, serve_one, &s), 0);
	snprintf(dest, sizeof(dest), "tcp:127.0.0.1:%u", port);
	r = replicate_chain(f->l2, dest, ckey, &shipped, &bytes);
	pthread_join(t, NULL);
	replica_close(s.r);
	*sret = s.ret;
	return r;
}

static void make_key(struct replicate_key *k, int c)
{
	memset(k, 0, sizeof(*k));
	k->len = 32;
	memset(k->bytes, c, k->len);
}

/* A man in the middle that flips one byte of what the sender sends, at flip_at. */
struct proxy {
	int lfd;
	unsigned server_port;
	uint64_t flip_at;
};

static void pump(int from, int to, uint64_t *seen, uint64_t flip_at)
{
	char buf[65536];
	ssize_t n = recv(from, buf, sizeof(buf), 0);

	if (n <= 0) {
		shutdown(to, SHUT_WR);
		return;
	}
	if (flip_at != UINT64_MAX && flip_at >= *seen && flip_at < *seen + (uint64_t)n)
		buf[flip_at - *seen] ^= 0x01;
	*seen += (uint64_t)n;
	if (send(to, buf, (size_t)n, MSG_NOSIGNAL) != n)
		shutdown(to, SHUT_WR);
}

static void *proxy_one(void *arg)
{
	struct proxy *p = arg;
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				.sin_port = htons((uint16_t)p->server_port)};
	int c = accept(p->lfd, NULL, NULL), sv = socket(AF_INET, SOCK_STREAM, 0);
	uint64_t up = 0, down = 0;

	if (c < 0 || sv < 0 || connect(sv, (struct sockaddr *)&a, sizeof(a)) < 0)
		goto out;
	for (;;) {
		struct pollfd pf[2] = {{.fd = c, .events = POLLIN}, {.fd = sv, .events = POLLIN}};

		if (poll(pf, 2, 5000) <= 0 || (pf[0].revents & (POLLERR | POLLNVAL)) ||
		    (pf[1].revents & (POLLERR | POLLNVAL | POLLHUP)))
			break;
		if (pf[0].revents & (POLLIN | POLLHUP))
			pump(c, sv, &up, p->flip_at);
		if (pf[1].revents & POLLIN)
			pump(sv, c, &down, UINT64_MAX);
		if (pf[0].revents & POLLHUP)
			break;
	}
out:
	if (c >= 0)
		close(c);
	if (sv >= 0)
		close(sv);
	return NULL;
}

static void test_tcp_key(void **state)
{
	struct fix *f = *state;
	struct replicate_key key, other;
	struct replica *r;
	struct proxy p;
	pthread_t t;
	int lfd, sret;
	unsigned port = listen_any(&lfd), pport;

	make_key(&key, 'k');
	make_key(&other, 'o');
	/* A different key: both ends refuse, nothing is installed. */
	assert_int_equal(transfer(f, &key, &other, lfd, port, &sret), -EACCES);
	assert_int_equal(sret, -EACCES);
	/* No key against a server that has one. */
	assert_true(transfer(f, &key, NULL, lfd, port, &sret) < 0);
	assert_int_equal(sret, -EACCES);
	/* A key against a server without one. */
	assert_true(transfer(f, NULL, &key, lfd, port, &sret) < 0);
	assert_int_equal(replica_open(f->rep, &r), 0);
	assert_int_equal(replica_nlayers(r), 0);
	replica_close(r);

	/* One bit changed in the layer data in flight: the receiver refuses it. */
	p = (struct proxy){.server_port = port, .flip_at = 3000};
	pport = listen_any(&p.lfd);
	assert_int_equal(pthread_create(&t, NULL, proxy_one, &p), 0);
	assert_true(transfer(f, &key, &key, lfd, pport, &sret) < 0);
	pthread_join(t, NULL);
	close(p.lfd);
	assert_int_equal(sret, -EBADMSG);
	assert_int_equal(replica_open(f->rep, &r), 0);
	assert_int_equal(replica_nlayers(r), 0);
	replica_close(r);

	/* The right key: the chain arrives whole. */
	assert_int_equal(transfer(f, &key, &key, lfd, port, &sret), 0);
	assert_int_equal(sret, 0);
	close(lfd);
	assert_replica_top(f, "002-l2_top.qcow2", 3);
}

static void test_key_file(void **state)
{
	struct fix *f = *state;
	struct replicate_key k;
	char path[600];

	snprintf(path, sizeof(path), "%s/key", f->dir);
	assert_int_equal(
	    qt_sh("printf '0123456789abcdef0123\\n' >'%s'; chmod 600 '%s'", path, path), 0);
	assert_int_equal(replicate_key_load(path, &k), 0);
	assert_int_equal(k.len, 20); /* the newline is not part of it */
	assert_memory_equal(k.bytes, "0123456789abcdef0123", 20);
	/* Readable by others: no secret. */
	assert_int_equal(qt_sh("chmod 644 '%s'", path), 0);
	assert_int_equal(replicate_key_load(path, &k), -EPERM);
	/* Too short to resist guessing. */
	assert_int_equal(qt_sh("printf 'short' >'%s'; chmod 600 '%s'", path, path), 0);
	assert_int_equal(replicate_key_load(path, &k), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_directory, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_crc_and_resume, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hostile, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tcp, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tcp_key, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_key_file, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
