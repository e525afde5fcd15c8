/*
 * A small helper library for the KVM backend tests, after the Linux KVM
 * selftests: __foo() returns the raw result (0 or -errno), foo() asserts it
 * succeeded and, if not, names the operation and the error and exits 1.
 * A test that cannot run on this host calls test_skip(), which prints
 * "SKIP: reason" as its last line and exits 77.
 *
 * Guests are small 64-bit programs written as assembly in the test file
 * (a top-level __asm__ block with global start/end labels), copied to
 * GUEST_CODE_ADDR and entered directly in long mode: the identity page
 * tables and GDT come from the real boot code (arch/x86/boot.c), so these
 * tests also check that its 64-bit entry state is accepted by KVM.
 */
#ifndef TERN_TESTS_KVM_UTIL_H
#define TERN_TESTS_KVM_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "cpu/kvm/kvm.h"
#include "vmm/vm.h"

#define GUEST_CODE_ADDR 0x10000ull
#define GUEST_STACK_TOP 0x8ff0ull
#define GUEST_DATA_ADDR 0x200000ull   /* 2 MiB: well above everything the loader uses */
#define GUEST_MMIO_ADDR 0xD0000000ull /* inside the 32-bit PCI window */

#define TEST_ASSERT(cond, fmt, ...)                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: assertion failed: %s\n  " fmt "\n", __FILE__,      \
				__LINE__, #cond, ##__VA_ARGS__);                                   \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

#define TEST_ASSERT_EQ(a, b)                                                                       \
	do {                                                                                       \
		unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);     \
		TEST_ASSERT(a_ == b_, "%s is %#llx, expected %s = %#llx", #a, a_, #b, b_);         \
	} while (0)

/* Exit 77 with "SKIP: <reason>" as the last line of output. */
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Skip unless /dev/kvm can be opened read-write. */
void kvm_require(void);
/* KVM_CHECK_EXTENSION on /dev/kvm (or the VM when vm != NULL): the raw value, -errno on error. */
int kvm_check_cap(struct vm *vm, long cap);

/* Raw ioctl on a KVM fd, and the asserting version that names the ioctl. */
int __kvm_ioctl(int fd, unsigned long req, void *arg);
#define kvm_ioctl(fd, req, arg)                                                                    \
	({                                                                                         \
		int r_ = __kvm_ioctl((fd), (req), (arg));                                          \
		TEST_ASSERT(r_ >= 0, "%s failed: %s", #req, strerror(-r_));                        \
		r_;                                                                                \
	})

/* A VM with ncpus vCPUs and mem bytes of RAM on a KVM backend, through the real vm_create(). */
int __test_vm_create(struct vm *vm, const struct cpu_backend *cpu, uint64_t mem, int ncpus);
void test_vm_create(struct vm *vm, const struct cpu_backend *cpu, uint64_t mem, int ncpus);

/* Copy guest code [start, end) to GUEST_CODE_ADDR; build page tables and GDT. */
void test_guest_load(struct vm *vm, const void *start, const void *end);
/* Put a vCPU at GUEST_CODE_ADDR in 64-bit mode, IF clear, with the given rdi. */
void test_vcpu_enter_long_mode(struct vcpu *vcpu, uint64_t rdi);

int __vcpu_get_state(struct vcpu *vcpu, struct cpu_state *st);
void vcpu_get_state(struct vcpu *vcpu, struct cpu_state *st);
int __vcpu_set_state(struct vcpu *vcpu, const struct cpu_state *st);
void vcpu_set_state(struct vcpu *vcpu, const struct cpu_state *st);
/* Run and assert the exit, printing rip on a mismatch. */
void vcpu_run_expect(struct vcpu *vcpu, enum vcpu_exit want);
const char *vcpu_exit_str(enum vcpu_exit ex);

/* An I/O device for tests: records accesses, answers reads with a pattern. */
#define TEST_DEV_LOG 64
struct test_access {
	uint64_t offset;
	uint64_t value;
	unsigned size;
	bool write;
};
struct test_dev {
	struct vm *vm;
	struct test_access log[TEST_DEV_LOG];
	unsigned n;
	/* Offset whose write kicks the writing vCPU out of run() (vCPU 0), or UINT64_MAX. */
	uint64_t kick_offset;
};
/* Reads of (offset, size) return this; tests compute the same to check. */
uint64_t test_dev_pattern(uint64_t offset, unsigned size);

/* The guest's u64 at gpa (through the checked accessor; fails the test if unmapped). */
uint64_t test_guest_u64(struct vm *vm, uint64_t gpa);
/* A 32-bit register of a saved LAPIC page (struct cpu_state.lapic). */
uint32_t test_lapic_reg(const struct cpu_state *st, unsigned off);
void test_dev_attach(struct test_dev *d, struct vm *vm, struct io_bus *bus, uint64_t base,
		     uint64_t len);
void test_dev_expect(const struct test_dev *d, unsigned i, uint64_t offset, unsigned size,
		     bool write, uint64_t value);

double test_now(void);
/* run() until it returns KICK, kicked at the latest ms from now; returns how long it ran (s). */
double test_run_kicked(struct vcpu *v, unsigned ms);

#endif
