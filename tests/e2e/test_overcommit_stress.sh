#!/usr/bin/env bash
# Memory overcommit under load loses nothing. The guest runs tern-memstress:
# a quarter of its free memory filled with patterns it keeps rewriting, zeroing,
# unmapping and verifying, and a second process writing and re-reading
# patterned blocks on a virtio-blk disk with O_DIRECT. Meanwhile the host
# runs zero-page sweeps in one loop and, in another, moves the balloon's
# target up and down and reads the guest's statistics. Afterwards every
# byte the guest wrote must verify (the guest prints MEMSTRESS OK and exits
# 0), and the counters must show that the sweep, the balloon and free page
# reporting really released memory during the run, so the test cannot pass
# while they stand idle.
#
# TERN_STRESS_SECONDS sets how long the guest works (default 20).
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "the balloon and sweep API is tern's own"
e2e_require_boot
"$TERN" run --help 2>&1 | grep -q -- '--balloon' || fail "tern run --help does not list --balloon"

SOCK=$E2E_TMP/api.sock
RAW=$E2E_TMP/raw
DISK=$E2E_TMP/disk.img
SWEEPS=$E2E_TMP/sweeps
TERN_PID=
SWEEP_PID=
MEM_MIB=384
SECS=${TERN_STRESS_SECONDS:-20}
PERCENT=25
# Balloon targets in MiB, in turn: up and down by different steps.
TARGETS="48 16 96 0 64 32 0"

cleanup() {
	[ -n "$SWEEP_PID" ] && kill "$SWEEP_PID" 2>/dev/null
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	rm -rf "$E2E_TMP"
}
trap cleanup EXIT

ctl() {
	"$TERN" ctl --timeout 30 "$SOCK" "$@"
}

# num KEY: the first "KEY": N of the JSON on stdin.
num() {
	sed -n "s/.*\"$1\": \\([0-9][0-9]*\\).*/\\1/p" | head -n 1
}

alive() {
	kill -0 "$TERN_PID" 2>/dev/null
}

# The guest is done (OK or mismatch) or tern has exited.
finished() {
	grep -q '^MEMSTRESS \(OK\|MISMATCH\|ERROR\)' "$RAW" || ! alive
}

wait_line() {
	for _ in $(seq 1 $(($2 * 5))); do
		grep -q "$1" "$RAW" && return 0
		alive || fail "tern run exited early"
		sleep 0.2
	done
	fail "the guest never printed $1"
}

# Sweep after sweep until the guest is done; each answer's released bytes
# go into $SWEEPS, one line per sweep.
sweep_loop() {
	while ! finished; do
		ctl sweep 2>/dev/null | sed -n '/"sweep": {/,/}/p' | num released_bytes >>"$SWEEPS"
		sleep 0.3
	done
}

truncate -s 32M "$DISK" || fail "cannot create the disk image"
: >"$SWEEPS"

check "tern-memstress runs ${SECS}s in a $MEM_MIB MiB guest while sweeps and balloon changes loop"
# shellcheck disable=SC2086 # TERN_E2E_ARGS is a list of options
timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} --cpus 2 --memory $MEM_MIB --balloon \
	--disk "$DISK" --api-socket "$SOCK" -- \
	sh -c "echo STRESS_START; exec tern-memstress $SECS $PERCENT /dev/vda 16" \
	</dev/null >"$RAW" 2>"$VM_ERR" &
TERN_PID=$!
wait_line '^STRESS_START' 90
s=$(ctl stats) || fail "tern ctl stats failed"
rep0=$(echo "$s" | num released_free_report_bytes)
sweep_loop &
SWEEP_PID=$!

last=
sets=0
while ! finished; do
	for t in $TARGETS; do
		finished && break
		ctl balloon set "$t" >/dev/null 2>&1 && sets=$((sets + 1))
		sleep 1
		# A statistics read waits for the guest's answer; the counters of the
		# last one are what is checked below (tern exits with the guest).
		b=$(ctl balloon get 2>/dev/null) && last=$b
		ctl stats >/dev/null 2>&1
	done
done
wait "$SWEEP_PID"
SWEEP_PID=
wait "$TERN_PID"
rc=$?
TERN_PID=
tr -d '\r' <"$RAW" >"$VM_OUT"
grep '^MEMSTRESS' "$VM_OUT"
grep -q '^MEMSTRESS OK' "$VM_OUT" || fail "the guest's data did not verify (exit $rc)"
[ "$rc" -eq 0 ] || fail "tern run exited with $rc"
line=$(grep '^MEMSTRESS OK' "$VM_OUT")
field() {
	echo "$line" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"
}
# The guest did real work, not only its first fill (a very slow CPU).
for f in rewrites zeroed remaps disk_writes disk_verified; do
	[ "$(field $f)" -gt 0 ] || fail "the guest did no $f: $line"
done
ok "every page and disk block the guest wrote verified"

check "the sweep, the balloon and free page reporting released memory during the run"
nsweeps=$(grep -c . "$SWEEPS")
swept=$(awk '{ s += $1 } END { print s + 0 }' "$SWEEPS")
[ -n "$last" ] || fail "no balloon statistics were read during the run"
inflated=$(echo "$last" | num inflated_pages)
deflated=$(echo "$last" | num deflated_pages)
rel_balloon=$(echo "$last" | num released_balloon_bytes)
rep1=$(echo "$last" | num released_free_report_bytes)
echo "  $nsweeps sweeps released $((swept >> 20)) MiB; $sets balloon targets set," \
	"$inflated pages inflated, $deflated deflated, $((rel_balloon >> 20)) MiB released;" \
	"free page reporting released $(((rep1 - rep0) >> 20)) MiB"
[ "$nsweeps" -ge 3 ] || fail "only $nsweeps sweeps ran"
[ "$swept" -gt 0 ] || fail "the sweeps released nothing"
[ "${inflated:-0}" -gt 0 ] && [ "${deflated:-0}" -gt 0 ] ||
	fail "the balloon did not move both ways (inflated ${inflated:-?}, deflated ${deflated:-?})"
[ "${rel_balloon:-0}" -gt 0 ] || fail "the balloon released nothing"
[ "$((${rep1:-0} - ${rep0:-0}))" -gt 0 ] || fail "free page reporting released nothing"
ok "all three gave memory back while the guest's data stayed intact"
