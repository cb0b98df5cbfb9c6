"""Text conditioning: LlamaGen left padding, precomputed features, the T5 text encoder."""
from __future__ import annotations

import json
import os
import sys
import warnings

import chex
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from scalingar_jax import t5
from scalingar_jax.text_features import PrecomputedFeatures, T5TextEncoder, TextEncoder, left_pad

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "t5_tiny")


def _llamagen_left_pad(emb, emb_mask):
    """LlamaGen sample_t2i.py's recipe (right-padded input, length == L), in numpy."""
    new_mask = np.flip(emb_mask, axis=-1)
    rows = []
    for e, m in zip(emb, emb_mask):
        n = int(m.sum())
        rows.append(np.concatenate([e[n:], e[:n]]))
    return np.stack(rows) * new_mask[:, :, None], new_mask.astype(bool)


def _right_padded(lengths, l, c, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(len(lengths), l, c)).astype(np.float32)  # padded rows NOT zero (as T5)
    m = np.arange(l)[None, :] < np.array(lengths)[:, None]
    return f, m


# ----------------------------------------------------------------------------- left_pad

def test_left_pad_matches_llamagen_on_ragged_masks():
    f, m = _right_padded([6, 3, 1, 0], 6, 5)
    out, om = left_pad(f, m.astype(np.int32), 6)
    ref, rm = _llamagen_left_pad(f, m.astype(np.float32))
    chex.assert_shape(out, (4, 6, 5))
    assert out.dtype == np.float32 and om.dtype == bool
    np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(np.asarray(om), rm)
    # hand check of one row: 3 valid tokens in order at the end, zeros before
    np.testing.assert_array_equal(np.asarray(out)[1, 3:], f[1, :3])
    assert not np.asarray(out)[1, :3].any()
    np.testing.assert_array_equal(np.asarray(om)[1], [0, 0, 0, 1, 1, 1])


def test_left_pad_length_change_truncation_and_idempotence():
    f, m = _right_padded([4, 2], 4, 3, seed=1)
    out, om = left_pad(f, m, 7)                     # pad up
    np.testing.assert_array_equal(np.asarray(out)[0, 3:], f[0])
    np.testing.assert_array_equal(np.asarray(out)[1, 5:], f[1, :2])
    np.testing.assert_array_equal(np.asarray(om).sum(1), [4, 2])
    out2, om2 = left_pad(out, om, 7)                # already left-padded: unchanged
    np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))
    np.testing.assert_array_equal(np.asarray(om2), np.asarray(om))
    out3, om3 = left_pad(f, m, 3)                   # more valid rows than slots: first kept
    np.testing.assert_array_equal(np.asarray(out3)[0], f[0, :3])
    np.testing.assert_array_equal(np.asarray(out3)[1, 1:], f[1, :2])
    np.testing.assert_array_equal(np.asarray(om3), [[1, 1, 1], [0, 1, 1]])


def test_left_pad_scattered_mask_nan_padding_and_jit():
    f = np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2)
    f[:, 1] = np.nan                                 # only in masked rows
    m = np.array([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], bool)
    out, om = jax.jit(left_pad, static_argnums=2)(f, m, 4)
    out = np.asarray(out)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], [[0, 0], f[0, 0], f[0, 2], f[0, 4]])
    assert not out[1].any() and not np.asarray(om)[1].any()


def test_left_pad_numpy_and_jax_paths_agree():
    f, m = _right_padded([5, 2, 0], 5, 3, seed=3)
    m[0, 1] = False                                    # a hole, too
    out_e, _ = left_pad(jax.numpy.asarray(f), m, 4)    # eager jax path
    assert isinstance(out_e, jax.Array)
    np.testing.assert_array_equal(np.asarray(out_e), left_pad(f, m, 4)[0])
    for length in (3, 5, 8):
        out_np, om_np = left_pad(f, m, length)
        assert isinstance(out_np, np.ndarray) and isinstance(om_np, np.ndarray)
        out_j, om_j = jax.jit(left_pad, static_argnums=2)(f, m, length)
        assert isinstance(out_j, jax.Array)
        np.testing.assert_array_equal(np.asarray(out_j), out_np)
        np.testing.assert_array_equal(np.asarray(om_j), om_np)


def test_left_pad_errors():
    f = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="length"):
        left_pad(f, np.ones((2, 3)), 0)
    with pytest.raises(ValueError, match=r"\(B, L, C\)"):
        left_pad(f[0], np.ones((3,)), 3)
    with pytest.raises(ValueError, match="mask shape"):
        left_pad(f, np.ones((2, 4)), 3)
    with pytest.raises(TypeError, match="floating"):
        left_pad(f.astype(np.int32), np.ones((2, 3)), 3)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_left_pad_property(b, l, length, seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(b, l, 2)).astype(np.float32)
    m = rng.random((b, l)) < 0.6
    out, om = (np.asarray(x) for x in left_pad(f, m, length))
    for i in range(b):
        valid = f[i][m[i]][:length]
        n = len(valid)
        np.testing.assert_array_equal(om[i], np.arange(length) >= length - n)
        np.testing.assert_array_equal(out[i, length - n:], valid)
        assert not out[i, : length - n].any()


# ----------------------------------------------------------------------------- precomputed

def test_precomputed_npz_with_prompts(tmp_path):
    f, m = _right_padded([3, 5], 5, 4)
    p = tmp_path / "feats.npz"
    np.savez(p, features=f, mask=m, prompts=np.array(["a cat", "a red dog"]))
    enc = PrecomputedFeatures(p, length=6, dim=4)
    assert isinstance(enc, TextEncoder) and enc.length == 6 and enc.dim == 4 and len(enc) == 2
    feats, mask = enc.encode(["a red dog", "a cat", "a red dog"])
    ref, rmask = (np.asarray(x) for x in left_pad(f, m, 6))
    np.testing.assert_array_equal(feats, ref[[1, 0, 1]])
    np.testing.assert_array_equal(mask, rmask[[1, 0, 1]])
    assert feats.dtype == np.float32 and mask.dtype == bool
    with pytest.raises(KeyError, match="a blue cow"):
        enc.encode(["a cat", "a blue cow"])


def test_precomputed_prompt_keyed_llamagen_format_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 3, 4)).astype(np.float32)   # extract_t5_feature.py: (1, n, C)
    b = rng.normal(size=(2, 4)).astype(np.float64)
    p = tmp_path / "by_prompt.npz"
    np.savez(p, **{"a photo of a cat": a, "two dogs / one cat": b})
    enc = PrecomputedFeatures(p, length=5)
    feats, mask = enc.encode(["two dogs / one cat", "a photo of a cat"])
    np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    np.testing.assert_allclose(feats[0, 3:], b.astype(np.float32))
    np.testing.assert_array_equal(feats[1, 2:], a[0])
    assert not feats[0, :3].any()

    q = tmp_path / "one.npy"
    np.save(q, a)
    feats, mask = PrecomputedFeatures(q, length=4).encode(["anything"])
    np.testing.assert_array_equal(feats[0, 1:], a[0])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1]])


def test_precomputed_positional(tmp_path):
    f, m = _right_padded([2, 1, 3], 3, 2)
    p = tmp_path / "pos.npz"
    np.savez(p, features=f, mask=m.astype(np.int64))
    enc = PrecomputedFeatures(p, length=3)
    feats, mask = enc.encode(["x", "y", "z"])
    np.testing.assert_array_equal(mask, np.asarray(left_pad(f, m, 3)[1]))
    with pytest.raises(ValueError, match="3 unnamed row"):
        enc.encode(["x"])


def test_precomputed_errors(tmp_path):
    good = np.zeros((2, 3, 4), np.float32)

    def write(name, **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    with pytest.raises(ValueError, match=r"\(B, L, C\)"):
        PrecomputedFeatures(write("a.npz", features=good[0]))
    with pytest.raises(ValueError, match="mask shape"):
        PrecomputedFeatures(write("b.npz", features=good, mask=np.ones((2, 4), bool)))
    with pytest.raises(ValueError, match="bool or 0/1"):
        PrecomputedFeatures(write("c.npz", features=good, mask=np.full((2, 3), 2)))
    with pytest.raises(ValueError, match="floating point"):
        PrecomputedFeatures(write("d.npz", features=good.astype(np.int32)))
    with pytest.raises(ValueError, match="feature dim 4 != expected dim 2048"):
        PrecomputedFeatures(write("e.npz", features=good), dim=2048)
    with pytest.raises(ValueError, match="unexpected arrays"):
        PrecomputedFeatures(write("f.npz", features=good, extra=good))
    with pytest.raises(ValueError, match="'prompts' must be"):
        PrecomputedFeatures(write("g.npz", features=good, prompts=np.array(["only one"])))
    with pytest.raises(ValueError, match="duplicate prompts"):
        PrecomputedFeatures(write("h.npz", features=good, prompts=np.array(["p", "p"])))
    with pytest.raises(ValueError, match="entry 'p'"):
        PrecomputedFeatures(write("i.npz", p=good))
    with pytest.raises(ValueError, match="different feature dims"):
        PrecomputedFeatures(write("j.npz", p=good[0], q=np.zeros((3, 5), np.float32)))
    with pytest.raises(ValueError, match="NaN"):
        PrecomputedFeatures(write("k.npz", features=np.full((1, 2, 2), np.nan, np.float32)))
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array({"p": good}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        PrecomputedFeatures(obj)
    with pytest.raises(FileNotFoundError):
        PrecomputedFeatures(tmp_path / "nope.npz")
    enc = PrecomputedFeatures(write("ok.npz", features=good))
    with pytest.raises(ValueError, match="empty list"):
        enc.encode([])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        enc.encode(["fine", "  "])
    with pytest.raises(TypeError, match="single str"):
        enc.encode("a cat")


# ----------------------------------------------------------------------------- T5

@pytest.fixture(scope="module")
def tiny():
    return t5.load_hf_t5_encoder(FIXTURE)


def _fake_tokenizer(text):
    """Deterministic stand-in for SentencePiece: one id per character (ids 3..99)."""
    return [3 + (ord(ch) % 97) for ch in text]


def test_t5_text_encoder_tokenize_and_encode(tiny):
    params, cfg = tiny
    enc = T5TextEncoder(FIXTURE, max_length=8, length=10, tokenizer=_fake_tokenizer,
                        batch_size=2, params=params, cfg=cfg)
    assert isinstance(enc, TextEncoder) and enc.dim == cfg.d_model and enc.length == 10
    prompts = ["Ab", "a much longer prompt", "xyz"]
    with pytest.warns(UserWarning, match=r"prompt 1 is 20 pieces long.*last 13 piece\(s\) are cut") as rec:
        ids, mask = enc.tokenize(prompts)
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # exactly max_length - 1 pieces: no warning
        enc.tokenize(["a" * 7, "b"])
    with pytest.warns(UserWarning, match="prompt 0 is 8 pieces.*last 1 piece"):
        enc.tokenize(["a" * 8])
    np.testing.assert_array_equal(ids[0], _fake_tokenizer("ab") + [1] + [0] * 5)  # lowercased
    np.testing.assert_array_equal(ids[1], _fake_tokenizer("a much longer prompt")[:7] + [1])
    np.testing.assert_array_equal(mask.sum(1), [3, 8, 4])
    with pytest.warns(UserWarning, match="prompt 1"):
        feats, fmask = enc.encode(prompts)
    chex.assert_shape(feats, (3, 10, cfg.d_model))
    assert feats.dtype == np.float32 and fmask.dtype == bool
    # == Flax encoder on the whole batch, then LlamaGen left padding (chunking is invisible)
    h = np.asarray(t5.encode(params, cfg, ids, mask))
    ref, rmask = (np.asarray(x) for x in left_pad(h, mask, 10))
    np.testing.assert_allclose(feats, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fmask, rmask)
    assert not feats[0, :7].any()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        enc.encode(["ok", ""])
    with pytest.raises(ValueError, match="empty list"):
        enc.encode([])
    with pytest.raises(ValueError, match="max_length"):
        T5TextEncoder(FIXTURE, max_length=1, tokenizer=_fake_tokenizer)


def test_t5_text_encoder_missing_sentencepiece(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        T5TextEncoder(FIXTURE)


def test_t5_text_encoder_sentencepiece_matches_hf_tokenizer(tiny):
    """transformers' T5 tokenizer output (stored in the fixture) from spiece.model."""
    pytest.importorskip("sentencepiece", reason="sentencepiece not installed (optional)")
    with open(os.path.join(FIXTURE, "tokenizer_expected.json")) as f:
        ref = json.load(f)
    params, cfg = tiny
    enc = T5TextEncoder(FIXTURE, max_length=ref["max_length"], preprocess=None,
                        params=params, cfg=cfg)
    with pytest.warns(UserWarning, match="truncated") as rec:   # HF truncates silently
        ids, mask = enc.tokenize(ref["prompts"])
    cut = (np.array(ref["attention_mask"]).sum(1) == ref["max_length"])
    assert [str(w.message).split()[1] for w in rec] == [str(i) for i in np.flatnonzero(cut)]
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"], bool))
