"""At most ``recipients_per_hour`` recipients per account in any rolling hour
(AUP 003 §4.2.4: "500 recipients for one email, 500 individual emails or a
combination"). Repeated excess suspends the account.

Pure: the counter's answer comes in as facts, the verdict and texts go out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sendwarden.policy.verdict import Verdict, reject, tempfail

RULE = "recipient-rate"


def describe_period(seconds: int) -> str:
    """``86400`` -> ``24 hours``, ``5400`` -> ``90 minutes``, ``45`` -> ``45 seconds``."""
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "1 hour" if hours == 1 else f"{hours} hours"
    if seconds % 60 == 0:
        minutes = seconds // 60
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    return "1 second" if seconds == 1 else f"{seconds} seconds"


def describe_moment(at: float, now: float) -> str:
    """``14:05:00 UTC (in 12 minutes)``: a clock time and how long until then."""
    clock = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")
    wait = max(0, round(at - now))
    if wait < 60:
        return f"{clock} (in {wait} seconds)" if wait != 1 else f"{clock} (in 1 second)"
    minutes = -(-wait // 60)  # round up: never promise earlier than true
    return f"{clock} (in {describe_period(minutes * 60)})"


def over_limit_verdict(
    account_id: str,
    limit: int,
    frees_at: int | None,
    now: float,
    *,
    suspended_after: tuple[int, int] | None = None,
) -> Verdict:
    """451 4.7.1: this recipient (or message) would take the account over its hourly
    limit. The client keeps the mail and retries; nothing is lost.

    ``suspended_after`` is ``(strikes, period)`` when this refusal suspended the account.
    """
    when = (
        f"; capacity frees up at {describe_moment(frees_at, now)}"
        if frees_at
        else "; capacity frees up as older recipients leave the one-hour window"
    )
    text = (
        f"Account {account_id} has reached its limit of {limit} recipients per hour"
        f"{when}. The mail was deferred, not refused: your mail server retries it later."
    )
    if suspended_after is not None:
        strikes, period = suspended_after
        text += (
            f" Because the limit was reached {strikes} times within "
            f"{describe_period(period)}, the account is now suspended until the "
            "provider's support lifts the suspension."
        )
    return tempfail(RULE, "451", "4.7.1", text)


def too_many_recipients_verdict(account_id: str, limit: int, recipients: int) -> Verdict:
    """550 5.7.1: one message with more recipients than an hour ever allows (sendmail(1)
    mail is judged whole, so retrying it could never succeed)."""
    return reject(
        RULE,
        "550",
        "5.7.1",
        f"Account {account_id} may send to at most {limit} recipients per hour, and this "
        f"message has {recipients}. Send it in smaller batches of at most {limit} recipients.",
    )


def suspension_reason(limit: int, strikes: int, period: int) -> str:
    """Why the rate limiter suspended an account, as the MAIL refusal will show it."""
    return (
        f"its limit of {limit} recipients per hour was reached {strikes} times within "
        f"{describe_period(period)}"
    )
