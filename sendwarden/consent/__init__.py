"""Consent records: the evidence ledger, bulk detection, import and queries."""
