#!/usr/bin/env bash
# Check the QEMU patch series in qemu/patches/ the way a QEMU maintainer would:
#   * QEMU 10.0.2's scripts/checkpatch.pl reports no error and no warning on any patch
#     (except the one known warning listed below),
#   * every patch is git format-patch output with a subject and a Signed-off-by line.
#
# Usage: qemu/checkpatch.sh          (exit 0 when the series is clean)
#
# checkpatch.pl is taken from the QEMU source tarball that qemu/build.sh caches in
# ${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}/qemu-src/ and is kept next to it after the first
# run (extracting one file from the tarball takes a few seconds). Needs perl only.
# Called by `cargo test` (e2e/tests/qemu_patches.rs).
set -euo pipefail

QEMU_VERSION=10.0.2
TARBALL="qemu_${QEMU_VERSION}+ds.orig.tar.xz"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRCDIR="${VTPM_CACHE:-$HOME/.cache/vhost-vtpm}/qemu-src"
CHECKPATCH="$SRCDIR/checkpatch-$QEMU_VERSION.pl"

# The one warning the series keeps on purpose: the placeholder patch for VIRTIO_ID_TPM
# edits include/standard-headers/ by hand, because no device ID is assigned yet and so
# there is no Linux header to import with scripts/update-linux-headers.sh (see README.md).
ALLOWED_SUBJECT='include/standard-headers: add VIRTIO_ID_TPM (placeholder)'
ALLOWED_WARNING='imported from Linux, are you using scripts/update-linux-headers.sh?'

if [ ! -f "$CHECKPATCH" ]; then
    [ -f "$SRCDIR/$TARBALL" ] ||
        { echo "checkpatch.sh: no $SRCDIR/$TARBALL: run qemu/build.sh (or scripts/setup.sh) first" >&2; exit 2; }
    tmp="$(mktemp -d "$SRCDIR/checkpatch.XXXXXX")"
    tar -C "$tmp" -xJf "$SRCDIR/$TARBALL" "qemu-$QEMU_VERSION/scripts/checkpatch.pl"
    mv "$tmp/qemu-$QEMU_VERSION/scripts/checkpatch.pl" "$CHECKPATCH"
    rm -rf "$tmp"
fi

shopt -s nullglob
patches=("$HERE"/patches/*.patch)
[ ${#patches[@]} -gt 0 ] || { echo "checkpatch.sh: no patches in $HERE/patches" >&2; exit 1; }

bad=0
for p in "${patches[@]}"; do
    name="$(basename "$p")"
    # The commit message: from the mail header to the '---' line before the diffstat.
    msg="$(sed -n '/^---$/q;p' "$p")"
    # The Subject header, unfolded (format-patch wraps long ones onto ' '-led lines).
    subject="$(awk '/^Subject: /{s=$0; f=1; next} f && /^ /{s=s $0; next} {f=0} /^$/{exit}
                    END{print s}' "$p" | sed -n 's/^Subject: \[PATCH[^]]*\] //p')"
    problems=()
    grep -q '^From [0-9a-f]\{40\} ' "$p" || problems+=("not git format-patch output (no 'From <sha>' line)")
    [ -n "$subject" ] || problems+=("no 'Subject: [PATCH ...]' line")
    grep -Eq '^Signed-off-by: .+ <[^>]+@[^>]+>$' <<<"$msg" || problems+=("no Signed-off-by line")

    out="$(perl "$CHECKPATCH" --no-tree --color=never "$p" 2>&1)" || true
    totals="$(grep -E '^total: [0-9]+ errors, [0-9]+ warnings' <<<"$out" | tail -n 1)"
    if [ -z "$totals" ]; then
        problems+=("checkpatch.pl gave no verdict")
    else
        errors="$(sed -E 's/^total: ([0-9]+) errors.*/\1/' <<<"$totals")"
        warnings="$(sed -E 's/^total: [0-9]+ errors, ([0-9]+) warnings.*/\1/' <<<"$totals")"
        allowed=0
        if [ "$subject" = "$ALLOWED_SUBJECT" ]; then
            allowed="$(grep -cF "WARNING: added, moved or deleted file(s) $ALLOWED_WARNING" <<<"$out" || true)"
        fi
        [ "$errors" -eq 0 ] || problems+=("checkpatch.pl: $errors error(s)")
        [ "$((warnings - allowed))" -eq 0 ] || problems+=("checkpatch.pl: $((warnings - allowed)) warning(s)")
    fi

    if [ ${#problems[@]} -eq 0 ]; then
        echo "ok   $name"
    else
        bad=1
        echo "FAIL $name"
        printf '     %s\n' "${problems[@]}"
        grep -qE '^(ERROR|WARNING)' <<<"$out" && sed 's/^/     | /' <<<"$out"
    fi
done
exit $bad
