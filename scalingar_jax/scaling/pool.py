"""Continuous batching over a prompt set: a fixed pool of model rows that prompts enter and leave.

The batched loop (`loop.drive`) runs P prompts together from token 0 to T: rows that ScalingAR
prunes only pay off at the next compaction bucket, and the device runs at the width of the
slowest prompt. Here a pool of M candidate rows (2M model rows: cond rows 0..M-1, uncond rows
M..2M-1) runs without pause; a prompt enters when M has room for its N candidates, is prefilled
into free rows and decodes; the rows of pruned candidates and of finished prompts are reused by
the next prompt, as LLM servers do with continuous batching. Once no prompt waits, the
drained pool shrinks to power-of-two buckets of its occupied rows (as the batched loop compacts).

Every row carries its own position (`gpt.Transformer` with a per-row `start`): a prompt's
candidates share their prompt's token index k, prompts in the pool are at different k. A
prompt's candidates stay in lock-step, so the per-prompt ScalingAR state (pooled statistics,
quantile threshold, termination, winner) is the batched loop's: each prompt lives in a *lane*,
a P = 1 `LoopState` (without model rows) advanced by `loop.candidate_step` under `vmap`. The
vocabulary-sized work of a step (sampling, token statistics, the KL of the profile) is done once
per pool row (`loop.draw_rows`, as the batched loop does), each row at its lane's token index,
so a lane costs only its (1, N) scalar updates. Keys come from (seed, prompt id, candidate id)
and token k's draw from the step, so per prompt the tokens, winners, token counts and
termination steps are those of `strategies.run_token_strategy` (floats such as C may differ in
the last bits: XLA rounds the (1, N) per-lane math, and a matmul over another number of rows,
differently; tests/test_pool.py).

State (`PoolState`, one pytree): the model rows (logits, KV cache), the slot table (`owner`
(M,): lane candidate q*N + n of every pool row, Q*N for a free row; `row` (Q, N): pool row of
every lane candidate), the Q lanes stacked on a leading axis (k (Q,), keys (Q, 1, N), conf,
tokens (Q, 1, N, T), traj name -> (Q, T, 1, N), ...), and counters. A done or free lane has
k = T and steps with its alive mask cleared, so `candidate_step` leaves it unchanged. The
jitted pieces are pure functions of it: `pool_loop` (steps until the pool has room for the
next prompt, can shrink, or every lane is done; compiled once per pool size and lane count),
`admit` (prefill one prompt into free rows and a free lane), `shrink_pool`, `harvest` (a
finished lane's `StrategyResult`). The host (`run_pool`) only admits, shrinks and harvests
between calls of `pool_loop`. Importance sampling is not pooled: its checkpoints would stop the
pool whenever any prompt reaches one, to decode and score that prompt's partial grid.

On a mesh (`ShardedPool`) each device keeps its own pool and lanes: a prompt never spans
devices, so the step needs no collective; `pool_loop` runs under `shard_map` and leaves when
any pool has room (a pmax), and the host deals waiting prompts to the pools with room.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import deque
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from scalingar_jax import decode
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.gpt import KVCache, decode_layout, init_cache, layers_stacked
from scalingar_jax.scaling import strategies as S
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.loop import (BUCKETS, LoopSpec, LoopState, StrategyResult, bucket, candidate_step,
                                        compaction_limit, draw_rows, init_loop, result, row_values, select)


@struct.dataclass
class PoolState:
    """The pool: M candidate rows (2M model rows with CFG), Q prompt lanes of N candidates."""

    logits: jax.Array  # (2M, V) logits of the next token of every model row
    cache: KVCache  # 2M rows
    owner: jax.Array  # (M,) int32 lane candidate q*N + n of each pool row, Q*N for a free row
    row: jax.Array  # (Q, N) int32 pool row of each lane candidate (meaningful while it is alive)
    lanes: LoopState  # P = 1 loop states stacked on a leading Q axis (logits/cache/row/owner None)
    steps: jax.Array  # int32 pool steps run
    busy: jax.Array  # int32 sum over steps of the occupied rows
    row_steps: jax.Array  # int32 sum over steps of the pool rows M (utilization = busy / row_steps)


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """What a pool run cost: pool steps, rows (M at the start, summed over pools), row_steps
    (candidate rows run, summed over steps: 2x model rows), utilization = occupied / run row
    steps, sizes: the pool sizes used (the tail shrinks the pool: `run_pool`)."""

    steps: int
    rows: int
    row_steps: int
    utilization: float
    sizes: tuple[int, ...]


def check_pool(rows, num_candidates: int, lanes=None, prunes: bool = True) -> tuple[int, int]:
    """Validates a pool of `rows` candidate rows (2 model rows each: CFG) for N candidates per
    prompt and `lanes` prompt lanes. lanes None: rows // N, four times that if candidates are
    pruned (`prunes`: a prompt then holds fewer rows, ~0.4 N on average when ScalingAR spends
    40% of Best-of-N's tokens, so more prompts fit; a lane costs its (1, N) candidate updates
    and trajectory writes each step, small but not free). Returns (rows, lanes)."""
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"pool rows must be an integer >= 1, got {rows!r}")
    if int(num_candidates) > int(rows):
        raise ValueError(f"the pool holds {rows} candidate rows ({2 * rows} model rows with CFG) but one prompt "
                         f"needs N = {num_candidates} ({2 * num_candidates} model rows): use a pool of at least "
                         f"{num_candidates} rows or fewer candidates")
    if lanes is None:
        lanes = max(1, (4 if prunes else 1) * (int(rows) // int(num_candidates)))
    if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1:
        raise ValueError(f"pool lanes must be an integer >= 1, got {lanes!r}")
    return int(rows), int(lanes)


def _lane(s: LoopState) -> LoopState:
    """A P = 1 loop state without its model rows: what a lane keeps."""
    return s.replace(logits=None, cache=None, row=None, owner=None)


# ------------------------------------------------------------------------------ the jitted pieces
def empty_pool(params, cond, cond_mask, key, spec: LoopSpec, rows: int, lanes: int) -> PoolState:
    """A pool of `rows` free candidate rows and `lanes` free lanes (traced). cond (1, ...),
    cond_mask (1, cls) or None: any condition of the run's shape (only shapes are read)."""
    shapes = jax.eval_shape(lambda: _lane(init_loop(params, cond, cond_mask, key, jnp.zeros((1,), jnp.int32), spec)))
    lane = jax.tree.map(lambda x: jnp.zeros((lanes,) + x.shape, x.dtype), shapes)
    lane = lane.replace(k=jnp.full((lanes,), spec.T, jnp.int32))  # free: done, nothing alive
    V = spec.gpt_cfg.vocab_size
    cache = init_cache(spec.gpt_cfg, 2 * rows, stacked=layers_stacked(params))  # the layout prefill gives
    return PoolState(logits=jnp.zeros((2 * rows, V), jnp.float32), cache=cache,
                     owner=jnp.full((rows,), lanes * spec.num_candidates, jnp.int32),
                     row=jnp.zeros((lanes, spec.num_candidates), jnp.int32), lanes=lane, steps=jnp.int32(0),
                     busy=jnp.int32(0), row_steps=jnp.int32(0))


def free_rows(s: PoolState):
    """int32 scalar: the number of free pool rows."""
    return jnp.sum(s.owner == s.row.size).astype(jnp.int32)


def admit(params, s: PoolState, cond, cond_mask, key, prompt_id, first_candidate, lane, spec: LoopSpec) -> PoolState:
    """Prefills one prompt (cond (1, ...), cond_mask (1, cls) or None, prompt_id int32 scalar)
    into the first N free pool rows (the caller checked that N are free) and lane `lane` (int32
    scalar, a free lane; traced). Its candidates' keys come from (prompt id, first_candidate + n)."""
    M, (Q, N) = s.owner.shape[0], s.row.shape
    new = init_loop(params, cond, cond_mask, key, jnp.reshape(prompt_id, (1,)), spec, first_candidate)
    rows = jnp.argsort(s.owner != Q * N, stable=True)[:N].astype(jnp.int32)
    idx = jnp.concatenate([rows, rows + M])
    put = lambda dst, src: dst.at[idx].set(src)  # noqa: E731
    return s.replace(logits=put(s.logits, new.logits), cache=jax.tree.map(put, s.cache, new.cache),
                     owner=s.owner.at[rows].set(lane * N + jnp.arange(N, dtype=jnp.int32)),
                     row=s.row.at[lane].set(rows),
                     lanes=jax.tree.map(lambda dst, src: dst.at[lane].set(src), s.lanes, _lane(new)))


def pool_step(params, spec: LoopSpec, s: PoolState) -> PoolState:
    """One pool step (traced): every occupied pool row draws its candidate's token k at its
    lane's index (`loop.draw_rows`, the vocabulary-sized work, once per row whatever the lane
    count), every running lane updates its candidates from those draws (`loop.candidate_step`
    per lane), every row is fed its token at its own position, and the rows of candidates
    pruned now or of lanes that just finished (k reaches T) become free."""
    (Q, N), T = s.row.shape, spec.T
    k = s.lanes.k
    lane_k = jnp.concatenate([k, jnp.zeros((1,), k.dtype)])[s.owner // N]  # (M,): a free row reads 0
    flat = lambda x: row_values(x.reshape(Q, N), s.owner)  # noqa: E731  (Q, 1, N) lane field -> (M,)
    d = draw_rows(spec, s.logits, flat(s.lanes.keys), flat(s.lanes.scale), jnp.minimum(lane_k, T - 1))
    d = d.at_rows(s.row[:, None])  # (Q, 1, N): each lane's candidates
    # a done lane (k == T) steps with no alive candidate: its state stays as it was
    run = (k < T)[:, None, None]
    alive = s.lanes.conf.alive
    lanes = s.lanes.replace(conf=s.lanes.conf.replace(alive=alive & run))
    lanes, tok = jax.vmap(functools.partial(candidate_step, spec))(lanes, d)
    lanes = lanes.replace(k=jnp.where(k < T, k + 1, k),
                          conf=lanes.conf.replace(alive=jnp.where(run, lanes.conf.alive, alive)))
    # each pool row is fed its owner's token at its lane's token index (free rows: code 0 at 0)
    fed = jnp.concatenate([jnp.maximum(tok, 0).reshape(Q * N), jnp.zeros((1,), tok.dtype)])[s.owner]
    # a lane that just sampled its last token has no next position: its rows are freed below
    pos = jnp.minimum(lane_k, T - 2)
    logits, cache = decode.decode_step(params, spec.gpt_cfg, s.cache, jnp.concatenate([fed, fed]),
                                       jnp.concatenate([pos, pos]))
    keep = lanes.conf.alive.reshape(Q, N) & (lanes.k < T)[:, None]
    keep = jnp.concatenate([keep.reshape(Q * N), jnp.zeros((1,), bool)])[s.owner]
    return s.replace(logits=logits, cache=cache, owner=jnp.where(keep, s.owner, Q * N), lanes=lanes,
                     steps=s.steps + 1, busy=s.busy + jnp.sum(s.owner < Q * N).astype(jnp.int32),
                     row_steps=s.row_steps + s.owner.shape[0])


def pool_loop(params, s: PoolState, need, spec: LoopSpec, axes: tuple[str, ...] = (), shrink=-1):
    """Pool steps until every lane is done, or until the pool has room for the next prompt:
    `need` (int32 scalar) free rows and a done lane (pass need > M when no prompt waits), or
    until at most `shrink` (int32 scalar; -1: never) rows are occupied. Returns (state, free
    rows int32, lane k (Q,) int32). Traced. axes: the mesh axes of a sharded run (inside
    shard_map, one pool per device): every pool steps until one of them has room, the fullest
    fits `shrink` or all are done (the tests are pmax'd: all leave the loop at the same step)."""
    T = spec.T

    def any_pool(x):
        return jax.lax.pmax(x.astype(jnp.int32), axes) > 0 if axes else x

    def go(s):
        room = (free_rows(s) >= need) & jnp.any(s.lanes.k >= T)
        occupied = s.owner.shape[0] - free_rows(s)
        fullest = jax.lax.pmax(occupied, axes) if axes else occupied
        return any_pool(jnp.any(s.lanes.k < T)) & ~any_pool(room) & (fullest > shrink)

    s = jax.lax.while_loop(go, functools.partial(pool_step, params, spec), s)
    return s, free_rows(s), s.lanes.k


def shrink_pool(s: PoolState, rows: int) -> PoolState:
    """The occupied rows gathered into a pool of `rows` rows (>= the occupied count; traced):
    the drained tail of a run steps fewer rows (as `loop.compact` does for the batched loop)."""
    M, free = s.owner.shape[0], s.row.size
    order = jnp.argsort(s.owner == free, stable=True)[:rows].astype(jnp.int32)  # occupied rows first
    src = jnp.concatenate([order, order + M])
    new_row = jnp.zeros((M,), jnp.int32).at[order].set(jnp.arange(rows, dtype=jnp.int32))
    return s.replace(logits=s.logits[src], cache=s.cache.map_rows(lambda x: x[src]), owner=s.owner[order],
                     row=new_row[s.row])


def harvest(s: PoolState, lane, strategy: str) -> StrategyResult:
    """The `StrategyResult` (P = 1) of lane `lane` (int32 scalar; its prompt is done). Traced."""
    one = jax.tree.map(lambda x: x[lane], s.lanes)
    return result(one, *select(one, strategy))


_empty = jax.jit(empty_pool, static_argnames=("spec", "rows", "lanes"))
_admit = jax.jit(admit, static_argnames=("spec",), donate_argnames=("s",))
run_pool_loop = jax.jit(pool_loop, static_argnames=("spec",), donate_argnames=("s",))
run_pool_loop.__doc__ = """Jitted `pool_loop` (donates the state). Compiles once per (spec, pool rows, lanes)."""
_harvest = jax.jit(harvest, static_argnames=("strategy",))
_shrink = jax.jit(shrink_pool, static_argnames=("rows",))


# ------------------------------------------------------------------------------ the host driver
def _stack(parts: list[StrategyResult]) -> StrategyResult:
    """P = 1 results (numpy) -> one result over all prompts (traj (T, P, ...): prompts on axis 1)."""
    cat = lambda xs, axis=0: jnp.asarray(np.concatenate(xs, axis=axis))  # noqa: E731
    traj = {name: cat([p.traj[name] for p in parts], 1) for name in parts[0].traj}
    fields = {f.name: cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(StrategyResult)
              if f.name != "traj"}
    return StrategyResult(**fields, traj=traj)


class _Local:
    """The pool's jitted pieces on the default device (one pool)."""

    pools = 1

    def __init__(self, params, spec, cond, cond_mask, key, prompt_ids, first_candidate, rows, lanes):
        self.params, self.spec, self.cond, self.cond_mask, self.key = params, spec, cond, cond_mask, key
        self.prompt_ids, self.first = prompt_ids, jnp.int32(first_candidate)
        self.rows, self.lanes = rows, lanes

    def _one(self, x, i):
        return None if x is None else x[i:i + 1]

    def empty(self) -> PoolState:
        return _empty(self.params, self._one(self.cond, 0), self._one(self.cond_mask, 0), self.key, spec=self.spec,
                      rows=self.rows, lanes=self.lanes)

    def admit(self, s, todo):
        """todo: [(pool 0, lane, prompt index)]."""
        for _, q, i in todo:
            s = _admit(self.params, s, self._one(self.cond, i), self._one(self.cond_mask, i), self.key,
                       self.prompt_ids[i], self.first, jnp.int32(q), spec=self.spec)
        return s

    def loop(self, s, need, shrink):
        s, free, k = run_pool_loop(self.params, s, jnp.int32(need), spec=self.spec, shrink=jnp.int32(shrink))
        return s, np.array(free).reshape(1), np.array(k).reshape(1, -1)

    def shrink(self, s, rows):
        return _shrink(s, rows=rows)

    def harvest(self, s, d, q, strategy):
        return _harvest(s, jnp.int32(q), strategy)

    def totals(self, s):
        return int(s.steps), int(s.busy), int(s.row_steps)


class ShardedPool(_Local):
    """One pool per device of `mesh` (a `sharding.make_mesh` mesh without a "model" axis; its
    devices, prompts x cands, are the pools in order). The state is the local `PoolState` with a
    leading pool axis sharded over every mesh axis; `pool_loop` and `admit` run under
    `shard_map` on each device's own pool, `harvest` reads one lane of one pool at the jit level."""

    def __init__(self, *args, mesh):
        from scalingar_jax import sharding as SH

        super().__init__(*args)
        SH._check_mesh(mesh)
        if SH.MODEL in mesh.axis_names:
            raise ValueError("the prompt pool keeps whole prompts on one device: use a mesh without a 'model' axis")
        self.mesh, self.axes = mesh, (SH.PROMPTS, SH.CANDS)
        self.pools = int(mesh.size)
        self.params = SH._on_mesh(self.params, mesh)
        key = jnp.asarray(self.key)
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        self.impl = str(jax.random.key_impl(key)) if typed else None
        self.key_data = SH.put(np.asarray(jax.random.key_data(key) if typed else key), mesh, SH.P())
        self.cond = np.asarray(self.cond)
        self.cond_mask = None if self.cond_mask is None else np.asarray(self.cond_mask)
        self.prompt_ids = np.asarray(self.prompt_ids)
        self.first = SH.put(np.int32(self.first), mesh, SH.P())

    def _split(self, tree):
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.axes)))

    def empty(self) -> PoolState:
        one = super().empty()
        return self._split(jax.tree.map(lambda x: jnp.broadcast_to(x, (self.pools,) + x.shape), one))

    def admit(self, s, todo):
        """todo: [(pool, lane, prompt index)], at most one per pool: one call admits them all."""
        D = self.pools
        flag, lane, idx = np.zeros(D, bool), np.zeros(D, np.int32), np.zeros(D, np.int64)
        for d, q, i in todo:
            flag[d], lane[d], idx[d] = True, q, i
        mask = None if self.cond_mask is None else self._split(self.cond_mask[idx][:, None])
        return _sharded_admit(self.params, s, self._split(self.cond[idx][:, None]), mask, self.key_data,
                              self._split(self.prompt_ids[idx]), self.first, self._split(lane), self._split(flag),
                              spec=self.spec, mesh=self.mesh, axes=self.axes, impl=self.impl)

    def loop(self, s, need, shrink):
        s, free, k = _sharded_loop(self.params, s, jnp.int32(need), jnp.int32(shrink), spec=self.spec,
                                   mesh=self.mesh, axes=self.axes)
        return s, np.array(free), np.array(k)

    def shrink(self, s, rows):
        return _sharded_shrink(s, rows=rows, mesh=self.mesh, axes=self.axes)

    def harvest(self, s, d, q, strategy):
        return _harvest_at(s, jnp.int32(d), jnp.int32(q), strategy)

    def totals(self, s):
        return int(np.max(s.steps)), int(np.sum(s.busy)), int(np.sum(s.row_steps))


@functools.partial(jax.jit, static_argnames=("strategy",))
def _harvest_at(s: PoolState, d, q, strategy: str) -> StrategyResult:
    """`harvest` of lane q of pool d (a sharded state with a leading pool axis)."""
    return harvest(jax.tree.map(lambda x: x[d], s), q, strategy)


def _squeeze(tree):
    return jax.tree.map(lambda x: x[0], tree)


def _expand(tree):
    return jax.tree.map(lambda x: x[None], tree)


def _smap(f, mesh, axes, in_specs, out_specs):
    """shard_map over `axes` (every in/out spec "dev" = split on the leading pool axis, "rep" = replicated)."""
    ps = {"dev": jax.sharding.PartitionSpec(axes), "rep": jax.sharding.PartitionSpec()}
    return jax.shard_map(f, mesh=mesh, in_specs=tuple(ps[x] for x in in_specs), out_specs=ps[out_specs],
                         check_vma=False)


@functools.partial(jax.jit, static_argnames=("spec", "mesh", "axes"), donate_argnames=("s",))
def _sharded_loop(params, s: PoolState, need, shrink, *, spec: LoopSpec, mesh, axes):
    """`pool_loop` on every device's own pool (s: leading pool axis over `axes`)."""
    def f(prm, st, nd, sh):
        return _expand(pool_loop(prm, _squeeze(st), nd, spec, axes, sh))

    return _smap(f, mesh, axes, ("rep", "dev", "rep", "rep"), "dev")(params, s, need, shrink)


@functools.partial(jax.jit, static_argnames=("rows", "mesh", "axes"))
def _sharded_shrink(s: PoolState, *, rows: int, mesh, axes):
    """`shrink_pool` of every device's pool to `rows` rows."""
    return _smap(lambda st: _expand(shrink_pool(_squeeze(st), rows)), mesh, axes, ("dev",), "dev")(s)


@functools.partial(jax.jit, static_argnames=("spec", "mesh", "axes", "impl"), donate_argnames=("s",))
def _sharded_admit(params, s: PoolState, cond, cond_mask, key_data, prompt_id, first, lane, flag, *, spec: LoopSpec,
                   mesh, axes, impl):
    """`admit` on every pool whose flag (D,) is set: cond (D, 1, ...), cond_mask (D, 1, cls) or
    None, prompt_id / lane (D,) int32; the other pools are left as they are."""
    from scalingar_jax.sharding import _key

    def f(prm, st, c, kd, pid, fc, ln, fl, m=None):
        m = None if m is None else m[0]
        st = jax.lax.cond(fl[0], lambda t: admit(prm, t, c[0], m, _key(kd, impl), pid[0], fc, ln[0], spec),
                          lambda t: t, _squeeze(st))
        return _expand(st)

    args, specs = (params, s, cond, key_data, prompt_id, first, lane, flag), ("rep", "dev", "dev", "rep", "dev",
                                                                              "rep", "dev", "dev")
    if cond_mask is not None:
        args, specs = (*args, cond_mask), (*specs, "dev")
    return _smap(f, mesh, axes, specs, "dev")(*args)


def run_pool(params, spec: LoopSpec, cond, cond_mask, key, prompt_ids, strategy: str, *, rows: int,
             lanes: int | None = None, first_candidate: int = 0, mesh=None, shrink: bool | str = True,
             on_prompt: Callable[[int], None] | None = None) -> tuple[StrategyResult, PoolStats]:
    """Runs every prompt through a pool of `rows` candidate rows and `lanes` lanes (per device
    of `mesh`, if given: `ShardedPool`). shrink: once no prompt waits, the pool shrinks to the
    bucket of its occupied rows (`loop.bucket`) whenever they fit a smaller one (one compile per
    pool size, as the batched loop's compaction): True / "pow2" (powers of two), "fine" (also
    3 * 2**k: a tighter tail for twice the pool sizes) or False (never).

    Inputs as `strategies.prepare` returns them: cond (P, ...), cond_mask (P, cls) or None,
    prompt_ids (P,) int32; spec: the unsharded `LoopSpec` (`strategies.token_spec`, compaction
    ignored); strategy: "plain", "confidence_only" or "scalingar" (selection). on_prompt(i):
    called when prompt i is done. Returns (the `StrategyResult` over all P prompts, in input
    order, as the batched loop returns it; `PoolStats`, rows summed over devices)."""
    N, T = spec.num_candidates, spec.T
    if shrink not in (True, False, *BUCKETS):
        raise ValueError(f"shrink must be True, False or one of {BUCKETS}, got {shrink!r}")
    buckets = "pow2" if shrink is True else shrink
    rows, lanes = check_pool(rows, N, lanes, spec.policy == "scalingar" and spec.scaling.use_termination)
    spec = dataclasses.replace(spec, compaction=False, stop_at=-1)
    args = (decode_layout(params), spec, cond, cond_mask, key, prompt_ids, first_candidate, rows, lanes)
    if mesh is None:
        be = _Local(*args)
    else:
        be = ShardedPool(*args, mesh=mesh)
    P, D = int(cond.shape[0]), be.pools
    s = be.empty()
    pending, done = deque(range(P)), {}
    lane_prompt, lane_k, free = np.full((D, lanes), -1), np.full((D, lanes), T), np.full((D,), rows)
    cur, sizes = rows, [rows]
    while True:
        for d, q in zip(*np.nonzero((lane_prompt >= 0) & (lane_k >= T))):  # harvest the lanes that finished
            done[lane_prompt[d, q]] = be.harvest(s, int(d), int(q), strategy)  # async: read at the end
            if on_prompt is not None:
                on_prompt(int(lane_prompt[d, q]))
            lane_prompt[d, q] = -1
        while pending:  # admit while a pool has room: at most one prompt per pool and call
            todo = []
            for d in range(D):
                if pending and free[d] >= N and (lane_prompt[d] < 0).any():
                    q = int(np.argmax(lane_prompt[d] < 0))
                    todo.append((d, q, pending.popleft()))
                    lane_prompt[d, q], lane_k[d, q], free[d] = todo[-1][2], 0, free[d] - N
            if not todo:
                break
            s = be.admit(s, todo)
        if not pending and (lane_prompt < 0).all():
            break
        tail = bool(shrink) and not pending and cur > 1
        s, free, lane_k = be.loop(s, N if pending else cur + 1, compaction_limit(cur, buckets) if tail else -1)
        occupied = int(np.max(cur - free))
        if tail and (lane_k < T).any() and occupied <= compaction_limit(cur, buckets):
            new = bucket(max(1, occupied), buckets)
            s, free, cur = be.shrink(s, new), free - (cur - new), new
            sizes.append(new)
    steps, busy, row_steps = be.totals(s)
    return _stack([jax.tree.map(np.asarray, done[i]) for i in range(P)]), PoolStats(steps, rows * D, row_steps, busy / max(1, row_steps),
                                                          tuple(sizes))


# ------------------------------------------------------------------------------ entries
def run_pool_strategy(params, gpt_cfg: GPTConfig, cond, cond_mask=None, *, key, strategy: str = "scalingar",
                      num_candidates: int = 8, sampling: SamplingConfig = SamplingConfig(),
                      scaling: ScalingARConfig = ScalingARConfig(), rows: int = 64, lanes: int | None = None,
                      prompt_ids=None, first_candidate: int = 0, mesh=None, shrink: bool | str = True,
                      on_prompt=None) -> tuple[StrategyResult, PoolStats]:
    """`strategies.run_token_strategy` ("plain", "confidence_only", "scalingar") over a prompt
    set through a pool of `rows` candidate rows (2 * rows model rows with CFG) and `lanes`
    prompts in flight (default `check_pool`'s). cond: (P,) labels or (P, cls, caption_dim)
    features; cond_mask (P, cls). mesh: None (one device) or a `sharding.make_mesh` mesh
    without a model axis: every device keeps its own pool of `rows` rows. shrink: the drained
    tail runs on smaller pools (`run_pool`: True / "pow2", "fine" or False). Per prompt the same
    result as `run_token_strategy`; returns (`StrategyResult` over the P prompts, `PoolStats`)."""
    if strategy not in S.TOKEN_STRATEGIES:
        raise ValueError(f"run_pool_strategy handles {'/'.join(S.TOKEN_STRATEGIES)}, got strategy {strategy!r}")
    check_pool(rows, num_candidates, lanes)
    cond, cond_mask, prompt_ids = S.prepare(gpt_cfg, sampling, scaling, cond, cond_mask, num_candidates, prompt_ids)
    spec = S.token_spec(gpt_cfg, sampling, scaling, strategy, num_candidates, False)
    return run_pool(params, spec, cond, cond_mask, key, prompt_ids, strategy, rows=rows, lanes=lanes,
                    first_candidate=S.check_first_candidate(first_candidate), mesh=mesh, shrink=shrink,
                    on_prompt=on_prompt)


def run_pool_best_of_n(params, gpt_cfg: GPTConfig, cond, cond_mask=None, *, prompts: Sequence[str], key,
                       reward_fn: S.RewardFn, decode_fn: S.DecodeFn, num_candidates: int = 8,
                       sampling: SamplingConfig = SamplingConfig(), rows: int = 64, lanes: int | None = None,
                       prompt_ids=None, mesh=None, on_prompt=None) -> tuple[StrategyResult, PoolStats]:
    """`strategies.run_best_of_n` through a pool: the N full trajectories of every prompt decode
    in the pool (plain), then the highest reward wins (rewards over all prompts at the end)."""
    check_pool(rows, num_candidates, lanes)
    S._check_prompts(prompts, int(np.shape(cond)[0]))
    res, stats = run_pool_strategy(params, gpt_cfg, cond, cond_mask, key=key, strategy="plain",
                                   num_candidates=num_candidates, sampling=sampling, rows=rows, lanes=lanes,
                                   prompt_ids=prompt_ids, mesh=mesh, on_prompt=on_prompt)
    return S._pick_by_reward(res, S._rewards(np.asarray(res.all_tokens), prompts, decode_fn, reward_fn)), stats
