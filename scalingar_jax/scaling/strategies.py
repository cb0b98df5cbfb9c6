"""The batched scheduler: every prompt of a call prefilled at once and decoded in lockstep on an
`engine.Engine` (one device or a mesh), with every decision taken on the host.

* `plain`            N candidates at the fixed default CFG, no selection (N = 1 is LlamaGen).
* `confidence_only`  N candidates at the default CFG; pick the highest mean token confidence.
* `scalingar`        the confidence profile drives per-candidate CFG and adaptive termination
                     (ablations through `ScalingARConfig` switches); pick the highest final C.
                     With compaction the alive candidates of all prompts share one pool of rows,
                     shrunk at bucket sizes (`drive`).
* `best_of_n`        N full trajectories (plain), pick by `reward(images, prompts)` (`pick_by_reward`,
                     the same for the pool).
* `importance_sampling`  TTS-VAR's protocol for next-token prediction: at checkpoints decode the
                     partial grid (ungenerated positions filled with `fill_code`), resample
                     candidates with probability ~ exp(reward / tau), copying their cache rows.

`run.run_strategy` validates a run's inputs, builds the engine and picks this scheduler or the
pool (`scaling.pool`); the functions here take an engine, the run's `LoopSpec` and its
`engine.Prompts`, so a sharded run decides exactly as a one-device run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.scaling.engine import Engine, Prompts, RunStats, run_stats, to_local
from scalingar_jax.scaling.loop import LoopSpec, StrategyResult, bucket, compaction_limit
from scalingar_jax.scaling.options import ImportanceSampling

RewardFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]  # (B,H,W,3) uint8, prompts -> (B,)
DecodeFn = Callable[[np.ndarray], np.ndarray]  # tokens (B, T) int32 -> images (B,H,W,3) uint8


# ------------------------------------------------------------------------------ rewards
def check_reward(scores, n: int) -> np.ndarray:
    """A reward function's output for n images as float64 (n,); ValueError if it has another
    shape or holds non-numeric or non-finite values."""
    scores = np.asarray(scores)
    if scores.shape != (n,):
        raise ValueError(f"reward function must return shape ({n},) for {n} images, got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number) or not np.all(np.isfinite(scores)):
        raise ValueError("reward function returned non-numeric or non-finite scores")
    return scores.astype(np.float64)


def rewards(tokens: np.ndarray, prompts: Sequence[str], decode_fn: DecodeFn, reward_fn: RewardFn) -> np.ndarray:
    """tokens (P, N, T) -> reward (P, N) of the decoded images, each scored against its prompt."""
    P, N, T = tokens.shape
    images = decode_fn(tokens.reshape(P * N, T))
    return check_reward(reward_fn(images, [p for p in prompts for _ in range(N)]), P * N).reshape(P, N)


def pick_by_reward(res: StrategyResult, scores: np.ndarray) -> StrategyResult:
    """`res` with the highest-reward candidate of every prompt selected (scores (P, N))."""
    winner = jnp.asarray(np.argmax(scores, axis=1), jnp.int32)
    P = scores.shape[0]
    return res.replace(tokens=res.all_tokens[jnp.arange(P), winner], winner=winner, score=jnp.asarray(scores))


def resample_indices(key, j: int, prompt_ids, r: np.ndarray, tau: float) -> np.ndarray:
    """Checkpoint j's draw: (P, N) int32 source candidate per slot, ~ exp(reward / tau) per prompt,
    keyed by (key, checkpoint, global prompt id). r: (P, N) rewards."""
    N = r.shape[1]
    rkey = jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(key, 1_000_003 + j), p))(jnp.asarray(prompt_ids))
    logp = jnp.asarray((r - r.max(axis=1, keepdims=True)) / tau, jnp.float32)
    idx = jax.vmap(lambda k, lp: jax.random.categorical(k, lp, shape=(N,)))(rkey, logp)
    return np.asarray(idx, np.int32)


# ------------------------------------------------------------------------------ the scheduler
def drive(engine: Engine, spec: LoopSpec, s, *, end: int | None = None, buckets: str | None = None,
          on_progress: Callable[[int], None] | None = None, sizes: list[int] | None = None,
          progress_every: int | None = None):
    """Runs the loop on `engine` to token `end` (default T), compacting at bucket boundaries
    when `buckets` names a bucket set; on_progress(k) after every loop call; the pool sizes used
    are appended to `sizes`. progress_every=K: the loop also stops every K tokens (its `stop`
    is a traced scalar: the same compiled loop and the same tokens, one more host round trip
    per stop). The state is donated (updated in place)."""
    end = spec.T if end is None else end
    k = 0
    while True:
        M = engine.rows(s)
        shrink = compaction_limit(M, buckets) if buckets is not None and M > 1 else -1
        stop = end if progress_every is None else min(end, k + progress_every)
        s, info = engine.generate(spec, s, stop=stop, shrink=shrink)
        k = int(info.k[0])
        if on_progress is not None:
            on_progress(k)
        if k >= end:
            return s
        if k >= stop and info.occupied > shrink:  # a progress stop, not a compaction exit
            continue
        s = engine.compact(spec, s, bucket(info.occupied, buckets))
        if sizes is not None:
            sizes.append(engine.rows(s))


def token_strategy(engine: Engine, spec: LoopSpec, prompts: Prompts, strategy: str, *, buckets: str | None = None,
                   on_progress=None, progress_every: int | None = None) -> tuple[StrategyResult, RunStats]:
    """A reward-free strategy ("plain", "confidence_only", "scalingar"; best-of-N's candidates)
    over the P prompts at once (`drive`'s on_progress, progress_every). Returns (result on the
    default device, `RunStats`)."""
    s = engine.prefill(spec, prompts.cond, prompts.cond_mask, prompts.key, prompts.prompt_ids, prompts.first_candidate)
    sizes = [engine.rows(s)]
    s = drive(engine, spec, s, buckets=buckets, on_progress=on_progress, sizes=sizes, progress_every=progress_every)
    res = engine.harvest(spec, s, np.arange(prompts.count), strategy)
    return to_local(res), run_stats(engine, s, sizes[0], sizes)


def importance_sampling(engine: Engine, spec: LoopSpec, prompts: Prompts, texts: Sequence[str], decode_fn: DecodeFn,
                        reward_fn: RewardFn, importance: ImportanceSampling,
                        on_progress=None) -> tuple[StrategyResult, RunStats]:
    """Importance sampling (TTS-VAR adapted to next-token prediction; `ImportanceSampling`): the
    loop stops at every checkpoint, the partial grids are decoded and scored, and every slot
    takes a source candidate drawn ~ exp(reward / tau) per prompt (keyed by prompt id and
    checkpoint; on a mesh a slot may take a candidate of another device). At the end the highest
    final reward wins. Tokens: N*T."""
    s = engine.prefill(spec, prompts.cond, prompts.cond_mask, prompts.key, prompts.prompt_ids, prompts.first_candidate)
    rows = engine.rows(s)
    for j, c in enumerate(importance.steps(spec.T)):
        s = drive(engine, spec, s, end=c)
        if on_progress is not None:
            on_progress(c)
        tokens = engine.tokens(spec, s, prompts.count)
        r = rewards(np.where(tokens < 0, importance.fill_code, tokens), texts, decode_fn, reward_fn)
        s = engine.resample(spec, s, resample_indices(prompts.key, j, prompts.prompt_ids, r, importance.tau))
    s = drive(engine, spec, s)
    if on_progress is not None:
        on_progress(spec.T)
    res = to_local(engine.harvest(spec, s, np.arange(prompts.count), "plain"))
    return pick_by_reward(res, rewards(np.asarray(res.all_tokens), texts, decode_fn, reward_fn)), run_stats(
        engine, s, rows, [rows])


def spec_of(model, sampling, scaling, strategy: str, num_candidates: int, *, lockstep: bool = True) -> LoopSpec:
    """The unsharded `LoopSpec` of a strategy: the ScalingAR policy for "scalingar", fixed CFG
    for the others."""
    return LoopSpec(model, sampling, scaling, "scalingar" if strategy == "scalingar" else "none", int(num_candidates),
                    lockstep=lockstep)


def compaction_buckets(spec: LoopSpec, buckets: str | None) -> str | None:
    """The bucket set the batched loop compacts with: only ScalingAR with termination prunes."""
    return buckets if spec.policy == "scalingar" and spec.scaling.use_termination else None

