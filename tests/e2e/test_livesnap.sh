#!/usr/bin/env bash
# Live disk snapshots of a running guest that writes all the time.
#
# The guest writes sequence-numbered records round-robin into 64 slots of
# 4 KiB at the end of /dev/vda (the background copy reaches them last) (write n goes to slot n % 64, with fsync;
# "W=n" on the console after each; paced at about 30 writes a second so the
# writer outlasts the rate-limited copy however fast the CPU is). While it writes, the host takes a copy
# snapshot (copy-before-write, background copy slowed down so the guest
# overwrites slots before they are copied) and later an overlay snapshot.
# Each snapshot must be exactly the disk at one instant: for some s, every
# slot holds the newest record <= s that maps to it, nothing newer, and s is
# at least the last write the guest had acknowledged before the request.
# The rest of the disk (random data) must be unchanged, and the VM's own
# disk must hold every write at the end.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "live disk snapshots are tern's own"
e2e_require_boot
command -v curl >/dev/null || skip "no curl"
command -v qemu-img >/dev/null || skip "no qemu-img"

SLOTS=64
DISK_MB=32
BASE=$((DISK_MB * 256 - SLOTS)) # first slot, in 4 KiB blocks
NWRITES=${LIVESNAP_WRITES:-500}
SOCK=$E2E_TMP/api.sock
DISK=$E2E_TMP/disk.img
TERN_PID=

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	[ -n "${E2E_KEEP:-}" ] || rm -rf "$E2E_TMP"
}
trap cleanup EXIT

api() {
	local data=()
	[ $# -ge 3 ] && data=(--data-binary "$3")
	curl -sS --max-time 30 --unix-socket "$SOCK" -X "$1" "${data[@]}" \
		-o "$E2E_TMP/body" -w '%{http_code}' "http://localhost$2" >"$E2E_TMP/status" ||
		fail "curl $1 $2 failed"
	cat "$E2E_TMP/body"
}

# The last write the guest has acknowledged so far.
last_ack() {
	[ -e "$E2E_TMP/raw" ] || return 0
	tr -d '\r' <"$E2E_TMP/raw" | sed -n 's/^W=\([0-9][0-9]*\)$/\1/p' | tail -n 1
}

wait_ack() {
	local want=$1 t=0
	while [ "$(last_ack)" = "" ] || [ "$(last_ack)" -lt "$want" ]; do
		kill -0 "$TERN_PID" 2>/dev/null || fail "the VM stopped before write $want"
		t=$((t + 1))
		[ $t -gt 1200 ] && fail "the guest did not reach write $want"
		sleep 0.1
	done
}

# The sequence number in slot i of a raw image (0: never written).
slot_seq() {
	local s
	s=$(dd if="$1" bs=4096 skip=$((BASE + $2)) count=1 2>/dev/null | head -c 12 | tr -d '\0')
	case $s in
	SEQ[0-9]*) echo $((10#${s#SEQ})) ;;
	'') echo 0 ;;
	*) echo "bad:$s" ;;
	esac
}

# check_instant IMAGE MIN: IMAGE is the disk at one instant s >= MIN; prints s.
check_instant() {
	local img=$1 min=$2 s=0 i seq want
	local seqs=()
	for i in $(seq 0 $((SLOTS - 1))); do
		seq=$(slot_seq "$img" "$i")
		case $seq in bad:*) fail "slot $i of $img holds '${seq#bad:}'" ;; esac
		seqs[i]=$seq
		[ "$seq" -gt "$s" ] && s=$seq
	done
	for i in $(seq 0 $((SLOTS - 1))); do
		# The newest write <= s that went to slot i.
		if [ "$s" -lt "$i" ]; then want=0; else want=$((s - (s - i) % SLOTS)); fi
		[ "${seqs[i]}" = "$want" ] || fail "$img: slot $i holds write ${seqs[i]}, but the image is at write $s, so it must hold $want"
	done
	[ "$s" -ge "$min" ] || fail "$img is at write $s, but write $min was acknowledged before the snapshot"
	echo "$s"
}

# The disk: random data after the slots.
head -c $((DISK_MB << 20)) /dev/urandom >"$DISK"
dd if=/dev/zero of="$DISK" bs=4096 seek=$BASE count=$SLOTS conv=notrunc 2>/dev/null
cp "$DISK" "$E2E_TMP/orig.img"

writer='i=1
while [ $i -le '$NWRITES' ]; do
	printf "SEQ%09d" $i | dd of=/dev/vda bs=4096 seek=$(('$BASE' + i % '$SLOTS')) conv=notrunc,sync,fsync 2>/dev/null || exit 3
	echo "W=$i"
	i=$((i + 1))
	sleep 0.03
done
echo WRITER=done'

# shellcheck disable=SC2086
timeout -k 5 600 "$TERN" run ${TERN_E2E_ARGS:-} --disk "$DISK" --api-socket "$SOCK" \
	-- sh -c "$writer" </dev/null >"$E2E_TMP/raw" 2>"$E2E_TMP/err" &
TERN_PID=$!

check "a copy snapshot taken while the guest writes is the disk at one instant"
wait_ack 60
before=$(last_ack)
out=$(api POST /vm/disks/0/snapshot "{\"mode\": \"copy\", \"target\": \"$E2E_TMP/copy.img\", \"rate\": 4194304}")
[ "$(cat "$E2E_TMP/status")" = 200 ] || fail "copy snapshot: HTTP $(cat "$E2E_TMP/status"): $out"
pause1=$(echo "$out" | sed -n 's/.*"pause_us":\([0-9.]*\).*/\1/p')
t=0
until api GET /vm/disks/0/snapshot | grep -q '"state":"done"'; do
	grep -q '"state":"failed"' "$E2E_TMP/body" && fail "the copy failed: $(cat "$E2E_TMP/body")"
	t=$((t + 1))
	[ $t -gt 600 ] && fail "the copy did not finish: $(cat "$E2E_TMP/body")"
	sleep 0.1
done
job=$(cat "$E2E_TMP/body")
cbw=$(echo "$job" | sed -n 's/.*"copied_before_write":\([0-9]*\).*/\1/p')
s1=$(check_instant "$E2E_TMP/copy.img" "$before")
cmp -s -n $((BASE * 4096)) "$E2E_TMP/copy.img" "$E2E_TMP/orig.img" || fail "the copy differs from the disk outside the slots"
ok "copy is the disk at write $s1 (acknowledged before the request: $before), pause ${pause1} us, $cbw blocks copied before a write"

check "an overlay snapshot switches the running disk onto a new qcow2 layer"
wait_ack $((s1 + 40))
before=$(last_ack)
out=$(api POST /vm/disks/0/snapshot "{\"mode\": \"overlay\", \"target\": \"$E2E_TMP/top.qcow2\"}")
[ "$(cat "$E2E_TMP/status")" = 200 ] || fail "overlay snapshot: HTTP $(cat "$E2E_TMP/status"): $out"
pause2=$(echo "$out" | sed -n 's/.*"pause_us":\([0-9.]*\).*/\1/p')
echo "$out" | grep -q "\"path\":\"$E2E_TMP/top.qcow2\"" || fail "the disk does not name the overlay: $out"
# The old image is the overlay's backing file now: frozen at the switch.
cp "$DISK" "$E2E_TMP/frozen.img"
s2=$(check_instant "$E2E_TMP/frozen.img" "$before")
[ "$s2" -gt "$s1" ] || fail "the overlay instant $s2 is not after the copy's $s1"
ok "the old image froze at write $s2 (acknowledged before: $before), pause ${pause2} us"

check "the guest finishes its writes; the disk chain holds every one"
wait "$TERN_PID"
rc=$?
TERN_PID=
[ "$rc" = 0 ] || fail "tern run exited $rc: $(tail -n 3 "$E2E_TMP/err")"
tr -d '\r' <"$E2E_TMP/raw" >"$VM_OUT"
grep -q '^WRITER=done' "$VM_OUT" || fail "the guest writer did not finish"
qemu-img check -q "$E2E_TMP/top.qcow2" || fail "qemu-img check of the overlay failed"
cmp -s "$DISK" "$E2E_TMP/frozen.img" || fail "the backing image changed after the switch"
qemu-img convert -O raw "$E2E_TMP/top.qcow2" "$E2E_TMP/final.img"
s3=$(check_instant "$E2E_TMP/final.img" "$NWRITES")
[ "$s3" = "$NWRITES" ] || fail "the final disk is at write $s3, not $NWRITES"
cmp -s -n $((BASE * 4096)) "$E2E_TMP/final.img" "$E2E_TMP/orig.img" || fail "the disk changed outside the slots"
ok "all $NWRITES writes are there, in order"
echo "PAUSE_US copy=$pause1 overlay=$pause2"
