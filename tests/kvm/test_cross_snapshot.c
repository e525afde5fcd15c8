/*
 * Cross-backend snapshots (state/cpu_neutral.h): a small guest snapshotted
 * on the emulator continues on KVM, and one snapshotted on KVM continues on
 * the emulator, through the backend-neutral record alone (the real codec:
 * cpu_neutral_save/decode/check), the vCPU records and a copy of RAM.
 *
 * Both VMs present the emulator's portable CPU model (cpu_model_cfg.baseline:
 * the emulator's features that this host's KVM also offers) at this host's
 * KVM TSC rate and KVM's 1 GHz LAPIC timer. The
 * guest counts in r12 and in memory with its LAPIC timer armed (one-shot,
 * vector 0x42) and IOAPIC pin 5 routed to vector 0x41; vCPU 1 is never
 * started. After the move: the count continues, the timer fires with the
 * count it had left, pin 5 still delivers, vCPU 1 still waits for SIPI.
 * Refused: a damaged record (every truncation, another version, values out
 * of range) and a guest that saw a CPU feature the target lacks (KVM's
 * full host model onto the emulator; a saved AVX2 bit), named in the error.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "cpu/kvm/kvm_priv.h"
#include "kvm/lib/kvm_util.h"
#include "state/cpu_neutral.h"
#include "state/snapfile.h"

#define PORT 0x510
#define IDT_ADDR 0xa000ull
#define READY 0xee
#define NCPUS 2
#define TMICT 2000000000u /* 2 s at 1 GHz: ample on a loaded host */
#define APIC_TMICT 0x380
#define APIC_TMCCT 0x390
#define MEM_SIZE (16ull << 20)
#define D_COUNT 0
#define D_TIMER 16
#define D_PIN5 24

/* rdi = GUEST_DATA_ADDR, esi = initial count of the LAPIC timer. */
__asm__(".pushsection .text\n"
	".globl guest_x_start, guest_x_41, guest_x_42, guest_x_end\n"
	"guest_x_start:\n"
	"	mov $0xfee00000, %ebx\n"
	"	movl $0x1ff, 0xf0(%rbx)\n"
	"	mov $0xfec00000, %ecx\n"
	"	movl $0x1a, (%rcx)\n"
	"	movl $0x41, 0x10(%rcx)\n"
	"	movl $0x1b, (%rcx)\n"
	"	movl $0, 0x10(%rcx)\n"
	"	movl $0xb, 0x3e0(%rbx)\n"
	"	movl $0x42, 0x320(%rbx)\n"
	"	movl %esi, 0x380(%rbx)\n"
	"	mov $0x510, %dx\n"
	"	mov $0xee, %al\n"
	"	out %al, %dx\n"
	"	xor %r12d, %r12d\n"
	"	sti\n"
	"1:	inc %r12\n"
	"	mov %r12, (%rdi)\n"
	"	jmp 1b\n"
	"guest_x_42:\n"
	"	push %rax\n"
	"	incq 16(%rdi)\n"
	"	mov $0x42, %al\n"
	"	jmp 2f\n"
	"guest_x_41:\n"
	"	push %rax\n"
	"	incq 24(%rdi)\n"
	"	mov $0x41, %al\n"
	"2:	push %rdx\n"
	"	movl $0, 0xb0(%rbx)\n"
	"	mov $0x510, %dx\n"
	"	out %al, %dx\n"
	"	pop %rdx\n"
	"	pop %rax\n"
	"	iretq\n"
	"guest_x_end:\n"
	".popsection\n");
extern const char guest_x_start[], guest_x_41[], guest_x_42[], guest_x_end[];

static bool emu_to_kvm_ran;

struct snapshot {
	struct cpu_state st[NCPUS];
	struct dev_buf rec; /* the neutral record, encoded */
	uint8_t *ram;
};

static void set_gate(struct vm *vm, unsigned vec, const char *handler)
{
	uint64_t addr = GUEST_CODE_ADDR + (uint64_t)(handler - guest_x_start);
	uint64_t gate[2] = {
	    (addr & 0xffff) | (0x10ull << 16) | (0x8eull << 40) | ((addr >> 16 & 0xffff) << 48),
	    addr >> 32,
	};

	TEST_ASSERT(gm_write(&vm->mem, IDT_ADDR + 16 * vec, gate, sizeof(gate)) == 0, "IDT");
}

static void vm_build(struct vm *vm, struct test_dev *dev, const struct cpu_backend *cpu,
		     const struct cpu_model_cfg *model)
{
	struct vm_config cfg = {.mem_size = MEM_SIZE, .ncpus = NCPUS, .cpu = cpu, .model = *model};
	int r = vm_create(vm, &cfg);

	TEST_ASSERT(r == 0, "vm_create(%s): %s", cpu->name, strerror(-r));
	test_dev_attach(dev, vm, &vm->pio, PORT, 1);
	dev->kick_offset = 0;
}

static void guest_start(struct vm *vm, struct test_dev *dev)
{
	struct vcpu *v = &vm->vcpus[0];
	struct cpu_state st;

	test_guest_load(vm, guest_x_start, guest_x_end);
	set_gate(vm, 0x41, guest_x_41);
	set_gate(vm, 0x42, guest_x_42);
	test_vcpu_enter_long_mode(v, GUEST_DATA_ADDR);
	vcpu_get_state(v, &st);
	st.gpr[6] = TMICT;
	st.idt.base = IDT_ADDR;
	st.idt.limit = 256 * 16 - 1;
	vcpu_set_state(v, &st);
	vcpu_run_expect(v, VCPU_EXIT_KICK);
	TEST_ASSERT_EQ(dev->n, 1);
	test_dev_expect(dev, 0, 0, 1, true, READY);
}

/* Run the guest a while, then take what a snapshot file would hold. */
static void snapshot_take(struct vm *vm, struct snapshot *s)
{
	int r;

	test_run_kicked(&vm->vcpus[0], 100);
	for (int i = 0; i < NCPUS; i++)
		vcpu_get_state(&vm->vcpus[i], &s->st[i]);
	memset(&s->rec, 0, sizeof(s->rec));
	r = cpu_neutral_save(vm, &s->rec);
	TEST_ASSERT(r == 0, "cpu_neutral_save on %s: %s", vm->cpu->name, strerror(-r));
	s->ram = malloc(vm->mem.low_size);
	TEST_ASSERT(s->ram, "malloc");
	TEST_ASSERT(gm_read(&vm->mem, 0, s->ram, vm->mem.low_size) == 0, "copy RAM");
	TEST_ASSERT(s->st[0].gpr[12] > 0, "the guest did not count on %s", vm->cpu->name);
}

static void test_damaged(const struct dev_buf *good)
{
	struct cpu_neutral *n = malloc(sizeof(*n));
	uint8_t *b = malloc(good->len + 1);
	/* Offsets in version 1: flags 4, TSC kHz 8, first vCPU's MP state after the IOAPIC. */
	const uint64_t off_mp = 16 + CPU_NEUTRAL_LEAVES * 24 + 12 + 8 * CPU_NEUTRAL_PINS + 4;
	const struct {
		uint64_t off;
		uint32_t v;
		int want;
		const char *what;
	} bad[] = {
	    {0, 2, -EPROTONOSUPPORT, "version 2"}, {4, 8, -EINVAL, "unknown flag"},
	    {8, 0, -EINVAL, "TSC 0 kHz"},	   {12, 0, -EINVAL, "LAPIC tick 0 ns"},
	    {16, 5, -EINVAL, "leaf out of order"}, {off_mp - 4, 0, -EINVAL, "0 vCPUs"},
	    {off_mp, 3, -EINVAL, "MP state 3"},
	};

	TEST_ASSERT(n && b, "malloc");
	TEST_ASSERT_EQ(cpu_neutral_decode(good->data, good->len, n), 0);
	for (uint64_t len = 0; len < good->len; len++)
		TEST_ASSERT(cpu_neutral_decode(good->data, len, n) < 0,
			    "truncated to %llu accepted", (unsigned long long)len);
	memcpy(b, good->data, good->len);
	b[good->len] = 0;
	TEST_ASSERT_EQ(cpu_neutral_decode(b, good->len + 1, n), -EINVAL);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r;

		memcpy(b, good->data, good->len);
		memcpy(b + bad[i].off, &bad[i].v, 4);
		r = cpu_neutral_decode(b, good->len, n);
		TEST_ASSERT(r == bad[i].want, "%s: decode returned %d, expected %d", bad[i].what, r,
			    bad[i].want);
	}
	free(b);
	free(n);
}

/* Build the target from the record alone, check, load, and see the guest go on. */
static void restore_on(const struct cpu_backend *cpu, const struct snapshot *s)
{
	struct cpu_neutral *n = malloc(sizeof(*n));
	struct cpu_model_cfg model;
	struct test_dev dev;
	struct cpu_state st;
	struct vm vm;
	char why[512] = "";
	uint64_t r12 = s->st[0].gpr[12], tmcct = test_lapic_reg(&s->st[0], APIC_TMCCT);
	double fired;
	int r;

	TEST_ASSERT(n, "malloc");
	TEST_ASSERT_EQ(cpu_neutral_decode(s->rec.data, s->rec.len, n), 0);
	TEST_ASSERT(n->flags & CPU_NEUTRAL_BASELINE, "flags %#x", n->flags);
	TEST_ASSERT_EQ(n->cpu[1].mp_state, CPU_MP_WAIT_SIPI);
	TEST_ASSERT(tmcct > 0 && tmcct < TMICT, "saved timer count %llu",
		    (unsigned long long)tmcct);
	cpu_neutral_model(n, &model);
	vm_build(&vm, &dev, cpu, &model);
	r = cpu_neutral_check(&vm, n, why, sizeof(why));
	if (r == -EXDEV && cpu == &cpu_backend_kvm) {
		/* This host's KVM offers less than the emulator: the rule must say what. */
		TEST_ASSERT(strstr(why, "cannot offer the CPU the guest was given: CPUID"), "%s",
			    why);
		printf("NOTE: emu -> KVM refused on this host, as it must be: %s\n", why);
		vm_destroy(&vm);
		free(n);
		return;
	}
	TEST_ASSERT(r == 0, "feature check on %s: %s", cpu->name, why);
	emu_to_kvm_ran |= cpu == &cpu_backend_kvm;
	TEST_ASSERT(gm_write(&vm.mem, 0, s->ram, vm.mem.low_size) == 0, "RAM back");
	for (int i = 0; i < NCPUS; i++)
		vcpu_set_state(&vm.vcpus[i], &s->st[i]);
	r = vm.cpu->import_neutral(&vm, n);
	TEST_ASSERT(r == 0, "import_neutral on %s: %s", cpu->name, strerror(-r));
	vcpu_get_state(&vm.vcpus[0], &st);
	TEST_ASSERT_EQ(st.gpr[12], r12);
	TEST_ASSERT_EQ(test_lapic_reg(&st, APIC_TMICT), TMICT);
	TEST_ASSERT(test_lapic_reg(&st, APIC_TMCCT) <= tmcct && test_lapic_reg(&st, APIC_TMCCT) > 0,
		    "timer count %u on %s, %llu saved: restarted?", test_lapic_reg(&st, APIC_TMCCT),
		    cpu->name, (unsigned long long)tmcct);

	fired = test_run_kicked(&vm.vcpus[0], 5000);
	TEST_ASSERT_EQ(dev.n, 1);
	test_dev_expect(&dev, 0, 0, 1, true, 0x42);
	TEST_ASSERT(fired < 4.0, "the timer fired after %.2f s on %s", fired, cpu->name);
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + D_TIMER), 1);
	vcpu_get_state(&vm.vcpus[0], &st);
	TEST_ASSERT(st.gpr[12] > r12, "r12 %llu, saved %llu on %s", (unsigned long long)st.gpr[12],
		    (unsigned long long)r12, cpu->name);
	TEST_ASSERT(test_guest_u64(&vm, GUEST_DATA_ADDR + D_COUNT) >= r12, "count went back");

	TEST_ASSERT_EQ(vm.cpu->irq_line(&vm, 5, 1), 0);
	TEST_ASSERT_EQ(vm.cpu->irq_line(&vm, 5, 0), 0);
	test_run_kicked(&vm.vcpus[0], 5000);
	TEST_ASSERT_EQ(dev.n, 2);
	test_dev_expect(&dev, 1, 0, 1, true, 0x41);
	TEST_ASSERT_EQ(test_guest_u64(&vm, GUEST_DATA_ADDR + D_PIN5), 1);

	/* vCPU 1 was never started: it still runs nothing. */
	test_run_kicked(&vm.vcpus[1], 200);
	vcpu_get_state(&vm.vcpus[1], &st);
	TEST_ASSERT_EQ(st.rip, s->st[1].rip);

	/* A guest that saw AVX2 cannot continue on this model. */
	n->leaves[3].r[1] |= 1u << 5;
	why[0] = 0;
	TEST_ASSERT_EQ(cpu_neutral_check(&vm, n, why, sizeof(why)), -EXDEV);
	TEST_ASSERT(strstr(why, "CPUID 0x7.0 EBX bits 0x20"), "message: %s", why);
	vm_destroy(&vm);
	free(n);
}

/* KVM's own (host) model onto the emulator: refused, naming what the emulator lacks. */
static void test_host_model_refused(void)
{
	struct cpu_model_cfg host = {0}, model;
	struct cpu_neutral *n = malloc(sizeof(*n));
	struct test_dev dev_k, dev_e;
	struct dev_buf rec = {0};
	struct vm k, e;
	char why[512] = "";

	TEST_ASSERT(n, "malloc");
	vm_build(&k, &dev_k, &cpu_backend_kvm, &host);
	TEST_ASSERT_EQ(cpu_neutral_save(&k, &rec), 0);
	vm_destroy(&k);
	TEST_ASSERT_EQ(cpu_neutral_decode(rec.data, rec.len, n), 0);
	TEST_ASSERT(!(n->flags & CPU_NEUTRAL_BASELINE), "flags %#x", n->flags);
	cpu_neutral_model(n, &model);
	vm_build(&e, &dev_e, &cpu_backend_emu, &model);
	TEST_ASSERT_EQ(cpu_neutral_check(&e, n, why, sizeof(why)), -EXDEV);
	TEST_ASSERT(strstr(why, "cannot offer the CPU the guest was given: CPUID"), "message: %s",
		    why);
	printf("host model onto the emulator: refused: %s\n", why);
	vm_destroy(&e);
	dev_buf_free(&rec);
	free(n);
}

int main(void)
{
	struct cpu_model_cfg model = {.baseline = true};
	struct test_dev dev;
	struct snapshot s;
	struct vm vm;
	uint32_t tsc_khz;

	kvm_require();
	/* The KVM VM first: it tells the TSC rate this host's KVM runs guests at. */
	vm_build(&vm, &dev, &cpu_backend_kvm, &model);
	tsc_khz = kvm_vm(&vm)->model.tsc_khz;
	TEST_ASSERT(tsc_khz > 0, "KVM TSC rate unknown");

	/* KVM -> emulator. */
	guest_start(&vm, &dev);
	snapshot_take(&vm, &s);
	vm_destroy(&vm);
	test_damaged(&s.rec);
	restore_on(&cpu_backend_emu, &s);
	dev_buf_free(&s.rec);
	free(s.ram);

	/* Emulator -> KVM, the emulator running at KVM's TSC rate. */
	model.tsc_khz = tsc_khz;
	model.apic_tick_ns = 1;
	vm_build(&vm, &dev, &cpu_backend_emu, &model);
	guest_start(&vm, &dev);
	snapshot_take(&vm, &s);
	vm_destroy(&vm);
	restore_on(&cpu_backend_kvm, &s);
	dev_buf_free(&s.rec);
	free(s.ram);

	test_host_model_refused();
	printf("PASS: cross-backend snapshots: after KVM -> emu%s the count, the LAPIC timer and "
	       "IOAPIC routing continue and the AP waits for SIPI; damaged records and missing "
	       "CPU features refused\n",
	       emu_to_kvm_ran ? " and emu -> KVM" : " (emu -> KVM refused: features)");
	return 0;
}
