#!/bin/sh
# Private Sendmail 8.17 and Exim 4.96 for the e2e suites, unpacked from Debian packages.
# Debian's sendmail-bin and exim4 conflict with postfix (all provide mail-transport-agent),
# so they are never installed: `apt-get download` fetches the packages by name, `dpkg -x`
# unpacks them into a private root under $SENDWARDEN_MTA_CACHE, and the tests run them in
# a private mount namespace (tests/support/private_root.py). Runs once; a finished root is
# marked with a .complete file.
set -eu
CACHE="${SENDWARDEN_MTA_CACHE:-/var/cache/sendwarden-tests}"
if [ "$(id -u)" -ne 0 ]; then
    echo "fetch-private-mtas: not root; the Sendmail and Exim e2e suites need root anyway"
    exit 0
fi
SENDMAIL_PACKAGES="sendmail-bin sendmail-cf sendmail-base m4 libwrap0"
EXIM_PACKAGES="exim4-daemon-heavy exim4-base exim4-config libidn12 libmariadb3 mariadb-common mysql-common libspf2-2 liblockfile1"

unpack() {  # NAME PACKAGES...
    name=$1; shift
    root="$CACHE/$name"
    [ -f "$root/.complete" ] && return 0
    rm -rf "$root"
    mkdir -p "$root/debs" "$root/root"
    # _apt cannot write into a root-owned directory: download where it may, then move.
    # A stale package list names versions the mirror no longer has: update once, retry.
    (cd "$root/debs" && apt-get download -q "$@" >/dev/null 2>&1) || {
        apt-get update -qq
        (cd "$root/debs" && apt-get download -q "$@" 2>&1 | grep -v "unsandboxed" || true)
    }
    for package in "$@"; do
        ls "$root/debs/${package}_"*.deb >/dev/null 2>&1 || {
            echo "fetch-private-mtas: could not download $package (apt-get update first?)" >&2
            exit 1
        }
    done
    for deb in "$root"/debs/*.deb; do dpkg -x "$deb" "$root/root"; done
    touch "$root/.complete"
    echo "unpacked a private $name into $root/root"
}

unpack sendmail $SENDMAIL_PACKAGES
# setgid makes the loader ignore LD_LIBRARY_PATH (libwrap.so.0 lives in the private root).
chmod g-s "$CACHE/sendmail/root/usr/libexec/sendmail/sendmail"
unpack exim $EXIM_PACKAGES
