#!/usr/bin/env bash
# Makes a minimal root filesystem from the host's busybox-static, for builds that cannot reach a registry:
#   kiln build --build-context busybox=$(bash examples/make-base.sh) ...
# Prints the directory it made (a fresh one under /tmp, or the one given as $1). Installs busybox-static with
# apt-get when it is missing and we are root.
set -euo pipefail
busybox=/bin/busybox
if ! "$busybox" true 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2
  else
    echo "no busybox at $busybox: apt-get install busybox-static" >&2
    exit 1
  fi
fi
root=${1:-$(mktemp -d /tmp/kiln-busybox-rootfs.XXXXXX)}
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/home"
chmod 755 "$root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
echo "$root"
