"""DKIM private keys: read and checked when the config loads (a missing or unreadable
key stops the start, never a message), generated with dkimpy's ``dknewkey`` helper
(openssl), and published as a DNS TXT record."""

from __future__ import annotations

import base64
import os
import pwd
import re
import subprocess
from pathlib import Path
from typing import Any

from dkim import dknewkey
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

MIN_KEY_BITS = 1024  # receivers (dkimpy's default minkey among them) refuse smaller keys
OPENSSL = dknewkey.OPENSSL_BINARY
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and the fix."""


def check_selector(selector: str) -> str:
    """A selector is one or more DNS labels (it becomes ``SELECTOR._domainkey.DOMAIN``)."""
    if not _SELECTOR.fullmatch(selector):
        raise ValueError(f"{selector!r} is not a DKIM selector (DNS labels: letters, digits, '-')")
    return selector


def parse_private_key(pem: bytes, source: str = "the key") -> dict[str, Any]:
    """dkimpy's parsed RSA key; KeyFileError when it is not one or is too small."""
    try:
        key: dict[str, Any] = parse_pem_private_key(pem.replace(b"\r\n", b"\n"))
    except (UnparsableKeyError, ValueError, IndexError, TypeError):
        raise KeyFileError(
            f"{source} is not a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted)"
        ) from None
    bits = int(key["modulus"]).bit_length()
    if bits < MIN_KEY_BITS:
        raise KeyFileError(
            f"{source} is a {bits}-bit key; receivers refuse keys under {MIN_KEY_BITS} bits"
        )
    return key


def read_private_key(path: str | os.PathLike[str]) -> bytes:
    """The PEM bytes of a usable DKIM private key file."""
    try:
        pem = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist (create it with: sendwarden dkim keygen "
            f"DOMAIN --selector SELECTOR --key-file {path})"
        ) from None
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None
    parse_private_key(pem, f"key file {path}")
    return pem


def public_key_record(pem: bytes) -> str:
    """The TXT record value to publish at ``SELECTOR._domainkey.DOMAIN``."""
    der = _openssl(["pkey", "-pubout", "-outform", "DER"], pem)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def generate_key(path: str | os.PathLike[str], owner: str | None = None) -> bytes:
    """Write a new 2048-bit RSA key to ``path`` (mode 0600) and return its PEM.

    ``owner`` is the user the milter runs as (``postfix`` with the shipped systemd
    unit): the key file, and the directory when this call created it, become its.
    Refuses to overwrite: replacing a published key breaks the signatures of mail
    still in flight, so a rotation takes a new selector and a new file.
    """
    target = Path(path)
    account = _user(owner) if owner else None
    if target.exists():
        raise KeyFileError(f"{target} already exists; rotate keys with a new selector and file")
    created_directory = not target.parent.exists()
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise KeyFileError(f"cannot create directory {target.parent}: {error.strerror}") from None
    old_umask = os.umask(0o077)
    try:
        dknewkey.GenRSAKeys(str(target), verbose=False)
    except FileNotFoundError:
        raise KeyFileError(f"{OPENSSL} not found: install the openssl package") from None
    except subprocess.CalledProcessError as error:
        raise KeyFileError(f"openssl could not generate a key ({error})") from None
    finally:
        os.umask(old_umask)
    target.chmod(0o600)
    if account is not None:
        try:
            os.chown(target, account.pw_uid, account.pw_gid)
            if created_directory:
                os.chown(target.parent, account.pw_uid, account.pw_gid)
        except OSError as error:
            raise KeyFileError(
                f"wrote {target} but cannot give it to {owner}: {error.strerror} (run as root)"
            ) from None
    return read_private_key(target)


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise KeyFileError(f"no user {name!r} on this system") from None


def _openssl(arguments: list[str], data: bytes) -> bytes:
    try:
        done = subprocess.run(
            [OPENSSL, *arguments], input=data, capture_output=True, check=False, timeout=30
        )
    except FileNotFoundError:
        raise KeyFileError(f"{OPENSSL} not found: install the openssl package") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise KeyFileError(f"openssl {arguments[0]} failed: {detail[0] if detail else '?'}")
    return done.stdout
