#!/usr/bin/env bash
# Everything the guest command writes reaches tern's standard output, up to
# its last byte, even when the command exits right after writing it: on one
# vCPU and on two (where the serial interrupt that sends the output may run
# on the other vCPU, after the writer has exited), for a short last line, a
# last line without a newline, a burst of lines, and 5000 lines.
#
# TERN_E2E_OUTPUT_RUNS: runs per vCPU count (default 10). A lost last line
# showed up in about one run in three on two vCPUs.
. "$(dirname "$0")/lib.sh"
e2e_require_boot

runs=${TERN_E2E_OUTPUT_RUNS:-10}
case $runs in '' | *[!0-9]*) fail "TERN_E2E_OUTPUT_RUNS must be a number" ;; esac

# The last bytes of the console output, whatever tern or the guest added.
tail_is() {
	local want=$1 got
	got=$(tail -c "${#want}" "$VM_OUT")
	[ "$got" = "$want" ]
}

# run_one CPUS N: one short command of three kinds, none with a pause after
# its last write.
run_one() {
	local cpus=$1 n=$2 tag="$1-$2"
	case $((n % 3)) in
	0)
		vm_run --cpus "$cpus" -- sh -c 'echo "E2E_LAST=$1"' sh "$tag"
		expect_rc 0
		grep -qx "E2E_LAST=$tag" "$VM_OUT" ||
			fail "--cpus $cpus run $n: the last line E2E_LAST=$tag is missing or cut"
		;;
	1)
		# No newline at all: nothing on the host side waits for one.
		vm_run --cpus "$cpus" -- sh -c 'printf "E2E_NONL=%s" "$1"; exit 5' sh "$tag"
		expect_rc 5
		tail_is "E2E_NONL=$tag" ||
			fail "--cpus $cpus run $n: output does not end with E2E_NONL=$tag"
		;;
	2)
		# More than the UART's 16-byte FIFO: several THRE interrupts.
		vm_run --cpus "$cpus" -- sh -c 'i=0; while [ $i -lt 40 ]; do
			echo "E2E_BURST_$i=$1"; i=$((i + 1)); done' sh "$tag"
		expect_rc 0
		[ "$(grep -cx "E2E_BURST_[0-9]*=$tag" "$VM_OUT")" = 40 ] ||
			fail "--cpus $cpus run $n: $(grep -cx "E2E_BURST_[0-9]*=$tag" "$VM_OUT") of 40 lines arrived"
		grep -qx "E2E_BURST_39=$tag" "$VM_OUT" ||
			fail "--cpus $cpus run $n: the last burst line is missing or cut"
		;;
	esac
}

for cpus in 1 2; do
	check "$runs commands on --cpus $cpus that exit right after their last write: all output arrives"
	for n in $(seq 1 "$runs"); do
		run_one "$cpus" "$n"
	done
	ok "$runs of $runs complete"
done

check "'seq 1 5000' on --cpus 2: every line arrives, in order, the last one included"
vm_run --cpus 2 -- seq 1 5000
expect_rc 0
seq 1 5000 >"$E2E_TMP/want"
grep -E '^[0-9]+$' "$VM_OUT" >"$E2E_TMP/got"
cmp -s "$E2E_TMP/want" "$E2E_TMP/got" ||
	fail "got $(wc -l <"$E2E_TMP/got") of 5000 lines, the last one '$(tail -n 1 "$E2E_TMP/got")'"
ok "5000 lines"
