"""Serve's side of the runner protocol, always watching the client that the work is for.

Serve talks to its runner children over HTTP on loopback (``GET /health``,
``POST /completion`` answered with server-sent events one token at a time, ``POST
/embedding``), one connection per call, as Ollama does with llama-server. Every wait
also watches the socket of the API client the work is for: when that client closes its
connection (EOF), the wait ends with :class:`Cancelled`, like a Go request context.
"""

from __future__ import annotations

import contextlib
import json
import select
import selectors
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

POLL_S = 0.05
CONNECT_TIMEOUT_S = 2.0

# Ollama's llm.ServerStatus names.
READY = "llm server ready"
NO_SLOT = "llm busy - no slots available"
LOADING = "llm server loading model"
NOT_RESPONDING = "llm server not responding"
ERROR = "llm server error"


class Cancelled(Exception):
    """The API client closed its connection; ``stage`` is where its request was (queued, loading, ...)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


class RunnerFailed(Exception):
    """The runner could not do the work; ``message`` is the error Ollama gives the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunnerTimeout(Exception):
    """The runner did not answer in time (a stopped or hung runner)."""


class ClientWatch:
    """Whether an API client has gone: EOF on its socket once its request was read.

    Data after the request (a pipelined request) is not a disconnect; the socket is then
    no longer watched.
    """

    def __init__(self, sock: Optional[socket.socket]) -> None:
        self.sock = sock
        self.closed = False
        self.pipelined = False

    def selectable(self) -> List[socket.socket]:
        """The socket to include in a ``select`` so a wait wakes up when the client goes."""
        return [self.sock] if self.sock is not None and not (self.closed or self.pipelined) else []

    def gone(self) -> bool:
        """True once the client closed its side of the connection (or the socket failed)."""
        if self.closed:
            return True
        if not self.selectable():
            return False
        assert self.sock is not None
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            data = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            self.closed = True
            return True
        if data:
            self.pipelined = True
            return False
        self.closed = True
        return True

    def sleep(self, seconds: float, stage: str) -> None:
        """Wait ``seconds``, or raise :class:`Cancelled` as soon as the client goes."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if self.gone():
                raise Cancelled(stage)
            if remaining <= 0:
                return
            wait_for(self.selectable(), min(POLL_S, remaining))


NO_CLIENT = ClientWatch(None)


class DisconnectWatcher:
    """One thread that wakes waiters the moment a watched client closes its connection (a Go context's ``Done``).

    A request that waits on a condition (in the queue, for a slot) is registered while it waits;
    when its client's socket turns readable, ``wake`` is called, and the waiter looks at
    :meth:`ClientWatch.gone` itself. Data after the request (a pipelined request) stops the watch.
    The thread starts with the first watch and sleeps in ``select`` until something happens.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self._lock = threading.Lock()
        self._changes: List[Tuple[bool, ClientWatch]] = []
        self._selector: Optional[selectors.BaseSelector] = None
        self._doorbell: Optional[Tuple[socket.socket, socket.socket]] = None

    @contextlib.contextmanager
    def watching(self, watch: ClientWatch) -> Iterator[None]:
        """Call ``wake`` if ``watch``'s client goes while the block runs."""
        if not watch.selectable():
            yield
            return
        self._change(True, watch)
        try:
            yield
        finally:
            self._change(False, watch)

    def _change(self, add: bool, watch: ClientWatch) -> None:
        with self._lock:
            if self._doorbell is None:
                self._doorbell = socket.socketpair()
                self._doorbell[1].setblocking(False)
                self._selector = selectors.DefaultSelector()
                self._selector.register(self._doorbell[0], selectors.EVENT_READ, None)
                threading.Thread(target=self._run, name="client-watch", daemon=True).start()
            self._changes.append((add, watch))
            try:
                self._doorbell[1].send(b"\0")
            except (BlockingIOError, OSError):
                pass  # the doorbell is full: the thread will look at the changes anyway

    def _run(self) -> None:
        assert self._selector is not None and self._doorbell is not None
        selector, bell = self._selector, self._doorbell[0]
        watched: Dict[int, ClientWatch] = {}
        while True:
            for key, _events in selector.select():
                if key.fileobj is bell:
                    with contextlib.suppress(OSError):
                        bell.recv(4096)
                    continue
                watch = key.data
                watch.gone()  # EOF marks it closed; data marks it pipelined; either way it is watched no more
                selector.unregister(key.fileobj)
                watched.pop(id(watch), None)
                self.wake()
            with self._lock:
                changes, self._changes = self._changes, []
            for add, watch in changes:
                sock = watch.sock
                if add and sock is not None and watch.selectable() and id(watch) not in watched:
                    try:
                        selector.register(sock, selectors.EVENT_READ, watch)
                    except (KeyError, ValueError, OSError):
                        continue  # closed already, or the same socket watched for another wait
                    watched[id(watch)] = watch
                elif not add and watched.pop(id(watch), None) is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        selector.unregister(watch.sock)  # type: ignore[arg-type]


def wait_for(sockets: List[socket.socket], seconds: float) -> List[socket.socket]:
    """``select`` for readability, or a plain sleep when there is nothing to watch."""
    if not sockets:
        time.sleep(max(0.0, seconds))
        return []
    try:
        readable, _, _ = select.select(sockets, [], [], max(0.0, seconds))
    except (OSError, ValueError):
        return []
    return readable


class RunnerCall:
    """One HTTP call to a runner: the request is sent at once, the answer read as it comes.

    Reads wait at most until ``timeout`` seconds after the call started (None: no limit) and
    raise :class:`Cancelled` (``stage``) when ``watch`` sees its client go.
    """

    def __init__(
        self,
        port: int,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]],
        watch: ClientWatch,
        stage: str,
        timeout: Optional[float] = None,
    ) -> None:
        self.watch = watch
        self.stage = stage
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.buffer = b""
        self.eof = False
        data = json.dumps(body).encode("utf-8") if body is not None else b""
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n" % (method, path, port)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
        try:
            self.sock.sendall(head.encode("ascii") + b"\r\n" + data)
            self.status, self.headers = self._read_head()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection (a runner stops working for a call whose connection closed)."""
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> bool:
        """Read more of the answer into the buffer; False at its end."""
        if self.eof:
            return False
        while True:
            wait = POLL_S
            if self.deadline is not None:
                wait = min(wait, self.deadline - time.monotonic())
                if wait <= 0:
                    raise RunnerTimeout()
            readable = wait_for([self.sock, *self.watch.selectable()], wait)
            if self.watch.gone():
                raise Cancelled(self.stage)
            if self.sock in readable:
                break
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _read_head(self) -> Tuple[int, Dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionResetError("the runner closed the connection before answering")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return status, headers

    def read_all(self) -> bytes:
        """The whole body (the runner closes the connection after it)."""
        while self._fill():
            pass
        return self.buffer

    def lines(self) -> Iterator[bytes]:
        """The body line by line as it arrives (the last, unterminated piece included)."""
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                yield line.rstrip(b"\r")
            if not self._fill():
                if self.buffer:
                    rest, self.buffer = self.buffer, b""
                    yield rest
                return


def health(port: int, watch: ClientWatch, timeout: Optional[float], stage: str) -> Tuple[str, str]:
    """Ollama's ``getServerStatus`` over ``GET /health``: (status name, error detail or "")."""
    try:
        call = RunnerCall(port, "GET", "/health", None, watch, stage, timeout)
        try:
            body = call.read_all()
        finally:
            call.close()
    except RunnerTimeout:
        return NOT_RESPONDING, "server not responding"
    except ConnectionRefusedError:
        return NOT_RESPONDING, "connection refused"
    except socket.timeout:
        return NOT_RESPONDING, "server not responding"
    except OSError as error:
        return ERROR, "health resp: %s" % error
    return health_status(body)


def health_status(body: bytes) -> Tuple[str, str]:
    """The status a ``/health`` body means, as Ollama reads llama-server's answers.

    >>> health_status(b'{"status":"ok"}')
    ('llm server ready', '')
    >>> health_status(b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
    ('llm server loading model', '')
    >>> health_status(b'{"status":"error","message":"out of memory"}')
    ('llm server error', 'llama-server error: {"status":"error","message":"out of memory"}')
    """
    text = body.decode("utf-8", "replace")
    try:
        result = json.loads(text)
    except ValueError as error:
        return ERROR, "health unmarshal: %s" % error
    if not isinstance(result, dict):
        return ERROR, "health unmarshal: not an object"
    status = result.get("status")
    named = {"ok": READY, "loading model": LOADING, "no slot available": NO_SLOT}
    if status in named:
        return named[status], ""
    error = result.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or "").strip().lower()
        if message in ("loading model", "no slot available"):
            return named[message], ""
    return ERROR, "llama-server error: %s" % text
