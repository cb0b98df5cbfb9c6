"""Which version of the shapes world: a frozen `WorldSpec` selects v1 or v2 behaviour.

- v1 (`WORLD_V1`, the shipped default checkpoint `checkpoints/shapes`): 48x48 images, a
  12x12 token grid, flat dark backgrounds, prompt sets held out by prompt STRING only.
- v2 (`WORLD_V2`, issue 19): 64x64 images, a 16x16 token grid (LlamaGen's 256 px grid),
  photograph-like low-saturation backgrounds with occasional grey distractors, larger lightly
  shaded objects (a single object 18..30 px), prompt sets split by SCENE
  (`world.scenes`): evaluation scenes never occur in any training data or in the
  development split, under any wording.

Everything that differs between the versions reads one of these specs; no module is copied.
A checkpoint records its version in the meta of every part (`META_KEY`; absent = 1).
"""
from __future__ import annotations

import dataclasses

META_KEY = "world_version"


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Static description of one version of the world.

    version: 1 or 2. image_size: image side in px. grid_size: VQ token grid side
    (image_size / 4). background: "flat" (v1) or "photo" (v2, `world.backgrounds`).
    scene_splits: prompt sets and training data split by scene (`world.scenes`).
    size_range: ((lo, hi), ...) box side in px for a scene of n objects at index n - 1
    (the last entry serves larger n). gap: min px between object boxes (one 4x4 token).
    border: min px between a box and the image border. distractor_prob: chance of grey
    out-of-vocabulary distractors in an image. shading: max relative brightness change
    across an object (0: flat colour).
    """

    version: int
    image_size: int
    grid_size: int
    background: str
    scene_splits: bool
    size_range: tuple[tuple[int, int], ...]
    gap: int
    border: int
    distractor_prob: float
    shading: float

    def sizes(self, n: int) -> tuple[int, int]:
        """(lo, hi) box side in px for a scene of n >= 1 objects."""
        if n < 1:
            raise ValueError(f"a scene has at least one object, got {n}")
        return self.size_range[min(n, len(self.size_range)) - 1]


WORLD_V1 = WorldSpec(version=1, image_size=48, grid_size=12, background="flat", scene_splits=False,
                     size_range=((13, 18), (13, 18), (12, 16), (12, 15), (11, 13), (11, 12), (10, 11)),
                     gap=4, border=1, distractor_prob=0.0, shading=0.0)
WORLD_V2 = WorldSpec(version=2, image_size=64, grid_size=16, background="photo", scene_splits=True,
                     size_range=((18, 30), (16, 24), (14, 20), (13, 17), (12, 15), (11, 13), (10, 12)),
                     gap=4, border=1, distractor_prob=0.35, shading=0.1)
SPECS: dict[int, WorldSpec] = {1: WORLD_V1, 2: WORLD_V2}


def world_spec(version) -> WorldSpec:
    """The `WorldSpec` of version 1 or 2 (an int or "v1"/"v2"); ValueError otherwise."""
    v = version
    if isinstance(v, str) and v.lower() in ("v1", "v2", "1", "2"):
        v = int(v.lower().lstrip("v"))
    if isinstance(v, bool) or v not in SPECS:
        raise ValueError(f"unknown shapes-world version {version!r}; known versions: {sorted(SPECS)} "
                         "(1: flat 48x48 world, 2: photo backgrounds, 64x64, scene splits)")
    return SPECS[v]
