#!/bin/sh
# Install the Debian packages sendwarden and its tests need, only when some are missing.
# mariadb-server: the tests of the [directory] SQL source start a private MariaDB.
# postfix is preseeded with "No configuration": tests start private instances from their
# own config directories and never touch the system's Postfix. chromium: headless browser
# tests of the support page (--no-install-recommends keeps it to its libraries).
set -eu
# --runtime (make install): only what a production MTA host needs to build and run
# sendwarden (pymilter compiles against libmilter); no Redis, PostgreSQL or test tools.
RUNTIME="libmilter-dev python3-venv build-essential python3-dev"
PACKAGES="redis-server postfix sasl2-bin libsasl2-modules swaks postgresql mariadb-server openssl chromium $RUNTIME"
[ "${1:-}" = "--runtime" ] && PACKAGES="$RUNTIME"
missing=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages:$missing"
case "$missing" in *postfix*)
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections;;
esac
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
