/*
 * A small HTTP/1.1 client over a Unix socket, for `tern ctl` and the tests:
 * one request per connection ("Connection: close"), bounded reads, timeouts.
 */
#ifndef TERN_API_CLIENT_H
#define TERN_API_CLIENT_H

#include <stddef.h>

/* Largest response read; a bigger one is an error (-EMSGSIZE). */
#define HTTP_MAX_RESPONSE (16u << 20)

struct http_resp {
	int status; /* e.g. 200, 404 */
	char *body; /* NUL-terminated, decoded if it was chunked */
	size_t len; /* body bytes, without the NUL */
};

/*
 * Send method path with body (NULL for none; sent as application/json) to
 * the server at socket_path and read the whole response. timeout_ms bounds
 * each send/receive wait. Returns 0 and fills *out (free with
 * http_resp_free), or -errno: -ENOENT/-ECONNREFUSED when nobody listens,
 * -ETIMEDOUT, -EPROTO for a malformed response.
 */
int http_unix_request(const char *socket_path, const char *method, const char *path,
		      const char *body, int timeout_ms, struct http_resp *out);
void http_resp_free(struct http_resp *r);

/* Connect to a Unix socket path with send/receive timeouts; the fd, or -errno. */
int http_unix_connect(const char *socket_path, int timeout_ms);

#endif
