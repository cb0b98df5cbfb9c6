"""The backend table, generated: `backend.backend_config(p)` for every platform, and each CPU
choice measured on this machine with the choice on and off, side by side.

Choices measured (each with the other choices at the CPU default, forced through an explicit
`BackendConfig`: `sampling.filter_logits(..., backend=)`, `sampling.sample_tokens(..., backend=)`,
`bench_decode.prepared_decode(splits=)`; no global state is touched):

  top_k           the sampling step (top-k filter, then the Gumbel draw; `--steps` steps in one
                  jitted fori_loop, each step's logits depending on the last draw) with the k-th
                  largest logit by the radix select vs `lax.top_k`, at each `--sampling VOCAB:K`
                  (LlamaGen t2i's 16384:1000, the shapes world's 512:16) and each `--rows`;
  sample_barrier  the same step with the optimization_barrier before the argmax vs without;
  column_splits   the GPT-B decode step (c2i, random weights, fp32, `--decode-rows` rows,
                  `bench_decode.prepared_decode`) with the CPU's column blocks vs whole kernels.

Timing: the two sides are compiled first, then measured in `--rounds` interleaved rounds (on, off;
off, on; ...), one timed call per side a round. The table gives each side's median ms per step,
`ratio` = median off / median on (> 1: the choice is faster) and the quartiles of the per-round
ratios; `verdict` is "helps" when the ratio and the lower quartile are > 1, "hurts" when the
ratio and the upper quartile are < 1, else "within noise". The load (1-minute load average,
each core's busy share over the run, the cores this process may use) is recorded with the
figures: run it pinned to a core nobody else uses (`taskset -c 1`), not niced.

  taskset -c 1 python experiments/bench_backend.py                    # writes bench_backend.{json,md}
  python experiments/bench_backend.py --smoke --out /tmp/bb           # tiny sizes (tests)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402
from common import jsonable, markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax import backend  # noqa: E402
from scalingar_jax.atomic import atomic_write_text  # noqa: E402
from scalingar_jax.config import gpt_config  # noqa: E402
from scalingar_jax.sampling import filter_logits, sample_tokens  # noqa: E402

CHOICES = ("top_k", "sample_barrier", "column_splits")
FIELDS = [f.name for f in dataclasses.fields(backend.BackendConfig) if f.name != "platform"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sampling", nargs="+", default=["16384:1000", "512:16"], metavar="VOCAB:K",
                    help="vocabulary and top-k of each sampling workload (LlamaGen t2i; the shapes world)")
    ap.add_argument("--rows", nargs="+", type=int, default=[16, 128], help="rows drawn per sampling step")
    ap.add_argument("--steps", type=int, default=16, help="sampling steps per timed call")
    ap.add_argument("--decode-preset", default="GPT-B", help="GPT preset of the column-split measurement")
    ap.add_argument("--decode-layers", type=int, default=None, help="n_layer override (default: the preset's)")
    ap.add_argument("--decode-rows", type=int, default=16, help="decode rows (N candidates x 2 for CFG)")
    ap.add_argument("--decode-steps", type=int, default=8, help="decode steps per timed call")
    ap.add_argument("--choices", nargs="+", default=list(CHOICES), choices=CHOICES, help="CPU choices to measure")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per measurement")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a test that the script runs)")
    ap.add_argument("--out", default="bench_backend", help="results name under experiments/results, or a path")
    args = ap.parse_args(argv)
    try:
        args.workloads = [tuple(int(x) for x in s.split(":")) for s in args.sampling]
        assert all(len(w) == 2 and 1 <= w[1] <= w[0] for w in args.workloads)
    except (ValueError, AssertionError):
        ap.error(f"--sampling: expected VOCAB:K with 1 <= K <= VOCAB, got {args.sampling}")
    if args.smoke:
        args.workloads, args.rows, args.steps, args.rounds = [(64, 8)], [4], 2, 2
        args.decode_layers, args.decode_rows, args.decode_steps = 1, 4, 2
    return args


def platform_table() -> list[dict]:
    """One row per platform: the choices `backend.backend_config` makes for it."""
    return [{"platform": p, **{f: getattr(backend.backend_config(p), f) for f in FIELDS}} for p in backend.PLATFORMS]


def core_times() -> dict[str, tuple[int, int]]:
    """(busy, total) clock ticks of every core so far (/proc/stat; empty where there is none)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for ln in lines:
        name, *vals = ln.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals]
            out[name] = (sum(v) - v[3] - v[4], sum(v))  # idle and iowait are not busy
    return out


def busy_share(before: dict, after: dict) -> dict[str, float]:
    """Each core's busy fraction between two `core_times` snapshots."""
    return {c: round((after[c][0] - before[c][0]) / max(after[c][1] - before[c][1], 1), 3) for c in after
            if c in before}


def interleaved(on, off, rounds: int, per_call: int) -> dict:
    """ms per step of `on()` and `off()` (each runs `per_call` steps and blocks), measured in
    alternating order over `rounds` rounds: medians, ratio off/on and the per-round ratios' quartiles."""
    t_on, t_off = [], []
    for r in range(rounds):
        for side in ((on, t_on), (off, t_off)) if r % 2 == 0 else ((off, t_off), (on, t_on)):
            t = time.perf_counter()
            side[0]()
            side[1].append(1e3 * (time.perf_counter() - t) / per_call)
    ratios = sorted(b / a for a, b in zip(t_on, t_off))
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    ratio = statistics.median(t_off) / statistics.median(t_on)
    verdict = "helps" if ratio > 1 and q[0] > 1 else "hurts" if ratio < 1 and q[2] < 1 else "within noise"
    return {"on_ms": statistics.median(t_on), "off_ms": statistics.median(t_off), "ratio": ratio,
            "ratio_q1": q[0], "ratio_q3": q[2], "verdict": verdict, "rounds": rounds,
            "on_ms_all": t_on, "off_ms_all": t_off}


def sampling_run(cfg: backend.BackendConfig, vocab: int, k: int, rows: int, steps: int):
    """A blocking callable: `steps` sampling steps (top-k filter at temperature 1, Gumbel draw)
    of (rows, vocab) logits under `cfg`, in one jitted fori_loop, compiled (and run once) here."""

    @jax.jit
    def run(logits, keys):
        def body(i, x):
            tok = sample_tokens(keys, i, filter_logits(x, 1.0, k, 1.0, backend=cfg), backend=cfg)
            return x.at[jnp.arange(rows), tok].add(-1.0)  # the next step depends on this draw

        return jax.lax.fori_loop(0, steps, body, logits)

    logits = jax.random.normal(jax.random.key(1), (rows, vocab), jnp.float32) * 3
    keys = jax.random.split(jax.random.key(0), rows)
    call = lambda: jax.block_until_ready(run(logits, keys))  # noqa: E731
    call()
    return call


def sampling_rows(args, cpu: backend.BackendConfig) -> list[dict]:
    flip = {"top_k": "lax" if cpu.top_k == "radix" else "radix", "sample_barrier": not cpu.sample_barrier}
    out = []
    for choice, other in ((c, v) for c, v in flip.items() if c in args.choices):
        for vocab, k in args.workloads:
            for rows in args.rows:
                on = sampling_run(cpu, vocab, k, rows, args.steps)
                off = sampling_run(dataclasses.replace(cpu, **{choice: other}), vocab, k, rows, args.steps)
                r = {"choice": choice, "on": getattr(cpu, choice), "off": other,
                     "workload": f"sampling step, V = {vocab}, top-k {k}, {rows} rows",
                     **interleaved(on, off, args.rounds, args.steps)}
                out.append(r)
                print(r["choice"], r["workload"], f"ratio {r['ratio']:.3f} ({r['verdict']})", flush=True)
    return out


def decode_row(args, cpu: backend.BackendConfig) -> dict:
    """The decode step with the CPU's column blocks vs whole kernels (`bench_decode.prepared_decode`)."""
    kw = {} if args.decode_layers is None else {"n_layer": args.decode_layers}
    if args.smoke:
        kw.update(n_head=2, dim=32, vocab_size=64)
    cfg = gpt_config(args.decode_preset, "c2i", grid_size=4 if args.smoke else 16, param_dtype="float32",
                     dtype="float32", **kw)
    on_splits = cpu.column_splits
    off_splits = 1 if on_splits > 1 else 2  # a 1-core CPU's whole kernels: measured against 2 blocks
    on = bench_decode.prepared_decode(cfg, args.decode_rows, args.decode_steps, splits=on_splits)
    off = bench_decode.prepared_decode(cfg, args.decode_rows, args.decode_steps, splits=off_splits)
    r = {"choice": "column_splits", "on": on_splits, "off": off_splits,
         "workload": f"{args.decode_preset} c2i decode step, {cfg.n_layer} layers, random weights, fp32, "
                     f"{args.decode_rows} rows, grid {cfg.grid_size}",
         **interleaved(on["run"], off["run"], args.rounds, args.decode_steps)}
    print(r["choice"], r["workload"], f"ratio {r['ratio']:.3f} ({r['verdict']})", flush=True)
    return r


def main(argv=None):
    args = parse_args(argv)
    cpu = backend.backend_config("cpu")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load_before, ticks = os.getloadavg(), core_times()
    t0 = time.perf_counter()
    measured = sampling_rows(args, cpu) + ([decode_row(args, cpu)] if "column_splits" in args.choices else [])
    load = {"loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "core_busy_share": busy_share(ticks, core_times()), "cores_used": cores,
            "wall_s": time.perf_counter() - t0}
    cpu_rec = bench_decode.cpu_info()
    platforms = platform_table()
    ptable = markdown_table(platforms, ["platform", *FIELDS])
    mtable = markdown_table(measured, ["choice", "on", "off", "workload", "on_ms", "off_ms", "ratio", "ratio_q1",
                                       "ratio_q3", "verdict"])
    busy = ", ".join(f"{c} {100 * s:.0f}%" for c, s in load["core_busy_share"].items())
    cond = (f"{bench_decode.cpu_line(cpu_rec)}. This process ran on cores {cores}; each core's busy share "
            f"over the run (all processes): {busy or 'unknown'}; 1-minute load average "
            f"{load_before[0]:.1f} before, {load['loadavg_after'][0]:.1f} after; {args.rounds} interleaved rounds.")
    payload = {**stamp(), "cpu": cpu_rec, "load": load, "platforms": platforms, "measured": measured,
               "platform_table": ptable, "measured_table": mtable}
    path = write_json(args.out, jsonable(payload))
    md = (f"# Backend choices per platform, and the CPU's measured on this machine\n\n"
          f"Generated by `{payload['command']}` (git {payload['git_rev']}, {payload['time']}); "
          f"`scalingar_jax/backend.py` says why each choice exists.\n\n"
          f"## The choices (`backend.backend_config(platform)`; cpu as on this machine, "
          f"{os.cpu_count()} cpus)\n\n{ptable}\n\n"
          f"## Each CPU choice on vs off (ms per step; ratio = off / on, > 1: the choice is faster)\n\n"
          f"{cond}\n\n{mtable}\n\n"
          f"verdict: \"helps\" when the ratio and the lower quartile of the per-round ratios are > 1, "
          f"\"hurts\" when the ratio and the upper quartile are < 1, else \"within noise\".\n")
    atomic_write_text(path.with_suffix(".md"), md)
    print(md)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return payload


if __name__ == "__main__":
    main()
