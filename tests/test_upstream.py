"""The gateway's client to Ollama (tray/gateway/upstream.py) against a loopback server that sends exact bytes.

Each test scripts the server's answers byte for byte, so the framing cases
llhttp leaves to its caller (HEAD, bodies ended by the close, informational
answers) and the ways a server can break off are each seen on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tray.gateway.upstream import UpstreamClient, UpstreamResponse


class ScriptedServer:
    """Answers the n-th request on any connection with ``answers[n]`` (bytes, then close if ``close`` says so)."""

    def __init__(self, answers: list[bytes], close_after: set[int] | None = None) -> None:
        self.answers = answers
        self.close_after = close_after or set()
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                index = len(self.requests)
                self.requests.append(request)
                writer.write(self.answers[index])
                await writer.drain()
                if index in self.close_after:
                    return
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's bytes as sent (head and body, chunked framing included); None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), 0)
    if any(line.startswith(b"transfer-encoding:") and b"chunked" in line for line in lines):
        return head + await reader.readuntil(b"0\r\n\r\n")
    return head + await reader.readexactly(length)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def client_for(server: ScriptedServer) -> UpstreamClient:
    return UpstreamClient(server.url, connect_timeout=5, write_timeout=5)


async def whole(response: UpstreamResponse) -> bytes:
    async with asyncio.timeout(5):
        return await response.aread()


OK_HELLO = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


def test_a_kept_alive_connection_carries_the_next_request() -> None:
    async def test() -> None:
        async with ScriptedServer([OK_HELLO, OK_HELLO]) as server:
            client = client_for(server)
            for _ in range(2):
                response = await client.send("GET", "/api/version", ())
                assert (response.status_code, await whole(response)) == (200, b"hello")
                assert response.headers.get("Content-Type") == "text/plain"
            assert server.connections == 1
            await client.aclose()

    run(test)


def test_a_chunked_answer_comes_without_its_framing_and_the_connection_is_reused() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def test() -> None:
        async with ScriptedServer([chunked, OK_HELLO]) as server:
            client = client_for(server)
            assert await whole(await client.send("GET", "/a", ())) == b"abcde"
            assert await whole(await client.send("GET", "/b", ())) == b"hello"
            assert server.connections == 1
            await client.aclose()

    run(test)


def test_a_body_without_length_ends_with_the_connection_which_is_not_reused() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"

    async def test() -> None:
        async with ScriptedServer([until_close, OK_HELLO], close_after={0}) as server:
            client = client_for(server)
            assert await whole(await client.send("GET", "/a", ())) == b"all of it"
            assert await whole(await client.send("GET", "/b", ())) == b"hello"
            assert server.connections == 2
            await client.aclose()

    run(test)


def test_an_answer_to_head_has_no_body_whatever_its_length_says() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"

    async def test() -> None:
        async with ScriptedServer([head_answer, OK_HELLO]) as server:
            client = client_for(server)
            response = await client.send("HEAD", "/api/blobs/sha256:00", ())
            assert (response.status_code, await whole(response)) == (200, b"")
            assert response.headers.get("content-length") == "1000"
            assert await whole(await client.send("GET", "/b", ())) == b"hello"
            assert server.connections == 1
            await client.aclose()

    run(test)


def test_an_informational_answer_is_skipped_for_the_one_that_follows() -> None:
    async def test() -> None:
        async with ScriptedServer([b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HELLO]) as server:
            client = client_for(server)
            response = await client.send("POST", "/api/create", (), b"{}")
            assert (response.status_code, await whole(response)) == (200, b"hello")
            await client.aclose()

    run(test)


def test_no_body_after_204_and_304() -> None:
    async def test() -> None:
        answers = [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n", OK_HELLO]
        async with ScriptedServer(answers) as server:
            client = client_for(server)
            for status in (204, 304):
                response = await client.send("GET", "/", ())
                assert (response.status_code, await whole(response)) == (status, b"")
            assert await whole(await client.send("GET", "/", ())) == b"hello"
            assert server.connections == 1
            await client.aclose()

    run(test)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "closed the connection before the answer ended"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n", "before the answer ended"),
        (b"HTTP/1.1 200 OK\r\ncontent-le", "Server disconnected without sending a response"),
        (b"", "Server disconnected without sending a response"),
        (b"SPDY/3 200 OK\r\n\r\n", "malformed answer from the server"),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\nconnection: upgrade\r\n\r\n", "switched protocols"),
    ],
)
def test_a_broken_off_or_malformed_answer_is_a_protocol_error(answer: bytes, message: str) -> None:
    async def test() -> None:
        async with ScriptedServer([answer], close_after={0}) as server:
            client = client_for(server)
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await whole(await client.send("GET", "/", ()))
            await client.aclose()

    run(test)


def test_an_answer_left_unread_closes_its_connection() -> None:
    async def test() -> None:
        async with ScriptedServer([OK_HELLO, OK_HELLO]) as server:
            client = client_for(server)
            response = await client.send("GET", "/a", ())
            await response.aclose()  # the client went away before the body
            assert await whole(await client.send("GET", "/b", ())) == b"hello"
            assert server.connections == 2
            await client.aclose()

    run(test)


def test_the_request_goes_out_as_written_with_the_host_and_length() -> None:
    async def test() -> None:
        async with ScriptedServer([OK_HELLO]) as server:
            client = client_for(server)
            await whole(await client.send("POST", "/api/chat?x=1", [(b"content-type", b"application/json")], b"{}"))
            host = server.url.removeprefix("http://").encode()
            assert server.requests == [
                b"POST /api/chat?x=1 HTTP/1.1\r\nhost: " + host
                + b"\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            ]  # fmt: skip
            await client.aclose()

    run(test)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_an_upload_of_unknown_length_is_sent_chunked() -> None:
    async def test() -> None:
        async with ScriptedServer([OK_HELLO]) as server:
            client = client_for(server)
            await whole(await client.send("POST", "/api/blobs/sha256:00", (), pieces(b"abc", b"", b"defg")))
            assert server.requests[0].endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
            await client.aclose()

    run(test)


def test_an_upload_longer_than_its_declared_length_is_refused_before_it_reaches_the_server() -> None:
    async def test() -> None:
        async with ScriptedServer([OK_HELLO, OK_HELLO]) as server:
            client = client_for(server)
            with pytest.raises(httpx.LocalProtocolError, match="longer than its declared"):
                await client.send("POST", "/api/blobs/sha256:00", [(b"content-length", b"3")], pieces(b"abcd"))
            assert server.requests == []
            await client.aclose()

    run(test)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/tags HTTP/1.1\r\nx: y", []),
        ("/api/tags", [(b"x-note", b"one\r\nx-injected: two")]),
        ("/api/tags", [(b"bad name", b"v")]),
    ],
)
def test_a_field_that_would_break_the_framing_is_refused(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    async def test() -> None:
        async with ScriptedServer([OK_HELLO]) as server:
            client = client_for(server)
            with pytest.raises(httpx.LocalProtocolError):
                await client.send("GET", target, headers)
            assert server.requests == []
            await client.aclose()

    run(test)
