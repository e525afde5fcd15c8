#!/usr/bin/env bash
# Free page reporting on the default guest: the guest allocates a large
# buffer (a tmpfs file of random data), holds it, then frees it. The guest
# kernel reports free blocks of pageblock order about 2 s later; tern must
# give them back at once, so its RSS drops by most of the buffer with no
# balloon inflation at all.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "the balloon API is tern's own"
e2e_require_boot
"$TERN" run --help 2>&1 | grep -q -- '--balloon' || fail "tern run --help does not list --balloon"
grep -q '^CONFIG_PAGE_REPORTING=y' "$E2E_ROOT/guest/out/config" 2>/dev/null ||
	skip "the guest kernel has no page reporting"

SOCK=$E2E_TMP/api.sock
RAW=$E2E_TMP/raw
TERN_PID=
BUF_MIB=128

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	rm -rf "$E2E_TMP"
}
trap cleanup EXIT

num() {
	sed -n "s/.*\"$1\": \\([0-9][0-9]*\\).*/\\1/p" | head -n 1
}

stats() {
	"$TERN" ctl "$SOCK" stats
}

wait_line() {
	for _ in $(seq 1 $(($2 * 5))); do
		grep -q "$1" "$RAW" && return 0
		kill -0 "$TERN_PID" 2>/dev/null || fail "tern run exited early"
		sleep 0.2
	done
	fail "the guest never printed $1"
}

GUEST='
mkdir -p /t && mount -t tmpfs -o size=200m none /t || exit 3
dd if=/dev/urandom of=/t/b bs=1M count=4 2>/dev/null
i=0; while [ $i -lt '$((BUF_MIB / 4))' ]; do cat /t/b; i=$((i + 1)); done >/t/f
echo HOLDING=1
sleep 4
rm /t/f
echo FREED=1
sleep 30
'

check "a guest buffer of $BUF_MIB MiB, freed, is reported and released"
# shellcheck disable=SC2086 # TERN_E2E_ARGS is a list of options
timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} --memory 256 --balloon \
	--api-socket "$SOCK" -- sh -c "$GUEST" </dev/null >"$RAW" 2>"$VM_ERR" &
TERN_PID=$!
wait_line '^HOLDING=' 90
sleep 1
s=$(stats) || fail "tern ctl stats failed"
rss0=$(echo "$s" | num host_rss_bytes)
rep0=$(echo "$s" | num released_free_report_bytes)
wait_line '^FREED=' 60
t0=$SECONDS
drop=0
while [ $((SECONDS - t0)) -lt 30 ]; do
	s=$(stats)
	rss1=$(echo "$s" | num host_rss_bytes)
	drop=$((rss0 - rss1))
	[ "$drop" -ge $((BUF_MIB * 3 / 4 << 20)) ] && break
	sleep 0.5
done
rep1=$(echo "$s" | num released_free_report_bytes)
echo "  RSS $((rss0 >> 20)) -> $((rss1 >> 20)) MiB in $((SECONDS - t0)) s;" \
	"reported and released $(((rep1 - rep0) >> 20)) MiB"
[ "$drop" -ge $((BUF_MIB * 3 / 4 << 20)) ] ||
	fail "RSS fell by only $((drop >> 20)) MiB after freeing $BUF_MIB MiB"
[ $((rep1 - rep0)) -ge $((BUF_MIB * 3 / 4 << 20)) ] ||
	fail "free page reporting released only $(((rep1 - rep0) >> 20)) MiB"
"$TERN" ctl "$SOCK" balloon get | grep -q '"balloon_pages": 0' || fail "pages went into the balloon"
ok "RSS fell by $((drop >> 20)) MiB without inflating the balloon"
