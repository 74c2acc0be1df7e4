"""The one exception type a user can fix by changing their input, and the rule that no message shows a
URL's credentials."""

import re

_URL_USER_INFO = re.compile(r"(?<=://)[^/?#\s]*@")


def hide_url_credentials(text: str) -> str:
    """`text` with the user-info of every URL in it hidden (`http://***@host`): HF_ENDPOINT may hold a password."""
    return _URL_USER_INFO.sub("***@", text)


class ReqcheckError(Exception):
    """A problem the user caused and can fix.

    The CLI prints the message (one sentence naming the fix, optionally followed by detail lines)
    and exits with code 2; anything else is a bug and keeps its traceback. The message never shows a
    URL's user-info, wherever the URL came from.
    """

    def __init__(self, message: str) -> None:
        super().__init__(hide_url_credentials(message))
