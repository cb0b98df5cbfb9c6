"""An adversarial set for the shapes world's judge, drawn with Pillow's ImageDraw and numpy, independently of
the world's renderer (no import of `world.render`, `world.geometry` or `world.backgrounds`).

Two sets (`--world`), each asking the judge of its world (`judge.judge_config`) about a claim record:
- 2: 64x64 images on a plain or noisy grey background, objects 18..30 px (the v2 set, as committed).
- 3: 48x48 images on TEXTURED backgrounds drawn here (plain, per-pixel noise, low-frequency value noise,
  crops of photographs scikit-image ships, including ones the world never uses: a checkerboard, the
  Shepp-Logan phantom, a clock, a printed page; and binary blobs drawn here), all dim and desaturated
  like the world's backgrounds: every background pixel has max(R, G, B) <= 132 and max - min <= 28, inside the world's
  background gamut (max <= 140, max - min <= 32; shapes-bench: the gamut is background by definition).
  Objects 14..22 px, the world's single-object sizes; half the images are anti-aliased (drawn at 4x and
  box-averaged: the diamonds the v2 judge took for crosses were mostly those); the v3 cases below are added.

false-accept cases (the judge must NOT accept; rate <= 2% each):
  diamond_as_cross       a square rotated by 45 deg (+-8), claim "a photo of a cross" (v3: boxes 10..31 px)
  rectangle_as_square    an axis-aligned 1.45:1 rectangle, claim "a photo of a square"
  trapezoid_as_triangle  a trapezoid, top 35-60% of the base, claim "a photo of a triangle"
  star_as_circle         a five-pointed star, claim "a photo of a circle"
  blob_as_circle         an irregular blob r(t) = 1 + a cos(3t + p) + b sin(2t + q), claim "a photo of a circle"
  mix_as_color           a circle or square filled with a 50/50 RGB mix of two palette colours, claim
                         "a photo of a <colour A> <shape>" or "<colour B>"
  (v3 only)
  offpalette_as_color    a circle, square or triangle in a colour no palette colour names: orange, pink,
                         cyan, lime, teal, brown, grey (158), or a 45..55% mix of two palette colours (of the
                         pairs whose midpoint is >= 80 from every palette colour: red + blue is purple);
                         claim its nearest palette colour (mixes nearer to one colour than about 1/3 of the
                         way read as that colour: see near_palette)
  shapes_in_background   background regions that look like shapes: in-gamut squares, circles, crosses and
                         triangles drawn into the texture at high contrast, on crops of the checkerboard,
                         the coins photo or the binary blobs; claim "a photo of a <shape>"
  clutter                palette-coloured specks (<= 3 px) and 1-2 px scribbles, in-gamut vocabulary
                         shapes, no palette object; claim "a photo of a <shape>"
  small_as_other_class   a palette shape with a 5..8 px box (the world draws >= 10 px), claim another shape
                         (at 8 px the v2 judge read crosses as triangles)
  border_cut             a circle, cross or square cut by the image border (30-50% of its side outside), or
                         a triangle with its apex cut off so, claim its class
  offpalette_extra       two palette <shapes> and a third one in light grey (160..200) or an off-palette
                         colour, claim "a photo of two <shapes>" (the off-palette object counts, as
                         GenEval's detector would count it: see `world.judge`, "Off-palette objects")
false-reject cases (the judge must accept; reported as the acceptance rate):
  touching_pair          two same-colour circles or squares touching (0-2 px overlap), the second shifted
                         across by 30-50% of the side, claim "a photo of two <shapes>"
  apex_down_triangle     a triangle with its apex at the bottom, claim "a photo of a triangle"
  outline                a 1-2 px outline of a circle, square or triangle, claim "a photo of a <shape>"
  (v3 only)
  near_palette           a shape in a colour 10..20% of the way from palette colour A to another palette
                         colour, claim "a photo of a <A> <shape>" (the v2 judge refused 11 of 40 at 20%)
  border_touching        a whole shape touching one or two image borders, claim its class
  smallest_named         a palette shape with a 10..12 px box (the world's smallest), claim its class
  clutter_with_object    one palette shape amid the clutter above, claim "a photo of a <colour> <shape>"
  offpalette_of_class    one light-grey or off-palette shape, claim "a photo of a <shape>" (no colour asked:
                         GenEval's rule accepts a detected object of the class in any colour)

  python experiments/adversarial_judge.py --n 200              # v2 set -> adversarial_judge.json
  python experiments/adversarial_judge.py --world 3 --n 200    # v3 set -> adversarial_judge_v3.json

Prints a table and writes experiments/results/adversarial_judge.json (v3: adversarial_judge_v3.json and
.md); --figure PNG draws the first images of every case with the judge's verdict (green: accepted).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

V2_FALSE_ACCEPT = ("diamond_as_cross", "rectangle_as_square", "trapezoid_as_triangle", "star_as_circle",
                   "blob_as_circle", "mix_as_color")
V2_FALSE_REJECT = ("touching_pair", "apex_down_triangle", "outline")
V3_FALSE_ACCEPT = V2_FALSE_ACCEPT + ("offpalette_as_color", "shapes_in_background", "clutter",
                                     "small_as_other_class", "border_cut", "offpalette_extra")
V3_FALSE_REJECT = V2_FALSE_REJECT + ("near_palette", "border_touching", "smallest_named", "clutter_with_object",
                                     "offpalette_of_class")
# kept names: the v2 set (tests and the committed adversarial_judge.json)
FALSE_ACCEPT_CASES, FALSE_REJECT_CASES = V2_FALSE_ACCEPT, V2_FALSE_REJECT
CASES = FALSE_ACCEPT_CASES + FALSE_REJECT_CASES
V3_CASES = V3_FALSE_ACCEPT + V3_FALSE_REJECT
SIZE = 64
# The palette as a person names it (the same RGB values as world.vocab.PALETTE).
COLORS = {"red": (225, 35, 35), "green": (40, 190, 60), "blue": (40, 80, 240), "yellow": (240, 220, 30),
          "purple": (170, 40, 200), "white": (235, 235, 235)}
# Colours a person does not call by a palette name (and that lie outside the background gamut).
OFF_PALETTE = {"orange": (245, 140, 20), "pink": (245, 130, 190), "cyan": (40, 210, 220), "lime": (160, 235, 40),
               "teal": (20, 150, 140), "brown": (150, 90, 40), "grey": (158, 158, 158)}
# Pairs of palette colours whose midpoint is at least 80 (RGB) from every palette colour (red + blue is
# purple, a palette colour).
FAR_MIXES = tuple((a, b) for i, a in enumerate(COLORS) for b in tuple(COLORS)[i + 1:]
                  if min(math.dist([(u + v) / 2 for u, v in zip(COLORS[a], COLORS[b])], c)
                         for c in COLORS.values()) >= 80)
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SHAPE_NAMES = tuple(PLURAL)
# Photographs for the v3 textures (scikit-image's `data`), world's and others.
TEXTURES = ("brick", "grass", "gravel", "coins", "checkerboard", "camera", "moon", "text", "coffee", "clock",
            "page", "shepp_logan_phantom", "blobs", "hubble_deep_field", "immunohistochemistry")
SHAPE_LIKE_TEXTURES = ("checkerboard", "coins", "blobs")
TEXTURE_MAX_LUM, TEXTURE_MAX_TINT = 104, 28  # a background pixel: luminance <= 104 plus a tint <= 28 per channel


@dataclasses.dataclass(frozen=True)
class AdversarialSet:
    """One world's set: image `size`, object sides `side` (px), touching-pair sides `pair`, `textured`
    backgrounds (v3) or plain/noisy grey (v2), and its cases."""

    world: int
    size: int
    side: tuple[float, float]
    pair: tuple[float, float]
    textured: bool
    false_accept: tuple[str, ...]
    false_reject: tuple[str, ...]

    @property
    def cases(self) -> tuple[str, ...]:
        return self.false_accept + self.false_reject


SETS = {2: AdversarialSet(2, 64, (18, 30), (14, 22), False, V2_FALSE_ACCEPT, V2_FALSE_REJECT),
        3: AdversarialSet(3, 48, (14, 22), (11, 16), True, V3_FALSE_ACCEPT, V3_FALSE_REJECT)}


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


def _canvas(rng: np.random.Generator, s: AdversarialSet = SETS[2]) -> Image.Image:
    if s.textured:
        return Image.fromarray(texture(rng, s.size))
    level = int(rng.integers(20, 120))
    if rng.random() < 0.5:
        return Image.new("RGB", (s.size, s.size), (level, level, level))
    noise = rng.normal(level, 8, (s.size, s.size, 1)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(noise, 3, -1))


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(luminance float (H, W) in [0, 1], chroma float (H, W, 3)) of a scikit-image photograph, or of
    "blobs" (thresholded smooth noise)."""
    import skimage.data

    if name == "blobs":  # binary blobs drawn here from a fixed seed (skimage's binary_blobs is random)
        coarse = (np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((384, 384), Image.Resampling.BICUBIC), np.float64)
        return (smooth > np.median(smooth)).astype(np.float64), np.zeros((384, 384, 3))
    x = np.asarray(getattr(skimage.data, name)(), np.float64)
    x = x / x.max() if x.max() > 0 else x
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, -1)
    x = x[..., :3]
    lum = x.mean(-1)
    return lum, x - lum[..., None]


def _to_background(lum: np.ndarray, chroma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Luminance (H, W) in [0, 1] stretched into a random dim range, plus a faint tint from `chroma`
    (H, W, 3): uint8 with max <= TEXTURE_MAX_LUM + TEXTURE_MAX_TINT, max - min <= TEXTURE_MAX_TINT."""
    lo = rng.uniform(0.02, 0.5)
    hi = min(1.0, lo + rng.uniform(0.3, 0.6))
    lo_p, hi_p = np.percentile(lum, [2, 98])
    x = np.clip((lum - lo_p) / max(hi_p - lo_p, 1e-3), 0, 1)
    L = np.round((lo + (hi - lo) * x) * TEXTURE_MAX_LUM)
    tint = np.clip(rng.uniform(0.2, 0.8, 3) * TEXTURE_MAX_TINT + rng.uniform(0, 60) * chroma, 0, TEXTURE_MAX_TINT)
    return (L[..., None] + np.round(tint)).astype(np.uint8)


def texture(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """A dim, desaturated textured background uint8 (size, size, 3): "flat", "noise" (per pixel),
    "value" (low-frequency value noise) or "photo" (a crop of one of `TEXTURES`)."""
    kind = kind or ("flat", "noise", "value", "photo", "photo")[int(rng.integers(5))]
    if kind == "photo":
        return _photo_crop(rng, size, TEXTURES[int(rng.integers(len(TEXTURES)))])
    if kind == "flat":
        lum = np.full((size, size), rng.uniform(0, 1))
    elif kind == "noise":
        lum = rng.uniform(0.2, 0.8) + rng.normal(0, 0.08, (size, size))
    elif kind == "value":
        cells = int(rng.integers(3, 12))
        small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        lum = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR), np.float64) / 255
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return _to_background(np.clip(lum, 0, 1), np.zeros((size, size, 3)), rng)


def _photo_crop(rng: np.random.Generator, size: int, name: str) -> np.ndarray:
    lum, chroma = _photo(name)
    h, w = lum.shape
    side = int(rng.integers(min(size, h, w), min(h, w) // 2 + 1)) if min(h, w) // 2 > size else size
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = np.concatenate([lum[y:y + side, x:x + side, None], chroma[y:y + side, x:x + side]], -1)
    resized = [np.asarray(Image.fromarray(crop[..., c].astype(np.float32)).resize((size, size), Image.Resampling.BOX))
               for c in range(4)]
    crop = np.stack(resized, -1)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _to_background(crop[..., 0], crop[..., 1:], rng)


class _Pen:
    """Pillow's ImageDraw on `im` at `z`x supersampling: coordinates are in output pixels (scaled by z
    here), and `array()` box-averages the drawing back to the output size (z > 1: anti-aliased edges)."""

    def __init__(self, im: Image.Image, z: int = 1):
        self.z = z
        self.im = im if z == 1 else im.resize((im.size[0] * z, im.size[1] * z), Image.Resampling.NEAREST)
        self.d = ImageDraw.Draw(self.im)

    def _pts(self, pts):
        return [(x * self.z + (self.z - 1) / 2, y * self.z + (self.z - 1) / 2) for x, y in pts]

    def _box(self, box):
        x0, y0, x1, y1 = box
        return [x0 * self.z, y0 * self.z, (x1 + 1) * self.z - 1, (y1 + 1) * self.z - 1]

    def polygon(self, pts, fill=None, outline=None, width=1):
        self.d.polygon(self._pts(pts), fill=fill, outline=outline, width=width * self.z)

    def line(self, pts, fill, width=1):
        self.d.line(self._pts(pts), fill=fill, width=width * self.z)

    def rectangle(self, box, fill=None, outline=None, width=1):
        self.d.rectangle(self._box(box), fill=fill, outline=outline, width=width * self.z)

    def ellipse(self, box, fill=None, outline=None, width=1):
        self.d.ellipse(self._box(box), fill=fill, outline=outline, width=width * self.z)

    def transpose(self) -> None:
        self.im = self.im.transpose(Image.Transpose.TRANSPOSE)
        self.d = ImageDraw.Draw(self.im)

    def array(self) -> np.ndarray:
        im = self.im if self.z == 1 else self.im.resize((self.im.size[0] // self.z, self.im.size[1] // self.z),
                                                         Image.Resampling.BOX)
        return np.asarray(im)


def _color(rng: np.random.Generator) -> tuple[str, tuple[int, int, int]]:
    name = list(COLORS)[int(rng.integers(len(COLORS)))]
    return name, COLORS[name]


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(u + t * (v - u))) for u, v in zip(a, b))


def _rot(points, cx, cy, ang):
    c, s = math.cos(ang), math.sin(ang)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape(d: _Pen, shape: str, x0: float, y0: float, side: float, col) -> None:
    """Draws a vocabulary `shape` filling the box [x0, x0 + side) x [y0, y0 + side): circle, square,
    triangle (apex up) or cross (arms 38% of the side wide)."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=col)
    elif shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=col)
    elif shape == "triangle":
        d.polygon([(x0 + side / 2, y0), (x0 + side, y0 + side), (x0, y0 + side)], fill=col)
    elif shape == "cross":
        arm = max(2.0, round(0.38 * side))
        a0 = (side - arm) / 2
        d.rectangle([x0 + a0, y0, x0 + a0 + arm - 1, y1], fill=col)
        d.rectangle([x0, y0 + a0, x1, y0 + a0 + arm - 1], fill=col)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _clutter(d: _Pen, rng: np.random.Generator, size: int, keep_out=None) -> None:
    """Palette specks (1..3 px), 1-2 px palette scribbles and in-gamut vocabulary shapes, outside the
    box `keep_out` (x0, y0, x1, y1) if given."""
    def free(x, y, r):
        return keep_out is None or (x + r < keep_out[0] - 2 or x - r > keep_out[2] + 2
                                    or y + r < keep_out[1] - 2 or y - r > keep_out[3] + 2)

    for _ in range(int(rng.integers(3, 7))):  # in-gamut vocabulary shapes (grey, tinted)
        side = float(rng.uniform(8, 16))
        x, y = (float(v) for v in rng.uniform(0, size - side, 2))
        if free(x + side / 2, y + side / 2, side / 2):
            g = int(rng.integers(10, 111))
            shape = _pick(rng, SHAPE_NAMES)
            _shape(d, shape, x, y, side, (g + int(rng.integers(0, 25)), g, g + int(rng.integers(0, 25))))
    for _ in range(int(rng.integers(4, 10))):  # specks
        x, y = (float(v) for v in rng.uniform(1, size - 4, 2))
        r = float(rng.uniform(0.5, 1.5))
        if free(x, y, r + 1):
            d.ellipse([x - r, y - r, x + r, y + r], fill=_color(rng)[1])
    for _ in range(int(rng.integers(1, 4))):  # open scribbles
        pts = [tuple(float(v) for v in rng.uniform(0, size, 2))]
        for _ in range(int(rng.integers(2, 5))):
            px, py = pts[-1]
            pts.append((px + float(rng.normal(0, 7)), py + float(rng.normal(0, 7))))
        if all(free(x, y, 2) for x, y in pts):
            d.line(pts, fill=_color(rng)[1], width=int(rng.integers(1, 3)))


def draw_case(case: str, rng: np.random.Generator, world: int = 2) -> tuple[np.ndarray, dict]:
    """One adversarial image of `case` in the set of `world`: (uint8 (S, S, 3), claim record)."""
    s = SETS[world]
    if case not in s.cases:
        raise ValueError(f"unknown adversarial case {case!r} for world {world}; expected one of {s.cases}")
    S = s.size
    im = _canvas(rng, s)
    d = _Pen(im, 4 if s.textured and rng.random() < 0.5 else 1)  # v3: half the images anti-aliased
    side = float(rng.uniform(*s.side))
    cx, cy = (float(v) for v in rng.uniform(side, S - side, 2))
    name, col = _color(rng)
    h = side / 2
    if case == "diamond_as_cross":
        if s.textured:  # v3: boxes from 10 px (the world's smallest objects) to 31 px
            h *= float(rng.uniform(0.5, 1.0))
        pts = _rot([(-h, -h), (h, -h), (h, h), (-h, h)], cx, cy, math.pi / 4 + rng.uniform(-0.14, 0.14))
        d.polygon(pts, fill=col)
        return d.array(), _record("a cross", "cross")
    if case == "rectangle_as_square":
        w, hh = side / 2, side / 2 / 1.45
        if rng.random() < 0.5:
            w, hh = hh, w
        d.rectangle([cx - w, cy - hh, cx + w, cy + hh], fill=col)
        return d.array(), _record("a square", "square")
    if case == "trapezoid_as_triangle":
        top = h * rng.uniform(0.35, 0.6)
        d.polygon([(cx - top, cy - h), (cx + top, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=col)
        return d.array(), _record("a triangle", "triangle")
    if case == "star_as_circle":
        ang0 = rng.uniform(0, 2 * math.pi)
        pts = [(cx + (h if k % 2 == 0 else h * 0.42) * math.cos(ang0 + k * math.pi / 5),
                cy + (h if k % 2 == 0 else h * 0.42) * math.sin(ang0 + k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=col)
        return d.array(), _record("a circle", "circle")
    if case == "blob_as_circle":
        a, b = rng.uniform(0.18, 0.3), rng.uniform(0.1, 0.2)
        p, q = rng.uniform(0, 2 * math.pi, 2)
        t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
        r = h * (1 + a * np.cos(3 * t + p) + b * np.sin(2 * t + q)) / (1 + a + b) * 1.2
        d.polygon(list(zip(cx + r * np.cos(t), cy + r * np.sin(t))), fill=col)
        return d.array(), _record("a circle", "circle")
    if case == "mix_as_color":
        names = list(COLORS)
        i, j = rng.choice(len(names), 2, replace=False)
        mix = tuple(int(round((u + v) / 2)) for u, v in zip(COLORS[names[i]], COLORS[names[j]]))
        shape = "circle" if rng.random() < 0.5 else "square"
        box = [cx - h, cy - h, cx + h, cy + h]
        (d.ellipse if shape == "circle" else d.rectangle)(box, fill=mix)
        claim = names[i] if rng.random() < 0.5 else names[j]
        return d.array(), _record(f"a {claim} {shape}", shape, color=claim)
    if case == "touching_pair":
        shape = "circle" if rng.random() < 0.5 else "square"
        s2 = float(rng.uniform(*s.pair))
        overlap = float(rng.uniform(0, 2))
        shift = float(rng.uniform(0.3, 0.5)) * s2 * (1 if rng.random() < 0.5 else -1)
        m = 4 * S / 64
        y = float(rng.uniform(m + max(0.0, -shift), S - s2 - m - max(0.0, shift)))
        x0 = float(rng.uniform(m / 2, S - 2 * s2 + overlap - m / 2))
        for x, yy in ((x0, y), (x0 + s2 - overlap, y + shift)):
            box = [x, yy, x + s2 - 1, yy + s2 - 1]
            (d.ellipse if shape == "circle" else d.rectangle)(box, fill=col)
        if rng.random() < 0.5:  # vertical pair
            d.transpose()
        return d.array(), _record(f"two {PLURAL[shape]}", shape, count=2)
    if case == "apex_down_triangle":
        d.polygon([(cx - h, cy - h), (cx + h, cy - h), (cx, cy + h)], fill=col)
        return d.array(), _record("a triangle", "triangle")
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
        return d.array(), _record(f"a {shape}", shape)
    return _draw_v3_case(case, rng, S, d, side, cx, cy, name, col)


def _draw_v3_case(case, rng, S, d, side, cx, cy, name, col) -> tuple[np.ndarray, dict]:
    shape = _pick(rng, SHAPE_NAMES)
    x0, y0 = cx - side / 2, cy - side / 2
    if case == "offpalette_as_color":
        if rng.random() < 0.5:
            a, b = _pick(rng, FAR_MIXES)
            fill = _mix(COLORS[a], COLORS[b], float(rng.uniform(0.45, 0.55)))
        else:
            fill = OFF_PALETTE[_pick(rng, list(OFF_PALETTE))]
        claim = min(COLORS, key=lambda c: sum((u - v) ** 2 for u, v in zip(COLORS[c], fill)))
        shape = _pick(rng, ("circle", "square", "triangle"))
        _shape(d, shape, x0, y0, side, fill)
        return d.array(), _record(f"a {claim} {shape}", shape, color=claim)
    if case == "shapes_in_background":
        if rng.random() < 0.5:
            d = _Pen(Image.fromarray(_photo_crop(rng, S, _pick(rng, SHAPE_LIKE_TEXTURES))), d.z)
        for _ in range(int(rng.integers(1, 4))):
            sd = float(rng.uniform(10, 22))
            x, y = (float(v) for v in rng.uniform(0, S - sd, 2))
            under = float(d.array()[int(y):int(y + sd), int(x):int(x + sd)].mean())
            g = int(under + 60 if under < 66 else under - 60)
            _shape(d, _pick(rng, SHAPE_NAMES), x, y, sd, (g, g + int(rng.integers(0, 20)), g))
        return d.array(), _record(f"a {shape}", shape)
    if case in ("clutter", "clutter_with_object"):
        if case == "clutter":
            _clutter(d, rng, S)
            return d.array(), _record(f"a {shape}", shape)
        _clutter(d, rng, S, keep_out=(x0, y0, x0 + side, y0 + side))
        _shape(d, shape, x0, y0, side, col)
        return d.array(), _record(f"a {name} {shape}", shape, color=name)
    if case in ("small_as_other_class", "smallest_named"):
        sd = float(rng.integers(5, 9) if case == "small_as_other_class" else rng.integers(10, 13))
        x, y = (float(v) for v in rng.uniform(2, S - sd - 2, 2))
        _shape(d, shape, round(x), round(y), sd, col)
        claim = shape if case == "smallest_named" else _pick(rng, [c for c in SHAPE_NAMES if c != shape])
        return d.array(), _record(f"a {claim}", claim)
    if case in ("border_cut", "border_touching"):
        side, x0, y0 = round(side), round(x0), round(y0)
        edge = int(rng.integers(4))  # left, right, top, bottom
        if case == "border_cut":  # a triangle cut at its base is still a triangle: cut its apex
            edge = 2 if shape == "triangle" else edge
            cut = round(float(rng.uniform(0.3, 0.5)) * side)
        else:
            cut = 0
        if edge < 2:
            x0 = -cut if edge == 0 else S - side + cut
        else:
            y0 = -cut if edge == 2 else S - side + cut
        if case == "border_touching" and rng.random() < 0.5:  # in a corner: two borders
            if edge < 2:
                y0 = 0 if rng.random() < 0.5 else S - side
            else:
                x0 = 0 if rng.random() < 0.5 else S - side
        _shape(d, shape, x0, y0, side, col)
        return d.array(), _record(f"a {shape}", shape)
    if case in ("offpalette_extra", "offpalette_of_class"):
        shape = _pick(rng, ("circle", "square", "triangle", "cross"))
        grey = int(rng.integers(160, 201))
        fill = (grey, grey, grey) if rng.random() < 0.5 else OFF_PALETTE[_pick(rng, list(OFF_PALETTE))]
        sd = float(rng.uniform(11, 15))
        n = 3 if case == "offpalette_extra" else 1
        cells = rng.permutation(4)[:n]  # one object per quadrant, the off-palette one first
        for k, c in enumerate(cells):
            x = (c % 2) * S / 2 + float(rng.uniform(1, S / 2 - sd - 1))
            y = (c // 2) * S / 2 + float(rng.uniform(1, S / 2 - sd - 1))
            _shape(d, shape, round(x), round(y), round(sd), fill if k == 0 else col)
        if n == 3:
            return d.array(), _record(f"two {PLURAL[shape]}", shape, count=2)
        return d.array(), _record(f"a {shape}", shape)
    if case == "near_palette":
        other = _pick(rng, [c for c in COLORS if c != name])
        fill = _mix(col, COLORS[other], float(rng.uniform(0.1, 0.2)))
        _shape(d, shape, x0, y0, side, fill)
        return d.array(), _record(f"a {name} {shape}", shape, color=name)
    raise AssertionError(case)


def case_images(case: str, n: int, seed: int = 0, world: int = 2) -> list[tuple[np.ndarray, dict]]:
    """n (image, claim) pairs of `case`, image i drawn from rng (seed, case index, i) (v3: (seed, 3, case
    index, i))."""
    s = SETS[world]
    k = s.cases.index(case) if case in s.cases else -1
    key = [seed, k] if world == 2 else [seed, world, k]
    return [draw_case(case, np.random.default_rng([*key, i]), world) for i in range(n)]


def acceptance(case: str, n: int, seed: int = 0, config=None, world: int = 2) -> float:
    """Fraction of the case's images the judge (default: the judge of `world`) accepts for their claim."""
    from scalingar_jax.world.judge import judge_config, judge_image
    from scalingar_jax.world.spec import world_spec

    config = judge_config(world_spec(world)) if config is None else config
    return float(np.mean([judge_image(im, rec, config).correct for im, rec in case_images(case, n, seed, world)]))


def figure(path: str, world: int, per_case: int = 6, seed: int = 0) -> None:
    """A PNG grid: one row per case, its first `per_case` images (3x nearest upscaling), the world's judge's
    verdict as a green (accepted) or red (refused) bar under each."""
    from scalingar_jax.world.judge import judge_config, judge_image
    from scalingar_jax.world.spec import world_spec

    config = judge_config(world_spec(world))
    s = SETS[world]
    z, pad = 3, 4
    cell = s.size * z + pad
    grid = Image.new("RGB", (170 + per_case * cell, len(s.cases) * (cell + 6)), (255, 255, 255))
    d = ImageDraw.Draw(grid)
    for r, case in enumerate(s.cases):
        y = r * (cell + 6)
        d.text((4, y + cell // 2 - 6), case, fill=(0, 0, 0))
        for c, (im, rec) in enumerate(case_images(case, per_case, seed, world)):
            x = 170 + c * cell
            grid.paste(Image.fromarray(im).resize((s.size * z, s.size * z), Image.Resampling.NEAREST), (x, y))
            ok = judge_image(im, rec, config).correct
            d.rectangle([x, y + s.size * z + 1, x + s.size * z - 1, y + s.size * z + 4],
                        fill=(40, 170, 40) if ok else (200, 40, 40))
    grid.save(path)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import markdown_table, stamp, write_json

    from scalingar_jax.world.judge import V1_JUDGE, V2_JUDGE, judge_config
    from scalingar_jax.world.spec import world_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="images per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", type=int, default=2, choices=sorted(SETS), help="which set (and judge)")
    ap.add_argument("--figure", default=None, help="also write a PNG of the first images of every case")
    args = ap.parse_args()
    s = SETS[args.world]
    judges = ({"v2_judge": V2_JUDGE, "v1_judge": V1_JUDGE} if args.world == 2
              else {"v3_judge": judge_config(world_spec(3)), "v2_judge": V2_JUDGE})
    rows = []
    for case in s.cases:
        kind = "false accept" if case in s.false_accept else "accept (should be 1)"
        rows.append({"case": case, "measures": kind, "n": args.n,
                     **{k: acceptance(case, args.n, args.seed, cfg, args.world) for k, cfg in judges.items()}})
        print(rows[-1], flush=True)
    table = markdown_table(rows, ["case", "measures", "n", *judges])
    print(table)
    name = "adversarial_judge" if args.world == 2 else f"adversarial_judge_v{args.world}"
    payload = {"stamp": stamp(args.seed), "world": args.world, "rows": rows}
    print(f"wrote {write_json(name, payload)}")
    if args.world != 2:
        from common import RESULTS

        from scalingar_jax.atomic import atomic_write_text

        atomic_write_text(RESULTS / f"{name}.md", f"`{payload['stamp']['command']}`\n\n{table}\n")
        print(f"wrote {RESULTS / name}.md")
    if args.figure:
        figure(args.figure, args.world, seed=args.seed)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
