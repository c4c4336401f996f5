"""One MTA connection's walk through the pipeline, whichever protocol carries it.

The milter (libmilter callbacks) and the SMTP proxy (aiosmtpd) both translate their
protocol into these calls: a transaction begins at MAIL with what the MTA proved (the
client, a SASL login, a local uid), recipients, headers and body follow, and end of
message gives the verdict and the edits to apply. Errors are contained here the same
way for both: a failing step marks the transaction, and its end is a 451 4.3.0 (the
client retries; nothing is lost), never a traceback to the MTA.
"""

from __future__ import annotations

import dataclasses
import logging

from sendwarden.pipeline import Pipeline, new_session_id
from sendwarden.policy.facts import Client, MessageChanges, Transaction
from sendwarden.policy.verdict import CONTINUE, Action, Verdict, tempfail

log = logging.getLogger(__name__)

INTERNAL_ERROR = tempfail(
    "internal-error",
    "451",
    "4.3.0",
    "Temporary problem in the sending policy filter; the message was not accepted, "
    "please try again later.",
)
FAILED = "_adapter_failed"


class PolicySession:
    """The transaction state of one connection. Not thread-safe: one connection's
    steps arrive one after another."""

    def __init__(self, pipeline: Pipeline, client: Client | None = None) -> None:
        self.pipeline = pipeline
        self.client = client or Client(address=None)
        self.txn: Transaction | None = None
        self.id = new_session_id()  # on every decision line of this connection

    def mail(
        self, mail_from: str, *, login: str | None, queue_id: str = "", uid: int | None = None
    ) -> Verdict:
        """MAIL FROM: a new transaction (an unfinished one is aborted first)."""
        if self.txn is not None:  # a transaction the MTA never closed
            self.pipeline.abort(self.txn)
        client = self.client if uid is None else dataclasses.replace(self.client, uid=uid)
        self.txn = self.pipeline.begin(client, login=login, mail_from=mail_from, queue_id=queue_id)
        verdict = self.pipeline.mail(self.txn)
        if verdict.is_final:
            self.txn = None
        return verdict

    def rcpt(self, recipient: str, queue_id: str = "") -> Verdict:
        """RCPT TO; ``queue_id`` is the MTA's, once it has one."""
        if self.txn is None:
            return CONTINUE
        return self.pipeline.rcpt(self.txn, recipient, queue_id)

    def header(self, name: str, value: str) -> None:
        if self.txn is not None:
            self.pipeline.header(self.txn, name, value)

    def body(self, chunk: bytes) -> None:
        if self.txn is not None:
            self.pipeline.body(self.txn, chunk)

    def eom(self, queue_id: str = "", uid: int | None = None) -> tuple[Verdict, MessageChanges]:
        """End of message: the verdict, and the edits to apply when it lets the
        message through (none otherwise)."""
        txn, self.txn = self.txn, None
        if txn is None:
            return CONTINUE, MessageChanges()
        txn.queue_id = txn.queue_id or queue_id
        if uid is not None:
            txn.uid = uid
        if txn.scratch.get(FAILED):
            self.pipeline.abort(txn)
            return INTERNAL_ERROR, MessageChanges()
        verdict = self.pipeline.eom(txn)
        passes = not verdict.is_final or verdict.action is Action.ACCEPT
        return verdict, txn.changes if passes else MessageChanges()

    def abort(self) -> None:
        """RSET, QUIT, a lost connection: the transaction ends unaccepted."""
        txn, self.txn = self.txn, None
        if txn is not None:
            self.pipeline.abort(txn)

    def failed(self, where: str) -> None:
        """A step failed unexpectedly (logged by the caller): refuse at end of message."""
        log.debug("policy session step %s failed", where)
        if self.txn is not None:
            self.txn.scratch[FAILED] = True
