/*
 * Live disk snapshots of a disk that stays in use (docs/live-snapshot.md).
 *
 * Copy form: a filter block device stacked over the disk's device. From the
 * instant it is armed, the target file receives the disk's content as it
 * was at that instant: a write to a block not yet copied first copies the
 * old data to the target (copy-before-write) and sets the block's bit in
 * the copy map; a background thread copies the other blocks; the job is
 * done when every bit is set. Reads go straight to the disk.
 *
 * Overlay form: a new qcow2 overlay whose backing file is the disk's image
 * is created, and the disk is switched onto it.
 *
 * The caller (virtio-blk's swap) arms the filter or opens the overlay while
 * the disk's requests are held, so the snapshot instant falls between two
 * requests: everything before it is in the snapshot, nothing after.
 */
#ifndef TERN_BLOCK_LIVESNAP_H
#define TERN_BLOCK_LIVESNAP_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

#define LIVESNAP_DEFAULT_BLOCK (64u << 10)
#define LIVESNAP_MIN_BLOCK (4u << 10)
#define LIVESNAP_MAX_BLOCK (16u << 20)

struct livesnap;

struct livesnap_opts {
	const char *target;  /* the point-in-time copy: created, must not exist */
	const char *format;  /* "raw" (default) or "qcow2" */
	uint32_t block_size; /* copy map granularity: power of two; 0 = 64 KiB */
	uint64_t rate;	     /* background copy, bytes per second; 0 = unlimited */
};

enum livesnap_state { LIVESNAP_COPYING, LIVESNAP_DONE, LIVESNAP_FAILED };

struct livesnap_status {
	enum livesnap_state state;
	int error;	 /* -errno when failed */
	uint64_t blocks; /* blocks in the copy map */
	uint64_t copied; /* bits set */
	uint64_t cbw;	 /* of which copied before a write */
	uint64_t bytes;	 /* bytes written to the target (zero blocks are skipped) */
	double seconds;	 /* from arming to done (or so far) */
	uint32_t block_size;
	const char *target;
};

/*
 * Step 1, before holding requests: create the target (size bytes) and the
 * copy map. Nothing reads the disk yet.
 */
int livesnap_prepare(uint64_t size, const struct livesnap_opts *o, struct livesnap **out);
/* Undo a prepared, never armed job: the target file is removed. */
void livesnap_discard(struct livesnap *ls);
/*
 * Step 2, with requests held: stack the filter over base (which it then
 * owns) and start the background copy. *out is the filter's block device.
 */
int livesnap_arm(struct livesnap *ls, struct blockdev *base, struct blockdev **out);

/* Is bd a copy filter? */
bool livesnap_is_filter(const struct blockdev *bd);
/* The device a filter is stacked on (for its path and format). */
struct blockdev *livesnap_base(struct blockdev *filter);
void livesnap_get_status(struct blockdev *filter, struct livesnap_status *st);
/* Block until the copy is done or failed; 0 or the job's -errno. */
int livesnap_wait(struct blockdev *filter);
/*
 * Take a finished (done or failed) filter apart with requests held: returns
 * the device it was stacked on and frees the filter, or NULL while copying.
 */
struct blockdev *livesnap_unwrap(struct blockdev *filter);

/*
 * Overlay form, step 1 (requests flowing): create target as a qcow2 overlay
 * of base's image (its absolute path, its format). base must be a local file.
 */
int livesnap_overlay_create(struct blockdev *base, const char *target);
/*
 * Step 2, with requests held: flush base and open the overlay (its backing
 * chain read-only). The caller swaps *out in and then closes base.
 */
int livesnap_overlay_open(struct blockdev *base, const char *target, struct blockdev **out);

#endif
