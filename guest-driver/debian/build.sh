#!/bin/bash
# Build the Debian test guest: a Debian bookworm root file system made from Debian's packages
# (debootstrap) that boots systemd, with systemd-cryptsetup, clevis, tpm2-tools and the
# tpm2-openssl provider, and our driver installed the way a guest owner installs it: from a
# .deb of the module (built here, `tpm-virtio-modules-<kver>`), loaded by udev at boot. It
# also has the libraries of the host package (packaging/), which a test installs in it.
#
#   guest-driver/debian/build.sh
#
# It reuses the busybox image's kernel and module build (guest-driver/image/build.sh), so the
# two guests run the same kernel and the same tpm_virtio.ko.
#
# Output directory: ${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}/debian-<hash>/, where <hash>
# covers every input (this script, the files in rootfs/, the module, the kernel package and
# the package list). Running it again with the same inputs reuses it. The last lines on
# stdout are the DEBIAN_*= lines (also in <output>/env); progress goes to stderr:
#   DEBIAN_KERNEL=     the kernel (vmlinuz) to boot with -kernel
#   DEBIAN_INITRD=     the initramfs Debian's initramfs-tools made for it
#   DEBIAN_ROOTFS=     the root file system, an ext4 image (use it read-only as a qcow2
#                      backing file; the guest's root is /dev/vda)
#   DEBIAN_MODULE_DEB= the driver's package, as installed in the image
#
# Environment:
#   VTPM_CACHE            cache root (default $HOME/.cache/vhost-vtpm)
#   VTPM_DEBIAN_MIRROR    Debian mirror (default http://deb.debian.org/debian)
#   VTPM_DEBIAN_REBUILD=1 rebuild even if the output exists
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}
mirror=${VTPM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
export DEBIAN_FRONTEND=noninteractive

log() { echo "debian-guest: $*" >&2; }
die() { echo "debian-guest: error: $*" >&2; exit 1; }

# What the guest owner's system has: systemd, the LUKS and TPM tools this guest is tested
# with, and what Debian's kernel package needs to install (linux-base, initramfs-tools).
guest_pkgs=(systemd systemd-sysv udev kmod dbus
            cryptsetup-bin e2fsprogs
            clevis clevis-tpm2 clevis-luks
            tpm2-tools tpm2-openssl libtss2-tcti-device0 libtss2-rc0 openssl
            initramfs-tools linux-base
            # The host package's libraries: the guest, booting systemd, also stands in for a
            # host where the package is installed (this machine's PID 1 is not systemd), and
            # it has no network for apt to fetch them then.
            libtpms0 libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-sys1 libtss2-tctildr0
            libsqlite3-0 libssl3)

# shellcheck source=../../scripts/lib/apt.sh
source "$here/../../scripts/lib/apt.sh"
apt_install --no-install-recommends debootstrap e2fsprogs dpkg-dev

# ---------------------------------------------------------------- kernel and module
# The busybox image build downloads the kernel package and builds the module; take both.
image_env=$("$here/../image/build.sh")
module=$(sed -n 's/^MODULE=//p' <<<"$image_env")
image_dir=$(dirname "$module")
kver=$(sed -n 's/^KVER=//p' "$image_dir/env")
kernel_pkg=$(sed -n 's/^KERNEL_PKG=//p' "$image_dir/env")   # linux-image-<kver>=<version>
kpkg_version=${kernel_pkg#*=}
kernel_deb=$(ls "$cache/debs/linux-image-${kver}_${kpkg_version//:/%3a}_amd64.deb" 2>/dev/null || true)
[[ -f $module && -n $kver && -f $kernel_deb ]] ||
    die "the busybox image build left no module, kernel version or kernel package"
driver_version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$here/../linux/dkms.conf")
[[ -n $driver_version ]] || die "no PACKAGE_VERSION in guest-driver/linux/dkms.conf"

inputs_hash=$(
    {
        echo "format 1 $suite $kver $kpkg_version $driver_version ${guest_pkgs[*]}"
        sha256sum < "$here/build.sh"
        (cd "$here/rootfs" && find . -type f | LC_ALL=C sort | xargs sha256sum)
        sha256sum < "$module"
    } | sha256sum | cut -c1-16
)
out=$cache/debian-$inputs_hash

print_env() { cat "$out/env"; }

mkdir -p "$cache"
exec 9>"$cache/.debian-build.lock"
flock 9

if [[ -f $out/.complete && ${VTPM_DEBIAN_REBUILD:-0} != 1 ]]; then
    log "up to date: $out"
    print_env
    exit 0
fi

tmp=$(mktemp -d "$cache/.debian-build.XXXXXX")
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$tmp/root/$m" 2>/dev/null && umount -l "$tmp/root/$m"
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the module's package
# What a guest owner installs: the module for their kernel, and depmod run by the package.
# udev loads it by its modalias; Debian's tpm-udev rules already tag /dev/tpm* for systemd.
pkgname=tpm-virtio-modules-$kver
pkg=$tmp/pkg
install -D -m 0644 "$module" "$pkg/lib/modules/$kver/updates/tpm_virtio.ko"
mkdir -p "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<EOF
Package: $pkgname
Version: $driver_version
Architecture: amd64
Maintainer: vhost-vtpm developers <dev@example.invalid>
Depends: linux-image-$kver, kmod, udev
Provides: tpm-virtio-modules
Section: kernel
Priority: optional
Description: virtio TPM driver (tpm_virtio) for Linux $kver
 The guest driver of vhost-vtpm: a TPM 2.0 served by a vhost-user back-end over a virtio
 device. udev loads it when the device is present; /dev/tpm0 and /dev/tpmrm0 appear.
EOF
cat >"$pkg/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
	depmod -a $kver
fi
EOF
cat >"$pkg/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = remove ] || [ "\$1" = purge ]; then
	depmod -a $kver || true
fi
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
mkdir -p "$tmp/out"
module_deb=$tmp/out/${pkgname}_${driver_version}_amd64.deb
dpkg-deb --root-owner-group --build "$pkg" "$module_deb" >&2

# ---------------------------------------------------------------- root file system
root=$tmp/root
debootstrap_cache=$cache/debootstrap-debs
mkdir -p "$debootstrap_cache"
log "debootstrap $suite from $mirror (a few minutes the first time)"
include=$(IFS=,; echo "${guest_pkgs[*]}")
if ! debootstrap --variant=minbase --cache-dir="$debootstrap_cache" --include="$include" \
        "$suite" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

log "installing the kernel and the driver's package"
cp "$kernel_deb" "$module_deb" "$root/tmp/"
in_root dpkg -i "/tmp/$(basename "$kernel_deb")" >"$tmp/kernel.log" 2>&1 ||
    { tail -n 30 "$tmp/kernel.log" >&2; die "installing $(basename "$kernel_deb") failed"; }
in_root dpkg -i "/tmp/$(basename "$module_deb")" >&2
rm -f "$root/tmp/"*.deb

log "configuring the guest"
cp -a "$here/rootfs/." "$root/"
echo vtpm-debian >"$root/etc/hostname"
in_root passwd -d root >/dev/null
# Boot lean: nothing here needs the network or the daily apt jobs.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
            systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
in_root systemctl enable vtpm-console.service >/dev/null 2>&1 ||
    die "cannot enable vtpm-console.service"
# The initramfs again, now that the module and the configuration are in place.
in_root update-initramfs -u -k "$kver" >"$tmp/initramfs.log" 2>&1 ||
    { tail -n 30 "$tmp/initramfs.log" >&2; die "update-initramfs failed"; }
modinfo -b "$root" -k "$kver" -F vermagic tpm_virtio >/dev/null ||
    die "modinfo cannot find tpm_virtio in the image (depmod did not run?)"

cp "$root/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$tmp/out/initrd.img"
for m in dev/pts dev sys proc; do umount "$root/$m"; done
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*

log "making the ext4 image"
mkfs.ext4 -q -F -L vtpm-root -d "$root" "$tmp/out/rootfs.ext4" 2G >&2

{
    echo "DEBIAN_KVER=$kver"
    echo "DEBIAN_KERNEL=$out/vmlinuz"
    echo "DEBIAN_INITRD=$out/initrd.img"
    echo "DEBIAN_ROOTFS=$out/rootfs.ext4"
    echo "DEBIAN_MODULE_DEB=$out/$(basename "$module_deb")"
} >"$tmp/out/env"
rm -rf "$out"
mv "$tmp/out" "$out"
touch "$out/.complete"
# Older outputs of this script are superseded.
for old in "$cache"/debian-*; do
    [[ $old != "$out" && -f $old/.complete ]] && rm -rf "$old"
done
log "done: $out"
print_env
