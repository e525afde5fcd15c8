/*
 * Single volume image: pack a directory into one read-only disk, list it,
 * unpack it. The format is in volume.h and docs/volume.md.
 *
 * Unpacking trusts nothing in the image: vol_parse() checks the whole index
 * first (checksum, counts, extents, names), and files are then created
 * relative to the output directory one component at a time with
 * O_NOFOLLOW, never replacing what is already there.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "block/volume.h"
#include "util/log.h"

#define COPY_CHUNK (1u << 20)

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t align_up(uint64_t v)
{
	return (v + VOL_ALIGN - 1) & ~(uint64_t)(VOL_ALIGN - 1);
}

static int why_fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int why_fail(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* CRC-32 of the index with the checksum field counted as zero. */
static uint32_t index_crc(const uint8_t *buf, size_t len)
{
	static const uint8_t zero[4];
	uLong c = crc32(0, Z_NULL, 0);

	c = crc32(c, buf, VOL_H_CRC);
	c = crc32(c, zero, 4);
	c = crc32(c, buf + VOL_H_CRC + 4, (uInt)(len - VOL_H_CRC - 4));
	return (uint32_t)c;
}

int vol_name_ok(const char *name)
{
	const char *p = name;

	if (!*name || *name == '/')
		return 0;
	while (*p) {
		size_t n = strcspn(p, "/");

		if (!n || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return 0;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\')
				return 0;
		p += n;
		if (*p == '/' && !*++p)
			return 0; /* a trailing slash */
	}
	return 1;
}

static int check_header(const uint8_t *b, size_t len, uint64_t disk_size, struct vol_index *vi,
			char *why, size_t wl)
{
	uint64_t need;

	if (len < VOL_HEADER_SIZE || memcmp(b + VOL_H_MAGIC, VOL_MAGIC, 8))
		return why_fail(why, wl, "not a tern volume image (bad magic)");
	if (get32(b + VOL_H_VERSION) != VOL_VERSION)
		return why_fail(why, wl, "unsupported version %u", get32(b + VOL_H_VERSION));
	if (get32(b + VOL_H_HEADER_SIZE) != VOL_HEADER_SIZE ||
	    get32(b + VOL_H_ENTRY_SIZE) != VOL_ENTRY_SIZE || get32(b + VOL_H_ALIGN) != VOL_ALIGN)
		return why_fail(why, wl, "unsupported header, entry or alignment size");
	for (int i = VOL_H_RESERVED; i < VOL_HEADER_SIZE; i++)
		if (b[i])
			return why_fail(why, wl, "reserved header bytes are not zero");
	vi->count = get32(b + VOL_H_COUNT);
	vi->index_size = get32(b + VOL_H_INDEX_SIZE);
	vi->image_size = get64(b + VOL_H_IMAGE_SIZE);
	if (vi->count > VOL_MAX_ENTRIES)
		return why_fail(why, wl, "entry count %u exceeds the limit of %u", vi->count,
				VOL_MAX_ENTRIES);
	need = VOL_HEADER_SIZE + (uint64_t)vi->count * VOL_ENTRY_SIZE;
	if (vi->index_size % VOL_ALIGN || vi->index_size < need || vi->index_size > VOL_MAX_INDEX)
		return why_fail(why, wl, "index size %u does not fit %u entries", vi->index_size,
				vi->count);
	if (len < need)
		return why_fail(why, wl, "index truncated: %zu of %llu bytes", len,
				(unsigned long long)need);
	if (vi->image_size < vi->index_size || vi->image_size > disk_size)
		return why_fail(why, wl, "image size %llu out of range (disk has %llu bytes)",
				(unsigned long long)vi->image_size, (unsigned long long)disk_size);
	if (index_crc(b, (size_t)need) != get32(b + VOL_H_CRC))
		return why_fail(why, wl, "index checksum mismatch");
	return 0;
}

static int check_entry(const uint8_t *e, const struct vol_index *vi, struct vol_entry *out,
		       uint32_t i, char *why, size_t wl)
{
	if (!memchr(e + VOL_E_NAME, 0, VOL_NAME_SIZE))
		return why_fail(why, wl, "entry %u: name not terminated", i);
	memcpy(out->name, e + VOL_E_NAME, VOL_NAME_SIZE);
	out->size = get64(e + VOL_E_SIZE);
	out->offset = get64(e + VOL_E_OFFSET);
	out->mode = get32(e + VOL_E_MODE);
	out->type = get32(e + VOL_E_TYPE);
	out->crc = get32(e + VOL_E_CRC);
	if (!vol_name_ok(out->name))
		return why_fail(why, wl,
				"entry %u: unsafe name (absolute, '..', '.' or empty part)", i);
	if (get32(e + VOL_E_RESERVED) || (out->mode & ~0777u))
		return why_fail(why, wl, "entry %u (%s): bad mode or reserved bits", i, out->name);
	if (out->type == VOL_DIR)
		return out->size || out->offset
			   ? why_fail(why, wl, "entry %u (%s): directory with data", i, out->name)
			   : 0;
	if (out->type != VOL_FILE)
		return why_fail(why, wl, "entry %u (%s): unknown type %u", i, out->name, out->type);
	if (!out->size)
		return out->offset ? why_fail(why, wl, "entry %u (%s): empty file with an offset",
					      i, out->name)
				   : 0;
	if (out->offset % VOL_ALIGN || out->offset < vi->index_size ||
	    out->offset > vi->image_size || out->size > vi->image_size - out->offset)
		return why_fail(why, wl, "entry %u (%s): extent out of range", i, out->name);
	return 0;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct vol_entry *)a)->name, ((const struct vol_entry *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
	const struct vol_entry *x = a, *y = b;

	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Duplicate names, and a file used as another entry's directory. */
static int check_names(struct vol_entry *s, uint32_t n, char *why, size_t wl)
{
	qsort(s, n, sizeof(*s), cmp_name);
	for (uint32_t i = 0; i < n; i++) {
		char prefix[VOL_NAME_SIZE];
		char *slash;

		if (i && !strcmp(s[i - 1].name, s[i].name))
			return why_fail(why, wl, "duplicate name %s", s[i].name);
		strcpy(prefix, s[i].name);
		while ((slash = strrchr(prefix, '/'))) {
			struct vol_entry key, *hit;

			*slash = 0;
			strcpy(key.name, prefix);
			hit = bsearch(&key, s, n, sizeof(*s), cmp_name);
			if (hit && hit->type != VOL_DIR)
				return why_fail(why, wl, "%s: parent %s is a file", s[i].name,
						prefix);
		}
	}
	return 0;
}

static int check_overlaps(struct vol_entry *s, uint32_t n, char *why, size_t wl)
{
	const struct vol_entry *prev = NULL;

	qsort(s, n, sizeof(*s), cmp_offset);
	for (uint32_t i = 0; i < n; i++) {
		if (s[i].type != VOL_FILE || !s[i].size)
			continue;
		if (prev && prev->offset + prev->size > s[i].offset)
			return why_fail(why, wl, "%s overlaps %s", s[i].name, prev->name);
		prev = &s[i];
	}
	return 0;
}

int vol_parse(const uint8_t *buf, size_t len, uint64_t disk_size, struct vol_index *out, char *why,
	      size_t whylen)
{
	struct vol_index vi = {0};
	struct vol_entry *sorted = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	r = check_header(buf, len, disk_size, &vi, why, whylen);
	if (r < 0)
		return r;
	vi.entries = calloc(vi.count ? vi.count : 1, sizeof(*vi.entries));
	sorted = calloc(vi.count ? vi.count : 1, sizeof(*sorted));
	if (!vi.entries || !sorted) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < vi.count; i++) {
		r = check_entry(buf + VOL_HEADER_SIZE + (size_t)i * VOL_ENTRY_SIZE, &vi,
				&vi.entries[i], i, why, whylen);
		if (r < 0)
			goto fail;
	}
	memcpy(sorted, vi.entries, vi.count * sizeof(*sorted));
	r = check_names(sorted, vi.count, why, whylen);
	if (!r)
		r = check_overlaps(sorted, vi.count, why, whylen);
	if (r < 0)
		goto fail;
	free(sorted);
	*out = vi;
	return 0;
fail:
	free(sorted);
	free(vi.entries);
	return r;
}

void vol_index_free(struct vol_index *vi)
{
	free(vi->entries);
	memset(vi, 0, sizeof(*vi));
}

/* ---- reading an image ---- */

static int read_full(int fd, void *buf, size_t len, uint64_t off)
{
	char *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO; /* shorter than it said */
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int disk_size(int fd, uint64_t *size)
{
	struct stat st;
	off_t end;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		*size = (uint64_t)st.st_size;
		return 0;
	}
	if (!S_ISBLK(st.st_mode))
		return -EINVAL;
	end = lseek(fd, 0, SEEK_END);
	if (end < 0)
		return -errno;
	*size = (uint64_t)end;
	return 0;
}

/* Open an image and parse its index; *fd stays open on success. */
static int open_image(const char *path, int *fd, struct vol_index *vi)
{
	uint8_t hdr[VOL_HEADER_SIZE], *buf = NULL;
	uint64_t size = 0;
	size_t need;
	char why[256];
	int r;

	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0) {
		r = -errno;
		pr_err("%s: %s", path, strerror(errno));
		return r;
	}
	r = disk_size(*fd, &size);
	if (r < 0) {
		pr_err("%s: not a regular file or block device", path);
		goto fail;
	}
	r = read_full(*fd, hdr, sizeof(hdr), 0);
	if (r < 0) {
		pr_err("%s: too short for a volume image", path);
		goto fail;
	}
	/* Read as many entries as the header claims, within the format's limit. */
	need = VOL_HEADER_SIZE +
	       (size_t)(get32(hdr + VOL_H_COUNT) > VOL_MAX_ENTRIES ? 0 : get32(hdr + VOL_H_COUNT)) *
		   VOL_ENTRY_SIZE;
	if (need > size)
		need = (size_t)size;
	buf = malloc(need);
	r = buf ? read_full(*fd, buf, need, 0) : -ENOMEM;
	if (!r)
		r = vol_parse(buf, need, size, vi, why, sizeof(why));
	free(buf);
	if (r == -EINVAL)
		pr_err("%s: refused: %s", path, why);
	if (r < 0)
		goto fail;
	return 0;
fail:
	close(*fd);
	*fd = -1;
	return r;
}

static void mode_string(const struct vol_entry *e, char s[11])
{
	static const char rwx[] = "rwxrwxrwx";

	s[0] = e->type == VOL_DIR ? 'd' : '-';
	for (int i = 0; i < 9; i++)
		s[i + 1] = (e->mode & (0400u >> i)) ? rwx[i] : '-';
	s[10] = 0;
}

int vol_list(const char *image, FILE *f)
{
	struct vol_index vi;
	int fd, r = open_image(image, &fd, &vi);

	if (r < 0)
		return r;
	for (uint32_t i = 0; i < vi.count; i++) {
		const struct vol_entry *e = &vi.entries[i];
		char m[11];

		mode_string(e, m);
		fprintf(f, "%s %12llu %s%s\n", m, (unsigned long long)e->size, e->name,
			e->type == VOL_DIR ? "/" : "");
	}
	close(fd);
	vol_index_free(&vi);
	return 0;
}

/* ---- unpacking ---- */

/* Make (if needed) and open directory part inside dfd, never through a symlink. */
static int enter_dir(int dfd, const char *part)
{
	int fd;

	if (mkdirat(dfd, part, 0755) < 0 && errno != EEXIST)
		return -errno;
	fd = openat(dfd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Open (creating as needed) the directory holding name; *last points at its last part. */
static int open_parent(int root, const char *name, const char **last)
{
	char part[VOL_NAME_SIZE];
	const char *p = name;
	int dfd = dup(root);

	if (dfd < 0)
		return -errno;
	while (p[strcspn(p, "/")]) {
		size_t n = strcspn(p, "/");
		int next;

		memcpy(part, p, n);
		part[n] = 0;
		next = enter_dir(dfd, part);
		close(dfd);
		if (next < 0)
			return next;
		dfd = next;
		p += n + 1;
	}
	*last = p;
	return dfd;
}

static int copy_out(int img, const struct vol_entry *e, int out, uint8_t *buf)
{
	uint64_t done = 0;
	uLong crc = crc32(0, Z_NULL, 0);

	while (done < e->size) {
		size_t n = e->size - done < COPY_CHUNK ? (size_t)(e->size - done) : COPY_CHUNK;
		int r = read_full(img, buf, n, e->offset + done);

		if (!r)
			r = write_full(out, buf, n);
		if (r < 0)
			return r;
		crc = crc32(crc, buf, (uInt)n);
		done += n;
	}
	return (uint32_t)crc == e->crc ? 0 : -EBADMSG;
}

static int unpack_one(int img, int root, const struct vol_entry *e, uint8_t *buf)
{
	const char *last = e->name;
	int dfd = open_parent(root, e->name, &last), fd, r = 0;

	if (dfd < 0)
		return dfd;
	if (e->type == VOL_DIR) {
		if (mkdirat(dfd, last, e->mode | 0700) < 0 && errno != EEXIST)
			r = -errno;
		close(dfd);
		return r;
	}
	fd = openat(dfd, last, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, e->mode);
	if (fd < 0) {
		r = -errno;
		close(dfd);
		return r;
	}
	r = copy_out(img, e, fd, buf);
	if (!r && fchmod(fd, e->mode) < 0)
		r = -errno;
	close(fd);
	close(dfd);
	return r;
}

int vol_unpack(const char *image, const char *dir)
{
	struct vol_index vi;
	uint8_t *buf = NULL;
	int img, root = -1, r = open_image(image, &img, &vi);

	if (r < 0)
		return r;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		r = -errno;
		pr_err("%s: %s", dir, strerror(errno));
		goto out;
	}
	root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	buf = malloc(COPY_CHUNK);
	if (root < 0 || !buf) {
		r = root < 0 ? -errno : -ENOMEM;
		pr_err("%s: %s", dir, strerror(-r));
		goto out;
	}
	for (uint32_t i = 0; i < vi.count && !r; i++) {
		r = unpack_one(img, root, &vi.entries[i], buf);
		if (r == -EBADMSG)
			pr_err("%s: %s: data checksum mismatch", image, vi.entries[i].name);
		else if (r < 0)
			pr_err("%s/%s: %s", dir, vi.entries[i].name, strerror(-r));
	}
out:
	free(buf);
	if (root >= 0)
		close(root);
	close(img);
	vol_index_free(&vi);
	return r;
}

/* ---- packing ---- */

struct pack_item {
	struct vol_entry e;
	char *path; /* on the host, for files */
};

struct pack_list {
	struct pack_item *v;
	uint32_t n, cap;
};

static int pack_add(struct pack_list *l, const char *rel, const char *path, const struct stat *st)
{
	struct pack_item *it;

	if (l->n >= VOL_MAX_ENTRIES) {
		pr_err("more than %u files and directories", VOL_MAX_ENTRIES);
		return -E2BIG;
	}
	if (l->n == l->cap) {
		uint32_t cap = l->cap ? l->cap * 2 : 64;
		struct pack_item *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	it = &l->v[l->n];
	memset(it, 0, sizeof(*it));
	strcpy(it->e.name, rel);
	it->e.mode = st->st_mode & 0777;
	it->e.type = S_ISDIR(st->st_mode) ? VOL_DIR : VOL_FILE;
	it->e.size = S_ISDIR(st->st_mode) ? 0 : (uint64_t)st->st_size;
	if (!S_ISDIR(st->st_mode)) {
		it->path = strdup(path);
		if (!it->path)
			return -ENOMEM;
	}
	l->n++;
	return 0;
}

static int walk(const char *host, const char *rel, struct pack_list *l)
{
	struct dirent **names;
	int n = scandir(host, &names, NULL, alphasort), r = 0;

	if (n < 0) {
		r = -errno;
		pr_err("%s: %s", host, strerror(errno));
		return r;
	}
	for (int i = 0; i < n; i++) {
		const char *nm = names[i]->d_name;
		char *path = NULL, *name = NULL;
		struct stat st;

		if (r || !strcmp(nm, ".") || !strcmp(nm, ".."))
			goto next;
		if (asprintf(&path, "%s/%s", host, nm) < 0 ||
		    asprintf(&name, "%s%s%s", rel, *rel ? "/" : "", nm) < 0) {
			r = -ENOMEM;
			goto next;
		}
		if (strlen(name) >= VOL_NAME_SIZE || !vol_name_ok(name)) {
			pr_err("%s: name too long or not portable (at most %d bytes)", path,
			       VOL_NAME_SIZE - 1);
			r = -ENAMETOOLONG;
		} else if (lstat(path, &st) < 0) {
			r = -errno;
			pr_err("%s: %s", path, strerror(errno));
		} else if (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)) {
			r = pack_add(l, name, path, &st);
			if (!r && S_ISDIR(st.st_mode))
				r = walk(path, name, l);
		} else {
			pr_warn("%s: skipped (not a regular file or directory)", path);
		}
	next:
		free(path);
		free(name);
		free(names[i]);
	}
	free(names);
	return r;
}

static int copy_in(int out, struct vol_entry *e, const char *path, uint8_t *buf)
{
	uLong crc = crc32(0, Z_NULL, 0);
	uint64_t done = 0;
	int in = open(path, O_RDONLY | O_CLOEXEC), r = 0;

	if (in < 0) {
		r = -errno;
		pr_err("%s: %s", path, strerror(errno));
		return r;
	}
	while (done < e->size && !r) {
		size_t n = e->size - done < COPY_CHUNK ? (size_t)(e->size - done) : COPY_CHUNK;
		ssize_t w;

		r = read_full(in, buf, n, done);
		if (r < 0) {
			pr_err("%s: read failed or the file shrank while packing", path);
			break;
		}
		crc = crc32(crc, buf, (uInt)n);
		w = pwrite(out, buf, n, (off_t)(e->offset + done));
		if (w != (ssize_t)n)
			r = w < 0 ? -errno : -EIO;
		done += n;
	}
	e->crc = (uint32_t)crc;
	close(in);
	return r;
}

static void put_entry(uint8_t *p, const struct vol_entry *e)
{
	memcpy(p + VOL_E_NAME, e->name, strlen(e->name));
	put64(p + VOL_E_SIZE, e->size);
	put64(p + VOL_E_OFFSET, e->offset);
	put32(p + VOL_E_MODE, e->mode);
	put32(p + VOL_E_TYPE, e->type);
	put32(p + VOL_E_CRC, e->crc);
}

static int write_index(int out, const struct pack_list *l, uint32_t index_size, uint64_t image_size)
{
	size_t used = VOL_HEADER_SIZE + (size_t)l->n * VOL_ENTRY_SIZE;
	uint8_t *b = calloc(1, index_size);
	int r = 0;

	if (!b)
		return -ENOMEM;
	memcpy(b + VOL_H_MAGIC, VOL_MAGIC, 8);
	put32(b + VOL_H_VERSION, VOL_VERSION);
	put32(b + VOL_H_HEADER_SIZE, VOL_HEADER_SIZE);
	put32(b + VOL_H_ENTRY_SIZE, VOL_ENTRY_SIZE);
	put32(b + VOL_H_COUNT, l->n);
	put32(b + VOL_H_INDEX_SIZE, index_size);
	put32(b + VOL_H_ALIGN, VOL_ALIGN);
	put64(b + VOL_H_IMAGE_SIZE, image_size);
	for (uint32_t i = 0; i < l->n; i++)
		put_entry(b + VOL_HEADER_SIZE + (size_t)i * VOL_ENTRY_SIZE, &l->v[i].e);
	put32(b + VOL_H_CRC, index_crc(b, used));
	if (pwrite(out, b, index_size, 0) != (ssize_t)index_size)
		r = -EIO;
	free(b);
	return r;
}

static int pack_write(const struct pack_list *l, const char *out_path)
{
	uint32_t index_size = (uint32_t)align_up(VOL_HEADER_SIZE + (uint64_t)l->n * VOL_ENTRY_SIZE);
	uint64_t next = index_size;
	uint8_t *buf = malloc(COPY_CHUNK);
	int out, r = 0;

	for (uint32_t i = 0; i < l->n; i++) {
		struct vol_entry *e = &l->v[i].e;

		if (e->type == VOL_FILE && e->size) {
			e->offset = next;
			next = align_up(next + e->size);
		}
	}
	out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0 || !buf) {
		r = out < 0 ? -errno : -ENOMEM;
		pr_err("%s: %s", out_path, strerror(-r));
		goto done;
	}
	for (uint32_t i = 0; i < l->n && !r; i++)
		if (l->v[i].e.type == VOL_FILE && l->v[i].e.size)
			r = copy_in(out, &l->v[i].e, l->v[i].path, buf);
	if (!r)
		r = write_index(out, l, index_size, next);
	if (!r && ftruncate(out, (off_t)next) < 0)
		r = -errno;
	if (!r && fsync(out) < 0)
		r = -errno;
	if (r < 0)
		pr_err("%s: cannot write the image: %s", out_path, strerror(-r));
done:
	if (out >= 0)
		close(out);
	free(buf);
	return r;
}

int vol_pack(const char *dir, const char *out)
{
	struct pack_list l = {0};
	struct stat st;
	int r;

	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		pr_err("%s: not a directory", dir);
		return -ENOTDIR;
	}
	r = walk(dir, "", &l);
	if (!r)
		r = pack_write(&l, out);
	for (uint32_t i = 0; i < l.n; i++)
		free(l.v[i].path);
	free(l.v);
	return r;
}
