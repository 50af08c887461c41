#!/usr/bin/env bash
# Downloads Debian packages and unpacks them into a directory, without installing anything
# system-wide: `apt-get download` into a temporary directory, then `dpkg-deb -x` of each .deb.
# The tools the tests need from Debian (promtool, wrk) are put into ./.venv this way.
#
#   bash scripts/fetch-deb.sh DEST PACKAGE[=VERSION] [PACKAGE[=VERSION] ...]
#
# Callers check the upstream version of what they unpack rather than pin Debian revisions,
# which the archive replaces with security updates.
#
# As root, an `apt-get update` is run once when a download fails (a fresh container has no
# package lists). Every failure exits non-zero with a message; nothing is skipped.
set -euo pipefail

die() {
    echo "fetch-deb: error: $*" >&2
    exit 1
}

[[ $# -ge 2 ]] || die "usage: fetch-deb.sh DEST PACKAGE[=VERSION]..."
dest="$1"
shift

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: $* come from Debian's archive (Debian/Ubuntu only)"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (package dpkg)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/aegis-fetch-deb.XXXXXX")" || die "mktemp -d failed"
trap 'rm -rf "$tmp"' EXIT
# As root, apt-get download drops privileges to _apt, which must be able to write here.
if [[ "$(id -u)" == 0 ]] && id _apt >/dev/null 2>&1; then
    chown _apt "$tmp" 2>/dev/null || true
fi

download() {
    (cd "$tmp" && apt-get download -q "$@") >"$tmp/apt.log" 2>&1
}

echo "fetch-deb: downloading $* (apt-get download, no install)"
if ! download "$@"; then
    if [[ "$(id -u)" == 0 ]]; then
        echo "fetch-deb: download failed; running apt-get update and retrying"
        apt-get update -q >"$tmp/apt-update.log" 2>&1 || {
            cat "$tmp/apt-update.log" >&2
            die "apt-get update failed"
        }
        download "$@" || {
            cat "$tmp/apt.log" >&2
            die "apt-get download $* failed after apt-get update (is Debian bookworm's main archive in the apt sources?)"
        }
    else
        cat "$tmp/apt.log" >&2
        die "apt-get download $* failed (if the package lists are missing, run 'apt-get update' as root)"
    fi
fi

shopt -s nullglob
debs=("$tmp"/*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq $# ]] || die "expected $# .deb files after apt-get download, found ${#debs[@]}"
mkdir -p "$dest" || die "cannot create $dest"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$dest" || die "dpkg-deb -x $deb failed"
done
echo "fetch-deb: unpacked into $dest"
