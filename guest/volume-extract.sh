#!/bin/sh
# volume-extract DEV DIR: extract a tern single volume image (see
# docs/volume.md) from a disk or file DEV into DIR, inside the guest, with
# busybox's sh, dd and od only.
#
# The whole index is checked before anything is written: header fields,
# counts, extents (inside the image, aligned, not overlapping), names
# (relative, no '.', '..' or empty parts, no control characters, no
# duplicates) and modes. DIR must be new or empty, so nothing in it can be
# a symlink planted ahead of time. The CRC-32 checksums are not verified
# here (busybox has no CRC-32 tool); `tern volume unpack` verifies them.
# Integers are read with od in host order: this runs on x86 (little endian).
set -eu

die() {
	echo "volume-extract: $*" >&2
	exit 1
}

[ $# -eq 2 ] || die "usage: volume-extract DEV DIR"
dev=$1
dir=$2
[ -r "$dev" ] || die "$dev: cannot read"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -b "$dev" ]; then
	disk=$(blockdev --getsize64 "$dev")
else
	disk=$(wc -c <"$dev")
fi
disk=$((disk + 0))

# u32 FILE OFFSET, u64 FILE OFFSET: little-endian integers.
u32() {
	v=$(od -A n -t u4 -j "$2" -N 4 "$1" | tr -d ' \n')
	[ -n "$v" ] || die "index truncated"
	echo "$v"
}
u64() {
	lo=$(u32 "$1" "$2")
	hi=$(u32 "$1" $(($2 + 4)))
	[ "$hi" -lt 2147483648 ] || die "a 64-bit field is out of range"
	echo $((hi * 4294967296 + lo))
}

[ "$disk" -ge 64 ] || die "$dev: too short for a volume image"
dd if="$dev" of="$tmp/hdr" bs=64 count=1 2>/dev/null
[ "$(head -c 7 "$tmp/hdr")" = TERNVOL ] || die "$dev: not a tern volume image (bad magic)"
[ "$(u32 "$tmp/hdr" 8)" -eq 1 ] || die "unsupported version"
[ "$(u32 "$tmp/hdr" 12)" -eq 64 ] && [ "$(u32 "$tmp/hdr" 16)" -eq 256 ] &&
	[ "$(u32 "$tmp/hdr" 28)" -eq 4096 ] || die "unsupported header, entry or alignment size"
count=$(u32 "$tmp/hdr" 20)
isize=$(u32 "$tmp/hdr" 24)
image=$(u64 "$tmp/hdr" 32)
[ "$count" -le 65536 ] || die "entry count $count exceeds the limit"
need=$((64 + count * 256))
[ $((isize % 4096)) -eq 0 ] && [ "$isize" -ge "$need" ] && [ "$isize" -le $((need + 4096)) ] ||
	die "index size $isize does not fit $count entries"
[ "$image" -ge "$isize" ] && [ "$image" -le "$disk" ] || die "image size out of range"
dd if="$dev" of="$tmp/index" bs=4096 count=$((isize / 4096)) 2>/dev/null
[ "$(wc -c <"$tmp/index")" -eq "$isize" ] || die "index truncated"

# Pass 1: check every entry; write "type mode size offset name" lines.
: >"$tmp/entries"
: >"$tmp/extents"
i=0
while [ "$i" -lt "$count" ]; do
	e=$((64 + i * 256))
	dd if="$tmp/index" of="$tmp/name" bs=1 skip="$e" count=224 2>/dev/null
	tr '\000' '\n' <"$tmp/name" | head -n 1 >"$tmp/name1"
	name=$(cat "$tmp/name1")
	[ "$(wc -c <"$tmp/name1")" -le 224 ] || die "entry $i: name not terminated"
	od -A n -c "$tmp/name" | grep -q '\\0' || die "entry $i: name not terminated"
	case "/$name/" in
	*/../* | */./* | *//*) die "entry $i: unsafe name" ;;
	esac
	case "$name" in
	"" | /*) die "entry $i: unsafe name" ;;
	esac
	if printf '%s' "$name" | grep -q '[[:cntrl:]\\]'; then die "entry $i: unsafe name"; fi
	size=$(u64 "$tmp/index" $((e + 224)))
	off=$(u64 "$tmp/index" $((e + 232)))
	mode=$(u32 "$tmp/index" $((e + 240)))
	type=$(u32 "$tmp/index" $((e + 244)))
	[ "$(u32 "$tmp/index" $((e + 252)))" -eq 0 ] && [ $((mode & ~511)) -eq 0 ] ||
		die "entry $i ($name): bad mode or reserved bits"
	case $type in
	2) [ "$size" -eq 0 ] && [ "$off" -eq 0 ] || die "entry $i ($name): directory with data" ;;
	1)
		if [ "$size" -eq 0 ]; then
			[ "$off" -eq 0 ] || die "entry $i ($name): empty file with an offset"
		else
			[ $((off % 4096)) -eq 0 ] && [ "$off" -ge "$isize" ] && [ "$off" -le "$image" ] &&
				[ "$size" -le $((image - off)) ] || die "entry $i ($name): extent out of range"
			echo "$off $size" >>"$tmp/extents"
		fi
		;;
	*) die "entry $i ($name): unknown type $type" ;;
	esac
	printf '%s %s %s %s %s\n' "$type" "$mode" "$size" "$off" "$name" >>"$tmp/entries"
	i=$((i + 1))
done
end=0
sort -n "$tmp/extents" >"$tmp/sorted"
while read -r off size; do
	[ "$off" -ge "$end" ] || die "extents overlap at offset $off"
	end=$((off + size))
done <"$tmp/sorted"
[ -z "$(cut -d' ' -f5- "$tmp/entries" | sort | uniq -d)" ] || die "duplicate names"

# Pass 2: extract into a new or empty directory.
mkdir -p "$dir"
[ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
while read -r type mode size off name; do
	case "$name" in */*) mkdir -p "$dir/${name%/*}" ;; esac
	[ ! -e "$dir/$name" ] || [ "$type" -eq 2 ] || die "$name: exists (a file used as a directory?)"
	if [ "$type" -eq 2 ]; then
		mkdir -p "$dir/$name"
	elif [ "$size" -eq 0 ]; then
		: >"$dir/$name"
	else
		dd if="$dev" bs=4096 skip=$((off / 4096)) count=$(((size + 4095) / 4096)) 2>/dev/null |
			head -c "$size" >"$dir/$name"
		[ "$(wc -c <"$dir/$name")" -eq "$size" ] || die "$name: short read"
	fi
	chmod "$(printf '%o' "$mode")" "$dir/$name"
done <"$tmp/entries"
echo "volume-extract: $count entries from $dev into $dir"
