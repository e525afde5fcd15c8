/* Linux boot protocol: zero page, e820, kernel/initrd placement, entry state. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <elf.h>
#include <lz4.h>

#include "arch/x86/boot.h"

#define MiB (1024ull * 1024)

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static void put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* A minimal bzImage: 4 setup sectors + boot sector, then pm_size bytes of "kernel". */
static uint8_t *fake_bzimage(size_t pm_size, size_t *size)
{
	size_t setup = 5 * 512;
	uint8_t *k = calloc(1, setup + pm_size);

	assert_non_null(k);
	k[0x1f1] = 4;
	put16(k + 0x1fe, 0xaa55);
	k[0x201] = 0x66; /* header ends at 0x268 */
	memcpy(k + 0x202, "HdrS", 4);
	put16(k + 0x206, 0x020f);
	k[0x211] = 0x01;		     /* LOADED_HIGH */
	put32(k + 0x22c, 0x7fffffff);	     /* initrd_addr_max */
	put32(k + 0x230, 0x200000);	     /* kernel_alignment */
	k[0x234] = 1;			     /* relocatable */
	put16(k + 0x236, 0x3);		     /* XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G */
	put32(k + 0x238, 2047);		     /* cmdline_size */
	put64(k + 0x258, 0x1000000);	     /* pref_address */
	put32(k + 0x260, 3 * (uint32_t)MiB); /* init_size */
	for (size_t i = 0; i < pm_size; i++)
		k[setup + i] = (uint8_t)(i * 7 + 1);
	*size = setup + pm_size;
	return k;
}

/*
 * A small vmlinux: text at 16 MiB, data plus bss at 18 MiB, linked high like
 * x86-64 Linux (virtual 0xffffffff8xxxxxxx, physical in p_paddr), entry at
 * the physical start of the text.
 */
#define VM_TEXT_PA 0x1000000ull
#define VM_DATA_PA 0x1200000ull
#define VM_VIRT(pa) (0xffffffff80000000ull + (pa))
#define VM_TEXT_SZ 8192
#define VM_DATA_SZ 4096
#define VM_BSS_SZ 65536

static uint8_t *fake_vmlinux(size_t *size)
{
	size_t off = 4096, n = off + VM_TEXT_SZ + VM_DATA_SZ;
	uint8_t *k = calloc(1, n);
	Elf64_Ehdr *eh = (Elf64_Ehdr *)k;
	Elf64_Phdr *ph = (Elf64_Phdr *)(k + sizeof(*eh));

	assert_non_null(k);
	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_type = ET_EXEC;
	eh->e_machine = EM_X86_64;
	eh->e_version = EV_CURRENT;
	eh->e_entry = VM_TEXT_PA;
	eh->e_phoff = sizeof(*eh);
	eh->e_ehsize = sizeof(*eh);
	eh->e_phentsize = sizeof(*ph);
	eh->e_phnum = 3;
	ph[0] = (Elf64_Phdr){.p_type = PT_LOAD,
			     .p_offset = off,
			     .p_vaddr = VM_VIRT(VM_TEXT_PA),
			     .p_paddr = VM_TEXT_PA,
			     .p_filesz = VM_TEXT_SZ,
			     .p_memsz = VM_TEXT_SZ};
	ph[1] = (Elf64_Phdr){.p_type = PT_NOTE, .p_offset = off, .p_filesz = 16, .p_memsz = 16};
	ph[2] = (Elf64_Phdr){.p_type = PT_LOAD,
			     .p_offset = off + VM_TEXT_SZ,
			     .p_vaddr = VM_VIRT(VM_DATA_PA),
			     .p_paddr = VM_DATA_PA,
			     .p_filesz = VM_DATA_SZ,
			     .p_memsz = VM_DATA_SZ + VM_BSS_SZ};
	for (size_t i = off; i < n; i++)
		k[i] = (uint8_t)(i * 13 + 5);
	*size = n;
	return k;
}

/* The kernel build's legacy LZ4 frame with its size trailer, around one block. */
static size_t lz4_legacy(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
	int c = LZ4_compress_default((const char *)in, (char *)out + 8, (int)n, (int)cap - 12);

	assert_true(c > 0);
	put32(out, 0x184c2102);
	put32(out + 4, (uint32_t)c);
	put32(out + 8 + c, (uint32_t)n);
	return 12 + (size_t)c;
}

/* A bzImage whose payload (at offset 0x100 of the protected-mode part) is given. */
static uint8_t *bzimage_with_payload(const uint8_t *payload, size_t plen, size_t *size)
{
	size_t pm = 0x100 + plen + 0x40;
	uint8_t *k = fake_bzimage(pm, size);

	memcpy(k + 5 * 512 + 0x100, payload, plen);
	put32(k + 0x248, 0x100);
	put32(k + 0x24c, (uint32_t)plen);
	return k;
}

struct ctx {
	struct guest_mem gm;
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));

	if (!c || gm_init(&c->gm, 128 * MiB))
		return -1;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	gm_destroy(&c->gm);
	free(c);
	return 0;
}

static void test_synthetic_layout(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t ksize;
	uint8_t *k = fake_bzimage(1 * MiB, &ksize);
	uint8_t initrd[10000];
	const char *cmd = "console=ttyS0 panic=-1";
	uint8_t *bp, *p;
	struct e820_entry e[8];

	memset(initrd, 0xab, sizeof(initrd));
	assert_int_equal(
	    boot_load_linux(&c->gm, k, ksize, initrd, sizeof(initrd), cmd, 0xe0000, &bi), 0);
	assert_int_equal(bi.kernel_addr, 0x1000000);
	assert_int_equal(bi.entry, 0x1000200);
	assert_int_equal(bi.protocol, 0x020f);
	/* The protected-mode kernel is copied to its load address. */
	p = gm_ptr(&c->gm, bi.kernel_addr, 1 * MiB);
	assert_memory_equal(p, k + 5 * 512, 1 * MiB);

	bp = gm_ptr(&c->gm, bi.boot_params, 4096);
	assert_non_null(bp);
	assert_int_equal(bp[0x210], 0xff);			/* type_of_loader */
	assert_memory_equal(bp + 0x202, "HdrS", 4);		/* header copied */
	assert_int_equal(get32(bp + 0x228), BOOT_CMDLINE_ADDR); /* cmd_line_ptr */
	assert_string_equal((char *)gm_ptr(&c->gm, BOOT_CMDLINE_ADDR, strlen(cmd) + 1), cmd);
	/* initrd: page aligned, high, below 128 MiB and above the kernel's init area. */
	assert_int_equal(get32(bp + 0x218), bi.initrd_addr);
	assert_int_equal(get32(bp + 0x21c), sizeof(initrd));
	assert_int_equal(bi.initrd_addr % 4096, 0);
	assert_true(bi.initrd_addr + sizeof(initrd) <= 128 * MiB);
	assert_true(bi.initrd_addr >= 128 * MiB - 4 * 4096);
	assert_true(bi.initrd_addr >= bi.kernel_addr + 3 * MiB);
	assert_memory_equal(gm_ptr(&c->gm, bi.initrd_addr, sizeof(initrd)), initrd, sizeof(initrd));
	/* RSDP pointer. */
	assert_int_equal(get32(bp + 0x70), 0xe0000);

	/* e820: low RAM, EBDA and BIOS area reserved, RAM from 1 MiB to the end. */
	assert_int_equal(bp[0x1e8], 4);
	memcpy(e, bp + 0x2d0, 4 * sizeof(e[0]));
	assert_int_equal(e[0].addr, 0);
	assert_int_equal(e[0].size, 0x9fc00);
	assert_int_equal(e[0].type, E820_RAM);
	assert_int_equal(e[1].type, E820_RESERVED);
	assert_int_equal(e[2].addr, 0xe0000);
	assert_int_equal(e[2].type, E820_RESERVED);
	assert_int_equal(e[3].addr, 1 * MiB);
	assert_int_equal(e[3].addr + e[3].size, 128 * MiB);
	assert_int_equal(e[3].type, E820_RAM);
	/* Boot structures (zero page, tables, cmdline) sit in RAM the e820 marks usable
	 * but below 1 MiB, which the kernel keeps for itself; the kernel sits above them. */
	assert_true(BOOT_CMDLINE_ADDR + BOOT_CMDLINE_MAX <= 0x9fc00);
	free(k);
}

static void test_page_tables_and_entry_state(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	struct cpu_state st;
	size_t ksize;
	uint8_t *k = fake_bzimage(4096, &ksize);
	uint64_t *pml4, *pdpt, *pd, *gdt;

	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	pml4 = gm_ptr(&c->gm, BOOT_PML4_ADDR, 4096);
	pdpt = gm_ptr(&c->gm, BOOT_PDPT_ADDR, 4096);
	pd = gm_ptr(&c->gm, BOOT_PD_ADDR, 4 * 4096);
	assert_int_equal(pml4[0] & ~0xfffull, BOOT_PDPT_ADDR);
	assert_int_equal(pml4[0] & 1, 1);
	/* Walk two addresses through the tables: identity, 2 MiB pages. */
	for (uint64_t va = 0; va < (4ull << 30); va += 0x3fe00000ull) {
		uint64_t pdpte = pdpt[(va >> 30) & 511];
		uint64_t *dir = gm_ptr(&c->gm, pdpte & ~0xfffull, 4096);
		uint64_t pde = dir[(va >> 21) & 511];

		assert_true(pde & 0x80);
		assert_int_equal((pde & ~0x1fffffull) | (va & 0x1fffff), va);
	}
	assert_int_equal(pd[4 * 512 - 1] & ~0xfffull, (4ull << 30) - (2ull << 20));
	gdt = gm_ptr(&c->gm, BOOT_GDT_ADDR, 48);
	/* Selector 0x10: present 64-bit code segment; 0x18: present writable data. */
	assert_true(gdt[2] & (1ull << 53));
	assert_true(gdt[2] & (1ull << 47));
	assert_int_equal((gdt[3] >> 40) & 0x9a, 0x92);

	boot_cpu_state(&bi, &st);
	assert_int_equal(st.rip, bi.entry);
	assert_int_equal(st.gpr[6], BOOT_PARAMS_ADDR);
	assert_int_equal(st.cs.sel, 0x10);
	assert_int_equal(st.cs.l, 1);
	assert_int_equal(st.ds.sel, 0x18);
	assert_int_equal(st.rflags & 0x200, 0); /* interrupts off */
	assert_true(st.cr0 & 0x80000001);
	assert_int_equal(st.cr3, BOOT_PML4_ADDR);
	assert_true(st.cr4 & 0x20);
	assert_int_equal(st.efer & 0x500, 0x500);
	free(k);
}

static void test_rejects_bad_images(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t ksize;
	uint8_t *k = fake_bzimage(4096, &ksize);
	char longcmd[3000];

	/* Too short for a header. */
	assert_int_equal(boot_load_linux(&c->gm, k, 0x200, NULL, 0, "", 0, &bi), -ENOEXEC);
	/* Old protocol. */
	put16(k + 0x206, 0x020b);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	put16(k + 0x206, 0x020f);
	/* Not 64-bit. */
	put16(k + 0x236, 0);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	put16(k + 0x236, 3);
	/* Setup sectors beyond the end of the file. */
	k[0x1f1] = 0xff;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	k[0x1f1] = 4;
	/* Bad magic. */
	k[0x202] = 'X';
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	k[0x202] = 'H';
	/* Command line longer than the kernel takes. */
	memset(longcmd, 'a', sizeof(longcmd) - 1);
	longcmd[sizeof(longcmd) - 1] = 0;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, longcmd, 0, &bi), -E2BIG);
	/* init_size larger than guest memory. */
	put32(k + 0x260, 0xf0000000);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOMEM);
	put32(k + 0x260, 3 * (uint32_t)MiB);
	/* A hostile pref_address is ignored in favour of the default. */
	put64(k + 0x258, 0xfffffffffffff000ull);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_int_equal(bi.kernel_addr, BOOT_KERNEL_DEFAULT_ADDR);
	free(k);
}

static void test_initrd_too_big(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t ksize;
	uint8_t *k = fake_bzimage(4096, &ksize);
	size_t isize = 126 * MiB;
	uint8_t *initrd = calloc(1, isize);

	assert_non_null(initrd);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, initrd, isize, "", 0, &bi), -ENOMEM);
	free(initrd);
	free(k);
}

static void test_e820_high_memory(void **state)
{
	struct guest_mem gm;
	struct e820_entry e[8];
	int n;

	/* 4 GiB of RAM: 3 GiB below the hole, 1 GiB above 4 GiB (sparse memfd: cheap). */
	assert_int_equal(gm_init(&gm, 4ull << 30), 0);
	n = boot_e820(&gm, e, 8);
	assert_int_equal(n, 5);
	assert_int_equal(e[3].addr + e[3].size, 3ull << 30);
	assert_int_equal(e[4].addr, 4ull << 30);
	assert_int_equal(e[4].size, 1ull << 30);
	assert_int_equal(boot_e820(&gm, e, 3), -ENOSPC);
	gm_destroy(&gm);
}

static void check_vmlinux_loaded(struct ctx *c, const uint8_t *elf)
{
	const uint8_t *data;

	assert_memory_equal(gm_ptr(&c->gm, VM_TEXT_PA, VM_TEXT_SZ), elf + 4096, VM_TEXT_SZ);
	data = gm_ptr(&c->gm, VM_DATA_PA, VM_DATA_SZ + VM_BSS_SZ);
	assert_memory_equal(data, elf + 4096 + VM_TEXT_SZ, VM_DATA_SZ);
	for (size_t i = VM_DATA_SZ; i < VM_DATA_SZ + VM_BSS_SZ; i++)
		assert_int_equal(data[i], 0);
	/* Nothing lands between the segments. */
	assert_int_equal(*(const uint8_t *)gm_ptr(&c->gm, VM_TEXT_PA + VM_TEXT_SZ, 1), 0xcc);
}

static void test_vmlinux_elf(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t ksize;
	uint8_t *k = fake_vmlinux(&ksize), *bp;
	uint8_t initrd[5000];
	struct cpu_state st;

	/* Dirty RAM, so loading must write every byte of the segments (bss too). */
	memset(gm_ptr_w(&c->gm, VM_TEXT_PA, 4 * MiB), 0xcc, 4 * MiB);
	memset(initrd, 0x5a, sizeof(initrd));
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, initrd, sizeof(initrd), "console=ttyS0",
					 0xe0000, &bi),
			 0);
	assert_true(bi.direct);
	assert_int_equal(bi.entry, VM_TEXT_PA);
	assert_int_equal(bi.kernel_addr, VM_TEXT_PA);
	assert_int_equal(bi.init_size, VM_DATA_PA + VM_DATA_SZ + VM_BSS_SZ - VM_TEXT_PA);
	check_vmlinux_loaded(c, k);
	/* A setup header is made for it: magic, protocol 2.15, loader, 64-bit entry. */
	bp = gm_ptr(&c->gm, bi.boot_params, 4096);
	assert_int_equal(bp[0x1fe] | bp[0x1ff] << 8, 0xaa55);
	assert_memory_equal(bp + 0x202, "HdrS", 4);
	assert_int_equal(bp[0x206] | bp[0x207] << 8, 0x020f);
	assert_int_equal(bp[0x210], 0xff);
	assert_int_equal(bp[0x211] & 1, 1);
	assert_int_equal(bp[0x236] & 1, 1);
	assert_int_equal(get32(bp + 0x228), BOOT_CMDLINE_ADDR);
	assert_int_equal(get32(bp + 0x70), 0xe0000);
	/* KASLR_FLAG: the kernel randomizes its memory regions itself. */
	assert_int_equal(bp[0x211] & 2, 2);
	/* The initrd stays clear of the image, bss included. */
	assert_true(bi.initrd_addr >= VM_DATA_PA + VM_DATA_SZ + VM_BSS_SZ);
	assert_int_equal(get32(bp + 0x218), bi.initrd_addr);
	boot_cpu_state(&bi, &st);
	assert_int_equal(st.rip, VM_TEXT_PA);
	assert_int_equal(st.gpr[6], BOOT_PARAMS_ADDR);

	/* A virtual entry address is translated through its segment. */
	((Elf64_Ehdr *)k)->e_entry = VM_VIRT(VM_TEXT_PA) + 0x40;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_int_equal(bi.entry, VM_TEXT_PA + 0x40);
	/* nokaslr as a word of its own turns KASLR_FLAG off; inside another word it does not. */
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "quiet nokaslr", 0, &bi), 0);
	assert_int_equal(bp[0x211] & 2, 0);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "x.nokaslr=1 nokaslrx", 0, &bi),
			 0);
	assert_int_equal(bp[0x211] & 2, 2);
	free(k);
}

static void test_vmlinux_hostile(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t ksize;
	uint8_t *k = fake_vmlinux(&ksize);
	Elf64_Ehdr *eh = (Elf64_Ehdr *)k;
	Elf64_Phdr *ph = (Elf64_Phdr *)(k + sizeof(*eh));
	Elf64_Phdr saved = ph[2];

	/* Program headers past the end of the file, or too many of them. */
	eh->e_phoff = ksize - 8;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	eh->e_phoff = sizeof(*eh);
	eh->e_phnum = 0xffff;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	eh->e_phnum = 3;
	/* Not x86-64, not 64-bit. */
	eh->e_machine = EM_386;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	eh->e_machine = EM_X86_64;
	eh->e_ident[EI_CLASS] = ELFCLASS32;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	/* Segment data past the end of the file; more file bytes than memory. */
	ph[2].p_offset = ksize - 16;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOMEM);
	ph[2] = saved;
	ph[2].p_filesz = ph[2].p_memsz + 1;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOMEM);
	ph[2] = saved;
	/* Over the boot structures below 1 MiB; past the end of RAM; wrapping around. */
	ph[2].p_paddr = 0x7000;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOMEM);
	ph[2].p_paddr = 128 * MiB - 4096;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOMEM);
	ph[2].p_paddr = 0xfffffffffffff000ull;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOMEM);
	ph[2] = saved;
	/* An entry outside what was loaded. */
	eh->e_entry = 0x5000000;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	eh->e_entry = VM_TEXT_PA;
	/* Nothing to load. */
	ph[0].p_type = PT_NULL;
	ph[2].p_type = PT_NULL;
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), -ENOEXEC);
	free(k);
}

/* A bzImage with an LZ4 payload is entered at the vmlinux inside, not at the decompressor. */
static void test_bzimage_payload_direct(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t esize, ksize, plen;
	uint8_t *elf = fake_vmlinux(&esize);
	uint8_t *payload = malloc(2 * esize + 64), *k, *bp;
	uint8_t initrd[100];

	assert_non_null(payload);
	memset(gm_ptr_w(&c->gm, VM_TEXT_PA, 4 * MiB), 0xcc, 4 * MiB);
	plen = lz4_legacy(elf, esize, payload, 2 * esize + 64);
	k = bzimage_with_payload(payload, plen, &ksize);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, initrd, sizeof(initrd), "quiet", 0, &bi),
			 0);
	assert_true(bi.direct);
	assert_int_equal(bi.entry, VM_TEXT_PA);
	check_vmlinux_loaded(c, elf);
	/* The zero page carries the bzImage's own header. */
	bp = gm_ptr(&c->gm, bi.boot_params, 4096);
	assert_memory_equal(bp + 0x1f1, k + 0x1f1, 0x210 - 0x1f1);
	assert_int_equal(get32(bp + 0x248), 0x100);
	/* init_size (3 MiB from 16 MiB) still keeps the initrd away. */
	assert_true(bi.initrd_addr >= 0x1000000 + 3 * MiB);
	free(k);

	/* A corrupt payload: the guest's decompressor gets the image as before. */
	payload[8 + 3] ^= 0xff;
	payload[plen - 5] ^= 0xff;
	put32(payload + 4, (uint32_t)plen * 4);
	k = bzimage_with_payload(payload, plen, &ksize);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_false(bi.direct);
	assert_int_equal(bi.entry, 0x1000200);
	assert_memory_equal(gm_ptr(&c->gm, 0x1000000, ksize - 5 * 512), k + 5 * 512,
			    ksize - 5 * 512);
	/* The decompressor decides about KASLR itself. */
	assert_int_equal(((uint8_t *)gm_ptr(&c->gm, bi.boot_params, 4096))[0x211] & 2, 0);
	free(k);

	/* An unknown format, and a payload reaching past the image: the same fallback. */
	memset(payload, 0x42, 16);
	k = bzimage_with_payload(payload, plen, &ksize);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_false(bi.direct);
	put32(k + 0x24c, 0x7ffffff0);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_false(bi.direct);
	assert_int_equal(bi.entry, 0x1000200);
	free(k);

	/* A payload that decompresses to something that is not an ELF file. */
	memset(elf, 0x11, 64);
	plen = lz4_legacy(elf, esize, payload, 2 * esize + 64);
	k = bzimage_with_payload(payload, plen, &ksize);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_false(bi.direct);
	free(k);
	free(payload);
	free(elf);
}

/* A payload with a relocation table after the ELF file: the text gets a random virtual base. */
static void test_bzimage_payload_kaslr(void **state)
{
	struct ctx *c = *state;
	struct boot_info bi;
	size_t esize, ksize, plen;
	uint8_t *elf = fake_vmlinux(&esize), *k, *payload, *all;
	uint64_t v64 = VM_VIRT(VM_TEXT_PA) + 0x40, got;
	uint32_t relocs[4] = {0, (uint32_t)VM_VIRT(VM_TEXT_PA + 0x100), 0, 0};
	int moved = 0;

	memcpy(elf + 4096 + 0x100, &v64, 8);
	all = malloc(esize + sizeof(relocs));
	payload = malloc(2 * (esize + sizeof(relocs)) + 64);
	assert_non_null(all);
	assert_non_null(payload);
	memcpy(all, elf, esize);
	memcpy(all + esize, relocs, sizeof(relocs));
	plen = lz4_legacy(all, esize + sizeof(relocs), payload, 2 * (esize + sizeof(relocs)) + 64);
	k = bzimage_with_payload(payload, plen, &ksize);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
		assert_true(bi.direct);
		assert_int_equal(bi.kaslr_delta % 0x200000, 0);
		assert_true(VM_DATA_PA + VM_DATA_SZ + VM_BSS_SZ + bi.kaslr_delta <= (1ull << 30));
		memcpy(&got, gm_ptr(&c->gm, VM_TEXT_PA + 0x100, 8), 8);
		assert_int_equal(got, v64 + bi.kaslr_delta);
		moved += bi.kaslr_delta != 0;
	}
	assert_true(moved >= 7); /* 0 is one slot of ~500 */
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "nokaslr", 0, &bi), 0);
	assert_int_equal(bi.kaslr_delta, 0);
	memcpy(&got, gm_ptr(&c->gm, VM_TEXT_PA + 0x100, 8), 8);
	assert_int_equal(got, v64);
	free(k);

	/* A table pointing outside the image: loaded, not randomized. */
	relocs[1] = 0x1234;
	memcpy(all + esize, relocs, sizeof(relocs));
	plen = lz4_legacy(all, esize + sizeof(relocs), payload, 2 * (esize + sizeof(relocs)) + 64);
	k = bzimage_with_payload(payload, plen, &ksize);
	assert_int_equal(boot_load_linux(&c->gm, k, ksize, NULL, 0, "", 0, &bi), 0);
	assert_true(bi.direct);
	assert_int_equal(bi.kaslr_delta, 0);
	memcpy(&got, gm_ptr(&c->gm, VM_TEXT_PA + 0x100, 8), 8);
	assert_int_equal(got, v64);
	free(k);
	free(payload);
	free(all);
	free(elf);
}

/* The real default guest kernel, when it has been built. */
static void test_real_kernel(void **state)
{
	struct ctx *c = *state;
	const char *path =
	    getenv("TERN_TEST_KERNEL") ? getenv("TERN_TEST_KERNEL") : "guest/out/vmlinuz";
	FILE *f = fopen(path, "rb");
	struct boot_info bi;
	uint8_t *k, *bp;
	long size;

	if (!f) {
		printf("skipping real-kernel case: %s not built (make guest)\n", path);
		skip();
	}
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size > 0x1000);
	rewind(f);
	k = malloc((size_t)size);
	assert_non_null(k);
	assert_int_equal(fread(k, 1, (size_t)size, f), (size_t)size);
	fclose(f);
	assert_int_equal(boot_load_linux(&c->gm, k, (size_t)size, NULL, 0, "console=ttyS0", 0, &bi),
			 0);
	assert_true(bi.protocol >= 0x020c);
	assert_true(bi.kernel_addr >= 1 * MiB);
	assert_true(bi.init_size >= bi.kernel_size);
	bp = gm_ptr(&c->gm, bi.boot_params, 4096);
	assert_int_equal(bp[0x210], 0xff);
	assert_int_equal(bp[0x1e8], 4);
	/* Debian's payload (LZ4) is decompressed here; the entry is startup_64 inside it,
	 * and its relocation table gives the text a random base (0 is one slot of ~500). */
	assert_true(bi.direct);
	assert_int_equal(bi.kaslr_delta % 0x200000, 0);
	assert_true(bi.entry >= bi.kernel_addr && bi.entry < bi.kernel_addr + bi.kernel_size);
	free(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_synthetic_layout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_page_tables_and_entry_state, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rejects_bad_images, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_initrd_too_big, setup, teardown),
	    cmocka_unit_test(test_e820_high_memory),
	    cmocka_unit_test_setup_teardown(test_vmlinux_elf, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_vmlinux_hostile, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bzimage_payload_direct, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bzimage_payload_kaslr, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_real_kernel, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
