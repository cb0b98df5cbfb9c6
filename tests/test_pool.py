"""The prompt-set pool (`scaling.pool`) against the batched strategies, and per-row positions.

The model, reward and settings are test_loop_wiring's (its sharpened tiny t2i GPT: the signals
are not noise, so ScalingAR prunes at different steps per prompt). The pool is smaller than the
prompt set's rows, so prompts wait, enter rows freed by pruning or by finished prompts, and run
at different token indices side by side.

Exactness: a scalar position and that position broadcast to every row give bit-identical model
rows (tested below), and both loops draw tokens and compute token statistics per model row
(`loop.draw_rows`), but the pool runs ScalingAR's profile per prompt lane under `vmap` on (1, N)
arrays where the batched loop runs it on (P, N) arrays, and XLA:CPU rounds some of it differently
(C, D, R differ by ~1e-6), and its matmuls run over other row counts. The discrete outcomes
(tokens, termination steps, token counts, winners) are asserted equal, the floats to a
tolerance (`exactness.assert_same_outcomes`).
"""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalingar_jax import decode, gpt
from scalingar_jax.scaling import pool
from scalingar_jax.scaling import strategies as S

from exactness import assert_same_outcomes, worker_env
from test_loop_wiring import CFG, KEY, SAMPLING, WIRE, _decode, _reward, params  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]
T, P, N = CFG.block_size, 5, 4
PROMPT_IDS = np.array([5, 2, 7, 1, 9])
ROWS = 6  # one prompt's 4 candidates at a time, plus the rows its pruned candidates free


def _cond():
    cond = jax.random.normal(jax.random.key(1), (P, CFG.cls_token_num, CFG.caption_dim))
    mask = np.ones((P, CFG.cls_token_num), bool)
    mask[1, 0] = mask[3, :2] = False  # left-padded captions: `valid` must follow a prompt into its rows
    return cond, mask


@pytest.mark.exactness
def test_per_row_positions_match_the_teacher_forced_forward(params):
    """Rows advance at different steps (a row that waits re-feeds its token at the same
    position): every row's logits equal the uncached forward's at its own position."""
    R = 3
    cond = jax.random.normal(jax.random.key(2), (R, CFG.cls_token_num, CFG.caption_dim))
    toks = jax.random.randint(jax.random.key(3), (R, T), 0, CFG.vocab_size)
    want = np.asarray(gpt.forward(params, CFG, cond, toks))  # (R, T, V): [:, k] predicts token k
    prm = gpt.unstack_layers(params)
    logits, cache = decode.prefill(prm, CFG, cond, use_cfg=False)
    np.testing.assert_allclose(logits, want[:, 0], rtol=1e-5, atol=1e-5)
    step = jax.jit(lambda c, t, k: decode.decode_step(prm, CFG, c, t, k))
    k = np.zeros(R, np.int32)  # tokens fed so far per row
    for t in range(12):
        wait = (t % (np.arange(R) + 2) == 1) & (k > 0)  # row r re-feeds its last token every (r + 2)-th step
        fed = k - wait
        logits, cache = step(cache, toks[np.arange(R), fed], jnp.asarray(fed))
        k = fed + 1
        np.testing.assert_allclose(logits, want[np.arange(R), k], rtol=1e-5, atol=1e-5, err_msg=str(t))
    assert len(set(k.tolist())) == R  # the rows ended at different positions
    # a scalar start is the same computation as that scalar broadcast to every row
    a = step(cache, toks[:, 0], jnp.int32(4))
    b = step(cache, toks[:, 0], jnp.full((R,), 4, jnp.int32))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.exactness
def test_scalingar_pool_equals_batched_and_compiles_once_per_pool_size(params):
    cond, mask = _cond()
    ref = S.run_token_strategy(params, CFG, cond, mask, key=KEY, strategy="scalingar", num_candidates=N,
                               sampling=SAMPLING, scaling=WIRE, prompt_ids=PROMPT_IDS, compaction=False)
    seen = []
    compiled = pool.run_pool_loop._cache_size()
    res, stats = pool.run_pool_strategy(params, CFG, cond, mask, key=KEY, strategy="scalingar", num_candidates=N,
                                        sampling=SAMPLING, scaling=WIRE, prompt_ids=PROMPT_IDS, rows=ROWS,
                                        shrink=False, on_prompt=seen.append)
    assert_same_outcomes(res, ref)
    term = np.asarray(ref.terminated_at)
    assert len(set(term[term >= 0].tolist())) >= 3, term  # prompts pruned at different steps
    assert sorted(seen) == list(range(P)) and seen != list(range(P)), seen  # they finished out of order
    assert stats.steps < P * T  # freed rows started the next prompt before the previous one finished
    # one compile per pool size (the shrinking tail's sizes: test_plain_confidence_only_...)
    assert stats.sizes == (ROWS,) and pool.run_pool_loop._cache_size() == compiled + 1
    # another prompt set on the same pool: no new compile, and each prompt's result does not
    # depend on the prompts it shared the pool with
    idx = np.array([3, 0, 4])
    res2, _ = pool.run_pool_strategy(params, CFG, cond[idx], mask[idx], key=KEY, strategy="scalingar",
                                     num_candidates=N, sampling=SAMPLING, scaling=WIRE, prompt_ids=PROMPT_IDS[idx],
                                     rows=ROWS, shrink=False)
    assert pool.run_pool_loop._cache_size() == compiled + 1
    assert_same_outcomes(res2, ref, idx)


@pytest.mark.exactness
def test_scalingar_ablation_in_the_pool(params):
    """Fixed CFG with adaptive termination (the other ablations change only the profile's terms,
    which `candidate_step` runs unchanged per lane)."""
    cond, mask = _cond()
    sc = WIRE.ablation("termination_only")
    kw = dict(key=KEY, strategy="scalingar", num_candidates=N, sampling=SAMPLING, scaling=sc, prompt_ids=PROMPT_IDS)
    ref = S.run_token_strategy(params, CFG, cond, mask, compaction=False, **kw)
    res, _ = pool.run_pool_strategy(params, CFG, cond, mask, rows=ROWS + 2, shrink="fine", **kw)
    assert_same_outcomes(res, ref)


@pytest.mark.exactness
def test_plain_confidence_only_and_best_of_n_in_the_pool(params):
    cond, mask = _cond()
    compiled = pool.run_pool_loop._cache_size()
    for strategy in ("plain", "confidence_only"):
        kw = dict(key=KEY, strategy=strategy, num_candidates=N, sampling=SAMPLING, prompt_ids=PROMPT_IDS)
        ref = S.run_token_strategy(params, CFG, cond, mask, **kw)
        res, stats = pool.run_pool_strategy(params, CFG, cond, mask, rows=9, lanes=3, **kw)
        assert_same_outcomes(res, ref)
        # 2 prompts at a time, nothing pruned: 3 rounds of T steps, the last one alone on 4 rows
        assert stats.steps == 3 * T and stats.sizes == (9, 4), stats
        assert stats.row_steps == 2 * T * 9 + T * 4 and stats.utilization == 5 * N * T / stats.row_steps
    kw = dict(prompts=list("abcde"), key=KEY, reward_fn=_reward, decode_fn=_decode, num_candidates=N,
              sampling=SAMPLING, prompt_ids=PROMPT_IDS)
    ref = S.run_best_of_n(params, CFG, cond, mask, **kw)
    res, _ = pool.run_pool_best_of_n(params, CFG, cond, mask, rows=9, lanes=3, **kw)
    assert_same_outcomes(res, ref)
    assert pool.run_pool_loop._cache_size() == compiled + 2  # one loop per pool size (9, 4), shared by all three
    assert len(set(np.asarray(res.winner).tolist())) > 1


def test_a_pool_smaller_than_a_prompt_is_refused_naming_both_numbers(params):
    cond, mask = _cond()
    with pytest.raises(ValueError, match=r"holds 3 candidate rows .* needs N = 4"):
        pool.run_pool_strategy(params, CFG, cond, mask, key=KEY, num_candidates=N, rows=3)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="pool rows"):
            pool.check_pool(bad, 1)
    with pytest.raises(ValueError, match="pool lanes"):
        pool.check_pool(8, 2, lanes=0)
    with pytest.raises(ValueError, match="shrink must be True, False or one of"):
        pool.run_pool_strategy(params, CFG, cond, mask, key=KEY, num_candidates=N, rows=8, shrink="pow3")
    with pytest.raises(ValueError, match="5 prompts for 4 conditions|4 prompts"):
        pool.run_pool_best_of_n(params, CFG, cond[:4], mask[:4], prompts=list("abcde"), key=KEY, reward_fn=_reward,
                                decode_fn=_decode, num_candidates=N, rows=8)


@pytest.mark.exactness
def test_one_pool_per_device_on_a_mesh(tmp_path):
    """tests/pool_worker.py: ScalingAR through one pool per device of a 2x2 mesh (4 simulated CPU
    devices, in a subprocess) equals the batched single-device run per prompt."""
    out = tmp_path / "pool.json"
    env = worker_env()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "pool_worker.py"), str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["devices"] == 4 and r["stats"]["rows"] == 4 * ROWS, r
    for name in ("all_tokens", "tokens", "winner", "tokens_used", "terminated_at"):
        assert r[name], f"{name} differs from the single-device batched run"
    assert r["score_maxdiff"] < 1e-5 and sorted(r["order"]) == list(range(P)), r
