"""Shapes world v2 models: configs (GPT size from code), the within-prompt ranking loss, the
ranking batch, resumable training chunks, and world-version checks of checkpoints."""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalingar_jax.checkpoint import save_model
from scalingar_jax.world import train as T
from scalingar_jax.world.judge import apply_rules
from scalingar_jax.world.models import check_world_version, load_world
from scalingar_jax.world.reward import ranking_loss
from scalingar_jax.world.scenes import scene_split
from scalingar_jax.world.spec import META_KEY, WORLD_V2
from scalingar_jax.world.text_encoder import TextEncoderConfig, init_text_params


def test_v2_configs_and_gpt_parameter_count():
    from scalingar_jax.gpt import init_params

    vq = T.default_vq_config(WORLD_V2)
    assert vq.downsample * WORLD_V2.grid_size == WORLD_V2.image_size == 64
    text = T.default_text_config()
    g = T.default_gpt_config(vq, text, WORLD_V2.gpt_dim, WORLD_V2.gpt_layers, WORLD_V2.grid_size)
    assert g.grid_size == 16 and g.model_type == "t2i"
    n = T.param_count(jax.eval_shape(lambda: init_params(g, jax.random.key(0))))
    assert n == 6_789_376 and 6e6 <= n <= 8e6
    assert T.default_reward_config(WORLD_V2).image_size == 64


def test_ranking_loss_ranks_within_a_prompt_only():
    loss_fn = jax.jit(ranking_loss)
    y = jnp.asarray([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    good = jnp.asarray([[2., -1, -2, 1], [-1, 3, 0, -2], [0, 0, 0, 0]])
    bad = good.at[:2].multiply(-1)
    lg, mg = loss_fn(good, y)
    lb, mb = loss_fn(bad, y)
    assert float(mg["pair_acc"]) == 1.0 and float(mb["pair_acc"]) == 0.0
    assert float(mg["listwise"]) < float(mb["listwise"]) and float(mg["pairwise"]) < float(mb["pairwise"])
    # a per-prompt shift changes only the calibration term; the all-positive prompt ranks nothing
    shifted = good + jnp.asarray([[5.], [-4.], [9.]])
    _, ms = loss_fn(shifted, y)
    np.testing.assert_allclose(ms["listwise"], mg["listwise"], rtol=1e-5)
    np.testing.assert_allclose(ms["pairwise"], mg["pairwise"], rtol=1e-5)
    g = jax.grad(lambda s: ranking_loss(s, y, calibration=0.0)[0])(good)
    assert np.all(np.asarray(g)[2] == 0.0)


def test_reward_batch_v2_labels_come_from_true_objects():
    recs, imgs, dets = T.render_pool(24, 0, WORLD_V2)
    assert all(scene_split(r) == "train" for r in recs) and imgs.shape == (24, 64, 64, 3)
    pool = {r["prompt"]: r for r in recs}
    x, prompts, pairs, y = T.reward_batch_v2(recs, imgs, dets, None, np.random.default_rng(1), 5, 4, pool, WORLD_V2)
    assert x.shape == (20, 64, 64, 3) and y.shape == (5, 4) and len(prompts) == 5
    np.testing.assert_array_equal(pairs[:, 1], np.repeat(np.arange(5), 4))
    assert np.all(y[:, 0] == 1.0)  # the own render satisfies its prompt
    for p, rec in enumerate(pool[q] for q in prompts):
        assert y[p, 0] == float(apply_rules(rec, dets[recs.index(rec)])[0])
    with pytest.raises(ValueError, match="3 candidates"):
        T.reward_batch_v2(recs, imgs, dets, None, np.random.default_rng(1), 2, 2, pool, WORLD_V2)


def _args(tmp_path, **kw):
    base = dict(out=str(tmp_path), resume=True, stop_after=0, max_minutes=0.0, log_every=1, seed=0,
                results=str(tmp_path / "res"))
    base.update(kw)
    return argparse.Namespace(**base)


def test_resumable_chunks_equal_one_run(tmp_path):
    opt = optax.adam(0.1)
    target = jnp.arange(3.0)

    @jax.jit
    def step_fn(p, s, x):
        loss, g = jax.value_and_grad(lambda q: ((q - target * x) ** 2).sum())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, {"loss": loss}

    def batch(step):
        return (jnp.asarray(np.random.default_rng([0, step]).random()),)

    def run_in(folder, chunks):
        p = jnp.zeros(3)
        s = opt.init(p)
        for stop in chunks:
            a = _args(folder, stop_after=stop)
            run = T.Run("toy", a, 6)
            p, s, start, done, _ = T.train_loop(run, a, "toy", step_fn, jnp.zeros(3), opt.init(jnp.zeros(3)), batch, 6)
            run.finish(**({"chunk_ended_at_step": done} if done < 6 else {}))
        return p, start, done

    whole, _, done = run_in(tmp_path / "a", [0])
    chunked, start, done2 = run_in(tmp_path / "b", [2, 4, 0])
    assert done == done2 == 6 and start == 4
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)
    # the finished record and log hold the whole run: every chunk's losses, wall times and log lines
    one, three = (json.loads((tmp_path / d / "res" / "toy.json").read_text()) for d in ("a", "b"))
    assert [x["step"] for x in three["losses"]] == list(range(6))
    assert [x["loss"] for x in three["losses"]] == pytest.approx([x["loss"] for x in one["losses"]], rel=1e-6)
    assert len(three["chunk_wall_times_s"]) == 2 and "chunk_ended_at_step" not in three
    log = (tmp_path / "b" / "res" / "toy.log").read_text()
    assert all(f"step {i} " in log for i in range(6)) and log.count("resuming") == 2
    with pytest.raises(ValueError, match="run of 6 steps"):
        T.load_train_state(T.state_path(_args(tmp_path / "b"), "toy"), jnp.zeros(3), opt.init(jnp.zeros(3)), 9)
    with pytest.raises(ValueError, match="another model"):
        T.load_train_state(T.state_path(_args(tmp_path / "b"), "toy"), jnp.zeros(4), opt.init(jnp.zeros(4)), 6)


def test_cli_rejects_resume_on_v1_and_unknown_world(capsys):
    from scalingar_jax import cli

    assert cli.main(["train-world", "vq", "--resume", "--world", "1", "--out", "/nonexistent/x"]) == 2
    assert "--resume needs --world 2 or 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["train-world", "vq", "--world", "4"])
    assert e.value.code == 2 and "--world" in capsys.readouterr().err


def test_v1_checkpoint_loaded_as_v2_is_refused(tmp_path):
    text = TextEncoderConfig(vocab_size=29, max_len=16, dim=16, n_layer=1, n_head=2, out_dim=8)
    params = init_text_params(text, jax.random.key(0))
    save_model(tmp_path / "v1" / "text", params, text, kind="text", meta={"steps": 1})
    save_model(tmp_path / "v2" / "text", params, text, kind="text", meta={META_KEY: 2})
    with pytest.raises(ValueError, match=r"v1 checkpoint, loaded as v2"):
        load_world(tmp_path / "v1", parts=("text",), version=2)
    assert load_world(tmp_path / "v1", parts=("text",)).version == 1
    assert load_world(tmp_path / "v2", parts=("text",), version=2).version == 2
    check_world_version(tmp_path / "v2" / "text", 2)
    with pytest.raises(ValueError, match="v2 checkpoint, loaded as v1"):
        check_world_version(tmp_path / "v2" / "text", 1)


def test_world_meta_records_the_scene_split_of_a_split_world():
    from scalingar_jax.world.scenes import SPLIT_META_KEY, split_digest
    from scalingar_jax.world.spec import WORLD_V1, WORLD_V3

    assert T.world_meta(WORLD_V1) == {META_KEY: 1}
    meta = T.world_meta(WORLD_V3)
    assert meta[META_KEY] == 3 and meta[SPLIT_META_KEY]["digest"] == split_digest()
    assert meta[SPLIT_META_KEY]["families"]["color_attr"]["eval"] > 0
    json.dumps(meta)  # it goes into config.json


def test_embedded_bundle_is_the_honest_world_trained_on_todays_scene_split():
    """The default bundle (checkpoints/shapes) is world v3 and every part was trained on the scene
    split the code computes now: a change to the split table (which would let evaluation scenes
    into what the models saw) fails here until the world is retrained."""
    from pathlib import Path

    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.world.scenes import SPLIT_META_KEY, split_digest

    embedded = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"
    for part in ("vq", "gpt", "text", "reward"):
        meta = read_config(embedded / part)[2] or {}
        assert meta.get(META_KEY) == 3, (part, meta.get(META_KEY))
        assert meta.get(SPLIT_META_KEY, {}).get("digest") == split_digest(), part
        assert not meta.get("chunk_of_run"), f"{part}: a chunk of an unfinished run"
