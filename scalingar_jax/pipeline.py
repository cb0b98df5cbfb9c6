"""Prompts in, images out: a `Pipeline` bundles a GPT, a VQ decoder, a conditioner and an
optional reward, and `generate` runs any strategy on it.

    from scalingar_jax import generate, load_pipeline
    pipe = load_pipeline()                     # the embedded shapes-world checkpoint
    out = generate(pipe, ["a photo of a red circle left of a blue square"], strategy="scalingar",
                   num_candidates=8, seed=0)
    out.images        # (P, H, W, 3) uint8, the selected image per prompt
    out.result        # StrategyResult: winner, tokens_used, per-step trajectories, ...
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax import vq
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.gpt import unstack_layers
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling import strategies as S

Conditioner = Callable[[Sequence[str]], tuple[Any, Any]]  # prompts -> (cond, cond_mask or None)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A generator: GPT + VQ + conditioner (+ reward for Best-of-N / importance sampling).
    gpt_params: stacked or per-layer (`gpt.unstack_layers`, what `world_pipeline` loads: the
    decode loops then never copy weights)."""

    gpt_params: Any
    gpt_cfg: GPTConfig
    vq_params: Any
    vq_cfg: vq.VQConfig
    condition: Conditioner
    reward: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None
    sampling: SamplingConfig = SamplingConfig()
    scaling: ScalingARConfig = ScalingARConfig()
    name: str = "pipeline"

    def decode_images(self, tokens) -> np.ndarray:
        """Image tokens (B, T) -> uint8 images (B, H, W, 3)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.gpt_cfg.block_size:
            raise ValueError(f"tokens must have shape (B, {self.gpt_cfg.block_size}), got {tokens.shape}")
        g = self.gpt_cfg.grid_size
        images = _decode_jit(self.vq_params, self.vq_cfg, jnp.asarray(tokens.reshape(-1, g, g), jnp.int32))
        return np.asarray(jnp.round((images + 1.0) * 127.5).clip(0, 255).astype(jnp.uint8))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_jit(params, cfg, codes):
    return vq.decode_codes(params, cfg, codes)


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """images (P, H, W, 3) uint8 selected per prompt; candidates (P, N, H, W, 3) uint8 (pruned
    candidates' images decode their partial grids, with ungenerated tokens shown as code 0);
    result: the strategy's `StrategyResult`; seconds: wall clock of the token loop + selection."""

    images: np.ndarray
    candidates: np.ndarray | None
    result: S.StrategyResult
    prompts: tuple[str, ...]
    strategy: str
    seconds: float


def generate(pipe: Pipeline, prompts: Sequence[str], *, strategy: str = "scalingar", num_candidates: int = 8,
             seed: int = 0, sampling: SamplingConfig | None = None, scaling: ScalingARConfig | None = None,
             compaction: bool | str = True, prompt_ids=None, first_candidate: int = 0, decode_candidates: bool = False,
             on_progress: Callable[[int], None] | None = None, mesh=None, **strategy_kwargs) -> GenerationOutput:
    """Runs `strategy` for every prompt (see `scalingar_jax.scaling.strategies.STRATEGIES`).

    prompts: P strings; num_candidates: N >= 1; seed: the base PRNG seed (a candidate's key is
    derived from (seed, prompt id, candidate id)); sampling/scaling default to the pipeline's.
    mesh: optional `scalingar_jax.sharding.make_mesh(prompt_shards, cand_shards)`: prompts and
    candidates are sharded over it with `shard_map` (same results as one device).
    compaction: False, True / "pow2" or "fine" (ScalingAR's pool buckets; results are the same).
    first_candidate: global id of the first candidate (reward-free strategies): with N = 1 and
    first_candidate = c, plain sampling decodes candidate c of an N-candidate run (same key; the
    tokens can differ where a different batch size rounds differently).
    Extra keyword arguments go to importance sampling (checkpoints, tau, fill_code).
    """
    import time

    if strategy not in S.STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(S.STRATEGIES)}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    cond, cond_mask = pipe.condition(prompts)
    sampling = pipe.sampling if sampling is None else sampling
    scaling = pipe.scaling if scaling is None else scaling
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    # the run_* entries validate every argument and pick one device or `mesh` (`S.make_executor`)
    common = dict(key=key, num_candidates=num_candidates, sampling=sampling, prompt_ids=prompt_ids, mesh=mesh,
                  on_progress=on_progress)
    if strategy in ("best_of_n", "importance_sampling"):
        if pipe.reward is None:
            raise ValueError(f"strategy {strategy!r} needs a reward function and this pipeline has none")
        if first_candidate != 0:
            raise ValueError(f"first_candidate applies to plain, confidence_only and scalingar, not {strategy!r}")
        fn = S.run_best_of_n if strategy == "best_of_n" else S.run_importance_sampling
        res = fn(pipe.gpt_params, pipe.gpt_cfg, cond, cond_mask, prompts=prompts, reward_fn=pipe.reward,
                 decode_fn=pipe.decode_images, **common, **strategy_kwargs)
    else:
        if strategy_kwargs:
            raise TypeError(f"unexpected arguments for {strategy!r}: {sorted(strategy_kwargs)}")
        res = S.run_token_strategy(pipe.gpt_params, pipe.gpt_cfg, cond, cond_mask, strategy=strategy,
                                   scaling=scaling, compaction=compaction, first_candidate=first_candidate, **common)
    jax.block_until_ready(res.tokens)
    seconds = time.perf_counter() - t0
    images = pipe.decode_images(np.asarray(res.tokens))
    candidates = None
    if decode_candidates:
        all_tokens = np.asarray(res.all_tokens)
        P, N, T = all_tokens.shape
        candidates = pipe.decode_images(np.where(all_tokens < 0, 0, all_tokens).reshape(P * N, T))
        candidates = candidates.reshape(P, N, *candidates.shape[1:])
    return GenerationOutput(images=images, candidates=candidates, result=res, prompts=tuple(prompts),
                            strategy=strategy, seconds=seconds)


# The shapes world's defaults, chosen on the DEVELOPMENT prompts by `experiments/reproduce.py tune`
# (experiments/results/tune.md): the base CFG scale 2.0 (plain sampling's dev accuracy 0.237 at 2.0,
# 0.222 at 3.0, 0.166 at 5.0, 0.156 at LlamaGen's t2i default 7.5) and the termination gate
# Delta_rec = 2, p = 0.2. The paper's gate scaled to T = 144 would be ScalingARConfig(probation_steps=5)
# (32 * 144 / 1024 ~ 5, p = 0.2).
WORLD_SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=16, top_p=1.0)
WORLD_SCALING = ScalingARConfig(probation_steps=2, p=0.2)


def world_pipeline(path=None, *, sampling: SamplingConfig | None = None,
                   scaling: ScalingARConfig | None = None, with_reward: bool = True) -> Pipeline:
    """The shapes-world pipeline (VQ + t2i GPT + text encoder [+ learned reward]) from `path`
    (default `checkpoints/shapes` or $SCALINGAR_CHECKPOINT). Sampling/scaling defaults come from
    the checkpoint's `gpt/config.json` meta ("sampling", "scaling") when present."""
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.world.models import default_world_path, load_world
    from scalingar_jax.world.reward import reward_scores
    from scalingar_jax.world.text_encoder import encode_prompts

    parts = ("vq", "gpt", "text", "reward") if with_reward else ("vq", "gpt", "text")
    w = load_world(path, parts=parts)
    root = default_world_path() if path is None else path
    _, _, meta = read_config(f"{root}/gpt")
    if sampling is None:
        sampling = SamplingConfig(**meta["sampling"]) if isinstance(meta.get("sampling"), dict) else WORLD_SAMPLING
    if scaling is None:
        scaling = ScalingARConfig(**meta["scaling"]) if isinstance(meta.get("scaling"), dict) else WORLD_SCALING

    def condition(prompts):
        return encode_prompts(w.text_params, w.text_cfg, list(prompts))

    reward = None
    if with_reward:
        def reward(images, prompts):
            return np.asarray(reward_scores(w.reward_params, w.reward_cfg, images, list(prompts)))

    return Pipeline(gpt_params=unstack_layers(w.gpt_params), gpt_cfg=w.gpt_cfg, vq_params=w.vq_params, vq_cfg=w.vq_cfg,
                    condition=condition, reward=reward, sampling=sampling, scaling=scaling,
                    name=f"shapes-world ({w.path})")


def load_pipeline(path=None, **overrides) -> Pipeline:
    """The shapes-world pipeline from `path` (default: the embedded `checkpoints/shapes`)."""
    return world_pipeline(path, **overrides)
