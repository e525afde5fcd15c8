/*
 * The x86 machine tern presents, identical on both CPU backends.
 *
 * Guest-physical map:
 *   0 .. min(RAM, 3 GiB)      RAM (see vmm/mem.h); boot structures low in it
 *   0xC0000000 .. 0xFBFFFFFF  32-bit PCI MMIO window (BARs)
 *   0xFEC00000                IOAPIC
 *   0xFEE00000                local APIC (per vCPU)
 *   4 GiB ..                  RAM above the hole
 *
 * Ports and interrupts:
 *   0x3F8-0x3FF COM1, GSI 4   console
 *   0x60, 0x64  i8042 (reset line only: guest reboot)
 *   0x70-0x71   CMOS RTC (wall-clock time only)
 *   0xCF8-0xCFF PCI configuration mechanism #1
 *   0x4F0       exit device: a byte written here is the guest command's exit status
 *   0x600-0x60F ACPI hardware-reduced sleep control/status (poweroff), 0x602 reset
 */
#ifndef TERN_ARCH_X86_LAYOUT_H
#define TERN_ARCH_X86_LAYOUT_H

#define PCI_MMIO_START 0xC0000000ull
#define PCI_MMIO_END 0xFC000000ull
#define IOAPIC_BASE 0xFEC00000ull
#define LAPIC_BASE 0xFEE00000ull

#define COM1_PORT 0x3F8
#define COM1_GSI 4
#define I8042_DATA_PORT 0x60
#define I8042_CMD_PORT 0x64
#define RTC_PORT 0x70
#define PCI_CONFIG_PORT 0xCF8
#define TERN_EXIT_PORT 0x4F0
#define ACPI_SLEEP_CTL_PORT 0x600
#define ACPI_SLEEP_STS_PORT 0x601
#define ACPI_RESET_PORT 0x602

/* PCI INTx wiring (ACPI _PRT): slot s, pin p (0 = INTA) -> one of GSIs 16..23. */
#define PCI_INTX_GSI(slot, pin) (16u + (((unsigned)(slot) + (unsigned)(pin)) & 7u))

/* IOAPIC pins; GSIs 16-23 are free for devices that cannot use MSI. */
#define IOAPIC_NUM_PINS 24

#endif
