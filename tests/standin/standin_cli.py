"""The stand-in's command line: dispatch, and the HTTP-client commands (list, pull, create, rm, ...).

Errors print ``Error: <msg>`` on stderr and exit 1, as cobra's ``CheckErr`` does.
Progress (pull/create) goes to stderr like Ollama's progress bars, one plain line
per step; tables and ``deleted 'x'`` go to stdout.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import standin_common as common
from standin_common import VERSION, human_bytes, human_time, parse_rfc3339

USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  create      Create a model
  show        Show information for a model
  run         Run a model
  stop        Stop a running model
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  cp          Copy a model
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""
NO_SERVER = "could not connect to ollama server, run 'ollama serve' to start it"
BAR_WIDTH = 18


class CliError(Exception):
    """Printed as ``Error: <message>``; the exit code is 1."""


class ApiClient:
    """A minimal Ollama API client over http.client (no timeouts, like Go's default client)."""

    def __init__(self, host: common.HostSpec) -> None:
        self.host = host
        self.prefix = "/" + host.path.strip("/") if host.path.strip("/") else ""

    def _url(self, path: str) -> str:
        return "%s://%s%s%s" % (
            self.host.scheme,
            common.join_host_port(self.host.dial_host, self.host.port),
            self.prefix,
            path,
        )

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.host.scheme == "https" else http.client.HTTPConnection
        return cls(self.host.dial_host, self.host.port)

    def open(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None) -> http.client.HTTPResponse:
        """Send a request and return the response (headers read)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
        connection = self._connection()
        try:
            connection.request(method, self.prefix + path, body=data, headers=headers)
            return connection.getresponse()
        except ConnectionRefusedError:
            raise CliError(
                '%s "%s": dial tcp %s: connect: connection refused'
                % (method.title(), self._url(path), self.host.hostport)
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise CliError('%s "%s": %s' % (method.title(), self._url(path), error or "EOF")) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A non-streaming call: decoded JSON (None for an empty body) or CliError."""
        response = self.open(method, path, body)
        data = response.read()
        check_status(response.status, data)
        return json.loads(data) if data.strip() else None

    def stream(self, method: str, path: str, body: Any) -> Iterator[Dict[str, Any]]:
        """NDJSON objects of a streaming call; an ``error`` line or status ≥ 400 raises CliError."""
        response = self.open(method, path, body)
        if response.status >= 400:
            check_status(response.status, response.read())
        for line in iter(response.readline, b""):
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("error"):
                raise CliError(item["error"])
            yield item

    def heartbeat(self) -> None:
        """``checkServerHeartbeat``: HEAD /, with the Linux message when nobody listens."""
        try:
            response = self.open("HEAD", "/")
            response.read()
        except CliError as error:
            if " refused" in str(error):
                raise CliError(NO_SERVER) from None
            raise


def check_status(status: int, data: bytes) -> None:
    """``checkError``: the JSON ``error`` field, else the whole body."""
    if status < 400:
        return
    try:
        message = json.loads(data).get("error") or ""
    except (ValueError, AttributeError):
        message = data.decode("utf-8", "replace")
    raise CliError(message or "something went wrong, please see the ollama server logs for details")


def client() -> ApiClient:
    """A client for this process's OLLAMA_HOST."""
    return ApiClient(common.host_from_env())


def progress(line: str) -> None:
    """One progress line on stderr."""
    common.write_line(sys.stderr, line)


def table(header: List[str], rows: List[List[str]]) -> str:
    """tablewriter with no borders and 4-space padding, as ``ollama list``/``ps`` print it."""
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]
    head = "    ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)) + " "
    body = ["".join(cell.ljust(widths[i]) + "    " for i, cell in enumerate(row)) for row in rows]
    return "\n".join([head, *body]) + "\n"


def require_args(
    args: List[str], exactly: Optional[int] = None, minimum: Optional[int] = None, maximum: Optional[int] = None
) -> None:
    """cobra's argument-count checks with their messages."""
    if exactly is not None and len(args) != exactly:
        raise CliError("accepts %d arg(s), received %d" % (exactly, len(args)))
    if minimum is not None and len(args) < minimum:
        raise CliError("requires at least %d arg(s), only received %d" % (minimum, len(args)))
    if maximum is not None and len(args) > maximum:
        raise CliError("accepts at most %d arg(s), received %d" % (maximum, len(args)))


def split_flags(
    argv: List[str], with_value: Tuple[str, ...], boolean: Tuple[str, ...]
) -> Tuple[List[str], Dict[str, Any]]:
    """Positional args and flags (``-f x``, ``--file=x``, ``--modelfile``)."""
    positional: List[str] = []
    flags: Dict[str, Any] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        key, eq, value = arg.partition("=")
        if key in with_value:
            if not eq:
                index += 1
                if index >= len(argv):
                    raise CliError("flag needs an argument: %s" % arg)
                value = argv[index]
            flags[key.lstrip("-")] = value
        elif arg in boolean:
            flags[arg.lstrip("-")] = True
        elif arg.startswith("-") and arg != "-":
            raise CliError("unknown flag: %s" % arg)
        else:
            positional.append(arg)
        index += 1
    return positional, flags


# --- commands ------------------------------------------------------------------------------


def cmd_version(_args: List[str]) -> int:
    """``ollama -v``: server version, or warnings when none answers (exit 0 either way)."""
    try:
        server_version = (client().call("GET", "/api/version") or {}).get("version", "")
    except (CliError, ValueError):
        server_version = ""
        print("Warning: could not connect to a running Ollama instance")
    if server_version:
        print("ollama version is %s" % server_version)
    if server_version != VERSION:
        print("Warning: client version is %s" % VERSION)
    return 0


def cmd_list(args: List[str]) -> int:
    """``ollama list [prefix]``."""
    require_args(args, maximum=1)
    api = client()
    api.heartbeat()
    models = (api.call("GET", "/api/tags") or {}).get("models") or []
    prefix = args[0].lower() if args else ""
    now = time.time()
    rows = [
        [m["name"], m["digest"][:12], human_bytes(int(m["size"])), human_time(parse_rfc3339(m["modified_at"]), now)]
        for m in models
        if m["name"].lower().startswith(prefix)
    ]
    sys.stdout.write(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def processor_text(size: int, size_vram: int) -> str:
    """``ollama ps``'s PROCESSOR column."""
    if size <= 0:
        return "Unknown"
    if size_vram == 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    cpu = round(100 * (size - size_vram) / size)
    return "%d%%/%d%% CPU/GPU" % (cpu, 100 - cpu)


def cmd_ps(args: List[str]) -> int:
    """``ollama ps``."""
    require_args(args, exactly=0)
    api = client()
    api.heartbeat()
    now = time.time()
    rows = []
    for m in (api.call("GET", "/api/ps") or {}).get("models") or []:
        expires = parse_rfc3339(m["expires_at"])
        until = "Stopping..." if expires < now else human_time(expires, now)
        context = str(m.get("context_length") or "")
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                human_bytes(int(m["size"])),
                processor_text(int(m["size"]), int(m.get("size_vram", 0))),
                context,
                until,
            ]
        )
    sys.stdout.write(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))
    return 0


def bar_line(label: str, total: int) -> str:
    """A finished progress bar: ``pulling abc: 100% ▕████▏ 4.2 MB``."""
    return "%s 100%% ▕%s▏ %s" % (label, "█" * BAR_WIDTH, human_bytes(total))


def show_progress(items: Iterator[Dict[str, Any]]) -> None:
    """Print each status once, and each blob's bar once it is complete."""
    last_status = ""
    finished = set()
    for item in items:
        digest = item.get("digest", "")
        if digest and digest.startswith("sha256:"):
            if item.get("completed", 0) >= item.get("total", 0) and digest not in finished:
                finished.add(digest)
                progress(bar_line("pulling %s:" % digest[7:19], int(item.get("total", 0))))
            continue
        status = item.get("status", "")
        if status and status != last_status:
            progress(status)
            last_status = status


def cmd_pull(args: List[str]) -> int:
    """``ollama pull NAME``."""
    require_args(args, exactly=1)
    api = client()
    api.heartbeat()
    show_progress(api.stream("POST", "/api/pull", {"model": args[0]}))
    return 0


def cmd_create(argv: List[str]) -> int:
    """``ollama create NAME [-f Modelfile] [-q QUANT]``: parse client-side, upload files, POST /api/create."""
    import standin_modelfile as modelfile

    args, flags = split_flags(argv, ("-f", "--file", "-q", "--quantize"), ())
    require_args(args, exactly=1)
    api = client()
    api.heartbeat()
    path = os.path.abspath(flags.get("f") or flags.get("file") or "Modelfile")
    if not os.path.isfile(path):
        raise CliError("specified Modelfile wasn't found")
    progress("gathering model components")
    with open(path, "r", encoding="utf-8") as handle:
        text = handle.read()
    try:
        commands = modelfile.parse_modelfile(text)
        request, uploads = modelfile.create_request(commands, os.path.dirname(path), print)
    except (modelfile.ModelfileError, OSError) as error:
        raise CliError(str(error)) from None
    for _name, (file_path, digest) in sorted(uploads.items()):
        upload_blob(api, file_path, digest)
    request["model"] = args[0]
    quantize = flags.get("q") or flags.get("quantize")
    if quantize:
        request["quantize"] = quantize
    show_progress(api.stream("POST", "/api/create", request))
    return 0


def upload_blob(api: ApiClient, path: str, digest: str) -> None:
    """HEAD the blob, POST it when the server lacks it."""
    head = api.open("HEAD", "/api/blobs/" + digest)
    head.read()
    if head.status != 200:
        with open(path, "rb") as handle:
            response = api.open("POST", "/api/blobs/" + digest, raw=handle.read())
        check_status(response.status, response.read())
    progress("copying file %s 100%%" % digest)


def unload(api: ApiClient, name: str) -> None:
    """``loadOrUnloadModel`` with keep_alive 0."""
    api.call("POST", "/api/generate", {"model": name, "keep_alive": 0})


def cmd_rm(args: List[str]) -> int:
    """``ollama rm A [B...]``: unload the first, delete each."""
    require_args(args, minimum=1)
    api = client()
    api.heartbeat()
    try:
        unload(api, args[0])
    except CliError as error:
        if "not found" not in str(error).lower():
            common.write_line(sys.stderr, "Warning: unable to stop model '%s'" % args[0])
    for name in args:
        api.call("DELETE", "/api/delete", {"model": name})
        print("deleted '%s'" % name)
    return 0


def cmd_cp(args: List[str]) -> int:
    """``ollama cp SOURCE DESTINATION``."""
    require_args(args, exactly=2)
    api = client()
    api.heartbeat()
    api.call("POST", "/api/copy", {"source": args[0], "destination": args[1]})
    print("copied '%s' to '%s'" % (args[0], args[1]))
    return 0


def cmd_stop(args: List[str]) -> int:
    """``ollama stop MODEL``."""
    require_args(args, exactly=1)
    api = client()
    api.heartbeat()
    try:
        unload(api, args[0])
    except CliError as error:
        if "not found" in str(error):
            raise CliError('couldn\'t find model "%s" to stop' % args[0]) from None
        raise
    return 0


def cmd_show(argv: List[str]) -> int:
    """``ollama show MODEL [--modelfile|--parameters|--template|--system|--license]``."""
    sections = ("--modelfile", "--parameters", "--template", "--system", "--license")
    args, flags = split_flags(argv, (), (*sections, "-v", "--verbose"))
    require_args(args, exactly=1)
    api = client()
    api.heartbeat()
    info = api.call("POST", "/api/show", {"model": args[0]}) or {}
    for section in sections:
        if flags.get(section.lstrip("-")):
            print(info.get(section.lstrip("-"), ""))
            return 0
    print(show_summary(info))
    return 0


def show_summary(info: Dict[str, Any]) -> str:
    """The default ``ollama show`` view."""
    details, model_info = info.get("details") or {}, info.get("model_info") or {}
    arch = model_info.get("general.architecture", details.get("family", ""))
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
        ("context length", model_info.get("%s.context_length" % arch, "")),
        ("embedding length", model_info.get("%s.embedding_length" % arch, "")),
        ("quantization", details.get("quantization_level", "")),
    ]
    lines = ["  Model"] + ["    %-20s%s" % (key, value) for key, value in rows if value != ""]
    lines += ["", "  Capabilities"] + ["    " + item for item in info.get("capabilities") or []]
    if info.get("parameters"):
        lines += ["", "  Parameters"] + ["    " + line for line in info["parameters"].splitlines()]
    if info.get("system"):
        lines += ["", "  System"] + ["    " + line for line in info["system"].splitlines()]
    if info.get("license"):
        lines += ["", "  License"] + ["    " + line for line in info["license"].splitlines()[:2]]
    return "\n".join(lines) + "\n"


def cmd_run(argv: List[str]) -> int:
    """``ollama run MODEL [PROMPT]`` (non-interactive): pull when missing, print the answer."""
    args, flags = split_flags(argv, ("--keepalive", "--format"), ("--verbose", "--nowordwrap", "--insecure"))
    require_args(args, minimum=1)
    api = client()
    api.heartbeat()
    prompt = " ".join(args[1:])
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if not prompt:
        raise CliError("interactive mode is not available in this build")
    try:
        api.call("POST", "/api/show", {"model": args[0]})
    except CliError as error:
        if "not found" not in str(error):
            raise
        show_progress(api.stream("POST", "/api/pull", {"model": args[0]}))
    request: Dict[str, Any] = {"model": args[0], "prompt": prompt}
    if flags.get("keepalive"):
        request["keep_alive"] = flags["keepalive"]
    for item in api.stream("POST", "/api/generate", request):
        sys.stdout.write(item.get("response", ""))
        sys.stdout.flush()
    sys.stdout.write("\n\n")
    return 0


def cmd_serve(args: List[str]) -> int:
    """``ollama serve``."""
    require_args(args, exactly=0)
    import standin_server

    return standin_server.serve_main(args)


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "serve": cmd_serve,
    "start": cmd_serve,
    "list": cmd_list,
    "ls": cmd_list,
    "ps": cmd_ps,
    "pull": cmd_pull,
    "create": cmd_create,
    "rm": cmd_rm,
    "cp": cmd_cp,
    "stop": cmd_stop,
    "show": cmd_show,
    "run": cmd_run,
}


def main(argv: List[str], executable: str) -> int:
    """Dispatch ``ollama <command> ...``; returns the exit code."""
    common.EXECUTABLE = executable
    if argv and argv[0] == "runner":
        import standin_runner

        return standin_runner.runner_main(argv[1:])
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] in ("-v", "--version"):
        return cmd_version(argv[1:])
    command = COMMANDS.get(argv[0])
    try:
        if command is None:
            raise CliError('unknown command "%s" for "ollama"' % argv[0])
        return command(argv[1:])
    except CliError as error:
        common.write_line(sys.stderr, "Error: %s" % error)
        return 1
    except KeyboardInterrupt:
        return 130
