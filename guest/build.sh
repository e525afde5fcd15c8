#!/usr/bin/env bash
# Builds tern's default guest from Debian packages, without installing them:
#   guest/out/vmlinuz  Debian's cloud kernel (unsigned image of the package
#                      linux-image-cloud-amd64 depends on)
#   guest/out/initrd   newc cpio: busybox-static, the virtio modules in load
#                      order, /init (guest/init) and tern's static helpers
#                      (every guest/tern-*.c, built against guest/rt.h)
# Downloaded .debs stay in guest/cache/, so a rebuild needs no network.
# Quiet and quick when guest/out is already newer than every input.
#
# Environment:
#   TERN_GUEST_REFRESH=1     drop the cached .debs and fetch the newest ones
#   TERN_GUEST_COMPRESS=X    initrd compression: none (default), gzip, lz4
#   TERN_GUEST_FORCE=1       rebuild even if guest/out looks up to date
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
out=$here/out
cache=$here/cache
compress=${TERN_GUEST_COMPRESS:-none}

# Virtio drivers the guest loads (with whatever they depend on) when this
# kernel builds them as modules; ones built in are skipped.
want_modules=(virtio_pci virtio_mmio virtio_blk virtio_net virtio_console
	virtio_balloon virtio_rng vsock vmw_vsock_virtio_transport fuse virtiofs)

die() {
	echo "guest/build.sh: $*" >&2
	exit 1
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	else
		sudo "$@"
	fi
}

inputs_newer_than() {
	local f
	for f in "$here/build.sh" "$here/init" "$here"/*.c "$here"/*.h \
		"$top/src/arch/x86/layout.h" "$cache"/*.deb; do
		[ -e "$f" ] && [ "$f" -nt "$1" ] && return 0
	done
	return 1
}

up_to_date() {
	[ -z "${TERN_GUEST_REFRESH:-}" ] && [ -z "${TERN_GUEST_FORCE:-}" ] &&
		[ -s "$out/vmlinuz" ] && [ -s "$out/initrd" ] &&
		[ "$(cat "$out/.compress" 2>/dev/null)" = "$compress" ] &&
		! inputs_newer_than "$out/initrd"
}

need_tools() {
	local t missing=()
	for t in apt-get apt-cache dpkg-deb cpio cc "$@"; do
		command -v "$t" >/dev/null || missing+=("$t")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "guest/build.sh: missing ${missing[*]}; installing build dependencies" >&2
	bash "$top/scripts/deps.sh"
}

# The exact kernel package: whatever linux-image-cloud-amd64 depends on,
# in its unsigned flavour when Debian has one (same image, no EFI signature).
kernel_package() {
	local dep
	dep=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
	[ -n "$dep" ] || return 1
	if apt-cache show "$dep-unsigned" >/dev/null 2>&1; then
		echo "$dep-unsigned"
	else
		echo "$dep"
	fi
}

cached_deb() {
	# The trailing slash: the cache may be a link to a shared one.
	find "$cache/" -maxdepth 1 -name "$1" -type f | sort -V | tail -n 1
}

fetch_debs() {
	local kpkg opts=()
	mkdir -p "$cache"
	if [ -n "${TERN_GUEST_REFRESH:-}" ]; then
		rm -f "$cache"/*.deb
	fi
	if [ -n "$(cached_deb 'linux-image-*-cloud-amd64*.deb')" ] &&
		[ -n "$(cached_deb 'busybox-static_*.deb')" ]; then
		return 0
	fi
	if ! kpkg=$(kernel_package); then
		echo "guest/build.sh: updating the package lists" >&2
		as_root apt-get update -qq
		kpkg=$(kernel_package) || die "no linux-image-cloud-amd64 in the package lists"
	fi
	echo "guest/build.sh: downloading $kpkg busybox-static" >&2
	# apt drops to the _apt user for downloads, who cannot write here.
	[ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
	(cd "$cache" && apt-get download -qq "${opts[@]}" "$kpkg" busybox-static) ||
		die "apt-get download failed"
}

# Names in depends= are module names (underscores); files may use dashes.
declare -A mod_path=()
index_modules() {
	local f n
	while IFS= read -r f; do
		n=${f##*/}
		n=${n%.ko}
		mod_path[${n//-/_}]=${f#"$1"/}
	done < <(find "$1/kernel" -name '*.ko' -type f)
}

mod_aliases() {
	tr '\0' '\n' <"$1" | sed -n 's/^alias=//p'
}

# One line per modalias pattern of each wanted module: the pattern, then the
# module's files (relative to /lib/modules) in load order, dependencies
# first. /init matches the modalias of each device it finds against these,
# so it loads only the drivers of devices the machine has.
write_aliases() {
	local dir=$1 kver=$2 root=$3 m f pattern files
	for m in "${want_modules[@]}"; do
		mod_seen=()
		mod_order=()
		add_module "$m" "$dir"
		[ ${#mod_order[@]} -gt 0 ] || continue
		files=
		for f in "${mod_order[@]}"; do
			install -D -m 0644 "$dir/$f" "$root/lib/modules/$kver/$f"
			files="$files $kver/$f"
		done
		while IFS= read -r pattern; do
			case $pattern in *[[:space:]]*) continue ;; esac
			echo "$pattern$files"
		done < <(mod_aliases "$dir/${mod_path[$m]}")
	done
}

mod_depends() {
	tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}

# Depth-first: a module is listed after everything it depends on.
declare -A mod_seen=()
mod_order=()
add_module() {
	local name=$1 dir=$2 dep
	[ -n "${mod_seen[$name]:-}" ] && return 0
	mod_seen[$name]=1
	if [ -z "${mod_path[$name]:-}" ]; then
		grep -q "/${name//_/[-_]}\.ko\$" "$dir/modules.builtin" ||
			echo "guest/build.sh: warning: module $name is neither built in nor shipped" >&2
		return 0
	fi
	for dep in $(mod_depends "$dir/${mod_path[$name]}"); do
		add_module "$dep" "$dir"
	done
	mod_order+=("${mod_path[$name]}")
}

# The kernel opens /dev/console for /init before anything can mount
# devtmpfs, so the archive itself must carry that node. A device node in a
# cpio made from a directory would need root to mknod; this writes the two
# newc entries (dir dev, char 5:1 dev/console) by hand instead. The kernel
# unpacks concatenated archives in order.
newc_entry() {
	local name=$1 mode=$2 major=$3 minor=$4 ino=$5 hdr pad
	hdr=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
		"$ino" "$mode" 0 0 1 0 0 0 0 "$major" "$minor" $((${#name} + 1)) 0)
	printf '%s%s\0' "$hdr" "$name"
	pad=$(((4 - (110 + ${#name} + 1) % 4) % 4))
	head -c "$pad" /dev/zero
}

console_archive() {
	newc_entry dev $((0040755)) 0 0 1
	newc_entry dev/console $((0020600)) 5 1 2
	newc_entry TRAILER!!! 0 0 0 0
}

# The guest's own static helpers (see rt.h): freestanding, a few KiB.
build_helper() {
	cc -std=c11 -Wall -Wextra -Werror -Os -I"$top/src" -static -nostdlib \
		-ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables \
		-fno-pie -no-pie -s -Wl,--build-id=none -Wl,-z,noseparate-code \
		-o "$2/$1" "$here/$1.c"
}

compress_cmd() {
	case $compress in
	none) cat ;;
	gzip) gzip -9 -n ;;
	# The kernel only takes lz4's legacy frame format for an initrd.
	lz4) lz4 -l -9 -q ;;
	esac
}

build() {
	local kdeb bdeb kver kdir root applet
	work=$(mktemp -d)

	kdeb=$(cached_deb 'linux-image-*-cloud-amd64*.deb')
	bdeb=$(cached_deb 'busybox-static_*.deb')
	dpkg-deb -x "$kdeb" "$work/kernel"
	dpkg-deb -x "$bdeb" "$work/busybox"
	kdir=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)
	[ -n "$kdir" ] || die "$kdeb has no /lib/modules"
	kver=${kdir##*/}

	root=$work/root
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,root,etc}
	mkdir -p "$root/lib/modules/$kver"
	chmod 1777 "$root/tmp"
	install -m 0755 "$work/busybox/bin/busybox" "$root/bin/busybox"
	# Every applet as a link, where busybox itself says it belongs.
	for applet in $("$root/bin/busybox" --list-full); do
		[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
	done
	install -m 0755 "$here/init" "$root/init"
	# Every guest/tern-*.c is one helper in /bin.
	for src in "$here"/tern-*.c; do
		src=${src##*/}
		build_helper "${src%.c}" "$root/bin"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\ntty:x:5:\n' >"$root/etc/group"

	index_modules "$kdir"
	write_aliases "$kdir" "$kver" "$root" >"$root/lib/modules/aliases"

	# Fixed mtimes and sorted names: the same inputs give the same archive.
	find "$root" -exec touch -h -d @0 {} +
	{
		console_archive
		(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
			cpio -o -H newc -R 0:0 --reproducible --quiet)
	} | compress_cmd >"$work/initrd"

	mkdir -p "$out"
	install -m 0644 "$(find "$work/kernel/boot" -name 'vmlinuz-*' | head -n 1)" "$out/vmlinuz"
	install -m 0644 "$work/kernel/boot/config-$kver" "$out/config"
	echo "$kver" >"$out/kernel-version"
	echo "$compress" >"$out/.compress"
	mv "$work/initrd" "$out/initrd"
}

up_to_date && exit 0
case $compress in none | gzip | lz4) ;; *) die "TERN_GUEST_COMPRESS must be none, gzip or lz4" ;; esac
work=
trap '[ -z "$work" ] || rm -rf "$work"' EXIT
if [ "$compress" = lz4 ]; then need_tools lz4; else need_tools; fi
fetch_debs
build
echo "guest/build.sh: built guest/out (kernel $(cat "$out/kernel-version"), initrd $(du -h "$out/initrd" | cut -f1), compress=$compress)"
