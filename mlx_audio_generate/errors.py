"""User-facing errors: the CLIs print them as one line and exit with code 2."""


class UserError(Exception):
    """Bad input from the user (arguments, files, checkpoints). The message says what is wrong and the fix.

    Messages are folded onto one line (library errors quoted inside them can span several)."""

    def __init__(self, message: object):
        super().__init__(" ".join(str(message).split()))
