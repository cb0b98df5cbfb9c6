"""The sizing arithmetic of experiments/memory_table.py (pure functions, no compile)."""
import math

import pytest

import memory_table as MT

CHIP = {"peak_flops": 100.0, "hbm_bw": 10.0}


def test_fit_line_and_roofline():
    a, b = MT.fit_line(16, 5.0, 32, 7.0)
    assert (a, b) == (3.0, 0.125)
    model = {"flops": [0.0, 100.0], "bytes": [20.0, 1.0]}
    assert MT.roofline_s(model, 10, CHIP) == pytest.approx(max(1000 / 100, 30 / 10))  # compute bound: 10 s
    assert MT.roofline_s(model, 0.1, CHIP) == pytest.approx(max(10 / 100, 20.1 / 10))  # memory bound


def test_estimate_run_passes_and_fraction():
    step = {"flops": [0.0, 0.0], "bytes": [10.0, 1.0]}  # 1 s + 0.1 s per row
    prefill = {"flops": [0.0, 0.0], "bytes": [0.0, 0.0]}
    est = MT.estimate_run(step=step, prefill=prefill, chip=CHIP, chips=4, images=30, rows_per_image=16,
                          max_rows=40, T=10)
    # 8 images per chip (ceil 30/4), 2 per pass (40 // 16), 4 passes of 10 steps at 32 rows
    assert (est["images_per_chip"], est["images_per_pass"], est["passes"], est["rows"]) == (8, 2, 4, 32)
    assert est["wall_s"] == pytest.approx(4 * 10 * (10 + 32) / 10)
    half = MT.estimate_run(step=step, prefill=prefill, chip=CHIP, chips=4, images=30, rows_per_image=16,
                           max_rows=40, T=10, row_fraction=0.5, encode_s=3.0)
    assert half["wall_s"] == pytest.approx(4 * 10 * (10 + 16) / 10 + 3.0)
    assert MT.estimate_run(step=step, prefill=prefill, chip=CHIP, chips=4, images=30, rows_per_image=16,
                           max_rows=15, T=10)["fits"] is False


def test_fits_table():
    points = [{"rows": 16, "peak": 2e9 + 16 * 0.25e9}, {"rows": 32, "peak": 2e9 + 32 * 0.25e9}]
    fits = MT.fits_table(points, t5_param_bytes=1e9, t5_peak=None, budgets=[16], headroom=0.5)
    row = fits["rows"][0]
    assert fits["bytes_per_row"] == pytest.approx(0.25e9)
    assert row["features_rows"] == math.floor((8e9 - 2e9) / 0.25e9)  # 24 rows: 1 prompt at N = 8
    assert row["t5_resident_rows"] == 20 and row["t5_resident_prompts_N8"] == 1
    assert row["features_images_plain"] == 12


def test_fits_table_t5_encode_check():
    points = [{"rows": 16, "peak": 6e9}, {"rows": 32, "peak": 10e9}]
    ok, tight = (MT.fits_table(points, 1e9, t5_peak=p, budgets=[10], headroom=1.0, gpt_param_bytes=2e9)["rows"][0]
                 for p in (8e9, 8.5e9))
    assert ok["t5_encode_fits"] is True and tight["t5_encode_fits"] is False
    assert MT.fits_table(points, 0, t5_peak=None, budgets=[10], headroom=1.0)["rows"][0]["t5_encode_fits"] is None


def test_janus_analytic_state():
    from scalingar_jax import janus

    cfg = janus.JanusConfig(text_vocab_size=40, dim=32, n_layer=2, n_head=4, n_kv_head=2, ffn_hidden=48, vocab_size=24,
                            gen_head_dim=20, grid_size=2, prompt_len=8, param_dtype="bfloat16", dtype="bfloat16")
    est = MT.janus_analytic(cfg, rows=16, vq_param_bytes=1000)
    assert est["kv_bytes_per_row"] == 2 * 2 * (8 + 4 - 1) * 2 * 8 * 2  # k and v, layers, slots, kv heads, hd, bf16
    assert est["logits_bytes_per_row"] == 4 * 24
    n_params = (40 * 32 + 2 * (2 * 32 + 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 48) + 32 + 24 * 8
                + 8 * 32 + 32 + 32 * 32 + 32 + 32 * 20 + 20 + 20 * 24 + 24)
    assert est["param_bytes"] == 2 * n_params
    assert est["total_bytes"] == 2 * n_params + 1000 + 16 * (est["kv_bytes_per_row"] + 4 * 24)
