"""Reading and writing `.safetensors` files without the `safetensors` or `torch` packages.

Format: an unsigned 64-bit little-endian header length N, then N bytes of UTF-8 JSON, then the
data buffer. The JSON maps each tensor name to `{"dtype": "F32", "shape": [..],
"data_offsets": [begin, end]}` (byte offsets relative to the start of the data buffer), plus an
optional `"__metadata__": {str: str}`. Tensors are C-contiguous and little-endian; together
their byte ranges tile the data buffer exactly (no gaps, no overlaps).

`load_file` validates the header and returns `LazyTensor`s that read their own bytes on
`.numpy()` (or map them with `.memmap()`); `save_file` writes to a temporary sibling and
renames it into place.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from scalingar_jax.atomic import atomic_file
from scalingar_jax.convert.torch_pickle import (
    CheckpointFormatError,
    LazyTensor,
    _Region,
    _Storage,
)

__all__ = ["DTYPES", "read_header", "load_file", "load_arrays", "save_file"]

# safetensors dtype code -> numpy dtype (little-endian)
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_CODES = {v.newbyteorder("="): k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # as the safetensors library
MAX_HEADER_DEPTH = 128  # JSON nesting, as the safetensors library (serde_json's recursion limit)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _json_depth(raw: bytes) -> int:
    """Deepest `[`/`{` nesting of JSON text `raw` (brackets inside strings do not count), found
    without recursion so that a hostile header cannot exhaust the stack."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _err(path, msg) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: invalid safetensors file: {msg}")


def read_header(path) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int, int]], dict[str, str] | None, int]:
    """Parses and validates the header of a `.safetensors` file.

    Returns (entries, metadata, data_start): entries maps name -> (numpy dtype, shape,
    begin, end) with byte offsets relative to the data buffer, which starts at byte
    `data_start` of the file. Raises `CheckpointFormatError` naming the file and the problem:
    a short file, a header length past the end, non-JSON or non-object header, an unknown dtype,
    a bad shape, a byte range that does not match its shape, out of bounds, overlapping, or
    leaving gaps.
    """
    path = os.fspath(path)
    from scalingar_jax.inputs import check_regular

    check_regular(path, f"safetensors file {path!r}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _err(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise _err(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if 8 + n > size:
            raise _err(path, f"header length {n} reaches past the end of the {size}-byte file (truncated?)")
        raw = f.read(n)
    depth = _json_depth(raw)
    if depth > MAX_HEADER_DEPTH:
        raise _err(path, f"header JSON nests {depth} deep (at most {MAX_HEADER_DEPTH})")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _err(path, f"header is not UTF-8 JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise _err(path, f"header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise _err(path, "__metadata__ must be an object of string -> string")
    data_start = 8 + n
    data_len = size - data_start
    entries = {}
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise _err(path, f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets; got {e!r:.200}")
        code, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if code not in DTYPES:
            raise _err(path, f"tensor {name!r}: unknown dtype {code!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise _err(path, f"tensor {name!r}: shape must be a list of non-negative ints, got {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and o >= 0 for o in offs)):
            raise _err(path, f"tensor {name!r}: data_offsets must be [begin, end] non-negative ints, got {offs!r}")
        begin, end = offs
        dtype = DTYPES[code]
        want = math.prod(shape) * dtype.itemsize
        if end < begin or end - begin != want:
            raise _err(
                path, f"tensor {name!r}: data_offsets {offs} hold {end - begin} bytes but {code}{shape} needs {want}"
            )
        if end > data_len:
            raise _err(path, f"tensor {name!r}: data_offsets {offs} reach past the {data_len}-byte data buffer (truncated?)")
        entries[name] = (dtype, tuple(shape), begin, end)
    pos = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin < pos:
            raise _err(path, f"tensor {name!r}: data_offsets [{begin}, {end}] overlap the previous tensor (ends at {pos})")
        if begin > pos:
            raise _err(path, f"tensor {name!r}: gap in the data buffer between bytes {pos} and {begin}")
        pos = end
    if pos != data_len:
        raise _err(path, f"the tensors cover {pos} bytes but the data buffer has {data_len} bytes")
    return entries, metadata, data_start


def load_file(path) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """Lazily opens a `.safetensors` file: (name -> LazyTensor, metadata dict ({} if none)).

    Nothing but the header is read; `LazyTensor.numpy()` reads one tensor, `.memmap()` maps it.
    """
    path = os.fspath(path)
    entries, metadata, data_start = read_header(path)
    out = {}
    for name, (dtype, shape, begin, end) in entries.items():
        numel = math.prod(shape)
        storage = _Storage(name, dtype, numel, _Region(path, data_start + begin, end - begin, name))
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= s
        out[name] = LazyTensor(storage, 0, shape, tuple(reversed(stride)))
    return out, dict(metadata or {})


def load_arrays(path) -> dict[str, np.ndarray]:
    """Reads every tensor of a `.safetensors` file into numpy arrays."""
    tensors, _ = load_file(path)
    return {k: v.numpy() for k, v in tensors.items()}


def save_file(path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Writes `tensors` (name -> np.ndarray or LazyTensor; any dtype in `DTYPES`) atomically.

    Tensors are laid out by decreasing dtype size then name (keeping every tensor aligned to its
    itemsize); the header is padded with spaces to a multiple of 8 bytes. LazyTensors are read
    one at a time while writing. Returns the path.
    """
    path = Path(path)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str -> str")
    specs = []
    for name, v in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        dtype = np.dtype(v.dtype)
        shape = tuple(int(s) for s in v.shape)
        code = _CODES.get(dtype.newbyteorder("="))
        if code is None:
            raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
        specs.append((name, code, shape, math.prod(shape) * dtype.itemsize))
    specs.sort(key=lambda s: (-DTYPES[s[1]].itemsize, s[0]))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name, code, shape, nbytes in specs:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, code, shape, nbytes in specs:
            v = tensors[name]
            arr = v.numpy() if isinstance(v, LazyTensor) else np.asarray(v)
            if arr.shape != shape:
                raise ValueError(f"tensor {name!r} changed shape while writing")
            arr = np.ascontiguousarray(arr, dtype=DTYPES[code])
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
            del arr
    return path
