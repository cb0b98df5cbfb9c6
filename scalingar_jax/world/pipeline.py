"""The shapes world as a model bundle: its loader, its manifest, the defaults of new bundles.

A shapes-world bundle is a folder with vq/, gpt/, text/ and optionally reward/ (see
`world.models`) and a `bundle.json` of kind "shapes-world", whose loader in the registry's
table (`scalingar_jax.registry`) is `pipeline_from_bundle`, so `scalingar_jax.load_pipeline(path)`
loads it without the generic code importing the world.
The sampling and scaling defaults of a bundle are those in its `bundle.json`;
`WORLD_SAMPLING` / `WORLD_SCALING` are what `write_world_manifest` puts in a new one (and what
in-memory worlds built without a bundle use).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scalingar_jax.bundle import MANIFEST_FILE, MAX_MANIFEST_BYTES, Bundle, read_bundle, write_manifest
from scalingar_jax.config import SamplingConfig
from scalingar_jax.gpt import decode_layout
from scalingar_jax.inputs import read_json_object
from scalingar_jax.pipeline import Pipeline, load_pipeline
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.world.models import PARTS, load_world, saved_world_version

KIND = "shapes-world"

# The shapes world's defaults, chosen on the DEVELOPMENT prompts of world v3 by
# `experiments/reproduce.py tune` (experiments/results/tune.md): the base CFG scale 3.0 (plain
# sampling's dev accuracy 0.186 at 2.0, 0.203 at 3.0, 0.160 at 5.0, 0.135 at LlamaGen's t2i default
# 7.5) and the termination gate Delta_rec = 2, p = 0.3 (every gate of the grid within 0.01 on dev;
# ties go to fewer tokens). The paper's gate scaled to T = 144 would be Delta_rec = 5
# (32 * 144 / 1024 ~ 5, p = 0.2). checkpoints/shapes/bundle.json records the same values.
WORLD_SAMPLING = SamplingConfig(cfg_scale=3.0, temperature=1.0, top_k=16, top_p=1.0)
WORLD_SCALING = ScalingARConfig(probation_steps=2, p=0.3)


def pipeline_from_bundle(bundle: Bundle, *, with_reward: bool = True) -> Pipeline:
    """The loader of kind "shapes-world": VQ + t2i GPT (per-layer weights) + text encoder
    [+ learned reward] from the bundle's parts, with the bundle's sampling/scaling defaults.
    with_reward: load the reward part if the bundle has one (else the pipeline has no reward,
    and Best-of-N / importance sampling refuse to run)."""
    from scalingar_jax.world.prompts import validate_record
    from scalingar_jax.world.reward import reward_scores
    from scalingar_jax.world.text_encoder import encode_prompts

    parts = ("vq", "gpt", "text") + (("reward",) if with_reward and bundle.has_part("reward") else ())
    unknown = sorted(name for name, _ in bundle.parts if name not in PARTS)
    if unknown:
        raise ValueError(f"{bundle.manifest_path}: unknown shapes-world parts {unknown}; expected {list(PARTS)}")
    absent = [p for p in ("vq", "gpt", "text") if not bundle.has_part(p)]
    if absent:
        raise ValueError(f"{bundle.manifest_path}: a shapes-world bundle needs the parts vq, gpt, text; missing {absent}")
    w = load_world(bundle.root, parts=parts, folders=dict(bundle.parts))

    def condition(prompts):
        return encode_prompts(w.text_params, w.text_cfg, list(prompts))

    def check_record(record):  # the world's vocabulary and phrasings
        validate_record(record, world=True, where="the shapes world")

    reward = None
    if "reward" in parts:
        def reward(images, prompts):
            return np.asarray(reward_scores(w.reward_params, w.reward_cfg, images, list(prompts)))

    return Pipeline(gpt_params=decode_layout(w.gpt_params), gpt_cfg=w.gpt_cfg, vq_params=w.vq_params,
                    vq_cfg=w.vq_cfg, condition=condition, reward=reward, sampling=bundle.sampling,
                    scaling=bundle.scaling, name=bundle.name, check_record=check_record)


def bundle_world_version(path=None) -> int:
    """The world version a shapes-world bundle records: `models.saved_world_version` of each of
    its parts (default bundle: `bundle.default_bundle_path()`). ValueError for a bundle of
    another kind or parts of different versions."""
    bundle = read_bundle(path)
    if bundle.kind != KIND:
        raise ValueError(f"{bundle.manifest_path}: a {bundle.kind!r} bundle, not a {KIND!r} one, has no world version")
    versions = {name: saved_world_version(bundle.root / folder) for name, folder in bundle.parts}
    if len(set(versions.values())) != 1:
        raise ValueError(f"shapes-world bundle {bundle.root} mixes world versions: {versions}")
    return next(iter(versions.values()))


def load_world_pipeline(path=None, *, sampling: SamplingConfig | None = None, scaling: ScalingARConfig | None = None,
                        with_reward: bool = True) -> Pipeline:
    """`load_pipeline(path, ...)` for a bundle that must be a shapes world (the experiments judge
    its images with the world's judge). Raises ValueError for a bundle of another kind."""
    bundle = read_bundle(path)
    if bundle.kind != KIND:
        raise ValueError(f"{bundle.root} holds a {bundle.kind!r} bundle, not a {KIND!r} one")
    return load_pipeline(bundle.root, sampling=sampling, scaling=scaling, with_reward=with_reward)


def write_world_manifest(path, *, sampling: SamplingConfig | None = None, scaling: ScalingARConfig | None = None,
                         name: str | None = None, notes: str | None = None) -> Path:
    """Writes `<path>/bundle.json` for the shapes-world models under `path` (atomically), listing
    the parts present. Defaults not given are kept from an existing manifest, else
    `WORLD_SAMPLING` / `WORLD_SCALING`. Returns the manifest's path.
    Raises FileNotFoundError if vq/, gpt/ or text/ is missing."""
    from scalingar_jax.checkpoint import CONFIG_FILE, read_config

    root = Path(path)
    old = {}
    if (root / MANIFEST_FILE).is_file():
        old = read_json_object(root / MANIFEST_FILE, MAX_MANIFEST_BYTES, str(root / MANIFEST_FILE))
        if not isinstance(old.get("sampling"), dict):
            raise ValueError(f"{root / MANIFEST_FILE}: not a bundle manifest with 'sampling'; fix or delete it")
    present = [p for p in PARTS if (root / p / CONFIG_FILE).is_file()]
    missing = [p for p in ("vq", "gpt", "text") if p not in present]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(m + '/' for m in missing)}: not a shapes-world bundle")
    _, gpt_cfg, _ = read_config(root / "gpt")
    _, vq_cfg, _ = read_config(root / "vq")
    if sampling is None:
        sampling = SamplingConfig(**old["sampling"]) if old else WORLD_SAMPLING
    if scaling is None:  # an existing manifest without "scaling" means the paper's defaults
        scaling = ScalingARConfig(**old.get("scaling", {})) if old else WORLD_SCALING
    return write_manifest(root, kind=KIND, image_size=gpt_cfg.grid_size * vq_cfg.downsample,
                          parts={p: p for p in present}, sampling=sampling, scaling=scaling,
                          name=name or old.get("name"), notes=notes or old.get("notes"))
