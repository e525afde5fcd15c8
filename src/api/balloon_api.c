/*
 * Memory overcommit endpoints: GET/PUT /vm/balloon and POST /vm/sweep, and
 * the reclaim counters GET /vm/stats shows under "memory" (docs/api.md).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api/api_int.h"
#include "virtio/balloon.h"
#include "vmm/reclaim.h"
#include "vmm/vm.h"

/* How long GET /vm/balloon waits for the guest's fresh statistics. */
#define STATS_WAIT_MS 1500
#define MIB (1ull << 20)

static void put_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

static uint64_t rss_bytes(void)
{
	unsigned long long size, resident;
	FILE *f = fopen("/proc/self/statm", "re");
	int n;

	if (!f)
		return 0;
	n = fscanf(f, "%llu %llu", &size, &resident);
	fclose(f);
	return n == 2 ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

static struct json_object *sweep_json(const struct reclaim_stats *s)
{
	struct json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	put_u64(o, "scanned_bytes", s->scanned);
	put_u64(o, "nonresident_bytes", s->nonresident);
	put_u64(o, "released_bytes", s->released_4k + s->released_2m);
	put_u64(o, "released_4k_bytes", s->released_4k);
	put_u64(o, "released_2m_bytes", s->released_2m);
	put_u64(o, "kept_dirty_bytes", s->kept_dirty);
	put_u64(o, "kept_pinned_bytes", s->kept_pinned);
	put_u64(o, "pauses", s->pauses);
	put_u64(o, "pause_us_max", s->pause_ns_max / 1000);
	put_u64(o, "pause_us_total", s->pause_ns_total / 1000);
	put_u64(o, "duration_ms", s->ns / 1000000);
	return o;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/*
 * Guest memory by what the guest says (free, used) and what tern saw
 * (balloon); "other" is what the guest kernel does not count (reserved,
 * firmware). Everything is clamped: the guest's numbers are not trusted.
 */
static struct json_object *classify_json(const struct balloon_info *i)
{
	const uint32_t need = 1u << BALLOON_S_MEMFREE | 1u << BALLOON_S_MEMTOT;
	uint64_t g = i->guest_bytes, balloon, total, free, used;
	struct json_object *o;

	if ((i->stats_valid & need) != need)
		return NULL;
	balloon = min_u64(i->balloon_pages << BALLOON_PAGE_SHIFT, g);
	total = min_u64(i->stats[BALLOON_S_MEMTOT], g);
	free = min_u64(i->stats[BALLOON_S_MEMFREE], total);
	used = total - free;
	/* With deflate-on-OOM the guest counts balloon pages in its total, as used. */
	if (i->deflate_on_oom)
		used -= min_u64(balloon, used);
	o = json_object_new_object();
	if (!o)
		return NULL;
	put_u64(o, "free_bytes", free);
	put_u64(o, "used_bytes", used);
	put_u64(o, "balloon_bytes", balloon);
	put_u64(o, "other_bytes", g - min_u64(free + used + balloon, g));
	return o;
}

/* The reclaim counters of the whole VM, added to a "memory" object. */
void api_memory_reclaim(struct api *api, struct json_object *mem)
{
	struct guest_mem *gm = &api->vm->mem;
	struct balloon *b = balloon_find(api->vm);
	struct balloon_info i;

	put_u64(mem, "released_balloon_bytes",
		__atomic_load_n(&gm->released_balloon, __ATOMIC_RELAXED));
	put_u64(mem, "released_free_report_bytes",
		__atomic_load_n(&gm->released_free_report, __ATOMIC_RELAXED));
	put_u64(mem, "released_sweep_bytes",
		__atomic_load_n(&gm->released_sweep, __ATOMIC_RELAXED));
	/* From the last statistics the guest sent; /vm/balloon asks for fresh ones. */
	if (b && balloon_get_info(b, 0, &i) == 0)
		json_object_object_add(mem, "classification", classify_json(&i));
}

static struct json_object *stats_json(const struct balloon_info *i)
{
	struct json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	for (unsigned t = 0; t < BALLOON_S_NR; t++)
		if (i->stats_valid & 1u << t)
			put_u64(o, balloon_stat_name(t), i->stats[t]);
	return o;
}

static struct json_object *counters_json(const struct balloon_info *i)
{
	struct json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	put_u64(o, "inflated_pages", i->inflated);
	put_u64(o, "deflated_pages", i->deflated);
	put_u64(o, "refused_pfns", i->refused_pfns);
	put_u64(o, "kept_pinned_pages", i->kept_pinned);
	put_u64(o, "free_page_reports", i->reports);
	put_u64(o, "reported_bytes", i->reported_bytes);
	put_u64(o, "refused_ranges", i->refused_ranges);
	return o;
}

static struct json_object *driver_json(const struct balloon_info *i)
{
	struct json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	json_object_object_add(o, "ready", json_object_new_boolean(i->driver_ok));
	json_object_object_add(o, "stats_vq", json_object_new_boolean(i->stats_vq));
	json_object_object_add(o, "deflate_on_oom", json_object_new_boolean(i->deflate_on_oom));
	json_object_object_add(o, "free_page_reporting",
			       json_object_new_boolean(i->free_page_reporting));
	return o;
}

static struct json_object *memory_json(const struct balloon_info *i)
{
	struct json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	put_u64(o, "guest_bytes", i->guest_bytes);
	put_u64(o, "host_rss_bytes", rss_bytes());
	put_u64(o, "released_balloon_bytes", i->released_balloon);
	put_u64(o, "released_free_report_bytes", i->released_free_report);
	put_u64(o, "released_sweep_bytes", i->released_sweep);
	json_object_object_add(o, "classification", classify_json(i));
	return o;
}

static struct json_object *info_json(const struct balloon_info *i, bool fresh)
{
	struct json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	put_u64(o, "target_pages", i->target_pages);
	put_u64(o, "target_mib", (i->target_pages << BALLOON_PAGE_SHIFT) / MIB);
	put_u64(o, "actual_pages", i->actual_pages);
	put_u64(o, "actual_mib", (i->actual_pages << BALLOON_PAGE_SHIFT) / MIB);
	put_u64(o, "balloon_pages", i->balloon_pages);
	json_object_object_add(o, "driver", driver_json(i));
	json_object_object_add(o, "counters", counters_json(i));
	json_object_object_add(o, "stats", stats_json(i));
	json_object_object_add(o, "stats_fresh", json_object_new_boolean(fresh));
	json_object_object_add(
	    o, "stats_age_ms",
	    i->stats_age_ms == UINT64_MAX ? NULL : json_object_new_uint64(i->stats_age_ms));
	json_object_object_add(o, "memory", memory_json(i));
	put_u64(o, "sweeps", i->sweeps);
	json_object_object_add(o, "last_sweep", i->sweeps ? sweep_json(&i->last_sweep) : NULL);
	return o;
}

static int no_balloon(struct json_object **out)
{
	return api_error(out, MHD_HTTP_NOT_FOUND, "this VM has no balloon (tern run --balloon)");
}

static int balloon_get(struct balloon *b, struct json_object **out)
{
	struct balloon_info i;
	int err = balloon_get_info(b, STATS_WAIT_MS, &i);

	if (err && err != -ETIMEDOUT)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "balloon: %s",
				 strerror(-err));
	*out = info_json(&i, err == 0);
	return *out ? MHD_HTTP_OK : api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
}

/* {"target_mib": N}: N whole MiB, at most the guest's RAM. */
static int parse_target(struct api *api, struct json_object *body, uint64_t *pages,
			struct json_object **out)
{
	struct json_object *v;
	int64_t mib;

	if (!body || !json_object_object_get_ex(body, "target_mib", &v) ||
	    !json_object_is_type(v, json_type_int) || json_object_object_length(body) != 1)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "expected {\"target_mib\": N}");
	errno = 0;
	mib = json_object_get_int64(v);
	if (errno || mib < 0 || (uint64_t)mib > api->vm->mem.size / MIB)
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "target_mib must be 0..%llu (the guest's RAM)",
				 (unsigned long long)(api->vm->mem.size / MIB));
	*pages = (uint64_t)mib * (MIB >> BALLOON_PAGE_SHIFT);
	return 0;
}

static int balloon_put(struct api *api, struct balloon *b, struct json_object *body,
		       struct json_object **out)
{
	struct reclaim_stats st;
	struct balloon_info i;
	uint64_t pages = 0;
	bool swept = false;
	int status = parse_target(api, body, &pages, out), err;

	if (status)
		return status;
	err = balloon_set_target(b, pages, &swept, &st);
	if (err)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "balloon: %s",
				 strerror(-err));
	balloon_get_info(b, 0, &i);
	*out = info_json(&i, false);
	if (!*out)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	/* The sweep run for this inflation, if the target rose. */
	json_object_object_add(*out, "sweep", swept ? sweep_json(&st) : NULL);
	return MHD_HTTP_OK;
}

int api_balloon(struct api *api, bool put, struct json_object *body, struct json_object **out)
{
	struct balloon *b = balloon_find(api->vm);

	if (!b)
		return no_balloon(out);
	return put ? balloon_put(api, b, body, out) : balloon_get(b, out);
}

int api_sweep(struct api *api, struct json_object *body, struct json_object **out)
{
	struct reclaim_stats st;
	struct json_object *mem;
	int err;

	if (body && json_object_object_length(body))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "POST /vm/sweep takes no fields");
	err = reclaim_sweep(api->vm, &st);
	if (err)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "sweep: %s", strerror(-err));
	*out = json_object_new_object();
	mem = json_object_new_object();
	if (!*out || !mem) {
		json_object_put(*out);
		json_object_put(mem);
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	}
	json_object_object_add(*out, "sweep", sweep_json(&st));
	put_u64(mem, "guest_bytes", api->vm->mem.size);
	put_u64(mem, "host_rss_bytes", rss_bytes());
	api_memory_reclaim(api, mem);
	json_object_object_add(*out, "memory", mem);
	return MHD_HTTP_OK;
}
