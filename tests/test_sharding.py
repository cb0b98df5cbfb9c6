"""Sharded strategies == single-device strategies, on 8 simulated CPU devices.

The mesh runs happen in one subprocess (`tests/sharding_worker.py`, 8 devices via XLA_FLAGS
set before jax is imported) so that the rest of the suite keeps one device; this file checks
its report. The worker lowers XLA's optimization level for compile time; the reference and the
sharded runs share those settings. Host-side helpers (prompt split, folder merge, specs) are
tested here directly.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax import gpt
from scalingar_jax import sharding as SH
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.scaling import ScalingARConfig
from scalingar_jax.scaling import loop as L
from scalingar_jax.scaling import strategies as S
from scalingar_jax.world.geneval_io import write_prompt_folder

from exactness import worker_env

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("plain", "confidence_only", "scalingar", "best_of_n", "importance_sampling")
SETUPS = ("1x8/P2N8", "2x4/P2N8", "8x1/P2N8", "2x4/P3N6")
CFG = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=16, vocab_size=32, cls_token_num=3, caption_dim=4,
                grid_size=4, multiple_of=16)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding") / "report.json"
    env = worker_env()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py"), str(out), "--fast-compile"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.exactness
@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sharded_equals_single_device(report, strategy, setup):
    case = report["cases"][f"{strategy}/{setup}"]
    assert case["shapes"], "result shapes differ"
    for field in ("tokens", "winner", "tokens_used", "all_tokens", "terminated_at"):
        assert case[field], f"{field} differs from the single-device run"
    # Floats: the pooled statistics reduce over differently laid out slots (compaction), so C can
    # differ in the last bits (amplified by the z-score); decisions above are exact.
    assert case["score_maxdiff"] < 1e-3 and case["entropy_maxdiff"] < 1e-5


def test_the_gate_really_prunes_and_compacts(report):
    assert report["devices"] == 8
    for setup in SETUPS:
        assert report["cases"][f"scalingar/{setup}"]["pruned"] > 0
    # with more than one candidate per shard the loop left early at least once to compact
    for setup in ("2x4/P2N8", "8x1/P2N8", "2x4/P3N6"):
        assert report["cases"][f"scalingar/{setup}"]["loop_calls"] > 1


@pytest.mark.exactness
def test_fine_buckets_sharded_equal_single_device(report):
    case = report["fine_buckets"]
    for field in ("tokens", "winner", "tokens_used", "all_tokens", "terminated_at"):
        assert case[field], f"{field} differs from the single-device run"
    assert case["loop_calls"] >= case["pow2_loop_calls"] > 1


@pytest.mark.exactness
def test_first_candidate_offset_sharded(report):
    """Candidates 4..6 of an 8-candidate run, decoded on their own on a padded 1x2 mesh, are the same tokens."""
    assert report["first_candidate"]


def test_loop_compiles_once_per_bucket(report):
    for setup in SETUPS:
        sar = report["cases"][f"scalingar/{setup}"]
        assert sar["loop_compiles"] == sar["loop_calls"]  # every loop call is a new (smaller) bucket
        first = report["cases"][f"plain/{setup}"]["loop_compiles"]
        assert first <= 1
        # confidence-only, best-of-N and IS (checkpoints included) reuse the plain loop
        for strategy in ("confidence_only", "best_of_n", "importance_sampling"):
            assert report["cases"][f"{strategy}/{setup}"]["loop_compiles"] == 0, strategy
    assert report["compiles_second_run"] == [], "a second run with the same shapes compiled again"


@pytest.mark.exactness
def test_model_axis_gives_the_same_logits(report):
    for mesh in ("1x1x8", "2x1x4"):
        m = report["model_axis"][mesh]
        assert m["logits_maxdiff"] < 1e-5
        assert m["hlo_collectives"], "the model-split program has no collectives: it was not partitioned"
        assert {"layers/attention/wqkv/kernel", "layers/attention/wo/kernel", "layers/feed_forward/w1/kernel",
                "layers/feed_forward/w2/kernel", "output/kernel", "tok_embeddings/embedding"} <= set(m["split_leaves"])
    assert report["model_axis"]["2x1x4"]["loop_tokens_equal"] and report["model_axis"]["2x1x4"]["loop_winner_equal"]


# ------------------------------------------------------------------------------ host-side helpers
@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 40), count=st.integers(1, 9))
def test_split_prompts_partitions_in_order(n, count):
    records = [f"r{i}" for i in range(n)]
    shares = [SH.split_prompts(records, i, count) for i in range(count)]
    flat = [x for share in shares for x in share]
    assert flat == list(enumerate(records))
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_split_prompts_rejects_bad_index():
    with pytest.raises(ValueError, match="process_index"):
        SH.split_prompts([1, 2], 2, 2)
    with pytest.raises(ValueError, match="process_count"):
        SH.split_prompts([1, 2], 0, 0)


def _record(c):
    return {"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}


def test_merge_geneval_folders(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    write_prompt_folder(tmp_path / "a", 0, _record("cow"), [img], world=False)
    write_prompt_folder(tmp_path / "a", 2, _record("bench"), [img, img + 1], world=False)
    write_prompt_folder(tmp_path / "b", 1, _record("clock"), [img], world=False)
    out = SH.merge_geneval_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert sorted(os.listdir(out)) == ["00000", "00001", "00002"]
    assert sorted(os.listdir(Path(out) / "00002" / "samples")) == ["0000.png", "0001.png"]
    with pytest.raises(FileExistsError):
        SH.merge_geneval_folders([tmp_path / "a"], tmp_path / "merged")
    write_prompt_folder(tmp_path / "c", 1, _record("cow"), [img], world=False)
    with pytest.raises(ValueError, match="00001 is in two parts"):
        SH.merge_geneval_folders([tmp_path / "b", tmp_path / "c"], tmp_path / "m2")
    assert not (tmp_path / "m2").exists()
    with pytest.raises(ValueError, match="holds no GenEval prompt folders"):
        SH.merge_geneval_folders([tmp_path / "merged" / "00000" / "samples"], tmp_path / "m3")


def test_mesh_helpers():
    assert SH.parse_mesh("2x4") == (2, 4) and SH.parse_mesh("2x1x4") == (2, 1, 4)
    with pytest.raises(ValueError, match="PxC"):
        SH.parse_mesh("2by4")
    mesh = SH.make_mesh(1, 1)
    assert mesh.axis_names == ("prompts", "cands")
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        SH.make_mesh(jax.device_count() + 1, 1)
    with pytest.raises(ValueError, match="shards"):
        SH.make_mesh(0, 1)


def test_specs_match_the_view_layout_and_param_rules():
    params = gpt.init_params(CFG, jax.random.key(0))
    spec = S.token_spec(CFG, SamplingConfig(cfg_scale=3.0), ScalingARConfig(), "scalingar", 3, True)
    cond = jnp.zeros((2, CFG.cls_token_num, CFG.caption_dim))
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    for layout in (params, gpt.unstack_layers(params)):  # a stacked (scanned) and a per-layer cache
        s = L.start_loop(layout, cond, None, jax.random.key(0), jnp.arange(2), spec=spec)
        view = SH.to_view(s)
        specs = SH.loop_state_specs(spec, gpt.layers_stacked(layout))
        assert s.cache.stacked == gpt.layers_stacked(layout)
        assert jax.tree.structure(view) == jax.tree.structure(specs, is_leaf=is_spec)
        # every sharded dimension of the view is the prompt or candidate axis, or for the pool
        # (logits, cache, owner) one block of M = P * N rows per shard (one shard here)
        pool = jax.tree.leaves((view.logits, view.cache, view.owner))
        for x, p in zip(jax.tree.leaves(view), jax.tree.leaves(specs, is_leaf=is_spec)):
            sizes = {"prompts": 1, "cands": 6} if any(x is y for y in pool) else {"prompts": 2, "cands": 3}
            for dim, name in enumerate(p):
                assert name is None or x.shape[dim] == sizes[name], (x.shape, p)
        back = SH.from_view(view)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     s.replace(keys=None), back.replace(keys=None))
    ps = SH.param_specs(params, "model", 8)
    flat = {SH._path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(ps)}
    assert flat["layers/attention/wqkv/kernel"] == jax.sharding.PartitionSpec(None, None, "model")
    assert flat["layers/feed_forward/w2/kernel"] == jax.sharding.PartitionSpec(None, "model")
    assert flat["tok_embeddings/embedding"] == jax.sharding.PartitionSpec("model")
    assert flat["norm/weight"] == jax.sharding.PartitionSpec()
    # per-layer trees and their column blocks (`gpt.decode_layout` on a CPU) are split alike
    ps = SH.param_specs(gpt.split_columns(params, 2), "model", 8)
    flat = {SH._path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(ps)}
    assert flat["layers/0/attention/wqkv/kernel/1"] == jax.sharding.PartitionSpec(None, "model")
    assert flat["layers/0/feed_forward/w2/kernel/0"] == jax.sharding.PartitionSpec("model")
    assert flat["output/kernel/1"] == jax.sharding.PartitionSpec(None, "model")
    # a dimension that the axis does not divide stays replicated
    assert SH.param_specs(params, "model", 5)["output"]["kernel"] == jax.sharding.PartitionSpec()


def test_sharded_rejects_bad_input():
    params = gpt.init_params(CFG, jax.random.key(0))
    cond = jnp.zeros((2, CFG.cls_token_num, CFG.caption_dim))
    with pytest.raises(TypeError, match="Mesh"):
        S.run_token_strategy(params, CFG, cond, mesh="2x4", key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_candidates"):
        S.run_token_strategy(params, CFG, cond, mesh=SH.make_mesh(1, 1), key=jax.random.key(0),
                             num_candidates=0)
    with pytest.raises(ValueError, match="strategy"):
        S.run_token_strategy(params, CFG, cond, mesh=SH.make_mesh(1, 1), key=jax.random.key(0),
                             strategy="best_of_n")
