/*
 * `tern nbd-serve IMAGE`: export a raw or qcow2 image over NBD until SIGINT
 * or SIGTERM. Exit status: 0 after a signal, 1 on errors, 2 on usage errors.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "block/block.h"
#include "block/nbd.h"
#include "cmd/cmd.h"
#include "util/log.h"

static const char usage_text[] =
    "usage: tern nbd-serve IMAGE [--port N | --socket PATH] [options]\n"
    "\n"
    "Export IMAGE (raw or qcow2; a backing chain is followed) over NBD.\n"
    "\n"
    "  --port N          TCP port (default 10809; 0 picks a free one)\n"
    "  --bind ADDR       address to listen on (default 127.0.0.1)\n"
    "  --socket PATH     listen on a Unix socket instead of TCP\n"
    "  --export NAME     export name (default: empty; the empty name is always accepted)\n"
    "  --readonly        refuse writes\n"
    "  -f, --format FMT  raw or qcow2 (default: probed)\n"
    "  --max-clients N   connections at once (default 64)\n"
    "\n"
    "Prints one line 'listening on URI' when ready.\n";

struct serve_opts {
	const char *image, *bind, *socket, *export_name, *format;
	long port;
	long max_clients;
	bool readonly;
};

static int parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct serve_opts *o)
{
	static const struct option longopts[] = {
	    {"port", required_argument, NULL, 'p'},
	    {"bind", required_argument, NULL, 'b'},
	    {"socket", required_argument, NULL, 's'},
	    {"export", required_argument, NULL, 'e'},
	    {"readonly", no_argument, NULL, 'r'},
	    {"format", required_argument, NULL, 'f'},
	    {"max-clients", required_argument, NULL, 'm'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;

	*o = (struct serve_opts){
	    .bind = "127.0.0.1", .export_name = "", .port = 10809, .max_clients = 64};
	optind = 1;
	while ((c = getopt_long(argc, argv, "f:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			if (parse_long(optarg, 0, 65535, &o->port) < 0)
				return -EINVAL;
			break;
		case 'b':
			o->bind = optarg;
			break;
		case 's':
			o->socket = optarg;
			break;
		case 'e':
			o->export_name = optarg;
			break;
		case 'r':
			o->readonly = true;
			break;
		case 'f':
			o->format = optarg;
			break;
		case 'm':
			if (parse_long(optarg, 1, 4096, &o->max_clients) < 0)
				return -EINVAL;
			break;
		case 'h':
			return 1;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc - 1 || strlen(o->export_name) > 4096)
		return -EINVAL;
	o->image = argv[optind];
	return 0;
}

/* SIGINT and SIGTERM arrive as a readable fd; blocked before any thread starts. */
static int stop_signals(void)
{
	sigset_t set;
	int fd;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	signal(SIGPIPE, SIG_IGN);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL))
		return -EINVAL;
	fd = signalfd(-1, &set, SFD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static int listen_on(const struct serve_opts *o)
{
	uint16_t port = (uint16_t)o->port;
	int fd;

	if (o->socket) {
		fd = nbd_listen_unix(o->socket);
		if (fd < 0) {
			pr_err("nbd-serve: %s: %s", o->socket, strerror(-fd));
			return fd;
		}
		printf("listening on nbd+unix:///%s?socket=%s\n", o->export_name, o->socket);
	} else {
		fd = nbd_listen_tcp(o->bind, &port);
		if (fd < 0) {
			pr_err("nbd-serve: %s port %ld: %s", o->bind, o->port, strerror(-fd));
			return fd;
		}
		printf("listening on nbd://%s%s%s:%u/%s\n", strchr(o->bind, ':') ? "[" : "",
		       o->bind, strchr(o->bind, ':') ? "]" : "", port, o->export_name);
	}
	fflush(stdout);
	return fd;
}

int cmd_nbd_serve(int argc, char **argv)
{
	struct nbd_server s = {0};
	struct serve_opts o;
	int r, sfd;

	r = parse_args(argc, argv, &o);
	if (r) {
		fputs(usage_text, r > 0 ? stdout : stderr);
		return r > 0 ? 0 : 2;
	}
	sfd = stop_signals();
	if (sfd < 0) {
		pr_err("nbd-serve: cannot set up signals: %s", strerror(-sfd));
		return 1;
	}
	r = blk_open_fmt(o.image, o.format, o.readonly, &s.bd);
	if (r < 0)
		goto out_sig;
	s.export_name = o.export_name;
	s.readonly = o.readonly || s.bd->readonly;
	s.max_clients = (unsigned)o.max_clients;
	s.listen_fd = listen_on(&o);
	if (s.listen_fd < 0) {
		r = s.listen_fd;
		goto out_bd;
	}
	r = nbd_serve(&s, sfd);
	close(s.listen_fd);
	if (o.socket)
		unlink(o.socket);
	if (r == -EBUSY) {
		/* Clients still hold the disk: flush what was written, leave it open. */
		blk_flush(s.bd);
		close(sfd);
		return 0;
	}
out_bd:
	blk_close(s.bd);
out_sig:
	close(sfd);
	return r < 0 ? 1 : 0;
}
