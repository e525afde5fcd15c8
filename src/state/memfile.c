/*
 * The memory file: a 4 KiB header page, then guest RAM as it lies in the
 * host mapping (low RAM, then RAM above 4 GiB). Only non-zero pages are
 * written; the rest stay holes, so the file costs what the guest really
 * uses and SEEK_DATA/SEEK_HOLE walk it quickly.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "state/state_int.h"

/* Header page layout: magic, version, data offset, RAM size, snapshot id, CRC of the above. */
#define MEM_HDR_CRC_OFF 48

bool snap_page_is_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;

	for (unsigned i = 0; i < GM_PAGE_SIZE / 8; i += 8) {
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] |
		    q[i + 7])
			return false;
	}
	return true;
}

int snap_pwrite_all(int fd, const uint8_t *p, uint64_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, p, len > (1u << 30) ? (1u << 30) : len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (uint64_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static void mem_header(uint8_t *h, uint64_t size, const uint8_t id[SNAP_ID_LEN])
{
	uint32_t crc;

	memset(h, 0, GM_PAGE_SIZE);
	memcpy(h, SNAP_MEM_MAGIC, 8);
	for (int i = 0; i < 4; i++)
		h[8 + i] = (uint8_t)(SNAP_MEM_VERSION >> (8 * i));
	for (int i = 0; i < 8; i++) {
		h[16 + i] = (uint8_t)(SNAP_MEM_DATA_OFF >> (8 * i));
		h[24 + i] = (uint8_t)(size >> (8 * i));
	}
	memcpy(h + 32, id, SNAP_ID_LEN);
	crc = (uint32_t)crc32(0, h, MEM_HDR_CRC_OFF);
	for (int i = 0; i < 4; i++)
		h[MEM_HDR_CRC_OFF + i] = (uint8_t)(crc >> (8 * i));
}

/* Runs of non-zero pages in [first, end) (16 MiB at most) become one write each. */
int snap_mem_write_range(int fd, const struct guest_mem *gm, uint64_t first, uint64_t end)
{
	uint64_t pg = first;

	while (pg < end) {
		uint64_t run = pg;
		int err;

		if (snap_page_is_zero(gm->hva + (pg << GM_PAGE_SHIFT))) {
			pg++;
			continue;
		}
		while (pg < end && pg - run < 4096 &&
		       !snap_page_is_zero(gm->hva + (pg << GM_PAGE_SHIFT)))
			pg++;
		err = snap_pwrite_all(fd, gm->hva + (run << GM_PAGE_SHIFT),
				      (pg - run) << GM_PAGE_SHIFT,
				      SNAP_MEM_DATA_OFF + (run << GM_PAGE_SHIFT));
		if (err)
			return err;
	}
	return 0;
}

/*
 * With a memfd behind guest RAM, its holes (never touched, or released by
 * reclaim) are skipped without reading them: reading would allocate them.
 * Otherwise (a restored VM's private mapping) every page is looked at.
 */
int snap_mem_write_pages(int fd, const struct guest_mem *gm)
{
	off_t off = 0, end;

	if (gm->fd < 0 || lseek(gm->fd, 0, SEEK_HOLE) < 0)
		return snap_mem_write_range(fd, gm, 0, gm->npages);
	while ((uint64_t)off < gm->size) {
		int err;

		off = lseek(gm->fd, off, SEEK_DATA);
		if (off < 0)
			return errno == ENXIO ? 0 : -errno;
		end = lseek(gm->fd, off, SEEK_HOLE);
		if (end < 0)
			return -errno;
		if ((uint64_t)end > gm->size)
			end = (off_t)gm->size;
		err = snap_mem_write_range(fd, gm, (uint64_t)off >> GM_PAGE_SHIFT,
					   ((uint64_t)end + GM_PAGE_SIZE - 1) >> GM_PAGE_SHIFT);
		if (err)
			return err;
		off = end;
	}
	return 0;
}

int snap_mem_create(struct snap_mem_out *o, const char *path, uint64_t size,
		    const uint8_t id[SNAP_ID_LEN])
{
	uint8_t *hdr = malloc(GM_PAGE_SIZE);
	int err;

	o->fd = -1;
	o->path = path;
	o->tmp = NULL;
	if (!hdr || asprintf(&o->tmp, "%s.tmp", path) < 0) {
		o->tmp = NULL;
		err = -ENOMEM;
		goto out;
	}
	o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (o->fd < 0) {
		err = -errno;
		goto out;
	}
	/* Size first, all holes; then only the pages with data. */
	err = ftruncate(o->fd, (off_t)(SNAP_MEM_DATA_OFF + size)) < 0 ? -errno : 0;
	mem_header(hdr, size, id);
	if (!err)
		err = snap_pwrite_all(o->fd, hdr, GM_PAGE_SIZE, 0);
out:
	free(hdr);
	if (err)
		snap_mem_abort(o);
	return err;
}

void snap_mem_abort(struct snap_mem_out *o)
{
	if (o->fd >= 0)
		close(o->fd);
	if (o->tmp)
		unlink(o->tmp);
	free(o->tmp);
	o->fd = -1;
	o->tmp = NULL;
}

int snap_fsync_dir(const char *path)
{
	char *copy = strdup(path);
	int fd, err = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return err;
}

int snap_mem_commit(struct snap_mem_out *o)
{
	int err = fdatasync(o->fd) < 0 ? -errno : 0;

	if (close(o->fd) < 0 && !err)
		err = -errno;
	o->fd = -1;
	if (!err && rename(o->tmp, o->path) < 0)
		err = -errno;
	if (!err)
		err = snap_fsync_dir(o->path);
	if (err)
		snap_mem_abort(o);
	free(o->tmp);
	o->tmp = NULL;
	return err;
}

int snap_mem_write(struct guest_mem *gm, const char *path, const uint8_t id[SNAP_ID_LEN])
{
	struct snap_mem_out o;
	int err = snap_mem_create(&o, path, gm->size, id);

	if (!err)
		err = snap_mem_write_pages(o.fd, gm);
	if (err) {
		snap_mem_abort(&o);
		return err;
	}
	return snap_mem_commit(&o);
}

static int check_header(const uint8_t *h, const uint8_t id[SNAP_ID_LEN], uint64_t mem_size,
			const char **why)
{
	uint32_t crc = 0;
	uint64_t off = 0, size = 0;

	for (int i = 0; i < 4; i++)
		crc |= (uint32_t)h[MEM_HDR_CRC_OFF + i] << (8 * i);
	for (int i = 0; i < 8; i++) {
		off |= (uint64_t)h[16 + i] << (8 * i);
		size |= (uint64_t)h[24 + i] << (8 * i);
	}
	*why = "not a tern snapshot memory file";
	if (memcmp(h, SNAP_MEM_MAGIC, 8))
		return -EINVAL;
	*why = "memory file header is corrupted";
	if (crc != (uint32_t)crc32(0, h, MEM_HDR_CRC_OFF))
		return -EBADMSG;
	*why = "memory file format version not supported";
	if (h[8] != SNAP_MEM_VERSION || h[9] || h[10] || h[11] || off != SNAP_MEM_DATA_OFF)
		return -EPROTONOSUPPORT;
	*why = "memory file belongs to another snapshot";
	if (memcmp(h + 32, id, SNAP_ID_LEN) || size != mem_size)
		return -EINVAL;
	return 0;
}

int snap_mem_open(const char *path, const uint8_t id[SNAP_ID_LEN], uint64_t mem_size,
		  const char **why)
{
	uint8_t hdr[64];
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err;
	ssize_t n;

	*why = "cannot open the memory file";
	if (fd < 0)
		return -errno;
	err = -EINVAL;
	*why = "memory file is not a regular file";
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		goto fail;
	n = pread(fd, hdr, sizeof(hdr), 0);
	*why = "memory file is truncated";
	if (n != (ssize_t)sizeof(hdr))
		goto fail;
	err = check_header(hdr, id, mem_size, why);
	if (err)
		goto fail;
	err = -EINVAL;
	*why = "memory file is truncated";
	if ((uint64_t)st.st_size != SNAP_MEM_DATA_OFF + mem_size)
		goto fail;
	return fd;
fail:
	close(fd);
	return err;
}
