"""The engine's traced pieces: the decode state, the token step and loop, prefill, insert,
compaction, selection, and the compaction buckets. Pure functions on *local* arrays (one
device's share); `scaling.engine` runs them under `shard_map` on a mesh (a 1-device mesh for
one device) and both schedulers (`strategies`: the batched strategies; `pool`: continuous
batching) drive them through it.

Two layouts. The model's rows live in a flat *pool* of M candidate rows (2M model rows with
CFG: cond rows 0..M-1, uncond rows M..2M-1). Everything per candidate lives in *lanes*: Q prompt
lanes of N candidate slots, every field lane-first ((Q, N, ...); per prompt (Q, ...)). `row`
(Q, N) maps a lane candidate to its pool row and `owner` (M,) a pool row to its lane candidate
q*N + n (Q*N for a free row). A row is occupied while its candidate is alive and its lane
running (k < T); a step frees the rows of candidates it prunes and of lanes it finishes.

A step draws a token for every pool row (all the vocabulary-sized work: sampling, token
statistics, the KL of ScalingAR's profile; `draw_rows`), so its cost follows the pool's rows;
gathers those per-row scalars to the lanes' candidates (`candidate_step`: the policy update and
the trajectory records) and feeds the sampled tokens back to the pool rows. Lanes run
- in *lockstep* (`LoopSpec.lockstep`, the batched scheduler): every lane at one token index;
  the candidate update runs on the whole (Q, N) arrays and the model step takes one position;
- or each at its own index (the pool): `candidate_step` per lane under `vmap` on P = 1 views,
  every row fed at its own position. A done or free lane has k = T and steps with its alive
  mask cleared, so its state stays as it was.

The loop (`token_loop`) is a `lax.while_loop` whose exit tests are traced, so one compile
serves every run of a pool size: leave when every lane is done, when a running lane reaches
`stop` (importance-sampling checkpoints), when some device's pool has room for the next prompt
(`need` free rows and a free lane: the pool admits), or when the fullest device's occupied rows
fit `shrink` (the host compacts into a smaller bucket, `compact`). Every test is a maximum over
the mesh's axes, so all devices leave at the same step.

Randomness comes from (prompt id, candidate id, step) only, so compacted, masked, pooled and
sharded runs sample the same tokens wherever their logits are equal (a matmul over other row
counts may round a logit by an ulp: README, "Exactness"). With `cand_axis` set (lockstep on a
mesh) `num_candidates` is the per-shard slot count N0 and a slot's candidate id is
`axis_index(cand_axis) * N0 + slot`; the policy pools over the candidate axis with collectives;
`num_real` marks padding slots (slot >= num_real) dead from the start. params are read in the
layout given (the model's `decode_layout`, which `engine.Engine` applies once).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scalingar_jax import decode
from scalingar_jax.config import SamplingConfig
from scalingar_jax.sampling import candidate_keys
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.policy import scalingar_update, select_winner
from scalingar_jax.scaling.profile import ConfidenceState, LogitStats, init_state, kl_divergence, token_stats
from scalingar_jax.token_model import TokenModel

TRAJ_FLOATS = ("C", "I", "D", "R", "scale")  # per-step float records; plus "alive" (bool) and "theta" (per lane)


@struct.dataclass
class DecodeState:
    """Everything the token loop carries (one device's share). Model rows: a pool of M cond rows
    then M uncond rows; lane fields lane-first (Q lanes of N candidate slots)."""

    logits: jax.Array  # (2M, V) float32 logits of the next token of every model row
    cache: object  # the model's cache of 2M rows (every leaf row-first)
    owner: jax.Array  # (M,) int32 lane candidate q*N + n of each pool row, Q*N for a free row
    row: jax.Array  # (Q, N) int32 pool row of each lane candidate (meaningful while it is occupied)
    k: jax.Array  # (Q,) int32 the next token index of each lane, T once it is done (or free)
    keys: jax.Array  # (Q, N) candidate keys
    scale: jax.Array  # (Q, N) float32 guidance scale for token k
    conf: ConfidenceState  # (Q, N) ScalingAR state (alive mask used by every strategy)
    conf_sum: jax.Array  # (Q, N) float32 sum of token confidence 1 - u (confidence-only baseline)
    tokens: jax.Array  # (Q, N, T) int32, -1 where not generated
    entropy: jax.Array  # (Q, N, T) float32 normalized entropy of each sampled token
    traj: dict  # name -> (Q, T, N) float32 / bool per-step records, "theta" (Q, T)
    steps: jax.Array  # int32 loop steps run
    busy: jax.Array  # int32 sum over steps of the occupied pool rows
    row_steps: jax.Array  # int32 sum over steps of the pool rows M (utilization = busy / row_steps)


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

    model: TokenModel
    sampling: SamplingConfig
    scaling: ScalingARConfig
    policy: str  # "none" (fixed CFG) or "scalingar"
    num_candidates: int  # N0: candidate slots per lane (per candidate shard when cand_axis is set)
    lockstep: bool = True  # every lane at one token index (batched) or each at its own (pool)
    num_real: int = -1  # >= 0: candidate slots >= num_real (over all shards) are padding, dead from start
    lane_axes: tuple[str, ...] = ()  # mesh axes the lanes are split over (inside shard_map)
    cand_axis: str | None = None  # mesh axis the candidate slots are split over (inside shard_map, lockstep)

    @property
    def T(self) -> int:
        return self.model.block_size

    @property
    def axes(self) -> tuple[str, ...]:
        """Every mesh axis the state is split over (the loop's exit tests reduce over them)."""
        return self.lane_axes + ((self.cand_axis,) if self.cand_axis is not None else ())


def loop_key(spec: LoopSpec) -> LoopSpec:
    """The spec the token loop is compiled for: for the fixed-CFG policy only the ScalingAR fields
    it reads kept (block_size for the state's shape, aH/aM for the confidence-only score), so
    plain / confidence-only / best-of-N / importance sampling share one compiled loop."""
    if spec.policy == "none":
        sc = spec.scaling
        spec = dataclasses.replace(spec, scaling=ScalingARConfig(block_size=sc.block_size, aH=sc.aH, aM=sc.aM))
    return spec


def shape_key(spec: LoopSpec) -> LoopSpec:
    """The spec of the shape-only pieces (prefill, insert, compaction, selection, resampling):
    what determines the state's shapes, keys and padding, nothing of the policy."""
    sc = spec.scaling  # the state's shape: blocks, and the C history of a trailing rebound window
    return dataclasses.replace(spec, policy="none",
                               scaling=ScalingARConfig(block_size=sc.block_size, rebound_window=sc.rebound_window,
                                                       rebound_steps=sc.rebound_steps))


# ------------------------------------------------------------------------------ the step and the loop
def candidate_logits(logits, row):
    """Pool logits (2M, V) -> cond, uncond (Q, N, V) of the lane candidates (row: (Q, N) pool
    rows; a candidate without a row reads some row, its values are masked by the caller)."""
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
    """Lane candidate values x (Q, N) (any trailing axes) -> the values of pool rows' owners
    (M, ...): owner (M,) lane candidate ids q*N + n, Q*N for a free row (it reads candidate 0's)."""
    Q, N = x.shape[:2]
    return x.reshape(Q * N, *x.shape[2:])[jnp.minimum(owner, Q * N - 1)]


def candidate_step(spec: LoopSpec, s: DecodeState, d: RowDraw, k) -> tuple[DecodeState, jax.Array]:
    """The per-candidate half of a token step (traced) at token index k (int32 scalar, the same
    for every lane of `s`): d, the step's `RowDraw` gathered to the candidates (fields (Q, N):
    `draw_rows(...).at_rows(s.row)`), gives token k of the alive candidates; update the ScalingAR
    state with `policy.scalingar_update` (policy "scalingar") or count the tokens (policy
    "none"), record trajectories. Reads and returns only lane fields (scale, conf, conf_sum,
    tokens, entropy, traj; k is not advanced), so the pool runs it per lane. Returns (state,
    tokens (Q, N) int32, -1 for dead candidates). With k == T the writes of tokens, entropy and
    trajectories are dropped (out of bounds), and with no alive candidate conf and conf_sum stay
    unchanged."""
    sampling, scaling = spec.sampling, spec.scaling
    alive = s.conf.alive
    tok = jnp.where(alive, d.tok, -1)
    hn = d.hn
    conf_sum = s.conf_sum + jnp.where(alive, 1.0 - (scaling.aH * hn + scaling.aM * (1.0 - d.margin)), 0.0)
    if spec.policy == "scalingar":
        conf, scale = scalingar_update(scaling, s.conf, d.stats, k, spec.T, spec.model.grid_size, sampling.cfg_scale,
                                       axis_name=spec.cand_axis)
    else:
        conf = s.conf.replace(tokens_used=s.conf.tokens_used + alive.astype(jnp.int32))
        scale = s.scale
    traj = dict(s.traj)
    # Per-step records only for candidates alive at the start of the step (the others keep 0).
    for name in ("C", "I", "D", "R"):
        traj[name] = traj[name].at[:, k].set(jnp.where(alive, getattr(conf, name), 0.0))
    traj["scale"] = traj["scale"].at[:, k].set(jnp.where(alive, s.scale, 0.0))
    traj["alive"] = traj["alive"].at[:, k].set(conf.alive)
    traj["theta"] = traj["theta"].at[:, k].set(conf.theta)
    tokens = s.tokens.at[:, :, k].set(tok)
    entropy = s.entropy.at[:, :, k].set(jnp.where(alive, hn, 0.0))
    return s.replace(scale=scale, conf=conf, conf_sum=conf_sum, tokens=tokens, entropy=entropy, traj=traj), tok


def _lane_fields(s: DecodeState) -> DecodeState:
    """The lane fields of `s` (the model rows and counters None)."""
    return s.replace(logits=None, cache=None, owner=None, row=None, k=None, steps=None, busy=None, row_steps=None)


def _per_lane_step(spec: LoopSpec, s: DecodeState, d: RowDraw, k) -> tuple[DecodeState, jax.Array]:
    """`candidate_step` with every lane at its own index k (Q,): vmapped over lanes, each a
    P = 1 view (a free reshape)."""
    one = lambda x: x[:, None]  # noqa: E731  (Q, ...) -> (Q, 1, ...): each lane a P = 1 state

    def lane(c, dd, kk):
        c, tok = candidate_step(spec, c, dd, kk)
        return jax.tree.map(lambda x: x[0], c), tok[0]

    c, tok = jax.vmap(lane)(jax.tree.map(one, _lane_fields(s)), jax.tree.map(one, d), k)
    return s.replace(**{f: getattr(c, f) for f in ("scale", "conf", "conf_sum", "tokens", "entropy", "traj")}), tok


def step(params, spec: LoopSpec, s: DecodeState) -> DecodeState:
    """One token step (traced; any pool size M and lane count Q): `draw_rows` over the pool's
    rows, gathered to the lanes' candidates for `candidate_step`, the sampled tokens fed to
    the pool rows (each at its lane's position), and the rows of candidates pruned now or of
    lanes that just finished freed."""
    (Q, N), T, M = s.row.shape, spec.T, s.owner.shape[0]
    running = s.k < T
    if spec.lockstep:  # every lane at one index: the whole (Q, N) update, one position
        k = row_k = s.k[0]
    else:  # each lane at its own index: per row (a free row reads 0)
        k = s.k
        row_k = jnp.concatenate([k, jnp.zeros((1,), k.dtype)])[s.owner // N]
    d = draw_rows(spec, s.logits, row_values(s.keys, s.owner), row_values(s.scale, s.owner), jnp.minimum(row_k, T - 1))
    d = d.at_rows(s.row)
    if spec.lockstep:
        s, tok = candidate_step(spec, s, d, k)
    else:  # a done or free lane steps with no alive candidate: its state stays as it was
        alive = s.conf.alive
        s, tok = _per_lane_step(spec, s.replace(conf=s.conf.replace(alive=alive & running[:, None])), d, k)
        s = s.replace(conf=s.conf.replace(alive=jnp.where(running[:, None], s.conf.alive, alive)))

    # each pool row is fed its owner's token (free rows: code 0, never read)
    fed = jnp.concatenate([jnp.maximum(tok, 0).reshape(Q * N), jnp.zeros((1,), tok.dtype)])[s.owner]
    fed = jnp.concatenate([fed, fed])
    if spec.lockstep:  # after the last token nothing is fed
        logits, cache = jax.lax.cond(k < T - 1, lambda _: spec.model.decode_step(params, s.cache, fed, k),
                                     lambda _: (s.logits, s.cache), None)
    else:  # a lane that just sampled its last token has no next position: its rows are freed below
        pos = jnp.minimum(row_k, T - 2)
        logits, cache = spec.model.decode_step(params, s.cache, fed, jnp.concatenate([pos, pos]))
    k_next = jnp.where(running, s.k + 1, s.k)
    keep = s.conf.alive & (k_next < T)[:, None]
    keep = jnp.concatenate([keep.reshape(Q * N), jnp.zeros((1,), bool)])[s.owner]
    return s.replace(logits=logits, cache=cache, k=k_next, owner=jnp.where(keep, s.owner, Q * N),
                     steps=s.steps + 1, busy=s.busy + jnp.sum(s.owner < Q * N).astype(jnp.int32),
                     row_steps=s.row_steps + M)


def free_rows(s: DecodeState):
    """int32 scalar: the number of free pool rows."""
    return jnp.sum(s.owner == s.row.size).astype(jnp.int32)


def token_loop(params, s: DecodeState, spec: LoopSpec, stop, need, shrink) -> DecodeState:
    """Token steps (traced; `engine` runs it under shard_map) until every lane is done, or
    - a running lane reaches `stop` (int32 scalar; T: never),
    - a device's pool has room for the next prompt: `need` free rows and a free lane (int32
      scalar; more than M: never),
    - the fullest device's occupied rows are at most `shrink` (int32 scalar; -1: never).
    Every test is reduced over the mesh axes (`spec.axes`): all devices leave at the same step."""
    T, M, axes = spec.T, s.owner.shape[0], spec.axes

    def any_device(x):
        return jax.lax.pmax(x.astype(jnp.int32), axes) > 0 if axes else x

    def keep_going(s):
        running = s.k < T
        room = (free_rows(s) >= need) & jnp.any(~running)
        occupied = M - free_rows(s)
        fullest = jax.lax.pmax(occupied, axes) if axes else occupied
        return (any_device(jnp.any(running)) & ~any_device(jnp.any(running & (s.k >= stop)))
                & ~any_device(room) & (fullest > shrink))

    return jax.lax.while_loop(keep_going, functools.partial(step, params, spec), s)


# ------------------------------------------------------------------------------ prefill, insert, compaction
def cand_offset(spec: LoopSpec):
    """Index of this shard's first candidate slot among all shards': axis_index(cand_axis) * N0
    (0 unsharded). A slot's candidate id (its key) is first_candidate + this + local slot."""
    if spec.cand_axis is None:
        return jnp.int32(0)
    return (jax.lax.axis_index(spec.cand_axis) * spec.num_candidates).astype(jnp.int32)


def _fresh_lanes(spec: LoopSpec, keys, alive) -> DecodeState:
    """The lane fields of Q fresh lanes (keys (Q, N), alive (Q, N) bool) at token 0."""
    Q, N = keys.shape
    T = spec.T
    f32 = jnp.zeros((Q, T, N), jnp.float32)
    traj = {name: f32 for name in TRAJ_FLOATS}
    traj["alive"] = jnp.zeros((Q, T, N), bool)
    traj["theta"] = jnp.zeros((Q, T), jnp.float32)
    conf = init_state(spec.scaling, Q, N, spec.model.grid_size).replace(alive=alive)
    return DecodeState(logits=None, cache=None, owner=None, row=None, k=jnp.zeros((Q,), jnp.int32), keys=keys,
                       scale=jnp.full((Q, N), spec.sampling.cfg_scale, jnp.float32), conf=conf,
                       conf_sum=jnp.zeros((Q, N), jnp.float32), tokens=jnp.full((Q, N, T), -1, jnp.int32),
                       entropy=jnp.zeros((Q, N, T), jnp.float32), traj=traj, steps=jnp.int32(0), busy=jnp.int32(0),
                       row_steps=jnp.int32(0))


def prefill(params, spec: LoopSpec, cond, cond_mask, key, prompt_ids, first_candidate=0) -> DecodeState:
    """The decode state of P prompts x N0 candidate slots (traced): P lanes at token 0, a pool of
    P*N0 rows in lane order (row p*N0 + n). The model prefills each prompt's condition once
    (cond (P, ...), cond_mask (P, S) or None) and its rows are repeated per candidate. Keys come
    from (prompt id (P,), candidate id = first_candidate (int32 scalar, may be traced) + slot
    over all shards); padding slots (`spec.num_real`) start dead and rowless."""
    N0 = spec.num_candidates
    P = cond.shape[0]
    logits, cache = spec.model.prefill(params, cond, cond_mask)
    rows = jnp.repeat(jnp.arange(2 * P, dtype=jnp.int32), N0)  # each half's row order: p*N0 + n
    slot = cand_offset(spec) + jnp.arange(N0, dtype=jnp.int32)
    alive = jnp.ones((P, N0), bool)
    if spec.num_real >= 0:
        alive = jnp.broadcast_to(slot < spec.num_real, (P, N0))
    keys = candidate_keys(key, prompt_ids, jnp.asarray(first_candidate, jnp.int32) + slot)
    ids = jnp.arange(P * N0, dtype=jnp.int32)
    return _fresh_lanes(spec, keys, alive).replace(
        logits=logits[rows], cache=jax.tree.map(lambda x: x[rows], cache),
        owner=jnp.where(alive.reshape(-1), ids, P * N0), row=ids.reshape(P, N0))


def empty(spec: LoopSpec, rows: int, lanes: int, key) -> DecodeState:
    """A pool of `rows` free candidate rows and `lanes` free lanes (traced; `key`: any key of the
    run's key type, for the keys' dtype)."""
    N = spec.num_candidates
    keys = jax.eval_shape(lambda: candidate_keys(key, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)))
    s = _fresh_lanes(spec, jnp.zeros((lanes, N), keys.dtype), jnp.zeros((lanes, N), bool))
    return s.replace(logits=jnp.zeros((2 * rows, spec.model.vocab_size), jnp.float32),
                     cache=spec.model.init_cache(2 * rows), owner=jnp.full((rows,), lanes * N, jnp.int32),
                     row=jnp.zeros((lanes, N), jnp.int32), k=jnp.full((lanes,), spec.T, jnp.int32))


def insert(s: DecodeState, prefix: DecodeState, lanes) -> DecodeState:
    """The Q' lanes of a fresh `prefix` (from `prefill`: its rows in lane order) put into lanes
    `lanes` ((Q',) int32, free lanes) and the first Q'*N free pool rows of `s` (the caller
    checked there are enough; traced)."""
    M, (Q, N) = s.owner.shape[0], s.row.shape
    Qp = prefix.row.shape[0]
    rows = jnp.argsort(s.owner != Q * N, stable=True)[: Qp * N].astype(jnp.int32)  # the first free rows
    idx = jnp.concatenate([rows, rows + M])
    occupied = prefix.owner < Qp * N
    owner = jnp.where(occupied, (lanes[:, None] * N + jnp.arange(N, dtype=jnp.int32)).reshape(-1), Q * N)
    lane = lambda dst, src: dst.at[lanes].set(src)  # noqa: E731
    new = jax.tree.map(lane, _lane_fields(s), _lane_fields(prefix))
    return s.replace(logits=s.logits.at[idx].set(prefix.logits),
                     cache=jax.tree.map(lambda dst, src: dst.at[idx].set(src), s.cache, prefix.cache),
                     owner=s.owner.at[rows].set(owner), row=lane(s.row, rows.reshape(Qp, N)), k=lane(s.k, prefix.k),
                     **{f: getattr(new, f) for f in ("keys", "scale", "conf", "conf_sum", "tokens", "entropy", "traj")})


def compact(s: DecodeState, rows: int) -> DecodeState:
    """Gathers the pool rows of the occupied candidates (alive, lane running; in lane candidate
    order q*N + n) into a pool of `rows` rows (>= their count); the rest are free (traced; on a
    mesh each device compacts its own pool)."""
    Q, N = s.row.shape
    M = s.owner.shape[0]
    occupied = (s.conf.alive & (s.k < s.tokens.shape[2])[:, None]).reshape(Q * N)
    order = jnp.argsort(~occupied, stable=True)[:rows].astype(jnp.int32)  # occupied candidates first, by id
    owner = jnp.where(occupied[order], order, Q * N)
    src = s.row.reshape(Q * N)[order]  # the old pool row of each new row
    src = jnp.concatenate([src, src + M])
    row = jnp.zeros((Q * N,), jnp.int32).at[owner].set(jnp.arange(rows, dtype=jnp.int32), mode="drop")
    return s.replace(logits=s.logits[src], cache=jax.tree.map(lambda x: x[src], s.cache), row=row.reshape(Q, N),
                     owner=owner)


# ------------------------------------------------------------------------------ selection
def select(s: DecodeState, strategy: str, spec: LoopSpec | None = None):
    """Selection and accounting on lane fields (traced). Returns (winner (Q,) int32 index over
    all shards' candidate slots, score (Q, N0) in this shard's candidate layout, tokens_used (Q,)
    int32 summed over all candidate shards). Padding candidates (`spec.num_real`) score -inf."""
    cand_axis = None if spec is None else spec.cand_axis
    Q, N0 = s.tokens.shape[:2]
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
        score = jnp.zeros((Q, N0))
        winner = jnp.zeros((Q,), jnp.int32)
    return winner.astype(jnp.int32), score, tokens_used.astype(jnp.int32)


def result(s: DecodeState, winner, score, tokens_used) -> StrategyResult:
    """The `StrategyResult` of finished lanes (P = Q) and `select`'s (winner, score, tokens_used)
    (traced): trajectories as (T, P, N)."""
    P = s.tokens.shape[0]
    tokens = s.tokens[jnp.arange(P), winner]
    # terminated_at: first step at which a candidate is no longer alive, -1 if it never died
    alive = s.traj["alive"]  # (P, T, N)
    first_dead = jnp.argmax(~alive, axis=1).astype(jnp.int32)
    term = jnp.where(~alive[:, -1], first_dead, jnp.full(s.tokens.shape[:2], -1, jnp.int32))
    traj = {name: jnp.swapaxes(x, 0, 1) for name, x in s.traj.items()}
    return StrategyResult(tokens=tokens, winner=winner, tokens_used=tokens_used, all_tokens=s.tokens,
                          entropy=s.entropy, terminated_at=term, score=score, traj=traj)


def harvest(s: DecodeState, lanes, strategy: str, spec: LoopSpec | None = None) -> StrategyResult:
    """The `StrategyResult` of lanes `lanes` ((L,) int32; their prompts are done) (traced)."""
    one = jax.tree.map(lambda x: x[lanes], _lane_fields(s))
    return result(one, *select(one, strategy, spec))


# ------------------------------------------------------------------------------ buckets
BUCKETS = ("pow2", "fine")


def check_buckets(buckets: str) -> str:
    """`buckets` if it names a bucket set (`BUCKETS`), else a ValueError naming it."""
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
    smaller bucket (the schedulers' `shrink` and `pool_schedule`'s replay share it)."""
    return floor_bucket(rows - 1, buckets)


def pool_schedule(alive, compaction: bool = True, buckets: str = "pow2") -> list[int]:
    """Pool rows (per CFG half) the batched one-device loop runs each step with, replaying its
    compaction rule from an alive trajectory (T, P, N) (`StrategyResult.traj["alive"]`): the
    pool starts at P*N; when all alive candidates fit a smaller bucket it shrinks to the alive
    count's bucket."""
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
