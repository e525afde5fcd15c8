# Shared by bench/boot and bench/emu-ips (sourced, not run). The caller
# sets: top, kernel, initrd, TERN, QEMU, accel, base_cmdline, marker,
# timeout_s, work.
# shellcheck shell=bash disable=SC2154

b64_argv() {
	printf '%s\0' "$@" | base64 -w0
}

# QEMU's best accelerator here: KVM only where the CPU has VMX/SVM (this
# guest cannot run under a /dev/kvm without them), TCG otherwise.
qemu_accel() {
	if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
		echo kvm
	else
		echo tcg
	fi
}

# microvm has no PIT calibration path under TCG; tell the kernel the TSC
# rate (any plausible value works, the host's is the most honest).
tsc_khz() {
	awk -F: '/^cpu MHz/ { printf "%d\n", $2 * 1000; exit }' /proc/cpuinfo
}

# vmm_argv VMM CMD...: fill the array 'argv' with the command line of one run.
vmm_argv() {
	local vmm=$1 cmdline
	shift
	cmdline="$base_cmdline tern.cmd=$(b64_argv "$@")"
	case $vmm in
	tern)
		# tern builds the same command line itself: its default plus tern.cmd.
		argv=("$TERN" run --accel "${TERN_ACCEL:-auto}" --kernel "$kernel"
			--initrd "$initrd" --cpus 1 --memory 256 -- "$@")
		;;
	qemu-microvm)
		[ "$accel" = tcg ] && cmdline="$cmdline tsc_early_khz=$(tsc_khz)"
		argv=("$QEMU" -M microvm -accel "$accel" -nodefaults -no-user-config
			-nographic -serial stdio -no-reboot -smp 1 -m 256
			-kernel "$kernel" -initrd "$initrd" -append "$cmdline")
		;;
	qemu-pc)
		argv=("$QEMU" -M pc -accel "$accel" -nodefaults -no-user-config
			-nographic -serial stdio -no-reboot -smp 1 -m 256
			-kernel "$kernel" -initrd "$initrd" -append "$cmdline")
		;;
	*)
		echo "bench/boot: unknown VMM '$vmm'" >&2
		exit 2
		;;
	esac
	[ "$accel" = kvm ] && [ "$vmm" != tern ] && argv+=(-cpu host)
	return 0
}

ms_since() {
	local t0=$1 t1=$2
	# EPOCHREALTIME is seconds.microseconds; integer microseconds avoid bc.
	echo $(((${t1/./} - ${t0/./}) / 1000))
}

# one_run VMM RUN CMD...: prints "status ready_ms exit_ms rss_kib".
# Peak RSS comes from GNU time's getrusage of the VMM process.
one_run() {
	local vmm=$1 run=$2 t0 tready=- tend line rc rss=-
	local log=$work/$vmm.$run.log rssf=$work/rss
	shift 2
	vmm_argv "$vmm" "$@"
	local timer=()
	[ -x /usr/bin/time ] && timer=(/usr/bin/time -f %M -o "$rssf")
	rm -f "$rssf"
	t0=$EPOCHREALTIME
	while IFS= read -r line; do
		if [ "$tready" = - ] && [[ $line == *"$marker"* ]]; then
			tready=$EPOCHREALTIME
		fi
		printf '%s\n' "$line" >>"$log"
	done < <(exec "${timer[@]}" timeout -k 5 "$timeout_s" "${argv[@]}" </dev/null 2>"$log.err")
	wait $! 2>/dev/null
	rc=$?
	tend=$EPOCHREALTIME
	[ -s "$rssf" ] && rss=$(tail -n 1 "$rssf")
	case $rss in '' | *[!0-9]*) rss=- ;; esac
	[ "$tready" = - ] || tready=$(ms_since "$t0" "$tready")
	echo "$rc $tready $(ms_since "$t0" "$tend") $rss"
}

median() {
	[ -s "$1" ] || { echo -; return; }
	sort -n "$1" | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "-"; exit }
		if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

