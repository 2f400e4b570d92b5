"""User-facing errors: the CLI prints these without a stack trace."""


class PaluError(Exception):
    """Bad input or configuration; the message names the file, line or item and what to do."""
