"""The gateway's HTTP/1.1 client to Ollama: httptools' parser over asyncio streams, its connections kept alive.

Every request through the gateway is also a request from the gateway to
Ollama, so this client's cost is the gateway's added latency. httpx's
AsyncClient (URL and header models, auth, redirects and cookies hooks, then
httpcore's pool over anyio) spent about 620 µs of CPU per request against
the stand-in Ollama, httpcore alone about 360 µs; h11's pure-Python state
machine, driven directly over asyncio streams, was still about a fifth of
the gateway's CPU per chat in a profile. httptools (llhttp, the parser uvicorn and Node.js use) reads the
answers: framing, chunked encoding, informational answers, keep-alive. The
request head is written here, from fields that uvicorn has already parsed
from the client (or the gateway's own constants), refused when a field could
end a line. Idle connections are kept for the next request, as httpx's pool
did (closed after ``keepalive_expiry`` idle seconds). The cloud keeps httpx:
it needs TLS, proxies and HTTP/2, and its latency is the provider's.

What llhttp leaves to its caller is done here: an answer to HEAD has no
body whatever its Content-Length says, and a body without Content-Length or
chunked encoding ends when the server closes the connection.

Failures are raised as httpx's exception classes (``ConnectError``,
``ReadTimeout``, ``RemoteProtocolError``, ...), the vocabulary the gateway
already classifies them in. A response closed before its end closes its
connection, which tells Ollama to stop working on the request.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import overload
from urllib.parse import urlsplit

import httptools
import httpx

READ_SIZE = 64 * 1024
KEEPALIVE_EXPIRY = 5.0  # httpx's default: an idle connection older than this is not reused
STREAMED_METHODS = ("POST", "PUT", "PATCH")  # an empty body still says Content-Length: 0, as httpx sends it


class UpstreamHeaders:
    """A response's header fields as received (names lower-cased), and the lookup the gateway needs."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, else ``default``.

        >>> UpstreamHeaders([(b"content-type", b"application/json")]).get("Content-Type")
        'application/json'
        """
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw:
            if key == wanted:
                return value.decode("latin-1")
        return default


class _Answer:
    """The parser's callbacks for one answer: its head, the body pieces not yet taken, and whether it ended."""

    __slots__ = (
        "complete",
        "delimited_by_close",
        "for_head",
        "head_done",
        "headers",
        "keep_alive",
        "parser",
        "pieces",
        "status_code",
        "stray",
    )

    def __init__(self, for_head: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.for_head = for_head  # an answer to HEAD: no body, whatever its headers say
        self.status_code = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.pieces: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.delimited_by_close = False
        self.stray = False  # bytes after the answer: the connection cannot carry another

    def on_message_begin(self) -> None:
        if self.head_done:
            self.stray = True
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the answer follows
            return
        self.status_code, self.head_done = status, True
        if self.for_head:
            self.complete, self.keep_alive = True, self.parser.should_keep_alive()
            return
        framed = any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        self.delimited_by_close = not framed and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.stray = True
        else:
            self.pieces.append(body)

    def on_message_complete(self) -> None:
        if not self.head_done or self.complete:  # an informational answer, or a HEAD answer ended at its head
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        """May an idle connection carry the next request (not closed by the server, not expired)?"""
        return not self.reader.at_eof() and not self.writer.is_closing() and now - self.idle_since < KEEPALIVE_EXPIRY

    def close(self) -> None:
        self.writer.close()

    async def receive(self, answer: _Answer) -> None:
        """Feed ``answer`` the next bytes from the server; at the end of the connection, end or fail its body."""
        try:
            data = await self.reader.read(READ_SIZE)
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        if not data:
            if answer.head_done and answer.delimited_by_close:
                answer.complete, answer.keep_alive = True, False
                return
            if not answer.head_done:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            raise httpx.RemoteProtocolError("the server closed the connection before the answer ended")
        try:
            answer.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise httpx.RemoteProtocolError("the server switched protocols, which the gateway does not relay") from None
        except httptools.HttpParserError as exc:
            raise httpx.RemoteProtocolError(f"malformed answer from the server ({exc})") from None


class UpstreamResponse:
    """An answer whose head is in; the body is read with :meth:`aiter_raw` or :meth:`aread`, then :meth:`aclose`."""

    def __init__(self, client: UpstreamClient, connection: _Connection, answer: _Answer) -> None:
        self.status_code = answer.status_code
        self.headers = UpstreamHeaders(answer.headers)
        self.content = b""
        self._client = client
        self._connection: _Connection | None = connection
        self._answer = answer

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives: all of each read in one piece (transfer framing removed, nothing decoded)."""
        connection, answer = self._connection, self._answer
        if connection is None:
            return
        try:
            while True:
                if answer.pieces:
                    pieces, answer.pieces = answer.pieces, []
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if answer.complete:
                    self._release()
                    return
                await connection.receive(answer)
        except BaseException:
            self._discard()
            raise

    async def aread(self) -> bytes:
        """The whole body (also kept in :attr:`content`)."""
        self.content = b"".join([part async for part in self.aiter_raw()])
        return self.content

    async def aclose(self) -> None:
        """Done with the answer: a connection whose answer was not read to its end is closed."""
        self._discard()

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        answer = self._answer
        if answer.keep_alive and not answer.stray:
            self._client._release(connection)
        else:
            connection.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class UpstreamClient:
    """HTTP/1.1 to one base URL (``http://host:port[/path]``, or https), idle connections kept for reuse."""

    def __init__(self, base_url: str, *, connect_timeout: float, write_timeout: float | None) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme or "http"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if self.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("idna")
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self._ssl: ssl.SSLContext | None = httpx.create_ssl_context() if self.scheme == "https" else None
        self._idle: list[_Connection] = []

    async def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] = b"",
    ) -> UpstreamResponse:
        """Send a request (``target``: path and query under the base URL); the response once its head is in."""
        connection = await self._connection()
        try:
            await self._write_request(connection, method, self.base_path + target, headers, content)
            return await self._read_head(connection, method)
        except BaseException:
            connection.close()
            raise

    async def get(self, target: str, timeout: float) -> UpstreamResponse:
        """GET ``target`` and read the whole answer within ``timeout`` seconds (else ``httpx.ReadTimeout``)."""
        try:
            async with asyncio.timeout(timeout):
                response = await self.send("GET", target, ())
                await response.aread()
        except TimeoutError:
            raise httpx.ReadTimeout(f"no whole answer within {timeout:g} s") from None
        return response

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- connections

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, limit=READ_SIZE, server_hostname=self._server_name()
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer)

    def _server_name(self) -> str | None:
        return self.host if self._ssl is not None else None

    def _release(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    # -- the exchange

    async def _write_request(
        self,
        connection: _Connection,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
    ) -> None:
        fields = [(b"host", self.host_header), *headers]
        declared = next((value for name, value in headers if name.lower() == b"content-length"), None)
        if isinstance(content, (bytes, bytearray)):
            if (content or method in STREAMED_METHODS) and declared is None:
                fields.append((b"content-length", b"%d" % len(content)))
            elif declared is not None and declared.strip() != b"%d" % len(content):
                raise httpx.LocalProtocolError("the body's length is not its declared Content-Length")
            head = request_head(method, target, fields)
            if len(content) <= READ_SIZE:  # one send for the usual request; a large body is not copied
                await self._write(connection, head + content)
            else:
                await self._write(connection, head)
                await self._write(connection, bytes(content))
            return
        if declared is None:
            fields.append((b"transfer-encoding", b"chunked"))
        await self._write(connection, request_head(method, target, fields))
        if declared is None:
            async for chunk in content:
                if chunk:
                    await self._write(connection, b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await self._write(connection, b"0\r\n\r\n")
            return
        remaining = int(declared) if declared.strip().isdigit() else -1
        async for chunk in content:
            remaining -= len(chunk)
            if remaining < 0:
                raise httpx.LocalProtocolError("the body is longer than its declared Content-Length")
            await self._write(connection, chunk)
        if remaining != 0:
            raise httpx.LocalProtocolError("the body is shorter than its declared Content-Length")

    async def _write(self, connection: _Connection, data: bytes) -> None:
        if not data:
            return
        writer = connection.writer
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.write_timeout):
                    await writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout(f"the server took nothing for {self.write_timeout:g} s") from None
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc

    async def _read_head(self, connection: _Connection, method: str) -> UpstreamResponse:
        answer = _Answer(for_head=method == "HEAD")
        while not answer.head_done:
            await connection.receive(answer)
        return UpstreamResponse(self, connection, answer)


_LINE_BREAKING = re.compile(rb"[\r\n\0]")
_NOT_A_TOKEN = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def request_head(method: str, target: str, fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request line and header fields, as sent; ``httpx.LocalProtocolError`` for one that would break the framing.

    >>> request_head("GET", "/api/tags", [(b"host", b"127.0.0.1:11434")])
    b'GET /api/tags HTTP/1.1\\r\\nhost: 127.0.0.1:11434\\r\\n\\r\\n'
    >>> request_head("GET", "/a b", [])
    Traceback (most recent call last):
    ...
    httpx.LocalProtocolError: a request target must not contain spaces or line breaks: '/a b'
    """
    if not target or any(c in target for c in " \r\n\t\0"):
        raise httpx.LocalProtocolError(f"a request target must not contain spaces or line breaks: {target!r}")
    if not method or _NOT_A_TOKEN.search(method.encode("latin-1")):
        raise httpx.LocalProtocolError(f"not a request method: {method!r}")
    lines = [b"%b %b HTTP/1.1" % (method.encode("latin-1"), target.encode("latin-1"))]
    for name, value in fields:
        if not name or _NOT_A_TOKEN.search(name) or _LINE_BREAKING.search(value):
            raise httpx.LocalProtocolError(f"a header field would break the request: {name!r}")
        lines.append(b"%b: %b" % (name, value))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)
