"""Validates the shapes world's exact judge on rendered ground truth.

For every record of the evaluation, development and hard sets, `--samples` images are
rendered and judged, clean and under stand-ins for a lossy VQ reconstruction
(`render.degrade`: noise, Gaussian blur, colour shift, 2x and 4x average-pool + bilinear
upsampling; pool4 is a deliberately harsh stress test that keeps only a 12x12 image).

Two agreements per condition:
- positive: the judge accepts the image for its own record (the metadata says it must);
- negative: the judge's verdict on a different record of the same tag equals the verdict
  of GenEval's rules applied to the scene's TRUE objects (mostly "wrong": wrong colour,
  count, class or position), so a judge that accepts everything fails this.

  python experiments/validate_judge.py                # eval+dev+hard, 2 samples per record
  python experiments/validate_judge.py --samples 1 --sets eval
  python experiments/validate_judge.py --world 2      # v2: 64x64 photo-like renders, v2 judge

With --world 2 the sets are the v2 scene splits (`world.scenes`), each record rendered for
its own split, and the judge is `judge.V2_JUDGE`. The degraded conditions are the same in
pixels (at 64 px, pool2 / pool4 keep a 32x32 / 16x16 image).

Prints a table and writes experiments/results/validate_judge.json (v2: validate_judge_v2.json).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax.world.judge import Detection, apply_rules, judge_config, judge_image  # noqa: E402
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


def true_detections(objects) -> list[Detection]:
    return [Detection(o.cls, o.color, o.box, 0, 1.0) for o in objects]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2, help="images per record")
    ap.add_argument("--sets", default="eval,dev,hard", help="comma list of eval, dev, hard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default="1", choices=["1", "2"], help="world version")
    args = ap.parse_args()
    spec = world_spec(args.world)
    config = judge_config(spec)

    sets = ({"eval": evaluation_set, "dev": development_set, "hard": hard_set} if spec.version == 1
            else {"eval": evaluation_set_v2, "dev": development_set_v2, "hard": hard_set})
    chosen = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in chosen if s not in sets]
    if bad:
        ap.error(f"unknown set(s) {bad}; choose from {list(sets)}")
    spaces = {t: prompt_space(t) for t in TAGS}
    t0 = time.time()
    rows, payload = [], {"stamp": stamp(args.seed), "samples": args.samples, "world_version": spec.version,
                         "results": {}}
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
        for cond, kw in CONDITIONS.items():
            pos = {t: [0, 0] for t in TAGS}
            neg = {t: [0, 0] for t in TAGS}
            failures = []
            for j, (rec, objects, image, other) in enumerate(cases):
                img = image if kw is None else degrade(image, np.random.default_rng([args.seed, 99, j]), **kw)
                v = judge_image(img, rec, config)
                pos[rec["tag"]][0] += v.correct
                pos[rec["tag"]][1] += 1
                if not v.correct and len(failures) < 10:
                    failures.append({"prompt": rec["prompt"], "reason": v.reason})
                expected, _ = apply_rules(other, true_detections(objects))
                got = judge_image(img, other, config).correct
                neg[rec["tag"]][0] += got == expected
                neg[rec["tag"]][1] += 1
            per_tag = {t: pos[t][0] / pos[t][1] for t in TAGS if pos[t][1]}
            n_pos = sum(p[1] for p in pos.values())
            row = {
                "set": set_name, "condition": cond, "images": n_pos,
                "positive_agreement": sum(p[0] for p in pos.values()) / n_pos,
                "negative_agreement": sum(p[0] for p in neg.values()) / sum(p[1] for p in neg.values()),
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
    print()
    print(markdown_table(rows, ["set", "condition", "images", "positive_agreement",
                                "negative_agreement", *TAGS]))
    payload["seconds"] = time.time() - t0
    name = "validate_judge" if spec.version == 1 else "validate_judge_v2"
    print(f"\nwrote {write_json(name, payload)}")


if __name__ == "__main__":
    main()
