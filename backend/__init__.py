"""lamina's engine: repository format, backup/restore engine and the service layer."""

__version__ = "0.1.0"
