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

Safety: unpickling runs whatever callables the pickle names. `SafeUnpickler.find_class` maps
the few globals a checkpoint legitimately needs to inert local stand-ins (the real torch
functions are never touched) and refuses every other global with `UnsafePickleError` before
it can be called. Tensors come back as `LazyTensor` records; their bytes are read from the file
only when `LazyTensor.numpy()` is called, one tensor at a time.

Legacy (pre-1.6, non-zip) files are refused with a message explaining how to re-save them.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import struct
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
    "LazyTensor",
    "load",
    "load_state_dict",
    "save_torch_state_dict",
    "STORAGE_DTYPES",
]


class CheckpointFormatError(ValueError):
    """The file is not a readable checkpoint (corrupt, truncated, legacy or unsupported format)."""


class UnsafePickleError(CheckpointFormatError):
    """The pickle references a global outside the allow-list; nothing from it was executed."""


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
    at a byte offset, or a compressed member read through `zipfile`."""

    __slots__ = ("path", "start", "nbytes", "member")

    def __init__(self, path: str, start: int | None, nbytes: int, member: str | None = None):
        self.path, self.start, self.nbytes, self.member = path, start, nbytes, member

    def read_into(self, byte_offset: int, out: memoryview) -> None:
        n = out.nbytes
        if byte_offset < 0 or byte_offset + n > self.nbytes:
            raise CheckpointFormatError(
                f"{self.path}: read of {n} bytes at {byte_offset} is outside a {self.nbytes}-byte record"
            )
        if n == 0:
            return
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

    def memmap(self) -> np.ndarray:
        if self.start is None:
            raise CheckpointFormatError(f"{self.path}: record {self.member} is compressed; it cannot be memory-mapped")
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

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
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
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise CheckpointFormatError(f"{path} is a corrupt or truncated zip archive ({e})") from None
        with zf:
            infos = zf.infolist()
            if not infos:
                raise CheckpointFormatError(f"{path} is an empty zip archive")
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
            region = _Region(self.path, start, info.file_size, name)
        else:
            region = _Region(self.path, None, info.file_size, name)
        self._regions[key] = region
        return region


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

    def __setstate__(self, state):
        raise UnsafePickleError("BUILD on a storage type is not allowed")


class _Namespace(dict):
    """Stand-in for `argparse.Namespace`: its attributes become dict items (then a plain dict)."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0] or {}
        if not isinstance(state, dict):
            raise CheckpointFormatError("argparse.Namespace state is not a dict")
        self.update(state)


class _Device(str):
    """Stand-in for `torch.device(...)`: the device string."""

    def __new__(cls, *args):
        return str.__new__(cls, ":".join(str(a) for a in args))


def _size(*args):
    return tuple(*args) if args else ()


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # protocol-2 pickles write `bytes` objects as _codecs.encode(str, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is only allowed as (str, 'latin1'), got ({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin1")


def _make_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor rebuild got {type(storage).__name__} instead of a storage record")
    for what, v in (("size", size), ("stride", stride)):
        if not isinstance(v, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise CheckpointFormatError(f"tensor rebuild got a non-integer {what} {v!r}")
    if not isinstance(storage_offset, int):
        raise CheckpointFormatError(f"tensor rebuild got a non-integer storage offset {storage_offset!r}")
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


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): _size,
    ("torch", "device"): _Device,
    ("argparse", "Namespace"): _Namespace,
    ("_codecs", "encode"): _codecs_encode,
}
_ALLOWED.update({("torch", name): _StorageType(name, dt) for name, dt in STORAGE_DTYPES.items()})


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for `data.pkl` that resolves only allow-listed globals, to inert stand-ins.

    Any other global (os.system, builtins.exec, ...) raises `UnsafePickleError` naming it at the
    moment the pickle names it, i.e. before anything could call it.
    """

    def __init__(self, file, archive: _Archive):
        super().__init__(file, encoding="utf-8")  # as torch.load, for Python-2-era string opcodes
        self._archive = archive
        self._storages: dict[tuple[str, np.dtype], _Storage] = {}

    def find_class(self, module: str, name: str):
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self._archive.path}: refusing to load global '{module}.{name}': only tensor-rebuild and "
                "plain-container globals are allowed (the file may be malicious; nothing from it was executed)"
            )
        return target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{self._archive.path}: unsupported persistent id {pid!r:.200}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointFormatError(f"{self._archive.path}: persistent id names {stype!r:.100}, not a storage type")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise CheckpointFormatError(f"{self._archive.path}: bad storage key {key!r:.100}")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"{self._archive.path}: bad storage size {numel!r:.100}")
        dtype = stype.dtype
        if self._archive.byteorder == "big" and dtype.itemsize > 1:
            dtype = dtype.newbyteorder(">")
        storage = self._storages.get((key, dtype))
        if storage is None:
            region = self._archive.region(key)
            if numel * dtype.itemsize > region.nbytes:
                raise CheckpointFormatError(
                    f"{self._archive.path}: storage {key!r} claims {numel} x {dtype.itemsize} bytes but its record "
                    f"holds {region.nbytes} bytes (truncated or corrupt)"
                )
            storage = _Storage(key, dtype, numel, region)
            self._storages[(key, dtype)] = storage
        return storage


def _plain(obj):
    """Namespace stand-ins -> dicts, device stand-ins -> str (recursively through containers)."""
    if isinstance(obj, _Namespace):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, _Device):
        return str(obj)
    if isinstance(obj, collections.OrderedDict):
        out = collections.OrderedDict((k, _plain(v)) for k, v in obj.items())
        return out
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def _load(path) -> tuple[Any, _Archive]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    archive = _Archive(path)
    unpickler = SafeUnpickler(io.BytesIO(archive.pickle_bytes), archive)
    try:
        obj = unpickler.load()
    except CheckpointFormatError:
        raise
    except RecursionError:
        raise CheckpointFormatError(f"{path}: pickle nests too deeply") from None
    except Exception as e:  # malformed pickle stream, bad arguments to a stand-in, ...
        raise CheckpointFormatError(
            f"{path}: malformed pickle in {archive.prefix}data.pkl ({type(e).__name__}: {e})"
        ) from None
    return _plain(obj), archive


def load(path) -> Any:
    """Safely unpickles a `torch.save` zip file. Tensors become `LazyTensor`s (no data read),
    `argparse.Namespace` becomes a dict, `torch.device` a string, `torch.Size` a tuple.

    Raises `UnsafePickleError` for any global outside the allow-list, `CheckpointFormatError`
    for corrupt/truncated/legacy files, `FileNotFoundError` if `path` does not exist.
    """
    return _load(path)[0]


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


def load_state_dict(path, *, key: str | None = None) -> tuple[dict[str, LazyTensor], dict]:
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
    """
    obj, archive = _load(path)
    sd, meta = unwrap_state_dict(obj, key=key, path=archive.path)
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
    return np.ascontiguousarray(arr)


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
