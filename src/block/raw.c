/*
 * Raw image driver: the virtual disk is the file, byte for byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block/blk_int.h"
#include "util/log.h"

struct raw_dev {
	struct blockdev bd;
	int fd;
};

static struct raw_dev *to_raw(struct blockdev *bd)
{
	return (struct raw_dev *)bd;
}

static int raw_preadv(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return blk_fd_preadv(to_raw(bd)->fd, iov, iovcnt, off);
}

static int raw_pwritev(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return blk_fd_pwritev(to_raw(bd)->fd, iov, iovcnt, off);
}

static int raw_flush(struct blockdev *bd)
{
	return fdatasync(to_raw(bd)->fd) ? -errno : 0;
}

static int raw_discard(struct blockdev *bd, uint64_t off, uint64_t len)
{
	if (fallocate(to_raw(bd)->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) == 0)
		return 0;
	/* Discard is advisory: a file system without hole punching just keeps the data. */
	if (errno == EOPNOTSUPP || errno == ENOSYS)
		return 0;
	return -errno;
}

static int raw_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	int fd = to_raw(bd)->fd;
	static const char zero[65536];

	if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		return 0;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		return 0;
	while (len) {
		size_t n = len < sizeof(zero) ? (size_t)len : sizeof(zero);
		int r = blk_fd_pwrite(fd, zero, n, off);

		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

static void raw_close(struct blockdev *bd)
{
	close(to_raw(bd)->fd);
	free(bd);
}

static const struct blockdev_ops raw_ops = {
    .format = "raw",
    .preadv = raw_preadv,
    .pwritev = raw_pwritev,
    .flush = raw_flush,
    .discard = raw_discard,
    .write_zeroes = raw_write_zeroes,
    .close = raw_close,
};

int raw_open(const char *path, bool readonly, struct blockdev **out)
{
	struct raw_dev *r;
	struct stat st;
	int fd, err;

	fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		pr_err("%s: cannot open: %s", path, strerror(errno));
		return err;
	}
	if (fstat(fd, &st) < 0) {
		err = -errno;
		goto fail;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		err = -ENOMEM;
		goto fail;
	}
	r->fd = fd;
	r->bd.ops = &raw_ops;
	r->bd.readonly = readonly;
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);

		r->bd.size = end < 0 ? 0 : (uint64_t)end;
	} else {
		r->bd.size = (uint64_t)st.st_size;
	}
	*out = &r->bd;
	return 0;
fail:
	close(fd);
	return err;
}
