"""Generation strategies: the host-side logic on top of the token loop (`scaling.loop`).

* `plain`            N candidates at the fixed default CFG, no selection (N = 1 is LlamaGen).
* `confidence_only`  N candidates at the default CFG; pick the highest mean token confidence.
* `scalingar`        the confidence profile drives per-candidate CFG and adaptive termination
                     (ablations through `ScalingARConfig` switches); pick the highest final C.
* `best_of_n`        N full trajectories, pick by `reward(images, prompts)`.
* `importance_sampling`  TTS-VAR's protocol for next-token prediction: at checkpoints decode the
                     partial grid (ungenerated positions filled with `fill_code`), resample
                     candidates with probability ~ exp(reward / tau), copying their cache rows.

Two levels. The entries `run_token_strategy`, `run_best_of_n`, `run_importance_sampling` take
the model, the conditions and the settings, validate them once (`prepare`), build an executor
with `make_executor` (the one place that picks one device or a mesh) and call the strategy
proper: `token_strategy`, `best_of_n`, `importance_sampling`, which take an `Executor` and a
`LoopSpec` and make every decision (drive, checkpoints, rewards, resampling draws) on the host,
so a sharded run decides exactly as a local one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.config import GPTConfig, SamplingConfig, to_dtype
from scalingar_jax.gpt import validate_condition
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.loop import Executor, LocalExecutor, LoopSpec, StrategyResult, check_buckets, drive

STRATEGIES = ("plain", "confidence_only", "scalingar", "best_of_n", "importance_sampling")
TOKEN_STRATEGIES = ("plain", "confidence_only", "scalingar")
RewardFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]  # (B,H,W,3) uint8, prompts -> (B,)
DecodeFn = Callable[[np.ndarray], np.ndarray]  # tokens (B, T) int32 -> images (B,H,W,3) uint8


# ------------------------------------------------------------------------------ validation and executors
def check_first_candidate(first_candidate) -> int:
    """Validates a global candidate-id offset: an integer >= 0."""
    if isinstance(first_candidate, bool) or not isinstance(first_candidate, (int, np.integer)) or first_candidate < 0:
        raise ValueError(f"first_candidate must be an integer >= 0, got {first_candidate!r}")
    return int(first_candidate)


def prepare(gpt_cfg: GPTConfig, sampling: SamplingConfig, scaling: ScalingARConfig, cond, cond_mask, num_candidates,
            prompt_ids):
    """Every check of a strategy run's inputs (once, at the entry, before anything compiles).
    cond: (P,) labels or (P, cls, caption_dim) features; cond_mask (P, cls) or None; prompt_ids
    (P,) or None (0..P-1). Returns (cond, cond_mask (t2i: all True if None; c2i: None),
    prompt_ids (P,) int32) as device arrays."""
    gpt_cfg.validate()
    sampling.validate(gpt_cfg.vocab_size)
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, (int, np.integer)) or num_candidates < 1:
        raise ValueError(f"num_candidates (N) must be an integer >= 1, got {num_candidates!r}")
    scaling.validate(gpt_cfg.grid_size, gpt_cfg.block_size)
    validate_condition(gpt_cfg, cond, cond_mask)
    P = int(np.shape(cond)[0])
    prompt_ids = jnp.arange(P, dtype=jnp.int32) if prompt_ids is None else jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.shape != (P,):
        raise ValueError(f"prompt_ids must have shape ({P},), got {prompt_ids.shape}")
    if gpt_cfg.model_type == "t2i":
        cond = jnp.asarray(cond, to_dtype(gpt_cfg.dtype))
        cond_mask = jnp.ones(cond.shape[:2], bool) if cond_mask is None else jnp.asarray(cond_mask, bool)
    else:
        cond, cond_mask = jnp.asarray(cond, jnp.int32), None
    return cond, cond_mask, prompt_ids


def make_executor(params, cond, cond_mask, key, prompt_ids, *, num_candidates: int, first_candidate: int = 0,
                  mesh=None) -> Executor:
    """The executor of a run: `loop.LocalExecutor` (mesh None) or `sharding.ShardedExecutor` on
    `mesh` (from `sharding.make_mesh`). The only place that decides between them. Inputs as
    `prepare` returns them; first_candidate: global id of candidate slot 0 (validated here)."""
    first_candidate = check_first_candidate(first_candidate)
    if mesh is None:
        return LocalExecutor(params, cond, cond_mask, key, prompt_ids, first_candidate)
    from scalingar_jax.sharding import ShardedExecutor

    return ShardedExecutor(params, cond, cond_mask, key, prompt_ids, mesh=mesh, num_candidates=int(num_candidates),
                           first_candidate=first_candidate)


def token_spec(gpt_cfg: GPTConfig, sampling: SamplingConfig, scaling: ScalingARConfig, strategy: str, num_candidates,
               compaction: bool | str) -> LoopSpec:
    """The unsharded `LoopSpec` of a reward-free strategy. compaction: False (masking only), True
    (= "pow2") or a bucket set name (`loop.bucket`)."""
    policy = "scalingar" if strategy == "scalingar" else "none"
    buckets = check_buckets("pow2" if isinstance(compaction, bool) else str(compaction))
    return LoopSpec(gpt_cfg, sampling, scaling, policy, int(num_candidates),
                    compaction=bool(compaction) and policy == "scalingar" and scaling.use_termination,
                    buckets=buckets)


def _check_prompts(prompts, P: int) -> None:
    if len(prompts) != P:
        raise ValueError(f"got {len(prompts)} prompts for {P} conditions")


def _check_reward(scores, n: int) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.shape != (n,):
        raise ValueError(f"reward function must return shape ({n},) for {n} images, got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number) or not np.all(np.isfinite(scores)):
        raise ValueError("reward function returned non-numeric or non-finite scores")
    return scores.astype(np.float64)


def _rewards(tokens: np.ndarray, prompts: Sequence[str], decode_fn: DecodeFn, reward_fn: RewardFn) -> np.ndarray:
    """tokens (P, N, T) -> reward (P, N)."""
    P, N, T = tokens.shape
    images = decode_fn(tokens.reshape(P * N, T))
    return _check_reward(reward_fn(images, [p for p in prompts for _ in range(N)]), P * N).reshape(P, N)


def _pick_by_reward(res: StrategyResult, scores: np.ndarray) -> StrategyResult:
    winner = jnp.asarray(np.argmax(scores, axis=1), jnp.int32)
    P = scores.shape[0]
    return res.replace(tokens=res.all_tokens[jnp.arange(P), winner], winner=winner, score=jnp.asarray(scores))


# ------------------------------------------------------------------------------ strategies on an executor
def token_strategy(ex: Executor, spec: LoopSpec, strategy: str, on_progress=None) -> StrategyResult:
    """A reward-free strategy ("plain", "confidence_only", "scalingar") on an executor."""
    s = ex.start(spec)
    s = drive(ex, s, spec, on_progress)
    return ex.finish(s, strategy, spec)


def best_of_n(ex: Executor, spec: LoopSpec, prompts, decode_fn, reward_fn, on_progress=None) -> StrategyResult:
    """Best-of-N on an executor: a plain run, then the highest reward wins."""
    res = token_strategy(ex, spec, "plain", on_progress)
    scores = _rewards(np.asarray(res.all_tokens), prompts, decode_fn, reward_fn)
    return _pick_by_reward(res, scores)


def is_checkpoints(gpt_cfg: GPTConfig, checkpoints, tau: float, fill_code: int) -> list[int]:
    """Validates the importance-sampling knobs; returns the checkpoint steps (sorted, unique)."""
    if not (tau > 0 and np.isfinite(tau)):
        raise ValueError(f"tau must be > 0, got {tau}")
    if not 0 <= fill_code < gpt_cfg.vocab_size:
        raise ValueError(f"fill_code must be in [0, {gpt_cfg.vocab_size}), got {fill_code}")
    cps = sorted({int(round(c * gpt_cfg.block_size)) for c in checkpoints})
    if any(c <= 0 or c >= gpt_cfg.block_size for c in cps):
        raise ValueError(f"checkpoints must be fractions in (0, 1) of T, got {checkpoints}")
    return cps


def resample_indices(key, j: int, prompt_ids, r: np.ndarray, tau: float) -> np.ndarray:
    """Checkpoint j's draw: (P, N) int32 source candidate per slot, ~ exp(reward / tau) per prompt,
    keyed by (key, checkpoint, global prompt id). r: (P, N) rewards."""
    N = r.shape[1]
    rkey = jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(key, 1_000_003 + j), p))(jnp.asarray(prompt_ids))
    logp = jnp.asarray((r - r.max(axis=1, keepdims=True)) / tau, jnp.float32)
    idx = jax.vmap(lambda k, lp: jax.random.categorical(k, lp, shape=(N,)))(rkey, logp)
    return np.asarray(idx, np.int32)


def importance_sampling(ex: Executor, spec: LoopSpec, prompts, decode_fn, reward_fn, *, key, prompt_ids, cps,
                        tau: float, fill_code: int, on_progress=None) -> StrategyResult:
    """Importance sampling on an executor (see `run_importance_sampling`); cps from `is_checkpoints`."""
    s = ex.start(spec)
    for j, c in enumerate(cps):
        s = drive(ex, s, dataclasses.replace(spec, stop_at=c))
        if on_progress is not None:
            on_progress(c)
        tokens = ex.tokens(s)
        r = _rewards(np.where(tokens < 0, fill_code, tokens), prompts, decode_fn, reward_fn)
        s = ex.resample(s, resample_indices(key, j, prompt_ids, r, tau), spec)
    s = drive(ex, s, spec)
    if on_progress is not None:
        on_progress(spec.T)
    res = ex.finish(s, "plain", spec)
    return _pick_by_reward(res, _rewards(np.asarray(res.all_tokens), prompts, decode_fn, reward_fn))


# ------------------------------------------------------------------------------ entries
def run_token_strategy(params, gpt_cfg: GPTConfig, cond, cond_mask=None, *, key, strategy: str = "scalingar",
                       num_candidates: int = 8, sampling: SamplingConfig = SamplingConfig(),
                       scaling: ScalingARConfig = ScalingARConfig(), compaction: bool | str = True, prompt_ids=None,
                       first_candidate: int = 0, mesh=None, on_progress=None) -> StrategyResult:
    """Strategies that need no reward: "plain", "confidence_only", "scalingar".

    cond: (P,) labels or (P, cls, caption_dim) features; cond_mask (P, cls). CFG rows always run
    (ScalingAR's scale may go to s_min = 1). compaction: False (masking only), True / "pow2"
    (power-of-two pools) or "fine" (also 3 * 2**k). first_candidate: global id of the first of the
    N candidates (keys come from ids first_candidate .. first_candidate + N - 1), so the N of
    Best-of-N can be split over calls or hosts with the same keys: plain/confidence_only
    candidates then differ only by floating point (a matmul over 2 rows may round differently
    from one over 16, and flip a near-tied draw: README, "Exactness"; `reproduce.py efficiency`
    counts the prompts whose tokens still matched). ScalingAR's pooled statistics depend on
    which candidates share a call. mesh: None (one device) or a `sharding.make_mesh` mesh: the
    same results up to float rounding ("Exactness"), P and N need not divide its axes.
    Returns a `StrategyResult` (on the default device); `winner` indexes this call's candidates.
    """
    if strategy not in TOKEN_STRATEGIES:
        raise ValueError(f"run_token_strategy handles {'/'.join(TOKEN_STRATEGIES)}, got strategy {strategy!r}")
    cond, cond_mask, prompt_ids = prepare(gpt_cfg, sampling, scaling, cond, cond_mask, num_candidates, prompt_ids)
    spec = token_spec(gpt_cfg, sampling, scaling, strategy, num_candidates, compaction)
    ex = make_executor(params, cond, cond_mask, key, prompt_ids, num_candidates=num_candidates,
                       first_candidate=first_candidate, mesh=mesh)
    return token_strategy(ex, spec, strategy, on_progress)


def _reward_run(params, gpt_cfg, cond, cond_mask, prompts, key, num_candidates, sampling, prompt_ids, mesh):
    """(executor, spec, prompt_ids) of a reward-based strategy: plain fixed-CFG loop, no compaction."""
    cond, cond_mask, prompt_ids = prepare(gpt_cfg, sampling, ScalingARConfig(), cond, cond_mask, num_candidates,
                                          prompt_ids)
    _check_prompts(prompts, cond.shape[0])
    spec = token_spec(gpt_cfg, sampling, ScalingARConfig(), "plain", num_candidates, False)
    ex = make_executor(params, cond, cond_mask, key, prompt_ids, num_candidates=num_candidates, mesh=mesh)
    return ex, spec, prompt_ids


def run_best_of_n(params, gpt_cfg: GPTConfig, cond, cond_mask=None, *, prompts: Sequence[str], key,
                  reward_fn: RewardFn, decode_fn: DecodeFn, num_candidates: int = 8,
                  sampling: SamplingConfig = SamplingConfig(), prompt_ids=None, mesh=None,
                  on_progress=None) -> StrategyResult:
    """Best-of-N: N full trajectories at the default CFG, the highest reward wins. Tokens: N*T.
    mesh: as in `run_token_strategy` (the reward runs on the host of every process)."""
    ex, spec, _ = _reward_run(params, gpt_cfg, cond, cond_mask, prompts, key, num_candidates, sampling, prompt_ids,
                              mesh)
    return best_of_n(ex, spec, prompts, decode_fn, reward_fn, on_progress)


def run_importance_sampling(params, gpt_cfg: GPTConfig, cond, cond_mask=None, *, prompts: Sequence[str], key,
                            reward_fn: RewardFn, decode_fn: DecodeFn, num_candidates: int = 8,
                            sampling: SamplingConfig = SamplingConfig(), checkpoints=(0.25, 0.5, 0.75),
                            tau: float = 0.1, fill_code: int = 0, prompt_ids=None, mesh=None,
                            on_progress=None) -> StrategyResult:
    """Importance sampling (TTS-VAR adapted to next-token prediction). Tokens: N*T.

    At each checkpoint fraction c the partial grid (tokens >= c*T set to `fill_code`) is decoded
    and scored; slots are resampled with probability ~ exp(reward / tau) (per prompt, keyed by
    prompt id and checkpoint). At the end the highest final reward wins. mesh: as in
    `run_token_strategy`; on a mesh a slot may take a source candidate from another device.
    """
    cps = is_checkpoints(gpt_cfg, checkpoints, tau, fill_code)
    ex, spec, prompt_ids = _reward_run(params, gpt_cfg, cond, cond_mask, prompts, key, num_candidates, sampling,
                                       prompt_ids, mesh)
    return importance_sampling(ex, spec, prompts, decode_fn, reward_fn, key=key, prompt_ids=prompt_ids, cps=cps,
                               tau=tau, fill_code=fill_code, on_progress=on_progress)
