"""Prompts in, images out: a `Pipeline` holds a GPT, a VQ decoder, a conditioner, an optional
reward and its sampling defaults; `generate` runs any strategy on it; `load_pipeline` loads one
from a model bundle (a folder with `bundle.json`, see `scalingar_jax.bundle`).

    from scalingar_jax import generate, load_pipeline
    pipe = load_pipeline()                     # the default bundle: the embedded shapes world
    out = generate(pipe, ["a photo of a red circle left of a blue square"], strategy="scalingar",
                   num_candidates=8, seed=0)
    out.images        # (P, H, W, 3) uint8, the selected image per prompt
    out.result        # StrategyResult: winner, tokens_used, per-step trajectories, ...

Every other option is grouped (`scaling.options`, checked at construction): a `Strategy`
(strategy=Strategy("scalingar", 8, scaling=..., sampling=...)) and a `Schedule` (a mesh,
compaction, or a continuous-batching `Pool`).
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
from scalingar_jax.config import SamplingConfig
from scalingar_jax.decode import GPTModel
from scalingar_jax.images import to_uint8
from scalingar_jax.resources import check_run_memory
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.engine import RunStats
from scalingar_jax.scaling.loop import StrategyResult
from scalingar_jax.scaling.options import Schedule, Strategy
from scalingar_jax.scaling.run import run_strategy
from scalingar_jax.token_model import TokenModel

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
    e.g. the shapes world's), or None: any record of GenEval's schema is accepted. to_uint8:
    the VQ's float images (B, H, W, 3) -> uint8, the model family's own rounding (default
    `images.to_uint8`, round((x + 1) * 127.5); Janus-Pro truncates). token_model: the generator
    as the engine runs it (a `token_model.TokenModel` on gpt_cfg, which its loader gives, e.g.
    `janus.JanusModel`); None: LlamaGen's `decode.GPTModel(gpt_cfg)`."""

    gpt_params: Any
    gpt_cfg: Any  # config.GPTConfig, or the config of the family token_model runs (janus.JanusConfig)
    vq_params: Any
    vq_cfg: vq.VQConfig
    condition: Conditioner
    reward: Callable[[np.ndarray, Sequence[str]], np.ndarray] | None = None
    sampling: SamplingConfig = SamplingConfig()
    scaling: ScalingARConfig = ScalingARConfig()
    name: str = "pipeline"
    check_record: Callable[[dict], None] | None = None
    to_uint8: Callable[[np.ndarray], np.ndarray] = to_uint8
    token_model: TokenModel | None = None

    @property
    def model(self) -> TokenModel:
        """The generator as the engine's `token_model.TokenModel`."""
        return GPTModel(self.gpt_cfg) if self.token_model is None else self.token_model

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
            return self.to_uint8(_decode_jit(self.vq_params, self.vq_cfg, jnp.asarray(codes)))
        out = np.empty((B, self.image_size, self.image_size, 3), np.uint8)
        for start in range(0, B, DECODE_CHUNK):
            chunk = codes[start : start + DECODE_CHUNK]
            n = chunk.shape[0]
            if n < DECODE_CHUNK:  # the last chunk, padded to the one compiled size
                chunk = np.concatenate([chunk, np.zeros((DECODE_CHUNK - n, g, g), np.int32)])
            out[start : start + n] = self.to_uint8(_decode_jit(self.vq_params, self.vq_cfg, jnp.asarray(chunk)))[:n]
        return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_jit(params, cfg, codes):
    return vq.decode_codes(params, cfg, codes)


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """images (P, H, W, 3) uint8 selected per prompt; candidates (P, N, H, W, 3) uint8 (pruned
    candidates' images decode their partial grids; the pixels of tokens they never generated are
    `UNGENERATED_GREY`);
    result: the strategy's `StrategyResult` as host NumPy arrays (read per prompt without a
    device op, so without a compile per slice shape); stats: the run's `RunStats` (steps, rows, utilization);
    seconds: wall clock of the token loop + selection."""

    images: np.ndarray
    candidates: np.ndarray | None
    result: StrategyResult
    prompts: tuple[str, ...]
    strategy: str
    seconds: float
    stats: RunStats | None = None


def generate(pipe: Pipeline, prompts: Sequence[str], strategy: str | Strategy = "scalingar", *,
             num_candidates: int | None = None, seed: int = 0, schedule: Schedule = Schedule(), prompt_ids=None,
             conditioning=None, decode_candidates: bool = False,
             on_progress: Callable[[int], None] | None = None,
             progress_every: int | None = None) -> GenerationOutput:
    """Runs a strategy for every prompt (`scaling.run.run_strategy` on the pipeline's model).

    prompts: P prompts; strategy: a name (`scaling.options.STRATEGIES`) with num_candidates N
    (default 8), or a `Strategy` with every setting (N, sampling, scaling, first_candidate,
    importance sampling's knobs; its sampling / scaling None: the pipeline's); seed: the base
    PRNG seed (a candidate's key is derived from (seed, prompt id, candidate id)); schedule: a
    `Schedule` (one device or a mesh, compaction, or a continuous-batching `Pool`: per prompt the
    same results up to float rounding: README, "Exactness"); prompt_ids: (P,) global prompt ids
    (default 0..P-1); conditioning: `pipe.condition(prompts)` computed already (cond,
    cond_mask), so the conditioner (e.g. a text encoder) runs once per prompt;
    decode_candidates: also decode every candidate; on_progress(k): the batched loop reached
    token k (the pool does not call it; progress_every=K: at least every K tokens, the same
    compiled loop and tokens).
    Before anything is allocated, the run's memory is estimated (`resources.check_run_memory`)
    and a run that does not fit is refused (`resources.ResourceError`, a ValueError).
    """
    import time

    if isinstance(strategy, Strategy):
        if num_candidates is not None:
            raise ValueError("num_candidates is set twice: give it inside the Strategy")
    else:
        strategy = Strategy(strategy, 8 if num_candidates is None else num_candidates)
    strategy = strategy.with_defaults(pipe.sampling, pipe.scaling)
    if strategy.needs_reward and pipe.reward is None:
        raise ValueError(f"strategy {strategy.name!r} needs a reward function and this pipeline has none")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    devices = 1 if schedule.mesh is None else int(schedule.mesh.devices.size)
    N = strategy.num_candidates
    check_run_memory(pipe.gpt_cfg, pipe.vq_cfg, prompts=len(prompts), candidates=N,
                     pool=None if schedule.pool is None else schedule.pool.rows * devices,
                     decode_candidates=decode_candidates, devices=devices,
                     what=f"generating {len(prompts)} prompt(s) x {N} candidates")
    cond, cond_mask = pipe.condition(prompts) if conditioning is None else conditioning
    if np.shape(cond)[0] != len(prompts):
        raise ValueError(f"conditioning has {np.shape(cond)[0]} rows for {len(prompts)} prompts")
    t0 = time.perf_counter()
    res, stats = run_strategy(pipe.model, pipe.gpt_params, cond, cond_mask, strategy=strategy,
                              key=jax.random.key(seed), schedule=schedule, prompt_ids=prompt_ids, prompts=prompts,
                              reward_fn=pipe.reward, decode_fn=pipe.decode_images, on_progress=on_progress,
                              progress_every=progress_every)
    res = jax.tree.map(np.asarray, res)  # on the host: waits for the run
    seconds = time.perf_counter() - t0
    images = pipe.decode_images(res.tokens)
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
                            strategy=strategy.name, seconds=seconds, stats=stats)


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
