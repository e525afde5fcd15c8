/* CMOS RTC: the host's UTC time through the MC146818 registers. */
#include "hw/rtc.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arch/x86/layout.h"
#include "vmm/vm.h"

#define RTC_SECONDS 0x00
#define RTC_MINUTES 0x02
#define RTC_HOURS 0x04
#define RTC_WEEKDAY 0x06
#define RTC_DAY 0x07
#define RTC_MONTH 0x08
#define RTC_YEAR 0x09
#define RTC_REG_A 0x0a
#define RTC_REG_B 0x0b
#define RTC_REG_C 0x0c
#define RTC_REG_D 0x0d
#define RTC_CENTURY 0x32
#define RTC_NVRAM 128

#define REG_B_24H 0x02
#define REG_B_BINARY 0x04
#define REG_D_VRT 0x80

struct rtc {
	pthread_mutex_t lock;
	uint8_t index;
	uint8_t nvram[RTC_NVRAM]; /* everything but the clock registers: plain storage */
};

static uint8_t rtc_encode(const struct rtc *r, int v)
{
	if (r->nvram[RTC_REG_B] & REG_B_BINARY)
		return (uint8_t)v;
	return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static uint8_t rtc_clock_reg(const struct rtc *r, unsigned reg, const struct tm *tm)
{
	switch (reg) {
	case RTC_SECONDS:
		return rtc_encode(r, tm->tm_sec > 59 ? 59 : tm->tm_sec);
	case RTC_MINUTES:
		return rtc_encode(r, tm->tm_min);
	case RTC_HOURS:
		if (r->nvram[RTC_REG_B] & REG_B_24H)
			return rtc_encode(r, tm->tm_hour);
		/* 12-hour mode: 1..12, bit 7 set for PM. */
		return (uint8_t)(rtc_encode(r, tm->tm_hour % 12 ? tm->tm_hour % 12 : 12) |
				 (tm->tm_hour >= 12 ? 0x80 : 0));
	case RTC_WEEKDAY:
		return rtc_encode(r, tm->tm_wday + 1);
	case RTC_DAY:
		return rtc_encode(r, tm->tm_mday);
	case RTC_MONTH:
		return rtc_encode(r, tm->tm_mon + 1);
	case RTC_YEAR:
		return rtc_encode(r, tm->tm_year % 100);
	case RTC_CENTURY:
		return rtc_encode(r, (tm->tm_year + 1900) / 100);
	}
	return r->nvram[reg];
}

static void rtc_read(void *opaque, uint64_t off, void *data, unsigned size)
{
	struct rtc *r = opaque;
	uint8_t v;

	memset(data, 0, size);
	pthread_mutex_lock(&r->lock);
	if (off == 0) {
		v = 0xff; /* the index port is write-only */
	} else {
		time_t now = time(NULL);
		struct tm tm;

		gmtime_r(&now, &tm);
		v = rtc_clock_reg(r, r->index, &tm);
	}
	pthread_mutex_unlock(&r->lock);
	*(uint8_t *)data = v;
}

static void rtc_write(void *opaque, uint64_t off, const void *data, unsigned size)
{
	struct rtc *r = opaque;
	uint8_t v = *(const uint8_t *)data;

	pthread_mutex_lock(&r->lock);
	if (off == 0) {
		r->index = v & 0x7f; /* bit 7 is the NMI mask: nothing to mask here */
	} else if (r->index == RTC_REG_B) {
		r->nvram[RTC_REG_B] = v & (REG_B_24H | REG_B_BINARY);
	} else if (r->index > RTC_REG_D && r->index != RTC_CENTURY) {
		r->nvram[r->index] = v;
	}
	pthread_mutex_unlock(&r->lock);
}

static const struct bus_ops rtc_ops = {.read = rtc_read, .write = rtc_write};

static void rtc_reset(void *opaque)
{
	struct rtc *r = opaque;

	pthread_mutex_lock(&r->lock);
	memset(r->nvram, 0, sizeof(r->nvram));
	r->index = 0;
	r->nvram[RTC_REG_A] = 0x26; /* 32.768 kHz divider, 1024 Hz rate, no update in progress */
	r->nvram[RTC_REG_B] = REG_B_24H;
	r->nvram[RTC_REG_D] = REG_D_VRT;
	pthread_mutex_unlock(&r->lock);
}

static int rtc_save(void *opaque, struct dev_buf *out)
{
	struct rtc *r = opaque;
	uint8_t st[2 + RTC_NVRAM];
	int err;

	pthread_mutex_lock(&r->lock);
	st[0] = 1; /* version */
	st[1] = r->index;
	memcpy(st + 2, r->nvram, RTC_NVRAM);
	pthread_mutex_unlock(&r->lock);
	err = dev_buf_put(out, st, sizeof(st));
	return err;
}

static int rtc_restore(void *opaque, const void *data, uint64_t len)
{
	struct rtc *r = opaque;
	const uint8_t *st = data;

	if (len != 2 + RTC_NVRAM || st[0] != 1)
		return -EINVAL;
	pthread_mutex_lock(&r->lock);
	r->index = st[1] & 0x7f;
	memcpy(r->nvram, st + 2, RTC_NVRAM);
	r->nvram[RTC_REG_B] &= REG_B_24H | REG_B_BINARY;
	pthread_mutex_unlock(&r->lock);
	return 0;
}

static void rtc_destroy(void *opaque)
{
	struct rtc *r = opaque;

	pthread_mutex_destroy(&r->lock);
	free(r);
}

static const struct device_ops rtc_dev_ops = {
    .name = "rtc",
    .save = rtc_save,
    .restore = rtc_restore,
    .reset = rtc_reset,
    .destroy = rtc_destroy,
};

int rtc_create(struct vm *vm)
{
	struct rtc *r = calloc(1, sizeof(*r));
	int err;

	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	rtc_reset(r);
	err = vm_add_device(vm, &rtc_dev_ops, r);
	if (err) {
		rtc_destroy(r);
		return err;
	}
	return bus_register(&vm->pio, RTC_PORT, 2, &rtc_ops, r, "rtc");
}
