"""Shapes-world models: text encoder, reward model, training steps, checkpoints, load_world."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalingar_jax.checkpoint import load_model, save_model
from scalingar_jax.world.reward import RewardConfig, init_reward_params, reward_logits, reward_scores
from scalingar_jax.world.text_encoder import (
    TextEncoderConfig,
    encode_prompts,
    init_text_params,
)
from scalingar_jax.world.vocab import MAX_PROMPT_LEN, VOCAB_SIZE, tokenize

TEXT = TextEncoderConfig(vocab_size=VOCAB_SIZE, max_len=MAX_PROMPT_LEN, dim=32, n_layer=1, n_head=2, out_dim=24)
REWARD = RewardConfig(image_size=16, channels=(8, 8), dim=16, n_head=2, vocab_size=VOCAB_SIZE,
                      max_len=MAX_PROMPT_LEN, text_dim=16, text_layers=1, text_heads=2)


@pytest.fixture(scope="module")
def text_params():
    return init_text_params(TEXT, jax.random.key(0))


def test_text_features_shape_and_padding(text_params):
    feats, mask = encode_prompts(text_params, TEXT, ["a photo of a red circle", "two squares"])
    chex.assert_shape(feats, (2, MAX_PROMPT_LEN, TEXT.out_dim))
    chex.assert_type(feats, jnp.float32)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [6, 2])
    assert np.all(np.asarray(feats)[~np.asarray(mask)] == 0.0)
    assert np.all(np.abs(np.asarray(feats)[np.asarray(mask)]).sum(-1) > 0)
    # left padding: the valid rows are the last ones
    assert np.asarray(mask)[1, -2:].all() and not np.asarray(mask)[1, :-2].any()


def test_text_features_are_contextual(text_params):
    # Same multiset of words in a different order: every valid row must differ.
    a, _ = encode_prompts(text_params, TEXT, ["a red circle and a blue square"])
    b, _ = encode_prompts(text_params, TEXT, ["a blue circle and a red square"])
    diff = np.abs(np.asarray(a - b)).sum(-1)[0, -7:]
    assert np.all(diff > 1e-4), diff
    # Changing one word changes the features of every other word too.
    c, _ = encode_prompts(text_params, TEXT, ["a red circle and a blue cross"])
    diff = np.abs(np.asarray(a - c)).sum(-1)[0, -7:]
    assert np.all(diff > 1e-4), diff


def test_text_errors_come_from_tokenizer(text_params):
    with pytest.raises(ValueError, match="empty"):
        encode_prompts(text_params, TEXT, [""])
    with pytest.raises(ValueError, match="vocabulary"):
        encode_prompts(text_params, TEXT, ["a photo of a banana"])


def test_config_validation():
    with pytest.raises(ValueError, match="n_head"):
        TextEncoderConfig(dim=30, n_head=4).validate()
    with pytest.raises(ValueError, match="channels"):
        RewardConfig(channels=()).validate()


def test_reward_scores_accepts_uint8_and_float():
    params = init_reward_params(REWARD, jax.random.key(1))
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    s1 = reward_scores(params, REWARD, u8, ["a red circle", "two squares"])
    s2 = reward_scores(params, REWARD, u8.astype(np.float32) / 127.5 - 1.0, ["a red circle", "two squares"])
    chex.assert_shape(s1, (2,))
    chex.assert_type(s1, jnp.float32)
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        reward_scores(params, REWARD, u8, ["a red circle"])
    with pytest.raises(ValueError, match="shape"):
        reward_scores(params, REWARD, u8[:, :8], ["a red circle", "two squares"])


def _fit(loss_fn, params, steps=8, lr=3e-3):
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        l, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    first = None
    for _ in range(steps):
        params, state, l = step(params, state)
        first = l if first is None else first
    return float(first), float(jax.jit(loss_fn)(params))


def test_reward_training_step_decreases_loss():
    params = init_reward_params(REWARD, jax.random.key(2))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32))
    ids, mask = tokenize(["a red circle", "a blue square", "two crosses", "a circle"], MAX_PROMPT_LEN)
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0])

    def loss(p):
        return optax.sigmoid_binary_cross_entropy(reward_logits(p, REWARD, x, ids, mask), y).mean()

    first, last = _fit(loss, params)
    assert last < first


def test_gpt_and_text_joint_training_step_decreases_loss():
    from scalingar_jax.config import GPTConfig
    from scalingar_jax.gpt import init_params
    from scalingar_jax.world.train import gpt_loss

    cfg = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=32, multiple_of=32, vocab_size=16,
                    cls_token_num=MAX_PROMPT_LEN, caption_dim=TEXT.out_dim, grid_size=3).validate()
    params = {"gpt": init_params(cfg, jax.random.key(3)), "text": init_text_params(TEXT, jax.random.key(4))}
    ids, mask = tokenize(["a red circle", "two squares"], MAX_PROMPT_LEN)
    codes = jnp.asarray(np.random.default_rng(2).integers(0, 16, (2, 9)), jnp.int32)
    drop = jnp.asarray([False, True])
    first, last = _fit(lambda p: gpt_loss(p, cfg, TEXT, ids, mask, codes, drop)[0], params)
    assert last < first
    # gradients reach the text encoder
    g = jax.jit(jax.grad(lambda p: gpt_loss(p, cfg, TEXT, ids, mask, codes, jnp.zeros(2, bool))[0]))(params)
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g["text"])) > 0


def test_vq_training_step_decreases_loss():
    from scalingar_jax.vq import VQConfig, init_vq_params, vq_losses

    cfg = VQConfig(codebook_size=16, codebook_embed_dim=4, ch=8, ch_mult=(1, 2), z_channels=8,
                   num_res_blocks=1, norm_groups=4).validate()
    params = init_vq_params(cfg, jax.random.key(5))
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32))
    first, last = _fit(lambda p: vq_losses(p, cfg, x)["total"], params)
    assert last < first


def test_save_load_round_trip_text_and_reward(tmp_path, text_params):
    save_model(tmp_path / "text", text_params, TEXT, kind="text")
    p, cfg = load_model(tmp_path / "text", expect_kind="text")
    assert cfg == TEXT
    chex.assert_trees_all_close(p, text_params)
    rparams = init_reward_params(REWARD, jax.random.key(6))
    save_model(tmp_path / "reward", rparams, REWARD, kind="reward")
    p, cfg = load_model(tmp_path / "reward", expect_kind="reward")
    assert cfg == REWARD and isinstance(cfg.channels, tuple)
    chex.assert_trees_all_close(p, rparams)


def test_load_world_missing_path(tmp_path, monkeypatch):
    from scalingar_jax.world.models import load_world

    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as e:
        load_world(missing)
    assert "scalingar train-world" in str(e.value)
    monkeypatch.setenv("SCALINGAR_CHECKPOINT", str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_world()
    (tmp_path / "partial").mkdir()
    with pytest.raises(FileNotFoundError, match="gpt/"):
        load_world(tmp_path / "partial", parts=("gpt",))
    with pytest.raises(ValueError, match="unknown world parts"):
        load_world(tmp_path / "partial", parts=("banana",))


def test_load_world_partial(tmp_path, text_params):
    from scalingar_jax.world.models import load_world

    save_model(tmp_path / "text", text_params, TEXT, kind="text")
    w = load_world(tmp_path, parts=("text",))
    assert w.text_cfg == TEXT and w.gpt_params is None and w.vq_cfg is None


def test_perturb_prompt_changes_meaning():
    from scalingar_jax.world.train import perturb_prompt

    rng = np.random.default_rng(0)
    for p in ["a photo of a red circle", "a photo of two squares", "a photo of a circle left of a square",
              "a photo of a red circle and a blue square", "a cross"]:
        for _ in range(5):
            q = perturb_prompt(p, rng)
            if p == "a cross":
                assert q in (None, "a circle", "a square", "a triangle")
            else:
                assert q is not None and q != p
                tokenize([q])  # stays in the vocabulary


def test_reward_pair_logits_match_per_pair_scoring():
    from scalingar_jax.world.reward import reward_pair_logits

    params = init_reward_params(REWARD, jax.random.key(6))
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32))
    ids, mask = tokenize(["a red circle", "two crosses"], MAX_PROMPT_LEN)
    pairs = jnp.asarray([[0, 0], [2, 1], [1, 0], [2, 0]], jnp.int32)
    got = reward_pair_logits(params, REWARD, x, ids, mask, pairs)
    want = reward_logits(params, REWARD, x[pairs[:, 0]], ids[np.asarray(pairs[:, 1])], mask[np.asarray(pairs[:, 1])])
    chex.assert_shape(got, (4,))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_reward_batch_labels_are_exact_string_matches():
    from scalingar_jax.world.render import default_sampler
    from scalingar_jax.world.train import _reward_batch, render_data

    recs, imgs = render_data(12, seed=5, image_size=48)
    pool = {r["prompt"]: r for g in default_sampler().pools for grp in g for r in grp}
    x, prompts, pairs, y = _reward_batch(recs, imgs, None, np.random.default_rng(0), 6, pool, n_random=3)
    chex.assert_shape(x, (12, 48, 48, 3))
    chex.assert_shape(pairs, (12 * 5, 2))
    assert len(prompts) == 12
    np.testing.assert_array_equal(y, [prompts[i] == prompts[t] for i, t in pairs])
    # every image's first candidate is its own prompt (a positive), its second the partner's
    np.testing.assert_array_equal(pairs.reshape(12, 5, 2)[:, 0, 1], np.arange(12))
    np.testing.assert_array_equal(pairs.reshape(12, 5, 2)[:, 1, 1], (np.arange(12) + 6) % 12)
    assert y.reshape(12, 5)[:, 0].all()
