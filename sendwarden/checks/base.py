"""The hooks a check may implement; every one is a no-op by default."""

from __future__ import annotations

from typing import ClassVar

from sendwarden.policy.facts import Transaction
from sendwarden.policy.verdict import Verdict


class Check:
    """One policy rule's I/O side. Shared by all connections: keep per-message
    state in ``txn.scratch[self.name]``, never on ``self``."""

    name: ClassVar[str] = "check"
    needs_body: ClassVar[bool] = False
    # Decides at MAIL/RCPT without counting or storing anything, so it may also answer
    # an SMTP-time question (the proxy's policy socket for Exim's RCPT ACL) for a
    # message that is judged again, in full, when it is delivered.
    answers_before_queue: ClassVar[bool] = False

    def at_mail(self, txn: Transaction) -> Verdict | None:
        """MAIL FROM: the sender and account are known."""
        return None

    def at_rcpt(self, txn: Transaction, recipient: str) -> Verdict | None:
        """RCPT TO: one recipient; earlier accepted ones are in ``txn.recipients``."""
        return None

    def at_header(self, txn: Transaction, name: str, value: str) -> None:
        """One header field, as it arrives (headers are also kept in ``txn.headers``)."""

    def at_body(self, txn: Transaction, chunk: bytes) -> None:
        """One body chunk; only called when ``needs_body`` is true."""

    def at_eom(self, txn: Transaction) -> Verdict | None:
        """End of message: the whole message has been seen."""
        return None

    def after_verdict(self, txn: Transaction, verdict: Verdict) -> None:
        """The transaction ended (accepted, refused or aborted): commit or give back."""

    def close(self) -> None:
        """The runtime is being replaced or stopped."""
