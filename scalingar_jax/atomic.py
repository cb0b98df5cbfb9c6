"""Atomic file and folder writes: a reader sees the old content or the new, never half of it.

  * `atomic_file(path, mode)`: a context manager yielding a file object on a temp file in
    the same folder; on a clean exit the temp file replaces `path` (`os.replace`), on an
    exception it is removed and `path` is untouched.
  * `atomic_write_bytes(path, data)` / `atomic_write_text(path, text)`: one-shot versions.
  * `atomic_dir(path, overwrite)`: a context manager yielding a temp folder next to `path`;
    on a clean exit it replaces `path` (swapped in one `renameat2(RENAME_EXCHANGE)` where the
    kernel has it, else the old folder is renamed aside first), on an exception it is deleted.
  * `recover(path)`: what every write above runs first: removes the temp files and folders a
    killed run left next to `path` (their names carry the writer's pid; only dead writers'
    leftovers go) and, if a killed overwrite left `path` missing with the old version aside,
    renames that version back.

The folder holding `path` must exist for the file helpers (a clear error says which folder
is missing or not writable); `atomic_dir` creates missing parents.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
import time
from typing import IO, Iterator

__all__ = ["atomic_file", "atomic_write_bytes", "atomic_write_text", "atomic_dir", "recover"]

LEGACY_STALE_SECONDS = 3600  # leftovers without a pid in their name count as stale after this long


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _leftovers(folder: str, name: str) -> Iterator[tuple[str, str]]:
    """(kind, path) of the temp entries writes of `name` leave in `folder`: "tmp" (a file or folder
    being written) or "old" (the previous version, moved aside), of writers no longer alive."""
    # tempfile's names: 8 characters of [a-z0-9_] after our prefix
    pat = re.compile(r"\." + re.escape(name) + r"\.(?:(tmp|old)-)?(?:(\d+)-)?[a-z0-9_]{8}(?:\.tmp)?\Z")
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    now = time.time()
    for entry in entries:
        m = pat.match(entry)
        if not m or (m.group(1) is None and not entry.endswith(".tmp")):
            continue
        full = os.path.join(folder, entry)
        if m.group(2) is not None:
            if _pid_alive(int(m.group(2))):
                continue
        else:
            try:
                if now - os.lstat(full).st_mtime < LEGACY_STALE_SECONDS:
                    continue
            except OSError:
                continue
        yield m.group(1) or "tmp", full


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def recover(path) -> None:
    """Cleans up after killed writes of `path`: a moved-aside old version comes back if `path`
    is missing, other leftovers (temp files/folders, aside copies) of dead writers are deleted."""
    path = os.path.abspath(os.fsdecode(os.fspath(path)))
    folder, name = os.path.split(path)
    for kind, full in sorted(_leftovers(folder, name)):
        if kind == "old" and not os.path.lexists(path) and os.path.lexists(os.path.join(full, "x")):
            with contextlib.suppress(OSError):
                os.replace(os.path.join(full, "x"), path)
        _remove(full)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps the entries `a` and `b` (Linux renameat2); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


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
    recover(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}-", suffix=".tmp")
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
    parent folder is not writable. On an exception the temp folder is deleted, `path` is left
    as it was, and the missing parent folders this call created are removed again (if empty).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    parent, name = os.path.split(path)
    created = []  # the missing parents, deepest first
    folder = parent
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    try:
        yield from _fill_dir(path, parent, name, overwrite)
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):  # not empty (someone else wrote there): kept
                os.rmdir(folder)
        raise


def _fill_dir(path: str, parent: str, name: str, overwrite: bool) -> Iterator[str]:
    """`atomic_dir`'s body once the parent exists: yields the temp folder, then swaps it in."""
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {parent}")
    recover(path)
    if os.path.exists(path) and not overwrite:  # an interrupted overwrite was just rolled back
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.isdir(path) and not os.path.islink(path) and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old version
        elif os.path.lexists(path):
            # no atomic swap: the old version goes aside first; `recover` brings it back if the
            # process dies before the second rename
            old = tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
