"""Procedural renderer of the shapes world: flat-coloured shapes on a dark background.

`render_scene(record, rng)` draws an image that satisfies a GenEval record under this
world's judge: exactly the included objects (each include entry's `count` copies, nothing
else, so every exclude clause holds), the requested colours (a free colour is drawn from the
palette, avoiding `HELDOUT_PAIRS`), and every requested relative position holds under
GenEval's rule with a margin (the relation's component at least 0.5 + `POSITION_MARGIN`).
Objects are square-boxed shapes of 12..18 px at 48x48 (11..13 px when five or six objects
must fit; sizes scale with `image_size / 48`), never overlapping, at least `GAP` px apart
(one 4x4 VQ token at 48x48, so a VQ reconstruction cannot merge two objects), not touching
the border. No anti-aliasing. Deterministic given the numpy Generator.

Version 2 (`spec=WORLD_V2`, `world.spec`): 64x64 images, boxes from `WORLD_V2.size_range`
(a single object 18..30 px), photograph-like backgrounds and grey distractors
(`world.backgrounds`), each object lightly shaded (a linear brightness ramp of at most
+-`spec.shading` in a random direction), and every record checked against the scene split
first (`purpose`: the split the image is for; a scene of another split raises a ValueError
naming it, so training code cannot draw an evaluation scene).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from scalingar_jax.world.geometry import relation_margin, shape_mask
from scalingar_jax.world.prompts import (
    HELDOUT_PAIRS,
    TrainingPromptSampler,
    training_prompt_sampler,
    validate_record,
)
from scalingar_jax.world.spec import WORLD_V1, WorldSpec
from scalingar_jax.world.vocab import BACKGROUND, COLORS, PALETTE, SHAPES

DEFAULT_IMAGE_SIZE = 48
GAP = 4  # min px between object boxes at 48x48 (scaled with the image)
BORDER = 1  # min px between an object box and the image border
POSITION_MARGIN = 0.15
# number of objects -> (min, max) box side at 48x48
_SIZE_RANGE = {1: (13, 18), 2: (13, 18), 3: (12, 16), 4: (12, 15), 5: (11, 13), 6: (11, 12)}


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object: shape `cls`, palette colour `color`, square box of side `size` with its
    top-left pixel at (x, y) (column, row)."""

    cls: str
    color: str
    x: int
    y: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the drawn pixels (pixel-edge coordinates)."""
        m = shape_mask(self.cls, self.size)
        rows = np.flatnonzero(m.any(1))
        cols = np.flatnonzero(m.any(0))
        return (self.x + int(cols[0]), self.y + int(rows[0]),
                self.x + int(cols[-1]) + 1, self.y + int(rows[-1]) + 1)


def _scaled(v: int, image_size: int) -> int:
    return max(1, int(round(v * image_size / DEFAULT_IMAGE_SIZE)))


def _check_record(record: dict) -> None:
    validate_record(record, world=False, where="render record")
    for i, e in enumerate(record["include"]):
        if e["class"] not in SHAPES:
            raise ValueError(f"render request outside the vocabulary: include[{i}].class {e['class']!r} "
                             f"is not a shape {list(SHAPES)}")
        if "color" in e and e["color"] not in PALETTE:
            raise ValueError(f"render request outside the vocabulary: include[{i}].color {e['color']!r} "
                             f"is not a palette colour {list(COLORS)}")
    classes = [e["class"] for e in record["include"]]
    if len(set(classes)) != len(classes):
        raise ValueError(f"the renderer needs distinct classes across include entries, got {classes}")
    for i, e in enumerate(record.get("exclude", [])):
        wanted = sum(x["count"] for x in record["include"] if x["class"] == e["class"])
        if wanted >= e["count"]:
            raise ValueError(
                f"record cannot be satisfied: include asks for {wanted} {e['class']} but "
                f"exclude[{i}] forbids {e['count']} or more"
            )


def layout_scene(
    record: dict,
    rng: np.random.Generator,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    avoid_pairs: frozenset[tuple[str, str]] = HELDOUT_PAIRS,
    max_tries: int = 400,
    spec: WorldSpec = WORLD_V1,
) -> list[SceneObject]:
    """Places the objects of `record` (see the module docstring for the guarantees).

    Returns the objects grouped by include entry, in include order. Raises ValueError for
    an invalid or unsatisfiable record, RuntimeError if no layout fits `image_size`. With
    a v2 `spec`, box sizes and gaps come from the spec (in px at `image_size`).
    """
    _check_record(record)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    specs: list[tuple[int, str, str]] = []  # (entry index, class, colour)
    for i, e in enumerate(record["include"]):
        for _ in range(e["count"]):
            if "color" in e:
                color = e["color"]
            else:
                allowed = [c for c in COLORS if (c, e["class"]) not in avoid_pairs]
                color = allowed[int(rng.integers(len(allowed)))]
            specs.append((i, e["class"], color))
    n = len(specs)
    if spec.version == 1:
        lo, hi = _SIZE_RANGE.get(n, (10, 11))
        lo, hi = _scaled(lo, image_size), _scaled(hi, image_size)
        gap, border = _scaled(GAP, image_size), BORDER
    else:
        lo, hi = spec.sizes(n)
        gap, border = spec.gap, spec.border
    constraints = [(i, e["position"][0], e["position"][1])
                   for i, e in enumerate(record["include"]) if "position" in e]
    for top in range(hi, lo - 1, -1):  # shrink the objects if nothing fits
        for _ in range(max_tries):
            sizes = rng.integers(lo, top + 1, size=n)
            objects = _try_place(specs, sizes, rng, image_size, gap, border)
            if objects is not None and _constraints_hold(objects, specs, constraints):
                return objects
    raise RuntimeError(f"could not lay out {n} objects in a {image_size}x{image_size} image")


def _try_place(specs, sizes, rng, image_size, gap, border) -> list[SceneObject] | None:
    placed: list[SceneObject] = []
    for (_, cls, color), s in zip(specs, sizes):
        s = int(s)
        hi = image_size - s - border
        if hi < border:
            return None
        for _ in range(40):
            x, y = (int(v) for v in rng.integers(border, hi + 1, size=2))
            if all(x >= p.x + p.size + gap or p.x >= x + s + gap or
                   y >= p.y + p.size + gap or p.y >= y + s + gap for p in placed):
                placed.append(SceneObject(cls, color, x, y, s))
                break
        else:
            return None
    return placed


def _constraints_hold(objects, specs, constraints) -> bool:
    for i, rel, j in constraints:
        for a, (ia, _, _) in zip(objects, specs):
            if ia != i:
                continue
            for b, (ib, _, _) in zip(objects, specs):
                if ib == j and relation_margin(a.box, b.box, rel) < POSITION_MARGIN:
                    return False
    return True


def render_objects(
    objects: list[SceneObject],
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    rng: np.random.Generator | None = None,
    background_noise: int = 0,
    spec: WorldSpec = WORLD_V1,
) -> np.ndarray:
    """Draws `objects` on the plain background: uint8 (image_size, image_size, 3).
    `background_noise` > 0 adds uniform integer noise in [-noise, noise] to the background
    (needs `rng`). Later objects are drawn over earlier ones (layouts never overlap).
    A v2 `spec` draws a photo-like background with distractors and shades the objects
    (needs `rng`; see the module docstring)."""
    if spec.version != 1:
        return _render_objects_v2(objects, image_size, rng, spec)
    image = np.empty((image_size, image_size, 3), np.int16)
    image[:] = BACKGROUND
    if background_noise:
        if rng is None:
            raise ValueError("background_noise needs an rng")
        image += rng.integers(-background_noise, background_noise + 1, size=image.shape, dtype=np.int16)
    for o in objects:
        _check_object(o, image_size)
        region = image[o.y:o.y + o.size, o.x:o.x + o.size]
        region[shape_mask(o.cls, o.size)] = PALETTE[o.color]
    return np.clip(image, 0, 255).astype(np.uint8)


def _check_object(o: SceneObject, image_size: int) -> None:
    if o.cls not in SHAPES or o.color not in PALETTE:
        raise ValueError(f"render request outside the vocabulary: {o} (shapes {list(SHAPES)}, "
                         f"colours {list(COLORS)})")
    if o.x < 0 or o.y < 0 or o.x + o.size > image_size or o.y + o.size > image_size:
        raise ValueError(f"{o} does not fit a {image_size}x{image_size} image")


def _render_objects_v2(objects, image_size: int, rng: np.random.Generator | None, spec: WorldSpec) -> np.ndarray:
    from scalingar_jax.world.backgrounds import background, draw_distractors

    if rng is None:
        raise ValueError("rendering a v2 image needs an rng (background, distractors, shading)")
    for o in objects:
        _check_object(o, image_size)
    image = background(image_size, rng)
    if rng.random() < spec.distractor_prob:
        boxes = [(o.x, o.y, o.x + o.size, o.y + o.size) for o in objects]
        image = draw_distractors(image, rng, int(rng.integers(1, 3)), boxes, gap=spec.gap)
    out = image.astype(np.float32)
    for o in objects:
        ang = rng.uniform(0, 2 * np.pi)
        v, u = (np.mgrid[:o.size, :o.size] + 0.5) / o.size - 0.5
        shade = 1.0 + spec.shading * 2 * (np.cos(ang) * u + np.sin(ang) * v) / np.sqrt(2)
        region = out[o.y:o.y + o.size, o.x:o.x + o.size]
        m = shape_mask(o.cls, o.size)
        region[m] = (np.asarray(PALETTE[o.color], np.float32) * shade[..., None])[m]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_scene(
    record: dict,
    rng: np.random.Generator,
    image_size: int | None = None,
    *,
    background_noise: int = 0,
    avoid_pairs: frozenset[tuple[str, str]] = HELDOUT_PAIRS,
    spec: WorldSpec = WORLD_V1,
    purpose: str | None = None,
) -> np.ndarray:
    """An image satisfying `record`: uint8 (image_size, image_size, 3). Deterministic given
    `rng` (a numpy Generator). See the module docstring for what "satisfying" means.

    With a spec that splits by scene (v2), `purpose` ("train", "dev", "eval" or "hard") is
    required and must be the record's split (`scenes.check_scene`). `image_size`
    defaults to the spec's (48 for v1, 64 for v2)."""
    if spec.scene_splits:
        from scalingar_jax.world.scenes import check_scene

        _check_record(record)
        if purpose is None:
            raise ValueError("a v2 render needs purpose= one of 'train', 'dev', 'eval', 'hard' "
                             "(the split the image is for; checked against the record's scene)")
        check_scene(record, purpose)
    image_size = spec.image_size if image_size is None else image_size
    objects = layout_scene(record, rng, image_size, avoid_pairs=avoid_pairs, spec=spec)
    return render_objects(objects, image_size, rng=rng, background_noise=background_noise, spec=spec)


@functools.lru_cache(maxsize=1)
def default_sampler() -> TrainingPromptSampler:
    """The training prompt sampler of the default world (built once)."""
    return training_prompt_sampler()


def render_random_scene(
    rng: np.random.Generator,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    sampler: TrainingPromptSampler | None = None,
    background_noise: int = 0,
    spec: WorldSpec = WORLD_V1,
) -> tuple[dict, np.ndarray]:
    """A training example: (record, uint8 (image_size, image_size, 3) image). The record is
    drawn from `sampler` (default: `training_prompt_sampler()`, all six tags, never an
    evaluation prompt; for v2 `scenes.training_prompt_sampler_v2()`, training scenes only,
    and the render refuses any other scene); free colours and placements are random."""
    if spec.scene_splits:
        from scalingar_jax.world.scenes import training_prompt_sampler_v2

        sampler = training_prompt_sampler_v2() if sampler is None else sampler
        record = sampler(rng)
        return record, render_scene(record, rng, spec.image_size, spec=spec, purpose="train")
    sampler = default_sampler() if sampler is None else sampler
    record = sampler(rng)
    return record, render_scene(record, rng, image_size, background_noise=background_noise)


def _resize_linear(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    m = x.shape[axis]
    src = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    shape = [1] * x.ndim
    shape[axis] = n
    f = (src - i0).reshape(shape)
    return np.take(x, i0, axis) * (1 - f) + np.take(x, i1, axis) * f


def degrade(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    blur: float = 1.0,
    noise: float = 8.0,
    pool: int = 1,
    color_shift: float = 0.0,
) -> np.ndarray:
    """A stand-in for a lossy VQ reconstruction of a uint8 (H, W, 3) image, uint8 out:
    `pool` x `pool` average pooling followed by bilinear upsampling (pool=1: none), a
    Gaussian blur of std `blur` px, a per-image RGB shift of std `color_shift`, and per-pixel
    Gaussian noise of std `noise`. For testing the judge's robustness only."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    x = image.astype(np.float32)
    h, w, _ = x.shape
    if pool > 1:
        if h % pool or w % pool:
            raise ValueError(f"pool={pool} must divide the image size {h}x{w}")
        x = x.reshape(h // pool, pool, w // pool, pool, 3).mean((1, 3))
        x = _resize_linear(_resize_linear(x, 0, h), 1, w)
    if blur > 0:
        r = max(1, int(np.ceil(2.5 * blur)))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / blur) ** 2)
        k /= k.sum()
        for axis in (0, 1):
            pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
            xp = np.pad(x, pad, mode="edge")
            x = sum(k[i] * np.take(xp, np.arange(i, i + x.shape[axis]), axis) for i in range(2 * r + 1))
    if color_shift > 0:
        x = x + rng.normal(0.0, color_shift, size=3)
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
