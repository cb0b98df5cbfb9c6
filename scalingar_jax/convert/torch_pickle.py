"""Reading and writing `torch.save` checkpoints without torch, and without running their code.

Format facts (torch >= 1.6, the "zip" serialization):

* The file is an uncompressed zip archive. Every record sits under one top directory
  (`<archive>/`): `data.pkl` (the pickled object), `data/<key>` (one raw storage per key),
  `byteorder` ("little" or "big"; absent in old files, meaning little), `version`, and a few
  bookkeeping records (`.format_version`, `.storage_alignment`, `.data/serialization_id`).
  Storage records are aligned (64 bytes by default) by padding the local header's extra field.
* `data.pkl` is a protocol-2 pickle. A tensor is `torch._utils._rebuild_tensor_v2(storage,
  storage_offset, size, stride, requires_grad, backward_hooks[, metadata])` where `storage` is a
  persistent id `('storage', <torch.XStorage class>, key, location, numel)`; offsets, sizes and
  strides count elements of the storage's dtype. Parameters wrap a tensor in
  `torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks)`.

Safety: a pickle names callables that `pickle.Unpickler` would run. `SafeUnpickler` is instead
a small interpreter of its own for the opcodes `torch.save` writes: globals resolve only to the
inert local stand-ins of `_ALLOWED` (the real torch functions are never touched; any other
global raises `UnsafePickleError` naming it), BUILD applies only to tensors, OrderedDicts and
the Namespace stand-in, shared references stay shared, and cycles, deep nesting and other
opcodes are refused. Memory is bounded by a byte budget (`max_bytes`, default
`default_max_bytes(file size)`) that covers the pickle's objects and, before any tensor is read,
every tensor of the state dict as it will be materialised (`check_budget`). Tensors come back as
`LazyTensor` records; their bytes are read from the file only when `LazyTensor.numpy()` is
called, one tensor at a time.

Legacy (pre-1.6, non-zip) files are refused with a message explaining how to re-save them.
"""
from __future__ import annotations

import collections
import io
import itertools
import math
import os
import pickletools
import re
import struct
import types
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

from scalingar_jax.atomic import atomic_file

__all__ = [
    "CheckpointFormatError",
    "UnsafePickleError",
    "CheckpointBudgetError",
    "LazyTensor",
    "load",
    "check_budget",
    "default_max_bytes",
    "load_state_dict",
    "save_torch_state_dict",
    "STORAGE_DTYPES",
]


class CheckpointFormatError(ValueError):
    """The file is not a readable checkpoint (corrupt, truncated, legacy or unsupported format)."""


class UnsafePickleError(CheckpointFormatError):
    """The pickle uses a global or opcode outside the allow-list; nothing from it was executed."""


class CheckpointBudgetError(CheckpointFormatError):
    """Reading the file would take more memory than the byte budget (`max_bytes`) allows."""


# Default byte budget: BUDGET_FACTOR x the file size, at least BUDGET_FLOOR (see `default_max_bytes`).
BUDGET_FACTOR = 2
BUDGET_FLOOR = 8 << 20


# torch storage class name -> numpy dtype of its elements (little-endian on disk by default).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}
_DTYPE_TO_STORAGE = {v: k for k, v in STORAGE_DTYPES.items() if k != "UntypedStorage"}

_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature .. extra length: 30 bytes
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------------------------
# Lazy tensors
# --------------------------------------------------------------------------------------------


class _Region:
    """Where the raw bytes of one storage live in a file: a stored (uncompressed) zip member
    at a byte offset, or a compressed member read through `zipfile`. crc: the CRC-32 the zip
    records for a stored member, checked the first time its bytes are read (corrupted weights
    must not become a model; `zipfile` checks compressed members itself)."""

    __slots__ = ("path", "start", "nbytes", "member", "crc")

    def __init__(self, path: str, start: int | None, nbytes: int, member: str | None = None, crc: int | None = None):
        self.path, self.start, self.nbytes, self.member, self.crc = path, start, nbytes, member, crc

    def _check_crc(self, crc: int) -> None:
        if crc != self.crc:
            raise CheckpointFormatError(f"{self.path}: record {self.member} fails its CRC-32 check (stored "
                                        f"{self.crc:08x}, read {crc:08x}): the file is corrupted")
        self.crc = None  # checked once

    def _verify_whole(self) -> None:
        """Streams the whole record once (1 MiB at a time) and checks its CRC-32."""
        crc, left = 0, self.nbytes
        with open(self.path, "rb") as f:
            f.seek(self.start)
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise CheckpointFormatError(f"{self.path}: file ended early (truncated?) in record {self.member}")
                crc, left = zlib.crc32(chunk, crc), left - len(chunk)
        self._check_crc(crc)

    def read_into(self, byte_offset: int, out: memoryview) -> None:
        n = out.nbytes
        if byte_offset < 0 or byte_offset + n > self.nbytes:
            raise CheckpointFormatError(
                f"{self.path}: read of {n} bytes at {byte_offset} is outside a {self.nbytes}-byte record"
            )
        if n == 0:
            return
        whole = byte_offset == 0 and n == self.nbytes
        if self.start is not None and self.crc is not None and not whole:
            self._verify_whole()
        if self.start is not None:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self.start + byte_offset)
                got = 0
                while got < n:
                    k = f.readinto(out[got:])
                    if not k:
                        break
                    got += k
        else:  # compressed member (not what torch writes, but a re-zipped file is still valid)
            try:
                with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                    _skip(f, byte_offset)
                    got = 0
                    while got < n:
                        k = f.readinto(out[got:])
                        if not k:
                            break
                        got += k
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as e:
                raise CheckpointFormatError(f"{self.path}: cannot read record {self.member} ({e})") from None
        if got != n:
            raise CheckpointFormatError(f"{self.path}: file ended early (truncated?) while reading tensor data")
        if self.start is not None and self.crc is not None:  # a whole read: checked on the bytes just read
            self._check_crc(zlib.crc32(out))

    def memmap(self) -> np.ndarray:
        if self.start is None:
            raise CheckpointFormatError(f"{self.path}: record {self.member} is compressed; it cannot be memory-mapped")
        if self.crc is not None:
            self._verify_whole()
        if self.nbytes == 0:
            return np.empty((0,), np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.start, shape=(self.nbytes,))


def _skip(f, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError("compressed record ended early")
        n -= len(chunk)


class _Storage:
    """One storage record: element dtype (as stored, possibly big-endian), element count, bytes."""

    __slots__ = ("key", "dtype", "numel", "region")

    def __init__(self, key: str, dtype: np.dtype, numel: int, region: _Region):
        self.key, self.dtype, self.numel, self.region = key, dtype, numel, region

    def __reduce__(self):
        raise TypeError("storage records cannot be pickled")


class LazyTensor:
    """A tensor in a checkpoint file whose data has not been read yet.

    Attributes: `dtype` (numpy dtype of the materialised array, native byte order; bfloat16 is
    `ml_dtypes.bfloat16`), `shape`, `stride` and `offset` (in elements of the storage),
    `storage_key`. `numpy()` reads exactly the bytes this view needs and returns a fresh
    C-contiguous array of `shape`, honouring strides and offset (non-contiguous views).
    """

    __slots__ = ("dtype", "shape", "stride", "offset", "_storage")

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self._storage = storage
        self.dtype = storage.dtype.newbyteorder("=") if storage.dtype.byteorder == ">" else storage.dtype
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)
        self.offset = int(offset)
        if len(self.shape) != len(self.stride):
            raise CheckpointFormatError(f"tensor size {self.shape} and stride {self.stride} differ in length")
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise CheckpointFormatError(
                f"negative size/stride/offset in tensor record (size {self.shape}, stride {self.stride}, "
                f"offset {self.offset})"
            )
        if self.size and self.offset + self._span() > storage.numel:
            raise CheckpointFormatError(
                f"tensor of size {self.shape}, stride {self.stride}, offset {self.offset} reaches past the end "
                f"of storage {storage.key!r} ({storage.numel} elements)"
            )

    # numpy-like metadata -----------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def storage_key(self) -> str:
        return self._storage.key

    def _span(self) -> int:
        """Elements from the first to one past the last element this view touches."""
        return 1 + sum(st * (sz - 1) for sz, st in zip(self.shape, self.stride))

    def is_contiguous(self) -> bool:
        expected = 1
        for sz, st in zip(reversed(self.shape), reversed(self.stride)):
            if sz != 1 and st != expected:
                return False
            expected *= sz
        return True

    # materialisation ---------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A new writable C-contiguous array of `shape` and `dtype` (reads only this view's bytes)."""
        itemsize = self._storage.dtype.itemsize
        region = self._storage.region
        if self.size == 0:
            return np.empty(self.shape, self.dtype)
        if self.is_contiguous():
            out = np.empty(self.shape, self._storage.dtype)
            region.read_into(self.offset * itemsize, memoryview(out.reshape(-1).view(np.uint8)))
        else:
            span = self._span()
            buf = np.empty(span, self._storage.dtype)
            region.read_into(self.offset * itemsize, memoryview(buf.view(np.uint8)))
            view = np.lib.stride_tricks.as_strided(
                buf, shape=self.shape, strides=tuple(s * itemsize for s in self.stride), writeable=False
            )
            out = np.ascontiguousarray(view)
            del buf
        if out.dtype != self.dtype:  # big-endian file
            out = out.astype(self.dtype)
        return out

    def memmap(self) -> np.ndarray:
        """A read-only array view backed by a memory map of the file (no copy). Contiguous,
        native-byte-order, uncompressed tensors only; otherwise use `numpy()`."""
        if not self.is_contiguous() or self.dtype != self._storage.dtype:
            raise ValueError("memmap() needs a contiguous native-byte-order tensor; use numpy()")
        raw = self._storage.region.memmap()
        itemsize = self.dtype.itemsize
        start = self.offset * itemsize
        return raw[start : start + self.nbytes].view(self.dtype).reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        extra = "" if self.is_contiguous() else f", stride={self.stride}"
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype.name}{extra}, storage={self.storage_key!r})"

    def __reduce__(self):
        raise TypeError("LazyTensor cannot be pickled; call .numpy() first")

    def __setstate__(self, state):  # a malicious BUILD opcode must not be able to mutate us
        raise UnsafePickleError("BUILD on a tensor record is not allowed")


# --------------------------------------------------------------------------------------------
# The zip container
# --------------------------------------------------------------------------------------------


class _Archive:
    """Index of a torch zip checkpoint: prefix, records and the byte ranges of stored members."""

    def __init__(self, path: str, max_bytes: int | None = None):
        self.path = path
        size = os.path.getsize(path)
        max_bytes = default_max_bytes(size) if max_bytes is None else max_bytes
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] != _ZIP_MAGIC:
            if head[:1] == b"\x80" or head[:2] == b"\x1f\x8b" or _looks_like_tar(path):
                raise CheckpointFormatError(
                    f"{path} uses the legacy (pre-1.6, non-zip) torch serialization format, which this "
                    "reader does not support. Re-save it with torch>=1.6: "
                    "torch.save(torch.load(old, map_location='cpu'), new)"
                )
            raise CheckpointFormatError(f"{path} is not a torch zip checkpoint (does not start with a zip header)")
        _check_entry_count(path)
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise CheckpointFormatError(f"{path} is a corrupt or truncated zip archive ({e})") from None
        with zf:
            infos = zf.infolist()
            if not infos:
                raise CheckpointFormatError(f"{path} is an empty zip archive")
            _check_members(path, infos)
            pkl = [i.filename for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
            if len(pkl) != 1:
                raise CheckpointFormatError(
                    f"{path} is a zip archive but not a torch checkpoint: expected exactly one '<archive>/data.pkl', "
                    f"found {pkl or 'none'}"
                )
            self.prefix = pkl[0][: -len("data.pkl")]
            self.infos = {i.filename: i for i in infos}
            if self.prefix + "constants.pkl" in self.infos or any(n.startswith(self.prefix + "code/") for n in self.infos):
                raise CheckpointFormatError(
                    f"{path} is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; save the "
                    "model's state_dict() with torch.save instead"
                )
            if self.infos[pkl[0]].file_size > max_bytes:
                raise CheckpointBudgetError(
                    f"{path}: {pkl[0]} declares {self.infos[pkl[0]].file_size} bytes, more than the byte budget "
                    f"of {max_bytes} (raise it with --max-bytes / max_bytes=)")
            try:
                self.pickle_bytes = zf.read(pkl[0])
                self.byteorder = self._read_text(zf, "byteorder", "little")
                self.version = self._read_text(zf, "version", None)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as e:
                raise CheckpointFormatError(f"{path}: cannot read the pickle record ({e})") from None
        if self.byteorder not in ("little", "big"):
            raise CheckpointFormatError(f"{path}: unknown byteorder record {self.byteorder!r}")
        self.file_size = size
        self._regions: dict[str, _Region] = {}

    def _read_text(self, zf, name, default):
        full = self.prefix + name
        if full not in self.infos:
            return default
        if self.infos[full].file_size > 64:
            raise CheckpointFormatError(f"{self.path}: the {name} record is {self.infos[full].file_size} bytes long")
        return zf.read(full).decode("ascii", "replace").strip()

    def region(self, key: str) -> _Region:
        """Byte range of storage `key` (`<archive>/data/<key>`)."""
        if key in self._regions:
            return self._regions[key]
        name = f"{self.prefix}data/{key}"
        info = self.infos.get(name)
        if info is None:
            raise CheckpointFormatError(f"{self.path}: the pickle refers to storage {key!r} but {name} is missing")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(_ZIP_LOCAL_HEADER.size)
            if len(header) != _ZIP_LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
                raise CheckpointFormatError(f"{self.path}: bad local zip header for {name} (corrupt file?)")
            fields = _ZIP_LOCAL_HEADER.unpack(header)
            name_len, extra_len = fields[-2], fields[-1]
            start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len
            if start + info.file_size > self.file_size:
                raise CheckpointFormatError(f"{self.path}: record {name} extends past the end of the file (truncated?)")
            region = _Region(self.path, start, info.file_size, name, crc=info.CRC)
        else:
            region = _Region(self.path, None, info.file_size, name)
        self._regions[key] = region
        return region


def _check_entry_count(path: str) -> None:
    """Refuses a central directory with more than `MAX_ZIP_ENTRIES` records before `zipfile`
    builds one object per record."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # the end-of-central-directory record (zip64-aware)
    except (OSError, struct.error, ValueError, AttributeError):
        return  # zipfile reports unreadable archives itself
    if end and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ZIP_ENTRIES:
        raise CheckpointFormatError(
            f"{path}: the zip archive lists {end[zipfile._ECD_ENTRIES_TOTAL]} records (at most {MAX_ZIP_ENTRIES})")


def _check_members(path: str, infos) -> None:
    """Only stored or deflated records (what torch and a re-zip write) and no repeated names."""
    seen = set()
    for i in infos:
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointFormatError(
                f"{path}: record {i.filename!r:.120} is compressed with zip method {i.compress_type}; only stored "
                "and deflated records are accepted (torch refuses compressed records)")
        if i.filename in seen:
            raise CheckpointFormatError(f"{path}: the zip archive holds the record {i.filename!r:.120} twice")
        seen.add(i.filename)


def _looks_like_tar(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(257)
            return f.read(5) == b"ustar"
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


class _StorageType:
    """Inert stand-in for a `torch.XStorage` class: only carries the element dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _Namespace(dict):
    """Stand-in for `argparse.Namespace`: its attributes become dict items (then a plain dict)."""


class _Device(str):
    """Stand-in for `torch.device(...)`: the device string."""

    __slots__ = ()

    def __new__(cls, *args):
        if not 1 <= len(args) <= 2 or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in args):
            raise CheckpointFormatError("torch.device takes a device type string and an optional index")
        return str.__new__(cls, ":".join(str(a) for a in args))


def _size(*args):
    if len(args) > 1 or (args and not isinstance(args[0], (tuple, list))):
        raise CheckpointFormatError("torch.Size takes one list or tuple of ints")
    return tuple(*args) if args else ()


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # protocol-2 pickles write `bytes` objects as _codecs.encode(str, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is only allowed as (str, 'latin1'), got ({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin1")


def _ordered_dict(*args):
    if args:  # torch and pickle write OrderedDict() and fill it with SETITEMS
        raise CheckpointFormatError("collections.OrderedDict is only accepted without arguments")
    return collections.OrderedDict()


def _make_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor rebuild got {type(storage).__name__} instead of a storage record")
    for what, v in (("size", size), ("stride", stride)):
        if not isinstance(v, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise CheckpointFormatError(f"tensor rebuild got a non-integer {what} ({type(v).__name__})")
        if len(v) > 64:
            raise CheckpointFormatError(f"tensor rebuild got a {len(v)}-dimensional {what} (at most 64)")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool):
        raise CheckpointFormatError(f"tensor rebuild got a non-integer storage offset ({type(storage_offset).__name__})")
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, LazyTensor):
        raise CheckpointFormatError(f"parameter rebuild got {type(data).__name__} instead of a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return _rebuild_parameter(data)


_ALLOWED: Mapping[tuple[str, str], Any] = types.MappingProxyType({
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch", "Size"): _size,
    ("torch", "device"): _Device,
    ("argparse", "Namespace"): _Namespace,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(name, dt) for name, dt in STORAGE_DTYPES.items()},
})
# what REDUCE may call (the storage types are only persistent-id markers)
_CALLABLE = frozenset(id(v) for v in _ALLOWED.values() if not isinstance(v, _StorageType) and v is not _Namespace)

# Opcodes of a protocol-2 pickle as `torch.save` writes it (pickletools names), plus the
# protocol-3/4 opcodes that encode the same data (`torch.save(..., pickle_protocol=4)`).
# Everything else (protocol 0/1 text opcodes, INST/OBJ, EXT*, PERSID, POP/DUP, the protocol-5
# buffers, 8-byte lengths, sets, ...) is refused by name.
_OPCODES = {
    b"\x80": "PROTO", b".": "STOP", b"(": "MARK", b"c": "GLOBAL", b"R": "REDUCE", b"\x81": "NEWOBJ",
    b"b": "BUILD", b"Q": "BINPERSID", b"N": "NONE", b"\x88": "NEWTRUE", b"\x89": "NEWFALSE",
    b"K": "BININT1", b"M": "BININT2", b"J": "BININT", b"\x8a": "LONG1", b"G": "BINFLOAT",
    b"X": "BINUNICODE", b"C": "SHORT_BINBYTES", b"B": "BINBYTES", b")": "EMPTY_TUPLE",
    b"\x85": "TUPLE1", b"\x86": "TUPLE2", b"\x87": "TUPLE3", b"t": "TUPLE", b"]": "EMPTY_LIST",
    b"a": "APPEND", b"e": "APPENDS", b"}": "EMPTY_DICT", b"s": "SETITEM", b"u": "SETITEMS",
    b"q": "BINPUT", b"r": "LONG_BINPUT", b"h": "BINGET", b"j": "LONG_BINGET",
    # protocol 4 (torch.save(..., pickle_protocol=4)): the same data in other encodings
    b"\x95": "FRAME", b"\x8c": "SHORT_BINUNICODE", b"\x94": "MEMOIZE", b"\x93": "STACK_GLOBAL",
}
_OTHER_OPCODES = {bytes([op.code.encode("latin1")[0]]): op.name for op in pickletools.opcodes}

# Rough Python-object bytes charged against the budget while unpickling (on the high side).
_COST_OBJECT, _COST_REF = 96, 16
MAX_NESTING = 100  # containers inside containers; torch checkpoints nest a handful deep
MAX_ZIP_ENTRIES = 100_000


class _Mark:
    __slots__ = ()


class SafeUnpickler:
    """A pickle interpreter for `data.pkl` that knows only what `torch.save` writes.

    It executes protocol-2 opcodes itself (no `pickle.Unpickler`): globals resolve only to the
    inert stand-ins of `_ALLOWED` (any other global raises `UnsafePickleError` naming it, before
    anything could call it); REDUCE calls only those stand-ins; NEWOBJ builds only the
    `argparse.Namespace` stand-in; BUILD applies only to tensors (state ignored), OrderedDicts
    (state ignored, e.g. `_metadata`) and Namespaces (state becomes items), never to a global.
    The memo is a dict, so it holds at most one entry per PUT; every created object is charged
    against `max_bytes`. `load()` returns the object with stand-ins turned into plain values,
    shared references kept shared; cycles and nesting deeper than `MAX_NESTING` are refused.
    """

    def __init__(self, data: bytes, archive: "_Archive", max_bytes: int):
        self._data, self._pos = memoryview(data), 0
        self._archive = archive
        self._max_bytes = int(max_bytes)
        self._cost = 0
        self._storages: dict[tuple[str, np.dtype], _Storage] = {}

    # -- helpers ----------------------------------------------------------------------------
    def _fail(self, msg: str, cls=CheckpointFormatError):
        return cls(f"{self._archive.path}: {msg}")

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise self._fail("the pickle ends in the middle of an opcode (truncated data.pkl?)")
        b = self._data[self._pos : end].tobytes()
        self._pos = end
        return b

    def _line(self) -> str:
        end = bytes(self._data[self._pos : self._pos + 256]).find(b"\n")
        if end < 0:
            raise self._fail("unterminated or too long GLOBAL name in the pickle")
        s = self._take(end + 1)[:-1]
        try:
            return s.decode("ascii")
        except UnicodeDecodeError:
            raise self._fail(f"non-ASCII GLOBAL name {s[:60]!r} in the pickle") from None

    def _charge(self, n: int) -> None:
        self._cost += n
        if self._cost > self._max_bytes:
            raise self._fail(
                f"the pickle builds more than {self._max_bytes} bytes of objects (the byte budget; "
                "raise it with --max-bytes / max_bytes=)", CheckpointBudgetError)

    def find_class(self, module: str, name: str):
        target = _ALLOWED.get((module, name))
        if target is None:
            raise self._fail(
                f"refusing to load global {module + '.' + name!r:.160}: only tensor-rebuild and plain-container "
                "globals are allowed (the file may be malicious; nothing from it was executed)", UnsafePickleError)
        return target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._fail(f"unsupported persistent id ({type(pid).__name__} of length "
                             f"{len(pid) if isinstance(pid, tuple) else '-'})")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise self._fail(f"persistent id names a {type(stype).__name__}, not a storage type")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key):
            raise self._fail(f"bad storage key {key!r:.80}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise self._fail(f"bad storage size {numel!r:.80}")
        dtype = stype.dtype
        if self._archive.byteorder == "big" and dtype.itemsize > 1:
            dtype = dtype.newbyteorder(">")
        storage = self._storages.get((key, dtype))
        if storage is None:
            region = self._archive.region(key)
            if numel * dtype.itemsize > region.nbytes:
                raise self._fail(
                    f"storage {key!r} claims {numel} x {dtype.itemsize} bytes but its record holds "
                    f"{region.nbytes} bytes (truncated or corrupt)")
            storage = _Storage(key, dtype, numel, region)
            self._storages[(key, dtype)] = storage
            self._charge(_COST_OBJECT)
        return storage

    def _build(self, obj, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0] if state[1] is None or state[1] == {} else None
        if state is None:
            state = {}
        if not isinstance(state, dict):
            raise self._fail(f"BUILD with a {type(state).__name__} state", UnsafePickleError)
        if type(obj) is _Namespace:
            if not all(isinstance(k, str) for k in state):
                raise self._fail("argparse.Namespace state has non-string names")
            obj.update(state)
        elif isinstance(obj, LazyTensor) or type(obj) is collections.OrderedDict:
            pass  # tensor / state-dict attributes (e.g. `_metadata`): accepted and dropped, as data
        else:
            raise self._fail(f"refusing BUILD on a {type(obj).__name__}: only tensors, OrderedDicts and "
                             "argparse.Namespace accept state", UnsafePickleError)

    def _pop_mark(self, stack: list, marks: list) -> list:
        if not marks:
            raise self._fail("pickle opcode needs a MARK that is not there")
        k = marks.pop()
        items = stack[k + 1 :]
        del stack[k:]
        if any(type(x) is _Mark for x in items):
            raise self._fail("malformed pickle (a MARK inside a mark group)")
        return items

    # -- the interpreter --------------------------------------------------------------------
    def load(self):
        stack: list = []
        marks: list[int] = []
        memo: dict[int, Any] = {}

        def pop():
            if not stack or type(stack[-1]) is _Mark:
                raise self._fail("malformed pickle (stack underflow)")
            return stack.pop()

        def top():
            if not stack or type(stack[-1]) is _Mark:
                raise self._fail("malformed pickle (stack underflow)")
            return stack[-1]

        def push(x, cost=_COST_OBJECT):
            self._charge(cost)
            stack.append(x)

        def setitems(d, items):
            if type(d) not in (dict, collections.OrderedDict):
                raise self._fail(f"SETITEM(S) on a {type(d).__name__}", UnsafePickleError)
            if len(items) % 2:
                raise self._fail("SETITEMS with an odd number of items")
            self._charge(_COST_REF * len(items))
            for i in range(0, len(items), 2):
                k = items[i]
                if not isinstance(k, (str, int, bool, float, type(None), bytes, tuple)):
                    raise self._fail(f"a dict key of type {type(k).__name__}")
                d[k] = items[i + 1]

        def appends(lst, items):
            if type(lst) is not list:
                raise self._fail(f"APPEND(S) on a {type(lst).__name__}", UnsafePickleError)
            self._charge(_COST_REF * len(items))
            lst.extend(items)

        while True:
            op = self._take(1)
            name = _OPCODES.get(op)
            if name is None:
                what = _OTHER_OPCODES.get(op)
                raise self._fail(
                    f"refusing pickle opcode {what or op!r} at byte {self._pos - 1} of data.pkl: torch.save does not "
                    "write it (nothing from the file was executed)", UnsafePickleError)
            if name == "PROTO":
                if self._take(1)[0] not in (2, 3, 4):
                    raise self._fail("refusing pickle protocol: only protocols 2 to 4 are accepted (torch.save writes 2)",
                                     UnsafePickleError)
            elif name == "FRAME":  # a length prefix for buffered reading; the data follows as usual
                if struct.unpack("<Q", self._take(8))[0] > len(self._data) - self._pos:
                    raise self._fail("a pickle FRAME reaches past the end of data.pkl")
            elif name == "STOP":
                break
            elif name == "MARK":
                marks.append(len(stack))
                stack.append(_Mark())
                self._charge(_COST_REF)
            elif name == "GLOBAL":
                module = self._line()
                push(self.find_class(module, self._line()), _COST_REF)
            elif name == "STACK_GLOBAL":
                gname = pop()
                module = pop()
                if not (isinstance(module, str) and isinstance(gname, str)):
                    raise self._fail("STACK_GLOBAL needs two strings")
                push(self.find_class(module, gname), _COST_REF)
            elif name == "REDUCE":
                args = pop()
                fn = pop()
                if id(fn) not in _CALLABLE or not isinstance(args, tuple):
                    raise self._fail(f"refusing REDUCE of a {type(fn).__name__} (only the allow-listed globals "
                                     "may be called)", UnsafePickleError)
                push(fn(*args))
            elif name == "NEWOBJ":
                args = pop()
                cls = pop()
                if cls is not _Namespace or args != ():
                    raise self._fail(f"refusing NEWOBJ of a {type(cls).__name__} (only argparse.Namespace)",
                                     UnsafePickleError)
                push(_Namespace())
            elif name == "BUILD":
                state = pop()
                self._build(top(), state)
            elif name == "BINPERSID":
                push(self.persistent_load(pop()))
            elif name == "NONE":
                push(None, _COST_REF)
            elif name in ("NEWTRUE", "NEWFALSE"):
                push(name == "NEWTRUE", _COST_REF)
            elif name == "BININT1":
                push(self._take(1)[0], _COST_REF)
            elif name == "BININT2":
                push(struct.unpack("<H", self._take(2))[0], _COST_REF)
            elif name == "BININT":
                push(struct.unpack("<i", self._take(4))[0])
            elif name == "LONG1":
                n = self._take(1)[0]
                push(int.from_bytes(self._take(n), "little", signed=True), _COST_OBJECT + n)
            elif name == "BINFLOAT":
                push(struct.unpack(">d", self._take(8))[0])
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"):
                short = name.startswith("SHORT")
                n = self._take(1)[0] if short else struct.unpack("<I", self._take(4))[0]
                raw = self._take(n)
                if name.endswith("UNICODE"):
                    try:
                        raw = raw.decode("utf-8", "surrogatepass")
                    except UnicodeDecodeError:
                        raise self._fail("a string in the pickle is not UTF-8") from None
                push(raw, _COST_OBJECT + 4 * n)
            elif name == "EMPTY_TUPLE":
                push((), _COST_REF)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)][::-1]
                push(tuple(items), _COST_OBJECT + _COST_REF * n)
            elif name == "TUPLE":
                items = self._pop_mark(stack, marks)
                push(tuple(items), _COST_OBJECT + _COST_REF * len(items))
            elif name == "EMPTY_LIST":
                push([])
            elif name == "EMPTY_DICT":
                push({})
            elif name == "APPEND":
                v = pop()
                appends(top(), [v])
            elif name == "APPENDS":
                items = self._pop_mark(stack, marks)
                appends(top(), items)
            elif name == "SETITEM":
                v = pop()
                k = pop()
                setitems(top(), [k, v])
            elif name == "SETITEMS":
                items = self._pop_mark(stack, marks)
                setitems(top(), items)
            elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if name == "MEMOIZE":
                    idx = len(memo)
                else:
                    idx = self._take(1)[0] if name == "BINPUT" else struct.unpack("<I", self._take(4))[0]
                if idx not in memo:
                    self._charge(_COST_OBJECT)
                memo[idx] = top()
            elif name in ("BINGET", "LONG_BINGET"):
                idx = self._take(1)[0] if name == "BINGET" else struct.unpack("<I", self._take(4))[0]
                if idx not in memo:
                    raise self._fail(f"pickle memo index {idx} was never stored (corrupt data.pkl)")
                push(memo[idx], _COST_REF)
        if len(stack) != 1 or marks:
            raise self._fail("malformed pickle (STOP with an unbalanced stack)")
        if self._pos != len(self._data):
            raise self._fail(f"{len(self._data) - self._pos} bytes after the pickle's STOP opcode")
        return _finish(stack[0], self._archive.path)


def _leaf(x):
    if isinstance(x, _Device):
        return str(x)
    if isinstance(x, (_StorageType, _Storage, _Mark)) or callable(x):
        raise CheckpointFormatError(f"a {type(x).__name__} stand-in is left over in the unpickled object")
    return x


def _children(obj) -> Iterable:
    if isinstance(obj, dict):
        return itertools.chain.from_iterable(obj.items())
    return obj


def _finish(root, path: str):
    """Turns stand-ins into plain values (Namespace -> dict, device -> str) without recursion:
    an object reached twice is converted once and stays shared; a cycle or nesting deeper than
    `MAX_NESTING` is an error."""
    containers = (dict, list, tuple)
    done: dict[int, Any] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    if not isinstance(root, containers):
        return _leaf(root)
    work = [(root, False)]
    while work:
        obj, expanded = work.pop()
        oid = id(obj)
        if expanded:
            on_path.discard(oid)
            kids = [height.get(id(c), 0) for c in _children(obj) if isinstance(c, containers)]
            height[oid] = 1 + max(kids, default=0)
            if height[oid] > MAX_NESTING:
                raise CheckpointFormatError(f"{path}: containers nest more than {MAX_NESTING} deep")
            conv = lambda c: done[id(c)] if isinstance(c, containers) else _leaf(c)  # noqa: E731
            if isinstance(obj, dict):
                cls = dict if type(obj) is _Namespace else type(obj)
                done[oid] = cls((conv(k), conv(v)) for k, v in obj.items())
            else:
                done[oid] = type(obj)(conv(c) for c in obj)
            continue
        if oid in done:
            continue
        on_path.add(oid)
        work.append((obj, True))
        for c in _children(obj):
            if isinstance(c, containers):
                if id(c) in on_path:
                    raise CheckpointFormatError(f"{path}: the pickle holds a reference cycle (a container inside "
                                                "itself); torch state dicts have none")
                if id(c) not in done:
                    work.append((c, False))
    return done[id(root)]


def default_max_bytes(file_size: int) -> int:
    """The default byte budget of a checkpoint of `file_size` bytes: `BUDGET_FACTOR` times the
    file size, at least `BUDGET_FLOOR`."""
    return max(BUDGET_FACTOR * int(file_size), BUDGET_FLOOR)


def _load(path, max_bytes: int | None = None) -> tuple[Any, _Archive]:
    path = os.fspath(path)
    from scalingar_jax.inputs import check_regular

    check_regular(path, f"checkpoint file {path!r}")
    if max_bytes is None:
        max_bytes = default_max_bytes(os.path.getsize(path))
    archive = _Archive(path, max_bytes)
    try:
        obj = SafeUnpickler(archive.pickle_bytes, archive, max_bytes).load()
    except CheckpointFormatError:
        raise
    except RecursionError:
        raise CheckpointFormatError(f"{path}: pickle nests too deeply") from None
    except MemoryError:
        raise CheckpointBudgetError(f"{path}: out of memory while unpickling data.pkl") from None
    except Exception as e:  # bad arguments to a stand-in, unhashable keys, ...
        raise CheckpointFormatError(
            f"{path}: malformed pickle in {archive.prefix}data.pkl ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return obj, archive


def load(path, *, max_bytes: int | None = None) -> Any:
    """Safely unpickles a `torch.save` zip file. Tensors become `LazyTensor`s (no data read),
    `argparse.Namespace` becomes a dict, `torch.device` a string, `torch.Size` a tuple.

    max_bytes: byte budget for the pickle's objects and the records read (default
    `default_max_bytes(file size)`). Raises `UnsafePickleError` for any global or opcode outside
    the allow-list, `CheckpointBudgetError` past the budget, `CheckpointFormatError` for
    corrupt/truncated/legacy files, `FileNotFoundError` if `path` does not exist.
    """
    return _load(path, max_bytes)[0]


def check_budget(tensors: Mapping[str, LazyTensor], max_bytes: int, path: str = "<checkpoint>") -> int:
    """Checks, before anything is read, that materialising every tensor of `tensors` (each as
    `LazyTensor.numpy()` does: `size * itemsize` bytes, so stride-0 and shared-storage views count
    in full) and the distinct storages they view fit in `max_bytes`. Returns the materialised
    byte count; raises `CheckpointBudgetError` naming the totals otherwise."""
    total = sum(t.nbytes for t in tensors.values())
    storages = {id(t._storage): t._storage for t in tensors.values()}
    distinct = sum(s.numel * s.dtype.itemsize for s in storages.values())
    if total > max_bytes or distinct > max_bytes:
        views = sum(1 for t in tensors.values() if t.nbytes > t._storage.numel * t._storage.dtype.itemsize
                    or any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride)))
        raise CheckpointBudgetError(
            f"{path}: the tensors would take {total} bytes in memory ({distinct} bytes of distinct storage; "
            f"{views} of {len(tensors)} tensors are expanded or repeated views), more than the byte budget of "
            f"{max_bytes} (by default {BUDGET_FACTOR}x the file size, at least {BUDGET_FLOOR >> 20} MiB; raise it "
            "with --max-bytes / max_bytes=)")
    return total


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------

WRAPPER_KEYS = ("model", "module", "state_dict")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, LazyTensor) for k, v in obj.items()
    )


def _describe(v) -> str:
    if isinstance(v, LazyTensor):
        return f"tensor{v.shape}"
    if isinstance(v, dict):
        return f"dict({len(v)} entries)"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__}({len(v)} items)"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def unwrap_state_dict(obj, *, key: str | None = None, path: str = "<checkpoint>") -> tuple[dict, dict]:
    """Finds the weights in a loaded checkpoint object. See `load_state_dict`."""
    meta: dict[str, Any] = {"wrapper": None, "other_keys": {}, "args": None, "steps": None, "stripped_prefix": "",
                            "scalingar_config": None}
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            have = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise KeyError(f"{path}: no top-level key {key!r} (top-level keys: {have})")
        sd, meta["wrapper"] = obj[key], key
    elif _is_state_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        found = [k for k in WRAPPER_KEYS if k in obj]
        if not found:
            raise CheckpointFormatError(
                f"{path}: cannot find the weights: no 'model', 'module' or 'state_dict' key and the top level "
                f"is not a state dict (top-level keys: {sorted(map(str, obj))[:20]})"
            )
        meta["wrapper"] = found[0]
        sd = obj[found[0]]
    else:
        raise CheckpointFormatError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    if meta["wrapper"] is not None:
        for k, v in obj.items():
            if k != meta["wrapper"]:
                meta["other_keys"][str(k)] = _describe(v)
        meta["args"] = obj.get("args") if isinstance(obj.get("args"), dict) else None
        meta["steps"] = obj.get("steps") if isinstance(obj.get("steps"), int) else None
        # written by `scalingar convert --export`: the config fields the weights do not hold
        hint = obj.get("scalingar_config")
        meta["scalingar_config"] = hint if isinstance(hint, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointFormatError(f"{path}: {meta['wrapper']!r} holds a {type(sd).__name__}, not a state dict")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, LazyTensor)]
    if bad:
        raise CheckpointFormatError(
            f"{path}: the state dict has non-tensor entries: {', '.join(f'{k!r}: {_describe(sd[k])}' for k in bad[:10])}"
        )
    sd = dict(sd)
    for prefix in _STRIP_PREFIXES:  # DDP / torch.compile wrappers saved as whole-module dicts
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            meta["stripped_prefix"] += prefix
    return sd, meta


def load_state_dict(path, *, key: str | None = None, max_bytes: int | None = None
                    ) -> tuple[dict[str, LazyTensor], dict]:
    """Loads the weights of a `torch.save` checkpoint as lazy tensors.

    The weights are taken from `key` if given, else from the first of "model" (DDP), "module"
    (DeepSpeed), "state_dict" present at the top level, else the top level itself if it is a
    state dict. A common "module." / "_orig_mod." prefix on every key is stripped.

    Returns (state_dict, meta): state_dict maps PyTorch names to `LazyTensor`s; meta has
    "path", "format" ("torch-zip"), "byteorder", "version", "wrapper" (the key used or None),
    "other_keys" ({name: short description} of the other top-level entries, e.g. optimizer,
    steps, args, ema), "args" (the argparse.Namespace as a dict, or None), "steps" (int or
    None), "stripped_prefix" and "scalingar_config" (the dict a `scalingar convert --export`
    stores beside the weights, or None).

    max_bytes: byte budget (default `default_max_bytes(file size)`) for the pickle's objects and
    for materialising the state dict (`check_budget`), checked before any tensor is read.
    """
    path = os.fspath(path)
    if max_bytes is None and os.path.isfile(path):
        max_bytes = default_max_bytes(os.path.getsize(path))
    obj, archive = _load(path, max_bytes)
    sd, meta = unwrap_state_dict(obj, key=key, path=archive.path)
    check_budget(sd, max_bytes, archive.path)
    info = {"path": archive.path, "format": "torch-zip", "byteorder": archive.byteorder, "version": archive.version}
    return sd, {**info, **meta}


# --------------------------------------------------------------------------------------------
# Writer: a torch-compatible zip + protocol-2 pickle, without torch
# --------------------------------------------------------------------------------------------

_ALIGN = 64


class _PickleWriter:
    """Emits a protocol-2 pickle of str/int/float/bool/None/tuple/list/dict/OrderedDict and
    tensor records, using only the opcodes torch itself emits for state dicts."""

    def __init__(self):
        self.out = io.BytesIO()
        self.out.write(b"\x80\x02")

    def _w(self, b: bytes):
        self.out.write(b)

    def glob(self, module: str, name: str):
        self._w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def value(self, v):
        if v is None:
            self._w(b"N")
        elif v is True:
            self._w(b"\x88")
        elif v is False:
            self._w(b"\x89")
        elif isinstance(v, int):
            if 0 <= v < 256:
                self._w(b"K" + struct.pack("<B", v))
            elif 0 <= v < 65536:
                self._w(b"M" + struct.pack("<H", v))
            elif -(2**31) <= v < 2**31:
                self._w(b"J" + struct.pack("<i", v))
            else:
                n = (v.bit_length() + 8) // 8
                self._w(b"\x8a" + struct.pack("<B", n) + v.to_bytes(n, "little", signed=True))
        elif isinstance(v, float):
            self._w(b"G" + struct.pack(">d", v))
        elif isinstance(v, str):
            data = v.encode("utf-8", "surrogatepass")
            self._w(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(v, tuple):
            if len(v) == 0:
                self._w(b")")
            elif len(v) <= 3:
                for x in v:
                    self.value(x)
                self._w({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(v)])
            else:
                self._w(b"(")
                for x in v:
                    self.value(x)
                self._w(b"t")
        elif isinstance(v, list):
            self._w(b"]")
            if v:
                self._w(b"(")
                for x in v:
                    self.value(x)
                self._w(b"e")
        elif isinstance(v, dict):
            if isinstance(v, collections.OrderedDict):
                self.glob("collections", "OrderedDict")
                self._w(b")R")
            else:
                self._w(b"}")
            if v:
                self._w(b"(")
                for k, x in v.items():
                    self.value(k)
                    self.value(x)
                self._w(b"u")
        elif isinstance(v, _TensorRecord):
            self.tensor(v)
        else:
            raise TypeError(f"cannot write a {type(v).__name__} into a torch checkpoint pickle")

    def tensor(self, t: "_TensorRecord"):
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self._w(b"(")  # args tuple
        self._w(b"(")  # persistent id tuple
        self.value("storage")
        self.glob("torch", t.storage_type)
        self.value(t.key)
        self.value("cpu")
        self.value(t.numel)
        self._w(b"tQ")
        self.value(0)
        self.value(t.shape)
        self.value(t.stride)
        self.value(False)
        self.glob("collections", "OrderedDict")
        self._w(b")R")
        self._w(b"tR")

    def getvalue(self) -> bytes:
        return self.out.getvalue() + b"."


class _TensorRecord:
    __slots__ = ("key", "storage_type", "shape", "stride", "numel")

    def __init__(self, key, storage_type, shape):
        self.key, self.storage_type, self.shape = key, storage_type, tuple(int(s) for s in shape)
        self.numel = math.prod(self.shape)
        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.append(acc)
            acc *= s
        self.stride = tuple(reversed(stride))


def _write_member(zf: zipfile.ZipFile, name: str, data, *, align: bool) -> None:
    """Writes an uncompressed member; storage members are aligned to 64 bytes like torch's."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 0
    if isinstance(data, np.ndarray):
        data = data.reshape(-1).view(np.uint8)  # also works for bfloat16, which has no buffer format
    mv = memoryview(data).cast("B")
    info.file_size = mv.nbytes
    if align:
        header_offset = zf.fp.tell()
        base = header_offset + _ZIP_LOCAL_HEADER.size + len(name.encode()) + 4
        pad = (-base) % _ALIGN
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB' padding field, as torch does
    with zf.open(info, mode="w", force_zip64=mv.nbytes >= zipfile.ZIP64_LIMIT) as dest:
        step = 1 << 26
        for i in range(0, mv.nbytes, step):
            dest.write(mv[i : i + step])


def _as_array(v) -> np.ndarray:
    if isinstance(v, LazyTensor):
        v = v.numpy()
    arr = np.asarray(v)
    if arr.dtype not in _DTYPE_TO_STORAGE:
        raise TypeError(f"cannot store dtype {arr.dtype} in a torch checkpoint; supported: "
                        f"{sorted(str(d) for d in _DTYPE_TO_STORAGE)}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.require(arr, requirements="C")  # np.ascontiguousarray would make a 0-d array 1-d


def save_torch_state_dict(
    path,
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    wrapper: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a torch>=1.6-compatible `.pt` file (zip + protocol-2 pickle) without torch.

    tensors: name -> array (np.ndarray of float32/float64/float16/bfloat16/int*/uint8/bool, or
      a LazyTensor), or an iterable of (name, array) pairs, consumed one at a time so a caller
      can stream a large checkpoint holding one tensor in memory. Arrays are stored C-contiguous,
      little-endian; each gets its own storage.
    wrapper: if given (e.g. "model"), the state dict is stored as `{wrapper: state_dict, **extra}`.
    extra: further plain top-level entries (int/float/str/bool/None/lists/tuples/dicts).

    The state dict is an OrderedDict, as `nn.Module.state_dict()` returns. The file is written
    to a temporary sibling and renamed into place. Loadable with `torch.load(weights_only=True)`
    and with `load_state_dict`. Returns the path.
    """
    path = Path(path)
    if extra and wrapper is None:
        raise ValueError("extra top-level entries need a wrapper key (e.g. wrapper='model')")
    items: Iterator = iter(tensors.items()) if isinstance(tensors, Mapping) else iter(tensors)
    archive = "archive"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        sd: collections.OrderedDict = collections.OrderedDict()
        # Storages first (one tensor in memory at a time), the pickle last: torch takes the
        # archive name from the directory of the records, not from their order.
        _write_member(zf, f"{archive}/byteorder", b"little", align=False)
        for i, (name, value) in enumerate(items):
            if not isinstance(name, str):
                raise TypeError(f"state dict keys must be str, got {type(name).__name__}")
            if name in sd:
                raise ValueError(f"duplicate tensor name {name!r}")
            arr = _as_array(value)
            sd[name] = _TensorRecord(str(i), _DTYPE_TO_STORAGE[np.dtype(arr.dtype.newbyteorder("="))], arr.shape)
            _write_member(zf, f"{archive}/data/{i}", arr, align=True)
            del arr, value
        top: Any = sd
        if wrapper is not None:
            top = {wrapper: sd, **(dict(extra) if extra else {})}
        pw = _PickleWriter()
        pw.value(top)
        _write_member(zf, f"{archive}/data.pkl", pw.getvalue(), align=False)
        _write_member(zf, f"{archive}/version", b"3\n", align=False)
    return path
