/*
 * Replication of a disk's differencing chain to a recovery site
 * (docs/replication.md).
 *
 * The primary ships each sealed layer of its chain (base first), with its
 * place in the chain, to a replica: a directory, here or on another host
 * (`tern replicate serve`). The replica rebuilds the same chain under its
 * own names ("NNN-<name>", backing names rewritten to them) and records it
 * in MANIFEST. A layer becomes part of the replica only whole: it is
 * received under a temporary name, synced, its CRC-32 and length checked,
 * its backing name rewritten, the chain opened and checked, then renamed
 * into place, the directory synced and the manifest replaced atomically.
 * The replica's latest point is always the last layer in the manifest. An
 * interrupted transfer leaves the partial file, and the next transfer of
 * the same layer resumes from its end (or starts over if it does not
 * match).
 */
#ifndef TERN_BLOCK_REPLICATE_H
#define TERN_BLOCK_REPLICATE_H

#include <stdbool.h>
#include <stdint.h>

#include "block/blk_int.h"
#include "block/replicate_auth.h"

#define REPLICA_MAX_LAYERS BLK_MAX_CHAIN_DEPTH
#define REPLICA_NAME_MAX 200
#define REPLICA_MANIFEST "MANIFEST"

struct replica_layer {
	char name[REPLICA_NAME_MAX + 1]; /* file name in the replica directory */
	char format[8];			 /* "raw" or "qcow2" */
	uint64_t bytes;			 /* file length */
	uint32_t crc;			 /* CRC-32 of the file as shipped */
};

/* ---- the receiving side ---- */

struct replica;

/* Open (creating if needed) a replica directory and read its manifest. */
int replica_open(const char *dir, struct replica **out);
void replica_close(struct replica *r);
unsigned replica_nlayers(const struct replica *r);
const struct replica_layer *replica_get(const struct replica *r, unsigned idx);
/* Absolute path of the replica's top layer (its latest point), or NULL when empty. */
char *replica_top_path(const struct replica *r);

/*
 * Receive layer idx (idx == replica_nlayers(): the next one). *have is how
 * many bytes of it a previous, interrupted transfer left: the sender goes on
 * from there. -EEXIST: the replica already has this layer (same name, length
 * and CRC); -ESTALE: it has a different layer at idx.
 */
int replica_begin(struct replica *r, unsigned idx, const struct replica_layer *l, uint64_t *have);
/* The next bytes of the layer, in order. */
int replica_write(struct replica *r, const void *buf, uint64_t len);
/* All bytes are in: check and install the layer as the replica's latest point. */
int replica_commit(struct replica *r);
/* Give up on the layer being received; its partial file stays for a resume. */
void replica_abort(struct replica *r);

/*
 * Serve one connection of the replication protocol on fd (closes nothing).
 * key: the sender must prove it (and every message is checked), or NULL:
 * anyone may send. -EACCES: the sender did not authenticate.
 */
int replica_serve(struct replica *r, int fd, const struct replicate_key *key);

/* ---- the sending side ---- */

/*
 * Ship the chain whose top is the image at path (base first, path last) to
 * dest: a directory, or "tcp:HOST:PORT" for `tern replicate serve`. Layers
 * the replica has are skipped. Every image in the chain must be sealed (not
 * written while it is shipped). key: authenticate to a tcp: dest with it
 * (NULL: do not; a directory needs none). *shipped: layers sent; *bytes:
 * bytes sent.
 */
int replicate_chain(const char *path, const char *dest, const struct replicate_key *key,
		    unsigned *shipped, uint64_t *bytes);

#endif
