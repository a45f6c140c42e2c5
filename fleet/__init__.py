"""fleet: provision keys on many Nordic nRF91 modems at once."""

__version__ = "0.1.0"
