/*
 * ACPI tables, built into a host buffer and copied into the reserved BIOS
 * area. The DSDT's AML is emitted by a tiny builder: opcodes, names,
 * integers, and PkgLength-prefixed scopes whose length is fixed up when the
 * scope is closed (ACPI 6.x, section 20 "ACPI Machine Language").
 */
#include "arch/x86/acpi.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "arch/x86/boot.h"
#include "arch/x86/layout.h"

#define ACPI_OEM_ID "TERN  "
#define ACPI_OEM_TABLE_ID "TERNVM  "
#define ACPI_HDR_LEN 36
#define AML_MAX_DEPTH 8

/* ---- AML builder ---------------------------------------------------------------- */

struct aml {
	uint8_t *buf;
	uint64_t len, cap;
	uint64_t open[AML_MAX_DEPTH]; /* offsets where each open scope's body starts */
	int depth;
	bool overflow; /* sticky: checked once at the end */
};

static void aml_bytes(struct aml *a, const void *p, uint64_t n)
{
	if (a->overflow || n > a->cap - a->len) {
		a->overflow = true;
		return;
	}
	memcpy(a->buf + a->len, p, n);
	a->len += n;
}

static void aml_byte(struct aml *a, uint8_t b)
{
	aml_bytes(a, &b, 1);
}

static void aml_le(struct aml *a, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		aml_byte(a, (uint8_t)(v >> (8 * i)));
}

/* A NameSeg or a root-relative single segment ("\\_S5_" style is written by callers). */
static void aml_name(struct aml *a, const char *seg)
{
	if (seg[0] == '\\') {
		aml_byte(a, '\\');
		seg++;
	}
	aml_bytes(a, seg, 4);
}

static void aml_int(struct aml *a, uint64_t v)
{
	if (v == 0) {
		aml_byte(a, 0x00); /* ZeroOp */
	} else if (v == 1) {
		aml_byte(a, 0x01); /* OneOp */
	} else if (v <= 0xff) {
		aml_byte(a, 0x0a);
		aml_le(a, v, 1);
	} else if (v <= 0xffff) {
		aml_byte(a, 0x0b);
		aml_le(a, v, 2);
	} else if (v <= 0xffffffff) {
		aml_byte(a, 0x0c);
		aml_le(a, v, 4);
	} else {
		aml_byte(a, 0x0e);
		aml_le(a, v, 8);
	}
}

/* Begin a PkgLength-prefixed body; aml_close() writes its length in front of it. */
static void aml_open(struct aml *a)
{
	if (a->depth >= AML_MAX_DEPTH) {
		a->overflow = true;
		return;
	}
	a->open[a->depth++] = a->len;
}

static void aml_close(struct aml *a)
{
	uint64_t start, body;
	uint8_t enc[4];
	int n;

	if (a->overflow || a->depth == 0) {
		a->overflow = true;
		return;
	}
	start = a->open[--a->depth];
	body = a->len - start;
	/* The encoded length counts its own bytes. */
	if (body + 1 < 0x40)
		n = 1;
	else if (body + 2 < 0x1000)
		n = 2;
	else if (body + 3 < 0x100000)
		n = 3;
	else
		n = 4;
	body += (uint64_t)n;
	if (n == 1) {
		enc[0] = (uint8_t)body;
	} else {
		enc[0] = (uint8_t)(((n - 1) << 6) | (body & 0xf));
		for (int i = 1; i < n; i++)
			enc[i] = (uint8_t)(body >> (4 + 8 * (i - 1)));
	}
	if ((uint64_t)n > a->cap - a->len) {
		a->overflow = true;
		return;
	}
	memmove(a->buf + start + n, a->buf + start, a->len - start);
	memcpy(a->buf + start, enc, (size_t)n);
	a->len += (uint64_t)n;
}

/* Name(seg, <value follows>) */
static void aml_name_decl(struct aml *a, const char *seg)
{
	aml_byte(a, 0x08);
	aml_name(a, seg);
}

static void aml_scope_open(struct aml *a, const char *seg)
{
	aml_byte(a, 0x10);
	aml_open(a);
	aml_name(a, seg);
}

static void aml_device_open(struct aml *a, const char *seg)
{
	aml_byte(a, 0x5b);
	aml_byte(a, 0x82);
	aml_open(a);
	aml_name(a, seg);
}

static void aml_package_open(struct aml *a, uint8_t nelem)
{
	aml_byte(a, 0x12);
	aml_open(a);
	aml_byte(a, nelem);
}

/* A compressed EISA id such as "PNP0A08", as the 32-bit integer _HID takes. */
static uint32_t eisa_id(const char *id)
{
	uint32_t v = (uint32_t)((id[0] - 0x40) & 0x1f) << 26 |
		     (uint32_t)((id[1] - 0x40) & 0x1f) << 21 |
		     (uint32_t)((id[2] - 0x40) & 0x1f) << 16;
	uint32_t hex = 0;

	for (int i = 3; i < 7; i++) {
		char c = id[i];

		hex = hex << 4 | (uint32_t)(c <= '9' ? c - '0' : c - 'A' + 10);
	}
	v |= hex;
	/* Stored big-endian within the dword. */
	return (v >> 24) | ((v >> 8) & 0xff00) | ((v << 8) & 0xff0000) | (v << 24);
}

/* Buffer(){ resource descriptors }, as _CRS wants. body/len exclude the end tag. */
static void aml_resource_buffer(struct aml *a, const uint8_t *res, uint64_t len)
{
	aml_byte(a, 0x11);
	aml_open(a);
	aml_int(a, len + 2);
	aml_bytes(a, res, len);
	aml_byte(a, 0x79); /* end tag, checksum 0 = "none" */
	aml_byte(a, 0x00);
	aml_close(a);
}

/* ---- resource descriptors (ACPI 6.x, section 6.4) --------------------------------- */

struct res {
	uint8_t b[256];
	uint64_t len;
};

static void res_le(struct res *r, uint64_t v, int n)
{
	for (int i = 0; i < n && r->len < sizeof(r->b); i++)
		r->b[r->len++] = (uint8_t)(v >> (8 * i));
}

/* Word address space descriptor: type 1 = I/O, 2 = bus number. A producer, fixed range. */
static void res_word(struct res *r, uint8_t type, uint8_t tflags, uint16_t min, uint16_t max)
{
	res_le(r, 0x88, 1);
	res_le(r, 13, 2);
	res_le(r, type, 1);
	res_le(r, 0x0c, 1); /* min/max fixed, positive decode, producer */
	res_le(r, tflags, 1);
	res_le(r, 0, 2); /* granularity */
	res_le(r, min, 2);
	res_le(r, max, 2);
	res_le(r, 0, 2); /* translation */
	res_le(r, (uint32_t)max - min + 1, 2);
}

static void res_dword_mem(struct res *r, uint32_t min, uint32_t max)
{
	res_le(r, 0x87, 1);
	res_le(r, 23, 2);
	res_le(r, 0, 1);    /* memory */
	res_le(r, 0x0c, 1); /* min/max fixed, positive decode, producer */
	res_le(r, 0x01, 1); /* read/write, non-cacheable */
	res_le(r, 0, 4);
	res_le(r, min, 4);
	res_le(r, max, 4);
	res_le(r, 0, 4);
	res_le(r, (uint64_t)max - min + 1, 4);
}

static void res_io(struct res *r, uint16_t base, uint8_t len)
{
	res_le(r, 0x47, 1);
	res_le(r, 0x01, 1); /* 16-bit decode */
	res_le(r, base, 2);
	res_le(r, base, 2);
	res_le(r, 1, 1);
	res_le(r, len, 1);
}

static void res_irq(struct res *r, unsigned irq)
{
	res_le(r, 0x22, 1); /* IRQNoFlags: edge, active high */
	res_le(r, 1u << irq, 2);
}

/* ---- DSDT ------------------------------------------------------------------------ */

static void dsdt_pci(struct aml *a)
{
	struct res r = {.len = 0};

	aml_device_open(a, "PCI0");
	aml_name_decl(a, "_HID");
	aml_int(a, eisa_id("PNP0A08"));
	aml_name_decl(a, "_CID");
	aml_int(a, eisa_id("PNP0A03"));
	aml_name_decl(a, "_ADR");
	aml_int(a, 0);
	aml_name_decl(a, "_SEG");
	aml_int(a, 0);
	aml_name_decl(a, "_UID");
	aml_int(a, 0);
	aml_name_decl(a, "_BBN");
	aml_int(a, 0);

	res_word(&r, 2, 0, 0, 0xff);
	res_io(&r, PCI_CONFIG_PORT, 8);
	res_word(&r, 1, 0x03, 0, PCI_CONFIG_PORT - 1);
	res_word(&r, 1, 0x03, PCI_CONFIG_PORT + 8, 0xffff);
	res_dword_mem(&r, (uint32_t)PCI_MMIO_START, (uint32_t)(PCI_MMIO_END - 1));
	aml_name_decl(a, "_CRS");
	aml_resource_buffer(a, r.b, r.len);

	/* _PRT: every slot's four pins straight to IOAPIC GSIs (no link devices). */
	aml_name_decl(a, "_PRT");
	aml_package_open(a, 32 * 4);
	for (unsigned slot = 0; slot < 32; slot++) {
		for (unsigned pin = 0; pin < 4; pin++) {
			aml_package_open(a, 4);
			aml_int(a, (uint64_t)slot << 16 | 0xffff);
			aml_int(a, pin);
			aml_int(a, 0);
			aml_int(a, PCI_INTX_GSI(slot, pin));
			aml_close(a);
		}
	}
	aml_close(a);
	aml_close(a);
}

static void dsdt_com1(struct aml *a)
{
	struct res r = {.len = 0};

	aml_device_open(a, "COM1");
	aml_name_decl(a, "_HID");
	aml_int(a, eisa_id("PNP0501"));
	aml_name_decl(a, "_UID");
	aml_int(a, 1);
	res_io(&r, COM1_PORT, 8);
	res_irq(&r, COM1_GSI);
	aml_name_decl(a, "_CRS");
	aml_resource_buffer(a, r.b, r.len);
	aml_close(a);
}

static void dsdt_body(struct aml *a)
{
	aml_scope_open(a, "\\_SB_");
	dsdt_pci(a);
	dsdt_com1(a);
	aml_close(a);
	/* \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved. */
	aml_name_decl(a, "\\_S5_");
	aml_package_open(a, 4);
	aml_int(a, ACPI_S5_SLP_TYP);
	aml_int(a, ACPI_S5_SLP_TYP);
	aml_int(a, 0);
	aml_int(a, 0);
	aml_close(a);
}

/* ---- tables ------------------------------------------------------------------------- */

uint8_t acpi_sum(const void *p, uint64_t len)
{
	const uint8_t *b = p;
	uint8_t s = 0;

	for (uint64_t i = 0; i < len; i++)
		s = (uint8_t)(s + b[i]);
	return s;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void table_header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(t, sig, 4);
	put_le(t + 4, len, 4);
	t[8] = rev;
	memcpy(t + 10, ACPI_OEM_ID, 6);
	memcpy(t + 16, ACPI_OEM_TABLE_ID, 8);
	put_le(t + 24, 1, 4);
	memcpy(t + 28, "TERN", 4);
	put_le(t + 32, 1, 4);
}

static void table_finish(uint8_t *t)
{
	uint32_t len = (uint32_t)(t[4] | t[5] << 8 | t[6] << 16 | (uint32_t)t[7] << 24);

	t[9] = 0;
	t[9] = (uint8_t)(0x100 - acpi_sum(t, len));
}

/* Generic Address Structure: an 8-bit register in I/O space. */
static void gas_io8(uint8_t *g, uint16_t port)
{
	g[0] = 1; /* SystemIO */
	g[1] = 8; /* bit width */
	g[2] = 0; /* bit offset */
	g[3] = 1; /* byte access */
	put_le(g + 4, port, 8);
}

#define FADT_LEN 276
#define FADT_FLAG_WBINVD (1u << 0)
#define FADT_FLAG_PWR_BUTTON (1u << 4) /* no fixed power button */
#define FADT_FLAG_SLP_BUTTON (1u << 5)
#define FADT_FLAG_RESET_REG_SUP (1u << 10)
#define FADT_FLAG_HW_REDUCED (1u << 20)
#define FADT_BOOT_VGA_ABSENT (1u << 2)
#define FADT_BOOT_MSI_OK 0
#define FADT_BOOT_NO_CMOS_RTC (1u << 5)

static void fadt_build(uint8_t *t, uint64_t dsdt)
{
	table_header(t, "FACP", FADT_LEN, 6);
	put_le(t + 40, dsdt, 4);
	/* No 8042 flag: the kernel then leaves the keyboard controller unprobed. */
	put_le(t + 109, FADT_BOOT_VGA_ABSENT | FADT_BOOT_NO_CMOS_RTC, 2);
	put_le(t + 112,
	       FADT_FLAG_WBINVD | FADT_FLAG_PWR_BUTTON | FADT_FLAG_SLP_BUTTON |
		   FADT_FLAG_RESET_REG_SUP | FADT_FLAG_HW_REDUCED,
	       4);
	gas_io8(t + 116, ACPI_RESET_PORT);
	t[128] = ACPI_RESET_VALUE;
	t[131] = 0; /* FADT minor version */
	put_le(t + 140, dsdt, 8);
	gas_io8(t + 244, ACPI_SLEEP_CTL_PORT);
	gas_io8(t + 256, ACPI_SLEEP_STS_PORT);
	memcpy(t + 268, "TERNTERN", 8); /* hypervisor vendor identity */
	table_finish(t);
}

static uint32_t madt_build(uint8_t *t, int ncpus)
{
	uint32_t len = 44;

	table_header(t, "APIC", 0, 4);
	put_le(t + 36, LAPIC_BASE, 4);
	put_le(t + 40, 0, 4); /* no dual 8259: the guest runs without a legacy PIC */
	for (int i = 0; i < ncpus; i++) {
		uint8_t *e = t + len;

		e[0] = 0; /* processor local APIC */
		e[1] = 8;
		e[2] = (uint8_t)i;   /* ACPI processor UID */
		e[3] = (uint8_t)i;   /* APIC id */
		put_le(e + 4, 1, 4); /* enabled */
		len += 8;
	}
	t[len] = 1; /* IOAPIC */
	t[len + 1] = 12;
	t[len + 2] = 0; /* IOAPIC id */
	t[len + 3] = 0;
	put_le(t + len + 4, IOAPIC_BASE, 4);
	put_le(t + len + 8, 0, 4); /* GSI base */
	len += 12;
	/* ISA IRQ 0 (timer) is on pin 2, as on every PC; the rest are identity-mapped. */
	t[len] = 2;
	t[len + 1] = 10;
	t[len + 2] = 0; /* ISA bus */
	t[len + 3] = 0; /* IRQ 0 */
	put_le(t + len + 4, 2, 4);
	put_le(t + len + 8, 0, 2); /* conforms to bus: edge, active high */
	len += 10;
	put_le(t + 4, len, 4);
	table_finish(t);
	return len;
}

static uint32_t xsdt_build(uint8_t *t, const uint64_t *entries, int n)
{
	uint32_t len = ACPI_HDR_LEN + 8 * (uint32_t)n;

	table_header(t, "XSDT", len, 1);
	for (int i = 0; i < n; i++)
		put_le(t + ACPI_HDR_LEN + 8 * i, entries[i], 8);
	table_finish(t);
	return len;
}

static void rsdp_build(uint8_t *t, uint64_t xsdt)
{
	memcpy(t, "RSD PTR ", 8);
	memcpy(t + 9, ACPI_OEM_ID, 6);
	t[15] = 2; /* ACPI 2.0+ */
	put_le(t + 16, 0, 4);
	put_le(t + 20, 36, 4);
	put_le(t + 24, xsdt, 8);
	t[8] = (uint8_t)(0x100 - acpi_sum(t, 20));
	t[32] = (uint8_t)(0x100 - acpi_sum(t, 36));
}

static uint64_t align16(uint64_t v)
{
	return (v + 15) & ~15ull;
}

int acpi_build(struct guest_mem *gm, int ncpus, uint64_t *rsdp)
{
	const uint64_t size = ACPI_TABLES_END - ACPI_TABLES_BASE;
	uint8_t *area = gm_ptr_w(gm, ACPI_TABLES_BASE, size);
	uint64_t off, dsdt, fadt, madt, xsdt, entries[2];
	struct aml a;

	if (!area)
		return -ENOMEM;
	if (ncpus < 1 || ncpus > 255)
		return -EINVAL;
	memset(area, 0, size);
	/* RSDP first, at the base of the area the kernel scans. */
	off = 64;

	dsdt = off;
	a = (struct aml){.buf = area + dsdt + ACPI_HDR_LEN, .cap = size / 2};
	dsdt_body(&a);
	if (a.overflow || a.depth)
		return -E2BIG;
	table_header(area + dsdt, "DSDT", (uint32_t)(ACPI_HDR_LEN + a.len), 2);
	table_finish(area + dsdt);
	off = align16(dsdt + ACPI_HDR_LEN + a.len);

	fadt = off;
	fadt_build(area + fadt, ACPI_TABLES_BASE + dsdt);
	off = align16(fadt + FADT_LEN);

	madt = off;
	off = align16(madt + madt_build(area + madt, ncpus));

	xsdt = off;
	entries[0] = ACPI_TABLES_BASE + fadt;
	entries[1] = ACPI_TABLES_BASE + madt;
	off = align16(xsdt + xsdt_build(area + xsdt, entries, 2));
	if (off > size)
		return -E2BIG;

	rsdp_build(area, ACPI_TABLES_BASE + xsdt);
	*rsdp = ACPI_TABLES_BASE;
	return 0;
}
