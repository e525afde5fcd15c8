/*
 * Live disk snapshots: the copy-before-write filter with its copy map and
 * background copier, and the external overlay form. See livesnap.h.
 *
 * Locking: one mutex per job guards the copy map and every copy of a block
 * into the target. A block's bit is set only after its old data is in the
 * target, and a write to the disk happens only after the bits of all the
 * blocks it touches are set, so the copier never reads a block that a
 * write has already changed. Writes to blocks already copied (and every
 * write once the job is done) pass straight through without the lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "block/blk_int.h"
#include "block/livesnap.h"
#include "block/qcow2.h"
#include "util/log.h"

/* The background copier takes the lock for at most this many bytes at a time. */
#define COPY_BATCH (1u << 20)

struct livesnap {
	struct blockdev bd; /* the filter; first, so a blockdev pointer is the job */
	struct blockdev *base;
	struct blockdev *target;
	char *target_path;
	uint32_t bshift;
	uint64_t size, nblocks;
	uint64_t rate; /* background copy limit, bytes/s; 0: none */
	uint64_t *map; /* the copy map: bit set = block is in the target */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool thread_started, stop;
	bool done;		     /* atomic: every bit set (or failed): writes pass through */
	enum livesnap_state state;   /* under lock */
	int error;		     /* under lock */
	uint64_t copied, cbw, bytes; /* under lock */
	struct timespec t_arm, t_end;
	uint8_t *buf; /* COPY_BATCH bytes, used under lock */
};

static const struct blockdev_ops livesnap_ops;

static struct livesnap *to_ls(struct blockdev *bd)
{
	return (struct livesnap *)bd;
}

static bool bit_get(const uint64_t *map, uint64_t i)
{
	return (map[i / 64] >> (i % 64)) & 1;
}

static void bit_set(uint64_t *map, uint64_t i)
{
	map[i / 64] |= 1ull << (i % 64);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

static double elapsed(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/* The job failed: keep the guest's disk working, stop copying. Under lock. */
static void fail_locked(struct livesnap *ls, int err)
{
	if (ls->state == LIVESNAP_COPYING) {
		pr_err("live snapshot to %s failed: %s", ls->target_path, strerror(-err));
		ls->state = LIVESNAP_FAILED;
		ls->error = err;
		clock_gettime(CLOCK_MONOTONIC, &ls->t_end);
		__atomic_store_n(&ls->done, true, __ATOMIC_RELEASE);
		pthread_cond_broadcast(&ls->cond);
	}
}

/* Write the non-zero blocks of buf (the disk at off, len bytes) to the target. */
static int write_nonzero(struct livesnap *ls, uint64_t off, uint64_t len)
{
	uint64_t bs = 1ull << ls->bshift, start = 0, run = 0;

	/* len need not be a multiple of bs: the disk's last block may be short. */
	for (uint64_t pos = 0; pos < len; pos += bs) {
		uint64_t n = len - pos < bs ? len - pos : bs;
		int r;

		if (!all_zero(ls->buf + pos, n)) {
			if (!run)
				start = pos;
			run += n;
			continue;
		}
		if (!run)
			continue;
		r = blk_pwrite(ls->target, ls->buf + start, run, off + start);
		if (r < 0)
			return r;
		ls->bytes += run;
		run = 0;
	}
	if (run) {
		int r = blk_pwrite(ls->target, ls->buf + start, run, off + start);

		if (r < 0)
			return r;
		ls->bytes += run;
	}
	return 0;
}

/*
 * Copy the blocks [first, first+n) (all with clear bits) from the disk into
 * the target and set their bits. Under lock. Zero blocks are not written:
 * the target was created empty.
 */
static int copy_blocks_locked(struct livesnap *ls, uint64_t first, uint64_t n, bool cbw)
{
	uint64_t off = first << ls->bshift;
	uint64_t len = n << ls->bshift;
	int r;

	if (len > ls->size - off)
		len = ls->size - off;
	r = blk_pread(ls->base, ls->buf, len, off);
	if (r == 0)
		r = write_nonzero(ls, off, len);
	if (r < 0) {
		fail_locked(ls, r);
		return r;
	}
	for (uint64_t i = first; i < first + n; i++)
		bit_set(ls->map, i);
	ls->copied += n;
	if (cbw)
		ls->cbw += n;
	return 0;
}

/* Before a change to [off, off+len): copy every block of it not yet copied. */
static void copy_before_write(struct livesnap *ls, uint64_t off, uint64_t len)
{
	uint64_t first, last, per_batch = COPY_BATCH >> ls->bshift;

	if (!len || __atomic_load_n(&ls->done, __ATOMIC_ACQUIRE))
		return;
	first = off >> ls->bshift;
	last = (off + len - 1) >> ls->bshift;
	pthread_mutex_lock(&ls->lock);
	for (uint64_t b = first; b <= last && ls->state == LIVESNAP_COPYING;) {
		uint64_t n = 0;

		if (bit_get(ls->map, b)) {
			b++;
			continue;
		}
		while (b + n <= last && n < per_batch && !bit_get(ls->map, b + n))
			n++;
		if (copy_blocks_locked(ls, b, n, true) < 0)
			break;
		b += n;
	}
	pthread_mutex_unlock(&ls->lock);
}

static void finish(struct livesnap *ls)
{
	int r = blk_flush(ls->target);

	pthread_mutex_lock(&ls->lock);
	if (r < 0) {
		fail_locked(ls, r);
	} else if (ls->state == LIVESNAP_COPYING) {
		ls->state = LIVESNAP_DONE;
		clock_gettime(CLOCK_MONOTONIC, &ls->t_end);
		__atomic_store_n(&ls->done, true, __ATOMIC_RELEASE);
		pthread_cond_broadcast(&ls->cond);
		pr_info("live snapshot to %s done: %llu blocks, %llu copied before a write, %.3f s",
			ls->target_path, (unsigned long long)ls->nblocks,
			(unsigned long long)ls->cbw, elapsed(&ls->t_arm, &ls->t_end));
	}
	pthread_mutex_unlock(&ls->lock);
}

/* Keep the background copy under the rate: sleep until done bytes are due. */
static void pace(struct livesnap *ls, uint64_t done)
{
	struct timespec now, due;
	double ahead;

	if (!ls->rate)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	ahead = (double)done / (double)ls->rate - elapsed(&ls->t_arm, &now);
	if (ahead <= 0)
		return;
	due.tv_sec = (time_t)ahead;
	due.tv_nsec = (long)((ahead - (double)due.tv_sec) * 1e9);
	nanosleep(&due, NULL);
}

/* The background copier: walks the map once, copying runs of clear bits. */
static void *copier(void *arg)
{
	struct livesnap *ls = arg;
	uint64_t per_batch = COPY_BATCH >> ls->bshift;

	for (uint64_t b = 0; b < ls->nblocks;) {
		pace(ls, b << ls->bshift);
		uint64_t n = 0;
		bool stop;

		pthread_mutex_lock(&ls->lock);
		stop = ls->stop || ls->state != LIVESNAP_COPYING;
		if (!stop) {
			while (b < ls->nblocks && bit_get(ls->map, b))
				b++;
			while (b + n < ls->nblocks && n < per_batch && !bit_get(ls->map, b + n))
				n++;
			if (n && copy_blocks_locked(ls, b, n, false) < 0)
				stop = true;
		}
		pthread_mutex_unlock(&ls->lock);
		if (stop)
			return NULL;
		b += n;
	}
	finish(ls);
	return NULL;
}

/* ---- the filter's block device ops ---- */

static int ls_preadv(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return blk_preadv(to_ls(bd)->base, iov, iovcnt, off);
}

static int ls_pwritev(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	struct livesnap *ls = to_ls(bd);

	copy_before_write(ls, off, blk_iov_len(iov, iovcnt));
	return blk_pwritev(ls->base, iov, iovcnt, off);
}

static int ls_flush(struct blockdev *bd)
{
	return blk_flush(to_ls(bd)->base);
}

static int ls_discard(struct blockdev *bd, uint64_t off, uint64_t len)
{
	struct livesnap *ls = to_ls(bd);

	copy_before_write(ls, off, len);
	return blk_discard(ls->base, off, len);
}

static int ls_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	struct livesnap *ls = to_ls(bd);

	copy_before_write(ls, off, len);
	return blk_write_zeroes(ls->base, off, len);
}

static void ls_stop_thread(struct livesnap *ls)
{
	if (!ls->thread_started)
		return;
	pthread_mutex_lock(&ls->lock);
	ls->stop = true;
	pthread_mutex_unlock(&ls->lock);
	pthread_join(ls->thread, NULL);
	ls->thread_started = false;
}

static void ls_free(struct livesnap *ls)
{
	blk_close(ls->target);
	free(ls->target_path); /* bd.spec belongs to blk_close() or unwrap */
	free(ls->map);
	free(ls->buf);
	pthread_mutex_destroy(&ls->lock);
	pthread_cond_destroy(&ls->cond);
	free(ls);
}

static void ls_close(struct blockdev *bd)
{
	struct livesnap *ls = to_ls(bd);

	ls_stop_thread(ls);
	pthread_mutex_lock(&ls->lock);
	if (ls->state == LIVESNAP_COPYING)
		pr_warn("live snapshot to %s stopped before it was complete", ls->target_path);
	pthread_mutex_unlock(&ls->lock);
	blk_close(ls->base);
	ls_free(ls);
}

static const struct blockdev_ops livesnap_ops = {
    .format = "livesnap",
    .preadv = ls_preadv,
    .pwritev = ls_pwritev,
    .flush = ls_flush,
    .discard = ls_discard,
    .write_zeroes = ls_write_zeroes,
    .close = ls_close,
};

/* ---- the job's life ---- */

static int create_target(const char *path, const char *fmt, uint64_t size)
{
	struct qcow2_create_opts qo = {.size = size};
	int fd;

	if (!strcmp(fmt, "qcow2")) {
		/* qcow2_create truncates: claim the name first so nothing is overwritten. */
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0)
			return -errno;
		close(fd);
		return qcow2_create(path, &qo);
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	close(fd);
	return 0;
}

static int check_opts(const struct livesnap_opts *o, const char **fmt, uint32_t *bs)
{
	*fmt = o->format ? o->format : "raw";
	*bs = o->block_size ? o->block_size : LIVESNAP_DEFAULT_BLOCK;
	if (!o->target || !*o->target)
		return -EINVAL;
	if (strcmp(*fmt, "raw") && strcmp(*fmt, "qcow2"))
		return -EINVAL;
	if (*bs < LIVESNAP_MIN_BLOCK || *bs > LIVESNAP_MAX_BLOCK || (*bs & (*bs - 1)))
		return -EINVAL;
	return 0;
}

int livesnap_prepare(uint64_t size, const struct livesnap_opts *o, struct livesnap **out)
{
	struct livesnap *ls;
	const char *fmt;
	uint32_t bs;
	int r = check_opts(o, &fmt, &bs);

	if (r < 0)
		return r;
	ls = calloc(1, sizeof(*ls));
	if (!ls)
		return -ENOMEM;
	pthread_mutex_init(&ls->lock, NULL);
	pthread_cond_init(&ls->cond, NULL);
	ls->bshift = (uint32_t)__builtin_ctz(bs);
	ls->size = size;
	ls->rate = o->rate;
	ls->nblocks = (size + bs - 1) >> ls->bshift;
	ls->map = calloc((ls->nblocks + 63) / 64 + 1, sizeof(uint64_t));
	ls->buf = malloc(COPY_BATCH > bs ? COPY_BATCH : bs);
	ls->target_path = strdup(o->target);
	if (!ls->map || !ls->buf || !ls->target_path) {
		ls_free(ls);
		return -ENOMEM;
	}
	r = create_target(o->target, fmt, size);
	if (r < 0) {
		pr_err("%s: cannot create the snapshot target: %s", o->target, strerror(-r));
		ls_free(ls);
		return r;
	}
	r = blk_open_fmt(o->target, fmt, false, &ls->target);
	if (r < 0) {
		unlink(o->target);
		ls_free(ls);
		return r;
	}
	*out = ls;
	return 0;
}

void livesnap_discard(struct livesnap *ls)
{
	if (!ls)
		return;
	unlink(ls->target_path);
	ls_free(ls);
}

int livesnap_arm(struct livesnap *ls, struct blockdev *base, struct blockdev **out)
{
	int r;

	if (base->size != ls->size)
		return -EINVAL;
	ls->base = base;
	ls->bd.ops = &livesnap_ops;
	ls->bd.size = base->size;
	ls->bd.readonly = base->readonly;
	ls->bd.spec = base->spec ? strdup(base->spec) : NULL;
	clock_gettime(CLOCK_MONOTONIC, &ls->t_arm);
	r = -pthread_create(&ls->thread, NULL, copier, ls);
	if (r) {
		free(ls->bd.spec);
		ls->bd.spec = NULL;
		ls->base = NULL;
		return r;
	}
	ls->thread_started = true;
	*out = &ls->bd;
	return 0;
}

bool livesnap_is_filter(const struct blockdev *bd)
{
	return bd && bd->ops == &livesnap_ops;
}

struct blockdev *livesnap_base(struct blockdev *filter)
{
	return to_ls(filter)->base;
}

void livesnap_get_status(struct blockdev *filter, struct livesnap_status *st)
{
	struct livesnap *ls = to_ls(filter);
	struct timespec now;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&ls->lock);
	st->state = ls->state;
	st->error = ls->error;
	st->blocks = ls->nblocks;
	st->copied = ls->copied;
	st->cbw = ls->cbw;
	st->bytes = ls->bytes;
	st->block_size = 1u << ls->bshift;
	st->target = ls->target_path;
	if (ls->state == LIVESNAP_COPYING)
		clock_gettime(CLOCK_MONOTONIC, &now);
	else
		now = ls->t_end;
	st->seconds = elapsed(&ls->t_arm, &now);
	pthread_mutex_unlock(&ls->lock);
}

int livesnap_wait(struct blockdev *filter)
{
	struct livesnap *ls = to_ls(filter);
	int r;

	pthread_mutex_lock(&ls->lock);
	while (ls->state == LIVESNAP_COPYING)
		pthread_cond_wait(&ls->cond, &ls->lock);
	r = ls->error;
	pthread_mutex_unlock(&ls->lock);
	return r;
}

struct blockdev *livesnap_unwrap(struct blockdev *filter)
{
	struct livesnap *ls = to_ls(filter);
	struct blockdev *base;

	if (!__atomic_load_n(&ls->done, __ATOMIC_ACQUIRE))
		return NULL;
	ls_stop_thread(ls);
	base = ls->base;
	free(ls->bd.spec);
	ls_free(ls);
	return base;
}

/* ---- the overlay form ---- */

int livesnap_overlay_create(struct blockdev *base, const char *target)
{
	const char *fmt = base->ops->format;
	struct qcow2_create_opts qo = {.size = base->size, .backing_fmt = fmt};
	char *abs;
	int fd, r;

	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2"))
		return -EOPNOTSUPP; /* an NBD export or a filter cannot be named as a backing file
				     */
	if (!base->spec)
		return -EINVAL;
	abs = realpath(base->spec, NULL);
	if (!abs)
		return -errno;
	qo.backing = abs;
	fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	close(fd);
	r = qcow2_create(target, &qo);
	if (r < 0)
		unlink(target);
out:
	free(abs);
	return r;
}

int livesnap_overlay_open(struct blockdev *base, const char *target, struct blockdev **out)
{
	struct blockdev *ov;
	int r;

	/* The overlay reads the old image through a new handle: it must see everything. */
	r = blk_flush(base);
	if (r < 0)
		return r;
	/*
	 * From the switch on, the old image is only read (as the overlay's
	 * backing file): its lock becomes a reader's, or the overlay's own
	 * reader lock on it would conflict with it.
	 */
	if (!base->readonly) {
		r = blk_set_lock(base, IMG_LOCK_READ);
		if (r < 0)
			return r;
	}
	r = blk_open_fmt(target, "qcow2", base->readonly, &ov);
	if (r == 0 && ov->size != base->size) {
		blk_close(ov);
		r = -EINVAL;
	}
	if (r < 0) {
		if (!base->readonly)
			blk_set_lock(base, IMG_LOCK_WRITE);
		return r;
	}
	*out = ov;
	return 0;
}
