/*
 * NBD client block driver.
 *
 * One connection per disk. Callers (virtio-blk's I/O thread, `tern img`,
 * any number of threads) each take a request slot, send their request under
 * the send lock and sleep until the reader thread has matched a reply to
 * their cookie. Only the reader thread completes requests and writes into
 * callers' buffers, so a caller's memory is never touched after it returns;
 * the reader also enforces the timeout: a request unanswered for longer than
 * timeout_ms, a stalled message or any protocol violation kills the
 * connection and fails every outstanding request with -EIO.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "block/blk_int.h"
#include "block/nbd.h"
#include "block/nbd_proto.h"
#include "util/log.h"

/* Requests in flight on one connection; more callers wait for a free slot. */
#define NBD_SLOTS 64
/* Trim and write-zeroes carry no payload, but their length is 32 bits. */
#define NBD_MAX_RANGE (1u << 30)
/* Option replies tern reads while negotiating one option. */
#define NBD_MAX_OPT_REPLIES 64

struct nbd_req {
	bool used, done;
	uint16_t type;
	uint64_t cookie;
	uint64_t off;
	uint32_t len;
	const struct iovec *iov; /* read: where the data goes, from byte skip */
	int iovcnt;
	uint64_t skip;
	uint64_t covered; /* bytes of a structured read answered so far */
	int err;
	struct timespec sent;
};

struct nbd_dev {
	struct blockdev bd;
	int fd;
	int timeout_ms;
	uint16_t tflags;
	bool structured;
	uint32_t min_block, max_payload;

	pthread_mutex_t send_lock; /* one request on the wire at a time */
	pthread_mutex_t lock;	   /* slots, dead, closing */
	pthread_cond_t cond;	   /* a request completed or a slot came free */
	bool dead, closing;
	uint64_t generation;
	pthread_t reader;
	bool reader_started;
	struct nbd_req reqs[NBD_SLOTS];
};

static struct nbd_dev *to_nbd(struct blockdev *bd)
{
	return (struct nbd_dev *)bd;
}

/* ---- socket I/O with a deadline ---- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receive exactly len bytes, giving up when nothing arrives for timeout_ms. */
static int recv_full(int fd, void *buf, size_t len, int timeout_ms)
{
	char *p = buf;

	while (len) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		ssize_t n;
		int r = poll(&pfd, 1, timeout_ms);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		n = recv(fd, p, len, 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
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

/* The socket has SO_SNDTIMEO set, so a server that stops reading ends this too. */
static int send_full(int fd, const void *buf, size_t len, int flags)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, flags | MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int discard_bytes(int fd, uint64_t len, int timeout_ms)
{
	char scratch[4096];

	while (len) {
		size_t n = len < sizeof(scratch) ? (size_t)len : sizeof(scratch);
		int r = recv_full(fd, scratch, n, timeout_ms);

		if (r < 0)
			return r;
		len -= n;
	}
	return 0;
}

/* Apply fn to the part [skip, skip+len) of an iovec array. */
static int iov_range(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len,
		     int (*fn)(void *p, size_t n, void *arg), void *arg)
{
	for (int i = 0; i < iovcnt && len; i++) {
		size_t n;
		int r;

		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		n = iov[i].iov_len - skip;
		if (n > len)
			n = (size_t)len;
		r = fn((char *)iov[i].iov_base + skip, n, arg);
		if (r < 0)
			return r;
		len -= n;
		skip = 0;
	}
	return len ? -EINVAL : 0;
}

static int recv_piece(void *p, size_t n, void *arg)
{
	struct nbd_dev *d = arg;

	return recv_full(d->fd, p, n, d->timeout_ms);
}

static int zero_piece(void *p, size_t n, void *arg)
{
	memset(p, 0, n);
	return 0;
}

/* ---- the reader thread: matching replies to requests ---- */

/* Caller holds d->lock. NULL for a cookie no request is waiting on. */
static struct nbd_req *find_req(struct nbd_dev *d, uint64_t cookie)
{
	uint64_t slot = cookie & 0xff;
	struct nbd_req *req;

	if (slot >= NBD_SLOTS)
		return NULL;
	req = &d->reqs[slot];
	if (!req->used || req->done || req->cookie != cookie)
		return NULL;
	return req;
}

static struct nbd_req *lookup(struct nbd_dev *d, uint64_t cookie)
{
	struct nbd_req *req;

	pthread_mutex_lock(&d->lock);
	req = find_req(d, cookie);
	pthread_mutex_unlock(&d->lock);
	if (!req)
		pr_err("nbd: %s: reply for cookie %#llx, which no request is waiting on",
		       d->bd.spec ? d->bd.spec : "server", (unsigned long long)cookie);
	return req;
}

static void complete(struct nbd_dev *d, struct nbd_req *req, int err)
{
	pthread_mutex_lock(&d->lock);
	req->err = err;
	req->done = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

static int handle_simple(struct nbd_dev *d, const uint8_t *hdr)
{
	uint32_t error = nbd_get32(hdr + 4);
	struct nbd_req *req = lookup(d, nbd_get64(hdr + 8));
	int r;

	if (!req)
		return -EPROTO;
	if (req->type == NBD_CMD_READ && !error) {
		if (req->covered)
			return -EPROTO; /* a simple reply after structured chunks */
		r = iov_range(req->iov, req->iovcnt, req->skip, req->len, recv_piece, d);
		if (r < 0)
			return r;
	}
	complete(d, req, error ? nbd_wire_to_errno(error) : 0);
	return 0;
}

/* Check that [off, off+len) lies inside the request's range; return the offset into it. */
static int chunk_range(const struct nbd_req *req, uint64_t off, uint64_t len, uint64_t *rel)
{
	if (off < req->off || off - req->off > req->len || len > req->len - (off - req->off))
		return -EPROTO;
	*rel = off - req->off;
	return 0;
}

static int chunk_data(struct nbd_dev *d, struct nbd_req *req, uint32_t length)
{
	uint8_t b[8];
	uint64_t rel;
	int r;

	if (req->type != NBD_CMD_READ || length <= 8)
		return -EPROTO;
	r = recv_full(d->fd, b, 8, d->timeout_ms);
	if (r < 0)
		return r;
	if (chunk_range(req, nbd_get64(b), length - 8, &rel) < 0)
		return -EPROTO;
	r = iov_range(req->iov, req->iovcnt, req->skip + rel, length - 8, recv_piece, d);
	req->covered += length - 8;
	return r;
}

static int chunk_hole(struct nbd_dev *d, struct nbd_req *req, uint32_t length)
{
	uint8_t b[12];
	uint64_t rel;
	uint32_t size;
	int r;

	if (req->type != NBD_CMD_READ || length != 12)
		return -EPROTO;
	r = recv_full(d->fd, b, 12, d->timeout_ms);
	if (r < 0)
		return r;
	size = nbd_get32(b + 8);
	if (!size || chunk_range(req, nbd_get64(b), size, &rel) < 0)
		return -EPROTO;
	iov_range(req->iov, req->iovcnt, req->skip + rel, size, zero_piece, NULL);
	req->covered += size;
	return 0;
}

static int chunk_error(struct nbd_dev *d, struct nbd_req *req, uint16_t type, uint32_t length)
{
	uint8_t b[6];
	char msg[NBD_MAX_NAME + 1];
	uint32_t error;
	uint16_t msglen;
	int r;

	if (length < 6 || length > 6 + NBD_MAX_NAME + 8)
		return -EPROTO;
	r = recv_full(d->fd, b, 6, d->timeout_ms);
	if (r < 0)
		return r;
	error = nbd_get32(b);
	msglen = nbd_get16(b + 4);
	if (msglen > length - 6 || !error)
		return -EPROTO;
	if (type == NBD_REPLY_TYPE_ERROR_OFFSET && length - 6 - msglen != 8)
		return -EPROTO;
	r = recv_full(d->fd, msg, msglen, d->timeout_ms);
	if (r < 0)
		return r;
	msg[msglen] = 0;
	for (uint16_t i = 0; i < msglen; i++)
		if (msg[i] < 0x20 || msg[i] > 0x7e)
			msg[i] = '?';
	if (msglen)
		pr_warn("nbd: %s: server error: %s", d->bd.spec ? d->bd.spec : "server", msg);
	r = discard_bytes(d->fd, length - 6 - msglen, d->timeout_ms);
	if (!req->err)
		req->err = nbd_wire_to_errno(error);
	return r;
}

static int handle_chunk(struct nbd_dev *d, const uint8_t *hdr)
{
	uint16_t flags = nbd_get16(hdr + 4), type = nbd_get16(hdr + 6);
	uint32_t length = nbd_get32(hdr + 16);
	struct nbd_req *req = lookup(d, nbd_get64(hdr + 8));
	int r, err;

	if (!req)
		return -EPROTO;
	switch (type) {
	case NBD_REPLY_TYPE_NONE:
		r = (length || !(flags & NBD_REPLY_FLAG_DONE)) ? -EPROTO : 0;
		break;
	case NBD_REPLY_TYPE_OFFSET_DATA:
		r = chunk_data(d, req, length);
		break;
	case NBD_REPLY_TYPE_OFFSET_HOLE:
		r = chunk_hole(d, req, length);
		break;
	case NBD_REPLY_TYPE_ERROR:
	case NBD_REPLY_TYPE_ERROR_OFFSET:
		r = chunk_error(d, req, type, length);
		break;
	default:
		r = -EPROTO;
		break;
	}
	if (r < 0)
		return r;
	if (flags & NBD_REPLY_FLAG_DONE) {
		err = req->err;
		/* A successful read must have been answered in full. */
		if (!err && req->type == NBD_CMD_READ && req->covered != req->len)
			err = -EIO;
		complete(d, req, err);
	}
	return 0;
}

/* Wait for the next reply; fail when a request has waited longer than the timeout. */
static int wait_reply(struct nbd_dev *d)
{
	for (;;) {
		struct pollfd pfd = {.fd = d->fd, .events = POLLIN};
		int r = poll(&pfd, 1, 200);
		int64_t now;
		bool overdue = false, closing;

		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		now = now_ms();
		pthread_mutex_lock(&d->lock);
		for (int i = 0; i < NBD_SLOTS; i++) {
			struct nbd_req *q = &d->reqs[i];

			if (q->used && !q->done &&
			    now - ((int64_t)q->sent.tv_sec * 1000 + q->sent.tv_nsec / 1000000) >
				d->timeout_ms)
				overdue = true;
		}
		closing = d->closing;
		pthread_mutex_unlock(&d->lock);
		if (overdue)
			return -ETIMEDOUT;
		if (closing)
			return -ESHUTDOWN;
	}
}

static int read_one_reply(struct nbd_dev *d)
{
	uint8_t hdr[NBD_CHUNK_HDR_SIZE];
	uint32_t magic;
	int r;

	r = wait_reply(d);
	if (r < 0)
		return r;
	r = recv_full(d->fd, hdr, 4, d->timeout_ms);
	if (r < 0)
		return r;
	magic = nbd_get32(hdr);
	if (magic == NBD_SIMPLE_REPLY_MAGIC) {
		r = recv_full(d->fd, hdr + 4, NBD_SIMPLE_REPLY_SIZE - 4, d->timeout_ms);
		return r < 0 ? r : handle_simple(d, hdr);
	}
	if (magic == NBD_STRUCTURED_REPLY_MAGIC && d->structured) {
		r = recv_full(d->fd, hdr + 4, NBD_CHUNK_HDR_SIZE - 4, d->timeout_ms);
		return r < 0 ? r : handle_chunk(d, hdr);
	}
	pr_err("nbd: %s: bad reply magic %#x", d->bd.spec ? d->bd.spec : "server", magic);
	return -EPROTO;
}

/* The connection is over: fail whatever is still waiting, refuse what comes. */
static void fail_all(struct nbd_dev *d)
{
	pthread_mutex_lock(&d->lock);
	d->dead = true;
	for (int i = 0; i < NBD_SLOTS; i++) {
		if (d->reqs[i].used && !d->reqs[i].done) {
			d->reqs[i].done = true;
			d->reqs[i].err = -EIO;
		}
	}
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	shutdown(d->fd, SHUT_RDWR);
}

static void *reader_main(void *arg)
{
	struct nbd_dev *d = arg;
	bool closing;
	int r;

	do
		r = read_one_reply(d);
	while (r == 0);
	pthread_mutex_lock(&d->lock);
	closing = d->closing;
	pthread_mutex_unlock(&d->lock);
	if (!closing)
		pr_err("nbd: %s: connection lost: %s", d->bd.spec ? d->bd.spec : "server",
		       r == -EPROTO ? "protocol error" : strerror(-r));
	fail_all(d);
	return NULL;
}

/* ---- submitting requests ---- */

static struct nbd_req *take_slot(struct nbd_dev *d)
{
	struct nbd_req *req = NULL;

	pthread_mutex_lock(&d->lock);
	while (!d->dead && !req) {
		for (int i = 0; i < NBD_SLOTS && !req; i++)
			if (!d->reqs[i].used)
				req = &d->reqs[i];
		if (!req)
			pthread_cond_wait(&d->cond, &d->lock);
	}
	if (req) {
		memset(req, 0, sizeof(*req));
		req->used = true;
		req->cookie = (++d->generation << 8) | (uint64_t)(req - d->reqs);
		clock_gettime(CLOCK_MONOTONIC, &req->sent);
	}
	pthread_mutex_unlock(&d->lock);
	return req;
}

/* Send a whole iovec array (modified in place), resuming after short sends. */
static int sendv_full(int fd, struct iovec *v, int cnt)
{
	while (cnt) {
		struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)(cnt > 1024 ? 1024 : cnt)};
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		while (cnt && (size_t)n >= v->iov_len) {
			n -= (ssize_t)v->iov_len;
			v++;
			cnt--;
		}
		if (cnt) {
			v->iov_base = (char *)v->iov_base + n;
			v->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/* Header plus, for a write, the request's part of the caller's iovec array. */
static int send_request(struct nbd_dev *d, struct nbd_req *req, uint16_t flags)
{
	uint8_t hdr[NBD_REQUEST_SIZE];
	struct iovec stack[9], *v = stack;
	uint64_t skip = req->skip, left = 0;
	int cnt = 1, r;

	nbd_put32(hdr, NBD_REQUEST_MAGIC);
	nbd_put16(hdr + 4, flags);
	nbd_put16(hdr + 6, req->type);
	nbd_put64(hdr + 8, req->cookie);
	nbd_put64(hdr + 16, req->off);
	nbd_put32(hdr + 24, req->len);
	if (req->type == NBD_CMD_WRITE) {
		left = req->len;
		if (req->iovcnt + 1 > (int)(sizeof(stack) / sizeof(stack[0]))) {
			v = calloc((size_t)req->iovcnt + 1, sizeof(*v));
			if (!v)
				return -ENOMEM;
		}
	}
	v[0].iov_base = hdr;
	v[0].iov_len = sizeof(hdr);
	for (int i = 0; i < req->iovcnt && left; i++) {
		size_t n;

		if (skip >= req->iov[i].iov_len) {
			skip -= req->iov[i].iov_len;
			continue;
		}
		n = req->iov[i].iov_len - skip;
		n = n > left ? (size_t)left : n;
		v[cnt].iov_base = (char *)req->iov[i].iov_base + skip;
		v[cnt++].iov_len = n;
		left -= n;
		skip = 0;
	}
	pthread_mutex_lock(&d->send_lock);
	r = sendv_full(d->fd, v, cnt);
	pthread_mutex_unlock(&d->send_lock);
	if (v != stack)
		free(v);
	return r;
}

/* One request on the wire and its answer. */
static int nbd_do(struct nbd_dev *d, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
		  const struct iovec *iov, int iovcnt, uint64_t skip)
{
	struct nbd_req *req = take_slot(d);
	int err;

	if (!req)
		return -EIO;
	req->type = type;
	req->off = off;
	req->len = len;
	req->iov = iov;
	req->iovcnt = iovcnt;
	req->skip = skip;
	if (send_request(d, req, flags) < 0) {
		/* The stream is broken mid-message: the reader fails every request. */
		pthread_mutex_lock(&d->lock);
		d->dead = true;
		pthread_mutex_unlock(&d->lock);
		shutdown(d->fd, SHUT_RDWR);
	}
	pthread_mutex_lock(&d->lock);
	while (!req->done)
		pthread_cond_wait(&d->cond, &d->lock);
	err = req->err;
	req->used = false;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int nbd_rw(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off,
		  uint16_t type)
{
	struct nbd_dev *d = to_nbd(bd);
	uint64_t total = blk_iov_len(iov, iovcnt), done = 0;

	if (d->min_block > 1 && (off % d->min_block || total % d->min_block))
		return -EINVAL;
	while (done < total) {
		uint64_t n = total - done;
		int r;

		if (n > d->max_payload)
			n = d->max_payload;
		r = nbd_do(d, type, 0, off + done, (uint32_t)n, iov, iovcnt, done);
		if (r < 0)
			return r;
		done += n;
	}
	return 0;
}

static int nbd_preadv(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return nbd_rw(bd, iov, iovcnt, off, NBD_CMD_READ);
}

static int nbd_pwritev(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return nbd_rw(bd, iov, iovcnt, off, NBD_CMD_WRITE);
}

static int nbd_flush(struct blockdev *bd)
{
	struct nbd_dev *d = to_nbd(bd);

	if (!(d->tflags & NBD_FLAG_SEND_FLUSH))
		return 0; /* the server says it has no cache to flush */
	return nbd_do(d, NBD_CMD_FLUSH, 0, 0, 0, NULL, 0, 0);
}

static int nbd_range(struct nbd_dev *d, uint16_t type, uint64_t off, uint64_t len)
{
	while (len) {
		uint32_t n = len > NBD_MAX_RANGE ? NBD_MAX_RANGE : (uint32_t)len;
		int r = nbd_do(d, type, 0, off, n, NULL, 0, 0);

		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

static int nbd_discard(struct blockdev *bd, uint64_t off, uint64_t len)
{
	struct nbd_dev *d = to_nbd(bd);

	if (!(d->tflags & NBD_FLAG_SEND_TRIM))
		return 0; /* discard is advisory */
	return nbd_range(d, NBD_CMD_TRIM, off, len);
}

static int nbd_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	struct nbd_dev *d = to_nbd(bd);
	struct iovec iov;
	void *zero;
	int r = 0;

	if (d->tflags & NBD_FLAG_SEND_WRITE_ZEROES)
		return nbd_range(d, NBD_CMD_WRITE_ZEROES, off, len);
	/* Without the command, write real zeroes. */
	iov.iov_len = len < (1u << 20) ? (size_t)len : (1u << 20);
	zero = calloc(1, iov.iov_len ? iov.iov_len : 1);
	if (!zero)
		return -ENOMEM;
	iov.iov_base = zero;
	while (len && !r) {
		iov.iov_len = len < iov.iov_len ? (size_t)len : iov.iov_len;
		r = nbd_rw(bd, &iov, 1, off, NBD_CMD_WRITE);
		off += iov.iov_len;
		len -= iov.iov_len;
	}
	free(zero);
	return r;
}

static void nbd_free(struct nbd_dev *d)
{
	if (d->reader_started) {
		pthread_mutex_lock(&d->lock);
		d->closing = true;
		pthread_mutex_unlock(&d->lock);
		pthread_join(d->reader, NULL);
	}
	if (d->fd >= 0)
		close(d->fd);
	pthread_mutex_destroy(&d->send_lock);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	free(d);
}

static void nbd_close(struct blockdev *bd)
{
	struct nbd_dev *d = to_nbd(bd);
	uint8_t hdr[NBD_REQUEST_SIZE] = {0};
	bool dead;

	pthread_mutex_lock(&d->lock);
	dead = d->dead;
	d->closing = true; /* the server hanging up now is no news */
	pthread_mutex_unlock(&d->lock);
	if (!dead) {
		/* A polite goodbye; the server sends no reply to it. */
		nbd_put32(hdr, NBD_REQUEST_MAGIC);
		nbd_put16(hdr + 6, NBD_CMD_DISC);
		pthread_mutex_lock(&d->send_lock);
		send_full(d->fd, hdr, sizeof(hdr), 0);
		pthread_mutex_unlock(&d->send_lock);
	}
	shutdown(d->fd, SHUT_RDWR);
	nbd_free(d);
}

static const struct blockdev_ops nbd_ops = {
    .format = "nbd",
    .preadv = nbd_preadv,
    .pwritev = nbd_pwritev,
    .flush = nbd_flush,
    .discard = nbd_discard,
    .write_zeroes = nbd_write_zeroes,
    .close = nbd_close,
};

/* ---- negotiation ---- */

static int send_option(struct nbd_dev *d, uint32_t opt, const void *data, uint32_t len)
{
	uint8_t hdr[NBD_OPT_HDR_SIZE];
	int r;

	nbd_put64(hdr, NBD_IHAVEOPT);
	nbd_put32(hdr + 8, opt);
	nbd_put32(hdr + 12, len);
	r = send_full(d->fd, hdr, sizeof(hdr), len ? MSG_MORE : 0);
	return r < 0 || !len ? r : send_full(d->fd, data, len, 0);
}

/* Read one option reply into buf (at least NBD_MAX_OPT_LEN bytes). */
static int recv_option_reply(struct nbd_dev *d, uint32_t opt, uint32_t *type, uint8_t *buf,
			     uint32_t *len)
{
	uint8_t hdr[NBD_OPT_REPLY_SIZE];
	int r = recv_full(d->fd, hdr, sizeof(hdr), d->timeout_ms);

	if (r < 0)
		return r;
	*type = nbd_get32(hdr + 12);
	*len = nbd_get32(hdr + 16);
	if (nbd_get64(hdr) != NBD_REP_MAGIC || nbd_get32(hdr + 8) != opt ||
	    *len > NBD_MAX_OPT_LEN) {
		pr_err("nbd: malformed option reply from the server");
		return -EPROTO;
	}
	return recv_full(d->fd, buf, *len, d->timeout_ms);
}

static void option_error(const char *what, uint32_t type, const uint8_t *buf, uint32_t len)
{
	char msg[128];
	uint32_t n = len < sizeof(msg) - 1 ? len : sizeof(msg) - 1;

	for (uint32_t i = 0; i < n; i++)
		msg[i] = (buf[i] >= 0x20 && buf[i] < 0x7f) ? (char)buf[i] : '?';
	msg[n] = 0;
	pr_err("nbd: server refused %s (error %#x)%s%s", what, type, n ? ": " : "", msg);
}

static int negotiate_structured(struct nbd_dev *d, uint8_t *buf)
{
	uint32_t type, len;
	int r = send_option(d, NBD_OPT_STRUCTURED_REPLY, NULL, 0);

	if (r < 0)
		return r;
	for (int i = 0; i < NBD_MAX_OPT_REPLIES; i++) {
		r = recv_option_reply(d, NBD_OPT_STRUCTURED_REPLY, &type, buf, &len);
		if (r < 0)
			return r;
		if (type == NBD_REP_ACK) {
			d->structured = true;
			return 0;
		}
		if (type & NBD_REP_FLAG_ERROR)
			return 0; /* fine: simple replies then */
	}
	return -EPROTO;
}

static int parse_info(struct nbd_dev *d, const uint8_t *buf, uint32_t len, bool *have_export)
{
	uint32_t minb, pref, maxb;

	if (len < 2)
		return -EPROTO;
	switch (nbd_get16(buf)) {
	case NBD_INFO_EXPORT:
		if (len != 12)
			return -EPROTO;
		d->bd.size = nbd_get64(buf + 2);
		d->tflags = nbd_get16(buf + 10);
		*have_export = true;
		return 0;
	case NBD_INFO_BLOCK_SIZE:
		if (len != 14)
			return -EPROTO;
		minb = nbd_get32(buf + 2);
		pref = nbd_get32(buf + 6);
		maxb = nbd_get32(buf + 10);
		if (!minb || minb > 65536 || (minb & (minb - 1)) || maxb < minb)
			return -EPROTO;
		(void)pref;
		d->min_block = minb;
		if (maxb < d->max_payload)
			d->max_payload = maxb - maxb % minb;
		return 0;
	default:
		return 0; /* names and descriptions: not needed */
	}
}

static int negotiate_go(struct nbd_dev *d, const char *name, uint8_t *buf)
{
	size_t nlen = strlen(name);
	uint32_t type, len;
	bool have_export = false;
	int r;

	if (nlen > NBD_MAX_NAME)
		return -ENAMETOOLONG;
	nbd_put32(buf, (uint32_t)nlen);
	memcpy(buf + 4, name, nlen);
	nbd_put16(buf + 4 + nlen, 1);
	nbd_put16(buf + 6 + nlen, NBD_INFO_BLOCK_SIZE);
	r = send_option(d, NBD_OPT_GO, buf, (uint32_t)nlen + 8);
	if (r < 0)
		return r;
	for (int i = 0; i < NBD_MAX_OPT_REPLIES; i++) {
		r = recv_option_reply(d, NBD_OPT_GO, &type, buf, &len);
		if (r < 0)
			return r;
		if (type == NBD_REP_INFO) {
			r = parse_info(d, buf, len, &have_export);
			if (r < 0) {
				pr_err("nbd: malformed export information from the server");
				return r;
			}
		} else if (type == NBD_REP_ACK) {
			return have_export ? 0 : -EPROTO;
		} else if (type == NBD_REP_ERR_UNKNOWN) {
			pr_err("nbd: the server has no export named '%s'", name);
			return -ENOENT;
		} else if (type & NBD_REP_FLAG_ERROR) {
			option_error("NBD_OPT_GO", type, buf, len);
			return type == NBD_REP_ERR_UNSUP ? -EOPNOTSUPP : -EIO;
		}
	}
	return -EPROTO;
}

/* Servers without NBD_OPT_GO: the old way, which cannot report errors. */
static int negotiate_export_name(struct nbd_dev *d, const char *name, bool zeroes)
{
	uint8_t b[10 + 124];
	int r = send_option(d, NBD_OPT_EXPORT_NAME, name, (uint32_t)strlen(name));

	if (r < 0)
		return r;
	r = recv_full(d->fd, b, zeroes ? sizeof(b) : 10, d->timeout_ms);
	if (r < 0)
		return r == -ECONNRESET ? -ENOENT : r;
	d->bd.size = nbd_get64(b);
	d->tflags = nbd_get16(b + 8);
	return 0;
}

static int negotiate(struct nbd_dev *d, const char *name)
{
	uint8_t hello[18], cflags[4];
	uint8_t *buf;
	uint16_t hflags;
	int r;

	r = recv_full(d->fd, hello, sizeof(hello), d->timeout_ms);
	if (r < 0)
		return r;
	hflags = nbd_get16(hello + 16);
	if (nbd_get64(hello) != NBD_MAGIC || nbd_get64(hello + 8) != NBD_IHAVEOPT ||
	    !(hflags & NBD_FLAG_FIXED_NEWSTYLE)) {
		pr_err("nbd: the server does not speak fixed newstyle negotiation");
		return -EPROTO;
	}
	nbd_put32(cflags, NBD_FLAG_C_FIXED_NEWSTYLE | (hflags & NBD_FLAG_NO_ZEROES));
	r = send_full(d->fd, cflags, sizeof(cflags), 0);
	if (r < 0)
		return r;
	buf = malloc(NBD_MAX_OPT_LEN + 16);
	if (!buf)
		return -ENOMEM;
	r = negotiate_structured(d, buf);
	if (!r)
		r = negotiate_go(d, name, buf);
	if (r == -EOPNOTSUPP)
		r = negotiate_export_name(d, name, !(hflags & NBD_FLAG_NO_ZEROES));
	free(buf);
	return r;
}

int nbd_open_fd(int fd, const struct nbd_client_opts *o, bool readonly, struct blockdev **out)
{
	struct nbd_dev *d = calloc(1, sizeof(*d));
	struct timeval tv;
	int r;

	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	d->fd = fd;
	d->timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : NBD_DEFAULT_TIMEOUT_MS;
	d->max_payload = NBD_MAX_PAYLOAD;
	d->min_block = 1;
	d->bd.ops = &nbd_ops;
	pthread_mutex_init(&d->send_lock, NULL);
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	tv.tv_sec = d->timeout_ms / 1000;
	tv.tv_usec = (d->timeout_ms % 1000) * 1000;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	r = negotiate(d, o && o->export_name ? o->export_name : "");
	if (r < 0)
		goto fail;
	d->bd.readonly = readonly || (d->tflags & NBD_FLAG_READ_ONLY);
	if (!readonly && d->bd.readonly)
		pr_warn("nbd: the export is read-only; the disk is opened read-only");
	r = -pthread_create(&d->reader, NULL, reader_main, d);
	if (r < 0)
		goto fail;
	d->reader_started = true;
	*out = &d->bd;
	return 0;
fail:
	if (r == -ETIMEDOUT || r == -ECONNRESET)
		pr_err("nbd: negotiation with the server failed: %s", strerror(-r));
	nbd_free(d);
	return r;
}

/* ---- URIs and connecting ---- */

bool nbd_is_uri(const char *spec)
{
	return !strncmp(spec, "nbd://", 6) || !strncmp(spec, "nbd+unix://", 11) ||
	       !strncmp(spec, "nbd+tcp://", 10);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Copy [s, s+n) with %XX escapes decoded; NULL on a bad escape or NUL byte. */
static char *pct_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%') {
			int hi, lo;

			if (n - i < 3)
				goto bad;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				goto bad;
			*o++ = (char)(hi << 4 | lo);
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = 0;
	return out;
bad:
	free(out);
	return NULL;
}

static int parse_authority(const char *a, size_t n, struct nbd_uri *u)
{
	const char *colon, *host = a;
	size_t hlen;

	if (n && a[0] == '[') {
		const char *close = memchr(a, ']', n);

		if (!close)
			return -EINVAL;
		host = a + 1;
		hlen = (size_t)(close - host);
		colon = close + 1 < a + n && close[1] == ':' ? close + 1 : NULL;
		if (!colon && close + 1 != a + n)
			return -EINVAL;
	} else {
		colon = memchr(a, ':', n);
		hlen = colon ? (size_t)(colon - a) : n;
	}
	if (!hlen)
		return -EINVAL;
	u->host = strndup(host, hlen);
	if (colon) {
		size_t plen = (size_t)(a + n - colon - 1);

		if (!plen || plen > 5 || strspn(colon + 1, "0123456789") < plen)
			return -EINVAL;
		u->port = strndup(colon + 1, plen);
	} else {
		u->port = strdup("10809");
	}
	return u->host && u->port ? 0 : -ENOMEM;
}

static int parse_query(const char *q, struct nbd_uri *u, bool unix_sock)
{
	while (*q) {
		size_t n = strcspn(q, "&");

		if (unix_sock && !strncmp(q, "socket=", 7) && !u->socket) {
			u->socket = pct_decode(q + 7, n - 7);
			if (!u->socket || !u->socket[0])
				return -EINVAL;
		} else {
			return -EINVAL;
		}
		q += n;
		if (*q)
			q++;
	}
	return 0;
}

int nbd_uri_parse(const char *uri, struct nbd_uri *u)
{
	bool unix_sock = !strncmp(uri, "nbd+unix://", 11);
	const char *p, *path, *query;
	int r;

	memset(u, 0, sizeof(*u));
	if (unix_sock)
		p = uri + 11;
	else if (!strncmp(uri, "nbd://", 6))
		p = uri + 6;
	else if (!strncmp(uri, "nbd+tcp://", 10))
		p = uri + 10;
	else
		return -EINVAL;
	path = p + strcspn(p, "/?");
	query = path + strcspn(path, "?");
	if (unix_sock)
		r = path == p ? 0 : -EINVAL; /* nbd+unix:// has no host */
	else
		r = parse_authority(p, (size_t)(path - p), u);
	if (r < 0)
		goto fail;
	u->export_name =
	    pct_decode(*path == '/' ? path + 1 : path, (size_t)(query - path) - (*path == '/'));
	r = u->export_name ? 0 : -EINVAL;
	if (!r && *query)
		r = parse_query(query + 1, u, unix_sock);
	if (!r && unix_sock && !u->socket)
		r = -EINVAL;
	if (!r)
		return 0;
fail:
	nbd_uri_free(u);
	return r;
}

void nbd_uri_free(struct nbd_uri *u)
{
	free(u->host);
	free(u->port);
	free(u->socket);
	free(u->export_name);
	memset(u, 0, sizeof(*u));
}

static int connect_unix(const char *path, int timeout_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static int connect_tcp(const char *host, const char *port, int timeout_ms)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res, *ai;
	/* On Linux SO_SNDTIMEO also bounds connect(). */
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	int fd = -1, r, one = 1;

	r = getaddrinfo(host, port, &hints, &res);
	if (r) {
		pr_err("nbd: %s: %s", host, gai_strerror(r));
		return -EHOSTUNREACH;
	}
	r = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			r = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		r = errno == EINPROGRESS || errno == EAGAIN ? -ETIMEDOUT : -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return r;
	/* Requests are whole messages; do not hold them back. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

int nbd_open(const char *uri, bool readonly, struct blockdev **out)
{
	struct nbd_client_opts o = {.timeout_ms = NBD_DEFAULT_TIMEOUT_MS};
	struct nbd_uri u;
	int fd, r;

	r = nbd_uri_parse(uri, &u);
	if (r < 0) {
		pr_err("%s: not an NBD URI (nbd://HOST[:PORT][/EXPORT] or "
		       "nbd+unix:///EXPORT?socket=PATH)",
		       uri);
		return r;
	}
	fd = u.socket ? connect_unix(u.socket, o.timeout_ms)
		      : connect_tcp(u.host, u.port, o.timeout_ms);
	if (fd < 0) {
		pr_err("%s: cannot connect: %s", uri, strerror(-fd));
		nbd_uri_free(&u);
		return fd;
	}
	o.export_name = u.export_name;
	r = nbd_open_fd(fd, &o, readonly, out);
	nbd_uri_free(&u);
	if (r < 0)
		return r;
	/* blk_close frees the name, as for every other driver. */
	(*out)->spec = strdup(uri);
	if (!(*out)->spec) {
		nbd_close(*out);
		return -ENOMEM;
	}
	return 0;
}
