"""The one exception type a user can fix by changing their input, and the rule that no message shows a
URL's credentials."""

import re

# a URL's user-info runs to its last `@`: a password may hold `/`, `#`, `?` or `@` unencoded, and an `@`
# later in a path is rare enough that hiding too much there is the safe mistake
_URL_USER_INFO = re.compile(r"(?<=://)\S*@")


def hide_url_credentials(text: str) -> str:
    """`text` with the user-info of every URL in it hidden (`http://***@host`), whatever it holds: HF_ENDPOINT
    or an endpoint may hold a password or a token."""
    return _URL_USER_INFO.sub("***@", text)


class ReqcheckError(Exception):
    """A problem the user caused and can fix.

    The CLI prints the message (one sentence naming the fix, optionally followed by detail lines)
    and exits with code 2; anything else is a bug and keeps its traceback. The message never shows a
    URL's user-info, wherever the URL came from.
    """

    def __init__(self, message: str) -> None:
        super().__init__(hide_url_credentials(message))
