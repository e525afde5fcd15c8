/*
 * qcow2 specifics beyond the generic block interface: creating images,
 * inspecting and checking them, and the queries `tern img` needs for commit
 * and rebase. Devices passed here must have ops->format "qcow2".
 */
#ifndef TERN_BLOCK_QCOW2_H
#define TERN_BLOCK_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "block/block.h"

struct qcow2_create_opts {
	uint64_t size;		 /* virtual size in bytes */
	unsigned cluster_bits;	 /* 9..21; 0 means 16 (64 KiB) */
	unsigned version;	 /* 2 or 3; 0 means 3 */
	unsigned refcount_order; /* 0..6; 0 means 4 (16-bit); version 2 needs 4 */
	const char *backing;	 /* backing file name as stored, or NULL */
	const char *backing_fmt; /* "raw", "qcow2" or NULL */
};

int qcow2_create(const char *path, const struct qcow2_create_opts *o);

struct qcow2_info {
	uint32_t version;
	uint32_t cluster_bits;
	uint32_t refcount_bits;
	uint64_t incompatible, compatible, autoclear;
	uint32_t nb_snapshots;
	const char *backing_name; /* as stored in the image, or NULL */
	const char *backing_fmt;  /* from the header extension, or NULL */
	const char *backing_path; /* resolved against the image's directory */
	struct blockdev *backing; /* the open backing image, or NULL */
};

void qcow2_get_info(struct blockdev *bd, struct qcow2_info *out);

struct qcow2_check_result {
	uint64_t corruptions;	 /* references without a matching refcount, bad offsets */
	uint64_t leaks;		 /* clusters with a refcount but no reference */
	uint64_t repaired;	 /* leaks fixed when repair was asked for */
	uint64_t data_clusters;	 /* allocated guest clusters */
	uint64_t compressed;	 /* compressed guest clusters */
	uint64_t total_clusters; /* guest clusters the virtual size spans */
	uint64_t image_end;	 /* bytes: end of the last used cluster */
};

/* Walk every table and compare the refcounts. Messages go to the log. */
int qcow2_check(struct blockdev *bd, bool repair_leaks, struct qcow2_check_result *res);

/*
 * Is [off, off+len) stored in this image (data or a zero cluster) rather than
 * left to the backing file? Returns 1 or 0 and in *pnum how many bytes from
 * off share that answer, or -errno.
 */
int qcow2_block_status(struct blockdev *bd, uint64_t off, uint64_t len, uint64_t *pnum);

/* Point the image at another backing file (NULL: none) without copying data. */
int qcow2_set_backing(struct blockdev *bd, const char *name, const char *fmt);

/*
 * The same for an image file that is not open, without opening its current
 * or its new backing file (which need not exist yet): for rebuilding a chain
 * under new names, e.g. on a recovery site.
 */
int qcow2_rewrite_backing(const char *path, const char *name, const char *fmt);

#endif
