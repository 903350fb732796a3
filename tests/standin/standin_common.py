"""Shared helpers of the stand-in `ollama`: env parsing, Go-style formatting, names, events.

Standard library only: the stand-in must run with any python3.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

VERSION = os.environ.get("OLLAMA_STANDIN_VERSION", "0.33.0")
LLAMA_SERVER_SINCE = (0, 30)
DEFAULT_PORT = 11434
MIB = 1024 * 1024
MAX_DURATION_NS = 2**63 - 1
FOREVER = float("inf")

# The executable that spawns runners; set by the `ollama` entry point.
EXECUTABLE = ""
# Built into real executables by tests/standin/freeze.py (Windows finds ``ollama.exe`` only).
FROZEN = bool(getattr(sys, "frozen", False))


def version_tuple(text: str) -> Tuple[int, ...]:
    """The numeric parts of a version, for comparisons.

    >>> version_tuple("0.33.0-rc2")
    (0, 33, 0)
    >>> version_tuple("0.12.10") < (0, 30)
    True
    """
    parts = []
    for part in text.lstrip("v").split("-", 1)[0].split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def uses_llama_server() -> bool:
    """Whether the claimed version runs ``llama-server`` (>= 0.30) rather than ``ollama runner``."""
    return version_tuple(VERSION) >= LLAMA_SERVER_SINCE


def env_var(key: str) -> str:
    """An environment value trimmed of spaces and quotes, like Ollama's ``envconfig.Var``."""
    return os.environ.get(key, "").strip().strip("\"'")


def uint_env(key: str, default: int) -> int:
    """``envconfig.Uint``: a non-negative integer, the default when unset or invalid."""
    text = env_var(key)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        return default
    return value if value >= 0 else default


def ms_env(key: str, default: float) -> float:
    """A stand-in knob in milliseconds (a non-negative number), the default when unset or invalid."""
    try:
        value = float(env_var(key) or default)
    except ValueError:
        return default
    return value if value >= 0 else default


# --- OLLAMA_HOST -----------------------------------------------------------------


class HostSpec:
    """A parsed OLLAMA_HOST: what `serve` binds and what the CLI dials."""

    def __init__(self, scheme: str, host: str, port: int, path: str) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path

    @property
    def hostport(self) -> str:
        """Go's ``net.JoinHostPort``; also the address named in listen errors."""
        return join_host_port(self.host, self.port)

    @property
    def dial_host(self) -> str:
        """The host a client connects to (an empty host means the local machine)."""
        return self.host or "127.0.0.1"


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: brackets around IPv6 literals."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _split_host_port(hostport: str) -> Optional[Tuple[str, str]]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None
    host, port = hostport.split(":")
    return host, port


def _parse_ip(text: str) -> Optional[str]:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_host(value: str) -> HostSpec:
    """Parse an OLLAMA_HOST value the way Ollama's ``envconfig.Host`` does."""
    text = value.strip().strip("\"'").strip()
    default_port = str(DEFAULT_PORT)
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        ip = _parse_ip(hostport.strip("[]"))
        if ip is not None:
            host = ip
        elif hostport:
            host = hostport
    else:
        host, port = split
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        number = int(default_port)
    return HostSpec(scheme, host, number, path)


def host_from_env() -> HostSpec:
    """The OLLAMA_HOST of this process."""
    return parse_host(env_var("OLLAMA_HOST"))


def models_dir_from_env() -> str:
    """OLLAMA_MODELS, else ``~/.ollama/models``."""
    configured = env_var("OLLAMA_MODELS")
    if configured:
        return os.path.abspath(configured)  # as written: Ollama does not expand "~"
    return os.path.join(os.path.expanduser("~"), ".ollama", "models")


# --- Go durations ----------------------------------------------------------------

_UNIT_NS = {"ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-zµμ]*)")


class DurationError(ValueError):
    """A string Go's ``time.ParseDuration`` would reject; ``str()`` is Go's message."""


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, in nanoseconds.

    >>> parse_go_duration("1m30s")
    90000000000
    >>> parse_go_duration("-1.5h")
    -5400000000000
    """
    original = text
    sign = 1
    if text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationError('time: invalid duration "%s"' % original)
    total = 0.0
    while text:
        match = _DURATION_PART.match(text)
        if match is None:
            raise DurationError('time: invalid duration "%s"' % original)
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise DurationError('time: invalid duration "%s"' % original)
        if not unit:
            raise DurationError('time: missing unit in duration "%s"' % original)
        if unit not in _UNIT_NS:
            raise DurationError('time: unknown unit "%s" in duration "%s"' % (unit, original))
        total += float(number) * _UNIT_NS[unit]
        text = text[match.end() :]
    return sign * round(total)


def go_duration_string(ns: int) -> str:
    """Go's ``time.Duration.String``.

    >>> go_duration_string(28458)
    '28.458µs'
    >>> go_duration_string(90 * 10**9)
    '1m30s'
    """
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1000:
        return "%s%dns" % (sign, ns)
    if ns < 10**6:
        return sign + _trim_fraction(ns, 1000) + "µs"
    if ns < 10**9:
        return sign + _trim_fraction(ns, 10**6) + "ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _trim_fraction(rest, 10**9) + "s"
    if hours:
        return "%s%dh%dm%s" % (sign, hours, minutes, text)
    if minutes:
        return "%s%dm%s" % (sign, minutes, text)
    return sign + text


def _trim_fraction(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    digits = len(str(unit)) - 1
    text = str(fraction).rjust(digits, "0").rstrip("0")
    return "%d.%s" % (whole, text) if text else str(whole)


def keep_alive_seconds(value: Any, default: Optional[float]) -> Optional[float]:
    """A request's ``keep_alive`` as seconds (``FOREVER`` when negative), like ``api.Duration``.

    Raises :class:`DurationError` for strings Go rejects and ``TypeError`` for other JSON types.
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError("Unsupported type: '%s'" % _go_type_name(value))
    seconds = parse_go_duration(value) / 1e9 if isinstance(value, str) else float(value)
    return FOREVER if seconds < 0 else seconds


def default_keep_alive() -> float:
    """OLLAMA_KEEP_ALIVE (a Go duration or whole seconds), default five minutes."""
    text = env_var("OLLAMA_KEEP_ALIVE")
    seconds = 300.0
    if text:
        try:
            seconds = parse_go_duration(text) / 1e9
        except DurationError:
            try:
                seconds = float(int(text))
            except ValueError:
                pass
    return FOREVER if seconds < 0 else seconds


def _go_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


# --- JSON and time formatting ------------------------------------------------------


def normalize_numbers(value: Any) -> Any:
    """Integral floats become ints, as Go prints float64 values (``4096``, not ``4096.0``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, list):
        return [normalize_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: normalize_numbers(item) for key, item in value.items()}
    return value


def go_json(value: Any) -> str:
    """Compact JSON as Go's encoder writes it (HTML characters escaped, no trailing newline)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def rfc3339nano(epoch_ns: int, utc: bool = False) -> str:
    """Go's ``time.RFC3339Nano`` for a wall-clock instant (local zone unless ``utc``)."""
    seconds, nanos = divmod(epoch_ns, 10**9)
    moment = _EPOCH + _dt.timedelta(seconds=seconds)
    if not utc:
        moment = moment.astimezone()
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = ("%09d" % nanos).rstrip("0")
    if fraction:
        text += "." + fraction
    return text + _zone_suffix(moment)


def _zone_suffix(moment: _dt.datetime) -> str:
    offset = moment.utcoffset() or _dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    return "%s%02d:%02d" % (sign, abs(minutes) // 60, abs(minutes) % 60)


def utc_now() -> str:
    """``time.Now().UTC()`` as Go marshals it."""
    return rfc3339nano(time.time_ns(), utc=True)


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of an RFC3339 timestamp with up to nanosecond precision."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        raise ValueError("not an RFC3339 time: %r" % text)
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    moment = _dt.datetime.fromisoformat(base + zone)
    return (moment - _EPOCH).total_seconds() + float("0." + (fraction or "0"))


def human_bytes(size: int) -> str:
    """Ollama's ``format.HumanBytes`` (decimal units).

    >>> human_bytes(4_200_000)
    '4.2 MB'
    >>> human_bytes(12_000_000_000)
    '12 GB'
    """
    for limit, unit in ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB")):
        if size >= limit:
            value = size / limit
            if value >= 10 or value == int(value):
                return "%d %s" % (int(value), unit)
            return "%.1f %s" % (value, unit)
    return "%d B" % size


def human_duration(seconds_float: float) -> str:
    """Ollama's ``format.humanDuration``."""
    seconds = int(seconds_float)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return "%d seconds" % seconds
    minutes = seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return "%d minutes" % minutes
    hours = round(seconds_float / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return "%d hours" % hours
    if hours < 24 * 7 * 2:
        return "%d days" % (hours // 24)
    if hours < 24 * 30 * 2:
        return "%d weeks" % (hours // 24 // 7)
    if hours < 24 * 365 * 2:
        return "%d months" % (hours // 24 // 30)
    return "%d years" % (int(seconds_float / 3600) // 24 // 365)


def human_time(then: float, now: float) -> str:
    """Ollama's ``format.HumanTime`` for epoch seconds ``then`` seen at ``now``."""
    delta = now - then
    if delta / 3600 / 24 / 365 < -20:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


# --- Model names -----------------------------------------------------------------

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_PART_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


class ModelName:
    """``[host/][namespace/]model[:tag]`` with Ollama's defaults (types/model/name.go)."""

    def __init__(self, host: str, namespace: str, model: str, tag: str) -> None:
        self.host = host
        self.namespace = namespace
        self.model = model
        self.tag = tag

    @classmethod
    def parse(cls, text: str) -> "ModelName":
        """``ParseName``: split the parts, then fill missing ones with the defaults."""
        text = text.split("@", 1)[0]
        tag = ""
        if text.rfind(":") > text.rfind("/"):
            text, tag = text.rsplit(":", 1)
        parts = text.split("/")
        model = parts.pop() if parts else ""
        namespace = parts.pop() if parts else ""
        host = "/".join(parts)
        if "://" in host:
            host = host.split("://", 1)[1]
        return cls(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)

    @property
    def is_valid(self) -> bool:
        """Every part is non-empty and uses only the characters Ollama allows there."""
        return all(
            _valid_part(kind, value)
            for kind, value in (
                ("host", self.host),
                ("namespace", self.namespace),
                ("model", self.model),
                ("tag", self.tag),
            )
        )

    @property
    def display(self) -> str:
        """``DisplayShortest``: ``llama3:latest``, ``user/m:tag`` or ``host/ns/m:tag``."""
        prefix = ""
        if self.host.lower() != DEFAULT_HOST:
            prefix = "%s/%s/" % (self.host, self.namespace)
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = self.namespace + "/"
        return "%s%s:%s" % (prefix, self.model, self.tag)

    @property
    def manifest_parts(self) -> Tuple[str, str, str, str]:
        """Path components under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelName) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def key(self) -> str:
        """A case-insensitive identity for dictionaries."""
        return "/".join(self.manifest_parts).lower()

    def __repr__(self) -> str:
        return "ModelName(%r)" % self.display


def _valid_part(kind: str, value: str) -> bool:
    if not value or len(value) > _PART_LIMITS[kind]:
        return False
    if not (value[0].isascii() and (value[0].isalnum() or value[0] == "_")):
        return False
    for char in value[1:]:
        if char in "_-":
            continue
        if char == "." and kind != "namespace":
            continue
        if char == ":" and kind == "host":
            continue
        if not (char.isascii() and (char.isalnum() or char == "_")):
            return False
    return True


# --- Logging in Ollama's styles ------------------------------------------------------


def _slog_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(char in text for char in ' ="\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def slog_line(level: str, source: str, msg: str, attrs: Iterable[Tuple[str, Any]] = ()) -> str:
    """One line of Go's slog text handler, as ``ollama serve`` writes to stderr."""
    moment = _dt.datetime.now().astimezone()
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03d" % (moment.microsecond // 1000) + _zone_suffix(moment)
    fields = ["time=" + stamp, "level=" + level, "source=" + source, "msg=" + _slog_value(msg)]
    fields.extend("%s=%s" % (key, _slog_value(value)) for key, value in attrs)
    return " ".join(fields)


def log(level: str, source: str, msg: str, *attrs: Tuple[str, Any]) -> None:
    """Write a slog line to stderr; write failures (full disk, closed pipe) are ignored."""
    write_line(sys.stderr, slog_line(level, source, msg, attrs))


def debug(source: str, msg: str, *attrs: Tuple[str, Any]) -> None:
    """A DEBUG slog line, written only when OLLAMA_DEBUG is set (as Ollama's log level)."""
    if env_var("OLLAMA_DEBUG") not in ("", "0", "false", "False", "FALSE"):
        log("DEBUG", source, msg, *attrs)


def gin_line(status: int, latency_ns: int, client_ip: str, method: str, path: str) -> str:
    """Gin's default access-log line, without colours."""
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
    return "[GIN] %s | %3d | %13s | %15s | %-7s %s" % (
        stamp,
        status,
        go_duration_string(latency_ns),
        client_ip,
        method,
        json.dumps(path),
    )


def write_line(stream: Any, line: str) -> None:
    """Write and flush one line, ignoring I/O errors so logging never stops the server."""
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


# --- Event log and process facts -------------------------------------------------------


def append_event(event: Dict[str, Any]) -> None:
    """Append one JSON line to $OLLAMA_STANDIN_EVENTS (open/append/close, so it survives SIGKILL)."""
    path = os.environ.get("OLLAMA_STANDIN_EVENTS", "")
    if not path:
        return
    data = (json.dumps(event, sort_keys=False) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass


def process_create_time(pid: int) -> float:
    """A process's start time in epoch seconds, read the way psutil reads it on each OS."""
    try:
        if sys.platform.startswith("linux"):
            return _linux_create_time(pid)
        if sys.platform == "win32":
            return _windows_create_time(pid)
        if sys.platform == "darwin":
            return _darwin_create_time(pid)
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        pass
    return time.time()


def _linux_create_time(pid: int) -> float:
    with open("/proc/%d/stat" % pid, "rb") as handle:
        stat = handle.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[19])
    with open("/proc/stat", "rb") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith(b"btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


FILETIME_EPOCH_OFFSET_S = 11644473600  # 1601-01-01 to 1970-01-01
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000


def _windows_create_time(pid: int) -> float:
    """``GetProcessTimes``' creation time (100 ns ticks since 1601)."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        raise OSError(ctypes.get_last_error(), "OpenProcess failed")  # type: ignore[attr-defined]
    try:
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *[ctypes.byref(t) for t in times]):
            raise OSError(ctypes.get_last_error(), "GetProcessTimes failed")  # type: ignore[attr-defined]
        created = times[0]
        ticks = (created.dwHighDateTime << 32) | created.dwLowDateTime
        return ticks / 1e7 - FILETIME_EPOCH_OFFSET_S
    finally:
        kernel32.CloseHandle(handle)


def _darwin_create_time(pid: int) -> float:
    """``kinfo_proc.kp_proc.p_starttime`` from ``sysctl(CTL_KERN, KERN_PROC, KERN_PROC_PID, pid)``."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    mib = (ctypes.c_int * 4)(1, 14, 1, pid)  # CTL_KERN, KERN_PROC, KERN_PROC_PID
    buffer = ctypes.create_string_buffer(1024)  # sizeof(struct kinfo_proc) is 648 on 64-bit macOS
    size = ctypes.c_size_t(len(buffer))
    if libc.sysctl(mib, 4, buffer, ctypes.byref(size), None, 0) != 0 or size.value == 0:
        raise OSError(ctypes.get_errno(), "sysctl failed")
    seconds, microseconds = struct.unpack_from("qi", buffer.raw, 0)  # struct timeval p_starttime
    return seconds + microseconds / 1e6


def set_process_name(name: str) -> None:
    """Make ``ps``/psutil show ``name`` as the process name (Linux ``PR_SET_NAME``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def memory_info() -> Tuple[int, int]:
    """Total and available system memory in bytes (zeros when unknown)."""
    values: Dict[str, int] = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def gib(size: int) -> str:
    """Ollama's ``format.HumanBytes2`` for GiB-scale values, e.g. ``15.6 GiB``."""
    return "%.1f GiB" % (size / 1024**3)


def word_list(text: str) -> List[str]:
    """Whitespace-separated words (the stand-in's notion of tokens)."""
    return text.split()
