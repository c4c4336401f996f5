"""Accounts where the hosting provider keeps them: a ``domain: account`` map file
(cPanel, DirectAdmin), Unix users (``system_users``) and an SQL query (Plesk's ``psa``,
PostgreSQL, MariaDB, SQLite), merged under the config's ``[[accounts]]`` overrides.

The sources are read whole by a child process (:mod:`sendwarden.directory.build`), which
validates them and writes an immutable snapshot (a read-only SQLite file); the milter
swaps the new snapshot in with one assignment (:mod:`sendwarden.directory.live`). So a
re-read never holds the interpreter lock the milter's decisions need, the directory
costs the milter little memory whatever its size, and a bad read changes nothing.
"""
