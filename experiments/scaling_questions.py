"""Issue 21, point 3: three open readings of ScalingAR settled by measurement.

  * rebound window: R from the all-time minimum of C (spec), from the minimum since probation
    began, or from a trailing window (`ScalingARConfig.rebound_window`, `rebound_steps`);
  * scheduler volatility: Var(I) as specified vs z-scored like D (`volatility`);
  * "without conditional": D removed from C only (spec) vs also from the scheduler
    (`conditional_ablation`).

Two settings:
  world   the trained shapes world, DEVELOPMENT split only (never the evaluation split): judge
          accuracy, tokens/image, pruning; at the world's gate (pipeline default, Delta_rec = 2)
          and, for the rebound windows, at the paper's Delta_rec = 32.
  gptb    random GPT-B weights (c2i, sharpened: output head and class embedding scaled) at the
          paper's settings: tokens and pruning only (no accuracy exists for random weights).

  nice -n 10 python experiments/scaling_questions.py world --per-tag 7 --seeds 0 1 --N 8
  nice -n 10 python experiments/scaling_questions.py gptb --prompts 2 --grid 16 --N 8 --sharpen 5
  python experiments/scaling_questions.py report      # table + RESULTS.md section from the JSONs
                                                      # (+ results/scaling_questions_conclusions.md)

Writes experiments/results/scaling_questions_{world,gptb}.json and scaling_questions.md, and
replaces the "Issue 21" section of experiments/results/RESULTS.md. Confidence intervals: 95%
percentile bootstrap over prompts (2000 resamples), paired across variants (the same prompts,
seeds and candidate keys); a record's correctness is averaged over seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from common import RESULTS, markdown_table, stamp, write_json  # noqa: E402

from scalingar_jax.atomic import atomic_write_text  # noqa: E402
from scalingar_jax.scaling.options import Strategy  # noqa: E402

# name -> ScalingARConfig overrides on top of the setting's base config
VARIANTS = {
    "spec": {},
    "rebound=probation": {"rebound_window": "probation"},
    "rebound=trailing16": {"rebound_window": "trailing", "rebound_steps": 16},
    "volatility=zscore": {"volatility": "zscore"},
    "no_cond (C only, spec)": {"use_conditional": False},
    "no_cond (C and scheduler)": {"use_conditional": False, "conditional_ablation": "everywhere"},
}
PAPER_GATE = {"probation_steps": 32}  # the paper's probation length (p = 0.2 is already the default)
REBOUND = ("spec", "rebound=probation", "rebound=trailing16")
B = 2000
MARK = "<!-- issue21-scaling-questions -->"
CONCLUSIONS = RESULTS / "scaling_questions_conclusions.md"  # hand-written reading of the JSONs, appended


def bootstrap_ci(x: np.ndarray, rng_seed: int = 0) -> list[float]:
    """95% percentile bootstrap CI of the mean of x (n,) over its n entries (prompts)."""
    idx = np.random.default_rng(rng_seed).integers(0, len(x), (B, len(x)))
    means = np.asarray(x, float)[idx].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def gate_stats(res, cfg, T: int) -> dict:
    """From one StrategyResult: pruning, scale spread and how often each probation condition holds
    after warm-up (over candidate-steps alive at the start of the step)."""
    traj = {k: np.asarray(v) for k, v in res.traj.items()}
    alive_prev = np.concatenate([np.ones_like(traj["alive"][:1]), traj["alive"][:-1]], 0)
    W0 = cfg.warmup_steps(T)
    post = alive_prev.copy()
    post[:W0] = False
    below = traj["C"] < traj["theta"][:, :, None]
    low_R = traj["R"] < cfg.rebound_threshold
    scale = traj["scale"][alive_prev]
    term = np.asarray(res.terminated_at)
    return {
        "pruned_fraction": float((term >= 0).mean()),
        "termination_steps": term[term >= 0].tolist(),
        "post_warmup_below_theta": float(below[post].mean()),
        "post_warmup_R_below_delta": float(low_R[post].mean()),
        "post_warmup_on_probation_condition": float((below & low_R)[post].mean()),
        "scale_p1_p50_p99": [float(np.percentile(scale, q)) for q in (1, 50, 99)],
        "mean_entropy": float(np.asarray(res.entropy)[np.asarray(res.all_tokens) >= 0].mean()),
    }


def _merge_stats(parts: list[dict]) -> dict:
    out = {}
    for k in ("pruned_fraction", "post_warmup_below_theta", "post_warmup_R_below_delta",
              "post_warmup_on_probation_condition", "mean_entropy"):
        out[k] = float(np.mean([p[k] for p in parts]))
    out["scale_p1_p50_p99"] = np.mean([p["scale_p1_p50_p99"] for p in parts], 0).round(3).tolist()
    steps = sum((p["termination_steps"] for p in parts), [])
    out["mean_termination_step"] = float(np.mean(steps)) if steps else None
    return out


# ----------------------------------------------------------------------------------------- world
def run_world(args) -> dict:
    from scalingar_jax.pipeline import generate, load_pipeline
    from scalingar_jax.world.judge import judge_image
    from scalingar_jax.world.scenes import development_set_v2

    pipe = load_pipeline()
    records = development_set_v2(seed=1, per_tag=args.per_tag)  # the shipped world's development scenes
    prompts = [r["prompt"] for r in records]
    n, T = len(records), pipe.gpt_cfg.block_size
    settings = {f"world gate {name}": pipe.scaling.replace(**ov) for name, ov in VARIANTS.items()}
    settings.update({f"paper gate {name}": pipe.scaling.replace(**PAPER_GATE, **VARIANTS[name]) for name in REBOUND})
    rows = {}
    header = {"split": "dev", "prompts": n, "per_tag": args.per_tag, "N": args.N, "seeds": args.seeds, "T": T,
              "base_scaling": str(pipe.scaling), "gate": {"Delta_rec": pipe.scaling.probation_steps, "p": pipe.scaling.p},
              "sampling": str(pipe.sampling), "checkpoint": pipe.name}

    def judge(images):
        return np.array([bool(judge_image(im, r).correct) for im, r in zip(images, records)])

    plain = np.mean([judge(generate(pipe, prompts, strategy="plain", num_candidates=1, seed=s,
                                    prompt_ids=np.arange(n)).images) for s in args.seeds], 0)
    rows["plain N=1"] = {"correct": plain, "tokens": np.full(n, float(T)), "stats": {}}
    for label, cfg in settings.items():
        t0 = time.time()
        correct, tokens, parts = [], [], []
        for s in args.seeds:
            out = generate(pipe, prompts, Strategy("scalingar", args.N, scaling=cfg), seed=s,
                           prompt_ids=np.arange(n))
            correct.append(judge(out.images))
            tokens.append(np.asarray(out.result.tokens_used, float))
            parts.append(gate_stats(out.result, cfg, T))
        rows[label] = {"correct": np.mean(correct, 0), "tokens": np.mean(tokens, 0), "stats": _merge_stats(parts),
                       "config": {k: v for k, v in cfg.__dict__.items() if v != getattr(type(cfg)(), k)}}
        print(f"{label:40s} acc {rows[label]['correct'].mean():.3f} tokens {rows[label]['tokens'].mean():7.1f} "
              f"pruned {rows[label]['stats']['pruned_fraction']:.3f} ({time.time() - t0:.0f} s)", flush=True)
        write_json("scaling_questions_world", _summarize(rows, "world", header, partial=True))
    return _summarize(rows, "world", header)


def _summarize(rows: dict, setting: str, header: dict, partial: bool = False) -> dict:
    """Per row: means, bootstrap CIs and the paired difference with the spec row of its own gate
    ("paper gate spec" for the paper-gate rows, else the world-gate / GPT-B spec row)."""
    out = {}
    for label, r in rows.items():
        base = "paper gate spec" if label.startswith("paper gate") else {"world": "world gate spec",
                                                                         "gptb": "spec"}[setting]
        d = {"tokens_per_image": float(r["tokens"].mean()), "tokens_ci": bootstrap_ci(r["tokens"]), **r["stats"],
             "compared_with": base, "per_prompt_tokens": r["tokens"].tolist()}
        if r.get("correct") is not None:
            d["per_prompt_correct"] = np.asarray(r["correct"], float).tolist()
        if "config" in r:
            d["config_overrides"] = r["config"]
        if r.get("correct") is not None:
            d["accuracy"] = float(r["correct"].mean())
            d["accuracy_ci"] = bootstrap_ci(r["correct"])
            if label != base and base in rows:
                diff = r["correct"] - rows[base]["correct"]
                d["accuracy_minus_spec"], d["accuracy_minus_spec_ci"] = float(diff.mean()), bootstrap_ci(diff)
        if label != base and base in rows:
            diff = r["tokens"] - rows[base]["tokens"]
            d["tokens_minus_spec"], d["tokens_minus_spec_ci"] = float(diff.mean()), bootstrap_ci(diff)
        out[label] = d
    return {**stamp(), "setting": setting, **header, "partial": partial, "rows": out}


# ----------------------------------------------------------------------------------------- GPT-B
def run_gptb(args) -> dict:
    import jax

    from scalingar_jax import gpt
    from scalingar_jax.config import SamplingConfig, gpt_config
    from scalingar_jax.decode import GPTModel
    from scalingar_jax.scaling import ScalingARConfig
    from scalingar_jax.scaling.run import run_strategy

    cfg = gpt_config("GPT-B", "c2i", grid_size=args.grid)
    factor = {"output": args.sharpen, "cls_embedding": args.sharpen}
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * next((factor[k.key] for k in path if getattr(k, "key", None) in factor), 1.0),
        gpt.init_params(cfg, jax.random.key(0)))
    labels = np.arange(args.prompts, dtype=np.int32) * 97 % cfg.num_classes
    sampling = SamplingConfig(cfg_scale=4.0)  # LlamaGen c2i default
    T, rows = cfg.block_size, {}
    header = {"model": f"GPT-B c2i, random init, output head and class embedding x {args.sharpen}", "grid": args.grid,
              "T": T, "N": args.N, "prompts": args.prompts, "seed": args.seed, "sampling": str(sampling)}
    for name, ov in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        sc = ScalingARConfig(**ov)
        t0 = time.time()
        res, _ = run_strategy(GPTModel(cfg), params, labels, key=jax.random.key(args.seed),
                              strategy=Strategy("scalingar", args.N, sampling=sampling, scaling=sc))
        rows[name] = {"correct": None, "tokens": np.asarray(res.tokens_used, float), "stats": gate_stats(res, sc, T),
                      "config": ov}
        rows[name]["stats"]["mean_termination_step"] = (float(np.mean(rows[name]["stats"]["termination_steps"]))
                                                        if rows[name]["stats"]["termination_steps"] else None)
        print(f"{name:30s} tokens {rows[name]['tokens'].mean():7.1f} pruned {rows[name]['stats']['pruned_fraction']:.3f}"
              f" Hn {rows[name]['stats']['mean_entropy']:.3f} ({time.time() - t0:.0f} s)", flush=True)
        write_json("scaling_questions_gptb", _summarize(rows, "gptb", header, partial=True))
    return _summarize(rows, "gptb", header)


# ----------------------------------------------------------------------------------------- report
def _fmt_ci(v, c, digits=3):
    return f"{v:.{digits}f} [{c[0]:.{digits}f}, {c[1]:.{digits}f}]"


def report() -> str:
    parts = [MARK, "## Issue 21: rebound window, scheduler volatility, meaning of \"without conditional\"\n"]
    for setting in ("world", "gptb"):
        path = RESULTS / f"scaling_questions_{setting}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        table = []
        bases = sorted({r.get("compared_with", "world gate spec") for r in d["rows"].values()})
        for label, r in d["rows"].items():
            row = {"variant": label, "tokens/image": _fmt_ci(r["tokens_per_image"], r["tokens_ci"], 1),
                   "pruned": f"{r.get('pruned_fraction', 0):.3f}" if "pruned_fraction" in r else "",
                   "post-warm-up C<theta / R<delta": (f"{r['post_warmup_below_theta']:.2f} / "
                                                      f"{r['post_warmup_R_below_delta']:.2f}"
                                                      if "post_warmup_below_theta" in r else ""),
                   "scale p1/p50/p99": "/".join(f"{x:.2f}" for x in r.get("scale_p1_p50_p99", [])),
                   "vs spec: tokens": (_fmt_ci(r["tokens_minus_spec"], r["tokens_minus_spec_ci"], 1)
                                       if "tokens_minus_spec" in r else "")}
            if "accuracy" in r:
                row["accuracy"] = _fmt_ci(r["accuracy"], r["accuracy_ci"])
                row["vs spec: accuracy"] = (_fmt_ci(r["accuracy_minus_spec"], r["accuracy_minus_spec_ci"])
                                            if "accuracy_minus_spec" in r else "")
            table.append(row)
        cols = ["variant", "accuracy", "vs spec: accuracy", "tokens/image", "vs spec: tokens", "pruned",
                "post-warm-up C<theta / R<delta", "scale p1/p50/p99"]
        if setting == "gptb":
            cols = [c for c in cols if "accuracy" not in c]
            parts.append(f"### Random GPT-B (sharpened), {d['model']}; T = {d['T']}, N = {d['N']}, "
                         f"{d['prompts']} prompts, seed {d['seed']}: tokens and pruning only\n")
        else:
            parts.append(f"### Shapes world, development split ({d['prompts']} prompts, {d['per_tag']} per tag), "
                         f"N = {d['N']}, seeds {d['seeds']}, T = {d['T']}\n")
            parts.append(f"\"world gate\": the bundle's ScalingAR config (Delta_rec = {d['gate']['Delta_rec']}, "
                         f"p = {d['gate']['p']}; sampling {d['sampling']}); \"paper gate\": the same "
                         "with the paper's Delta_rec = 32. 95% CIs: bootstrap over prompts, paired with spec.\n")
        parts.append(f"Command: `{d['command']}` (git {d['git_rev']}, {d['time']})"
                     + (" PARTIAL: the run was stopped; only these rows were measured." if d.get("partial") else "")
                     + "\n")
        parts.append(markdown_table(table, cols) + "\n")
        parts.append(f"\"vs spec\": paired difference (per prompt) with {' / '.join(bases)}.\n")
    return "\n".join(parts)


def write_report(conclusions: str | None = None) -> None:
    text = report()
    if conclusions:
        text += "\n" + conclusions.strip() + "\n"
    atomic_write_text(RESULTS / "scaling_questions.md", text)
    results_md = RESULTS / "RESULTS.md"
    old = results_md.read_text() if results_md.exists() else ""
    head = old.split(MARK)[0].rstrip("\n")
    atomic_write_text(results_md, head + "\n\n" + text)
    print(f"wrote {RESULTS / 'scaling_questions.md'} and the issue-21 section of {results_md}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="shapes world, development split")
    w.add_argument("--per-tag", type=int, default=7)
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    w.add_argument("--N", type=int, default=8)
    g = sub.add_parser("gptb", help="random sharpened GPT-B: tokens and pruning")
    g.add_argument("--prompts", type=int, default=2)
    g.add_argument("--grid", type=int, default=16)
    g.add_argument("--N", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sharpen", type=float, default=5.0, help="factor on the output head and class embedding")
    g.add_argument("--variants", nargs="*", default=None, help=f"subset of {list(VARIANTS)}")
    r = sub.add_parser("report", help="table + RESULTS.md section from the JSONs")
    r.add_argument("--conclusions", type=Path, default=CONCLUSIONS,
                   help="a markdown file appended to the section (default: the hand-written reading of the "
                        "numbers, experiments/results/scaling_questions_conclusions.md, if present)")
    args = ap.parse_args(argv)
    for name, v in (("per_tag", getattr(args, "per_tag", 1)), ("N", getattr(args, "N", 1)),
                    ("prompts", getattr(args, "prompts", 1)), ("grid", getattr(args, "grid", 1))):
        if v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.cmd == "world":
        path = write_json("scaling_questions_world", run_world(args))
    elif args.cmd == "gptb":
        path = write_json("scaling_questions_gptb", run_gptb(args))
    else:
        write_report(args.conclusions.read_text() if args.conclusions and args.conclusions.exists() else None)
        return 0
    print(f"wrote {path}")
    write_report(CONCLUSIONS.read_text() if CONCLUSIONS.exists() else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
