# Shared helpers for the end-to-end tests (sourced, not run).
#
# Each tests/e2e/test_*.sh boots the real default guest (make guest) and
# checks one thing a user relies on. Exit 0 passes, 77 skips (the last line
# says why), anything else fails.
#
# Environment:
#   TERN                 the tern binary (default: build/tern)
#   TERN_E2E_TIMEOUT     seconds one guest run may take (default 120)
#   TERN_E2E_ARGS        extra options for every 'tern run' (e.g. --accel emu)
#   TERN_E2E_ALLOW_NO_BOOT=1  skip, instead of fail, when tern cannot boot the guest
#   TERN_E2E_PROBE_TIMEOUT  seconds the one boot probe may take (default 90)
#   TERN_E2E_VMM=qemu    run the same guest commands under QEMU instead
#                        (-M pc, TCG; port 0x4F0 is QEMU's isa-debug-exit).
#                        This checks the guest and the tests' own logic;
#                        tern-only checks skip.
# shellcheck shell=bash
set -u

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TERN=${TERN:-$E2E_ROOT/build/tern}
E2E_TIMEOUT=${TERN_E2E_TIMEOUT:-120}
E2E_VMM=${TERN_E2E_VMM:-tern}
E2E_KERNEL=$E2E_ROOT/guest/out/vmlinuz
E2E_INITRD=$E2E_ROOT/guest/out/initrd

E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tern-e2e.XXXXXX")
trap 'rm -rf "$E2E_TMP"' EXIT

# Output of the last vm_run, with the console's \r removed, and its status.
VM_OUT=$E2E_TMP/out
VM_ERR=$E2E_TMP/err
VM_RC=

skip() {
	echo "SKIP: $*"
	exit 77
}

fail() {
	echo "FAIL: $*"
	if [ -s "$VM_OUT" ]; then
		echo "--- last guest output (tail) ---"
		tail -n 25 "$VM_OUT"
	fi
	if [ -s "$VM_ERR" ]; then
		echo "--- last VMM stderr (tail) ---"
		tail -n 10 "$VM_ERR"
	fi
	exit 1
}

# Say what is about to be checked, so a log reads as a list of claims.
check() {
	echo "check: $*"
}

ok() {
	echo "  ok: $*"
}

e2e_b64_argv() {
	printf '%s\0' "$@" | base64 -w0
}

# qemu_run [tern run options] [-- CMD ARGS...]: the same run under QEMU.
# Its exit status is mapped back to the guest's: isa-debug-exit makes QEMU
# exit with (status << 1) | 1; any other end (the guest never wrote the
# exit port, QEMU failed) is reported as 255. Statuses above 127 do not
# survive the shift.
qemu_run() {
	# tern's default command line; --cmdline appends to it, as in tern.
	local kernel=$E2E_KERNEL initrd=$E2E_INITRD
	local cmdline="console=ttyS0 reboot=k panic=-1 loglevel=4 8250.nr_uarts=1"
	local cpus=1 mem=256 ndisk=0 opts=() rc path ro
	while [ $# -gt 0 ]; do
		case $1 in
		--kernel) kernel=$2; shift 2 ;;
		--initrd) initrd=$2; shift 2 ;;
		--cmdline) cmdline="$cmdline $2"; shift 2 ;;
		--cpus) cpus=$2; shift 2 ;;
		--memory) mem=$2; shift 2 ;;
		--accel) shift 2 ;;
		--disk)
			path=${2%,readonly}
			ro=
			[ "$path" != "$2" ] && ro=,readonly=on
			opts+=(-drive "file=$path,format=raw,if=none,id=d$ndisk$ro"
				-device "virtio-blk-pci,drive=d$ndisk")
			ndisk=$((ndisk + 1))
			shift 2
			;;
		--) shift; break ;;
		*) echo "qemu_run: option $1 has no QEMU equivalent here" >&2; return 2 ;;
		esac
	done
	[ $# -gt 0 ] && cmdline="$cmdline tern.cmd=$(e2e_b64_argv "$@")"
	qemu-system-x86_64 -M pc -accel tcg -nodefaults -no-user-config \
		-nographic -serial stdio -no-reboot \
		-device isa-debug-exit,iobase=0x4f0,iosize=1 \
		-kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
		-m "$mem" -smp "$cpus" "${opts[@]}" | tee "$E2E_TMP/qemu.out"
	rc=${PIPESTATUS[0]}
	# QEMU's own errors exit 1, which would read as status 0: a guest that
	# never reached /init cannot have written a status.
	if [ $((rc % 2)) -eq 1 ] && grep -q 'tern-init: ready' "$E2E_TMP/qemu.out"; then
		return $((rc >> 1))
	fi
	return 255
}

# vm_run [tern run options] [-- CMD ARGS...]: boot the guest, wait at most
# E2E_TIMEOUT seconds. Sets VM_RC; output in $VM_OUT, VMM stderr in $VM_ERR.
# Standard input is empty unless VM_STDIN names a file.
vm_run() {
	local stdin=${VM_STDIN:-/dev/null}
	local raw=$E2E_TMP/raw
	if [ "$E2E_VMM" = qemu ]; then
		# The function has to run in a child for timeout(1) to bound it.
		export -f qemu_run e2e_b64_argv
		export E2E_KERNEL E2E_INITRD
		timeout -k 5 "$E2E_TIMEOUT" bash -c 'qemu_run "$@"' qemu_run "$@" \
			<"$stdin" >"$raw" 2>"$VM_ERR"
	else
		# shellcheck disable=SC2086 # TERN_E2E_ARGS is a list of options
		timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} "$@" \
			<"$stdin" >"$raw" 2>"$VM_ERR"
	fi
	VM_RC=$?
	tr -d '\r' <"$raw" >"$VM_OUT"
	if [ -z "${E2E_PROBING:-}" ] && { [ "$VM_RC" -eq 124 ] || [ "$VM_RC" -eq 137 ]; }; then
		fail "guest did not finish within ${E2E_TIMEOUT}s (tern run $*)"
	fi
	return 0
}

# vm_value KEY: the value of the first "KEY=value" line the guest printed.
# Tests print results this way so kernel messages on the console cannot be
# mistaken for them.
vm_value() {
	sed -n "s/^$1=//p" "$VM_OUT" | head -n 1
}

expect_rc() {
	[ "$VM_RC" -eq "$1" ] || fail "expected exit status $1, got $VM_RC"
}

# The default guest and the VMM under test exist.
e2e_require_tern() {
	if [ ! -s "$E2E_KERNEL" ] || [ ! -s "$E2E_INITRD" ]; then
		skip "no default guest (run 'make guest')"
	fi
	if [ "$E2E_VMM" = qemu ]; then
		command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64"
		return 0
	fi
	[ -x "$TERN" ] || skip "no tern binary at $TERN (run 'make')"
}

# Boot once per tern binary and guest; every test fails while tern cannot
# boot the default guest (a boot regression must not hide as skips; set
# TERN_E2E_ALLOW_NO_BOOT=1 to skip instead, e.g. while porting). The verdict is
# cached next to the binary so a failing tree costs one probe, not one per
# test, and the probe gives up after TERN_E2E_PROBE_TIMEOUT seconds
# (default 90).
e2e_require_boot() {
	e2e_require_tern
	[ "$E2E_VMM" = qemu ] && return 0
	local key cache verdict
	key=$(stat -Lc '%Y.%s.%i' "$TERN" "$E2E_KERNEL" "$E2E_INITRD" | tr '\n' '-')
	key="$key${TERN_E2E_ARGS:-}"
	cache=$(dirname "$TERN")/.e2e-probe
	if [ "$(head -n 1 "$cache" 2>/dev/null)" = "$key" ]; then
		verdict=$(sed -n 2p "$cache")
	else
		E2E_PROBING=1 E2E_TIMEOUT=${TERN_E2E_PROBE_TIMEOUT:-90} \
			vm_run -- sh -c 'echo E2E_PROBE=$((6 * 7))'
		if [ "$VM_RC" -eq 0 ] && [ "$(vm_value E2E_PROBE)" = 42 ]; then
			verdict=ok
		elif [ "$VM_RC" -eq 124 ] || [ "$VM_RC" -eq 137 ]; then
			verdict="no answer within ${TERN_E2E_PROBE_TIMEOUT:-90} s"
		else
			verdict="exit $VM_RC: $(cat "$VM_ERR" "$VM_OUT" | grep -v '^ *$' | tail -n 1)"
		fi
		printf '%s\n%s\n' "$key" "$verdict" >"$cache" 2>/dev/null
	fi
	[ "$verdict" = ok ] && return 0
	[ "${TERN_E2E_ALLOW_NO_BOOT:-}" = 1 ] && skip "tern does not boot the default guest ($verdict)"
	fail "tern does not boot the default guest: $verdict"
}
