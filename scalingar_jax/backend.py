"""Backend-aware choices, in one place: what the model and the sampler do differently on a CPU,
a TPU or a GPU, and why.

| choice | cpu | tpu, cuda, rocm | where it acts | measured |
|---|---|---|---|---|
| `column_splits`: decode weights stored as column blocks (`gpt.split_columns`) | 2 (multi-core) | 1 | `gpt.decode_layout` (a parameter layout, chosen outside jit) | 1.05x on a 2-core Xeon (README, `bench_decode.py --compare-splits`); XLA:CPU runs a skinny matmul on one core |
| `scan_layers`: the layers under `lax.scan` over stacked weights and a stacked KV cache, instead of unrolled | no | see `ACCELERATOR_SCAN_LAYERS` | `gpt.decode_layout` (stacked = scanned) | `experiments/results/compile_layers.md` |
| `top_k`: the k-th largest logit for top-k | "radix" (`sampling.radix_kth_largest`, 32 compare-and-count passes) | "lax" (`lax.top_k`) | `sampling.filter_logits`, via `per_platform` | XLA:CPU lowers top_k to a full sort of the row (tens of ms per step at V = 16384); TPU/GPU have a top-k op |
| `sample_barrier`: `optimization_barrier` on the noisy logits before the Gumbel argmax | yes | no | `sampling.sample_tokens`, via `per_platform` | fused into the argmax, XLA:CPU evaluates the noise's logs unvectorised; on TPU/GPU fusion is what you want |

Both kinds of choice follow the platform the program is *compiled for*, never the process that
traces it: the traced ones (`top_k`, `sample_barrier`) through `jax.lax.platform_dependent`
(`per_platform`), so `jax.export(..., platforms=("tpu",))` on a CPU host lowers the TPU branch;
the layout ones through `backend_config(platform)`, which `gpt.decode_layout(params, platform)`
reads outside jit (a loader lays parameters out once, for the backend its arrays live on).
Nothing traced calls `jax.default_backend()`. Every CPU-only construct is emitted inside
`cpu_only(name)`, a named scope that shows in the lowered module's locations, so
`tests/test_export.py` proves that none reaches a TPU or GPU program.

Top-k on every backend keeps LlamaGen's tie rule: the threshold is the k-th largest *value*
and every logit >= it is kept (`logits < kth` is filtered), so values tied with the k-th all
survive (`tests/test_decode.py`). `approx_max_k` is not used: it may return a smaller k-th value.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # the names jax.export and lax.platform_dependent use
CPU_ONLY = "cpu_only"  # the named scope around every CPU-only construct (see `cpu_only`)

# Scanned layers on accelerators: the GPT-XL t2i token loop lowers to 0.25x the StableHLO ops
# for tpu/cuda and compiles in 0.54x the time on XLA:CPU (experiments/results/compile_layers.md;
# no TPU/GPU compiler here). `scalingar bench accelerator` measures compile and step time of
# both layouts on a device: the measurement that should confirm or flip this.
ACCELERATOR_SCAN_LAYERS = True


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """The backend-specific choices of one platform (hashable: usable as a jit static argument).

    platform: "cpu", "cuda", "rocm" or "tpu"; column_splits: column blocks per decode kernel
    (`gpt.split_columns`, 1 = whole); scan_layers: decode layout with stacked layers run under
    `lax.scan`; top_k: "radix" or "lax"; sample_barrier: optimization_barrier before the draw."""

    platform: str
    column_splits: int = 1
    scan_layers: bool = False
    top_k: str = "lax"
    sample_barrier: bool = False


def canonical_platform(platform: str | None = None) -> str:
    """A platform name as jax.export spells it ("gpu" -> "cuda"); None: `jax.default_backend()`."""
    p = (platform or jax.default_backend()).lower()
    p = "cuda" if p == "gpu" else p
    if p not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; expected one of {PLATFORMS}")
    return p


@functools.cache
def backend_config(platform: str | None = None) -> BackendConfig:
    """The choices for `platform` (default: the default backend). Called outside jit, or inside
    `per_platform`, which passes each platform explicitly."""
    p = canonical_platform(platform)
    if p == "cpu":
        return BackendConfig("cpu", column_splits=2 if (os.cpu_count() or 1) > 1 else 1, scan_layers=False,
                             top_k="radix", sample_barrier=True)
    return BackendConfig(p, column_splits=1, scan_layers=ACCELERATOR_SCAN_LAYERS, top_k="lax", sample_barrier=False)


@functools.cache
def _bound(fn, platform: str, static: tuple):
    return functools.partial(fn, backend_config(platform), **dict(static))


def per_platform(fn, *args, **static):
    """`fn(backend_config(p), *args, **static)` for the platform p the enclosing program is
    lowered for (`jax.lax.platform_dependent`; traced). args: arrays or pytrees; static: hashable
    Python values; fn: a module-level function (platforms whose configs agree share one branch).
    Every branch must return the same types."""
    branches, seen = {}, {}
    static = tuple(sorted(static.items()))
    for p in PLATFORMS:
        key = dataclasses.replace(backend_config(p), platform="")
        branches[p] = seen.setdefault(key, _bound(fn, p, static))
    return jax.lax.platform_dependent(*args, **branches)


def cpu_only(name: str):
    """The named scope every CPU-only construct is traced in: `cpu_only/<name>` in the lowered
    module's locations (what tests/test_export.py looks for in TPU and GPU programs)."""
    return jax.named_scope(f"{CPU_ONLY}/{name}")
