#include "vmm/mem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int gm_init(struct guest_mem *gm, uint64_t size)
{
	memset(gm, 0, sizeof(*gm));
	gm->fd = -1;
	if (size == 0 || size % GM_PAGE_SIZE)
		return -EINVAL;
	gm->size = size;
	gm->low_size = size < MEM_HOLE_START ? size : MEM_HOLE_START;
	gm->high_size = size - gm->low_size;
	gm->fd = memfd_create("tern-guest-ram", MFD_CLOEXEC);
	if (gm->fd < 0)
		return -errno;
	if (ftruncate(gm->fd, (off_t)size) < 0)
		goto fail;
	gm->hva = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, gm->fd, 0);
	if (gm->hva == MAP_FAILED) {
		gm->hva = NULL;
		goto fail;
	}
	/* Huge pages where the host allows; a hint, failure is harmless. */
	madvise(gm->hva, size, MADV_HUGEPAGE);
	gm->npages = size >> GM_PAGE_SHIFT;
	gm->dirty = calloc((gm->npages + 63) / 64, sizeof(uint64_t));
	if (!gm->dirty)
		goto fail;
	return 0;
fail: {
	int err = errno ? -errno : -ENOMEM;
	gm_destroy(gm);
	return err;
}
}

void gm_destroy(struct guest_mem *gm)
{
	if (gm->hva)
		munmap(gm->hva, gm->size);
	if (gm->fd >= 0)
		close(gm->fd);
	free(gm->dirty);
	memset(gm, 0, sizeof(*gm));
	gm->fd = -1;
}

/* Offset into hva of [gpa, gpa+len), or UINT64_MAX if not wholly inside one region. */
static uint64_t gm_offset(const struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	if (gpa + len < gpa)
		return UINT64_MAX;
	if (gpa + len <= gm->low_size)
		return gpa;
	if (gpa >= MEM_HIGH_START && gpa - MEM_HIGH_START + len <= gm->high_size)
		return gm->low_size + (gpa - MEM_HIGH_START);
	return UINT64_MAX;
}

uint64_t gm_page_index(const struct guest_mem *gm, uint64_t gpa)
{
	uint64_t off = gm_offset(gm, gpa, 1);

	return off == UINT64_MAX ? off : off >> GM_PAGE_SHIFT;
}

void *gm_ptr(struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	uint64_t off = gm_offset(gm, gpa, len);

	if (off == UINT64_MAX || (len == 0 && off >= gm->size))
		return NULL;
	return gm->hva + off;
}

void gm_mark_dirty(struct guest_mem *gm, uint64_t off, uint64_t len)
{
	uint64_t first, last;

	if (len == 0)
		return;
	first = off >> GM_PAGE_SHIFT;
	last = (off + len - 1) >> GM_PAGE_SHIFT;
	for (uint64_t p = first; p <= last; p++) {
		uint64_t bit = 1ull << (p % 64);

		if (!(__atomic_load_n(&gm->dirty[p / 64], __ATOMIC_RELAXED) & bit))
			__atomic_fetch_or(&gm->dirty[p / 64], bit, __ATOMIC_RELAXED);
		if (gm->code_pages &&
		    (__atomic_load_n(&gm->code_pages[p / 64], __ATOMIC_RELAXED) & bit))
			gm->code_write(gm->code_opaque, p);
	}
}

bool gm_test_clear_dirty(struct guest_mem *gm, uint64_t page_index)
{
	uint64_t bit = 1ull << (page_index % 64);

	return __atomic_fetch_and(&gm->dirty[page_index / 64], ~bit, __ATOMIC_RELAXED) & bit;
}

void *gm_ptr_w(struct guest_mem *gm, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gm_ptr(gm, gpa, len);

	if (p)
		gm_mark_dirty(gm, (uint64_t)(p - gm->hva), len);
	return p;
}

int gm_read(struct guest_mem *gm, uint64_t gpa, void *buf, uint64_t len)
{
	void *p = gm_ptr(gm, gpa, len);

	if (!p)
		return -EFAULT;
	memcpy(buf, p, len);
	return 0;
}

int gm_write(struct guest_mem *gm, uint64_t gpa, const void *buf, uint64_t len)
{
	void *p = gm_ptr_w(gm, gpa, len);

	if (!p)
		return -EFAULT;
	memcpy(p, buf, len);
	return 0;
}
