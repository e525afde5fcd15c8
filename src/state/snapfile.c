/* The state file: header, sections, CRC trailer; the vCPU state codec. */
#include "state/snapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- little-endian helpers ---- */

static void le_store(uint8_t *p, uint64_t v, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t le_load(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static int put_le(struct dev_buf *b, uint64_t v, unsigned n)
{
	uint8_t tmp[8];

	le_store(tmp, v, n);
	return dev_buf_put(b, tmp, n);
}

int snap_put_u64(struct dev_buf *b, uint64_t v)
{
	return put_le(b, v, 8);
}

int snap_put_u32(struct dev_buf *b, uint32_t v)
{
	return put_le(b, v, 4);
}

int snap_put_u16(struct dev_buf *b, uint16_t v)
{
	return put_le(b, v, 2);
}

int snap_put_u8(struct dev_buf *b, uint8_t v)
{
	return put_le(b, v, 1);
}

const uint8_t *snap_rd_ptr(struct snap_rd *r, uint64_t n)
{
	const uint8_t *p;

	if (r->err || n > r->len - r->off) {
		r->err = true;
		return NULL;
	}
	p = r->p + r->off;
	r->off += n;
	return p;
}

static uint64_t rd_le(struct snap_rd *r, unsigned n)
{
	const uint8_t *p = snap_rd_ptr(r, n);

	return p ? le_load(p, n) : 0;
}

uint64_t snap_rd_u64(struct snap_rd *r)
{
	return rd_le(r, 8);
}

uint32_t snap_rd_u32(struct snap_rd *r)
{
	return (uint32_t)rd_le(r, 4);
}

uint16_t snap_rd_u16(struct snap_rd *r)
{
	return (uint16_t)rd_le(r, 2);
}

uint8_t snap_rd_u8(struct snap_rd *r)
{
	return (uint8_t)rd_le(r, 1);
}

void snap_rd_bytes(struct snap_rd *r, void *out, uint64_t n)
{
	const uint8_t *p = snap_rd_ptr(r, n);

	if (p)
		memcpy(out, p, n);
	else
		memset(out, 0, n);
}

/* ---- writer ---- */

static void w_put(struct snap_writer *w, const void *data, uint64_t len)
{
	if (!w->err && len) /* an empty device record may come with data == NULL */
		w->err = dev_buf_put(&w->buf, data, len);
}

static void w_le(struct snap_writer *w, uint64_t v, unsigned n)
{
	if (!w->err)
		w->err = put_le(&w->buf, v, n);
}

static void w_pad8(struct snap_writer *w)
{
	static const uint8_t zero[8];

	if (w->buf.len % 8)
		w_put(w, zero, 8 - w->buf.len % 8);
}

void snap_w_begin(struct snap_writer *w, const struct snap_header *h)
{
	uint8_t hdr[SNAP_HDR_SIZE] = {0};

	memset(w, 0, sizeof(*w));
	memcpy(hdr, SNAP_MAGIC, 8);
	le_store(hdr + 8, SNAP_VERSION, 4);
	le_store(hdr + 12, SNAP_HDR_SIZE, 4);
	le_store(hdr + 16, h->arch, 4);
	le_store(hdr + 20, h->ncpus, 4);
	le_store(hdr + 24, h->mem_size, 8);
	/* 32: file size, filled in by snap_w_finish() */
	memcpy(hdr + 40, h->backend, strnlen(h->backend, SNAP_BACKEND_LEN));
	memcpy(hdr + 48, h->id, SNAP_ID_LEN);
	w_put(w, hdr, sizeof(hdr));
}

void snap_w_section(struct snap_writer *w, uint32_t type, uint32_t index, const void *data,
		    uint64_t len)
{
	w_le(w, type, 4);
	w_le(w, index, 4);
	w_le(w, len, 8);
	w_put(w, data, len);
	w_pad8(w);
}

void snap_w_device(struct snap_writer *w, uint32_t index, const char *name, const void *data,
		   uint64_t len)
{
	size_t nl = strnlen(name, SNAP_NAME_MAX);

	w_le(w, SNAP_SEC_DEVICE, 4);
	w_le(w, index, 4);
	w_le(w, 2 + nl + len, 8);
	w_le(w, nl, 2);
	w_put(w, name, nl);
	w_put(w, data, len);
	w_pad8(w);
}

int snap_w_finish(struct snap_writer *w)
{
	uint8_t tr[SNAP_TRAILER_SIZE] = {0};
	uint64_t total = w->buf.len + SNAP_TRAILER_SIZE;

	if (w->err)
		return w->err;
	if (total > SNAP_STATE_MAX)
		return -EFBIG;
	le_store(w->buf.data + 32, total, 8);
	le_store(tr, crc32(0, w->buf.data, (uInt)w->buf.len), 4);
	memcpy(tr + 8, SNAP_END_MAGIC, 8);
	w_put(w, tr, sizeof(tr));
	return w->err;
}

static int write_all(int fd, const uint8_t *p, uint64_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (uint64_t)n;
	}
	return 0;
}

int snap_w_to_file(struct snap_writer *w, const char *path)
{
	char *tmp = NULL;
	int fd, err;

	if (w->err)
		return w->err;
	if (asprintf(&tmp, "%s.tmp", path) < 0)
		return -ENOMEM;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	err = write_all(fd, w->buf.data, w->buf.len);
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (close(fd) < 0 && !err)
		err = -errno;
	/* Renamed only when complete: a reader never sees half a state file. */
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
out:
	free(tmp);
	return err;
}

void snap_w_free(struct snap_writer *w)
{
	dev_buf_free(&w->buf);
}

/* ---- reader ---- */

static int fail(const char **why, const char *msg, int err)
{
	if (why)
		*why = msg;
	return err;
}

static int parse_header(struct snap_image *img, const char **why)
{
	const uint8_t *h = img->buf;
	struct snap_header *sh = &img->hdr;

	if (memcmp(h, SNAP_MAGIC, 8))
		return fail(why, "not a tern snapshot state file (bad magic)", -EINVAL);
	sh->version = (uint32_t)le_load(h + 8, 4);
	if (sh->version != SNAP_VERSION)
		return fail(why, "snapshot format version not supported by this tern",
			    -EPROTONOSUPPORT);
	if (le_load(h + 12, 4) != SNAP_HDR_SIZE)
		return fail(why, "bad header size", -EINVAL);
	sh->arch = (uint32_t)le_load(h + 16, 4);
	if (sh->arch != SNAP_ARCH_X86_64)
		return fail(why, "snapshot of another architecture", -EPROTONOSUPPORT);
	sh->ncpus = (uint32_t)le_load(h + 20, 4);
	sh->mem_size = le_load(h + 24, 8);
	if (le_load(h + 32, 8) != img->size)
		return fail(why, "truncated or extended (size does not match the header)", -EINVAL);
	memcpy(sh->backend, h + 40, SNAP_BACKEND_LEN);
	sh->backend[SNAP_BACKEND_LEN] = 0;
	memcpy(sh->id, h + 48, SNAP_ID_LEN);
	if (sh->ncpus < 1 || sh->ncpus > SNAP_MAX_CPUS)
		return fail(why, "bad vCPU count", -EINVAL);
	if (sh->mem_size == 0 || sh->mem_size % GM_PAGE_SIZE || sh->mem_size > SNAP_MEM_MAX)
		return fail(why, "bad memory size", -EINVAL);
	return 0;
}

static int add_device(struct snap_image *img, uint32_t index, const uint8_t *p, uint64_t len,
		      const char **why)
{
	struct snap_rd r = {.p = p, .len = len};
	struct snap_dev_rec *d;
	uint16_t nl = snap_rd_u16(&r);
	const uint8_t *name = snap_rd_ptr(&r, nl);

	if (r.err || nl == 0 || nl > SNAP_NAME_MAX || memchr(name, 0, nl))
		return fail(why, "bad device record", -EINVAL);
	if (index != img->ndevs || img->ndevs == SNAP_MAX_DEVICES)
		return fail(why, "device records out of order or too many", -EINVAL);
	d = &img->devs[img->ndevs++];
	memcpy(d->name, name, nl);
	d->name[nl] = 0;
	d->blob.data = p + r.off;
	d->blob.len = len - r.off;
	return 0;
}

static int one_section(struct snap_image *img, uint32_t type, uint32_t index, const uint8_t *p,
		       uint64_t len, const char **why)
{
	switch (type) {
	case SNAP_SEC_CPU_MODEL:
		if (len == 0 || len > SNAP_MODEL_MAX || memchr(p, 0, len) || img->cpu_model[0])
			return fail(why, "bad CPU model record", -EINVAL);
		memcpy(img->cpu_model, p, len);
		img->cpu_model[len] = 0;
		return 0;
	case SNAP_SEC_MACHINE:
	case SNAP_SEC_BACKEND:
	case SNAP_SEC_NEUTRAL: {
		struct snap_blob *b = type == SNAP_SEC_MACHINE	 ? &img->machine
				      : type == SNAP_SEC_BACKEND ? &img->backend
								 : &img->neutral;

		if (b->data)
			return fail(why, "duplicate section", -EINVAL);
		b->data = p;
		b->len = len;
		return 0;
	}
	case SNAP_SEC_VCPU:
		if (index >= img->hdr.ncpus || img->vcpu[index].data)
			return fail(why, "bad or duplicate vCPU record", -EINVAL);
		img->vcpu[index].data = p;
		img->vcpu[index].len = len;
		return 0;
	case SNAP_SEC_DEVICE:
		return add_device(img, index, p, len, why);
	}
	return fail(why, "unknown section type", -EINVAL);
}

static int parse_sections(struct snap_image *img, const char **why)
{
	struct snap_rd r = {
	    .p = img->buf, .len = img->size - SNAP_TRAILER_SIZE, .off = SNAP_HDR_SIZE};
	int err;

	img->devs = calloc(SNAP_MAX_DEVICES, sizeof(*img->devs));
	if (!img->devs)
		return -ENOMEM;
	while (r.off < r.len) {
		uint32_t type = snap_rd_u32(&r), index = snap_rd_u32(&r);
		uint64_t len = snap_rd_u64(&r);
		const uint8_t *p = snap_rd_ptr(&r, len);

		if (r.err || (len % 8 && !snap_rd_ptr(&r, 8 - len % 8)))
			return fail(why, "section runs past the end", -EINVAL);
		err = one_section(img, type, index, p, len, why);
		if (err)
			return err;
	}
	for (uint32_t i = 0; i < img->hdr.ncpus; i++)
		if (!img->vcpu[i].data)
			return fail(why, "a vCPU's state is missing", -EINVAL);
	if (!img->cpu_model[0] || !img->machine.data)
		return fail(why, "CPU model or machine description missing", -EINVAL);
	return 0;
}

int snap_image_parse(struct snap_image *img, uint8_t *buf, uint64_t size, const char **why)
{
	const uint8_t *tr;
	int err;

	memset(img, 0, sizeof(*img));
	img->buf = buf;
	img->size = size;
	if (size > SNAP_STATE_MAX)
		return fail(why, "larger than the state file size limit", -EFBIG);
	if (size < SNAP_HDR_SIZE + SNAP_TRAILER_SIZE || size % 8)
		return fail(why, "truncated (too short)", -EINVAL);
	/* The CRC first: nothing of a damaged file is looked at beyond its length. */
	tr = buf + size - SNAP_TRAILER_SIZE;
	if (memcmp(tr + 8, SNAP_END_MAGIC, 8) || memcmp(buf, SNAP_MAGIC, 8)) {
		if (!memcmp(buf, SNAP_MAGIC, 8) && le_load(buf + 32, 8) != size)
			return fail(why, "truncated (size does not match the header)", -EINVAL);
		return fail(why, "not a tern snapshot state file, or truncated", -EINVAL);
	}
	if (le_load(tr, 4) != crc32(0, buf, (uInt)(size - SNAP_TRAILER_SIZE)) || le_load(tr + 4, 4))
		return fail(why, "checksum mismatch: the file is corrupted", -EBADMSG);
	err = parse_header(img, why);
	if (!err)
		err = parse_sections(img, why);
	return err;
}

int snap_image_load(struct snap_image *img, const char *path, const char **why)
{
	struct stat st;
	uint8_t *buf;
	uint64_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;

	memset(img, 0, sizeof(*img));
	if (fd < 0)
		return fail(why, "cannot open", -errno);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return fail(why, "not a regular file", -EINVAL);
	}
	if ((uint64_t)st.st_size > SNAP_STATE_MAX) {
		close(fd);
		return fail(why, "larger than the state file size limit", -EFBIG);
	}
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (got < (uint64_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? -errno : -EIO;
			break;
		}
		got += (uint64_t)n;
	}
	close(fd);
	if (err) {
		free(buf);
		return fail(why, "read error", err);
	}
	return snap_image_parse(img, buf, got, why);
}

void snap_image_free(struct snap_image *img)
{
	free(img->buf);
	free(img->devs);
	memset(img, 0, sizeof(*img));
}

/* ---- vCPU state ---- */

#define CPU_REC_VERSION 1u

static int put_seg(struct dev_buf *b, const struct cpu_seg *s)
{
	uint8_t f[9] = {s->type, s->present, s->dpl, s->db, s->s, s->l, s->g, s->avl, s->unusable};
	int err = snap_put_u64(b, s->base);

	if (!err)
		err = snap_put_u32(b, s->limit);
	if (!err)
		err = snap_put_u16(b, s->sel);
	if (!err)
		err = dev_buf_put(b, f, sizeof(f));
	return err;
}

static void get_seg(struct snap_rd *r, struct cpu_seg *s)
{
	s->base = snap_rd_u64(r);
	s->limit = snap_rd_u32(r);
	s->sel = snap_rd_u16(r);
	s->type = snap_rd_u8(r) & 0xf;
	s->present = snap_rd_u8(r) & 1;
	s->dpl = snap_rd_u8(r) & 3;
	s->db = snap_rd_u8(r) & 1;
	s->s = snap_rd_u8(r) & 1;
	s->l = snap_rd_u8(r) & 1;
	s->g = snap_rd_u8(r) & 1;
	s->avl = snap_rd_u8(r) & 1;
	s->unusable = snap_rd_u8(r) & 1;
}

/* The u64 fields after the segments, in file order. */
#define CPU_NU64 22
static void cpu_u64_fields(struct cpu_state *st, uint64_t *f[CPU_NU64])
{
	uint64_t *list[CPU_NU64] = {
	    &st->cr0,
	    &st->cr2,
	    &st->cr3,
	    &st->cr4,
	    &st->cr8,
	    &st->efer,
	    &st->xcr0,
	    &st->apic_base,
	    &st->star,
	    &st->lstar,
	    &st->cstar,
	    &st->sfmask,
	    &st->kernel_gs_base,
	    &st->sysenter_cs,
	    &st->sysenter_esp,
	    &st->sysenter_eip,
	    &st->pat,
	    &st->tsc,
	    &st->tsc_deadline,
	    &st->misc_enable,
	    &st->kvm_system_time,
	    &st->kvm_wall_clock,
	};

	memcpy(f, list, sizeof(list));
}

int snap_cpu_encode(const struct cpu_state *st, struct dev_buf *b)
{
	const struct cpu_seg *segs[] = {&st->es, &st->cs, &st->ss,  &st->ds,
					&st->fs, &st->gs, &st->ldt, &st->tr};
	uint64_t *f[CPU_NU64];
	int err = snap_put_u32(b, CPU_REC_VERSION);

	for (int i = 0; !err && i < 16; i++)
		err = snap_put_u64(b, st->gpr[i]);
	if (!err)
		err = snap_put_u64(b, st->rip);
	if (!err)
		err = snap_put_u64(b, st->rflags);
	for (int i = 0; !err && i < 8; i++)
		err = put_seg(b, segs[i]);
	if (!err)
		err = snap_put_u64(b, st->gdt.base);
	if (!err)
		err = snap_put_u16(b, st->gdt.limit);
	if (!err)
		err = snap_put_u64(b, st->idt.base);
	if (!err)
		err = snap_put_u16(b, st->idt.limit);
	cpu_u64_fields((struct cpu_state *)st, f);
	for (int i = 0; !err && i < CPU_NU64; i++)
		err = snap_put_u64(b, *f[i]);
	if (!err)
		err = dev_buf_put(b, st->fxsave, sizeof(st->fxsave));
	if (!err)
		err = dev_buf_put(b, st->lapic, sizeof(st->lapic));
	if (!err)
		err = snap_put_u8(b, st->halted);
	if (!err)
		err = snap_put_u8(b, st->intr_shadow);
	if (!err)
		err = snap_put_u32(b, (uint32_t)st->pending_exception);
	if (!err)
		err = snap_put_u32(b, st->pending_error_code);
	return err;
}

int snap_cpu_decode(const void *data, uint64_t len, struct cpu_state *st)
{
	struct cpu_seg *segs[] = {&st->es, &st->cs, &st->ss,  &st->ds,
				  &st->fs, &st->gs, &st->ldt, &st->tr};
	struct snap_rd r = {.p = data, .len = len};
	uint64_t *f[CPU_NU64];

	memset(st, 0, sizeof(*st));
	if (snap_rd_u32(&r) != CPU_REC_VERSION)
		return -EPROTONOSUPPORT;
	for (int i = 0; i < 16; i++)
		st->gpr[i] = snap_rd_u64(&r);
	st->rip = snap_rd_u64(&r);
	st->rflags = snap_rd_u64(&r);
	for (int i = 0; i < 8; i++)
		get_seg(&r, segs[i]);
	st->gdt.base = snap_rd_u64(&r);
	st->gdt.limit = snap_rd_u16(&r);
	st->idt.base = snap_rd_u64(&r);
	st->idt.limit = snap_rd_u16(&r);
	cpu_u64_fields(st, f);
	for (int i = 0; i < CPU_NU64; i++)
		*f[i] = snap_rd_u64(&r);
	snap_rd_bytes(&r, st->fxsave, sizeof(st->fxsave));
	snap_rd_bytes(&r, st->lapic, sizeof(st->lapic));
	st->halted = snap_rd_u8(&r) & 1;
	st->intr_shadow = snap_rd_u8(&r) & 1;
	st->pending_exception = (int32_t)snap_rd_u32(&r);
	st->pending_error_code = snap_rd_u32(&r);
	if (r.err || r.off != len)
		return -EINVAL;
	if (st->pending_exception < -1 || st->pending_exception > 31)
		return -EINVAL;
	return 0;
}
