#!/bin/bash
# Checks of the upstream (in-tree) shape of tpm_virtio, against Debian's 6.1
# kernel source (linux-source-6.1) and 6.1 headers (linux-headers-amd64):
#
#   1. the committed 0001-tpm-add-virtio-TPM-driver.patch is what
#      make-patch.sh makes from ../tpm_virtio.c today;
#   2. scripts/checkpatch.pl --strict finds nothing in the patch, nor in
#      ../tpm_virtio.c itself (--no-tree -f); scripts/kernel-doc -Werror
#      finds nothing in either driver file;
#   3. the patch applies to the pristine drivers/char/tpm and the patched
#      directory builds tpm_virtio.ko as an external module against the 6.1
#      headers, next to the real private tpm.h, with CONFIG_TCG_VIRTIO=m and
#      only the Makefile's TCG_VIRTIO line, W=1, no warnings.
#
#   ./check.sh        # exits non-zero and says which check failed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_name=0001-tpm-add-virtio-TPM-driver.patch
# shellcheck source=kernel-src.sh
. "$here/kernel-src.sh"
ksrc_prepare

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "check: FAILED: $*" >&2; failed=1; }

echo "== kernel source: $ksrc ($ksrc_pkg $ksrc_version)"

# 1. patch is current
echo "== patch is current"
"$here/make-patch.sh" "$work/new" >/dev/null
if ! cmp -s "$work/new/$patch_name" "$here/$patch_name"; then
    diff -u "$here/$patch_name" "$work/new/$patch_name" | head -n 40 >&2 || true
    fail "$patch_name is stale: run guest-driver/linux/upstream/make-patch.sh and commit it"
fi

# 2. checkpatch and kernel-doc
checkpatch() {
    local out
    if ! out=$(perl "$ksrc/scripts/checkpatch.pl" --strict --no-tree "$@" 2>&1) ||
       ! grep -q '^total: 0 errors, 0 warnings, 0 checks' <<<"$out"; then
        echo "$out" >&2
        fail "checkpatch --strict $*"
    else
        grep '^total:' <<<"$out"
    fi
}
echo "== checkpatch --strict: $patch_name"
checkpatch "$here/$patch_name"
echo "== checkpatch --strict -f: tpm_virtio.c"
checkpatch -f "$here/../tpm_virtio.c"

mkdir -p "$work/tree"
(cd "$work/tree" && mkdir -p drivers/char && cp -r "$ksrc/drivers/char/tpm" drivers/char/ &&
    cp "$ksrc/MAINTAINERS" .)
if ! git -C "$work/tree" apply --whitespace=error "$here/$patch_name"; then
    fail "$patch_name does not apply to $ksrc_pkg $ksrc_version"
fi
tpmdir=$work/tree/drivers/char/tpm

echo "== kernel-doc -Werror"
for f in "$here/../tpm_virtio.c" "$tpmdir/tpm_virtio.c"; do
    [[ -f $f ]] || continue
    if ! perl "$ksrc/scripts/kernel-doc" -none -Werror "$f"; then
        fail "kernel-doc $f"
    fi
done

# 3. in-tree compile against the 6.1 headers
echo "== in-tree build (drivers/char/tpm with the patch, real tpm.h)"
kdir=
for d in /usr/src/linux-headers-6.1.*-amd64; do
    [[ -f $d/Makefile && -f $d/.config ]] && kdir=$d
done
if [[ -z $kdir ]]; then
    fail "no /usr/src/linux-headers-6.1.*-amd64 (apt-get install linux-headers-amd64)"
elif [[ -f $tpmdir/tpm_virtio.c ]]; then
    hver=$(dpkg-query -S "$kdir" 2>/dev/null | cut -d: -f1 | head -n 1)
    hver=$(dpkg-query -W -f='${Version}' "$hver" 2>/dev/null || true)
    if [[ -n $hver && $hver != "$ksrc_version" ]]; then
        echo "note: headers $kdir are $hver, source is $ksrc_version" >&2
    fi
    # Only the driver: kbuild reads Kbuild before Makefile, so the other
    # drivers (obj-$(CONFIG_...) with Debian's config) stay out.
    grep -E '^obj-\$\(CONFIG_TCG_VIRTIO\)' "$tpmdir/Makefile" > "$tpmdir/Kbuild" ||
        fail "the patched Makefile has no CONFIG_TCG_VIRTIO line"
    log=$work/build.log
    if ! make -C "$kdir" M="$tpmdir" CONFIG_TCG_VIRTIO=m W=1 modules >"$log" 2>&1; then
        cat "$log" >&2
        fail "in-tree build against $kdir"
    elif grep -Eiq '(warning|error)[: ]' "$log"; then
        cat "$log" >&2
        fail "warnings in the in-tree build against $kdir"
    elif [[ ! -f $tpmdir/tpm_virtio.ko ]]; then
        cat "$log" >&2
        fail "the in-tree build made no tpm_virtio.ko"
    else
        echo "   ok: tpm_virtio.ko ($(modinfo -F vermagic "$tpmdir/tpm_virtio.ko"))"
        built=$(find "$tpmdir" -name '*.ko' | wc -l)
        ((built == 1)) || fail "the in-tree build made $built modules, expected only tpm_virtio.ko"
    fi
fi

if ((failed)); then
    echo "check: FAILED" >&2
    exit 1
fi
echo "check: ok"
