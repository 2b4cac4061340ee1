#!/bin/bash
# Build the vhost-vtpm test guest: a Debian kernel, an initramfs with busybox,
# tpm2-tools and the tpm_virtio module, and the module itself.
#
#   guest-driver/image/build.sh
#
# Output directory: ${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}/guest-<hash>/ where
# <hash> covers every input (these scripts, the driver sources, the kernel and
# userland package versions).  Running it again with the same inputs reuses
# the finished directory.  The last lines on stdout are KERNEL=, INITRD= and
# MODULE= (stdout carries nothing else); the same KEY=value lines are in
# <output>/env.  Progress goes to stderr.
#
# Environment:
#   VTPM_CACHE             cache root (default $HOME/.cache/vhost-vtpm)
#   VTPM_GUEST_MODULES     extra kernel modules to put in the initramfs
#   VTPM_GUEST_REBUILD=1   rebuild even if the output exists
#   VTPM_GUEST_KVER        kernel ABI name to use instead of the one behind
#                          linux-headers-amd64 (e.g. 6.12.95+deb12-amd64; its
#                          linux-image package must be downloadable)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
driver_dir=$(cd "$here/../linux" && pwd)
tpm_bench_src=$(cd "$here/../../vtpm-bench/guest" && pwd)/tpm_bench.c
cache=${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}
apt_get=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive

log() { echo "guest-image: $*" >&2; }
die() { echo "guest-image: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- packages
host_pkgs=(linux-headers-amd64 busybox-static tpm2-tools libtss2-tcti-device0
           libtss2-tctildr0 openssl libssl3 kmod cpio gzip xz-utils zstd make
           gcc)

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${host_pkgs[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if ! "${apt_get[@]}" install -y --no-install-recommends "${missing[@]}" >&2; then
        "${apt_get[@]}" update >&2
        "${apt_get[@]}" install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi

if [[ -n ${VTPM_GUEST_KVER:-} ]]; then
    # Explicit kernel, e.g. 6.12.95+deb12-amd64 from bookworm-backports.
    kver=$VTPM_GUEST_KVER
    if ! is_installed "linux-headers-$kver"; then
        log "installing linux-headers-$kver"
        "${apt_get[@]}" install -y --no-install-recommends "linux-headers-$kver" >&2
    fi
    kpkg_version=$(dpkg-query -W -f='${Version}' "linux-headers-$kver")
else
    # The guest kernel is the one whose headers linux-headers-amd64 pulls in.
    kpkg_version=$(dpkg-query -W -f='${Version}' linux-headers-amd64)
    kver=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 |
           tr ',' '\n' | sed -n 's/^ *linux-headers-\([^ ]*\) .*/\1/p' | head -n1)
    [[ -n $kver ]] || die "cannot work out the kernel version from linux-headers-amd64"
fi
kdir=/usr/src/linux-headers-$kver
[[ -f $kdir/Makefile ]] || die "$kdir missing (linux-headers-$kver not installed?)"
log "guest kernel $kver (package version $kpkg_version)"

# ---------------------------------------------------------------- inputs hash
pkg_versions() {
    dpkg-query -W -f='${Package}=${Version}\n' busybox-static tpm2-tools \
        'libtss2-*' libssl3 openssl libc6 libcurl3-gnutls 2>/dev/null | sort
}
inputs_hash=$(
    {
        echo "format 1 $kver $kpkg_version ${VTPM_GUEST_MODULES:-}"
        pkg_versions
        for f in "$here/build.sh" "$here/init" "$here/vtpm-smoke" "$here/vtpm-evidence" "$tpm_bench_src" \
                 "$driver_dir/tpm_virtio.c" "$driver_dir/Makefile" "$driver_dir/Kbuild" \
                 "$driver_dir/compat/tpm.h"; do
            sha256sum < "$f"
        done
    } | sha256sum | cut -c1-16
)
out=$cache/guest-$inputs_hash

print_env() {
    # KERNEL/INITRD/MODULE are the last lines on purpose.
    grep -v -E '^(KERNEL|INITRD|MODULE)=' "$out/env"
    grep -E '^KERNEL=' "$out/env"
    grep -E '^INITRD=' "$out/env"
    grep -E '^MODULE=' "$out/env"
}

complete_output() {
    [[ -f $out/env && -f $out/vmlinuz && -f $out/initramfs.cpio.gz && -f $out/tpm_virtio.ko ]]
}

mkdir -p "$cache"
exec 9>"$cache/.guest-build.lock"
flock 9

if complete_output && [[ ${VTPM_GUEST_REBUILD:-0} != 1 ]]; then
    log "up to date: $out"
    print_env
    exit 0
fi

tmp=$(mktemp -d "$cache/.guest-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- kernel
debs=$cache/debs
mkdir -p "$debs"
kimage_pkg=linux-image-$kver
deb=$(ls "$debs/${kimage_pkg}_${kpkg_version//:/%3a}_amd64.deb" 2>/dev/null || true)
if [[ -z $deb ]]; then
    log "downloading $kimage_pkg=$kpkg_version"
    if ! (cd "$debs" && "${apt_get[@]}" download "$kimage_pkg=$kpkg_version" >&2); then
        "${apt_get[@]}" update >&2
        (cd "$debs" && "${apt_get[@]}" download "$kimage_pkg=$kpkg_version" >&2)
    fi
    deb=$(ls "$debs/${kimage_pkg}_"*"_amd64.deb" | grep -F "_${kpkg_version//:/%3a}_" | head -n1)
fi
[[ -f $deb ]] || die "could not download $kimage_pkg=$kpkg_version"
log "extracting $(basename "$deb")"
kpkg=$tmp/kpkg
dpkg-deb -x "$deb" "$kpkg"
vmlinuz=$kpkg/boot/vmlinuz-$kver
[[ -f $vmlinuz ]] || die "no /boot/vmlinuz-$kver in $deb"
kmods=
for d in "$kpkg/lib/modules/$kver" "$kpkg/usr/lib/modules/$kver"; do
    [[ -d $d ]] && kmods=$d
done
[[ -n $kmods ]] || die "no modules directory for $kver in $deb"
kconfig=$kpkg/boot/config-$kver
if [[ ! -f $kmods/modules.dep ]]; then
    # The package leaves modules.dep to depmod at install time.
    sysmap=()
    [[ -f $kpkg/boot/System.map-$kver ]] && sysmap=(-F "$kpkg/boot/System.map-$kver")
    depmod -b "${kmods%/lib/modules/$kver}" "${sysmap[@]}" "$kver"
fi

# ---------------------------------------------------------------- module
log "building tpm_virtio.ko against $kdir"
mkdir -p "$tmp/mod"
cp -r "$driver_dir/tpm_virtio.c" "$driver_dir/Makefile" "$driver_dir/Kbuild" "$driver_dir/compat" "$tmp/mod/"
if ! make -C "$kdir" M="$tmp/mod" modules >"$tmp/mod/build.log" 2>&1; then
    cat "$tmp/mod/build.log" >&2
    die "module build failed"
fi
ko=$tmp/mod/tpm_virtio.ko
[[ -f $ko ]] || die "module build produced no tpm_virtio.ko"
vermagic=$(modinfo -F vermagic "$ko")
[[ $vermagic == "$kver "* ]] || die "module vermagic '$vermagic' does not match $kver"

# ---------------------------------------------------------------- rootfs
root=$tmp/root
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,dev,proc,sys,tmp,run,root,etc/ssl,mnt}
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
chmod 1777 "$root/tmp"

# busybox and its applets
cp /bin/busybox "$root/usr/bin/busybox"
"$root/usr/bin/busybox" --list-full | while read -r applet; do
    [[ -e $root/$applet || -L $root/$applet ]] && continue
    mkdir -p "$(dirname "$root/$applet")"
    ln -s /usr/bin/busybox "$root/$applet"
done

# tpm2-tools: the multicall binary and every tpm2_* link to it
cp /usr/bin/tpm2 "$root/usr/bin/tpm2"
n_tools=0
for t in /usr/bin/tpm2_*; do
    [[ -L $t && $(readlink "$t") == tpm2 ]] || continue
    ln -sf tpm2 "$root/usr/bin/$(basename "$t")"
    n_tools=$((n_tools + 1))
done
cp /usr/bin/openssl "$root/usr/bin/openssl"
install -m 0755 "$here/vtpm-smoke" "$root/usr/bin/vtpm-smoke"
# Deep-attestation evidence for vtpm-verify (tpm2-tools + busybox).
install -m 0755 "$here/vtpm-evidence" "$root/usr/bin/vtpm-evidence"
# The in-guest latency benchmark (raw commands to /dev/tpmrm0), static so it needs no libs.
gcc -static -O2 -Wall -Wextra -Werror -o "$root/usr/bin/tpm_bench" "$tpm_bench_src"

# libraries loaded with dlopen(): the device TCTI and OpenSSL's providers
libdir=/usr/lib/x86_64-linux-gnu
cp -a "$libdir"/libtss2-tcti-device.so.0* "$root/usr/lib/x86_64-linux-gnu/"
if [[ -d $libdir/ossl-modules ]]; then
    cp -a "$libdir/ossl-modules" "$root/usr/lib/x86_64-linux-gnu/"
fi
cp -L /etc/ssl/openssl.cnf "$root/etc/ssl/openssl.cnf"
mkdir -p "$root/usr/lib/ssl"
ln -s /etc/ssl/openssl.cnf "$root/usr/lib/ssl/openssl.cnf"

# shared libraries, recursively: every ELF file in the tree is scanned until
# nothing new turns up.  Libraries go to /usr/lib/x86_64-linux-gnu (searched
# by the dynamic loader without a cache); the loader to /lib64.
copy_lib() {
    local src=$1 name
    name=$(basename "$src")
    if [[ $name == ld-linux-x86-64.so.2 ]]; then
        [[ -e $root/usr/lib64/$name ]] && return 1
        cp -L "$src" "$root/usr/lib64/$name"
        return 0
    fi
    [[ -e $root/usr/lib/x86_64-linux-gnu/$name ]] && return 1
    cp -L "$src" "$root/usr/lib/x86_64-linux-gnu/$name"
}
while :; do
    added=0
    while IFS= read -r -d '' f; do
        [[ $(od -An -tx1 -N4 "$f" | tr -d ' \n') == 7f454c46 ]] || continue
        while read -r lib; do
            [[ -n $lib ]] || continue
            if copy_lib "$lib"; then added=$((added + 1)); fi
        done < <(ldd "$f" 2>/dev/null |
                 awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }')
    done < <(find "$root/usr" -type f -print0)
    ((added == 0)) && break
done
for f in "$root/usr/bin/tpm2" "$root/usr/bin/openssl" "$root"/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0; do
    if ldd "$f" | grep 'not found' >&2; then die "unresolved libraries for $f"; fi
done

cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
tss:x:59:
EOF
cat > "$root/etc/profile" <<'EOF'
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
export PS1='vtpm-guest# '
EOF
echo vtpm-guest > "$root/etc/hostname"

# kernel modules: ours plus what the guest needs that is not built in
kmod_root=$root/usr/lib/modules/$kver
mkdir -p "$kmod_root/extra"
cp "$ko" "$kmod_root/extra/tpm_virtio.ko"
for f in modules.builtin modules.builtin.modinfo modules.order; do
    [[ -f $kmods/$f ]] && cp "$kmods/$f" "$kmod_root/$f"
done

# modname -> path (relative to $kmods) from the package's modules.dep
declare -A mod_path mod_deps
while IFS= read -r line; do
    path=${line%%:*}
    deps=${line#*:}
    name=$(basename "$path")
    name=${name%%.ko*}
    name=${name//-/_}
    mod_path[$name]=$path
    mod_deps[$name]=$deps
done < "$kmods/modules.dep"

is_builtin() {
    grep -qE "/$1\.ko\$" "$kmods/modules.builtin" 2>/dev/null ||
    grep -qE "/${1//_/[-_]}\.ko\$" "$kmods/modules.builtin" 2>/dev/null
}

declare -A copied
copy_module() {
    local name=${1//-/_} path dst dep
    [[ -n ${copied[$name]:-} ]] && return 0
    copied[$name]=1
    if [[ -z ${mod_path[$name]:-} ]]; then
        if is_builtin "$name"; then
            log "module $name is built into $kver"
            return 0
        fi
        die "module $name not found in $kver"
    fi
    path=${mod_path[$name]}
    dst=$kmod_root/${path%%.ko*}.ko
    mkdir -p "$(dirname "$dst")"
    case $path in
        *.ko) cp "$kmods/$path" "$dst" ;;
        *.ko.xz) xz -dc "$kmods/$path" > "$dst" ;;
        *.ko.zst) zstd -qdc "$kmods/$path" > "$dst" ;;
        *.ko.gz) gzip -dc "$kmods/$path" > "$dst" ;;
        *) die "unknown module format: $path" ;;
    esac
    for dep in ${mod_deps[$name]}; do
        dep=$(basename "$dep")
        copy_module "${dep%%.ko*}"
    done
}
wanted=(virtio_pci virtio_mmio ${VTPM_GUEST_MODULES:-})
IFS=, read -r -a our_deps <<< "$(modinfo -F depends "$ko")"
for m in "${wanted[@]}" "${our_deps[@]}"; do
    [[ -n $m ]] || continue
    copy_module "$m"
done
depmod -b "$root" "$kver"
log "modules in the initramfs: $(cd "$kmod_root" && find . -name '*.ko' | sort | tr '\n' ' ')"

install -m 0755 "$here/init" "$root/init"
# An initial console for the kernel to open before /init runs.
if [[ $(id -u) == 0 ]]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
fi

# ---------------------------------------------------------------- assemble
stage=$tmp/out
mkdir -p "$stage"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
    gzip -9n > "$stage/initramfs.cpio.gz"
cp "$vmlinuz" "$stage/vmlinuz"
cp "$ko" "$stage/tpm_virtio.ko"
[[ -f $kconfig ]] && cp "$kconfig" "$stage/config-$kver"

cfg() { grep -E "^CONFIG_$1=" "$kconfig" 2>/dev/null | cut -d= -f2 || true; }
{
    echo "KVER=$kver"
    echo "KERNEL_PKG=$kimage_pkg=$kpkg_version"
    echo "CONFIG_VIRTIO=$(cfg VIRTIO)"
    echo "CONFIG_VIRTIO_PCI=$(cfg VIRTIO_PCI)"
    echo "CONFIG_TCG_TPM=$(cfg TCG_TPM)"
    echo "KERNEL=$out/vmlinuz"
    echo "INITRD=$out/initramfs.cpio.gz"
    echo "MODULE=$out/tpm_virtio.ko"
} > "$stage/env"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort) > "$stage/initramfs.list"

rm -rf "$out"
mv "$stage" "$out"
log "built $out ($(du -h "$out/initramfs.cpio.gz" | cut -f1) initramfs, $n_tools tpm2_* tools)"
print_env
