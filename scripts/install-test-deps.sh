#!/usr/bin/env bash
# Installs the real parts the integration tests talk to: a registry (distribution 2.8), skopeo and umoci to
# check what kiln emits, busybox-static for base images, qemu-user-static for foreign-architecture RUNs.
set -euo pipefail
packages=(docker-registry skopeo umoci busybox-static qemu-user-static apache2-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
