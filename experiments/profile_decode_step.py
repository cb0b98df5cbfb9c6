"""Where a decode step's time goes: per-op times of the compiled token loop, grouped by role.

Runs n decode steps of a random-weight model under `jax.profiler.trace`, reads the per-thunk
events of the trace (XLA:CPU records one per executed HLO instruction), maps each to its
instruction in `compiled.as_text()` and groups them (weight matmuls, attention over the cache,
cache writes, softmax, RMSNorm, rope, ...). Two loops: `bench` (bench_decode's fori loop of
`decode.decode_step`) and `token_loop` (what the strategies run: the engine's loop,
`scaling.engine.run_loop_in_place`, on one device with the plain policy, the `lax.cond` around
feeding included). It also counts copy ops on
cache-sized operands in the compiled loop (a copy of the KV cache per step would show there).

Times are thread-summed (XLA:CPU runs independent thunks on both cores at once), so the groups
can add up to more than the wall time per step, which is printed too.

  python experiments/profile_decode_step.py --presets GPT-B --batch 16 --loops bench token_loop
  python experiments/profile_decode_step.py --t2i --out profile_decode_step_t2i
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import gzip
import json
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from bench_decode import cpu_info, step_fn  # noqa: E402
from common import markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax import gpt  # noqa: E402
from scalingar_jax.config import SamplingConfig, gpt_config, to_dtype  # noqa: E402
from scalingar_jax.decode import GPTModel  # noqa: E402
from scalingar_jax.scaling import engine as E  # noqa: E402
from scalingar_jax.scaling import loop  # noqa: E402
from scalingar_jax.scaling.config import ScalingARConfig  # noqa: E402
from scalingar_jax.scaling.strategies import spec_of  # noqa: E402

ATTENTION = "attention over the cache (q.K, p.V)"
# (group, substrings of the jax op_name metadata of an instruction or of any op fused into it);
# the first group that matches wins.
GROUPS = (
    ("output projection", ("/output/dot_general",)),
    ("attention projections (wqkv, wo)", ("/wqkv/dot_general", "/wo/dot_general")),
    ("MLP matmuls (w1, w2, w3)", ("/w1/dot_general", "/w2/dot_general", "/w3/dot_general")),
    (ATTENTION, ("bgtd->", ",bgtd")),
    ("cache write (dynamic_update_slice)", ("dynamic_update_slice",)),
    ("softmax and mask select", ("attention/reduce_max", "attention/exp", "attention/reduce_sum",
                                 "attention/jit(_where)", "attention/div")),
    ("RMSNorm", ("_norm/", "Transformer/norm/")),
    ("rope (apply)", ("attention/slice", "attention/stack", "attention/mul", "attention/sub",
                      "attention/add")),
    ("rope tables and mask build", ("Transformer/sin", "Transformer/cos", "Transformer/le", "Transformer/eq",
                                    "Transformer/and", "Transformer/or", "Transformer/ge",
                                    "Transformer/jit(_where)")),
    ("residual adds, SiLU", ("Block/add", "feed_forward/")),
    ("token embedding", ("embed_tokens",)),
)
OTHER = "sampling and loop bookkeeping"


def parse_hlo(text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, shape, computation, op_names (own + those of its fused
    computation)} for every instruction of an HLO module's text."""
    comp, instrs, comp_ops = None, {}, collections.defaultdict(set)
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            comp = head.group(1)
            continue
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\(", line)
        if not m:
            continue
        ops = set(re.findall(r'op_name="([^"]*)"', line))
        calls = re.search(r"calls=%([\w.\-]+)", line)
        instrs[m.group(1)] = {"opcode": m.group(3), "shape": m.group(2), "computation": comp, "op_names": ops,
                              "calls": calls.group(1) if calls else None, "batched": "lhs_batch_dims" in line}
        comp_ops[comp] |= ops
    for ins in instrs.values():
        if ins["calls"]:
            ins["op_names"] = ins["op_names"] | comp_ops[ins["calls"]]
    return instrs


def group_of(ins: dict) -> str:
    """The role of one instruction (see GROUPS); copies and transposes are their own group."""
    if ins["opcode"] in ("copy", "transpose", "copy-start"):
        return "copy / transpose"
    if ins["opcode"] == "dot" and ins["batched"]:  # XLA drops the metadata of the per-head attention dots
        return ATTENTION
    text = " ".join(sorted(ins["op_names"]))
    for name, keys in GROUPS:
        if any(k in text for k in keys):
            return name
    return OTHER


def thunk_times(fn, n_calls: int = 1) -> dict[str, float]:
    """Profiles n_calls of fn() (which must block) and returns thunk name -> total microseconds,
    summed over threads, from the trace's complete ('X') events."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(n_calls):
                fn()
        (path,) = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    out = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            out[e["name"]] += e.get("dur", 0)
    return out


def cache_copies(instrs: dict, cache_shape: str) -> int:
    """Copy / transpose instructions whose result has the shape of one layer's cache buffer,
    outside the entry computation (i.e. inside the loop: once per step)."""
    return sum(1 for i in instrs.values() if i["opcode"] in ("copy", "transpose") and i["shape"].startswith(cache_shape)
               and not (i["computation"] or "").startswith("main"))


def breakdown(compiled, run, n_steps: int, cache_shape: str) -> dict:
    """Per-group ms/step (thread-summed) of the instructions inside the loop, wall ms/step."""
    instrs = parse_hlo(compiled.as_text())
    entry = {n for n, i in instrs.items() if (i["computation"] or "").startswith("main")}
    run()
    t = time.perf_counter()
    run()
    wall = (time.perf_counter() - t) / n_steps
    times = thunk_times(run)
    groups = collections.Counter()
    for name, us in times.items():
        if name in instrs and name not in entry and instrs[name]["opcode"] not in ("while", "conditional", "call"):
            groups[group_of(instrs[name])] += us / n_steps / 1e3
    return {"wall_step_ms": 1e3 * wall, "ops_ms": dict(groups.most_common()), "ops_sum_ms": sum(groups.values()),
            "cache_sized_copies_in_loop": cache_copies(instrs, cache_shape)}


def setup(cfg, batch: int):
    params = jax.jit(functools.partial(gpt.init_params, cfg))(jax.random.key(0))
    return jax.block_until_ready(gpt.split_columns(params, gpt.decode_splits()))  # the token loops' layout


def cond_of(cfg, P: int):
    if cfg.model_type == "c2i":
        return jnp.arange(P, dtype=jnp.int32) % cfg.num_classes, None
    feats = 0.1 * jax.random.normal(jax.random.key(1), (P, cfg.cls_token_num, cfg.caption_dim), to_dtype(cfg.dtype))
    return feats, jnp.ones((P, cfg.cls_token_num), bool)


def profile_bench_loop(cfg, params, batch: int, n_steps: int, cache_shape: str) -> dict:
    """bench_decode's loop: n_steps of decode_step from a prefilled cache, tokens fed greedily."""
    from scalingar_jax import decode

    cond, mask = cond_of(cfg, batch // 2)
    _, cache = jax.jit(lambda p, c, m: decode.prefill(p, cfg, c, m, use_cfg=True))(params, cond, mask)
    tok = jnp.zeros((batch,), jnp.int32)
    f = step_fn(cfg, n_steps)
    compiled = f.lower(params, cache, tok).compile()
    return breakdown(compiled, lambda: jax.block_until_ready(compiled(params, cache, tok)), n_steps, cache_shape)


def loop_state(cfg, params, batch: int, start_k: int, policy: str):
    """(a function running the compiled loop to a stop token, the compiled loop's arguments at
    step start_k) of the strategies' loop on one device: top-k 1000, CFG 4, batch // 2 prompts x
    1 candidate, policy "none" (plain) or "scalingar"."""
    P = batch // 2
    cond, mask = cond_of(cfg, P)
    model = GPTModel(cfg)
    spec = spec_of(model, SamplingConfig(cfg_scale=4.0, top_k=1000), ScalingARConfig(),
                   "scalingar" if policy == "scalingar" else "plain", 1)
    engine = E.Engine(model, params)
    s = engine.prefill(spec, cond, mask, jax.random.key(0), jnp.arange(P, dtype=jnp.int32))
    if start_k:
        s, _ = engine.generate(spec, s, stop=start_k)
    local = loop.loop_key(engine.place(spec, P).spec)

    def trace(stop):
        args = (engine.params, s, jnp.int32(stop), jnp.int32(engine.rows(s) + 1), jnp.int32(-1))
        return E.run_loop.trace(*args, spec=local, mesh=engine.mesh), args

    return trace


def profile_token_loop(cfg, params, batch: int, n_steps: int, cache_shape: str, start_k: int = 0,
                       old_sampling: bool = False) -> dict:
    """The strategies' loop (plain policy, top-k 1000, CFG, batch // 2 prompts x 1 candidate):
    steps start_k .. start_k + n_steps of `engine.run_loop` (the non-donating twin of the
    engine's `run_loop_in_place`, so the same state can be rerun). old_sampling: with the
    sampling as before commit 5b3f1f3 (sorting top-k, fused categorical) patched in."""
    trace = loop_state(cfg, params, batch, start_k, "none")
    with sampling_as(old_sampling):
        traced, args = trace(start_k + n_steps)
        compiled = traced.lower().compile()
    return breakdown(compiled, lambda: jax.block_until_ready(compiled(*args)), n_steps, cache_shape)


def _sort_filter_logits(logits, temperature, top_k, top_p):
    """Top-k as before commit 5b3f1f3 (lax.top_k: a full sort on XLA:CPU); top_p unused here."""
    logits = logits.astype(jnp.float32) / max(float(temperature), 1e-5)
    if 0 < top_k < logits.shape[-1]:
        logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][..., -1:], -jnp.inf, logits)
    return logits


def _categorical_sample_tokens(keys, step, logits):
    """The draw as before commit 5b3f1f3: jax.random.categorical (fused Gumbel + argmax)."""
    fk, fl = keys.reshape(-1), logits.reshape(-1, logits.shape[-1])
    d = jax.vmap(lambda k, l: jax.random.categorical(jax.random.fold_in(k, step), l))(fk, fl)
    return d.reshape(logits.shape[:-1]).astype(jnp.int32)


@contextlib.contextmanager
def sampling_as(old: bool):
    """While active (old=True), decode's top-k filter and draw are the pre-5b3f1f3 ones."""
    from scalingar_jax import decode

    current = (decode.filter_logits, decode.sample_tokens)
    if old:
        decode.filter_logits, decode.sample_tokens = _sort_filter_logits, _categorical_sample_tokens
    try:
        yield
    finally:
        decode.filter_logits, decode.sample_tokens = current


def compare_sampling(cfg, params, batch: int, n_steps: int, start_k: int, reps: int, policy: str) -> dict:
    """Wall ms/step of the token loop with the old sampling (sorting top-k, fused categorical)
    and the current one, alternated `reps` times in this process; the tokens must agree."""
    trace = loop_state(cfg, params, batch, start_k, policy)
    compiled = {}
    for name, old in (("sort_topk", True), ("radix_topk", False)):
        with sampling_as(old):  # traced while patched: each compiled loop keeps its own sampling
            traced, args = trace(start_k + n_steps)
            compiled[name] = traced.lower().compile()
    times, cpus, tokens = {n: [] for n in compiled}, {n: [] for n in compiled}, {}
    for _ in range(reps):
        for name, c in compiled.items():
            p, t = time.process_time(), time.perf_counter()
            out = jax.block_until_ready(c(*args)[0])
            times[name].append(1e3 * (time.perf_counter() - t) / n_steps)
            cpus[name].append(1e3 * (time.process_time() - p) / n_steps)
            tokens[name] = out.tokens
    same = bool(jnp.array_equal(tokens["sort_topk"], tokens["radix_topk"]))
    out = {"policy": policy, "reps": reps, "same_tokens": same}
    for name, ts in times.items():
        out[f"{name}_min_ms"], out[f"{name}_median_ms"] = min(ts), sorted(ts)[len(ts) // 2]
        out[f"{name}_cpu_min_ms"] = min(cpus[name])  # process CPU time (both threads) per step
    out["speedup_min"] = out["sort_topk_min_ms"] / out["radix_topk_min_ms"]
    out["speedup_median"] = out["sort_topk_median_ms"] / out["radix_topk_median_ms"]
    out["speedup_cpu"] = out["sort_topk_cpu_min_ms"] / out["radix_topk_cpu_min_ms"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["GPT-B"], help="LlamaGen presets (random weights)")
    ap.add_argument("--batch", type=int, default=16, help="model rows per step (prompts x 2 for CFG)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--grid", type=int, default=16, help="token grid side")
    ap.add_argument("--t2i", action="store_true", help="t2i model (120 caption positions) instead of c2i")
    ap.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    ap.add_argument("--start", type=int, default=0, help="token loop: first profiled step (cache fill)")
    ap.add_argument("--loops", nargs="+", default=["bench", "token_loop"],
                    choices=["bench", "token_loop", "token_loop_old_sampling"],
                    help="token_loop_old_sampling: the token loop with the sampling before commit 5b3f1f3")
    ap.add_argument("--compare-sampling", type=int, default=0, metavar="REPS",
                    help="also time the token loop with the old (sorting) top-k vs the current one, REPS alternations")
    ap.add_argument("--out", default="profile_decode_step", help="results name under experiments/results/")
    args = ap.parse_args(argv)

    rows, details, sampling_rows = [], [], []
    for preset in args.presets:
        mt = "t2i" if args.t2i else "c2i"
        cfg = gpt_config(preset, mt, grid_size=args.grid, param_dtype=args.dtype, dtype=args.dtype)
        params = setup(cfg, args.batch)
        cache_shape = f"{'f32' if args.dtype == 'float32' else 'bf16'}[{args.batch},{cfg.kv_heads},"
        cache_shape += f"{cfg.max_seq_len - 1},{cfg.head_dim}]"
        for which in args.loops:
            if which == "bench":
                r = profile_bench_loop(cfg, params, args.batch, args.steps, cache_shape)
            else:
                r = profile_token_loop(cfg, params, args.batch, args.steps, cache_shape, args.start,
                                       old_sampling=which == "token_loop_old_sampling")
            r = {"preset": preset, "type": mt, "loop": which, "batch": args.batch, "dtype": args.dtype, **r}
            details.append(r)
            print(json.dumps(r, indent=1), flush=True)
            row = {k: r[k] for k in ("preset", "type", "loop", "wall_step_ms", "ops_sum_ms",
                                     "cache_sized_copies_in_loop")}
            row.update(r["ops_ms"])
            rows.append(row)
        if args.compare_sampling:
            for policy in ("none", "scalingar"):
                r = compare_sampling(cfg, params, args.batch, args.steps, args.start, args.compare_sampling, policy)
                r = {"preset": preset, "type": mt, **r}
                print(json.dumps(r), flush=True)
                sampling_rows.append(r)
    names = [g for g, _ in GROUPS] + [OTHER, "copy / transpose"]
    cols = ["preset", "type", "loop", "wall_step_ms", "ops_sum_ms", "cache_sized_copies_in_loop"]
    cols += [g for g in names if any(g in r for r in rows)]
    # one column per loop run reads better for many groups: transpose the table
    table = markdown_table([{"what": c, **{f"{r['type']} {r['loop']}": r.get(c, "") for r in rows}} for c in cols],
                           ["what"] + [f"{r['type']} {r['loop']}" for r in rows])
    if sampling_rows:
        table += "\n\n" + markdown_table(sampling_rows, list(sampling_rows[0]))
    print(table)
    path = write_json(args.out, {"stamp": stamp(), "cpu": cpu_info(), "steps": args.steps, "start": args.start,
                                 "rows": details, "sampling": sampling_rows, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
