# Sourced by the project's set-up and build scripts (bash): apt_install installs the Debian
# packages it is given that are not installed yet, and nothing when all are. Progress goes to
# stderr, so a script's stdout stays its answer. Root, or sudo.
#
#   apt_install [--no-install-recommends] PACKAGE...

apt_install() {
  local flags=() missing=() p sudo=""
  if [ "${1:-}" = --no-install-recommends ]; then flags=("$1"); shift; fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "${0##*/}: installing ${missing[*]}" >&2
  local apt=($sudo apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  "${apt[@]}" update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${flags[@]}" "${missing[@]}" >&2
}
