"""The gateway's HTTP/1.1 client to Ollama: h11 over asyncio streams, its connections kept alive.

Every request through the gateway is also a request from the gateway to
Ollama, so this client's cost is the gateway's added latency. httpx's
AsyncClient (URL and header models, auth, redirects and cookies hooks, then
httpcore's pool over anyio) spent about 620 µs of CPU per request against
the stand-in Ollama, httpcore alone about 360 µs, the h11 state machine both
are built on, driven directly over asyncio streams, about 90 µs. h11 does the
protocol (framing, keep-alive, chunked encoding); this module only moves the
bytes and keeps idle connections for the next request, as httpx's pool did
(closed after ``keepalive_expiry`` idle seconds). The cloud keeps httpx: it
needs TLS, proxies and HTTP/2, and its latency is the provider's.

Failures are raised as httpx's exception classes (``ConnectError``,
``ReadTimeout``, ``RemoteProtocolError``, ...), the vocabulary the gateway
already classifies them in. A response closed before its end closes its
connection, which tells Ollama to stop working on the request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import overload
from urllib.parse import urlsplit

import h11
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


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        """May an idle connection carry the next request (not closed by the server, not expired)?"""
        return not self.reader.at_eof() and not self.writer.is_closing() and now - self.idle_since < KEEPALIVE_EXPIRY

    def close(self) -> None:
        self.writer.close()

    async def receive(self) -> None:
        """Feed the protocol the next bytes from the server (b"" at the end of the connection)."""
        try:
            data = await self.reader.read(READ_SIZE)
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        self.protocol.receive_data(data)

    def next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        try:
            return self.protocol.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc


class UpstreamResponse:
    """An answer whose head is in; the body is read with :meth:`aiter_raw` or :meth:`aread`, then :meth:`aclose`."""

    def __init__(self, client: UpstreamClient, connection: _Connection, status_code: int, headers: UpstreamHeaders):
        self.status_code = status_code
        self.headers = headers
        self.content = b""
        self._client = client
        self._connection: _Connection | None = connection

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives: all of each read in one piece (transfer framing removed, nothing decoded)."""
        connection = self._connection
        if connection is None:
            return
        try:
            parts: list[bytes] = []
            while True:
                event = connection.next_event()
                if type(event) is h11.Data:
                    parts.append(event.data)
                    continue
                if parts:
                    yield b"".join(parts)
                    parts = []
                if event is h11.NEED_DATA:
                    await connection.receive()
                elif type(event) is h11.EndOfMessage:
                    self._release()
                    return
                else:  # ConnectionClosed, PAUSED: the server ended the connection before the body
                    raise httpx.RemoteProtocolError("the server closed the connection before the answer ended")
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
        if connection is not None:
            self._client._release(connection)

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
            return await self._read_head(connection)
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
        protocol = connection.protocol
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    # -- the exchange

    async def _write_request(
        self,
        connection: _Connection,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
    ) -> None:
        protocol = connection.protocol
        fields = [(b"host", self.host_header), *headers]
        has_length = any(name.lower() == b"content-length" for name, _ in headers)
        if isinstance(content, (bytes, bytearray)):
            if (content or method in STREAMED_METHODS) and not has_length:
                fields.append((b"content-length", b"%d" % len(content)))
        elif not has_length:
            fields.append((b"transfer-encoding", b"chunked"))
        try:
            head = protocol.send(h11.Request(method=method, target=target, headers=fields))
            if isinstance(content, (bytes, bytearray)):
                body = protocol.send(h11.Data(data=content)) if content else b""
                await self._write(connection, head + body + protocol.send(h11.EndOfMessage()))
                return
            await self._write(connection, head)
            async for chunk in content:
                if chunk:
                    await self._write(connection, protocol.send(h11.Data(data=chunk)))
            await self._write(connection, protocol.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc

    async def _write(self, connection: _Connection, data: bytes | None) -> None:
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

    async def _read_head(self, connection: _Connection) -> UpstreamResponse:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                await connection.receive()
            elif type(event) is h11.Response:
                return UpstreamResponse(self, connection, event.status_code, UpstreamHeaders(list(event.headers)))
            elif type(event) is h11.InformationalResponse:
                continue  # 100 Continue and the like
            else:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
