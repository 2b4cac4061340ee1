#!/usr/bin/env bash
# One-time (idempotent) set-up of everything vhost-vtpm needs on a Debian bookworm machine:
# Debian packages, the Rust release build, the patched QEMU and the guest image (both cached
# in ~/.cache/vhost-vtpm). Safe to re-run; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

APT_PACKAGES=(
  pkg-config libssl-dev openssl        # openssl crate (signature checks in tests)
  libtpms-dev                          # the embedded engine
  swtpm swtpm-tools                    # swtpm engine, benchmark baseline, import tests
  tpm2-tools libtss2-dev               # TSS tools (host side and guest image)
  strace                               # tests: how the daemon opens its state files
  libsqlite3-dev                       # the migration controller's store (rusqlite)
  python3-fusepy                       # tests: the power-loss disk (testbed/powerloss/disk.py)
  curl                                 # tests: vtpm-host's README (checks the CA answers under its name)
  dpkg-dev help2man                    # packaging/deb/build.sh (tests/package.rs): dpkg-shlibdeps, man pages
  systemd                              # tests/package.rs: systemd-analyze verify of the units (PID 1 need not be systemd)
  dkms                                 # tests: the driver's DKMS configuration built by dkms (e2e linux_driver)
  linux-source-6.1                     # tests: the guest driver's upstream patch (checkpatch.pl, the
                                       # private drivers/char/tpm/tpm.h; guest-driver/linux/upstream/check.sh)
)
# libvirtd and virsh driving our QEMU build (e2e/tests/libvirt.rs), without their
# recommends (the xen, vbox and lxc drivers, lvm2, mesa, dnsmasq). libvirt-daemon-system
# creates the libvirt-qemu user, without which libvirtd's QEMU driver does not start even
# when qemu.conf names another user; the test runs its own libvirtd, not this package's
# service.
APT_PACKAGES_NO_RECOMMENDS=(
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
)

# shellcheck source=lib/apt.sh
source scripts/lib/apt.sh
apt_install "${APT_PACKAGES[@]}"
apt_install --no-install-recommends "${APT_PACKAGES_NO_RECOMMENDS[@]}"

# The guest driver must build for the bookworm kernel (the test guest's) and for the
# bookworm-backports one; qemu/build.sh adds the backports source. Install the backports
# headers by their versioned name so linux-headers-amd64 itself stays on bookworm.
ensure_backports_headers() {
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    ./qemu/build.sh >/dev/null   # adds the source on its first run
  fi
  local dep
  dep=$(apt-cache show -t bookworm-backports linux-headers-amd64 2>/dev/null |
        sed -n 's/^Depends: \(linux-headers-[^ ]*-amd64\) .*/\1/p' | sort -V | tail -n 1)
  if [ -z "$dep" ]; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    dep=$(apt-cache show -t bookworm-backports linux-headers-amd64 2>/dev/null |
          sed -n 's/^Depends: \(linux-headers-[^ ]*-amd64\) .*/\1/p' | sort -V | tail -n 1)
  fi
  [ -n "$dep" ] || { echo "setup: no backports kernel headers found" >&2; return 1; }
  apt_install "$dep"
}

echo "setup: building vhost-vtpm (release)"
cargo build --release --workspace --all-targets --quiet

echo "setup: the host package (packaging/deb/build.sh)"
host_deb=$(./packaging/deb/build.sh | tail -n 1)

echo "setup: QEMU with vhost-user-tpm-pci (qemu/build.sh; cached, ~5 min the first time)"
qemu_bin=$(./qemu/build.sh | tail -n 1)
qemu_env="$(dirname "$(dirname "$(dirname "$qemu_bin")")")/env"
ensure_backports_headers
echo "setup: guest image (guest-driver/image/build.sh; cached)"
guest_env=$(./guest-driver/image/build.sh)
echo "setup: Debian guest (guest-driver/debian/build.sh; cached, a few minutes the first time)"
debian_env=$(./guest-driver/debian/build.sh)

# Where the end-to-end tests and the demo find everything.
{
  cat "$qemu_env"
  printf '%s\n' "$guest_env"
  printf '%s\n' "$debian_env"
  echo "DAEMON=$PWD/target/release/vhost-vtpm"
  echo "HOST_DEB=$host_deb"
} > target/vtpm-env
echo "setup: done (paths in target/vtpm-env)"
