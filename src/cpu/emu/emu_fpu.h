/* x87 / SSE state of one emulated vCPU (fpu.c, sse.c). Included by emu.h only. */
#ifndef TERN_CPU_EMU_EMU_FPU_H
#define TERN_CPU_EMU_EMU_FPU_H

typedef union {
	uint8_t b[16];
	uint16_t w[8];
	uint32_t d[4];
	uint64_t q[2];
	float f[4];
	double fd[2];
} emu_xmm;

struct emu_fpu {
	long double st[8];	/* physical registers R0..R7; ST(i) = st[(top + i) & 7] */
	uint16_t fcw, fsw, ftw; /* ftw: full 2-bit tag word */
	uint16_t fop;
	uint64_t fip, fdp;
	uint32_t mxcsr;
	emu_xmm xmm[16];
};

struct emu_cpu;
/* Reset state (FNINIT + MXCSR default); FXSAVE image in/out for get/set_state. */
void emu_fpu_reset(struct emu_cpu *c);
void emu_fpu_to_fxsave(const struct emu_cpu *c, uint8_t out[512]);
void emu_fpu_from_fxsave(struct emu_cpu *c, const uint8_t in[512]);

#endif
