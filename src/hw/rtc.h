/*
 * MC146818 CMOS real-time clock at ports 0x70 (index) / 0x71 (data), as far
 * as the kernel's boot-time wall clock needs it: the date and time registers
 * read the host's UTC clock (BCD or binary, as register B says), register A
 * never shows an update in progress, register D says the battery is good.
 * Time written by the guest is not kept: the host clock is the truth. There
 * are no alarms or periodic interrupts (the FADT says there is no CMOS RTC,
 * so the rtc_cmos driver leaves it alone).
 */
#ifndef TERN_HW_RTC_H
#define TERN_HW_RTC_H

struct vm;

int rtc_create(struct vm *vm);

#endif
