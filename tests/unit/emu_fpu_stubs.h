/*
 * Weak stand-ins for the emulator core's entry points that fpu.c and sse.c
 * call, so their semantic tests link while the core is absent from
 * libtern.a. The tests that include this never reach them; with the core
 * linked in, its strong definitions win.
 */
#ifndef TERN_TESTS_EMU_FPU_STUBS_H
#define TERN_TESTS_EMU_FPU_STUBS_H

#include <stdio.h>
#include <stdlib.h>

#include "cpu/emu/emu.h"

#define EMU_FPU_STUB(ret, name, ...)                                                               \
	__attribute__((weak)) ret name(__VA_ARGS__)                                                \
	{                                                                                          \
		fprintf(stderr, "emulator core stub %s called\n", #name);                          \
		abort();                                                                           \
	}

__attribute__((weak)) noreturn void emu_raise(struct emu_cpu *c, int vector, uint32_t error_code)
{
	c->fault_vec = vector;
	c->fault_err = error_code;
	longjmp(c->jmp, 1);
}

EMU_FPU_STUB(uint64_t, emu_ea, struct emu_cpu *c, const struct emu_operand *o)
EMU_FPU_STUB(uint64_t, emu_op_read, struct emu_cpu *c, const struct emu_insn *i, int n)
EMU_FPU_STUB(void, emu_op_write, struct emu_cpu *c, const struct emu_insn *i, int n, uint64_t v)
EMU_FPU_STUB(void, emu_reg_write, struct emu_cpu *c, unsigned reg, unsigned size, uint64_t v)
EMU_FPU_STUB(uint64_t, emu_rflags, struct emu_cpu *c)
EMU_FPU_STUB(void, emu_set_rflags, struct emu_cpu *c, uint64_t v)
EMU_FPU_STUB(uint64_t, emu_read, struct emu_cpu *c, uint64_t la, unsigned size)
EMU_FPU_STUB(void, emu_write, struct emu_cpu *c, uint64_t la, unsigned size, uint64_t v)
EMU_FPU_STUB(void, emu_read_buf, struct emu_cpu *c, uint64_t la, void *buf, unsigned len)
EMU_FPU_STUB(void, emu_write_buf, struct emu_cpu *c, uint64_t la, const void *buf, unsigned len)
EMU_FPU_STUB(emu_handler, emu_int_handler, unsigned mnemonic)

#endif
