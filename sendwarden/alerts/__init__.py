"""Blacklist risk alerts for the abuse desk: DNSBL listings of the provider's sending
addresses (``dnsbl``), accounts whose refusals put those addresses at risk (``risk``),
what deserves a message and when (``rules``, pure), and how it reaches the desk
(``notify``); ``service`` runs the sweeps."""
