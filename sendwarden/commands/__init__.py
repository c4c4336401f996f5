"""Subcommands of the ``sendwarden`` CLI, one module each."""
