"""OLLAMA_HOST parsing, the way Ollama's envconfig.Host() does it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tray.settings.meta import MAX_PORT, shown

DEFAULT_PORT = 11434
DEFAULT_HOST = "http://127.0.0.1:11434"
ALL_INTERFACES = ("", "0.0.0.0", "::")  # bind hosts that listen on every network interface

_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_ADDRESS_EXAMPLE = "an address such as 127.0.0.1:11434 or http://host:11434"


@dataclass(frozen=True)
class OllamaHost:
    scheme: str
    host: str  # "" means all interfaces
    port: int
    path: str = ""

    @property
    def connect_host(self) -> str:
        """The address a client dials: wildcard binds map to loopback (Ollama's ConnectableHost)."""
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def url(self) -> str:
        """Base URL for HTTP clients, without a trailing slash."""
        base = f"{self.scheme}://{_join(self.connect_host, self.port)}"
        return f"{base}/{self.path}" if self.path else base

    @property
    def bind_value(self) -> str:
        """The OLLAMA_HOST value handed to an `ollama serve` this app starts."""
        return _join(self.host, self.port)

    @property
    def all_interfaces(self) -> bool:
        """Does a server started with this address listen on every network interface?"""
        return self.host in ALL_INTERFACES

    @property
    def is_loopback(self) -> bool:
        if self.connect_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.connect_host).is_loopback
        except ValueError:
            return False


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort: requires a port; brackets for IPv6."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None
    host, port = hostport.split(":")
    return host, port


def parse_ollama_host(value: str | None) -> OllamaHost:
    """Parse an OLLAMA_HOST value exactly as Ollama does (envconfig/config.go ``Host``).

    >>> parse_ollama_host("1.2.3.4").url
    'http://1.2.3.4:11434'
    >>> parse_ollama_host(":1234").bind_value
    ':1234'
    >>> parse_ollama_host("https://example.com/ollama").url
    'https://example.com:443/ollama'
    """
    s = (value or "").strip().strip("\"'")
    default_port = str(DEFAULT_PORT)
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
        if s == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(bare))
        except ValueError:
            if hostport:
                host = hostport
    else:
        host, port = split
    try:
        port_number = int(port)
    except ValueError:
        port_number = -1
    if not 0 <= port_number <= 65535:
        port_number = int(default_port)
    return OllamaHost(scheme=scheme, host=host, port=port_number, path=path)


def exposure_warning(value: str | None) -> str | None:
    """The warning for an address that makes a started Ollama listen on every network interface, else None.

    >>> print(exposure_warning("0.0.0.0:11434"))
    Ollama started by this app listens on every network interface (OLLAMA_HOST 0.0.0.0:11434): anyone on the \
network can use it; set ollama_host = "127.0.0.1:11434" to keep it on this machine
    >>> exposure_warning("127.0.0.1:11434") is None
    True
    """
    host = parse_ollama_host(value)
    if not host.all_interfaces:
        return None
    return (
        f"Ollama started by this app listens on every network interface (OLLAMA_HOST {host.bind_value}): anyone on "
        f'the network can use it; set ollama_host = "127.0.0.1:{host.port}" to keep it on this machine'
    )


def _host_name_ok(host: str) -> bool:
    """An IP address (IPv6 with an optional zone), or a DNS name of ASCII labels."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if not host or len(host) > 253 or not host.isascii():
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split("."))


def check_ollama_host(value: str) -> None:
    """Raise ValueError ("must …, got …") for an ``OLLAMA_HOST`` value a start of Ollama could not use.

    Ollama itself takes nearly anything and falls back to its default port
    without a word; the manager would then watch one address while Ollama
    listens on another, so such values are refused instead.

    >>> for good in ("127.0.0.1:11434", "0.0.0.0", ":11500", "http://[::1]:11434", "https://gpu-box.lan/ollama"):
    ...     check_ollama_host(good)
    >>> check_ollama_host("localhost:70000")
    Traceback (most recent call last):
    ValueError: must have a port from 1 to 65535, got 'localhost:70000'
    >>> check_ollama_host("ftp://box:21")
    Traceback (most recent call last):
    ValueError: must be an http:// or https:// address, got 'ftp://box:21'
    """
    text = value.strip().strip("\"'")
    if not value:
        return  # empty: the default address
    scheme, sep, hostport = text.partition("://")
    if not sep:
        hostport = text
    elif scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// address, got {shown(value)}")
    hostport = hostport.partition("/")[0]
    if any(char in hostport for char in "?#@\\ ") or not text:
        raise ValueError(f"must be {_ADDRESS_EXAMPLE}, got {shown(value)}")
    split = _split_host_port(hostport)
    if split is None:
        if hostport.startswith("[") != hostport.endswith("]") or hostport.count(":") == 1:
            raise ValueError(f"must be {_ADDRESS_EXAMPLE}, got {shown(value)}")
        host, port = hostport.strip("[]"), None
    else:
        host, port = split
    if port is not None and not (port.isdigit() and 1 <= int(port) <= MAX_PORT):
        raise ValueError(f"must have a port from 1 to {MAX_PORT}, got {shown(value)}")
    if host and not _host_name_ok(host):
        raise ValueError(
            f"must name its host by IP address or by a name of letters, digits and '-', got {shown(value)}"
        )
