#!/bin/bash
# Regenerate 0001-tpm-add-virtio-TPM-driver.patch: the driver as an in-tree
# drivers/char/tpm driver, as a git format-patch against Debian's 6.1 kernel
# source (linux-source-6.1).
#
#   ./make-patch.sh            # writes the patch next to this script
#   ./make-patch.sh OUT_DIR    # writes it into OUT_DIR instead (check.sh)
#
# The patch's drivers/char/tpm/tpm_virtio.c is ../tpm_virtio.c with the
# compat-header feature blocks resolved for the target kernel: 6.1 has no
# TPM_CHIP_FLAG_SYNC, so "#ifdef TPM_HAVE_CHIP_FLAG_SYNC" blocks are dropped
# and "#ifndef"/"#else" ones kept, leaving no compat macro in the in-tree
# driver.  Kconfig, Makefile and MAINTAINERS entries are added to the
# pristine files; the commit message is ./commit-msg.  Author and dates are
# fixed, so the output depends only on the inputs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
driver=$here/../tpm_virtio.c
out_dir=${1:-$here}
patch_name=0001-tpm-add-virtio-TPM-driver.patch
# shellcheck source=kernel-src.sh
. "$here/kernel-src.sh"
ksrc_prepare

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo=$work/linux

export GIT_AUTHOR_NAME="vhost-vtpm developers"
export GIT_AUTHOR_EMAIL="dev@example.invalid"
export GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME
export GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL
export GIT_AUTHOR_DATE="2026-12-01T00:00:00+00:00"
export GIT_COMMITTER_DATE=$GIT_AUTHOR_DATE
git_() { git -C "$repo" -c core.autocrlf=false -c commit.gpgsign=false "$@"; }

# The pristine files the patch touches.
mkdir -p "$repo/drivers/char/tpm"
cp "$ksrc/drivers/char/tpm/Kconfig" "$ksrc/drivers/char/tpm/Makefile" "$repo/drivers/char/tpm/"
cp "$ksrc/MAINTAINERS" "$repo/"
git_ init -q
git_ add -A
git_ commit -q -m "linux $ksrc_version (Debian $ksrc_pkg): pristine files"

# The driver, with TPM_HAVE_CHIP_FLAG_SYNC taken as undefined (Linux 6.1).
perl -e '
    my @st;    # one entry per open #if: [is ours, keep lines]
    sub keep { for (@st) { return 0 if $_->[0] && !$_->[1] } 1 }
    while (<STDIN>) {
        if (/^#\s*if(n?)def\s+TPM_HAVE_CHIP_FLAG_SYNC\b/) {
            push @st, [1, $1 eq "n" ? 1 : 0];
            next;
        }
        if (/^#\s*if/) { push @st, [0, 1]; print if keep(); next }
        if (/^#\s*else\b/ && @st && $st[-1][0]) {
            $st[-1][1] = !$st[-1][1];
            next;
        }
        if (/^#\s*endif\b/) {
            my $e = pop @st;
            next if $e->[0];
            print if keep();
            next;
        }
        print if keep();
    }
    die "unbalanced #if\n" if @st;
' < "$driver" > "$repo/drivers/char/tpm/tpm_virtio.c"
if grep -n 'TPM_HAVE_' "$repo/drivers/char/tpm/tpm_virtio.c" >&2; then
    echo "make-patch: compat macros left in the in-tree driver" >&2
    exit 1
fi

# Kconfig: after the last driver entry, before the st33zp24 source line.
perl -0pi -e '
    my $entry = join "\n",
        "config TCG_VIRTIO",
        "\ttristate \"TPM 2.0 over virtio\"",
        "\tdepends on VIRTIO",
        "\thelp",
        "\t  This driver supports a TPM 2.0 that a hypervisor exposes to a",
        "\t  virtual machine as a virtio device, for example the vhost-user",
        "\t  TPM of the vhost-vtpm project.  Commands and responses travel in",
        "\t  the requests of a single virtqueue.",
        "",
        "\t  To compile this driver as a module, choose M here; the module",
        "\t  will be called tpm_virtio.",
        "", "";
    s{^(source "drivers/char/tpm/st33zp24/Kconfig"\n)}{$entry$1}m
        or die "Kconfig: st33zp24 source line not found\n";
' "$repo/drivers/char/tpm/Kconfig"

# Makefile: after the other virtual TPM drivers.
perl -0pi -e '
    s{^(obj-\$\(CONFIG_TCG_FTPM_TEE\) \+= tpm_ftpm_tee\.o\n)}{$1obj-\$(CONFIG_TCG_VIRTIO) += tpm_virtio.o\n}m
        or die "Makefile: tpm_ftpm_tee line not found\n";
' "$repo/drivers/char/tpm/Makefile"

# MAINTAINERS: a section right after TPM DEVICE DRIVER (alphabetical).
perl -0pi -e '
    my $entry = join "\n",
        "TPM VIRTIO DRIVER",
        "M:\tvhost-vtpm developers <dev\@example.invalid>",
        "L:\tlinux-integrity\@vger.kernel.org",
        "L:\tvirtualization\@lists.linux-foundation.org",
        "S:\tMaintained",
        "F:\tdrivers/char/tpm/tpm_virtio.c",
        "", "";
    s{^(TPM DEVICE DRIVER\n(?:[A-Z]:\t.*\n)+\n)}{$1$entry}m
        or die "MAINTAINERS: TPM DEVICE DRIVER section not found\n";
' "$repo/MAINTAINERS"

git_ add -A
git_ commit -q -F "$here/commit-msg"
mkdir -p "$out_dir"
git_ format-patch -q -1 --no-signature --subject-prefix="RFC PATCH" \
    --stdout HEAD > "$out_dir/$patch_name"
echo "$out_dir/$patch_name"
