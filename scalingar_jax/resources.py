"""What a generation run needs in memory, what the machine has, and a refusal before allocating.

`run_memory` estimates the bytes a `pipeline.generate` call allocates on top of the loaded
models, from the configs alone (nothing is traced or allocated):

  kv_cache     2 (keys, values) x n_layer x rows x kv_heads x (max_seq_len - 1) x head_dim x
               itemsize, rows = 2 x P x N (the conditional and unconditional half of every
               candidate; a prompt pool: 2 x pool rows); counted twice in the total (a
               compaction, or the prefill's repeat, holds a second copy while it is made)
  logits       rows x vocab_size x 4 bytes x LOGIT_COPIES (the loop carries one; a step makes the
               guided, filtered and softmax copies of it)
  records      the per-candidate records the loop keeps: tokens, entropies, trajectories
               (P x N x T x TRAJECTORY_BYTES)
  images       uint8 P x H x W x 3 (x N with the candidates' images) plus one decode chunk's
               float32 VQ activations (`pipeline.DECODE_CHUNK` images at a time)

`available_memory` is what the host has: the lowest of MemAvailable (/proc/meminfo, else
sysconf), the address space left under RLIMIT_AS and the cgroup's memory.max; on an
accelerator, the device's free memory counts for the device part. `check_run_memory` raises
`ResourceError` (a ValueError) with the estimate and what there is, before anything is made.
"""
from __future__ import annotations

import dataclasses
import os
import resource
from typing import Any

__all__ = ["ResourceError", "RunMemory", "run_memory", "available_memory", "check_run_memory", "LOGIT_COPIES",
           "TRAJECTORY_BYTES"]

LOGIT_COPIES = 8       # vocabulary-sized float32 arrays per model row live at once in a token step
TRAJECTORY_BYTES = 48  # per candidate and step: token, entropy, 8 trajectory values (4 bytes each), flags
VQ_COPIES = 4          # float32 activations of the VQ decoder's widest level alive at once, per image
GB = 1 << 30


class ResourceError(ValueError):
    """A run asks for more memory than the machine has."""


@dataclasses.dataclass(frozen=True)
class RunMemory:
    """Bytes of a run: device (on the accelerator, or the host on CPU) and host parts."""

    kv_cache: int
    logits: int
    records: int
    images: int
    rows: int

    @property
    def device(self) -> int:
        return 2 * self.kv_cache + self.logits + self.records

    @property
    def total(self) -> int:
        return self.device + self.images

    def describe(self) -> str:
        return (f"KV cache {self.kv_cache / GB:.2f} GB for {self.rows} model rows (twice while compacted), logits "
                f"{self.logits / GB:.2f} GB, records {self.records / GB:.2f} GB, images {self.images / GB:.2f} GB")


def run_memory(gpt_cfg, vq_cfg, *, prompts: int, candidates: int, pool: int | None = None,
               decode_candidates: bool = False, decode_chunk: int = 16) -> RunMemory:
    """The estimate of the module docstring for P = `prompts` prompts x N = `candidates`
    (a `pool` of candidate rows instead of P x N when given), GPT `gpt_cfg`, VQ `vq_cfg`."""
    import numpy as np

    from scalingar_jax.config import to_dtype

    P, N = int(prompts), int(candidates)
    rows = 2 * (int(pool) if pool is not None else P * N)
    itemsize = np.dtype(to_dtype(gpt_cfg.dtype)).itemsize
    kv = 2 * gpt_cfg.n_layer * rows * gpt_cfg.kv_heads * (gpt_cfg.max_seq_len - 1) * gpt_cfg.head_dim * itemsize
    logits = rows * gpt_cfg.vocab_size * 4 * LOGIT_COPIES
    T = gpt_cfg.block_size
    records = P * N * T * TRAJECTORY_BYTES
    side = gpt_cfg.grid_size * vq_cfg.downsample
    images = P * (N if decode_candidates else 1) * side * side * 3
    widest = vq_cfg.ch * vq_cfg.ch_mult[0]  # channels at full resolution, the decoder's largest activations
    images += min(decode_chunk, P * N) * side * side * (widest * VQ_COPIES + 3) * 4
    return RunMemory(kv_cache=kv, logits=logits, records=records, images=images, rows=rows)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def _cgroup_left() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        return None


def available_memory() -> tuple[int, str]:
    """(bytes, what they are) of host memory this process can still take: the lowest of the
    available memory, the address space left under its RLIMIT_AS and its cgroup's limit."""
    found = [(v, what) for v, what in ((_meminfo_available(), "available memory"),
                                       (_address_space_left(), "address space left under its limit (ulimit -v)"),
                                       (_cgroup_left(), "memory left under its cgroup's limit")) if v is not None]
    return min(found) if found else (1 << 62, "no limit found")


def _device_free(device) -> int | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without memory stats)
        return None
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def check_run_memory(gpt_cfg, vq_cfg, *, prompts: int, candidates: int, pool: int | None = None,
                     decode_candidates: bool = False, devices: int = 1, what: str = "the run") -> RunMemory:
    """`run_memory(...)`, refused (`ResourceError` naming the estimate, what the machine has and
    what to lower) when it does not fit: on CPU the whole estimate against `available_memory()`,
    on an accelerator its device part / `devices` against the first device's free memory and
    the images against the host's. Returns the estimate."""
    import jax

    need = run_memory(gpt_cfg, vq_cfg, prompts=prompts, candidates=candidates, pool=pool,
                      decode_candidates=decode_candidates)
    host, host_what = available_memory()
    device: Any = jax.devices()[0]
    free = _device_free(device) if device.platform != "cpu" else None
    hint = ("lower -n / --num-candidates, the prompts per call (--batch) or the pool (--pool), or use a machine "
            "with more memory")
    if free is None and need.total > host:
        raise ResourceError(f"{what} needs about {need.total / GB:.2f} GB ({need.describe()}) but this process has "
                            f"{host / GB:.2f} GB ({host_what}); {hint}")
    if free is not None and need.device / max(1, devices) > free:
        raise ResourceError(f"{what} needs about {need.device / max(1, devices) / GB:.2f} GB on each "
                            f"{device.platform} device ({need.describe()}) but {device} has {free / GB:.2f} GB free; "
                            f"{hint}")
    if free is not None and need.images > host:
        raise ResourceError(f"{what} needs about {need.images / GB:.2f} GB of host memory for its images but this "
                            f"process has {host / GB:.2f} GB ({host_what}); {hint}")
    return need
