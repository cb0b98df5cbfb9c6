"""Writes a random LlamaGen-layout GPT checkpoint (`.pt`, or `.safetensors`) WITHOUT torch.

The file has exactly the key names, shapes and wrapper of a released LlamaGen checkpoint
(`{"model": state_dict, "steps": ..., "args": ...}` by default), filled with seeded N(0, 0.02)
noise, and is streamed: one tensor is in memory at a time, so a GPT-XL file (~3.1 GB in
float32) needs only a few hundred MB to write. Used by `experiments/bench_convert.py` and to
exercise `scalingar convert` at full size.

    python conversion/make_synthetic_checkpoint.py --preset GPT-XL --out /tmp/c2i_XL_256.pt
    python conversion/make_synthetic_checkpoint.py --preset GPT-B --model-type t2i --out /tmp/t2i_B_256.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scalingar_jax.config import GPT_PRESETS, gpt_config  # noqa: E402
from scalingar_jax.convert.mapping import np_dtype, gpt_torch_shapes  # noqa: E402
from scalingar_jax.convert.torch_pickle import save_torch_state_dict  # noqa: E402


def synthetic_tensors(cfg, seed: int = 0, dtype: str = "float32"):
    """Yields (key, array) for every tensor of a LlamaGen GPT state dict for `cfg`, in order.

    Each tensor's noise comes from its own generator seeded by (seed, index), so the content
    does not depend on how the stream is consumed."""
    dt = np_dtype(dtype)
    for i, (key, shape) in enumerate(gpt_torch_shapes(cfg).items()):
        rng = np.random.default_rng([seed, i])
        if key.endswith("norm.weight"):
            a = 1.0 + 0.02 * rng.standard_normal(shape, dtype=np.float32)
        else:
            a = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        yield key, a.astype(dt, copy=False)


def write_synthetic_checkpoint(path, cfg, *, seed: int = 0, dtype: str = "float32", wrapper: str | None = "model"):
    """Streams a synthetic checkpoint to `path` (.pt unless it ends in .safetensors). Returns the path."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from scalingar_jax.convert.safetensors import save_file

        return save_file(path, dict(synthetic_tensors(cfg, seed, dtype)), metadata={"format": "pt"})
    extra = None
    if wrapper is not None:
        extra = {"steps": 0, "args": {"image_size": cfg.grid_size * 16, "downsample_size": 16,
                                      "gpt_type": cfg.model_type, "synthetic": True}}
    return save_torch_state_dict(path, synthetic_tensors(cfg, seed, dtype), wrapper=wrapper, extra=extra)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="GPT-B", choices=sorted(GPT_PRESETS))
    ap.add_argument("--model-type", default="c2i", choices=["c2i", "t2i"])
    ap.add_argument("--grid-size", type=int, default=16)
    ap.add_argument("--n-kv-head", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--wrapper", default="model", help="top-level key holding the weights ('' for a bare state dict)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    cfg = gpt_config(a.preset, a.model_type, grid_size=a.grid_size, n_kv_head=a.n_kv_head)
    t = time.perf_counter()
    path = write_synthetic_checkpoint(a.out, cfg, seed=a.seed, dtype=a.dtype, wrapper=a.wrapper or None)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.3f} GB) in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
