/*
 * Block layer: one interface over every disk format and transport tern
 * supports (raw files, qcow2 with backing chains, NBD). virtio-blk and the
 * `tern img` tools use only these functions.
 *
 * All functions return 0 (or a byte count where stated) on success and
 * -errno on failure. Offsets and lengths need not be sector aligned unless a
 * driver says so; callers are trusted here (virtio-blk validates guest input
 * before calling).
 */
#ifndef TERN_BLOCK_BLOCK_H
#define TERN_BLOCK_BLOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "block/lock.h"

struct blockdev;

struct blockdev_ops {
	const char *format;
	int (*preadv)(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off);
	int (*pwritev)(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off);
	int (*flush)(struct blockdev *bd);
	int (*discard)(struct blockdev *bd, uint64_t off, uint64_t len);
	int (*write_zeroes)(struct blockdev *bd, uint64_t off, uint64_t len);
	void (*close)(struct blockdev *bd);
};

struct blockdev {
	const struct blockdev_ops *ops;
	uint64_t size; /* virtual size in bytes */
	bool readonly;
	char *spec;	       /* what the user named: a path or URI */
	struct img_lock *lock; /* files: held from open to close (docs/qcow2.md) */
};

/* Open a disk by path (format probed from its content) or URI. */
int blk_open(const char *spec, bool readonly, struct blockdev **out);
/* Open with a known format ("raw", "qcow2"); NULL probes like blk_open. */
int blk_open_fmt(const char *spec, const char *fmt, bool readonly, struct blockdev **out);
/*
 * Open read-only without keeping others from writing the image or its
 * backing chain meanwhile (what `-U/--force-share` asks for): what is read
 * may be inconsistent if someone does write.
 */
int blk_open_shared(const char *spec, const char *fmt, struct blockdev **out);
/*
 * Change the lock an open image holds (images without a lock: nothing to
 * do). -EBUSY when another holder conflicts; the old lock stays.
 */
int blk_set_lock(struct blockdev *bd, enum img_lock_mode mode);
/* Name the format of the image at path ("qcow2" or "raw") from its content. */
int blk_probe(const char *path, const char **fmt);
void blk_close(struct blockdev *bd);

int blk_pread(struct blockdev *bd, void *buf, uint64_t len, uint64_t off);
int blk_pwrite(struct blockdev *bd, const void *buf, uint64_t len, uint64_t off);
int blk_preadv(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off);
int blk_pwritev(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off);
int blk_flush(struct blockdev *bd);
int blk_discard(struct blockdev *bd, uint64_t off, uint64_t len);
int blk_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len);

#endif
