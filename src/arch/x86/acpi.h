/*
 * ACPI tables for the tern machine, identical on both CPU backends:
 * RSDP -> XSDT -> FADT (hardware-reduced, sleep control/status and reset
 * registers in I/O space), DSDT (PCI host bridge with _CRS and _PRT, COM1,
 * \_S5), MADT (one local APIC per vCPU, the IOAPIC, ISA overrides).
 * All of it lives in [ACPI_TABLES_BASE, ACPI_TABLES_END), which the e820
 * map reserves; the RSDP is at ACPI_TABLES_BASE, where the kernel's scan of
 * the BIOS area finds it even without boot_params.acpi_rsdp_addr.
 *
 * Sleep: the guest writes (SLP_TYP << 2) | SLP_EN to ACPI_SLEEP_CTL_PORT;
 * \_S5 has SLP_TYP = ACPI_S5_SLP_TYP. Reset: ACPI_RESET_VALUE to ACPI_RESET_PORT.
 * PCI INTx: device slot s, pin p (0 = INTA) is wired to GSI PCI_INTX_GSI(s, p).
 */
#ifndef TERN_ARCH_X86_ACPI_H
#define TERN_ARCH_X86_ACPI_H

#include <stdint.h>

#include "vmm/mem.h"

#define ACPI_S5_SLP_TYP 5
#define ACPI_SLP_EN 0x20
#define ACPI_RESET_VALUE 0x01

/* Build every table; *rsdp receives the RSDP's gpa. Returns 0 or -errno. */
int acpi_build(struct guest_mem *gm, int ncpus, uint64_t *rsdp);

/* Sum of bytes, for checksums (a valid table sums to 0). */
uint8_t acpi_sum(const void *p, uint64_t len);

#endif
