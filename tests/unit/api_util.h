/*
 * Helpers for the control API tests (unit and KVM): requests through the
 * real client, raw bytes over the socket for malformed requests, and JSON
 * lookups. They return values and leave asserting to the test.
 */
#ifndef TERN_TESTS_API_UTIL_H
#define TERN_TESTS_API_UTIL_H

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "api/client.h"

#define API_TEST_TIMEOUT_MS 20000

/*
 * One request; returns the HTTP status (or -errno) and, if obj is not NULL,
 * the parsed body (NULL when it was not JSON). Free *obj with json_object_put.
 */
static inline int api_call(const char *sock, const char *method, const char *path, const char *body,
			   struct json_object **obj)
{
	struct http_resp r;
	int err = http_unix_request(sock, method, path, body, API_TEST_TIMEOUT_MS, &r);

	if (obj)
		*obj = NULL;
	if (err)
		return err;
	if (obj)
		*obj = json_tokener_parse(r.body);
	err = r.status;
	http_resp_free(&r);
	return err;
}

/* A member by dotted path ("memory.guest_bytes"); NULL if absent. */
static inline struct json_object *jget(struct json_object *o, const char *path)
{
	char buf[128], *save = NULL, *tok;

	snprintf(buf, sizeof(buf), "%s", path);
	for (tok = strtok_r(buf, ".", &save); tok && o; tok = strtok_r(NULL, ".", &save))
		if (!json_object_object_get_ex(o, tok, &o))
			return NULL;
	return o;
}

static inline const char *jstr(struct json_object *o, const char *path)
{
	struct json_object *v = jget(o, path);

	return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static inline uint64_t ju64(struct json_object *o, const char *path)
{
	struct json_object *v = jget(o, path);

	return v ? json_object_get_uint64(v) : UINT64_MAX;
}

/* Sum of exits.total over all vCPUs in a /vm/stats answer. */
static inline uint64_t stats_exits(struct json_object *stats)
{
	struct json_object *arr = jget(stats, "vcpus");
	uint64_t sum = 0;

	for (size_t i = 0; arr && i < json_object_array_length(arr); i++)
		sum += ju64(json_object_array_get_idx(arr, i), "exits.total");
	return sum;
}

static inline double api_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Send raw bytes (len of them) and read the answer into resp (NUL-terminated)
 * until the server closes or timeout_ms passes. Returns the status code
 * parsed from the answer, 0 if there was none, or -errno.
 */
static inline int raw_exchange(const char *sock, const char *req, size_t len, char *resp,
			       size_t cap, int timeout_ms)
{
	int fd = http_unix_connect(sock, timeout_ms), status = 0;
	size_t n = 0;

	if (fd < 0)
		return fd;
	while (len) {
		ssize_t w = send(fd, req, len, MSG_NOSIGNAL);

		if (w <= 0)
			break; /* the server may refuse early and close: read what it said */
		req += w;
		len -= (size_t)w;
	}
	while (n + 1 < cap) {
		ssize_t r = recv(fd, resp + n, cap - 1 - n, 0);

		if (r <= 0)
			break;
		n += (size_t)r;
	}
	resp[n] = 0;
	close(fd);
	if (sscanf(resp, "HTTP/1.%*1[01] %3d", &status) != 1)
		status = 0;
	return status;
}

/* The JSON body of a raw answer, or NULL. */
static inline struct json_object *raw_body(const char *resp)
{
	const char *b = strstr(resp, "\r\n\r\n");

	return b ? json_tokener_parse(b + 4) : NULL;
}

#endif
