"""Meshes, PartitionSpecs, the sharded executor (`ShardedExecutor`: the token loop's pieces under
`shard_map`) and multi-host helpers. Strategies run on a mesh through
`strategies.run_*(..., mesh=mesh)`.

Mesh axes
---------
``("prompts", "cands")`` and, optionally, ``"model"``:

* ``prompts``  the prompt axis P is split over it (data parallel: no communication);
* ``cands``    the candidate axis N is split over it; ScalingAR's per-prompt pooled statistics,
  quantile threshold, termination and winner use collectives over it (see
  `scalingar_jax.scaling.profile` / `policy`; all-gathers of (P, N) floats per step);
* ``model``    optional: the GPT weights are split over it (tensor parallel, for presets whose
  weights do not fit one device); the sharded token loop then runs `shard_map` manual over
  ``prompts``/``cands`` only and lets the compiler partition the model over ``model``.

The mesh is built with `AxisType.Auto` axes (the default of `jax.make_mesh` in jax 0.10 is
Explicit): jit-level code on the global arrays (the importance-sampling gather, the result
gather, model-parallel matmuls) is partitioned by the compiler; `shard_map` bodies are manual.
Every input is put on a `NamedSharding` of the mesh before the jitted `shard_map` sees it.

Loop-state layout (`loop_state_specs`)
--------------------------------------
The single-device loop keeps the model's rows in a flat pool (M cond rows, then M uncond rows;
see `scaling.loop`). Flat rows cannot be split so that a device holds its candidates' cond *and*
uncond rows, so outside `shard_map` the state is held in the *view* layout of
`to_view`: every shard's pool as an explicit (2, 1, M) block, side by side in global
arrays (logits (2, prompt shards, cand shards * M, V), every per-layer cache buffer and cache
valid (2, prompt shards, cand shards * M, ...), `owner` (prompt shards, cand shards * M)), and
every per-candidate array (P, N, ...) with P over ``prompts`` and N over ``cands``. Inside
`shard_map`, `from_view` turns the local block back into flat pool rows and the unchanged
single-device loop code runs on it.

Equivalence with the single-device run (README, "Exactness": the same decisions from the same
logits; tokens, winners, token counts and termination steps tested bit for bit on the test
models, floats to a tolerance: a shard's matmuls run over other row counts)
---------------------------------------------------------------------------------------------
* keys come from (global prompt id, *global* candidate id = axis_index(cands) * N_l + slot);
* pooled statistics / quantiles / termination / winner gather the candidate axis (tiled) and
  decide on the full (P, N) arrays;
* compaction is per shard: each shard gathers its own alive candidates' pool rows (a candidate
  never moves between devices); the exit test and pool size use `pool_alive` = pmax over both
  axes of the per-shard alive count, so all shards leave the while loop at the same step and
  compact into the same power-of-two pool (shards shrink unevenly; the pool fits the fullest
  shard). Compaction never changes results, so the compaction schedule may differ from the
  single-device run;
* padding: N not a multiple of the ``cands`` size is padded with candidates (global ids >= N)
  that are dead from the start (never sampled into results, never counted, never selected); P
  not a multiple of the ``prompts`` size is padded with copies of prompt 0, dropped from the
  results;
* importance sampling: the rewards and the resampling draw are computed on the host exactly as
  in the single-device run; the copy of the chosen source candidates (possibly on another
  device) is done at the **jit level outside `shard_map`** on the global view arrays
  (`take_along_axis` over the sharded candidate axis, output constrained back to the loop-state
  shardings), so the compiler inserts the cross-device collectives.

Multi-host
----------
Two modes, both with the same code:
1. one global mesh over every process's devices (`init_distributed`, then `make_mesh` over
   `jax.devices()`): every process calls the sharded function with the *same* full inputs; the
   inputs are placed with `jax.make_array_from_callback` (each process supplies its addressable
   shards) and the results are replicated, so every process gets the full `StrategyResult`;
2. independent hosts: `split_prompts` gives each process a share of the prompt file, each
   process runs on a mesh of its local devices (`make_mesh(..., devices=jax.local_devices())`)
   and writes its own GenEval folder, and `merge_geneval_folders` merges them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import shutil
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scalingar_jax.atomic import atomic_dir
from scalingar_jax.gpt import KVCache, decode_layout, layers_stacked
from scalingar_jax.scaling import loop as L
from scalingar_jax.scaling.config import ScalingARConfig
from scalingar_jax.scaling.profile import ConfidenceState, init_state

PROMPTS, CANDS, MODEL = "prompts", "cands", "model"


# ------------------------------------------------------------------------------ meshes
def make_mesh(prompt_shards: int = 1, cand_shards: int = 1, devices=None, *, model_shards: int = 1,
              axis_types=None) -> Mesh:
    """A mesh with axes ("prompts", "cands") of sizes (prompt_shards, cand_shards), plus a
    "model" axis when model_shards > 1.

    devices: the devices to use (default: the first prompt*cand*model of `jax.devices()`, i.e.
    every process's devices in a multi-process run; pass `jax.local_devices()` for a per-host
    mesh). axis_types: default `AxisType.Auto` for every axis.
    """
    shape = [prompt_shards, cand_shards] + ([model_shards] if model_shards != 1 else [])
    names = (PROMPTS, CANDS) + ((MODEL,) if model_shards != 1 else ())
    for name, n in zip(names, shape):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} shards must be an int >= 1, got {n!r}")
    if model_shards < 1:
        raise ValueError(f"model_shards must be >= 1, got {model_shards}")
    n = math.prod(shape)
    all_devices = list(jax.devices() if devices is None else devices)
    if len(all_devices) < n:
        raise ValueError(f"a {'x'.join(map(str, shape))} mesh needs {n} devices, only {len(all_devices)} available "
                         f"(on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n} before importing jax)")
    axis_types = (AxisType.Auto,) * len(shape) if axis_types is None else tuple(axis_types)
    if devices is None and n == jax.device_count():
        return jax.make_mesh(tuple(shape), names, axis_types=axis_types)  # topology-aware order
    return Mesh(np.asarray(all_devices[:n], dtype=object).reshape(shape), names, axis_types=axis_types)


def parse_mesh(text: str) -> tuple[int, ...]:
    """"2x4" -> (2, 4) (prompts x cands), "2x1x4" -> (2, 1, 4) (prompts x cands x model)."""
    parts = text.lower().split("x")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"mesh must look like PxC or PxCxM with positive ints (e.g. 2x4), got {text!r}")
    return tuple(int(p) for p in parts)


def _axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


def _check_mesh(mesh: Mesh) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see sharding.make_mesh), got {type(mesh).__name__}")
    missing = {PROMPTS, CANDS} - set(mesh.axis_names)
    extra = set(mesh.axis_names) - {PROMPTS, CANDS, MODEL}
    if missing or extra:
        raise ValueError(f"mesh axes must be ('prompts', 'cands'[, 'model']), got {mesh.axis_names}")


# ------------------------------------------------------------------------------ specs
def conf_specs(scaling: ScalingARConfig, grid_size: int) -> ConfidenceState:
    """PartitionSpec of every `ConfidenceState` field: (P, N, ...) fields over (prompts, cands),
    per-prompt (P,) fields over prompts (their values are equal on every candidate shard)."""
    shapes = jax.eval_shape(lambda: init_state(scaling, 2, 3, grid_size))
    return jax.tree.map(lambda x: P(PROMPTS, CANDS) if x.shape[:2] == (2, 3) else P(PROMPTS), shapes)


def loop_state_specs(spec: L.LoopSpec, stacked: bool = False) -> L.LoopState:
    """PartitionSpecs of a `LoopState` in the view layout (see the module docstring); stacked:
    the KV cache in the scanned layout (`gpt.KVCache.stacked`)."""
    pn = P(PROMPTS, CANDS)
    traj = {name: P(None, PROMPTS, CANDS) for name in ("C", "I", "D", "R", "scale", "alive")}
    traj["theta"] = P(None, PROMPTS)
    rows = P(None, PROMPTS, CANDS)
    kv = rows if stacked else (rows,) * spec.gpt_cfg.n_layer  # every buffer: rows like the logits
    return L.LoopState(logits=rows, cache=KVCache(kv, kv, rows), k=P(), keys=pn, row=pn, owner=pn, scale=pn,
                       conf=conf_specs(spec.scaling, spec.gpt_cfg.grid_size), conf_sum=pn, tokens=pn, entropy=pn,
                       traj=traj)


def loop_state_shardings(mesh: Mesh, spec: L.LoopSpec, stacked: bool = False) -> L.LoopState:
    return jax.tree.map(lambda p: NamedSharding(mesh, p), loop_state_specs(spec, stacked),
                        is_leaf=lambda x: isinstance(x, P))


def to_view(s: L.LoopState) -> L.LoopState:
    """Flat pool rows -> an explicit (2, 1, M) row axis per shard: logits (2, 1, M, V), every cache
    buffer (2, 1, M, ...); owner (M,) -> (1, M). Local reshapes only: the global view arrays are
    the shards' pools side by side, (2, prompt shards, cand shards * M)."""
    M = s.owner.shape[0]
    rows = lambda x: x.reshape(2, 1, M, *x.shape[1:])  # noqa: E731
    return s.replace(logits=rows(s.logits), cache=s.cache.map_rows(rows), owner=s.owner[None])


def from_view(s: L.LoopState) -> L.LoopState:
    """Inverse of `to_view` (on local arrays: (2, 1, M, ...) -> 2M flat rows)."""
    M = s.owner.shape[1]
    rows = lambda x: x.reshape(2 * M, *x.shape[3:])  # noqa: E731
    return s.replace(logits=rows(s.logits), cache=s.cache.map_rows(rows), owner=s.owner[0])


# name pattern -> which dimension is split over "model" (column-parallel: the output features;
# row-parallel: the input features; embeddings and the output head: the vocabulary).
MODEL_RULES: tuple[tuple[str, int], ...] = (
    # "layers/" stacked (L, ...) or "layers/<i>/" per layer (`gpt.unstack_layers`)
    # and "kernel/<j>" for column block j of `gpt.split_columns` (each block split like the kernel)
    (r"layers/(\d+/)?attention/wqkv/kernel(/\d+)?$", -1),  # (L, dim, (H + 2 Hkv) hd): column parallel
    (r"layers/(\d+/)?attention/wo/kernel(/\d+)?$", -2),  # (L, H hd, dim): row parallel
    (r"layers/(\d+/)?feed_forward/w[13]/kernel(/\d+)?$", -1),  # (L, dim, hidden): column parallel
    (r"layers/(\d+/)?feed_forward/w2/kernel(/\d+)?$", -2),  # (L, hidden, dim): row parallel
    (r"tok_embeddings/embedding$", 0),  # (V, dim): over the vocabulary
    (r"output/kernel(/\d+)?$", -1),  # (dim, V): over the vocabulary
    (r"cls_embedding/embedding_table/embedding$", 0),  # (classes + 1, dim) [c2i]
)


def _path_str(path) -> str:
    """"layers/0/attention/wqkv/kernel": dict keys, attribute names and sequence indices."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_specs(params, model_axis: str | None = None, model_size: int = 1, rules=MODEL_RULES):
    """PartitionSpec tree for GPT parameters: replicated (P()) by default; with `model_axis`,
    the leaves matched by `rules` are split over it on the rule's dimension when that dimension
    is divisible by `model_size` (otherwise the leaf stays replicated)."""
    def spec(path, x):
        if model_axis is None:
            return P()
        name = _path_str(path)
        for pattern, dim in rules:
            if re.search(pattern, name):
                d = dim % x.ndim
                if x.shape[d] % model_size:
                    return P()
                return P(*([None] * d + [model_axis]))
        return P()

    return jax.tree_util.tree_map_with_path(spec, params)


def put(x, mesh: Mesh, spec: P) -> jax.Array:
    """Places a host array (the same full value on every process) on `NamedSharding(mesh, spec)`;
    works in multi-process runs (each process fills its addressable shards)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])


def shard_params(params, mesh: Mesh, *, model_axis: str | None = None):
    """Puts a parameter tree on the mesh: replicated, or split over `model_axis` (see
    `param_specs`; use `model_axis="model"` with a mesh from `make_mesh(..., model_shards=M)`)."""
    _check_mesh(mesh)
    if model_axis is not None and model_axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {model_axis!r} (axes {mesh.axis_names})")
    specs = param_specs(params, model_axis, _axis_size(mesh, model_axis) if model_axis else 1)
    return jax.tree.map(lambda x, s: put(x, mesh, s), params, specs)


def _on_mesh(params, mesh: Mesh):
    """params unchanged if every leaf already lives on `mesh`, else replicated onto it."""
    def ok(x):
        return isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
    if all(ok(x) for x in jax.tree.leaves(params)):
        return params
    return jax.tree.map(lambda x: put(x, mesh, P()), params)


# ------------------------------------------------------------------------------ shard_map'd pieces
def _smap(mesh: Mesh, f, in_specs, out_specs):
    """shard_map manual over (prompts, cands); a "model" axis stays automatic (compiler-sharded).
    check_vma=False: per-prompt values computed from all-gathers are equal on every candidate
    shard but not typed as invariant, and are returned with specs that omit "cands"."""
    kw = {"axis_names": frozenset({PROMPTS, CANDS})} if MODEL in mesh.axis_names else {}
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False, **kw)


def _key(key_data, impl):
    return key_data if impl is None else jax.random.wrap_key_data(key_data, impl=impl)


@functools.partial(jax.jit, static_argnames=("spec", "mesh", "impl"))
def _start(params, cond, cond_mask, key_data, prompt_ids, first, *, spec, mesh, impl):
    state = loop_state_specs(spec, layers_stacked(params))

    def f(prm, c, kd, pid, fc, m=None):
        return to_view(L.init_loop(prm, c, m, _key(kd, impl), pid, spec, fc))

    args, specs = (params, cond, key_data, prompt_ids, first), (P(), P(PROMPTS), P(), P(PROMPTS), P())
    if cond_mask is not None:
        args, specs = (*args, cond_mask), (*specs, P(PROMPTS))
    return _smap(mesh, f, specs, state)(*args)


def _sharded_loop(params, s: L.LoopState, stop, *, spec: L.LoopSpec, mesh: Mesh):
    """The token loop under shard_map. s: view-layout state on the mesh (local spec: per-shard
    `num_candidates`, axes set; see `ShardedExecutor.local_spec`); stop: int32 scalar, leave when
    k reaches it. Returns (state, pool_alive int32 scalar, equal on every shard). Compiles
    once per (spec, mesh, pool size)."""
    def f(prm, st, stp):
        st = L.token_loop(prm, from_view(st), spec, stp)
        return to_view(st), L.pool_alive(st.conf.alive, spec)

    state = loop_state_specs(spec, s.cache.stacked)
    return _smap(mesh, f, (P(), state, P()), (state, P()))(params, s, stop)


run_loop = jax.jit(_sharded_loop, static_argnames=("spec", "mesh"))
run_loop.__doc__ = _sharded_loop.__doc__ + " `s` stays valid (inspection, benchmarks)."
run_loop_in_place = jax.jit(_sharded_loop, static_argnames=("spec", "mesh"), donate_argnames=("s",))
run_loop_in_place.__doc__ = "`run_loop` that donates `s` (the state is updated in place; `s` is invalid after)."


@functools.partial(jax.jit, static_argnames=("rows", "spec", "mesh"))
def _compact(s: L.LoopState, *, rows: int, spec: L.LoopSpec, mesh: Mesh) -> L.LoopState:
    """Per-shard compaction into a pool of `rows` rows per shard (every shard the same size)."""
    state = loop_state_specs(spec, s.cache.stacked)
    return _smap(mesh, lambda st: to_view(L.compact(from_view(st), rows)), (state,), state)(s)


def _unpad(res: L.StrategyResult, P_: int, N: int) -> L.StrategyResult:
    traj = {k: (v[:, :P_] if k == "theta" else v[:, :P_, :N]) for k, v in res.traj.items()}
    return L.StrategyResult(tokens=res.tokens[:P_], winner=res.winner[:P_], tokens_used=res.tokens_used[:P_],
                            all_tokens=res.all_tokens[:P_, :N], entropy=res.entropy[:P_, :N],
                            terminated_at=res.terminated_at[:P_, :N], score=res.score[:P_, :N], traj=traj)


@functools.partial(jax.jit, static_argnames=("strategy", "spec", "mesh", "num_prompts", "num_real"))
def _finish(s: L.LoopState, *, strategy, spec, mesh, num_prompts, num_real):
    state = loop_state_specs(spec, s.cache.stacked)
    winner, score, used = _smap(mesh, lambda st: L.select(from_view(st), strategy, spec), (state,),
                                (P(PROMPTS), P(PROMPTS, CANDS), P(PROMPTS)))(s)
    # replicated (every process reads it), then unpadded: constraining after the slice trips
    # XLA's SPMD partitioner (shape mismatch) when P is padded on the prompts axis.
    res = jax.lax.with_sharding_constraint(L.result(s, winner, score, used), NamedSharding(mesh, P()))
    return _unpad(res, num_prompts, num_real)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _replicate(x, *, mesh):
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P()))


@functools.partial(jax.jit, static_argnames=("spec", "mesh"))
def resample_view(s: L.LoopState, idx, *, spec: L.LoopSpec, mesh: Mesh) -> L.LoopState:
    """Importance-sampling copy on the *global* view arrays (jit level, outside shard_map): every
    candidate slot (p, n) takes the state of slot idx[p, n] of the same prompt, wherever it lives;
    keys stay with the slot. idx: (P, N) int32 global candidate ids. The output is constrained to
    the loop-state shardings; the compiler inserts the cross-device copies. The pools must be
    uncompacted (importance sampling never compacts): shard (a, b)'s pool row p_l * N_l + n_l
    holds candidate (a * P_l + p_l, b * N_l + n_l)."""
    Pn, N = idx.shape
    Sp, Sc = _axis_size(mesh, PROMPTS), _axis_size(mesh, CANDS)
    Pl, Nl = Pn // Sp, N // Sc
    if s.owner.shape != (Sp, Sc * Pl * Nl):
        raise ValueError(f"resample_view needs uncompacted pools of {Pl * Nl} rows per shard, "
                         f"got owner {s.owner.shape}")

    def take(x, axis):
        shape = [1] * x.ndim
        shape[axis - 1], shape[axis] = Pn, N
        return jnp.take_along_axis(x, idx.reshape(shape), axis=axis)

    def take_pool(x, axis):
        """x: pool view with (shard p, Sc * Pl * Nl) at axes (axis - 1, axis) -> candidates taken."""
        head, tail = x.shape[:axis - 1], x.shape[axis + 1:]
        h = len(head)
        y = x.reshape(*head, Sp, Sc, Pl, Nl, *tail)
        y = jnp.swapaxes(y, h + 1, h + 2).reshape(*head, Pn, N, *tail)  # (.., P, N, ..)
        y = take(y, axis)
        y = jnp.swapaxes(y.reshape(*head, Sp, Pl, Sc, Nl, *tail), h + 1, h + 2)
        return y.reshape(x.shape)

    conf = jax.tree.map(lambda x: take(x, 1) if x.ndim >= 2 and x.shape[:2] == (Pn, N) else x, s.conf)
    out = s.replace(logits=take_pool(s.logits, 2),
                    cache=s.cache.map_rows(lambda x: take_pool(x, 2)),
                    conf=conf, conf_sum=take(s.conf_sum, 1), tokens=take(s.tokens, 1), entropy=take(s.entropy, 1))
    return jax.lax.with_sharding_constraint(out, loop_state_shardings(mesh, spec, s.cache.stacked))


def _local(tree):
    """Replicated global arrays -> ordinary arrays on this process's default device."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)


# ------------------------------------------------------------------------------ executor
class ShardedExecutor:
    """The `loop.Executor` running the loop under `shard_map` on `mesh` (`strategies.make_executor`
    builds it). Pads P and N to multiples of the mesh axes (see the module docstring); every
    method takes and returns unpadded, unsharded quantities except the loop state itself.

    cond (P, ...), cond_mask (P, cls) or None, prompt_ids (P,): as `strategies.prepare` returns
    them, the same on every process; first_candidate: int >= 0. params: a tree of host/device
    arrays (replicated onto the mesh) or the output of `shard_params(params, mesh, ...)` (used as
    placed)."""

    def __init__(self, params, cond, cond_mask, key, prompt_ids, *, mesh: Mesh, num_candidates: int,
                 first_candidate: int = 0):
        _check_mesh(mesh)
        self.mesh = mesh
        pa, ca = _axis_size(mesh, PROMPTS), _axis_size(mesh, CANDS)
        self.P, self.N = int(np.shape(cond)[0]), int(num_candidates)
        self.P_pad, self.N_pad = -(-self.P // pa) * pa, -(-self.N // ca) * ca
        self.N_local = self.N_pad // ca

        def pad(x):
            x = np.asarray(x)
            return np.concatenate([x, np.repeat(x[:1], self.P_pad - self.P, axis=0)]) if self.P_pad > self.P else x

        # the decode layout of the mesh's platform (gpt.decode_layout), as a loader gives it
        self.params = _on_mesh(decode_layout(params, mesh.devices.flat[0].platform), mesh)
        self.cond = put(pad(cond), mesh, P(PROMPTS))
        self.cond_mask = None if cond_mask is None else put(pad(cond_mask), mesh, P(PROMPTS))
        self.prompt_ids = put(pad(prompt_ids), mesh, P(PROMPTS))
        key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            self.impl, data = str(jax.random.key_impl(key)), jax.random.key_data(key)
        else:
            self.impl, data = None, key
        self.key_data = put(np.asarray(data), mesh, P())
        self.first_candidate = put(np.int32(first_candidate), mesh, P())  # id of slot 0

    def local_spec(self, spec: L.LoopSpec) -> L.LoopSpec:
        """The per-shard spec: N0 per candidate shard, padding marked, axes named."""
        if spec.num_candidates != self.N:
            raise ValueError(f"spec has {spec.num_candidates} candidates, executor {self.N}")
        return dataclasses.replace(spec, num_candidates=self.N_local, num_real=self.N if self.N_pad > self.N else -1,
                                   prompt_axis=PROMPTS, cand_axis=CANDS)

    def start(self, spec: L.LoopSpec) -> L.LoopState:
        return _start(self.params, self.cond, self.cond_mask, self.key_data, self.prompt_ids, self.first_candidate,
                      spec=L.shape_key(self.local_spec(spec)), mesh=self.mesh, impl=self.impl)

    def advance(self, s: L.LoopState, spec: L.LoopSpec, stop: int) -> tuple[L.LoopState, int, jax.Array]:
        s, alive = run_loop_in_place(self.params, s, put(np.int32(stop), self.mesh, P()),
                                     spec=L.loop_key(self.local_spec(spec)), mesh=self.mesh)
        return s, int(s.k), alive

    def compact(self, s: L.LoopState, rows: int, spec: L.LoopSpec) -> L.LoopState:
        return _compact(s, rows=rows, spec=L.shape_key(self.local_spec(spec)), mesh=self.mesh)

    def tokens(self, s: L.LoopState) -> np.ndarray:
        return np.asarray(_replicate(s.tokens, mesh=self.mesh))[: self.P, : self.N]

    def resample(self, s: L.LoopState, idx: np.ndarray, spec: L.LoopSpec) -> L.LoopState:
        full = np.broadcast_to(np.arange(self.N_pad, dtype=np.int32), (self.P_pad, self.N_pad)).copy()
        full[: self.P, : self.N] = np.asarray(idx, np.int32)  # padding slots keep themselves (stay dead)
        return resample_view(s, put(full, self.mesh, P(PROMPTS)), spec=L.shape_key(self.local_spec(spec)),
                             mesh=self.mesh)

    def finish(self, s: L.LoopState, strategy: str, spec: L.LoopSpec) -> L.StrategyResult:
        res = _finish(s, strategy=strategy, spec=L.shape_key(self.local_spec(spec)), mesh=self.mesh, num_prompts=self.P,
                      num_real=self.N)
        return _local(res)


# ------------------------------------------------------------------------------ multi-host
def init_distributed(coordinator: str, num_processes: int, process_id: int, *, local_device_count: int | None = None,
                     cpu_collectives: str | None = "gloo") -> None:
    """`jax.distributed.initialize` for a multi-process run; call before any other jax call.

    coordinator: "host:port" of process 0. On CPU (tests, this machine) cross-process
    collectives need `jax_cpu_collectives_implementation` ("gloo"; None leaves it alone) and
    `local_device_count` simulated devices per process (`jax_num_cpu_devices`). On TPU pods
    `jax.distributed.initialize()` with no arguments also works (cluster auto-detection).
    """
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ValueError(f"coordinator must be 'host:port', got {coordinator!r}")
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", int(local_device_count))
    jax.distributed.initialize(coordinator, num_processes, process_id)


def split_prompts(records: Sequence, process_index: int, process_count: int) -> list[tuple[int, object]]:
    """This process's share of a prompt list: [(global index, record), ...], contiguous blocks
    (sizes differ by at most one, earlier processes get the extra ones). The global index is
    the record's position in the file: the GenEval folder number and the prompt id for keys,
    so the union of all shares equals a one-process run."""
    if not (isinstance(process_count, int) and process_count >= 1):
        raise ValueError(f"process_count must be an int >= 1, got {process_count!r}")
    if not (isinstance(process_index, int) and 0 <= process_index < process_count):
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    n = len(records)
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    stop = start + base + (process_index < extra)
    return [(i, records[i]) for i in range(start, stop)]


_INDEX_RE = re.compile(r"^\d{5}$")


def merge_geneval_folders(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                          overwrite: bool = False) -> str:
    """Merges per-host GenEval-layout folders (`<part>/<5-digit index>/metadata.jsonl`,
    `samples/NNNN.png`) into `out`. Raises ValueError when a part is missing, holds no prompt
    folder, a prompt folder lacks metadata.jsonl or samples/, or two parts hold the same index;
    FileExistsError when `out` exists (unless `overwrite`). Atomic: everything is copied into a
    temporary folder next to `out`, which is then renamed. Returns `out`."""
    out = os.fspath(out)
    seen: dict[str, str] = {}
    for part in parts:
        part = os.fspath(part)
        if not os.path.isdir(part):
            raise ValueError(f"part {part} is not a folder")
        names = sorted(n for n in os.listdir(part) if _INDEX_RE.match(n) and os.path.isdir(os.path.join(part, n)))
        if not names:
            raise ValueError(f"part {part} holds no GenEval prompt folders (<5-digit index>/)")
        for n in names:
            folder = os.path.join(part, n)
            if not os.path.isfile(os.path.join(folder, "metadata.jsonl")):
                raise ValueError(f"{folder}: no metadata.jsonl")
            if not os.path.isdir(os.path.join(folder, "samples")):
                raise ValueError(f"{folder}: no samples/ folder")
            if n in seen:
                raise ValueError(f"prompt folder {n} is in two parts: {seen[n]} and {part}")
            seen[n] = folder
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for n, folder in sorted(seen.items()):
            shutil.copytree(folder, os.path.join(tmp, n))
    return out

