/*
 * SSE/SSE2 for the emulator: moves, packed integer operations and floating
 * point. Every instruction goes through one generic handler that fetches the
 * operands into a struct sse_args, runs the mnemonic's semantic function and
 * writes the result back, so each semantic is a small pure function.
 *
 * Floating point runs on the host's own SSE unit with the guest's MXCSR
 * (rounding, DAZ, FTZ) loaded and every exception masked: the host is
 * x86-64, so this is bit-exact, including NaN propagation. The flags it
 * raises are then checked against the guest's masks to decide on #XM.
 */
#include <string.h>

#include <Zydis/Zydis.h>

#include "cpu/emu/fpu_int.h"

typedef uint32_t (*sse_fn)(struct sse_args *a);

enum {
	SSE_UNALIGNED = 1 << 0,	 /* 16-byte memory operand need not be aligned */
	SSE_SETS_FLAGS = 1 << 1, /* result is ZF/PF/CF in d.q[0], no destination */
};

struct sse_desc {
	sse_fn fn;
	uint8_t flags;
};

/* ---- Packed integer helpers ---- */

static int16_t sat16(int32_t v)
{
	return v > INT16_MAX ? INT16_MAX : v < INT16_MIN ? INT16_MIN : (int16_t)v;
}

static int8_t sat8(int32_t v)
{
	return v > INT8_MAX ? INT8_MAX : v < INT8_MIN ? INT8_MIN : (int8_t)v;
}

static uint8_t satu8(int32_t v)
{
	return v > UINT8_MAX ? UINT8_MAX : v < 0 ? 0 : (uint8_t)v;
}

static uint16_t satu16(int32_t v)
{
	return v > UINT16_MAX ? UINT16_MAX : v < 0 ? 0 : (uint16_t)v;
}

/* Lane-wise binary operations, defined by one expression over x (dest) and y (source). */
#define LANES(name, T, lane, n, expr)                                                              \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		for (int k = 0; k < (n); k++) {                                                    \
			T x = a->d.lane[k], y = a->s.lane[k];                                      \
			a->d.lane[k] = (T)(expr);                                                  \
		}                                                                                  \
		return 0;                                                                          \
	}
#define LANES_B(name, expr) LANES(name, uint8_t, b, 16, expr)
#define LANES_W(name, expr) LANES(name, uint16_t, w, 8, expr)
#define LANES_D(name, expr) LANES(name, uint32_t, d, 4, expr)
#define LANES_Q(name, expr) LANES(name, uint64_t, q, 2, expr)

LANES_B(padd_b, x + y)
LANES_W(padd_w, x + y)
LANES_D(padd_d, x + y)
LANES_Q(padd_q, x + y)
LANES_B(psub_b, x - y)
LANES_W(psub_w, x - y)
LANES_D(psub_d, x - y)
LANES_Q(psub_q, x - y)
LANES_B(padds_b, sat8((int8_t)x + (int8_t)y))
LANES_W(padds_w, sat16((int16_t)x + (int16_t)y))
LANES_B(psubs_b, sat8((int8_t)x - (int8_t)y))
LANES_W(psubs_w, sat16((int16_t)x - (int16_t)y))
LANES_B(paddus_b, satu8(x + y))
LANES_W(paddus_w, satu16(x + y))
LANES_B(psubus_b, satu8(x - y))
LANES_W(psubus_w, satu16(x - y))
LANES_B(pcmpeq_b, x == y ? 0xff : 0)
LANES_W(pcmpeq_w, x == y ? 0xffff : 0)
LANES_D(pcmpeq_d, x == y ? 0xffffffffu : 0)
LANES_B(pcmpgt_b, (int8_t)x > (int8_t)y ? 0xff : 0)
LANES_W(pcmpgt_w, (int16_t)x > (int16_t)y ? 0xffff : 0)
LANES_D(pcmpgt_d, (int32_t)x > (int32_t)y ? 0xffffffffu : 0)
LANES_Q(pand, x &y)
LANES_Q(pandn, ~x &y)
LANES_Q(por, x | y)
LANES_Q(pxor, x ^ y)
LANES_B(pminub, x < y ? x : y)
LANES_B(pmaxub, x > y ? x : y)
LANES_W(pminsw, (int16_t)x < (int16_t)y ? x : y)
LANES_W(pmaxsw, (int16_t)x > (int16_t)y ? x : y)
LANES_B(pavgb, ((unsigned)x + y + 1) >> 1)
LANES_W(pavgw, ((unsigned)x + y + 1) >> 1)
LANES_W(pmullw, (uint32_t)x *y)
LANES_W(pmulhw, ((int32_t)(int16_t)x * (int16_t)y) >> 16)
LANES_W(pmulhuw, ((uint32_t)x * y) >> 16)

static uint32_t pmuludq(struct sse_args *a)
{
	a->d.q[0] = (uint64_t)a->d.d[0] * a->s.d[0];
	a->d.q[1] = (uint64_t)a->d.d[2] * a->s.d[2];
	return 0;
}

static uint32_t pmaddwd(struct sse_args *a)
{
	emu_xmm r;

	for (int k = 0; k < 4; k++) {
		int32_t lo = (int32_t)(int16_t)a->d.w[2 * k] * (int16_t)a->s.w[2 * k];
		int32_t hi = (int32_t)(int16_t)a->d.w[2 * k + 1] * (int16_t)a->s.w[2 * k + 1];
		/* Only 0x8000 * 0x8000 twice overflows; hardware wraps to 0x80000000. */
		r.d[k] = (uint32_t)lo + (uint32_t)hi;
	}
	a->d = r;
	return 0;
}

static uint32_t psadbw(struct sse_args *a)
{
	for (int h = 0; h < 2; h++) {
		unsigned sum = 0;

		for (int k = 0; k < 8; k++) {
			int v = a->d.b[8 * h + k] - a->s.b[8 * h + k];
			sum += v < 0 ? -v : v;
		}
		a->d.q[h] = sum;
	}
	return 0;
}

/* Shifts: the count is the whole low quadword of the source (or the imm8). */
#define SHIFT(name, lanes, field, bits, expr)                                                      \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		uint64_t n = a->s.q[0];                                                            \
		for (int k = 0; k < lanes; k++) {                                                  \
			__typeof__(a->d.field[0]) x = a->d.field[k];                               \
			a->d.field[k] = (__typeof__(x))(expr);                                     \
		}                                                                                  \
		return 0;                                                                          \
	}

SHIFT(psllw, 8, w, 16, n > 15 ? 0 : (uint32_t)x << n)
SHIFT(pslld, 4, d, 32, n > 31 ? 0 : x << n)
SHIFT(psllq, 2, q, 64, n > 63 ? 0 : x << n)
SHIFT(psrlw, 8, w, 16, n > 15 ? 0 : x >> n)
SHIFT(psrld, 4, d, 32, n > 31 ? 0 : x >> n)
SHIFT(psrlq, 2, q, 64, n > 63 ? 0 : x >> n)
SHIFT(psraw, 8, w, 16, (int16_t)x >> (n > 15 ? 15 : n))
SHIFT(psrad, 4, d, 32, (int32_t)x >> (n > 31 ? 31 : n))

static uint32_t pslldq(struct sse_args *a)
{
	unsigned n = a->imm > 16 ? 16 : a->imm;
	emu_xmm r = {0};

	memcpy(&r.b[n], a->d.b, 16 - n);
	a->d = r;
	return 0;
}

static uint32_t psrldq(struct sse_args *a)
{
	unsigned n = a->imm > 16 ? 16 : a->imm;
	emu_xmm r = {0};

	memcpy(r.b, &a->d.b[n], 16 - n);
	a->d = r;
	return 0;
}

static uint32_t pshufd(struct sse_args *a)
{
	for (int k = 0; k < 4; k++)
		a->d.d[k] = a->s.d[(a->imm >> (2 * k)) & 3];
	return 0;
}

static uint32_t pshuflw(struct sse_args *a)
{
	a->d.q[1] = a->s.q[1];
	for (int k = 0; k < 4; k++)
		a->d.w[k] = a->s.w[(a->imm >> (2 * k)) & 3];
	return 0;
}

static uint32_t pshufhw(struct sse_args *a)
{
	a->d.q[0] = a->s.q[0];
	for (int k = 0; k < 4; k++)
		a->d.w[4 + k] = a->s.w[4 + ((a->imm >> (2 * k)) & 3)];
	return 0;
}

static uint32_t shufps(struct sse_args *a)
{
	emu_xmm r;

	r.d[0] = a->d.d[a->imm & 3];
	r.d[1] = a->d.d[(a->imm >> 2) & 3];
	r.d[2] = a->s.d[(a->imm >> 4) & 3];
	r.d[3] = a->s.d[(a->imm >> 6) & 3];
	a->d = r;
	return 0;
}

static uint32_t shufpd(struct sse_args *a)
{
	emu_xmm r;

	r.q[0] = a->d.q[a->imm & 1];
	r.q[1] = a->s.q[(a->imm >> 1) & 1];
	a->d = r;
	return 0;
}

/* Interleave: elements of size es from the low (hi=0) or high half of d and s. */
static void unpack(struct sse_args *a, unsigned es, bool hi)
{
	emu_xmm r;
	unsigned n = 8 / es; /* elements per half */
	unsigned base = hi ? 8 : 0;

	for (unsigned k = 0; k < n; k++) {
		memcpy(&r.b[2 * k * es], &a->d.b[base + k * es], es);
		memcpy(&r.b[(2 * k + 1) * es], &a->s.b[base + k * es], es);
	}
	a->d = r;
}

#define UNPACK(name, es, hi)                                                                       \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		unpack(a, es, hi);                                                                 \
		return 0;                                                                          \
	}
UNPACK(punpcklbw, 1, false)
UNPACK(punpcklwd, 2, false)
UNPACK(punpckldq, 4, false)
UNPACK(punpcklqdq, 8, false)
UNPACK(punpckhbw, 1, true)
UNPACK(punpckhwd, 2, true)
UNPACK(punpckhdq, 4, true)
UNPACK(punpckhqdq, 8, true)

static uint32_t packsswb(struct sse_args *a)
{
	emu_xmm r;

	for (int k = 0; k < 8; k++) {
		r.b[k] = (uint8_t)sat8((int16_t)a->d.w[k]);
		r.b[8 + k] = (uint8_t)sat8((int16_t)a->s.w[k]);
	}
	a->d = r;
	return 0;
}

static uint32_t packuswb(struct sse_args *a)
{
	emu_xmm r;

	for (int k = 0; k < 8; k++) {
		r.b[k] = satu8((int16_t)a->d.w[k]);
		r.b[8 + k] = satu8((int16_t)a->s.w[k]);
	}
	a->d = r;
	return 0;
}

static uint32_t packssdw(struct sse_args *a)
{
	emu_xmm r;

	for (int k = 0; k < 4; k++) {
		r.w[k] = (uint16_t)sat16((int32_t)a->d.d[k]);
		r.w[4 + k] = (uint16_t)sat16((int32_t)a->s.d[k]);
	}
	a->d = r;
	return 0;
}

static uint32_t pmovmskb(struct sse_args *a)
{
	uint64_t m = 0;

	for (int k = 0; k < 16; k++)
		m |= (uint64_t)(a->s.b[k] >> 7) << k;
	a->d.q[0] = m;
	a->d.q[1] = 0;
	return 0;
}

static uint32_t movmskps(struct sse_args *a)
{
	uint64_t m = 0;

	for (int k = 0; k < 4; k++)
		m |= (uint64_t)(a->s.d[k] >> 31) << k;
	a->d.q[0] = m;
	a->d.q[1] = 0;
	return 0;
}

static uint32_t movmskpd(struct sse_args *a)
{
	a->d.q[0] = (a->s.q[0] >> 63) | ((a->s.q[1] >> 63) << 1);
	a->d.q[1] = 0;
	return 0;
}

static uint32_t pextrw(struct sse_args *a)
{
	a->d.q[0] = a->s.w[a->imm & 7];
	a->d.q[1] = 0;
	return 0;
}

static uint32_t pinsrw(struct sse_args *a)
{
	a->d.w[a->imm & 7] = a->s.w[0];
	return 0;
}

/* ---- Moves ---- */

static uint32_t mov_full(struct sse_args *a)
{
	a->d = a->s;
	return 0;
}

/* MOVD/MOVQ between XMM, general registers and memory: the other lanes are zeroed. */
static uint32_t movd(struct sse_args *a)
{
	a->d.q[0] = a->s.d[0];
	a->d.q[1] = 0;
	return 0;
}

static uint32_t movq(struct sse_args *a)
{
	a->d.q[0] = a->s.q[0];
	a->d.q[1] = 0;
	return 0;
}

/* MOVSS/MOVSD: register-register merges the low lane, loads zero the rest. */
static uint32_t movss(struct sse_args *a)
{
	if (a->smem)
		a->d.q[0] = a->d.q[1] = 0;
	a->d.d[0] = a->s.d[0];
	return 0;
}

static uint32_t movsd(struct sse_args *a)
{
	if (a->smem)
		a->d.q[1] = 0;
	a->d.q[0] = a->s.q[0];
	return 0;
}

static uint32_t movlps(struct sse_args *a)
{
	a->d.q[0] = a->s.q[0];
	return 0;
}

static uint32_t movhps(struct sse_args *a)
{
	if (a->dxmm)
		a->d.q[1] = a->s.q[0];
	else
		a->d.q[0] = a->s.q[1];
	return 0;
}

static uint32_t movhlps(struct sse_args *a)
{
	a->d.q[0] = a->s.q[1];
	return 0;
}

static uint32_t movlhps(struct sse_args *a)
{
	a->d.q[1] = a->s.q[0];
	return 0;
}

/* ---- Floating point on the host SSE unit ---- */

/* The guest's MXCSR with every exception masked and no flags set. */
static uint32_t host_mxcsr(uint32_t guest)
{
	return (guest | MXCSR_MASKS) & ~MXCSR_FLAGS & MXCSR_MASK;
}

/*
 * Run insn with d, s in XMM registers under the guest's MXCSR; the host's
 * MXCSR is saved and restored inside the same asm so the compiler cannot move
 * its own floating point across the switch.
 */
#define FP_ASM(insn, dv, sv, mx)                                                                   \
	do {                                                                                       \
		uint32_t host_;                                                                    \
		__asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[g]\n\t" insn                           \
				 "\n\tstmxcsr %[g]\n\tldmxcsr %[h]"                                \
				 : [d] "+x"(dv), [g] "+m"(mx), [h] "=m"(host_)                     \
				 : [s] "x"(sv));                                                   \
	} while (0)

typedef double v2df __attribute__((vector_size(16)));

#define FP2(name, insn)                                                                            \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		v2df d, s;                                                                         \
		uint32_t mx = host_mxcsr(a->mxcsr);                                                \
		memcpy(&d, &a->d, 16);                                                             \
		memcpy(&s, &a->s, 16);                                                             \
		FP_ASM(insn " %[s], %[d]", d, s, mx);                                              \
		memcpy(&a->d, &d, 16);                                                             \
		return mx & MXCSR_FLAGS;                                                           \
	}

FP2(addps, "addps")
FP2(addpd, "addpd")
FP2(addss, "addss")
FP2(addsd, "addsd")
FP2(subps, "subps")
FP2(subpd, "subpd")
FP2(subss, "subss")
FP2(subsd, "subsd")
FP2(mulps, "mulps")
FP2(mulpd, "mulpd")
FP2(mulss, "mulss")
FP2(mulsd, "mulsd")
FP2(divps, "divps")
FP2(divpd, "divpd")
FP2(divss, "divss")
FP2(divsd, "divsd")
FP2(minps, "minps")
FP2(minpd, "minpd")
FP2(minss, "minss")
FP2(minsd, "minsd")
FP2(maxps, "maxps")
FP2(maxpd, "maxpd")
FP2(maxss, "maxss")
FP2(maxsd, "maxsd")
FP2(sqrtps, "sqrtps")
FP2(sqrtpd, "sqrtpd")
FP2(sqrtss, "sqrtss")
FP2(sqrtsd, "sqrtsd")
FP2(rcpps, "rcpps")
FP2(rcpss, "rcpss")
FP2(rsqrtps, "rsqrtps")
FP2(rsqrtss, "rsqrtss")
FP2(cvtps2pd, "cvtps2pd")
FP2(cvtpd2ps, "cvtpd2ps")
FP2(cvtss2sd, "cvtss2sd")
FP2(cvtsd2ss, "cvtsd2ss")
FP2(cvtdq2ps, "cvtdq2ps")
FP2(cvtps2dq, "cvtps2dq")
FP2(cvttps2dq, "cvttps2dq")
FP2(cvtdq2pd, "cvtdq2pd")
FP2(cvtpd2dq, "cvtpd2dq")
FP2(cvttpd2dq, "cvttpd2dq")

/* Compare with predicate imm8[2:0]: one asm per predicate, the immediate is encoded. */
#define FP_CMP(name, insn)                                                                         \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		v2df d, s;                                                                         \
		uint32_t mx = host_mxcsr(a->mxcsr);                                                \
		memcpy(&d, &a->d, 16);                                                             \
		memcpy(&s, &a->s, 16);                                                             \
		switch (a->imm & 7) {                                                              \
		case 0:                                                                            \
			FP_ASM(insn " $0, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		case 1:                                                                            \
			FP_ASM(insn " $1, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		case 2:                                                                            \
			FP_ASM(insn " $2, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		case 3:                                                                            \
			FP_ASM(insn " $3, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		case 4:                                                                            \
			FP_ASM(insn " $4, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		case 5:                                                                            \
			FP_ASM(insn " $5, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		case 6:                                                                            \
			FP_ASM(insn " $6, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		default:                                                                           \
			FP_ASM(insn " $7, %[s], %[d]", d, s, mx);                                  \
			break;                                                                     \
		}                                                                                  \
		memcpy(&a->d, &d, 16);                                                             \
		return mx & MXCSR_FLAGS;                                                           \
	}

FP_CMP(cmpps, "cmpps")
FP_CMP(cmppd, "cmppd")
FP_CMP(cmpss, "cmpss")
FP_CMP(cmpsd, "cmpsd")

/* COMISS & co: ZF/PF/CF as RFLAGS bits in d.q[0]. */
#define FP_COMI(name, insn)                                                                        \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		v2df d, s;                                                                         \
		uint32_t mx = host_mxcsr(a->mxcsr), host;                                          \
		uint8_t zf, pf, cf;                                                                \
		memcpy(&d, &a->d, 16);                                                             \
		memcpy(&s, &a->s, 16);                                                             \
		__asm__ volatile(                                                                  \
		    "stmxcsr %[h]\n\tldmxcsr %[g]\n\t" insn " %[s], %[d]\n\t"                      \
		    "setz %[zf]\n\tsetp %[pf]\n\tsetc %[cf]\n\t"                                   \
		    "stmxcsr %[g]\n\tldmxcsr %[h]"                                                 \
		    : [g] "+m"(mx), [h] "=m"(host), [zf] "=&q"(zf), [pf] "=&q"(pf), [cf] "=&q"(cf) \
		    : [d] "x"(d), [s] "x"(s)                                                       \
		    : "cc");                                                                       \
		a->d.q[0] = (uint64_t)cf | (uint64_t)pf << 2 | (uint64_t)zf << 6;                  \
		a->d.q[1] = 0;                                                                     \
		return mx & MXCSR_FLAGS;                                                           \
	}

FP_COMI(comiss, "comiss")
FP_COMI(comisd, "comisd")
FP_COMI(ucomiss, "ucomiss")
FP_COMI(ucomisd, "ucomisd")

/* Float -> integer register; the destination size picks the 32- or 64-bit form. */
#define FP_TOINT(name, insn)                                                                       \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		v2df s;                                                                            \
		uint64_t r = 0;                                                                    \
		uint32_t mx = host_mxcsr(a->mxcsr), host;                                          \
		memcpy(&s, &a->s, 16);                                                             \
		if (a->dsize == 8)                                                                 \
			__asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[g]\n\t" insn                   \
					 " %[s], %q[r]\n\t"                                        \
					 "stmxcsr %[g]\n\tldmxcsr %[h]"                            \
					 : [r] "=&r"(r), [g] "+m"(mx), [h] "=m"(host)              \
					 : [s] "x"(s));                                            \
		else                                                                               \
			__asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[g]\n\t" insn                   \
					 " %[s], %k[r]\n\t"                                        \
					 "stmxcsr %[g]\n\tldmxcsr %[h]"                            \
					 : [r] "=&r"(r), [g] "+m"(mx), [h] "=m"(host)              \
					 : [s] "x"(s));                                            \
		a->d.q[0] = r;                                                                     \
		a->d.q[1] = 0;                                                                     \
		return mx & MXCSR_FLAGS;                                                           \
	}

FP_TOINT(cvtss2si, "cvtss2si")
FP_TOINT(cvtsd2si, "cvtsd2si")
FP_TOINT(cvttss2si, "cvttss2si")
FP_TOINT(cvttsd2si, "cvttsd2si")

/* Integer register or memory -> float; the source size picks the form. */
#define FP_FROMINT(name, insn)                                                                     \
	static uint32_t name(struct sse_args *a)                                                   \
	{                                                                                          \
		v2df d;                                                                            \
		uint64_t v = a->s.q[0];                                                            \
		uint32_t mx = host_mxcsr(a->mxcsr), host;                                          \
		memcpy(&d, &a->d, 16);                                                             \
		if (a->ssize == 8)                                                                 \
			__asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[g]\n\t" insn                   \
					 "q %q[v], %[d]\n\t"                                       \
					 "stmxcsr %[g]\n\tldmxcsr %[h]"                            \
					 : [d] "+x"(d), [g] "+m"(mx), [h] "=m"(host)               \
					 : [v] "r"(v));                                            \
		else                                                                               \
			__asm__ volatile("stmxcsr %[h]\n\tldmxcsr %[g]\n\t" insn                   \
					 "l %k[v], %[d]\n\t"                                       \
					 "stmxcsr %[g]\n\tldmxcsr %[h]"                            \
					 : [d] "+x"(d), [g] "+m"(mx), [h] "=m"(host)               \
					 : [v] "r"(v));                                            \
		memcpy(&a->d, &d, 16);                                                             \
		return mx & MXCSR_FLAGS;                                                           \
	}

FP_FROMINT(cvtsi2ss, "cvtsi2ss")
FP_FROMINT(cvtsi2sd, "cvtsi2sd")

/* ---- The table ---- */

#define OP(m, f) [ZYDIS_MNEMONIC_##m] = {f, 0}
#define OPF(m, f, fl) [ZYDIS_MNEMONIC_##m] = {f, fl}

static const struct sse_desc sse_table[ZYDIS_MNEMONIC_MAX_VALUE + 1] = {
    /* moves */
    OP(MOVDQA, mov_full),
    OPF(MOVDQU, mov_full, SSE_UNALIGNED),
    OP(MOVAPS, mov_full),
    OP(MOVAPD, mov_full),
    OPF(MOVUPS, mov_full, SSE_UNALIGNED),
    OPF(MOVUPD, mov_full, SSE_UNALIGNED),
    OP(MOVNTDQ, mov_full),
    OP(MOVNTPS, mov_full),
    OP(MOVNTPD, mov_full),
    OP(MOVNTI, movq),
    OP(MOVD, movd),
    OP(MOVQ, movq),
    OP(MOVSS, movss),
    OP(MOVSD, movsd),
    OP(MOVLPS, movlps),
    OP(MOVLPD, movlps),
    OP(MOVHPS, movhps),
    OP(MOVHPD, movhps),
    OP(MOVHLPS, movhlps),
    OP(MOVLHPS, movlhps),
    /* packed integer */
    OP(PADDB, padd_b),
    OP(PADDW, padd_w),
    OP(PADDD, padd_d),
    OP(PADDQ, padd_q),
    OP(PSUBB, psub_b),
    OP(PSUBW, psub_w),
    OP(PSUBD, psub_d),
    OP(PSUBQ, psub_q),
    OP(PADDSB, padds_b),
    OP(PADDSW, padds_w),
    OP(PSUBSB, psubs_b),
    OP(PSUBSW, psubs_w),
    OP(PADDUSB, paddus_b),
    OP(PADDUSW, paddus_w),
    OP(PSUBUSB, psubus_b),
    OP(PSUBUSW, psubus_w),
    OP(PCMPEQB, pcmpeq_b),
    OP(PCMPEQW, pcmpeq_w),
    OP(PCMPEQD, pcmpeq_d),
    OP(PCMPGTB, pcmpgt_b),
    OP(PCMPGTW, pcmpgt_w),
    OP(PCMPGTD, pcmpgt_d),
    OP(PAND, pand),
    OP(PANDN, pandn),
    OP(POR, por),
    OP(PXOR, pxor),
    OP(ANDPS, pand),
    OP(ANDPD, pand),
    OP(ANDNPS, pandn),
    OP(ANDNPD, pandn),
    OP(ORPS, por),
    OP(ORPD, por),
    OP(XORPS, pxor),
    OP(XORPD, pxor),
    OP(PMINUB, pminub),
    OP(PMAXUB, pmaxub),
    OP(PMINSW, pminsw),
    OP(PMAXSW, pmaxsw),
    OP(PAVGB, pavgb),
    OP(PAVGW, pavgw),
    OP(PMULLW, pmullw),
    OP(PMULHW, pmulhw),
    OP(PMULHUW, pmulhuw),
    OP(PMULUDQ, pmuludq),
    OP(PMADDWD, pmaddwd),
    OP(PSADBW, psadbw),
    OP(PSLLW, psllw),
    OP(PSLLD, pslld),
    OP(PSLLQ, psllq),
    OP(PSRLW, psrlw),
    OP(PSRLD, psrld),
    OP(PSRLQ, psrlq),
    OP(PSRAW, psraw),
    OP(PSRAD, psrad),
    OP(PSLLDQ, pslldq),
    OP(PSRLDQ, psrldq),
    OP(PSHUFD, pshufd),
    OP(PSHUFLW, pshuflw),
    OP(PSHUFHW, pshufhw),
    OP(SHUFPS, shufps),
    OP(SHUFPD, shufpd),
    OP(PUNPCKLBW, punpcklbw),
    OP(PUNPCKLWD, punpcklwd),
    OP(PUNPCKLDQ, punpckldq),
    OP(PUNPCKLQDQ, punpcklqdq),
    OP(PUNPCKHBW, punpckhbw),
    OP(PUNPCKHWD, punpckhwd),
    OP(PUNPCKHDQ, punpckhdq),
    OP(PUNPCKHQDQ, punpckhqdq),
    OP(UNPCKLPS, punpckldq),
    OP(UNPCKHPS, punpckhdq),
    OP(UNPCKLPD, punpcklqdq),
    OP(UNPCKHPD, punpckhqdq),
    OP(PACKSSWB, packsswb),
    OP(PACKSSDW, packssdw),
    OP(PACKUSWB, packuswb),
    OP(PMOVMSKB, pmovmskb),
    OP(MOVMSKPS, movmskps),
    OP(MOVMSKPD, movmskpd),
    OP(PEXTRW, pextrw),
    OP(PINSRW, pinsrw),
    /* floating point */
    OP(ADDPS, addps),
    OP(ADDPD, addpd),
    OP(ADDSS, addss),
    OP(ADDSD, addsd),
    OP(SUBPS, subps),
    OP(SUBPD, subpd),
    OP(SUBSS, subss),
    OP(SUBSD, subsd),
    OP(MULPS, mulps),
    OP(MULPD, mulpd),
    OP(MULSS, mulss),
    OP(MULSD, mulsd),
    OP(DIVPS, divps),
    OP(DIVPD, divpd),
    OP(DIVSS, divss),
    OP(DIVSD, divsd),
    OP(MINPS, minps),
    OP(MINPD, minpd),
    OP(MINSS, minss),
    OP(MINSD, minsd),
    OP(MAXPS, maxps),
    OP(MAXPD, maxpd),
    OP(MAXSS, maxss),
    OP(MAXSD, maxsd),
    OP(SQRTPS, sqrtps),
    OP(SQRTPD, sqrtpd),
    OP(SQRTSS, sqrtss),
    OP(SQRTSD, sqrtsd),
    OP(RCPPS, rcpps),
    OP(RCPSS, rcpss),
    OP(RSQRTPS, rsqrtps),
    OP(RSQRTSS, rsqrtss),
    OP(CMPPS, cmpps),
    OP(CMPPD, cmppd),
    OP(CMPSS, cmpss),
    OP(CMPSD, cmpsd),
    OPF(COMISS, comiss, SSE_SETS_FLAGS),
    OPF(COMISD, comisd, SSE_SETS_FLAGS),
    OPF(UCOMISS, ucomiss, SSE_SETS_FLAGS),
    OPF(UCOMISD, ucomisd, SSE_SETS_FLAGS),
    OP(CVTPS2PD, cvtps2pd),
    OP(CVTPD2PS, cvtpd2ps),
    OP(CVTSS2SD, cvtss2sd),
    OP(CVTSD2SS, cvtsd2ss),
    OP(CVTDQ2PS, cvtdq2ps),
    OP(CVTPS2DQ, cvtps2dq),
    OP(CVTTPS2DQ, cvttps2dq),
    OP(CVTDQ2PD, cvtdq2pd),
    OP(CVTPD2DQ, cvtpd2dq),
    OP(CVTTPD2DQ, cvttpd2dq),
    OP(CVTSS2SI, cvtss2si),
    OP(CVTSD2SI, cvtsd2si),
    OP(CVTTSS2SI, cvttss2si),
    OP(CVTTSD2SI, cvttsd2si),
    OP(CVTSI2SS, cvtsi2ss),
    OP(CVTSI2SD, cvtsi2sd),
};

int emu_sse_compute(unsigned mnemonic, struct sse_args *a)
{
	if (mnemonic > ZYDIS_MNEMONIC_MAX_VALUE || !sse_table[mnemonic].fn)
		return -1;
	return (int)sse_table[mnemonic].fn(a);
}

/* ---- Operand plumbing ---- */

static bool op_is_xmm(const struct emu_operand *o)
{
	return o->kind == EMU_OP_REG && o->reg >= EMU_R_XMM0 && o->reg < EMU_R_XMM0 + 16;
}

static emu_xmm *xmm_reg(struct emu_cpu *c, const struct emu_operand *o)
{
	return &c->fpu.xmm[(o->reg - EMU_R_XMM0) & 15];
}

/* Linear address of a memory operand of size bytes, #GP(0) if it must be 16-aligned and isn't. */
static uint64_t sse_mem_addr(struct emu_cpu *c, const struct emu_operand *o, uint8_t flags)
{
	uint64_t la = emu_ea(c, o);

	if (o->size == 16 && !(flags & SSE_UNALIGNED) && (la & 15))
		emu_raise(c, EMU_GP, 0);
	return la;
}

/* #UD without OSFXSR or with CR0.EM, #NM with CR0.TS (lazy FPU switching). */
void emu_sse_check(struct emu_cpu *c)
{
	if ((c->cr0 & CR0_EM) || !(c->cr4 & CR4_OSFXSR))
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	if (c->cr0 & CR0_TS)
		emu_raise(c, EMU_NM, EMU_NO_ERR);
}

static void sse_fetch_src(struct emu_cpu *c, const struct emu_insn *i, int n, uint8_t flags,
			  struct sse_args *a)
{
	const struct emu_operand *o = &i->op[n];

	switch (o->kind) {
	case EMU_OP_REG:
		if (op_is_xmm(o)) {
			a->s = *xmm_reg(c, o);
			a->ssize = 16;
		} else {
			a->s.q[0] = emu_op_read(c, i, n);
			a->ssize = o->size;
		}
		break;
	case EMU_OP_MEM: {
		uint64_t la = sse_mem_addr(c, o, flags);
		unsigned len = o->size > 16 ? 16 : o->size;

		emu_read_buf(c, la, a->s.b, len);
		a->ssize = (uint8_t)len;
		a->smem = true;
		break;
	}
	case EMU_OP_IMM:
		a->s.q[0] = (uint8_t)o->disp;
		a->ssize = 1;
		break;
	default:
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
}

/* Record raised flags in MXCSR; unmasked ones fault (#XM, or #UD without OSXMMEXCPT). */
static void sse_exceptions(struct emu_cpu *c, uint32_t raised)
{
	uint32_t unmasked = raised & ~(c->fpu.mxcsr >> 7) & MXCSR_FLAGS;

	if (!unmasked) {
		c->fpu.mxcsr |= raised;
		return;
	}
	/* Invalid, denormal and divide-by-zero are detected before the result exists. */
	if (unmasked & (MXCSR_IE | MXCSR_DE | MXCSR_ZE))
		raised &= MXCSR_IE | MXCSR_DE | MXCSR_ZE;
	c->fpu.mxcsr |= raised;
	emu_raise(c, (c->cr4 & CR4_OSXMMEXCPT) ? EMU_XM : EMU_UD, EMU_NO_ERR);
}

static void sse_exec(struct emu_cpu *c, const struct emu_insn *i)
{
	const struct sse_desc *desc = &sse_table[i->mnemonic];
	const struct emu_operand *dst = &i->op[0];
	struct sse_args a;
	uint64_t dla = 0;
	uint32_t raised;

	if (i->nops < 2) {
		/*
		 * Zydis names the string instructions MOVSD/CMPSD like the SSE2
		 * ones; they have no visible operands and belong to exec.c.
		 */
		emu_handler h = emu_int_handler(i->mnemonic);

		if (!h || h == sse_exec)
			emu_raise(c, EMU_UD, EMU_NO_ERR);
		h(c, i);
		return;
	}
	emu_sse_check(c);
	memset(&a, 0, sizeof(a));
	a.mxcsr = c->fpu.mxcsr;
	if (i->nops >= 3 && i->op[2].kind == EMU_OP_IMM)
		a.imm = (uint8_t)i->op[2].disp;
	else if (i->op[1].kind == EMU_OP_IMM)
		a.imm = (uint8_t)i->op[1].disp;
	if (dst->kind == EMU_OP_MEM)
		dla = sse_mem_addr(c, dst, desc->flags);
	sse_fetch_src(c, i, 1, desc->flags, &a);
	if (op_is_xmm(dst)) {
		a.d = *xmm_reg(c, dst);
		a.dxmm = true;
		a.dsize = 16;
	} else {
		a.dsize = dst->size;
	}
	raised = desc->fn(&a);
	if (raised)
		sse_exceptions(c, raised);
	if (desc->flags & SSE_SETS_FLAGS) {
		uint64_t fl = emu_rflags(c) & ~0x8d5ull; /* OF SF ZF AF PF CF */
		emu_set_rflags(c, fl | a.d.q[0]);
	} else if (a.dxmm) {
		*xmm_reg(c, dst) = a.d;
	} else if (dst->kind == EMU_OP_MEM) {
		emu_write_buf(c, dla, a.d.b, dst->size > 16 ? 16 : dst->size);
	} else if (dst->kind == EMU_OP_REG) {
		emu_op_write(c, i, 0, a.d.q[0]);
	} else {
		emu_raise(c, EMU_UD, EMU_NO_ERR);
	}
}

emu_handler emu_sse_handler(unsigned mnemonic)
{
	if (mnemonic > ZYDIS_MNEMONIC_MAX_VALUE || !sse_table[mnemonic].fn)
		return NULL;
	return sse_exec;
}
