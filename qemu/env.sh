# Source this file (bash):   . qemu/env.sh
# Builds QEMU with the vhost-user-tpm device if the cached build is missing
# (see build.sh), then exports:
#   QEMU           absolute path of qemu-system-x86_64
#   QEMU_DATA_DIR  firmware/data directory, for "-L $QEMU_DATA_DIR"
# Honours VTPM_CACHE like build.sh.
_vtpm_qemu_bin="$("$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/build.sh" | tail -n 1)"
if [ -n "$_vtpm_qemu_bin" ] && [ -f "${_vtpm_qemu_bin%/install/bin/qemu-system-x86_64}/env" ]; then
    set -a
    . "${_vtpm_qemu_bin%/install/bin/qemu-system-x86_64}/env"
    set +a
else
    echo "qemu/env.sh: QEMU build failed" >&2
fi
unset _vtpm_qemu_bin
