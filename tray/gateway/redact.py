"""Keeping the cloud key out of what the gateway relays, logs and records.

A provider may echo the key (or the ``Authorization`` header) in an error
answer; the gateway passes provider text on to any local client, writes it
to its log and to the history. Everything from the provider goes through
:func:`redact` (whole texts) or a :class:`StreamRedactor` (a streamed
answer, whose chunks may split a key), which replace every known key and
every ``Bearer`` token with ``[redacted]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

REDACTED = "[redacted]"
MIN_SECRET = 4  # shorter "keys" would blank out ordinary words
_BEARER = re.compile(r"(?ai)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+")  # RFC 6750's b64token
_BEARER_WORD = b"bearer"
_TOKEN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=-")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret and every ``Bearer`` token replaced by ``[redacted]``.

    >>> redact('{"error": "bad key sk-abc123 (Authorization: Bearer sk-abc123)"}', ["sk-abc123"])
    '{"error": "bad key [redacted] (Authorization: Bearer [redacted])"}'
    >>> redact("Bearer eyJhbGciOi.x-y, then more", [])
    'Bearer [redacted], then more'
    >>> redact("a key of ab stays", ["ab"])
    'a key of ab stays'
    """
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def redact_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """:func:`redact` for a body of bytes (UTF-8, undecodable bytes kept as they are).

    >>> redact_bytes(b'{"detail": "Bearer sk-1234 \\xff"}', [])
    b'{"detail": "Bearer [redacted] \\xff"}'
    """
    return redact(data.decode("utf-8", "surrogateescape"), secrets).encode("utf-8", "surrogateescape")


class StreamRedactor:
    """:func:`redact` over a stream of chunks: holds back only a tail that may be the start of a secret.

    A chunk that ends inside a possible key or ``Bearer`` token keeps that
    tail until the next chunk (or :meth:`close`) shows what it is; every
    other byte goes out at once.

    >>> r = StreamRedactor(["sk-secret"])
    >>> r.feed(b'data: {"x": "sk-se'), r.feed(b'cret!"}\\n'), r.close()
    (b'data: {"x": "', b'[redacted]!"}\\n', b'')
    >>> r = StreamRedactor([])
    >>> r.feed(b"Auth: Bear"), r.feed(b"er abc"), r.feed(b"def\\n")
    (b'Auth: ', b'', b'Bearer [redacted]\\n')
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if len(s) >= MIN_SECRET]
        self._encoded = [s.encode() for s in self.secrets]
        self._held = b""
        self._before = b""  # the last byte sent: whether "bearer" after it starts a word

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        keep = min(self._unsafe_tail(self._before + data), len(data))
        self._held = data[len(data) - keep :] if keep else b""
        return self._send(data[: len(data) - keep])

    def close(self) -> bytes:
        data, self._held = self._held, b""
        return self._send(data)

    def _send(self, data: bytes) -> bytes:
        if not data:
            return b""
        # The byte before is never the start of a secret or of "bearer" (that would have been held).
        out = redact_bytes(self._before + data, self.secrets)[len(self._before) :]
        self._before = data[-1:]
        return out

    def _unsafe_tail(self, data: bytes) -> int:
        """How many bytes at the end of ``data`` may still turn into a secret or a ``Bearer`` token."""
        keep = 0
        for secret in self._encoded:
            for size in range(min(len(secret) - 1, len(data)), 0, -1):
                if data.endswith(secret[:size]):
                    keep = max(keep, size)
                    break
        lower = data.lower()
        start = lower.rfind(_BEARER_WORD)
        if start >= 0 and not _word_byte(lower[start - 1 : start]):
            after = data[start + len(_BEARER_WORD) :]
            stripped = after.lstrip(b" \t\r\n")
            if not stripped or all(byte in _TOKEN_BYTES for byte in stripped):
                keep = max(keep, len(data) - start)  # the token (or the space before it) is not finished
        for size in range(min(len(_BEARER_WORD) - 1, len(data)), 0, -1):
            if lower.endswith(_BEARER_WORD[:size]):
                keep = max(keep, size)
                break
        return keep


def _word_byte(byte: bytes) -> bool:
    return bool(byte) and (byte.isalnum() or byte == b"_")


class RedactingFilter(logging.Filter):
    """A log filter that redacts each record's message with the secrets ``secrets()`` returns then."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets())
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
