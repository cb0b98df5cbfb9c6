"""How fast the `scalingar` command answers when it has nothing to compute: `scalingar --help`,
`scalingar generate --help` and a bad flag (`scalingar generate --bogus`, exit status 2), each the
median wall clock of --repeat fresh processes (Python start-up included). The parser imports no
JAX, Flax, orbax or NumPy (`scalingar_jax/cli/`), so these stay well under a second.

    taskset -c 1 python experiments/bench_cli.py --repeat 7

Writes bench_cli.json and bench_cli.md under the results folder (experiments/results, or --out
of `scalingar bench cli`).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax.atomic import atomic_write_text  # noqa: E402

CASES = (("scalingar --help", ["--help"], 0), ("scalingar generate --help", ["generate", "--help"], 0),
         ("scalingar generate --bogus (bad flag)", ["generate", "--bogus"], 2))


def program() -> list[str]:
    """The installed `scalingar` script beside this Python, else `python -m scalingar_jax.cli`."""
    script = Path(sys.executable).parent / "scalingar"
    found = str(script) if script.is_file() else shutil.which("scalingar")
    return [found] if found else [sys.executable, "-m", "scalingar_jax.cli"]


def seconds(argv: list[str], want: int) -> float:
    """Wall clock of one run of `argv`; RuntimeError if it exits with another status than `want`."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != want:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}, expected {want}: {proc.stderr[-500:]}")
    return elapsed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7, help="fresh processes per command (default 7); the median is kept")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("bench_cli.py: error: --repeat must be >= 1")
    base = program()
    rows = []
    for name, extra, want in CASES:
        runs = [seconds(base + extra, want) for _ in range(args.repeat)]  # the first warms the file cache too
        rows.append({"command": name, "exit_status": want, "median_s": round(statistics.median(runs), 3),
                     "min_s": round(min(runs), 3), "max_s": round(max(runs), 3), "runs": args.repeat})
    table = markdown_table(rows, ["command", "exit_status", "median_s", "min_s", "max_s", "runs"])
    print(table)
    payload = {"stamp": stamp(), "program": base, "rows": rows, "table": table}
    path = write_json("bench_cli", payload)
    atomic_write_text(RESULTS / "bench_cli.md", f"`{payload['stamp']['command']}` ({' '.join(base)})\n\n{table}\n")
    print(f"wrote {path} and {RESULTS / 'bench_cli.md'}")


if __name__ == "__main__":
    main()
