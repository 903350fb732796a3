"""Just enough GGUF for the stand-in: write a small header, read its key/value metadata.

A synthesized model file is a real GGUF v3 header (no tensors) followed by
deterministic pseudo-random bytes, so it looks like weights to anything that
checks the magic, and its size is whatever the test asks for.
"""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Any, BinaryIO, Dict, Iterator, List, Tuple

MAGIC = b"GGUF"
CHUNK = 1024 * 1024

# general.file_type values (llama.cpp's llama_ftype) and the names Ollama shows.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}
FILE_TYPE_IDS = {name: number for number, name in FILE_TYPES.items()}
QUANTIZABLE_FROM = ("F16", "BF16", "F32")
QUANTIZE_TARGETS = ("F32", "F16", "BF16", "Q4_K_S", "Q4_K_M", "Q8_0")

_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALARS = {
    _U8: "<B",
    _I8: "<b",
    _U16: "<H",
    _I16: "<h",
    _U32: "<I",
    _I32: "<i",
    _F32: "<f",
    _BOOL: "<?",
    _U64: "<Q",
    _I64: "<q",
    _F64: "<d",
}


class GGUFError(ValueError):
    """The file is not a GGUF model Ollama could decode; ``str()`` is the decoder's message."""


KV = Tuple[str, int, Any]


def u32(key: str, value: int) -> KV:
    """A uint32 metadata entry."""
    return (key, _U32, value)


def u64(key: str, value: int) -> KV:
    """A uint64 metadata entry."""
    return (key, _U64, value)


def string(key: str, value: str) -> KV:
    """A string metadata entry."""
    return (key, _STRING, value)


def _encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def encode_header(kvs: List[KV]) -> bytes:
    """A GGUF v3 header with ``kvs`` as metadata and no tensors."""
    out = [MAGIC, struct.pack("<IQQ", 3, 0, len(kvs))]
    for key, kind, value in kvs:
        out.append(_encode_string(key))
        out.append(struct.pack("<I", kind))
        out.append(_encode_string(value) if kind == _STRING else struct.pack(_SCALARS[kind], value))
    return b"".join(out)


def synthesized_chunks(seed: str, size: int, kvs: List[KV]) -> Iterator[bytes]:
    """The bytes of a deterministic model file: header, then seeded pseudo-random filler up to ``size``."""
    header = encode_header(kvs)
    yield header
    rng = random.Random(seed)
    remaining = max(0, size - len(header))
    while remaining:
        count = min(CHUNK, remaining)
        yield rng.getrandbits(count * 8).to_bytes(count, "little")
        remaining -= count


def digest_of_chunks(chunks: Iterator[bytes]) -> Tuple[str, int]:
    """``sha256:<hex>`` and total length of a byte stream."""
    hasher = hashlib.sha256()
    total = 0
    for chunk in chunks:
        hasher.update(chunk)
        total += len(chunk)
    return "sha256:" + hasher.hexdigest(), total


def _read(handle: BinaryIO, count: int) -> bytes:
    data = handle.read(count)
    if len(data) != count:
        raise GGUFError("unexpected EOF")
    return data


def _read_value(handle: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        (length,) = struct.unpack("<Q", _read(handle, 8))
        return _read(handle, length).decode("utf-8", "replace")
    if kind == _ARRAY:
        item_kind, count = struct.unpack("<IQ", _read(handle, 12))
        items = [_read_value(handle, item_kind) for _ in range(count)]
        return items if count <= 64 else None
    if kind not in _SCALARS:
        raise GGUFError("invalid type %d" % kind)
    fmt = _SCALARS[kind]
    return struct.unpack(fmt, _read(handle, struct.calcsize(fmt)))[0]


def read_metadata(path: str) -> Dict[str, Any]:
    """The key/value metadata of a GGUF file (large arrays are dropped).

    Raises :class:`GGUFError` (``invalid file magic``, ``unexpected EOF``) for other files.
    """
    with open(path, "rb") as handle:
        if handle.read(4) != MAGIC:
            raise GGUFError("invalid file magic")
        version, _tensors, count = struct.unpack("<IQQ", _read(handle, 20))
        if version not in (2, 3):
            raise GGUFError("unsupported version %d" % version)
        metadata: Dict[str, Any] = {}
        for _ in range(count):
            (length,) = struct.unpack("<Q", _read(handle, 8))
            key = _read(handle, length).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", _read(handle, 4))
            value = _read_value(handle, kind)
            if value is not None:
                metadata[key] = value
        return metadata


def file_type_name(metadata: Dict[str, Any]) -> str:
    """The quantization name of ``general.file_type`` (``Q4_K_M``, ``F16``…)."""
    return FILE_TYPES.get(int(metadata.get("general.file_type", 15)), "unknown")


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber`` for parameter counts (``8.0B``, ``23M``).

    >>> human_number(8030261248)
    '8.0B'
    >>> human_number(22565376)
    '23M'
    """
    for limit, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= limit:
            value = count / limit
            if value >= 100:
                return "%d%s" % (int(value), unit)
            if value >= 10:
                return "%d%s" % (round(value), unit)
            return "%.1f%s" % (value, unit)
    return str(count)
