/*
 * Block layer core: opening a disk (format probing), the blk_* entry points
 * that check requests before a driver sees them, and I/O helpers the
 * drivers share.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/blk_int.h"
#include "block/nbd.h"
#include "util/log.h"

static const char qcow2_magic[4] = {'Q', 'F', 'I', (char)0xfb};

int blk_probe(const char *path, const char **fmt)
{
	char magic[4];
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		pr_err("%s: cannot open: %s", path, strerror(errno));
		return r;
	}
	r = (int)pread(fd, magic, sizeof(magic), 0);
	close(fd);
	if (r < 0)
		return -errno;
	*fmt = (r == 4 && !memcmp(magic, qcow2_magic, 4)) ? "qcow2" : "raw";
	return 0;
}

/*
 * Set while blk_open_shared() opens a chain, so the backing files a driver
 * opens on the way are opened force-shared too.
 */
static _Thread_local bool open_force_share;

static enum img_lock_mode open_lock_mode(bool readonly)
{
	if (!readonly)
		return IMG_LOCK_WRITE;
	return open_force_share ? IMG_LOCK_SHARED : IMG_LOCK_READ;
}

static int open_driver(const char *spec, const char *fmt, bool readonly, int depth,
		       struct blockdev **bd)
{
	if (!strcmp(fmt, "raw"))
		return raw_open(spec, readonly, bd);
	if (!strcmp(fmt, "qcow2"))
		return qcow2_open(spec, readonly, depth, bd);
	pr_err("%s: unknown image format '%s'", spec, fmt);
	return -EINVAL;
}

int blk_open_depth(const char *spec, const char *fmt, bool readonly, int depth,
		   struct blockdev **out)
{
	struct blockdev *bd = NULL;
	struct img_lock *lock = NULL;
	struct stat st;
	int r;

	if (depth > BLK_MAX_CHAIN_DEPTH) {
		pr_err("%s: backing chain deeper than %d images (a loop?)", spec,
		       BLK_MAX_CHAIN_DEPTH);
		return -ELOOP;
	}
	/* An NBD export is a raw disk on a server. */
	if (nbd_is_uri(spec) && (!fmt || !strcmp(fmt, "raw")))
		return nbd_open(spec, readonly, out);
	/* FIFOs and character devices would block or stream: only files and disks. */
	if (stat(spec, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		pr_err("%s: not a regular file or block device", spec);
		return -EINVAL;
	}
	if (!fmt) {
		r = blk_probe(spec, &fmt);
		if (r < 0)
			return r;
	}
	/* Locked before the driver opens it: a writable open may already write. */
	r = img_lock_take(spec, open_lock_mode(readonly), &lock);
	if (r < 0)
		return r;
	r = open_driver(spec, fmt, readonly, depth, &bd);
	if (r < 0) {
		img_lock_release(lock);
		return r;
	}
	bd->lock = lock;
	bd->spec = strdup(spec);
	if (!bd->spec) {
		blk_close(bd);
		return -ENOMEM;
	}
	*out = bd;
	return 0;
}

int blk_open_shared(const char *spec, const char *fmt, struct blockdev **out)
{
	int r;

	open_force_share = true;
	r = blk_open_depth(spec, fmt, true, 0, out);
	open_force_share = false;
	return r;
}

int blk_set_lock(struct blockdev *bd, enum img_lock_mode mode)
{
	return bd->lock ? img_lock_change(bd->lock, mode) : 0;
}

int blk_open_fmt(const char *spec, const char *fmt, bool readonly, struct blockdev **out)
{
	return blk_open_depth(spec, fmt, readonly, 0, out);
}

int blk_open(const char *spec, bool readonly, struct blockdev **out)
{
	return blk_open_depth(spec, NULL, readonly, 0, out);
}

void blk_close(struct blockdev *bd)
{
	struct img_lock *lock;
	char *spec;

	if (!bd)
		return;
	spec = bd->spec;
	lock = bd->lock;
	bd->ops->close(bd);
	/* After the close: a writable image writes back its metadata there. */
	img_lock_release(lock);
	free(spec);
}

static int blk_check(struct blockdev *bd, uint64_t len, uint64_t off, bool write)
{
	if (write && bd->readonly)
		return -EROFS;
	if (off > bd->size || len > bd->size - off)
		return -EINVAL;
	return 0;
}

int blk_preadv(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	int r = blk_check(bd, blk_iov_len(iov, iovcnt), off, false);

	return r < 0 ? r : bd->ops->preadv(bd, iov, iovcnt, off);
}

int blk_pwritev(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	int r = blk_check(bd, blk_iov_len(iov, iovcnt), off, true);

	return r < 0 ? r : bd->ops->pwritev(bd, iov, iovcnt, off);
}

int blk_pread(struct blockdev *bd, void *buf, uint64_t len, uint64_t off)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};

	return blk_preadv(bd, &iov, 1, off);
}

int blk_pwrite(struct blockdev *bd, const void *buf, uint64_t len, uint64_t off)
{
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};

	return blk_pwritev(bd, &iov, 1, off);
}

int blk_flush(struct blockdev *bd)
{
	if (bd->readonly)
		return 0;
	return bd->ops->flush(bd);
}

int blk_discard(struct blockdev *bd, uint64_t off, uint64_t len)
{
	int r = blk_check(bd, len, off, true);

	if (r < 0)
		return r;
	return bd->ops->discard ? bd->ops->discard(bd, off, len) : 0;
}

int blk_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	int r = blk_check(bd, len, off, true);

	if (r < 0)
		return r;
	if (bd->ops->write_zeroes)
		return bd->ops->write_zeroes(bd, off, len);
	return -EOPNOTSUPP;
}

/* ---- helpers for drivers ---- */

uint64_t blk_iov_len(const struct iovec *iov, int iovcnt)
{
	uint64_t n = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

/* Walk the part [skip, skip+len) of an iovec array, calling fn on each piece. */
static void iov_walk(const struct iovec *iov, int iovcnt, uint64_t skip, size_t len,
		     void (*fn)(void *iovp, void *flat, size_t n, int c), void *flat, int c)
{
	for (int i = 0; i < iovcnt && len; i++) {
		size_t n;

		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		n = iov[i].iov_len - skip;
		if (n > len)
			n = len;
		fn((char *)iov[i].iov_base + skip, flat, n, c);
		if (flat)
			flat = (char *)flat + n;
		len -= n;
		skip = 0;
	}
}

static void copy_out(void *iovp, void *flat, size_t n, int c)
{
	memcpy(flat, iovp, n);
}

static void copy_in(void *iovp, void *flat, size_t n, int c)
{
	memcpy(iovp, flat, n);
}

static void fill(void *iovp, void *flat, size_t n, int c)
{
	memset(iovp, c, n);
}

void blk_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t skip, void *buf, size_t len)
{
	iov_walk(iov, iovcnt, skip, len, copy_out, buf, 0);
}

void blk_iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t skip, const void *buf,
		      size_t len)
{
	iov_walk(iov, iovcnt, skip, len, copy_in, (void *)buf, 0);
}

void blk_iov_memset(const struct iovec *iov, int iovcnt, uint64_t skip, int c, size_t len)
{
	iov_walk(iov, iovcnt, skip, len, fill, NULL, c);
}

int blk_fd_pread(int fd, void *buf, size_t len, uint64_t off)
{
	char *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0) {
			/* Past end of file: a sparse tail reads as zeroes. */
			memset(p, 0, len);
			return 0;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int blk_fd_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* Finish a vectored transfer that came up short, one piece at a time. */
static int fd_iov_rest(int fd, const struct iovec *iov, int iovcnt, uint64_t done, uint64_t off,
		       bool write)
{
	uint64_t pos = 0;

	for (int i = 0; i < iovcnt; i++) {
		uint64_t end = pos + iov[i].iov_len;

		if (end > done) {
			uint64_t skip = done > pos ? done - pos : 0;
			char *p = (char *)iov[i].iov_base + skip;
			size_t n = iov[i].iov_len - skip;
			int r = write ? blk_fd_pwrite(fd, p, n, off + pos + skip)
				      : blk_fd_pread(fd, p, n, off + pos + skip);

			if (r < 0)
				return r;
		}
		pos = end;
	}
	return 0;
}

static int fd_iov(int fd, const struct iovec *iov, int iovcnt, uint64_t off, bool write)
{
	uint64_t total = blk_iov_len(iov, iovcnt);
	ssize_t n;

	if (iovcnt == 1)
		return write ? blk_fd_pwrite(fd, iov[0].iov_base, iov[0].iov_len, off)
			     : blk_fd_pread(fd, iov[0].iov_base, iov[0].iov_len, off);
	do {
		n = write ? pwritev(fd, iov, iovcnt, (off_t)off)
			  : preadv(fd, iov, iovcnt, (off_t)off);
	} while (n < 0 && errno == EINTR);
	if (n < 0 && errno == EINVAL && iovcnt > 1)
		n = 0; /* more pieces than the kernel takes at once: go one by one */
	else if (n < 0)
		return -errno;
	if ((uint64_t)n == total)
		return 0;
	return fd_iov_rest(fd, iov, iovcnt, (uint64_t)n, off, write);
}

int blk_fd_preadv(int fd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return fd_iov(fd, iov, iovcnt, off, false);
}

int blk_fd_pwritev(int fd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return fd_iov(fd, iov, iovcnt, off, true);
}
