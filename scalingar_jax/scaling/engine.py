"""The engine: a model and its weights on a mesh, and the jitted pieces both schedulers drive.

`Engine(model, params, mesh)` places the weights (replicated, or as `sharding.shard_params`
placed them) and runs `scaling.loop`'s traced pieces under `shard_map` (`sharding.manual`):

    prefill   P prompts' conditions -> a decode state of P lanes (the batched scheduler's state)
    insert    prefill one prompt per device into free rows and a free lane of a pool (the pool)
    generate  the token loop until a stop, a pool with room, or a pool that can shrink
    compact   every device's occupied rows into a smaller pool
    resample  importance sampling's copy of candidates (possibly across devices)
    harvest   the `StrategyResult` of finished lanes, replicated on every process

One device is a 1 x 1 mesh (`sharding.single_device_mesh`): one code path, whose `shard_map`
costs nothing measurable (`experiments/bench_sharding.py`'s 1-device row). Which engine and mesh
to use is decided in one place, `scaling.run.run_strategy`.

Layouts
-------
The spec's `lockstep` decides how lanes and candidates are spread:
* lockstep (the batched strategies): lanes over "prompts", each prompt's candidate slots over
  "cands" (ScalingAR's per-prompt statistics, termination and winner are all-gathered over it
  each step). P is padded to a multiple of the "prompts" size with copies of prompt 0 (dropped
  from the results), N to a multiple of the "cands" size with slots dead from the start (global
  ids >= N: never sampled into results, never counted, never selected).
* per lane (the pool): a prompt's candidates stay on one device, lanes are spread over both axes
  (device d = a * cands + b holds lanes d * Q .. d * Q + Q - 1); the step needs no collective.

Outside `shard_map` the state is a `DecodeState` of global arrays in the *view* layout
(`to_view`): every device's pool as an explicit (2, 1, M) block, side by side (logits
(2, prompt shards, cand shards * M, V), every cache leaf likewise, `owner` (prompt shards,
cand shards * M), the step counters (prompt shards, cand shards)); every lane field lane-first
with lanes over the lane axes and candidate slots over "cands" (lockstep). Inside `shard_map`
`from_view` turns a device's block back into flat pool rows for the traced pieces. Every input
is placed with `sharding.put` (each process fills its addressable shards: multi-process runs
work the same); every result the host reads is replicated first.

Equivalence with one device (README, "Exactness": the same decisions from the same logits;
tokens, winners, token counts and termination steps tested bit for bit on the test models in
tests/test_sharding.py, floats to a tolerance: a device's matmuls run over other row counts):
keys come from (global prompt id, global candidate id); pooled statistics gather the candidate
axis; compaction is per device (a candidate never moves between devices) into the same bucket
everywhere (the fullest device's count: all leave the loop at the same step); importance
sampling's copy runs at the jit level outside `shard_map` on the global arrays
(`take_along_axis` over the sharded candidate axis), so the compiler inserts the cross-device
collectives.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scalingar_jax import sharding as SH
from scalingar_jax.scaling import loop as L
from scalingar_jax.scaling.profile import init_state
from scalingar_jax.token_model import TokenModel

DEVICE = P(SH.PROMPTS, SH.CANDS)  # one entry per device (its pool's rows side by side, its counters)
ROWS = P(None, SH.PROMPTS, SH.CANDS)  # (2, prompt shards, cand shards * M, ...): the pools' model rows


# ------------------------------------------------------------------------------ layout
def lane_spec(spec: L.LoopSpec) -> P:
    """The PartitionSpec of a lane-first array's lane axis under a local spec."""
    return P(spec.lane_axes[0] if len(spec.lane_axes) == 1 else (spec.lane_axes or None))


def state_specs(spec: L.LoopSpec) -> L.DecodeState:
    """PartitionSpecs of a `DecodeState` in the view layout for a local spec (its lane axes and
    candidate axis; see the module docstring)."""
    lane = lane_spec(spec)
    lanes = lane[0]
    cands = P(lanes, spec.cand_axis)
    conf = jax.eval_shape(lambda: init_state(spec.scaling, 2, 3, spec.model.grid_size))
    traj = {name: P(lanes, None, spec.cand_axis) for name in (*L.TRAJ_FLOATS, "alive")}
    traj["theta"] = P(lanes, None)
    return L.DecodeState(
        logits=ROWS, cache=jax.tree.map(lambda _: ROWS, jax.eval_shape(lambda: spec.model.init_cache(2))),
        owner=DEVICE, row=cands, k=lane, keys=cands, scale=cands,
        conf=jax.tree.map(lambda x: cands if x.shape[:2] == (2, 3) else lane, conf), conf_sum=cands,
        tokens=cands, entropy=cands, traj=traj, steps=DEVICE, busy=DEVICE, row_steps=DEVICE)


def state_shardings(mesh: Mesh, spec: L.LoopSpec) -> L.DecodeState:
    return jax.tree.map(lambda p: NamedSharding(mesh, p), state_specs(spec), is_leaf=lambda x: isinstance(x, P))


def to_view(s: L.DecodeState) -> L.DecodeState:
    """Flat pool rows -> an explicit (2, 1, M) row axis: logits (2, 1, M, V), every cache leaf
    (2, 1, M, ...); owner (M,) -> (1, M); counters () -> (1, 1). Local reshapes only: the global
    view arrays are the devices' pools side by side."""
    M = s.owner.shape[0]
    rows = lambda x: x.reshape(2, 1, M, *x.shape[1:])  # noqa: E731
    one = lambda x: x.reshape(1, 1)  # noqa: E731
    return s.replace(logits=rows(s.logits), cache=jax.tree.map(rows, s.cache), owner=s.owner[None],
                     steps=one(s.steps), busy=one(s.busy), row_steps=one(s.row_steps))


def from_view(s: L.DecodeState) -> L.DecodeState:
    """Inverse of `to_view` (on local arrays: (2, 1, M, ...) -> 2M flat rows)."""
    M = s.owner.shape[1]
    rows = lambda x: x.reshape(2 * M, *x.shape[3:])  # noqa: E731
    return s.replace(logits=rows(s.logits), cache=jax.tree.map(rows, s.cache), owner=s.owner[0],
                     steps=s.steps[0, 0], busy=s.busy[0, 0], row_steps=s.row_steps[0, 0])


# ------------------------------------------------------------------------------ the jitted pieces
@functools.partial(jax.jit, static_argnames=("spec", "mesh", "impl"))
def run_prefill(params, cond, cond_mask, key_data, prompt_ids, first, *, spec, mesh, impl):
    """`loop.prefill` on every device's lanes (cond, cond_mask, prompt_ids split over the lane
    axes; key as `sharding.split_key` data; first an int32 scalar): the view-layout state.
    Compiles once per (spec, mesh, shapes): the candidate offset is traced."""
    lane = lane_spec(spec)

    def f(prm, c, kd, pid, fc, m=None):
        return to_view(L.prefill(prm, spec, c, m, SH.join_key(kd, impl), pid, fc))

    args, specs = (params, cond, key_data, prompt_ids, first), (P(), lane, P(), lane, P())
    if cond_mask is not None:
        args, specs = (*args, cond_mask), (*specs, lane)
    return SH.manual(mesh, f, specs, state_specs(spec))(*args)


@functools.partial(jax.jit, static_argnames=("spec", "mesh", "rows", "lanes", "impl"))
def run_empty(key_data, *, spec, mesh, rows, lanes, impl):
    """`loop.empty` on every device: pools of `rows` free rows and `lanes` free lanes."""
    return SH.manual(mesh, lambda kd: to_view(L.empty(spec, rows, lanes, SH.join_key(kd, impl))), (P(),),
                     state_specs(spec))(key_data)


@functools.partial(jax.jit, static_argnames=("spec", "mesh", "impl"), donate_argnames=("s",))
def run_insert(params, s, cond, cond_mask, key_data, prompt_ids, first, lane, flag, *, spec, mesh, impl):
    """On every device whose flag is set: prefill its prompt (cond (D, ...) one per device) and
    insert it into its local lane `lane` (D,)."""
    one = lane_spec(spec)  # (prompts, cands): one lane per device

    def f(prm, st, c, kd, pid, fc, ln, fl, m=None):
        st = from_view(st)
        new = lambda t: L.insert(t, L.prefill(prm, spec, c, m, SH.join_key(kd, impl), pid, fc), ln)  # noqa: E731
        return to_view(jax.lax.cond(fl[0], new, lambda t: t, st))

    args = (params, s, cond, key_data, prompt_ids, first, lane, flag)
    specs = (P(), state_specs(spec), one, P(), one, P(), one, one)
    if cond_mask is not None:
        args, specs = (*args, cond_mask), (*specs, one)
    return SH.manual(mesh, f, specs, state_specs(spec))(*args)


class LoopInfo(NamedTuple):
    """What the host reads after a loop call: k (Q,) every lane's token index; free (D,) free
    rows of every device's pool; occupied: the fullest device's occupied rows."""

    k: np.ndarray
    free: np.ndarray
    occupied: int


def loop_on_mesh(params, s, stop, need, shrink, *, spec, mesh):
    """`loop.token_loop` under shard_map (stop, need, shrink: int32 scalars). Returns (state,
    k (Q,) every lane's index, free (D,) every device's free rows, the fullest device's
    occupied rows), all but the state replicated."""
    def f(prm, st, stp, nd, sh):
        st = L.token_loop(prm, from_view(st), spec, stp, nd, sh)
        every = (SH.PROMPTS, SH.CANDS)
        free = L.free_rows(st)
        k = jax.lax.all_gather(st.k, spec.lane_axes, tiled=True) if spec.lane_axes else st.k
        return (to_view(st), k, jax.lax.all_gather(free[None], every, tiled=True),
                jax.lax.pmax(st.owner.shape[0] - free, every))

    return SH.manual(mesh, f, (P(), state_specs(spec), P(), P(), P()), (state_specs(spec), P(), P(), P()))(
        params, s, stop, need, shrink)


run_loop = jax.jit(loop_on_mesh, static_argnames=("spec", "mesh"))
run_loop.__doc__ = """The token loop on the mesh (`loop.token_loop` under shard_map) leaving its input state valid:
for inspection and benchmarks. Compiles once per (spec, mesh, pool size)."""
run_loop_in_place = jax.jit(loop_on_mesh, static_argnames=("spec", "mesh"), donate_argnames=("s",))
run_loop_in_place.__doc__ = """`run_loop` that donates the state: the loop writes it (the KV cache included) in
place; the input is invalid afterwards. `Engine.generate` runs it."""


@functools.partial(jax.jit, static_argnames=("rows", "spec", "mesh"))
def run_compact(s, *, rows: int, spec, mesh):
    """`loop.compact` of every device's pool into `rows` rows."""
    return SH.manual(mesh, lambda st: to_view(L.compact(from_view(st), rows)), (state_specs(spec),),
                     state_specs(spec))(s)


@functools.partial(jax.jit, static_argnames=("spec", "mesh"))
def run_resample(s, idx, *, spec, mesh):
    """Importance-sampling copy on the *global* view arrays (jit level, outside shard_map): every
    candidate slot (p, n) takes the state of slot idx[p, n] of the same prompt, wherever it lives;
    keys stay with the slot, so copies diverge. idx: (P, N) int32 global candidate ids. The
    output is constrained to the state's shardings; the compiler inserts the cross-device
    copies. The pools must be uncompacted (importance sampling never compacts): device (a, b)'s
    pool row p_l * N_l + n_l holds candidate (a * P_l + p_l, b * N_l + n_l)."""
    Pn, N = idx.shape
    Sp, Sc = SH.axis_size(mesh, SH.PROMPTS), SH.axis_size(mesh, SH.CANDS)
    Pl, Nl = Pn // Sp, N // Sc
    if s.owner.shape != (Sp, Sc * Pl * Nl):
        raise ValueError(f"resample needs uncompacted pools of {Pl * Nl} rows per device, got owner {s.owner.shape}")

    def take(x, axis):
        shape = [1] * x.ndim
        shape[axis - 1], shape[axis] = Pn, N
        return jnp.take_along_axis(x, idx.reshape(shape), axis=axis)

    def take_pool(x, axis):
        """x: pool view with (prompt shard, Sc * Pl * Nl) at axes (axis - 1, axis) -> candidates taken."""
        head, tail = x.shape[:axis - 1], x.shape[axis + 1:]
        h = len(head)
        y = x.reshape(*head, Sp, Sc, Pl, Nl, *tail)
        y = jnp.swapaxes(y, h + 1, h + 2).reshape(*head, Pn, N, *tail)  # (.., P, N, ..)
        y = take(y, axis)
        y = jnp.swapaxes(y.reshape(*head, Sp, Pl, Sc, Nl, *tail), h + 1, h + 2)
        return y.reshape(x.shape)

    conf = jax.tree.map(lambda x: take(x, 1) if x.ndim >= 2 and x.shape[:2] == (Pn, N) else x, s.conf)
    out = s.replace(logits=take_pool(s.logits, 2), cache=jax.tree.map(lambda x: take_pool(x, 2), s.cache),
                    conf=conf, conf_sum=take(s.conf_sum, 1), tokens=take(s.tokens, 1), entropy=take(s.entropy, 1))
    return jax.lax.with_sharding_constraint(out, state_shardings(mesh, spec))


@functools.partial(jax.jit, static_argnames=("strategy", "spec", "mesh", "num_real"))
def run_harvest(s, lanes, *, strategy, spec, mesh, num_real):
    """`loop.harvest` of lanes (L,) on the global arrays (the compiler gathers the shards),
    replicated, then the padding candidate slots dropped."""
    res = L.harvest(s, lanes, strategy, spec)
    # replicated first (every process reads it), then unpadded: constraining after a slice trips
    # XLA's SPMD partitioner (shape mismatch) when an axis is padded.
    res = jax.lax.with_sharding_constraint(res, NamedSharding(mesh, P()))
    cut = lambda x, axis: jax.lax.slice_in_dim(x, 0, num_real, axis=axis)  # noqa: E731
    return res.replace(all_tokens=cut(res.all_tokens, 1), entropy=cut(res.entropy, 1),
                       terminated_at=cut(res.terminated_at, 1), score=cut(res.score, 1),
                       traj={k: v if k == "theta" else cut(v, 2) for k, v in res.traj.items()})


@functools.partial(jax.jit, static_argnames=("mesh",))
def replicate(x, *, mesh):
    """x replicated on every device of `mesh` (every process can read it)."""
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P()))


def to_local(tree):
    """Replicated global arrays -> ordinary arrays on this process's default device (by
    `device_put`: `jnp.asarray` of a host array compiles a copy program per shape)."""
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x)), tree)


# ------------------------------------------------------------------------------ the engine
@dataclasses.dataclass(frozen=True)
class Placement:
    """How a run's lanes sit on the mesh: the local spec the traced pieces run with (candidate
    slots per candidate shard, padding, axes), the lane shards and the padded lane count."""

    spec: L.LoopSpec  # the local spec
    lane_shards: int
    lanes_padded: int  # lanes over all devices (a multiple of lane_shards)


def place(spec: L.LoopSpec, mesh: Mesh, num_prompts: int) -> Placement:
    """The placement of `num_prompts` prompts (batched) or lanes (pool) under the unsharded
    `spec` on `mesh` (see the module docstring's layouts)."""
    Sp, Sc = SH.axis_size(mesh, SH.PROMPTS), SH.axis_size(mesh, SH.CANDS)
    N = spec.num_candidates
    if spec.lockstep:  # lanes over prompts, candidate slots over cands (padded with dead slots)
        n_pad = -(-N // Sc) * Sc
        local = dataclasses.replace(spec, num_candidates=n_pad // Sc, num_real=N if n_pad > N else -1,
                                    lane_axes=(SH.PROMPTS,), cand_axis=SH.CANDS)
        shards = Sp
    else:  # a prompt's candidates on one device, lanes over every device
        local = dataclasses.replace(spec, lane_axes=(SH.PROMPTS, SH.CANDS), cand_axis=None)
        shards = Sp * Sc
    return Placement(local, shards, -(-int(num_prompts) // shards) * shards)


class Engine:
    """A `TokenModel` and its weights on a mesh (None: `sharding.single_device_mesh()`), with the
    loop's pieces as methods. Every method takes the run's *unsharded* `LoopSpec` (all N
    candidates of a prompt); a decode state is the engine's business (view layout, padding).

    params: a tree of host or device arrays (replicated onto the mesh, in the model's decode
    layout) or the output of `sharding.shard_params(params, mesh, ...)` (used as placed)."""

    def __init__(self, model: TokenModel, params, mesh: Mesh | None = None):
        self.model = model
        self.mesh = SH.single_device_mesh() if mesh is None else SH.check_mesh(mesh)
        self.devices = int(np.prod([SH.axis_size(self.mesh, a) for a in (SH.PROMPTS, SH.CANDS)]))
        self.params = SH.on_mesh(model.decode_layout(params), self.mesh)

    # -- layout
    def place(self, spec: L.LoopSpec, num_prompts: int) -> Placement:
        """`place(spec, self.mesh, num_prompts)` for a spec of this engine's model."""
        if spec.model != self.model:
            raise ValueError("the spec's model is not the engine's")
        return place(spec, self.mesh, num_prompts)

    def _put(self, x, spec):
        return SH.put(x, self.mesh, spec)

    def _pad(self, x, n: int):
        """x (P, ...) padded to n rows with copies of row 0."""
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)]) if n > len(x) else x

    # -- the pieces
    def prefill(self, spec: L.LoopSpec, cond, cond_mask, key, prompt_ids, first_candidate: int = 0):
        """The decode state of P prompts (cond (P, ...), cond_mask (P, S) or None, prompt_ids (P,)
        as `TokenModel.check_condition` returns them; candidates first_candidate + 0 .. N - 1)
        at token 0: the batched scheduler's state."""
        pl = self.place(spec, np.shape(cond)[0])
        lane = lane_spec(pl.spec)
        data, impl = SH.split_key(key)
        mask = None if cond_mask is None else self._put(self._pad(cond_mask, pl.lanes_padded), lane)
        return run_prefill(self.params, self._put(self._pad(cond, pl.lanes_padded), lane), mask, self._put(data, P()),
                        self._put(self._pad(prompt_ids, pl.lanes_padded), lane),
                        self._put(np.int32(first_candidate), P()), spec=L.shape_key(pl.spec), mesh=self.mesh,
                        impl=impl)

    def empty(self, spec: L.LoopSpec, rows: int, lanes: int, key):
        """Per device a pool of `rows` free candidate rows and `lanes` free lanes (the pool)."""
        pl = self.place(spec, lanes * self.devices)
        data, impl = SH.split_key(key)
        return run_empty(self._put(data, P()), spec=L.shape_key(pl.spec), mesh=self.mesh, rows=rows, lanes=lanes,
                      impl=impl)

    def insert(self, spec: L.LoopSpec, s, cond, cond_mask, key, prompt_ids, first_candidate: int, todo):
        """Prefills and inserts prompts into pools: todo [(device, local lane, prompt index)], at
        most one per device (cond (P, ...), cond_mask, prompt_ids (P,) as for `prefill`). The
        state is donated."""
        D = self.devices
        flag, lane, idx = np.zeros(D, bool), np.zeros(D, np.int32), np.zeros(D, np.int64)
        for d, q, i in todo:
            flag[d], lane[d], idx[d] = True, q, i
        pl = self.place(spec, D)
        if spec.lockstep:
            raise ValueError("insert fills the lanes of a pool: the spec must not be lockstep")
        one = lane_spec(pl.spec)
        data, impl = SH.split_key(key)
        mask = None if cond_mask is None else self._put(np.asarray(cond_mask)[idx], one)
        return run_insert(self.params, s, self._put(np.asarray(cond)[idx], one), mask, self._put(data, P()),
                       self._put(np.asarray(prompt_ids)[idx], one), self._put(np.int32(first_candidate), P()),
                       self._put(lane, one), self._put(flag, one), spec=L.shape_key(pl.spec), mesh=self.mesh,
                       impl=impl)

    def generate(self, spec: L.LoopSpec, s, *, stop: int | None = None, need: int | None = None,
                 shrink: int = -1) -> tuple[object, LoopInfo]:
        """Runs the token loop (donating `s`) until every lane is done, a running lane reaches
        `stop`, a device's pool has `need` free rows and a free lane, or the fullest device's
        occupied rows are at most `shrink` (`loop.token_loop`). Returns (state, `LoopInfo`)."""
        pl = self.place(spec, 1)
        scalar = lambda x: self._put(np.int32(x), P())  # noqa: E731
        s, k, free, occupied = run_loop_in_place(
            self.params, s, scalar(spec.T if stop is None else stop),
            scalar(self.rows(s) + 1 if need is None else need), scalar(shrink), spec=L.loop_key(pl.spec),
            mesh=self.mesh)
        return s, LoopInfo(np.array(k), np.array(free), int(occupied))

    def compact(self, spec: L.LoopSpec, s, rows: int):
        """Every device's occupied rows gathered into a pool of `rows` rows."""
        return run_compact(s, rows=rows, spec=L.shape_key(self.place(spec, 1).spec), mesh=self.mesh)

    def resample(self, spec: L.LoopSpec, s, idx):
        """idx: (P, N) int32 source candidate of every slot, per prompt (importance sampling)."""
        idx = np.asarray(idx, np.int32)
        pl = self.place(spec, idx.shape[0])
        n_pad = pl.spec.num_candidates * SH.axis_size(self.mesh, SH.CANDS)
        full = np.broadcast_to(np.arange(n_pad, dtype=np.int32), (pl.lanes_padded, n_pad)).copy()
        full[: idx.shape[0], : idx.shape[1]] = idx  # padding slots keep themselves (stay dead)
        return run_resample(s, self._put(full, lane_spec(pl.spec)), spec=L.shape_key(pl.spec), mesh=self.mesh)

    def tokens(self, spec: L.LoopSpec, s, num_prompts: int) -> np.ndarray:
        """(P, N, T) int32 on the host, -1 where not generated."""
        return np.asarray(replicate(s.tokens, mesh=self.mesh))[:num_prompts, : spec.num_candidates]

    def harvest(self, spec: L.LoopSpec, s, lanes, strategy: str) -> L.StrategyResult:
        """The `StrategyResult` of global lanes `lanes` ((L,) ints; their prompts are done),
        replicated (not copied to the host: read it when needed)."""
        pl = self.place(spec, 1)
        n_pad = pl.spec.num_candidates * (SH.axis_size(self.mesh, SH.CANDS) if spec.lockstep else 1)
        flat = dataclasses.replace(L.shape_key(pl.spec), num_candidates=n_pad, lane_axes=(), cand_axis=None)
        return run_harvest(s, self._put(np.asarray(lanes, np.int32), P()), strategy=strategy, spec=flat, mesh=self.mesh,
                        num_real=spec.num_candidates)

    def rows(self, s) -> int:
        """M: the rows of every device's pool."""
        return s.owner.shape[1] // SH.axis_size(self.mesh, SH.CANDS)

    def totals(self, s) -> tuple[int, int, int]:
        """(loop steps, occupied row-steps summed over devices, row-steps summed over devices)."""
        steps, busy, row_steps = (np.asarray(x) for x in replicate((s.steps, s.busy, s.row_steps), mesh=self.mesh))
        return int(steps.max()), int(busy.sum()), int(row_steps.sum())


# ------------------------------------------------------------------------------ a run's inputs and costs
@dataclasses.dataclass(frozen=True)
class Prompts:
    """A run's checked conditions: cond (P, ...) and cond_mask (P, S) or None as
    `TokenModel.check_condition` returns them, the base key, prompt_ids (P,) int32 (global prompt
    ids: the keys' first half) and first_candidate (the id of candidate slot 0)."""

    cond: object
    cond_mask: object
    key: object
    prompt_ids: np.ndarray
    first_candidate: int = 0

    @property
    def count(self) -> int:
        return int(self.prompt_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class RunStats:
    """What a run cost: loop steps, rows (candidate rows per device at the start, summed over
    devices), row_steps (candidate rows run, summed over steps and devices: 2x model rows),
    utilization = occupied / run row steps, sizes: the pool sizes per device used in turn
    (compaction and a pool's shrinking tail shrink them)."""

    steps: int
    rows: int
    row_steps: int
    utilization: float
    sizes: tuple[int, ...]


def run_stats(engine: Engine, s, rows: int, sizes) -> RunStats:
    """The `RunStats` of a finished state whose pools started with `rows` rows per device."""
    steps, busy, row_steps = engine.totals(s)
    return RunStats(steps, rows * engine.devices, row_steps, busy / max(1, row_steps), tuple(sizes))
