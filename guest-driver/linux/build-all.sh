#!/bin/bash
# Build tpm_virtio against every installed Debian kernel headers tree
# (/usr/src/linux-headers-*-amd64) and fail on any compiler/modpost warning
# or error.
#
#   ./build-all.sh                 # W=1 (extra warnings) by default
#   W= ./build-all.sh              # default kernel warning set only
#   OUT_DIR=/tmp/x ./build-all.sh  # where <kernel-version>/tpm_virtio.ko go
#                                  # (default: ./build next to this script)
set -euo pipefail

src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out_dir=${OUT_DIR:-$src_dir/build}
warn_level=${W-1}

shopt -s nullglob
trees=()
for d in /usr/src/linux-headers-*-amd64; do
    [[ -f $d/Makefile && -f $d/.config ]] && trees+=("$d")
done
if ((${#trees[@]} == 0)); then
    echo "build-all: no /usr/src/linux-headers-*-amd64 found;" \
         "install linux-headers-amd64 (and the bookworm-backports one)" >&2
    exit 1
fi

failed=0
for kdir in "${trees[@]}"; do
    kver=${kdir#/usr/src/linux-headers-}
    work=$(mktemp -d)
    cp -r "$src_dir/tpm_virtio.c" "$src_dir/Makefile" "$src_dir/Kbuild" "$src_dir/compat" "$work/"
    log=$work/build.log
    echo "== $kver ($kdir)"
    if ! make -C "$kdir" M="$work" ${warn_level:+W=$warn_level} modules >"$log" 2>&1; then
        cat "$log"
        echo "build-all: $kver: BUILD FAILED" >&2
        failed=1
    elif grep -Eiq '(warning|error)[: ]' "$log"; then
        cat "$log"
        echo "build-all: $kver: warnings or errors in the build output" >&2
        failed=1
    else
        mkdir -p "$out_dir/$kver"
        ko=$(ls "$work"/tpm_virtio.ko 2>/dev/null || true)
        if [[ -z $ko ]]; then
            cat "$log"
            echo "build-all: $kver: no tpm_virtio.ko produced" >&2
            failed=1
        else
            cp "$ko" "$out_dir/$kver/"
            echo "   ok: $out_dir/$kver/tpm_virtio.ko ($(modinfo -F vermagic "$ko"))"
        fi
    fi
    rm -rf "$work"
done

if ((failed)); then
    echo "build-all: FAILED" >&2
    exit 1
fi
echo "build-all: ${#trees[@]} kernel(s) built without warnings"
