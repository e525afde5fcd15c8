/*
 * qcow2 driver: versions 2 and 3, backing chains, zero and compressed
 * clusters, any refcount width. Layout follows the published qcow2
 * specification; see docs/qcow2.md for what tern supports.
 *
 * Metadata ordering (crash safety): a new data cluster and its refcount are
 * made durable (fdatasync) before any L2 table that points at them is
 * written; a new L2 table is durable before the L1 entry pointing at it;
 * clusters that lose their last reference are only decremented after the
 * L2 tables that dropped them are durable. A crash can leak clusters but
 * never leave a reference to a cluster with refcount 0.
 *
 * Everything read from the file is untrusted: every offset is checked for
 * alignment and against the file before use, every size is bounded before
 * allocating.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "block/blk_int.h"
#include "block/qcow2.h"
#include "util/log.h"

#define QCOW2_MAGIC 0x514649fbu
#define HDR_V2_LEN 72
#define HDR_V3_LEN 104

#define INCOMPAT_DIRTY (1ull << 0)
#define INCOMPAT_CORRUPT (1ull << 1)
#define INCOMPAT_DATA_FILE (1ull << 2)
#define INCOMPAT_COMPRESSION (1ull << 3)
#define INCOMPAT_EXTL2 (1ull << 4)
#define INCOMPAT_KNOWN (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION)

#define EXT_END 0
#define EXT_BACKING_FMT 0xe2792acau
#define EXT_FEATURES 0x6803f857u

#define OFLAG_COPIED (1ull << 63)
#define OFLAG_COMPRESSED (1ull << 62)
#define OFLAG_ZERO 1ull
#define OFFSET_MASK 0x00fffffffffffe00ull
#define RT_OFFSET_MASK 0xfffffffffffffe00ull
#define L2_STD_RESERVED 0x3f000000000001feull

/* Limits against hostile headers (same order of magnitude as other tools). */
#define MAX_L1_BYTES (32u << 20)
#define MAX_RT_BYTES (8u << 20)
#define MAX_BACKING_NAME 1023
#define MAX_VIRTUAL_SIZE (1ull << 55)

struct qcache_ent {
	uint64_t off; /* host offset of the table; 0 = empty slot */
	uint64_t lru;
	bool dirty;
	void *data;
};

struct qcache {
	int n;
	int last; /* most recent hit: sequential I/O stays in one table */
	uint64_t tick;
	struct qcache_ent *e;
};

struct pending_free {
	uint64_t off;
	uint64_t len;
};

struct qcow2_dev {
	struct blockdev bd;
	int fd;
	pthread_mutex_t lock;
	char *path;

	uint32_t version;
	uint32_t cluster_bits;
	uint64_t cs; /* cluster size */
	uint32_t l2_bits;
	uint32_t refcount_order;
	uint32_t rc_bits;
	uint64_t rb_entries; /* refcounts per refcount block */
	uint32_t header_len;
	uint64_t incompat, compat, autoclear;
	uint32_t nb_snapshots;

	uint64_t *l1; /* host byte order */
	uint32_t l1_size;
	uint64_t l1_off;
	uint64_t *rt; /* host byte order, masked */
	uint64_t rt_entries;
	uint64_t rt_off;
	uint32_t rt_clusters;

	uint64_t file_end;  /* cluster-aligned end of everything written */
	uint64_t free_hint; /* cluster index where the free search starts */
	struct qcache l2c, rbc;

	struct pending_free *pf;
	size_t npf, pf_cap;

	/* last decompressed cluster */
	uint64_t zc_entry;
	void *zc_buf;
	void *zc_in;

	char *backing_name, *backing_fmt, *backing_path;
	struct blockdev *backing;
	void *ext_keep; /* header extensions rewritten unchanged by set_backing */
	size_t ext_keep_len;
};

static struct qcow2_dev *to_q(struct blockdev *bd)
{
	return (struct qcow2_dev *)bd;
}

static uint64_t rd64(const void *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

static uint32_t rd32(const void *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

static void wr64(void *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static void wr32(void *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static uint64_t div_round_up(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

/* ---- refcount entries of any width (1..64 bits) ---- */

static uint64_t rc_get(const void *blk, uint32_t bits, uint64_t i)
{
	const uint8_t *p = blk;

	switch (bits) {
	case 8:
		return p[i];
	case 16:
		return (uint64_t)p[2 * i] << 8 | p[2 * i + 1];
	case 32:
		return rd32(p + 4 * i);
	case 64:
		return rd64(p + 8 * i);
	default: /* 1, 2, 4: packed from the least significant bit */
		return (p[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
	}
}

static void rc_set(void *blk, uint32_t bits, uint64_t i, uint64_t v)
{
	uint8_t *p = blk;

	switch (bits) {
	case 8:
		p[i] = (uint8_t)v;
		break;
	case 16:
		p[2 * i] = (uint8_t)(v >> 8);
		p[2 * i + 1] = (uint8_t)v;
		break;
	case 32:
		wr32(p + 4 * i, (uint32_t)v);
		break;
	case 64:
		wr64(p + 8 * i, v);
		break;
	default: {
		unsigned sh = i * bits % 8, m = ((1u << bits) - 1) << sh;

		p[i * bits / 8] = (uint8_t)((p[i * bits / 8] & ~m) | ((v << sh) & m));
	}
	}
}

static uint64_t rc_max(const struct qcow2_dev *q)
{
	return q->rc_bits == 64 ? UINT64_MAX : (1ull << q->rc_bits) - 1;
}

/* ---- metadata cache (L2 tables and refcount blocks) ---- */

static int cache_init(struct qcache *c, int n, uint64_t cs)
{
	c->n = n;
	c->tick = 0;
	c->e = calloc((size_t)n, sizeof(*c->e));
	if (!c->e)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		c->e[i].data = malloc(cs);
		if (!c->e[i].data)
			return -ENOMEM;
	}
	return 0;
}

static void cache_free(struct qcache *c)
{
	if (!c->e)
		return;
	for (int i = 0; i < c->n; i++)
		free(c->e[i].data);
	free(c->e);
	c->e = NULL;
}

static int cache_write_one(struct qcow2_dev *q, struct qcache_ent *e)
{
	int r = blk_fd_pwrite(q->fd, e->data, q->cs, e->off);

	if (r == 0)
		e->dirty = false;
	return r;
}

static int cache_write_dirty(struct qcow2_dev *q, struct qcache *c)
{
	for (int i = 0; i < c->n; i++) {
		if (c->e[i].off && c->e[i].dirty) {
			int r = cache_write_one(q, &c->e[i]);

			if (r < 0)
				return r;
		}
	}
	return 0;
}

static bool cache_any_dirty(const struct qcache *c)
{
	for (int i = 0; i < c->n; i++)
		if (c->e[i].off && c->e[i].dirty)
			return true;
	return false;
}

static int qcow2_flush_meta(struct qcow2_dev *q);

/*
 * Find the table at host offset off, loading it (or, with fresh, zeroing it)
 * on a miss. Evicting a dirty L2 table writes back all metadata in order.
 */
static int cache_get(struct qcow2_dev *q, struct qcache *c, uint64_t off, bool fresh, void **out)
{
	struct qcache_ent *victim = &c->e[0];
	int r;

	if (c->e[c->last].off == off && off && !fresh) {
		c->e[c->last].lru = ++c->tick;
		*out = c->e[c->last].data;
		return 0;
	}
	for (int i = 0; i < c->n; i++) {
		if (c->e[i].off == off) {
			c->e[i].lru = ++c->tick;
			c->last = i;
			if (fresh)
				memset(c->e[i].data, 0, q->cs);
			*out = c->e[i].data;
			return 0;
		}
		if (!c->e[i].off || (victim->off && c->e[i].lru < victim->lru))
			victim = &c->e[i];
	}
	if (victim->off && victim->dirty) {
		r = c == &q->l2c ? qcow2_flush_meta(q) : cache_write_one(q, victim);
		if (r < 0)
			return r;
	}
	victim->off = 0;
	if (fresh) {
		memset(victim->data, 0, q->cs);
	} else {
		r = blk_fd_pread(q->fd, victim->data, q->cs, off);
		if (r < 0)
			return r;
	}
	victim->off = off;
	victim->dirty = false;
	victim->lru = ++c->tick;
	c->last = (int)(victim - c->e);
	*out = victim->data;
	return 0;
}

static void cache_mark_dirty(struct qcache *c, const void *data)
{
	for (int i = 0; i < c->n; i++)
		if (c->e[i].data == data)
			c->e[i].dirty = true;
}

/* ---- validation helpers ---- */

static int corrupt(struct qcow2_dev *q, const char *what, uint64_t off)
{
	pr_err("%s: corrupt image: %s (offset 0x%llx)", q->path, what, (unsigned long long)off);
	return -EIO;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return alen && blen && a < b + blen && b < a + alen;
}

/* Does [off, off+len) touch the header, the L1 table or the refcount table? */
static bool overlaps_fixed_meta(const struct qcow2_dev *q, uint64_t off, uint64_t len)
{
	return ranges_overlap(off, len, 0, q->cs) ||
	       ranges_overlap(off, len, q->l1_off, (uint64_t)q->l1_size * 8) ||
	       ranges_overlap(off, len, q->rt_off, (uint64_t)q->rt_clusters * q->cs);
}

/* A cluster-sized table (L2 or refcount block) must be aligned and in the file. */
static int check_table_off(struct qcow2_dev *q, uint64_t off, const char *what)
{
	if (!off || (off & (q->cs - 1)) || off > q->file_end - q->cs ||
	    overlaps_fixed_meta(q, off, q->cs))
		return corrupt(q, what, off);
	return 0;
}

/* ---- refcounts ---- */

static int refblock_get(struct qcow2_dev *q, uint64_t idx, void **blk)
{
	uint64_t off = q->rt[idx];
	int r = check_table_off(q, off, "refcount block outside the file or misplaced");

	return r < 0 ? r : cache_get(q, &q->rbc, off, false, blk);
}

static int refcount_get(struct qcow2_dev *q, uint64_t cl, uint64_t *val)
{
	uint64_t idx = cl / q->rb_entries;
	void *blk;
	int r;

	if (idx >= q->rt_entries || !q->rt[idx]) {
		*val = 0;
		return 0;
	}
	r = refblock_get(q, idx, &blk);
	if (r < 0)
		return r;
	*val = rc_get(blk, q->rc_bits, cl % q->rb_entries);
	return 0;
}

static int write_header_field64(struct qcow2_dev *q, uint64_t field_off, uint64_t v)
{
	uint8_t b[8];

	wr64(b, v);
	return blk_fd_pwrite(q->fd, b, 8, field_off);
}

/* Give refcount range idx its own refcount block, placed at the first cluster
 * of the range it describes (all of which is free, since it had no block). */
static int refblock_create(struct qcow2_dev *q, uint64_t idx)
{
	uint64_t off = idx * q->rb_entries * q->cs;
	void *blk;
	int r;

	if (off / q->rb_entries / q->cs != idx || off > (1ull << 56))
		return -EFBIG;
	r = cache_get(q, &q->rbc, off, true, &blk);
	if (r < 0)
		return r;
	rc_set(blk, q->rc_bits, 0, 1);
	r = blk_fd_pwrite(q->fd, blk, q->cs, off);
	if (r < 0)
		return r;
	if (off + q->cs > q->file_end)
		q->file_end = off + q->cs;
	if (fdatasync(q->fd) < 0)
		return -errno;
	q->rt[idx] = off;
	return write_header_field64(q, q->rt_off + idx * 8, off);
}

static int refcount_grow_table(struct qcow2_dev *q, uint64_t min_entries);

/* Make sure cluster cl is covered by a refcount block. */
static int refblock_ensure(struct qcow2_dev *q, uint64_t cl)
{
	uint64_t idx = cl / q->rb_entries;
	int r;

	if (idx >= q->rt_entries) {
		r = refcount_grow_table(q, idx + 1);
		if (r < 0)
			return r;
	}
	return q->rt[idx] ? 0 : refblock_create(q, idx);
}

/* Set a cluster's refcount, creating its refcount block if needed. */
static int refcount_set(struct qcow2_dev *q, uint64_t cl, uint64_t val)
{
	void *blk;
	int r = refblock_ensure(q, cl);

	if (r == 0)
		r = refblock_get(q, cl / q->rb_entries, &blk);
	if (r < 0)
		return r;
	rc_set(blk, q->rc_bits, cl % q->rb_entries, val);
	cache_mark_dirty(&q->rbc, blk);
	return 0;
}

static int refcount_update(struct qcow2_dev *q, uint64_t cl, int delta)
{
	uint64_t v;
	int r = refcount_get(q, cl, &v);

	if (r < 0)
		return r;
	if (delta > 0 && v == rc_max(q)) {
		pr_err("%s: refcount of cluster %llu would overflow", q->path,
		       (unsigned long long)cl);
		return -EOVERFLOW;
	}
	if (delta < 0 && v == 0)
		return corrupt(q, "freeing a cluster whose refcount is already 0", cl * q->cs);
	v += delta;
	if (v == 0 && cl < q->free_hint)
		q->free_hint = cl;
	return refcount_set(q, cl, v);
}

/*
 * Grow the refcount table. The new table and the refcount blocks it needs for
 * its own clusters go at the end of the file: first the table, then blocks
 * for the ranges it covers that have none. Becomes live by one header write.
 */
static int refcount_grow_table(struct qcow2_dev *q, uint64_t min_entries)
{
	uint64_t n = q->rt_entries * 2 > min_entries ? q->rt_entries * 2 : min_entries;
	uint64_t e0 = q->file_end / q->cs, tcl, k, end, first_r, last_r;
	uint64_t *nt = NULL, old_off = q->rt_off, old_cl = q->rt_clusters;
	uint8_t *blocks = NULL, hdr[12];
	int r;

	for (;;) {
		tcl = div_round_up(n * 8, q->cs);
		n = tcl * q->cs / 8;
		k = 0;
		for (;;) {
			uint64_t need = 0;

			end = e0 + tcl + k;
			first_r = e0 / q->rb_entries;
			last_r = (end - 1) / q->rb_entries;
			for (uint64_t i = first_r; i <= last_r; i++)
				need += i >= q->rt_entries || !q->rt[i];
			if (need == k)
				break;
			k = need;
		}
		if (last_r < n)
			break;
		n = last_r + 1;
	}
	if (n * 8 > MAX_RT_BYTES) {
		pr_err("%s: refcount table would exceed %u bytes", q->path, MAX_RT_BYTES);
		return -EFBIG;
	}
	nt = calloc(n, 8);
	blocks = calloc(k ? k : 1, q->cs);
	if (!nt || !blocks) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(nt, q->rt, q->rt_entries * 8);
	for (uint64_t i = first_r, j = 0; i <= last_r; i++)
		if (i >= q->rt_entries || !q->rt[i])
			nt[i] = (e0 + tcl + j++) * q->cs;
	/* Refcount 1 for each new cluster, in a new block or an existing one. */
	for (uint64_t cl = e0; cl < end; cl++) {
		uint64_t i = cl / q->rb_entries;

		if (nt[i] >= (e0 + tcl) * q->cs) {
			uint64_t j = nt[i] / q->cs - e0 - tcl;

			rc_set(blocks + j * q->cs, q->rc_bits, cl % q->rb_entries, 1);
		} else {
			void *blk;

			r = refblock_get(q, i, &blk);
			if (r < 0)
				goto out;
			rc_set(blk, q->rc_bits, cl % q->rb_entries, 1);
			cache_mark_dirty(&q->rbc, blk);
		}
	}
	r = blk_fd_pwrite(q->fd, blocks, k * q->cs, (e0 + tcl) * q->cs);
	if (r < 0)
		goto out;
	r = cache_write_dirty(q, &q->rbc);
	if (r < 0)
		goto out;
	for (uint64_t i = 0; i < n; i++)
		wr64(&nt[i], nt[i]);
	r = blk_fd_pwrite(q->fd, nt, n * 8, e0 * q->cs);
	for (uint64_t i = 0; i < n; i++)
		nt[i] = be64toh(nt[i]);
	if (r < 0)
		goto out;
	if (fdatasync(q->fd) < 0) {
		r = -errno;
		goto out;
	}
	wr64(hdr, e0 * q->cs);
	wr32(hdr + 8, (uint32_t)tcl);
	r = blk_fd_pwrite(q->fd, hdr, 12, 48);
	if (r < 0 || fdatasync(q->fd) < 0) {
		r = r < 0 ? r : -errno;
		goto out;
	}
	free(q->rt);
	q->rt = nt;
	nt = NULL;
	q->rt_entries = n;
	q->rt_off = e0 * q->cs;
	q->rt_clusters = (uint32_t)tcl;
	q->file_end = end * q->cs;
	/* The old table is unreferenced now that the header is durable. */
	for (uint64_t i = 0; i < old_cl && r == 0; i++)
		r = refcount_update(q, old_off / q->cs + i, -1);
out:
	free(nt);
	free(blocks);
	return r;
}

/* Allocate one cluster: refcount 1, returns its host offset. */
static int alloc_cluster(struct qcow2_dev *q, uint64_t *off)
{
	for (int tries = 0; tries < 1000000; tries++) {
		uint64_t cl = q->free_hint, v = 1;
		int r;

		while (cl * q->cs < q->file_end) {
			r = refcount_get(q, cl, &v);
			if (r < 0)
				return r;
			if (v == 0)
				break;
			cl++;
		}
		q->free_hint = cl;
		/* Make sure its refcount block exists; creating one may take cl itself. */
		if (cl / q->rb_entries >= q->rt_entries || !q->rt[cl / q->rb_entries]) {
			r = refblock_ensure(q, cl);
			if (r < 0)
				return r;
			r = refcount_get(q, cl, &v);
			if (r < 0)
				return r;
			if (v != 0)
				continue;
		}
		r = refcount_set(q, cl, 1);
		if (r < 0)
			return r;
		q->free_hint = cl + 1;
		if ((cl + 1) * q->cs > q->file_end)
			q->file_end = (cl + 1) * q->cs;
		*off = cl * q->cs;
		return 0;
	}
	return -ENOSPC;
}

static int queue_free(struct qcow2_dev *q, uint64_t off, uint64_t len)
{
	if (q->npf == q->pf_cap) {
		size_t cap = q->pf_cap ? q->pf_cap * 2 : 64;
		struct pending_free *p = realloc(q->pf, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		q->pf = p;
		q->pf_cap = cap;
	}
	q->pf[q->npf].off = off;
	q->pf[q->npf].len = len;
	q->npf++;
	return 0;
}

static int apply_frees(struct qcow2_dev *q)
{
	int r = 0;

	for (size_t i = 0; i < q->npf && r == 0; i++) {
		uint64_t first = q->pf[i].off / q->cs;
		uint64_t last = (q->pf[i].off + q->pf[i].len - 1) / q->cs;

		for (uint64_t cl = first; cl <= last && r == 0; cl++) {
			uint64_t v;

			r = refcount_update(q, cl, -1);
			if (r == 0)
				r = refcount_get(q, cl, &v);
			/* A cluster nobody uses gives its space back to the host. */
			if (r == 0 && v == 0)
				fallocate(q->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					  (off_t)(cl * q->cs), (off_t)q->cs);
		}
	}
	q->npf = 0;
	return r;
}

/* Write back metadata in the order that keeps the image consistent on disk. */
static int qcow2_flush_meta(struct qcow2_dev *q)
{
	int r;

	if (q->bd.readonly)
		return 0;
	r = cache_write_dirty(q, &q->rbc);
	if (r < 0)
		return r;
	if (cache_any_dirty(&q->l2c)) {
		if (fdatasync(q->fd) < 0)
			return -errno;
		r = cache_write_dirty(q, &q->l2c);
		if (r < 0)
			return r;
	}
	if (q->npf) {
		if (fdatasync(q->fd) < 0)
			return -errno;
		r = apply_frees(q);
		if (r < 0)
			return r;
		r = cache_write_dirty(q, &q->rbc);
	}
	return r;
}

/* ---- L2 tables ---- */

static uint64_t l1_index(const struct qcow2_dev *q, uint64_t voff)
{
	return voff >> (q->cluster_bits + q->l2_bits);
}

static uint64_t l2_index(const struct qcow2_dev *q, uint64_t voff)
{
	return (voff >> q->cluster_bits) & ((1ull << q->l2_bits) - 1);
}

static int write_l1_entry(struct qcow2_dev *q, uint64_t i)
{
	return write_header_field64(q, q->l1_off + i * 8, q->l1[i]);
}

/* The L2 table covering voff, or NULL in *tbl if none is allocated. */
static int l2_lookup(struct qcow2_dev *q, uint64_t voff, uint64_t **tbl)
{
	uint64_t i = l1_index(q, voff), off;
	int r;

	*tbl = NULL;
	if (i >= q->l1_size)
		return corrupt(q, "L1 table too small for the virtual size", voff);
	off = q->l1[i] & OFFSET_MASK;
	if (!off)
		return 0;
	r = check_table_off(q, off, "L2 table outside the file or misplaced");
	return r < 0 ? r : cache_get(q, &q->l2c, off, false, (void **)tbl);
}

/* The L2 table covering voff, allocating it if needed, ready for writing. */
static int l2_lookup_alloc(struct qcow2_dev *q, uint64_t voff, uint64_t **tbl)
{
	uint64_t i = l1_index(q, voff), off, v;
	void *t;
	int r;

	r = l2_lookup(q, voff, tbl);
	if (r < 0 || (*tbl && (q->l1[i] & OFLAG_COPIED)))
		return r;
	if (*tbl) {
		/* Only a missing flag if nothing else shares the table. */
		r = refcount_get(q, (q->l1[i] & OFFSET_MASK) / q->cs, &v);
		if (r < 0)
			return r;
		if (v != 1) {
			pr_err("%s: writing to L2 tables shared with internal snapshots is not "
			       "supported",
			       q->path);
			return -ENOTSUP;
		}
		q->l1[i] |= OFLAG_COPIED;
		return write_l1_entry(q, i);
	}
	r = alloc_cluster(q, &off);
	if (r < 0)
		return r;
	r = cache_get(q, &q->l2c, off, true, &t);
	if (r < 0)
		return r;
	r = blk_fd_pwrite(q->fd, t, q->cs, off);
	if (r < 0)
		return r;
	/* Table and its refcount durable before the L1 entry names it. */
	r = cache_write_dirty(q, &q->rbc);
	if (r < 0)
		return r;
	if (fdatasync(q->fd) < 0)
		return -errno;
	q->l1[i] = off | OFLAG_COPIED;
	r = write_l1_entry(q, i);
	if (r < 0)
		return r;
	return l2_lookup(q, voff, tbl);
}

/* ---- reading ---- */

enum ctype { C_UNALLOC, C_ZERO, C_DATA, C_COMPRESSED };

static enum ctype classify(const struct qcow2_dev *q, uint64_t e)
{
	if (e & OFLAG_COMPRESSED)
		return C_COMPRESSED;
	if (q->version >= 3 && (e & OFLAG_ZERO))
		return C_ZERO;
	return (e & OFFSET_MASK) ? C_DATA : C_UNALLOC;
}

static int check_data_off(struct qcow2_dev *q, uint64_t e)
{
	uint64_t host = e & OFFSET_MASK;

	if ((e & L2_STD_RESERVED) || (host & (q->cs - 1)) || host >= q->file_end ||
	    overlaps_fixed_meta(q, host, q->cs))
		return corrupt(q, "data cluster misaligned, outside the file or over metadata",
			       host);
	return 0;
}

static void compressed_span(const struct qcow2_dev *q, uint64_t e, uint64_t *off, uint64_t *len)
{
	unsigned x = 62 - (q->cluster_bits - 8);
	uint64_t nsec = (e >> x) & ((1ull << (62 - x)) - 1);

	*off = e & ((1ull << x) - 1);
	*len = (nsec + 1) * 512 - (*off & 511);
}

/* Inflate a compressed cluster into q->zc_buf (cached by its L2 entry). */
static int read_compressed(struct qcow2_dev *q, uint64_t e)
{
	uint64_t off, len;
	z_stream zs = {0};
	int r, zr;

	if (q->zc_entry == e)
		return 0;
	compressed_span(q, e, &off, &len);
	if (off >= q->file_end || len > 2 * q->cs + 512)
		return corrupt(q, "compressed cluster outside the file or too large", off);
	r = blk_fd_pread(q->fd, q->zc_in, len, off);
	if (r < 0)
		return r;
	if (inflateInit2(&zs, -12) != Z_OK)
		return -ENOMEM;
	zs.next_in = q->zc_in;
	zs.avail_in = (uInt)len;
	zs.next_out = q->zc_buf;
	zs.avail_out = (uInt)q->cs;
	zr = inflate(&zs, Z_FINISH);
	inflateEnd(&zs);
	/* The compressed stream may be followed by padding: a full cluster is enough. */
	if ((zr != Z_STREAM_END && zr != Z_BUF_ERROR) || zs.avail_out != 0) {
		q->zc_entry = 0;
		return corrupt(q, "compressed cluster does not inflate to a full cluster", off);
	}
	q->zc_entry = e;
	return 0;
}

/* Slice [skip, skip+len) of iov into tmp; returns the count. */
static int iov_slice(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len,
		     struct iovec *tmp)
{
	int n = 0;

	for (int i = 0; i < iovcnt && len; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		tmp[n].iov_base = (char *)iov[i].iov_base + skip;
		tmp[n].iov_len = iov[i].iov_len - skip < len ? iov[i].iov_len - skip : len;
		len -= tmp[n].iov_len;
		skip = 0;
		n++;
	}
	return n;
}

/* Read [voff, voff+len) of the backing file into iov at skip; zeroes past its end. */
static int read_backing(struct qcow2_dev *q, const struct iovec *iov, int iovcnt, uint64_t skip,
			uint64_t voff, uint64_t len, struct iovec *tmp)
{
	uint64_t have = 0;

	if (q->backing && voff < q->backing->size) {
		int r;

		have = q->backing->size - voff < len ? q->backing->size - voff : len;
		r = blk_preadv(q->backing, tmp, iov_slice(iov, iovcnt, skip, have, tmp), voff);
		if (r < 0)
			return r;
	}
	if (have < len)
		blk_iov_memset(iov, iovcnt, skip + have, 0, len - have);
	return 0;
}

/* A run of guest bytes that sit contiguously in the image file (or, for
 * backing runs, in the backing file at host == guest offset). */
struct run {
	uint64_t host, pos, len;
	bool backing;
};

static int run_flush(struct qcow2_dev *q, struct run *rn, const struct iovec *iov, int iovcnt,
		     struct iovec *tmp, bool write)
{
	int n, r;

	if (!rn->len)
		return 0;
	if (rn->backing) {
		uint64_t len = rn->len;

		rn->len = 0;
		return read_backing(q, iov, iovcnt, rn->pos, rn->host, len, tmp);
	}
	n = iov_slice(iov, iovcnt, rn->pos, rn->len, tmp);
	r = write ? blk_fd_pwritev(q->fd, tmp, n, rn->host)
		  : blk_fd_preadv(q->fd, tmp, n, rn->host);
	if (write && r == 0 && rn->host + rn->len > q->file_end)
		q->file_end = div_round_up(rn->host + rn->len, q->cs) * q->cs;
	rn->len = 0;
	return r;
}

static int run_add_kind(struct qcow2_dev *q, struct run *rn, uint64_t host, uint64_t pos,
			uint64_t len, const struct iovec *iov, int iovcnt, struct iovec *tmp,
			bool write, bool backing)
{
	int r;

	if (rn->len && rn->backing == backing && rn->host + rn->len == host &&
	    rn->pos + rn->len == pos) {
		rn->len += len;
		return 0;
	}
	r = run_flush(q, rn, iov, iovcnt, tmp, write);
	rn->host = host;
	rn->pos = pos;
	rn->len = len;
	rn->backing = backing;
	return r;
}

static int run_add(struct qcow2_dev *q, struct run *rn, uint64_t host, uint64_t pos, uint64_t len,
		   const struct iovec *iov, int iovcnt, struct iovec *tmp, bool write)
{
	return run_add_kind(q, rn, host, pos, len, iov, iovcnt, tmp, write, false);
}

static int read_piece(struct qcow2_dev *q, uint64_t e, uint64_t voff, uint64_t pos, uint64_t n,
		      const struct iovec *iov, int iovcnt, struct iovec *tmp, struct run *rn)
{
	uint64_t in = voff & (q->cs - 1);
	int r;

	switch (classify(q, e)) {
	case C_DATA:
		r = check_data_off(q, e);
		return r < 0 ? r
			     : run_add(q, rn, (e & OFFSET_MASK) + in, pos, n, iov, iovcnt, tmp,
				       false);
	case C_ZERO:
		blk_iov_memset(iov, iovcnt, pos, 0, n);
		return 0;
	case C_COMPRESSED:
		r = read_compressed(q, e);
		if (r == 0)
			blk_iov_from_buf(iov, iovcnt, pos, (char *)q->zc_buf + in, n);
		return r;
	default:
		return run_add_kind(q, rn, voff, pos, n, iov, iovcnt, tmp, false, true);
	}
}

static int qcow2_do_read(struct qcow2_dev *q, const struct iovec *iov, int iovcnt, uint64_t off,
			 struct iovec *tmp)
{
	uint64_t len = blk_iov_len(iov, iovcnt), pos = 0;
	struct run rn = {0};
	int r = 0;

	while (pos < len && r == 0) {
		uint64_t voff = off + pos, in = voff & (q->cs - 1);
		uint64_t n = q->cs - in < len - pos ? q->cs - in : len - pos;
		uint64_t *t, e = 0;

		r = l2_lookup(q, voff, &t);
		if (r < 0)
			break;
		if (t)
			e = be64toh(t[l2_index(q, voff)]);
		r = read_piece(q, e, voff, pos, n, iov, iovcnt, tmp, &rn);
		pos += n;
	}
	if (r == 0)
		r = run_flush(q, &rn, iov, iovcnt, tmp, false);
	return r;
}

typedef int (*qcow2_io_fn)(struct qcow2_dev *q, const struct iovec *iov, int iovcnt, uint64_t off,
			   struct iovec *tmp);

/* One request under the image lock, with scratch for slicing its iovec. */
static int qcow2_locked_io(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off,
			   qcow2_io_fn fn)
{
	struct qcow2_dev *q = to_q(bd);
	struct iovec small[16], *tmp = small;
	int r;

	/* On the stack for the common short lists. */
	if (iovcnt >= 16) {
		tmp = malloc(((size_t)iovcnt + 1) * sizeof(*tmp));
		if (!tmp)
			return -ENOMEM;
	}
	pthread_mutex_lock(&q->lock);
	r = fn(q, iov, iovcnt, off, tmp);
	pthread_mutex_unlock(&q->lock);
	if (tmp != small)
		free(tmp);
	return r;
}

static int qcow2_preadv(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return qcow2_locked_io(bd, iov, iovcnt, off, qcow2_do_read);
}

/* ---- writing ---- */

/* The current content of the guest cluster at vcl (cluster-aligned), for copy-on-write. */
static int read_old_cluster(struct qcow2_dev *q, uint64_t e, uint64_t vcl, void *buf)
{
	struct iovec iov = {buf, q->cs}, tmp[2];
	uint64_t n = q->bd.size - vcl < q->cs ? q->bd.size - vcl : q->cs;
	struct run rn = {0};
	int r;

	memset(buf, 0, q->cs);
	iov.iov_len = n;
	r = read_piece(q, e, vcl, 0, n, &iov, 1, tmp, &rn);
	return r < 0 ? r : run_flush(q, &rn, &iov, 1, tmp, false);
}

/* Release what an L2 entry pointed at, once the entry's replacement is durable. */
static int drop_entry(struct qcow2_dev *q, uint64_t e)
{
	uint64_t off, len;

	switch (classify(q, e)) {
	case C_COMPRESSED:
		compressed_span(q, e, &off, &len);
		if (off == 0 || off >= q->file_end)
			return 0;
		return queue_free(q, off, len);
	case C_DATA:
	case C_ZERO:
		off = e & OFFSET_MASK;
		if (off == 0)
			return 0;
		if (off & (q->cs - 1) || off >= q->file_end || overlaps_fixed_meta(q, off, q->cs))
			return corrupt(q, "data cluster misaligned or outside the file", off);
		return queue_free(q, off, q->cs);
	default:
		return 0;
	}
}

/* Point the guest cluster at voff at a new L2 entry, releasing the old one. */
static int set_l2_entry(struct qcow2_dev *q, uint64_t voff, uint64_t ne)
{
	uint64_t *t, e;
	int r = l2_lookup_alloc(q, voff, &t);

	if (r < 0)
		return r;
	e = be64toh(t[l2_index(q, voff)]);
	t[l2_index(q, voff)] = htobe64(ne);
	cache_mark_dirty(&q->l2c, t);
	if (q->zc_entry == e)
		q->zc_entry = 0;
	return drop_entry(q, e);
}

/* Write a piece that needs a fresh cluster: copy-on-write around partial data. */
static int write_alloc(struct qcow2_dev *q, uint64_t e, uint64_t voff, uint64_t pos, uint64_t n,
		       const struct iovec *iov, int iovcnt, struct iovec *tmp, struct run *rn)
{
	uint64_t in = voff & (q->cs - 1), vcl = voff - in, host;
	void *buf;
	int r;

	r = alloc_cluster(q, &host);
	if (r < 0)
		return r;
	if (n == q->cs) {
		r = run_add(q, rn, host, pos, n, iov, iovcnt, tmp, true);
	} else {
		r = run_flush(q, rn, iov, iovcnt, tmp, true);
		buf = r < 0 ? NULL : malloc(q->cs);
		if (r == 0 && !buf)
			r = -ENOMEM;
		if (r == 0)
			r = read_old_cluster(q, e, vcl, buf);
		if (r == 0) {
			blk_iov_to_buf(iov, iovcnt, pos, (char *)buf + in, n);
			r = blk_fd_pwrite(q->fd, buf, q->cs, host);
		}
		free(buf);
		if (r == 0 && host + q->cs > q->file_end)
			q->file_end = host + q->cs;
	}
	return r < 0 ? r : set_l2_entry(q, voff, host | OFLAG_COPIED);
}

static int qcow2_do_write(struct qcow2_dev *q, const struct iovec *iov, int iovcnt, uint64_t off,
			  struct iovec *tmp)
{
	uint64_t len = blk_iov_len(iov, iovcnt), pos = 0, cur_l1 = UINT64_MAX;
	struct run rn = {0};
	int r = 0;

	while (pos < len && r == 0) {
		uint64_t voff = off + pos, in = voff & (q->cs - 1);
		uint64_t n = q->cs - in < len - pos ? q->cs - in : len - pos;
		uint64_t *t, e = 0;

		/* Data of a run lands before another table may be written back. */
		if (l1_index(q, voff) != cur_l1) {
			r = run_flush(q, &rn, iov, iovcnt, tmp, true);
			if (r < 0)
				break;
			cur_l1 = l1_index(q, voff);
		}
		r = l2_lookup(q, voff, &t);
		if (r < 0)
			break;
		if (t)
			e = be64toh(t[l2_index(q, voff)]);
		if (classify(q, e) == C_DATA && (e & OFLAG_COPIED)) {
			r = check_data_off(q, e);
			if (r == 0)
				r = run_add(q, &rn, (e & OFFSET_MASK) + in, pos, n, iov, iovcnt,
					    tmp, true);
		} else {
			r = write_alloc(q, e, voff, pos, n, iov, iovcnt, tmp, &rn);
		}
		pos += n;
	}
	if (r == 0)
		r = run_flush(q, &rn, iov, iovcnt, tmp, true);
	return r;
}

static int qcow2_pwritev(struct blockdev *bd, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return qcow2_locked_io(bd, iov, iovcnt, off, qcow2_do_write);
}

static int qcow2_flush(struct blockdev *bd)
{
	struct qcow2_dev *q = to_q(bd);
	int r;

	pthread_mutex_lock(&q->lock);
	r = qcow2_flush_meta(q);
	if (r == 0 && fdatasync(q->fd) < 0)
		r = -errno;
	pthread_mutex_unlock(&q->lock);
	return r;
}

static int write_zero_bytes(struct qcow2_dev *q, uint64_t off, uint64_t len)
{
	void *z = calloc(1, q->cs);
	struct iovec iov = {z, len}, tmp[2];
	int r;

	if (!z)
		return -ENOMEM;
	r = qcow2_do_write(q, &iov, 1, off, tmp);
	free(z);
	return r;
}

/*
 * Zero or discard whole clusters by rewriting their L2 entries; partial
 * clusters at the edges are written as zero bytes (zeroing) or left alone
 * (discard, which is only a hint).
 */
static int zero_range(struct qcow2_dev *q, uint64_t off, uint64_t len, bool discard)
{
	uint64_t end = off + len;
	int r = 0;

	while (off < end && r == 0) {
		uint64_t in = off & (q->cs - 1);
		uint64_t n = q->cs - in < end - off ? q->cs - in : end - off;
		bool whole = n == q->cs || (in == 0 && off + n == q->bd.size);
		uint64_t *t, e = 0, ne;

		r = l2_lookup(q, off, &t);
		if (r < 0)
			break;
		if (t)
			e = be64toh(t[l2_index(q, off)]);
		if (!whole || (q->version < 3 && q->backing)) {
			/* version 2 has no zero flag: over a backing file, write zeroes */
			if (!discard && classify(q, e) != C_ZERO &&
			    (classify(q, e) != C_UNALLOC || q->backing))
				r = write_zero_bytes(q, off, n);
		} else {
			ne = (discard && !q->backing) || q->version < 3 ? 0 : OFLAG_ZERO;
			if (e != ne)
				r = set_l2_entry(q, off, ne);
		}
		off += n;
	}
	return r;
}

static int qcow2_write_zeroes(struct blockdev *bd, uint64_t off, uint64_t len)
{
	struct qcow2_dev *q = to_q(bd);
	int r;

	pthread_mutex_lock(&q->lock);
	r = zero_range(q, off, len, false);
	pthread_mutex_unlock(&q->lock);
	return r;
}

static int qcow2_discard(struct blockdev *bd, uint64_t off, uint64_t len)
{
	struct qcow2_dev *q = to_q(bd);
	int r;

	pthread_mutex_lock(&q->lock);
	r = zero_range(q, off, len, true);
	pthread_mutex_unlock(&q->lock);
	return r;
}

static void qcow2_free(struct qcow2_dev *q)
{
	if (q->fd >= 0)
		close(q->fd);
	blk_close(q->backing);
	cache_free(&q->l2c);
	cache_free(&q->rbc);
	free(q->l1);
	free(q->rt);
	free(q->pf);
	free(q->zc_buf);
	free(q->zc_in);
	free(q->backing_name);
	free(q->backing_fmt);
	free(q->backing_path);
	free(q->ext_keep);
	free(q->path);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

static void qcow2_close(struct blockdev *bd)
{
	struct qcow2_dev *q = to_q(bd);

	if (!bd->readonly) {
		if (qcow2_flush_meta(q) < 0 || fdatasync(q->fd) < 0)
			pr_err("%s: writing metadata back on close failed", q->path);
	}
	qcow2_free(q);
}

static const struct blockdev_ops qcow2_ops = {
    .format = "qcow2",
    .preadv = qcow2_preadv,
    .pwritev = qcow2_pwritev,
    .flush = qcow2_flush,
    .discard = qcow2_discard,
    .write_zeroes = qcow2_write_zeroes,
    .close = qcow2_close,
};

/* ---- opening ---- */

struct qhdr {
	uint32_t magic, version, backing_size, cluster_bits, crypt, l1_size, rt_clusters,
	    nb_snapshots, refcount_order, header_len;
	uint64_t backing_off, size, l1_off, rt_off, snap_off, incompat, compat, autoclear;
	uint8_t compression;
};

static void hdr_parse(const uint8_t *b, struct qhdr *h)
{
	memset(h, 0, sizeof(*h));
	h->magic = rd32(b);
	h->version = rd32(b + 4);
	h->backing_off = rd64(b + 8);
	h->backing_size = rd32(b + 16);
	h->cluster_bits = rd32(b + 20);
	h->size = rd64(b + 24);
	h->crypt = rd32(b + 32);
	h->l1_size = rd32(b + 36);
	h->l1_off = rd64(b + 40);
	h->rt_off = rd64(b + 48);
	h->rt_clusters = rd32(b + 56);
	h->nb_snapshots = rd32(b + 60);
	h->snap_off = rd64(b + 64);
	h->refcount_order = 4;
	h->header_len = HDR_V2_LEN;
	if (h->version >= 3) {
		h->incompat = rd64(b + 72);
		h->compat = rd64(b + 80);
		h->autoclear = rd64(b + 88);
		h->refcount_order = rd32(b + 96);
		h->header_len = rd32(b + 100);
	}
}

static int bad(const char *path, const char *why)
{
	pr_err("%s: not a usable qcow2 image: %s", path, why);
	return -EINVAL;
}

static int hdr_check_basic(const char *path, const struct qhdr *h, uint64_t fsize)
{
	uint64_t cs;

	if (h->magic != QCOW2_MAGIC)
		return bad(path, "bad magic");
	if (h->version != 2 && h->version != 3) {
		pr_err("%s: qcow2 version %u is not supported", path, h->version);
		return -ENOTSUP;
	}
	if (h->cluster_bits < 9 || h->cluster_bits > 21)
		return bad(path, "cluster_bits out of range (9..21)");
	cs = 1ull << h->cluster_bits;
	if (h->version >= 3 && (h->header_len < HDR_V3_LEN || h->header_len > cs))
		return bad(path, "header length out of range");
	if (h->header_len % 8 && h->version >= 3)
		return bad(path, "header length not a multiple of 8");
	if (h->crypt) {
		pr_err("%s: encrypted qcow2 images are not supported", path);
		return -ENOTSUP;
	}
	if (h->refcount_order > 6 || (h->version < 3 && h->refcount_order != 4))
		return bad(path, "refcount order out of range");
	if (h->size > MAX_VIRTUAL_SIZE)
		return bad(path, "virtual size too large");
	if (fsize < cs)
		return bad(path, "file shorter than one cluster");
	return 0;
}

static int hdr_check_features(const char *path, const struct qhdr *h, bool readonly)
{
	uint64_t unknown = h->incompat & ~INCOMPAT_KNOWN;

	if (h->incompat & INCOMPAT_DATA_FILE) {
		pr_err("%s: qcow2 external data files are not supported", path);
		return -ENOTSUP;
	}
	if (h->incompat & INCOMPAT_EXTL2) {
		pr_err("%s: qcow2 extended L2 entries (subclusters) are not supported", path);
		return -ENOTSUP;
	}
	if (unknown) {
		pr_err("%s: unknown incompatible qcow2 features 0x%llx", path,
		       (unsigned long long)unknown);
		return -ENOTSUP;
	}
	if ((h->incompat & INCOMPAT_COMPRESSION) && h->compression != 0) {
		pr_err("%s: compression type %u is not supported (only deflate)", path,
		       h->compression);
		return -ENOTSUP;
	}
	if (readonly)
		return 0;
	if (h->incompat & INCOMPAT_CORRUPT) {
		pr_err("%s: image is marked corrupt; it can only be opened read-only", path);
		return -EROFS;
	}
	if (h->incompat & INCOMPAT_DIRTY) {
		pr_err("%s: image is dirty (lazy refcounts); repair it before writing", path);
		return -EROFS;
	}
	if (h->nb_snapshots) {
		pr_err("%s: image has internal snapshots; it can only be opened read-only", path);
		return -EROFS;
	}
	return 0;
}

static int hdr_check_tables(struct qcow2_dev *q, const struct qhdr *h, uint64_t fsize)
{
	uint64_t cs = q->cs, l2_cover = 1ull << (q->cluster_bits + q->l2_bits);
	uint64_t need = div_round_up(h->size, l2_cover);

	if ((uint64_t)h->l1_size * 8 > MAX_L1_BYTES)
		return bad(q->path, "L1 table too large");
	if (h->l1_size < need)
		return bad(q->path, "L1 table too small for the virtual size");
	if (h->l1_size && ((h->l1_off & (cs - 1)) || !h->l1_off || h->l1_off > fsize ||
			   (uint64_t)h->l1_size * 8 > fsize - h->l1_off))
		return bad(q->path, "L1 table offset misaligned or outside the file");
	if (!h->rt_clusters || (uint64_t)h->rt_clusters * cs > MAX_RT_BYTES)
		return bad(q->path, "refcount table size out of range");
	if ((h->rt_off & (cs - 1)) || !h->rt_off || h->rt_off > fsize ||
	    (uint64_t)h->rt_clusters * cs > fsize - h->rt_off)
		return bad(q->path, "refcount table offset misaligned or outside the file");
	if (ranges_overlap(h->l1_off, (uint64_t)h->l1_size * 8, h->rt_off,
			   (uint64_t)h->rt_clusters * cs) ||
	    ranges_overlap(h->l1_off, (uint64_t)h->l1_size * 8, 0, cs))
		return bad(q->path, "L1 table overlaps other metadata");
	return 0;
}

static int load_table(int fd, uint64_t off, uint64_t n, uint64_t **out)
{
	uint64_t *t = malloc(n ? n * 8 : 8);
	int r;

	if (!t)
		return -ENOMEM;
	r = blk_fd_pread(fd, t, n * 8, off);
	if (r < 0) {
		free(t);
		return r;
	}
	for (uint64_t i = 0; i < n; i++)
		t[i] = be64toh(t[i]);
	*out = t;
	return 0;
}

/* Header extensions: keep the backing format, remember the rest verbatim. */
static int parse_extensions(struct qcow2_dev *q, const uint8_t *hc, uint64_t start, uint64_t end)
{
	uint64_t p = start;
	size_t keep_cap;

	if (end < start)
		return bad(q->path, "backing file name overlaps the header");
	keep_cap = end - start;
	q->ext_keep = malloc(keep_cap ? keep_cap : 1);
	if (!q->ext_keep)
		return -ENOMEM;
	while (p + 8 <= end) {
		uint32_t type = rd32(hc + p), len = rd32(hc + p + 4);
		uint64_t padded = ((uint64_t)len + 7) & ~7ull;

		if (type == EXT_END)
			return 0;
		if (padded > end - p - 8)
			return bad(q->path, "header extension runs past the header cluster");
		if (type == EXT_BACKING_FMT) {
			if (len == 0 || len > 31 || memchr(hc + p + 8, 0, len))
				return bad(q->path, "bad backing format extension");
			q->backing_fmt = strndup((const char *)hc + p + 8, len);
			if (!q->backing_fmt)
				return -ENOMEM;
		} else {
			memcpy((uint8_t *)q->ext_keep + q->ext_keep_len, hc + p, 8 + padded);
			q->ext_keep_len += 8 + padded;
		}
		p += 8 + padded;
	}
	return 0;
}

static char *resolve_backing(const char *overlay, const char *name)
{
	const char *slash = strrchr(overlay, '/');
	size_t dl = slash ? (size_t)(slash - overlay) + 1 : 0;
	char *p;

	if (name[0] == '/' || !slash)
		return strdup(name);
	p = malloc(dl + strlen(name) + 1);
	if (!p)
		return NULL;
	memcpy(p, overlay, dl);
	strcpy(p + dl, name);
	return p;
}

static int load_backing_name(struct qcow2_dev *q, const struct qhdr *h, const uint8_t *hc)
{
	if (!h->backing_off)
		return 0;
	if (h->backing_size == 0 || h->backing_size > MAX_BACKING_NAME ||
	    h->backing_off > q->cs - h->backing_size || h->backing_off < h->header_len)
		return bad(q->path, "backing file name outside the header cluster or too long");
	if (memchr(hc + h->backing_off, 0, h->backing_size))
		return bad(q->path, "backing file name contains a NUL byte");
	q->backing_name = strndup((const char *)hc + h->backing_off, h->backing_size);
	if (!q->backing_name)
		return -ENOMEM;
	q->backing_path = resolve_backing(q->path, q->backing_name);
	return q->backing_path ? 0 : -ENOMEM;
}

static int setup_caches(struct qcow2_dev *q)
{
	/* About 32 MiB of L2 tables (8 TiB of guest disk at 64 KiB clusters). */
	uint64_t n = (32ull << 20) / q->cs;
	int r;

	n = n < 16 ? 16 : n > 512 ? 512 : n;
	r = cache_init(&q->l2c, (int)n, q->cs);
	if (r == 0)
		r = cache_init(&q->rbc, 16, q->cs);
	q->zc_buf = malloc(q->cs);
	q->zc_in = malloc(2 * q->cs + 1024);
	if (r == 0 && (!q->zc_buf || !q->zc_in))
		r = -ENOMEM;
	return r;
}

static int qcow2_open_hdr(struct qcow2_dev *q, uint8_t **hc_out, struct qhdr *h)
{
	uint8_t b[HDR_V3_LEN + 8] = {0};
	struct stat st;
	uint8_t *hc;
	int r;

	if (fstat(q->fd, &st) < 0)
		return -errno;
	r = blk_fd_pread(q->fd, b, sizeof(b), 0);
	if (r < 0)
		return r;
	hdr_parse(b, h);
	r = hdr_check_basic(q->path, h, (uint64_t)st.st_size);
	if (r < 0)
		return r;
	q->cs = 1ull << h->cluster_bits;
	hc = malloc(q->cs);
	if (!hc)
		return -ENOMEM;
	r = blk_fd_pread(q->fd, hc, q->cs, 0);
	if (r == 0 && h->version >= 3 && h->header_len > HDR_V3_LEN)
		h->compression = hc[HDR_V3_LEN];
	if (r < 0) {
		free(hc);
		return r;
	}
	q->file_end = div_round_up((uint64_t)st.st_size, q->cs) * q->cs;
	*hc_out = hc;
	return 0;
}

static void qcow2_apply_hdr(struct qcow2_dev *q, const struct qhdr *h)
{
	q->version = h->version;
	q->cluster_bits = h->cluster_bits;
	q->l2_bits = h->cluster_bits - 3;
	q->refcount_order = h->refcount_order;
	q->rc_bits = 1u << h->refcount_order;
	q->rb_entries = q->cs * 8 / q->rc_bits;
	q->header_len = h->header_len;
	q->incompat = h->incompat;
	q->compat = h->compat;
	q->autoclear = h->autoclear;
	q->nb_snapshots = h->nb_snapshots;
	q->l1_size = h->l1_size;
	q->l1_off = h->l1_off;
	q->rt_off = h->rt_off;
	q->rt_clusters = h->rt_clusters;
	q->rt_entries = (uint64_t)h->rt_clusters * q->cs / 8;
	q->bd.size = h->size;
}

static int qcow2_open_tables(struct qcow2_dev *q)
{
	int r = load_table(q->fd, q->l1_off, q->l1_size, &q->l1);

	if (r < 0)
		return r;
	r = load_table(q->fd, q->rt_off, q->rt_entries, &q->rt);
	if (r < 0)
		return r;
	for (uint64_t i = 0; i < q->rt_entries; i++)
		q->rt[i] &= RT_OFFSET_MASK;
	/* Bits the image's writer knew about and we may not keep consistent. */
	if (!q->bd.readonly && q->autoclear) {
		q->autoclear = 0;
		r = write_header_field64(q, 88, 0);
	}
	return r;
}

static int qcow2_open_backing(struct qcow2_dev *q, int depth)
{
	if (!q->backing_path)
		return 0;
	if (q->backing_fmt && strcmp(q->backing_fmt, "raw") && strcmp(q->backing_fmt, "qcow2")) {
		pr_err("%s: backing format '%s' is not supported", q->path, q->backing_fmt);
		return -ENOTSUP;
	}
	/*
	 * The backing name comes from the image, which may be untrusted: it may
	 * name a file, never make tern connect to a network server.
	 */
	if (strstr(q->backing_path, "://")) {
		pr_err("%s: backing file '%s' is a URI; only files can back an image", q->path,
		       q->backing_path);
		return -EPERM;
	}
	return blk_open_depth(q->backing_path, q->backing_fmt, true, depth + 1, &q->backing);
}

static int qcow2_open_ex(const char *path, bool readonly, int depth, bool backing,
			 struct blockdev **out)
{
	struct qcow2_dev *q = calloc(1, sizeof(*q));
	uint8_t *hc = NULL;
	struct qhdr h = {0};
	int r;

	if (!q)
		return -ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	q->bd.ops = &qcow2_ops;
	q->bd.readonly = readonly;
	q->path = strdup(path);
	q->fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (q->fd < 0 || !q->path) {
		r = q->path ? -errno : -ENOMEM;
		pr_err("%s: cannot open: %s", path, strerror(-r));
		goto fail;
	}
	r = qcow2_open_hdr(q, &hc, &h);
	if (r < 0)
		goto fail;
	qcow2_apply_hdr(q, &h);
	r = hdr_check_features(path, &h, readonly);
	if (r == 0)
		r = hdr_check_tables(q, &h, q->file_end);
	if (r == 0)
		r = parse_extensions(q, hc, h.header_len,
				     h.backing_off && h.backing_off < q->cs ? h.backing_off
									    : q->cs);
	if (r == 0)
		r = load_backing_name(q, &h, hc);
	if (r == 0)
		r = setup_caches(q);
	if (r == 0)
		r = qcow2_open_tables(q);
	if (r == 0 && backing)
		r = qcow2_open_backing(q, depth);
	if (r < 0)
		goto fail;
	free(hc);
	*out = &q->bd;
	return 0;
fail:
	free(hc);
	q->bd.readonly = true; /* nothing to write back */
	qcow2_free(q);
	return r;
}

int qcow2_open(const char *path, bool readonly, int depth, struct blockdev **out)
{
	return qcow2_open_ex(path, readonly, depth, true, out);
}

/* ---- creating ---- */

/* Lay out header extensions and the backing name after the fixed header. */
static int build_header_tail(uint8_t *hc, uint64_t cs, uint32_t hlen, const char *fmt,
			     const void *keep, size_t keep_len, const char *name,
			     uint64_t *name_off)
{
	size_t p = hlen, fl = fmt ? strlen(fmt) : 0, nl = name ? strlen(name) : 0;

	if (p + (fmt ? 8 + ((fl + 7) & ~7ul) : 0) + keep_len + 8 + nl > cs || nl > MAX_BACKING_NAME)
		return -ENAMETOOLONG;
	memset(hc + p, 0, cs - p);
	if (fmt) {
		wr32(hc + p, EXT_BACKING_FMT);
		wr32(hc + p + 4, (uint32_t)fl);
		memcpy(hc + p + 8, fmt, fl);
		p += 8 + ((fl + 7) & ~7ul);
	}
	if (keep_len)
		memcpy(hc + p, keep, keep_len);
	p += keep_len + 8; /* end-of-extensions marker: already zero */
	*name_off = nl ? p : 0;
	if (nl)
		memcpy(hc + p, name, nl);
	return 0;
}

static int create_check(const struct qcow2_create_opts *o, unsigned *cb, unsigned *ver,
			unsigned *ro)
{
	*cb = o->cluster_bits ? o->cluster_bits : 16;
	*ver = o->version ? o->version : 3;
	*ro = o->refcount_order ? o->refcount_order : 4;
	if (*cb < 9 || *cb > 21) {
		pr_err("cluster size must be a power of two from 512 B to 2 MiB");
		return -EINVAL;
	}
	if (*ver != 2 && *ver != 3) {
		pr_err("qcow2 version must be 2 or 3");
		return -EINVAL;
	}
	if (*ro > 6 || (*ver == 2 && *ro != 4)) {
		pr_err("refcount width must be 1..64 bits (16 for version 2)");
		return -EINVAL;
	}
	if (o->size > MAX_VIRTUAL_SIZE) {
		pr_err("image size too large");
		return -EFBIG;
	}
	return 0;
}

int qcow2_create(const char *path, const struct qcow2_create_opts *o)
{
	unsigned cb, ver, ro;
	uint64_t cs, l1_size, l1c, rbe, rbc = 1, rtc = 1, total, name_off;
	uint8_t *hc = NULL, *meta = NULL;
	int fd = -1, r;

	r = create_check(o, &cb, &ver, &ro);
	if (r < 0)
		return r;
	cs = 1ull << cb;
	l1_size = div_round_up(o->size, 1ull << (2 * cb - 3));
	l1c = l1_size ? div_round_up(l1_size * 8, cs) : 1;
	rbe = cs * 8 >> ro;
	for (;;) {
		total = 1 + rtc + rbc + l1c;
		if (div_round_up(total, rbe) == rbc && div_round_up(rbc * 8, cs) == rtc)
			break;
		rbc = div_round_up(total, rbe);
		rtc = div_round_up(rbc * 8, cs);
	}
	if (l1_size * 8 > MAX_L1_BYTES || rtc * cs > MAX_RT_BYTES) {
		pr_err("%s: image size too large for this cluster size", path);
		return -EFBIG;
	}
	hc = calloc(1, cs);
	meta = calloc(rtc + rbc, cs);
	if (!hc || !meta) {
		r = -ENOMEM;
		goto out;
	}
	wr32(hc, QCOW2_MAGIC);
	wr32(hc + 4, ver);
	wr32(hc + 20, cb);
	wr64(hc + 24, o->size);
	wr32(hc + 36, (uint32_t)l1_size);
	wr64(hc + 40, (1 + rtc + rbc) * cs);
	wr64(hc + 48, cs);
	wr32(hc + 56, (uint32_t)rtc);
	if (ver >= 3) {
		wr32(hc + 96, ro);
		wr32(hc + 100, 112);
	}
	r = build_header_tail(hc, cs, ver >= 3 ? 112 : HDR_V2_LEN,
			      o->backing ? o->backing_fmt : NULL, NULL, 0, o->backing, &name_off);
	if (r < 0) {
		pr_err("%s: backing file name too long for the cluster size", path);
		goto out;
	}
	if (name_off) {
		wr64(hc + 8, name_off);
		wr32(hc + 16, (uint32_t)strlen(o->backing));
	}
	for (uint64_t i = 0; i < rbc; i++)
		wr64(meta + i * 8, (1 + rtc + i) * cs);
	for (uint64_t cl = 0; cl < total; cl++)
		rc_set(meta + rtc * cs + cl / rbe * cs, 1u << ro, cl % rbe, 1);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		pr_err("%s: cannot create: %s", path, strerror(errno));
		goto out;
	}
	r = blk_fd_pwrite(fd, hc, cs, 0);
	if (r == 0)
		r = blk_fd_pwrite(fd, meta, (rtc + rbc) * cs, cs);
	if (r == 0 && ftruncate(fd, (off_t)(total * cs)) < 0)
		r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
out:
	if (fd >= 0)
		close(fd);
	free(hc);
	free(meta);
	return r;
}

/* ---- inspection ---- */

void qcow2_get_info(struct blockdev *bd, struct qcow2_info *out)
{
	struct qcow2_dev *q = to_q(bd);

	memset(out, 0, sizeof(*out));
	out->version = q->version;
	out->cluster_bits = q->cluster_bits;
	out->refcount_bits = q->rc_bits;
	out->incompatible = q->incompat;
	out->compatible = q->compat;
	out->autoclear = q->autoclear;
	out->nb_snapshots = q->nb_snapshots;
	out->backing_name = q->backing_name;
	out->backing_fmt = q->backing_fmt;
	out->backing_path = q->backing_path;
	out->backing = q->backing;
}

int qcow2_block_status(struct blockdev *bd, uint64_t off, uint64_t len, uint64_t *pnum)
{
	struct qcow2_dev *q = to_q(bd);
	uint64_t done = 0;
	int first = -1, r = 0;

	pthread_mutex_lock(&q->lock);
	while (done < len) {
		uint64_t voff = off + done, in = voff & (q->cs - 1);
		uint64_t n = q->cs - in < len - done ? q->cs - in : len - done, *t, e = 0;
		int alloc;

		r = l2_lookup(q, voff, &t);
		if (r < 0)
			break;
		if (t)
			e = be64toh(t[l2_index(q, voff)]);
		alloc = classify(q, e) != C_UNALLOC;
		if (first >= 0 && alloc != first)
			break;
		first = alloc;
		done += n;
	}
	pthread_mutex_unlock(&q->lock);
	*pnum = done;
	return r < 0 ? r : first > 0;
}

/* Write the backing name and format into the header cluster, durably. */
static int write_backing_hdr(struct qcow2_dev *q, const char *name, const char *fmt)
{
	uint8_t *hc = malloc(q->cs), b[12];
	uint64_t name_off;
	int r;

	if (!hc)
		return -ENOMEM;
	r = build_header_tail(hc, q->cs, q->header_len, name ? fmt : NULL, q->ext_keep,
			      q->ext_keep_len, name, &name_off);
	if (r < 0) {
		pr_err("%s: backing file name too long for the cluster size", q->path);
		goto out;
	}
	r = blk_fd_pwrite(q->fd, hc + q->header_len, q->cs - q->header_len, q->header_len);
	wr64(b, name_off);
	wr32(b + 8, name ? (uint32_t)strlen(name) : 0);
	if (r == 0)
		r = blk_fd_pwrite(q->fd, b, 12, 8);
	if (r == 0 && fdatasync(q->fd) < 0)
		r = -errno;
out:
	free(hc);
	return r;
}

int qcow2_rewrite_backing(const char *path, const char *name, const char *fmt)
{
	struct blockdev *bd;
	int r = qcow2_open_ex(path, false, 0, false, &bd);

	if (r < 0)
		return r;
	r = write_backing_hdr(to_q(bd), name, fmt);
	blk_close(bd);
	return r;
}

int qcow2_set_backing(struct blockdev *bd, const char *name, const char *fmt)
{
	struct qcow2_dev *q = to_q(bd);
	struct blockdev *nb = NULL;
	char *path = NULL;
	int r;

	if (name) {
		path = resolve_backing(q->path, name);
		r = path ? blk_open_depth(path, fmt, true, 1, &nb) : -ENOMEM;
		if (r < 0)
			goto out;
	}
	r = write_backing_hdr(q, name, fmt);
	if (r < 0)
		goto out;
	blk_close(q->backing);
	q->backing = nb;
	nb = NULL;
	free(q->backing_name);
	free(q->backing_fmt);
	free(q->backing_path);
	q->backing_name = name ? strdup(name) : NULL;
	q->backing_fmt = name && fmt ? strdup(fmt) : NULL;
	q->backing_path = path;
	path = NULL;
out:
	blk_close(nb);
	free(path);
	return r;
}

/* ---- consistency check ---- */

struct check_ctx {
	struct qcow2_dev *q;
	uint32_t *refs;
	uint64_t ncl;
	struct qcow2_check_result *res;
};

static void check_ref(struct check_ctx *c, uint64_t off, uint64_t len, const char *what)
{
	if (!len)
		return;
	for (uint64_t cl = off / c->q->cs; cl <= (off + len - 1) / c->q->cs; cl++) {
		if (cl >= c->ncl) {
			pr_err("%s: %s at 0x%llx is past the end of the file", c->q->path, what,
			       (unsigned long long)off);
			c->res->corruptions++;
			return;
		}
		if (c->refs[cl] < UINT32_MAX)
			c->refs[cl]++;
	}
}

static void check_copied(struct check_ctx *c, uint64_t e, uint64_t off, const char *what)
{
	uint64_t v = 0;

	if (refcount_get(c->q, off / c->q->cs, &v) < 0)
		return;
	if (!!(e & OFLAG_COPIED) != (v == 1)) {
		pr_err("%s: %s at 0x%llx: copied flag %s but refcount %llu", c->q->path, what,
		       (unsigned long long)off, e & OFLAG_COPIED ? "set" : "clear",
		       (unsigned long long)v);
		c->res->corruptions++;
	}
}

static int check_l2(struct check_ctx *c, uint64_t l1i, uint64_t l2off)
{
	struct qcow2_dev *q = c->q;
	uint64_t *t;
	int r = cache_get(q, &q->l2c, l2off, false, (void **)&t);

	if (r < 0)
		return r;
	for (uint64_t j = 0; j < (1ull << q->l2_bits); j++) {
		uint64_t e = be64toh(t[j]), off, len;

		switch (classify(q, e)) {
		case C_COMPRESSED:
			compressed_span(q, e, &off, &len);
			check_ref(c, off, len, "compressed cluster");
			c->res->compressed++;
			c->res->data_clusters++;
			break;
		case C_DATA:
		case C_ZERO:
			off = e & OFFSET_MASK;
			if (!off)
				break;
			if (off & (q->cs - 1) || overlaps_fixed_meta(q, off, q->cs)) {
				pr_err("%s: data cluster at 0x%llx misaligned or over metadata",
				       q->path, (unsigned long long)off);
				c->res->corruptions++;
				break;
			}
			check_ref(c, off, q->cs, "data cluster");
			check_copied(c, e, off, "data cluster");
			c->res->data_clusters += classify(q, e) == C_DATA;
			break;
		default:
			break;
		}
	}
	return 0;
}

static int check_tables(struct check_ctx *c)
{
	struct qcow2_dev *q = c->q;
	int r;

	check_ref(c, 0, q->cs, "header");
	check_ref(c, q->l1_off, (uint64_t)q->l1_size * 8, "L1 table");
	check_ref(c, q->rt_off, (uint64_t)q->rt_clusters * q->cs, "refcount table");
	for (uint64_t i = 0; i < q->rt_entries; i++) {
		if (!q->rt[i])
			continue;
		if (q->rt[i] & (q->cs - 1)) {
			pr_err("%s: refcount block %llu misaligned", q->path,
			       (unsigned long long)i);
			c->res->corruptions++;
			continue;
		}
		check_ref(c, q->rt[i], q->cs, "refcount block");
	}
	for (uint64_t i = 0; i < q->l1_size; i++) {
		uint64_t off = q->l1[i] & OFFSET_MASK;

		if (!off)
			continue;
		if (check_table_off(q, off, "L2 table outside the file or misplaced") < 0) {
			c->res->corruptions++;
			continue;
		}
		check_ref(c, off, q->cs, "L2 table");
		check_copied(c, q->l1[i], off, "L2 table");
		r = check_l2(c, i, off);
		if (r < 0)
			return r;
	}
	return 0;
}

static int check_compare_one(struct check_ctx *c, uint64_t cl, bool repair)
{
	uint64_t v, want = cl < c->ncl ? c->refs[cl] : 0;
	int r = refcount_get(c->q, cl, &v);

	if (r < 0)
		return r;
	if (want && (cl + 1) * c->q->cs > c->res->image_end)
		c->res->image_end = (cl + 1) * c->q->cs;
	if (v == want)
		return 0;
	if (v < want) {
		pr_err("%s: cluster %llu has refcount %llu but %llu references", c->q->path,
		       (unsigned long long)cl, (unsigned long long)v, (unsigned long long)want);
		c->res->corruptions++;
		return 0;
	}
	c->res->leaks++;
	if (!repair)
		return 0;
	r = refcount_set(c->q, cl, want);
	if (r == 0)
		c->res->repaired++;
	return r;
}

int qcow2_check(struct blockdev *bd, bool repair_leaks, struct qcow2_check_result *res)
{
	struct qcow2_dev *q = to_q(bd);
	struct check_ctx c = {.q = q, .res = res};
	int r;

	memset(res, 0, sizeof(*res));
	res->total_clusters = div_round_up(bd->size, q->cs);
	if (q->nb_snapshots) {
		pr_err("%s: checking images with internal snapshots is not supported", q->path);
		return -ENOTSUP;
	}
	pthread_mutex_lock(&q->lock);
	r = qcow2_flush_meta(q);
	c.ncl = q->file_end / q->cs;
	c.refs = calloc(c.ncl ? c.ncl : 1, sizeof(*c.refs));
	if (r == 0 && !c.refs)
		r = -ENOMEM;
	if (r == 0)
		r = check_tables(&c);
	for (uint64_t cl = 0; r == 0 && cl < c.ncl; cl++)
		r = check_compare_one(&c, cl, repair_leaks && !bd->readonly);
	/* Refcounts for clusters past the end of the file are leaks too. */
	for (uint64_t i = c.ncl / q->rb_entries; r == 0 && i < q->rt_entries; i++) {
		if (!q->rt[i])
			continue;
		for (uint64_t j = 0; r == 0 && j < q->rb_entries; j++)
			if (i * q->rb_entries + j >= c.ncl)
				r = check_compare_one(&c, i * q->rb_entries + j,
						      repair_leaks && !bd->readonly);
	}
	if (r == 0 && res->repaired)
		r = qcow2_flush_meta(q);
	pthread_mutex_unlock(&q->lock);
	free(c.refs);
	return r;
}
