"""SMTP-time replies for Exim: its RCPT ACL asks the proxy's policy socket with
``${readsocket}`` while the client is still connected, so a refusal the MAIL and RCPT
checks can give at once is the client's SMTP error, not a bounce.

One request line, one reply line::

    SECRET IDENTITY SENDER RECIPIENT      (IDENTITY as in the forced AUTH=, see .identity)
    -> "DUNNO" | "550 5.7.1 text" | "451 4.3.0 text"

Only checks that decide without counting or storing anything answer here
(``Check.answers_before_queue``: unlisted senders refused, suspension, relay): the
message is judged again in full by the proxy when Exim delivers it, so nothing is
counted twice. The secret keeps local processes from asking in a customer's name (a
refusal is recorded for the risk alerts).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from sendwarden.pipeline import Pipeline
from sendwarden.policy.facts import Client
from sendwarden.proxy.identity import IdentityError, parse_exim_identity, xtext_decode
from sendwarden.replies import smtp_reply
from sendwarden.session import PolicySession

log = logging.getLogger(__name__)
DUNNO = "DUNNO"
MAX_LINE = 8192


def before_queue_pipeline(pipeline: Pipeline) -> Pipeline:
    """The checks of ``pipeline`` that may answer at SMTP time, sharing its directory
    and decision observers."""
    checks = [check for check in pipeline.checks if check.answers_before_queue]
    return Pipeline(pipeline.settings, checks, pipeline.directory, pipeline.observers)


def answer(pipeline: Pipeline, secret: str, line: str) -> str:
    """The reply to one request line."""
    fields = line.split()
    if len(fields) != 4 or not secret or not hmac.compare_digest(fields[0], secret):
        log.warning("policy socket: refused a request without the secret")
        return DUNNO
    _, identity_text, sender, recipient = fields
    try:
        identity = parse_exim_identity(xtext_decode(identity_text))
    except IdentityError as error:
        log.warning("policy socket: %s", error)
        return DUNNO
    session = PolicySession(pipeline, Client(address=identity.address, uid=identity.uid))
    verdict = session.mail(sender.strip("<>"), login=identity.login)
    if not verdict.is_final:
        verdict = session.rcpt(recipient.strip("<>"))
    return smtp_reply(verdict) if verdict.is_final and verdict.code else DUNNO


async def serve_policy_socket(
    host: str, port: int, respond: Callable[[str], asyncio.Future[str]]
) -> asyncio.AbstractServer:
    """Listen for ${readsocket} requests; ``respond`` turns a line into the reply."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            reply = await respond(line[:MAX_LINE].decode("utf-8", "replace").strip())
        except Exception:
            log.exception("policy socket: request failed")
            reply = DUNNO
        try:
            writer.write(reply.encode("ascii", "replace") + b"\n")
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_LINE)
