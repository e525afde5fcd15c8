/*
 * Live memory snapshot (docs/live-memory-snapshot.md): at the pause instant
 * all guest RAM is write-protected through userfaultfd; after the resume a
 * copier walks RAM and copies every page whose bit in the copy map is
 * clear, and the first write to such a page (from a vCPU, a device thread
 * or the kernel on behalf of either) stops in the kernel until the fault
 * handler thread has copied the page's old content. A page's bit is set
 * only after its content is in the file, and the page is unprotected only
 * after its bit is set, so nothing newer than the instant is ever copied.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "state/state_int.h"
#include "util/log.h"

/* Newer than some kernel headers (6.4); the kernel says whether it has it. */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

/* Pages the copier takes per step under the lock: 1 MiB, a short wait for a faulting writer. */
#define LM_CHUNK_PAGES 256ull

struct livemem {
	struct guest_mem *gm;
	int uffd, stop_fd, out_fd;
	/* Copy map: a page's bit is set once its content at the instant is in the file. */
	uint64_t *copied;
	/* Before the instant: pages written since RAM was protected, protected again at the pause.
	 */
	uint64_t *touched;
	bool copying; /* the instant has passed: faults copy */
	pthread_mutex_t
	    lock; /* guards copied, touched, copying, err, cbw_pages, writes to out_fd */
	int err;
	uint64_t cbw_pages;
	pthread_t handler;
	bool handler_running, registered, pinned, armed;
};

static int uffd_open(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), dev;

	if (fd >= 0)
		return fd;
	/* Without the privilege for the syscall, the device node grants it by its permissions. */
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -errno;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		fd = -errno;
	close(dev);
	return fd;
}

/*
 * The features write protection of this RAM needs: shmem needs WP markers
 * for its page cache; pages never touched (holes, anonymous or shmem) must
 * be protected too, or a first write after the instant would go unseen.
 */
static int uffd_features(bool shmem, uint64_t *features)
{
	struct uffdio_api api = {.api = UFFD_API};
	int fd = uffd_open(), err = 0;

	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api) < 0)
		err = -errno;
	close(fd);
	if (err)
		return err;
	*features = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	*features |= shmem ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : UFFD_FEATURE_WP_UNPOPULATED;
	return (api.features & *features) == *features ? 0 : -ENOTSUP;
}

static int uffd_wp(const struct livemem *lm, uint64_t off, uint64_t len, bool on)
{
	struct uffdio_writeprotect wp = {
	    .range = {.start = (uintptr_t)lm->gm->hva + off, .len = len},
	    .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};

	/* Unprotecting also wakes the writers that wait on the range. */
	while (ioctl(lm->uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
	return 0;
}

static bool is_copied(const struct livemem *lm, uint64_t pg)
{
	return lm->copied[pg / 64] & (1ull << (pg % 64));
}

/*
 * Under lm->lock: copy the pages of [first, end) whose bit is clear (zero
 * pages stay holes), set their bits and drop their pins. With data false
 * the range is known to be zero (a hole of the memfd): nothing is read.
 * After an error pages are marked without copying: the snapshot has failed
 * and only the guest's progress matters.
 */
static void copy_locked(struct livemem *lm, uint64_t first, uint64_t end, bool data)
{
	uint64_t pg = first;

	while (pg < end) {
		uint64_t run = pg;

		if (is_copied(lm, pg)) {
			pg++;
			continue;
		}
		while (pg < end && !is_copied(lm, pg))
			pg++;
		if (data && !lm->err)
			lm->err = snap_mem_write_range(lm->out_fd, lm->gm, run, pg);
		for (uint64_t i = run; i < pg; i++)
			lm->copied[i / 64] |= 1ull << (i % 64);
		gm_unpin_off(lm->gm, run << GM_PAGE_SHIFT, (pg - run) << GM_PAGE_SHIFT);
	}
}

static void on_fault(struct livemem *lm, uint64_t addr)
{
	uint64_t base = (uintptr_t)lm->gm->hva, off, pg;

	if (addr < base || addr - base >= lm->gm->size)
		return;
	off = (addr - base) & ~(GM_PAGE_SIZE - 1);
	pg = off >> GM_PAGE_SHIFT;
	pthread_mutex_lock(&lm->lock);
	if (!lm->copying) {
		/* Before the instant: let the write through, protect the page again at the pause.
		 */
		lm->touched[pg / 64] |= 1ull << (pg % 64);
		if (uffd_wp(lm, off, GM_PAGE_SIZE, false))
			uffd_wp(lm, 0, lm->gm->size, false);
		pthread_mutex_unlock(&lm->lock);
		return;
	}
	if (!is_copied(lm, pg)) {
		copy_locked(lm, pg, pg + 1, true);
		lm->cbw_pages++;
	}
	pthread_mutex_unlock(&lm->lock);
	/* A writer that stayed blocked would hang the guest: unprotect everything instead. */
	if (uffd_wp(lm, off, GM_PAGE_SIZE, false))
		uffd_wp(lm, 0, lm->gm->size, false);
}

static void *handler_main(void *arg)
{
	struct livemem *lm = arg;
	struct pollfd pf[2] = {{.fd = lm->uffd, .events = POLLIN},
			       {.fd = lm->stop_fd, .events = POLLIN}};
	struct uffd_msg msg[16];

	for (;;) {
		ssize_t n;

		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			return NULL;
		n = read(lm->uffd, msg, sizeof(msg));
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			break;
		for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++)
			if (msg[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(lm, msg[i].arg.pagefault.address);
	}
	/* The handler cannot go on: no writer may wait for it. */
	pr_err("snapshot: userfaultfd handler failed: %s", strerror(errno));
	pthread_mutex_lock(&lm->lock);
	if (!lm->err)
		lm->err = -EIO;
	pthread_mutex_unlock(&lm->lock);
	uffd_wp(lm, 0, lm->gm->size, false);
	return NULL;
}

static int lm_register(struct livemem *lm, uint64_t features)
{
	struct uffdio_api api = {.api = UFFD_API, .features = features};
	struct uffdio_register reg = {
	    .range = {.start = (uintptr_t)lm->gm->hva, .len = lm->gm->size},
	    .mode = UFFDIO_REGISTER_MODE_WP};

	if (ioctl(lm->uffd, UFFDIO_API, &api) < 0)
		return -errno;
	/* Refused for memory write protection does not cover (a private file mapping). */
	if (ioctl(lm->uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	lm->registered = true;
	return reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT) ? 0 : -ENOTSUP;
}

int livemem_prepare(struct livemem **out, struct guest_mem *gm, int out_fd)
{
	struct livemem *lm = calloc(1, sizeof(*lm));
	uint64_t features = 0;
	int err;

	*out = NULL;
	if (!lm)
		return -ENOMEM;
	lm->gm = gm;
	lm->out_fd = out_fd;
	lm->stop_fd = -1;
	pthread_mutex_init(&lm->lock, NULL);
	lm->copied = calloc((gm->npages + 63) / 64, sizeof(uint64_t));
	lm->touched = calloc((gm->npages + 63) / 64, sizeof(uint64_t));
	err = lm->copied && lm->touched ? uffd_features(gm->fd >= 0, &features) : -ENOMEM;
	lm->uffd = err ? -1 : uffd_open();
	if (!err && lm->uffd < 0)
		err = lm->uffd;
	if (!err)
		err = lm_register(lm, features);
	if (!err) {
		lm->stop_fd = eventfd(0, EFD_CLOEXEC);
		err = lm->stop_fd < 0 ? -errno : 0;
	}
	/* From here until its copy no page can be released by reclaim. */
	if (!err)
		err = gm_pin_off(gm, 0, gm->size);
	lm->pinned = !err;
	if (!err)
		err = -pthread_create(&lm->handler, NULL, handler_main, lm);
	lm->handler_running = !err;
	/*
	 * Protecting all RAM takes milliseconds: do it while the guest runs and
	 * track the pages it writes meanwhile; the pause protects only those.
	 */
	if (!err) {
		err = uffd_wp(lm, 0, gm->size, true);
		lm->armed = true;
	}
	if (err) {
		livemem_free(lm);
		return err;
	}
	*out = lm;
	return 0;
}

int livemem_arm(struct livemem *lm)
{
	uint64_t npages = lm->gm->npages;
	int err = 0;

	pthread_mutex_lock(&lm->lock);
	lm->copying = true;
	for (uint64_t pg = 0; pg < npages && !err;) {
		uint64_t run;

		if (!(lm->touched[pg / 64] & (1ull << (pg % 64)))) {
			pg = lm->touched[pg / 64] >> (pg % 64) ? pg + 1 : (pg / 64 + 1) * 64;
			continue;
		}
		for (run = pg; pg < npages && (lm->touched[pg / 64] & (1ull << (pg % 64))); pg++)
			;
		err = uffd_wp(lm, run << GM_PAGE_SHIFT, (pg - run) << GM_PAGE_SHIFT, true);
	}
	pthread_mutex_unlock(&lm->lock);
	return err;
}

/* The end of the memfd's data run or hole run that page pg starts in (npages for anon RAM). */
static uint64_t run_end(const struct livemem *lm, uint64_t pg, bool *data)
{
	const struct guest_mem *gm = lm->gm;
	off_t off = (off_t)(pg << GM_PAGE_SHIFT), next;

	*data = true;
	if (gm->fd < 0)
		return gm->npages;
	next = lseek(gm->fd, off, SEEK_DATA);
	if (next < 0 || next > off) {
		/* A hole now that is not copied was a hole at the instant: writes copy first. */
		*data = false;
		return next < 0 ? gm->npages : (uint64_t)next >> GM_PAGE_SHIFT;
	}
	next = lseek(gm->fd, off, SEEK_HOLE);
	if (next <= off)
		return gm->npages;
	return ((uint64_t)next + GM_PAGE_SIZE - 1) >> GM_PAGE_SHIFT;
}

int livemem_copy(struct livemem *lm)
{
	uint64_t pg = 0, npages = lm->gm->npages;
	int err = 0;

	while (pg < npages && !err) {
		bool data;
		uint64_t end = run_end(lm, pg, &data);

		if (end > npages)
			end = npages;
		if (end <= pg)
			end = pg + 1;
		if (data && end - pg > LM_CHUNK_PAGES)
			end = pg + LM_CHUNK_PAGES;
		pthread_mutex_lock(&lm->lock);
		copy_locked(lm, pg, end, data);
		err = lm->err;
		pthread_mutex_unlock(&lm->lock);
		if (!err)
			err = uffd_wp(lm, pg << GM_PAGE_SHIFT, (end - pg) << GM_PAGE_SHIFT, false);
		pg = end;
	}
	return err;
}

uint64_t livemem_cbw_pages(const struct livemem *lm)
{
	return lm->cbw_pages;
}

void livemem_free(struct livemem *lm)
{
	if (!lm)
		return;
	if (lm->armed)
		uffd_wp(lm, 0, lm->gm->size, false);
	if (lm->handler_running) {
		uint64_t one = 1;

		if (write(lm->stop_fd, &one, sizeof(one)) != sizeof(one))
			pr_err("snapshot: cannot stop the userfaultfd handler");
		pthread_join(lm->handler, NULL);
	}
	if (lm->registered) {
		struct uffdio_range r = {.start = (uintptr_t)lm->gm->hva, .len = lm->gm->size};

		ioctl(lm->uffd, UFFDIO_UNREGISTER, &r);
	}
	if (lm->pinned) {
		for (uint64_t pg = 0; pg < lm->gm->npages; pg++)
			if (!is_copied(lm, pg))
				gm_unpin_off(lm->gm, pg << GM_PAGE_SHIFT, GM_PAGE_SIZE);
	}
	if (lm->uffd >= 0)
		close(lm->uffd);
	if (lm->stop_fd >= 0)
		close(lm->stop_fd);
	pthread_mutex_destroy(&lm->lock);
	free(lm->touched);
	free(lm->copied);
	free(lm);
}
