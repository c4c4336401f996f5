"""Mail address and domain normalisation, so every rule compares like with like.

Domains are compared case-insensitively and in their IDNA (A-label) form, so
``Bücher.example`` and ``xn--bcher-kva.example`` are the same domain. Local parts
are kept as written (they may be case-sensitive, RFC 5321 §2.4) but SMTPUTF8
local parts are fine.
"""

from __future__ import annotations

import functools

import idna


@functools.lru_cache(maxsize=4096)
def normalise_domain(domain: str) -> str:
    """Lower-case A-label form of a domain; ValueError for one that cannot be a domain."""
    cleaned = domain.strip().rstrip(".")
    if cleaned.startswith("[") and cleaned.endswith("]"):
        return cleaned.lower()  # address literal, e.g. [192.0.2.1]
    if not cleaned:
        raise ValueError(f"{domain!r} is not a domain name")
    if cleaned.isascii():
        lowered = cleaned.lower()
        if all(label and len(label) < 64 for label in lowered.split(".")):
            return lowered
        raise ValueError(f"{domain!r} is not a domain name")
    try:
        return idna.encode(cleaned, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"{domain!r} is not a valid internationalised domain ({error})") from None


def strip_brackets(address: str) -> str:
    """``<a@b>`` as the milter gives envelope addresses becomes ``a@b``; ``<>`` becomes ''."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


def split_address(address: str) -> tuple[str, str | None]:
    """Local part and normalised domain; domain is None when there is none or it is invalid."""
    address = strip_brackets(address)
    local, at, domain = address.rpartition("@")
    if not at:
        return address, None
    try:
        return local, normalise_domain(domain)
    except ValueError:
        return local, None


def domain_of(address: str) -> str | None:
    """The normalised domain of an address, or None when it has no usable domain."""
    return split_address(address)[1]


def normalise_address(address: str) -> str:
    """``Local@Domain`` with the domain normalised; the address unchanged when it has none."""
    local, domain = split_address(address)
    return f"{local}@{domain}" if domain else strip_brackets(address)


def domain_matches(domain: str, owned: str, *, subdomains: bool = False) -> bool:
    """Whether a normalised domain is ``owned`` (or, when allowed, one of its subdomains)."""
    return domain == owned or (subdomains and domain.endswith("." + owned))
