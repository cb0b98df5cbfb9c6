"""A test fixture folder written whole or not at all, shared by the fixture generators."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def fixture_folder(out: Path, max_bytes: int) -> Iterator[Path]:
    """Yields an empty temporary folder next to `out` to write the fixture into. On a clean exit
    its files must total under `max_bytes`; it then replaces `out` and each file's size is
    printed. On any error it is removed and `out` stays as it was."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + "_", dir=out.parent))
    try:
        yield tmp
        total = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        assert total < max_bytes, f"fixture is {total} bytes, must stay under {max_bytes}"
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:8d}  {f.relative_to(out)}")
