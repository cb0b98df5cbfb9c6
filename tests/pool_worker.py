"""Subprocess worker for tests/test_pool.py: the prompt pool on a mesh of 4 simulated CPU devices.

Usage: python tests/pool_worker.py OUT.json

Runs ScalingAR on test_loop_wiring's sharpened tiny GPT batched on one device and through one
pool per device (2x2 mesh, pools of 6 rows), and writes whether the per-prompt tokens, winners,
token counts and termination steps match, the max float deviation of the scores, and the pool
statistics.
"""
import json
import os
import sys

# 4 devices; XLA's optimization level lowered for compile time (reference and pool alike)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

from strategy_runs import run, run_with_stats  # noqa: E402

from scalingar_jax import sharding as SH  # noqa: E402


def main(out):
    import test_loop_wiring as W
    import test_pool as TP

    params = W.params.__wrapped__()  # the fixture's function: the sharpened model
    cond, mask = TP._cond()
    kw = dict(key=W.KEY, strategy="scalingar", num_candidates=TP.N, sampling=W.SAMPLING, scaling=W.WIRE,
              prompt_ids=TP.PROMPT_IDS)
    ref = run(params, W.CFG, cond, mask, compaction=False, **kw)
    mesh = SH.make_mesh(2, 2)
    seen = []
    res, stats = run_with_stats(params, W.CFG, cond, mask, rows=TP.ROWS, mesh=mesh, on_prompt=seen.append, **kw)
    report = {name: bool(np.array_equal(np.asarray(getattr(res, name)), np.asarray(getattr(ref, name))))
              for name in ("all_tokens", "tokens", "winner", "tokens_used", "terminated_at")}
    report["score_maxdiff"] = float(np.nanmax(np.abs(np.where(np.isinf(ref.score), 0, np.asarray(ref.score))
                                                     - np.where(np.isinf(res.score), 0, np.asarray(res.score)))))
    report["devices"] = jax.device_count()
    report["stats"] = {"steps": stats.steps, "rows": stats.rows, "utilization": stats.utilization}
    report["order"] = seen
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
