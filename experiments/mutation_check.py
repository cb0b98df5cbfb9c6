"""Mutation check of the ScalingAR tests (issue 21; a script, not part of CI).

Plants one fault at a time as a textual patch (file, old snippet, new snippet) into a temporary
copy of the repository, runs the ScalingAR test files in that copy (`-x`: the first failing test
ends the run) and reports which faults the tests catch. Every snippet must occur exactly once in
its file; otherwise the script stops before running anything with "snippet not found: ..." (or
"snippet not unique: ..."), so a patch can be retargeted after a refactor moves the code.

    nice -n 10 python experiments/mutation_check.py            # all faults, plus an unpatched run
    python experiments/mutation_check.py --only D_sign_flipped --skip-baseline
    python experiments/mutation_check.py --list
    python experiments/mutation_check.py --deselect tests/test_x.py::test_y   # a test failing unpatched

Writes experiments/results/mutation_check.{json,md}. Exit status 1 if a fault survives or the
unpatched copy fails its tests.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

# ----------------------------------------------------------------------------------------- patches
# (name, issue-21 fault?, what it does, file, old snippet, new snippet). `issue21=True`: the 12
# faults issue 21 found uncaught; the others are of kinds the suite already caught.
PROFILE = "scalingar_jax/scaling/profile.py"
POLICY = "scalingar_jax/scaling/policy.py"
CONFIG = "scalingar_jax/scaling/config.py"
STRAT = "scalingar_jax/scaling/strategies.py"
LOOP = "scalingar_jax/scaling/loop.py"

PATCHES = [
    ("D_sign_flipped", True, "D = 1 - sigmoid(z)", PROFILE,
     "    D = _zsig(K, K_mu, K_var, scaling.eps)\n",
     "    D = 1.0 - _zsig(K, K_mu, K_var, scaling.eps)\n"),
    ("stats_pooled_across_prompts", True, "running mean pooled over all prompts", PROFILE,
     "    bmean = candidate_sum(xm, axis_name) / n_safe\n",
     "    bmean = jnp.broadcast_to(jnp.sum(xm) / jnp.maximum(jnp.sum(m), 1.0), n_safe.shape)\n"),
    ("quantile_over_dead", True, "termination quantile over dead candidates too", POLICY,
     "    qv = masked_quantile(C, alive, scaling.p)\n",
     "    qv = masked_quantile(C, jnp.ones_like(alive), scaling.p)\n"),
    ("warmup_floor", True, "W0 = floor(0.125 T)", CONFIG,
     "        return exact_ceil(self.warmup_frac, total_steps)\n",
     "        return math.floor(self.warmup_frac * total_steps)\n"),
    ("loop_profiles_guided", True, "the loop profiles the guided logits", LOOP,
     "        Hn, m = hn, margin\n",
     "        Hn, m = token_stats(decode.sampling_logits(sampling, lc, lu, scale, k, True))\n"),
    ("loop_swaps_cond_uncond", True, "cond and uncond logits swapped in the profile's KL", LOOP,
     "stats = LogitStats(Hn=Hn, m=m, kl=kl_divergence(lc, lu))",
     "stats = LogitStats(Hn=Hn, m=m, kl=kl_divergence(lu, lc))"),
    ("sampling_ignores_scale", True, "tokens drawn at the fixed CFG scale", LOOP,
     "tok = decode.next_tokens(sampling, lc, lu, scale, keys, k, True)",
     "tok = decode.next_tokens(sampling, lc, lu, sampling.cfg_scale, keys, k, True)"),
    ("scale_never_updated", True, "the scheduled scale is never stored", LOOP,
     "return s.replace(scale=scale, conf=conf,",
     "return s.replace(scale=s.scale, conf=conf,"),
    ("scale_lags_two_steps", True, "token k drawn at the scale of token k-2", LOOP,
     "row_values(s.scale, s.owner), jnp.minimum(row_k, T - 1))",
     "row_values(jnp.where(k >= 2, s.traj['scale'][:, jnp.maximum(k - 2, 0)], s.scale), s.owner), "
     "jnp.minimum(row_k, T - 1))"),
    ("confidence_only_least", True, "confidence-only picks the least confident", LOOP,
     "winner = jnp.argmax(gather(score), axis=1)",
     "winner = jnp.argmin(gather(score), axis=1)"),
    ("is_prefers_low_reward", True, "importance sampling ~ exp(-reward / tau)", STRAT,
     "logp = jnp.asarray((r - r.max(axis=1, keepdims=True)) / tau, jnp.float32)",
     "logp = jnp.asarray((r.min(axis=1, keepdims=True) - r) / tau, jnp.float32)"),
    ("is_never_resamples", True, "importance sampling keeps every candidate", STRAT,
     "        s = engine.resample(spec, s, resample_indices(prompts.key, j, prompts.prompt_ids, r, importance.tau))\n",
     "        s = s\n"),
    # kinds the suite already caught before issue 21
    ("entropy_not_normalized", False, "Hn = H / (2 log V)", PROFILE,
     "Hn = jnp.clip(H / np.float32(np.log(V)), 0.0, 1.0)",
     "Hn = jnp.clip(H / np.float32(2 * np.log(V)), 0.0, 1.0)"),
    ("ema_weights_swapped", False, "EMA keeps lam of the old value", PROFILE,
     "    return jnp.where(initialized, (1.0 - lam) * old + lam * new, new)\n",
     "    return jnp.where(initialized, lam * old + (1.0 - lam) * new, new)\n"),
    ("margin_is_top1", False, "m = p(v1)", PROFILE,
     "m = jnp.clip(p1 - p2, 0.0, 1.0)",
     "m = jnp.clip(p1, 0.0, 1.0)"),
    ("rebound_sign", False, "R = (Cmin - C) / |Cmin|", PROFILE,
     "R = (C - Cmin) / (jnp.abs(Cmin) + scaling.eps)",
     "R = (Cmin - C) / (jnp.abs(Cmin) + scaling.eps)"),
    ("scheduler_gamma_sign", False, "+ gamma R in the scheduler", POLICY,
     "- scaling.gamma * state.R",
     "+ scaling.gamma * state.R"),
    ("probation_never_resets", False, "probation counter not reset", POLICY,
     "prob = jnp.where(alive, jnp.where(on, prob + 1, 0), prob)",
     "prob = jnp.where(alive, jnp.where(on, prob + 1, prob), prob)"),
    ("no_min_survivors", False, "min_survivors ignored", POLICY,
     "r = jnp.maximum(scaling.min_survivors - (n_alive - n_kill), 0)",
     "r = 0 * n_kill"),
    ("winner_lowest_C", False, "ScalingAR selects the lowest C", POLICY,
     "score = jnp.where(alive | ~any_alive, C, -jnp.inf)",
     "score = jnp.where(alive | ~any_alive, -C, -jnp.inf)"),
    ("theta_ema_swapped", False, "theta keeps lam_theta of the old value", POLICY,
     "(1.0 - scaling.lam_theta) * state.theta + scaling.lam_theta * qv",
     "scaling.lam_theta * state.theta + (1.0 - scaling.lam_theta) * qv"),
    ("dead_charged_tokens", False, "every candidate charged every step", PROFILE,
     "tokens_used=state.tokens_used + a.astype(jnp.int32)",
     "tokens_used=state.tokens_used + 1"),
    ("prunes_at_last_step", False, "a finished candidate pruned at step T-1 (issue 21 fix undone)", POLICY,
     "want = alive & (prob >= scaling.probation_steps) & (step < total_steps - 1)",
     "want = alive & (prob >= scaling.probation_steps)"),
    ("worst_block_floor", False, "|W_t| = floor(q n)", CONFIG,
     "return max(1, exact_ceil(self.q, n_nonempty))",
     "return max(1, int(self.q * n_nonempty))"),
]

TESTS = [  # fastest first: with -x the first failure ends the run
    "tests/test_scaling_reference.py",
    "tests/test_scaling_policy.py",
    "tests/test_scaling_profile.py",
    "tests/test_loop_wiring.py",
    "tests/test_strategies.py",
]
LOOP_TESTS = ["tests/test_loop_wiring.py", "tests/test_strategies.py"]  # first for faults in the loop code


def tests_for(path: str) -> list[str]:
    """The ScalingAR test files, those most likely to catch a fault in `path` first (all are run
    unless one fails)."""
    if path in (STRAT, LOOP):
        return LOOP_TESTS + [t for t in TESTS if t not in LOOP_TESTS]
    return list(TESTS)


def check_patches(root: Path) -> None:
    """Every old snippet occurs exactly once in its file, and names are unique; else SystemExit."""
    names = [p[0] for p in PATCHES]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate patch names")
    for name, _, _, path, old, _ in PATCHES:
        text = (root / path).read_text()
        n = text.count(old)
        if n == 0:
            raise SystemExit(f"snippet not found: {name}: {path}: {old!r}")
        if n > 1:
            raise SystemExit(f"snippet not unique ({n} matches): {name}: {path}: {old!r}")


def copy_repo(dst: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files (checkpoints excluded)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in files:
        if not f or f.startswith(("checkpoints/", "experiments/results/")) or not (ROOT / f).is_file():
            continue
        out = dst / f
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((ROOT / f).read_bytes())


def run_tests(copy: Path, tests: list[str], timeout: float, deselect: list[str] = ()) -> dict:
    t0 = time.time()
    skip = [a for d in deselect for a in ("--deselect", d)]
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *skip, *tests],
                              cwd=copy, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(copy)})
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), -9
    failed = [line.split(" ")[1] for line in out.splitlines() if line.startswith("FAILED ")]
    errors = [line for line in out.splitlines() if line.startswith("ERROR ")]
    return {"rc": rc, "seconds": round(time.time() - t0, 1), "failed": failed, "errors": errors,
            "tail": "\n".join(out.strip().splitlines()[-3:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="patch names to plant (default: all)")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the unpatched copy first")
    ap.add_argument("--list", action="store_true", help="list the patches and exit")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per test run")
    ap.add_argument("--name", default="mutation_check", help="results file stem")
    ap.add_argument("--deselect", nargs="*", default=[], metavar="NODEID",
                    help="tests left out of every run (one that fails unpatched on this machine would 'catch' "
                         "every fault)")
    args = ap.parse_args(argv)
    check_patches(ROOT)
    if args.list:
        for name, i21, what, path, _, _ in PATCHES:
            print(f"{name:28s} {'issue21' if i21 else 'known  '} {path}: {what}")
        return 0
    chosen = [p for p in PATCHES if not args.only or p[0] in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        raise SystemExit(f"unknown patch names: {sorted(set(args.only) - {p[0] for p in PATCHES})}")

    rows, baseline = [], None
    with tempfile.TemporaryDirectory(prefix="mutation_") as tmp:
        copy = Path(tmp) / "repo"
        copy_repo(copy)
        for name, i21, what, path, old, new in chosen:
            target = copy / path
            original = target.read_text()
            target.write_text(original.replace(old, new, 1))
            try:
                r = run_tests(copy, tests_for(path), args.timeout, args.deselect)
            finally:
                target.write_text(original)
            caught = r["rc"] not in (0, 5) and r["rc"] != -9
            rows.append({"fault": name, "issue21": i21, "what": what, "file": path, "caught": caught,
                         "first_failing_test": (r["failed"] or r["errors"] or [""])[0], "seconds": r["seconds"],
                         "rc": r["rc"]})
            print(f"{'CAUGHT  ' if caught else 'SURVIVED'} {name:28s} {r['seconds']:7.1f}s "
                  f"{rows[-1]['first_failing_test']}", flush=True)
            write_results(args.name, rows, None, partial=True, deselect=args.deselect)
        if not args.skip_baseline:  # last: the faults' results are written as they come
            baseline = run_tests(copy, TESTS, args.timeout, args.deselect)
            print(f"unpatched: rc={baseline['rc']} ({baseline['seconds']} s) {baseline['tail'].splitlines()[-1:]}",
                  flush=True)
    path = write_results(args.name, rows, baseline, partial=False, deselect=args.deselect)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    ok = all(r["caught"] for r in rows) and (baseline is None or baseline["rc"] == 0)
    return 0 if ok else 1


def write_results(name: str, rows: list[dict], baseline: dict | None, partial: bool, deselect=()) -> Path:
    """experiments/results/<name>.json and .md (a table of the faults planted so far)."""
    from common import markdown_table, stamp, write_json
    from scalingar_jax.atomic import atomic_write_text

    n21 = sum(r["issue21"] for r in rows)
    c21 = sum(r["issue21"] and r["caught"] for r in rows)
    summary = {"caught": sum(r["caught"] for r in rows), "planted": len(rows), "issue21_caught": c21,
               "issue21_planted": n21, "baseline_rc": None if baseline is None else baseline["rc"],
               "partial": partial}
    payload = {**stamp(), "tests": TESTS, "deselected": list(deselect), "summary": summary, "baseline": baseline,
               "faults": rows}
    path = write_json(name, payload)
    md = ["# Mutation check of the ScalingAR tests\n", f"Command: `{payload['command']}` (git {payload['git_rev']})\n",
          (f"Deselected: {', '.join(deselect)}.\n" if deselect else "")
          + f"Unpatched copy: rc = {summary['baseline_rc']} (0 = all tests pass; None = not run)."
          + (" PARTIAL: still running." if partial else "") + "\n",
          f"Caught {summary['caught']} of {summary['planted']} planted faults; of issue 21's {n21}: {c21}.\n",
          markdown_table(rows, ["fault", "issue21", "what", "caught", "first_failing_test", "seconds"]), ""]
    atomic_write_text(path.with_suffix(".md"), "\n".join(md))
    if not partial:
        print(md[3])
    return path


if __name__ == "__main__":
    sys.exit(main())
