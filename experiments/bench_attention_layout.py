"""Decode-step attention over a KV cache, three cache layouts side by side (why the model keeps a
buffer per layer).

A cache stacked as (n_layer, B, H, S, hd) in the carry of a layer scan (what `scalingar_jax/gpt.py`
did until it switched to per-layer buffers) is read with a dynamic layer index. On XLA:CPU that
index is materialized: every step copies the whole cache once for K and once for V before
attention reads it. This benchmark times, inside one jitted token loop of `--steps` steps (cache donated, same attention
math, same results), the attention part of a decode step for:

* scan-carry:     stacked cache in the layer-scan carry, dynamic layer index (gpt.py before)
* static-slices:  stacked cache, layers unrolled in Python, static slices
* per-layer:      one cache buffer per layer (a tuple), layers unrolled (gpt.py now)

Only attention (cache write + scores + softmax + weighted sum) runs; no projections or MLP, so
the numbers isolate the cache traffic. The outputs of all three are compared (max difference).

  python experiments/bench_attention_layout.py                 # GPT-B: 16 rows, 12 layers, 12 heads, T=256
  python experiments/bench_attention_layout.py --rows 320 --layers 6 --heads 6 --positions 159 --head-dim 32 \\
      --out bench_attention_layout_shapes                      # the shapes-world model at P=20, N=8 with CFG
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, stamp, write_json  # noqa: E402


def _attend(q, keys, values, valid, hd):
    """q (B, H, hd); keys/values (B, H, S, hd); valid (B, S) -> (B, H, hd)."""
    s = jnp.einsum("bhd,bhtd->bht", q, keys, preferred_element_type=jnp.float32) / np.sqrt(hd)
    p = jax.nn.softmax(jnp.where(valid[:, None], s, -jnp.inf), -1)
    return jnp.einsum("bht,bhtd->bhd", p, values)


def make_loop(layout: str, L: int, S: int, hd: int, steps: int):
    """Jitted loop of `steps` attention-only decode steps; (cache_k, cache_v, x) donated/consumed."""

    def layer_io(x):
        return jnp.tanh(x)[:, :, None, :], x[:, :, None, :]  # this token's key, value (B, H, 1, hd)

    def valid(t, B):
        return jnp.broadcast_to(jnp.arange(S)[None, :] <= t, (B, S))

    def step(carry, _):
        ck, cv, x, t = carry
        B = x.shape[0]
        if layout == "scan-carry":
            def one(c, l):
                ck, cv, x = c
                k, v = layer_io(x)
                ck = jax.lax.dynamic_update_slice(ck, k[None], (l, 0, 0, t, 0))
                cv = jax.lax.dynamic_update_slice(cv, v[None], (l, 0, 0, t, 0))
                keys = jax.lax.dynamic_index_in_dim(ck, l, 0, keepdims=False)
                vals = jax.lax.dynamic_index_in_dim(cv, l, 0, keepdims=False)
                return (ck, cv, x + 0.1 * _attend(x, keys, vals, valid(t, B), hd)), None

            (ck, cv, x), _ = jax.lax.scan(one, (ck, cv, x), jnp.arange(L))
        else:
            for l in range(L):
                k, v = layer_io(x)
                if layout == "per-layer":
                    ck = (*ck[:l], jax.lax.dynamic_update_slice(ck[l], k, (0, 0, t, 0)), *ck[l + 1:])
                    cv = (*cv[:l], jax.lax.dynamic_update_slice(cv[l], v, (0, 0, t, 0)), *cv[l + 1:])
                else:
                    ck = jax.lax.dynamic_update_slice(ck, k[None], (l, 0, 0, t, 0))
                    cv = jax.lax.dynamic_update_slice(cv, v[None], (l, 0, 0, t, 0))
                x = x + 0.1 * _attend(x, ck[l], cv[l], valid(t, B), hd)
        return (ck, cv, x, t + 1), None

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def run(ck, cv, x):
        return jax.lax.scan(step, (ck, cv, x, jnp.int32(0)), None, length=steps)[0][:3]  # caches alias the inputs

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16, help="model rows B (2 P N with CFG; default 16 = N 8 + CFG)")
    ap.add_argument("--layers", type=int, default=12, help="n_layer (default 12, GPT-B)")
    ap.add_argument("--heads", type=int, default=12, help="kv heads (default 12, GPT-B)")
    ap.add_argument("--positions", type=int, default=257, help="cache positions S (default 257: c2i, T=256)")
    ap.add_argument("--head-dim", type=int, default=64, help="head_dim (default 64)")
    ap.add_argument("--steps", type=int, default=32, help="token steps per timed loop")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_attention_layout", help="results name under experiments/results/")
    args = ap.parse_args(argv)
    L, B, H, S, hd = args.layers, args.rows, args.heads, args.positions, args.head_dim
    x = jax.random.normal(jax.random.key(args.seed), (B, H, hd), jnp.float32)
    layouts = ("scan-carry", "static-slices", "per-layer")

    def fresh(layout):
        if layout == "per-layer":
            z = tuple(jnp.zeros((B, H, S, hd), jnp.float32) for _ in range(L))
            return z, tuple(jnp.zeros((B, H, S, hd), jnp.float32) for _ in range(L))
        return jnp.zeros((L, B, H, S, hd), jnp.float32), jnp.zeros((L, B, H, S, hd), jnp.float32)

    loops, outs, compile_s = {}, {}, {}
    for name in layouts:
        loops[name] = make_loop(name, L, S, hd, args.steps)
        t = time.perf_counter()
        outs[name] = np.asarray(loops[name](*fresh(name), x)[2])
        compile_s[name] = time.perf_counter() - t
    times = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name in layouts:
            ck, cv = jax.block_until_ready(fresh(name))
            t = time.perf_counter()
            jax.block_until_ready(loops[name](ck, cv, x))
            times[name].append(1e3 * (time.perf_counter() - t) / args.steps)
    base = float(np.median(times["scan-carry"]))
    cache_mb = 2 * L * B * H * S * hd * 4 / 1e6
    rows = [{"layout": n, "ms_per_step": float(np.median(times[n])), "speedup_vs_scan_carry": base / float(np.median(times[n])),
             "max_abs_diff_vs_scan_carry": float(np.max(np.abs(outs[n] - outs["scan-carry"]))),
             "first_call_s": compile_s[n]} for n in layouts]
    table = markdown_table(rows, ["layout", "ms_per_step", "speedup_vs_scan_carry", "max_abs_diff_vs_scan_carry",
                                  "first_call_s"])
    print(f"attention only, L={L} B={B} H={H} S={S} hd={hd}, fp32 cache {cache_mb:.0f} MB (K+V), "
          f"{args.steps} steps, median of {args.rounds} interleaved rounds")
    print(table)
    out = {"stamp": stamp(args.seed), "config": {"layers": L, "rows": B, "heads": H, "positions": S, "head_dim": hd,
                                                 "steps": args.steps, "cache_mb": cache_mb},
           "rounds_ms": times, "rows": rows, "table": table}
    print(f"wrote {write_json(args.out, out)}")


if __name__ == "__main__":
    main()
