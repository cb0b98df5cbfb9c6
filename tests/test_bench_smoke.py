"""Smoke runs of the benchmark scripts on tiny configs: they run, write JSON, and their
accounting is consistent (no timings are asserted: speed is for the benchmarks themselves).
pyproject puts experiments/ on pytest's sys.path."""
import json

import bench_scaling


def test_bench_scaling_smoke(tmp_path, capsys, monkeypatch):
    # GPT-B's layer shrunk to 2 heads x 32 and a 2048-token vocabulary (still > 2000: the top-k
    # path runs): the run's cost is its ~35 compiles, which a full-width layer only slows down
    from scalingar_jax.config import gpt_config

    tiny = dict(n_head=2, dim=32, vocab_size=2048)
    monkeypatch.setattr(bench_scaling, "gpt_config", lambda *a, **kw: gpt_config(*a, **{**kw, **tiny}))
    out = tmp_path / "bench"
    bench_scaling.main(["--grid", "4", "--layers", "1", "--prompts", "2", "--steps", "2", "--rounds", "1",
                        "--gates", "1:0.9", "--out", str(out)])
    d = json.loads(out.with_suffix(".json").read_text())
    assert d["config"]["T"] == 16 and d["config"]["P"] == 2 and d["config"]["n_layer"] == 1
    assert d["per_step"]["plain_ms"] > 0 and d["per_step"]["scalingar_ms"] > 0
    loop = d["loop"]
    bon = loop["best_of_n (token loop)"]
    assert bon["tokens_per_image"] == 8 * 16 and bon["pool_row_steps_pct_of_bon"] == 100.0
    assert bon["pool_sizes"] == [16]
    gate = loop["scalingar + compaction, gate Delta_rec=1 p=0.9"]
    # the aggressive gate prunes; the pool shrinks in powers of two below P*N = 16 and never
    # holds fewer rows than the alive candidates (row-steps >= tokens)
    assert gate["tokens_per_image"] < bon["tokens_per_image"]
    assert gate["pool_sizes"][0] < 16 and all(s & (s - 1) == 0 for s in gate["pool_sizes"][:-1])
    assert gate["pool_row_steps_pct_of_bon"] >= gate["tokens_pct_of_bon"]
    fine = loop["scalingar + compaction, gate Delta_rec=1 p=0.9 [fine buckets]"]
    assert fine["tokens_per_image"] == gate["tokens_per_image"]  # same run, other pool sizes
    assert all(s in (1, 2, 3, 4, 6, 8, 12, 16) for s in fine["pool_sizes"])
    assert fine["pool_row_steps_pct_of_bon"] <= gate["pool_row_steps_pct_of_bon"]
    masked = loop["scalingar, masking only (spec gate)"]
    assert masked["pool_row_steps_pct_of_bon"] == 100.0
    assert "| what |" in capsys.readouterr().out


def test_bench_attention_layout_smoke(tmp_path):
    import bench_attention_layout

    out = tmp_path / "attn"
    bench_attention_layout.main(["--rows", "4", "--layers", "2", "--heads", "2", "--positions", "9", "--head-dim", "8",
                                 "--steps", "4", "--rounds", "1", "--out", str(out)])
    d = json.loads(out.with_suffix(".json").read_text())
    rows = {r["layout"]: r for r in d["rows"]}
    assert set(rows) == {"scan-carry", "static-slices", "per-layer"}
    for r in rows.values():  # same math in every layout
        assert r["max_abs_diff_vs_scan_carry"] < 1e-5 and r["ms_per_step"] > 0


def test_bench_throughput_smoke(tmp_path, capsys):
    import bench_throughput

    out = tmp_path / "throughput"
    bench_throughput.main(["--workload", "shapes", "--checkpoint", "random", "--per-tag", "1", "-n", "2", "--batch", "2",
                           "--repeat", "1", "--out", str(out)])
    d = json.loads(out.with_suffix(".json").read_text())
    (r,) = d["results"]
    runs, T = r["runs"], 16
    assert r["prompts"] == 6 and r["pool_rows"] == 4
    assert runs["best_of_n token loop (batched)"]["tokens_per_image"] == 2 * T
    assert runs["plain (N=1, batched)"]["tokens_per_image"] == T
    # the pool gives ScalingAR's batched results per prompt, hence its token counts
    assert runs["scalingar (pool)"]["tokens_per_image"] == runs["scalingar (batched, compaction)"]["tokens_per_image"]
    assert runs["best_of_n token loop (pool)"]["utilization"] <= 1.0
    c = r["criterion"]
    assert c["met"] == (c["scalingar_pool_images_per_s"] >= c["required_images_per_s"])
    bon = max(runs["best_of_n token loop (batched)"]["images_per_s"], runs["best_of_n token loop (pool)"]["images_per_s"])
    assert runs[c["best_of_n"]]["images_per_s"] == bon  # against the faster Best-of-N
    assert "criterion" in capsys.readouterr().out


def test_profile_decode_step_groups_the_loop_ops():
    """The per-op profile maps the compiled decode loop's instructions to their roles (weight
    matmuls, attention over the cache, ...) and finds no cache-sized copy inside the loop;
    bench_decode's CPU record names the model, cores and versions."""
    import bench_decode
    import jax
    import jax.numpy as jnp
    import profile_decode_step as pds

    from scalingar_jax import gpt
    from scalingar_jax.config import GPTConfig

    cfg = GPTConfig(model_type="c2i", n_layer=2, n_head=4, dim=32, vocab_size=48, num_classes=3, grid_size=4,
                    multiple_of=16)
    params = jax.eval_shape(gpt.unstack_layers, gpt.param_shapes(cfg))
    cache = jax.eval_shape(lambda: gpt.init_cache(cfg, 4))
    compiled = bench_decode.step_fn(cfg, 3).lower(params, cache, jax.ShapeDtypeStruct((4,), jnp.int32)).compile()
    instrs = pds.parse_hlo(compiled.as_text())
    in_loop = [i for i in instrs.values() if not (i["computation"] or "").startswith("main")]
    groups = {pds.group_of(i) for i in in_loop}
    assert {"output projection", "MLP matmuls (w1, w2, w3)", "attention projections (wqkv, wo)",
            pds.ATTENTION} <= groups, groups
    shape = f"f32[4,{cfg.kv_heads},{cfg.max_seq_len - 1},{cfg.head_dim}]"
    assert any(i["shape"].startswith(shape) for i in in_loop)  # the cache buffers are in the loop
    assert pds.cache_copies(instrs, shape) == 0
    info = bench_decode.cpu_info()
    assert info["cpus"] >= 1 and info["jax"] == jax.__version__ and "CPU:" in bench_decode.cpu_line(info)


def test_bench_accelerator_tiny_writes_into_the_current_folder_only(tmp_path, monkeypatch):
    """`scalingar bench accelerator`'s script on the tiny preset (CPU): every phase runs and
    reports, the files land in the current folder (the default --out) and nowhere else."""
    import bench_accelerator
    from common import RESULTS

    before = sorted(p.name for p in RESULTS.iterdir())
    monkeypatch.chdir(tmp_path)
    bench_accelerator.main(["--tiny", "-n", "2", "--prompts", "2", "--batch", "1", "--steps", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_accelerator.json", "bench_accelerator.md"]
    assert sorted(p.name for p in RESULTS.iterdir()) == before
    d = json.loads((tmp_path / "bench_accelerator.json").read_text())
    assert d["device"].startswith("cpu") and d["backend"]["platform"] == "cpu" and not d["skipped"]
    r = d["results"]
    assert [x["what"] for x in r["step"]] == ["plain N=1", "plain N=2", "scalingar N=2"]
    assert all(x["s_per_step"] > 0 and x["compile_s"] > 0 for x in r["step"] + r["layouts"])
    assert [x["layout"] for x in r["layouts"]] == ["unrolled", "scanned"]
    assert [x["method"] for x in r["top-k"]] == ["lax.top_k", "radix select"]
    assert all(x["value_matches_top_k"] for x in r["top-k"])
    runs = {x["what"].split(" (")[0]: x for x in r["images/s"]}
    assert set(runs) == {"plain", "best_of_n", "scalingar pool"} and all(x["images_per_s"] > 0 for x in runs.values())
    assert runs["plain"]["tokens_per_image"] == 16 and runs["best_of_n"]["tokens_per_image"] == 2 * 16
    assert d["memory"]["device_peak_GB"] is None  # no memory_stats on CPU
    assert "### seconds per token step" in (tmp_path / "bench_accelerator.md").read_text()
    # the estimate the device's peak is held against: memory_table.json's fit (8.29 GB at 16 rows)
    est = bench_accelerator.memory_estimate(16)
    assert est is None or abs(est / 1e9 - 8.29) < 0.01
