#!/usr/bin/env bash
# The control API on a real booted guest, the way a user drives it: curl on
# the socket of 'tern run --api-socket', and tern ctl. The guest prints a
# tick every 0.1 s; pause must stop the ticks, resume restart them, and
# shutdown end tern run (status 130) and remove the socket.
. "$(dirname "$0")/lib.sh"
[ "$E2E_VMM" = qemu ] && skip "the control API is tern's own"
e2e_require_boot
"$TERN" run --help 2>&1 | grep -q -- '--api-socket' || skip "tern run has no --api-socket option yet"
command -v curl >/dev/null || skip "no curl (scripts/deps.sh installs it)"

SOCK=$E2E_TMP/api.sock
RAW=$E2E_TMP/raw
TERN_PID=

cleanup() {
	[ -n "$TERN_PID" ] && kill "$TERN_PID" 2>/dev/null
	rm -rf "$E2E_TMP"
}
trap cleanup EXIT

# api METHOD PATH [BODY]: the body of the answer; the status goes to $E2E_TMP/status.
api() {
	local data=()
	[ $# -ge 3 ] && data=(--data-binary "$3")
	curl -sS --max-time 30 --unix-socket "$SOCK" -X "$1" "${data[@]}" \
		-o "$E2E_TMP/body" -w '%{http_code}' "http://localhost$2" >"$E2E_TMP/status" ||
		fail "curl $1 $2 failed"
	cat "$E2E_TMP/body"
}

status() {
	cat "$E2E_TMP/status"
}

# A top-level number field of a JSON answer (good enough for our flat fields).
field() {
	sed -n "s/.*\"$1\":\\([0-9][0-9]*\\).*/\\1/p"
}

ticks() {
	grep -c '^TICK=' "$RAW"
}

check "tern run --api-socket serves on a 0600 socket while the guest runs"
# shellcheck disable=SC2086 # TERN_E2E_ARGS is a list of options
timeout -k 5 "$E2E_TIMEOUT" "$TERN" run ${TERN_E2E_ARGS:-} --api-socket "$SOCK" -- \
	sh -c 'i=0; while :; do i=$((i + 1)); echo TICK=$i; sleep 0.1; done' \
	</dev/null >"$RAW" 2>"$VM_ERR" &
TERN_PID=$!
for _ in $(seq 1 600); do
	[ "$(ticks)" -ge 3 ] && break
	kill -0 "$TERN_PID" 2>/dev/null || fail "tern run exited early"
	sleep 0.2
done
[ "$(ticks)" -ge 3 ] || fail "the guest never started ticking"
[ -S "$SOCK" ] || fail "no socket at $SOCK"
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "socket mode is $(stat -c %a "$SOCK"), not 600"
api GET /vm | grep -q '"state":"running"' || fail "GET /vm: $(cat "$E2E_TMP/body")"
[ "$(status)" = 200 ] || fail "GET /vm answered $(status)"
ok "running, socket 0600"

check "pause stops the guest, resume runs it again"
api PUT /vm/pause | grep -q '"state":"paused"' || fail "pause: $(cat "$E2E_TMP/body")"
sleep 0.5
n1=$(ticks)
sleep 2
n2=$(ticks)
[ "$n1" = "$n2" ] || fail "a paused guest ticked from $n1 to $n2"
api PUT /vm/resume | grep -q '"state":"running"' || fail "resume: $(cat "$E2E_TMP/body")"
for _ in $(seq 1 100); do
	[ "$(ticks)" -gt "$n2" ] && break
	sleep 0.1
done
[ "$(ticks)" -gt "$n2" ] || fail "the guest did not tick again after resume"
ok "ticks stopped at $n2, then went on"

check "stats: exit counts grow while the guest runs"
e1=$(api GET /vm/stats | field exits_total)
sleep 1
e2=$(api GET /vm/stats | field exits_total)
if [ -z "$e1" ] || [ -z "$e2" ] || [ "$e2" -le "$e1" ]; then
	fail "exits_total went from '$e1' to '$e2'"
fi
ok "exits_total $e1 -> $e2"

check "errors: 404, 405, 400, 413, 501, unwritable snapshot path, with JSON bodies"
api GET /nope >/dev/null
[ "$(status)" = 404 ] || fail "unknown endpoint answered $(status)"
api DELETE /vm >/dev/null
[ "$(status)" = 405 ] || fail "DELETE /vm answered $(status)"
api PUT /vm/pause '{"oops":' | grep -q '"error"' || fail "bad JSON: no error body"
[ "$(status)" = 400 ] || fail "bad JSON answered $(status)"
head -c 200000 /dev/zero | tr '\0' ' ' >"$E2E_TMP/big"
api PUT /vm/pause "@$E2E_TMP/big" >/dev/null
[ "$(status)" = 413 ] || fail "a 200 kB body answered $(status)"
api PUT /vm/restore '{"path":"x"}' >/dev/null
[ "$(status)" = 501 ] || fail "restore (a new process's job) answered $(status)"
api PUT /vm/snapshot '{"state":"/nonexistent-dir/s.state"}' | grep -q '"error"' ||
	fail "snapshot to an unwritable path: no error body"
[ "$(status)" = 400 ] || fail "snapshot to an unwritable path answered $(status)"
[ ! -e /nonexistent-dir ] || fail "the failed snapshot left something behind"
n=$(ticks)
sleep 0.5
[ "$(ticks)" -gt "$n" ] || fail "the guest stopped ticking after the error requests"
ok "all refused, guest still running"

check "tern ctl info pretty-prints; shutdown ends tern run with 130 and removes the socket"
"$TERN" ctl "$SOCK" info | grep -q '"state": "running"' || fail "tern ctl info"
"$TERN" ctl "$SOCK" request GET /nope 2>"$E2E_TMP/ctl.err" && fail "tern ctl succeeded on a 404"
grep -q 'HTTP 404' "$E2E_TMP/ctl.err" || fail "tern ctl did not report the 404"
"$TERN" ctl "$SOCK" shutdown >/dev/null || fail "tern ctl shutdown"
wait "$TERN_PID"
rc=$?
TERN_PID=
[ "$rc" = 130 ] || fail "tern run exited $rc after shutdown, expected 130"
[ -e "$SOCK" ] && fail "the socket is still there after tern run exited"
ok "exit 130, socket removed"
