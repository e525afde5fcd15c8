#!/usr/bin/env bash
# Snapshot and clone a running 'tern run --api-socket' through the API:
# PUT /vm/snapshot writes a snapshot that tern restore resumes, PUT /vm/clone
# starts 2 clones as processes of their own that run on with their own
# identity while the source keeps running; a VM with a writable disk is
# refused a clone (its overlay would be backed by a disk still changing).
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "tern-only: snapshot API"
e2e_require_boot
command -v curl >/dev/null || skip "no curl"

SOCK=$E2E_TMP/api.sock
RAW=$E2E_TMP/raw
TERN_PID=

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	for p in "$E2E_TMP"/clones/clone-*/pid; do
		[ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null
	done
	rm -rf "$E2E_TMP"
}
trap cleanup EXIT

api() {
	local data=()
	[ $# -ge 3 ] && data=(--data-binary "$3")
	curl -sS --max-time 60 --unix-socket "$SOCK" -X "$1" "${data[@]}" \
		-o "$E2E_TMP/body" -w '%{http_code}' "http://localhost$2" >"$E2E_TMP/status" ||
		fail "curl $1 $2 failed"
	cat "$E2E_TMP/body"
}

# The guest ticks until its generation id changes (it was restored or cloned),
# then says who it is and exits.
guest='for d in /sys/bus/pci/devices/*; do [ "$(cat $d/device)" = 0x1ff0 ] && I=$d/config; done
C=$(od -An -tu1 -j 52 -N 1 $I | tr -d " ")
g() { od -An -tx1 -j $(($C + 8)) -N 16 $I | tr -d " \n"; }
G0=$(g); i=0
while [ "$(g)" = "$G0" ]; do i=$((i + 1)); echo TICK=$i; sleep 0.2; done
echo "IDX=$(od -An -tu4 -j $(($C + 4)) -N 4 $I | tr -d " ")"
sleep 0.5 # init'"'"'s tern-reseed notices a new generation within 0.2 s and reseeds
echo "RAND=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")"
exit 0'

start_vm() {
	# shellcheck disable=SC2086
	timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} --api-socket "$SOCK" "$@" -- \
		sh -c "$guest" </dev/null >"$RAW" 2>"$VM_ERR" &
	TERN_PID=$!
	for _ in $(seq 1 600); do
		grep -q '^TICK=3' "$RAW" && return 0
		kill -0 "$TERN_PID" 2>/dev/null || fail "tern run exited early"
		sleep 0.2
	done
	fail "the guest never started ticking"
}

stop_vm() {
	api PUT /vm/shutdown >/dev/null
	wait "$TERN_PID"
	TERN_PID=
}

check "PUT /vm/snapshot on a running VM writes a snapshot tern restore resumes"
start_vm
api PUT /vm/snapshot "{\"state\": \"$E2E_TMP/live.state\"}" >/dev/null
[ "$(cat "$E2E_TMP/status")" = 200 ] || fail "PUT /vm/snapshot: $(cat "$E2E_TMP/body")"
grep -q "\"mem\":\"$E2E_TMP/live.mem\"" "$E2E_TMP/body" || fail "answer: $(cat "$E2E_TMP/body")"
n1=$(grep -c '^TICK=' "$RAW")
sleep 1
[ "$(grep -c '^TICK=' "$RAW")" -gt "$n1" ] || fail "the source stopped ticking after the snapshot"
timeout -k 5 "$E2E_TIMEOUT" "$TERN" restore "$E2E_TMP/live.state" </dev/null \
	>"$E2E_TMP/r.raw" 2>"$E2E_TMP/r.err"
rc=$?
[ "$rc" = 0 ] || fail "tern restore of the API snapshot exited $rc: $(tail -n 3 "$E2E_TMP/r.err")"
grep -q '^IDX=4294967295' "$E2E_TMP/r.raw" || fail "the restored VM did not report its identity"
ok "snapshot while running; the source ticks on; the snapshot restores"

check "PUT /vm/clone starts 2 clones as their own processes"
api PUT /vm/clone "{\"dir\": \"$E2E_TMP/clones\", \"count\": 2}" >/dev/null
[ "$(cat "$E2E_TMP/status")" = 200 ] || fail "PUT /vm/clone: $(cat "$E2E_TMP/body")"
pids=$(sed 's/"pid":\([0-9]*\)/\n\1\n/g' "$E2E_TMP/body" | grep -x '[0-9][0-9]*')
[ "$(echo "$pids" | grep -c .)" = 2 ] || fail "no 2 pids in $(cat "$E2E_TMP/body")"
for _ in $(seq 1 300); do
	alive=0
	for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
	[ $alive = 0 ] && break
	sleep 0.2
done
[ $alive = 0 ] || fail "the clones did not finish"
for i in 0 1; do
	log=$E2E_TMP/clones/clone-$i/console.log
	tr -d '\r' <"$log" | grep -q "^IDX=$i\$" || fail "clone $i: $(tail -n 5 "$log")"
done
r0=$(tr -d '\r' <"$E2E_TMP/clones/clone-0/console.log" | sed -n 's/^RAND=//p')
r1=$(tr -d '\r' <"$E2E_TMP/clones/clone-1/console.log" | sed -n 's/^RAND=//p')
[ -n "$r0" ] && [ "$r0" != "$r1" ] || fail "clones drew the same random bytes: $r0 $r1"
kill -0 "$TERN_PID" 2>/dev/null || fail "the source stopped"
stop_vm
ok "clones 0 and 1 ran to the end with their own index and random bytes; the source ran on"

check "a VM with a writable disk is refused a clone"
truncate -s 1M "$E2E_TMP/disk.img"
start_vm --disk "$E2E_TMP/disk.img"
api PUT /vm/clone "{\"dir\": \"$E2E_TMP/c2\"}" >/dev/null
[ "$(cat "$E2E_TMP/status")" = 409 ] || fail "PUT /vm/clone answered $(cat "$E2E_TMP/status")"
msg=$(cat "$E2E_TMP/body")
stop_vm
ok "$msg"
