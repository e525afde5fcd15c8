/*
 * NBD: a block driver that uses an NBD server's export as the disk
 * (nbd://HOST[:PORT][/EXPORT], nbd+unix:///EXPORT?socket=PATH), and a
 * server that exports any disk blk_open() can open.
 *
 * The client speaks fixed newstyle negotiation (NBD_OPT_GO, structured
 * replies when offered), keeps several requests in flight from several
 * threads, matches replies by cookie, and treats everything the server sends
 * as hostile: a reply that does not fit an outstanding request, or a server
 * silent for longer than the timeout, ends the connection and every request
 * fails with -EIO.
 */
#ifndef TERN_BLOCK_NBD_H
#define TERN_BLOCK_NBD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

/* Milliseconds a request may wait for its reply before the server is declared dead. */
#define NBD_DEFAULT_TIMEOUT_MS 30000

struct nbd_client_opts {
	const char *export_name; /* NULL or "" for the server's default export */
	int timeout_ms;		 /* 0: NBD_DEFAULT_TIMEOUT_MS */
};

/* True when spec is an NBD URI (nbd://, nbd+unix://). */
bool nbd_is_uri(const char *spec);
/* Open an NBD URI as a disk. */
int nbd_open(const char *uri, bool readonly, struct blockdev **out);
/* Negotiate on an already connected socket (takes ownership of fd, also on error). */
int nbd_open_fd(int fd, const struct nbd_client_opts *o, bool readonly, struct blockdev **out);

/* Parsed form of an NBD URI; free with nbd_uri_free. */
struct nbd_uri {
	char *host;   /* TCP: host name or address; NULL for nbd+unix */
	char *port;   /* TCP port as text */
	char *socket; /* nbd+unix: socket path */
	char *export_name;
};
int nbd_uri_parse(const char *uri, struct nbd_uri *u);
void nbd_uri_free(struct nbd_uri *u);

/* Server. */
struct nbd_server {
	struct blockdev *bd;
	const char *export_name; /* the name clients ask for; "" is also accepted */
	bool readonly;
	unsigned max_clients; /* 0: 64 */
	int listen_fd;
	/* nbd_serve's own: clients connected now. */
	pthread_mutex_t lock;
	unsigned active;
};

/* Listen on a TCP address (port 0: any free port, *port says which) or a Unix socket path. */
int nbd_listen_tcp(const char *addr, uint16_t *port);
int nbd_listen_unix(const char *path);
/* Serve one connected client until it disconnects or breaks the protocol; closes fd. */
void nbd_serve_client(struct nbd_server *s, int fd);
/*
 * Accept clients on s->listen_fd, a thread each, until stop_fd becomes
 * readable. Client threads use s and s->bd: -EBUSY means some were still
 * connected a second after the stop, so s must stay (the process should exit).
 */
int nbd_serve(struct nbd_server *s, int stop_fd);

#endif
