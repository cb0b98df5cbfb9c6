"""Janus-Pro as a second model family (issue 30), without torch.

tests/fixtures/janus_tiny/ holds a tiny random Janus-Pro made with Janus's own classes and saved in
the released layout (released/: pytorch_model.bin; released_sharded/: two shards and their index),
and what Janus's own generation_inference.py `generate` made of it greedily at cfg 1 and 5 (the
prompts' input ids, tokens, decode_code's float images, the uint8 images it writes), all written by
conversion/make_janus_fixture.py. Here both folders go through `assemble_janus_bundle` and the
bundle's loader, and a greedy loop over `janus.prefill_candidates` / `janus.decode_step` (what
`janus.JanusModel`, the engine's `TokenModel`, calls) with the project's sampling (`decode.next_tokens`) must give the
same step distributions within 1e-4 (log-probabilities of the guided logits, which Janus's
`torch.multinomial` received) and, since every step's top-1 leads by more than twice that, provably
the same tokens, float images within 1e-4 and the same uint8 pixels wherever the
float value is not within 1e-3 of a rounding boundary. Then unit tests: RoPE against a NumPy
reference, GQA against repeated key/value heads, left padding against an unpadded prompt, the
cached decode against one full pass, bf16, and the hostile-input rules of the conversion. Last,
the command line and the engine LlamaGen uses (`janus.JanusModel` as its `TokenModel`):
`scalingar bundle --janus` and `scalingar generate` (plain at top-k 1, i.e. greedy: Janus's
tokens again; scalingar -n 8; a GenEval prompt file through the prompt pool; a 1 x 2 mesh in a
subprocess) and the batched and pooled strategies.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from scalingar_jax import cli, decode, janus, vq
from scalingar_jax.bundle import read_bundle
from scalingar_jax.config import SamplingConfig
from scalingar_jax.convert import janus as CJ
from scalingar_jax.convert.torch_pickle import load_state_dict, save_torch_state_dict
from scalingar_jax.images import read_png
from scalingar_jax.janus_bundle import (JanusTokenizer, assemble_janus_bundle, pipeline_from_bundle, sft_prompt,
                                        to_uint8_janus)
from scalingar_jax.pipeline import Pipeline, generate, load_pipeline
from scalingar_jax.scaling.options import Pool, Schedule, Strategy

FIX = Path(__file__).parent / "fixtures" / "janus_tiny"
FACTS = json.loads((FIX / "expected.json").read_text(encoding="utf-8"))
PROMPTS = FACTS["prompts"]
GRID, GROUPS = FACTS["grid_size"], FACTS["vq_norm_groups"]
PROMPT_LEN = 48


@pytest.fixture(scope="module")
def expected():
    with np.load(FIX / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def _assemble(out, src=FIX / "released", **kw):
    return assemble_janus_bundle(out, src, grid_size=GRID, prompt_len=PROMPT_LEN, vq_norm_groups=GROUPS,
                                 log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """The fp32 pipelines of both released layouts and a bf16 one."""
    root = tmp_path_factory.mktemp("janus")
    out = {"single": _assemble(root / "single"), "sharded": _assemble(root / "sharded", FIX / "released_sharded"),
           "bf16": _assemble(root / "bf16", dtype="bfloat16")}
    return {k: pipeline_from_bundle(read_bundle(v)) for k, v in out.items()}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _greedy(params, ids, mask, scale, *, cfg):
    """Greedy CFG generation, one candidate per prompt: tokens (P, T) and the filtered guided
    logits each token was drawn from (P, T, V)."""
    sampling = SamplingConfig(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0)
    logits, cache = janus.prefill_candidates(params, cfg, ids, mask, num_candidates=1, use_cfg=True)
    P, T = ids.shape[0], cfg.block_size
    keys = jax.random.split(jax.random.key(0), P)

    def draw(logits, k):
        lc, lu = decode.split_cfg(logits, True)
        dist = decode.sampling_logits(sampling, lc, lu, scale, k, True)
        return decode.next_tokens(sampling, lc, lu, scale, keys, k, True, greedy=True), dist

    def body(k, carry):
        logits, cache, tokens, dists = carry
        tok, dist = draw(logits, k)
        logits, cache = janus.decode_step(params, cfg, cache, jnp.concatenate([tok, tok]), k)
        return logits, cache, tokens.at[:, k].set(tok), dists.at[:, k].set(dist)

    carry = (logits, cache, jnp.zeros((P, T), jnp.int32), jnp.zeros((P, T, cfg.vocab_size), jnp.float32))
    logits, cache, tokens, dists = jax.lax.fori_loop(0, T - 1, body, carry)
    tok, dist = draw(logits, T - 1)
    return tokens.at[:, T - 1].set(tok), dists.at[:, T - 1].set(dist)


def decode_float(pipe, tokens):
    """Image tokens (B, T) -> the VQ's float images (B, H, W, 3), unclipped (Janus's decode_code)."""
    g = pipe.gpt_cfg.grid_size
    return np.asarray(vq.decode_codes(pipe.vq_params, pipe.vq_cfg, jnp.asarray(tokens).reshape(-1, g, g), clip=False))


def greedy(pipe, prompts, scale):
    ids, mask = pipe.condition(prompts)
    janus.validate_condition(pipe.gpt_cfg, ids, mask)
    tokens, dists = _greedy(pipe.gpt_params, jnp.asarray(ids), jnp.asarray(mask), jnp.float32(scale), cfg=pipe.gpt_cfg)
    return np.asarray(tokens), np.asarray(dists)


# ------------------------------------------------------------------------------ equal to Janus's own generation
def test_prompt_ids_are_janus_processors(pipes, expected):
    ids, mask = pipes["single"].condition(PROMPTS)
    want = expected["input_ids"]  # left padded with -1 to the longest prompt
    assert [sft_prompt(p) for p in PROMPTS] == FACTS["texts"]
    np.testing.assert_array_equal(ids[:, -want.shape[1]:][want >= 0], want[want >= 0])
    np.testing.assert_array_equal(mask.sum(axis=1), (want >= 0).sum(axis=1))
    assert not ids[~mask].any() and ids[:, -1].tolist() == [FACTS["image_start_id"]] * len(PROMPTS)
    assert (pipes["single"].gpt_cfg.pad_id, ids[0, -int(mask[0].sum())]) == (FACTS["pad_id"], FACTS["bos_id"])


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("scale", FACTS["cfg_weights"])
def test_greedy_generation_equals_janus(pipes, expected, layout, scale):
    pipe, tag = pipes[layout], f"cfg{scale:g}"
    tokens, dists = greedy(pipe, PROMPTS, scale)
    # every step's distribution is Janus's within TOL (log-probabilities), and its top-1 leads by
    # more than 2 TOL: Janus's argmax is then provably ours, whatever the rounding
    TOL = 1e-4
    ours = np.asarray(jax.nn.log_softmax(dists, axis=-1))
    np.testing.assert_allclose(ours, np.log(expected[f"{tag}_probs"]), atol=TOL, rtol=0)
    top2 = np.sort(ours, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 2 * TOL
    np.testing.assert_array_equal(tokens, expected[f"{tag}_tokens"])
    images = decode_float(pipe, tokens)
    np.testing.assert_allclose(images, expected[f"{tag}_images"], atol=1e-4, rtol=0)
    scaled = np.clip((expected[f"{tag}_images"] + 1) / 2 * 255, 0, 255)
    clear = np.abs(scaled - np.round(scaled)) > 1e-3  # not at a truncation boundary
    u8 = pipe.decode_images(tokens)
    np.testing.assert_array_equal(u8[clear], expected[f"{tag}_uint8"][clear])
    assert np.abs(u8.astype(int) - expected[f"{tag}_uint8"]).max() <= 1
    assert clear.mean() > 0.95


def test_bf16_bundle_is_bf16_and_close_to_fp32(pipes):
    bf, fp = pipes["bf16"], pipes["single"]
    assert {x.dtype for x in jax.tree.leaves(bf.gpt_params)} == {jnp.dtype(jnp.bfloat16)}
    assert bf.gpt_cfg.dtype == "bfloat16" and bf.vq_cfg.param_dtype == "float32"
    ids, mask = bf.condition(PROMPTS)
    lb, cache = _prefill(bf.gpt_params, bf.gpt_cfg, ids, mask)
    lf, _ = _prefill(fp.gpt_params, fp.gpt_cfg, ids, mask)
    assert lb.dtype == jnp.float32 and cache.k[0].dtype == jnp.bfloat16
    assert np.abs(np.asarray(lb) - np.asarray(lf)).max() < 0.05 * np.abs(np.asarray(lf)).max()
    lb2, _ = _decode_step(bf.gpt_params, bf.gpt_cfg, cache, jnp.zeros((2 * len(PROMPTS),), jnp.int32), jnp.int32(0))
    assert np.isfinite(np.asarray(lb2)).all()


def test_uint8_rounding_is_janus_truncation():
    x = np.array([-1.5, -1.0, -0.00001, 0.0, 0.999, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(to_uint8_janus(x), [0, 0, 127, 127, 254, 255, 255])
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_janus(np.array([np.nan], np.float32))


# ------------------------------------------------------------------------------ the model, unit by unit
TINY = janus.JanusConfig(text_vocab_size=40, dim=32, n_layer=2, n_head=4, n_kv_head=2, ffn_hidden=48, vocab_size=24,
                         image_embed_dim=8, gen_head_dim=20, grid_size=2, prompt_len=8, pad_id=3)


@pytest.fixture(scope="module")
def tiny_params():
    """Random TINY parameters in the stored layout (`janus.param_shapes`), drawn with NumPy: kernels
    normal(1 / sqrt(fan_in)), so attention is far from uniform and a misrouted head shows; random
    biases and norm weights; normal(1) embeddings. (`janus.init_params` would compile Flax's
    random init for seconds; any parameters serve these tests.)"""
    rng = np.random.default_rng(1)

    def draw(path, x):
        name = path[-1].key
        scale = x.shape[-2] ** -0.5 if name == "kernel" else {"bias": 0.1, "embedding": 1.0, "weight": 0.1}[name]
        return jnp.asarray((name == "weight") + scale * rng.standard_normal(x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, janus.param_shapes(TINY))


def test_model_rules_split_every_matmul_and_match_real_names(tiny_params):
    """Every rule of `janus.MODEL_RULES` names leaves that exist (a renamed weight would leave
    its rule silently unused), and with them a model axis of 2 splits q/k/v, o, gate/up, down,
    the embedding and the image head on the documented dimension; norms stay replicated."""
    from jax.sharding import PartitionSpec as P

    from scalingar_jax import sharding

    names = [sharding.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tiny_params)[0]]
    for pattern, _ in janus.MODEL_RULES:
        assert any(re.search(pattern, n) for n in names), pattern
    specs = {sharding.param_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        sharding.param_specs(tiny_params, "model", 2, rules=janus.MODEL_RULES),
        is_leaf=lambda x: isinstance(x, P))[0]}
    leaves = {sharding.param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tiny_params)[0]}
    split = {n: s for n, s in specs.items() if s != P()}
    for n, s in split.items():
        dim = list(s).index("model")
        assert leaves[n].shape[dim] % 2 == 0, n
    kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "gen_head"}
    assert {k for k in kinds if any(k in n for n in split)} == kinds
    assert not any("norm" in n for n in split)
    o = next(n for n in split if "o_proj/kernel" in n)
    assert list(specs[o]).index("model") == leaves[o].ndim - 2  # row parallel: the input features


def test_rope_matches_a_numpy_reference():
    """Hugging Face Llama's rotate-half RoPE: inv_freq = base^(-2i/d), emb = [f, f], x cos + rot(x) sin."""
    cfg = dataclasses.replace(TINY, rope_base=500.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, cfg.head_dim)).astype(np.float32)
    pos = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    d = cfg.head_dim
    inv = 1.0 / (500.0 ** (np.arange(0, d, 2) / d))
    ang = np.concatenate([pos[..., None] * inv] * 2, axis=-1)[:, :, None]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    want = x * np.cos(ang) + rot * np.sin(ang)
    cos, sin = janus.rope_cos_sin(cfg, jnp.asarray(pos))
    np.testing.assert_allclose(janus.apply_rope(jnp.asarray(x), cos, sin), want, atol=2e-5)


_prefill = jax.jit(janus.prefill, static_argnums=1, static_argnames=("use_cfg", "max_len"))
_decode_step = jax.jit(janus.decode_step, static_argnums=1)


def _last_logits(params, cfg, ids, mask):
    return np.asarray(_prefill(params, cfg, ids, mask, use_cfg=False)[0])


def test_gqa_equals_multi_head_with_repeated_kv_heads(tiny_params):
    """Query head h reads kv head h // (n_head / n_kv_head): an MHA model whose k/v projections
    repeat each kv head's columns that many times gives the same logits."""
    mha = dataclasses.replace(TINY, n_kv_head=None)
    rep, hd = TINY.n_head // TINY.kv_heads, TINY.head_dim
    p = jax.tree.map(np.asarray, tiny_params)
    attn = dict(p["layers"]["self_attn"])
    for name in ("k_proj", "v_proj"):
        k = attn[name]["kernel"]  # (L, dim, Hkv * hd)
        blocks = k.reshape(*k.shape[:2], TINY.kv_heads, 1, hd)
        attn[name] = {"kernel": np.broadcast_to(blocks, (*k.shape[:2], TINY.kv_heads, rep, hd)).reshape(
            *k.shape[:2], TINY.n_head * hd)}
    p_mha = {**p, "layers": {**p["layers"], "self_attn": attn}}
    ids = np.array([[0, 0, 1, 5, 7, 9, 11, 2]], np.int32)
    mask = np.array([[False, False] + [True] * 6])
    np.testing.assert_allclose(_last_logits(p_mha, mha, ids, mask), _last_logits(tiny_params, TINY, ids, mask),
                               atol=1e-5)


def test_left_padding_is_invisible(tiny_params):
    """A prompt padded on the left gives the logits it gets alone, and its cached keys are rotated
    by Hugging Face's positions (counted from BOS, not from the first slot): RoPE is relative, so
    only the keys show an offset."""
    row = [1, 5, 7, 9, 2]
    alone = dataclasses.replace(TINY, prompt_len=len(row))
    want, want_cache = _prefill(tiny_params, alone, np.array([row], np.int32), np.ones((1, len(row)), bool),
                                use_cfg=False)
    ids = np.array([[6, 6, 6] + row], np.int32)  # junk under the padding must not matter either
    mask = np.array([[False] * 3 + [True] * len(row)])
    got, cache = _prefill(tiny_params, TINY, ids, mask, use_cfg=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for layer in range(TINY.n_layer):
        np.testing.assert_allclose(cache.k[layer][:, :, 3:8], want_cache.k[layer][:, :, :5], atol=1e-5)


def test_uncond_rows_pad_between_bos_and_begin_of_image():
    ids = np.array([[0, 0, 1, 5, 7, 2], [1, 5, 7, 9, 11, 2]], np.int32)
    mask = np.array([[False, False, True, True, True, True], [True] * 6])
    cfg = dataclasses.replace(TINY, prompt_len=6)
    np.testing.assert_array_equal(janus.uncond_ids(cfg, ids, mask), [[0, 0, 1, 3, 3, 2], [1, 3, 3, 3, 3, 2]])


def test_cached_decode_equals_one_full_pass(tiny_params):
    """prefill then decode_step (per-row token indices) = the decoder run once over prompt + image tokens."""
    params = janus.decode_layout(tiny_params)
    ids = np.array([[0, 0, 0, 1, 5, 7, 9, 2], [1, 5, 7, 9, 11, 13, 15, 2]], np.int32)
    mask = ids > 0
    toks = np.array([[3, 8, 1], [17, 2, 5]], np.int32)
    logits, cache = _prefill(params, TINY, ids, mask, use_cfg=False)
    steps = [np.asarray(logits)]
    for k in range(toks.shape[1]):
        logits, cache = _decode_step(params, TINY, cache, jnp.asarray(toks[:, k]), jnp.full((2,), k, jnp.int32))
        steps.append(np.asarray(logits))

    def full(m):
        h = jnp.concatenate([m.embed_text(ids), m.embed_image(toks)], axis=1)
        out, _ = m(h, janus.init_cache(TINY, 2, None, mask), 0)
        return m.image_logits(out[:, TINY.prompt_len - 1:])

    want = np.asarray(jax.jit(nn.apply(full, janus.JanusGenerator(TINY)))({"params": params}))
    np.testing.assert_allclose(np.stack(steps, 1), want, atol=2e-5)


def test_condition_checks():
    ids = np.zeros((1, TINY.prompt_len), np.int32)
    with pytest.raises(ValueError, match="left padding"):
        janus.validate_condition(TINY, ids, np.array([[True, False] + [True] * 6]))
    with pytest.raises(ValueError, match="at least 2"):
        janus.validate_condition(TINY, ids, np.array([[False] * 7 + [True]]))
    with pytest.raises(ValueError, match="token ids must be in"):
        janus.validate_condition(TINY, ids + 40, np.ones((1, 8), bool))
    with pytest.raises(ValueError, match="shape"):
        janus.validate_condition(TINY, ids[:, :4], np.ones((1, 4), bool))


def test_presets_are_janus_pro_sizes():
    one, seven = janus.janus_config("Janus-Pro-1B"), janus.janus_config("Janus-Pro-7B")
    assert (one.dim, one.n_layer, one.n_head, one.ffn_hidden, one.block_size) == (2048, 24, 16, 5632, 576)
    assert (seven.dim, seven.n_layer, seven.n_head, seven.ffn_hidden) == (4096, 30, 32, 11008)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(janus.param_shapes(seven)))
    assert 6.5e9 < n < 7.5e9, n


# ------------------------------------------------------------------------------ hostile released folders
def _copy(tmp_path, src=FIX / "released") -> Path:
    dst = tmp_path / "janus"
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    record = json.loads((folder / "config.json").read_text())
    for path, value in changes.items():
        node = record
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (folder / "config.json").write_text(json.dumps(record))


def _edit_weights(folder: Path, fn) -> None:
    sd = {k: v.numpy() for k, v in load_state_dict(folder / "pytorch_model.bin")[0].items()}
    save_torch_state_dict(folder / "pytorch_model.bin", fn(sd))


def _one_line_error(exc_info, *names):
    msg = str(exc_info.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_huge_layer_count_is_refused_before_any_allocation(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, language_config__num_hidden_layers=10**9)
    tracemalloc.start()
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    _one_line_error(e, "config.json", "num_hidden_layers")
    assert peak < 64 << 20, peak


@pytest.mark.parametrize("change, words", [
    ({"language_config__num_hidden_layers": 3}, ["num_hidden_layers is 3", "layers 0..1"]),
    ({"language_config__hidden_size": 64}, ["gen_aligner_config.params.n_embed is 32", "64"]),
    ({"language_config__hidden_size": 64, "gen_aligner_config__params__n_embed": 64, "gen_head_config__params__n_embed": 64},
     ["embed_tokens.weight", "(320, 32)", "(320, 64)"]),
    ({"language_config__num_key_value_heads": 4}, ["k_proj.weight"]),
    ({"language_config__rope_scaling": {"type": "linear", "factor": 2.0}}, ["rope_scaling"]),
    ({"gen_head_config__params__image_token_size": 16384}, ["image_token_size", "32"]),
    ({"gen_head_config__params__image_token_embed": 4096}, ["output_mlp_projector.weight"]),
    ({"gen_vision_config__cls": "VQ-8"}, ["gen_vision_config.cls"]),
    ({"language_config__vocab_size": -1}, ["vocab_size"]),
])
def test_config_numbers_are_checked_against_the_weights(tmp_path, change, words):
    folder = _copy(tmp_path)
    _edit_config(folder, **change)
    with pytest.raises((ValueError, KeyError)) as e:
        assemble_janus_bundle(tmp_path / "out", folder, grid_size=GRID, vq_norm_groups=GROUPS, log=lambda m: None)
    _one_line_error(e, *words)
    assert not (tmp_path / "out").exists()


def test_missing_extra_and_unknown_keys(tmp_path):
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda sd: {k: v for k, v in sd.items() if k != "language_model.model.norm.weight"})
    with pytest.raises(KeyError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "language_model.model.norm.weight")

    folder = _copy(tmp_path / "b")
    _edit_weights(folder, lambda sd: {**sd, "language_model.model.layers.0.self_attn.q_proj.bias":
                                      np.zeros(32, np.float32)})
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "pytorch_model.bin", "q_proj.bias", "attention_bias")

    folder = _copy(tmp_path / "c")
    _edit_weights(folder, lambda sd: {**sd, "decoder.extra.weight": np.zeros(2, np.float32)})
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "pytorch_model.bin", "decoder.extra.weight", "not Janus-Pro's")


def test_ignored_keys_are_ignored(tmp_path):
    """The understanding tower, the text head, codebook statistics and rotary buffers may be there."""
    folder = _copy(tmp_path)
    extra = {"gen_vision_model.quantize.codebook_used": np.zeros(65536, np.float32),
             "language_model.model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}
    _edit_weights(folder, lambda sd: {**sd, **extra})
    released = CJ.read_released(folder, vq_norm_groups=GROUPS)
    assert not set(extra) & set(released.tensors)
    assert any(k.startswith("vision_model.") for k in load_state_dict(folder / "pytorch_model.bin")[0])
    assert not any(k.startswith(("vision_model.", "aligner.", "language_model.lm_head")) for k in released.tensors)


def test_non_finite_weights_leave_nothing_behind(tmp_path):
    folder = _copy(tmp_path)

    def poison(sd):
        w = sd["gen_head.vision_head.weight"].astype(np.float32)
        w[0, 0] = np.nan
        return {**sd, "gen_head.vision_head.weight": w.astype(ml_dtypes.bfloat16)}

    _edit_weights(folder, poison)
    with pytest.raises(ValueError) as e:
        _assemble(tmp_path / "out", folder)
    _one_line_error(e, "gen_head.vision_head.weight", "non-finite")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def _edit_index(folder: Path, fn) -> None:
    path = folder / "pytorch_model.bin.index.json"
    record = json.loads(path.read_text())
    record["weight_map"] = fn(record["weight_map"])
    path.write_text(json.dumps(record))


def test_shard_index_mismatches(tmp_path):
    first, second = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    folder = _copy(tmp_path / "a", FIX / "released_sharded")
    _edit_index(folder, lambda m: {k: second if v == first and k.endswith("norm.weight") else v for k, v in m.items()})
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, first, "does not assign")

    folder = _copy(tmp_path / "b", FIX / "released_sharded")
    _edit_index(folder, lambda m: {**m, "gen_head.ghost.weight": second})
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "index.json", "gen_head.ghost.weight", "lacks")

    folder = _copy(tmp_path / "c", FIX / "released_sharded")
    (folder / second).unlink()
    with pytest.raises(FileNotFoundError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, second, "missing")

    folder = _copy(tmp_path / "d", FIX / "released_sharded")
    _edit_index(folder, lambda m: {k: "../" + v for k, v in m.items()})
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "not a plain file name")


def test_oversized_and_malformed_json_files(tmp_path):
    folder = _copy(tmp_path)
    (folder / "config.json").write_text(" " * (CJ.MAX_JSON_BYTES + 1) + "{}")
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "config.json", "more than")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError) as e:
        CJ.read_released(folder, vq_norm_groups=GROUPS)
    _one_line_error(e, "config.json", "list")


def test_tokenizer_checks(tmp_path):
    folder = _copy(tmp_path)
    with pytest.raises(ValueError) as e:
        JanusTokenizer(folder, prompt_len=PROMPT_LEN, text_vocab_size=100)
    _one_line_error(e, "tokenizer.json", "300 tokens", "100")
    tok = JanusTokenizer(folder, prompt_len=16)
    with pytest.raises(ValueError) as e:
        tok([PROMPTS[1]])
    _one_line_error(e, "prompt 0", "43 tokens", "at most 16")
    record = json.loads((folder / "special_tokens_map.json").read_text())
    record["additional_special_tokens"].append("<|unseen|>")
    (folder / "special_tokens_map.json").write_text(json.dumps(record))
    with pytest.raises(ValueError) as e:
        JanusTokenizer(folder)
    _one_line_error(e, "special_tokens_map.json", "<|unseen|>")
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError) as e:
        JanusTokenizer(folder)
    _one_line_error(e, "tokenizer.json")


def test_bundle_loader_checks(tmp_path, pipes):
    out = _assemble(tmp_path / "b")
    with pytest.raises(FileExistsError):
        _assemble(tmp_path / "b")
    record = json.loads((out / "bundle.json").read_text())
    assert (record["kind"], record["image_size"], record["sampling"]["cfg_scale"], record["sampling"]["top_k"]) == \
        ("janus-pro", 8, 5.0, 0)
    longer = pipeline_from_bundle(read_bundle(out), prompt_len=64)
    assert longer.gpt_cfg.prompt_len == 64 and longer.condition(PROMPTS)[0].shape == (3, 64)
    record["kind"] = "llamagen-c2i"
    (out / "bundle.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="not a Janus-Pro bundle"):
        pipeline_from_bundle(read_bundle(out))


# ------------------------------------------------------------------------------ the command line and the shared dispatch
GREEDY = SamplingConfig(cfg_scale=5.0, temperature=1.0, top_k=1, top_p=1.0)  # top-k 1: Janus's loop, argmax


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory):
    """`scalingar bundle OUT --janus DIR` on the sharded released folder."""
    out = tmp_path_factory.mktemp("janus_cli") / "bundle"
    assert cli.main(["bundle", str(out), "--janus", str(FIX / "released_sharded"), "--grid-size", str(GRID),
                     "--prompt-len", str(PROMPT_LEN), "--vq-norm-groups", str(GROUPS)]) == 0
    return out


def test_cli_bundle_names_no_code_and_loads_as_a_pipeline(cli_bundle):
    record = json.loads((cli_bundle / "bundle.json").read_text())
    assert "loader" not in record and record["kind"] == "janus-pro"
    assert record["parts"] == {"gpt": "gpt", "tokenizer": "tokenizer", "vq": "vq"}
    pipe = load_pipeline(cli_bundle)
    assert isinstance(pipe, Pipeline) and isinstance(pipe.gpt_cfg, janus.JanusConfig)
    assert pipe.model == janus.JanusModel(pipe.gpt_cfg)  # what the engine runs
    assert pipe.to_uint8 is to_uint8_janus and pipe.sampling.cfg_scale == 5.0


def test_cli_plain_greedy_equals_janus(cli_bundle, expected, tmp_path):
    """`generate --strategy plain --top-k 1` (the greedy draw) gives Janus's tokens and images at cfg 5:
    the exactness of the greedy test above (every step's top-1 leads by more than twice the tolerance)."""
    out = tmp_path / "out"
    assert cli.main(["generate", PROMPTS[1], "--checkpoint", str(cli_bundle), "--strategy", "plain", "-n", "1",
                     "--top-k", "1", "--out", str(out), "--scale", "1"]) == 0
    np.testing.assert_array_equal(np.load(out / "tokens.npy"), expected["cfg5_tokens"][1:2])
    image, want = read_png(out / "selected.png"), expected["cfg5_uint8"][1]
    assert image.shape == want.shape and np.abs(image.astype(int) - want).max() <= 1 and (image == want).mean() > 0.95


def test_cli_scalingar_n8_and_geneval_prompt_file_with_the_pool(cli_bundle, tmp_path):
    out = tmp_path / "one"
    assert cli.main(["generate", PROMPTS[0], "--checkpoint", str(cli_bundle), "-n", "8", "--out", str(out),
                     "--scale", "1"]) == 0
    result, tokens = json.loads((out / "result.json").read_text()), np.load(out / "tokens.npy")
    assert result["strategy"] == "scalingar" and result["num_candidates"] == 8 and tokens.shape == (8, GRID * GRID)
    pipe = load_pipeline(cli_bundle)
    np.testing.assert_array_equal(read_png(out / "selected.png"), pipe.decode_images(tokens[result["winner"]][None])[0])
    # GenEval's folder layout through the prompt pool
    records = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": PROMPTS[0]},
               {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "blue"}], "prompt": PROMPTS[2]}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    gen = tmp_path / "gen"
    assert cli.main(["generate", "--prompts", str(prompts), "--checkpoint", str(cli_bundle), "-n", "2",
                     "--images-per-prompt", "2", "--pool", "4", "--out", str(gen)]) == 0
    assert sorted(os.listdir(gen)) == ["00000", "00001", "scalingar_run.json"]
    for i, record in enumerate(records):
        folder = gen / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == record
        assert sorted(os.listdir(folder / "samples")) == ["0000.png", "0001.png"]
        assert read_png(folder / "samples" / "0000.png").shape == (8, 8, 3)


def test_pool_and_batched_strategies_give_janus_greedy_tokens(pipes, expected):
    """The one engine (`run.run_strategy`: batched strategies, the prompt pool) on Janus's
    `JanusModel`: greedy candidates are Janus's tokens."""
    pipe = pipes["single"]
    assert pipe.model == janus.JanusModel(pipe.gpt_cfg)
    batched = generate(pipe, PROMPTS, Strategy("confidence_only", 2, sampling=GREEDY))
    pooled = generate(pipe, PROMPTS, Strategy("plain", 2, sampling=GREEDY), schedule=Schedule(pool=Pool(4)))
    want = np.repeat(expected["cfg5_tokens"][:, None], 2, axis=1)
    np.testing.assert_array_equal(np.asarray(batched.result.all_tokens), want)
    np.testing.assert_array_equal(np.asarray(pooled.result.all_tokens), want)


def test_cli_mesh_gives_janus_greedy_tokens(cli_bundle, expected, tmp_path):
    """Prompts x candidates sharded with shard_map on a 1 x 2 mesh of simulated CPU devices (a subprocess:
    the device count is fixed before jax is imported); 3 candidates over 2 shards, so one slot is padding."""
    out = tmp_path / "mesh"
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
                                       ).strip(), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from scalingar_jax.cli import main; sys.exit(main())",
                           "generate", PROMPTS[2], "--checkpoint", str(cli_bundle), "--strategy", "plain", "-n", "3",
                           "--top-k", "1", "--mesh", "1x2", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out / "tokens.npy"), np.repeat(expected["cfg5_tokens"][2:3], 3, axis=0))


@pytest.mark.parametrize("argv, words", [
    (["--janus", "DIR", "--gpt", "g.pt"], ["--janus", "--gpt"]),
    (["--gpt", "g.pt"], ["--vq"]),
    (["--gpt", "g.pt", "--vq", "v.pt", "--prompt-len", "64"], ["--prompt-len", "--janus"]),
    (["--janus", "DIR"], ["config.json", "num_hidden_layers is 3"]),
])
def test_cli_bundle_refusals(tmp_path, capsys, argv, words):
    folder = _copy(tmp_path)
    _edit_config(folder, language_config__num_hidden_layers=3)
    argv = [str(folder) if a == "DIR" else a for a in argv]
    out = tmp_path / "out"
    assert cli.main(["bundle", str(out), *argv, "--vq-norm-groups", str(GROUPS)] if "--janus" in argv
                    else ["bundle", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(w in err for w in words), err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
