#!/bin/sh
# `make install`: sendwarden for production, with its runtime dependencies only (no
# Redis, PostgreSQL, Postfix or test tools). Idempotent: run it again to upgrade; an
# existing config is never overwritten. Everything comes from the Makefile's variables:
#   PREFIX       virtualenv, documentation          (default /opt/sendwarden)
#   SYSCONFDIR   sendwarden.toml skeleton           (default /etc/sendwarden)
#   UNITDIR      systemd units                      (default /etc/systemd/system)
#   PYTHON3      the interpreter of the virtualenv  (default /usr/bin/python3: every user
#                may run it, unlike a Python under /root)
#   SERVICE_GROUP  group that may read the config and the ledger (default sendwarden)
set -eu
cd "$(dirname "$0")/.."
: "${PREFIX:?}" "${SYSCONFDIR:?}" "${UNITDIR:?}" "${PYTHON3:?}" "${SERVICE_GROUP:?}"
ROOT=no
[ "$(id -u)" -eq 0 ] && ROOT=yes

say() { echo "install: $*"; }

# Debian packages needed at run time and to build pymilter (only when missing).
if [ "$ROOT" = yes ] && command -v dpkg-query >/dev/null; then
    ./scripts/install-system-deps.sh --runtime
fi

# The group that reads the config and the consent ledger (staff join it; the units
# run with it as their group).
if [ "$ROOT" = yes ] && ! getent group "$SERVICE_GROUP" >/dev/null; then
    say "creating system group $SERVICE_GROUP"
    groupadd --system "$SERVICE_GROUP"
fi

# The virtualenv, and sendwarden in it from a wheel built from this tree.
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    say "creating $PREFIX/venv with $PYTHON3"
    mkdir -p "$PREFIX"
    "$PYTHON3" -m venv "$PREFIX/venv"
fi
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
# The build tools live in the virtualenv (fetched once): no throw-away build
# environment to download on every run.
"$PREFIX/venv/bin/pip" install -q "setuptools>=68" wheel
"$PREFIX/venv/bin/pip" wheel -q --no-build-isolation --no-deps -w "$WHEELS" .
WHEEL=$(ls "$WHEELS"/sendwarden-*.whl)
"$PREFIX/venv/bin/pip" install -q "$WHEEL"
# Same version number, newer code: replace the package itself (dependencies stay).
"$PREFIX/venv/bin/pip" install -q --force-reinstall --no-deps "$WHEEL"
say "installed $("$PREFIX/venv/bin/sendwarden" --version) in $PREFIX/venv"

# Documentation the units' Documentation= points at.
DOC="$PREFIX/share/doc/sendwarden"
mkdir -p "$DOC"
cp README.md docs/*.md "$DOC/"
cp deploy/postfix-main.cf deploy/sendmail.mc deploy/sendwarden.example.toml "$DOC/"

# The config skeleton: root-owned, readable by the service group, never overwritten.
mkdir -p "$SYSCONFDIR"
if [ ! -e "$SYSCONFDIR/sendwarden.toml" ]; then
    cp deploy/sendwarden.example.toml "$SYSCONFDIR/sendwarden.toml"
    say "wrote $SYSCONFDIR/sendwarden.toml: edit it, then: sendwarden check-config --as-user postfix:sendwarden"
else
    say "kept $SYSCONFDIR/sendwarden.toml"
fi
chmod 0750 "$SYSCONFDIR"
chmod 0640 "$SYSCONFDIR/sendwarden.toml"
if [ "$ROOT" = yes ] && getent group "$SERVICE_GROUP" >/dev/null; then
    chgrp "$SERVICE_GROUP" "$SYSCONFDIR" "$SYSCONFDIR/sendwarden.toml"
fi

# systemd units, with this installation's paths and the shared sandboxing.
mkdir -p "$UNITDIR"
for unit in sendwarden sendwarden-alerts sendwarden-api; do
    awk -v prefix="$PREFIX" -v sysconf="$SYSCONFDIR" -v hardening=deploy/hardening.conf '
        /^@HARDENING@$/ { while ((getline line < hardening) > 0) print line; next }
        { gsub(/@PREFIX@/, prefix); gsub(/@SYSCONFDIR@/, sysconf); print }
    ' "deploy/$unit.service" > "$UNITDIR/$unit.service.new"
    chmod 0644 "$UNITDIR/$unit.service.new"
    mv "$UNITDIR/$unit.service.new" "$UNITDIR/$unit.service"
done
say "units in $UNITDIR: sendwarden.service, sendwarden-alerts.service, sendwarden-api.service"
if [ "$ROOT" = yes ] && [ -d /run/systemd/system ] && [ "$UNITDIR" = /etc/systemd/system ]; then
    systemctl daemon-reload
fi
say "done; next steps: $DOC/operations.md"
