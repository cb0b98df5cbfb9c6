"""Generation strategies as jitted token loops over the KV-cache decoder.

* `plain`            N candidates at the fixed default CFG, no selection (N = 1 is LlamaGen).
* `confidence_only`  N candidates at the default CFG; pick the highest mean token confidence.
* `scalingar`        the confidence profile drives per-candidate CFG and adaptive termination
                     (ablations through `ScalingARConfig` switches); pick the highest final C.
* `best_of_n`        N full trajectories, pick by `reward(images, prompts)`.
* `importance_sampling`  TTS-VAR's protocol for next-token prediction: at checkpoints decode the
                     partial grid (ungenerated positions filled with `fill_code`), resample
                     candidates with probability ~ exp(reward / tau), copying their cache rows.

Two layouts. Everything per candidate (keys, guidance scale, confidence state, tokens,
trajectories) always keeps the original (P, N) layout: it is small, and the policies pool over
a prompt's candidates. The model's rows (logits and KV cache, cond and uncond) live in a flat
*pool* of M rows shared by all prompts: `row` (P, N) maps a candidate to its pool row and
`owner` (M,) a pool row to its flat candidate id p*N + n (P*N for a free row). Each step
gathers the candidates' logits from the pool and feeds the sampled tokens back to it.

Termination is by masking inside a `lax.while_loop`. With `compaction=True` the loop leaves
early when the alive candidates of *all* prompts fit a smaller bucket than the pool (powers of
two; `compaction="fine"` adds 3 * 2**k); their rows are gathered into a pool of that bucket's
size, and the loop continues. The pool starts at P*N rows, each bucket size compiles once, and
no prompt is padded to the fullest prompt's width (a prompt with 1 survivor costs 2 rows however
many another prompt keeps). The loop is compiled for `loop_key(spec)`, so plain, confidence-only,
Best-of-N and importance sampling share one compiled loop and IS checkpoints pass their stop step
as a traced value. `drive` runs the loop through `advance_loop`, which donates the state so the
KV cache is updated in place; `run_loop` is the same loop without donation (the state stays
valid), for researchers' own code and benchmarks. A candidate's randomness comes from (prompt id,
candidate id, step), so compacted and masked runs sample the same tokens; buffers hold values
only for steps where the candidate was alive. The host-side strategy logic (`token_strategy_with`, `best_of_n_with`,
`importance_sampling_with`) drives an *executor*: `LocalExecutor` here, or
`sharding.ShardedExecutor` for a mesh.

Sharding (`scalingar_jax.sharding` runs these pieces inside `jax.shard_map`)
--------------------------------------------------------------------------
Every loop piece is written for *local* arrays and takes its mesh axes from the `LoopSpec`
(`prompt_axis`, `cand_axis`; None = unsharded). With `cand_axis` set, `num_candidates` is the
per-shard slot count N0 and a slot's global candidate id is `axis_index(cand_axis) * N0 + slot`
(keys come from global ids, so a sharded run samples the same tokens); the profile/termination
/winner calls pool over the candidate axis with collectives; the compaction exit test is the
maximum over prompts *and shards* of the local alive count (`max_local_alive`, a pmax), so
every shard leaves the while loop at the same step and compacts into the same pool size (shards
keep their own alive candidates: a candidate never moves between devices). `num_real` marks
padding candidate slots (slot >= num_real) dead from the start. Outside shard_map the loop state
is held in its *view* layout (`to_view`): CFG rows as an explicit (2, P, N) axis, so that the
prompt and candidate axes can be sharded, and the pool as (2, 1, M) per shard, so that every
device holds its own pool (its candidates' cond and uncond rows).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scalingar_jax import decode
from scalingar_jax.config import GPTConfig, SamplingConfig, to_dtype
from scalingar_jax.gpt import KVCache, unstack_layers, validate_condition
from scalingar_jax.sampling import candidate_keys
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.policy import guidance_scale, select_winner, update_termination
from scalingar_jax.scaling.profile import ConfidenceState, init_state, token_stats, update_profile

STRATEGIES = ("plain", "confidence_only", "scalingar", "best_of_n", "importance_sampling")
RewardFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]  # (B,H,W,3) uint8, prompts -> (B,)
DecodeFn = Callable[[np.ndarray], np.ndarray]  # tokens (B, T) int32 -> images (B,H,W,3) uint8


@struct.dataclass
class LoopState:
    """Everything the token loop carries. Model rows: a pool of M cond rows then M uncond rows
    (M = P*N before any compaction); every other field is in the (P, N) candidate layout."""

    logits: jax.Array  # (2M, V) logits for token k of every pool row
    cache: KVCache  # 2M rows
    k: jax.Array  # int32, the next token index to sample
    keys: jax.Array  # (P, N) candidate keys
    row: jax.Array  # (P, N) int32 pool row of each candidate (meaningful while it is alive)
    owner: jax.Array  # (M,) int32 flat candidate id p*N + n of each pool row, P*N for a free row
    scale: jax.Array  # (P, N) guidance scale for token k
    conf: ConfidenceState  # (P, N) ScalingAR state (alive mask used by every strategy)
    conf_sum: jax.Array  # (P, N) sum of token confidence 1 - u (confidence-only baseline)
    tokens: jax.Array  # (P, N0, T) int32, -1 where not generated
    entropy: jax.Array  # (P, N0, T) float32 normalized entropy of each sampled token
    traj: dict  # name -> (T, P, N0) float32 / bool, and "theta" (T, P)


@struct.dataclass
class StrategyResult:
    """tokens (P, T) of the selected image; winner (P,) candidate id; tokens_used (P,);
    all_tokens (P, N, T) (-1 where a pruned candidate generated nothing); entropy (P, N, T)
    (0 where not generated); terminated_at (P, N) (-1: survived); traj: name -> (T, P, N)
    per-step C, I, D, R, scale (0 once pruned), alive, and theta (T, P); score (P, N) what
    selection ranked (final C, -inf for pruned candidates; mean confidence; or reward)."""

    tokens: jax.Array
    winner: jax.Array
    tokens_used: jax.Array
    all_tokens: jax.Array
    entropy: jax.Array
    terminated_at: jax.Array
    score: jax.Array
    traj: dict


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Static description of a token loop (hashable: the jit cache key)."""

    cfg: GPTConfig
    sampling: SamplingConfig
    scaling: ScalingARConfig
    policy: str  # "none" (fixed CFG) or "scalingar"
    num_candidates: int  # N0, original candidate slots per prompt (per candidate shard when sharded)
    compaction: bool = False
    buckets: str = "pow2"  # pool sizes compaction may shrink to: see `bucket`
    stop_at: int = -1  # >= 0: leave the loop when k reaches it (importance-sampling checkpoints)
    num_real: int = -1  # >= 0: candidate slots >= num_real (over all shards) are padding, dead from start
    prompt_axis: str | None = None  # mesh axis the prompt axis is split over (inside shard_map)
    cand_axis: str | None = None  # mesh axis the candidate axis is split over (inside shard_map)

    @property
    def T(self) -> int:
        return self.cfg.block_size


# ------------------------------------------------------------------------------ loop pieces
def candidate_logits(logits, row):
    """Pool logits (2M, V) -> cond, uncond (P, N, V) of the candidates (row: (P, N) pool rows;
    a dead candidate reads some row, its values are masked by the caller)."""
    M = logits.shape[0] // 2
    r = jnp.clip(row, 0, M - 1)
    return logits[:M][r], logits[M:][r]


def _step(params, spec: LoopSpec, s: LoopState) -> LoopState:
    cfg, sampling, sc = spec.cfg, spec.sampling, spec.scaling
    P, N = s.row.shape
    use_cfg = True
    k = s.k
    lc, lu = candidate_logits(s.logits, s.row)
    alive = s.conf.alive
    tok = decode.next_tokens(sampling, lc, lu, s.scale, s.keys, k, use_cfg)
    tok = jnp.where(alive, tok, -1)
    hn, margin = token_stats(lc)
    conf_sum = s.conf_sum + jnp.where(alive, 1.0 - (sc.aH * hn + sc.aM * (1.0 - margin)), 0.0)
    T = spec.T
    if spec.policy == "scalingar":
        lg = None
        if sc.entropy_source == "guided":
            lg = decode.sampling_logits(sampling, lc, lu, s.scale, k, use_cfg)
        conf = update_profile(sc, s.conf, lc, lu, k, None, cfg.grid_size, lg=lg, axis_name=spec.cand_axis)
        conf = update_termination(sc, conf, k, T, axis_name=spec.cand_axis)
        scale = guidance_scale(sc, conf, sampling.cfg_scale) if sc.use_scheduler else s.scale
    else:
        conf = s.conf.replace(tokens_used=s.conf.tokens_used + alive.astype(jnp.int32))
        scale = s.scale
    traj = dict(s.traj)
    # Per-step records only for candidates alive at the start of the step (the others keep 0).
    for name in ("C", "I", "D", "R"):
        traj[name] = traj[name].at[k].set(jnp.where(alive, getattr(conf, name), 0.0))
    traj["scale"] = traj["scale"].at[k].set(jnp.where(alive, s.scale, 0.0))
    traj["alive"] = traj["alive"].at[k].set(conf.alive)
    traj["theta"] = traj["theta"].at[k].set(conf.theta)
    tokens = s.tokens.at[:, :, k].set(tok)
    entropy = s.entropy.at[:, :, k].set(jnp.where(alive, hn, 0.0))

    # each pool row is fed its owner's token (free rows: code 0, never read)
    fed = jnp.concatenate([jnp.maximum(tok, 0).reshape(P * N), jnp.zeros((1,), tok.dtype)])[s.owner]
    fed = jnp.concatenate([fed, fed])

    def advance(_):
        return decode.decode_step(params, cfg, s.cache, fed, k)

    logits, cache = jax.lax.cond(k < T - 1, advance, lambda _: (s.logits, s.cache), None)
    return s.replace(logits=logits, cache=cache, k=k + 1, scale=scale, conf=conf, conf_sum=conf_sum, tokens=tokens,
                     entropy=entropy, traj=traj)


def _axes(spec: LoopSpec) -> tuple[str, ...]:
    return tuple(a for a in (spec.prompt_axis, spec.cand_axis) if a is not None)


def cand_offset(spec: LoopSpec):
    """Index of this shard's first candidate slot among all shards': axis_index(cand_axis) * N0
    (0 unsharded). A slot's candidate id (its key) is first_candidate + this + local slot."""
    if spec.cand_axis is None:
        return jnp.int32(0)
    return (jax.lax.axis_index(spec.cand_axis) * spec.num_candidates).astype(jnp.int32)


def pool_alive(alive, spec: LoopSpec):
    """int32 scalar: the number of alive candidates in this shard (all its prompts), pmax'd over
    every sharded axis, so all shards agree (the compaction exit test and pool size)."""
    m = jnp.sum(alive).astype(jnp.int32)
    axes = _axes(spec)
    return jax.lax.pmax(m, axes) if axes else m


def loop(params, s: LoopState, spec: LoopSpec, stop=None) -> LoopState:
    """The token loop (not jitted; `run_loop` jits it, `sharding` runs it inside shard_map).
    Runs token steps until k == T, or (compaction) until every shard's alive candidates fit a
    smaller bucket than its pool (`compaction_limit`), or until k == stop (int32 scalar, may be
    traced: checkpoints share one compile) or k == spec.stop_at (static, if >= 0)."""
    M = s.owner.shape[0]

    def keep_going(s):
        go = s.k < spec.T
        if spec.stop_at >= 0:
            go &= s.k < spec.stop_at
        if stop is not None:
            go &= s.k < stop
        if spec.compaction and M > 1:
            go &= pool_alive(s.conf.alive, spec) > compaction_limit(M, spec.buckets)
        return go

    params = unstack_layers(params)  # per-layer weights sliced once per call, not every step (no-op if done)
    return jax.lax.while_loop(keep_going, lambda s: _step(params, spec, s), s)


def _run_loop(params, s: LoopState, *, spec: LoopSpec, stop=None) -> LoopState:
    return loop(params, s, spec, stop)


run_loop = jax.jit(_run_loop, static_argnames=("spec",))
run_loop.__doc__ = """Jitted `loop` (unsharded); `s` stays valid. Compiles once per (spec, pool size, stop given
or not)."""
advance_loop = jax.jit(_run_loop, static_argnames=("spec",), donate_argnames=("s",))
advance_loop.__doc__ = """`run_loop` that *donates* `s`: the loop writes its state (KV cache included) in place
instead of into fresh buffers. `s` is invalid afterwards. `drive` uses it."""


def loop_key(spec: LoopSpec) -> LoopSpec:
    """The spec the token loop is compiled for: stop_at dropped (passed as a traced `stop`) and,
    for the fixed-CFG policy, only the ScalingAR fields it reads kept (block_size for the state's
    shape, aH/aM for the confidence-only score), so plain / confidence-only / best-of-N / IS
    share one compiled loop."""
    spec = dataclasses.replace(spec, stop_at=-1)
    if spec.policy == "none":
        sc = spec.scaling
        spec = dataclasses.replace(spec, compaction=False,
                                   scaling=ScalingARConfig(block_size=sc.block_size, aH=sc.aH, aM=sc.aM))
    return spec


def shape_key(spec: LoopSpec) -> LoopSpec:
    """The spec of the shape-only pieces (start, compaction, selection, resampling): what
    determines the state's shapes, keys and padding, nothing of the policy."""
    sc = spec.scaling  # the state's shape: blocks, and the C history of a trailing rebound window
    return dataclasses.replace(spec, policy="none", compaction=False, stop_at=-1,
                               scaling=ScalingARConfig(block_size=sc.block_size, rebound_window=sc.rebound_window,
                                                       rebound_steps=sc.rebound_steps))


def init_loop(params, cond, cond_mask, key, prompt_ids, spec: LoopSpec, first_candidate=0) -> LoopState:
    """Prefill for P prompts x N0 candidate slots (CFG rows) and a fresh loop state (not jitted).
    Keys come from (prompt id, candidate id = first_candidate (int32 scalar, may be traced) + slot
    over all shards); padding slots (`spec.num_real`) start dead."""
    cfg, N0, T = spec.cfg, spec.num_candidates, spec.T
    P = cond.shape[0]
    rep = lambda x: None if x is None else jnp.repeat(x, N0, axis=0)  # noqa: E731
    logits, cache = decode.prefill(params, cfg, rep(cond), rep(cond_mask), use_cfg=True)
    f32 = jnp.zeros((T, P, N0), jnp.float32)
    traj = {"C": f32, "I": f32, "D": f32, "R": f32, "scale": f32, "alive": jnp.zeros((T, P, N0), bool),
            "theta": jnp.zeros((T, P), jnp.float32)}
    slot = cand_offset(spec) + jnp.arange(N0, dtype=jnp.int32)
    conf = init_state(spec.scaling, P, N0, cfg.grid_size)
    if spec.num_real >= 0:
        conf = conf.replace(alive=jnp.broadcast_to(slot < spec.num_real, (P, N0)))
    return LoopState(
        logits=logits, cache=cache, k=jnp.int32(0),
        keys=candidate_keys(key, prompt_ids, jnp.asarray(first_candidate, jnp.int32) + slot),
        row=jnp.arange(P * N0, dtype=jnp.int32).reshape(P, N0), owner=jnp.arange(P * N0, dtype=jnp.int32),
        scale=jnp.full((P, N0), spec.sampling.cfg_scale, jnp.float32),
        conf=conf,
        conf_sum=jnp.zeros((P, N0), jnp.float32),
        tokens=jnp.full((P, N0, T), -1, jnp.int32), entropy=jnp.zeros((P, N0, T), jnp.float32), traj=traj)


@functools.partial(jax.jit, static_argnames=("spec",))
def start_loop(params, cond, cond_mask, key, prompt_ids, first_candidate=0, *, spec: LoopSpec) -> LoopState:
    """Jitted `init_loop` (unsharded; first_candidate is traced: one compile for every offset)."""
    return init_loop(params, cond, cond_mask, key, prompt_ids, spec, first_candidate)


def compact_local(s: LoopState, rows: int) -> LoopState:
    """Gathers the pool rows of the alive candidates (in flat candidate order p*N + n) into a pool
    of `rows` rows (>= the alive count); the rest are free. Local: under sharding each shard
    compacts its own pool (not jitted; `compact` jits it)."""
    P, N = s.row.shape
    M = s.owner.shape[0]
    alive = s.conf.alive.reshape(P * N)
    order = jnp.argsort(~alive, stable=True)[:rows].astype(jnp.int32)  # alive candidates first, by id
    valid = alive[order]
    owner = jnp.where(valid, order, P * N)
    src = s.row.reshape(P * N)[order]  # the old pool row of each new row
    src = jnp.concatenate([src, src + M])
    row = jnp.zeros((P * N,), jnp.int32).at[owner].set(jnp.arange(rows, dtype=jnp.int32), mode="drop")
    return s.replace(logits=s.logits[src], cache=s.cache.map_rows(lambda x: x[src]), row=row.reshape(P, N),
                     owner=owner)


@functools.partial(jax.jit, static_argnames=("rows",))
def compact(s: LoopState, *, rows: int) -> LoopState:
    """Jitted `compact_local` (unsharded)."""
    return compact_local(s, rows)


BUCKETS = ("pow2", "fine")


def check_buckets(buckets: str) -> str:
    if buckets not in BUCKETS:
        raise ValueError(f"unknown compaction buckets {buckets!r}; expected one of {BUCKETS}")
    return buckets


def bucket(n: int, buckets: str = "pow2") -> int:
    """Smallest pool size >= n. "pow2": 1, 2, 4, 8, ...; "fine" adds 3 * 2**k (1, 2, 3, 4, 6, 8, 12,
    16, ...): under 1.5x the alive rows instead of 2x, for twice the compiled pool sizes."""
    p = 1 << max(0, int(n) - 1).bit_length()
    if check_buckets(buckets) == "fine" and p >= 4 and int(n) <= 3 * p // 4:
        return 3 * p // 4
    return p


def floor_bucket(n: int, buckets: str = "pow2") -> int:
    """Largest pool size <= n (n >= 1): the loop compacts once the alive count fits it."""
    q = 1 << (max(1, int(n)).bit_length() - 1)
    if check_buckets(buckets) == "fine" and q >= 2 and 3 * q // 2 <= int(n):
        return 3 * q // 2
    return q


def compaction_limit(rows: int, buckets: str = "pow2") -> int:
    """A pool of `rows` (> 1) rows is compacted once the alive count is <= this: the largest
    smaller bucket (`loop`'s exit test and `pool_schedule`'s replay share it)."""
    return floor_bucket(rows - 1, buckets)


def pool_schedule(alive, compaction: bool = True, buckets: str = "pow2") -> list[int]:
    """Pool rows (per CFG half) the unsharded loop runs each step with, replaying `drive`'s rule
    from an alive trajectory (T, P, N) (`StrategyResult.traj["alive"]`): the pool starts at P*N;
    when all alive candidates fit a smaller bucket it shrinks to the alive count's bucket."""
    alive = np.asarray(alive)
    T, P, N = alive.shape
    rows, prev, out = P * N, np.ones((P, N), bool), []
    for k in range(T):
        m = int(prev.sum())
        if compaction and rows > 1 and m <= compaction_limit(rows, buckets):
            rows = bucket(m, buckets)
        out.append(rows)
        prev = alive[k]
    return out


def drive(params, s: LoopState, spec: LoopSpec, on_progress: Callable[[int], None] | None = None) -> LoopState:
    """Runs the loop to k == T (or spec.stop_at), compacting at bucket boundaries if enabled."""
    end = spec.T if spec.stop_at < 0 else spec.stop_at
    key, stop = loop_key(spec), jnp.int32(end)
    while True:
        s = advance_loop(params, s, spec=key, stop=stop)  # donates s: no fresh state buffers per call
        k = int(s.k)
        if on_progress is not None:
            on_progress(k)
        if k >= end:
            return s
        s = compact(s, rows=bucket(int(jnp.sum(s.conf.alive)), spec.buckets))


# ------------------------------------------------------------------------------ public API
def _prepare(cfg: GPTConfig, sampling: SamplingConfig, scaling: ScalingARConfig, cond, cond_mask, num_candidates,
             prompt_ids):
    cfg.validate()
    sampling.validate(cfg.vocab_size)
    if isinstance(num_candidates, bool) or int(num_candidates) < 1:
        raise ValueError(f"num_candidates (N) must be >= 1, got {num_candidates}")
    if cfg.block_size != cfg.grid_size**2:
        raise ValueError("T must be grid_size**2")
    scaling.validate(cfg.grid_size, cfg.block_size)
    validate_condition(cfg, cond, cond_mask)
    P = int(np.shape(cond)[0])
    prompt_ids = jnp.arange(P, dtype=jnp.int32) if prompt_ids is None else jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.shape != (P,):
        raise ValueError(f"prompt_ids must have shape ({P},), got {prompt_ids.shape}")
    if cfg.model_type == "t2i":
        cond = jnp.asarray(cond, to_dtype(cfg.dtype))
        cond_mask = jnp.ones(cond.shape[:2], bool) if cond_mask is None else jnp.asarray(cond_mask, bool)
    else:
        cond, cond_mask = jnp.asarray(cond, jnp.int32), None
    return cond, cond_mask, prompt_ids


def _result(s: LoopState, winner, score, tokens_used) -> StrategyResult:
    P = s.tokens.shape[0]
    tokens = s.tokens[jnp.arange(P), winner]
    # terminated_at: first step at which a candidate is no longer alive, -1 if it never died
    term = jnp.full(s.tokens.shape[:2], -1, jnp.int32)
    alive_traj = s.traj["alive"]  # (T, P, N)
    died = ~alive_traj[-1]
    first_dead = jnp.argmax(~alive_traj, axis=0).astype(jnp.int32)
    term = jnp.where(died, first_dead, term)
    return StrategyResult(tokens=tokens, winner=winner, tokens_used=tokens_used, all_tokens=s.tokens,
                          entropy=s.entropy, terminated_at=term, score=score, traj=s.traj)


def finish_local(s: LoopState, strategy: str, spec: LoopSpec | None = None):
    """Selection and accounting on local arrays (not jitted). Returns (winner (P,) int32 index over
    all shards' candidate slots, score (P, N0) in this shard's original candidate layout,
    tokens_used (P,) int32 summed over all candidate shards). Padding candidates (`spec.num_real`)
    score -inf."""
    cand_axis = None if spec is None else spec.cand_axis
    P, N0 = s.tokens.shape[:2]
    offset = jnp.int32(0) if spec is None else cand_offset(spec)
    used = jnp.sum(s.conf.tokens_used, axis=1)
    tokens_used = used if cand_axis is None else jax.lax.psum(used, cand_axis)
    real = jnp.ones((N0,), bool)
    if spec is not None and spec.num_real >= 0:
        real = offset + jnp.arange(N0) < spec.num_real

    def gather(x):
        return x if cand_axis is None else jax.lax.all_gather(x, cand_axis, axis=1, tiled=True)

    if strategy == "scalingar":
        winner = select_winner(s.conf, cand_axis)  # gathered candidate axis = global ids
        score = jnp.where(s.conf.alive, s.conf.C, -jnp.inf)
    elif strategy == "confidence_only":
        score = jnp.where(real[None], s.conf_sum / s.tokens.shape[2], -jnp.inf)
        winner = jnp.argmax(gather(score), axis=1).astype(jnp.int32)  # gathered = global id layout
    else:
        score = jnp.zeros((P, N0))
        winner = jnp.zeros((P,), jnp.int32)
    return winner.astype(jnp.int32), score, tokens_used.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("strategy",))
def finish(s: LoopState, strategy: str) -> StrategyResult:
    """Selection and accounting at the end of a token loop (any bucket size, unsharded)."""
    return _result(s, *finish_local(s, strategy))


# ------------------------------------------------------------------------------ view layout
def to_view(s: LoopState) -> LoopState:
    """Flat pool rows -> an explicit (2, 1, M) row axis per shard: logits (2, 1, M, V), every cache
    buffer (2, 1, M, ...); owner (M,) -> (1, M). Local reshapes only: the global view arrays are
    the shards' pools side by side, (2, prompt shards, cand shards * M)."""
    M = s.owner.shape[0]
    rows = lambda x: x.reshape(2, 1, M, *x.shape[1:])  # noqa: E731
    return s.replace(logits=rows(s.logits), cache=s.cache.map_rows(rows), owner=s.owner[None])


def from_view(s: LoopState) -> LoopState:
    """Inverse of `to_view` (on local arrays: (2, 1, M, ...) -> 2M flat rows)."""
    M = s.owner.shape[1]
    rows = lambda x: x.reshape(2 * M, *x.shape[3:])  # noqa: E731
    return s.replace(logits=rows(s.logits), cache=s.cache.map_rows(rows), owner=s.owner[0])


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


class LocalExecutor:
    """Runs the loop pieces on one device (the default device). `scalingar_jax.sharding` has a
    drop-in executor that runs them under `shard_map`; the strategy logic on the host (drive,
    checkpoints, rewards, resampling draws) is shared, so both give the same decisions.

    Every method takes the *unsharded* `LoopSpec` (all P prompts, all N candidates)."""

    def __init__(self, params, cond, cond_mask, key, prompt_ids, first_candidate: int = 0):
        self.params = unstack_layers(params)  # the decode-time layout (no copy if already unstacked)
        self.cond, self.cond_mask, self.key, self.prompt_ids = cond, cond_mask, key, prompt_ids
        self.first_candidate = jnp.int32(check_first_candidate(first_candidate))

    def start(self, spec: LoopSpec) -> LoopState:
        return start_loop(self.params, self.cond, self.cond_mask, self.key, self.prompt_ids, self.first_candidate,
                          spec=shape_key(spec))

    def drive(self, s: LoopState, spec: LoopSpec, on_progress=None) -> LoopState:
        return drive(self.params, s, spec, on_progress)

    def tokens(self, s: LoopState) -> np.ndarray:
        """(P, N, T) int32 on the host, -1 where not generated."""
        return np.asarray(s.tokens)

    def resample(self, s: LoopState, idx: np.ndarray, spec: LoopSpec) -> LoopState:
        """idx: (P, N) source candidate of every slot (see `_resample`)."""
        return _resample(s, jnp.asarray(idx, jnp.int32))

    def finish(self, s: LoopState, strategy: str, spec: LoopSpec) -> StrategyResult:
        return finish(s, strategy)


def token_spec(cfg: GPTConfig, sampling: SamplingConfig, scaling: ScalingARConfig, strategy: str, num_candidates,
               compaction: bool | str) -> LoopSpec:
    """The unsharded `LoopSpec` of a reward-free strategy. compaction: False (masking only), True
    (= "pow2") or a bucket set name (`bucket`)."""
    policy = "scalingar" if strategy == "scalingar" else "none"
    buckets = check_buckets("pow2" if isinstance(compaction, bool) else str(compaction))
    return LoopSpec(cfg, sampling, scaling, policy, int(num_candidates),
                    compaction=bool(compaction) and policy == "scalingar" and scaling.use_termination,
                    buckets=buckets)


def check_first_candidate(first_candidate) -> int:
    """Validates a global candidate-id offset: an integer >= 0."""
    if isinstance(first_candidate, bool) or not isinstance(first_candidate, (int, np.integer)) or first_candidate < 0:
        raise ValueError(f"first_candidate must be an integer >= 0, got {first_candidate!r}")
    return int(first_candidate)


def _check_token_strategy(strategy: str) -> None:
    if strategy not in ("plain", "confidence_only", "scalingar"):
        raise ValueError(f"run_token_strategy handles plain/confidence_only/scalingar, got {strategy!r}")


def run_token_strategy(params, cfg: GPTConfig, cond, cond_mask=None, *, key, strategy: str = "scalingar",
                       num_candidates: int = 8, sampling: SamplingConfig = SamplingConfig(),
                       scaling: ScalingARConfig = ScalingARConfig(), compaction: bool | str = True, prompt_ids=None,
                       first_candidate: int = 0, on_progress=None) -> StrategyResult:
    """Strategies that need no reward: "plain", "confidence_only", "scalingar".

    cond: (P,) labels or (P, cls, caption_dim) features; cond_mask (P, cls). CFG rows always run
    (ScalingAR's scale may go to s_min = 1). compaction: False (masking only), True / "pow2"
    (power-of-two pools) or "fine" (also 3 * 2**k). first_candidate: global id of the first of the
    N candidates (keys come from ids first_candidate .. first_candidate + N - 1), so the N of
    Best-of-N can be split over calls or hosts with the same keys: plain/confidence_only
    candidates then differ only by floating point (a matmul over 2 rows may round differently
    from one over 16; `reproduce.py efficiency` counts the prompts whose tokens still matched).
    ScalingAR's pooled statistics depend on which candidates share a call. Returns a
    `StrategyResult`; `winner` indexes this call's candidates.
    """
    _check_token_strategy(strategy)
    cond, cond_mask, prompt_ids = _prepare(cfg, sampling, scaling, cond, cond_mask, num_candidates, prompt_ids)
    ex = LocalExecutor(params, cond, cond_mask, key, prompt_ids, first_candidate)
    spec = token_spec(cfg, sampling, scaling, strategy, num_candidates, compaction)
    return token_strategy_with(ex, spec, strategy, on_progress)


def token_strategy_with(ex, spec: LoopSpec, strategy: str, on_progress=None) -> StrategyResult:
    """A reward-free strategy on an executor (`LocalExecutor` or `sharding.ShardedExecutor`)."""
    s = ex.start(spec)
    s = ex.drive(s, spec, on_progress)
    return ex.finish(s, strategy, spec)


def _pick_by_reward(res: StrategyResult, scores: np.ndarray) -> StrategyResult:
    winner = jnp.asarray(np.argmax(scores, axis=1), jnp.int32)
    P = scores.shape[0]
    return res.replace(tokens=res.all_tokens[jnp.arange(P), winner], winner=winner, score=jnp.asarray(scores))


def best_of_n_with(ex, spec: LoopSpec, prompts, decode_fn, reward_fn, on_progress=None) -> StrategyResult:
    """Best-of-N on an executor: a plain run, then the highest reward wins."""
    res = token_strategy_with(ex, spec, "plain", on_progress)
    scores = _rewards(np.asarray(res.all_tokens), prompts, decode_fn, reward_fn)
    return _pick_by_reward(res, scores)


def run_best_of_n(params, cfg: GPTConfig, cond, cond_mask=None, *, prompts: Sequence[str], key,
                  reward_fn: RewardFn, decode_fn: DecodeFn, num_candidates: int = 8,
                  sampling: SamplingConfig = SamplingConfig(), prompt_ids=None, on_progress=None) -> StrategyResult:
    """Best-of-N: N full trajectories at the default CFG, the highest reward wins. Tokens: N*T."""
    cond, cond_mask, prompt_ids = _prepare(cfg, sampling, ScalingARConfig(), cond, cond_mask, num_candidates,
                                           prompt_ids)
    _check_prompts(prompts, cond.shape[0])
    ex = LocalExecutor(params, cond, cond_mask, key, prompt_ids)
    spec = token_spec(cfg, sampling, ScalingARConfig(), "plain", num_candidates, False)
    return best_of_n_with(ex, spec, prompts, decode_fn, reward_fn, on_progress)


def _check_prompts(prompts, P: int) -> None:
    if len(prompts) != P:
        raise ValueError(f"got {len(prompts)} prompts for {P} conditions")


@functools.partial(jax.jit, static_argnames=())
def _resample(s: LoopState, idx) -> LoopState:
    """Replaces every candidate slot by the slot idx (P, N) of the same prompt (pool rows copied).
    Keys stay with the slot (fresh continuations), so copies diverge."""
    P, N = idx.shape
    M = s.owner.shape[0]
    take = lambda x: jnp.take_along_axis(x, idx.reshape(P, N, *([1] * (x.ndim - 2))), axis=1)  # noqa: E731
    # pool row row[p, n] takes the content of row[p, idx[p, n]]; free rows keep their own
    rows = jnp.arange(M, dtype=jnp.int32).at[s.row.reshape(-1)].set(take(s.row).reshape(-1))
    rows = jnp.concatenate([rows, rows + M])
    conf = jax.tree.map(lambda x: take(x) if x.ndim >= 2 and x.shape[:2] == (P, N) else x, s.conf)
    p = jnp.arange(P)[:, None]
    tokens = s.tokens.at[p, jnp.arange(N)[None]].set(s.tokens[p, idx])
    entropy = s.entropy.at[p, jnp.arange(N)[None]].set(s.entropy[p, idx])
    return s.replace(logits=s.logits[rows], cache=s.cache.map_rows(lambda x: x[rows]),
                     conf=conf, conf_sum=take(s.conf_sum), tokens=tokens, entropy=entropy)


def is_checkpoints(cfg: GPTConfig, checkpoints, tau: float, fill_code: int) -> list[int]:
    """Validates the importance-sampling knobs; returns the checkpoint steps (sorted, unique)."""
    if not (tau > 0 and np.isfinite(tau)):
        raise ValueError(f"tau must be > 0, got {tau}")
    if not 0 <= fill_code < cfg.vocab_size:
        raise ValueError(f"fill_code must be in [0, {cfg.vocab_size}), got {fill_code}")
    cps = sorted({int(round(c * cfg.block_size)) for c in checkpoints})
    if any(c <= 0 or c >= cfg.block_size for c in cps):
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


def importance_sampling_with(ex, spec: LoopSpec, prompts, decode_fn, reward_fn, *, key, prompt_ids, cps,
                             tau: float, fill_code: int, on_progress=None) -> StrategyResult:
    """Importance sampling on an executor (see `run_importance_sampling`)."""
    s = ex.start(spec)
    for j, c in enumerate(cps):
        s = ex.drive(s, dataclasses.replace(spec, stop_at=c))
        if on_progress is not None:
            on_progress(c)
        tokens = ex.tokens(s)
        r = _rewards(np.where(tokens < 0, fill_code, tokens), prompts, decode_fn, reward_fn)
        s = ex.resample(s, resample_indices(key, j, prompt_ids, r, tau), spec)
    s = ex.drive(s, spec)
    if on_progress is not None:
        on_progress(spec.T)
    res = ex.finish(s, "plain", spec)
    return _pick_by_reward(res, _rewards(np.asarray(res.all_tokens), prompts, decode_fn, reward_fn))


def run_importance_sampling(params, cfg: GPTConfig, cond, cond_mask=None, *, prompts: Sequence[str], key,
                            reward_fn: RewardFn, decode_fn: DecodeFn, num_candidates: int = 8,
                            sampling: SamplingConfig = SamplingConfig(), checkpoints=(0.25, 0.5, 0.75),
                            tau: float = 0.1, fill_code: int = 0, prompt_ids=None,
                            on_progress=None) -> StrategyResult:
    """Importance sampling (TTS-VAR adapted to next-token prediction). Tokens: N*T.

    At each checkpoint fraction c the partial grid (tokens >= c*T set to `fill_code`) is decoded
    and scored; slots are resampled with probability ~ exp(reward / tau) (per prompt, keyed by
    prompt id and checkpoint). At the end the highest final reward wins.
    """
    cps = is_checkpoints(cfg, checkpoints, tau, fill_code)
    cond, cond_mask, prompt_ids = _prepare(cfg, sampling, ScalingARConfig(), cond, cond_mask, num_candidates,
                                           prompt_ids)
    _check_prompts(prompts, cond.shape[0])
    ex = LocalExecutor(params, cond, cond_mask, key, prompt_ids)
    spec = token_spec(cfg, sampling, ScalingARConfig(), "plain", num_candidates, False)
    return importance_sampling_with(ex, spec, prompts, decode_fn, reward_fn, key=key, prompt_ids=prompt_ids,
                                    cps=cps, tau=tau, fill_code=fill_code, on_progress=on_progress)
