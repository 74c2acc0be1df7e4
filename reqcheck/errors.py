"""The one exception type a user can fix by changing their input, and the two rules of what a message
shows: never a URL's credentials, and text from outside (a server's answer) only as plain text."""

import re
import unicodedata

# a URL's user-info runs to its last `@`: a password may hold `/`, `#`, `?` or `@` unencoded, and an `@`
# later in a path is rare enough that hiding too much there is the safe mistake
_URL_USER_INFO = re.compile(r"(?<=://)\S*@")


def hide_url_credentials(text: str) -> str:
    """`text` with the user-info of every URL in it hidden (`http://***@host`), whatever it holds: HF_ENDPOINT
    or an endpoint may hold a password or a token."""
    return _URL_USER_INFO.sub("***@", text)


# a terminal escape sequence, dropped whole: CSI (colours, cursor moves, erasing), OSC (the window title, links)
# and DCS up to their terminator, any other ESC pair, a lone ESC; and their one-byte C1 forms
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
# what is not text on one line: control and format characters (bidi overrides too), line and paragraph separators
_NOT_TEXT = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def plain_text(text: object, limit: int = 200) -> str:
    """`text` from outside (a server's model path, build, task name or error body) as one line of plain text.

    Escape sequences are dropped, every other control character, CR, newline and line separator becomes a
    space, and runs of spaces one; at most `limit` characters. A terminal, a CI log or a Markdown step summary
    shows it as data: it cannot erase or overwrite a line, set the title, or start a line of its own (a
    GitHub `::error` workflow command).
    """
    kept = _ESCAPE.sub("", str(text))
    kept = " ".join("".join(" " if unicodedata.category(ch) in _NOT_TEXT else ch for ch in kept).split())
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


class ReqcheckError(Exception):
    """A problem the user caused and can fix.

    The CLI prints the message (one sentence naming the fix, optionally followed by detail lines)
    and exits with code 2; anything else is a bug and keeps its traceback. The message never shows a
    URL's user-info, wherever the URL came from.
    """

    def __init__(self, message: str) -> None:
        super().__init__(hide_url_credentials(message))
