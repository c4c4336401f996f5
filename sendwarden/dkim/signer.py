"""DKIM-signs outbound mail From an account's own domain, after every rule passed.

The signer is the last check: the pipeline stops at the first refusal, so it only
runs for mail every other rule accepted, and it signs the headers as they will be
after the other checks' changes (a stripped header is not signed, an added one is).
The body hash is computed while the body streams past (:mod:`sendwarden.dkim.canon`);
dkimpy canonicalizes and formats the header; the RSA signature is OpenSSL's
(through ``cryptography``), ~20 times faster than dkimpy's pure-Python one. relaxed/relaxed
canonicalization survives the MTA refolding or re-spacing headers.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dkim
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from sendwarden.checks.base import Check
from sendwarden.config import Account, DkimKey
from sendwarden.dkim.canon import CRLF, RelaxedBodyHash, compress_blanks
from sendwarden.dkim.keys import KeyFileError, parse_private_key
from sendwarden.policy.accounts import is_listed
from sendwarden.policy.facts import Transaction
from sendwarden.policy.forged_headers import headers_after_removal
from sendwarden.policy.identity import MalformedHeader, account_owns, transaction_identity
from sendwarden.policy.verdict import Verdict

NAME = "dkim-sign"
HEADER_NAME = b"DKIM-Signature"
_NAME_LEN = len(HEADER_NAME)
ALGORITHM = b"rsa-sha256"
CANONICALIZATION = (b"relaxed", b"relaxed")
# Signed when present, bottom-most instance first; From is signed once more than it
# appears, so nobody can add a second From below the signature.
SIGNED_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "content-type",
    "content-transfer-encoding", "list-id", "list-unsubscribe", "list-unsubscribe-post",
)  # fmt: skip
OVERSIGNED_HEADERS = ("from",)
_SKIP = "skip"  # scratch marker: this message will not be signed, do not hash its body


@dataclass(frozen=True)
class SigningKey:
    """A configured key, parsed once at start-up."""

    domain: str
    selector: str
    signing_key: RSAPrivateKey = field(repr=False)

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes, source: str) -> SigningKey:
        parse_private_key(pem, source)  # the checks and clear errors of keys.py
        # dkimpy's parse checked it as before this used OpenSSL; OpenSSL's own RSA
        # validation costs ~0.25 s a key, minutes at start for a provider's domains.
        key = load_pem_private_key(
            pem.replace(b"\r\n", b"\n"), password=None, unsafe_skip_rsa_key_validation=True
        )
        if not isinstance(key, RSAPrivateKey):
            raise KeyFileError(f"{source} is not an RSA private key")
        return cls(domain, selector, key)

    @classmethod
    def from_config(cls, entry: DkimKey) -> SigningKey:
        source = f"key file {entry.key_file.path}"
        return cls.from_pem(entry.domain, entry.selector, entry.key_file.pem, source)


def key_for_domain(domain: str, keys: Mapping[str, SigningKey]) -> SigningKey | None:
    """The key of the domain itself, else of its nearest parent (which DMARC's relaxed
    alignment accepts for a subdomain's mail)."""
    while domain:
        if (key := keys.get(domain)) is not None:
            return key
        _, _, domain = domain.partition(".")
    return None


def choose_key(
    from_domains: Iterable[str], account: Account, keys: Mapping[str, SigningKey]
) -> SigningKey | None:
    """The key that signs: for the first From domain the account owns that has one,
    and only a key whose domain the account owns too."""
    for domain in from_domains:
        key = key_for_domain(domain, keys)
        if key is not None and account_owns(account, domain) and account_owns(account, key.domain):
            return key
    return None


def dkim_signature(
    headers: Sequence[tuple[str, str]], body_hash: bytes, key: SigningKey, timestamp: int
) -> str:
    """The DKIM-Signature header value (folded with LF, as libmilter wants) over
    ``headers`` as the milter saw them and a precomputed relaxed body hash."""
    signed = signed_names(headers)
    fields = signature_fields(key, timestamp, signed, body_hash)
    # dkimpy's DKIM.gen_header, with the RSA step done by OpenSSL (through
    # cryptography): dkimpy's pure-Python RSA took ~2/3 of the milter's CPU per message.
    value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=_NAME_LEN)
    digest = header_hash(headers, signed, b" " + dkim.RE_BTAG.sub(b"\\1", value))
    rsa = key.signing_key.sign(digest, PKCS1v15(), Prehashed(SHA256()))
    fields[-1] = (b"b", base64.b64encode(rsa))
    value = bytes(dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=_NAME_LEN))
    return value.strip().replace(b"\r\n", b"\n").decode("ascii")


def signed_names(headers: Sequence[tuple[str, str]]) -> tuple[bytes, ...]:
    """The h= list: the signed headers present, bottom-most first, From once more."""
    present = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
    include = [*present, *(name for name in OVERSIGNED_HEADERS if name in present)]
    return tuple(name.encode("ascii") for name in include)


def signature_fields(
    key: SigningKey, timestamp: int, signed: Sequence[bytes], body_hash: bytes
) -> list[tuple[bytes, bytes]]:
    """The signature's tags, ``b=`` a placeholder (dkimpy puts it on its own line,
    then fills it)."""
    return [
        (b"v", b"1"),
        (b"a", ALGORITHM),
        (b"c", b"/".join(CANONICALIZATION)),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(signed)),
        (b"bh", base64.b64encode(body_hash)),
        (b"b", b"0" * 60),
    ]


def header_hash(
    headers: Sequence[tuple[str, str]], signed: Sequence[bytes], signature_value: bytes
) -> bytes:
    """SHA-256 of the signed headers and the signature header (``b=`` empty) in relaxed
    canonicalization, as dkimpy's ``hash_headers`` computes it: the same header
    instances (for each name in ``signed``, the next one up from the bottom), but only
    those are canonicalized, with bytes methods instead of dkimpy's three regular
    expressions a header (a third of the signer's Python). The differential test
    compares the two on generated headers."""
    raw = [
        (name.encode("ascii", "surrogateescape"), _bytes(value)) for name, value in headers
    ]  # every header, as before: an unencodable one fails the same way
    names = [name.lower().rstrip() for name, _ in raw]  # dkimpy's relaxed names
    digest = hashlib.sha256()
    below: dict[bytes, int] = {}
    for wanted in signed:  # dkimpy's select_headers
        index = below.get(wanted, len(names))
        while index > 0:
            index -= 1
            if names[index] == wanted:
                digest.update(names[index] + b":" + _relaxed_value(raw[index][1]) + CRLF)
                break
        below[wanted] = index
    # The signature is hashed last, without its line end (RE_BTAG as dkimpy applies it).
    unsigned = dkim.RE_BTAG.sub(b"\\1", signature_value)
    digest.update(HEADER_NAME.lower() + b":" + _relaxed_value(unsigned).rstrip())
    return digest.digest()


def _relaxed_value(value: bytes) -> bytes:
    """RFC 6376 3.4.2 as dkimpy does it: line ends (CRLF, or a bare LF the milter
    passes) unfolded away, runs of blanks made one space, whitespace stripped."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return compress_blanks(value).strip()


def headers_after_changes(txn: Transaction) -> list[tuple[str, str]]:
    """The headers as the MTA will write them once the checks' changes are applied."""
    headers = headers_after_removal(txn.headers, txn.changes.remove_headers)
    for position, added in enumerate(txn.changes.add_headers):
        headers.insert(position, added)
    return headers


class DkimSigner(Check):
    """Signs at end of message; must be the last check in the pipeline."""

    name = NAME
    needs_body = True  # only built when a key is configured: no key, no body step

    def __init__(self, keys: Iterable[SigningKey], clock: Callable[[], float] = time.time) -> None:
        self._keys = {key.domain: key for key in keys}
        self._clock = clock

    def at_body(self, txn: Transaction, chunk: bytes) -> None:
        state = txn.scratch.get(self.name)
        if state is None:
            state = txn.scratch[self.name] = self._start(txn)
        if isinstance(state, RelaxedBodyHash):
            state.update(chunk)

    def at_eom(self, txn: Transaction) -> Verdict | None:
        account = txn.account
        if account is None or not is_listed(account) or not (txn.identified or txn.trusted):
            return None  # only a proven, listed account's outbound mail is signed
        key = choose_key(_from_domains(txn), account, self._keys)
        state = txn.scratch.get(self.name)
        if key is None or state == _SKIP:
            return None
        body_hash = state if isinstance(state, RelaxedBodyHash) else RelaxedBodyHash()
        signature = dkim_signature(
            headers_after_changes(txn), body_hash.digest(), key, int(self._clock())
        )
        txn.changes.add_headers.append(("DKIM-Signature", signature))
        return None

    def _start(self, txn: Transaction) -> RelaxedBodyHash | str:
        """Hash the body only when a key could sign this From (the account of a
        sendmail(1) message is known only at end of message, so not checked here)."""
        if any(key_for_domain(domain, self._keys) for domain in _from_domains(txn)):
            return RelaxedBodyHash()
        return _SKIP


def _from_domains(txn: Transaction) -> list[str]:
    try:
        return [mailbox.domain for mailbox in transaction_identity(txn).from_mailboxes]
    except MalformedHeader:
        return []


def _bytes(value: str) -> bytes:
    """pymilter decodes header values as UTF-8 with surrogateescape: undo it exactly."""
    return value.encode("utf-8", "surrogateescape")


def signers_from_settings(keys: Sequence[DkimKey]) -> list[Check]:
    """The signer when any key is configured, else nothing (and no body step)."""
    if not keys:
        return []
    # One OpenSSL key object per key file content, however many domains sign with it:
    # OpenSSL prepares a key (Montgomery contexts, blinding) on its first signature,
    # which doubles that signature's cost, and parsing each copy again slows the start.
    loaded: dict[bytes, SigningKey] = {}
    signing: list[SigningKey] = []
    for entry in keys:
        first = loaded.get(entry.key_file.pem)
        if first is None:
            first = loaded[entry.key_file.pem] = SigningKey.from_config(entry)
        signing.append(SigningKey(entry.domain, entry.selector, first.signing_key))
    return [DkimSigner(signing)]
