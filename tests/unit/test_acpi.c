/* ACPI tables: checksums, table chain, MADT contents, and (with iasl) AML that disassembles. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "arch/x86/acpi.h"
#include "arch/x86/boot.h"
#include "arch/x86/layout.h"

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

struct tables {
	struct guest_mem gm;
	uint8_t *rsdp, *xsdt, *fadt, *madt, *dsdt;
};

/* A table at gpa: its header must lie in the reserved area, its length too, its sum zero. */
static uint8_t *table_at(struct guest_mem *gm, uint64_t gpa, const char *sig)
{
	uint8_t *t = gm_ptr(gm, gpa, 36);
	uint32_t len;

	assert_non_null(t);
	assert_true(gpa >= ACPI_TABLES_BASE);
	assert_memory_equal(t, sig, 4);
	len = get32(t + 4);
	assert_true(len >= 36);
	assert_true(gpa + len <= ACPI_TABLES_END);
	assert_int_equal(acpi_sum(t, len), 0);
	return t;
}

static void load(struct tables *t, int ncpus)
{
	uint64_t rsdp;

	memset(t, 0, sizeof(*t));
	assert_int_equal(gm_init(&t->gm, 64 << 20), 0);
	assert_int_equal(acpi_build(&t->gm, ncpus, &rsdp), 0);
	/* The kernel's BIOS-area scan looks on 16-byte boundaries from 0xE0000. */
	assert_int_equal(rsdp % 16, 0);
	assert_true(rsdp >= 0xe0000 && rsdp < 0x100000);
	t->rsdp = gm_ptr(&t->gm, rsdp, 36);
	assert_memory_equal(t->rsdp, "RSD PTR ", 8);
	assert_int_equal(acpi_sum(t->rsdp, 20), 0);
	assert_int_equal(acpi_sum(t->rsdp, 36), 0);
	assert_int_equal(t->rsdp[15], 2);
	t->xsdt = table_at(&t->gm, get64(t->rsdp + 24), "XSDT");
	for (uint32_t off = 36; off < get32(t->xsdt + 4); off += 8) {
		uint64_t a = get64(t->xsdt + off);
		uint8_t *h = gm_ptr(&t->gm, a, 4);

		assert_non_null(h);
		if (!memcmp(h, "FACP", 4))
			t->fadt = table_at(&t->gm, a, "FACP");
		else if (!memcmp(h, "APIC", 4))
			t->madt = table_at(&t->gm, a, "APIC");
		else
			fail_msg("unexpected table %.4s", (const char *)h);
	}
	assert_non_null(t->fadt);
	assert_non_null(t->madt);
	t->dsdt = table_at(&t->gm, get64(t->fadt + 140), "DSDT");
	assert_int_equal(get32(t->fadt + 40), get64(t->fadt + 140));
}

static void test_fadt(void **state)
{
	struct tables t;
	uint8_t *f;

	load(&t, 1);
	f = t.fadt;
	assert_int_equal(get32(f + 4), 276);
	assert_int_equal(f[8], 6);
	assert_true(get32(f + 112) & (1u << 20)); /* hardware-reduced */
	assert_true(get32(f + 112) & (1u << 10)); /* reset register supported */
	/* Reset register: I/O port, value. */
	assert_int_equal(f[116], 1);
	assert_int_equal(get64(f + 120), ACPI_RESET_PORT);
	assert_int_equal(f[128], ACPI_RESET_VALUE);
	/* Sleep control and status registers in I/O space at the machine's ports. */
	assert_int_equal(f[244], 1);
	assert_int_equal(f[245], 8);
	assert_int_equal(get64(f + 248), ACPI_SLEEP_CTL_PORT);
	assert_int_equal(f[256], 1);
	assert_int_equal(get64(f + 260), ACPI_SLEEP_STS_PORT);
	gm_destroy(&t.gm);
}

static void test_madt(void **state)
{
	for (int ncpus = 1; ncpus <= 8; ncpus += 7) {
		struct tables t;
		uint32_t len, off;
		int lapics = 0, ioapics = 0;

		load(&t, ncpus);
		len = get32(t.madt + 4);
		assert_int_equal(get32(t.madt + 36), LAPIC_BASE);
		for (off = 44; off < len; off += t.madt[off + 1]) {
			uint8_t *e = t.madt + off;

			assert_true(e[1] >= 2);
			if (e[0] == 0) {
				assert_int_equal(e[3], lapics); /* APIC ids 0..n-1 */
				assert_int_equal(get32(e + 4) & 1, 1);
				lapics++;
			} else if (e[0] == 1) {
				assert_int_equal(get32(e + 4), IOAPIC_BASE);
				assert_int_equal(get32(e + 8), 0);
				ioapics++;
			}
		}
		assert_int_equal(off, len);
		assert_int_equal(lapics, ncpus);
		assert_int_equal(ioapics, 1);
		gm_destroy(&t.gm);
	}
}

static bool contains(const uint8_t *hay, uint32_t n, const void *needle, uint32_t m)
{
	for (uint32_t i = 0; i + m <= n; i++)
		if (!memcmp(hay + i, needle, m))
			return true;
	return false;
}

static void test_dsdt_names(void **state)
{
	struct tables t;
	uint32_t len;
	/* PNP0A08 as the compressed EISA id AML stores: 0x41D00A08, little-endian bytes. */
	static const uint8_t pnp0a08[] = {0x0c, 0x41, 0xd0, 0x0a, 0x08};

	load(&t, 1);
	len = get32(t.dsdt + 4);
	assert_true(contains(t.dsdt, len, "PCI0", 4));
	assert_true(contains(t.dsdt, len, "_PRT", 4));
	assert_true(contains(t.dsdt, len, "_CRS", 4));
	assert_true(contains(t.dsdt, len, "\\_S5_", 5));
	assert_true(contains(t.dsdt, len, pnp0a08, sizeof(pnp0a08)));
	/* Bad CPU counts are refused. */
	assert_int_equal(acpi_build(&t.gm, 0, &(uint64_t){0}), -EINVAL);
	assert_int_equal(acpi_build(&t.gm, 256, &(uint64_t){0}), -EINVAL);
	gm_destroy(&t.gm);
}

static void write_file(const char *dir, const char *name, const uint8_t *t)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(t, 1, get32(t + 4), f), get32(t + 4));
	fclose(f);
}

/* iasl (acpica-tools) disassembles the AML: a structural check of every PkgLength. */
static void test_iasl_disassembles(void **state)
{
	char dir[] = "/tmp/tern-acpi-XXXXXX";
	char cmd[1024];
	struct tables t;
	FILE *f;
	char line[512];
	bool prt = false, s5 = false, crs_mem = false;

	if (system("command -v iasl >/dev/null 2>&1") != 0) {
		printf("skipping AML disassembly: iasl not installed (Debian: acpica-tools)\n");
		skip();
	}
	load(&t, 2);
	assert_non_null(mkdtemp(dir));
	write_file(dir, "dsdt.dat", t.dsdt);
	write_file(dir, "facp.dat", t.fadt);
	write_file(dir, "apic.dat", t.madt);
	snprintf(cmd, sizeof(cmd),
		 "cd %s && iasl -d dsdt.dat facp.dat apic.dat >log 2>&1 && ! grep -qi error log",
		 dir);
	assert_int_equal(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "%s/dsdt.dsl", dir);
	f = fopen(cmd, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		prt |= strstr(line, "Name (_PRT, Package (0x80)") != NULL;
		s5 |= strstr(line, "Name (\\_S5, Package (0x04)") != NULL;
		crs_mem |= strstr(line, "0xFBFFFFFF") != NULL;
	}
	fclose(f);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	assert_true(prt);
	assert_true(s5);
	assert_true(crs_mem);
	gm_destroy(&t.gm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fadt),
	    cmocka_unit_test(test_madt),
	    cmocka_unit_test(test_dsdt_names),
	    cmocka_unit_test(test_iasl_disassembles),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
