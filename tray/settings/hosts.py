"""OLLAMA_HOST parsing, the way Ollama's envconfig.Host() does it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_PORT = 11434
DEFAULT_HOST = "http://127.0.0.1:11434"


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
