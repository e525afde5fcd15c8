/*
 * The KVM CPU backend (cpu/cpu.h: cpu_backend_kvm), and what it exposes
 * beyond the generic interface.
 *
 * cpu_backend_kvm is the production backend: guest RAM as KVM memory slots,
 * the in-kernel irqchip (PIC, IOAPIC at IOAPIC_BASE, one LAPIC per vCPU),
 * CPUID from what the host KVM supports with the topology made consistent
 * for the VM's vCPU count, and a KVM_RUN loop that hands port and MMIO
 * accesses to vm_pio()/vm_mmio().
 *
 * cpu_backend_kvm_noirqchip is the same without the in-kernel irqchip: a
 * halted vCPU then returns VCPU_EXIT_HLT instead of sleeping in the kernel
 * until an interrupt, and irq_line()/msi() fail with -ENODEV. It cannot boot
 * Linux (nothing delivers interrupts); it exists for small test programs and
 * for diagnosing irqchip problems.
 */
#ifndef TERN_CPU_KVM_KVM_H
#define TERN_CPU_KVM_KVM_H

#include "cpu/cpu.h"

extern const struct cpu_backend cpu_backend_kvm_noirqchip;

/* The file descriptor of the VM (for ioeventfd/irqfd users), or -1. */
int cpu_kvm_vm_fd(struct vm *vm);

#endif
