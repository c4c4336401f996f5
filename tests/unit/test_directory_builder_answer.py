"""How the milter reads the builder child's answer (:meth:`BuildChild.report`): a
report is taken as soon as its line is complete, without waiting for the child to
exit; a child that fails, says nothing or takes too long still gives its reason; a
child that writes much to stderr first is not left blocked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sendwarden.directory.build import BuildChild, BuildFailed

REPORT = {
    "accounts": 2,
    "domains": 3,
    "logins": 4,
    "uids": 0,
    "conflicts": [{"kind": "login", "key": "bob", "claimants": ["a", "b"], "kept": None}],
    "notes": ["n"],
}


def child(script: str) -> BuildChild:
    """A BuildChild whose process runs ``script`` instead of the builder."""
    built = BuildChild.__new__(BuildChild)
    built.process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return built


def answering(then: str) -> str:
    return (
        "import json, sys, time\n"
        f"sys.stdout.write(json.dumps({{'report': {REPORT!r}}}) + '\\n'); sys.stdout.flush()\n"
        f"{then}\n"
    )


def test_the_report_is_taken_before_the_child_exits() -> None:
    building = child(answering("time.sleep(60)"))
    try:
        report = building.report(timeout=30)
        assert building.process.poll() is None  # (still there: not waited for)
        assert (report.accounts, report.logins, len(report.conflicts)) == (2, 4, 1)
        assert report.conflicts[0].claimants == ("a", "b")
    finally:
        building.process.kill()
        building.process.wait()


def test_a_child_that_writes_much_to_stderr_first_is_read_through() -> None:
    script = "import sys\nsys.stderr.write('x' * 300000); sys.stderr.flush()\n" + answering("")
    report = child(script).report(timeout=30)
    assert report.domains == 3


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("import json; print(json.dumps({'error': 'sql: 2 bad row(s): row 7'})); exit(1)", "row 7"),
        ("import sys; sys.stderr.write('Traceback: boom\\n'); exit(3)", "Traceback: boom"),
        ("exit(5)", "exited with 5"),
        ("print('not json'); exit(0)", "exited with 0"),
        ("import sys\nsys.stdout.write('{\"report\": '); sys.stdout.flush(); exit(0)", "exited"),
    ],
)
def test_a_child_that_fails_gives_its_reason(script: str, reason: str) -> None:
    with pytest.raises(BuildFailed, match=reason):
        child(script).report(timeout=30)


def test_a_child_that_takes_too_long_is_stopped() -> None:
    building = child("import time; time.sleep(60)")
    with pytest.raises(BuildFailed, match="took over"):
        building.report(timeout=0.5)
    assert building.process.returncode is not None  # killed and reaped


def test_an_error_line_is_not_taken_for_a_report() -> None:
    line = json.dumps({"error": "sql: refused", "report": REPORT})
    with pytest.raises(BuildFailed, match="sql: refused"):
        child(f"print({line!r}); exit(1)").report(timeout=30)
