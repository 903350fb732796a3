"""Modelfile parsing, source resolution, create request and fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tray.models.errors import ModelfileError
from tray.models.modelfile import (
    BuildSources,
    LocalFile,
    Message,
    SourceRef,
    decode_modelfile,
    fingerprint,
    load_modelfile,
    parse_modelfile,
    resolve_sources,
)


def lines(*items: str) -> str:
    return "\n".join(items) + "\n"


def parse(text: str):
    return parse_modelfile(text, "M")


def error_of(text: str) -> str:
    with pytest.raises(ModelfileError) as caught:
        parse(text)
    return str(caught.value)


# --- syntax --------------------------------------------------------------------------------------


def test_minimal_file_has_from_and_system():
    parsed = parse("FROM llama3\nSYSTEM You are terse.\n")
    assert parsed.sources == (SourceRef("model", "llama3", 1),)
    assert parsed.system == "You are terse."
    assert parsed.template is None and parsed.parameters == {} and parsed.messages == ()


def test_instructions_are_case_insensitive():
    parsed = parse("from llama3\nSyStEm hi\nparameter num_ctx 8\n")
    assert parsed.sources[0].value == "llama3"
    assert parsed.system == "hi"
    assert parsed.parameters == {"num_ctx": 8}


def test_order_does_not_matter_and_comments_and_blank_lines_are_skipped():
    text = "# leading comment\n\n   # indented comment\nSYSTEM s\n\nFROM base:7b\n# trailing\n"
    parsed = parse(text)
    assert parsed.sources == (SourceRef("model", "base:7b", 6),)
    assert parsed.system == "s"


def test_hash_inside_a_value_is_literal():
    assert parse("FROM x\nSYSTEM use # freely\n").system == "use # freely"


def test_typed_parameters():
    text = lines(
        "FROM x",
        "PARAMETER num_ctx 4096",
        "PARAMETER temperature 0.7",
        "PARAMETER top_k -1",
        "PARAMETER top_p .9",
        "PARAMETER min_p 5e-2",
        "PARAMETER seed 42",
        "PARAMETER use_mmap T",
        "PARAMETER draft_num_predict 8",
        "PARAMETER repeat_penalty 1",
    )
    params = parse(text).parameters
    assert params == {
        "num_ctx": 4096,
        "temperature": 0.7,
        "top_k": -1,
        "top_p": 0.9,
        "min_p": 0.05,
        "seed": 42,
        "use_mmap": True,
        "draft_num_predict": 8,
        "repeat_penalty": 1.0,
    }
    assert type(params["num_ctx"]) is int
    assert type(params["repeat_penalty"]) is float
    assert type(params["use_mmap"]) is bool


def test_repeated_stop_builds_a_list_with_quotes_removed():
    text = 'FROM x\nPARAMETER stop "<|eot_id|>"\nPARAMETER stop <|end|>\nPARAMETER stop "a b"\n'
    assert parse(text).parameters["stop"] == ["<|eot_id|>", "<|end|>", "a b"]


def test_single_stop_is_still_a_list():
    assert parse("FROM x\nPARAMETER stop END\n").parameters == {"stop": ["END"]}


def test_repeated_scalar_parameter_keeps_the_last_value():
    assert parse("FROM x\nPARAMETER num_ctx 1\nPARAMETER num_ctx 2\n").parameters == {"num_ctx": 2}


def test_deprecated_parameter_is_kept_with_a_warning():
    parsed = parse("FROM x\nPARAMETER mirostat 2\nPARAMETER penalize_newline true\n")
    assert parsed.parameters == {"mirostat": 2, "penalize_newline": True}
    assert parsed.warnings == (
        "M:2: parameter mirostat is deprecated; current Ollama ignores it",
        "M:3: parameter penalize_newline is deprecated; current Ollama ignores it",
    )


def test_triple_quoted_value_keeps_newlines_and_inner_quotes():
    text = 'FROM x\nTEMPLATE """{{ .System }}\nUser: "{{ .Prompt }}"\n"""\nSYSTEM after\n'
    parsed = parse(text)
    assert parsed.template == '{{ .System }}\nUser: "{{ .Prompt }}"\n'
    assert parsed.system == "after"


def test_triple_quoted_value_keeps_inner_blank_lines_and_spaces():
    assert parse('FROM x\nSYSTEM """\n  a  \n\n"""\n').system == "\n  a  \n\n"


def test_triple_quoted_on_one_line_and_empty():
    assert parse('FROM x\nSYSTEM """one line"""\n').system == "one line"
    assert parse('FROM x\nSYSTEM """"""\n').system == ""


def test_double_quoted_value():
    assert parse('FROM x\nSYSTEM "  padded  "\n').system == "  padded  "
    assert parse('FROM x\nSYSTEM ""\n').system == ""


def test_double_quoted_value_may_span_lines_like_ollama():
    assert parse('FROM x\nSYSTEM "first\nsecond"\nPARAMETER seed 1\n').system == "first\nsecond"


def test_later_system_and_template_win():
    parsed = parse("FROM x\nSYSTEM a\nSYSTEM b\nTEMPLATE t1\nTEMPLATE t2\n")
    assert (parsed.system, parsed.template) == ("b", "t2")


def test_messages_licenses_requires_adapter_renderer_parser():
    text = lines(
        "FROM x",
        "MESSAGE system Be brief.",
        "MESSAGE user Is it sunny?",
        'MESSAGE assistant """Yes,\nit is."""',
        "LICENSE MIT",
        'LICENSE """Apache\n2.0"""',
        "REQUIRES v0.14.0",
        "ADAPTER ./lora.gguf",
        "DRAFT ./small.gguf",
        "RENDERER qwen3",
        "PARSER qwen3",
    )
    parsed = parse(text)
    assert parsed.messages == (
        Message("system", "Be brief."),
        Message("user", "Is it sunny?"),
        Message("assistant", "Yes,\nit is."),
    )
    assert parsed.licenses == ("MIT", "Apache\n2.0")
    assert parsed.requires == "0.14.0"
    assert parsed.sources[1:] == (SourceRef("adapter", "./lora.gguf", 10), SourceRef("draft", "./small.gguf", 11))
    assert (parsed.renderer, parsed.parser) == ("qwen3", "qwen3")


def test_utf8_bom_and_crlf_line_endings():
    parsed = parse("\ufeffFROM llama3\r\nSYSTEM Grüße\r\n")
    assert parsed.sources == (SourceRef("model", "llama3", 1),)
    assert parsed.system == "Grüße"


def test_decode_honours_utf8_and_utf16_boms():
    text = "FROM x\nSYSTEM é\n"
    assert decode_modelfile(b"\xef\xbb\xbf" + text.encode(), "M") == text
    assert decode_modelfile(b"\xff\xfe" + text.encode("utf-16-le"), "M") == text
    assert decode_modelfile(b"\xfe\xff" + text.encode("utf-16-be"), "M") == text


# --- errors --------------------------------------------------------------------------------------


def test_unknown_instruction_names_file_and_line():
    message = error_of("FROM x\n\nFOO bar\n")
    assert message == (
        "M:3: unknown instruction 'FOO' (expected one of FROM, PARAMETER, TEMPLATE, SYSTEM, "
        "ADAPTER, LICENSE, MESSAGE, REQUIRES, DRAFT, RENDERER, PARSER)"
    )


def test_instruction_glued_to_its_value_is_unknown():
    assert error_of("FROM:llama3\n").startswith("M:1: unknown instruction 'FROM:llama3'")


def test_missing_from():
    assert error_of("SYSTEM hi\n") == "M:1: no FROM instruction: the Modelfile must name a base model or a model file"
    assert error_of("") == "M:1: no FROM instruction: the Modelfile must name a base model or a model file"


def test_unterminated_triple_quote_points_at_its_opening_line():
    assert (
        error_of('FROM x\nSYSTEM """never\nclosed\n')
        == 'M:2: unterminated quote: no closing """ before the end of the file'
    )


def test_unterminated_double_quote():
    assert (
        error_of('FROM x\nPARAMETER stop "abc\n') == 'M:2: unterminated quote: no closing " before the end of the file'
    )


def test_unknown_parameter():
    assert error_of("FROM x\nPARAMETER temprature 1\n") == "M:2: unknown parameter 'temprature'"


def test_parameter_names_are_case_sensitive_like_ollama():
    assert error_of("FROM x\nPARAMETER Temperature 1\n") == "M:2: unknown parameter 'Temperature'"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("PARAMETER num_ctx 4k", "parameter 'num_ctx' must be a whole number, got '4k'"),
        ("PARAMETER num_ctx 1.5", "parameter 'num_ctx' must be a whole number, got '1.5'"),
        ("PARAMETER temperature warm", "parameter 'temperature' must be a number, got 'warm'"),
        ("PARAMETER temperature nan", "parameter 'temperature' must be a number, got 'nan'"),
        ("PARAMETER use_mmap yes", "parameter 'use_mmap' must be true or false, got 'yes'"),
        ("PARAMETER num_ctx", "parameter 'num_ctx' needs a value"),
        ("PARAMETER bad-name 1", "invalid parameter name 'bad-name'"),
    ],
)
def test_bad_parameter_values(line, problem):
    assert error_of(f"FROM x\n{line}\n") == f"M:2: {problem}"


def test_bad_message_role():
    assert error_of("FROM x\nMESSAGE tool hi\n") == "M:2: bad message role 'tool' (must be system, user or assistant)"


def test_message_without_text():
    assert error_of("FROM x\nMESSAGE user\n") == "M:2: MESSAGE user needs a text"


def test_instruction_without_value():
    assert error_of("FROM x\nSYSTEM\n") == "M:2: SYSTEM needs a value"


def test_bad_requires_version():
    assert error_of("FROM x\nREQUIRES soon\n") == "M:2: REQUIRES must be a version such as 0.14.0, got 'soon'"


def test_errors_are_one_line():
    for text in ('FROM x\nSYSTEM """a\nb\n', "FROM x\nBAD\n", "SYSTEM x"):
        assert "\n" not in error_of(text)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.Modelfile"
    with pytest.raises(ModelfileError) as caught:
        load_modelfile(path)
    assert str(caught.value) == f"{path}: Modelfile not found"


def test_load_uses_the_path_in_messages_and_rejects_non_utf8(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"FROM x\nSYSTEM \xff\xfe\xfd oops\n")
    with pytest.raises(ModelfileError) as caught:
        load_modelfile(path)
    assert str(caught.value) == f"{path}:2: not valid UTF-8 text"


def test_a_fifo_modelfile_is_refused_at_once(tmp_path):
    import os
    import threading

    fifo = tmp_path / "uncensored.Modelfile"
    os.mkfifo(fifo)
    errors: list[str] = []

    def load() -> None:
        try:
            load_modelfile(fifo)
        except ModelfileError as exc:
            errors.append(str(exc))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # a writer lets the blocked reader go before the test fails
        with open(fifo, "w"):
            pass
        reader.join(5)
        pytest.fail("reading a FIFO as the Modelfile blocked")
    assert errors == [f"{fifo}: is a named pipe (FIFO), not a regular file"]


def test_dev_zero_as_the_modelfile_is_refused_without_reading_it():
    with pytest.raises(ModelfileError) as caught:
        load_modelfile("/dev/zero")
    assert str(caught.value) == "/dev/zero: is a character device, not a regular file"


def test_load_reads_bom_file(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"\xef\xbb\xbfFROM llama3\n")
    assert load_modelfile(path).sources == (SourceRef("model", "llama3", 1),)


# --- sources and the create request --------------------------------------------------------------


def test_from_name_becomes_from(tmp_path):
    parsed = parse("FROM llama3\n")
    assert resolve_sources(parsed, tmp_path) == BuildSources(from_model="llama3")


def test_from_relative_gguf_becomes_a_file(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    sources = resolve_sources(parse("FROM ./weights.gguf\n"), tmp_path)
    assert sources == BuildSources(files=(LocalFile("weights.gguf", tmp_path / "weights.gguf"),))


def test_from_absolute_and_home_paths(tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "a.gguf").write_bytes(b"A")
    (tmp_path / "b.gguf").write_bytes(b"B")
    sources = resolve_sources(
        parse(f"FROM ~/models/a.gguf\nFROM {tmp_path / 'b.gguf'}\n"), tmp_path / "elsewhere", home
    )
    assert [item.key for item in sources.files] == ["a.gguf", "b.gguf"]
    assert sources.files[0].path == home / "models" / "a.gguf"


def test_from_safetensors_directory_lists_weights_and_configs(tmp_path):
    model_dir = tmp_path / "hf"
    (model_dir / "sub").mkdir(parents=True)
    for name in (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "config.json",
        "tokenizer.json",
    ):
        (model_dir / name).write_bytes(b"x")
    (model_dir / "sub" / "config.json").write_bytes(b"{}")
    (model_dir / "README.md").write_bytes(b"ignored")
    sources = resolve_sources(parse("FROM ./hf\n"), tmp_path)
    assert [item.key for item in sources.files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "config.json",
        "sub/config.json",
        "tokenizer.json",
    ]


def test_empty_model_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelfileError) as caught:
        resolve_sources(parse("FROM ./empty\n"), tmp_path)
    assert str(caught.value) == f"M:1: no safetensors or GGUF files in {tmp_path / 'empty'}"


def test_missing_adapter_is_an_error(tmp_path):
    with pytest.raises(ModelfileError) as caught:
        resolve_sources(parse("FROM x\nADAPTER ./lora.gguf\n"), tmp_path)
    assert str(caught.value) == f"M:2: adapter file not found: {tmp_path / 'lora.gguf'}"


def test_from_that_is_neither_file_nor_name(tmp_path):
    with pytest.raises(ModelfileError) as caught:
        resolve_sources(parse("FROM ./missing.gguf\n"), tmp_path)
    assert str(caught.value) == "M:1: './missing.gguf' is neither an existing file nor a valid model name"


def test_create_request_has_the_current_shape(tmp_path):
    (tmp_path / "lora.gguf").write_bytes(b"L")
    text = lines(
        "FROM llama3",
        "ADAPTER ./lora.gguf",
        "SYSTEM sys",
        "TEMPLATE tpl",
        "PARAMETER num_ctx 2048",
        "PARAMETER stop a",
        "PARAMETER stop b",
        "MESSAGE user hi",
        "LICENSE MIT",
        "REQUIRES 0.5.5",
    )
    parsed = parse(text)
    sources = resolve_sources(parsed, tmp_path)
    digest = "sha256:" + "ab" * 32
    request = parsed.to_create_request("mine", sources, {tmp_path / "lora.gguf": digest}, quantize="Q4_K_M")
    assert request == {
        "model": "mine",
        "from": "llama3",
        "adapters": {"lora.gguf": digest},
        "system": "sys",
        "template": "tpl",
        "parameters": {"num_ctx": 2048, "stop": ["a", "b"]},
        "messages": [{"role": "user", "content": "hi"}],
        "license": ["MIT"],
        "requires": "0.5.5",
        "quantize": "Q4_K_M",
        "stream": True,
    }
    assert "modelfile" not in request


def test_create_request_with_local_weights_uses_files(tmp_path):
    (tmp_path / "w.gguf").write_bytes(b"W")
    parsed = parse("FROM ./w.gguf\n")
    sources = resolve_sources(parsed, tmp_path)
    request = parsed.to_create_request("m", sources, {tmp_path / "w.gguf": "sha256:" + "cd" * 32}, stream=False)
    assert request == {"model": "m", "files": {"w.gguf": "sha256:" + "cd" * 32}, "stream": False}


def _request(text: str, quantize: str | None = None, digest: str | None = None, tmp_path: Path | None = None):
    parsed = parse(text)
    if digest is None:
        return parsed.to_create_request("m", BuildSources(from_model="llama3"), {}, quantize=quantize)
    assert tmp_path is not None
    sources = BuildSources(files=(LocalFile("w.gguf", tmp_path / "w.gguf"),))
    return parsed.to_create_request("m", sources, {tmp_path / "w.gguf": digest}, quantize=quantize)


def test_fingerprint_is_stable_and_ignores_name_and_stream():
    request = _request("FROM llama3\nSYSTEM a\n")
    renamed = dict(request, model="other", stream=False)
    expected_payload = 'modelfile-v1\n{"from":"llama3","system":"a"}'
    assert fingerprint(request) == hashlib.sha256(expected_payload.encode()).hexdigest()
    assert fingerprint(renamed) == fingerprint(request)


def test_fingerprint_changes_with_system_quantize_and_file_digest(tmp_path):
    base = fingerprint(_request("FROM llama3\nSYSTEM a\n"))
    assert fingerprint(_request("FROM llama3\nSYSTEM b\n")) != base
    assert fingerprint(_request("FROM llama3\nSYSTEM a\n", quantize="Q4_K_M")) != base
    one = fingerprint(_request("FROM x\n", digest="sha256:" + "1" * 64, tmp_path=tmp_path))
    two = fingerprint(_request("FROM x\n", digest="sha256:" + "2" * 64, tmp_path=tmp_path))
    assert one != two


REPOSITORY_MODELFILE = Path(__file__).resolve().parents[1] / "uncensored.Modelfile"
SHIPPED_MODELFILE = Path(__file__).resolve().parents[1] / "tray" / "data" / "uncensored.Modelfile"


def test_repository_modelfile_parses():
    parsed = load_modelfile(REPOSITORY_MODELFILE)
    assert parsed.sources == (SourceRef("model", "llama3", 4),)
    assert parsed.system


def test_the_shipped_modelfile_is_the_repository_one():
    # tray/data/uncensored.Modelfile (installed on first run, bundled) is a link to the one at the top of the
    # repository. A checkout without links (git on Windows with core.symlinks off) makes it a text file holding
    # the link's path, and the package would ship that: this fails there, and if the link is ever made a copy
    # that drifts.
    assert SHIPPED_MODELFILE.read_bytes() == REPOSITORY_MODELFILE.read_bytes()


@pytest.mark.parametrize("name", ["tfs_z", "numa"])
def test_options_ollama_no_longer_has_are_refused(name):
    # api/types.go dropped them: `ollama create` fails with "unknown parameter".
    with pytest.raises(ModelfileError, match=f"M:2: unknown parameter '{name}'"):
        parse(lines("FROM x", f"PARAMETER {name} 1"))


def test_only_the_last_adapter_is_sent_as_ollama_takes_one():
    parsed = parse(lines("FROM x", "ADAPTER ./a.gguf", "ADAPTER ./b.gguf"))
    assert [(ref.kind, ref.value) for ref in parsed.sources] == [("model", "x"), ("adapter", "./b.gguf")]
    assert parsed.warnings == ("M:3: only one ADAPTER is used; this one replaces the earlier",)


def test_crlf_inside_a_multi_line_value_is_kept():
    parsed = parse('FROM x\r\nSYSTEM """one\r\ntwo"""\r\nTEMPLATE """a\nb"""\r\n')
    assert parsed.system == "one\r\ntwo"
    assert parsed.template == "a\nb"
