"""Shared helpers for experiment scripts: result stamping, tables, timing."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from scalingar_jax.atomic import atomic_write_text

# The results folder: $SCALINGAR_RESULTS (what `scalingar bench` / `scalingar reproduce --out` set)
# or, for a script run directly, experiments/results (the repository's recorded results).
RESULTS = Path(os.environ.get("SCALINGAR_RESULTS") or Path(__file__).resolve().parent / "results")


def stamp(seed: int | None = None) -> dict:
    """Command, seed, git revision, machine and library versions of this run."""
    import jax

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        rev = "unknown"
    return {
        "command": " ".join(([f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}"] if os.environ.get("XLA_FLAGS") else [])
                            + [Path(sys.executable).name, *sys.argv]),
        "seed": seed,
        "git_rev": rev or "unknown",
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(name: str, payload: dict) -> Path:
    """Writes RESULTS/<name>.json atomically and returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2, default=float))
    return path


def jsonable(x):
    """`x` with NumPy scalars/arrays, tuples and dataclasses made JSON-ready; NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    return x


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def timeit(fn, *, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of fn() (fn must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
