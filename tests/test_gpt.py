"""The Flax LlamaGen GPT: an independent NumPy reference, cached == uncached, presets, bad input."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalingar_jax import decode, gpt
from scalingar_jax.config import GPT_PRESETS, GPTConfig, gpt_config

# Parameter counts from the LlamaGen table (c2i, vocab 16384), in millions.
SPEC_PARAMS_M = {"GPT-B": 111, "GPT-L": 343, "GPT-XL": 775, "GPT-XXL": 1400, "GPT-XXXL": 3900,
                 "GPT-1B": 1200, "GPT-3B": 3100, "GPT-7B": 6600}

T2I = GPTConfig(model_type="t2i", n_layer=2, n_head=4, dim=32, vocab_size=64, cls_token_num=5,
                caption_dim=12, grid_size=4, multiple_of=16)
C2I = GPTConfig(model_type="c2i", n_layer=2, n_head=4, dim=32, vocab_size=64, num_classes=10,
                grid_size=3, multiple_of=16)
GQA = GPTConfig(model_type="t2i", n_layer=2, n_head=4, n_kv_head=2, dim=32, vocab_size=64, cls_token_num=3,
                caption_dim=8, grid_size=3, multiple_of=16)


# ----------------------------------------------------------------------------- NumPy reference
def _np_rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _np_rope_table(cfg):
    """(cls + g*g, hd/2, 2) cos/sin table built the way LlamaGen's precompute_freqs_cis_2d lays it out."""
    hd, g = cfg.head_dim, cfg.grid_size
    half = hd // 2
    freqs = 1.0 / (cfg.rope_base ** (np.arange(0, half, 2)[: half // 2] / half))
    t = np.arange(g)
    f = np.outer(t, freqs)
    grid = np.concatenate([np.broadcast_to(f[:, None, :], (g, g, hd // 4)),
                           np.broadcast_to(f[None, :, :], (g, g, hd // 4))], axis=-1)
    cache = np.stack([np.cos(grid), np.sin(grid)], -1).reshape(g * g, half, 2)
    return np.concatenate([np.zeros((cfg.cls_token_num, half, 2)), cache])


def _np_rotate(x, table):
    xs = x.reshape(*x.shape[:-1], -1, 2)
    c, s = table[None, :, None, :, 0], table[None, :, None, :, 1]
    return np.stack([xs[..., 0] * c - xs[..., 1] * s, xs[..., 1] * c + xs[..., 0] * s], -1).reshape(x.shape)


def np_forward(p, cfg, cond, tokens, cond_mask=None):
    """Teacher-forced logits (B, T, V), written independently of the Flax code."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    B, T = tokens.shape
    if cfg.model_type == "c2i":
        ce = p["cls_embedding"]["embedding_table"]["embedding"][np.asarray(cond)][:, None]
    else:
        cp = p["cls_embedding"]["cap_proj"]
        h1 = np.asarray(cond, np.float64) @ cp["fc1"]["kernel"]
        gelu = 0.5 * h1 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h1 + 0.044715 * h1**3)))
        ce = gelu @ cp["fc2"]["kernel"]
    x = np.concatenate([ce, p["tok_embeddings"]["embedding"][np.asarray(tokens[:, :-1])]], 1)
    S = x.shape[1]
    table = _np_rope_table(cfg)[:S]
    allowed = np.tril(np.ones((S, S), bool))[None].repeat(B, 0)
    if cond_mask is not None:
        allowed[:, :, : cfg.cls_token_num] &= np.asarray(cond_mask)[:, None, :]
    allowed |= np.eye(S, dtype=bool)[None]
    H, Hkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
    L = p["layers"]
    for i in range(cfg.n_layer):
        a = _np_rms(x, L["attention_norm"]["weight"][i], cfg.norm_eps)
        qkv = a @ L["attention"]["wqkv"]["kernel"][i]
        q = qkv[..., : H * hd].reshape(B, S, H, hd)
        k = qkv[..., H * hd : (H + Hkv) * hd].reshape(B, S, Hkv, hd)
        v = qkv[..., (H + Hkv) * hd :].reshape(B, S, Hkv, hd)
        q, k = _np_rotate(q, table), _np_rotate(k, table)
        k, v = np.repeat(k, H // Hkv, axis=2), np.repeat(v, H // Hkv, axis=2)  # repeat_interleave
        sc = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(hd)
        sc = np.where(allowed[:, None], sc, -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = np.einsum("bhst,bthd->bshd", pr, v).reshape(B, S, H * hd)
        x = x + o @ L["attention"]["wo"]["kernel"][i]
        f = _np_rms(x, L["ffn_norm"]["weight"][i], cfg.norm_eps)
        ff = L["feed_forward"]
        g1 = f @ ff["w1"]["kernel"][i]
        x = x + ((g1 / (1 + np.exp(-g1))) * (f @ ff["w3"]["kernel"][i])) @ ff["w2"]["kernel"][i]
    x = _np_rms(x, p["norm"]["weight"], cfg.norm_eps)
    return (x @ p["output"]["kernel"])[:, cfg.cls_token_num - 1 :]


def _inputs(cfg, B=3, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, cfg.block_size)), jnp.int32)
    if cfg.model_type == "c2i":
        return jnp.asarray(rng.integers(0, cfg.num_classes, (B,)), jnp.int32), None, tokens
    valid = rng.integers(1, cfg.cls_token_num + 1, (B,))
    valid[0] = cfg.cls_token_num
    mask = np.arange(cfg.cls_token_num)[None] >= cfg.cls_token_num - valid[:, None]  # left padded
    feats = rng.normal(size=(B, cfg.cls_token_num, cfg.caption_dim)) * mask[..., None]
    return jnp.asarray(feats, jnp.float32), jnp.asarray(mask), tokens


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _cached_logits(p, cfg, cond, mask, tokens):
    logits, cache = decode.prefill(p, cfg, cond, mask, use_cfg=False)
    out = [logits]
    step = jax.jit(lambda c, t, k: decode.decode_step(p, cfg, c, t, k))
    for k in range(cfg.block_size - 1):
        logits, cache = step(cache, tokens[:, k], jnp.int32(k))
        out.append(logits)
    return jnp.stack(out, 1)


@pytest.mark.parametrize("cfg", [C2I, T2I, GQA], ids=["c2i", "t2i_ragged", "gqa"])
def test_flax_matches_numpy_reference_and_cache(cfg):
    p = gpt.init_params(cfg, jax.random.key(1))
    cond, mask, tokens = _inputs(cfg)
    full = gpt.forward(p, cfg, cond, tokens, mask)
    chex.assert_shape(full, (3, cfg.block_size, cfg.vocab_size))
    chex.assert_type(full, jnp.float32)
    assert _rel(full, np_forward(p, cfg, cond, tokens, mask)) <= 1e-5
    for layout in (p, gpt.unstack_layers(p)):  # layers scanned over a stacked cache; unrolled per layer
        assert _rel(_cached_logits(layout, cfg, cond, mask, tokens), full) <= 1e-5


def test_forward_holds_no_kv_cache():
    """The teacher-forced forward (training, scoring) allocates and writes no KV cache, and its
    logits are those of the cached call on an empty cache of the whole sequence (1e-6)."""
    cfg = GQA
    p = gpt.init_params(cfg, jax.random.key(1))
    cond, mask, tokens = _inputs(cfg)
    cache = gpt.init_cache(cfg, tokens.shape[0], cfg.cls_token_num + cfg.block_size - 1, mask)

    def cached(p):
        def run(m):
            h = jnp.concatenate([m.embed_condition(cond, jnp.zeros(3, bool)), m.embed_tokens(tokens[:, :-1])], 1)
            return m(h, cache, 0)[0][:, cfg.cls_token_num - 1:]
        return gpt.nn.apply(run, gpt.Transformer(cfg))({"params": p})

    assert "dynamic_update_slice" in str(jax.make_jaxpr(cached)(p))  # a cache write, as the check sees it
    assert "dynamic_update_slice" not in str(jax.make_jaxpr(lambda p: gpt.forward(p, cfg, cond, tokens, mask))(p))
    assert _rel(gpt.forward(p, cfg, cond, tokens, mask), cached(p)) <= 1e-6


@pytest.mark.exactness
def test_layer_layouts_are_the_same_model():
    """unstack_layers/stack_layers round-trip. Per-layer parameters get one (B, Hkv, S, hd) cache
    buffer per layer and run unrolled; stacked ones a (B, L, Hkv, S, hd) cache and run under
    lax.scan; per-layer parameters over a stacked cache run unrolled over its layers. Logits and
    caches agree within float rounding (the scanned body fuses differently from the unrolled
    layers), and each layout decodes the other's cache."""
    cfg = GQA
    p = gpt.init_params(cfg, jax.random.key(1))
    u = gpt.unstack_layers(p)
    assert isinstance(u["layers"], tuple) and len(u["layers"]) == cfg.n_layer
    assert gpt.unstack_layers(u) is u  # already per-layer: no copy
    chex.assert_trees_all_equal(gpt.stack_layers(u), p)
    chex.assert_trees_all_equal(u["layers"][1], jax.tree.map(lambda x: x[1], p["layers"]))
    cond, mask, tokens = _inputs(cfg)
    (la, ca), (lb, cb) = (decode.prefill(q, cfg, cond, mask, use_cfg=False) for q in (p, u))
    B, S = cond.shape[0], cfg.max_seq_len - 1
    assert ca.stacked and not cb.stacked and len(cb.k) == len(cb.v) == cfg.n_layer
    chex.assert_shape([ca.k, ca.v], (B, cfg.n_layer, cfg.kv_heads, S, cfg.head_dim))
    chex.assert_shape([*cb.k, *cb.v], (B, cfg.kv_heads, S, cfg.head_dim))
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    close(la, lb)
    for i in range(cfg.n_layer):
        close(ca.layer(i)[0], cb.layer(i)[0])
        close(ca.layer(i)[1], cb.layer(i)[1])
    want = decode.decode_step(u, cfg, cb, tokens[:, 0], jnp.int32(0))
    for q, c in ((p, ca), (u, ca), (p, cb)):  # scanned; per-layer over a stacked cache; stacked over per-layer
        got = decode.decode_step(q, cfg, c, tokens[:, 0], jnp.int32(0))
        close(got[0], want[0])
        for i in range(cfg.n_layer):
            close(got[1].layer(i)[0], want[1].layer(i)[0])
    with pytest.raises(ValueError, match="unknown platform"):
        gpt.decode_layout(p, "gpu2")


@pytest.mark.parametrize("platform", ["cpu", "tpu", "cuda"])
def test_decode_layout_is_the_backends_choice(platform):
    """`decode_layout(params, platform)` lays the weights out as `backend.backend_config` says:
    column blocks per layer on a multi-core CPU, stacked (scanned) layers where scan_layers."""
    from scalingar_jax.backend import backend_config

    choice = backend_config(platform)
    p = gpt.param_shapes(GQA)
    laid = jax.eval_shape(functools.partial(gpt.decode_layout, platform=platform), p)
    assert gpt.layers_stacked(laid) == choice.scan_layers
    if not choice.scan_layers:
        w1 = laid["layers"][0]["feed_forward"]["w1"]["kernel"]
        assert (len(w1) if isinstance(w1, tuple) else 1) == choice.column_splits
    assert platform != "cpu" or not choice.scan_layers  # the CPU runs unrolled layers (README)


@pytest.mark.parametrize("n", [2, 4])
def test_split_columns_is_a_layout_of_the_same_weights(n):
    """split_columns stores every decode matmul kernel as n column blocks (in order); merge /
    stack_layers restore the original tree exactly; decoding with the split layout gives the
    unsplit logits (the same dot products, only run as n matmuls)."""
    cfg = GQA
    p = gpt.init_params(cfg, jax.random.key(2))
    s = gpt.split_columns(p, n)
    for layer in s["layers"]:
        blocks = layer["feed_forward"]["w1"]["kernel"]
        assert isinstance(blocks, tuple) and len(blocks) == n
        assert all(b.shape == (cfg.dim, cfg.ffn_hidden // n) for b in blocks)
    assert len(s["output"]["kernel"]) == n and isinstance(s["tok_embeddings"]["embedding"], jax.Array)
    np.testing.assert_array_equal(jnp.concatenate(s["layers"][1]["attention"]["wqkv"]["kernel"], -1),
                                  p["layers"]["attention"]["wqkv"]["kernel"][1])
    chex.assert_trees_all_equal(gpt.split_columns(s, n), s)  # already split: unchanged
    chex.assert_trees_all_equal(gpt.split_columns(p, 1), gpt.unstack_layers(p))
    chex.assert_trees_all_equal(gpt.stack_layers(s), p)
    chex.assert_trees_all_equal(gpt.merge_columns(s), gpt.unstack_layers(p))
    cond, mask, tokens = _inputs(cfg)
    (la, ca), (lb, cb) = (decode.prefill(q, cfg, cond, mask, use_cfg=False) for q in (p, s))
    np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
    step = [decode.decode_step(q, cfg, ca, tokens[:, 0], jnp.int32(0))[0] for q in (p, s)]
    np.testing.assert_allclose(step[1], step[0], rtol=1e-5, atol=1e-6)


def test_condition_positions_have_zero_rotary():
    cos, sin = gpt.rope_2d(T2I, jnp.arange(T2I.max_seq_len))
    assert np.all(np.asarray(cos[: T2I.cls_token_num]) == 0) and np.all(np.asarray(sin[: T2I.cls_token_num]) == 0)
    table = _np_rope_table(T2I)
    np.testing.assert_allclose(cos, table[..., 0], atol=1e-6)
    np.testing.assert_allclose(sin, table[..., 1], atol=1e-6)


@pytest.mark.parametrize("name", list(GPT_PRESETS))
def test_preset_parameter_counts_match_spec(name):
    n = gpt.count_params(gpt.param_shapes(gpt_config(name))) / 1e6
    assert abs(n - SPEC_PARAMS_M[name]) / SPEC_PARAMS_M[name] <= 0.01, (name, n)


def test_bf16_params_give_float32_logits():
    cfg = GPTConfig(**{**C2I.__dict__, "param_dtype": "bfloat16", "dtype": "bfloat16"})
    p = gpt.init_params(cfg, jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p))
    cond, _, tokens = _inputs(cfg)
    out = gpt.forward(p, cfg, cond, tokens)
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="GPT-B.*GPT-7B"):
        gpt_config("GPT-Z")


def test_bad_conditions_raise_before_compile():
    p = gpt.init_params(T2I, jax.random.key(0))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="shape"):
        decode.generate(p, T2I, jnp.zeros((2, 4, 12)), key=key)
    with pytest.raises(TypeError, match="floating"):
        decode.generate(p, T2I, jnp.zeros((2, 5, 12), jnp.int32), key=key)
    with pytest.raises(ValueError, match="cond_mask"):
        decode.generate(p, T2I, jnp.zeros((2, 5, 12)), cond_mask=jnp.ones((2, 4), bool), key=key)
    pc = gpt.init_params(C2I, jax.random.key(0))
    with pytest.raises(ValueError, match="class ids"):
        decode.generate(pc, C2I, jnp.array([3, 10]), key=key)
    with pytest.raises(TypeError, match="integer"):
        decode.generate(pc, C2I, jnp.array([0.5]), key=key)
    with pytest.raises(ValueError, match="num_candidates"):
        decode.generate(pc, C2I, jnp.array([1]), key=key, num_candidates=0)


def test_bad_configs():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3, dim=32).validate()
    with pytest.raises(ValueError, match="head_dim"):
        GPTConfig(n_head=4, dim=24).validate()
    with pytest.raises(ValueError, match="model_type"):
        GPTConfig(model_type="x2i").validate()
