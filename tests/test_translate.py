"""Ollama <-> OpenAI translation (pure): requests, whole answers, and streams fed in arbitrary pieces."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from tray.gateway import translate as tr

STAMP = "2026-01-02T03:04:05.000000Z"


def stamp() -> str:
    return STAMP


def sse(*events: object) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def chunk(delta: dict, finish: str | None = None, **extra: object) -> dict:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def feed_in_pieces(translator: tr.SseToNdjson | tr.NdjsonToSse, data: bytes, size: int) -> bytes:
    out = b"".join(translator.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + translator.close()


def lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def events(data: bytes) -> list[object]:
    payloads = [block.removeprefix(b"data: ").decode() for block in data.split(b"\n\n") if block.strip()]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


# --------------------------------------------------------------------------- requests


class TestOllamaRequestToOpenAI:
    def test_chat_with_images_tools_options_and_format(self) -> None:
        body = {
            "model": "uncensored-llama3",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is this?", "images": ["AAAA"]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "look", "arguments": {"q": "cat"}}}],
                },
                {"role": "tool", "content": "a cat", "tool_name": "look"},
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "options": {"temperature": 0.2, "num_predict": 64, "stop": ["\n"], "seed": 7, "top_k": 40},
            "format": "json",
            "keep_alive": "5m",
        }
        assert tr.ollama_chat_to_openai(body, "gpt-x") == {
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_2_0", "type": "function", "function": {"name": "look", "arguments": '{"q":"cat"}'}}
                    ],
                },
                {"role": "tool", "content": "a cat", "tool_call_id": "call_2_0"},
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "temperature": 0.2,
            "seed": 7,
            "stop": ["\n"],
            "max_tokens": 64,
            "response_format": {"type": "json_object"},
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def test_generate_becomes_a_system_and_a_user_turn(self) -> None:
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        body = {"model": "m", "prompt": "hello", "system": "you are terse", "format": schema, "stream": False}
        assert tr.ollama_generate_to_openai(body, "gpt-x") == {
            "model": "gpt-x",
            "messages": [{"role": "system", "content": "you are terse"}, {"role": "user", "content": "hello"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}},
            "stream": False,
        }

    def test_embed_and_legacy_embeddings(self) -> None:
        assert tr.ollama_embed_to_openai({"model": "m", "input": ["a", "b"], "dimensions": 8}, "emb") == {
            "model": "emb",
            "input": ["a", "b"],
            "dimensions": 8,
        }
        assert tr.ollama_embed_to_openai({"model": "m", "prompt": "a"}, "emb") == {"model": "emb", "input": "a"}

    def test_tool_answers_without_names_take_the_calls_in_order(self) -> None:
        messages = [
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "a", "arguments": {}}},
                    {"function": {"name": "b", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
        ]
        converted = tr.ollama_chat_to_openai({"messages": messages, "stream": False}, "m")["messages"]
        assert [m.get("tool_call_id") for m in converted] == [None, "call_0_0", "call_0_1"]


class TestOpenAIRequestToOllama:
    def test_chat_with_parts_tools_and_limits(self) -> None:
        body = {
            "model": "gpt-4o",
            "messages": [
                {"role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see "},
                        {"type": "text", "text": "this"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "done"},
            ],
            "max_tokens": 10,
            "temperature": 0,
            "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
        assert tr.openai_chat_to_ollama(body, "llama3") == {
            "model": "llama3",
            "messages": [
                {"role": "system", "content": "rules"},
                {"role": "user", "content": "see this", "images": ["QUJD"]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
                {"role": "tool", "content": "done", "tool_name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "format": {"type": "object"},
            "options": {"temperature": 0, "stop": "END", "num_predict": 10},
            "stream": False,
        }

    def test_stream_true_and_json_object(self) -> None:
        body = {
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "response_format": {"type": "json_object"},
        }
        assert tr.openai_chat_to_ollama(body, "llama3") == {
            "model": "llama3", "messages": [{"role": "user", "content": "hi"}], "format": "json", "stream": True,
        }  # fmt: skip

    def test_embeddings(self) -> None:
        assert tr.openai_embed_to_ollama({"model": "x", "input": ["a"], "dimensions": 3}, "all-minilm") == {
            "model": "all-minilm",
            "input": ["a"],
            "dimensions": 3,
        }


def test_stream_defaults_differ_between_the_dialects() -> None:
    assert (tr.ollama_stream_requested({}), tr.ollama_stream_requested({"stream": False})) == (True, False)
    assert (tr.openai_stream_requested({}), tr.openai_stream_requested({"stream": True})) == (False, True)


# --------------------------------------------------------------------------- whole answers


class TestWholeAnswers:
    COMPLETION: ClassVar[dict[str, Any]] = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 5,
        "model": "gpt-x-2025",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there", "reasoning_content": "greet"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }

    def test_completion_as_ollama_chat(self) -> None:
        assert tr.openai_response_to_ollama(self.COMPLETION, "chat", "gpt-x", STAMP) == {
            "model": "gpt-x-2025",
            "created_at": STAMP,
            "message": {"role": "assistant", "content": "Hi there", "thinking": "greet"},
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 3,
            "eval_count": 2,
        }

    def test_completion_as_ollama_generate(self) -> None:
        assert tr.openai_response_to_ollama(self.COMPLETION, "generate", "gpt-x", STAMP) == {
            "model": "gpt-x-2025", "created_at": STAMP, "response": "Hi there", "thinking": "greet",
            "done": True, "done_reason": "length", "prompt_eval_count": 3, "eval_count": 2,
        }  # fmt: skip

    def test_tool_call_completion_as_ollama(self) -> None:
        answer = {
            "model": "g",
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
        }
        assert tr.openai_response_to_ollama(answer, "chat", "g", STAMP)["message"] == {
            "role": "assistant", "content": "",
            "tool_calls": [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}, "id": "c"}],
        }  # fmt: skip

    def test_ollama_chat_as_completion(self) -> None:
        answer = {
            "model": "llama3", "created_at": STAMP,
            "message": {"role": "assistant", "content": "", "thinking": "hm",
                        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
            "done": True, "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 6, "total_duration": 99,
        }  # fmt: skip
        assert tr.ollama_response_to_openai(answer, "chatcmpl-1", 1700) == {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700,
            "model": "llama3",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "",
                        "reasoning": "hm",
                        "tool_calls": [
                            {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        }

    def test_embeddings_both_ways(self) -> None:
        openai = {
            "object": "list",
            "data": [{"embedding": [0.2], "index": 1}, {"embedding": [0.1], "index": 0}],
            "model": "e",
            "usage": {"prompt_tokens": 2},
        }
        assert tr.openai_embeddings_to_ollama(openai, "e") == {
            "model": "e",
            "embeddings": [[0.1], [0.2]],
            "prompt_eval_count": 2,
        }
        assert tr.openai_embeddings_to_ollama(openai, "e", legacy=True) == {"embedding": [0.1]}
        ollama = {"model": "all-minilm", "embeddings": [[0.5, 0.5]], "prompt_eval_count": 1}
        assert tr.ollama_embeddings_to_openai(ollama, "x") == {
            "object": "list", "data": [{"object": "embedding", "embedding": [0.5, 0.5], "index": 0}],
            "model": "all-minilm",
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }  # fmt: skip


# --------------------------------------------------------------------------- streams


OPENAI_STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    },
    "[DONE]",
)

EXPECTED_CHAT_LINES = [
    {"model": "gpt-x", "created_at": STAMP, "message": {"role": "assistant", "content": "Hel"}, "done": False},
    {"model": "gpt-x", "created_at": STAMP, "message": {"role": "assistant", "content": "lo"}, "done": False},
    {
        "model": "gpt-x",
        "created_at": STAMP,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 5,
        "eval_count": 2,
    },
]


# Text that JSON must escape or may write as is: quotes, backslashes, control characters, non-ASCII.
TRICKY_TEXTS = ["plain", 'a "quote" and a \\ backslash', "line\nbreak\ttab\x00\x1f", "ünïcödé 🦙 \u2028", "</script>"]


class TestSseToNdjson:
    @pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
    def test_chat_stream_in_any_pieces(self, size: int) -> None:
        out = feed_in_pieces(tr.SseToNdjson("chat", "cloud", stamp), OPENAI_STREAM, size)
        assert lines(out) == EXPECTED_CHAT_LINES
        assert out.endswith(b"\n")

    def test_exact_bytes_of_one_line(self) -> None:
        translator = tr.SseToNdjson("chat", "cloud", stamp)
        assert (
            translator.feed(sse(chunk({"content": "é"})))
            == (
                '{"model":"gpt-x","created_at":"2026-01-02T03:04:05.000000Z","message":{"role":"assistant","content":"é"},"done":false}\n'
            ).encode()
        )

    @pytest.mark.parametrize("kind", ["chat", "generate"])
    def test_a_text_chunk_is_written_as_the_object_would_be_encoded(self, kind: str) -> None:
        for text in TRICKY_TEXTS:
            written = tr.SseToNdjson(kind, "cloud", stamp).feed(sse(chunk({"role": "assistant", "content": text})))
            field = {"response": text} if kind == "generate" else {"message": {"role": "assistant", "content": text}}
            assert (
                written == (tr.dumps({"model": "gpt-x", "created_at": STAMP, **field, "done": False}) + "\n").encode()
            )

    def test_generate_stream(self) -> None:
        out = feed_in_pieces(tr.SseToNdjson("generate", "cloud", stamp), OPENAI_STREAM, 5)
        assert [(d.get("response"), d["done"]) for d in lines(out)] == [("Hel", False), ("lo", False), ("", True)]
        assert "message" not in lines(out)[0]

    def test_crlf_framing_and_comments(self) -> None:
        data = b": keep-alive\r\n\r\n" + OPENAI_STREAM.replace(b"\n", b"\r\n")
        assert lines(feed_in_pieces(tr.SseToNdjson("chat", "cloud", stamp), data, 4)) == EXPECTED_CHAT_LINES

    def test_tool_call_fragments_are_assembled(self) -> None:
        data = sse(
            chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_", "arguments": '{"ci'},
                        }
                    ],
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": 'ty":"Oslo"}'}}]}),
            chunk({}, "tool_calls"),
            "[DONE]",
        )
        out = lines(feed_in_pieces(tr.SseToNdjson("chat", "cloud", stamp), data, 9))
        assert out == [
            {
                "model": "gpt-x",
                "created_at": STAMP,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}, "id": "call_a"}
                    ],
                },
                "done": False,
            },
            {
                "model": "gpt-x",
                "created_at": STAMP,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
            },
        ]

    def test_error_event_becomes_an_error_line_and_ends_the_stream(self) -> None:
        data = sse(
            chunk({"content": "a"}),
            {"error": {"message": "overloaded", "type": "server_error"}},
            chunk({"content": "b"}),
        )
        out = lines(feed_in_pieces(tr.SseToNdjson("chat", "cloud", stamp), data, 11))
        assert out[-1] == {"error": "overloaded"}
        assert len(out) == 2

    def test_stream_cut_before_the_end_gets_an_error_line(self) -> None:
        out = lines(feed_in_pieces(tr.SseToNdjson("chat", "cloud", stamp), sse(chunk({"content": "a"})), 100))
        assert out[-1] == {"error": "the cloud provider ended the answer early"}

    def test_finish_without_done_marker_still_ends_cleanly(self) -> None:
        out = lines(
            feed_in_pieces(
                tr.SseToNdjson("chat", "cloud", stamp), sse(chunk({"content": "a"}), chunk({}, "length")), 100
            )
        )
        assert out[-1] == {
            "model": "gpt-x",
            "created_at": STAMP,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length",
        }


OLLAMA_STREAM = b"".join(
    (json.dumps(item) + "\n").encode()
    for item in [
        {"model": "llama3", "created_at": STAMP, "message": {"role": "assistant", "content": "You"}, "done": False},
        {"model": "llama3", "created_at": STAMP, "message": {"role": "assistant", "content": " said"}, "done": False},
        {
            "model": "llama3",
            "created_at": STAMP,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 2,
            "eval_count": 2,
        },
    ]
)


def openai_chunk(delta: dict, finish: str | None) -> dict:
    return {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 42,
        "model": "llama3",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class TestNdjsonToSse:
    @pytest.mark.parametrize("size", [1, 5, 1000])
    def test_chat_stream_with_usage(self, size: int) -> None:
        out = feed_in_pieces(tr.NdjsonToSse("chatcmpl-7", 42, "cloud", include_usage=True), OLLAMA_STREAM, size)
        assert events(out) == [
            openai_chunk({"role": "assistant", "content": "You"}, None),
            openai_chunk({"role": "assistant", "content": " said"}, None),
            openai_chunk({"role": "assistant", "content": ""}, "stop"),
            {
                "id": "chatcmpl-7",
                "object": "chat.completion.chunk",
                "created": 42,
                "model": "llama3",
                "choices": [],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            },
            "[DONE]",
        ]
        assert out.endswith(b"data: [DONE]\n\n")

    def test_a_text_chunk_is_written_as_the_object_would_be_encoded(self) -> None:
        for text in TRICKY_TEXTS:
            line = json.dumps({"model": "llama3", "message": {"role": "assistant", "content": text}, "done": False})
            expected = {
                "id": "chatcmpl-7",
                "object": "chat.completion.chunk",
                "created": 42,
                "model": "llama3",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
            }
            written = tr.NdjsonToSse("chatcmpl-7", 42, "cloud").feed(line.encode() + b"\n")
            assert written == f"data: {tr.dumps(expected)}\n\n".encode()

    def test_without_usage_and_with_length(self) -> None:
        data = OLLAMA_STREAM.replace(b'"done_reason": "stop"', b'"done_reason": "length"')
        out = events(feed_in_pieces(tr.NdjsonToSse("chatcmpl-7", 42, "cloud"), data, 50))
        assert out[-2] == openai_chunk({"role": "assistant", "content": ""}, "length")
        assert len(out) == 4

    def test_error_line_and_early_end(self) -> None:
        broken = OLLAMA_STREAM.splitlines(keepends=True)[0] + b'{"error":"model runner has unexpectedly stopped"}\n'
        assert events(feed_in_pieces(tr.NdjsonToSse("i", 1, "m"), broken, 3))[-1] == tr.openai_error(
            "model runner has unexpectedly stopped"
        )
        cut = OLLAMA_STREAM.splitlines(keepends=True)[0]
        assert events(feed_in_pieces(tr.NdjsonToSse("i", 1, "m"), cut, 3))[-1] == tr.openai_error(
            "the cloud provider ended the answer early"
        )

    def test_round_trip_keeps_the_text(self) -> None:
        sse_bytes = feed_in_pieces(tr.NdjsonToSse("i", 1, "m", include_usage=True), OLLAMA_STREAM, 4)
        back = lines(feed_in_pieces(tr.SseToNdjson("chat", "m", stamp), sse_bytes, 6))
        assert "".join(d["message"]["content"] for d in back) == "You said"
        assert (back[-1]["done"], back[-1]["prompt_eval_count"], back[-1]["eval_count"]) == (True, 2, 2)


# --------------------------------------------------------------------------- errors and framing


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"message":"Invalid   key","type":"auth"}}', "Invalid key"),
        ('{"error":"model \'x\' not found"}', "model 'x' not found"),
        (b"502 Bad Gateway\n<html>", "502 Bad Gateway <html>"),
        ({"message": "rate limited"}, "rate limited"),
    ],
)
def test_error_message(body: object, message: str) -> None:
    assert tr.error_message(body) == message


def test_a_long_error_message_is_cut_with_an_ellipsis_and_no_control_characters() -> None:
    message = tr.error_message({"error": "quota\x1b[31m exceeded " + "x" * 400})
    assert message.startswith("quota [31m exceeded xxx") and message.endswith("…") and len(message) == 300


def test_stream_error_tails() -> None:
    assert tr.stream_error_tail("application/x-ndjson", "boom") == b'{"error":"boom"}\n'
    assert tr.stream_error_tail("application/x-ndjson", "boom", ended_mid_line=True) == b'\n{"error":"boom"}\n'
    assert tr.stream_error_tail("text/event-stream", "boom") == (
        b'data: {"error":{"message":"boom","type":"api_error","param":null,"code":null}}\n\n'
    )


def test_error_bodies_per_dialect() -> None:
    assert tr.error_body(tr.Dialect.OLLAMA, "x") == {"error": "x"}
    assert tr.error_body(tr.Dialect.OPENAI, "x", "invalid_request_error") == {
        "error": {"message": "x", "type": "invalid_request_error", "param": None, "code": None}
    }


def test_sse_parser_multi_line_data_and_unterminated_end() -> None:
    parser = tr.SseParser()
    assert parser.feed(b"event: x\ndata: a\ndata: b\n\nid: 3\ndata:c") == [b"a\nb"]
    assert parser.close() == [b"c"]


def test_line_splitter_keeps_partial_lines() -> None:
    splitter = tr.LineSplitter()
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}\r\n") == [b'{"b":2}']
    assert splitter.feed(b"tail") == []
    assert splitter.close() == [b"tail"]


def test_rfc3339_nano() -> None:
    assert tr.rfc3339_nano(0.25) == "1970-01-01T00:00:00.250000Z"
