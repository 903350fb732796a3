"""What a request to Ollama can fail with: one contract for every caller. ``str()`` is one line for the user.

::

    OllamaError                 the request did not get the answer it asked for
     ├── OllamaUnreachable      no answer: nothing listens (refused) or the connection dropped before the answer
     │    └── OllamaTimeout     no answer within the call's timeout (connected or not)
     └── OllamaAPIError         Ollama answered with an error: ``status`` (200 for a streamed error line)
          └── OllamaMalformed   something answered, but not as Ollama does (not JSON, not the expected shape)

Each carries ``what`` (the call, e.g. ``listing models``) and ``detail``: the
short reason a caller shows on its own (Ollama's ``error`` text, ``connection
refused``, ``no answer in time``, ``not an Ollama answer``).
"""

from __future__ import annotations


class OllamaError(Exception):
    """A request to Ollama failed; ``str()`` is one line without a traceback."""

    def __init__(self, message: str, *, what: str = "", detail: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.detail = detail or message
        self.status = status


class OllamaUnreachable(OllamaError):
    """No answer from Ollama: the connection was refused or dropped before an answer came."""


class OllamaTimeout(OllamaUnreachable):
    """Ollama gave no answer within the call's timeout."""


class OllamaAPIError(OllamaError):
    """Ollama answered with an error: ``status`` is the HTTP status (200 for a streamed error line)."""

    status: int

    def __init__(self, message: str, status: int = 0, *, what: str = "", detail: str = "") -> None:
        super().__init__(message, what=what, detail=detail, status=status)


class OllamaMalformed(OllamaAPIError):
    """The answer is not Ollama's: not JSON, or not the shape Ollama sends (another program on the port)."""
