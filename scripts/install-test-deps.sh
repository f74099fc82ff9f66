#!/usr/bin/env bash
# Installs the real parts the integration tests talk to: a registry (distribution 2.8), skopeo and umoci to
# check what kiln emits, busybox-static for base images (amd64, and arm64 for multi-platform builds),
# qemu-user-static registered in binfmt_misc for foreign-architecture RUN steps, slirp4netns for the network
# RUN steps get by default, iproute2 for the network tests, openssh-client (ssh-agent, ssh-add) for --ssh.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
packages=(docker-registry skopeo umoci busybox-static qemu-user-static apache2-utils slirp4netns iproute2 openssh-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  updated=1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The arm64 busybox-static binary, unpacked where the tests look for it (KILN_TEST_BUSYBOX_ARM64).
arm64_dir=/var/cache/kiln-test/busybox-arm64
if [ ! -x "$arm64_dir/bin/busybox" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    updated=
  fi
  [ -n "$updated" ] || $SUDO apt-get update -qq
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download busybox-static:arm64 >/dev/null)
  $SUDO mkdir -p "$arm64_dir"
  $SUDO dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$arm64_dir"
  rm -rf "$tmp"
fi

# QEMU user emulation through binfmt_misc (the F flag makes the kernel open the interpreter at registration).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  $SUDO /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf || true
fi
