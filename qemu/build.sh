#!/usr/bin/env bash
# Build QEMU 10.0.2 (qemu-system-x86_64 only) with the vhost-user-tpm /
# vhost-user-tpm-pci front-end from patches/, and cache the result.
#
# Usage: qemu/build.sh            (prints progress on stderr)
#
# The last line on stdout is the absolute path of qemu-system-x86_64.
# The build lives in ${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}/qemu-10.0.2-<hash>/
# where <hash> is the first 12 hex digits of sha256(patches + this script);
# when that build is complete the script only prints the path.  Next to the
# binary it writes <dir>/env:
#     QEMU=<dir>/install/bin/qemu-system-x86_64
#     QEMU_DATA_DIR=<dir>/install/share/qemu      (pass as: -L "$QEMU_DATA_DIR")
# and the build log <dir>/build.log.
#
# Needs root (or sudo) the first time: it adds the bookworm-backports apt
# source, installs build dependencies, firmware (seabios, qemu-system-data)
# and meson/pycotap from PyPI.
set -euo pipefail

QEMU_VERSION=10.0.2
DEB_SRC_VERSION='1:10.0.2+ds-2+deb13u1~bpo12+1'
TARBALL="qemu_${QEMU_VERSION}+ds.orig.tar.xz"
TARBALL_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
MESON_VERSION=1.5.0

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
shopt -s nullglob
PATCHES=("$HERE"/patches/*.patch)
shopt -u nullglob
[ ${#PATCHES[@]} -gt 0 ] || { echo "build.sh: no patches in $HERE/patches" >&2; exit 1; }

CACHE_ROOT="${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}"
mkdir -p "$CACHE_ROOT"
CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd)"
HASH="$(cat "${PATCHES[@]}" "$SCRIPT" | sha256sum | cut -c1-12)"
OUT="$CACHE_ROOT/qemu-$QEMU_VERSION-$HASH"
BIN="$OUT/install/bin/qemu-system-x86_64"
DATA="$OUT/install/share/qemu"
STAMP="$OUT/.complete"
LOG="$OUT/build.log"

say() { echo "build.sh: $*" >&2; }

if [ -f "$STAMP" ] && [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

# One build per hash at a time; a second caller waits and then finds it done.
exec 9>"$CACHE_ROOT/.qemu-$HASH.lock"
flock 9
if [ -f "$STAMP" ] && [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
        say "not root and no sudo: cannot install packages (will try without)"; fi
fi
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)

rm -rf "$OUT"
mkdir -p "$OUT"
: > "$LOG"

fail() {
    say "FAILED: $*"
    say "last lines of $LOG:"
    tail -n 40 "$LOG" >&2 || true
    exit 1
}
# run CMD...: output goes to the log; abort with its tail on failure
run() {
    echo "+ $*" >> "$LOG"
    "$@" >> "$LOG" 2>&1 || fail "$*"
}

# --- apt: backports source (QEMU 10.0.2 source + matching firmware) -------
BACKPORTS=/etc/apt/sources.list.d/backports.sources
apt_updated=0
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding $BACKPORTS"
    printf '%s\n' 'Types: deb deb-src' 'URIs: http://deb.debian.org/debian' \
        'Suites: bookworm-backports' 'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
        "${SUDO[@]}" tee "$BACKPORTS" >> "$LOG"
    run "${APT[@]}" update
    apt_updated=1
fi

BUILD_DEPS=(build-essential ninja-build pkg-config libglib2.0-dev libpixman-1-dev
            libfdt-dev flex bison patch xz-utils python3 python3-venv)
missing=()
for p in "${BUILD_DEPS[@]}" seabios; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$p")
done
# firmware/option ROMs (linuxboot_dma.bin, ...) of the same QEMU version
qsd="$(dpkg-query -W -f='${Version}' qemu-system-data 2>/dev/null || true)"
if [ ${#missing[@]} -gt 0 ] || [ "$qsd" != "${DEB_SRC_VERSION}" ]; then
    say "installing packages: ${missing[*]} qemu-system-data"
    [ $apt_updated = 1 ] || run "${APT[@]}" update
    [ ${#missing[@]} -eq 0 ] || run "${APT[@]}" install -y --no-install-recommends "${missing[@]}"
    run "${APT[@]}" install -y --no-install-recommends -t bookworm-backports \
        "qemu-system-data=${DEB_SRC_VERSION}"
fi

# --- python: meson and pycotap (the +ds tarball bundles no meson) ----------
PY="$(command -v python3)"
if ! "$PY" -c "import mesonbuild.coredata as c, pycotap, sys; sys.exit(c.version != '$MESON_VERSION')" \
        >/dev/null 2>&1; then
    say "pip install meson==$MESON_VERSION pycotap"
    echo "+ $PY -m pip install meson==$MESON_VERSION pycotap" >> "$LOG"
    "$PY" -m pip install --quiet "meson==$MESON_VERSION" pycotap >> "$LOG" 2>&1 ||
        run "$PY" -m pip install --quiet --break-system-packages \
            "meson==$MESON_VERSION" pycotap
fi

# --- source tarball (shared by all builds in the cache) ---------------------
SRCDIR="$CACHE_ROOT/qemu-src"
mkdir -p "$SRCDIR"
tarball_ok() { echo "$TARBALL_SHA256  $SRCDIR/$TARBALL" | sha256sum -c --status 2>/dev/null; }
if ! tarball_ok; then
    say "downloading $TARBALL"
    dl="$(mktemp -d "$SRCDIR/dl.XXXXXX")"
    # Only the orig tarball is fetched: the .dsc and debian tarball of this
    # backport are not on the mirror, so apt-get exits non-zero; what counts
    # is the tarball and its checksum.
    for attempt in 1 2; do
        (cd "$dl" && "${APT[@]}" source --download-only "qemu=$DEB_SRC_VERSION") >> "$LOG" 2>&1 || true
        [ -f "$dl/$TARBALL" ] && break
        # stale package lists? refresh once and retry
        [ $apt_updated = 1 ] && break
        run "${APT[@]}" update
        apt_updated=1
    done
    [ -f "$dl/$TARBALL" ] && mv "$dl/$TARBALL" "$SRCDIR/$TARBALL"
    rm -rf "$dl"
    tarball_ok || fail "could not download $TARBALL (or checksum mismatch)"
fi

# --- extract, patch, configure, build, install -----------------------------
say "building QEMU $QEMU_VERSION in $OUT (log: $LOG)"
run tar -C "$OUT" -xf "$SRCDIR/$TARBALL"
SRC="$OUT/qemu-$QEMU_VERSION"
[ -d "$SRC" ] || fail "tarball did not unpack to $SRC"
for p in "${PATCHES[@]}"; do
    echo "+ patch -p1 < $p" >> "$LOG"
    patch -d "$SRC" -p1 --forward --batch < "$p" >> "$LOG" 2>&1 || fail "patch $p"
done
# The +ds tarball has no edk2 firmware blobs; do not try to unpack them.
sed -i 's/^\(\s*unpack_edk2_blobs\s*=\s*\)bzip2\.found()/\1false/' "$SRC/meson.build"
grep -q 'unpack_edk2_blobs = false$' "$SRC/meson.build" ||
    fail "could not disable edk2 blob unpacking in meson.build"

mkdir -p "$OUT/build"
cd "$OUT/build"
run "$SRC/configure" \
    --prefix="$OUT/install" \
    --python="$PY" \
    --target-list=x86_64-softmmu \
    --without-default-features \
    --enable-kvm --enable-tcg \
    --enable-vhost-user \
    --enable-tpm \
    --enable-fdt=system \
    --disable-docs --disable-rust --disable-tools \
    --disable-install-blobs --disable-download
grep -q '^CONFIG_VHOST_USER_TPM=y' x86_64-softmmu-config-devices.mak ||
    fail "CONFIG_VHOST_USER_TPM is not enabled in this configuration"
say "compiling (a few minutes)"
run ninja -j"$(nproc)"
run ninja install
[ -x "$BIN" ] || fail "no $BIN after install"

# Firmware: QEMU looks in its own data dir; fill it from Debian's seabios and
# qemu-system-data (without overwriting what QEMU installed itself).
mkdir -p "$DATA"
for f in /usr/share/seabios/* /usr/share/qemu/*; do
    name="$(basename "$f")"
    [ -e "$f" ] && [ ! -e "$DATA/$name" ] || continue
    case "$name" in firmware|vhost-user) continue ;; esac
    cp -rL "$f" "$DATA/$name"
done
for f in bios-256k.bin linuxboot_dma.bin kvmvapic.bin; do
    [ -e "$DATA/$f" ] || fail "firmware $f missing from $DATA"
done

"$BIN" -device help 2>>"$LOG" | grep -q '"vhost-user-tpm-pci"' ||
    fail "vhost-user-tpm-pci is not in '$BIN -device help'"
# tpm-crb + the swtpm ("emulator") backend: the baseline the guest benchmark compares with.
"$BIN" -device help 2>>"$LOG" | grep -q '"tpm-crb"' ||
    fail "tpm-crb is not in '$BIN -device help'"

printf 'QEMU=%s\nQEMU_DATA_DIR=%s\n' "$BIN" "$DATA" > "$OUT/env"
# The sources and objects are not needed any more.
cd "$OUT"
rm -rf "$SRC" "$OUT/build"
touch "$STAMP"
say "done: $BIN (firmware: -L $DATA; env: $OUT/env)"
echo "$BIN"
