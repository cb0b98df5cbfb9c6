"""The one-line error machinery of the command lines, at the ground floor (it imports nothing of
the package, so any module may use it): which exceptions count as bad input, how one becomes a
single printable line, and `UserError` for a problem the command itself finds.

    try:
        ...
    except INPUT_ERRORS as e:        # a bad file or option found deeper down
        print(f"scalingar: error: {one_line(e)}", file=sys.stderr)   # exit status 2
"""
from __future__ import annotations

import shutil

__all__ = ["INPUT_ERRORS", "Interrupted", "UserError", "describe_error", "one_line", "printable"]

# What bad input raises anywhere below a command (a bad file, option, size or nesting): shown as
# one line with exit status 2, never as a traceback.
INPUT_ERRORS = (ValueError, TypeError, KeyError, OSError, MemoryError, RecursionError, ArithmeticError)


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was done by then: printed as one line, exit status 130."""


def printable(msg: str, limit: int = 2000) -> str:
    """`msg` on one line with every control or non-printable character escaped (as `repr`
    does), so that names from a hostile file cannot drive the terminal; cut at `limit`."""
    msg = str(msg)
    cut = len(msg) > limit
    msg = msg[:limit].replace("\n  ", "; ").replace("\n", " ")  # cut first: a huge message costs nothing
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
    return out[: limit - 3] + "..." if cut or len(out) > limit else out


def describe_error(e: BaseException) -> str:
    """What an `INPUT_ERRORS` exception says to a user: its message (a KeyError's without the
    quotes), the file an OSError names, the first file a copy failed on, and a plain sentence for
    memory, nesting and arithmetic errors (which say little on their own)."""
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        src, _, why = (list(e.args[0][0]) + ["", "", ""])[:3]  # copytree's [(src, dst, why), ...]
        more = f" (and {len(e.args[0]) - 1} more file(s))" if len(e.args[0]) > 1 else ""
        return f"cannot copy {str(src)!r}: {str(why)[:200]}{more}"
    if isinstance(e, MemoryError):
        return "out of memory (" + (str(e) or "the input asks for more memory than there is") + ")"
    if isinstance(e, RecursionError):
        return "the input nests too deeply"
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.strerror and e.filename and str(e.filename) not in str(msg):
        msg = f"{e.strerror}: {e.filename!r}"
    if isinstance(e, ArithmeticError):
        msg = f"{type(e).__name__}: {msg} (a size or field in the input is out of range)"
    return str(msg)


def one_line(e: BaseException) -> str:
    """`describe_error(e)` made printable: the line a command prints for bad input."""
    return printable(describe_error(e))
