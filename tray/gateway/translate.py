"""Translation between Ollama's API and the OpenAI API, both directions.

Pure: dicts and bytes in, dicts and bytes out; timestamps, ids and creation
times come from the caller.

Streams differ in framing as well as in shape (ollama.md §1–2):

- Ollama streams NDJSON (``application/x-ndjson``): one JSON object per line,
  the last one with ``"done": true`` and the metrics; an error after the
  stream started is a last line ``{"error": "..."}``.
- OpenAI streams server-sent events (``text/event-stream``): ``data: {json}``
  blocks separated by a blank line, ending with ``data: [DONE]``; usage comes
  in a last chunk with empty ``choices`` when ``stream_options.include_usage``
  is set.

:class:`SseToNdjson` and :class:`NdjsonToSse` translate a stream
incrementally: ``feed()`` takes bytes as they arrive (split anywhere) and
returns the translated bytes ready so far; ``close()`` flushes the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tray.core.text import one_line

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"

Timestamp = Callable[[], str]

# Ollama option name -> OpenAI request field
_OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


class Dialect(StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"


def dumps(value: Any) -> str:
    """Compact JSON, as both servers write it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# A string as :func:`dumps` writes it (json's C encoder where there is one).
_json_text: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)


def rfc3339_nano(wall_seconds: float) -> str:
    """An Ollama ``created_at`` timestamp.

    >>> rfc3339_nano(1700000000.5)
    '2023-11-14T22:13:20.500000Z'
    """
    moment = datetime.fromtimestamp(wall_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- errors


def ollama_error(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error(message: str, kind: str = "api_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def error_body(dialect: Dialect, message: str, kind: str = "api_error") -> dict[str, Any]:
    """An error body in the client's dialect."""
    return ollama_error(message) if dialect is Dialect.OLLAMA else openai_error(message, kind)


def error_message(body: bytes | str | Any, limit: int = 300) -> str:
    """The message of an error answer in either dialect, else its text, on one line.

    >>> error_message(b'{"error":{"message":"Invalid key","type":"auth"}}')
    'Invalid key'
    >>> error_message('{"error":"model not found"}')
    'model not found'
    """
    parsed: Any = body
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    message: Any = parsed
    if isinstance(parsed, dict):
        inner = parsed.get("error", parsed.get("message", parsed))
        message = inner.get("message", inner) if isinstance(inner, dict) else inner
    return one_line(str(message), limit=limit)


def stream_error_tail(content_type: str, message: str, ended_mid_line: bool = False) -> bytes:
    """What ends a started stream that broke: Ollama's error line or an SSE error event."""
    if content_type.startswith(SSE):
        prefix = "\n\n" if ended_mid_line else ""
        return f"{prefix}data: {dumps(openai_error(message))}\n\n".encode()
    prefix = "\n" if ended_mid_line else ""
    return f"{prefix}{dumps(ollama_error(message))}\n".encode()


# --------------------------------------------------------------------------- requests: Ollama -> OpenAI


def _data_url(image: str) -> str:
    return image if image.startswith("data:") else f"data:image/png;base64,{image}"


def _openai_content(text: str, images: Iterable[str]) -> str | list[dict[str, Any]]:
    pictures = list(images)
    if not pictures:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": _data_url(image)}} for image in pictures]
    return parts


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else dumps(arguments if arguments is not None else {})


def _openai_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    pending_calls: list[tuple[str, str]] = []  # (id, name) of tool calls not yet answered
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "user")
        out: dict[str, Any] = {
            "role": role,
            "content": _openai_content(str(message.get("content") or ""), message.get("images") or []),
        }
        calls = message.get("tool_calls") or []
        if role == "assistant" and calls:
            out["tool_calls"] = []
            pending_calls = []
            for index, call in enumerate(calls):
                function = call.get("function") or {}
                call_id = str(call.get("id") or f"call_{position}_{index}")
                name = str(function.get("name") or "")
                out["tool_calls"].append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": _arguments_text(function.get("arguments"))},
                    }
                )
                pending_calls.append((call_id, name))
        if role == "tool":
            wanted = message.get("tool_name")
            match = next((c for c in pending_calls if c[1] == wanted), pending_calls[0] if pending_calls else None)
            if match is not None:
                pending_calls.remove(match)
            out["tool_call_id"] = match[0] if match else str(message.get("tool_call_id") or "call_0")
        converted.append(out)
    return converted


def _openai_sampling(body: dict[str, Any]) -> dict[str, Any]:
    raw_options = body.get("options")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    fields = {target: options[name] for name, target in _OPTION_FIELDS.items() if options.get(name) is not None}
    num_predict = options.get("num_predict")
    if isinstance(num_predict, int) and num_predict > 0:
        fields["max_tokens"] = num_predict
    fmt = body.get("format")
    if fmt == "json":
        fields["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        fields["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return fields


def _stream_fields(stream: bool) -> dict[str, Any]:
    return {"stream": True, "stream_options": {"include_usage": True}} if stream else {"stream": False}


def ollama_stream_requested(body: dict[str, Any]) -> bool:
    """Ollama streams unless the request says ``"stream": false``."""
    return body.get("stream") is not False


def openai_stream_requested(body: dict[str, Any]) -> bool:
    """OpenAI streams only when the request says ``"stream": true``."""
    return body.get("stream") is True


def ollama_chat_to_openai(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An ``/api/chat`` request as a ``/chat/completions`` request for ``model``."""
    out: dict[str, Any] = {"model": model, "messages": _openai_messages(body.get("messages") or [])}
    if body.get("tools"):
        out["tools"] = body["tools"]
    out.update(_openai_sampling(body))
    out.update(_stream_fields(ollama_stream_requested(body)))
    return out


def ollama_generate_to_openai(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An ``/api/generate`` request as a ``/chat/completions`` request (system + one user turn)."""
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": str(body["system"])})
    messages.append(
        {"role": "user", "content": _openai_content(str(body.get("prompt") or ""), body.get("images") or [])}
    )
    out: dict[str, Any] = {"model": model, "messages": messages}
    out.update(_openai_sampling(body))
    out.update(_stream_fields(ollama_stream_requested(body)))
    return out


def ollama_embed_to_openai(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An ``/api/embed`` (``input``) or legacy ``/api/embeddings`` (``prompt``) request as ``/embeddings``."""
    texts = body["input"] if "input" in body else body.get("prompt", "")
    out: dict[str, Any] = {"model": model, "input": texts}
    if isinstance(body.get("dimensions"), int):
        out["dimensions"] = body["dimensions"]
    return out


# --------------------------------------------------------------------------- requests: OpenAI -> Ollama


def _split_content(content: Any) -> tuple[str, list[str]]:
    """OpenAI message content (text or parts) as Ollama's text and base64 images."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url") or "")
            if url.startswith("data:") and "," in url:
                images.append(url.split(",", 1)[1])
    return "".join(texts), images


def _parse_arguments(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}


def _ollama_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    names_by_call_id: dict[str, str] = {}
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "user")
        text, images = _split_content(message.get("content"))
        out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
        if images:
            out["images"] = images
        calls = message.get("tool_calls") or []
        if calls:
            out["tool_calls"] = []
            for call in calls:
                function = call.get("function") or {}
                name = str(function.get("name") or "")
                names_by_call_id[str(call.get("id") or "")] = name
                out["tool_calls"].append(
                    {"function": {"name": name, "arguments": _parse_arguments(function.get("arguments"))}}
                )
        if role == "tool":
            answered = names_by_call_id.get(str(message.get("tool_call_id") or ""))
            if answered:
                out["tool_name"] = answered
        converted.append(out)
    return converted


def _ollama_options(body: dict[str, Any]) -> dict[str, Any]:
    options = {name: body[target] for name, target in _OPTION_FIELDS.items() if body.get(target) is not None}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and limit > 0:
        options["num_predict"] = limit
    return options


def _ollama_format(body: dict[str, Any]) -> Any:
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


def openai_chat_to_ollama(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``/v1/chat/completions`` request as an ``/api/chat`` request for ``model``."""
    out: dict[str, Any] = {"model": model, "messages": _ollama_messages(body.get("messages") or [])}
    if body.get("tools"):
        out["tools"] = body["tools"]
    fmt = _ollama_format(body)
    if fmt is not None:
        out["format"] = fmt
    options = _ollama_options(body)
    if options:
        out["options"] = options
    out["stream"] = openai_stream_requested(body)
    return out


def openai_embed_to_ollama(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``/v1/embeddings`` request as ``/api/embed``."""
    out: dict[str, Any] = {"model": model, "input": body.get("input", "")}
    if isinstance(body.get("dimensions"), int):
        out["dimensions"] = body["dimensions"]
    return out


# --------------------------------------------------------------------------- whole responses


def _done_reason(finish_reason: Any) -> str:
    return "length" if finish_reason == "length" else "stop"


def _finish_reason(done_reason: Any, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def _ollama_tool_calls(calls: Iterable[Any]) -> list[dict[str, Any]]:
    converted = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        entry: dict[str, Any] = {
            "function": {
                "index": index,
                "name": str(function.get("name") or ""),
                "arguments": _parse_arguments(function.get("arguments")),
            }
        }
        if call.get("id"):
            entry["id"] = str(call["id"])
        converted.append(entry)
    return converted


def _openai_tool_calls(calls: Iterable[Any], with_index: bool = False) -> list[dict[str, Any]]:
    converted = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        entry: dict[str, Any] = {
            "id": str(call.get("id") or f"call_{index}"),
            "type": "function",
            "function": {
                "name": str(function.get("name") or ""),
                "arguments": _arguments_text(function.get("arguments")),
            },
        }
        if with_index:
            entry = {"index": index, **entry}
        converted.append(entry)
    return converted


def _usage_metrics(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    metrics = {}
    if isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"]:
        metrics["prompt_eval_count"] = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int) and usage["completion_tokens"]:
        metrics["eval_count"] = usage["completion_tokens"]
    return metrics


def _reasoning(message: dict[str, Any]) -> str:
    return str(message.get("reasoning_content") or message.get("reasoning") or "")


def openai_response_to_ollama(response: dict[str, Any], kind: str, model: str, created_at: str) -> dict[str, Any]:
    """A ``chat.completion`` as Ollama's final ``/api/chat`` (kind "chat") or ``/api/generate`` object."""
    choices = response.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text = str(message.get("content") or "")
    out: dict[str, Any] = {"model": str(response.get("model") or model), "created_at": created_at}
    if kind == "generate":
        out["response"] = text
        if _reasoning(message):
            out["thinking"] = _reasoning(message)
    else:
        reply: dict[str, Any] = {"role": "assistant", "content": text}
        if _reasoning(message):
            reply["thinking"] = _reasoning(message)
        if message.get("tool_calls"):
            reply["tool_calls"] = _ollama_tool_calls(message["tool_calls"])
        out["message"] = reply
    out["done"] = True
    out["done_reason"] = _done_reason(choice.get("finish_reason"))
    out.update(_usage_metrics(response.get("usage")))
    return out


def ollama_response_to_openai(response: dict[str, Any], ident: str, created: int) -> dict[str, Any]:
    """A final ``/api/chat`` object (``stream: false``) as a ``chat.completion``."""
    message = response.get("message") or {}
    calls = message.get("tool_calls") or []
    reply: dict[str, Any] = {"role": "assistant", "content": str(message.get("content") or "")}
    if message.get("thinking"):
        reply["reasoning"] = str(message["thinking"])
    if calls:
        reply["tool_calls"] = _openai_tool_calls(calls)
    prompt_tokens = int(response.get("prompt_eval_count") or 0)
    completion_tokens = int(response.get("eval_count") or 0)
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": str(response.get("model") or ""),
        "choices": [
            {"index": 0, "message": reply, "finish_reason": _finish_reason(response.get("done_reason"), bool(calls))}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def openai_embeddings_to_ollama(response: dict[str, Any], model: str, legacy: bool = False) -> dict[str, Any]:
    """An OpenAI embeddings list as ``/api/embed`` (or legacy ``/api/embeddings``) output."""
    data = sorted(
        (d for d in response.get("data") or [] if isinstance(d, dict)), key=lambda d: int(d.get("index") or 0)
    )
    vectors = [list(d.get("embedding") or []) for d in data]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    out: dict[str, Any] = {"model": str(response.get("model") or model), "embeddings": vectors}
    prompt_tokens = (response.get("usage") or {}).get("prompt_tokens")
    if isinstance(prompt_tokens, int) and prompt_tokens:
        out["prompt_eval_count"] = prompt_tokens
    return out


def ollama_embeddings_to_openai(response: dict[str, Any], model: str) -> dict[str, Any]:
    """An ``/api/embed`` answer as an OpenAI embeddings list."""
    vectors = response.get("embeddings") or []
    count = int(response.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": vector, "index": index} for index, vector in enumerate(vectors)],
        "model": str(response.get("model") or model),
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


# --------------------------------------------------------------------------- framing


class LineSplitter:
    """Complete lines out of bytes that arrive in arbitrary pieces."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        return [line.rstrip(b"\r") for line in lines]

    def close(self) -> list[bytes]:
        """The last line when the stream did not end with a newline."""
        rest, self._pending = self._pending, b""
        return [rest.rstrip(b"\r")] if rest.strip() else []


class SseParser:
    """The ``data`` payload of each server-sent event, as bytes (comments and other fields ignored)."""

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        return self._take(self._lines.feed(data))

    def close(self) -> list[bytes]:
        events = self._take(self._lines.close())
        if self._data:
            events.append(b"\n".join(self._data))
            self._data = []
        return events

    def _take(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        return events


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- streams: OpenAI SSE -> Ollama NDJSON


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


# Stream chunks that carry text and nothing else; their lines are written from a template.
_PLAIN_DELTA = frozenset({"role", "content", "refusal"})
_PLAIN_MESSAGE = frozenset({"role", "content", "images"})


class SseToNdjson:
    """An OpenAI chat stream as an Ollama ``/api/chat`` (kind "chat") or ``/api/generate`` stream."""

    def __init__(self, kind: str, model: str, timestamp: Timestamp) -> None:
        self.kind = kind
        self.model = model
        self.timestamp = timestamp
        self._parser = SseParser()
        self._finish_reason: Any = None
        self._usage: Any = None
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(payload) for payload in self._parser.feed(data))

    def close(self) -> bytes:
        """Flush; a stream that ended without ``[DONE]`` or a finish reason gets an error line."""
        out = b"".join(self._event(payload) for payload in self._parser.close())
        if not self.finished:
            if self._finish_reason is not None:
                out += self._final()
            else:
                out += self._line(ollama_error("the cloud provider ended the answer early"))
        return out

    def _event(self, payload: bytes) -> bytes:
        if self.finished:
            return b""
        if payload.strip() == b"[DONE]":
            return self._final()
        chunk = _json_object(payload)
        if chunk is None:
            return b""
        if "error" in chunk:
            self.finished = True
            return self._line(ollama_error(error_message(chunk)))
        if chunk.get("model"):
            self.model = str(chunk["model"])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = b""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                out += self._tool_call_chunk()
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        if delta.keys() <= _PLAIN_DELTA:
            text = str(delta.get("content") or "")
            return self._text_line(text) if text else b""
        for call in delta.get("tool_calls") or []:
            parts = self._tool_calls.setdefault(int(call.get("index") or 0), _ToolCallParts())
            function = call.get("function") or {}
            parts.id = str(call.get("id") or parts.id)
            parts.name += str(function.get("name") or "")
            parts.arguments.append(str(function.get("arguments") or ""))
        text = str(delta.get("content") or "")
        thinking = _reasoning(delta)
        if not text and not thinking:
            return b""
        return self._line(self._chunk(text, thinking))

    def _tool_call_chunk(self) -> bytes:
        if not self._tool_calls or self.kind != "chat":
            return b""
        calls = [
            {"id": parts.id, "function": {"name": parts.name, "arguments": "".join(parts.arguments)}}
            for _, parts in sorted(self._tool_calls.items())
        ]
        self._tool_calls = {}
        chunk = self._chunk("", "")
        chunk["message"]["tool_calls"] = _ollama_tool_calls(calls)
        return self._line(chunk)

    def _text_line(self, text: str) -> bytes:
        """``self._line(self._chunk(text, ""))``, written without building and encoding the object."""
        field = "response" if self.kind == "generate" else "message"
        head = f'{{"model":{_json_text(self.model)},"created_at":{_json_text(self.timestamp())},"{field}":'
        if self.kind == "generate":
            return f'{head}{_json_text(text)},"done":false}}\n'.encode()
        return f'{head}{{"role":"assistant","content":{_json_text(text)}}},"done":false}}\n'.encode()

    def _chunk(self, text: str, thinking: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": self.timestamp()}
        if self.kind == "generate":
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            out["message"] = message
        out["done"] = False
        return out

    def _final(self) -> bytes:
        self.finished = True
        out = self._tool_call_chunk()
        final = self._chunk("", "")
        final["done"] = True
        final["done_reason"] = _done_reason(self._finish_reason)
        final.update(_usage_metrics(self._usage))
        return out + self._line(final)

    @staticmethod
    def _line(value: dict[str, Any]) -> bytes:
        return (dumps(value) + "\n").encode()


# --------------------------------------------------------------------------- streams: Ollama NDJSON -> OpenAI SSE


class NdjsonToSse:
    """An Ollama ``/api/chat`` stream as an OpenAI ``chat.completion.chunk`` stream."""

    def __init__(self, ident: str, created: int, model: str, include_usage: bool = False) -> None:
        self.ident = ident
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._lines = LineSplitter()
        self._saw_tool_calls = False
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._line(line) for line in self._lines.feed(data))

    def close(self) -> bytes:
        out = b"".join(self._line(line) for line in self._lines.close())
        if not self.finished:
            self.finished = True
            out += self._event(openai_error("the cloud provider ended the answer early"))
        return out

    def _line(self, line: bytes) -> bytes:
        if self.finished or not line.strip():
            return b""
        chunk = _json_object(line)
        if chunk is None:
            return b""
        if "error" in chunk:
            self.finished = True
            return self._event(openai_error(error_message(chunk)))
        if chunk.get("model"):
            self.model = str(chunk["model"])
        message = chunk.get("message") or {}
        if not chunk.get("done") and isinstance(message, dict) and message.keys() <= _PLAIN_MESSAGE:
            return self._text_event(str(message.get("content") or ""))
        out = b""
        delta: dict[str, Any] = {"role": "assistant", "content": str(message.get("content") or "")}
        if message.get("thinking"):
            delta["reasoning"] = str(message["thinking"])
        if message.get("tool_calls"):
            self._saw_tool_calls = True
            delta["tool_calls"] = _openai_tool_calls(message["tool_calls"], with_index=True)
        if not chunk.get("done"):
            return self._event(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        if delta["content"] or len(delta) > 2:
            out += self._event(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        reason = _finish_reason(chunk.get("done_reason"), self._saw_tool_calls)
        out += self._event(
            self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": reason}])
        )
        if self.include_usage:
            prompt_tokens = int(chunk.get("prompt_eval_count") or 0)
            completion_tokens = int(chunk.get("eval_count") or 0)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            out += self._event(dict(self._chunk([]), usage=usage))
        self.finished = True
        return out + b"data: [DONE]\n\n"

    def _text_event(self, text: str) -> bytes:
        """A content-only chunk's event, as :meth:`_event` writes it, without building and encoding the object."""
        return (
            f'data: {{"id":{_json_text(self.ident)},"object":"chat.completion.chunk","created":{self.created:d},'
            f'"model":{_json_text(self.model)},"choices":[{{"index":0,"delta":{{"role":"assistant",'
            f'"content":{_json_text(text)}}},"finish_reason":null}}]}}\n\n'
        ).encode()

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    @staticmethod
    def _event(value: dict[str, Any]) -> bytes:
        return f"data: {dumps(value)}\n\n".encode()
