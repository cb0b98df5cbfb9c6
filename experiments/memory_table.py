"""Accelerator sizing of LlamaGen t2i (GPT + T5 encoder): compiled memory per device, FLOPs and bytes
per step, and a roofline estimate of a GenEval run on a TPU slice.

Two subcommands, both on abstract parameters (`jax.ShapeDtypeStruct` / `jax.eval_shape`: no weights
are ever allocated, so GPT-XL + T5-XL fit this CPU):

memory    XLA's compiled memory analysis of the real generation path, per device, for each mesh
          (prompt shards x candidate shards, `sharding.make_mesh`): the engine's jitted pieces
          exactly as `scaling.engine.Engine` calls them (`engine.run_prefill` = prefill + fresh
          decode state, `engine.run_loop_in_place` = the token loop under shard_map with its state
          donated, `engine.run_compact` = ScalingAR's first compaction), for the ScalingAR loop
          spec (compaction on) and the fixed-CFG one (plain / Best-of-N);
          plus the T5 encoder (`t5.encode`) on one device. Per program:
              peak = argument + output + temp - alias   (bytes; XLA's CompiledMemoryStats)
          (generated code and host-side buffers are not counted). The pipeline's peak per device
          is the largest GPT program peak plus the T5 parameters when the encoder stays resident.
          A second prompt count (`--fit-prompts`) on the first prompts-only mesh gives the per-row
          slope, from which `--budgets` tables say what fits on 16 / 40 / 80 GB devices.
roofline  XLA's cost analysis (flops, bytes accessed) of one decode step (`decode.decode_step`), one
          ScalingAR loop step (`loop.step`), the prefill (`decode.prefill_candidates`) and the T5 encode, on
          one device at two row counts (linear in rows), then a roofline estimate
              step time = max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)
          of GenEval (553 prompts x 4 images) on a TPU slice for plain (N = 1), Best-of-N and
          ScalingAR (N = 8). ScalingAR runs its steps at a fraction of Best-of-N's rows: the token
          fraction measured on the shapes world (`experiments/results/efficiency.json`,
          `python experiments/reproduce.py all --tuned`) as the ideal, and that run's
          time-averaged memory ratio (power-of-two pools) as the realistic one. An estimate, not
          a measurement: no host overhead, no VQ decode, no reward model, CPU-compiled HLO costs.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 nice -n 10 python experiments/memory_table.py memory
  nice -n 10 python experiments/memory_table.py roofline
  # on a GPU / TPU host (one device: mesh 1x1; 8 chips: the default meshes):
  python experiments/memory_table.py memory --backend gpu --devices 1 --meshes 1x1 --prompts 1 --fit-prompts 2
  # smoke run (tiny random config; about a minute, it compiles every piece):
  python experiments/memory_table.py memory --tiny --out memory_table_tiny
  # Janus-Pro-1B and 7B (bf16, N = 8 with CFG, 576 tokens): analytic state per device, checked against
  # the compiled generation path (prefill, ScalingAR token loop, compaction) on one device (`run_janus`)
  nice -n 10 python experiments/memory_table.py janus
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Public spec-sheet figures (https://cloud.google.com/tpu/docs/v5e, "System architecture"):
# per v5e chip 197 bf16 TFLOP/s, 16 GB HBM2 at 819 GB/s.
TPU_V5E = {"name": "TPU v5e", "peak_flops": 197e12, "hbm_bytes": 16e9, "hbm_bw": 819e9,
           "source": "https://cloud.google.com/tpu/docs/v5e (per chip: 197 TFLOPs bf16; HBM2 16 GB, 819 GB/s)"}
GENEVAL_PROMPTS, GENEVAL_IMAGES = 553, 4
HEADROOM = 0.9  # use at most 90% of a device's memory (runtime reserve, fragmentation, the VQ decoder)
GB = 1e9
COST_PROGRAMS = ("decode_step", "prefill", "loop_step_scalingar", "loop_step_plain")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "roofline", "janus"],
                    help="memory table, FLOPs/roofline estimate, or Janus-Pro's per-device memory")
    ap.add_argument("--backend", default="cpu", help="jax platform to compile for (cpu, gpu, tpu; default cpu)")
    ap.add_argument("--devices", type=int, default=8,
                    help="devices to use (on cpu: simulated with --xla_force_host_platform_device_count)")
    ap.add_argument("--meshes", nargs="+", default=["1x8", "4x2", "8x1"], help="prompt x candidate shards")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per call (memory)")
    ap.add_argument("--fit-prompts", type=int, default=16,
                    help="second prompt count on the first Px1 mesh, for the per-row slope (0: none)")
    ap.add_argument("-n", type=int, default=8, help="candidates N per prompt (CFG doubles the rows)")
    ap.add_argument("--preset", default="GPT-XL", help="GPT preset (t2i)")
    ap.add_argument("--grid", type=int, default=32, help="token grid (32 = 512 px with the ds16 VQ)")
    ap.add_argument("--dtype", default="bfloat16", help="parameter and compute dtype (GPT and T5)")
    ap.add_argument("--t5", default="flan-t5-xl", help="T5 preset of scalingar_jax.t5.T5_PRESETS, or none")
    ap.add_argument("--tiny", action="store_true", help="tiny random config (smoke test: seconds)")
    ap.add_argument("--budgets", nargs="+", type=float, default=[16, 40, 80], help="device memory sizes, GB")
    ap.add_argument("--rows", nargs=2, type=int, default=[16, 32], help="roofline: the two row counts")
    ap.add_argument("--chips", type=int, default=64, help="roofline: chips of the slice (v5e-64)")
    ap.add_argument("--memory-json", default="memory_table", help="roofline: the memory results to size batches")
    ap.add_argument("--efficiency-json", default="efficiency", help="roofline: shapes-world efficiency results")
    ap.add_argument("--janus", nargs="+", default=["Janus-Pro-1B", "Janus-Pro-7B"],
                    help="janus: presets of scalingar_jax.janus.JANUS_PRESETS")
    ap.add_argument("--prompt-len", type=int, default=128, help="janus: prompt slots (the bundle default)")
    ap.add_argument("--out", default=None, help="results name (default: memory_table / roofline_tpu / memory_table_janus)")
    return ap.parse_args(argv)


def setup_backend(args) -> None:
    """Environment for the chosen backend; must run before jax is imported."""
    if "jax" in sys.modules:
        raise RuntimeError("setup_backend must run before jax is imported")
    os.environ.setdefault("JAX_PLATFORMS", args.backend)
    flags = os.environ.get("XLA_FLAGS", "")
    if (args.what == "memory" and args.backend == "cpu" and args.devices > 1
            and "xla_force_host_platform_device_count" not in flags):
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()


# ------------------------------------------------------------------------------ configurations
def configs(args):
    """(gpt_cfg, t5_cfg or None) of the run."""
    from scalingar_jax import t5
    from scalingar_jax.config import GPTConfig, gpt_config

    if args.tiny:
        gpt = GPTConfig(model_type="t2i", n_layer=2, n_head=2, dim=32, vocab_size=64, cls_token_num=8,
                        caption_dim=16, grid_size=4, param_dtype=args.dtype, dtype=args.dtype).validate()
        t5c = t5.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2)
        return gpt, (None if args.t5 == "none" else t5c)
    gpt = gpt_config(args.preset, "t2i", grid_size=args.grid, param_dtype=args.dtype, dtype=args.dtype)
    if args.t5 == "none":
        return gpt, None
    if args.t5 not in t5.T5_PRESETS:
        raise SystemExit(f"unknown --t5 {args.t5!r}; choose from {sorted(t5.T5_PRESETS)} or none")
    t5c = t5.T5_PRESETS[args.t5]
    if t5c.d_model != gpt.caption_dim:
        raise SystemExit(f"T5 d_model {t5c.d_model} != GPT caption_dim {gpt.caption_dim}")
    return gpt, t5c


def sampling_configs(gpt_cfg):
    """LlamaGen's t2i sampling (cfg 7.5, top-k 1000) and the paper's ScalingAR defaults."""
    from scalingar_jax.config import SamplingConfig
    from scalingar_jax.scaling import ScalingARConfig

    return SamplingConfig(cfg_scale=7.5, top_k=min(1000, gpt_cfg.vocab_size)), ScalingARConfig()


def abstract(tree, sharding=None):
    """ShapeDtypeStructs of a tree of arrays / structs (optionally with one sharding for all)."""
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def gpt_params(gpt_cfg):
    """Abstract GPT parameters in the decode-time layout (`gpt.unstack_layers`)."""
    import jax

    from scalingar_jax import gpt

    return jax.eval_shape(gpt.unstack_layers, gpt.param_shapes(gpt_cfg))


def t5_params(t5_cfg, dtype):
    """Abstract T5 encoder parameters, cast to `dtype`."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax import t5

    shapes = jax.eval_shape(lambda k: t5.init_params(k, t5_cfg), jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), shapes)


def tree_bytes(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def sharded_param_bytes(params, shards: int) -> int:
    """Per-device GPT parameter bytes when split over a `model` axis of `shards` devices
    (`sharding.param_specs` rules; leaves that do not divide stay replicated)."""
    import jax
    import numpy as np

    from scalingar_jax import sharding as SH

    from jax.sharding import PartitionSpec

    specs = SH.param_specs(params, SH.MODEL, shards)
    total = 0
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=lambda v: isinstance(v, PartitionSpec))):
        split = any(a is not None for a in s)
        total += int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize // (shards if split else 1)
    return total


def mem_stats(compiled) -> dict:
    """XLA's memory analysis of one compiled program, bytes; peak = argument + output + temp - alias."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {"peak": None}
    out = {"argument": ma.argument_size_in_bytes, "output": ma.output_size_in_bytes,
           "temp": ma.temp_size_in_bytes, "alias": ma.alias_size_in_bytes}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def cost_stats(compiled) -> dict:
    """XLA's cost analysis of one compiled program: flops and bytes accessed."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {"flops": float(ca.get("flops", float("nan"))), "bytes": float(ca.get("bytes accessed", float("nan")))}


def compile_timed(lowered):
    t = time.perf_counter()
    c = lowered.compile()
    return c, time.perf_counter() - t


# ------------------------------------------------------------------------------ memory
def t2i_condition(gpt_cfg):
    """P -> abstract (features (P, cls, caption_dim) in the compute dtype, mask (P, cls) bool): LlamaGen t2i's."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax.config import to_dtype

    cls, cap = gpt_cfg.cls_token_num, gpt_cfg.caption_dim
    return lambda P: (jax.ShapeDtypeStruct((P, cls, cap), to_dtype(gpt_cfg.dtype)),
                      jax.ShapeDtypeStruct((P, cls), jnp.bool_))


def sharded_pieces(gpt_cfg, mesh, num_prompts: int, num_candidates: int, strategy: str, *, model=None,
                   params=None, condition=None, sampling=None) -> dict:
    """Compiled memory of the engine's pieces for one strategy on `mesh`, per device. Mirrors
    `Engine.place` / `prefill` / `generate` / `compact` with abstract inputs: P and N padded to the
    mesh axes, params replicated, cond split over prompts. Any model family: model, its
    `token_model.TokenModel` on `gpt_cfg` (default LlamaGen's `decode.GPTModel(gpt_cfg)`); params,
    its abstract decode-layout parameters (default the GPT's, `gpt_params`); condition, P ->
    abstract (cond, cond_mask) (default `t2i_condition`); sampling, (SamplingConfig,
    ScalingARConfig) (default `sampling_configs`)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from scalingar_jax import sharding as SH
    from scalingar_jax.decode import GPTModel
    from scalingar_jax.scaling import engine as E
    from scalingar_jax.scaling import loop as L
    from scalingar_jax.scaling.strategies import compaction_buckets, spec_of

    sampling, scaling = sampling or sampling_configs(gpt_cfg)
    pa = int(mesh.shape[SH.PROMPTS])
    spec = spec_of(GPTModel(gpt_cfg) if model is None else model, sampling, scaling, strategy, num_candidates)
    placed = E.place(spec, mesh, num_prompts)  # as the Engine places a run (no weights allocated)
    local, P_pad = placed.spec, placed.lanes_padded
    rep, by_prompt = NamedSharding(mesh, P()), NamedSharding(mesh, P(SH.PROMPTS))
    key_data, impl = SH.split_key(jax.random.key(0))
    params = abstract(gpt_params(gpt_cfg) if params is None else params, rep)
    cond, mask = abstract((condition or t2i_condition(gpt_cfg))(P_pad), by_prompt)
    pids = jax.ShapeDtypeStruct((P_pad,), jnp.int32, sharding=by_prompt)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    out = {}
    start = E.run_prefill.lower(params, cond, mask, abstract(key_data, rep), pids, scalar,
                                spec=L.shape_key(local), mesh=mesh, impl=impl)
    c, secs = compile_timed(start)
    out["prefill"] = {**mem_stats(c), "compile_s": secs}
    state = jax.tree.map(lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s), start.out_info,
                         c.output_shardings)
    c, secs = compile_timed(E.run_loop_in_place.lower(params, state, scalar, scalar, scalar, spec=L.loop_key(local),
                                                      mesh=mesh))
    out["loop"] = {**mem_stats(c), "compile_s": secs}
    M = (P_pad // pa) * local.num_candidates  # pool rows per shard (per CFG half)
    buckets = compaction_buckets(spec, "pow2")
    if buckets is not None and M > 1:
        rows = L.compaction_limit(M, buckets)
        c, secs = compile_timed(E.run_compact.lower(state, rows=rows, spec=L.shape_key(local), mesh=mesh))
        out["compact"] = {**mem_stats(c), "compile_s": secs, "rows": rows}
    out["rows_per_device"] = 2 * M
    return out


def t5_memory(t5_cfg, batch: int, dtype: str, length: int) -> dict:
    """Compiled memory and cost of `t5.encode` on one device for `batch` prompts of `length` tokens."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax import t5

    params = t5_params(t5_cfg, dtype)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    c, secs = compile_timed(t5._encode_jit.lower(params, ids, mask, cfg=t5_cfg, dtype=jnp.dtype(dtype),
                                                 precision=None))
    return {**mem_stats(c), **cost_stats(c), "compile_s": secs, "batch": batch}


def fit_line(x0, y0, x1, y1):
    """(intercept, slope) of the line through two points."""
    b = (y1 - y0) / (x1 - x0)
    return y0 - b * x0, b


def fits_table(points: list[dict], t5_param_bytes: int, t5_peak: int | None, budgets, headroom: float,
               gpt_param_bytes: int = 0):
    """What fits per device: from two (rows per device, GPT peak per device) points of one mesh,
    peak(rows) = a + b * rows; usable = headroom * budget; with the T5 resident, its parameters
    are added to every GPT phase, and `t5_encode_fits` says whether the T5 encode's own peak plus
    the GPT parameters fit. Returns rows of the table."""
    (r0, y0), (r1, y1) = [(p["rows"], p["peak"]) for p in points]
    a, b = fit_line(r0, y0, r1, y1)
    out = []
    for budget in budgets:
        usable = headroom * budget * GB
        row = {"device_GB": budget, "usable_GB": usable / GB,
               "t5_encode_fits": None if t5_peak is None else t5_peak + gpt_param_bytes <= usable}
        for label, extra in (("features", 0), ("t5_resident", t5_param_bytes)):
            rows = math.floor((usable - extra - a) / b) if b > 0 else 0
            rows = max(rows, 0)
            row[f"{label}_rows"] = rows
            row[f"{label}_prompts_N8"] = rows // 16
            row[f"{label}_images_plain"] = rows // 2
        out.append(row)
    return {"intercept_bytes": a, "bytes_per_row": b, "points": points, "rows": out}


def run_memory(args):
    import jax
    from common import jsonable, markdown_table, stamp, write_json

    from scalingar_jax import sharding as SH

    gpt_cfg, t5_cfg = configs(args)
    params = gpt_params(gpt_cfg)
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    meshes = [SH.parse_mesh(m) for m in args.meshes]
    if any(len(m) != 2 for m in meshes):
        raise SystemExit("--meshes takes PxC meshes (prompts x candidates)")
    if args.devices > jax.device_count():
        raise SystemExit(f"--devices {args.devices}: only {jax.device_count()} {jax.default_backend()} devices")
    platform = f"{jax.default_backend()} ({jax.devices()[0].device_kind}, {jax.device_count()} devices)"
    print(f"platform: {platform}", flush=True)
    model_bytes = {"gpt_params": n_params, "gpt_param_bytes_replicated": tree_bytes(params)}
    for shards in (2, 4, 8):
        model_bytes[f"gpt_param_bytes_model_sharded_{shards}"] = sharded_param_bytes(params, shards)
    t5 = None
    if t5_cfg is not None:
        t5p = t5_params(t5_cfg, args.dtype)
        model_bytes["t5_params"] = sum(int(x.size) for x in jax.tree.leaves(t5p))
        model_bytes["t5_param_bytes"] = tree_bytes(t5p)
        t5 = t5_memory(t5_cfg, args.prompts, args.dtype, gpt_cfg.cls_token_num)
        print(f"T5 encode, {args.prompts} prompts: peak {t5['peak'] / GB:.3f} GB", flush=True)
    t5_bytes = model_bytes.get("t5_param_bytes", 0)
    runs = [(m, args.prompts) for m in meshes]
    px1 = [m for m in meshes if m[1] == 1]
    if args.fit_prompts and px1:
        runs.append((px1[0], args.fit_prompts))
    rows, fit_points = [], []
    for (p_sh, c_sh), prompts in runs:
        mesh = SH.make_mesh(p_sh, c_sh, jax.devices()[: p_sh * c_sh])
        for strategy in ("scalingar", "plain"):
            t = time.perf_counter()
            pieces = sharded_pieces(gpt_cfg, mesh, prompts, args.n, strategy)
            gpt_peak = max(v["peak"] for v in pieces.values() if isinstance(v, dict))
            row = {"mesh": f"{p_sh}x{c_sh}", "prompts": prompts, "strategy": strategy,
                   "rows_per_device": pieces["rows_per_device"],
                   **{f"{k}_peak_GB": v["peak"] / GB for k, v in pieces.items() if isinstance(v, dict)},
                   "gpt_peak_GB": gpt_peak / GB,
                   "with_t5_params_GB": (gpt_peak + t5_bytes) / GB,
                   "loop_argument_GB": pieces["loop"]["argument"] / GB, "loop_temp_GB": pieces["loop"]["temp"] / GB,
                   "compile_s": sum(v["compile_s"] for v in pieces.values() if isinstance(v, dict)),
                   "pieces": pieces}
            rows.append(row)
            print(f"{row['mesh']} P={prompts} {strategy}: GPT peak {gpt_peak / GB:.3f} GB/device "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
            if c_sh == 1 and (p_sh, c_sh) == px1[0] and strategy == "scalingar":
                fit_points.append({"rows": pieces["rows_per_device"], "peak": gpt_peak, "prompts": prompts})
    cols = ["mesh", "prompts", "strategy", "rows_per_device", "prefill_peak_GB", "loop_peak_GB", "compact_peak_GB",
            "gpt_peak_GB", "with_t5_params_GB", "compile_s"]
    table = markdown_table(rows, cols)
    fits = None
    if len(fit_points) == 2:
        fits = fits_table(fit_points, t5_bytes, None if t5 is None else t5["peak"], args.budgets, HEADROOM,
                          model_bytes["gpt_param_bytes_replicated"])
    payload = {"stamp": stamp(), "platform": platform, "gpt_config": dataclasses.asdict(gpt_cfg),
               "t5_config": None if t5_cfg is None else dataclasses.asdict(t5_cfg), "n": args.n,
               "peak_rule": "per compiled program: argument + output + temp - alias bytes (XLA memory_analysis), "
                            "per device; GPT peak = max over prefill (_start), token loop (run_loop_in_place, state "
                            "donated) and first compaction (_compact); with_t5_params adds the T5 parameters "
                            "(encoder resident on every device)",
               "headroom": HEADROOM, "model_bytes": model_bytes, "t5_encode": t5, "rows": rows, "fits": fits,
               "table": table}
    print(table)
    if fits is not None:
        print(markdown_table(fits["rows"], list(fits["rows"][0])))
    print(f"wrote {write_json(args.out or 'memory_table', jsonable(payload))}")
    return payload



# ------------------------------------------------------------------------------ roofline
def gpt_costs(gpt_cfg, rows: int, num_candidates: int) -> dict:
    """XLA cost analysis (one device) of the decode step, the loop step of each policy and the
    prefill, for `rows` model rows (= 2 * prompts * N with CFG)."""
    import jax
    import jax.numpy as jnp

    from scalingar_jax import decode, gpt
    from scalingar_jax.config import to_dtype
    from scalingar_jax.decode import GPTModel
    from scalingar_jax.scaling import loop as L
    from scalingar_jax.scaling.strategies import spec_of

    if rows % (2 * num_candidates):
        raise SystemExit(f"--rows must be multiples of 2N = {2 * num_candidates}, got {rows}")
    prompts = rows // (2 * num_candidates)
    params = gpt_params(gpt_cfg)
    cache = jax.eval_shape(lambda: gpt.init_cache(gpt_cfg, rows))
    tok, k = jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
    out = {"rows": rows, "prompts": prompts}
    c, secs = compile_timed(jax.jit(lambda p, ca, t, i: decode.decode_step(p, gpt_cfg, ca, t, i))
                            .lower(params, cache, tok, k))
    out["decode_step"] = {**cost_stats(c), "compile_s": secs}
    cond = jax.ShapeDtypeStruct((prompts, gpt_cfg.cls_token_num, gpt_cfg.caption_dim), to_dtype(gpt_cfg.dtype))
    mask = jax.ShapeDtypeStruct(cond.shape[:2], jnp.bool_)
    c, secs = compile_timed(jax.jit(lambda p, co, m: decode.prefill_candidates(
        p, gpt_cfg, co, m, num_candidates=num_candidates, use_cfg=True)).lower(params, cond, mask))
    out["prefill"] = {**cost_stats(c), "compile_s": secs}
    sampling, scaling = sampling_configs(gpt_cfg)
    pids = jax.ShapeDtypeStruct((prompts,), jnp.int32)
    for strategy in ("scalingar", "plain"):
        spec = spec_of(GPTModel(gpt_cfg), sampling, scaling, strategy, num_candidates)
        state = jax.eval_shape(lambda p, co, m, i: L.prefill(p, spec, co, m, jax.random.key(0), i),  # noqa: B023
                               params, cond, mask, pids)
        c, secs = compile_timed(jax.jit(lambda p, s: L.step(p, spec, s)).lower(params, state))  # noqa: B023
        out[f"loop_step_{strategy}"] = {**cost_stats(c), "compile_s": secs}
    return out


def per_row_model(c0: dict, c1: dict, name: str) -> dict:
    """Linear model cost(rows) = a + b * rows of `name`'s flops and bytes from two row counts."""
    fa, fb = fit_line(c0["rows"], c0[name]["flops"], c1["rows"], c1[name]["flops"])
    ba, bb = fit_line(c0["rows"], c0[name]["bytes"], c1["rows"], c1[name]["bytes"])
    return {"flops": [fa, fb], "bytes": [ba, bb]}


def min_bytes_model(gpt_cfg, param_bytes: int, flops_from: dict, prefill: bool = False) -> dict:
    """The least HBM traffic of a step (or prefill): every weight read once, plus per row the KV cache
    as this implementation touches it (decode: the whole preallocated buffer of every layer is read,
    one position written; prefill: the buffer written) and the float32 logits; FLOPs kept from
    `flops_from` (XLA's, shape-based). XLA:CPU's "bytes accessed" counts every unfused op's operands
    (bf16 -> f32 casts of the cache and weights included), far above what a fused GPU/TPU kernel moves."""
    import numpy as np

    from scalingar_jax.config import to_dtype

    item = np.dtype(to_dtype(gpt_cfg.dtype)).itemsize
    kv_row = 2 * gpt_cfg.n_layer * (gpt_cfg.max_seq_len - 1) * gpt_cfg.kv_heads * gpt_cfg.head_dim * item
    return {"flops": list(flops_from["flops"]), "bytes": [float(param_bytes), float(kv_row + 4 * gpt_cfg.vocab_size)],
            "kv_bytes_per_row": kv_row, "what": "prefill" if prefill else "step"}


def roofline_s(model: dict, rows: float, chip: dict) -> float:
    """max(FLOPs / peak, bytes / bandwidth) of a linear cost model at `rows` rows."""
    flops = model["flops"][0] + model["flops"][1] * rows
    nbytes = model["bytes"][0] + model["bytes"][1] * rows
    return max(flops / chip["peak_flops"], nbytes / chip["hbm_bw"])


def estimate_run(*, step: dict, prefill: dict, chip: dict, chips: int, images: int, rows_per_image: int,
                 max_rows: int, T: int, row_fraction: float = 1.0, encode_s: float = 0.0) -> dict:
    """Roofline wall clock of `images` independent generations spread evenly over `chips` chips.
    Each chip runs passes of b = min(max_rows // rows_per_image, its images) images at once: one
    prefill of b * rows_per_image rows, then T steps at row_fraction of those rows (ScalingAR's
    pruning; 1 for plain / Best-of-N). encode_s: T5 time per chip, added once."""
    per_chip = math.ceil(images / chips)
    b = min(max_rows // rows_per_image, per_chip)
    if b < 1:
        return {"fits": False, "images_per_pass": 0}
    passes = math.ceil(per_chip / b)
    rows = b * rows_per_image
    step_s = roofline_s(step, rows * row_fraction, chip)
    pass_s = roofline_s(prefill, rows, chip) + T * step_s
    return {"fits": True, "images_per_chip": per_chip, "images_per_pass": b, "passes": passes, "rows": rows,
            "step_ms": 1e3 * step_s, "pass_s": pass_s, "wall_s": passes * pass_s + encode_s}


def load_result(name: str) -> dict:
    import json

    from common import RESULTS

    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run the command that writes it first")
    return json.loads(path.read_text())


def run_roofline(args):
    import jax
    from common import jsonable, markdown_table, stamp, write_json

    gpt_cfg, t5_cfg = configs(args)
    r0, r1 = args.rows
    platform = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    print(f"platform: {platform} (costs of the HLO compiled for it)", flush=True)
    costs = [gpt_costs(gpt_cfg, r, args.n) for r in (r0, r1)]
    models = {name: per_row_model(*costs, name) for name in COST_PROGRAMS}
    t5 = None if t5_cfg is None else t5_memory(t5_cfg, args.prompts, args.dtype, gpt_cfg.cls_token_num)
    chip = TPU_V5E
    mem = load_result(args.memory_json)
    eff = load_result(args.efficiency_json)
    budget = [r for r in mem["fits"]["rows"] if r["device_GB"] == chip["hbm_bytes"] / GB]
    if not budget:
        raise SystemExit(f"{args.memory_json}.json has no {chip['hbm_bytes'] / GB:g} GB row (rerun with --budgets)")
    max_rows = budget[0]["t5_resident_rows"]
    images = GENEVAL_PROMPTS * GENEVAL_IMAGES
    encode_s = 0.0
    if t5 is not None:  # every chip encodes its share of the prompts (the 4 images of a prompt share it)
        per_prompt = {"flops": [0.0, t5["flops"] / t5["batch"]], "bytes": [0.0, t5["bytes"] / t5["batch"]]}
        encode_s = roofline_s(per_prompt, math.ceil(GENEVAL_PROMPTS / args.chips), chip)
    head = eff["headline"]
    fractions = {"token": head["token_fraction_of_bon"], "pool": head["time_avg_memory_ratio_vs_bon"]}
    param_bytes = tree_bytes(gpt_params(gpt_cfg))
    for name in ("loop_step_scalingar", "loop_step_plain", "prefill"):
        models[f"{name}_min_bytes"] = min_bytes_model(gpt_cfg, param_bytes, models[name], name == "prefill")
    runs = [("plain (N=1)", "loop_step_plain", 2, 1.0),
            (f"Best-of-N (N={args.n})", "loop_step_plain", 2 * args.n, 1.0),
            (f"ScalingAR (N={args.n}), token fraction", "loop_step_scalingar", 2 * args.n, fractions["token"]),
            (f"ScalingAR (N={args.n}), pool fraction", "loop_step_scalingar", 2 * args.n, fractions["pool"])]
    rows = []
    for label, step_name, per_image, frac in runs:
        row = {"strategy": label, "row_fraction": frac}
        for variant, suffix in (("xla_bytes", ""), ("min_bytes", "_min_bytes")):
            est = estimate_run(step=models[step_name + suffix], prefill=models["prefill" + suffix], chip=chip,
                               chips=args.chips, images=images, rows_per_image=per_image, max_rows=max_rows,
                               T=gpt_cfg.block_size, row_fraction=frac, encode_s=encode_s)
            row[variant] = est
            row.update({k: est.get(k) for k in ("images_per_pass", "passes", "rows")})
            row[f"step_ms_{variant}"] = est.get("step_ms")
            row[f"wall_min_{variant}"] = est["wall_s"] / 60 if est["fits"] else None
        rows.append(row)
    per_token = {}
    for name in ("decode_step", "loop_step_scalingar", "loop_step_plain"):
        c = costs[0][name]
        per_token[name] = {"flops_per_token": c["flops"] / (r0 // 2), "bytes_per_token": c["bytes"] / (r0 // 2),
                           "flops_per_row": c["flops"] / r0}
    n_params = sum(int(x.size) for x in jax.tree.leaves(gpt_params(gpt_cfg)))
    cost_rows = [{"program": name, "rows": c["rows"], "GFLOP": c[name]["flops"] / 1e9, "GB": c[name]["bytes"] / GB,
                  "v5e_ms": 1e3 * max(c[name]["flops"] / chip["peak_flops"], c[name]["bytes"] / chip["hbm_bw"])}
                 for c in costs for name in COST_PROGRAMS]
    if t5 is not None:
        cost_rows.append({"program": "t5_encode", "rows": t5["batch"], "GFLOP": t5["flops"] / 1e9,
                          "GB": t5["bytes"] / GB,
                          "v5e_ms": 1e3 * max(t5["flops"] / chip["peak_flops"], t5["bytes"] / chip["hbm_bw"])})
    cost_table = markdown_table(cost_rows, ["program", "rows", "GFLOP", "GB", "v5e_ms"])
    est_table = markdown_table(rows, ["strategy", "row_fraction", "images_per_pass", "passes", "rows",
                                      "step_ms_min_bytes", "wall_min_min_bytes", "step_ms_xla_bytes",
                                      "wall_min_xla_bytes"])
    payload = {"stamp": stamp(), "platform": platform, "chip": chip, "chips": args.chips,
               "geneval": {"prompts": GENEVAL_PROMPTS, "images_per_prompt": GENEVAL_IMAGES, "images": images},
               "gpt_config": dataclasses.asdict(gpt_cfg), "gpt_params": n_params, "n": args.n,
               "rule": "per step: max(FLOPs / peak, bytes / HBM bandwidth); FLOPs from XLA cost_analysis, linear in "
                       "rows from two row counts; bytes either XLA's 'bytes accessed' of the compiled HLO (xla_bytes: "
                       "on CPU unfused, an upper bound) or the least traffic (min_bytes: weights once + the KV "
                       "buffer per row + f32 logits, `min_bytes_model`); a chip runs as many images at once "
                       "as the memory table's 16 GB row allows (T5 resident); wall = passes * (prefill + T steps) "
                       "+ T5 encode; no host, VQ, reward or collective time. An estimate.",
               "max_rows_per_chip": max_rows, "memory_source": mem["stamp"]["command"],
               "fractions": fractions, "fraction_source": eff["stamp"]["command"] + " (efficiency: "
               + str(eff["settings"]["T"]) + " tokens/image, shapes world)",
               "costs": costs, "models": models, "per_token": per_token, "t5_encode": t5, "encode_s": encode_s,
               "estimate": rows, "cost_table": cost_table, "estimate_table": est_table}
    print(cost_table)
    print(est_table)
    print(f"wrote {write_json(args.out or 'roofline_tpu', jsonable(payload))}")
    return payload

# ------------------------------------------------------------------------------ Janus-Pro
def janus_analytic(cfg, rows: int, vq_param_bytes: int) -> dict:
    """Per-device bytes of a Janus-Pro generation with `rows` model rows (2 * prompts * N with CFG):
    the generator's parameters (text embedding included, the unused lm_head not), the VQ
    decoder's, and per row the KV cache (every layer's k and v over prompt_len + T - 1 slots in
    the compute dtype) and the float32 logits the loop state carries."""
    import numpy as np

    from scalingar_jax import janus
    from scalingar_jax.config import to_dtype

    item = np.dtype(to_dtype(cfg.dtype)).itemsize
    params = tree_bytes(janus.param_shapes(cfg))
    kv_row = 2 * cfg.n_layer * (cfg.max_seq_len - 1) * cfg.kv_heads * cfg.head_dim * item
    logits_row = 4 * cfg.vocab_size
    total = params + vq_param_bytes + rows * (kv_row + logits_row)
    return {"param_bytes": params, "vq_param_bytes": vq_param_bytes, "kv_bytes_per_row": kv_row,
            "logits_bytes_per_row": logits_row, "rows": rows, "total_bytes": total}


def janus_condition(cfg):
    """P -> abstract (ids (P, prompt_len) int32, mask (P, prompt_len) bool): Janus-Pro's condition."""
    import jax
    import jax.numpy as jnp

    return lambda P: (jax.ShapeDtypeStruct((P, cfg.prompt_len), jnp.int32),
                      jax.ShapeDtypeStruct((P, cfg.prompt_len), jnp.bool_))


def run_janus(args):
    """Janus-Pro-1B / 7B per device: the analytic state size at N candidates with CFG, checked
    against the compiled generation path that runs it (`sharded_pieces` on a 1 x 1 mesh: the
    ScalingAR prefill, token loop and first compaction, as LlamaGen's `memory` rows; two prompt
    counts give the per-row slope), and the prompts per device that fit the --budgets."""
    import jax
    from common import jsonable, markdown_table, stamp, write_json

    from scalingar_jax import janus, vq
    from scalingar_jax import sharding as SH
    from scalingar_jax.janus_bundle import JANUS_SAMPLING
    from scalingar_jax.scaling import ScalingARConfig

    platform = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    mesh = SH.make_mesh(1, 1, jax.devices()[:1])
    vq_bytes = tree_bytes(vq.vq_param_shapes(vq.vq_config("VQ-16")))  # float32
    rows_out, details = [], {}
    for name in args.janus:
        cfg = janus.janus_config(name, prompt_len=args.prompt_len, param_dtype=args.dtype, dtype=args.dtype)
        model = janus.JanusModel(cfg)
        params = jax.eval_shape(model.decode_layout, janus.param_shapes(cfg))
        per_prompt = 2 * args.n
        compiled = [sharded_pieces(cfg, mesh, p, args.n, "scalingar", model=model, params=params,
                                   condition=janus_condition(cfg),
                                   sampling=(JANUS_SAMPLING, ScalingARConfig())) for p in (1, 2)]
        est = [janus_analytic(cfg, c["rows_per_device"], vq_bytes) for c in compiled]
        peaks = [max(v["peak"] for v in c.values() if isinstance(v, dict)) for c in compiled]
        per_row = est[0]["kv_bytes_per_row"] + est[0]["logits_bytes_per_row"]
        fixed = est[0]["param_bytes"] + est[0]["vq_param_bytes"]
        row = {"model": name, "dtype": args.dtype, "T": cfg.block_size, "prompt_len": cfg.prompt_len, "N": args.n,
               "params_GB": est[0]["param_bytes"] / GB, "kv_MB_per_row": est[0]["kv_bytes_per_row"] / 1e6,
               "analytic_1_prompt_GB": est[0]["total_bytes"] / GB,
               "loop_args_GB": compiled[0]["loop"]["argument"] / GB,
               "loop_temp_GB": compiled[0]["loop"]["temp"] / GB,
               **{f"{k}_peak_GB": compiled[0][k]["peak"] / GB for k in ("prefill", "loop", "compact")
                  if k in compiled[0]},
               "compiled_MB_per_row": (peaks[1] - peaks[0]) / per_prompt / 1e6}
        for budget in args.budgets:
            row[f"prompts_{budget:g}GB"] = max(0, math.floor((HEADROOM * budget * GB - fixed) / (per_row * per_prompt)))
        rows_out.append(row)
        details[name] = {"config": dataclasses.asdict(cfg), "analytic": est, "compiled": compiled}
        print(f"{name}: analytic {row['analytic_1_prompt_GB']:.2f} GB, compiled loop {row['loop_peak_GB']:.2f} GB "
              f"per device at 1 prompt x N={args.n} with CFG", flush=True)
    cols = (["model", "dtype", "T", "prompt_len", "N", "params_GB", "kv_MB_per_row", "analytic_1_prompt_GB",
             "loop_args_GB", "loop_temp_GB", "prefill_peak_GB", "loop_peak_GB", "compact_peak_GB", "compiled_MB_per_row"]
            + [f"prompts_{b:g}GB" for b in args.budgets])
    table = markdown_table(rows_out, cols)
    payload = {"stamp": stamp(), "platform": platform, "n": args.n, "headroom": HEADROOM,
               "rule": "analytic: generator params (param_dtype; embed_tokens included, lm_head not converted) + VQ-16 "
                       "params (float32) + rows x (KV cache: 2 x layers x (prompt_len + T - 1) x kv_heads x head_dim x "
                       "itemsize, + float32 logits of the image vocabulary); rows = 2 x prompts x N (CFG). compiled: "
                       "XLA memory_analysis (argument + output + temp - alias) of the generation path on a 1 x 1 mesh "
                       "(engine.run_prefill = prefill + fresh ScalingAR loop state, engine.run_loop_in_place = the token "
                       "loop with its state donated, engine.run_compact = the first compaction), Janus's sampling "
                       "(cfg 5, no top-k) and the paper's ScalingAR; loop_args_GB = the parameters + the loop state; "
                       "loop_temp_GB on a CPU backend is mostly float32 copies of the bf16 weights (XLA:CPU computes "
                       "bf16 dots in float32), which a GPU / TPU compile does not make; compiled_MB_per_row: the "
                       "largest piece's peak from 1 and 2 prompts, per model row. prompts_<B>GB: prompts (N "
                       "candidates each) whose analytic state fits 0.9 x B per device.",
               "rows": rows_out, "details": details, "table": table}
    print(table)
    print(f"wrote {write_json(args.out or 'memory_table_janus', jsonable(payload))}")
    return payload


def main(argv=None):
    args = parse_args(argv)
    setup_backend(args)
    if args.what == "memory":
        return run_memory(args)
    if args.what == "janus":
        return run_janus(args)
    return run_roofline(args)


if __name__ == "__main__":
    main()
