#!/usr/bin/env bash
# Install what building and testing tern needs, from Debian's packages.
# Safe to run again: it only installs what is missing.
set -euo pipefail
pkgs=(build-essential pkg-config libzydis-dev libcmocka-dev zlib1g-dev liblz4-dev liblzma-dev libzstd-dev libbz2-dev libmicrohttpd-dev libjson-c-dev libssl-dev cpio
      qemu-utils qemu-system-x86 nbdkit curl ca-certificates xz-utils zstd acpica-tools)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "tern: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
