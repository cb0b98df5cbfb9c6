"""`scalingar bench NAME`: runs the repository's experiments/bench_NAME.py with its results under
--out (default: the current folder), never in the package or the checkout. The scripts ship with
the repository, not with the installed package: from a wheel the command says so."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scalingar_jax.errors import UserError

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository checkout, if the package runs from one
BENCHMARKS = ("accelerator", "attention_layout", "backend", "cli", "convert", "decode", "generate", "judge",
              "scaling", "sharding", "throughput")  # experiments/bench_*.py (tests/test_cli_parser.py pins the list)
RESULTS_ENV = "SCALINGAR_RESULTS"  # the results folder experiments/common.py writes to


def add_parser(sub) -> None:
    """The `bench` subcommand."""
    b = sub.add_parser("bench", help=f"run a benchmark of the repository's experiments/ ({', '.join(BENCHMARKS)})",
                       description="Runs experiments/bench_NAME.py of the repository checkout with its JSON and "
                                   "markdown results under --out; pass the benchmark's own options after --, e.g. "
                                   "`scalingar bench decode --out runs/bench -- --presets GPT-B --batch 16`.")
    b.add_argument("name", choices=BENCHMARKS, metavar="NAME", help="the benchmark: " + ", ".join(BENCHMARKS))
    add_out_flag(b)
    b.set_defaults(fn=run, rest=[])


def add_out_flag(parser) -> None:
    """--out, the results folder of `bench` and `reproduce`; the script's own options come after
    `--` (`cli.main` hands them over as `args.rest`)."""
    parser.usage = f"{parser.prog} [-h] NAME [--out DIR] [-- OPTIONS OF THE SCRIPT]"
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="folder for the results (created; default: the current folder)")


def run(args) -> int:
    """Runs `scalingar bench`: the script's exit status."""
    return run_script(f"bench_{args.name}.py", args.rest, args.out)


def experiments_dir(checkout: Path) -> Path:
    """`checkout/experiments`, whose scripts `bench` and `reproduce` run; a UserError when the
    package runs without its repository checkout (an installed wheel ships no experiments/)."""
    folder = checkout / "experiments"
    if not (folder.is_dir() and (checkout / "pyproject.toml").is_file()):
        raise UserError("`scalingar bench` and `scalingar reproduce` run the scripts in the repository's experiments/ "
                        "folder, which the installed package does not ship: run them from a checkout of the "
                        "repository (pip install -e . there)")
    return folder


def results_dir(path: str) -> Path:
    """The --out folder, made; a UserError when it cannot be."""
    out = Path(path).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {path}: cannot create the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: the folder is not writable")
    return out


def run_script(name: str, rest: list[str], out: str) -> int:
    """Runs experiments/`name` with `rest` in a child Python whose results folder
    (experiments/common.RESULTS) is `out`; returns its exit status."""
    script = experiments_dir(CHECKOUT) / name
    if not script.is_file():
        raise UserError(f"{script} not found in the repository checkout")
    folder = results_dir(out)
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, RESULTS_ENV: str(folder), "PYTHONPATH": path}
    print(f"scalingar: running {script.name}; results under {folder}", file=sys.stderr)
    return subprocess.run([sys.executable, str(script), *rest], env=env).returncode
