"""The token loop every strategy runs: loop state, the jitted step and loop, compaction buckets,
the executor interface with its single-device implementation, and `drive`.

Two layouts. Everything per candidate (keys, guidance scale, confidence state, tokens,
trajectories) always keeps the original (P, N) layout: it is small, and the policies pool over
a prompt's candidates. The model's rows (logits and KV cache, cond and uncond) live in a flat
*pool* of M rows shared by all prompts: `row` (P, N) maps a candidate to its pool row and
`owner` (M,) a pool row to its flat candidate id p*N + n (P*N for a free row). Each step
draws a token for every pool row (all the vocabulary-sized work: sampling, token statistics,
the KL for ScalingAR's profile; `draw_rows`), so its cost follows the pool's rows, gathers
those per-row scalars to the candidates for the (P, N) update, and feeds the sampled tokens
back to the pool.

Termination is by masking inside a `lax.while_loop`. With `compaction=True` the loop leaves
early when the alive candidates of *all* prompts fit a smaller bucket than the pool (powers of
two; `compaction="fine"` adds 3 * 2**k); their rows are gathered into a pool of that bucket's
size, and the loop continues. The pool starts at P*N rows, each bucket size compiles once, and
no prompt is padded to the fullest prompt's width (a prompt with 1 survivor costs 2 rows however
many another prompt keeps). The loop is compiled for `loop_key(spec)`, so plain, confidence-only,
Best-of-N and importance sampling share one compiled loop and IS checkpoints pass their stop step
as a traced value. A candidate's randomness comes from (prompt id, candidate id, step), so
compacted and masked runs sample the same tokens wherever their logits are equal (a matmul over
fewer rows may round a logit by an ulp: README, "Exactness"); buffers hold values only for steps
where the candidate was alive.

Executors
---------
An `Executor` runs the loop pieces (`start`, `advance`, `compact`, `tokens`, `resample`,
`finish`) on some devices: `LocalExecutor` here on the default device, `sharding.ShardedExecutor`
under `shard_map` on a mesh. `drive` (the one compaction driver) and the host-side strategies
(`strategies`) only talk to the interface, so a sharded run takes the same decisions as a local
one. `strategies.make_executor` is the one place that picks between them.

Every piece is written for *local* arrays and takes its mesh axes from the `LoopSpec`
(`prompt_axis`, `cand_axis`; None = unsharded). With `cand_axis` set, `num_candidates` is the
per-shard slot count N0 and a slot's global candidate id is `axis_index(cand_axis) * N0 + slot`
(keys come from global ids, so a sharded run samples the same tokens where the logits agree); the profile/termination
/winner calls pool over the candidate axis with collectives; the compaction exit test is the
maximum over prompts *and shards* of the local alive count (`pool_alive`, a pmax), so every
shard leaves the while loop at the same step and compacts into the same pool size. `num_real`
marks padding candidate slots (slot >= num_real) dead from the start. The mesh layout itself
(`to_view`, PartitionSpecs) lives in `scalingar_jax.sharding`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scalingar_jax import decode
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.gpt import KVCache, decode_layout
from scalingar_jax.sampling import candidate_keys
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.policy import scalingar_update, select_winner
from scalingar_jax.scaling.profile import ConfidenceState, LogitStats, init_state, kl_divergence, token_stats


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

    gpt_cfg: GPTConfig
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
        return self.gpt_cfg.block_size


# ------------------------------------------------------------------------------ the step and the loop
def candidate_logits(logits, row):
    """Pool logits (2M, V) -> cond, uncond (P, N, V) of the candidates (row: (P, N) pool rows;
    a dead candidate reads some row, its values are masked by the caller)."""
    M = logits.shape[0] // 2
    r = jnp.clip(row, 0, M - 1)
    return logits[:M][r], logits[M:][r]


@struct.dataclass
class RowDraw:
    """The vocabulary-sized half of a token step, per model row pair (cond row r, uncond row
    M + r): every field (M,), or gathered to candidates (`at_rows`)."""

    tok: jax.Array  # int32 token drawn at the row's guidance scale
    hn: jax.Array  # float32 normalised entropy of softmax(lc) (the entropy record, confidence-only)
    margin: jax.Array  # float32 top-1 minus top-2 probability of softmax(lc)
    stats: LogitStats | None  # what ScalingAR's profile reads (policy "scalingar"), else None

    def at_rows(self, row) -> "RowDraw":
        """The draws of pool rows `row` (any int shape, clipped to [0, M)): fields of row's shape."""
        M = self.tok.shape[0]
        return jax.tree.map(lambda x: x[jnp.clip(row, 0, M - 1)], self)


def draw_rows(spec: LoopSpec, logits, keys, scale, k) -> RowDraw:
    """Samples token k of every model row pair and computes what the candidate step reads from
    the logits (traced): logits (2M, V) (cond rows, then uncond rows), keys (M,) the owners'
    candidate keys, scale (M,) their guidance scales, k int32 scalar or (M,) (each row its own
    token index). All vocabulary-sized work of a step happens here, once per model row, so a
    step's cost follows the rows it runs (a compacted or partly free pool), not the candidate
    slots it tracks."""
    sampling, scaling = spec.sampling, spec.scaling
    M = logits.shape[0] // 2
    lc, lu = logits[:M], logits[M:]
    tok = decode.next_tokens(sampling, lc, lu, scale, keys, k, True)  # CFG rows always run
    hn, margin = token_stats(lc)
    stats = None
    if spec.policy == "scalingar":
        Hn, m = hn, margin
        if scaling.entropy_source == "guided":
            Hn, m = token_stats(decode.sampling_logits(sampling, lc, lu, scale, k, True))
        stats = LogitStats(Hn=Hn, m=m, kl=kl_divergence(lc, lu))
    return RowDraw(tok=tok, hn=hn, margin=margin, stats=stats)


def row_values(x, owner):
    """Candidate values x (P, N) (any trailing axes) -> the values of pool rows' owners (M, ...):
    owner (M,) flat candidate ids p*N + n, P*N for a free row (it reads candidate 0's)."""
    P, N = x.shape[:2]
    return x.reshape(P * N, *x.shape[2:])[jnp.minimum(owner, P * N - 1)]


def candidate_step(spec: LoopSpec, s: LoopState, d: RowDraw) -> tuple[LoopState, jax.Array]:
    """The per-candidate half of a token step (traced): d, the step's `RowDraw` gathered to the
    candidates (fields (P, N): `draw_rows(...).at_rows(s.row)`), gives token s.k of the alive
    candidates; update the ScalingAR state with `policy.scalingar_update` (policy "scalingar")
    or count the tokens (policy "none"), record trajectories. Reads and returns only the (P, N)
    candidate fields (scale, conf, conf_sum, tokens, entropy, traj; k is not advanced), so
    `pool` runs it per prompt lane. Returns (state, tokens (P, N) int32, -1 for dead
    candidates). With k == T the writes of tokens, entropy and trajectories are dropped (out of
    bounds), and with no alive candidate conf and conf_sum stay unchanged."""
    gpt_cfg, sampling, scaling = spec.gpt_cfg, spec.sampling, spec.scaling
    k, T = s.k, spec.T
    alive = s.conf.alive
    tok = jnp.where(alive, d.tok, -1)
    hn = d.hn
    conf_sum = s.conf_sum + jnp.where(alive, 1.0 - (scaling.aH * hn + scaling.aM * (1.0 - d.margin)), 0.0)
    if spec.policy == "scalingar":
        conf, scale = scalingar_update(scaling, s.conf, d.stats, k, T, gpt_cfg.grid_size, sampling.cfg_scale,
                                       axis_name=spec.cand_axis)
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
    return s.replace(scale=scale, conf=conf, conf_sum=conf_sum, tokens=tokens, entropy=entropy, traj=traj), tok


def step(params, spec: LoopSpec, s: LoopState) -> LoopState:
    """One token step (traced; any pool size M): `draw_rows` over the pool's rows, gathered to
    the candidates for `candidate_step`, then the sampled tokens fed to the pool rows."""
    P, N = s.row.shape
    k, T = s.k, spec.T
    d = draw_rows(spec, s.logits, row_values(s.keys, s.owner), row_values(s.scale, s.owner), k)
    s, tok = candidate_step(spec, s, d.at_rows(s.row))

    # each pool row is fed its owner's token (free rows: code 0, never read)
    fed = jnp.concatenate([jnp.maximum(tok, 0).reshape(P * N), jnp.zeros((1,), tok.dtype)])[s.owner]
    fed = jnp.concatenate([fed, fed])

    def feed(_):
        return decode.decode_step(params, spec.gpt_cfg, s.cache, fed, k)

    logits, cache = jax.lax.cond(k < T - 1, feed, lambda _: (s.logits, s.cache), None)
    return s.replace(logits=logits, cache=cache, k=k + 1)


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


def token_loop(params, s: LoopState, spec: LoopSpec, stop=None) -> LoopState:
    """The token loop (traced: `run_loop` jits it, `sharding` runs it inside shard_map).
    Runs token steps until k == T, or (compaction) until every shard's alive candidates fit a
    smaller bucket than its pool (`compaction_limit`), or until k == stop (int32 scalar, may be
    traced: checkpoints share one compile) or k == spec.stop_at (static, if >= 0). params are
    read in the layout given (`gpt.decode_layout`, which `LocalExecutor` applies once)."""
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

    return jax.lax.while_loop(keep_going, lambda s: step(params, spec, s), s)


def _token_loop(params, s: LoopState, *, spec: LoopSpec, stop=None) -> LoopState:
    return token_loop(params, s, spec, stop)


run_loop = jax.jit(_token_loop, static_argnames=("spec",))
run_loop.__doc__ = """Jitted `token_loop` (unsharded) that leaves its input state valid: for inspection and
benchmarks. Compiles once per (spec, pool size, stop given or not)."""
run_loop_in_place = jax.jit(_token_loop, static_argnames=("spec",), donate_argnames=("s",))
run_loop_in_place.__doc__ = """`run_loop` that *donates* `s`: the loop writes its state (KV cache included) in place
instead of into fresh buffers, so `s` is invalid afterwards. `LocalExecutor.advance` uses it."""


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


# ------------------------------------------------------------------------------ start, compaction, selection
def init_loop(params, cond, cond_mask, key, prompt_ids, spec: LoopSpec, first_candidate=0) -> LoopState:
    """Prefill for P prompts x N0 candidate slots (CFG rows) and a fresh loop state (traced).
    Keys come from (prompt id, candidate id = first_candidate (int32 scalar, may be traced) + slot
    over all shards); padding slots (`spec.num_real`) start dead."""
    gpt_cfg, N0, T = spec.gpt_cfg, spec.num_candidates, spec.T
    P = cond.shape[0]
    logits, cache = decode.prefill_candidates(params, gpt_cfg, cond, cond_mask, num_candidates=N0, use_cfg=True)
    f32 = jnp.zeros((T, P, N0), jnp.float32)
    traj = {"C": f32, "I": f32, "D": f32, "R": f32, "scale": f32, "alive": jnp.zeros((T, P, N0), bool),
            "theta": jnp.zeros((T, P), jnp.float32)}
    slot = cand_offset(spec) + jnp.arange(N0, dtype=jnp.int32)
    conf = init_state(spec.scaling, P, N0, gpt_cfg.grid_size)
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


def compact(s: LoopState, rows: int) -> LoopState:
    """Gathers the pool rows of the alive candidates (in flat candidate order p*N + n) into a pool
    of `rows` rows (>= the alive count); the rest are free (traced; under sharding each shard
    compacts its own pool)."""
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


def select(s: LoopState, strategy: str, spec: LoopSpec | None = None):
    """Selection and accounting on local arrays (traced). Returns (winner (P,) int32 index over
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


def result(s: LoopState, winner, score, tokens_used) -> StrategyResult:
    """The `StrategyResult` of a finished state and `select`'s (winner, score, tokens_used) (traced)."""
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


def resample(s: LoopState, idx) -> LoopState:
    """Replaces every candidate slot by the slot idx (P, N) of the same prompt (pool rows copied;
    traced, unsharded). Keys stay with the slot (fresh continuations), so copies diverge."""
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


# ------------------------------------------------------------------------------ buckets
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
    smaller bucket (`token_loop`'s exit test and `pool_schedule`'s replay share it)."""
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


# ------------------------------------------------------------------------------ executors and drive
class Executor(Protocol):
    """Runs the loop pieces somewhere (one device, a mesh). Every method takes the *unsharded*
    `LoopSpec` (all P prompts, all N candidates); the state is the executor's own business.
    `strategies.make_executor` builds one from validated inputs."""

    def start(self, spec: LoopSpec) -> LoopState:
        """Prefill and a fresh state."""

    def advance(self, s: LoopState, spec: LoopSpec, stop: int) -> tuple[LoopState, int, jax.Array]:
        """Runs the loop (donating `s`) until k == stop or the pool should shrink. Returns (state,
        k (host int), alive: int32 scalar, the pool rows the fullest shard needs)."""

    def compact(self, s: LoopState, rows: int, spec: LoopSpec) -> LoopState:
        """Pools of `rows` rows (per shard)."""

    def tokens(self, s: LoopState) -> np.ndarray:
        """(P, N, T) int32 on the host, -1 where not generated."""

    def resample(self, s: LoopState, idx: np.ndarray, spec: LoopSpec) -> LoopState:
        """idx: (P, N) int32 source candidate of every slot, per prompt (see `resample`)."""

    def finish(self, s: LoopState, strategy: str, spec: LoopSpec) -> StrategyResult:
        """Selection and accounting; the result on this process's default device."""


@functools.partial(jax.jit, static_argnames=("rows",))
def _compact(s: LoopState, *, rows: int) -> LoopState:
    return compact(s, rows)


@functools.partial(jax.jit, static_argnames=("strategy",))
def _finish(s: LoopState, strategy: str) -> StrategyResult:
    return result(s, *select(s, strategy))


_resample = jax.jit(resample)


class LocalExecutor:
    """The loop pieces on one device (the default device). Inputs as `strategies.prepare` returns
    them: cond (P, ...), cond_mask (P, cls) or None, prompt_ids (P,) int32; first_candidate: the
    global id of candidate slot 0 (int >= 0)."""

    def __init__(self, params, cond, cond_mask, key, prompt_ids, first_candidate: int = 0):
        self.params = decode_layout(params)  # the decode-time layout, once
        self.cond, self.cond_mask, self.key, self.prompt_ids = cond, cond_mask, key, prompt_ids
        self.first_candidate = jnp.int32(first_candidate)

    def start(self, spec: LoopSpec) -> LoopState:
        return start_loop(self.params, self.cond, self.cond_mask, self.key, self.prompt_ids, self.first_candidate,
                          spec=shape_key(spec))

    def advance(self, s: LoopState, spec: LoopSpec, stop: int) -> tuple[LoopState, int, jax.Array]:
        s = run_loop_in_place(self.params, s, spec=loop_key(spec), stop=jnp.int32(stop))
        return s, int(s.k), jnp.sum(s.conf.alive)

    def compact(self, s: LoopState, rows: int, spec: LoopSpec) -> LoopState:
        return _compact(s, rows=rows)

    def tokens(self, s: LoopState) -> np.ndarray:
        return np.asarray(s.tokens)

    def resample(self, s: LoopState, idx: np.ndarray, spec: LoopSpec) -> LoopState:
        return _resample(s, jnp.asarray(idx, jnp.int32))

    def finish(self, s: LoopState, strategy: str, spec: LoopSpec) -> StrategyResult:
        return _finish(s, strategy)


def drive(ex: Executor, s: LoopState, spec: LoopSpec,
          on_progress: Callable[[int], None] | None = None) -> LoopState:
    """Runs the loop on `ex` to k == T (or spec.stop_at), compacting at bucket boundaries if
    enabled; on_progress(k) after every loop call. The state is donated (updated in place)."""
    end = spec.T if spec.stop_at < 0 else spec.stop_at
    while True:
        s, k, alive = ex.advance(s, spec, end)
        if on_progress is not None:
            on_progress(k)
        if k >= end:
            return s
        s = ex.compact(s, bucket(int(alive), spec.buckets), spec)
