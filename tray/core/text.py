"""Text from other programs made safe to show: one plain line, no markup, no control characters.

Whatever a server on Ollama's port answers ends up in events, log lines and
notifications. A program that is not Ollama may answer with an HTML error page;
:func:`describe_body` turns such a body into a short description and
:func:`plain_line` keeps any other text to one bounded line. :func:`one_line`,
:func:`first_line` and :func:`error_line` are the app's one way to put text or a
failure on one line.
"""

from __future__ import annotations

import html
import re

LINE_MAX_CHARS = 200

_TAG_RE = re.compile(r"<[^<>]*>")
_SCRIPT_RE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TITLE_RE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HTML_START_RE = re.compile(r"^\s*(<!doctype\s+html|<html\b|<head\b|<body\b|<\?xml)", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def truncate_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut (after no trailing blank).

    >>> truncate_text("abcdef", 4), truncate_text("ab def", 4)
    ('abc…', 'ab…')
    """
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def one_line(text: str, fallback: str = "", limit: int = LINE_MAX_CHARS) -> str:
    """``text`` on one line: control characters and runs of blanks turned into one space, at most ``limit``
    characters; ``fallback`` when nothing is left.

    >>> one_line("  cannot\\treach\\n the  bus\\x07 ")
    'cannot reach the bus'
    >>> one_line(" \\n", fallback="Done"), one_line("x" * 10, limit=5)
    ('Done', 'xxxx…')
    """
    return truncate_text(" ".join(_CONTROL_RE.sub(" ", text).split()), limit) or fallback


def first_line(text: str, fallback: str = "", limit: int = LINE_MAX_CHARS) -> str:
    """The first line of ``text`` that is not blank, as :func:`one_line`: the headline of a message whose
    other lines are details.

    >>> first_line("\\n  modelfile not found\\nTraceback ...")
    'modelfile not found'
    >>> first_line("", fallback="Done")
    'Done'
    """
    return next((one_line(line, limit=limit) for line in text.splitlines() if line.strip()), fallback)


def error_line(
    error: BaseException, *, named: bool = False, headline: bool = False, limit: int = LINE_MAX_CHARS
) -> str:
    """A failure in one line: its message (``headline``: only its first line, where the rest is details for
    the log), else its class name; ``named`` puts the class name in front (for a diagnosis).

    >>> error_line(OSError("backend\\nexploded")), error_line(OSError("disk full\\n  trace"), headline=True)
    ('backend exploded', 'disk full')
    >>> error_line(TimeoutError()), error_line(ValueError("bad\\tvalue"), named=True)
    ('TimeoutError', 'ValueError: bad value')
    >>> error_line(KeyError(), named=True)
    'KeyError'
    """
    kind = type(error).__name__
    message = first_line(str(error), limit=limit) if headline else one_line(str(error), limit=limit)
    if not message:
        return kind
    return truncate_text(f"{kind}: {message}", limit) if named else message


def plain_line(text: str, limit: int = LINE_MAX_CHARS) -> str:
    """One line of plain text: tags and scripts dropped, entities decoded, then :func:`one_line`.

    >>> plain_line("<h1>502 Bad\\nGateway</h1>\\x07<script>x()</script> &amp; more")
    '502 Bad Gateway & more'
    >>> plain_line("model 'a<b' not found")
    "model 'a<b' not found"
    """
    text = _SCRIPT_RE.sub(" ", text)
    text = _TAG_RE.sub(" ", text)
    return one_line(html.unescape(text), limit=limit)


def looks_like_html(text: str, content_type: str = "") -> bool:
    """Whether a body is a web page rather than a message.

    >>> looks_like_html("<!DOCTYPE html><html>…"), looks_like_html("x", "text/html; charset=utf-8")
    (True, True)
    >>> looks_like_html('{"error":"model not found"}')
    False
    """
    return "html" in content_type.lower() or bool(_HTML_START_RE.match(text))


def describe_body(text: str, content_type: str = "", status: int | None = None, limit: int = LINE_MAX_CHARS) -> str:
    """A server's answer as one line for a message: an HTML page is named by its title, not quoted.

    >>> describe_body("<html><head><title>502 Bad Gateway</title></head><body><h1>oops</h1></body></html>")
    'an HTML page (502 Bad Gateway)'
    >>> describe_body("<!doctype html><p>nope</p>", status=404)
    'an HTML page (HTTP 404)'
    >>> describe_body("plain\\ntext")
    'plain text'
    """
    if not looks_like_html(text, content_type):
        return plain_line(text, limit)
    match = _TITLE_RE.search(text)
    title = plain_line(match.group(1), 60) if match else ""
    label = title or (f"HTTP {status}" if status is not None else "")
    return truncate_text(f"an HTML page ({label})" if label else "an HTML page", limit)
