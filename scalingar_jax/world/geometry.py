"""Geometry shared by the renderer and the judge: shape masks and GenEval's relative-position
rule. Plain numpy.

Boxes are (x0, y0, x1, y1) in pixel-edge coordinates: a blob covering columns 3..7 and
rows 10..14 has box (3, 10, 8, 15). y grows downwards (image rows), as in GenEval.
"""
from __future__ import annotations

import numpy as np

# GenEval's default `position_threshold` (evaluation/evaluate_images.py).
POSITION_THRESHOLD: float = 0.1
# Half-width of the cross's arms, as a fraction of its box side.
CROSS_HALF_ARM: float = 0.19


def shape_mask(cls: str, height: int, width: int | None = None) -> np.ndarray:
    """bool (height, width) mask of shape `cls` filling a height x width box.

    circle: inscribed ellipse; square: the full box; triangle: apex at the top centre, base
    along the bottom edge; cross: a plus whose arms are round(2*CROSS_HALF_ARM*side) pixels wide (centred,
    half a pixel off-centre when the parities differ).
    A pixel belongs to the shape when its centre does.
    """
    width = height if width is None else width
    if height < 1 or width < 1:
        raise ValueError(f"shape box must be at least 1x1, got {height}x{width}")
    v = (np.arange(height) + 0.5)[:, None] / height  # 0 top .. 1 bottom
    u = (np.arange(width) + 0.5)[None, :] / width
    if cls == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif cls == "square":
        m = np.ones((height, width), bool)
    elif cls == "triangle":
        m = np.abs(u - 0.5) <= v / 2 + 1e-9
    elif cls == "cross":
        m = _band(height)[:, None] | _band(width)[None, :]
    else:
        raise ValueError(f"unknown shape {cls!r}")
    return np.broadcast_to(m, (height, width)).copy()


def _band(n: int) -> np.ndarray:
    """bool (n,): the central run of max(2, round(2 * CROSS_HALF_ARM * n)) pixels."""
    w = min(n, max(2, int(round(2 * CROSS_HALF_ARM * n))))
    start = (n - w) // 2
    band = np.zeros(n, bool)
    band[start:start + w] = True
    return band


def relation_components(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> tuple[float, float]:
    """GenEval's normalised, size-discounted offset (dx, dy) of box A relative to box B.

    offset = centre_a - centre_b; each axis is shrunk towards 0 by threshold * (size_a +
    size_b) along that axis (clamped at 0, sign kept), then divided by |offset| (the
    Euclidean norm of the raw offset). Returns (0, 0) when the shrunk offset vanishes
    (both |components| < 1e-3).
    """
    a = np.asarray(box_a, np.float64)[:4]
    b = np.asarray(box_b, np.float64)[:4]
    center_a = (a[:2] + a[2:]) / 2
    center_b = (b[:2] + b[2:]) / 2
    dims = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return 0.0, 0.0
    dx, dy = revised / np.linalg.norm(offset)
    return float(dx), float(dy)


def relative_position(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """The set of GenEval relations of A relative to B ("left of", "right of", "above",
    "below"): from `relation_components`, dx < -0.5 -> left of, dx > 0.5 -> right of,
    dy < -0.5 -> above, dy > 0.5 -> below (strict). May be empty or hold two relations
    (diagonal)."""
    dx, dy = relation_components(box_a, box_b, threshold)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def relation_margin(box_a, box_b, relation: str, threshold: float = POSITION_THRESHOLD) -> float:
    """How far past GenEval's 0.5 cut the relation's component lies (positive = holds)."""
    dx, dy = relation_components(box_a, box_b, threshold)
    value = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}
    if relation not in value:
        raise ValueError(f"unknown relation {relation!r}")
    return value[relation] - 0.5
