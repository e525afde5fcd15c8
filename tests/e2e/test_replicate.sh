#!/usr/bin/env bash
# Replication of a running VM's disk to recovery sites, and failover.
#
# The guest writes a marker, the host makes a replication point (the disk
# switches onto a new overlay, the sealed layer is shipped), twice. Each
# point goes to a replica directory and, over TCP, to `tern replicate
# serve` running in a network namespace made for the test. At each point
# the replica's chain equals the sealed primary chain (qemu-img compare).
# Then a large layer is shipped over a throttled link and the receiver is
# killed mid-layer: the replica's latest point must still be the previous
# complete one, and a second transfer resumes where the first stopped.
# Over TCP both ends hold a pre-shared key: a sender with another key, with
# none, or --insecure is refused and the replica is left as it was.
# Finally the default guest boots from the replica's top and reads back
# both markers.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "replication is tern's own"
e2e_require_boot
command -v curl >/dev/null || skip "no curl"
command -v qemu-img >/dev/null || skip "no qemu-img"

SOCK=$E2E_TMP/api.sock
LAYERS=$E2E_TMP/layers
REP=$E2E_TMP/replica
NS=tern-rep-$$
VH=trh$$
VN=trn$$
PORT=7707
ADDR=10.200.0.2
KEY=$E2E_TMP/replication.key
(umask 077 && head -c 32 /dev/urandom | base64 >"$KEY")
TERN_PID=
SERVE_PID=
NETNS=

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null
	if [ -n "$NETNS" ]; then
		ip netns del "$NS" 2>/dev/null
		ip link del "$VH" 2>/dev/null
	fi
	[ -n "${E2E_KEEP:-}" ] || rm -rf "$E2E_TMP"
}
trap cleanup EXIT

# A namespace with one veth peer at 10.200.0.2; the host end is 10.200.0.1.
make_netns() {
	ip netns add "$NS" 2>/dev/null || return 1
	NETNS=1
	ip link add "$VH" type veth peer name "$VN" &&
		ip link set "$VN" netns "$NS" &&
		ip addr add 10.200.0.1/24 dev "$VH" && ip link set "$VH" up &&
		ip netns exec "$NS" ip addr add "$ADDR/24" dev "$VN" &&
		ip netns exec "$NS" ip link set "$VN" up &&
		ip netns exec "$NS" ip link set lo up
}

start_server() {
	ip netns exec "$NS" "$TERN" replicate serve -v "$E2E_TMP/remote" --listen "$ADDR" \
		--port $PORT --key-file "$KEY" >>"$E2E_TMP/serve.log" 2>&1 &
	SERVE_PID=$!
	for _ in $(seq 50); do
		grep -q "^serving" "$E2E_TMP/serve.log" && return 0
		sleep 0.1
	done
	fail "the replica server did not start: $(cat "$E2E_TMP/serve.log")"
}

wait_line() {
	local t=0
	until tr -d '\r' <"$E2E_TMP/raw" | grep -q "^$1\$"; do
		kill -0 "$TERN_PID" 2>/dev/null || fail "the VM stopped before printing $1"
		t=$((t + 1))
		[ $t -gt 900 ] && fail "the guest never printed $1"
		sleep 0.1
	done
}

# point N: one replication point of the running VM to the directory, then
# the same sealed chain over TCP; both replicas must equal the sealed chain.
point() {
	local out sealed top
	out=$("$TERN" replicate vm --api "$SOCK" --layers "$LAYERS" --to "$REP") ||
		fail "replication point $1 failed: $out"
	echo "    $out"
	sealed=$(echo "$out" | sed -n 's/^point 1: \(.*\) sealed.*/\1/p')
	[ -f "$sealed" ] || fail "no sealed layer named in: $out"
	top=$("$TERN" replicate show "$REP" | tail -n 1 | cut -d' ' -f2)
	qemu-img compare -q "$sealed" "$REP/$top" ||
		fail "point $1: the replica's top $top differs from the primary's sealed $sealed"
	if [ -n "$NETNS" ]; then
		"$TERN" replicate send --key-file "$KEY" --to "tcp:$ADDR:$PORT" "$sealed" >/dev/null ||
			fail "point $1: shipping over TCP failed"
		qemu-img compare -q "$sealed" "$E2E_TMP/remote/$top" ||
			fail "point $1: the remote replica differs from the primary"
	fi
	SEALED=$sealed
}

mkdir -p "$LAYERS"
"$TERN" img create -f qcow2 "$E2E_TMP/base.qcow2" 64M >/dev/null || fail "tern img create failed"

if make_netns; then
	start_server
else
	NETNS=
	echo "SKIP (TCP part): cannot create a network namespace here; the directory form still runs"
fi

# The guest waits for a line on its console between markers.
mkfifo "$E2E_TMP/stdin"
# shellcheck disable=SC2086
timeout -k 5 600 "$TERN" run ${TERN_E2E_ARGS:-} --disk "$E2E_TMP/base.qcow2" \
	--api-socket "$SOCK" -- sh -c 'm() { printf "%-16s" "$1" | dd of=/dev/vda bs=4096 seek=$2 conv=notrunc,sync,fsync 2>/dev/null; }
m MARKER-ONE 10 && echo M1
read -r x
m MARKER-TWO 20 && echo M2
read -r x
echo BYE' <"$E2E_TMP/stdin" >"$E2E_TMP/raw" 2>"$E2E_TMP/err" &
TERN_PID=$!
exec 3>"$E2E_TMP/stdin"

check "replication point 1: the sealed base goes to the replicas, equal to the primary"
wait_line M1
point 1
ok "replica (directory$([ -n "$NETNS" ] && echo ' and TCP')) equals the primary at point 1"

check "replication point 2: only the new layer moves"
echo go >&3
wait_line M2
point 2
[ "$("$TERN" replicate show "$REP" | wc -l)" = 2 ] || fail "the replica should hold 2 layers: $("$TERN" replicate show "$REP")"
ok "replica chain: $("$TERN" replicate show "$REP" | cut -d' ' -f2 | tr '\n' ' ')"

echo go >&3
wait "$TERN_PID"
TERN_PID=
exec 3>&-

if [ -n "$NETNS" ]; then
	check "over TCP a sender must prove the server's key: a wrong key, none, or --insecure is refused"
	before=$("$TERN" replicate show "$E2E_TMP/remote")
	other=$E2E_TMP/other.key
	(umask 077 && head -c 32 /dev/urandom | base64 >"$other")
	# a fresh layer the replica does not have
	"$TERN" img create -f qcow2 -b "$SEALED" -F qcow2 "$LAYERS/extra.qcow2" >/dev/null
	"$TERN" replicate send --key-file "$other" --to "tcp:$ADDR:$PORT" "$LAYERS/extra.qcow2" \
		>"$E2E_TMP/bad.log" 2>&1 && fail "a sender with a different key was accepted"
	grep -q "different key" "$E2E_TMP/bad.log" || fail "wrong key: unclear error: $(cat "$E2E_TMP/bad.log")"
	for _ in $(seq 20); do grep -q "failed to authenticate" "$E2E_TMP/serve.log" && break; sleep 0.1; done
	grep -q "failed to authenticate" "$E2E_TMP/serve.log" ||
		fail "the server did not report the failed authentication: $(tail -n 3 "$E2E_TMP/serve.log")"
	"$TERN" replicate send --to "tcp:$ADDR:$PORT" "$LAYERS/extra.qcow2" >"$E2E_TMP/bad.log" 2>&1
	rc=$?
	[ $rc = 2 ] && grep -q "needs --key-file" "$E2E_TMP/bad.log" ||
		fail "TCP without a key was not refused up front (rc $rc): $(cat "$E2E_TMP/bad.log")"
	"$TERN" replicate send --insecure --to "tcp:$ADDR:$PORT" "$LAYERS/extra.qcow2" \
		>"$E2E_TMP/bad.log" 2>&1 && fail "an unauthenticated sender was accepted"
	grep -q "requires authentication" "$E2E_TMP/bad.log" ||
		fail "--insecure against a keyed server: unclear error: $(cat "$E2E_TMP/bad.log")"
	[ "$("$TERN" replicate show "$E2E_TMP/remote")" = "$before" ] ||
		fail "a refused sender changed the replica"
	ok "wrong key, no key and --insecure refused; the replica is unchanged"
fi

if [ -n "$NETNS" ]; then
	check "a receiver killed mid-layer leaves the previous point; the next transfer resumes"
	before=$("$TERN" replicate show "$E2E_TMP/remote" | tail -n 1)
	big=$LAYERS/big.qcow2
	"$TERN" img create -f qcow2 -b "$SEALED" -F qcow2 "$big" >/dev/null
	# 24 MiB of data in the layer; at 32 Mbit/s that takes about 6 s.
	qemu-io -f qcow2 -c "write -P 0x5a 0 24M" "$big" >/dev/null || fail "cannot fill the big layer"
	tc qdisc add dev "$VH" root tbf rate 32mbit burst 64kb latency 400ms 2>/dev/null ||
		echo "    (no tc: the link is not throttled, the kill may come late)"
	"$TERN" replicate send -v --key-file "$KEY" --to "tcp:$ADDR:$PORT" "$big" >"$E2E_TMP/send1.log" 2>&1 &
	send_pid=$!
	for _ in $(seq 200); do
		part=$(find "$E2E_TMP/remote" -name '.part-*' -size +1M 2>/dev/null | head -n 1)
		[ -n "$part" ] && break
		sleep 0.05
	done
	[ -n "$part" ] || fail "no partial layer appeared on the receiver"
	kill -9 "$SERVE_PID"
	wait "$SERVE_PID" 2>/dev/null
	SERVE_PID=
	wait "$send_pid" && fail "the sender did not notice the receiver died"
	got=$(stat -c %s "$part")
	after=$("$TERN" replicate show "$E2E_TMP/remote" | tail -n 1)
	[ "$after" = "$before" ] || fail "the latest point changed to '$after' after an interrupted transfer"
	ok "receiver killed with $got bytes of the layer in; latest point still: $after"
	start_server
	"$TERN" replicate send -v --key-file "$KEY" --to "tcp:$ADDR:$PORT" "$big" >"$E2E_TMP/send2.log" 2>&1 ||
		fail "the resumed transfer failed: $(cat "$E2E_TMP/send2.log")"
	resumed=$(sed -n 's/.*resumed at \([0-9]*\).*/\1/p' "$E2E_TMP/send2.log" | tail -n 1)
	[ -n "$resumed" ] && [ "$resumed" -gt 0 ] || fail "the transfer did not resume: $(cat "$E2E_TMP/send2.log")"
	top=$("$TERN" replicate show "$E2E_TMP/remote" | tail -n 1 | cut -d' ' -f2)
	qemu-img compare -q "$big" "$E2E_TMP/remote/$top" || fail "the resumed layer differs from the primary"
	ok "resumed at byte $resumed; the replica's top $top equals the primary"
	tc qdisc del dev "$VH" root 2>/dev/null
fi

check "failover: the default guest boots from the replica and reads both markers"
top=$("$TERN" replicate show "$REP" | tail -n 1 | cut -d' ' -f2)
vm_run --disk "$REP/$top" -- sh -c 'echo "A=$(dd if=/dev/vda bs=4096 skip=10 count=1 2>/dev/null | head -c 10)"; echo "B=$(dd if=/dev/vda bs=4096 skip=20 count=1 2>/dev/null | head -c 10)"'
expect_rc 0
[ "$(vm_value A)" = MARKER-ONE ] || fail "the replica reads '$(vm_value A)' where MARKER-ONE was written"
[ "$(vm_value B)" = MARKER-TWO ] || fail "the replica reads '$(vm_value B)' where MARKER-TWO was written"
qemu-img check -q "$REP/$top" || fail "qemu-img check of the replica's top failed after the boot"
ok "the guest on the replica reads MARKER-ONE and MARKER-TWO"
