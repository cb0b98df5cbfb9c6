"""`scalingar reproduce NAME`: runs the repository's experiments/reproduce.py NAME (the paper's
experiments on the shapes world) with its results under --out (default: the current folder)."""
from __future__ import annotations

import argparse

from scalingar_jax.cli.bench import add_out_flag, run_script

# experiments/reproduce.py's experiments (tests/test_cli_parser.py pins them to its parser)
EXPERIMENTS = {
    "main": "Table 1: every strategy on the evaluation set",
    "ablations": "Tables 2 and 4: ScalingAR's components switched off one at a time",
    "width": "Fig. 5 right: accuracy and tokens against the number of candidates N",
    "robustness": "the hard prompt set against the evaluation set",
    "efficiency": "Table 5: tokens, wall clock and memory per image",
    "sensitivity": "Fig. 10: the termination quantile p and the recovery threshold",
    "signals": "does confidence rank a prompt's candidates?",
    "tune": "pick ScalingAR's gate on the development set only (tune.json; used with -- --tuned)",
    "all": "main to signals in one process, then report",
    "report": "assemble RESULTS.md from the JSON files already under --out",
}


def add_parser(sub) -> None:
    """The `reproduce` subcommand."""
    r = sub.add_parser("reproduce", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="reproduce the paper's experiments on the shapes world (" + ", ".join(EXPERIMENTS) + ")",
                       description="Runs the repository's experiments/reproduce.py NAME; pass its own options "
                                   "after --,\ne.g. `scalingar reproduce main --out runs/paper -- --smoke`. Each "
                                   "experiment writes JSON,\na markdown table and PNG plots under --out.\n\n"
                                   "experiments:\n"
                                   + "\n".join(f"  {k:12s} {v}" for k, v in EXPERIMENTS.items()))
    r.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help="the experiment (listed above)")
    add_out_flag(r)
    r.set_defaults(fn=run, rest=[])


def run(args) -> int:
    """Runs `scalingar reproduce`: the script's exit status."""
    return run_script("reproduce.py", [args.name, *args.rest], args.out)
