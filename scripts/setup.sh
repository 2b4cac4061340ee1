#!/usr/bin/env bash
# One-time (idempotent) set-up of everything vhost-vtpm needs on a Debian bookworm machine:
# Debian packages, the Rust release build, and — when their builders are present — the
# patched QEMU and the guest image. Safe to re-run; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  pkg-config libssl-dev openssl        # openssl crate (signature checks in tests)
  libtpms-dev                          # the embedded engine
  swtpm swtpm-tools                    # swtpm engine, benchmark baseline, import tests
  tpm2-tools libtss2-dev               # TSS tools (host side and guest image)
)

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
}

apt_install "${APT_PACKAGES[@]}"

echo "setup: building vhost-vtpm (release)"
cargo build --release --workspace --all-targets --quiet

for builder in qemu/build.sh guest-driver/image/build.sh; do
  if [ -x "$builder" ]; then
    echo "setup: $builder"
    "./$builder" >/dev/null
  fi
done
echo "setup: done"
