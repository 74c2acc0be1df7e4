"""The one exception type a user can fix by changing their input."""


class ReqcheckError(Exception):
    """A problem the user caused and can fix.

    The CLI prints the message (one sentence naming the fix, optionally followed by detail lines)
    and exits with code 2; anything else is a bug and keeps its traceback.
    """
