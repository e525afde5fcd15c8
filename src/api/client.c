/* A one-request HTTP/1.1 client over a Unix socket; see client.h. */
#include "api/client.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

int http_unix_connect(const char *socket_path, int timeout_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	int fd, err;

	if (!*socket_path || strlen(socket_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read until the server closes (we asked for Connection: close), bounded. */
static int recv_all(int fd, char **buf, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *b = malloc(cap + 1);

	if (!b)
		return -ENOMEM;
	for (;;) {
		ssize_t r;

		if (n == cap) {
			char *nb;

			if (cap >= HTTP_MAX_RESPONSE) {
				free(b);
				return -EMSGSIZE;
			}
			cap *= 2;
			nb = realloc(b, cap + 1);
			if (!nb) {
				free(b);
				return -ENOMEM;
			}
			b = nb;
		}
		r = recv(fd, b + n, cap - n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		/* A server that refused early (413) and closed may reset after its answer. */
		if (r < 0 && errno == ECONNRESET && n)
			break;
		if (r < 0) {
			int err = errno == EAGAIN ? -ETIMEDOUT : -errno;

			free(b);
			return err;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	b[n] = 0;
	*buf = b;
	*len = n;
	return 0;
}

/* Decode a chunked body in place; returns the decoded length or -EPROTO. */
static long dechunk(char *body, size_t len)
{
	size_t in = 0, outp = 0;

	for (;;) {
		char *end;
		unsigned long sz;
		char *eol = memmem(body + in, len - in, "\r\n", 2);

		if (!eol)
			return -EPROTO;
		errno = 0;
		sz = strtoul(body + in, &end, 16);
		if (errno || end == body + in)
			return -EPROTO;
		in = (size_t)(eol - body) + 2;
		if (sz == 0)
			return (long)outp;
		if (sz > len - in || len - in - sz < 2)
			return -EPROTO;
		memmove(body + outp, body + in, sz);
		outp += sz;
		in += sz + 2;
	}
}

/* Find a header's value in the header block [hdr, hdr_end); NULL if absent. */
static const char *find_header(const char *hdr, const char *hdr_end, const char *name)
{
	size_t nl = strlen(name);

	for (const char *p = hdr; p && p < hdr_end;) {
		const char *eol = memmem(p, (size_t)(hdr_end - p), "\r\n", 2);

		if (!eol)
			eol = hdr_end;
		if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
			p += nl + 1;
			while (*p == ' ' || *p == '\t')
				p++;
			return p;
		}
		p = eol + 2;
	}
	return NULL;
}

static int parse_response(char *raw, size_t n, struct http_resp *out)
{
	char *hdr_end = memmem(raw, n, "\r\n\r\n", 4);
	const char *te, *cl;
	char *body;
	size_t blen;
	int status;

	if (!hdr_end || sscanf(raw, "HTTP/1.%*1[01] %3d", &status) != 1 || status < 100 ||
	    status > 599)
		return -EPROTO;
	body = hdr_end + 4;
	blen = n - (size_t)(body - raw);
	te = find_header(raw, hdr_end, "Transfer-Encoding");
	cl = find_header(raw, hdr_end, "Content-Length");
	if (te && !strncasecmp(te, "chunked", 7)) {
		long d = dechunk(body, blen);

		if (d < 0)
			return (int)d;
		blen = (size_t)d;
	} else if (cl) {
		unsigned long long want = strtoull(cl, NULL, 10);

		if (want > blen)
			return -EPROTO; /* the server closed early */
		blen = (size_t)want;
	}
	out->status = status;
	out->len = blen;
	out->body = malloc(blen + 1);
	if (!out->body)
		return -ENOMEM;
	memcpy(out->body, body, blen);
	out->body[blen] = 0;
	return 0;
}

int http_unix_request(const char *socket_path, const char *method, const char *path,
		      const char *body, int timeout_ms, struct http_resp *out)
{
	size_t blen = body ? strlen(body) : 0;
	char head[512];
	char *raw = NULL;
	size_t rawlen = 0;
	int fd, n, err;

	memset(out, 0, sizeof(*out));
	n = snprintf(head, sizeof(head),
		     "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
		     "Accept: application/json\r\n%sContent-Length: %zu\r\n\r\n",
		     method, path, body ? "Content-Type: application/json\r\n" : "", blen);
	if (n < 0 || (size_t)n >= sizeof(head))
		return -ENAMETOOLONG;
	fd = http_unix_connect(socket_path, timeout_ms);
	if (fd < 0)
		return fd;
	err = send_all(fd, head, (size_t)n);
	if (!err && blen)
		err = send_all(fd, body, blen);
	/* The server may answer before reading the whole body (413) and close: read it anyway. */
	if (!err || err == -EPIPE || err == -ECONNRESET) {
		int rerr = recv_all(fd, &raw, &rawlen);

		err = rerr && err ? err : rerr;
	}
	close(fd);
	if (!err)
		err = parse_response(raw, rawlen, out);
	free(raw);
	return err;
}

void http_resp_free(struct http_resp *r)
{
	free(r->body);
	r->body = NULL;
	r->len = 0;
}
