/*
 * Replication to a recovery site: the replica directory (manifest, atomic
 * installation of layers, resume of partial ones), the wire protocol of
 * `tern replicate serve`, and the sender that walks a chain and ships it.
 *
 * Wire protocol (TCP, one line per command, '\n' terminated, <= 512 bytes):
 *   C: HELLO 1                      S: OK <n>, then n lines
 *                                      LAYER <idx> <bytes> <crc> <fmt> <name>
 *   C: BEGIN <idx> <bytes> <crc> <fmt> <name>
 *                                   S: GO <have> | HAVE | ERR <message>
 *   C: (after GO) bytes have..bytes-1 of the layer, raw
 *                                   S: DONE | ERR <message>
 *   C: BYE
 * crc is 8 hex digits (CRC-32 of the whole file), bytes decimal.
 *
 * With a key, before HELLO (nonces 32 bytes, MACs HMAC-SHA256, all hex):
 *   C: AUTH 1 <nc>                  S: CHALLENGE <ns> <HMAC(key, "server" nc ns)>
 *   C: PROOF <HMAC(key, "client" nc ns)>   (or ERR, if the server's MAC is wrong)
 *                                   S: WELCOME | ERR <message>
 * and from then on every line ends in " <tag>" and every data chunk (up to
 * CHUNK bytes) is followed by its 32-byte tag: HMAC(session key, writer
 * 'C'/'S', 64-bit sequence number, payload), session key = HMAC(key,
 * "session" nc ns).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "block/qcow2.h"
#include "block/replicate.h"
#include "block/replicate_auth.h"
#include "util/log.h"

#define CHUNK (1u << 20)
#define LINE_MAX_LEN 512
#define MAX_LAYER_BYTES (1ull << 44) /* 16 TiB: anything larger is a hostile header */
#define PART_PREFIX ".part-"

struct replica {
	char *dir;
	int dirfd;
	unsigned n;
	struct replica_layer layers[REPLICA_MAX_LAYERS];
	/* The layer being received. */
	int fd;
	unsigned idx;
	struct replica_layer in;
	char part[NAME_MAX + 1];
	uint64_t off;
	uint32_t crc;
};

/* ---- names and the manifest ---- */

static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > REPLICA_NAME_MAX || s[0] == '.' || !strcmp(s, REPLICA_MANIFEST))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
			    s[i]))
			return false;
	return true;
}

static bool valid_layer(const struct replica_layer *l, unsigned idx)
{
	if (!valid_name(l->name) || l->bytes > MAX_LAYER_BYTES)
		return false;
	if (!strcmp(l->format, "qcow2"))
		return true;
	/* A raw file has no backing file: it can only be the base. */
	return !strcmp(l->format, "raw") && idx == 0;
}

/* "<bytes> <crc> <fmt> <name>" */
static int parse_layer(const char *s, struct replica_layer *l)
{
	unsigned long long bytes;
	unsigned crc;
	char fmt[8], name[REPLICA_NAME_MAX + 2];
	int end = 0;

	if (sscanf(s, "%llu %8x %7s %201s%n", &bytes, &crc, fmt, name, &end) != 4 || s[end])
		return -EINVAL;
	memset(l, 0, sizeof(*l));
	l->bytes = bytes;
	l->crc = crc;
	snprintf(l->format, sizeof(l->format), "%s", fmt);
	if (strlen(name) > REPLICA_NAME_MAX)
		return -EINVAL;
	memcpy(l->name, name, strlen(name) + 1);
	return 0;
}

static int format_layer(char *buf, size_t n, const struct replica_layer *l)
{
	return snprintf(buf, n, "%" PRIu64 " %08x %s %s", l->bytes, l->crc, l->format, l->name);
}

static int load_manifest(struct replica *r)
{
	char line[LINE_MAX_LEN];
	int fd = openat(r->dirfd, REPLICA_MANIFEST, O_RDONLY | O_CLOEXEC), ret = 0;
	FILE *f;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return -errno;
	}
	if (!fgets(line, sizeof(line), f) || strcmp(line, "tern-replica 1\n"))
		ret = -EINVAL;
	while (ret == 0 && fgets(line, sizeof(line), f)) {
		size_t len = strlen(line);

		if (!len || line[len - 1] != '\n' || strncmp(line, "layer ", 6) ||
		    r->n >= REPLICA_MAX_LAYERS) {
			ret = -EINVAL;
			break;
		}
		line[len - 1] = 0;
		ret = parse_layer(line + 6, &r->layers[r->n]);
		if (ret == 0 && !valid_layer(&r->layers[r->n], r->n))
			ret = -EINVAL;
		r->n += ret == 0;
	}
	fclose(f);
	if (ret < 0)
		pr_err("%s/%s: not a valid replica manifest", r->dir, REPLICA_MANIFEST);
	return ret;
}

static int sync_dir(struct replica *r)
{
	return fsync(r->dirfd) < 0 ? -errno : 0;
}

/* Replace the manifest with the first n layers: temp file, fsync, rename, fsync dir. */
static int store_manifest(struct replica *r, unsigned n)
{
	char line[LINE_MAX_LEN];
	int fd, ret = 0;
	FILE *f;

	fd = openat(r->dirfd, REPLICA_MANIFEST ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		    0644);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		return -errno;
	}
	fprintf(f, "tern-replica 1\n");
	for (unsigned i = 0; i < n; i++) {
		format_layer(line, sizeof(line), &r->layers[i]);
		fprintf(f, "layer %s\n", line);
	}
	if (fflush(f) || fsync(fd) < 0)
		ret = -errno;
	if (fclose(f) && ret == 0)
		ret = -errno;
	if (ret == 0 && renameat(r->dirfd, REPLICA_MANIFEST ".tmp", r->dirfd, REPLICA_MANIFEST) < 0)
		ret = -errno;
	return ret < 0 ? ret : sync_dir(r);
}

int replica_open(const char *dir, struct replica **out)
{
	struct replica *r = calloc(1, sizeof(*r));
	int ret;

	if (!r)
		return -ENOMEM;
	r->fd = -1;
	r->dirfd = -1;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		ret = -errno;
		goto fail;
	}
	r->dir = realpath(dir, NULL);
	if (!r->dir) {
		ret = -errno;
		goto fail;
	}
	r->dirfd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->dirfd < 0) {
		ret = -errno;
		goto fail;
	}
	ret = load_manifest(r);
	if (ret < 0)
		goto fail;
	*out = r;
	return 0;
fail:
	pr_err("%s: cannot open the replica: %s", dir, strerror(-ret));
	replica_close(r);
	return ret;
}

void replica_close(struct replica *r)
{
	if (!r)
		return;
	replica_abort(r);
	if (r->dirfd >= 0)
		close(r->dirfd);
	free(r->dir);
	free(r);
}

unsigned replica_nlayers(const struct replica *r)
{
	return r->n;
}

const struct replica_layer *replica_get(const struct replica *r, unsigned idx)
{
	return idx < r->n ? &r->layers[idx] : NULL;
}

char *replica_top_path(const struct replica *r)
{
	char *p = NULL;

	if (r->n && asprintf(&p, "%s/%s", r->dir, r->layers[r->n - 1].name) < 0)
		p = NULL;
	return p;
}

/* ---- receiving a layer ---- */

/* Remove partial files other than keep (left by transfers of other layers). */
static void remove_stale_parts(struct replica *r, const char *keep)
{
	int fd = dup(r->dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, PART_PREFIX, strlen(PART_PREFIX)) &&
		    strcmp(e->d_name, keep))
			unlinkat(r->dirfd, e->d_name, 0);
	closedir(d);
}

/* CRC of the first len bytes of fd. */
static int crc_prefix(int fd, uint64_t len, uint32_t *crc)
{
	uint8_t *buf = malloc(CHUNK);
	uLong c = crc32(0, NULL, 0);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t off = 0; off < len && ret == 0;) {
		size_t n = len - off < CHUNK ? (size_t)(len - off) : CHUNK;

		ret = blk_fd_pread(fd, buf, n, off);
		c = crc32(c, buf, (uInt)n);
		off += n;
	}
	free(buf);
	*crc = (uint32_t)c;
	return ret;
}

int replica_begin(struct replica *r, unsigned idx, const struct replica_layer *l, uint64_t *have)
{
	struct stat st;
	int ret;

	replica_abort(r);
	if (idx > r->n || idx >= REPLICA_MAX_LAYERS || !valid_layer(l, idx))
		return -EINVAL;
	if (idx < r->n) {
		const struct replica_layer *o = &r->layers[idx];

		return !strcmp(o->name, l->name) && o->bytes == l->bytes && o->crc == l->crc
			   ? -EEXIST
			   : -ESTALE;
	}
	/* The partial file's name says what it holds: a resume must match exactly. */
	snprintf(r->part, sizeof(r->part), PART_PREFIX "%08x-%" PRIu64 "-%s", l->crc, l->bytes,
		 l->name);
	remove_stale_parts(r, r->part);
	r->fd = openat(r->dirfd, r->part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (r->fd < 0)
		return -errno;
	if (fstat(r->fd, &st) < 0) {
		ret = -errno;
		goto fail;
	}
	r->off = (uint64_t)st.st_size < l->bytes ? (uint64_t)st.st_size : l->bytes;
	ret = crc_prefix(r->fd, r->off, &r->crc);
	if (ret < 0)
		goto fail;
	r->idx = idx;
	r->in = *l;
	*have = r->off;
	return 0;
fail:
	replica_abort(r);
	return ret;
}

static bool all_zero(const uint8_t *p, uint64_t n)
{
	return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

int replica_write(struct replica *r, const void *buf, uint64_t len)
{
	int ret = 0;

	if (r->fd < 0)
		return -EBADF;
	if (len > r->in.bytes - r->off)
		return -EFBIG;
	r->crc = (uint32_t)crc32(r->crc, buf, (uInt)len);
	/* Zero runs stay holes: a sparse base image stays sparse. */
	if (!all_zero(buf, len))
		ret = blk_fd_pwrite(r->fd, buf, len, r->off);
	r->off += len;
	return ret;
}

/* The received layer must open with its chain and (qcow2) check clean. */
static int verify_layer(struct replica *r, const char *path)
{
	struct qcow2_check_result res;
	struct blockdev *bd;
	int ret = blk_open_fmt(path, r->in.format, true, &bd);

	if (ret < 0)
		return ret;
	if (!strcmp(r->in.format, "qcow2")) {
		ret = qcow2_check(bd, false, &res);
		if (ret == 0 && res.corruptions)
			ret = -EUCLEAN;
	}
	blk_close(bd);
	return ret;
}

static int install(struct replica *r)
{
	const struct replica_layer *parent = r->idx ? &r->layers[r->idx - 1] : NULL;
	char path[PATH_MAX];
	int ret;

	if (ftruncate(r->fd, (off_t)r->in.bytes) < 0 || fsync(r->fd) < 0)
		return -errno;
	if (r->crc != r->in.crc) {
		pr_err("%s: layer %s arrived with CRC %08x, the sender's is %08x: discarded",
		       r->dir, r->in.name, r->crc, r->in.crc);
		unlinkat(r->dirfd, r->part, 0);
		return -EBADMSG;
	}
	snprintf(path, sizeof(path), "%s/%s", r->dir, r->part);
	if (!strcmp(r->in.format, "qcow2")) {
		/* The primary's backing name means nothing here: name the replica's parent. */
		ret = qcow2_rewrite_backing(path, parent ? parent->name : NULL,
					    parent ? parent->format : NULL);
		if (ret < 0)
			return ret;
	}
	ret = verify_layer(r, path);
	if (ret < 0) {
		pr_err("%s: layer %s does not open as part of the chain: %s", r->dir, r->in.name,
		       strerror(-ret));
		return ret;
	}
	if (renameat(r->dirfd, r->part, r->dirfd, r->in.name) < 0)
		return -errno;
	ret = sync_dir(r);
	if (ret < 0)
		return ret;
	r->layers[r->idx] = r->in;
	ret = store_manifest(r, r->idx + 1);
	if (ret == 0)
		r->n = r->idx + 1;
	return ret;
}

int replica_commit(struct replica *r)
{
	int ret;

	if (r->fd < 0)
		return -EBADF;
	if (r->off != r->in.bytes)
		return -EPIPE;
	ret = install(r);
	close(r->fd);
	r->fd = -1;
	return ret;
}

void replica_abort(struct replica *r)
{
	if (r->fd >= 0) {
		fsync(r->fd); /* what arrived is kept for a resume */
		close(r->fd);
	}
	r->fd = -1;
}

/* ---- the wire ---- */

struct conn {
	int fd;
	char buf[LINE_MAX_LEN * 2];
	size_t len; /* bytes buffered */
	bool server;
	bool authed; /* every message from now on carries a tag */
	uint8_t session[RAUTH_TAG];
	uint64_t seq_in, seq_out;
};

#define TAG_HEX (2 * RAUTH_TAG)

/*
 * The tag of the next message in one direction: the writer's role and a
 * sequence number are covered, so a message cannot be replayed, reordered
 * or reflected back within the session.
 */
static int conn_tag(struct conn *c, bool outgoing, const void *data, size_t len,
		    uint8_t tag[RAUTH_TAG])
{
	uint64_t *seq = outgoing ? &c->seq_out : &c->seq_in;
	char role = (c->server == outgoing) ? 'S' : 'C';
	uint8_t be[8];
	struct iovec parts[3] = {{&role, 1}, {be, sizeof(be)}, {(void *)data, len}};

	for (int i = 0; i < 8; i++)
		be[i] = (uint8_t)(*seq >> (56 - 8 * i));
	(*seq)++;
	return rauth_hmac(c->session, sizeof(c->session), parts, 3, tag);
}

/* flags: MSG_MORE when a small piece follows at once (a chunk's tag). */
static int send_all(int fd, const void *buf, size_t len, int flags)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | flags);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	return send_all(fd, buf, len, 0);
}

__attribute__((format(printf, 2, 3))) static int say(struct conn *c, const char *fmt, ...)
{
	char line[LINE_MAX_LEN + 2];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= LINE_MAX_LEN - (c->authed ? TAG_HEX + 1 : 0))
		return -EINVAL;
	if (c->authed) {
		uint8_t tag[RAUTH_TAG];
		int r = conn_tag(c, true, line, (size_t)n, tag);

		if (r < 0)
			return r;
		line[n++] = ' ';
		rauth_hex(tag, RAUTH_TAG, line + n);
		n += TAG_HEX;
	}
	line[n++] = '\n';
	return write_all(c->fd, line, (size_t)n);
}

static int fill(struct conn *c)
{
	ssize_t n;

	do {
		n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ECONNRESET;
	c->len += (size_t)n;
	return 0;
}

/* Check and strip the tag of a line received in an authenticated session. */
static int check_line_tag(struct conn *c, char *line)
{
	uint8_t got[RAUTH_TAG], want[RAUTH_TAG];
	char *sp = strrchr(line, ' ');
	int r;

	if (!sp || rauth_unhex(sp + 1, got, RAUTH_TAG) < 0)
		return -EBADMSG;
	*sp = 0;
	r = conn_tag(c, false, line, (size_t)(sp - line), want);
	if (r < 0)
		return r;
	return rauth_tag_equal(got, want, RAUTH_TAG) ? 0 : -EBADMSG;
}

/* One line without its '\n' into line (LINE_MAX_LEN bytes); longer lines are an error. */
static int read_line_raw(struct conn *c, char *line)
{
	for (;;) {
		char *nl = memchr(c->buf, '\n', c->len);
		int ret;

		if (nl) {
			size_t n = (size_t)(nl - c->buf);

			if (n >= LINE_MAX_LEN)
				return -EMSGSIZE;
			memcpy(line, c->buf, n);
			line[n] = 0;
			c->len -= n + 1;
			memmove(c->buf, nl + 1, c->len);
			return memchr(line, 0, n) ? -EINVAL : 0;
		}
		if (c->len >= LINE_MAX_LEN)
			return -EMSGSIZE;
		ret = fill(c);
		if (ret < 0)
			return ret;
	}
}

static int read_line(struct conn *c, char *line)
{
	int r = read_line_raw(c, line);

	if (r == 0 && c->authed) {
		r = check_line_tag(c, line);
		if (r < 0)
			pr_err("replication: a message failed its integrity check");
	}
	return r;
}

/* Exactly len raw bytes (buffered ones first). */
static int read_raw(struct conn *c, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t take = c->len < len ? c->len : len;

	memcpy(p, c->buf, take);
	c->len -= take;
	memmove(c->buf, c->buf + take, c->len);
	p += take;
	len -= take;
	while (len) {
		ssize_t n = recv(c->fd, p, len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int serve_hello(struct replica *r, struct conn *c)
{
	char line[LINE_MAX_LEN];
	int ret = say(c, "OK %u", r->n);

	for (unsigned i = 0; i < r->n && ret == 0; i++) {
		format_layer(line, sizeof(line), &r->layers[i]);
		ret = say(c, "LAYER %u %s", i, line);
	}
	return ret;
}

/* A data chunk's tag follows it: nothing unauthenticated reaches the partial file. */
static int check_chunk_tag(struct conn *c, const void *data, size_t len)
{
	uint8_t got[RAUTH_TAG], want[RAUTH_TAG];
	int r = read_raw(c, got, sizeof(got));

	if (r == 0)
		r = conn_tag(c, false, data, len, want);
	if (r == 0 && !rauth_tag_equal(got, want, RAUTH_TAG)) {
		pr_err("replication: layer data failed its integrity check");
		r = -EBADMSG;
	}
	return r;
}

static int receive_data(struct replica *r, struct conn *c, uint64_t left)
{
	uint8_t *buf = malloc(CHUNK);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	while (left && ret == 0) {
		size_t n = left < CHUNK ? (size_t)left : CHUNK;

		ret = read_raw(c, buf, n);
		if (ret == 0 && c->authed)
			ret = check_chunk_tag(c, buf, n);
		if (ret == 0)
			ret = replica_write(r, buf, n);
		left -= n;
	}
	free(buf);
	return ret;
}

static int serve_begin(struct replica *r, struct conn *c, const char *args)
{
	struct replica_layer l;
	unsigned idx;
	uint64_t have;
	int end = 0, ret;

	if (sscanf(args, "%u %n", &idx, &end) != 1 || parse_layer(args + end, &l) < 0)
		return say(c, "ERR bad BEGIN");
	ret = replica_begin(r, idx, &l, &have);
	if (ret == -EEXIST)
		return say(c, "HAVE");
	if (ret == -ESTALE)
		return say(c, "ERR the replica holds a different layer %u", idx);
	if (ret < 0)
		return say(c, "ERR %s", strerror(-ret));
	ret = say(c, "GO %" PRIu64, have);
	if (ret == 0)
		ret = receive_data(r, c, l.bytes - have);
	if (ret < 0) {
		/* The connection broke mid-layer: keep what came for a resume. */
		replica_abort(r);
		return ret;
	}
	ret = replica_commit(r);
	if (ret < 0)
		return say(c, "ERR layer %u: %s", idx, strerror(-ret));
	pr_info("%s: layer %u (%s, %" PRIu64 " bytes) installed", r->dir, idx, l.name, l.bytes);
	return say(c, "DONE");
}

/* ---- authentication ---- */

/* HMAC(key, label nc ns): the proofs of both sides and the session key. */
static int auth_mac(const struct replicate_key *key, const char *label,
		    const uint8_t nc[RAUTH_NONCE], const uint8_t ns[RAUTH_NONCE],
		    uint8_t out[RAUTH_TAG])
{
	struct iovec parts[3] = {
	    {(void *)label, strlen(label)}, {(void *)nc, RAUTH_NONCE}, {(void *)ns, RAUTH_NONCE}};

	return rauth_hmac(key->bytes, key->len, parts, 3, out);
}

/* Both proofs checked: derive the session key and tag everything from now on. */
static int auth_done(struct conn *c, const struct replicate_key *key, const uint8_t nc[RAUTH_NONCE],
		     const uint8_t ns[RAUTH_NONCE])
{
	int r = auth_mac(key, "tern-replicate session", nc, ns, c->session);

	c->authed = r == 0;
	return r;
}

static int server_auth(struct conn *c, const struct replicate_key *key, const char *first)
{
	uint8_t nc[RAUTH_NONCE], ns[RAUTH_NONCE], mac[RAUTH_TAG], got[RAUTH_TAG];
	char hs[2 * RAUTH_NONCE + 1], hm[TAG_HEX + 1], line[LINE_MAX_LEN];
	int r;

	if (strncmp(first, "AUTH 1 ", 7) || rauth_unhex(first + 7, nc, RAUTH_NONCE) < 0) {
		say(c, "ERR this replica requires authentication (--key-file)");
		pr_err("replication: refused a sender that did not authenticate");
		return -EACCES;
	}
	r = rauth_random(ns, sizeof(ns));
	if (r == 0)
		r = auth_mac(key, "tern-replicate server", nc, ns, mac);
	if (r < 0)
		return r;
	rauth_hex(ns, RAUTH_NONCE, hs);
	rauth_hex(mac, RAUTH_TAG, hm);
	r = say(c, "CHALLENGE %s %s", hs, hm);
	if (r == 0)
		r = read_line(c, line);
	if (r == 0)
		r = auth_mac(key, "tern-replicate client", nc, ns, mac);
	if (r < 0)
		return r;
	if (strncmp(line, "PROOF ", 6) || rauth_unhex(line + 6, got, RAUTH_TAG) < 0 ||
	    !rauth_tag_equal(got, mac, RAUTH_TAG)) {
		say(c, "ERR authentication failed");
		pr_err("replication: a sender failed to authenticate (a different key?)");
		return -EACCES;
	}
	r = say(c, "WELCOME");
	return r < 0 ? r : auth_done(c, key, nc, ns);
}

static int client_auth(struct conn *c, const struct replicate_key *key)
{
	uint8_t nc[RAUTH_NONCE], ns[RAUTH_NONCE], mac[RAUTH_TAG], got[RAUTH_TAG];
	char hn[2 * RAUTH_NONCE + 1], hm[TAG_HEX + 1], line[LINE_MAX_LEN];
	char a[LINE_MAX_LEN], b[LINE_MAX_LEN];
	int r = rauth_random(nc, sizeof(nc));

	rauth_hex(nc, RAUTH_NONCE, hn);
	if (r == 0)
		r = say(c, "AUTH 1 %s", hn);
	if (r == 0)
		r = read_line(c, line);
	if (r < 0)
		return r;
	if (sscanf(line, "CHALLENGE %511s %511s", a, b) != 2 ||
	    rauth_unhex(a, ns, RAUTH_NONCE) < 0 || rauth_unhex(b, got, RAUTH_TAG) < 0) {
		pr_err("replica: %.200s", line);
		return -EPROTO;
	}
	r = auth_mac(key, "tern-replicate server", nc, ns, mac);
	if (r < 0)
		return r;
	if (!rauth_tag_equal(got, mac, RAUTH_TAG)) {
		say(c, "ERR authentication failed");
		pr_err("replica: the server does not prove our key (a different key?)");
		return -EACCES;
	}
	r = auth_mac(key, "tern-replicate client", nc, ns, mac);
	rauth_hex(mac, RAUTH_TAG, hm);
	if (r == 0)
		r = say(c, "PROOF %s", hm);
	if (r == 0)
		r = read_line(c, line);
	if (r < 0)
		return r;
	if (strcmp(line, "WELCOME")) {
		pr_err("replica: %.200s", line);
		return -EACCES;
	}
	return auth_done(c, key, nc, ns);
}

/* The first line of a connection: authenticate it when the replica has a key. */
static int serve_first(struct conn *c, const struct replicate_key *key, const char *line)
{
	if (key)
		return server_auth(c, key, line);
	if (!strncmp(line, "AUTH ", 5)) {
		say(c, "ERR this replica server has no key (it runs --insecure)");
		return -EPROTO;
	}
	return 1; /* an ordinary command */
}

int replica_serve(struct replica *r, int fd, const struct replicate_key *key)
{
	struct conn *c = calloc(1, sizeof(*c));
	char line[LINE_MAX_LEN];
	int ret = 0;
	bool first = true;

	if (!c)
		return -ENOMEM;
	c->fd = fd;
	c->server = true;
	while (ret == 0) {
		ret = read_line(c, line);
		if (ret < 0)
			break;
		if (first) {
			first = false;
			ret = serve_first(c, key, line);
			if (ret <= 0)
				continue;
			ret = 0;
		}
		if (!strcmp(line, "HELLO 1"))
			ret = serve_hello(r, c);
		else if (!strncmp(line, "BEGIN ", 6))
			ret = serve_begin(r, c, line + 6);
		else if (!strcmp(line, "BYE"))
			break;
		else
			ret = say(c, "ERR unknown command") < 0 ? -EPIPE : -EPROTO;
	}
	replica_abort(r);
	explicit_bzero(c->session, sizeof(c->session));
	free(c);
	return ret == -ECONNRESET ? 0 : ret;
}

/* ---- the sender ---- */

struct dest {
	struct replica *local; /* a directory, or */
	struct conn *remote;   /* a `tern replicate serve` */
	unsigned n;
	struct replica_layer layers[REPLICA_MAX_LAYERS];
};

static int tcp_connect(const char *hostport)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai, *a;
	int fd = -1, ret;

	if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof(host))
		return -EINVAL;
	memcpy(host, hostport, (size_t)(colon - hostport));
	host[colon - hostport] = 0;
	ret = getaddrinfo(host, colon + 1, &hints, &ai);
	if (ret) {
		pr_err("%s: %s", hostport, gai_strerror(ret));
		return -EHOSTUNREACH;
	}
	for (a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		ret = -errno;
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		pr_err("%s: cannot connect: %s", hostport, strerror(-ret));
	return fd < 0 ? ret : fd;
}

static int remote_hello(struct dest *d)
{
	char line[LINE_MAX_LEN];
	unsigned n, idx;
	int end = 0, ret = say(d->remote, "HELLO 1");

	if (ret == 0)
		ret = read_line(d->remote, line);
	if (ret < 0)
		return ret;
	if (sscanf(line, "OK %u", &n) != 1 || n > REPLICA_MAX_LAYERS) {
		pr_err("replica: %.200s", line);
		return -EPROTO;
	}
	for (d->n = 0; d->n < n; d->n++) {
		ret = read_line(d->remote, line);
		if (ret < 0)
			return ret;
		if (sscanf(line, "LAYER %u %n", &idx, &end) != 1 || idx != d->n ||
		    parse_layer(line + end, &d->layers[d->n]) < 0)
			return -EPROTO;
	}
	return 0;
}

static int dest_open(const char *spec, const struct replicate_key *key, struct dest *d)
{
	int fd, ret;

	memset(d, 0, sizeof(*d));
	if (strncmp(spec, "tcp:", 4)) {
		ret = replica_open(spec, &d->local);

		if (ret < 0)
			return ret;
		d->n = replica_nlayers(d->local);
		for (unsigned i = 0; i < d->n; i++)
			d->layers[i] = *replica_get(d->local, i);
		return 0;
	}
	fd = tcp_connect(spec + 4);
	if (fd < 0)
		return fd;
	d->remote = calloc(1, sizeof(*d->remote));
	if (!d->remote) {
		close(fd);
		return -ENOMEM;
	}
	d->remote->fd = fd;
	ret = key ? client_auth(d->remote, key) : 0;
	if (ret == 0)
		ret = remote_hello(d);
	if (ret < 0) {
		close(fd);
		free(d->remote);
		d->remote = NULL;
	}
	return ret;
}

static void dest_close(struct dest *d)
{
	replica_close(d->local);
	if (d->remote) {
		say(d->remote, "BYE");
		close(d->remote->fd);
		explicit_bzero(d->remote->session, sizeof(d->remote->session));
		free(d->remote);
	}
}

/* 0 and *have, -EEXIST (already there), or -errno. */
static int dest_begin(struct dest *d, unsigned idx, const struct replica_layer *l, uint64_t *have)
{
	char line[LINE_MAX_LEN], meta[LINE_MAX_LEN];
	unsigned long long h;
	int ret;

	if (d->local)
		return replica_begin(d->local, idx, l, have);
	format_layer(meta, sizeof(meta), l);
	ret = say(d->remote, "BEGIN %u %s", idx, meta);
	if (ret == 0)
		ret = read_line(d->remote, line);
	if (ret < 0)
		return ret;
	if (!strcmp(line, "HAVE"))
		return -EEXIST;
	if (sscanf(line, "GO %llu", &h) != 1 || h > l->bytes) {
		pr_err("replica: %.200s", line);
		return -EPROTO;
	}
	*have = h;
	return 0;
}

static int dest_write(struct dest *d, const void *buf, size_t len)
{
	uint8_t tag[RAUTH_TAG];
	int r;

	if (d->local)
		return replica_write(d->local, buf, len);
	if (!d->remote->authed)
		return write_all(d->remote->fd, buf, len);
	/*
	 * The tag goes out with its chunk: sent alone, a small segment would
	 * wait for the chunk's delayed acknowledgement (Nagle), every chunk.
	 */
	r = send_all(d->remote->fd, buf, len, MSG_MORE);
	if (r == 0)
		r = conn_tag(d->remote, true, buf, len, tag);
	if (r == 0)
		r = write_all(d->remote->fd, tag, sizeof(tag));
	return r;
}

static int dest_commit(struct dest *d)
{
	char line[LINE_MAX_LEN];
	int ret;

	if (d->local)
		return replica_commit(d->local);
	ret = read_line(d->remote, line);
	if (ret < 0)
		return ret;
	if (strcmp(line, "DONE")) {
		pr_err("replica: %.200s", line);
		return -EIO;
	}
	return 0;
}

/* The replica's name for layer idx of the chain: "NNN-<file name, made safe>". */
static void replica_name(char *out, unsigned idx, const char *path)
{
	const char *base = strrchr(path, '/');
	size_t n;

	base = base ? base + 1 : path;
	n = (size_t)snprintf(out, REPLICA_NAME_MAX + 1, "%03u-%s", idx, base);
	for (size_t i = 4; i < n && i < REPLICA_NAME_MAX; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
			    out[i]))
			out[i] = '_';
}

struct chain {
	struct blockdev *bd; /* open (read-locked) while it is shipped */
	unsigned n;
	char *path[REPLICA_MAX_LAYERS]; /* base first */
	const char *fmt[REPLICA_MAX_LAYERS];
};

static void chain_free(struct chain *ch)
{
	blk_close(ch->bd);
	for (unsigned i = 0; i < ch->n; i++)
		free(ch->path[i]);
}

/*
 * Open the chain read-only to learn its files, base first, and keep it
 * open: its read locks keep anyone from writing a layer while it is shipped.
 */
static int chain_walk(const char *top, struct chain *ch)
{
	struct blockdev *bd, *b;
	int ret = blk_open(top, true, &bd);
	unsigned n = 0;

	if (ret < 0)
		return ret;
	for (b = bd; b; n++) {
		struct qcow2_info qi = {0};

		if (n >= REPLICA_MAX_LAYERS || !b->spec) {
			ret = -ELOOP;
			break;
		}
		ch->path[REPLICA_MAX_LAYERS - 1 - n] = realpath(b->spec, NULL);
		ch->fmt[REPLICA_MAX_LAYERS - 1 - n] =
		    !strcmp(b->ops->format, "qcow2") ? "qcow2" : "raw";
		if (strcmp(b->ops->format, "qcow2") && strcmp(b->ops->format, "raw"))
			ret = -EOPNOTSUPP;
		if (!strcmp(b->ops->format, "qcow2"))
			qcow2_get_info(b, &qi);
		b = qi.backing;
	}
	ch->bd = bd;
	/* Shift to base first. */
	for (unsigned i = 0; i < n; i++) {
		ch->path[i] = ch->path[REPLICA_MAX_LAYERS - n + i];
		ch->fmt[i] = ch->fmt[REPLICA_MAX_LAYERS - n + i];
	}
	ch->n = n;
	for (unsigned i = 0; i < n; i++)
		if (!ch->path[i] && ret == 0)
			ret = -ENOENT;
	return ret;
}

static int send_file(struct dest *d, int fd, uint64_t from, uint64_t to, uint64_t *bytes)
{
	uint8_t *buf = malloc(CHUNK);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t off = from; off < to && ret == 0;) {
		size_t n = to - off < CHUNK ? (size_t)(to - off) : CHUNK;

		ret = blk_fd_pread(fd, buf, n, off);
		if (ret == 0)
			ret = dest_write(d, buf, n);
		off += n;
		*bytes += n;
	}
	free(buf);
	return ret;
}

static int ship_layer(struct dest *d, unsigned idx, const char *path, const char *fmt,
		      unsigned *shipped, uint64_t *bytes)
{
	struct replica_layer l = {0};
	struct stat st;
	uint64_t have = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	replica_name(l.name, idx, path);
	snprintf(l.format, sizeof(l.format), "%s", fmt);
	ret = fstat(fd, &st) < 0 ? -errno : 0;
	l.bytes = (uint64_t)st.st_size;
	if (ret == 0)
		ret = crc_prefix(fd, l.bytes, &l.crc);
	if (ret == 0)
		ret = dest_begin(d, idx, &l, &have);
	if (ret == -EEXIST) {
		ret = 0;
		goto out;
	}
	if (ret == 0)
		ret = send_file(d, fd, have, l.bytes, bytes);
	if (ret == 0)
		ret = dest_commit(d);
	if (ret == 0) {
		(*shipped)++;
		pr_info("replicated layer %u: %s (%" PRIu64 " bytes, resumed at %" PRIu64 ")", idx,
			l.name, l.bytes, have);
	}
out:
	close(fd);
	return ret;
}

int replicate_chain(const char *path, const char *dest, const struct replicate_key *key,
		    unsigned *shipped, uint64_t *bytes)
{
	struct chain ch = {0};
	struct dest d;
	int ret;

	*shipped = 0;
	*bytes = 0;
	ret = chain_walk(path, &ch);
	if (ret < 0) {
		pr_err("%s: cannot walk the backing chain: %s", path, strerror(-ret));
		chain_free(&ch);
		return ret;
	}
	ret = dest_open(dest, key, &d);
	if (ret < 0) {
		pr_err("%s: cannot reach the replica: %s", dest, strerror(-ret));
		goto out;
	}
	if (d.n > ch.n) {
		pr_err("%s: the replica has %u layers, the chain only %u", dest, d.n, ch.n);
		ret = -ESTALE;
	}
	for (unsigned i = 0; i < ch.n && ret == 0; i++) {
		ret = ship_layer(&d, i, ch.path[i], ch.fmt[i], shipped, bytes);
		if (ret == -ESTALE)
			pr_err("%s: the replica holds a different layer %u than %s", dest, i,
			       ch.path[i]);
	}
	dest_close(&d);
out:
	chain_free(&ch);
	return ret;
}
