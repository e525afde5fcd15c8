/*
 * Small platform devices of the tern machine (ports in arch/x86/layout.h):
 *   exit device (TERN_EXIT_PORT): the guest writes its command's exit status
 *     as one byte; tern records it in vm->exit_status and stops the VM;
 *   i8042 (0x60/0x64): only the reset line (command 0xFE, or 0xD1 with bit 0
 *     clear), for reboot=k; the keyboard itself is absent;
 *   ACPI hardware-reduced sleep control/status and reset registers: S5 is
 *     poweroff, the reset value is reboot.
 */
#ifndef TERN_HW_PLATFORM_H
#define TERN_HW_PLATFORM_H

struct vm;

int platform_devices_create(struct vm *vm);

#endif
