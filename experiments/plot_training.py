"""Loss curves of the shapes world's training runs, from the records `scalingar train-world` writes.

  python experiments/plot_training.py [--results experiments/results/training] [--world 3]

For each model (vq, gpt, reward) with a `<model>_v<world>.json` record, plots every logged loss
against the global step (a run continued from an earlier one with --gpt-init is drawn after it,
its steps offset by `continued_from_steps`) and writes `<model>_v<world>_loss.png` beside it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LOSS_KEYS = {"vq": ("recon", "vq", "commit"), "gpt": ("loss", "token_acc"), "reward": ("loss", "pair_acc")}


def runs_of(record: dict) -> list[dict]:
    """The runs of a training record in order: its `previous_runs`, then itself."""
    return [*record.get("previous_runs", []), record]


def curves(record: dict, keys) -> dict[str, tuple[list[float], list[float]]]:
    """{"<key>, run <i>": (global steps, values)} for every logged key of every run."""
    out = {}
    for i, run in enumerate(runs_of(record), 1):
        offset = run.get("continued_from_steps") or 0
        for key in keys:
            pts = [(offset + e["step"], e[key]) for e in run.get("losses", []) if key in e]
            if pts:
                out[f"{key}, run {i}" if len(runs_of(record)) > 1 else key] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "training"),
                    help="folder with the <model>_v<world>.json records (default experiments/results/training)")
    ap.add_argument("--world", type=int, default=3, help="world version of the records (default 3)")
    a = ap.parse_args(argv)

    from scalingar_jax import viz

    folder = Path(a.results)
    wrote = 0
    for model, keys in LOSS_KEYS.items():
        path = folder / f"{model}_v{a.world}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        series = curves(record, keys)
        if not series:
            continue
        png = folder / f"{model}_v{a.world}_loss.png"
        viz.plot_xy(png, series, "training step", "loss / accuracy (as logged)",
                    title=f"world v{a.world} {model}: {record.get('total_steps', record.get('steps'))} steps")
        print(f"wrote {png}")
        wrote += 1
    if not wrote:
        raise SystemExit(f"plot_training.py: error: no <model>_v{a.world}.json record in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
