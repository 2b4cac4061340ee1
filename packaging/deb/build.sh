#!/usr/bin/env bash
# Builds the Debian package of the host side (packaging/README.md): the release binaries, man
# pages generated from their --help, the systemd units, the docs and the maintainer scripts,
# assembled with dpkg-deb. Prints the .deb's path as its last line of stdout; fast when nothing
# changed (cargo's no-op build, then the previous .deb if its inputs are the same).
#
#   packaging/deb/build.sh [OUTPUT_DIR]     # default: $CARGO_TARGET_DIR or target/, + /deb
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$PWD

# The operator-facing binaries (not vtpm-demo, vtpm-bench: those are the project's own).
BINARIES=(vhost-vtpm vtpm-state vtpm-host vtpm-ca vtpm-migrate vtpm-verify)
PACKAGE=vhost-vtpm
MAINTAINER="vhost-vtpm developers <vhost-vtpm@example.invalid>"

# shellcheck source=../../scripts/lib/apt.sh
source scripts/lib/apt.sh
apt_install dpkg-dev help2man binutils python3 \
  pkg-config libssl-dev libtpms-dev libtss2-dev libsqlite3-dev   # what the build links

target_dir=${CARGO_TARGET_DIR:-$root_dir/target}
out_dir=${1:-$target_dir/deb}
mkdir -p "$out_dir"

# The same build as scripts/setup.sh, so a no-op after it and the package holds the binaries
# the test suite ran. A narrower build (`-p vhost-vtpm ...`) resolves the dependencies'
# features without the dev-dependencies, so it would rebuild, and replace, the binaries that
# tests running beside it use. VTPM_DEB_CARGO_ARGS overrides (e.g. "-p vhost-vtpm -p ...").
read -r -a cargo_args <<< "${VTPM_DEB_CARGO_ARGS:---workspace --all-targets}"
echo "deb: cargo build --release ${cargo_args[*]}" >&2
cargo build --release --quiet "${cargo_args[@]}" >&2
for b in "${BINARIES[@]}"; do
  [ -x "$target_dir/release/$b" ] || { echo "deb: cargo built no $target_dir/release/$b" >&2; exit 1; }
done

version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="vhost-vtpm"))')
deb_version="$version-1"
arch=$(dpkg --print-architecture)
deb="$out_dir/${PACKAGE}_${deb_version}_${arch}.deb"

# Everything the package is made of; the same digest means the same package.
inputs_digest() {
  {
    for b in "${BINARIES[@]}"; do sha256sum "$target_dir/release/$b"; done
    find packaging README.md -type f -print0 | sort -z | xargs -0 sha256sum
    echo "$deb_version $arch"
  } | sha256sum | cut -d' ' -f1
}
digest=$(inputs_digest)
if [ -f "$deb" ] && [ "$(cat "$deb.inputs" 2>/dev/null)" = "$digest" ]; then
  echo "deb: $deb is up to date" >&2
  echo "$deb"
  exit 0
fi

# Reproducible dates: those of the last commit.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/root
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/$PACKAGE" "$pkg/etc/vhost-vtpm"

for b in "${BINARIES[@]}"; do
  install -m 0755 "$target_dir/release/$b" "$pkg/usr/bin/$b"
  # The release profile keeps line tables (debug = 1) for backtraces; the package does not.
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/$b"
done

# Man pages from --help, so they always match the CLI. A tool with subcommands gets each
# subcommand's --help (recursively: `vtpm-ca acl add`) as a section of its own page.
subcommands() {  # BIN [SUBCOMMAND...]: the subcommands its --help lists
  "$@" --help | awk '/^Commands:/{on=1; next} on && /^[^ ]/{on=0} on && $1 != "help" && NF {print $1}'
}
subcommand_sections() {  # BIN NAME [SUBCOMMAND...]
  local bin=$1 name=$2 s
  shift 2
  for s in $(subcommands "$bin" "$@"); do
    printf '.SS "%s"\n.nf\n' "$name $* $s" | sed 's/  */ /g'
    # Roff: escape backslashes and dashes, keep lines starting with . or ' literal.
    "$bin" "$@" "$s" --help | sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\&\\1/"
    printf '.fi\n'
    subcommand_sections "$bin" "$name" "$@" "$s"
  done
}
for b in "${BINARIES[@]}"; do
  bin="$pkg/usr/bin/$b"
  include=$work/$b.h2m
  : > "$include"
  if [ -n "$(subcommands "$bin")" ]; then
    { echo "[COMMANDS]"; subcommand_sections "$bin" "$b"; } > "$include"
  fi
  description=$("$bin" --help | head -n 1)
  include_opt=()
  [ -s "$include" ] && include_opt=(--include="$include")
  help2man --no-info --section=1 --source="vhost-vtpm $version" --manual="vhost-vtpm" \
    --name="${description%.}" "${include_opt[@]}" --output="$work/$b.1" "$bin"
  gzip -9n -c "$work/$b.1" > "$pkg/usr/share/man/man1/$b.1.gz"
done

install -m 0644 packaging/systemd/vhost-vtpm@.socket packaging/systemd/vhost-vtpm@.service \
  "$pkg/lib/systemd/system/"
install -m 0644 packaging/deb/vhost-vtpm.conf "$pkg/etc/vhost-vtpm/vhost-vtpm.conf"
install -m 0644 README.md "$pkg/usr/share/doc/$PACKAGE/README.md"
install -m 0644 packaging/README.md "$pkg/usr/share/doc/$PACKAGE/README.Debian"
install -m 0644 packaging/deb/copyright "$pkg/usr/share/doc/$PACKAGE/copyright"
{
  echo "$PACKAGE ($deb_version) unstable; urgency=medium"
  echo
  echo "  * Built from the vhost-vtpm workspace, $(git describe --always --dirty 2>/dev/null || echo 'outside git')."
  echo "    The project's CHANGELOG.md lists its changes."
  echo
  echo " -- $MAINTAINER  $(date -R -u -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$pkg/usr/share/doc/$PACKAGE/changelog.Debian.gz"

install -m 0755 packaging/deb/postinst packaging/deb/postrm "$pkg/DEBIAN/"
echo /etc/vhost-vtpm/vhost-vtpm.conf > "$pkg/DEBIAN/conffiles"

# Depends from the libraries the binaries link (dpkg-shlibdeps needs a debian/control).
mkdir -p "$work/src/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PACKAGE" "$PACKAGE" > "$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O $(printf -- "-e$pkg/usr/bin/%s " "${BINARIES[@]}") 2>"$work/shlibdeps.err" |
  sed -n 's/^shlibs:Depends=//p') || { cat "$work/shlibdeps.err" >&2; exit 1; }
[ -n "$depends" ] || { echo "deb: dpkg-shlibdeps found no dependencies" >&2; cat "$work/shlibdeps.err" >&2; exit 1; }

installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: $PACKAGE
Version: $deb_version
Architecture: $arch
Maintainer: $MAINTAINER
Installed-Size: $installed_size
Depends: $depends
Suggests: swtpm, tpm2-tools
Section: admin
Priority: optional
Homepage: https://example.invalid/vhost-vtpm
Description: virtual TPM 2.0 for QEMU guests, served over vhost-user
 A per-VM daemon (vhost-vtpm) serves a virtio TPM device to QEMU's
 vhost-user-tpm-pci: TPM commands run in libtpms linked into the daemon,
 the state is stored encrypted and durable, the daemon confines itself with
 seccomp and Landlock. systemd socket units start one daemon per VM
 (systemctl start vhost-vtpm@VM.socket).
 .
 Also included: vtpm-state (the state directory tool), vtpm-host (host TPM
 enrolment, vEK certificates), vtpm-ca (the local CA), vtpm-migrate (the
 migration controller) and vtpm-verify (deep attestation verifier).
CONTROL
(cd "$pkg" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
  sort -z | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"
find "$pkg" -type d -exec chmod 0755 {} +
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb.tmp" >&2
mv "$deb.tmp" "$deb"
echo "$digest" > "$deb.inputs"
echo "$deb"
