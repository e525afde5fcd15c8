#!/usr/bin/env bash
# Live memory snapshot of a guest that keeps changing its memory: the guest
# writes round numbers into 32 tmpfs files (each its own page) and keeps
# the round in a shell variable (another page); at the start of every round
# all 32 files must hold that variable's value. PUT /vm/snapshot is taken
# while it runs; the memory file is written while the guest goes on
# writing, so a copy that mixed pages from before and after the pause would
# break the invariant in the restored guest. The restored guest must go on
# from the snapshot (not from the start) with every round consistent. A
# snapshot to a directory that does not exist, or onto a full file system,
# fails, leaves no files and leaves the guest running.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "tern-only: snapshot API"
e2e_require_boot
command -v curl >/dev/null || skip "no curl"

SOCK=$E2E_TMP/api.sock
RAW=$E2E_TMP/raw
TERN_PID=

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	rm -rf "$E2E_TMP"
}
trap cleanup EXIT

api() {
	curl -sS --max-time 60 --unix-socket "$SOCK" -X "$1" --data-binary "$3" \
		-o "$E2E_TMP/body" -w '%{http_code}' "http://localhost$2" >"$E2E_TMP/status" ||
		fail "curl $1 $2 failed"
}

# One round: check every file holds i, write i+1 to each, then i=i+1.
# Every 4 rounds it prints ITER and looks at the identity device's
# generation id; once it changed (a restore) it runs 16 more rounds and exits.
guest='mkdir -p /mnt/t && mount -t tmpfs none /mnt/t || exit 9
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/device)" = 0x1ff0 ] && I=$d/config; done
C=$(od -An -tu1 -j 52 -N 1 $I | tr -d " ")
g() { od -An -tx1 -j $(($C + 8)) -N 16 $I | tr -d " \n"; }
round() {
	k=0
	while [ $k -lt 32 ]; do
		read -r v </mnt/t/f$k
		[ "$v" = "$i" ] || { echo "TORN round $i: f$k holds $v"; exit 3; }
		k=$((k + 1))
	done
	k=0
	while [ $k -lt 32 ]; do echo $((i + 1)) >/mnt/t/f$k; k=$((k + 1)); done
	i=$((i + 1))
}
G0=$(g); i=0; k=0
while [ $k -lt 32 ]; do echo 0 >/mnt/t/f$k; k=$((k + 1)); done
echo READY
while :; do
	round
	if [ $((i % 4)) = 0 ]; then
		echo "ITER=$i"
		[ "$(g)" = "$G0" ] || break
	fi
done
n=$((i + 16))
while [ $i -lt $n ]; do round; done
echo "RESTORED-OK $i"
exit 0'

# The rounds a console printed, one per line (the console ends lines with CR LF).
iters() { tr -d '\r' <"$1" | sed -n 's/^ITER=\([0-9]*\)$/\1/p'; }

check "a live snapshot of a guest rewriting its memory restores to one consistent instant"
# shellcheck disable=SC2086
timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} --api-socket "$SOCK" -- \
	sh -c "$guest" </dev/null >"$RAW" 2>"$VM_ERR" &
TERN_PID=$!
for _ in $(seq 1 600); do
	[ "$(iters "$RAW" | tail -n 1)" -ge 8 ] 2>/dev/null && break
	kill -0 "$TERN_PID" 2>/dev/null || fail "tern run exited early: $(tail -n 3 "$RAW")"
	sleep 0.2
done
before=$(iters "$RAW" | tail -n 1)
[ "${before:-0}" -ge 8 ] || fail "the guest never got going"

api PUT /vm/snapshot "{\"state\": \"$E2E_TMP/live.state\"}"
[ "$(cat "$E2E_TMP/status")" = 200 ] || fail "PUT /vm/snapshot: $(cat "$E2E_TMP/body")"
body=$(cat "$E2E_TMP/body")
num() { printf '%s' "$body" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
pause_us=$(num pause_us)
cbw=$(num copied_before_write)
[ -n "$pause_us" ] && [ -n "$cbw" ] || fail "answer without times: $body"
[ -f "$E2E_TMP/live.state" ] && [ -f "$E2E_TMP/live.mem" ] || fail "files missing after the answer"
ls "$E2E_TMP"/*.tmp >/dev/null 2>&1 && fail "temporary files left: $(ls "$E2E_TMP")"
if printf '%s' "$body" | grep -q '"live":true'; then
	# The guest wrote pages that were not copied yet: it ran during the copy.
	[ "$cbw" -gt 0 ] || fail "live, but no page was copied before a write: $body"
	mode="live, paused ${pause_us} us, $cbw pages copied before write"
else
	mode="NOT live on this host (paused copy, ${pause_us} us): $(grep -m1 'no live memory' "$VM_ERR")"
fi
# It goes on: a few rounds a second on the emulator.
progress() {
	local n0 _
	n0=$(iters "$RAW" | tail -n 1)
	for _ in $(seq 1 50); do
		[ "$(iters "$RAW" | tail -n 1)" -gt "$n0" ] && return 0
		sleep 0.2
	done
	return 1
}
progress || fail "the source stopped after the snapshot: $(tail -n 2 "$RAW")"
grep -q TORN "$RAW" && fail "the source itself broke its invariant: $(grep TORN "$RAW")"

timeout -k 5 "$E2E_TIMEOUT" "$TERN" restore "$E2E_TMP/live.state" </dev/null \
	>"$E2E_TMP/r.raw" 2>"$E2E_TMP/r.err"
rc=$?
grep TORN "$E2E_TMP/r.raw" && fail "the restored memory mixes two instants"
[ "$rc" = 0 ] || fail "tern restore exited $rc: $(tail -n 3 "$E2E_TMP/r.raw" "$E2E_TMP/r.err")"
grep -q '^READY' "$E2E_TMP/r.raw" && fail "the restored guest started from the beginning"
# The snapshot may catch the guest right after it printed ITER=$before, before it
# looked at the generation id: the restored guest then notices at that round.
end=$(tr -d '\r' <"$E2E_TMP/r.raw" | sed -n 's/^RESTORED-OK \([0-9]*\)$/\1/p')
[ -n "$end" ] || fail "restored guest output: $(tail -n 3 "$E2E_TMP/r.raw")"
[ "$end" -ge $((before + 16)) ] ||
	fail "restored guest noticed the restore at round $((end - 16)), the source was past $before"
ok "$mode; restored guest noticed at round $((end - 16)) and ran 16 more consistent rounds"

check "a snapshot into a missing directory fails and the guest runs on"
api PUT /vm/snapshot "{\"state\": \"$E2E_TMP/no/such/dir/x.state\"}"
[ "$(cat "$E2E_TMP/status")" = 400 ] || fail "answer $(cat "$E2E_TMP/status"): $(cat "$E2E_TMP/body")"
progress || fail "the guest stopped"
ok "refused with 400, guest still running"

check "a snapshot onto a full file system fails, leaves no files, and the guest runs on"
full=$E2E_TMP/full
mkdir -p "$full"
if mount -t tmpfs -o size=8m none "$full" 2>/dev/null; then
	api PUT /vm/snapshot "{\"state\": \"$full/x.state\"}"
	status=$(cat "$E2E_TMP/status")
	left=$(ls -A "$full")
	umount "$full"
	[ "$status" = 500 ] || fail "answer $status: $(cat "$E2E_TMP/body")"
	[ -z "$left" ] || fail "files left behind: $left"
	progress || fail "the guest stopped"
	ok "500 ($(sed -n 's/.*"error":"\([^"]*\)".*/\1/p' "$E2E_TMP/body")), no files, guest running"
else
	echo "  skipped: cannot mount a small tmpfs here (not root)"
fi

kill "$TERN_PID" 2>/dev/null
wait "$TERN_PID" 2>/dev/null
TERN_PID=
exit 0
