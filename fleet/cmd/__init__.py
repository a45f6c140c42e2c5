"""One module per ``fleet`` sub-command; each has ``register(subparsers)``."""
