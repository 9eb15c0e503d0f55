#!/usr/bin/env bash
# Builds the chat4all:local image FROM scratch: the release binary plus the shared libraries
# it links (glibc, libstdc++, libgcc_s, the loader), found with ldd, and the host's CA bundle.
# No base image is pulled.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:?usage: build-image.sh <path to the chat4all binary>}"
rootfs="$here/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/var/lib/chat4all" "$rootfs/tmp" "$rootfs/etc"
cp "$bin" "$rootfs/usr/local/bin/chat4all"
# Every library ldd resolves, at the same path, plus the dynamic loader.
ldd "$bin" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
# Name resolution for the compose network's service names (node1, node2, ...).
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
for lib in /lib/x86_64-linux-gnu/libnss_dns.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libresolv.so.2; do
  if [ -e "$lib" ]; then mkdir -p "$rootfs$(dirname "$lib")"; cp -L "$lib" "$rootfs$lib"; fi
done
printf 'root:x:0:0:root:/:/usr/local/bin/chat4all\n' > "$rootfs/etc/passwd"
# The CA bundle, for HTTPS to the platforms (Telegram, WhatsApp, Instagram). Without it a node
# still runs, and refuses channels with PLATFORM_UNAVAILABLE saying why.
bundle=/etc/ssl/certs/ca-certificates.crt
if [ -s "$bundle" ]; then
  mkdir -p "$rootfs/etc/ssl/certs"
  cp -L "$bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
else
  echo "build-image: no $bundle (Debian's ca-certificates); the image cannot reach the platforms" >&2
fi
chmod 1777 "$rootfs/tmp"
docker build -q -t chat4all:local "$here"
