"""Every fenced python and bash block of README.md runs as written.

Each block runs in its own process in an empty temporary folder (python blocks with this
environment's interpreter, bash blocks with `bash -e -o pipefail` and this environment's `bin/`
first on PATH, so `scalingar` and `python` are the installed package's), without
$SCALINGAR_CHECKPOINT (the default bundle is the embedded one), and must exit 0. A block that
downloads, installs, needs a GPU/TPU or torch/transformers, or takes minutes is marked in the
README by a comment on the line right before it, `<!-- readme-test: skip (REASON) -->`; its test
is skipped with that reason. A bash block that opens with `pip install SPEC && ...` (the quick
start's one-liner) runs without its install: this environment already has the package and every
extra. The blocks share a JAX compilation cache (a temporary folder), so a
program two blocks compile alike is compiled once.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^()]+)\) -->$")
MARKER = "readme-test"
LANGUAGES = ("python", "bash")
INSTALL_PREFIX = re.compile(r"\Apip install [^&\n]+&& ")
TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced block of README.md: its language, first line number (1-based), code, and the
    reason of its skip marker (None: it runs)."""

    language: str
    line: int
    code: str
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text, in order. ValueError for an unclosed fence, a fence
    without a language, or a line opening a `<!-- readme-test` comment that is not a well-formed
    marker right before a fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(f"<!-- {MARKER}") and not (SKIP.match(line) and i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            raise ValueError(f"README.md:{i + 1}: {MARKER} comments are `<!-- readme-test: skip (REASON) -->` on the "
                             f"line right before a fenced block, got {line!r}")
        fence = FENCE.match(line)
        if not fence:
            i += 1
            continue
        if not fence.group(1):
            raise ValueError(f"README.md:{i + 1}: a fenced block without a language (```python, ```bash, ...)")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: fenced block never closed")
        marker = SKIP.match(lines[i - 1]) if i > 0 else None
        blocks.append(Block(fence.group(1), i + 2, "\n".join(lines[i + 1:end]) + "\n",
                            marker.group("reason") if marker else None))
        i = end + 1
    return blocks


BLOCKS = [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.language in LANGUAGES]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The blocks' environment: this interpreter's bin/ first on PATH, no $SCALINGAR_CHECKPOINT,
    a compilation cache shared by the blocks."""
    env = {k: v for k, v in os.environ.items() if k not in ("SCALINGAR_CHECKPOINT", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.language}" for b in BLOCKS])
def test_readme_block_runs_as_written(block, env, tmp_path):
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    argv = [sys.executable, "-c", block.code] if block.language == "python" else \
        ["bash", "-e", "-o", "pipefail", "-c", INSTALL_PREFIX.sub("", block.code)]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"README.md:{block.line} ({block.language} block) exited {proc.returncode}:\n"
                                  f"{block.code}\n--- stderr ---\n{proc.stderr[-4000:]}")


def test_every_block_is_checked_and_most_run():
    every = readme_blocks(README.read_text(encoding="utf-8"))
    assert [b.language for b in every if b.language not in LANGUAGES] == []
    running = [b for b in BLOCKS if b.skip is None]
    assert {b.language for b in running} == set(LANGUAGES) and len(running) >= len(BLOCKS) // 2


@pytest.mark.parametrize("text, problem", [
    ("```python\nx = 1\n", "never closed"),
    ("```\nx = 1\n```\n", "without a language"),
    ("<!-- readme-test: skip -->\n```bash\nls\n```\n", "line right before"),
    ("<!-- readme-test: skip (why) -->\n\n```bash\nls\n```\n", "line right before"),
])
def test_malformed_readme_is_named(text, problem):
    with pytest.raises(ValueError, match=problem):
        readme_blocks(text)


def test_blocks_and_markers_are_parsed():
    text = "x\n```python\na = 1\n```\n<!-- readme-test: skip (downloads weights) -->\n```bash\ncurl x\n```\n"
    assert readme_blocks(text) == [Block("python", 3, "a = 1\n", None), Block("bash", 7, "curl x\n", "downloads weights")]
