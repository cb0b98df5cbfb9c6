"""Photograph-like, low-saturation backgrounds and grey distractors for the v2 shapes world.

Every background pixel lies in the BACKGROUND GAMUT: max(R, G, B) <= `BG_MAX_VALUE` and
max - min <= `BG_MAX_CHROMA` (a dim, nearly grey colour). Each is built as an integer
luminance L in [0, BG_MAX_VALUE - BG_MAX_CHROMA] plus a per-channel tint in
[0, BG_MAX_CHROMA], so the gamut holds by construction; the v2 judge's colour classifier
labels no colour of that gamut as a palette colour (tested exhaustively over the gamut), so
no background pixel or distractor can be mistaken for an object.

Kinds (`BACKGROUND_KINDS`), drawn uniformly:
- "photo": a random square crop (side 64 px .. the photo's short side), scaled to the
  image, randomly flipped / transposed, of one of the photographs scikit-image ships
  (`PHOTOS`; needs scikit-image, the `world` extra), its luminance contrast-stretched into
  a random low range and its own colour kept at a fraction of its saturation.
- "gradient": a linear luminance ramp in a random direction, plus mild noise.
- "bands": a wall and a floor (two luminance bands split at a random height, the floor
  darkening towards the bottom), plus mild noise.
- "noise": low-frequency value noise (a random coarse grid, bilinearly upsampled).

Distractors (`draw_distractors`): ellipses, rings, bars, pentagons, stars and blobs, none of
them a shape of the vocabulary, in gamut colours that contrast with the local background.
"""
from __future__ import annotations

import functools

import numpy as np

BG_MAX_VALUE = 140
BG_MAX_CHROMA = 32
_L_MAX = BG_MAX_VALUE - BG_MAX_CHROMA
BACKGROUND_KINDS: tuple[str, ...] = ("photo", "gradient", "bands", "noise")
PHOTOS: tuple[str, ...] = ("brick", "coffee", "grass", "gravel", "rocket", "chelsea", "camera", "astronaut",
                           "coins", "moon", "text", "cell")
DISTRACTOR_KINDS: tuple[str, ...] = ("ellipse", "ring", "bar", "pentagon", "star", "blob")


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((luminance float32 (H, W) in [0, 1], chroma float32 (H, W, 3) = rgb - luminance), ...)."""
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("photo backgrounds need scikit-image: pip install 'scalingar-jax[world]'") from err
    out = []
    for name in PHOTOS:
        x = np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, -1)
        x = x[..., :3]
        lum = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
        out.append((lum, x - lum[..., None]))
    return tuple(out)


def _resize(x: np.ndarray, n: int) -> np.ndarray:
    """(m, m, ...) float -> (n, n, ...): box-average when shrinking by an integer factor
    k >= 2 first, then bilinear sampling of pixel centres."""
    m = x.shape[0]
    k = m // n
    if k >= 2:
        x = x[:k * (m // k), :k * (m // k)].reshape(m // k, k, m // k, k, *x.shape[2:]).mean((1, 3))
        m = x.shape[0]
    src = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    f = (src - i0).astype(np.float32)
    fr = f.reshape(-1, *([1] * (x.ndim - 1)))
    x = x[i0] * (1 - fr) + x[i1] * fr
    fc = f.reshape(1, -1, *([1] * (x.ndim - 2)))
    return x[:, i0] * (1 - fc) + x[:, i1] * fc


def to_gamut(lum: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """luminance float (H, W) in [0, 1] and tint float (H, W, 3) in [0, 1] -> uint8
    (H, W, 3) in the background gamut: round(L * (BG_MAX_VALUE - BG_MAX_CHROMA)) +
    round(tint * BG_MAX_CHROMA), each term clipped to its range first."""
    L = np.round(np.clip(lum, 0.0, 1.0) * _L_MAX).astype(np.int16)
    t = np.round(np.clip(tint, 0.0, 1.0) * BG_MAX_CHROMA).astype(np.int16)
    return (L[..., None] + t).astype(np.uint8)


def in_gamut(image: np.ndarray) -> np.ndarray:
    """bool (H, W): which pixels of a uint8 (H, W, 3) image lie in the background gamut."""
    x = np.asarray(image).astype(np.int16)
    return (x.max(-1) <= BG_MAX_VALUE) & (x.max(-1) - x.min(-1) <= BG_MAX_CHROMA)


def _stretch(lum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Maps lum's 2..98 percentile range onto a random low-contrast range within [0, 1]."""
    lo, hi = np.percentile(lum, [2, 98])
    x = (lum - lo) / max(float(hi - lo), 1e-3)
    a = rng.uniform(0.05, 0.55)
    b = min(1.0, a + rng.uniform(0.25, 0.6))
    return a + (b - a) * np.clip(x, 0.0, 1.0)


def _tint(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random near-uniform tint float (size, size, 3) in [0, 1] (a faint colour cast)."""
    base = rng.uniform(0.2, 0.8, size=3)
    return np.broadcast_to(base, (size, size, 3)).astype(np.float32)


def _value_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    return _resize(rng.random((cells, cells)).astype(np.float32), size)


def background(size: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A background: uint8 (size, size, 3) in the background gamut (module docstring).
    `kind` one of `BACKGROUND_KINDS` (default: drawn uniformly from rng)."""
    if kind is None:
        kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")
    tint = _tint(size, rng)
    if kind == "photo":
        photos = _photos()
        lum, chroma = photos[int(rng.integers(len(photos)))]
        h, w = lum.shape
        side = int(rng.integers(min(size, h, w), min(h, w) + 1))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = np.concatenate([lum[y:y + side, x:x + side, None], chroma[y:y + side, x:x + side]], -1)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.3:
            crop = crop[::-1]
        if rng.random() < 0.3:
            crop = crop.transpose(1, 0, 2)
        crop = _resize(np.ascontiguousarray(crop), size)
        lum = _stretch(crop[..., 0], rng)
        tint = np.clip(tint + rng.uniform(0.5, 2.0) * crop[..., 1:], 0.0, 1.0)
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
        ramp = np.cos(ang) * xx + np.sin(ang) * yy
        a, b = sorted(rng.uniform(0.05, 0.95, 2))
        lum = a + (b - a) * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        lum = lum + rng.normal(0, 0.02, (size, size))
    elif kind == "bands":
        split = int(rng.integers(size // 4, 3 * size // 4))
        wall, floor = rng.uniform(0.1, 0.9, 2)
        rows = np.arange(size, dtype=np.float32)[:, None]
        fade = np.clip((rows - split) / size, 0, 1) * rng.uniform(-0.4, 0.4)
        lum = np.where(rows < split, wall, floor + fade) + 0.05 * (_value_noise(size, 8, rng) - 0.5)
        lum = np.broadcast_to(lum, (size, size)) + rng.normal(0, 0.02, (size, size))
    else:
        lum = _stretch(_value_noise(size, int(rng.integers(3, 10)), rng)
                       + 0.3 * _value_noise(size, int(rng.integers(10, 24)), rng), rng)
    return to_gamut(lum, tint)


def polygon_mask(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (height, width): pixel centres inside the polygon (even-odd rule). vertices:
    float (V, 2) of (x, y) in pixel-edge coordinates."""
    v = np.asarray(vertices, np.float64)
    ys, xs = np.mgrid[:height, :width] + 0.5
    inside = np.zeros((height, width), bool)
    for (x0, y0), (x1, y1) in zip(v, np.roll(v, -1, 0)):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < xc)
    return inside


def distractor_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """bool (size, size) mask of a distractor of `kind` (one of `DISTRACTOR_KINDS`)."""
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
    if kind == "ellipse":  # elongated: aspect 2..3, never read as a circle
        r = rng.uniform(2.0, 3.0)
        m = (xx / 0.5) ** 2 + (yy * r / 0.5) ** 2 <= 1
    elif kind == "ring":
        rr = np.hypot(xx, yy)
        m = (rr <= 0.5) & (rr >= 0.3)
    elif kind == "bar":
        m = np.abs(yy) <= rng.uniform(0.06, 0.12)
    elif kind in ("pentagon", "star"):
        n = 5 if kind == "pentagon" else 10
        t = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n
        rad = np.full(n, 0.5 * size)
        if kind == "star":
            rad[1::2] *= 0.4
        verts = np.stack([size / 2 + rad * np.cos(t), size / 2 + rad * np.sin(t)], 1)
        m = polygon_mask(verts, size, size)
    elif kind == "blob":
        t = np.arctan2(yy, xx)
        k = rng.normal(0, 0.08, 4)
        r = 0.32 + k[0] * np.cos(2 * t + k[1] * 20) + k[2] * np.sin(3 * t + k[3] * 20)
        m = np.hypot(xx, yy) <= r
    else:
        raise ValueError(f"unknown distractor kind {kind!r}; expected one of {DISTRACTOR_KINDS}")
    if rng.random() < 0.5:
        m = m.T
    return m


def draw_distractors(image: np.ndarray, rng: np.random.Generator, count: int,
                     keep_out: list[tuple[int, int, int, int]], gap: int = 2) -> np.ndarray:
    """Draws up to `count` distractors (kinds uniform, side 8..image/4 px) into a copy of the
    uint8 (S, S, 3) background, each outside the boxes `keep_out` (x0, y0, x1, y1) by `gap`
    px, in a gamut colour whose luminance contrasts with the background under it."""
    out = image.copy()
    s = image.shape[0]
    for _ in range(count):
        kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
        size = int(rng.integers(8, max(9, s // 4) + 1))
        for _ in range(20):
            x, y = (int(v) for v in rng.integers(0, s - size + 1, 2))
            if all(x >= b[2] + gap or b[0] >= x + size + gap or y >= b[3] + gap or b[1] >= y + size + gap
                   for b in keep_out):
                break
        else:
            continue
        m = distractor_mask(kind, size, rng)
        under = out[y:y + size, x:x + size].astype(np.float32).mean() / BG_MAX_VALUE
        lum = (under + rng.uniform(0.3, 0.5)) % 1.0
        color = to_gamut(np.full((1, 1), lum), rng.uniform(0, 1, (1, 1, 3)))[0, 0]
        out[y:y + size, x:x + size][m] = color
        keep_out = keep_out + [(x, y, x + size, y + size)]
    return out
