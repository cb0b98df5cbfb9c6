"""Prompts in, images out: a `Pipeline` holds a GPT, a VQ decoder, a conditioner, an optional
reward and its sampling defaults; `generate` runs any strategy on it; `load_pipeline` loads one
from a model bundle (a folder with `bundle.json`, see `scalingar_jax.bundle`).

    from scalingar_jax import generate, load_pipeline
    pipe = load_pipeline()                     # the default bundle: the embedded shapes world
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
from scalingar_jax.bundle import read_bundle
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.images import to_uint8
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling import strategies as S

Conditioner = Callable[[Sequence[str]], tuple[Any, Any]]  # prompts -> (cond, cond_mask or None)


UNGENERATED_GREY = 128  # candidate pixels whose tokens were never generated (pruned early)
DECODE_CHUNK = 16  # images the VQ decodes per call (its full-resolution activations are the largest)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A generator: GPT + VQ + conditioner (+ reward for Best-of-N / importance sampling).
    gpt_params: stacked or per-layer (`gpt.decode_layout`, what bundle loaders give: the
    decode loops then never copy weights). condition: P prompts -> (cond, cond_mask or None),
    cond with leading dimension P. reward: uint8 images (B, H, W, 3) and B prompts -> scores
    (B,). sampling/scaling: the defaults `generate` uses when given none. check_record: the
    model's test of a GenEval prompt record (raises ValueError for one outside its vocabulary,
    e.g. the shapes world's), or None: any record of GenEval's schema is accepted."""

    gpt_params: Any
    gpt_cfg: GPTConfig
    vq_params: Any
    vq_cfg: vq.VQConfig
    condition: Conditioner
    reward: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None
    sampling: SamplingConfig = SamplingConfig()
    scaling: ScalingARConfig = ScalingARConfig()
    name: str = "pipeline"
    check_record: Callable[[dict], None] | None = None

    @property
    def image_size(self) -> int:
        """Pixels per side of a decoded image: grid_size * the VQ's downsampling factor."""
        return self.gpt_cfg.grid_size * self.vq_cfg.downsample

    def decode_images(self, tokens) -> np.ndarray:
        """Image tokens (B, T) -> uint8 images (B, H, W, 3), decoded `DECODE_CHUNK` at a time (the
        last chunk padded: one compiled shape), so memory does not grow with B beyond the output."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.gpt_cfg.block_size:
            raise ValueError(f"tokens must have shape (B, {self.gpt_cfg.block_size}), got {tokens.shape}")
        g = self.gpt_cfg.grid_size
        codes = tokens.reshape(-1, g, g).astype(np.int32)
        B = codes.shape[0]
        if B <= DECODE_CHUNK:
            return to_uint8(_decode_jit(self.vq_params, self.vq_cfg, jnp.asarray(codes)))
        out = np.empty((B, self.image_size, self.image_size, 3), np.uint8)
        for start in range(0, B, DECODE_CHUNK):
            chunk = codes[start : start + DECODE_CHUNK]
            n = chunk.shape[0]
            if n < DECODE_CHUNK:  # the last chunk, padded to the one compiled size
                chunk = np.concatenate([chunk, np.zeros((DECODE_CHUNK - n, g, g), np.int32)])
            out[start : start + n] = to_uint8(_decode_jit(self.vq_params, self.vq_cfg, jnp.asarray(chunk)))[:n]
        return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_jit(params, cfg, codes):
    return vq.decode_codes(params, cfg, codes)


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """images (P, H, W, 3) uint8 selected per prompt; candidates (P, N, H, W, 3) uint8 (pruned
    candidates' images decode their partial grids; the pixels of tokens they never generated are
    `UNGENERATED_GREY`);
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
             on_progress: Callable[[int], None] | None = None, mesh=None, conditioning=None, pool: int | None = None,
             **strategy_kwargs) -> GenerationOutput:
    """Runs `strategy` for every prompt (see `scalingar_jax.scaling.strategies.STRATEGIES`).

    prompts: P strings; num_candidates: N >= 1; seed: the base PRNG seed (a candidate's key is
    derived from (seed, prompt id, candidate id)); sampling/scaling default to the pipeline's.
    mesh: optional `scalingar_jax.sharding.make_mesh(prompt_shards, cand_shards)`: prompts and
    candidates are sharded over it with `shard_map` (the results of one device up to float
    rounding: README, "Exactness").
    compaction: False, True / "pow2" or "fine" (ScalingAR's pool buckets; the same results up
    to float rounding).
    Before anything is allocated, the run's memory is estimated (`resources.check_run_memory`)
    and a run that does not fit is refused (`resources.ResourceError`, a ValueError).
    first_candidate: global id of the first candidate (reward-free strategies): with N = 1 and
    first_candidate = c, plain sampling decodes candidate c of an N-candidate run (same key; the
    tokens can differ where a different batch size rounds differently).
    conditioning: `pipe.condition(prompts)` computed already (cond, cond_mask), so the
    conditioner (e.g. a text encoder) runs once per prompt; None: computed here.
    pool: None (batched) or a pool of that many candidate rows (`scaling.pool`, continuous
    batching: prompts enter as pruned or finished rows free up; plain, confidence_only, scalingar
    and best_of_n; per prompt the same results up to float rounding; with `mesh`, one pool of that many rows per
    device; on_progress not called).
    Extra keyword arguments go to importance sampling (checkpoints, tau, fill_code).
    """
    import time

    if strategy not in S.STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(S.STRATEGIES)}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if isinstance(num_candidates, int) and isinstance(pool, (int, type(None))):  # else refused by the run_* entries
        from scalingar_jax.resources import check_run_memory

        devices = 1 if mesh is None else int(mesh.devices.size)
        check_run_memory(pipe.gpt_cfg, pipe.vq_cfg, prompts=len(prompts), candidates=num_candidates,
                         pool=None if pool is None else pool * devices, decode_candidates=decode_candidates,
                         devices=devices, what=f"generating {len(prompts)} prompt(s) x {num_candidates} candidates")
    cond, cond_mask = pipe.condition(prompts) if conditioning is None else conditioning
    if np.shape(cond)[0] != len(prompts):
        raise ValueError(f"conditioning has {np.shape(cond)[0]} rows for {len(prompts)} prompts")
    sampling = pipe.sampling if sampling is None else sampling
    scaling = pipe.scaling if scaling is None else scaling
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    # the run_* entries validate every argument and pick one device or `mesh` (`S.make_executor`)
    common = dict(key=key, num_candidates=num_candidates, sampling=sampling, prompt_ids=prompt_ids, mesh=mesh,
                  on_progress=on_progress)
    if pool is not None:
        res = _generate_pooled(pipe, cond, cond_mask, prompts, strategy, pool, key, num_candidates, sampling, scaling,
                               prompt_ids, first_candidate, mesh, strategy_kwargs)
    elif strategy in ("best_of_n", "importance_sampling"):
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
        # the tokens a pruned candidate never generated (-1) show as grey, not as a decoded filler code
        g = pipe.gpt_cfg.grid_size
        f = candidates.shape[2] // g
        missing = np.repeat(np.repeat((all_tokens < 0).reshape(P, N, g, g), f, axis=2), f, axis=3)
        candidates = np.where(missing[..., None], np.uint8(UNGENERATED_GREY), candidates)
    return GenerationOutput(images=images, candidates=candidates, result=res, prompts=tuple(prompts),
                            strategy=strategy, seconds=seconds)


def _generate_pooled(pipe: Pipeline, cond, cond_mask, prompts, strategy, rows, key, N, sampling, scaling, prompt_ids,
                     first_candidate, mesh, strategy_kwargs) -> S.StrategyResult:
    """`generate`'s strategies through the prompt pool (`scaling.pool`; on a mesh, one pool of
    `rows` rows per device)."""
    from scalingar_jax.scaling import pool

    if strategy == "importance_sampling" or strategy_kwargs:
        raise ValueError(f"the prompt pool does not take strategy {strategy!r} with {sorted(strategy_kwargs)} (it "
                         f"runs plain, confidence_only, scalingar and best_of_n)")
    if strategy == "best_of_n":
        if pipe.reward is None:
            raise ValueError("strategy 'best_of_n' needs a reward function and this pipeline has none")
        return pool.run_pool_best_of_n(pipe.gpt_params, pipe.gpt_cfg, cond, cond_mask, prompts=prompts, key=key,
                                       reward_fn=pipe.reward, decode_fn=pipe.decode_images, num_candidates=N,
                                       sampling=sampling, rows=rows, prompt_ids=prompt_ids, mesh=mesh)[0]
    return pool.run_pool_strategy(pipe.gpt_params, pipe.gpt_cfg, cond, cond_mask, key=key, strategy=strategy,
                                  num_candidates=N, sampling=sampling, scaling=scaling, rows=rows,
                                  prompt_ids=prompt_ids, first_candidate=first_candidate, mesh=mesh)[0]


def load_pipeline(path=None, *, sampling: SamplingConfig | None = None, scaling: ScalingARConfig | None = None,
                  **loader_options) -> Pipeline:
    """The pipeline of the model bundle at `path` (default: `bundle.default_bundle_path()`, the
    embedded shapes world or $SCALINGAR_CHECKPOINT).

    Reads `bundle.json`, calls the loader of its kind (`scalingar_jax.registry`: a table in code,
    never a reference in the file) with the manifest's options and `loader_options` (e.g.
    `with_reward=False` for the shapes world), and checks the result against the manifest (image
    size, GPT vocabulary = VQ codebook). Sampling/scaling defaults are the bundle's;
    `sampling`/`scaling` replace them. Raises FileNotFoundError (no bundle, a part missing) or
    ValueError (a bad manifest, an unknown kind or option, models that do not fit together),
    naming the path.
    """
    import inspect

    from scalingar_jax import registry

    bundle = read_bundle(path)
    loader = registry.lookup("loader", bundle.kind, where=f"{bundle.manifest_path}: 'kind'")
    options = {**dict(bundle.options), **loader_options}
    try:
        inspect.signature(loader).bind(bundle, **options)
    except TypeError as e:
        raise ValueError(f"{bundle.manifest_path}: the options {sorted(options)} do not fit a {bundle.kind!r} bundle "
                         f"({e})") from None
    pipe = loader(bundle, **options)
    if not isinstance(pipe, Pipeline):
        raise TypeError(f"the loader of kind {bundle.kind!r} returned {type(pipe).__name__}, not a Pipeline")
    if pipe.image_size != bundle.image_size:
        raise ValueError(f"{bundle.manifest_path}: image_size {bundle.image_size} but the models make "
                         f"{pipe.image_size}x{pipe.image_size} images (grid {pipe.gpt_cfg.grid_size} x VQ "
                         f"downsampling {pipe.vq_cfg.downsample})")
    if pipe.gpt_cfg.vocab_size != pipe.vq_cfg.codebook_size:
        raise ValueError(f"{bundle.root}: the GPT's vocab_size {pipe.gpt_cfg.vocab_size} != the VQ's codebook_size "
                         f"{pipe.vq_cfg.codebook_size}")
    changes = {k: v for k, v in dict(sampling=sampling, scaling=scaling).items() if v is not None}
    return dataclasses.replace(pipe, **changes) if changes else pipe
