"""Validates the shapes world's exact judge on rendered ground truth.

For every record of the evaluation, development and hard sets, `--samples` images are
rendered and judged, clean and under stand-ins for a lossy VQ reconstruction
(`render.degrade`: noise, Gaussian blur, colour shift, 2x and 4x average-pool + bilinear
upsampling; pool4 is a deliberately harsh stress test that keeps only a 12x12 image), and,
with a trained VQ (`--vq`), under the real thing: `vq.reconstruct` of every image ("vq").

Two agreements per condition:
- positive: the judge accepts the image for its own record (the metadata says it must);
- negative: the judge's verdict on a different record of the same tag equals the verdict
  of GenEval's rules applied to the scene's TRUE objects (mostly "wrong": wrong colour,
  count, class or position), so a judge that accepts everything fails this.

  python experiments/validate_judge.py                # eval+dev+hard, 2 samples per record
  python experiments/validate_judge.py --samples 1 --sets eval
  python experiments/validate_judge.py --world 2      # v2: 64x64 photo-like renders, v2 judge
  python experiments/validate_judge.py --world 3 --vq checkpoints/shapes/vq   # v3, with the v3 VQ

With --world 2 or 3 the sets are the scene splits (`world.scenes`) rendered with that world's
spec, and the judge is `judge.judge_config(spec)` (v2: `V2_JUDGE`, v3: `V3_JUDGE`). The degraded
conditions are the same in pixels. With --world 3 the v2 judge is also run on every condition
("v2_judge_positive": what v3 images got before v3 had its own judge). `--vq` must name a VQ saved
for the same world version (its meta's `world_version`). `ms_per_image` is the judge's wall time
per image (positive verdicts only, rendering and the VQ excluded).

Prints a table and writes experiments/results/validate_judge.json (v2: validate_judge_v2.json; v3:
validate_judge_v3.json and .md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax.atomic import atomic_write_text  # noqa: E402
from scalingar_jax.world.judge import V2_JUDGE, Detection, apply_rules, judge_config, judge_image  # noqa: E402
from scalingar_jax.world.prompts import (  # noqa: E402
    TAGS, development_set, evaluation_set, hard_set, prompt_space,
)
from scalingar_jax.world.render import degrade, layout_scene, render_objects  # noqa: E402
from scalingar_jax.world.scenes import development_set_v2, evaluation_set_v2  # noqa: E402
from scalingar_jax.world.spec import world_spec  # noqa: E402

CONDITIONS = {
    "clean": None,
    "noise12": dict(blur=0.0, noise=12.0),
    "blur1.0": dict(blur=1.0, noise=8.0),
    "blur1.5+shift": dict(blur=1.5, noise=8.0, color_shift=10.0),
    "pool2": dict(pool=2, blur=0.5, noise=8.0),
    "pool4(stress)": dict(pool=4, blur=0.0, noise=6.0),
}
RESULT_NAMES = {1: "validate_judge", 2: "validate_judge_v2", 3: "validate_judge_v3"}


def true_detections(objects) -> list[Detection]:
    return [Detection(o.cls, o.color, o.box, 0, 1.0) for o in objects]


def load_vq(path: str, version: int):
    """(params, config) of the VQ at `path`; ValueError naming the flag when it is missing or was saved
    for another world version."""
    from scalingar_jax.checkpoint import load_model, read_config

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"--vq {path}: no saved model there (expected {p / 'config.json'})")
    meta = read_config(p)[2] or {}
    if int(meta.get("world_version", 1)) != version:
        raise ValueError(f"--vq {path}: a VQ of world version {meta.get('world_version', 1)}, not of --world {version}")
    return (*load_model(p, expect_kind="vq"), meta)


def reconstruct_all(vq, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the VQ's reconstructions, uint8 (N, H, W, 3)."""
    import jax.numpy as jnp

    from scalingar_jax.images import to_uint8
    from scalingar_jax.vq import reconstruct

    params, cfg = vq[:2]
    return np.concatenate([to_uint8(reconstruct(params, cfg, jnp.asarray(images[i:i + batch].astype(np.float32)
                                                                          / 127.5 - 1.0)))
                           for i in range(0, len(images), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2, help="images per record")
    ap.add_argument("--sets", default="eval,dev,hard", help="comma list of eval, dev, hard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default="1", choices=["1", "2", "3"], help="world version")
    ap.add_argument("--vq", default=None, help="a trained VQ of this world: adds the condition 'vq'")
    args = ap.parse_args()
    spec = world_spec(args.world)
    config = judge_config(spec)
    try:
        vq = load_vq(args.vq, spec.version) if args.vq else None
    except ValueError as err:
        ap.error(str(err))

    sets = ({"eval": evaluation_set, "dev": development_set, "hard": hard_set} if spec.version == 1
            else {"eval": evaluation_set_v2, "dev": development_set_v2, "hard": hard_set})
    chosen = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in chosen if s not in sets]
    if bad:
        ap.error(f"unknown set(s) {bad}; choose from {list(sets)}")
    spaces = {t: prompt_space(t) for t in TAGS}
    conditions = {**CONDITIONS, **({"vq": "vq"} if vq else {})}
    t0 = time.time()
    rows, payload = [], {"stamp": stamp(args.seed), "samples": args.samples, "world_version": spec.version,
                         "vq": args.vq, "vq_meta": vq[2] if vq else None, "results": {}}
    for set_name in chosen:
        records = sets[set_name]()
        cases = []  # (record, objects, image, other record)
        for i, rec in enumerate(records):
            for k in range(args.samples):
                rng = np.random.default_rng([args.seed, i, k])
                if spec.version == 1:
                    objects = layout_scene(rec, rng)
                    image = render_objects(objects)
                else:
                    objects = layout_scene(rec, rng, spec.image_size, spec=spec)
                    image = render_objects(objects, spec.image_size, rng=rng, spec=spec)
                space = spaces[rec["tag"]]
                other = space[int(rng.integers(len(space)))]
                cases.append((rec, objects, image, other))
        recon = reconstruct_all(vq, np.stack([c[2] for c in cases])) if vq else None
        for cond, kw in conditions.items():
            pos = {t: [0, 0] for t in TAGS}
            neg = {t: [0, 0] for t in TAGS}
            v2_ok, failures, judge_s = [], [], 0.0
            for j, (rec, objects, image, other) in enumerate(cases):
                img = (image if kw is None else recon[j] if kw == "vq"
                       else degrade(image, np.random.default_rng([args.seed, 99, j]), **kw))
                t = time.perf_counter()
                v = judge_image(img, rec, config)
                judge_s += time.perf_counter() - t
                pos[rec["tag"]][0] += v.correct
                pos[rec["tag"]][1] += 1
                if not v.correct and len(failures) < 10:
                    failures.append({"prompt": rec["prompt"], "reason": v.reason})
                expected, _ = apply_rules(other, true_detections(objects))
                got = judge_image(img, other, config).correct
                neg[rec["tag"]][0] += got == expected
                neg[rec["tag"]][1] += 1
                if spec.version == 3:
                    v2_ok.append(judge_image(img, rec, V2_JUDGE).correct)
            per_tag = {t: pos[t][0] / pos[t][1] for t in TAGS if pos[t][1]}
            n_pos = sum(p[1] for p in pos.values())
            row = {
                "set": set_name, "condition": cond, "images": n_pos,
                "positive_agreement": sum(p[0] for p in pos.values()) / n_pos,
                "negative_agreement": sum(p[0] for p in neg.values()) / sum(p[1] for p in neg.values()),
                **({"v2_judge_positive": float(np.mean(v2_ok))} if v2_ok else {}),
                "ms_per_image": 1000 * judge_s / n_pos,
                **{t: per_tag.get(t) for t in TAGS},  # None: tag absent from the set
            }
            rows.append(row)
            payload["results"].setdefault(set_name, {})[cond] = {
                **row, "per_tag_positive": per_tag,
                "per_tag_negative": {t: neg[t][0] / neg[t][1] for t in TAGS if neg[t][1]},
                "first_failures": failures,
            }
            print(f"{set_name:5s} {cond:14s} pos {row['positive_agreement']:.4f} "
                  f"neg {row['negative_agreement']:.4f}  ({time.time() - t0:.0f}s)", flush=True)
    columns = ["set", "condition", "images", "positive_agreement", "negative_agreement",
               *(["v2_judge_positive"] if spec.version == 3 else []), "ms_per_image", *TAGS]
    table = markdown_table(rows, columns)
    print()
    print(table)
    payload["seconds"] = time.time() - t0
    name = RESULT_NAMES[spec.version]
    print(f"\nwrote {write_json(name, payload)}")
    if spec.version == 3:
        atomic_write_text(RESULTS / f"{name}.md", f"`{payload['stamp']['command']}`\n\n{table}\n")
        print(f"wrote {RESULTS / name}.md")


if __name__ == "__main__":
    main()
