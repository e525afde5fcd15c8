/*
 * Linux x86 boot protocol: bzImage + initrd loader, zero page, e820, and the
 * 64-bit entry state. Offsets are those of Documentation/arch/x86/boot.rst
 * and struct boot_params; the image is untrusted, so every field read from
 * it is checked before use.
 */
#include "arch/x86/boot.h"

#include <elf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "arch/x86/kaslr.h"
#include "arch/x86/kpayload.h"
#include "util/log.h"

/* Setup header (offsets into the image file and into boot_params alike). */
#define HDR_SETUP_SECTS 0x1f1
#define HDR_BOOT_FLAG 0x1fe
#define HDR_JUMP_END 0x201 /* header ends at 0x202 + this byte */
#define HDR_MAGIC 0x202
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_XLOADFLAGS 0x236
#define HDR_CMDLINE_SIZE 0x238
#define HDR_PAYLOAD_OFFSET 0x248
#define HDR_PAYLOAD_LENGTH 0x24c
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define HDR_MIN_FILE 0x268 /* an image must hold the header up to init_size */
#define HDR_MAX_END 0x290  /* end of struct setup_header inside boot_params */

/* boot_params fields outside the header. */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128
#define BP_SIZE 0x1000

#define LOADFLAG_LOADED_HIGH 0x01
#define LOADFLAG_KASLR 0x02
#define XLF_KERNEL_64 0x01
#define BOOT_PROTOCOL_MIN 0x020c /* 2.12: xloadflags, 64-bit entry */

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static void wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void wr64(uint8_t *p, uint64_t v)
{
	wr32(p, (uint32_t)v);
	wr32(p + 4, (uint32_t)(v >> 32));
}

static int e820_add(struct e820_entry *e, int n, int max, uint64_t addr, uint64_t size,
		    uint32_t type)
{
	if (size == 0)
		return n;
	if (n >= max)
		return -ENOSPC;
	e[n] = (struct e820_entry){.addr = addr, .size = size, .type = type};
	return n + 1;
}

int boot_e820(const struct guest_mem *gm, struct e820_entry *e, int max)
{
	int n = 0;

	if (gm->low_size < ACPI_TABLES_END)
		return -ENOMEM;
	n = e820_add(e, n, max, 0, BOOT_EBDA_START, E820_RAM);
	if (n >= 0)
		n = e820_add(e, n, max, BOOT_EBDA_START, 0xa0000 - BOOT_EBDA_START, E820_RESERVED);
	/* The ACPI tables live in the old BIOS area; the kernel must leave them alone. */
	if (n >= 0)
		n = e820_add(e, n, max, ACPI_TABLES_BASE, ACPI_TABLES_END - ACPI_TABLES_BASE,
			     E820_RESERVED);
	if (n >= 0)
		n = e820_add(e, n, max, ACPI_TABLES_END, gm->low_size - ACPI_TABLES_END, E820_RAM);
	if (n >= 0)
		n = e820_add(e, n, max, MEM_HIGH_START, gm->high_size, E820_RAM);
	return n;
}

struct bzimage {
	const uint8_t *k;
	size_t ksize;
	const uint8_t *hdr; /* setup header source: the image's, or one made for a vmlinux */
	uint16_t version;
	uint64_t setup_size; /* real-mode part, skipped: we enter at the 64-bit entry */
	uint64_t pm_size;    /* protected-mode kernel bytes */
	uint64_t init_size;
	uint64_t pref_address;
	uint32_t initrd_addr_max;
	uint32_t cmdline_size;
};

static int bzimage_parse(const uint8_t *k, size_t ksize, struct bzimage *bz)
{
	unsigned setup_sects;

	if (ksize < HDR_MIN_FILE || rd16(k + HDR_BOOT_FLAG) != 0xaa55 ||
	    memcmp(k + HDR_MAGIC, "HdrS", 4)) {
		pr_err("kernel: not a bzImage (no setup header); pass a bzImage such as vmlinuz");
		return -ENOEXEC;
	}
	bz->k = k;
	bz->ksize = ksize;
	bz->hdr = k;
	bz->version = rd16(k + HDR_VERSION);
	if (bz->version < BOOT_PROTOCOL_MIN) {
		pr_err("kernel: boot protocol %u.%02u is too old (need 2.12 or newer)",
		       bz->version >> 8, bz->version & 0xff);
		return -ENOEXEC;
	}
	if (!(rd16(k + HDR_XLOADFLAGS) & XLF_KERNEL_64) ||
	    !(k[HDR_LOADFLAGS] & LOADFLAG_LOADED_HIGH)) {
		pr_err("kernel: not a 64-bit bzImage with a 64-bit entry point");
		return -ENOEXEC;
	}
	setup_sects = k[HDR_SETUP_SECTS] ? k[HDR_SETUP_SECTS] : 4;
	bz->setup_size = (uint64_t)(setup_sects + 1) * 512;
	if (bz->setup_size >= ksize) {
		pr_err("kernel: truncated bzImage (setup claims %llu bytes of %zu)",
		       (unsigned long long)bz->setup_size, ksize);
		return -ENOEXEC;
	}
	bz->pm_size = ksize - bz->setup_size;
	bz->init_size = rd32(k + HDR_INIT_SIZE);
	if (bz->init_size < bz->pm_size)
		bz->init_size = bz->pm_size;
	bz->pref_address = rd64(k + HDR_PREF_ADDRESS);
	bz->initrd_addr_max = rd32(k + HDR_INITRD_ADDR_MAX);
	bz->cmdline_size = rd32(k + HDR_CMDLINE_SIZE);
	return 0;
}

/* Load address: the kernel's preferred one when it is sane, else 16 MiB. */
static int bzimage_place(const struct bzimage *bz, const struct guest_mem *gm, uint64_t *addr)
{
	uint64_t a = bz->pref_address;

	if (a < ACPI_TABLES_END || a % GM_PAGE_SIZE || a >= gm->low_size ||
	    gm->low_size - a < bz->init_size)
		a = BOOT_KERNEL_DEFAULT_ADDR;
	if (a >= gm->low_size || gm->low_size - a < bz->init_size) {
		pr_err("kernel: needs %llu MiB from 0x%llx but the guest has %llu MiB below 3 GiB; "
		       "raise --memory",
		       (unsigned long long)(bz->init_size >> 20), (unsigned long long)a,
		       (unsigned long long)(gm->low_size >> 20));
		return -ENOMEM;
	}
	*addr = a;
	return 0;
}

/* The initrd goes as high as allowed, below 4 GiB, above the kernel's working area. */
static int initrd_place(const struct bzimage *bz, const struct guest_mem *gm, uint64_t kend,
			size_t isize, uint64_t *addr)
{
	uint64_t top = gm->low_size;
	uint64_t a;

	if (bz->initrd_addr_max && (uint64_t)bz->initrd_addr_max + 1 < top)
		top = (uint64_t)bz->initrd_addr_max + 1;
	if (isize > top || ((top - isize) & ~(GM_PAGE_SIZE - 1)) < kend) {
		pr_err(
		    "initrd: %zu MiB do not fit in guest memory above the kernel; raise --memory",
		    isize >> 20);
		return -ENOMEM;
	}
	a = (top - isize) & ~(GM_PAGE_SIZE - 1);
	*addr = a;
	return 0;
}

static int zero_page_fill(uint8_t *bp, const struct bzimage *bz, const struct guest_mem *gm,
			  const struct boot_info *bi, uint64_t rsdp)
{
	struct e820_entry e[BP_E820_MAX];
	size_t hdr_end = 0x202 + (size_t)bz->hdr[HDR_JUMP_END];
	int n;

	memset(bp, 0, BP_SIZE);
	if (hdr_end > HDR_MAX_END)
		hdr_end = HDR_MAX_END;
	memcpy(bp + HDR_SETUP_SECTS, bz->hdr + HDR_SETUP_SECTS, hdr_end - HDR_SETUP_SECTS);
	bp[HDR_TYPE_OF_LOADER] = 0xff;
	wr32(bp + HDR_CMD_LINE_PTR, (uint32_t)bi->cmdline);
	wr32(bp + BP_EXT_CMD_LINE_PTR, (uint32_t)(bi->cmdline >> 32));
	wr32(bp + HDR_RAMDISK_IMAGE, (uint32_t)bi->initrd_addr);
	wr32(bp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(bi->initrd_addr >> 32));
	wr32(bp + HDR_RAMDISK_SIZE, (uint32_t)bi->initrd_size);
	wr32(bp + BP_EXT_RAMDISK_SIZE, (uint32_t)(bi->initrd_size >> 32));
	wr64(bp + BP_ACPI_RSDP_ADDR, rsdp);
	n = boot_e820(gm, e, BP_E820_MAX);
	if (n < 0)
		return n;
	bp[BP_E820_ENTRIES] = (uint8_t)n;
	memcpy(bp + BP_E820_TABLE, e, (size_t)n * sizeof(e[0]));
	return 0;
}

static int cmdline_place(struct guest_mem *gm, const struct bzimage *bz, const char *cmdline,
			 struct boot_info *bi)
{
	size_t len = strlen(cmdline);
	uint64_t max = bz->cmdline_size ? bz->cmdline_size : 255;

	if (max > BOOT_CMDLINE_MAX - 1)
		max = BOOT_CMDLINE_MAX - 1;
	if (len > max) {
		pr_err("kernel command line is %zu bytes; this kernel takes at most %llu", len,
		       (unsigned long long)max);
		return -E2BIG;
	}
	bi->cmdline = BOOT_CMDLINE_ADDR;
	return gm_write(gm, BOOT_CMDLINE_ADDR, cmdline, len + 1);
}

/* ---- vmlinux: an ELF kernel entered at startup_64 -------------------------------- */

#define ELF_HEAD_MAX 4096 /* the ELF and program headers must sit in the first 4 KiB */
#define ELF_MAX_LOADS 16

/* A vmlinux read front to back: a file, or a payload while it decompresses. */
struct elf_loader {
	struct guest_mem *gm;
	uint64_t size; /* bytes of the whole ELF file */
	uint64_t off;  /* bytes seen so far */
	uint8_t head[ELF_HEAD_MAX];
	size_t head_len;
	bool parsed;
	Elf64_Phdr load[ELF_MAX_LOADS];
	unsigned nload;
	uint64_t entry, lo, hi; /* physical entry and extent */
	uint64_t file_end;	/* end of the ELF file proper; a payload's relocations follow */
	uint8_t *tail;		/* the bytes after file_end, or NULL */
	size_t tail_len;
};

#define ELF_TAIL_MAX (16u << 20) /* relocation tables are a few hundred KiB */

static bool is_elf(const uint8_t *k, size_t ksize)
{
	return ksize >= sizeof(Elf64_Ehdr) && !memcmp(k, ELFMAG, SELFMAG);
}

static int elf_check(const uint8_t *k, size_t len)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)k;

	if (!is_elf(k, len) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_ident[EI_DATA] != ELFDATA2LSB || eh->e_machine != EM_X86_64 ||
	    eh->e_type != ET_EXEC || eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 ||
	    eh->e_phoff > len || (len - eh->e_phoff) / sizeof(Elf64_Phdr) < eh->e_phnum) {
		pr_err("kernel: not a 64-bit x86 vmlinux ELF executable");
		return -ENOEXEC;
	}
	return 0;
}

/* A PT_LOAD segment must come from the file and land in RAM above the boot structures. */
static int elf_check_segment(const struct elf_loader *l, const Elf64_Phdr *ph)
{
	if (ph->p_filesz > ph->p_memsz || ph->p_offset > l->size ||
	    l->size - ph->p_offset < ph->p_filesz || ph->p_paddr < ACPI_TABLES_END ||
	    ph->p_paddr >= l->gm->low_size || l->gm->low_size - ph->p_paddr < ph->p_memsz) {
		pr_err("kernel: ELF segment at 0x%llx (+0x%llx) outside the file or the guest's "
		       "RAM below 3 GiB",
		       (unsigned long long)ph->p_paddr, (unsigned long long)ph->p_memsz);
		return -ENOMEM;
	}
	return 0;
}

/* The ELF entry is startup_64's physical address; a virtual one is translated. */
static int elf_entry(const Elf64_Ehdr *eh, const Elf64_Phdr *phs, uint64_t lo, uint64_t hi,
		     uint64_t *entry)
{
	uint64_t e = eh->e_entry;

	for (unsigned i = 0; (e < lo || e >= hi) && i < eh->e_phnum; i++)
		if (phs[i].p_type == PT_LOAD && e >= phs[i].p_vaddr &&
		    e - phs[i].p_vaddr < phs[i].p_filesz)
			e = e - phs[i].p_vaddr + phs[i].p_paddr;
	if (e < lo || e >= hi) {
		pr_err("kernel: ELF entry 0x%llx is outside the loaded image",
		       (unsigned long long)eh->e_entry);
		return -ENOEXEC;
	}
	*entry = e;
	return 0;
}

/* Where the ELF file itself ends: after its headers, segments and section table. */
static void elf_find_end(struct elf_loader *l, const Elf64_Ehdr *eh, const Elf64_Phdr *phs)
{
	uint64_t end = eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr);

	for (unsigned i = 0; i < eh->e_phnum; i++)
		if (phs[i].p_offset <= l->size && l->size - phs[i].p_offset >= phs[i].p_filesz &&
		    phs[i].p_offset + phs[i].p_filesz > end)
			end = phs[i].p_offset + phs[i].p_filesz;
	if (eh->e_shoff && eh->e_shoff <= l->size &&
	    (l->size - eh->e_shoff) / (eh->e_shentsize ? eh->e_shentsize : 1) >= eh->e_shnum &&
	    eh->e_shoff + (uint64_t)eh->e_shnum * eh->e_shentsize > end)
		end = eh->e_shoff + (uint64_t)eh->e_shnum * eh->e_shentsize;
	l->file_end = end;
	if (end < l->size && l->size - end <= ELF_TAIL_MAX)
		l->tail = malloc(l->size - end); /* no memory: no randomization, nothing worse */
}

/* Headers complete: keep the PT_LOAD segments, check them, find the entry. */
static int elf_parse(struct elf_loader *l)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)l->head;
	const Elf64_Phdr *phs;
	int err = elf_check(l->head, l->head_len);

	if (err)
		return err;
	phs = (const Elf64_Phdr *)(l->head + eh->e_phoff);
	l->lo = UINT64_MAX;
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		if (phs[i].p_type != PT_LOAD || !phs[i].p_memsz)
			continue;
		if (l->nload == ELF_MAX_LOADS) {
			pr_err("kernel: more than %d ELF segments to load", ELF_MAX_LOADS);
			return -ENOEXEC;
		}
		err = elf_check_segment(l, &phs[i]);
		if (err)
			return err;
		l->load[l->nload++] = phs[i];
		if (phs[i].p_paddr < l->lo)
			l->lo = phs[i].p_paddr;
		if (phs[i].p_paddr + phs[i].p_memsz > l->hi)
			l->hi = phs[i].p_paddr + phs[i].p_memsz;
	}
	if (!l->nload) {
		pr_err("kernel: the ELF file has nothing to load");
		return -ENOEXEC;
	}
	elf_find_end(l, eh, phs);
	l->parsed = true;
	return elf_entry(eh, phs, l->lo, l->hi, &l->entry);
}

/* File bytes [off, off + n) go wherever segments take them. */
static int elf_scatter(struct elf_loader *l, uint64_t off, const uint8_t *p, size_t n)
{
	for (unsigned i = 0; i < l->nload; i++) {
		const Elf64_Phdr *ph = &l->load[i];
		uint64_t a = off > ph->p_offset ? off : ph->p_offset;
		uint64_t b =
		    off + n < ph->p_offset + ph->p_filesz ? off + n : ph->p_offset + ph->p_filesz;
		int err;

		if (a >= b)
			continue;
		err = gm_write(l->gm, ph->p_paddr + (a - ph->p_offset), p + (a - off), b - a);
		if (err)
			return err;
	}
	return 0;
}

/* File bytes [off, off + n): into the segments, and past the ELF file into the tail. */
static int elf_take(struct elf_loader *l, uint64_t off, const uint8_t *p, size_t n)
{
	int err = elf_scatter(l, off, p, n);

	if (!err && l->tail && off + n > l->file_end) {
		uint64_t from = off > l->file_end ? off : l->file_end;

		/* In order and within size: the tail fills from its start. */
		memcpy(l->tail + (from - l->file_end), p + (from - off), off + n - from);
		l->tail_len = off + n - l->file_end;
	}
	return err;
}

/* kpayload_sink: the next bytes of the file. */
static int elf_feed(void *opaque, const uint8_t *p, size_t n)
{
	struct elf_loader *l = opaque;
	size_t head_want = l->size < ELF_HEAD_MAX ? (size_t)l->size : ELF_HEAD_MAX;
	int err;

	if (n > l->size - l->off)
		return -EBADMSG;
	if (!l->parsed) {
		size_t take = head_want - l->head_len < n ? head_want - l->head_len : n;

		memcpy(l->head + l->head_len, p, take);
		l->head_len += take;
		l->off = l->head_len;
		p += take;
		n -= take;
		if (l->head_len < head_want)
			return 0;
		err = elf_parse(l);
		if (!err)
			err = elf_take(l, 0, l->head, l->head_len);
		if (err)
			return err;
	}
	err = elf_take(l, l->off, p, n);
	l->off += n;
	return err;
}

/* All bytes seen: zero the bss parts and report the image. */
static int elf_finish(struct elf_loader *l, struct boot_info *bi)
{
	if (!l->parsed || l->off != l->size)
		return -ENOEXEC;
	for (unsigned i = 0; i < l->nload; i++) {
		const Elf64_Phdr *ph = &l->load[i];
		uint8_t *bss;

		if (ph->p_memsz == ph->p_filesz)
			continue;
		bss = gm_ptr_w(l->gm, ph->p_paddr + ph->p_filesz, ph->p_memsz - ph->p_filesz);
		if (!bss)
			return -ENOMEM;
		memset(bss, 0, ph->p_memsz - ph->p_filesz);
	}
	bi->entry = l->entry;
	bi->kernel_addr = l->lo;
	bi->kernel_size = l->hi - l->lo;
	bi->init_size = l->hi - l->lo;
	return 0;
}

static void elf_loader_free(struct elf_loader *l)
{
	if (l)
		free(l->tail);
	free(l);
}

static struct elf_loader *elf_loader_new(struct guest_mem *gm, uint64_t size)
{
	struct elf_loader *l = calloc(1, sizeof(*l));

	if (l) {
		l->gm = gm;
		l->size = size;
	}
	return l;
}

/* A vmlinux file: every PT_LOAD segment at its physical address. */
static int vmlinux_load(struct guest_mem *gm, const uint8_t *k, size_t ksize, struct boot_info *bi)
{
	struct elf_loader *l = elf_loader_new(gm, ksize);
	int err;

	if (!l)
		return -ENOMEM;
	err = elf_feed(l, k, ksize);
	if (!err)
		err = elf_finish(l, bi);
	elf_loader_free(l);
	return err;
}

/*
 * The setup header a bzImage would carry, for a bare vmlinux: the kernel
 * reads the boot protocol version, loader type and load flags from it.
 */
static void vmlinux_header(uint8_t *hdr, const struct boot_info *bi, struct bzimage *bz)
{
	memset(hdr, 0, HDR_MAX_END);
	hdr[HDR_BOOT_FLAG] = 0x55;
	hdr[HDR_BOOT_FLAG + 1] = 0xaa;
	hdr[HDR_JUMP_END] = HDR_MAX_END - 0x202;
	memcpy(hdr + HDR_MAGIC, "HdrS", 4);
	hdr[HDR_VERSION] = 0x0f;
	hdr[HDR_VERSION + 1] = 0x02;
	hdr[HDR_LOADFLAGS] = LOADFLAG_LOADED_HIGH;
	wr32(hdr + HDR_INITRD_ADDR_MAX, 0x7fffffff);
	wr32(hdr + HDR_KERNEL_ALIGNMENT, 0x200000);
	hdr[HDR_XLOADFLAGS] = XLF_KERNEL_64;
	wr32(hdr + HDR_CMDLINE_SIZE, 2047);
	wr64(hdr + HDR_PREF_ADDRESS, bi->kernel_addr);
	wr32(hdr + HDR_INIT_SIZE, (uint32_t)bi->init_size);
	memset(bz, 0, sizeof(*bz));
	bz->hdr = hdr;
	bz->version = 0x020f;
	bz->initrd_addr_max = 0x7fffffff;
	bz->cmdline_size = 2047;
}

/* Whether the command line holds param as a word of its own ("nokaslr"). */
static bool cmdline_has(const char *cmdline, const char *param)
{
	size_t n = strlen(param);

	for (const char *p = strstr(cmdline, param); p; p = strstr(p + 1, param))
		if ((p == cmdline || p[-1] == ' ') && (p[n] == 0 || p[n] == ' '))
			return true;
	return false;
}

/*
 * Text KASLR as the decompressor would do it: a random virtual base, with the
 * payload's relocation table applied to the loaded image. Without a usable
 * table (a plain vmlinux file has none) the kernel runs at its link address.
 */
static void payload_kaslr(struct elf_loader *l, const char *cmdline, struct boot_info *bi)
{
	uint64_t rnd = 0, delta;
	int err;

	if (!l->tail || !l->tail_len || cmdline_has(cmdline, "nokaslr"))
		return;
	if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
		return;
	delta = kaslr_pick_delta(l->lo, l->hi, rnd);
	err = kaslr_relocate(l->gm, l->tail, l->tail_len, l->lo, l->hi, delta);
	if (err) {
		pr_warn("kernel: the payload's relocation table is unusable; the kernel text "
			"is not randomized");
		return;
	}
	bi->kaslr_delta = delta;
}

/*
 * Decompress the bzImage's payload on the host straight into the vmlinux's
 * segments, so the guest starts in startup_64 instead of running the
 * decompressor. Returns 0 when loaded, 1 when the guest must decompress after
 * all (unknown format, a payload tern cannot read), or -errno.
 */
static int bzimage_load_payload(struct guest_mem *gm, const struct bzimage *bz, const char *cmdline,
				struct boot_info *bi)
{
	uint32_t off = rd32(bz->k + HDR_PAYLOAD_OFFSET), len = rd32(bz->k + HDR_PAYLOAD_LENGTH);
	const uint8_t *p = bz->k + bz->setup_size + off;
	struct elf_loader *l;
	enum kpayload_fmt fmt;
	int err;

	if (!len || off > bz->pm_size || bz->pm_size - off < len)
		return 1;
	fmt = kpayload_detect(p, len);
	if (fmt == KPAYLOAD_UNKNOWN || fmt == KPAYLOAD_LZO) {
		pr_info("kernel: %s payload; the guest decompresses it", kpayload_name(fmt));
		return 1;
	}
	l = elf_loader_new(gm, kpayload_size(p, len));
	if (!l)
		return -ENOMEM;
	err = kpayload_stream(fmt, p, len, gm->low_size, elf_feed, l);
	if (!err)
		err = elf_finish(l, bi);
	if (!err)
		payload_kaslr(l, cmdline, bi);
	elf_loader_free(l);
	if (err) {
		pr_warn("kernel: cannot load the vmlinux in the %s payload (%s); the guest "
			"decompresses it",
			kpayload_name(fmt), strerror(-err));
		return 1;
	}
	return 0;
}

/* A bzImage: its vmlinux directly when tern can unpack it, else the classic entry. */
static int bzimage_load(struct guest_mem *gm, const struct bzimage *bz, const char *cmdline,
			struct boot_info *bi)
{
	uint64_t addr;
	int err;

	err = bzimage_place(bz, gm, &addr);
	if (err)
		return err;
	err = bzimage_load_payload(gm, bz, cmdline, bi);
	if (err <= 0) {
		/* The initrd must also clear the decompressor's working area. */
		if (!err && bi->kernel_addr + bi->init_size < addr + bz->init_size)
			bi->init_size = addr + bz->init_size - bi->kernel_addr;
		bi->direct = !err;
		return err;
	}
	bi->kernel_addr = addr;
	bi->kernel_size = bz->pm_size;
	bi->init_size = bz->init_size;
	bi->entry = addr + 0x200;
	return gm_write(gm, addr, bz->k + bz->setup_size, bz->pm_size);
}

/*
 * Entered at startup_64, the kernel randomizes its direct map, vmalloc and
 * vmemmap bases itself when the loader says KASLR is on, as the decompressor
 * would (its text was moved by payload_kaslr(), if at all).
 */
static void direct_kaslr(uint8_t *bp, const char *cmdline)
{
	if (!cmdline_has(cmdline, "nokaslr"))
		bp[HDR_LOADFLAGS] |= LOADFLAG_KASLR;
}

int boot_load_linux(struct guest_mem *gm, const void *kernel, size_t ksize, const void *initrd,
		    size_t isize, const char *cmdline, uint64_t rsdp, struct boot_info *bi)
{
	uint8_t elf_hdr[HDR_MAX_END];
	struct bzimage bz;
	uint8_t *bp;
	int err;

	memset(bi, 0, sizeof(*bi));
	if (is_elf(kernel, ksize)) {
		err = vmlinux_load(gm, kernel, ksize, bi);
		if (err)
			return err;
		bi->direct = true;
		vmlinux_header(elf_hdr, bi, &bz);
	} else {
		err = bzimage_parse(kernel, ksize, &bz);
		if (!err)
			err = bzimage_load(gm, &bz, cmdline, bi);
		if (err)
			return err;
	}
	bi->protocol = bz.version;
	bi->boot_params = BOOT_PARAMS_ADDR;
	if (initrd && isize) {
		err =
		    initrd_place(&bz, gm, bi->kernel_addr + bi->init_size, isize, &bi->initrd_addr);
		if (err)
			return err;
		bi->initrd_size = isize;
		err = gm_write(gm, bi->initrd_addr, initrd, isize);
		if (err)
			return err;
	}
	err = cmdline_place(gm, &bz, cmdline, bi);
	if (err)
		return err;
	bp = gm_ptr_w(gm, BOOT_PARAMS_ADDR, BP_SIZE);
	if (!bp)
		return -ENOMEM;
	err = zero_page_fill(bp, &bz, gm, bi, rsdp);
	if (err)
		return err;
	if (bi->direct)
		direct_kaslr(bp, cmdline);
	return boot_setup_tables(gm);
}

int boot_setup_tables(struct guest_mem *gm)
{
	static const uint64_t gdt[] = {
	    0,
	    0,
	    0x00af9b000000ffffull, /* 0x10: 64-bit code, DPL 0 */
	    0x00cf93000000ffffull, /* 0x18: flat data */
	    0x00008b0000000067ull, /* 0x20: 64-bit TSS (busy), base 0, for VMX entry checks */
	    0,
	};
	uint64_t *pml4 = gm_ptr_w(gm, BOOT_PML4_ADDR, GM_PAGE_SIZE);
	uint64_t *pdpt = gm_ptr_w(gm, BOOT_PDPT_ADDR, GM_PAGE_SIZE);
	uint64_t *pd = gm_ptr_w(gm, BOOT_PD_ADDR, 4 * GM_PAGE_SIZE);

	if (!pml4 || !pdpt || !pd || gm_write(gm, BOOT_GDT_ADDR, gdt, sizeof(gdt)))
		return -ENOMEM;
	memset(pml4, 0, GM_PAGE_SIZE);
	memset(pdpt, 0, GM_PAGE_SIZE);
	/* Identity map of the first 4 GiB in 2 MiB pages: present, writable, large. */
	pml4[0] = BOOT_PDPT_ADDR | 0x3;
	for (uint64_t i = 0; i < 4; i++)
		pdpt[i] = (BOOT_PD_ADDR + i * GM_PAGE_SIZE) | 0x3;
	for (uint64_t i = 0; i < 4 * 512; i++)
		pd[i] = (i << 21) | 0x83;
	return 0;
}

static struct cpu_seg flat_seg(uint16_t sel, uint8_t type, int code)
{
	return (struct cpu_seg){.base = 0,
				.limit = 0xffffffff,
				.sel = sel,
				.type = type,
				.present = 1,
				.s = 1,
				.l = code ? 1 : 0,
				.db = code ? 0 : 1,
				.g = 1};
}

void boot_cpu_state(const struct boot_info *bi, struct cpu_state *st)
{
	struct cpu_seg ds = flat_seg(BOOT_DS_SEL, 0x3, 0);

	memset(st, 0, sizeof(*st));
	st->rip = bi->entry;
	st->gpr[6] = bi->boot_params; /* RSI */
	st->gpr[4] = BOOT_STACK_TOP;  /* RSP */
	st->rflags = 0x2;	      /* reserved bit; IF clear */
	st->cs = flat_seg(BOOT_CS_SEL, 0xb, 1);
	st->ds = st->es = st->ss = st->fs = st->gs = ds;
	st->tr = (struct cpu_seg){.sel = BOOT_TSS_SEL, .limit = 0x67, .type = 0xb, .present = 1};
	st->ldt = (struct cpu_seg){.type = 0x2, .unusable = 1};
	st->gdt = (struct cpu_dtable){.base = BOOT_GDT_ADDR, .limit = 6 * 8 - 1};
	st->idt = (struct cpu_dtable){.base = 0, .limit = 0};
	st->cr0 = 0x80000031; /* PG | NE | ET | PE */
	st->cr3 = BOOT_PML4_ADDR;
	st->cr4 = 0x20;				       /* PAE */
	st->efer = 0x500;			       /* LMA | LME */
	st->xcr0 = 1;				       /* x87 */
	st->apic_base = 0xfee00000ull | 0x800 | 0x100; /* enabled, BSP */
	st->pat = 0x0007040600070406ull;
	st->fxsave[0] = 0x7f; /* FCW = 0x037f */
	st->fxsave[1] = 0x03;
	st->fxsave[24] = 0x80; /* MXCSR = 0x1f80 */
	st->fxsave[25] = 0x1f;
	st->pending_exception = -1;
}
