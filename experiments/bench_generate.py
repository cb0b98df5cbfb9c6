"""End-to-end wall clock of `scalingar generate` with the default checkpoint, compile included.

Runs the command in a fresh subprocess per strategy (so JAX compiles everything anew, as a new
user's first call would) and reports the wall time. Target: <= 60 s on a 2-core CPU.

  python experiments/bench_generate.py
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, stamp, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a photo of a red circle left of a blue square", help="the prompt")
    ap.add_argument("--strategies", nargs="+", default=["scalingar", "plain"], help="strategies to time")
    ap.add_argument("-n", type=int, default=8, help="candidates N")
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the embedded checkpoint)")
    ap.add_argument("--out", default="bench_generate", help="results name under experiments/results/")
    args = ap.parse_args(argv)
    rows = []
    for strategy in args.strategies:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "scalingar_jax.cli", "generate", args.prompt, "--strategy", strategy,
                   "-n", str(args.n), "--out", tmp]
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
            rows.append({"strategy": strategy, "N": args.n, "wall_s": wall, "target_s": 60.0,
                         "within_target": wall <= 60.0, "output": proc.stdout.strip().splitlines()[0]})
            print(rows[-1], flush=True)
    table = markdown_table(rows, ["strategy", "N", "wall_s", "target_s", "within_target", "output"])
    print(table)
    print(f"wrote {write_json(args.out, {'stamp': stamp(), 'rows': rows, 'table': table})}")


if __name__ == "__main__":
    main()
