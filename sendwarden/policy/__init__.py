"""The pure policy core: facts in, verdict out. No sockets, no Redis, no libmilter.

Each rule lives in its own module as a function over facts that returns a
:class:`Verdict` when it fires and ``None`` when it has no objection.
"""

from sendwarden.policy.facts import Client, Transaction
from sendwarden.policy.verdict import CONTINUE, Action, Verdict, reject, tempfail

__all__ = ["CONTINUE", "Action", "Client", "Transaction", "Verdict", "reject", "tempfail"]
