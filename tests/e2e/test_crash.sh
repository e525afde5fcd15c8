#!/usr/bin/env bash
# qcow2 crash safety: a tern process writing hard to a qcow2 image through
# the block layer (tern img stress: each write to its own place, a flush
# every few writes, what each flush made durable logged to a side file) is
# killed with SIGKILL at a random moment, again and again on the same
# image. After every kill the image must pass qemu-img check without
# corruption (leaked clusters are allowed) and hold every write that was
# acknowledged after a flush (checked on a raw copy made by qemu-img).
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "this checks tern's qcow2 driver"
e2e_require_tern
command -v qemu-img >/dev/null || skip "no qemu-img"

ROUNDS=${CRASH_ROUNDS:-30}
img=$E2E_TMP/crash.qcow2
log=$E2E_TMP/acks

# Small clusters: many L2 tables and refcount blocks are allocated, so a kill
# lands in metadata updates often.
"$TERN" img create -f qcow2 -o cluster_size=4096 "$img" 4G >/dev/null || fail "img create"
: >"$log"
leaks=0
check "$ROUNDS kills at random points leave a consistent image with every acknowledged write"
for round in $(seq 1 "$ROUNDS"); do
	"$TERN" img stress --seed "$round" --flush-every $((1 + round % 7)) "$img" "$log" \
		2>"$E2E_TMP/stress.err" &
	pid=$!
	# 20..400 ms: early kills hit the first allocations, late ones a fuller image.
	sleep "0.$(printf '%03d' $((20 + RANDOM % 380)))"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	grep -q . "$E2E_TMP/stress.err" && fail "round $round: the writer failed: $(cat "$E2E_TMP/stress.err")"
	qemu-img check "$img" >"$E2E_TMP/check" 2>&1
	rc=$?
	# 0: clean, 3: leaks only; 2: corruption, 1: could not check.
	case $rc in
	0) ;;
	3) leaks=$((leaks + 1)) ;;
	*) fail "round $round: qemu-img check exit $rc: $(head -n 5 "$E2E_TMP/check")" ;;
	esac
	qemu-img convert -O raw "$img" "$E2E_TMP/flat.raw" || fail "round $round: qemu-img convert failed"
	"$TERN" img stress --verify --format raw "$E2E_TMP/flat.raw" "$log" >"$E2E_TMP/verify" 2>&1 ||
		fail "round $round: $(cat "$E2E_TMP/verify")"
	rm -f "$E2E_TMP/flat.raw"
done
acked=$(wc -l <"$log")
[ "$acked" -gt 100 ] || fail "only $acked writes were acknowledged in $ROUNDS rounds: the test did not write enough"
# The writer reopens the same image each round: tern must also still open and repair it.
"$TERN" img check -r leaks "$img" >/dev/null
rc=$?
[ "$rc" = 0 ] || fail "tern img check -r leaks exit $rc"
qemu-img check -q "$img" || fail "after the leak repair, qemu-img check fails"
ok "$ROUNDS kills, $acked acknowledged writes all present, $leaks rounds with leaked clusters (allowed), repaired"
