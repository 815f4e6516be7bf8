"""User-facing errors: the CLIs print them as one line and exit with code 2."""


class UserError(Exception):
    """Bad input from the user (arguments, files, checkpoints). The message says what is wrong and the fix."""
