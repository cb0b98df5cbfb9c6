"""An adversarial set for the v2 judge, drawn with Pillow's ImageDraw, independently of the
world's renderer (no import of `world.render`, `world.geometry` or `world.backgrounds`).

Each case draws `n` 64x64 images (seeded) on a plain or noisy grey background and asks the
judge about a claim record:

false-accept cases (the judge must NOT accept; rate <= 2% each):
  diamond_as_cross       a square rotated by 45 deg (+-8), claim "a photo of a cross"
  rectangle_as_square    an axis-aligned 1.45:1 rectangle, claim "a photo of a square"
  trapezoid_as_triangle  a trapezoid, top 35-60% of the base, claim "a photo of a triangle"
  star_as_circle         a five-pointed star, claim "a photo of a circle"
  blob_as_circle         an irregular blob r(t) = 1 + a cos(3t + p) + b sin(2t + q), claim
                         "a photo of a circle"
  mix_as_color           a circle or square filled with a 50/50 RGB mix of two palette
                         colours, claim "a photo of a <colour A> <shape>" or "<colour B>"
false-reject cases (the judge must accept; reported as the acceptance rate):
  touching_pair          two same-colour circles or squares touching (0-2 px overlap), the
                         second shifted across by 30-50% of the side (aligned squares would
                         make one rectangle, for a person too), claim "a photo of two <shapes>"
  apex_down_triangle     a triangle with its apex at the bottom, claim "a photo of a triangle"
  outline                a 1-2 px outline of a circle, square or triangle, claim "a photo of
                         a <shape>"

  python experiments/adversarial_judge.py --n 100

Prints a table and writes experiments/results/adversarial_judge.json.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FALSE_ACCEPT_CASES = ("diamond_as_cross", "rectangle_as_square", "trapezoid_as_triangle", "star_as_circle",
                      "blob_as_circle", "mix_as_color")
FALSE_REJECT_CASES = ("touching_pair", "apex_down_triangle", "outline")
CASES = FALSE_ACCEPT_CASES + FALSE_REJECT_CASES
SIZE = 64
# The palette as a person names it (the same RGB values as world.vocab.PALETTE).
COLORS = {"red": (225, 35, 35), "green": (40, 190, 60), "blue": (40, 80, 240), "yellow": (240, 220, 30),
          "purple": (170, 40, 200), "white": (235, 235, 235)}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


def _record(prompt_core: str, cls: str, count: int = 1, color: str | None = None) -> dict:
    """The GenEval record of a one-entry claim."""
    entry: dict = {"class": cls, "count": count}
    if color is not None:
        entry["color"] = color
    tag = "counting" if count > 1 else ("colors" if color else "single_object")
    rec: dict = {"tag": tag, "include": [entry]}
    if count > 1:
        rec["exclude"] = [{"class": cls, "count": count + 1}]
    rec["prompt"] = "a photo of " + prompt_core
    return rec


def _canvas(rng: np.random.Generator) -> Image.Image:
    level = int(rng.integers(20, 120))
    if rng.random() < 0.5:
        return Image.new("RGB", (SIZE, SIZE), (level, level, level))
    noise = rng.normal(level, 8, (SIZE, SIZE, 1)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(noise, 3, -1))


def _color(rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    name = list(COLORS)[int(rng.integers(len(COLORS)))]
    return name, COLORS[name]


def _rot(points, cx, cy, ang):
    c, s = math.cos(ang), math.sin(ang)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def draw_case(case: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One adversarial image of `case`: (uint8 (64, 64, 3), claim record)."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    side = float(rng.uniform(18, 30))
    cx, cy = (float(v) for v in rng.uniform(side, SIZE - side, 2))
    name, col = _color(rng)
    h = side / 2
    if case == "diamond_as_cross":
        pts = _rot([(-h, -h), (h, -h), (h, h), (-h, h)], cx, cy, math.pi / 4 + rng.uniform(-0.14, 0.14))
        d.polygon(pts, fill=col)
        return np.asarray(im), _record("a cross", "cross")
    if case == "rectangle_as_square":
        w, hh = side / 2, side / 2 / 1.45
        if rng.random() < 0.5:
            w, hh = hh, w
        d.rectangle([cx - w, cy - hh, cx + w, cy + hh], fill=col)
        return np.asarray(im), _record("a square", "square")
    if case == "trapezoid_as_triangle":
        top = h * rng.uniform(0.35, 0.6)
        d.polygon([(cx - top, cy - h), (cx + top, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=col)
        return np.asarray(im), _record("a triangle", "triangle")
    if case == "star_as_circle":
        ang0 = rng.uniform(0, 2 * math.pi)
        pts = [(cx + (h if k % 2 == 0 else h * 0.42) * math.cos(ang0 + k * math.pi / 5),
                cy + (h if k % 2 == 0 else h * 0.42) * math.sin(ang0 + k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=col)
        return np.asarray(im), _record("a circle", "circle")
    if case == "blob_as_circle":
        a, b = rng.uniform(0.18, 0.3), rng.uniform(0.1, 0.2)
        p, q = rng.uniform(0, 2 * math.pi, 2)
        t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
        r = h * (1 + a * np.cos(3 * t + p) + b * np.sin(2 * t + q)) / (1 + a + b) * 1.2
        d.polygon(list(zip(cx + r * np.cos(t), cy + r * np.sin(t))), fill=col)
        return np.asarray(im), _record("a circle", "circle")
    if case == "mix_as_color":
        names = list(COLORS)
        i, j = rng.choice(len(names), 2, replace=False)
        mix = tuple(int(round((u + v) / 2)) for u, v in zip(COLORS[names[i]], COLORS[names[j]]))
        shape = "circle" if rng.random() < 0.5 else "square"
        box = [cx - h, cy - h, cx + h, cy + h]
        (d.ellipse if shape == "circle" else d.rectangle)(box, fill=mix)
        claim = names[i] if rng.random() < 0.5 else names[j]
        return np.asarray(im), _record(f"a {claim} {shape}", shape, color=claim)
    if case == "touching_pair":
        shape = "circle" if rng.random() < 0.5 else "square"
        s2 = float(rng.uniform(14, 22))
        overlap = float(rng.uniform(0, 2))
        shift = float(rng.uniform(0.3, 0.5)) * s2 * (1 if rng.random() < 0.5 else -1)
        y = float(rng.uniform(4 + max(0.0, -shift), SIZE - s2 - 4 - max(0.0, shift)))
        x0 = float(rng.uniform(2, SIZE - 2 * s2 + overlap - 2))
        for x, yy in ((x0, y), (x0 + s2 - overlap, y + shift)):
            box = [x, yy, x + s2 - 1, yy + s2 - 1]
            (d.ellipse if shape == "circle" else d.rectangle)(box, fill=col)
        if rng.random() < 0.5:  # vertical pair
            im = im.transpose(Image.Transpose.TRANSPOSE)
        return np.asarray(im), _record(f"two {PLURAL[shape]}", shape, count=2)
    if case == "apex_down_triangle":
        d.polygon([(cx - h, cy - h), (cx + h, cy - h), (cx, cy + h)], fill=col)
        return np.asarray(im), _record("a triangle", "triangle")
    if case == "outline":
        shape = ("circle", "square", "triangle")[int(rng.integers(3))]
        width = int(rng.integers(1, 3))
        box = [cx - h, cy - h, cx + h, cy + h]
        if shape == "circle":
            d.ellipse(box, outline=col, width=width)
        elif shape == "square":
            d.rectangle(box, outline=col, width=width)
        else:
            d.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], outline=col, width=width)
        return np.asarray(im), _record(f"a {shape}", shape)
    raise ValueError(f"unknown adversarial case {case!r}; expected one of {CASES}")


def case_images(case: str, n: int, seed: int = 0) -> list[tuple[np.ndarray, dict]]:
    """n (image, claim) pairs of `case`, image i drawn from rng (seed, case index, i)."""
    k = CASES.index(case) if case in CASES else -1
    return [draw_case(case, np.random.default_rng([seed, k, i])) for i in range(n)]


def acceptance(case: str, n: int, seed: int = 0, config=None) -> float:
    """Fraction of the case's images the judge (default: the v2 judge) accepts for their claim."""
    from scalingar_jax.world.judge import V2_JUDGE, judge_image

    config = V2_JUDGE if config is None else config
    return float(np.mean([judge_image(im, rec, config).correct for im, rec in case_images(case, n, seed)]))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import markdown_table, stamp, write_json

    from scalingar_jax.world.judge import V1_JUDGE, V2_JUDGE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="images per case")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for case in CASES:
        kind = "false accept" if case in FALSE_ACCEPT_CASES else "accept (should be 1)"
        rows.append({"case": case, "measures": kind, "n": args.n,
                     "v2_judge": acceptance(case, args.n, args.seed, V2_JUDGE),
                     "v1_judge": acceptance(case, args.n, args.seed, V1_JUDGE)})
        print(rows[-1], flush=True)
    print(markdown_table(rows, ["case", "measures", "n", "v2_judge", "v1_judge"]))
    print(f"wrote {write_json('adversarial_judge', {'stamp': stamp(args.seed), 'rows': rows})}")


if __name__ == "__main__":
    main()
