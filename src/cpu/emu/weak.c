/*
 * Fallbacks for hooks other parts of the emulator implement (sys.c, fpu.c),
 * so the core links and its unit tests run on their own. Each is weak: the
 * real definition wins when its object is linked. This file sorts after
 * those parts, so a static link finds their definitions first.
 */
#include "cpu/emu/core.h"
#include "util/log.h"

__attribute__((weak)) emu_handler emu_sys_handler(unsigned mnemonic)
{
	return NULL;
}

__attribute__((weak)) emu_handler emu_fpu_handler(unsigned mnemonic)
{
	return NULL;
}

__attribute__((weak)) noreturn void emu_raise(struct emu_cpu *c, int vector, uint32_t error_code)
{
	c->fault_vec = vector;
	c->fault_err = error_code;
	longjmp(c->jmp, 1);
}

__attribute__((weak)) void emu_deliver_fault(struct emu_cpu *c)
{
	pr_err("emu: vCPU %d: exception %d (error %#x) at %#llx, no delivery without sys.c\n",
	       c->id, c->fault_vec, c->fault_err, (unsigned long long)c->rip);
	c->fault_unhandled = true;
}

__attribute__((weak)) bool emu_check_events(struct emu_cpu *c, enum vcpu_exit *exit)
{
	if (__atomic_exchange_n(&c->sys.kick, 0, __ATOMIC_ACQ_REL)) {
		*exit = VCPU_EXIT_KICK;
		return true;
	}
	if (c->sys.halted) {
		*exit = VCPU_EXIT_HLT;
		return true;
	}
	return false;
}

/* Without descriptor tables: real-mode style bases, flat otherwise. */
__attribute__((weak)) void emu_load_seg(struct emu_cpu *c, int seg, uint16_t sel)
{
	c->seg[seg].sel = sel;
	c->seg[seg].base = (c->cr0 & CR0_PE) ? 0 : (uint64_t)sel << 4;
}

__attribute__((weak)) void emu_fpu_reset(struct emu_cpu *c)
{
	memset(&c->fpu, 0, sizeof(c->fpu));
	c->fpu.fcw = 0x37f;
	c->fpu.ftw = 0xffff;
	c->fpu.mxcsr = 0x1f80;
}

/* FXSAVE image: control/status words, abridged tags, MXCSR, XMM0-15 (x87 registers left 0). */
__attribute__((weak)) void emu_fpu_to_fxsave(const struct emu_cpu *c, uint8_t out[512])
{
	uint8_t abridged = 0;

	memset(out, 0, 512);
	for (int r = 0; r < 8; r++)
		if (((c->fpu.ftw >> (2 * r)) & 3) != 3)
			abridged |= (uint8_t)(1u << r);
	memcpy(out + 0, &c->fpu.fcw, 2);
	memcpy(out + 2, &c->fpu.fsw, 2);
	out[4] = abridged;
	memcpy(out + 24, &c->fpu.mxcsr, 4);
	memcpy(out + 160, c->fpu.xmm, sizeof(c->fpu.xmm));
}

__attribute__((weak)) void emu_fpu_from_fxsave(struct emu_cpu *c, const uint8_t in[512])
{
	memcpy(&c->fpu.fcw, in + 0, 2);
	memcpy(&c->fpu.fsw, in + 2, 2);
	c->fpu.ftw = 0;
	for (int r = 0; r < 8; r++)
		if (!(in[4] & (1u << r)))
			c->fpu.ftw |= (uint16_t)(3u << (2 * r));
	memcpy(&c->fpu.mxcsr, in + 24, 4);
	memcpy(c->fpu.xmm, in + 160, sizeof(c->fpu.xmm));
}
