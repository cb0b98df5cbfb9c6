"""The Flax T5 encoder and its torch-free HF loader.

Always run (no torch): the tiny HF fixture ``tests/fixtures/t5_tiny`` (made once by
``conversion/make_t5_fixture.py`` with transformers' ``T5EncoderModel``, reference computed in
float64) is loaded with ``load_hf_t5_encoder`` and must reproduce the stored hidden states;
relative-position buckets against a hand-computed table and HF's table; loader strictness and
formats. Optional: a live comparison with transformers when torch + transformers are importable.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from scalingar_jax import t5
from scalingar_jax.convert import safetensors as st
from scalingar_jax.convert.torch_pickle import save_torch_state_dict
from scalingar_jax.t5 import T5Config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "t5_tiny")


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def tiny():
    params, cfg = t5.load_hf_t5_encoder(FIXTURE)
    return params, cfg


@pytest.fixture(scope="module")
def fixture_tensors():
    tensors, _ = st.load_file(os.path.join(FIXTURE, "model.safetensors"))
    return {k: v.numpy() for k, v in tensors.items()}


# ----------------------------------------------------------------------------- config

def test_config_from_fixture_and_preset():
    with open(os.path.join(FIXTURE, "config.json")) as f:
        cfg = T5Config.from_hf_config(json.load(f))
    assert cfg == T5Config(vocab_size=100, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_heads=4,
                           relative_attention_num_buckets=8, relative_attention_max_distance=20,
                           layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu")
    assert cfg.is_gated and cfg.activation == "gelu_new" and cfg.inner_dim == 24
    hash(cfg)
    # google/flan-t5-xl config.json (the fields that matter), as published.
    xl = {"model_type": "t5", "vocab_size": 32128, "d_model": 2048, "d_kv": 64, "d_ff": 5120,
          "num_layers": 24, "num_decoder_layers": 24, "num_heads": 32,
          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
          "layer_norm_epsilon": 1e-06, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1,
          "tie_word_embeddings": False}
    assert T5Config.from_hf_config(xl) == t5.T5_PRESETS["flan-t5-xl"]


def test_config_errors():
    with pytest.raises(ValueError, match="missing required field"):
        T5Config.from_hf_config({"model_type": "t5", "d_model": 8})
    with pytest.raises(ValueError, match="not a T5 config"):
        T5Config.from_hf_config({"model_type": "llama"})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-swish")
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="foo-gelu")
    with pytest.raises(ValueError, match="d_model"):
        T5Config(d_model=0)
    with pytest.raises(ValueError, match="num_buckets"):
        T5Config(relative_attention_num_buckets=7)
    # HF's default for a config without feed_forward_proj is the v1.0 relu FFN.
    legacy = {"vocab_size": 10, "d_model": 8, "d_kv": 2, "d_ff": 16, "num_layers": 1, "num_heads": 4}
    c = T5Config.from_hf_config(legacy)
    assert c.feed_forward_proj == "relu" and not c.is_gated
    assert c.relative_attention_max_distance == 128


# ----------------------------------------------------------------------------- buckets

def test_relative_position_bucket_hand_table():
    # num_buckets=32, max_distance=128: 16 buckets per direction, |r| < 8 exact, then
    # 8 + trunc(log(|r|/8) / log(16) * 8) capped at 15; keys after the query add 16.
    hand = {0: 0, -1: 1, -7: 7, -8: 8, -11: 8, -12: 9, -15: 9, -16: 10, -31: 11, -32: 12,
            -63: 13, -64: 14, -90: 14, -91: 15, -127: 15, -128: 15, -5000: 15,
            1: 17, 7: 23, 8: 24, 12: 25, 16: 26, 32: 28, 64: 30, 91: 31, 128: 31, 999: 31}
    r = np.array(list(hand))
    got = t5.relative_position_bucket(r, 32, 128)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.array(list(hand.values())))
    # num_buckets=8, max_distance=20: 4 per direction, |r| < 2 exact, then
    # 2 + trunc(log(|r|/2) / log(10) * 2) capped at 3.
    hand8 = {0: 0, -1: 1, -2: 2, -3: 2, -4: 2, -5: 2, -6: 2, -7: 3, -20: 3, 1: 5, 2: 6, 6: 6,
             7: 7, 300: 7}
    np.testing.assert_array_equal(t5.relative_position_bucket(np.array(list(hand8)), 8, 20),
                                  np.array(list(hand8.values())))


def test_relative_position_bucket_matches_hf_table():
    ref = np.load(os.path.join(FIXTURE, "buckets.npz"))
    r = ref["relative_position"]
    for nb, md in ((32, 128), (8, 20)):
        np.testing.assert_array_equal(t5.relative_position_bucket(r, nb, md), ref[f"b{nb}_{md}"])


# ----------------------------------------------------------------------------- fixture

def test_fixture_hidden_states(tiny):
    """HF T5EncoderModel output (float64) on ragged right- and left-padded rows, all positions."""
    params, cfg = tiny
    ids = np.load(os.path.join(FIXTURE, "input_ids.npy"))
    mask = np.load(os.path.join(FIXTURE, "attention_mask.npy"))
    expected = np.load(os.path.join(FIXTURE, "expected.npy"))
    out = t5.encode(params, cfg, ids, mask)
    chex.assert_shape(out, (4, 24, cfg.d_model))
    chex.assert_type(out, np.float32)
    assert _rel_err(out, expected) <= 1e-5


def test_padding_does_not_leak(tiny):
    """Valid positions are unaffected by what sits in masked positions."""
    params, cfg = tiny
    ids = np.load(os.path.join(FIXTURE, "input_ids.npy"))
    mask = np.load(os.path.join(FIXTURE, "attention_mask.npy"))
    ids2 = np.where(mask == 1, ids, (ids * 7 + 5) % cfg.vocab_size).astype(np.int32)
    a = np.asarray(t5.encode(params, cfg, ids, mask))
    b = np.asarray(t5.encode(params, cfg, ids2, mask))
    np.testing.assert_allclose(a[mask == 1], b[mask == 1], rtol=1e-5, atol=1e-5)


def test_param_tree_matches_init(tiny):
    """The converted tree is exactly the tree the module declares (nothing unused, nothing missing)."""
    params, cfg = tiny
    ref = jax.eval_shape(lambda k: t5.init_params(k, cfg), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(ref, params)
    relu = dataclasses.replace(cfg, feed_forward_proj="relu")
    shapes = jax.eval_shape(lambda k: t5.init_params(k, relu), jax.random.key(0))
    assert set(shapes["block_0"]["ffn"]) == {"wi", "wo"}


def test_encode_input_errors(tiny):
    params, cfg = tiny
    ids = np.ones((2, 5), np.int32)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        t5.encode(params, cfg, ids[0], None)
    with pytest.raises(ValueError, match="attention_mask shape"):
        t5.encode(params, cfg, ids, np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="out of range"):
        t5.encode(params, cfg, ids * cfg.vocab_size, np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="out of range"):
        t5.encode(params, cfg, -ids, None)
    with pytest.raises(TypeError, match="integer"):
        t5.encode(params, cfg, ids.astype(np.float32), np.ones((2, 5), bool))


# ----------------------------------------------------------------------------- loader

def _copy_config(dst):
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(FIXTURE, "config.json"), dst)


def test_loader_sharded_safetensors_and_bin(tmp_path, tiny, fixture_tensors):
    params, _ = tiny
    names = sorted(fixture_tensors)
    half = len(names) // 2
    # sharded safetensors + index, with decoder junk (never read) in its own shard
    d = tmp_path / "sharded"
    _copy_config(d)
    shards = {"model-00001-of-00003.safetensors": names[:half],
              "model-00002-of-00003.safetensors": names[half:]}
    for fname, keys in shards.items():
        st.save_file(d / fname, {k: fixture_tensors[k] for k in keys})
    st.save_file(d / "model-00003-of-00003.safetensors",
                 {"decoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((3, 3), np.float32)})
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    weight_map["decoder.block.0.layer.0.SelfAttention.q.weight"] = "model-00003-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    os.remove(d / "model-00003-of-00003.safetensors")  # decoder shard must not even be opened
    p2, _ = t5.load_hf_t5_encoder(d)
    chex.assert_trees_all_equal(params, p2)

    # pytorch_model.bin (torch zip written without torch), embedding under its encoder name,
    # bf16 weights upcast to float32
    d = tmp_path / "bin"
    _copy_config(d)
    sd = dict(fixture_tensors)
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    sd["lm_head.weight"] = np.zeros((2, 2), np.float32)
    save_torch_state_dict(d / "pytorch_model.bin", sd)
    p3, _ = t5.load_hf_t5_encoder(d)
    chex.assert_trees_all_equal(params, p3)


def test_loader_bf16(tmp_path, fixture_tensors):
    import ml_dtypes

    d = tmp_path / "bf16"
    _copy_config(d)
    st.save_file(d / "model.safetensors",
                 {k: v.astype(ml_dtypes.bfloat16) for k, v in fixture_tensors.items()})
    p, _ = t5.load_hf_t5_encoder(d)
    leaf = p["block_0"]["attn"]["q"]["kernel"]
    assert leaf.dtype == np.float32
    ref = fixture_tensors["encoder.block.0.layer.0.SelfAttention.q.weight"].T
    np.testing.assert_allclose(leaf, ref, rtol=1e-2)


def test_loader_strict(tmp_path, fixture_tensors):
    d = tmp_path / "missing"
    _copy_config(d)
    sd = dict(fixture_tensors)
    del sd["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    st.save_file(d / "model.safetensors", sd)
    with pytest.raises(KeyError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight"):
        t5.load_hf_t5_encoder(d)

    d = tmp_path / "shape"
    _copy_config(d)
    sd = dict(fixture_tensors)
    sd["encoder.block.0.layer.0.SelfAttention.o.weight"] = np.zeros((24, 32), np.float32)
    st.save_file(d / "model.safetensors", sd)
    with pytest.raises(ValueError, match=r"SelfAttention\.o\.weight.*\(32, 24\).*\(24, 32\)"):
        t5.load_hf_t5_encoder(d)

    d = tmp_path / "noweights"
    _copy_config(d)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        t5.load_hf_t5_encoder(d)
    with pytest.raises(FileNotFoundError, match="config.json"):
        t5.load_hf_t5_encoder(tmp_path)
    with pytest.raises(KeyError, match="shared.weight"):
        t5.convert_hf_t5_encoder({}, T5Config(d_model=8, d_kv=2, d_ff=8, num_layers=1,
                                              num_heads=4, vocab_size=10))


# ----------------------------------------------------------------------------- transformers

def _transformers():
    torch = pytest.importorskip("torch", reason="torch not importable (optional live check)")
    transformers = pytest.importorskip("transformers", reason="transformers not importable")
    return torch, transformers


@pytest.mark.parametrize("ffp", ["gated-gelu", "relu"])
def test_against_transformers(ffp):
    """Live: random tiny T5EncoderModel (default 32/128 buckets, L=150 > max_distance)."""
    torch, transformers = _transformers()
    torch.manual_seed(0)
    hf_cfg = transformers.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                                   num_heads=2, feed_forward_proj=ffp, dropout_rate=0.0)
    model = transformers.T5EncoderModel(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape))
    cfg = T5Config.from_hf_config(hf_cfg.to_dict())
    params = t5.convert_hf_t5_encoder(
        {k: v.detach().numpy() for k, v in model.state_dict().items()}, cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 50, size=(2, 150)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 97:] = 0
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids).long(),
                    attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    out = np.asarray(t5.encode(params, cfg, ids, mask))
    assert np.max(np.abs(out - ref)) <= 1e-4
