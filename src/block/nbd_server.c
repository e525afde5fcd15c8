/*
 * NBD server: exports one blockdev to any number of clients, a thread each.
 *
 * Clients are hostile: every length is bounded before anything is
 * allocated or read, an unknown command gets EINVAL, and anything that
 * leaves the stream in doubt (bad magic, an oversized write payload, a
 * malformed option) ends that client's connection, never the server.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "block/nbd.h"
#include "block/nbd_proto.h"
#include "util/log.h"

/* Options one client may send before it must start transmission. */
#define NBD_MAX_OPTIONS 128
/* Seconds a client may take to finish the handshake. */
#define NBD_HANDSHAKE_TIMEOUT_S 30

struct nbd_conn {
	struct nbd_server *s;
	int fd;
	bool structured;
	bool no_zeroes;
	uint8_t *buf;
	size_t buf_size;
};

static int conn_recv(struct nbd_conn *c, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = recv(c->fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int conn_send(struct nbd_conn *c, const void *buf, size_t len, bool more)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A buffer of at least len bytes (len is bounded by the caller). */
static uint8_t *conn_buf(struct nbd_conn *c, size_t len)
{
	if (len > c->buf_size) {
		uint8_t *nb = realloc(c->buf, len);

		if (!nb)
			return NULL;
		c->buf = nb;
		c->buf_size = len;
	}
	return c->buf;
}

/* ---- handshake ---- */

static int opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
		     uint32_t len)
{
	uint8_t hdr[NBD_OPT_REPLY_SIZE];
	int r;

	nbd_put64(hdr, NBD_REP_MAGIC);
	nbd_put32(hdr + 8, opt);
	nbd_put32(hdr + 12, type);
	nbd_put32(hdr + 16, len);
	r = conn_send(c, hdr, sizeof(hdr), len > 0);
	return r < 0 || !len ? r : conn_send(c, data, len, false);
}

static bool name_matches(struct nbd_conn *c, const uint8_t *name, uint32_t len)
{
	const char *want = c->s->export_name ? c->s->export_name : "";

	/* The empty name asks for the default export, which is the only one. */
	return !len || (strlen(want) == len && !memcmp(want, name, len));
}

static uint16_t export_flags(struct nbd_conn *c)
{
	uint16_t f =
	    NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;

	if (c->s->readonly)
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
	return f;
}

static int send_info(struct nbd_conn *c, uint32_t opt, bool block_size)
{
	uint8_t b[14];
	int r;

	nbd_put16(b, NBD_INFO_EXPORT);
	nbd_put64(b + 2, c->s->bd->size);
	nbd_put16(b + 10, export_flags(c));
	r = opt_reply(c, opt, NBD_REP_INFO, b, 12);
	if (r < 0 || !block_size)
		return r;
	nbd_put16(b, NBD_INFO_BLOCK_SIZE);
	nbd_put32(b + 2, 1);
	nbd_put32(b + 6, 4096);
	nbd_put32(b + 10, NBD_MAX_PAYLOAD);
	return opt_reply(c, opt, NBD_REP_INFO, b, 14);
}

/* NBD_OPT_INFO and NBD_OPT_GO. Returns 1 when transmission should start. */
static int opt_info(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
	uint32_t nlen;
	uint16_t ninfo;
	bool block_size = false;
	int r;

	if (len < 6 || (nlen = nbd_get32(d)) > len - 6)
		return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
	ninfo = nbd_get16(d + 4 + nlen);
	if (len != 6 + nlen + 2u * ninfo)
		return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
	if (!name_matches(c, d + 4, nlen))
		return opt_reply(c, opt, NBD_REP_ERR_UNKNOWN, NULL, 0);
	for (uint16_t i = 0; i < ninfo; i++)
		if (nbd_get16(d + 6 + nlen + 2 * i) == NBD_INFO_BLOCK_SIZE)
			block_size = true;
	r = send_info(c, opt, block_size);
	if (!r)
		r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
	return r < 0 ? r : opt == NBD_OPT_GO;
}

static int opt_export_name(struct nbd_conn *c, const uint8_t *d, uint32_t len)
{
	uint8_t b[10 + 124] = {0};

	if (!name_matches(c, d, len))
		return -ENOENT; /* this old option has no way to say so but hanging up */
	nbd_put64(b, c->s->bd->size);
	nbd_put16(b + 8, export_flags(c));
	return conn_send(c, b, c->no_zeroes ? 10 : sizeof(b), false) < 0 ? -EIO : 1;
}

static int opt_list(struct nbd_conn *c, uint32_t len)
{
	const char *name = c->s->export_name ? c->s->export_name : "";
	size_t n = strlen(name);
	uint8_t *b;
	int r;

	if (len)
		return opt_reply(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, NULL, 0);
	b = conn_buf(c, 4 + n);
	if (!b)
		return -ENOMEM;
	nbd_put32(b, (uint32_t)n);
	memcpy(b + 4, name, n);
	r = opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, b, (uint32_t)(4 + n));
	return r < 0 ? r : opt_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* One option. 1: go to transmission; 0: next option; <0: hang up. */
static int handle_option(struct nbd_conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
	switch (opt) {
	case NBD_OPT_EXPORT_NAME:
		return opt_export_name(c, d, len);
	case NBD_OPT_ABORT:
		opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
		return -ECONNABORTED;
	case NBD_OPT_LIST:
		return opt_list(c, len);
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return opt_info(c, opt, d, len);
	case NBD_OPT_STRUCTURED_REPLY:
		if (len)
			return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
		c->structured = true;
		return opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
	default:
		return opt_reply(c, opt, NBD_REP_ERR_UNSUP, NULL, 0);
	}
}

static int handshake(struct nbd_conn *c)
{
	uint8_t hello[18], b[NBD_OPT_HDR_SIZE], *d;
	uint32_t cflags, opt, len;
	int r;

	nbd_put64(hello, NBD_MAGIC);
	nbd_put64(hello + 8, NBD_IHAVEOPT);
	nbd_put16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	r = conn_send(c, hello, sizeof(hello), false);
	if (!r)
		r = conn_recv(c, b, 4);
	if (r < 0)
		return r;
	cflags = nbd_get32(b);
	if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE) ||
	    (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)))
		return -EPROTO;
	c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
	d = conn_buf(c, NBD_MAX_OPT_LEN);
	if (!d)
		return -ENOMEM;
	for (int i = 0; i < NBD_MAX_OPTIONS; i++) {
		r = conn_recv(c, b, sizeof(b));
		if (r < 0)
			return r;
		opt = nbd_get32(b + 8);
		len = nbd_get32(b + 12);
		if (nbd_get64(b) != NBD_IHAVEOPT || len > NBD_MAX_OPT_LEN)
			return -EPROTO;
		r = conn_recv(c, d, len);
		if (!r)
			r = handle_option(c, opt, d, len);
		if (r)
			return r;
	}
	return -EPROTO;
}

/* ---- transmission ---- */

static int reply_simple(struct nbd_conn *c, uint64_t cookie, int err, const void *data,
			uint32_t len)
{
	uint8_t b[NBD_SIMPLE_REPLY_SIZE];
	int r;

	nbd_put32(b, NBD_SIMPLE_REPLY_MAGIC);
	nbd_put32(b + 4, nbd_errno_to_wire(err));
	nbd_put64(b + 8, cookie);
	r = conn_send(c, b, sizeof(b), len > 0);
	return r < 0 || !len ? r : conn_send(c, data, len, false);
}

/* A read's answer: one data chunk, or an error chunk, when structured replies are on. */
static int reply_read(struct nbd_conn *c, uint64_t cookie, int err, uint64_t off, const void *data,
		      uint32_t len)
{
	uint8_t b[NBD_CHUNK_HDR_SIZE + 8];
	int r;

	if (!c->structured)
		return reply_simple(c, cookie, err, data, err ? 0 : len);
	nbd_put32(b, NBD_STRUCTURED_REPLY_MAGIC);
	nbd_put16(b + 4, NBD_REPLY_FLAG_DONE);
	nbd_put16(b + 6, err ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_OFFSET_DATA);
	nbd_put64(b + 8, cookie);
	if (err) {
		nbd_put32(b + 16, 6);
		nbd_put32(b + 20, nbd_errno_to_wire(err));
		nbd_put16(b + 24, 0);
		return conn_send(c, b, NBD_CHUNK_HDR_SIZE + 6, false);
	}
	nbd_put32(b + 16, 8 + len);
	nbd_put64(b + 20, off);
	r = conn_send(c, b, sizeof(b), true);
	return r < 0 ? r : conn_send(c, data, len, false);
}

static bool in_range(struct nbd_conn *c, uint64_t off, uint64_t len)
{
	return off <= c->s->bd->size && len <= c->s->bd->size - off;
}

static int do_read(struct nbd_conn *c, uint64_t cookie, uint64_t off, uint32_t len)
{
	uint8_t *buf;
	int err;

	if (len > NBD_MAX_PAYLOAD || !in_range(c, off, len))
		return reply_read(c, cookie, -EINVAL, off, NULL, 0);
	buf = conn_buf(c, len);
	if (!buf)
		return reply_read(c, cookie, -ENOMEM, off, NULL, 0);
	err = blk_pread(c->s->bd, buf, len, off);
	return reply_read(c, cookie, err, off, buf, len);
}

static int fua(struct nbd_conn *c, uint16_t flags, int err)
{
	return !err && (flags & NBD_CMD_FLAG_FUA) ? blk_flush(c->s->bd) : err;
}

static int do_write(struct nbd_conn *c, uint16_t flags, uint64_t cookie, uint64_t off, uint32_t len)
{
	uint8_t *buf;
	int err, r;

	/* The payload follows; one too large to take in leaves the stream lost. */
	if (len > NBD_MAX_PAYLOAD)
		return -EPROTO;
	buf = conn_buf(c, len);
	if (!buf)
		return -ENOMEM;
	r = conn_recv(c, buf, len);
	if (r < 0)
		return r;
	if (c->s->readonly)
		err = -EPERM;
	else if (!in_range(c, off, len))
		err = -ENOSPC;
	else
		err = fua(c, flags, blk_pwrite(c->s->bd, buf, len, off));
	return reply_simple(c, cookie, err, NULL, 0);
}

static int zero_range(struct nbd_conn *c, uint64_t off, uint32_t len)
{
	int err = blk_write_zeroes(c->s->bd, off, len);
	uint8_t *buf;

	if (err != -EOPNOTSUPP)
		return err;
	buf = conn_buf(c, 65536);
	if (!buf)
		return -ENOMEM;
	memset(buf, 0, 65536);
	while (len && !err) {
		uint32_t n = len < 65536 ? len : 65536;

		err = blk_pwrite(c->s->bd, buf, n, off);
		off += n;
		len -= n;
	}
	return err;
}

static int do_range(struct nbd_conn *c, uint16_t type, uint16_t flags, uint64_t cookie,
		    uint64_t off, uint32_t len)
{
	int err;

	if (c->s->readonly)
		err = -EPERM;
	else if (!in_range(c, off, len))
		err = -ENOSPC;
	else if (type == NBD_CMD_TRIM)
		err = fua(c, flags, blk_discard(c->s->bd, off, len));
	else
		err = fua(c, flags, zero_range(c, off, len));
	return reply_simple(c, cookie, err, NULL, 0);
}

/* One request. 0: next request; <0: hang up. */
static int handle_request(struct nbd_conn *c, const uint8_t *h)
{
	uint16_t flags = nbd_get16(h + 4), type = nbd_get16(h + 6);
	uint64_t cookie = nbd_get64(h + 8), off = nbd_get64(h + 16);
	uint32_t len = nbd_get32(h + 24);

	if (nbd_get32(h) != NBD_REQUEST_MAGIC)
		return -EPROTO;
	switch (type) {
	case NBD_CMD_READ:
		return do_read(c, cookie, off, len);
	case NBD_CMD_WRITE:
		return do_write(c, flags, cookie, off, len);
	case NBD_CMD_DISC:
		return -ECONNABORTED;
	case NBD_CMD_FLUSH:
		return reply_simple(c, cookie, c->s->readonly ? 0 : blk_flush(c->s->bd), NULL, 0);
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		return do_range(c, type, flags, cookie, off, len);
	default:
		return reply_simple(c, cookie, -EINVAL, NULL, 0);
	}
}

void nbd_serve_client(struct nbd_server *s, int fd)
{
	struct nbd_conn c = {.s = s, .fd = fd};
	struct timeval tv = {.tv_sec = NBD_HANDSHAKE_TIMEOUT_S};
	uint8_t h[NBD_REQUEST_SIZE];
	int r;

	/* A client that never finishes the handshake must not hold a thread forever. */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	r = handshake(&c);
	if (r > 0) {
		tv.tv_sec = 0;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		do {
			r = conn_recv(&c, h, sizeof(h));
			if (!r)
				r = handle_request(&c, h);
		} while (!r);
	}
	if (r == -EPROTO)
		pr_warn("nbd-serve: a client broke the protocol; disconnected");
	shutdown(fd, SHUT_RDWR);
	close(fd);
	free(c.buf);
}

/* ---- listening ---- */

int nbd_listen_tcp(const char *addr, uint16_t *port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char pstr[8];
	int fd, r, one = 1;

	snprintf(pstr, sizeof(pstr), "%u", *port);
	r = getaddrinfo(addr, pstr, &hints, &res);
	if (r) {
		pr_err("nbd-serve: %s: %s", addr, gai_strerror(r));
		return -EINVAL;
	}
	fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		r = -errno;
		close(fd);
		goto out;
	}
	*port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					       : ((struct sockaddr_in *)&ss)->sin_port);
	r = fd;
out:
	freeaddrinfo(res);
	return r;
}

int nbd_listen_unix(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	/* A stale socket from an earlier run may go; any other file stays. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

struct client_arg {
	struct nbd_server *s;
	int fd;
};

static void *client_main(void *arg)
{
	struct client_arg *a = arg;
	struct nbd_server *s = a->s;

	nbd_serve_client(s, a->fd);
	free(a);
	pthread_mutex_lock(&s->lock);
	s->active--;
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void start_client(struct nbd_server *s, int fd)
{
	unsigned *active = &s->active;
	pthread_mutex_t *lock = &s->lock;
	struct client_arg *a = NULL;
	pthread_attr_t attr;
	pthread_t t;
	bool full;
	int one = 1;

	pthread_mutex_lock(lock);
	full = *active >= s->max_clients;
	if (!full)
		(*active)++;
	pthread_mutex_unlock(lock);
	if (full) {
		pr_warn("nbd-serve: %u clients already; refusing another", s->max_clients);
		goto refuse;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	a = malloc(sizeof(*a));
	if (!a)
		goto undo;
	*a = (struct client_arg){.s = s, .fd = fd};
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, client_main, a) == 0) {
		pthread_attr_destroy(&attr);
		return;
	}
	pthread_attr_destroy(&attr);
	free(a);
undo:
	pthread_mutex_lock(lock);
	(*active)--;
	pthread_mutex_unlock(lock);
refuse:
	close(fd);
}

int nbd_serve(struct nbd_server *s, int stop_fd)
{
	bool idle = false;

	pthread_mutex_init(&s->lock, NULL);
	s->active = 0;
	if (!s->max_clients)
		s->max_clients = 64;
	for (;;) {
		struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
				      {.fd = stop_fd, .events = POLLIN}};
		int fd;

		if (poll(p, stop_fd >= 0 ? 2 : 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (stop_fd >= 0 && p[1].revents)
			break;
		fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		start_client(s, fd);
	}
	/* Give connected clients a moment to finish; they hold s (and s->bd). */
	for (int i = 0; i < 100 && !idle; i++) {
		pthread_mutex_lock(&s->lock);
		idle = !s->active;
		pthread_mutex_unlock(&s->lock);
		if (!idle)
			usleep(10000);
	}
	return idle ? 0 : -EBUSY;
}
