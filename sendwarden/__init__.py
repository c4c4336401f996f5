"""sendwarden: an outbound mail policy milter for hosting providers."""

__version__ = "0.1.0"
