"""Atomic file and folder writes: a reader sees the old content or the new, never half of it.

  * `atomic_file(path, mode)`: a context manager yielding a file object on a temp file in
    the same folder; on a clean exit the temp file replaces `path` (`os.replace`), on an
    exception it is removed and `path` is untouched.
  * `atomic_write_bytes(path, data)` / `atomic_write_text(path, text)`: one-shot versions.
  * `atomic_dir(path, overwrite)`: a context manager yielding a temp folder next to `path`;
    on a clean exit it replaces `path` (the old folder, if any, is moved aside and deleted),
    on an exception it is deleted.

The folder holding `path` must exist for the file helpers (a clear error says which folder
is missing or not writable); `atomic_dir` creates missing parents.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import IO, Iterator

__all__ = ["atomic_file", "atomic_write_bytes", "atomic_write_text", "atomic_dir"]


def _check_target(path) -> tuple[str, str]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not path:
        raise ValueError("path must not be empty")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path!r}: folder {folder!r} does not exist")
    return path, folder


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yields a file opened with `mode` ("wb" or "w") on a temp file next to `path`.

    Raises TypeError for a non-path, FileNotFoundError if the folder does not exist,
    IsADirectoryError if `path` is a folder, PermissionError if the folder is not writable.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path, folder = _check_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except PermissionError as e:
        raise PermissionError(f"cannot write {path!r}: folder {folder!r} is not writable") from e
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> str:
    """Writes `data` to `path` atomically; returns `str(path)`. Errors as in `atomic_file`."""
    with atomic_file(path, "wb") as f:
        f.write(data)
    return os.fsdecode(os.fspath(path))


def atomic_write_text(path, text: str) -> str:
    """Writes UTF-8 `text` to `path` atomically; returns `str(path)`. Errors as in `atomic_file`."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)
    return os.fsdecode(os.fspath(path))


@contextlib.contextmanager
def atomic_dir(path, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a temp folder (str) next to `path`; fill it, and on a clean exit it becomes `path`.

    Raises FileExistsError if `path` exists and not `overwrite`, PermissionError if the
    parent folder is not writable. On an exception the temp folder is deleted and `path`
    is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {parent}")
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
