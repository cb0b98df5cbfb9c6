"""Strict PyTorch <-> Flax mapping of LlamaGen GPT / VQ weights, and config inference.

The fixtures' key names come from torch modules that mirror LlamaGen's hierarchy
(`conversion/make_fixtures.py`), so they check the expected-key tables independently.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from scalingar_jax.config import GPTConfig, gpt_config
from scalingar_jax.convert import load_checkpoint, save_torch_state_dict
from scalingar_jax.convert import mapping as M
from scalingar_jax.convert.mapping import MappingError

FIX = Path(__file__).parent / "fixtures" / "convert"
FACTS = json.loads((FIX / "expected.json").read_text())
C2I = FACTS["gpt_c2i_model.pt"]["config"]
T2I = FACTS["gpt_t2i_bf16.pt"]["config"]
VQ_TINY = FACTS["vq_tiny.pt"]["config"]


def load(name):
    return load_checkpoint(FIX / name)


def arrays(sd):
    return {k: v.numpy() for k, v in sd.items()}


def tree_shapes(tree) -> dict:
    flat = M._flatten(M._unwrap_params(tree))
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}


def vq_cfg(**kw):
    from scalingar_jax.vq import VQConfig

    return VQConfig(**{**VQ_TINY, **kw})


# --------------------------------------------------------------------------------------------
# config inference
# --------------------------------------------------------------------------------------------


def test_infer_c2i_gqa_from_fixture_and_training_args():
    sd, meta = load("gpt_c2i_train.pt")
    cfg = M.infer_gpt_config(sd, args=meta["args"], n_head=2)  # grid 64 // 16 from the Namespace
    assert GPTConfig(**cfg) == GPTConfig(**C2I)
    assert cfg["model_type"] == "c2i" and cfg["n_kv_head"] == 1 and cfg["num_classes"] == 10


def test_infer_t2i_with_120_condition_rows():
    sd, _ = load("gpt_t2i_bf16.pt")
    cfg = M.infer_gpt_config(sd, n_head=2, grid_size=4)
    assert GPTConfig(**cfg) == GPTConfig(**T2I)
    assert (cfg["cls_token_num"], cfg["caption_dim"], cfg["n_kv_head"]) == (120, 4, None)


@pytest.mark.parametrize(
    "preset,model_type,extra,file_name,grid",
    [
        ("GPT-B", "c2i", {}, "c2i_B_256.pt", 16),
        ("GPT-XL", "c2i", {}, "/ckpts/c2i_XL_384.pt", 24),
        ("GPT-XL", "t2i", {}, "t2i_XL_stage2_512.pt", 32),
        ("GPT-3B", "c2i", {}, "c2i_3B_384.pt", 24),
        ("GPT-L", "c2i", {"n_kv_head": 4}, "gqa_256.pt", 16),
        ("GPT-B", "c2i", {"ffn_dim_multiplier": 1.3}, "x_256.safetensors", 16),
        ("GPT-B", "t2i", {"cls_token_num": 7, "caption_dim": 24}, "t2i_256.pt", 16),
    ],
)
def test_infer_presets_from_shapes(preset, model_type, extra, file_name, grid):
    want = gpt_config(preset, model_type, grid_size=grid, **extra)
    shapes = M.gpt_torch_shapes(want)  # shapes only: nothing is allocated
    cfg = M.infer_gpt_config(shapes, file_name=file_name)
    got = GPTConfig(**cfg)
    assert M.gpt_torch_shapes(got) == shapes
    for f in ("model_type", "n_layer", "n_head", "dim", "kv_heads", "vocab_size", "ffn_hidden", "cls_token_num",
              "grid_size"):
        assert getattr(got, f) == getattr(want, f), f
    if model_type == "t2i":
        assert got.caption_dim == want.caption_dim
    else:
        assert got.num_classes == 1000
    assert M.match_gpt_preset(got.n_layer, got.dim)[0] == preset


def test_infer_needs_grid_and_n_head_when_not_derivable():
    sd, _ = load("gpt_c2i_model.pt")
    with pytest.raises(MappingError, match="grid_size"):
        M.infer_gpt_config(sd, n_head=2)
    with pytest.raises(MappingError, match=r"n_head="):
        M.infer_gpt_config(sd, grid_size=4)
    with pytest.raises(MappingError, match="wqkv"):
        M.infer_gpt_config(sd, grid_size=4, n_head=1)  # head_dim 16: 32 rows != (1 + 2k) * 16
    with pytest.raises(MappingError, match="head_dim=2 must be divisible by 4"):
        M.infer_gpt_config(sd, grid_size=4, n_head=8)
    with pytest.raises(MappingError, match="unknown GPT config fields"):
        M.infer_gpt_config(sd, grid_size=4, n_head=2, bogus=1)
    with pytest.raises(MappingError, match="shape mismatch"):
        M.infer_gpt_config(sd, grid_size=4, n_head=2, num_classes=20)  # override contradicting weights


def test_infer_rejects_missing_layers():
    shapes = M.gpt_torch_shapes(GPTConfig(**C2I))
    shapes = {k: v for k, v in shapes.items() if not k.startswith("layers.0.")}
    with pytest.raises(MappingError, match=r"layer\(s\) \[0\]"):
        M.infer_gpt_config(shapes, n_head=2, grid_size=4)


def test_infer_vq_config():
    sd, _ = load("vq_tiny.pt")
    cfg = M.infer_vq_config(sd, norm_groups=4)
    assert vq_cfg() == vq_cfg(**cfg)
    with pytest.raises(MappingError, match="norm_groups=; scalingar convert: --set norm_groups=N"):
        M.infer_vq_config(sd)  # LlamaGen's 32 groups do not divide 4 channels
    from scalingar_jax.vq import VQ_PRESETS, VQConfig

    for name, preset in VQ_PRESETS.items():
        assert VQConfig(**M.infer_vq_config(M.vq_torch_shapes(preset))) == preset, name


# --------------------------------------------------------------------------------------------
# the mapped trees are exactly the trees the Flax models create
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        GPTConfig(**C2I),
        GPTConfig(**T2I),
        gpt_config("GPT-B"),
        gpt_config("GPT-XL", "t2i", grid_size=32),
        gpt_config("GPT-L", n_kv_head=8, ffn_dim_multiplier=1.5),
    ],
    ids=["tiny-c2i-gqa", "tiny-t2i", "B-c2i", "XL-t2i", "L-gqa-ffnmult"],
)
def test_gpt_flax_shapes_match_model_init(cfg):
    gpt = pytest.importorskip("scalingar_jax.gpt")
    real = {k: s for k, (s, _) in tree_shapes(gpt.param_shapes(cfg)).items()}
    assert real == M.gpt_flax_shapes(cfg)


@pytest.mark.parametrize("name,kw", [("gpt_c2i_model.pt", C2I), ("gpt_t2i_bf16.pt", T2I)])
def test_converted_fixture_tree_equals_init_structure(name, kw):
    gpt = pytest.importorskip("scalingar_jax.gpt")
    sd, _ = load(name)
    cfg = GPTConfig(**kw)
    params = M.torch_to_flax_gpt(sd, cfg)
    real = gpt.param_shapes(cfg)  # jax.eval_shape of init_params
    assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(lambda x: 0, dict(real)))
    assert tree_shapes(params) == tree_shapes(real)


def test_vq_flax_shapes_match_model_init():
    vq = pytest.importorskip("scalingar_jax.vq")
    sd, _ = load("vq_tiny.pt")
    for cfg in (vq_cfg(), vq.VQ_PRESETS["VQ-16"]):
        shapes = vq.vq_param_shapes(cfg)  # jax.eval_shape of init_vq_params
        assert {k: s for k, (s, _) in tree_shapes(shapes).items()} == M.vq_flax_shapes(cfg)
        # and our PyTorch names agree with the VQ module's own naming helper
        assert vq.torch_style_keys(shapes) == M.vq_torch_shapes(cfg)
        if cfg == vq_cfg():
            params = M.torch_to_flax_vq(sd, cfg)
            assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(lambda x: 0, dict(shapes)))
            assert tree_shapes(params) == tree_shapes(shapes)


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


def test_gpt_values_transposed_and_stacked():
    sd, _ = load("gpt_c2i_bare.pt")  # output.weight is a non-contiguous view in this file
    a = arrays(sd)
    p = M.torch_to_flax_gpt(sd, C2I)
    np.testing.assert_array_equal(p["tok_embeddings"]["embedding"], a["tok_embeddings.weight"])
    np.testing.assert_array_equal(p["cls_embedding"]["embedding_table"]["embedding"],
                                  a["cls_embedding.embedding_table.weight"])
    np.testing.assert_array_equal(p["output"]["kernel"], a["output.weight"].T)
    np.testing.assert_array_equal(p["norm"]["weight"], a["norm.weight"])
    for i in range(C2I["n_layer"]):
        L = p["layers"]
        np.testing.assert_array_equal(L["attention"]["wqkv"]["kernel"][i], a[f"layers.{i}.attention.wqkv.weight"].T)
        np.testing.assert_array_equal(L["attention"]["wo"]["kernel"][i], a[f"layers.{i}.attention.wo.weight"].T)
        for w in ("w1", "w2", "w3"):
            np.testing.assert_array_equal(L["feed_forward"][w]["kernel"][i], a[f"layers.{i}.feed_forward.{w}.weight"].T)
        np.testing.assert_array_equal(L["attention_norm"]["weight"][i], a[f"layers.{i}.attention_norm.weight"])
        np.testing.assert_array_equal(L["ffn_norm"]["weight"][i], a[f"layers.{i}.ffn_norm.weight"])
    for leaf in jax.tree.leaves(p):
        assert leaf.dtype == np.float32 and leaf.flags.c_contiguous and leaf.flags.writeable


def test_gpt_t2i_dtypes():
    sd, _ = load("gpt_t2i_bf16.pt")
    a = arrays(sd)
    kept = M.torch_to_flax_gpt(sd, T2I, dtype=None)
    assert {leaf.dtype for leaf in jax.tree.leaves(kept)} == {np.dtype(ml_dtypes.bfloat16)}
    f32 = M.torch_to_flax_gpt(sd, T2I, dtype="float32")
    np.testing.assert_array_equal(f32["cls_embedding"]["cap_proj"]["fc1"]["kernel"],
                                  a["cls_embedding.cap_proj.fc1.weight"].T.astype(np.float32))
    np.testing.assert_array_equal(f32["cls_embedding"]["uncond_embedding"],
                                  a["cls_embedding.uncond_embedding"].astype(np.float32))
    f16 = M.torch_to_flax_gpt(sd, T2I, dtype=np.float16)
    assert f16["output"]["kernel"].dtype == np.float16


def test_each_tensor_is_read_once():
    sd, _ = load("gpt_c2i_model.pt")
    reads = {}

    class Counting:
        def __init__(self, key, t):
            self.key, self.t, self.shape, self.dtype = key, t, t.shape, t.dtype

        def __array__(self, dtype=None, copy=None):
            reads[self.key] = reads.get(self.key, 0) + 1
            return self.t.numpy()

    M.torch_to_flax_gpt({k: Counting(k, v) for k, v in sd.items()}, C2I)
    assert reads == {k: 1 for k in sd}


@pytest.mark.parametrize("name,kw", [("gpt_c2i_model.pt", C2I), ("gpt_t2i_bf16.pt", T2I)])
def test_gpt_round_trip_exact(name, kw, tmp_path):
    sd, _ = load(name)
    a = arrays(sd)
    params = M.torch_to_flax_gpt(sd, kw, dtype=None)
    back = M.flax_to_torch_gpt({"params": params}, kw)
    assert list(back) == list(a) == list(M.gpt_torch_shapes(kw))  # LlamaGen's state-dict order
    for k in a:
        assert back[k].dtype == a[k].dtype
        np.testing.assert_array_equal(back[k].view(np.uint8), a[k].view(np.uint8), err_msg=k)
    # streamed export to .pt and back
    path = save_torch_state_dict(tmp_path / "export.pt", M.iter_flax_to_torch_gpt(params, kw), wrapper="model")
    sd2, meta = load_checkpoint(path)
    again = M.torch_to_flax_gpt(sd2, M.infer_gpt_config(sd2, n_head=2, grid_size=4), dtype=None)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def test_vq_values_and_round_trip():
    sd, _ = load("vq_tiny.pt")
    a = arrays(sd)
    p = M.torch_to_flax_vq(sd, VQ_TINY)
    np.testing.assert_array_equal(p["encoder"]["conv_blocks_0"]["res_0"]["conv1"]["kernel"],
                                  a["encoder.conv_blocks.0.res.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["decoder"]["conv_blocks_0"]["upsample"]["conv"]["bias"],
                                  a["decoder.conv_blocks.0.upsample.conv.bias"])
    np.testing.assert_array_equal(p["encoder"]["mid_1"]["norm"]["scale"], a["encoder.mid.1.norm.weight"])
    np.testing.assert_array_equal(p["quantize"]["embedding"], a["quantize.embedding.weight"])
    assert "codebook_used" not in p["quantize"]
    back = M.flax_to_torch_vq(p, VQ_TINY)
    assert set(back) == set(a) - {"quantize.codebook_used"}
    for k, v in back.items():
        np.testing.assert_array_equal(v, a[k], err_msg=k)


def test_vq_expected_keys_match_torch_module_names():
    sd, _ = load("vq_tiny.pt")
    want = {k: v.shape for k, v in sd.items() if k != "quantize.codebook_used"}
    assert M.vq_torch_shapes(VQ_TINY) == want


def test_vq_key_mapping_examples():
    assert M.vq_torch_key_to_flax("encoder.conv_blocks.2.res.1.conv1.weight", 4) == (
        ("encoder", "conv_blocks_2", "res_1", "conv1", "kernel"), "conv")
    assert M.vq_torch_key_to_flax("encoder.mid.1.q.bias", 1) == (("encoder", "mid_1", "q", "bias"), "none")
    assert M.vq_torch_key_to_flax("decoder.norm_out.weight", 1) == (("decoder", "norm_out", "scale"), "none")
    assert M.vq_torch_key_to_flax("quantize.embedding.weight", 2) == (("quantize", "embedding"), "none")
    from scalingar_jax.vq import VQConfig

    for key, shape in M.vq_torch_shapes(VQConfig()).items():
        path, tr = M.vq_torch_key_to_flax(key, len(shape))
        assert M.vq_flax_path_to_torch(path) == (key, tr)


# --------------------------------------------------------------------------------------------
# strictness
# --------------------------------------------------------------------------------------------


def test_missing_key_is_named_with_shape():
    sd, _ = load("gpt_c2i_model.pt")
    del sd["layers.1.attention.wo.weight"]
    with pytest.raises(MappingError, match=r"missing keys: layers\.1\.attention\.wo\.weight \(expected shape \(16, 16\)\)"):
        M.torch_to_flax_gpt(sd, C2I)


def test_wrong_shape_names_key_and_both_shapes():
    sd, _ = load("gpt_c2i_model.pt")
    sd["norm.weight"] = np.zeros(15, np.float32)
    sd["layers.0.feed_forward.w2.weight"] = np.zeros((48, 16), np.float32)  # transposed by mistake
    with pytest.raises(MappingError) as e:
        M.torch_to_flax_gpt(sd, C2I)
    msg = str(e.value)
    assert "norm.weight: checkpoint has (15,), the config expects (16,)" in msg
    assert "layers.0.feed_forward.w2.weight: checkpoint has (48, 16), the config expects (16, 48)" in msg


def test_unexpected_keys_listed_and_known_buffers_ignored():
    sd, _ = load("gpt_c2i_model.pt")
    sd["layers.0.attention.kv_cache.k_cache"] = np.zeros((1, 2, 8, 8), np.float32)
    sd["freqs_cis"] = np.zeros((17, 4, 2), np.float32)
    M.torch_to_flax_gpt(sd, C2I)  # known inference buffers: fine
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(MappingError, match=r"unexpected keys: extra\.weight \(3,\)"):
        M.torch_to_flax_gpt(sd, C2I)
    p = M.torch_to_flax_gpt(sd, C2I, strict=False)
    assert "extra" not in p


def test_config_mismatch_model_type():
    sd, _ = load("gpt_c2i_model.pt")
    with pytest.raises(MappingError, match="holds a c2i GPT but the config says model_type='t2i'"):
        M.torch_to_flax_gpt(sd, {**C2I, "model_type": "t2i", "cls_token_num": 120, "caption_dim": 4})
    del sd["cls_embedding.embedding_table.weight"]
    with pytest.raises(MappingError, match=r"missing keys: cls_embedding\.embedding_table\.weight \(expected shape \(11, 16\)\)"):
        M.torch_to_flax_gpt(sd, C2I)


def test_vq_passed_as_gpt_and_gpt_as_vq():
    vq_sd, _ = load("vq_tiny.pt")
    gpt_sd, _ = load("gpt_c2i_model.pt")
    with pytest.raises(MappingError, match="VQ tokenizer checkpoint"):
        M.torch_to_flax_gpt(vq_sd, C2I)
    with pytest.raises(MappingError, match="VQ tokenizer checkpoint"):
        M.infer_gpt_config(vq_sd, grid_size=4)
    with pytest.raises(MappingError, match="GPT checkpoint"):
        M.torch_to_flax_vq(gpt_sd, VQ_TINY)
    with pytest.raises(MappingError, match="GPT checkpoint"):
        M.infer_vq_config(gpt_sd)
    with pytest.raises(MappingError, match="neither a GPT nor a VQ"):
        M.torch_to_flax_gpt({"foo.weight": np.zeros(2)}, C2I)
    assert M.detect_model_kind(vq_sd) == "vq" and M.detect_model_kind(gpt_sd) == "gpt"


def test_flax_tree_strictness():
    sd, _ = load("gpt_c2i_model.pt")
    p = M.torch_to_flax_gpt(sd, C2I)
    bad = jax.tree.map(lambda x: x, p)
    del bad["norm"]
    with pytest.raises(MappingError, match=r"missing parameters: norm/weight \(expected shape \(16,\)\)"):
        M.flax_to_torch_gpt(bad, C2I)
    bad = jax.tree.map(lambda x: x, p)
    bad["layers"]["ffn_norm"]["weight"] = bad["layers"]["ffn_norm"]["weight"][:1]
    with pytest.raises(MappingError, match=r"layers/ffn_norm/weight: tree has \(1, 16\), the config expects \(2, 16\)"):
        M.flax_to_torch_gpt(bad, C2I)
    bad = jax.tree.map(lambda x: x, p)
    bad["output"]["bias"] = np.zeros(32, np.float32)
    with pytest.raises(MappingError, match="unexpected parameters: output/bias"):
        M.flax_to_torch_gpt(bad, C2I)
    vq_p = M.torch_to_flax_vq(load("vq_tiny.pt")[0], VQ_TINY)
    with pytest.raises(MappingError, match="missing parameters: encoder/conv_in"):
        M.flax_to_torch_vq({**vq_p, "encoder": {k: v for k, v in vq_p["encoder"].items() if k != "conv_in"}}, VQ_TINY)


def test_vq_strictness():
    sd, _ = load("vq_tiny.pt")
    sd = dict(sd)
    sd["encoder.conv_in.weight"] = np.zeros((4, 3, 1, 1), np.float32)
    with pytest.raises(MappingError, match=r"encoder\.conv_in\.weight: checkpoint has \(4, 3, 1, 1\), the config expects \(4, 3, 3, 3\)"):
        M.torch_to_flax_vq(sd, VQ_TINY)
    del sd["quant_conv.bias"]
    with pytest.raises(MappingError, match=r"quant_conv\.bias \(expected shape \(2,\)\)"):
        M.torch_to_flax_vq(sd, VQ_TINY)


def test_config_arguments_validated():
    sd, _ = load("gpt_c2i_model.pt")
    with pytest.raises(ValueError, match="unknown GPT config fields"):
        M.torch_to_flax_gpt(sd, {**C2I, "nope": 1})
    with pytest.raises(ValueError, match="unknown dtype"):
        M.torch_to_flax_gpt(sd, C2I, dtype="float8")
    with pytest.raises(TypeError):
        M.torch_to_flax_gpt(sd, [1, 2])
    with pytest.raises(ValueError, match="unknown VQ config fields"):
        M.vq_torch_shapes({**VQ_TINY, "encoder_ch_mult": (1, 2)})
    assert dataclasses.asdict(vq_cfg())["ch_mult"] == (1, 2)
