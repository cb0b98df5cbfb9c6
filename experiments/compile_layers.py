"""Compile time of the token loop with the GPT's layers unrolled vs scanned (`lax.scan` over
stacked weights and a stacked KV cache): the measurement behind `backend.ACCELERATOR_SCAN_LAYERS`.

The program: LlamaGen t2i GPT-XL at 512 px (T = 1024), the ScalingAR token loop
(`loop.run_loop_in_place`, compaction on) for one prompt at N = 8 with CFG (16 model rows), bf16,
on abstract weights (`jax.ShapeDtypeStruct`: nothing is allocated). Layouts (`gpt.decode_layout`):
"unrolled" = per-layer weights (with the platform's column blocks: 2 on a multi-core CPU) and one
cache buffer per layer; "scanned" = stacked weights and cache under `lax.scan`. For each platform:

  cpu        trace + lower, and XLA:CPU's compile (the only compiler on this machine);
  tpu, cuda  trace + lower only (`jax.export`): no compiler here. The lowered StableHLO's size
             (bytes, ops) is what the device compiler starts from.

Each measurement runs in a fresh subprocess (no jax caches shared), the variants interleaved
(unrolled, scanned, scanned, unrolled, ...) so that a busy machine loads both alike; the table
gives the median of the rounds and scanned/unrolled ratios, and the load average around each.

  nice -n 10 python experiments/compile_layers.py                       # writes compile_layers.{json,md}
  python experiments/compile_layers.py --preset GPT-B --grid 16 --rounds 1 --out /tmp/cl   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYOUTS = ("unrolled", "scanned")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="GPT-XL", help="GPT preset (t2i)")
    ap.add_argument("--grid", type=int, default=32, help="token grid (32 = 512 px with the ds16 VQ)")
    ap.add_argument("--layers", type=int, default=None, help="override n_layer (smoke runs)")
    ap.add_argument("-n", type=int, default=8, help="candidates N (CFG doubles the rows)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--platforms", nargs="+", default=["cpu", "tpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=2, help="measurements per (platform, layout)")
    ap.add_argument("--out", default="compile_layers", help="results name under experiments/results, or a path")
    ap.add_argument("--one", nargs=2, metavar=("PLATFORM", "LAYOUT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def gpt_cfg(args):
    from scalingar_jax.config import gpt_config

    kw = {} if args.layers is None else {"n_layer": args.layers}
    return gpt_config(args.preset, "t2i", grid_size=args.grid, param_dtype=args.dtype, dtype=args.dtype, **kw)


def measure(args, platform: str, layout: str) -> dict:
    """One measurement in this process: trace + lower (and compile on cpu) of the loop."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax import backend, gpt
    from scalingar_jax.config import SamplingConfig
    from scalingar_jax.scaling import ScalingARConfig
    from scalingar_jax.scaling import loop as L
    from scalingar_jax.scaling.strategies import token_spec

    cfg = gpt_cfg(args)
    if layout == "scanned":
        to_layout = gpt.stack_layers
    else:
        splits = backend.backend_config(platform).column_splits
        to_layout = lambda p: gpt.split_columns(p, splits)  # noqa: E731
    params = jax.eval_shape(to_layout, gpt.param_shapes(cfg))
    sampling = SamplingConfig(cfg_scale=7.5, top_k=min(1000, cfg.vocab_size))
    spec = token_spec(cfg, sampling, ScalingARConfig(), "scalingar", args.n, True)
    cond = jax.ShapeDtypeStruct((1, cfg.cls_token_num, cfg.caption_dim), jnp.dtype(args.dtype))
    mask = jax.ShapeDtypeStruct((1, cfg.cls_token_num), bool)
    state = jax.eval_shape(lambda p, c, m: L.init_loop(p, c, m, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                                                       L.shape_key(spec)), params, cond, mask)
    stop = jax.ShapeDtypeStruct((), jnp.int32)
    out = {"platform": platform, "layout": layout, "load_before": os.getloadavg()[0]}
    t = time.perf_counter()
    if platform == "cpu":
        lowered = L.run_loop_in_place.trace(params, state, spec=L.loop_key(spec), stop=stop).lower()
        text = lowered.as_text()
        out["lower_s"] = time.perf_counter() - t
        t = time.perf_counter()
        lowered.compile()
        out["compile_s"] = time.perf_counter() - t
    else:
        text = jax.export.export(L.run_loop_in_place, platforms=(platform,))(
            params, state, spec=L.loop_key(spec), stop=stop).mlir_module()
        out["lower_s"] = time.perf_counter() - t
    ops = [ln for ln in text.splitlines() if " = stablehlo." in ln or " = \"stablehlo." in ln]
    out.update(module_kb=len(text.encode()) / 1024, stablehlo_ops=len(ops), load_after=os.getloadavg()[0])
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args, *args.one)))
        return None
    from common import markdown_table, stamp, write_json

    from scalingar_jax.atomic import atomic_write_text

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    passthrough = ["--preset", args.preset, "--grid", str(args.grid), "-n", str(args.n), "--dtype", args.dtype]
    if args.layers is not None:
        passthrough += ["--layers", str(args.layers)]
    runs = []
    for platform in args.platforms:
        for r in range(args.rounds):
            for layout in (LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]):  # interleaved: U S, S U, ...
                proc = subprocess.run([sys.executable, __file__, *passthrough, "--one", platform, layout],
                                      env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{platform} {layout}: {proc.stderr[-2000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
    rows = []
    for platform in args.platforms:
        med = {}
        for layout in LAYOUTS:
            mine = [r for r in runs if r["platform"] == platform and r["layout"] == layout]
            med[layout] = {k: statistics.median(r[k] for r in mine) for k in mine[0]
                           if isinstance(mine[0][k], (int, float))}
        for layout in LAYOUTS:
            m = med[layout]
            rows.append({"platform": platform, "layout": layout, "lower_s": m["lower_s"],
                         "compile_s": m.get("compile_s", "n/a (no compiler here)"), "module_kB": m["module_kb"],
                         "stablehlo_ops": m["stablehlo_ops"],
                         "load (1 min avg)": f"{m['load_before']:.1f}-{m['load_after']:.1f}"})
        ratio = {k: med["scanned"][k] / med["unrolled"][k] for k in ("lower_s", "compile_s", "module_kb",
                                                                     "stablehlo_ops") if k in med["scanned"]}
        rows.append({"platform": platform, "layout": "scanned / unrolled", "lower_s": ratio["lower_s"],
                     "compile_s": ratio.get("compile_s", "n/a"), "module_kB": ratio["module_kb"],
                     "stablehlo_ops": ratio["stablehlo_ops"], "load (1 min avg)": ""})
    cfg = gpt_cfg(args)
    columns = ["platform", "layout", "lower_s", "compile_s", "module_kB", "stablehlo_ops", "load (1 min avg)"]
    table = markdown_table(rows, columns)
    what = (f"{args.preset} t2i, {cfg.n_layer} layers, grid {args.grid} (T = {cfg.block_size}), ScalingAR token "
            f"loop with compaction, 1 prompt x N = {args.n} + CFG = {2 * args.n} rows, {args.dtype}, abstract "
            f"weights; median of {args.rounds} fresh-process rounds per cell, interleaved")
    print(what)
    print(table)
    payload = {**stamp(), "what": what, "rows": rows, "runs": runs, "table": table}
    path = write_json(args.out, payload)
    atomic_write_text(path.with_suffix(".md"), f"# Token-loop compile time: layers unrolled vs scanned\n\n{what}.\n\n"
                                       f"`{payload['command']}`\n\n{table}\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return payload


if __name__ == "__main__":
    main()
