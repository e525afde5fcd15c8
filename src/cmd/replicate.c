/*
 * tern replicate: keep a recovery site in step with a disk's chain
 * (docs/replication.md).
 *
 *   tern replicate send [--to DEST] IMAGE
 *   tern replicate vm --api SOCKET [--disk N] --layers DIR --to DEST
 *                     [--points N] [--every SECONDS]
 *   tern replicate serve DIR [--listen ADDR] --port N [--once]
 *   tern replicate show DIR
 *
 * DEST is a replica directory or tcp:HOST:PORT. TCP needs --key-file FILE
 * on both ends, or --insecure on both.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "api/client.h"
#include "block/replicate.h"
#include "cmd/cmd.h"
#include "util/log.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define API_TIMEOUT_MS 60000

/* The pre-shared key of --key-file, or NULL (set once, before any transfer). */
static const struct replicate_key *key;

static void usage(FILE *f)
{
	fprintf(f, "usage:\n"
		   "  tern replicate send --to DEST IMAGE\n"
		   "      ship IMAGE's chain (base first; IMAGE must not be in use) to DEST\n"
		   "  tern replicate vm --api SOCKET [--disk N] --layers DIR --to DEST\n"
		   "                    [--points N] [--every SECONDS]\n"
		   "      for a running VM: at each point switch the disk onto a new overlay\n"
		   "      in DIR and ship the layer it leaves (and any before it) to DEST\n"
		   "  tern replicate serve DIR --port N [--listen ADDR] [--once]\n"
		   "      receive layers over TCP into the replica directory DIR\n"
		   "  tern replicate show DIR\n"
		   "      the replica's chain, base first; the last line is its latest point\n"
		   "\nDEST is a replica directory or tcp:HOST:PORT. -v, --verbose: say what\n"
		   "moves (layers shipped, installed, resumed).\n"
		   "\nOver TCP both ends prove a shared key to each other and every message\n"
		   "and data chunk carries an HMAC-SHA256 tag:\n"
		   "  --key-file FILE  the key (at least 16 bytes, mode 600), the same file on\n"
		   "                   both ends; e.g. head -c 32 /dev/urandom | base64 > FILE\n"
		   "  --insecure       replicate over TCP without a key (trusted networks only)\n");
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int do_send(const char *image, const char *dest)
{
	unsigned shipped;
	uint64_t bytes;
	double t0 = now_s();
	int r = replicate_chain(image, dest, key, &shipped, &bytes);

	if (r < 0) {
		fprintf(stderr, "tern replicate: %s -> %s: %s\n", image, dest, strerror(-r));
		return EXIT_FAILED;
	}
	printf("shipped %u layer(s), %" PRIu64 " bytes in %.3f s\n", shipped, bytes, now_s() - t0);
	return 0;
}

/* ---- vm: replication points of a running VM ---- */

/* One API request; the parsed JSON answer of a 2xx, else NULL (error printed). */
static struct json_object *api_call(const char *sock, const char *method, const char *path,
				    const char *body)
{
	struct http_resp resp;
	struct json_object *o = NULL;
	int r = http_unix_request(sock, method, path, body, API_TIMEOUT_MS, &resp);

	if (r < 0) {
		fprintf(stderr, "tern replicate: %s %s: %s\n", method, path, strerror(-r));
		return NULL;
	}
	if (resp.status / 100 == 2)
		o = json_tokener_parse(resp.body);
	else
		fprintf(stderr, "tern replicate: %s %s: HTTP %d: %.300s\n", method, path,
			resp.status, resp.body);
	http_resp_free(&resp);
	return o;
}

/* The disk's current top image. */
static char *disk_path(const char *sock, unsigned disk)
{
	char path[64];
	struct json_object *o, *p;
	char *s = NULL;

	snprintf(path, sizeof(path), "/vm/disks/%u", disk);
	o = api_call(sock, "GET", path, NULL);
	if (o && json_object_object_get_ex(o, "path", &p) &&
	    json_object_is_type(p, json_type_string))
		s = strdup(json_object_get_string(p));
	json_object_put(o);
	return s;
}

/* Switch the disk onto a new overlay at target; the pause in microseconds, or < 0. */
static double switch_overlay(const char *sock, unsigned disk, const char *target)
{
	struct json_object *body = json_object_new_object(), *o, *p;
	char path[64];
	double pause = -1;

	snprintf(path, sizeof(path), "/vm/disks/%u/snapshot", disk);
	json_object_object_add(body, "mode", json_object_new_string("overlay"));
	json_object_object_add(body, "target", json_object_new_string(target));
	o = api_call(sock, "POST", path, json_object_to_json_string(body));
	if (o && json_object_object_get_ex(o, "pause_us", &p))
		pause = json_object_get_double(p);
	json_object_put(o);
	json_object_put(body);
	return pause;
}

static int one_point(const char *sock, unsigned disk, const char *layers, const char *dest,
		     unsigned point)
{
	char target[PATH_MAX];
	char *sealed = disk_path(sock, disk);
	unsigned shipped;
	uint64_t bytes;
	double pause, t0;
	int r;

	if (!sealed)
		return -EIO;
	/* Unique across runs: two runs within one second must not pick the same name. */
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(target, sizeof(target), "%s/layer-%ld.%09ld-%d-%u.qcow2", layers, (long)ts.tv_sec,
		 ts.tv_nsec, (int)getpid(), point);
	pause = switch_overlay(sock, disk, target);
	if (pause < 0) {
		free(sealed);
		return -EIO;
	}
	/* The disk writes to target now: the image it left is sealed and can be shipped. */
	t0 = now_s();
	r = replicate_chain(sealed, dest, key, &shipped, &bytes);
	if (r == 0)
		printf("point %u: %s sealed (pause %.0f us), shipped %u layer(s), %" PRIu64
		       " bytes in %.3f s\n",
		       point, sealed, pause, shipped, bytes, now_s() - t0);
	else
		fprintf(stderr, "tern replicate: point %u: shipping %s: %s\n", point, sealed,
			strerror(-r));
	fflush(stdout);
	free(sealed);
	return r;
}

static int do_vm(const char *sock, unsigned disk, const char *layers, const char *dest,
		 unsigned points, double every)
{
	for (unsigned i = 1; i <= points; i++) {
		if (one_point(sock, disk, layers, dest, i) < 0)
			return EXIT_FAILED;
		if (i < points && every > 0) {
			struct timespec ts = {.tv_sec = (time_t)every,
					      .tv_nsec =
						  (long)((every - (double)(time_t)every) * 1e9)};

			nanosleep(&ts, NULL);
		}
	}
	return 0;
}

/* ---- serve ---- */

static int listen_on(const char *addr, const char *port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
	int fd, one = 1, r = getaddrinfo(addr, port, &hints, &ai);

	if (r) {
		fprintf(stderr, "tern replicate: %s:%s: %s\n", addr ? addr : "*", port,
			gai_strerror(r));
		return -EINVAL;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
			bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4) < 0)) {
		r = -errno;
		close(fd);
		fd = r;
	} else if (fd < 0) {
		fd = -errno;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		fprintf(stderr, "tern replicate: cannot listen on port %s: %s\n", port,
			strerror(-fd));
	return fd;
}

static int do_serve(const char *dir, const char *addr, const char *port, bool once)
{
	struct replica *rep;
	int lfd, r;

	r = replica_open(dir, &rep);
	if (r < 0)
		return EXIT_FAILED;
	lfd = listen_on(addr, port);
	if (lfd < 0) {
		replica_close(rep);
		return EXIT_FAILED;
	}
	printf("serving replica %s on port %s (%u layers)\n", dir, port, replica_nlayers(rep));
	fflush(stdout);
	/* One sender at a time: a replica has one chain and one writer. */
	for (;;) {
		struct timeval tv = {.tv_sec = 300};
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			r = -errno;
			break;
		}
		/* A sender that goes silent must not hold the replica forever. */
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		r = replica_serve(rep, fd, key);
		close(fd);
		if (r < 0)
			fprintf(stderr, "tern replicate: a transfer ended early: %s\n",
				strerror(-r));
		if (once)
			break;
	}
	close(lfd);
	replica_close(rep);
	return r < 0 ? EXIT_FAILED : 0;
}

static int do_show(const char *dir)
{
	struct replica *rep;

	if (replica_open(dir, &rep) < 0)
		return EXIT_FAILED;
	for (unsigned i = 0; i < replica_nlayers(rep); i++) {
		const struct replica_layer *l = replica_get(rep, i);

		printf("%u %s %s %" PRIu64 " %08x\n", i, l->name, l->format, l->bytes, l->crc);
	}
	replica_close(rep);
	return 0;
}

/* ---- options ---- */

struct opts {
	const char *to, *api, *layers, *listen, *port, *key_file;
	unsigned disk, points;
	double every;
	bool once, insecure;
};

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
	    {"to", required_argument, NULL, 't'},	{"api", required_argument, NULL, 'a'},
	    {"disk", required_argument, NULL, 'd'},	{"layers", required_argument, NULL, 'l'},
	    {"points", required_argument, NULL, 'n'},	{"every", required_argument, NULL, 'e'},
	    {"listen", required_argument, NULL, 'L'},	{"port", required_argument, NULL, 'p'},
	    {"once", no_argument, NULL, 'o'},		{"verbose", no_argument, NULL, 'v'},
	    {"key-file", required_argument, NULL, 'k'}, {"insecure", no_argument, NULL, 'i'},
	    {"help", no_argument, NULL, 'h'},		{NULL, 0, NULL, 0}};
	char *end;
	int c;

	o->points = 1;
	while ((c = getopt_long(argc, argv, "hv", lo, NULL)) != -1) {
		errno = 0;
		switch (c) {
		case 't':
			o->to = optarg;
			break;
		case 'a':
			o->api = optarg;
			break;
		case 'l':
			o->layers = optarg;
			break;
		case 'L':
			o->listen = optarg;
			break;
		case 'p':
			o->port = optarg;
			break;
		case 'o':
			o->once = true;
			break;
		case 'k':
			o->key_file = optarg;
			break;
		case 'i':
			o->insecure = true;
			break;
		case 'v':
			log_set_level(LOG_INFO);
			break;
		case 'd':
			o->disk = (unsigned)strtoul(optarg, &end, 10);
			if (errno || *end || o->disk > 255)
				return -1;
			break;
		case 'n':
			o->points = (unsigned)strtoul(optarg, &end, 10);
			if (errno || *end || !o->points || o->points > 100000)
				return -1;
			break;
		case 'e':
			o->every = strtod(optarg, &end);
			if (errno || *end || o->every < 0 || o->every > 86400)
				return -1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			return -1;
		}
	}
	return 0;
}

/*
 * Load --key-file; refuse TCP with neither a key nor an explicit --insecure:
 * anyone who can reach the port could otherwise plant a disk image.
 */
static int setup_key(const struct opts *o, bool tcp)
{
	static struct replicate_key k;

	if (o->key_file && o->insecure) {
		fprintf(stderr, "tern replicate: --key-file and --insecure exclude each other\n");
		return -EINVAL;
	}
	if (o->key_file) {
		if (replicate_key_load(o->key_file, &k) < 0)
			return -EINVAL;
		key = &k;
		return 0;
	}
	if (tcp && !o->insecure) {
		fprintf(stderr, "tern replicate: replication over TCP needs --key-file FILE (the "
				"same key on both ends), or --insecure on a trusted network\n");
		return -EACCES;
	}
	return 0;
}

int cmd_replicate(int argc, char **argv)
{
	struct opts o = {0};
	const char *verb;

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	verb = argv[1];
	optind = 2;
	if (!strcmp(verb, "--help") || !strcmp(verb, "-h")) {
		usage(stdout);
		return 0;
	}
	if (parse_opts(argc, argv, &o) < 0) {
		usage(stderr);
		return EXIT_USAGE;
	}
	argc -= optind;
	argv += optind;
	if (strcmp(verb, "show") &&
	    setup_key(&o, !strcmp(verb, "serve") || (o.to && !strncmp(o.to, "tcp:", 4))) < 0)
		return EXIT_USAGE;
	if (!strcmp(verb, "send") && argc == 1 && o.to)
		return do_send(argv[0], o.to);
	if (!strcmp(verb, "vm") && argc == 0 && o.api && o.layers && o.to)
		return do_vm(o.api, o.disk, o.layers, o.to, o.points, o.every);
	if (!strcmp(verb, "serve") && argc == 1 && o.port)
		return do_serve(argv[0], o.listen, o.port, o.once);
	if (!strcmp(verb, "show") && argc == 1)
		return do_show(argv[0]);
	usage(stderr);
	return EXIT_USAGE;
}
