/*
 * tern ctl: talk to a running tern's control API (tern run --api-socket PATH)
 * and print the JSON answer. See docs/api.md for the endpoints behind each verb.
 */
#include <errno.h>
#include <stdbool.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "api/client.h"
#include "cmd/cmd.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define DEFAULT_TIMEOUT_S 30

struct verb {
	const char *name;
	const char *method;
	const char *path;
	int nargs; /* extra arguments the verb takes */
	const char *help;
};

static const struct verb verbs[] = {
    {"info", "GET", "/vm", 0, "state, vCPUs, memory, backend, uptime"},
    {"stats", "GET", "/vm/stats", 0, "exit counts per vCPU, memory, device counters"},
    {"pause", "PUT", "/vm/pause", 0, "park every vCPU and pause the devices"},
    {"resume", "PUT", "/vm/resume", 0, "run a paused VM again"},
    {"shutdown", "PUT", "/vm/shutdown", 0, "stop the VM (tern run then exits)"},
    {"version", "GET", "/version", 0, "the API version the server speaks"},
    {"snapshot", "PUT", "/vm/snapshot", 1, "STATE [MEM]: save the VM (MEM: STATE.mem)"},
    {"clone", "PUT", "/vm/clone", 1, "DIR [COUNT]: snapshot the VM into DIR, start COUNT clones"},
    {"disks", "GET", "/vm/disks", 0, "the disks, with their live snapshot jobs"},
    {"disk-snapshot", "POST", NULL, 3, "DISK copy|overlay FILE: live snapshot of a disk"},
    {"balloon", NULL, "/vm/balloon", 1, "set MIB | get: balloon target; guest memory statistics"},
    {"sweep", "POST", "/vm/sweep", 0, "release the guest's zero pages now, print what it freed"},
    {"request", NULL, NULL, 2, "METHOD PATH [JSON]: any request, e.g. GET /vm"},
};

static void ctl_usage(FILE *f)
{
	fprintf(f, "usage: tern ctl [--timeout SECONDS] SOCKET VERB [ARGS]\n\n"
		   "Send one request to the control API of 'tern run --api-socket SOCKET'\n"
		   "and print its JSON answer. Exits 0 on success, 1 when the request\n"
		   "failed (the server's error is printed), 2 on bad usage.\n\nverbs:\n");
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		fprintf(f, "  %-13s %s\n", verbs[i].name, verbs[i].help);
	fprintf(f,
		"\noptions:\n"
		"  --timeout SECONDS  give up on a silent server after this long (default %d)\n"
		"  -h, --help         this text\n",
		DEFAULT_TIMEOUT_S);
}

/* Pretty-print a JSON body; anything else is printed as it came. */
static void print_body(FILE *f, const struct http_resp *r)
{
	struct json_object *obj = json_tokener_parse(r->body);

	if (obj)
		fprintf(f, "%s\n",
			json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY |
								JSON_C_TO_STRING_SPACED |
								JSON_C_TO_STRING_NOSLASHESCAPE));
	else if (r->len)
		fprintf(f, "%s%s", r->body, r->body[r->len - 1] == '\n' ? "" : "\n");
	json_object_put(obj);
}

static void print_error(const struct http_resp *r)
{
	struct json_object *obj = json_tokener_parse(r->body), *msg;

	if (obj && json_object_object_get_ex(obj, "error", &msg))
		fprintf(stderr, "tern ctl: HTTP %d: %s\n", r->status, json_object_get_string(msg));
	else
		fprintf(stderr, "tern ctl: HTTP %d: %.200s\n", r->status, r->body);
	json_object_put(obj);
}

static int send_and_print(const char *sock, const char *method, const char *path, const char *body,
			  int timeout_s)
{
	struct http_resp r;
	int err = http_unix_request(sock, method, path, body, timeout_s * 1000, &r);

	if (err) {
		fprintf(stderr, "tern ctl: %s %s on %s: %s\n", method, path, sock,
			err == -ETIMEDOUT ? "no answer (timed out)" : strerror(-err));
		return EXIT_FAILED;
	}
	if (r.status >= 300) {
		print_error(&r);
		http_resp_free(&r);
		return EXIT_FAILED;
	}
	print_body(stdout, &r);
	http_resp_free(&r);
	return 0;
}

static const struct verb *find_verb(const char *name)
{
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(name, verbs[i].name))
			return &verbs[i];
	return NULL;
}

/* disk-snapshot DISK MODE FILE: POST /vm/disks/DISK/snapshot. */
static int disk_snapshot(const char *sock, char **argv, int timeout_s)
{
	struct json_object *body = json_object_new_object();
	char path[64];
	int rc;

	if (!body || strlen(argv[0]) > 8 || strchr(argv[0], '/')) {
		json_object_put(body);
		fprintf(stderr, "tern ctl: DISK is a disk number (0 for the first --disk)\n");
		return EXIT_USAGE;
	}
	snprintf(path, sizeof(path), "/vm/disks/%s/snapshot", argv[0]);
	json_object_object_add(body, "mode", json_object_new_string(argv[1]));
	json_object_object_add(body, "target", json_object_new_string(argv[2]));
	rc = send_and_print(sock, "POST", path, json_object_to_json_string(body), timeout_s);
	json_object_put(body);
	return rc;
}

/* Build the request of verb v from its arguments and send it. */
/* balloon get | balloon set MIB */
static int balloon_verb(const char *sock, int argc, char **argv, int timeout_s)
{
	char body[64], *end;
	unsigned long long mib;

	if (argc == 1 && !strcmp(argv[0], "get"))
		return send_and_print(sock, "GET", "/vm/balloon", NULL, timeout_s);
	if (argc != 2 || strcmp(argv[0], "set")) {
		fprintf(stderr, "tern ctl: usage: balloon set MIB | balloon get\n");
		return EXIT_USAGE;
	}
	errno = 0;
	mib = strtoull(argv[1], &end, 10);
	if (errno || end == argv[1] || *end || argv[1][0] == '-' || mib > (1ull << 40)) {
		fprintf(stderr, "tern ctl: balloon set: '%s' is not a size in MiB\n", argv[1]);
		return EXIT_USAGE;
	}
	snprintf(body, sizeof(body), "{\"target_mib\": %llu}", mib);
	return send_and_print(sock, "PUT", "/vm/balloon", body, timeout_s);
}

/*
 * snapshot STATE [MEM] -> {"state", "mem"}; clone DIR [COUNT] -> {"dir", "count"}.
 * json-c quotes the paths.
 */
static int two_arg_verb(const char *sock, const struct verb *v, int argc, char **argv,
			int timeout_s)
{
	bool clone = !strcmp(v->name, "clone");
	struct json_object *body;
	long count = 1;
	char *end;
	int rc;

	if (argc < 1 || argc > 2) {
		fprintf(stderr, "tern ctl: '%s' takes 1 or 2 arguments; see 'tern ctl --help'\n",
			v->name);
		return EXIT_USAGE;
	}
	if (clone && argc == 2) {
		errno = 0;
		count = strtol(argv[1], &end, 10);
		if (errno || *end || count < 1 || count > 64) {
			fprintf(stderr, "tern ctl: clone COUNT wants 1..64\n");
			return EXIT_USAGE;
		}
	}
	body = json_object_new_object();
	if (!body)
		return EXIT_FAILED;
	json_object_object_add(body, clone ? "dir" : "state", json_object_new_string(argv[0]));
	if (clone)
		json_object_object_add(body, "count", json_object_new_int((int)count));
	else if (argc == 2)
		json_object_object_add(body, "mem", json_object_new_string(argv[1]));
	rc = send_and_print(sock, v->method, v->path, json_object_to_json_string(body), timeout_s);
	json_object_put(body);
	return rc;
}

static int run_verb(const char *sock, const struct verb *v, int argc, char **argv, int timeout_s)
{
	if (!strcmp(v->name, "request")) {
		if (argc < 2 || argc > 3) {
			fprintf(stderr, "tern ctl: usage: request METHOD PATH [JSON]\n");
			return EXIT_USAGE;
		}
		if (argv[1][0] != '/') {
			fprintf(stderr, "tern ctl: the path must start with '/'\n");
			return EXIT_USAGE;
		}
		return send_and_print(sock, argv[0], argv[1], argc == 3 ? argv[2] : NULL,
				      timeout_s);
	}
	if (!strcmp(v->name, "balloon"))
		return balloon_verb(sock, argc, argv, timeout_s);
	if (!strcmp(v->name, "snapshot") || !strcmp(v->name, "clone"))
		return two_arg_verb(sock, v, argc, argv, timeout_s);
	if (argc != v->nargs) {
		fprintf(stderr, "tern ctl: '%s' takes %d argument(s); see 'tern ctl --help'\n",
			v->name, v->nargs);
		return EXIT_USAGE;
	}
	if (!v->nargs)
		return send_and_print(sock, v->method, v->path, NULL, timeout_s);
	if (!strcmp(v->name, "disk-snapshot"))
		return disk_snapshot(sock, argv, timeout_s);
	return EXIT_USAGE;
}

int cmd_ctl(int argc, char **argv)
{
	static const struct option opts[] = {{"timeout", required_argument, NULL, 't'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	const struct verb *v;
	int timeout_s = DEFAULT_TIMEOUT_S, c;
	char *end;

	optind = 1;
	while ((c = getopt_long(argc, argv, "+ht:", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			ctl_usage(stdout);
			return 0;
		case 't':
			errno = 0;
			timeout_s = (int)strtol(optarg, &end, 10);
			if (errno || *end || timeout_s < 1 || timeout_s > 3600) {
				fprintf(stderr, "tern ctl: --timeout wants 1..3600 seconds\n");
				return EXIT_USAGE;
			}
			break;
		default:
			ctl_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind < 2) {
		ctl_usage(stderr);
		return EXIT_USAGE;
	}
	v = find_verb(argv[optind + 1]);
	if (!v) {
		fprintf(stderr, "tern ctl: unknown verb '%s'; see 'tern ctl --help'\n",
			argv[optind + 1]);
		return EXIT_USAGE;
	}
	return run_verb(argv[optind], v, argc - optind - 2, argv + optind + 2, timeout_s);
}
