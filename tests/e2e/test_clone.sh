#!/usr/bin/env bash
# Snapshot a booted default guest, then start 3 clones of it with tern clone:
# each sees its own identity (clone index, VM id, a new generation id), draws
# different random numbers, and writes to its own disk overlay and tmpfs
# without the others or the source seeing it. The source snapshot restores
# afterwards as it was; a damaged snapshot starts no clone.
. "$(dirname "$0")/lib.sh"
e2e_require_boot
[ "$E2E_VMM" = qemu ] && skip "tern-only: clones"

state=$E2E_TMP/src.state
mem=$E2E_TMP/src.mem
disk=$E2E_TMP/disk.img
out=$E2E_TMP/clones
printf 'base-%s\n' "$$" >"$disk"
truncate -s 4M "$disk"
sum_before=$(md5sum <"$disk")

# The identity device: vendor 0x1af4, device 0x1ff0; its capability holds the
# clone index (+4), generation id (+8) and VM id (+24). The guest waits for the
# generation to change: that is the restore. Then each writes sector 100+IDX of
# its disk and a file in tmpfs, waits for the others to do the same, and reads
# back sectors 100..102.
guest='stty -echo 2>/dev/null
mkdir -p /mnt/t && mount -t tmpfs none /mnt/t || exit 9
echo source >/mnt/t/who
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/device)" = 0x1ff0 ] && I=$d/config; done
[ -n "$I" ] || { echo NO-IDENTITY; exit 8; }
C=$(od -An -tu1 -j 52 -N 1 $I | tr -d " ")
g() { od -An -tx1 -j $(($C + $1)) -N $2 $I | tr -d " \n"; }
G0=$(g 8 16)
echo "GEN0=$G0"
echo SNAP-NOW
while [ "$(g 8 16)" = "$G0" ]; do :; done
X=$(od -An -tu4 -j $(($C + 4)) -N 4 $I | tr -d " ")
echo "IDX=$X"
echo "UUID=$(g 24 16)"
echo "GEN=$(g 8 16)"
sleep 2
echo "RAND=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n")"
echo "clone-$X" >/mnt/t/who
echo "TMPFS=$(cat /mnt/t/who)"
echo "wrote-$X" | dd of=/dev/vda bs=512 seek=$((100 + X % 3)) conv=fsync 2>/dev/null
sleep 3
for s in 100 101 102; do echo "S$s=$(dd if=/dev/vda bs=512 skip=$s count=1 2>/dev/null | tr -d "\0")"; done
echo "DISK=$(head -n 1 /dev/vda)"
exit 0'

check "a booted guest is snapshotted"
# shellcheck disable=SC2086
timeout -k 5 "$E2E_TIMEOUT" "$TERN" snapshot ${TERN_E2E_ARGS:-} --disk "$disk" \
	--state "$state" --at-output SNAP-NOW -- sh -c "$guest" \
	</dev/null >"$E2E_TMP/raw" 2>"$VM_ERR"
VM_RC=$?
tr -d '\r' <"$E2E_TMP/raw" >"$VM_OUT"
expect_rc 0
grep -q NO-IDENTITY "$VM_OUT" && fail "the guest found no identity device"
gen0=$(vm_value GEN0)
[ -n "$gen0" ] || fail "the guest printed no generation id"
ok "snapshot taken; generation id at boot $gen0"

check "tern clone --count 3 starts 3 clones that all exit 0"
t0=$(date +%s%N)
timeout -k 5 "$E2E_TIMEOUT" "$TERN" clone --count 3 --out-dir "$out" "$state" \
	</dev/null >"$E2E_TMP/clone.out" 2>"$VM_ERR"
VM_RC=$?
t1=$(date +%s%N)
expect_rc 0
for i in 0 1 2; do
	[ -s "$out/clone-$i/console.log" ] || fail "no console log for clone $i"
	[ -s "$out/clone-$i/disk0.qcow2" ] || fail "no disk overlay for clone $i"
done
ok "3 clones ran in $(((t1 - t0) / 1000000)) ms"

val() { tr -d '\r' <"$out/clone-$1/console.log" | sed -n "s/^$2=//p" | head -n 1; }

check "each clone has its own index, VM id and a new generation id"
uuids= gens= rands=
for i in 0 1 2; do
	[ "$(val $i IDX)" = "$i" ] || fail "clone $i sees index '$(val $i IDX)'"
	[ "$(val $i GEN)" != "$gen0" ] || fail "clone $i kept the source's generation id"
	uuids="$uuids$(val $i UUID)\n"
	gens="$gens$(val $i GEN)\n"
	rands="$rands$(val $i RAND)\n"
done
[ "$(printf "$uuids" | sort -u | grep -c .)" = 3 ] || fail "VM ids not distinct: $uuids"
[ "$(printf "$gens" | sort -u | grep -c .)" = 3 ] || fail "generation ids not distinct"
ok "indexes 0 1 2, 3 VM ids, 3 generation ids"

check "the clones' random numbers differ"
[ "$(printf "$rands" | grep -c '^[0-9a-f]\{32\}$')" = 3 ] || fail "bad RAND lines: $rands"
[ "$(printf "$rands" | sort -u | grep -c .)" = 3 ] || fail "clones drew equal random bytes: $rands"
ok "$(printf "$rands" | tr '\n' ' ')"

check "writes stay in each clone: disk overlay and tmpfs"
for i in 0 1 2; do
	[ "$(val $i TMPFS)" = "clone-$i" ] || fail "clone $i tmpfs: $(val $i TMPFS)"
	[ "$(val $i DISK)" = "base-$$" ] || fail "clone $i does not see the base disk"
	for s in 100 101 102; do
		want=
		[ $((s - 100)) = "$i" ] && want="wrote-$i"
		[ "$(val $i S$s)" = "$want" ] ||
			fail "clone $i sector $s: '$(val $i S$s)', expected '$want'"
	done
done
[ "$(md5sum <"$disk")" = "$sum_before" ] || fail "the source's disk changed"
ok "each clone sees only its own sector; the source disk is unchanged"

check "the source snapshot still restores, with its own identity and disk"
timeout -k 5 "$E2E_TIMEOUT" "$TERN" restore "$state" </dev/null >"$E2E_TMP/raw" 2>"$VM_ERR"
VM_RC=$?
tr -d '\r' <"$E2E_TMP/raw" >"$VM_OUT"
expect_rc 0
[ "$(vm_value IDX)" = 4294967295 ] || fail "the restored source says index $(vm_value IDX)"
for s in 100 101 102; do
	want=
	[ "$s" = 100 ] && want=wrote-4294967295
	# the source writes sector 100 + (2^32-1) % 3 = 100
	[ "$(vm_value S$s)" = "$want" ] || fail "source sector $s: '$(vm_value S$s)'"
done
for i in 0 1 2; do
	[ "$(val $i UUID)" != "$(vm_value UUID)" ] || fail "clone $i has the source's VM id"
done
ok "index 4294967295 (not a clone), own VM id, none of the clones' writes"

check "a damaged snapshot starts no clone"
cp "$state" "$E2E_TMP/bad.state"
printf '\x55' | dd of="$E2E_TMP/bad.state" bs=1 seek=200 conv=notrunc 2>/dev/null
"$TERN" clone --count 2 --mem "$mem" --out-dir "$E2E_TMP/bad" "$E2E_TMP/bad.state" \
	</dev/null >"$VM_OUT" 2>"$VM_ERR"
VM_RC=$?
expect_rc 2
grep -q 'corrupted' "$VM_ERR" || fail "no 'corrupted' in: $(cat "$VM_ERR")"
[ ! -e "$E2E_TMP/bad" ] || fail "clone directories were made for a damaged snapshot"
ok "$(head -n 1 "$VM_ERR")"
