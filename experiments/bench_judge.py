"""How fast is the shapes world's judge? Wall ms per image of `judge_image` on world v3 held-out
renders (evaluation set, one image per record) and, with `--vq`, their VQ reconstructions, for the
judges of this checkout (v2's and v3's configurations) and, with `--before REV`, for the judge module
of a git revision (its `judge_config` for v3, loaded from `git show REV:scalingar_jax/world/judge.py`).
The judges take turns image by image (same images, same machine load); the median of `--repeat`
passes is reported.

  python experiments/bench_judge.py --vq checkpoints/shapes/vq --before bfc1ce9

Prints a table and writes experiments/results/bench_judge.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, stamp, write_json  # noqa: E402
from validate_judge import load_vq, reconstruct_all  # noqa: E402

from scalingar_jax.world import judge as J  # noqa: E402
from scalingar_jax.world.render import layout_scene, render_objects  # noqa: E402
from scalingar_jax.world.scenes import evaluation_set_v2  # noqa: E402
from scalingar_jax.world.spec import WORLD_V3  # noqa: E402


def judge_at(rev: str):
    """The judge module of git revision `rev` (a fresh module, not `scalingar_jax.world.judge`)."""
    src = subprocess.run(["git", "show", f"{rev}:scalingar_jax/world/judge.py"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    if src.returncode:
        raise ValueError(f"--before {rev}: {src.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / f"judge_{rev}.py"
    path.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location(f"judge_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", default=None, help="a trained v3 VQ: also time its reconstructions")
    ap.add_argument("--before", default=None, help="a git revision whose judge is timed too")
    ap.add_argument("--per-tag", type=int, default=30, help="evaluation records per tag")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        vq = load_vq(args.vq, 3) if args.vq else None
        old = judge_at(args.before) if args.before else None
    except ValueError as err:
        ap.error(str(err))
    records = evaluation_set_v2(per_tag=args.per_tag)
    renders = []
    for i, rec in enumerate(records):
        rng = np.random.default_rng([0, i])
        renders.append(render_objects(layout_scene(rec, rng, 48, spec=WORLD_V3), 48, rng=rng, spec=WORLD_V3))
    images = {"renders": np.stack(renders)}
    if vq:
        images["vq reconstructions"] = reconstruct_all(vq, images["renders"])
    judges = {"v3 judge": (J, J.judge_config(WORLD_V3)), "v2 judge (V2_JUDGE)": (J, J.V2_JUDGE)}
    if old:
        judges[f"judge at {args.before} (its config for v3)"] = (old, old.judge_config(WORLD_V3))
    rows = []
    for name, ims in images.items():
        for module, config in judges.values():  # warm-up: template caches
            for im, rec in zip(ims, records):
                module.judge_image(im, rec, config)
        times = {k: [] for k in judges}
        for _ in range(args.repeat):
            spent = dict.fromkeys(judges, 0.0)
            for im, rec in zip(ims, records):
                for k, (module, config) in judges.items():
                    t = time.perf_counter()
                    module.judge_image(im, rec, config)
                    spent[k] += time.perf_counter() - t
            for k in judges:
                times[k].append(1000 * spent[k] / len(records))
        for k in judges:
            rows.append({"images": name, "judge": k, "n": len(records), "ms_per_image": float(np.median(times[k])),
                         "passes_ms": [round(t, 2) for t in times[k]]})
            print(rows[-1], flush=True)
    print(markdown_table(rows, ["images", "judge", "n", "ms_per_image"]))
    print(f"wrote {write_json('bench_judge', {'stamp': stamp(0), 'vq': args.vq, 'rows': rows})}")


if __name__ == "__main__":
    main()
