#!/usr/bin/env bash
# virtio-balloon on the default guest, driven through the API the way a user
# would: the guest touches almost all its free memory (a tmpfs file of
# random data, then deleted), the host inflates the balloon by half the
# guest's RAM and tern's RSS must drop by at least 90% of that; the guest's
# statistics come back; then the host deflates and the guest fills the
# memory with data again and reads it back.
# Free page reporting is not offered here (--balloon=no-reporting), so what
# is measured is the balloon alone; test_balloon_report.sh covers reporting.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "the balloon API is tern's own"
e2e_require_boot
"$TERN" run --help 2>&1 | grep -q -- '--balloon' || fail "tern run --help does not list --balloon"

SOCK=$E2E_TMP/api.sock
RAW=$E2E_TMP/raw
TERN_PID=
MEM_MIB=256
HALF_MIB=$((MEM_MIB / 2))

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	rm -rf "$E2E_TMP"
}
trap cleanup EXIT

ctl() {
	"$TERN" ctl "$SOCK" "$@"
}

# num KEY: the first "KEY": N of the JSON on stdin.
num() {
	sed -n "s/.*\"$1\": \\([0-9][0-9]*\\).*/\\1/p" | head -n 1
}

rss() {
	ctl stats | num host_rss_bytes
}

# wait_line PATTERN SECONDS: until the guest printed a line matching PATTERN.
wait_line() {
	for _ in $(seq 1 $(($2 * 5))); do
		grep -q "$1" "$RAW" && return 0
		kill -0 "$TERN_PID" 2>/dev/null || fail "tern run exited early"
		sleep 0.2
	done
	fail "the guest never printed $1"
}

# wait_actual MIB SECONDS: until the driver reports MIB in the balloon.
wait_actual() {
	local a
	for _ in $(seq 1 $(($2 * 2))); do
		a=$(ctl balloon get | num actual_mib)
		[ "$a" = "$1" ] && return 0
		sleep 0.5
	done
	fail "the balloon holds ${a:-?} MiB, not $1"
}

# The guest: fill (nearly) all free memory with random data, free it, wait
# for the inflation and the deflation (its own vmstat counters), then use
# the memory again and check what it reads back.
GUEST='
mkdir -p /t && mount -t tmpfs -o size=230m none /t || exit 3
dd if=/dev/urandom of=/t/b bs=1M count=4 2>/dev/null
free_kib=$(sed -n "s/^MemFree: *\([0-9]*\).*/\1/p" /proc/meminfo)
n=$(( (free_kib / 1024 - 12) / 4 ))
i=0; while [ $i -lt $n ]; do cat /t/b; i=$((i + 1)); done >/t/f
rm /t/f
echo FILLED_MIB=$((n * 4))
vm() { sed -n "s/^$1 //p" /proc/vmstat; }
i=0; while [ "$(vm balloon_inflate)" -lt '$((HALF_MIB * 256))' ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
echo INFLATED=$(vm balloon_inflate)
i=0; while [ "$(vm balloon_deflate)" -lt '$((HALF_MIB * 256))' ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
echo DEFLATED=$(vm balloon_deflate)
sum=$(md5sum </t/b)
i=0; while [ $i -lt 38 ]; do cat /t/b; i=$((i + 1)); done >/t/g
[ "$(stat -c %s /t/g)" = $((38 * 4194304)) ] || { echo REUSED=short; exit 4; }
for k in 0 19 37; do
	[ "$(dd if=/t/g bs=1M skip=$((k * 4)) count=4 2>/dev/null | md5sum)" = "$sum" ] || { echo REUSED=corrupt; exit 5; }
done
echo REUSED=ok
'

check "tern run --balloon=no-reporting: the guest's driver comes up with stats and deflate-on-OOM"
# shellcheck disable=SC2086 # TERN_E2E_ARGS is a list of options
timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} --memory $MEM_MIB --balloon=no-reporting \
	--api-socket "$SOCK" -- sh -c "$GUEST" \
	</dev/null >"$RAW" 2>"$VM_ERR" &
TERN_PID=$!
wait_line '^FILLED_MIB=' 90
filled=$(sed -n 's/^FILLED_MIB=//p' "$RAW" | tr -d '\r')
info=$(ctl balloon get) || fail "tern ctl balloon get failed"
echo "$info" | grep -q '"ready": true' || fail "driver not ready: $info"
for f in stats_vq deflate_on_oom; do
	echo "$info" | grep -q "\"$f\": true" || fail "$f not negotiated: $info"
done
echo "$info" | grep -q '"free_page_reporting": false' || fail "reporting was not left out: $info"
echo "$info" | grep -q '"stats_fresh": true' || fail "no fresh statistics from the guest: $info"
mt=$(echo "$info" | num memory_total)
mf=$(echo "$info" | num memory_free)
[ -n "$mt" ] && [ "$mt" -gt $((128 << 20)) ] && [ "$mt" -le $((MEM_MIB << 20)) ] ||
	fail "guest memory_total ${mt:-missing}"
[ -n "$mf" ] && [ "$mf" -gt 0 ] && [ "$mf" -lt "$mt" ] || fail "guest memory_free ${mf:-missing}"
ok "driver ready; guest reports total $((mt >> 20)) MiB, free $((mf >> 20)) MiB; it touched $filled MiB"

check "inflating by $HALF_MIB MiB (half the guest) drops tern's RSS by at least 90% of that"
rss0=$(rss)
put=$(ctl balloon set $HALF_MIB) || fail "tern ctl balloon set failed"
echo "$put" | grep -q "\"target_mib\": $HALF_MIB" || fail "target not set: $put"
echo "$put" | grep -q '"sweep": {' || fail "no sweep ran before the inflation: $put"
swept=$(echo "$put" | sed -n '/"sweep": {/,/}/p' | num released_bytes)
wait_actual $HALF_MIB 90
wait_line '^INFLATED=' 30
rss1=$(rss)
after=$(ctl balloon get)
rel=$(echo "$after" | num released_balloon_bytes)
drop=$((rss0 - rss1 - ${swept:-0}))
echo "  RSS $((rss0 >> 20)) -> $((rss1 >> 20)) MiB; sweep released $((${swept:-0} >> 20)) MiB," \
	"balloon released $((rel >> 20)) MiB"
[ "$rel" -ge $((HALF_MIB << 20)) ] || fail "balloon released only $rel bytes"
[ "$drop" -ge $((HALF_MIB * 9 / 10 << 20)) ] ||
	fail "RSS fell by $((drop >> 20)) MiB (besides the sweep), less than 90% of $HALF_MIB MiB"
echo "$after" | grep -q "\"balloon_bytes\": $((HALF_MIB << 20))" ||
	fail "classification does not show the balloon: $after"
ok "RSS fell by $((drop >> 20)) MiB for $HALF_MIB MiB inflated"

check "deflating gives the memory back: the guest fills it with data and reads it back"
ctl balloon set 0 >/dev/null || fail "tern ctl balloon set 0 failed"
wait_actual 0 90
wait_line '^REUSED=' 90
grep -q '^REUSED=ok' "$RAW" || fail "guest: $(grep '^REUSED=' "$RAW")"
wait "$TERN_PID"
rc=$?
TERN_PID=
[ "$rc" -eq 0 ] || fail "tern run exited with $rc"
ok "guest wrote and read back 152 MiB (more than the balloon left it) after the deflation"
