"""Whose a loopback connection is, from the kernel's socket tables, with real sockets."""

from __future__ import annotations

import os
import socket

import pytest

from tray.system.peers import peer_lookup_available, peer_uid

pytestmark = pytest.mark.skipif(not peer_lookup_available(), reason="needs Linux's /proc/net/tcp")


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_client_end_of_a_loopback_connection_is_found_with_its_owner(family: int, host: str) -> None:
    with socket.socket(family) as listener:
        try:
            listener.bind((host, 0))
        except OSError:
            pytest.skip(f"no {host} here")
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, client_address = listener.accept()
            with accepted:
                server_address = accepted.getsockname()[:2]
                assert peer_uid(client_address[:2], server_address) == os.getuid()
                assert peer_uid((host, 1), server_address) is None
