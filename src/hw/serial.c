/*
 * 8250/16550A UART. Register semantics follow the 16550A data sheet; what
 * Linux's 8250 driver relies on: the scratch and IER read-back probes, the
 * FIFO detection through IIR bits 7:6, the loopback test (MCR bit 4 feeds
 * TX into RX and MCR's outputs into MSR's inputs), THRE interrupts, and LSR.
 */
#include "hw/serial.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "vmm/vm.h"

#define UART_RX 0 /* in: RBR; out: THR; DLL with DLAB */
#define UART_IER 1
#define UART_IIR 2 /* in: IIR; out: FCR */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define IER_RDI 0x01
#define IER_THRI 0x02
#define IER_RLSI 0x04
#define IER_MSI 0x08

#define IIR_NO_INT 0x01
#define IIR_MSI 0x00
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_RLSI 0x06
#define IIR_FIFO 0xc0

#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02

#define LCR_DLAB 0x80

#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10

#define LSR_DR 0x01
#define LSR_OE 0x02
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80
#define MSR_DELTAS 0x0f

#define SERIAL_RX_QUEUE 1024
#define SERIAL_OUT_BUF 4096
#define SERIAL_STATE_VERSION 1

struct serial_regs {
	uint8_t ier, lcr, mcr, lsr, msr, scr, dll, dlm, fcr;
	uint8_t thri_pending; /* THR-empty interrupt latched, cleared by IIR read / THR write */
};

_Static_assert(sizeof(struct serial_regs) == 10, "saved state layout: 1 + 10 + 1 + 2 <= 16");

struct serial {
	struct vm *vm;
	pthread_mutex_t lock;
	uint16_t base;
	uint32_t gsi;
	int out_fd;
	struct serial_regs r;
	int irq_level;
	uint8_t rx[SERIAL_RX_QUEUE];
	unsigned rx_head, rx_count;
	uint8_t out[SERIAL_OUT_BUF];
	unsigned out_len;
	bool out_failed;
	unsigned panic_match; /* bytes of PANIC_MARKER matched so far in the output */
	bool panic_seen;      /* marker seen: stop at the end of its line */
};

/*
 * The kernel ends its panic report with this line before panic=-1 reboots it;
 * seeing it lets tern tell a panic from a requested reboot (no pvpanic needed). It
 * ends with "]---" on the same line; the stop waits for the newline.
 */
#define PANIC_MARKER "[ end Kernel panic"

static void serial_reset_regs(struct serial *s)
{
	memset(&s->r, 0, sizeof(s->r));
	s->r.lsr = LSR_THRE | LSR_TEMT;
	s->r.msr = MSR_DCD | MSR_DSR | MSR_CTS;
	s->r.dll = 0x0c; /* 9600 baud */
	s->rx_head = s->rx_count = 0;
}

/* Caller holds s->lock. */
static void serial_flush_locked(struct serial *s)
{
	unsigned off = 0;

	while (off < s->out_len && !s->out_failed) {
		ssize_t n = write(s->out_fd, s->out + off, s->out_len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* The console went away: keep the guest running, drop its output. */
			s->out_failed = true;
			break;
		}
		off += (unsigned)n;
	}
	s->out_len = 0;
}

void serial_flush(struct serial *s)
{
	pthread_mutex_lock(&s->lock);
	serial_flush_locked(s);
	pthread_mutex_unlock(&s->lock);
}

static uint8_t serial_iir(const struct serial *s)
{
	uint8_t fifo = (s->r.fcr & FCR_ENABLE) ? IIR_FIFO : 0;

	if ((s->r.ier & IER_RLSI) && (s->r.lsr & LSR_OE))
		return fifo | IIR_RLSI;
	if ((s->r.ier & IER_RDI) && s->rx_count)
		return fifo | IIR_RDI;
	if ((s->r.ier & IER_THRI) && s->r.thri_pending)
		return fifo | IIR_THRI;
	if ((s->r.ier & IER_MSI) && (s->r.msr & MSR_DELTAS))
		return fifo | IIR_MSI;
	return fifo | IIR_NO_INT;
}

/* Drive the interrupt line from IIR. Caller holds s->lock. */
static void serial_update_irq(struct serial *s)
{
	int level = !(serial_iir(s) & IIR_NO_INT);

	if (level != s->irq_level) {
		s->irq_level = level;
		vm_irq_line(s->vm, s->gsi, level);
	}
}

static void serial_rx_push(struct serial *s, uint8_t c)
{
	if (s->rx_count == SERIAL_RX_QUEUE) {
		s->r.lsr |= LSR_OE;
		return;
	}
	s->rx[(s->rx_head + s->rx_count) % SERIAL_RX_QUEUE] = c;
	s->rx_count++;
	s->r.lsr |= LSR_DR;
}

static uint8_t serial_rx_pop(struct serial *s)
{
	uint8_t c;

	if (!s->rx_count)
		return 0;
	c = s->rx[s->rx_head];
	s->rx_head = (s->rx_head + 1) % SERIAL_RX_QUEUE;
	if (--s->rx_count == 0)
		s->r.lsr &= (uint8_t)~LSR_DR;
	return c;
}

static void serial_watch_panic(struct serial *s, uint8_t c)
{
	static const char marker[] = PANIC_MARKER;

	/* The marker's first byte occurs nowhere else in it, so a mismatch restarts cleanly. */
	if (c == (uint8_t)marker[s->panic_match])
		s->panic_match++;
	else
		s->panic_match = c == (uint8_t)marker[0];
	if (s->panic_match == sizeof(marker) - 1) {
		s->panic_match = 0;
		s->panic_seen = true;
	}
	if (c == '\n' && s->panic_seen)
		vm_request_stop(s->vm, VM_STOP_PANIC);
}

static void serial_tx(struct serial *s, uint8_t c)
{
	if (s->r.mcr & MCR_LOOP) {
		serial_rx_push(s, c);
	} else {
		serial_watch_panic(s, c);
		s->out[s->out_len++] = c;
		if (c == '\n' || s->out_len == SERIAL_OUT_BUF)
			serial_flush_locked(s);
	}
	/* THR empties at once: pulse the line so an edge-triggered pin sees the new THRE. */
	s->r.thri_pending = 0;
	serial_update_irq(s);
	s->r.thri_pending = 1;
	serial_update_irq(s);
}

/* In loopback the modem inputs mirror the outputs: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD. */
static uint8_t serial_msr(const struct serial *s)
{
	uint8_t m = s->r.mcr;

	if (!(m & MCR_LOOP))
		return s->r.msr;
	return (uint8_t)((s->r.msr & MSR_DELTAS) | ((m & MCR_RTS) ? MSR_CTS : 0) |
			 ((m & MCR_DTR) ? MSR_DSR : 0) | ((m & MCR_OUT1) ? MSR_RI : 0) |
			 ((m & MCR_OUT2) ? MSR_DCD : 0));
}

uint8_t serial_read(struct serial *s, unsigned offset)
{
	uint8_t v = 0xff;

	pthread_mutex_lock(&s->lock);
	switch (offset) {
	case UART_RX:
		if (s->r.lcr & LCR_DLAB) {
			v = s->r.dll;
		} else {
			v = serial_rx_pop(s);
			serial_update_irq(s);
		}
		break;
	case UART_IER:
		v = (s->r.lcr & LCR_DLAB) ? s->r.dlm : s->r.ier;
		break;
	case UART_IIR:
		v = serial_iir(s);
		/* Reading IIR acknowledges a THRE interrupt. */
		if ((v & 0x0f) == IIR_THRI) {
			s->r.thri_pending = 0;
			serial_update_irq(s);
		}
		break;
	case UART_LCR:
		v = s->r.lcr;
		break;
	case UART_MCR:
		v = s->r.mcr;
		break;
	case UART_LSR:
		v = s->r.lsr;
		s->r.lsr &= (uint8_t)~LSR_OE;
		serial_update_irq(s);
		break;
	case UART_MSR:
		v = serial_msr(s);
		s->r.msr &= (uint8_t)~MSR_DELTAS;
		serial_update_irq(s);
		break;
	case UART_SCR:
		v = s->r.scr;
		break;
	}
	pthread_mutex_unlock(&s->lock);
	return v;
}

void serial_write(struct serial *s, unsigned offset, uint8_t val)
{
	pthread_mutex_lock(&s->lock);
	switch (offset) {
	case UART_RX:
		if (s->r.lcr & LCR_DLAB)
			s->r.dll = val;
		else
			serial_tx(s, val);
		break;
	case UART_IER:
		if (s->r.lcr & LCR_DLAB) {
			s->r.dlm = val;
		} else {
			/* Enabling THRE interrupts with THR empty raises one at once. */
			if ((val & IER_THRI) && !(s->r.ier & IER_THRI))
				s->r.thri_pending = 1;
			s->r.ier = val & 0x0f;
			serial_update_irq(s);
		}
		break;
	case UART_IIR:
		if (val & FCR_CLEAR_RX) {
			s->rx_count = 0;
			s->r.lsr &= (uint8_t)~LSR_DR;
		}
		s->r.fcr = val & 0xc9;
		serial_update_irq(s);
		break;
	case UART_LCR:
		s->r.lcr = val;
		break;
	case UART_MCR:
		s->r.mcr = val & 0x1f;
		break;
	case UART_SCR:
		s->r.scr = val;
		break;
	default: /* LSR and MSR are read-only */
		break;
	}
	pthread_mutex_unlock(&s->lock);
}

size_t serial_inject(struct serial *s, const uint8_t *buf, size_t len)
{
	size_t n = 0;

	pthread_mutex_lock(&s->lock);
	/* In loopback the line from the outside world is disconnected. */
	if (!(s->r.mcr & MCR_LOOP)) {
		while (n < len && s->rx_count < SERIAL_RX_QUEUE)
			serial_rx_push(s, buf[n++]);
		serial_update_irq(s);
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

static void serial_bus_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	memset(data, 0, size);
	*(uint8_t *)data = serial_read(opaque, (unsigned)off);
}

static void serial_bus_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	serial_write(opaque, (unsigned)off, *(const uint8_t *)data);
}

static const struct bus_ops serial_bus_ops = {.read = serial_bus_read, .write = serial_bus_write};

/* Saved state: version, registers, irq level, then the receive queue in order. */
static int serial_save(void *opaque, struct dev_buf *out)
{
	struct serial *s = opaque;
	uint8_t hdr[16] = {SERIAL_STATE_VERSION};
	uint8_t rx[SERIAL_RX_QUEUE];
	unsigned n;
	int err;

	pthread_mutex_lock(&s->lock);
	memcpy(hdr + 1, &s->r, sizeof(s->r));
	hdr[1 + sizeof(s->r)] = (uint8_t)s->irq_level;
	n = s->rx_count;
	hdr[12] = (uint8_t)n;
	hdr[13] = (uint8_t)(n >> 8);
	for (unsigned i = 0; i < n; i++)
		rx[i] = s->rx[(s->rx_head + i) % SERIAL_RX_QUEUE];
	pthread_mutex_unlock(&s->lock);
	err = dev_buf_put(out, hdr, sizeof(hdr));
	if (!err)
		err = dev_buf_put(out, rx, n);
	return err;
}

static int serial_restore(void *opaque, const void *data, uint64_t len)
{
	struct serial *s = opaque;
	const uint8_t *p = data;
	unsigned n;

	if (len < 16 || p[0] != SERIAL_STATE_VERSION)
		return -EINVAL;
	n = p[12] | (unsigned)p[13] << 8;
	if (n > SERIAL_RX_QUEUE || len != 16 + (uint64_t)n)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	memcpy(&s->r, p + 1, sizeof(s->r));
	s->r.ier &= 0x0f;
	s->r.mcr &= 0x1f;
	s->r.thri_pending = !!s->r.thri_pending;
	memcpy(s->rx, p + 16, n);
	s->rx_head = 0;
	s->rx_count = n;
	s->r.lsr = (uint8_t)((s->r.lsr & ~LSR_DR) | (n ? LSR_DR : 0) | LSR_THRE | LSR_TEMT);
	/* Drive the line as the registers say, whatever it was before (-1: unknown). */
	s->irq_level = -1;
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static void serial_reset(void *opaque)
{
	struct serial *s = opaque;

	pthread_mutex_lock(&s->lock);
	serial_reset_regs(s);
	serial_update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

static void serial_pause(void *opaque)
{
	serial_flush(opaque);
}

static void serial_destroy(void *opaque)
{
	struct serial *s = opaque;

	serial_flush(s);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static const struct device_ops serial_dev_ops = {
    .name = "serial",
    .pause = serial_pause,
    .save = serial_save,
    .restore = serial_restore,
    .reset = serial_reset,
    .destroy = serial_destroy,
};

int serial_create(struct vm *vm, uint16_t base, uint32_t gsi, int out_fd, struct serial **out)
{
	struct serial *s = calloc(1, sizeof(*s));
	int err;

	if (!s)
		return -ENOMEM;
	s->vm = vm;
	s->base = base;
	s->gsi = gsi;
	s->out_fd = out_fd;
	pthread_mutex_init(&s->lock, NULL);
	serial_reset_regs(s);
	err = vm_add_device(vm, &serial_dev_ops, s);
	if (err) {
		serial_destroy(s);
		return err;
	}
	/* Registered: from here vm_destroy() frees it even if claiming ports fails. */
	err = bus_register(&vm->pio, base, 8, &serial_bus_ops, s, "serial");
	if (err)
		return err;
	*out = s;
	return 0;
}
