"""DKIM signing of what every rule passed: keys (load, generate, DNS record), a
streaming body hash, and the signer check that runs last at end of message."""
