"""Versioned schema migrations of the consent ledger: ``NNNN_name.<dialect>.sql``,
applied in order, each recorded in the ``consent_schema`` table."""
