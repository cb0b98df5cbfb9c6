"""The Flax CLIP, its tokenizer and image preprocessing against transformers (no torch needed).

`tests/fixtures/clip_tiny` is a tiny random HF CLIP folder with transformers' own outputs, made once
by `conversion/make_clip_fixture.py` (transformers 5.24, models in float64): token ids of odd
prompts and 200 fuzz strings, CLIPImageProcessor pixel values, text/image embeddings, logits and
both pooling rules. Here they must come out of `scalingar_jax.clip` exactly (ids, pixels) or within
1e-5 (embeddings, float32 against float64).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import chex
import numpy as np
import pytest

from scalingar_jax import clip
from scalingar_jax.convert import safetensors as st
from scalingar_jax.convert.torch_pickle import save_torch_state_dict

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "clip_tiny")


@pytest.fixture(scope="module")
def model():
    return clip.load_hf_clip(FIXTURE)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURE, "expected.npz")))


@pytest.fixture(scope="module")
def images():
    data = np.load(os.path.join(FIXTURE, "images.npz"))
    return [data[k] for k in sorted(data)]


def _tensors():
    return st.load_arrays(os.path.join(FIXTURE, "model.safetensors"))


def _copy(tmp_path, name, skip=()):
    d = tmp_path / name
    d.mkdir()
    for f in os.listdir(FIXTURE):
        if f not in skip:
            shutil.copy(os.path.join(FIXTURE, f), d / f)
    return d


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_ids_match_transformers(expected):
    tok = clip.load_tokenizer(FIXTURE)
    with open(os.path.join(FIXTURE, "tokenizer_fuzz.json"), encoding="utf-8") as f:
        data = json.load(f)
    ids = tok(data["prompts"])
    assert ids.dtype == np.int32 and ids.shape == (10, 77)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    assert ids[-1, -1] == tok.eos_id  # the long prompt is truncated to 75 ids + bos/eos
    wrong = [(text, want, tok.encode(text)) for text, want in data["fuzz"] if tok.encode(text) != want]
    assert not wrong, wrong[:3]
    assert "\x1c" in "".join(t for t, _ in data["fuzz"])  # not whitespace for CLIP, unlike str.isspace


def test_tokenizer_live_fuzz():
    """Optional (transformers importable; torch not needed): 500 random strings over many Unicode blocks."""
    tokenization = pytest.importorskip("transformers.models.clip.tokenization_clip")
    import random

    theirs, ours = tokenization.CLIPTokenizer.from_pretrained(FIXTURE), clip.load_tokenizer(FIXTURE)
    blocks = [(0, 0x7F), (0x80, 0x36F), (0x370, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F), (0x1680, 0x1680),
              (0x2000, 0x218F), (0x3000, 0x303F), (0x4E00, 0x4E80), (0xAC00, 0xAC40), (0xFB00, 0xFB06),
              (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF), (0x1F300, 0x1F64F)]
    r = random.Random(0)
    for _ in range(500):
        text = "".join(chr(r.randint(*r.choice(blocks))) for _ in range(r.randint(0, 15)))
        assert ours.encode(text) == theirs(text, truncation=True, max_length=77)["input_ids"], repr(text)


def test_tokenizer_rules():
    tok = clip.load_tokenizer(FIXTURE)
    assert tok.encode("A  Photo") == tok.encode("a photo") == tok.encode(" a\tphoto\n")
    assert tok.encode("<|endoftext|>")[1:-1] == [tok.eos_id]  # special tokens in the raw text stay whole
    assert tok.encode("<|ENDOFTEXT|>")[1:-1] != [tok.eos_id]  # ... matched before lower-casing
    assert tok.encode("it's") == [tok.bos_id, *tok.content_ids("it"), *tok.content_ids("'s"), tok.eos_id]
    with pytest.raises(TypeError, match="list of prompts"):
        tok("a photo")


def test_tokenizer_bad_files(tmp_path):
    d = _copy(tmp_path, "nomerges", skip=("merges.txt",))
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        clip.load_tokenizer(d)
    d = _copy(tmp_path, "badmerge")
    with open(d / "merges.txt", "a") as f:
        f.write("a b c\n")
    with pytest.raises(ValueError, match=r"merges.txt, line \d+"):
        clip.load_tokenizer(d)
    d = _copy(tmp_path, "notutf8")
    with open(d / "merges.txt", "ab") as f:
        f.write(b"\xff\xfe x\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        clip.load_tokenizer(d)
    d = _copy(tmp_path, "unknownmerge")
    with open(d / "merges.txt", "a") as f:
        f.write("q zzz\n")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        clip.load_tokenizer(d)
    d = _copy(tmp_path, "nobos")
    vocab = json.loads((d / "vocab.json").read_text())
    del vocab["<|startoftext|>"]
    (d / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="bos_token"):
        clip.load_tokenizer(d)


# ----------------------------------------------------------------------------- images

def test_preprocess_matches_transformers(model, expected, images):
    _, cfg = model
    pc = clip.load_image_config(FIXTURE, cfg)
    assert (pc.shortest_edge, pc.crop_size, pc.resample) == (40, (32, 32), 3)
    pixels = clip.preprocess(images, pc)
    assert pixels.dtype == np.float32 and pixels.shape == (3, 32, 32, 3)
    # same Pillow resize, same float64 rescale and float32 normalisation: bit for bit
    np.testing.assert_array_equal(pixels.transpose(0, 3, 1, 2), expected["pixel_values"])


def test_image_config_forms_and_errors(tmp_path, model):
    _, cfg = model
    old = clip.ImageProcessorConfig.from_hf({"size": 32, "crop_size": 32, "resample": 2})
    assert (old.shortest_edge, old.crop_size, old.resample) == (32, (32, 32), 2)
    d = _copy(tmp_path, "nopre", skip=("preprocessor_config.json",))
    assert clip.load_image_config(d, cfg) == clip.ImageProcessorConfig(shortest_edge=32, crop_size=(32, 32))
    d = _copy(tmp_path, "badcrop")
    pre = json.loads((d / "preprocessor_config.json").read_text())
    pre["crop_size"] = {"height": 224, "width": 224}
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ValueError, match="224x224 but the model .* takes 32x32"):
        clip.load_image_config(d, cfg)
    with pytest.raises(ValueError, match="uint8"):
        clip.preprocess(np.zeros((1, 8, 8, 3), np.float32), old)
    small = clip.preprocess(np.full((1, 10, 20, 3), 255, np.uint8), dataclasses.replace(old, do_resize=False))
    assert small.shape == (1, 32, 32, 3) and small[0, 0, 0, 0] < 0 < small[0, 16, 16, 0]  # zero-padded crop


# ----------------------------------------------------------------------------- model

def test_config_from_hf(model):
    _, cfg = model
    hash(cfg)
    assert (cfg.text.hidden_size, cfg.vision.hidden_size, cfg.projection_dim) == (32, 24, 16)
    assert (cfg.text.hidden_act, cfg.vision.hidden_act, cfg.eos_token_id) == ("quick_gelu", "gelu", 651)
    # an OpenAI-era config.json: eos_token_id 2 (largest-id pooling); omitted fields take HF's defaults
    openai = clip.CLIPConfig.from_hf_config({"model_type": "clip", "projection_dim": 768,
                                             "text_config": {"hidden_size": 768, "eos_token_id": 2},
                                             "vision_config": {"hidden_size": 1024, "num_attention_heads": 16,
                                                               "patch_size": 14}})
    assert (openai.eos_token_id, openai.vocab_size, openai.vision.num_layers, openai.image_size) == (2, 49408, 12, 224)
    with pytest.raises(ValueError, match="not a CLIP config"):
        clip.CLIPConfig.from_hf_config({"model_type": "siglip"})
    with pytest.raises(ValueError, match="hidden_act"):
        clip.CLIPConfig.from_hf_config({"text_config": {"hidden_act": "swish2"}})
    with pytest.raises(ValueError, match="multiple of num_heads"):
        clip.CLIPConfig.from_hf_config({"text_config": {"hidden_size": 30, "num_attention_heads": 4}})


def test_embeddings_match_transformers(model, expected):
    params, cfg = model
    pixels = expected["pixel_values"].transpose(0, 2, 3, 1)
    t = np.asarray(clip.text_features(params, cfg, expected["input_ids"]))
    i = np.asarray(clip.image_features(params, cfg, pixels))
    np.testing.assert_allclose(t, expected["text_embeds"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(i, expected["image_embeds"], atol=1e-5, rtol=1e-5)
    logits = np.asarray(clip.clip_logits(params, cfg, pixels, expected["input_ids"]))
    np.testing.assert_allclose(logits, expected["logits_per_image"], atol=1e-5, rtol=1e-5)


def test_pooling_rules(model, expected):
    """First end-of-text token, or (config eos_token_id == 2, as OpenAI's configs) the largest id."""
    params, cfg = model
    raw = expected["raw_ids"]
    np.testing.assert_allclose(np.asarray(clip.text_features(params, cfg, raw)), expected["raw_text_embeds"],
                               atol=1e-5, rtol=1e-5)
    legacy = dataclasses.replace(cfg, eos_token_id=2)
    np.testing.assert_allclose(np.asarray(clip.text_features(params, legacy, raw)),
                               expected["raw_text_embeds_legacy"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        clip.text_features(params, cfg, np.full((1, 5), cfg.vocab_size))
    with pytest.raises(ValueError, match="pixels must have shape"):
        clip.image_features(params, cfg, np.zeros((1, 3, 32, 32), np.float32))


# ----------------------------------------------------------------------------- loader

def test_loader_formats(tmp_path, model):
    params, _ = model
    tensors = _tensors()
    d = _copy(tmp_path, "bin", skip=("model.safetensors",))
    save_torch_state_dict(d / "pytorch_model.bin", {**tensors, "text_model.embeddings.position_ids":
                                                    np.arange(77)[None].astype(np.int64)})
    chex.assert_trees_all_equal(clip.load_hf_clip(d)[0], params)
    d = _copy(tmp_path, "sharded", skip=("model.safetensors",))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, ks in shards.items():
        st.save_file(d / f, {k: tensors[k] for k in ks})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    chex.assert_trees_all_equal(clip.load_hf_clip(d)[0], params)


def test_loader_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip.load_hf_clip(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        clip.load_hf_clip(_copy(tmp_path, "noconfig", skip=("config.json",)))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        clip.load_hf_clip(_copy(tmp_path, "noweights", skip=("model.safetensors",)))

    d = _copy(tmp_path, "mismatch")  # config.json says wider text than the weights hold
    conf = json.loads((d / "config.json").read_text())
    conf["text_config"]["hidden_size"] = 64
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"text_model\.embeddings\.token_embedding\.weight: expected shape "
                                         r"\(652, 64\) .* has \(652, 32\)"):
        clip.load_hf_clip(d)

    tensors = _tensors()
    d = _copy(tmp_path, "missing", skip=("model.safetensors",))
    st.save_file(d / "model.safetensors", {k: v for k, v in tensors.items() if k != "visual_projection.weight"})
    with pytest.raises(KeyError, match="visual_projection.weight"):
        clip.load_hf_clip(d)

    d = _copy(tmp_path, "nan", skip=("model.safetensors",))
    bad = dict(tensors)
    bad["vision_model.encoder.layers.1.mlp.fc2.bias"] = bad["vision_model.encoder.layers.1.mlp.fc2.bias"].copy()
    bad["vision_model.encoder.layers.1.mlp.fc2.bias"][3] = np.inf
    st.save_file(d / "model.safetensors", bad)
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.fc2\.bias: .* 1 non-finite"):
        clip.load_hf_clip(d)
