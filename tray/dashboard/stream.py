"""Server-sent events: the dashboard's live feed.

The monitor and the history call :meth:`StreamHub.publish` from their own
threads; each open ``/api/stream`` response owns a :class:`StreamClient`
whose asyncio queue is fed through ``loop.call_soon_threadsafe``, so the
event loop never blocks on a lock the monitor holds.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

KEEPALIVE_SECONDS = 15.0
RECONNECT_MILLISECONDS = 1000
QUEUE_LIMIT = 256  # a client this far behind is stuck; newer messages are dropped for it


def sse_frame(event: str, data: Any) -> bytes:
    """One SSE message carrying ``data`` as JSON (which never contains a raw newline).

    >>> sse_frame("status", {"health": "down"})
    b'event: status\\ndata: {"health":"down"}\\n\\n'
    """
    payload = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {payload}\n\n".encode()


def sse_retry(milliseconds: int) -> bytes:
    """Tells the browser how soon to reconnect when the stream drops.

    >>> sse_retry(1000)
    b'retry: 1000\\n\\n'
    """
    return f"retry: {milliseconds}\n\n".encode()


SSE_KEEPALIVE = b": keepalive\n\n"


@dataclass(frozen=True)
class Message:
    event: str
    data: Any


_CLOSED = Message("", None)


class StreamClient:
    """One open stream: messages from any thread, read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=QUEUE_LIMIT)

    def offer(self, message: Message) -> bool:
        """Queue ``message`` from any thread; False once the client's loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self._put, message)
            return True
        except RuntimeError:  # the event loop is closed
            return False

    def _put(self, message: Message) -> None:
        if message is _CLOSED:
            while not self.queue.empty():
                self.queue.get_nowait()
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            pass

    async def next(self, timeout: float) -> Message | None:
        """The next message, or None when ``timeout`` passes without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class StreamHub:
    """Fans messages out to every open stream."""

    def __init__(self) -> None:
        self._clients: set[StreamClient] = set()
        self._lock = threading.Lock()
        self._closed = False

    def connect(self, loop: asyncio.AbstractEventLoop) -> StreamClient:
        client = StreamClient(loop)
        with self._lock:
            if self._closed:
                client.offer(_CLOSED)
            else:
                self._clients.add(client)
        return client

    def disconnect(self, client: StreamClient) -> None:
        with self._lock:
            self._clients.discard(client)

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def publish(self, event: str, data: Any) -> None:
        """Send to every stream (any thread)."""
        self._offer_all(Message(event, data))

    def close(self) -> None:
        """End every stream, so the HTTP server can shut down; later streams end at once."""
        with self._lock:
            self._closed = True
        self._offer_all(_CLOSED)

    def _offer_all(self, message: Message) -> None:
        with self._lock:
            clients = list(self._clients)
        gone = [client for client in clients if not client.offer(message)]
        for client in gone:
            self.disconnect(client)


async def sse_frames(
    client: StreamClient,
    first: list[Message],
    keepalive_seconds: float = KEEPALIVE_SECONDS,
    on_end: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """The bytes of one stream: the reconnect delay, ``first``, then each message until the hub closes."""
    try:
        yield sse_retry(RECONNECT_MILLISECONDS)
        for opening in first:
            yield sse_frame(opening.event, opening.data)
        while True:
            message = await client.next(keepalive_seconds)
            if message is None:
                yield SSE_KEEPALIVE
            elif message is _CLOSED:
                return
            else:
                yield sse_frame(message.event, message.data)
    finally:
        if on_end is not None:
            on_end()
