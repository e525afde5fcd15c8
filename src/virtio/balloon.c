/*
 * virtio-balloon: inflate/deflate by PFN, guest statistics, free page
 * reporting; see balloon.h for the contract and docs/memory.md for how it
 * fits with the zero-page sweep.
 *
 * Threads: the queues are handled on the device's I/O thread; the API
 * thread sets the target and reads statistics. b->lock guards everything
 * both touch (the in-balloon bitmap, the held statistics buffer, the
 * statistics); counters are atomics. The device config (num_pages, actual)
 * lives in vd->config under pci.lock, as the transport wants.
 *
 * Besides the virtio transport (registered as "virtio") the balloon
 * registers its own state with the VM ("balloon"), registered first so it
 * is restored after the transport and destroyed after it: the transport
 * neither saves device config nor knows the statistics buffer the device
 * holds.
 */
#include "virtio/balloon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/stats.h"
#include "util/log.h"
#include "virtio/transport.h"
#include "vmm/vm.h"

#define VIRTIO_ID_BALLOON 5

#define VIRTIO_BALLOON_F_STATS_VQ 1
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM 2
#define VIRTIO_BALLOON_F_PAGE_REPORTING 5

#define BALLOON_NQUEUES 4 /* inflate, deflate, stats, reporting */
#define BALLOON_QUEUE_SIZE 128

/* struct virtio_balloon_config: the fields used (hinting and poison are not offered). */
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4
#define CFG_SIZE 8

#define PFN_BATCH 256
/* Most PFNs handled from one chain: a driver sends 256; more is hostile. */
#define PFNS_MAX_PER_CHAIN (64u * 1024)
/* Statistics entries read from one buffer (the spec defines 10 tags). */
#define STATS_MAX_ENTRIES 64
#define STAT_ENTRY_SIZE 10 /* le16 tag, le64 value, packed */

#define BALLOON_SAVE_MAGIC 0x4e4c4254u /* "TBLN" */
#define BALLOON_SAVE_VERSION 1

enum queue_role { Q_INFLATE, Q_DEFLATE, Q_STATS, Q_REPORT, Q_NONE };

struct balloon {
	struct vm *vm;
	struct virtio_dev *vd; /* NULL until the transport exists */
	pthread_mutex_t lock;
	pthread_cond_t cond;	  /* statistics arrived */
	pthread_mutex_t set_lock; /* one balloon_set_target() at a time */
	/* Under lock. */
	uint64_t *inballoon; /* bit per guest page (index into hva) in the balloon */
	uint64_t npages;
	bool held; /* the driver's statistics buffer is ours */
	uint16_t held_head;
	bool stats_req; /* the host wants fresh statistics */
	uint64_t stats[BALLOON_S_NR];
	uint32_t stats_valid;
	uint64_t stats_updates;
	struct timespec stats_time;
	uint64_t target_pages;
	uint64_t sweeps;
	struct reclaim_stats last_sweep;
	/* Atomics. */
	uint64_t balloon_pages, inflated, deflated, refused_pfns, kept_pinned;
	uint64_t reports, reported_bytes, refused_ranges;
};

struct balloon_save {
	uint32_t magic, version;
	uint64_t npages;
	uint32_t target_pages, actual_pages;
	uint16_t held_head;
	uint8_t held, pad[5];
	uint64_t inflated, deflated, refused_pfns, kept_pinned;
	uint64_t reports, reported_bytes, refused_ranges, sweeps;
	/* then the in-balloon bitmap, (npages + 63) / 64 words */
};

static uint64_t ald(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void aadd(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static bool bit_test(const uint64_t *map, uint64_t i)
{
	return (map[i / 64] >> (i % 64)) & 1;
}

static void bit_set(uint64_t *map, uint64_t i, bool v)
{
	if (v)
		map[i / 64] |= 1ull << (i % 64);
	else
		map[i / 64] &= ~(1ull << (i % 64));
}

/* Which role queue q plays: the optional queues are numbered without gaps. */
static enum queue_role queue_role(const struct virtio_dev *vd, unsigned q)
{
	unsigned next = 2;

	if (q < 2)
		return q == 0 ? Q_INFLATE : Q_DEFLATE;
	if (virtio_has_feature(vd, VIRTIO_BALLOON_F_STATS_VQ) && q == next++)
		return Q_STATS;
	if (virtio_has_feature(vd, VIRTIO_BALLOON_F_PAGE_REPORTING) && q == next)
		return Q_REPORT;
	return Q_NONE;
}

/* Guest-physical address of an offset into guest RAM's host mapping. */
static uint64_t off_to_gpa(const struct guest_mem *gm, uint64_t off)
{
	return off < gm->low_size ? off : MEM_HIGH_START + (off - gm->low_size);
}

/* ---- inflate and deflate ---- */

/* Release a run of pages one by one: some page of it is pinned. */
static void release_pages(struct balloon *b, uint64_t gpa, uint64_t len, enum reclaim_source src)
{
	for (uint64_t o = 0; o < len; o += GM_PAGE_SIZE)
		if (reclaim_release_range_src(b->vm, gpa + o, GM_PAGE_SIZE, src) == -EBUSY)
			aadd(&b->kept_pinned, 1);
}

/* Give a run of whole pages back to the host; pinned pages stay. */
static void release_run(struct balloon *b, uint64_t gpa, uint64_t len, enum reclaim_source src)
{
	int err;

	if (!len)
		return;
	err = reclaim_release_range_src(b->vm, gpa, len, src);
	if (err == -EBUSY)
		release_pages(b, gpa, len, src);
	else if (err)
		pr_warn_once("virtio-balloon: cannot release guest pages: %s", strerror(-err));
}

/* Inflate: mark each valid new PFN, release consecutive ones as runs. Caller holds lock. */
static void inflate_batch(struct balloon *b, const uint32_t *pfns, unsigned n)
{
	struct guest_mem *gm = &b->vm->mem;
	uint64_t run_gpa = 0, run_len = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t gpa = (uint64_t)pfns[i] << BALLOON_PAGE_SHIFT;
		uint64_t idx = gm_page_index(gm, gpa);

		if (idx >= b->npages || bit_test(b->inballoon, idx)) {
			/* Not RAM, or already in the balloon: refuse this one only. */
			aadd(&b->refused_pfns, 1);
			continue;
		}
		bit_set(b->inballoon, idx, true);
		aadd(&b->balloon_pages, 1);
		aadd(&b->inflated, 1);
		if (run_len && gpa == run_gpa + run_len) {
			run_len += GM_PAGE_SIZE;
			continue;
		}
		release_run(b, run_gpa, run_len, RECLAIM_BALLOON);
		run_gpa = gpa;
		run_len = GM_PAGE_SIZE;
	}
	release_run(b, run_gpa, run_len, RECLAIM_BALLOON);
}

/* Deflate: the guest takes pages back; they read as zero. Caller holds lock. */
static void deflate_batch(struct balloon *b, const uint32_t *pfns, unsigned n)
{
	struct guest_mem *gm = &b->vm->mem;

	for (unsigned i = 0; i < n; i++) {
		uint64_t idx = gm_page_index(gm, (uint64_t)pfns[i] << BALLOON_PAGE_SHIFT);

		if (idx >= b->npages || !bit_test(b->inballoon, idx)) {
			aadd(&b->refused_pfns, 1);
			continue;
		}
		bit_set(b->inballoon, idx, false);
		__atomic_fetch_sub(&b->balloon_pages, 1, __ATOMIC_RELAXED);
		aadd(&b->deflated, 1);
	}
}

/* The PFN array of one chain, in batches; a trailing partial PFN is ignored. */
static void pfn_chain(struct balloon *b, const struct virtq_chain *ch, bool inflate)
{
	uint32_t pfns[PFN_BATCH];
	uint64_t total = ch->out_len / sizeof(uint32_t);

	if (total > PFNS_MAX_PER_CHAIN) {
		aadd(&b->refused_pfns, total - PFNS_MAX_PER_CHAIN);
		total = PFNS_MAX_PER_CHAIN;
	}
	pthread_mutex_lock(&b->lock);
	for (uint64_t done = 0; done < total;) {
		unsigned n = total - done < PFN_BATCH ? (unsigned)(total - done) : PFN_BATCH;

		iov_to_buf(ch->iov, ch->nout, done * sizeof(uint32_t), pfns, n * sizeof(uint32_t));
		if (inflate)
			inflate_batch(b, pfns, n);
		else
			deflate_batch(b, pfns, n);
		done += n;
	}
	pthread_mutex_unlock(&b->lock);
}

/* ---- free page reporting ---- */

/* Each buffer of the chain is a free range: whole pages, inside one RAM region. */
static void report_chain(struct balloon *b, struct virtq *vq, const struct virtq_chain *ch)
{
	struct guest_mem *gm = &b->vm->mem;

	/* The ranges are given away, not transferred into: our own pins must not keep them. */
	virtq_unpin(vq, ch->head);
	aadd(&b->reports, 1);
	for (unsigned i = 0; i < ch->nout + ch->nin; i++) {
		uint64_t off = (uint64_t)((uint8_t *)ch->iov[i].iov_base - gm->hva);
		uint64_t len = ch->iov[i].iov_len;

		aadd(&b->reported_bytes, len);
		if (!len || (off | len) & (GM_PAGE_SIZE - 1)) {
			aadd(&b->refused_ranges, 1);
			continue;
		}
		release_run(b, off_to_gpa(gm, off), len, RECLAIM_FREE_REPORT);
	}
}

/* ---- statistics ---- */

/* Take the values of a statistics buffer. Caller holds lock. */
static void stats_parse(struct balloon *b, const struct virtq_chain *ch)
{
	unsigned n = ch->out_len / STAT_ENTRY_SIZE;
	uint8_t e[STAT_ENTRY_SIZE];

	if (n > STATS_MAX_ENTRIES)
		n = STATS_MAX_ENTRIES;
	b->stats_valid = 0;
	for (unsigned i = 0; i < n; i++) {
		uint16_t tag;
		uint64_t val;

		iov_to_buf(ch->iov, ch->nout, (uint64_t)i * STAT_ENTRY_SIZE, e, sizeof(e));
		memcpy(&tag, e, 2);
		memcpy(&val, e + 2, 8);
		if (tag >= BALLOON_S_NR)
			continue; /* a tag from a newer spec */
		b->stats[tag] = val;
		b->stats_valid |= 1u << tag;
	}
	b->stats_updates++;
	clock_gettime(CLOCK_MONOTONIC, &b->stats_time);
	pthread_cond_broadcast(&b->cond);
}

/*
 * The device keeps the driver's statistics buffer; giving it back (used,
 * length 0) is the request for fresh statistics, which come back in it.
 */
static int stats_queue(struct balloon *b, struct virtq *vq, struct virtq_chain *ch)
{
	int r;

	pthread_mutex_lock(&b->lock);
	if (b->stats_req && b->held) {
		virtq_push(vq, b->held_head, 0);
		b->held = false;
	}
	b->stats_req = false;
	for (;;) {
		/* One buffer at a time: an extra one sends the old back first. */
		if (b->held && virtq_has_avail(vq)) {
			virtq_push(vq, b->held_head, 0);
			b->held = false;
		}
		r = virtq_pop(vq, ch);
		if (r <= 0)
			break;
		stats_parse(b, ch);
		b->held = true;
		b->held_head = ch->head;
	}
	pthread_mutex_unlock(&b->lock);
	return r;
}

static int balloon_handle_queue(struct virtio_dev *vd, unsigned q, struct virtq *vq,
				struct virtq_chain *ch)
{
	struct balloon *b = vd->priv;
	enum queue_role role = queue_role(vd, q);
	int r;

	if (role == Q_STATS)
		return stats_queue(b, vq, ch);
	while ((r = virtq_pop(vq, ch)) > 0) {
		if (role == Q_INFLATE || role == Q_DEFLATE)
			pfn_chain(b, ch, role == Q_INFLATE);
		else if (role == Q_REPORT)
			report_chain(b, vq, ch);
		virtq_push(vq, ch->head, 0);
	}
	return r;
}

/* The driver writes only `actual`. Called with pci.lock held. */
static void balloon_config_write(struct virtio_dev *vd, unsigned off, const void *data,
				 unsigned size)
{
	for (unsigned i = 0; i < size; i++)
		if (off + i >= CFG_ACTUAL && off + i < CFG_ACTUAL + 4)
			vd->config[off + i] = ((const uint8_t *)data)[i];
}

/* Device reset (pci.lock held, I/O thread idle): the driver's balloon is gone. */
static void balloon_reset(struct virtio_dev *vd)
{
	struct balloon *b = vd->priv;

	pthread_mutex_lock(&b->lock);
	b->held = false;
	b->stats_req = false;
	memset(b->inballoon, 0, (b->npages + 63) / 64 * 8);
	__atomic_store_n(&b->balloon_pages, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&b->lock);
	memset(vd->config + CFG_ACTUAL, 0, 4);
}

static const struct virtio_dev_ops balloon_ops = {
    .name = "balloon",
    .device_type = VIRTIO_ID_BALLOON,
    .class_code = 0x00ff00,
    .features = 1ull << VIRTIO_BALLOON_F_STATS_VQ | 1ull << VIRTIO_BALLOON_F_DEFLATE_ON_OOM |
		1ull << VIRTIO_BALLOON_F_PAGE_REPORTING,
    .num_queues = BALLOON_NQUEUES,
    .queue_size = BALLOON_QUEUE_SIZE,
    .config_size = CFG_SIZE,
    .handle_queue = balloon_handle_queue,
    .config_write = balloon_config_write,
    .reset = balloon_reset,
};

/* ---- host side ---- */

static uint32_t cfg_get32(struct virtio_dev *vd, unsigned off)
{
	uint32_t v;

	pthread_mutex_lock(&vd->pci.lock);
	memcpy(&v, vd->config + off, 4);
	pthread_mutex_unlock(&vd->pci.lock);
	return v;
}

/* Publish num_pages; tell a running driver. */
static void cfg_set_target(struct virtio_dev *vd, uint32_t pages)
{
	bool live;

	pthread_mutex_lock(&vd->pci.lock);
	memcpy(vd->config + CFG_NUM_PAGES, &pages, 4);
	vd->config_gen++;
	live = vd->status & VIRTIO_CONFIG_S_DRIVER_OK;
	pthread_mutex_unlock(&vd->pci.lock);
	if (live)
		virtio_notify_config(vd);
}

int balloon_set_target(struct balloon *b, uint64_t pages, bool *swept, struct reclaim_stats *sweep)
{
	struct reclaim_stats st;
	bool raise;
	int err;

	*swept = false;
	if (!b->vd)
		return -ENODEV;
	if (pages > b->npages || pages > UINT32_MAX)
		return -EINVAL;
	pthread_mutex_lock(&b->set_lock);
	pthread_mutex_lock(&b->lock);
	raise = pages > b->target_pages;
	pthread_mutex_unlock(&b->lock);
	/* The sweep request: zero pages go first, then the guest inflates. */
	if (raise) {
		err = reclaim_sweep(b->vm, &st);
		if (err) {
			pr_warn("virtio-balloon: sweep before inflation failed: %s",
				strerror(-err));
		} else {
			*swept = true;
			if (sweep)
				*sweep = st;
			pthread_mutex_lock(&b->lock);
			b->sweeps++;
			b->last_sweep = st;
			pthread_mutex_unlock(&b->lock);
		}
	}
	pthread_mutex_lock(&b->lock);
	b->target_pages = pages;
	pthread_mutex_unlock(&b->lock);
	cfg_set_target(b->vd, (uint32_t)pages);
	pthread_mutex_unlock(&b->set_lock);
	return 0;
}

/* Is the stats queue live? Then its index is 2. */
static bool stats_live(struct virtio_dev *vd)
{
	bool live;

	pthread_mutex_lock(&vd->pci.lock);
	live = (vd->status & VIRTIO_CONFIG_S_DRIVER_OK) &&
	       virtio_has_feature(vd, VIRTIO_BALLOON_F_STATS_VQ);
	pthread_mutex_unlock(&vd->pci.lock);
	return live;
}

/* Ask for fresh statistics and wait for them up to wait_ms. 0 or -ETIMEDOUT. */
static int stats_refresh(struct balloon *b, unsigned wait_ms)
{
	struct timespec dl;
	uint64_t gen;
	int err = 0;

	if (!stats_live(b->vd))
		return -ETIMEDOUT;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += wait_ms / 1000;
	dl.tv_nsec += (long)(wait_ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&b->lock);
	gen = b->stats_updates;
	b->stats_req = true;
	pthread_mutex_unlock(&b->lock);
	virtio_kick(b->vd, 2);
	pthread_mutex_lock(&b->lock);
	while (b->stats_updates == gen && !err)
		err = pthread_cond_timedwait(&b->cond, &b->lock, &dl);
	err = b->stats_updates == gen ? -ETIMEDOUT : 0;
	pthread_mutex_unlock(&b->lock);
	return err;
}

static uint64_t ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)(now.tv_sec - t->tv_sec) * 1000 +
	       (uint64_t)((now.tv_nsec - t->tv_nsec) / 1000000);
}

static void info_negotiated(struct virtio_dev *vd, struct balloon_info *o)
{
	pthread_mutex_lock(&vd->pci.lock);
	o->driver_ok = vd->status & VIRTIO_CONFIG_S_DRIVER_OK;
	o->stats_vq = virtio_has_feature(vd, VIRTIO_BALLOON_F_STATS_VQ);
	o->deflate_on_oom = virtio_has_feature(vd, VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
	o->free_page_reporting = virtio_has_feature(vd, VIRTIO_BALLOON_F_PAGE_REPORTING);
	pthread_mutex_unlock(&vd->pci.lock);
}

int balloon_get_info(struct balloon *b, unsigned wait_ms, struct balloon_info *o)
{
	struct guest_mem *gm = &b->vm->mem;
	int err = 0;

	memset(o, 0, sizeof(*o));
	if (!b->vd)
		return -ENODEV;
	if (wait_ms)
		err = stats_refresh(b, wait_ms);
	info_negotiated(b->vd, o);
	o->guest_bytes = gm->size;
	o->actual_pages = cfg_get32(b->vd, CFG_ACTUAL);
	o->balloon_pages = ald(&b->balloon_pages);
	o->inflated = ald(&b->inflated);
	o->deflated = ald(&b->deflated);
	o->refused_pfns = ald(&b->refused_pfns);
	o->kept_pinned = ald(&b->kept_pinned);
	o->reports = ald(&b->reports);
	o->reported_bytes = ald(&b->reported_bytes);
	o->refused_ranges = ald(&b->refused_ranges);
	o->released_balloon = ald(&gm->released_balloon);
	o->released_free_report = ald(&gm->released_free_report);
	o->released_sweep = ald(&gm->released_sweep);
	pthread_mutex_lock(&b->lock);
	o->target_pages = b->target_pages;
	o->stats_updates = b->stats_updates;
	o->stats_age_ms = b->stats_updates ? ms_since(&b->stats_time) : UINT64_MAX;
	o->stats_valid = b->stats_valid;
	memcpy(o->stats, b->stats, sizeof(o->stats));
	o->sweeps = b->sweeps;
	o->last_sweep = b->last_sweep;
	pthread_mutex_unlock(&b->lock);
	return err;
}

const char *balloon_stat_name(unsigned tag)
{
	static const char *const names[BALLOON_S_NR] = {
	    "swap_in",		"swap_out",    "major_faults",
	    "minor_faults",	"memory_free", "memory_total",
	    "memory_available", "disk_caches", "hugetlb_allocations",
	    "hugetlb_failures",
	};

	return tag < BALLOON_S_NR ? names[tag] : NULL;
}

/* ---- the balloon's own state: save, restore, stats, teardown ---- */

static int state_save(void *dev, struct dev_buf *out)
{
	struct balloon *b = dev;
	struct balloon_save s = {.magic = BALLOON_SAVE_MAGIC, .version = BALLOON_SAVE_VERSION};
	int err;

	if (!b->vd)
		return -ENODEV;
	s.npages = b->npages;
	s.actual_pages = cfg_get32(b->vd, CFG_ACTUAL);
	s.inflated = ald(&b->inflated);
	s.deflated = ald(&b->deflated);
	s.refused_pfns = ald(&b->refused_pfns);
	s.kept_pinned = ald(&b->kept_pinned);
	s.reports = ald(&b->reports);
	s.reported_bytes = ald(&b->reported_bytes);
	s.refused_ranges = ald(&b->refused_ranges);
	pthread_mutex_lock(&b->lock);
	s.target_pages = (uint32_t)b->target_pages;
	s.held = b->held;
	s.held_head = b->held_head;
	s.sweeps = b->sweeps;
	err = dev_buf_put(out, &s, sizeof(s));
	if (!err)
		err = dev_buf_put(out, b->inballoon, (b->npages + 63) / 64 * 8);
	pthread_mutex_unlock(&b->lock);
	return err;
}

static uint64_t count_bits(const uint64_t *map, uint64_t nwords)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < nwords; i++)
		n += (uint64_t)__builtin_popcountll(map[i]);
	return n;
}

static int state_restore(void *dev, const void *data, uint64_t len)
{
	struct balloon *b = dev;
	uint64_t words = (b->npages + 63) / 64;
	struct balloon_save s;
	uint64_t *map;

	if (!b->vd || len != sizeof(s) + words * 8)
		return -EINVAL;
	memcpy(&s, data, sizeof(s));
	if (s.magic != BALLOON_SAVE_MAGIC || s.version != BALLOON_SAVE_VERSION ||
	    s.npages != b->npages || s.target_pages > b->npages || s.held > 1 ||
	    s.held_head >= BALLOON_QUEUE_SIZE)
		return -EINVAL;
	map = (uint64_t *)((const uint8_t *)data + sizeof(s));
	pthread_mutex_lock(&b->lock);
	memcpy(b->inballoon, map, words * 8);
	if (b->npages % 64) /* bits past the last page mean nothing: drop them */
		b->inballoon[words - 1] &= (1ull << (b->npages % 64)) - 1;
	__atomic_store_n(&b->balloon_pages, count_bits(b->inballoon, words), __ATOMIC_RELAXED);
	b->target_pages = s.target_pages;
	/* The buffer we held: give it back at once, the driver refills it. */
	b->held = s.held;
	b->held_head = s.held_head;
	b->stats_req = s.held;
	pthread_mutex_unlock(&b->lock);
	__atomic_store_n(&b->inflated, s.inflated, __ATOMIC_RELAXED);
	__atomic_store_n(&b->deflated, s.deflated, __ATOMIC_RELAXED);
	__atomic_store_n(&b->refused_pfns, s.refused_pfns, __ATOMIC_RELAXED);
	__atomic_store_n(&b->kept_pinned, s.kept_pinned, __ATOMIC_RELAXED);
	__atomic_store_n(&b->reports, s.reports, __ATOMIC_RELAXED);
	__atomic_store_n(&b->reported_bytes, s.reported_bytes, __ATOMIC_RELAXED);
	__atomic_store_n(&b->refused_ranges, s.refused_ranges, __ATOMIC_RELAXED);
	pthread_mutex_lock(&b->vd->pci.lock);
	memcpy(b->vd->config + CFG_NUM_PAGES, &s.target_pages, 4);
	memcpy(b->vd->config + CFG_ACTUAL, &s.actual_pages, 4);
	pthread_mutex_unlock(&b->vd->pci.lock);
	if (s.held && stats_live(b->vd))
		virtio_kick(b->vd, 2);
	return 0;
}

static void state_stats(void *dev, struct dev_stats *st)
{
	struct balloon *b = dev;

	if (!b->vd)
		return;
	pthread_mutex_lock(&b->lock);
	dev_stats_add(st, "target_pages", b->target_pages);
	dev_stats_add(st, "sweeps", b->sweeps);
	pthread_mutex_unlock(&b->lock);
	dev_stats_add(st, "actual_pages", cfg_get32(b->vd, CFG_ACTUAL));
	dev_stats_add(st, "balloon_pages", ald(&b->balloon_pages));
	dev_stats_add(st, "inflated_pages", ald(&b->inflated));
	dev_stats_add(st, "deflated_pages", ald(&b->deflated));
	dev_stats_add(st, "refused_pfns", ald(&b->refused_pfns));
	dev_stats_add(st, "kept_pinned_pages", ald(&b->kept_pinned));
	dev_stats_add(st, "free_page_reports", ald(&b->reports));
	dev_stats_add(st, "reported_bytes", ald(&b->reported_bytes));
	dev_stats_add(st, "refused_ranges", ald(&b->refused_ranges));
}

static void balloon_free(struct balloon *b)
{
	pthread_mutex_destroy(&b->lock);
	pthread_mutex_destroy(&b->set_lock);
	pthread_cond_destroy(&b->cond);
	free(b->inballoon);
	free(b);
}

/* The transport is destroyed first (it was registered later): no I/O thread is left. */
static void state_destroy(void *dev)
{
	balloon_free(dev);
}

static const struct device_ops balloon_state_ops = {
    .name = "balloon",
    .save = state_save,
    .restore = state_restore,
    .destroy = state_destroy,
    .stats = state_stats,
};

struct balloon *balloon_find(struct vm *vm)
{
	struct device *d;

	pthread_mutex_lock(&vm->lock);
	d = vm->devices;
	pthread_mutex_unlock(&vm->lock);
	/* The registry only grows at its head; entries live until vm_destroy(). */
	for (; d; d = d->next)
		if (d->ops == &balloon_state_ops)
			return ((struct balloon *)d->dev)->vd ? d->dev : NULL;
	return NULL;
}

int virtio_balloon_add(struct vm *vm, bool free_page_reporting)
{
	uint8_t cfg[CFG_SIZE] = {0};
	struct balloon *b;
	int err;

	if (balloon_find(vm))
		return -EEXIST;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->vm = vm;
	b->npages = vm->mem.npages;
	b->inballoon = calloc((b->npages + 63) / 64 + 1, 8);
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->set_lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	if (!b->inballoon) {
		balloon_free(b);
		return -ENOMEM;
	}
	/* First the state, so the VM restores and destroys it after the transport. */
	err = vm_add_device(vm, &balloon_state_ops, b);
	if (err) {
		balloon_free(b);
		return err;
	}
	/* From here on b belongs to the VM (freed by vm_destroy), even if this fails. */
	err = virtio_pci_create(vm, &balloon_ops, b, cfg, &b->vd);
	if (err)
		pr_err("virtio-balloon: %s", strerror(-err));
	else if (!free_page_reporting)
		b->vd->host_features &= ~(1ull << VIRTIO_BALLOON_F_PAGE_REPORTING);
	return err;
}
