/*
 * tern-exit: hand the guest command's exit status to the VMM.
 *
 * usage: tern-exit STATUS        (STATUS is 0..255)
 *
 * Writes STATUS as one byte to tern's exit device (I/O port TERN_EXIT_PORT,
 * see docs/guest-interface.md). The default guest's kernel is built without
 * /dev/port, so busybox alone cannot reach an I/O port; this program asks
 * the kernel for that one port with ioperm(2) and writes it directly.
 */
#include "arch/x86/layout.h"
#include "rt.h"

int guest_main(long argc, char **argv)
{
	unsigned long status;

	if (argc != 2) {
		put_fd(2, "usage: tern-exit STATUS (0..255)\n");
		return 2;
	}
	if (parse_ulong(argv[1], 255, &status)) {
		put_fd(2, "tern-exit: STATUS must be a number from 0 to 255\n");
		return 2;
	}
	if (syscall3(SYS_IOPERM, TERN_EXIT_PORT, 1, 1) < 0) {
		put_fd(2, "tern-exit: ioperm failed (not root?)\n");
		return 1;
	}
	/*
	 * The VM stops the moment the byte arrives: first let the console
	 * send what /init itself wrote (its "tern-init:" lines), which may
	 * still wait in the serial driver for a THRE interrupt. The command's
	 * own output cannot be drained from here: it was drained, or thrown
	 * away, when the command's session ended (see tern-session.c).
	 */
	tty_drain(1);
	tty_drain(2);
	__asm__ volatile("outb %b0, %w1"
			 :
			 : "a"((unsigned char)status), "Nd"((unsigned short)TERN_EXIT_PORT));
	return 0;
}
