# shellcheck shell=bash
# Sourced by make-patch.sh and check.sh: the pieces of Debian's 6.1 kernel
# source (package linux-source-6.1, /usr/src/linux-source-6.1.tar.xz) the
# upstream patch is made against and checked with, extracted once into
#   ${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}/linux-src-<package version>/
# Sets $ksrc (that directory) and $ksrc_version (the package version).

ksrc_pkg=linux-source-6.1
ksrc_tarball=/usr/src/linux-source-6.1.tar.xz
# Everything the patch touches or the checks run, relative to the tree.
ksrc_files=(
    MAINTAINERS
    drivers/char/tpm
    include/uapi/linux/virtio_ids.h
    scripts/checkpatch.pl
    scripts/spelling.txt
    scripts/const_structs.checkpatch
    scripts/kernel-doc
)

ksrc_prepare() {
    ksrc_version=$(dpkg-query -W -f='${Version}' "$ksrc_pkg" 2>/dev/null || true)
    if [[ -z $ksrc_version || ! -f $ksrc_tarball ]]; then
        echo "$ksrc_pkg is not installed (apt-get install $ksrc_pkg; scripts/setup.sh does)" >&2
        return 1
    fi
    local cache=${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}
    ksrc=$cache/linux-src-$ksrc_version
    local f missing=0
    for f in "${ksrc_files[@]}"; do
        [[ -e $ksrc/$f ]] || missing=1
    done
    ((missing)) || return 0
    mkdir -p "$cache"
    local tmp top
    tmp=$(mktemp -d "$cache/.linux-src.XXXXXX")
    # Debian's tarball holds one directory named as the tarball itself. (Listing it to find
    # out, piped into head, killed tar with SIGPIPE and ended the script under pipefail.)
    top=$(basename "$ksrc_tarball" .tar.xz)
    echo "extracting ${ksrc_files[*]} from $ksrc_tarball" >&2
    if ! tar -xJf "$ksrc_tarball" -C "$tmp" --strip-components=1 \
            "${ksrc_files[@]/#/$top/}"; then
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$ksrc"
    mv "$tmp" "$ksrc"
}
