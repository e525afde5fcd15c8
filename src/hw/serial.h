/*
 * 8250/16550A UART: the guest console on COM1.
 *
 * Transmitted bytes go to an output fd (buffered; flushed at each newline,
 * when the buffer fills, and by serial_flush(), which the console thread
 * calls when idle). Received bytes come from serial_inject(), called by the
 * console thread that reads the host's stdin; they wait in a receive queue
 * that the guest drains through RBR.
 *
 * The interrupt output (GSI 4 on the IOAPIC, edge-triggered as ISA IRQs
 * are) follows IIR: raised while an enabled condition is pending, and
 * pulsed low->high when THR empties again so every transmit gets an edge.
 */
#ifndef TERN_HW_SERIAL_H
#define TERN_HW_SERIAL_H

#include <stddef.h>
#include <stdint.h>

struct vm;
struct serial;

/* Create a UART at port base (8 ports) on vm->pio, raising gsi; registered with vm_add_device. */
int serial_create(struct vm *vm, uint16_t base, uint32_t gsi, int out_fd, struct serial **out);

/* Queue bytes for the guest to receive; returns how many were taken (less when full). */
size_t serial_inject(struct serial *s, const uint8_t *buf, size_t len);

/* Write out any buffered guest output. */
void serial_flush(struct serial *s);

/* Device ops, exposed for tests: a port access at offset 0..7. */
uint8_t serial_read(struct serial *s, unsigned offset);
void serial_write(struct serial *s, unsigned offset, uint8_t val);

#endif
