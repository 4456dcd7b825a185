"""One exception type for mistakes the user can fix, so the CLI can print one line and exit 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it (no traceback is shown)."""
