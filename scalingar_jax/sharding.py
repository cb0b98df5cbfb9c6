"""Meshes, PartitionSpecs of parameters, placement and multi-host helpers: the ground floor the
engine (`scaling.engine`, which runs the token loop under `shard_map` on a mesh) and the
command line build on. Strategies run on a mesh through `Schedule(mesh=...)`
(`scaling.options`); the engine's state layout on a mesh is documented in `scaling.engine`.

Mesh axes
---------
``("prompts", "cands")`` and, optionally, ``"model"``:

* ``prompts``  prompts are split over it (data parallel: no communication);
* ``cands``    the batched strategies split each prompt's candidates over it; ScalingAR's
  per-prompt pooled statistics, quantile threshold, termination and winner use collectives over
  it (see `scalingar_jax.scaling.profile` / `policy`; all-gathers of (P, N) floats per step).
  The continuous-batching pool keeps a prompt's candidates on one device and spreads its prompt
  lanes over both axes;
* ``model``    optional: the GPT weights are split over it (tensor parallel, for presets whose
  weights do not fit one device); the engine then runs `shard_map` manual over ``prompts`` /
  ``cands`` only and lets the compiler partition the model over ``model``.

The mesh is built with `AxisType.Auto` axes (the default of `jax.make_mesh` in jax 0.10 is
Explicit): jit-level code on the global arrays (the importance-sampling gather, the result
gather, model-parallel matmuls) is partitioned by the compiler; `shard_map` bodies are manual.
One device is a 1 x 1 mesh (`single_device_mesh`): the engine has one code path.

Multi-host
----------
Two modes, both with the same code:
1. one global mesh over every process's devices (`init_distributed`, then `make_mesh` over
   `jax.devices()`): every process calls the run with the *same* full inputs; the inputs are
   placed with `jax.make_array_from_callback` (each process supplies its addressable shards)
   and the results are replicated, so every process gets the full `StrategyResult`;
2. independent hosts: `split_prompts` gives each process a share of the prompt file, each
   process runs on a mesh of its local devices (`make_mesh(..., devices=jax.local_devices())`)
   and writes its own GenEval run folder, and `geneval.merge_runs` merges them.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


def axis_size(mesh: Mesh, name: str) -> int:
    """The size of `mesh`'s axis `name` (1 if it has none)."""
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


def check_mesh(mesh: Mesh) -> Mesh:
    """`mesh` if it is a Mesh with axes ("prompts", "cands"[, "model"]), else a TypeError /
    ValueError naming the problem."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see sharding.make_mesh), got {type(mesh).__name__}")
    missing = {PROMPTS, CANDS} - set(mesh.axis_names)
    extra = set(mesh.axis_names) - {PROMPTS, CANDS, MODEL}
    if missing or extra:
        raise ValueError(f"mesh axes must be ('prompts', 'cands'[, 'model']), got {mesh.axis_names}")
    return mesh


def single_device_mesh() -> Mesh:
    """The 1 x 1 ("prompts", "cands") mesh of this process's default device: how the engine runs
    on one device."""
    dev = jax.config.jax_default_device
    if not isinstance(dev, jax.Device):
        dev = jax.local_devices(backend=dev)[0] if isinstance(dev, str) else jax.local_devices()[0]
    return Mesh(np.asarray([[dev]], dtype=object), (PROMPTS, CANDS), axis_types=(AxisType.Auto,) * 2)


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


def param_path(path) -> str:
    """A `tree_util` key path as "a/b/c" (the names `MODEL_RULES` match: dict keys, attribute
    names and sequence indices, e.g. "layers/0/attention/wqkv/kernel/1")."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_specs(params, model_axis: str | None = None, model_size: int = 1, rules=MODEL_RULES):
    """PartitionSpec tree for GPT parameters: replicated (P()) by default; with `model_axis`,
    the leaves matched by `rules` are split over it on the rule's dimension when that dimension
    is divisible by `model_size` (otherwise the leaf stays replicated)."""
    def spec(path, x):
        if model_axis is None:
            return P()
        name = param_path(path)
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


def shard_params(params, mesh: Mesh, *, model_axis: str | None = None, rules=MODEL_RULES):
    """Puts a parameter tree on the mesh: replicated, or split over `model_axis` (see
    `param_specs`; use `model_axis="model"` with a mesh from `make_mesh(..., model_shards=M)`).
    rules: the model family's name rules (LlamaGen's `MODEL_RULES`; Janus: `janus.MODEL_RULES`)."""
    check_mesh(mesh)
    if model_axis is not None and model_axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {model_axis!r} (axes {mesh.axis_names})")
    specs = param_specs(params, model_axis, axis_size(mesh, model_axis) if model_axis else 1, rules)
    return jax.tree.map(lambda x, s: put(x, mesh, s), params, specs)


def on_mesh(params, mesh: Mesh):
    """params unchanged if every leaf already lives on `mesh`, else replicated onto it (a device
    copy on one process; `put` per leaf across processes)."""
    def ok(x):
        return isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
    if all(ok(x) for x in jax.tree.leaves(params)):
        return params
    if set(mesh.devices.flat) <= set(jax.local_devices()):
        return jax.device_put(params, NamedSharding(mesh, P()))
    return jax.tree.map(lambda x: put(x, mesh, P()), params)


def split_key(key) -> tuple[np.ndarray, str | None]:
    """A PRNG key as (its raw uint32 data on the host, its implementation's name or None for a
    raw uint32 key): what crosses into `shard_map` (`join_key` inverts it)."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(key)), str(jax.random.key_impl(key))
    return np.asarray(key), None


def join_key(key_data, impl: str | None):
    """The key of `split_key`'s (data, impl) (traced)."""
    return key_data if impl is None else jax.random.wrap_key_data(key_data, impl=impl)


def manual(mesh: Mesh, f, in_specs, out_specs):
    """shard_map of f manual over ("prompts", "cands"); a "model" axis stays automatic
    (compiler-sharded). check_vma=False: per-prompt values computed from all-gathers are equal
    on every candidate shard but not typed as invariant, and are returned with specs that omit
    "cands"."""
    kw = {"axis_names": frozenset({PROMPTS, CANDS})} if MODEL in mesh.axis_names else {}
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False, **kw)


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
