"""Files a user hands over, read as data within bounds: the checks every reader of one needs.

  * `check_regular(path, what)`: refuses anything but a regular file, reading nothing.
  * `open_regular(path, what)`: opens a regular file only. A FIFO, a device (`/dev/zero`), a
    socket or a folder is refused before a byte is read (the file is opened non-blocking and
    checked with fstat, so a FIFO without a writer cannot hang the reader).
  * `read_bounded(path, max_bytes, what)` / `read_json_object(...)`: the whole file, refused
    past `max_bytes` before it is read.
  * `read_lines(path, what, max_line=..., max_bytes=...)`: (line number, text) one line at a
    time: a line longer than `max_line` bytes is refused before it is decoded or parsed, text
    must be UTF-8 (a UTF-16 file is named as such).
  * `check_links(root, top, what)`: every symbolic link under `top` must stay inside `root`,
    and every entry must be a folder or a regular file.
  * `shown(value)`: a value for an error message, cut before it is escaped.

Every refusal is an OSError (FileNotFoundError, IsADirectoryError) or ValueError whose
message names the file (`what`: e.g. "--prompts p.jsonl"; default the path).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Iterator

__all__ = ["check_regular", "open_regular", "read_bounded", "read_json_object", "read_lines", "check_links", "shown",
           "MAX_LINK_WALK"]

MAX_LINK_WALK = 100_000  # entries `check_links` looks at before it refuses the folder as too large

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def shown(value, limit: int = 80) -> str:
    """`repr` of `value` (a str is cut to `limit` characters first, so a huge value costs nothing)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _name(path, what: str | None) -> str:
    return what if what is not None else repr(os.fspath(path))


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


def check_regular(path, what: str | None = None) -> None:
    """Raises FileNotFoundError (no such file), IsADirectoryError (a folder) or ValueError (a
    FIFO, device or socket) unless `path` is a regular file (after symlinks); reads nothing."""
    name = _name(path, what)
    try:
        mode = os.stat(os.fspath(path)).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except OSError as e:
        raise OSError(e.errno, f"{name}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{name}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{name}: is {_not_regular(mode)}, not a regular file")


def open_regular(path, what: str | None = None) -> IO[bytes]:
    """`path` opened for binary reading if it is a regular file (symlinks to one are followed).

    Raises FileNotFoundError (no such file), IsADirectoryError (a folder) or ValueError (a
    FIFO, device or socket), naming `what` (default: the path)."""
    name = _name(path, what)
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{name}: is a folder, not a file") from None
    except OSError as e:
        raise OSError(e.errno, f"{name}: cannot open ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{name}: is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise ValueError(f"{name}: is {_not_regular(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path, max_bytes: int, what: str | None = None) -> bytes:
    """The bytes of the regular file `path`; ValueError if it holds more than `max_bytes`
    (checked before reading, and again while reading a file that grows)."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise ValueError(f"{_name(path, what)}: {max(size, len(data))} bytes, more than the {max_bytes}-byte limit")
    return data


def read_json_object(path, max_bytes: int, what: str | None = None) -> dict:
    """The JSON object in the regular UTF-8 file `path` of at most `max_bytes`; ValueError naming
    the file otherwise (not UTF-8, not JSON, nested too deeply, not an object)."""
    data = read_bounded(path, max_bytes, what)
    name = _name(path, what)
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not UTF-8 text" + _utf16_hint(data)) from None
    except RecursionError:
        raise ValueError(f"{name}: the JSON nests too deeply") from None
    except ValueError as e:
        raise ValueError(f"{name}: not valid JSON ({str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: holds a JSON {type(obj).__name__}, expected an object")
    return obj


def _utf16_hint(head: bytes) -> str:
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return " (it is UTF-16: save it as UTF-8)"
    return ""


def read_lines(path, what: str | None = None, *, max_line: int, max_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without its line ending) of the regular file `path`, one line at
    a time. ValueError naming the file (and line) for a file over `max_bytes`, a line over
    `max_line` bytes (before it is decoded), or text that is not UTF-8 (a UTF-8 byte-order mark
    is skipped; a UTF-16 one is named)."""
    name = _name(path, what)
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"{name}: {size} bytes, more than the {max_bytes}-byte limit")
        read = 0
        lineno = 0
        while True:
            raw = f.readline(max_line + 2)  # the longest accepted line plus "\r\n"
            if not raw:
                return
            lineno += 1
            read += len(raw)
            if read > max_bytes:
                raise ValueError(f"{name}: more than the {max_bytes}-byte limit (the file grows while read)")
            body = raw.rstrip(b"\r\n")
            if len(body) > max_line:
                raise ValueError(f"{name}:{lineno}: a line longer than {max_line} bytes")
            if lineno == 1:
                hint = _utf16_hint(body)
                if hint:
                    raise ValueError(f"{name}: not UTF-8 text{hint}")
                body = body.removeprefix(b"\xef\xbb\xbf")
            try:
                yield lineno, body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{name}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)") from None


def check_links(root, top, what: str | None = None, *, limit: int = MAX_LINK_WALK) -> None:
    """Refuses (ValueError naming the entry) a symbolic link under `top` (or `top` itself) whose
    target is outside `root`, and any entry that is not a folder or a regular file (a FIFO, a
    device); folders that links lead to are checked too. Looks at most at `limit` entries."""
    root_real = Path(os.path.realpath(root))
    name = what if what is not None else str(root)
    stack, walked, seen = [os.fspath(top)], set(), 0
    while stack:
        path = stack.pop()
        seen += 1
        if seen > limit:
            raise ValueError(f"{name}: more than {limit} files and folders")
        rel = shown(os.path.relpath(path, root), 200)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(path))
            if target != root_real and root_real not in target.parents:
                raise ValueError(f"{name}: {rel} is a symbolic link to {shown(str(target), 200)}, outside the folder")
            try:
                st = os.stat(path)
            except OSError:
                raise ValueError(f"{name}: {rel} is a broken symbolic link") from None
        if stat.S_ISDIR(st.st_mode):
            real = os.path.realpath(path)
            if real not in walked:  # a folder reached twice (through a link) is walked once
                walked.add(real)
                stack.extend(os.path.join(path, e) for e in sorted(os.listdir(path)))
        elif not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{name}: {rel} is {_not_regular(st.st_mode)}")
