"""Rewards for real images: CLIPScore in JAX, and user plug-ins (`--reward module:function`).

A reward is a function `reward(images, prompts) -> scores`: images uint8 (B, H, W, 3) RGB,
prompts a sequence of B strings, scores (B,) finite numbers, higher = better. Best-of-N keeps the
candidate with the highest score; importance sampling resamples candidates ~ exp(score / tau).

    fn = load_reward("clipscore:/models/clip-vit-large-patch14")   # CLIPScore, Flax CLIP
    fn = load_reward("my_rewards:image_reward")                    # any importable module
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax import clip

__all__ = ["RewardFn", "CLIPSCORE_WEIGHT", "clipscore", "load_reward", "checked_reward"]

RewardFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]
# Hessel et al. 2021 (CLIPScore): CLIP-S(c, v) = w * max(cos(c, v), 0) with w = 2.5.
CLIPSCORE_WEIGHT = 2.5


def _check_batch(images, prompts, what: str) -> tuple[np.ndarray, list[str]]:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what}: images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    if isinstance(prompts, str):
        raise TypeError(f"{what}: prompts must be a sequence of B strings, not one str")
    prompts = list(prompts)
    if len(prompts) != images.shape[0] or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{what}: got {images.shape[0]} images but {len(prompts)} prompts (one str per image)")
    return images, prompts


@functools.partial(jax.jit, static_argnames=("cfg", "weight", "precision"))
def _clipscore_jit(params, pixels, ids, *, cfg, weight, precision):
    model = clip.CLIPModel(cfg, precision)
    t = model.apply({"params": params}, ids, method="text_features")
    i = model.apply({"params": params}, pixels, method="image_features")
    return weight * jnp.maximum(clip.cosine_similarity(i, t), 0.0)


def clipscore(model_dir: str | os.PathLike, *, weight: float = CLIPSCORE_WEIGHT,
              precision=jax.lax.Precision.HIGHEST) -> RewardFn:
    """CLIPScore with the HF CLIP model in `model_dir` (config.json, weights, vocab.json, merges.txt,
    optional preprocessor_config.json), loaded torch-free into the Flax CLIP of `scalingar_jax.clip`.

    Returns reward(images uint8 (B, H, W, 3), B prompts) -> (B,) float64 scores
    `weight * max(cos(image, text), 0)` (Hessel et al. 2021: weight 2.5, range [0, 2.5]). Images are
    preprocessed as CLIPImageProcessor (Pillow, on the host), prompts tokenized as CLIPTokenizer
    (77 ids, longer prompts truncated); the model runs as one jitted function, compiled once per
    batch size. precision: of the matmuls (default HIGHEST: float32 on GPU/TPU too, where the
    backend default rounds to bfloat16/TF32; None for the backend's default). Raises
    FileNotFoundError / ValueError for a folder that is not a usable CLIP.
    """
    if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight > 0):
        raise ValueError(f"clipscore: weight must be a finite number > 0, got {weight!r}")
    model_dir = os.fspath(model_dir)
    params, cfg = clip.load_hf_clip(model_dir)
    tokenizer = clip.load_tokenizer(model_dir, max_length=cfg.max_position_embeddings)
    if tokenizer.eos_id >= cfg.vocab_size or len(tokenizer.vocab) > cfg.vocab_size:
        raise ValueError(f"{model_dir}: the tokenizer has {len(tokenizer.vocab)} tokens but the model's vocab_size "
                         f"is {cfg.vocab_size}")
    image_cfg = clip.load_image_config(model_dir, cfg)
    params = jax.device_put(params)

    def reward(images, prompts) -> np.ndarray:
        images, prompts = _check_batch(images, prompts, "clipscore")
        pixels = clip.preprocess(images, image_cfg)
        scores = _clipscore_jit(params, jnp.asarray(pixels), jnp.asarray(tokenizer(prompts)), cfg=cfg,
                                weight=float(weight), precision=precision)
        return np.asarray(scores, np.float64)

    reward.__name__ = reward.__qualname__ = "clipscore"
    return reward


def checked_reward(fn: Callable, name: str) -> RewardFn:
    """`fn` wrapped so that its scores are checked: a ValueError naming the plug-in `name` when
    they are not B finite numbers for B images; the scores come back as (B,) float64."""

    def reward(images, prompts) -> np.ndarray:
        images, prompts = _check_batch(images, prompts, f"reward plug-in {name}")
        b = images.shape[0]
        scores = fn(images, prompts)
        try:
            arr = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"reward plug-in {name} returned {type(scores).__name__}, not numbers: it must return "
                             f"one score per image, shape ({b},)") from None
        if arr.shape != (b,):
            raise ValueError(f"reward plug-in {name} returned shape {arr.shape} for {b} images; it must return one "
                             f"score per image, shape ({b},)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"reward plug-in {name} returned {int(np.sum(~np.isfinite(arr)))} non-finite score(s) "
                             f"(NaN or infinity) for {b} images")
        return arr

    reward.__name__ = reward.__qualname__ = name
    return reward


_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_REFERENCE = re.compile(f"{_DOTTED}:{_DOTTED}")  # what --reward module:function accepts


def _import_function(spec: str):
    """The object `spec` = "module:name" (name may be dotted) names: what the user typed after
    --reward, the one place a "module:function" is imported (files never name code). ValueError
    naming the spec for a malformed one or a module or name not found."""
    if not _REFERENCE.fullmatch(spec):
        raise ValueError(f"--reward {spec[:200]!r} is not a 'module:function' reference")
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--reward: cannot import module {module_name!r} of {spec!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--reward: module {module_name!r} has no {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def load_reward(spec: str) -> RewardFn:
    """The reward a `--reward` spec names:

    - `clipscore:PATH`: CLIPScore (`clipscore`) with the HF CLIP folder at PATH;
    - `module:function` (dotted names allowed; any importable module, e.g. one on PYTHONPATH):
      `function(images uint8 (B, H, W, 3), prompts list of B str) -> scores (B,)`, higher = better.

    The result checks every batch of scores (`checked_reward`). Raises ValueError (malformed spec,
    module or function not found, not callable with two arguments, a CLIP folder that does not
    load) or FileNotFoundError (no CLIP folder or a file of it missing), naming the spec.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"--reward {spec!r}: expected 'clipscore:PATH' or 'module:function'")
    head, _, rest = spec.partition(":")
    if head == "clipscore":
        if not rest:
            raise ValueError("--reward clipscore:PATH: give the folder of a Hugging Face CLIP model")
        try:
            return checked_reward(clipscore(rest), spec)
        except (OSError, ValueError, KeyError, TypeError) as e:
            msg = f"--reward {spec}: {e.args[0] if isinstance(e, KeyError) and e.args else e}"
            raise (FileNotFoundError(msg) if isinstance(e, FileNotFoundError) else ValueError(msg)) from None
    fn = _import_function(spec)
    if not callable(fn):
        raise ValueError(f"--reward {spec!r} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ValueError(f"--reward {spec!r} cannot be called as fn(images, prompts)") from None
    except ValueError:
        pass  # no signature to inspect (some builtins): checked on the first call
    return checked_reward(fn, spec)
