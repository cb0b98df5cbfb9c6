"""Shared by the exactness tests (README, "Exactness"; pytest marker `exactness`, which CI also
runs under XLA_FLAGS=--xla_cpu_max_isa=AVX2 on an AVX-512 host): what two runs of the same prompts must agree on bit
for bit, what within a tolerance, and the environment of the tests' worker subprocesses.

Across batch shapes, compaction, pools, meshes and CPUs the model's logits are equal only to
float rounding (a matmul over another number of rows, or on another instruction set, may round a
logit by an ulp), and so is everything computed from them. The discrete outcomes (tokens,
winners, token counts, termination steps, alive masks) are asserted equal: on the tests' models
no decision lies within that rounding of a tie. The floats (confidence trajectories, guidance
scales, scores, entropies) are compared to FLOAT_TOL.
"""
import os
from pathlib import Path

import numpy as np

DISCRETE = ("all_tokens", "tokens", "winner", "tokens_used", "terminated_at")
# A logit moved by an ulp moves the z-scored signals most: 2.1e-5 on D in
# test_compacted_run_equals_masked_run (C 5.3e-6, confidence-only scores 3.7e-9); 5x margin
FLOAT_TOL = dict(rtol=1e-4, atol=1e-4)
ROOT = Path(__file__).resolve().parents[1]


def assert_same_outcomes(res, ref, idx=slice(None), **tol) -> None:
    """Two `StrategyResult`s of the same prompts (ref's prompts `idx`): discrete fields and the
    alive trajectory equal, the floats (score, entropy, C/I/D/R/scale/theta) to FLOAT_TOL."""
    tol = {**FLOAT_TOL, **tol}
    for name in DISCRETE:
        np.testing.assert_array_equal(np.asarray(getattr(res, name)), np.asarray(getattr(ref, name))[idx],
                                      err_msg=name)
    np.testing.assert_allclose(np.asarray(res.score), np.asarray(ref.score)[idx], err_msg="score", **tol)
    np.testing.assert_allclose(np.asarray(res.entropy), np.asarray(ref.entropy)[idx], err_msg="entropy", **tol)
    for name, x in ref.traj.items():
        got, want = np.asarray(res.traj[name]), np.asarray(x)[:, idx]
        if want.dtype == bool:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), err_msg=name, **tol)


def worker_env() -> dict:
    """The environment for a test's jax worker subprocess: this one, the repository on
    PYTHONPATH, and of XLA_FLAGS only the CPU instruction-set cap (`--xla_cpu_max_isa`, so the
    AVX2 run of the exactness tests reaches the workers); each worker adds its own flags."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    isa = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa")]
    if isa:
        env["XLA_FLAGS"] = " ".join(isa)
    else:
        env.pop("XLA_FLAGS", None)
    return env
