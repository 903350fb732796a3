"""Text from other programs made safe to show: one plain line, no markup, no control characters.

Whatever a server on Ollama's port answers ends up in events, log lines and
notifications. A program that is not Ollama may answer with an HTML error page;
:func:`describe_body` turns such a body into a short description and
:func:`plain_line` keeps any other text to one bounded line.
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


def plain_line(text: str, limit: int = LINE_MAX_CHARS) -> str:
    """One line of plain text: tags and scripts dropped, entities decoded, control characters and runs
    of blanks turned into one space, at most ``limit`` characters.

    >>> plain_line("<h1>502 Bad\\nGateway</h1>\\x07<script>x()</script> &amp; more")
    '502 Bad Gateway & more'
    >>> plain_line("model 'a<b' not found")
    "model 'a<b' not found"
    """
    text = _SCRIPT_RE.sub(" ", text)
    text = _TAG_RE.sub(" ", text)
    text = html.unescape(text)
    text = _CONTROL_RE.sub(" ", text)
    return truncate_text(" ".join(text.split()), limit)


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
