/*
 * The disks of a running VM in the control API: list them, and take live
 * snapshots of one (docs/api.md, docs/live-snapshot.md):
 *
 *   GET  /vm/disks                  every disk, with its snapshot job if any
 *   GET  /vm/disks/{id}             one disk
 *   GET  /vm/disks/{id}/snapshot    the copy job's progress
 *   POST /vm/disks/{id}/snapshot    {"mode": "copy"|"overlay", "target": PATH,
 *                                    "format": "raw"|"qcow2", "block_size": N,
 *                                    "rate": BYTES_PER_S}
 *
 * The slow parts (creating the target, flushing) run while the guest's
 * requests flow; only arming the filter or opening the overlay runs with
 * them held, and the answer says for how long ("pause_us").
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api/api_int.h"
#include "block/block.h"
#include "block/livesnap.h"
#include "virtio/virtio.h"

#define MAX_DISK_ID 255

bool api_is_disks_url(const char *url)
{
	return !strncmp(url, "/vm/disks", 9) && (url[9] == 0 || url[9] == '/');
}

/* ---- reading a disk ---- */

struct disk_view {
	char spec[PATH_MAX];
	char format[16];
	uint64_t size;
	bool filter;
	struct livesnap_status st;
	char target[PATH_MAX]; /* st.target points here */
};

static int read_view(struct blockdev **bd, void *arg)
{
	struct disk_view *v = arg;
	struct blockdev *b = *bd;

	v->filter = livesnap_is_filter(b);
	if (v->filter) {
		livesnap_get_status(b, &v->st);
		snprintf(v->target, sizeof(v->target), "%s", v->st.target);
		v->st.target = v->target;
		b = livesnap_base(b);
	}
	snprintf(v->spec, sizeof(v->spec), "%s", b->spec ? b->spec : "");
	snprintf(v->format, sizeof(v->format), "%s", b->ops->format);
	v->size = b->size;
	return 0;
}

static const char *state_str(enum livesnap_state s)
{
	return s == LIVESNAP_DONE ? "done" : s == LIVESNAP_FAILED ? "failed" : "copying";
}

static struct json_object *job_json(const struct livesnap_status *st)
{
	struct json_object *o = json_object_new_object();
	char secs[32];

	if (!o)
		return NULL;
	snprintf(secs, sizeof(secs), "%.3f", st->seconds);
	json_object_object_add(o, "mode", json_object_new_string("copy"));
	json_object_object_add(o, "target", json_object_new_string(st->target));
	json_object_object_add(o, "state", json_object_new_string(state_str(st->state)));
	if (st->error)
		json_object_object_add(o, "error", json_object_new_string(strerror(-st->error)));
	json_object_object_add(o, "block_size", json_object_new_uint64(st->block_size));
	json_object_object_add(o, "blocks", json_object_new_uint64(st->blocks));
	json_object_object_add(o, "copied", json_object_new_uint64(st->copied));
	json_object_object_add(o, "copied_before_write", json_object_new_uint64(st->cbw));
	json_object_object_add(o, "bytes_written", json_object_new_uint64(st->bytes));
	json_object_object_add(o, "seconds", json_object_new_double_s(st->seconds, secs));
	return o;
}

static struct json_object *disk_json(unsigned id, struct vblk *vb)
{
	struct disk_view *v = calloc(1, sizeof(*v));
	struct json_object *o;

	if (!v)
		return NULL;
	virtio_blk_call(vb, false, read_view, v, NULL);
	o = json_object_new_object();
	if (o) {
		json_object_object_add(o, "id", json_object_new_int((int)id));
		json_object_object_add(o, "path", json_object_new_string(v->spec));
		json_object_object_add(o, "format", json_object_new_string(v->format));
		json_object_object_add(o, "size", json_object_new_uint64(v->size));
		json_object_object_add(o, "readonly",
				       json_object_new_boolean(virtio_blk_readonly(vb)));
		json_object_object_add(o, "snapshot", v->filter ? job_json(&v->st) : NULL);
	}
	free(v);
	return o;
}

/* ---- taking a snapshot ---- */

struct snap_req {
	const char *mode, *target, *format;
	uint32_t block_size;
	uint64_t rate;
	struct livesnap *ls;  /* copy: prepared before the hold */
	struct blockdev *old; /* overlay: the device replaced, closed after */
};

/* A finished copy filter is taken off before the next snapshot; a running one refuses. */
static int unstack(struct blockdev **bd)
{
	struct blockdev *base;

	if (!livesnap_is_filter(*bd))
		return 0;
	base = livesnap_unwrap(*bd);
	if (!base)
		return -EBUSY;
	*bd = base;
	return 0;
}

static int arm_copy(struct blockdev **bd, void *arg)
{
	struct snap_req *sr = arg;
	struct blockdev *f;
	int r = unstack(bd);

	if (r == 0)
		r = livesnap_arm(sr->ls, *bd, &f);
	if (r < 0)
		return r;
	*bd = f;
	return 0;
}

static int switch_overlay(struct blockdev **bd, void *arg)
{
	struct snap_req *sr = arg;
	struct blockdev *ov;
	int r = unstack(bd);

	if (r == 0)
		r = livesnap_overlay_open(*bd, sr->target, &ov);
	if (r < 0)
		return r;
	sr->old = *bd;
	*bd = ov;
	return 0;
}

/* Before the hold: the disk is idle enough to snapshot, and the overlay file exists. */
static int before_hold(struct blockdev **bd, void *arg)
{
	struct snap_req *sr = arg;
	struct blockdev *b = *bd;
	int r;

	if (livesnap_is_filter(b)) {
		struct livesnap_status st;

		livesnap_get_status(b, &st);
		if (st.state == LIVESNAP_COPYING)
			return -EBUSY;
		b = livesnap_base(b);
	}
	if (!strcmp(sr->mode, "copy"))
		return livesnap_prepare(b->size,
					&(struct livesnap_opts){.target = sr->target,
								.format = sr->format,
								.block_size = sr->block_size,
								.rate = sr->rate},
					&sr->ls);
	r = livesnap_overlay_create(b, sr->target);
	/* Write back what the image caches now, so the flush with requests held is short. */
	return r < 0 ? r : blk_flush(b);
}

static int parse_snap_req(struct json_object *body, struct snap_req *sr, struct json_object **out)
{
	if (!body)
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "expected {\"mode\": \"copy\"|\"overlay\", \"target\": PATH}");
	json_object_object_foreach(body, key, val)
	{
		bool str = json_object_is_type(val, json_type_string);

		if (!strcmp(key, "mode") && str)
			sr->mode = json_object_get_string(val);
		else if (!strcmp(key, "target") && str)
			sr->target = json_object_get_string(val);
		else if (!strcmp(key, "format") && str)
			sr->format = json_object_get_string(val);
		else if (!strcmp(key, "block_size") && json_object_is_type(val, json_type_int))
			sr->block_size = (uint32_t)json_object_get_uint64(val);
		else if (!strcmp(key, "rate") && json_object_is_type(val, json_type_int))
			sr->rate = json_object_get_uint64(val);
		else
			return api_error(out, MHD_HTTP_BAD_REQUEST,
					 "unknown or mistyped field '%.64s'", key);
	}
	if (!sr->mode || (strcmp(sr->mode, "copy") && strcmp(sr->mode, "overlay")))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "mode must be \"copy\" or \"overlay\"");
	if (!sr->target || !*sr->target || strlen(sr->target) >= PATH_MAX)
		return api_error(out, MHD_HTTP_BAD_REQUEST, "target must name a new file");
	if (!strcmp(sr->mode, "overlay") && (sr->format || sr->block_size || sr->rate))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "format, block_size and rate are for mode \"copy\"");
	if (sr->format && strcmp(sr->format, "raw") && strcmp(sr->format, "qcow2"))
		return api_error(out, MHD_HTTP_BAD_REQUEST, "format must be \"raw\" or \"qcow2\"");
	if (json_object_object_get_ex(body, "block_size", NULL) &&
	    (sr->block_size < LIVESNAP_MIN_BLOCK || sr->block_size > LIVESNAP_MAX_BLOCK ||
	     (sr->block_size & (sr->block_size - 1))))
		return api_error(out, MHD_HTTP_BAD_REQUEST,
				 "block_size must be a power of two from 4 KiB to 16 MiB");
	return 0;
}

static int snap_error(struct json_object **out, int err, const char *target)
{
	int status = err == -EBUSY	  ? MHD_HTTP_CONFLICT
		     : err == -EEXIST	  ? MHD_HTTP_CONFLICT
		     : err == -EOPNOTSUPP ? MHD_HTTP_CONFLICT
		     : err == -EROFS	  ? MHD_HTTP_CONFLICT
		     : err == -EINVAL	  ? MHD_HTTP_BAD_REQUEST
		     : err == -ENOENT	  ? MHD_HTTP_BAD_REQUEST
		     : err == -EACCES	  ? MHD_HTTP_FORBIDDEN
					  : MHD_HTTP_INTERNAL_SERVER_ERROR;

	if (err == -EBUSY)
		return api_error(out, status, "a copy snapshot of this disk is still running");
	if (err == -EOPNOTSUPP)
		return api_error(out, status,
				 "this disk's backend cannot be named as a backing file");
	return api_error(out, status, "snapshot to %.256s: %s", target, strerror(-err));
}

static int take_snapshot(unsigned id, struct vblk *vb, struct json_object *body,
			 struct json_object **out)
{
	struct snap_req sr = {0};
	bool copy;
	uint64_t held = 0;
	char us[32];
	int r, status = parse_snap_req(body, &sr, out);

	if (status)
		return status;
	copy = !strcmp(sr.mode, "copy");
	if (!copy && virtio_blk_readonly(vb))
		return snap_error(out, -EROFS, sr.target);
	r = virtio_blk_call(vb, false, before_hold, &sr, NULL);
	if (r < 0)
		return snap_error(out, r, sr.target);
	r = virtio_blk_call(vb, true, copy ? arm_copy : switch_overlay, &sr, &held);
	if (r < 0) {
		if (copy)
			livesnap_discard(sr.ls);
		else
			unlink(sr.target);
		return snap_error(out, r, sr.target);
	}
	blk_close(sr.old); /* overlay: the old image is the overlay's backing file now */
	*out = disk_json(id, vb);
	if (!*out)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	snprintf(us, sizeof(us), "%.1f", (double)held / 1e3);
	json_object_object_add(*out, "pause_us", json_object_new_double_s((double)held / 1e3, us));
	json_object_object_add(*out, "mode", json_object_new_string(sr.mode));
	json_object_object_add(*out, "target", json_object_new_string(sr.target));
	return MHD_HTTP_OK;
}

/* ---- routing ---- */

/* "/vm/disks/ID[/snapshot]": the id and whether the snapshot resource is meant. */
static int parse_disk_url(const char *url, unsigned *id, bool *snap)
{
	const char *p = url + strlen("/vm/disks/");
	char *end;
	unsigned long n;

	if (*p < '0' || *p > '9')
		return -1;
	n = strtoul(p, &end, 10);
	if (n > MAX_DISK_ID || (end - p > 1 && *p == '0'))
		return -1;
	*id = (unsigned)n;
	*snap = !strcmp(end, "/snapshot");
	return *snap || !*end ? 0 : -1;
}

static int list_disks(struct api *api, struct json_object **out)
{
	struct vblk *vb;

	*out = json_object_new_array();
	if (!*out)
		return api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	for (unsigned i = 0; i <= MAX_DISK_ID && (vb = virtio_blk_find(api->vm, i)); i++)
		json_object_array_add(*out, disk_json(i, vb));
	return MHD_HTTP_OK;
}

int api_disks(struct api *api, const char *method, const char *url, struct json_object *body,
	      struct json_object **out, const char **allow)
{
	bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST") || !strcmp(method, "PUT");
	struct vblk *vb;
	unsigned id;
	bool snap;

	if (!strcmp(url, "/vm/disks") || !strcmp(url, "/vm/disks/")) {
		if (!get) {
			*allow = "GET";
			return api_error(out, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET on /vm/disks");
		}
		return list_disks(api, out);
	}
	if (parse_disk_url(url, &id, &snap) < 0)
		return api_error(out, MHD_HTTP_NOT_FOUND, "no such endpoint: %.128s", url);
	vb = virtio_blk_find(api->vm, id);
	if (!vb)
		return api_error(out, MHD_HTTP_NOT_FOUND, "no disk %u", id);
	if (get) {
		*out = disk_json(id, vb);
		return *out ? MHD_HTTP_OK
			    : api_error(out, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
	}
	if (snap && post)
		return take_snapshot(id, vb, body, out);
	*allow = snap ? "GET, PUT, POST" : "GET";
	return api_error(out, MHD_HTTP_METHOD_NOT_ALLOWED, "%.16s is not allowed on %.128s (%s)",
			 method, url, *allow);
}
