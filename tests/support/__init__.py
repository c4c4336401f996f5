"""Test support: real servers (Redis, an SMTP sink, a private Postfix, milters) for tests.

Library code only; the pytest fixtures that use it live in the conftest files.
"""
