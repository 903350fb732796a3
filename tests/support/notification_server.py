"""A private D-Bus session bus and a small ``org.freedesktop.Notifications`` server that records its calls.

Used by the notification tests and by packaging/smoke_test.py (the frozen app's ``notify`` on Linux).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

NOTIFICATIONS = "org.freedesktop.Notifications"

# A session bus of its own for one test. It activates only the services in `service_dir` (xfconfd for the xfce
# panel; none for the notification tests), never the machine's (/usr/share/dbus-1/services: a notification daemon
# such as dunst would answer in place of the test's server), and includes no other configuration.
BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={socket_dir}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{service_dir}</servicedir>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class NoDbusDaemon(Exception):
    """dbus-daemon is not installed."""


@contextmanager
def private_session_bus() -> Iterator[str]:
    """A session ``dbus-daemon`` of our own that activates no service; yields its address."""
    daemon_path = shutil.which("dbus-daemon")
    if daemon_path is None:
        raise NoDbusDaemon("dbus-daemon is not installed")
    # A short directory: unix socket paths are limited to ~100 bytes.
    with tempfile.TemporaryDirectory(prefix="om-dbus-", dir="/tmp") as directory:
        no_services = Path(directory, "services")
        no_services.mkdir()
        config = Path(directory, "bus.conf")
        config.write_text(BUS_CONFIG.format(socket_dir=directory, service_dir=no_services))
        daemon = subprocess.Popen(
            [daemon_path, f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert daemon.stdout is not None
            address = daemon.stdout.readline().strip()
            assert address.startswith("unix:path="), address
            yield address
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


class NotificationServer:
    """Owns org.freedesktop.Notifications on a bus and records the calls it gets."""

    def __init__(self, address: str) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self._received = threading.Condition()
        self._stop = threading.Event()
        self._connection = open_dbus_connection(bus=address)
        reply = self._connection.send_and_get_reply(message_bus.RequestName(NOTIFICATIONS), timeout=5)
        assert reply.body == (1,)  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def notifications(self, count: int, timeout: float = 10.0) -> list[tuple]:
        """The bodies of the first ``count`` Notify calls, waiting for them to arrive."""
        with self._received:
            self._received.wait_for(lambda: len(self._notify_bodies()) >= count, timeout=timeout)
            return self._notify_bodies()

    def _notify_bodies(self) -> list[tuple]:
        return [body for member, body in self.calls if member == "Notify"]

    def _serve(self) -> None:
        next_id = 1
        while not self._stop.is_set():
            try:
                message = self._connection.receive(timeout=0.1)
            except TimeoutError:
                continue
            if message.header.message_type is not MessageType.method_call:
                continue
            member = message.header.fields.get(HeaderFields.member)
            if member == "Notify":
                reply = new_method_return(message, "u", (next_id,))
                next_id += 1
            elif member == "GetCapabilities":
                reply = new_method_return(message, "as", (["body"],))
            elif member == "GetServerInformation":
                reply = new_method_return(message, "ssss", ("test-server", "tests", "1.0", "1.2"))
            else:
                reply = new_error(message, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"no {member}",))
            self._connection.send(reply)
            with self._received:
                self.calls.append((member, message.body))
                self._received.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._connection.close()
