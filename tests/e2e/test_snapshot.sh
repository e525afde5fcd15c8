#!/usr/bin/env bash
# Snapshot a booted default guest while a shell loop counts in tmpfs, then
# restore it twice from the same snapshot: each time the count goes on from
# where the snapshot caught it (never from the start), timers (sleep), the
# disk and console input keep working, and the guest's exit status comes
# through. Damaged snapshots are refused before anything runs.
. "$(dirname "$0")/lib.sh"
e2e_require_boot
[ "$E2E_VMM" = qemu ] && skip "tern-only: snapshot and restore"

state=$E2E_TMP/warm.state
mem=$E2E_TMP/warm.mem
disk=$E2E_TMP/disk.img
printf 'disk-says-%s\n' "$$" >"$disk"
truncate -s 1M "$disk"

# The counter prints COUNT=100, 200, ...; the snapshot is taken once 300 is reached.
# No echo: input typed after the restore must not land in the middle of the COUNT lines.
guest='stty -echo 2>/dev/null
mkdir -p /mnt/t && mount -t tmpfs none /mnt/t || exit 9
i=0
while [ $i -lt 1500 ]; do
	i=$((i + 1))
	echo $i >/mnt/t/count
	[ $i = 300 ] && echo SNAP-NOW
	[ $((i % 100)) = 0 ] && echo "COUNT=$i"
done
t0=$(cut -d. -f1 /proc/uptime)
sleep 1
t1=$(cut -d. -f1 /proc/uptime)
echo "SLEPT=$((t1 - t0))"
echo "FINAL=$(cat /mnt/t/count)"
echo "DISK=$(head -n 1 /dev/vda)"
read -r line
echo "INPUT=$line"
exit 7'

check "tern snapshot boots the guest and saves it at the marker"
# shellcheck disable=SC2086
timeout -k 5 "$E2E_TIMEOUT" "$TERN" snapshot ${TERN_E2E_ARGS:-} --disk "$disk,readonly" \
	--state "$state" --at-output SNAP-NOW -- sh -c "$guest" \
	</dev/null >"$E2E_TMP/raw" 2>"$VM_ERR"
VM_RC=$?
tr -d '\r' <"$E2E_TMP/raw" >"$VM_OUT"
expect_rc 0
[ -s "$state" ] && [ -s "$mem" ] || fail "no state file or memory file"
grep -q '^SNAP-NOW' "$VM_OUT" || fail "the guest did not reach 300 before the snapshot"
size=$(stat -c %s "$mem")
used=$(($(stat -c %b "$mem") * 512))
[ "$size" -gt $((256 << 20)) ] || fail "memory file is $size bytes, less than the guest's RAM"
[ "$used" -lt $((size / 2)) ] || fail "memory file is not sparse: $used of $size bytes allocated"
ok "state $(stat -c %s "$state") bytes; memory file $((size >> 20)) MiB, $((used >> 20)) MiB allocated"

restore_once() {
	echo "hello-after-restore" >"$E2E_TMP/in"
	timeout -k 5 "$E2E_TIMEOUT" "$TERN" restore -v "$state" <"$E2E_TMP/in" >"$E2E_TMP/raw" \
		2>"$VM_ERR"
	VM_RC=$?
	tr -d '\r' <"$E2E_TMP/raw" >"$VM_OUT"
	expect_rc 7
	counts=$(sed -n 's/^COUNT=//p' "$VM_OUT")
	first=$(echo "$counts" | head -n 1)
	[ -n "$first" ] || fail "the restored guest printed no count"
	# The snapshot was taken after i reached 300; COUNT=300 itself may not have been printed yet.
	[ "$first" -ge 300 ] || fail "the count restarted: first count after restore is $first"
	want=$first
	for c in $counts; do
		[ "$c" = "$want" ] || fail "counts after restore jump: expected $want, got $c"
		want=$((want + 100))
	done
	[ "$(vm_value FINAL)" = 1500 ] || fail "final count $(vm_value FINAL), expected 1500"
	slept=$(vm_value SLEPT)
	[ -n "$slept" ] && [ "$slept" -ge 1 ] && [ "$slept" -le 3 ] ||
		fail "sleep 1 in the restored guest took ${slept:-?} s of guest uptime"
	[ "$(vm_value DISK)" = "disk-says-$$" ] || fail "disk read '$(vm_value DISK)' after restore"
	[ "$(vm_value INPUT)" = hello-after-restore ] || fail "console input: '$(vm_value INPUT)'"
	ms=$(sed -n 's/.*runs again \([0-9.]*\) ms.*/\1/p' "$VM_ERR")
	ok "count went on from $first to 1500, sleep, disk and console work; running again after ${ms:-?} ms"
}

check "tern restore resumes the guest where it stopped"
restore_once
check "a second restore from the same snapshot does it again"
restore_once

check "a corrupted or truncated snapshot is refused and nothing runs"
cp "$state" "$E2E_TMP/bad.state"
printf '\x55' | dd of="$E2E_TMP/bad.state" bs=1 seek=200 conv=notrunc 2>/dev/null
"$TERN" restore --mem "$mem" "$E2E_TMP/bad.state" </dev/null >"$VM_OUT" 2>"$VM_ERR"
VM_RC=$?
expect_rc 2
grep -q 'corrupted' "$VM_ERR" || fail "no 'corrupted' in: $(cat "$VM_ERR")"
[ ! -s "$VM_OUT" ] || fail "the guest produced output from a corrupted snapshot"
head -c 1000 "$state" >"$E2E_TMP/short.state"
"$TERN" restore --mem "$mem" "$E2E_TMP/short.state" </dev/null >"$VM_OUT" 2>"$VM_ERR"
VM_RC=$?
expect_rc 2
grep -q 'truncated' "$VM_ERR" || fail "no 'truncated' in: $(cat "$VM_ERR")"
ok "$(head -n 1 "$VM_ERR")"
