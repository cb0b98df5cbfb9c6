"""Builds tests/fixtures/llamagen_e2e/: tiny random LlamaGen models and what LlamaGen's own
sample path makes of them, for tests/test_llamagen_e2e.py (which runs without torch).

Development time only: needs torch, transformers, sentencepiece, ftfy, beautifulsoup4,
huggingface_hub and a LlamaGen checkout, whose modules are imported at run time (nothing of
LlamaGen is copied here)::

    python conversion/make_llamagen_e2e_fixture.py --llamagen-src /path/to/LlamaGen

What it does, step by step as ``autoregressive/sample/sample_t2i.py`` / ``sample_c2i.py`` do:

1. Models from LlamaGen's own classes: ``autoregressive.models.gpt.Transformer`` (t2i and c2i,
   4 x 4 token grid) and ``tokenizer.tokenizer_image.vq_model.VQModel`` (one downsampling: 8 x 8
   pixels), every floating weight replaced by seeded noise (LlamaGen zero-initialises the output
   layer, which would make every logit equal). The text encoder is the tiny HF T5 of
   ``tests/fixtures/t5_tiny`` (d_model 32 = the t2i GPT's caption_dim; its own spiece.model).
   Saved as ``{"model": state_dict}`` .pt files, as LlamaGen's checkpoints are.
2. t2i: ``language.t5.T5Embedder`` on the tiny T5 folder (its default preprocessing: clean_caption
   twice; max length 120), ``get_text_embeddings(prompts)``, the left padding of sample_t2i
   (valid rows rolled to the end, mask flipped, features times mask), then
   ``autoregressive.models.generate.generate(gpt, c_indices, 16, c_emb_masks, cfg_scale=7.5,
   temperature=1.0, top_k=1, top_p=1.0, sample_logits=True)``.
   c2i: ``generate(gpt, class ids, 16, cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_k=1,
   top_p=1.0, sample_logits=True)``. With top_k = 1 the multinomial draw has one choice.
3. ``vq_model.decode_code(tokens, [B, codebook_embed_dim, 4, 4])`` -> float images in about
   [-1, 1], then the uint8 step of ``torchvision.utils.save_image(..., normalize=True,
   value_range=(-1, 1))`` per image (clamp to [-1, 1], map to [0, 1], ``* 255 + 0.5``, clamp to
   [0, 255], truncate to uint8); torchvision is not needed, and no grid is assembled.

Patches and deviations from the sample scripts (each needed to run them on this machine):

- precision float32 (the scripts' ``--precision none``; their default is bf16) and CPU;
- ``T5Embedder`` is given ``t5_model_kwargs={"torch_dtype": torch.float32}``: its default adds
  ``device_map``, which needs the ``accelerate`` package;
- the VQ's Encoder/Decoder/Normalize are LlamaGen's with tiny ``ch``/``num_res_blocks`` and
  GroupNorm groups (LlamaGen hard-codes 128 / 2 / 32), passed in while the model is built;
  ``codebook_show_usage=False`` (no 65536-entry usage buffer; it plays no part in decoding);
- GPTs are built with ``ModelArgs`` directly (tiny sizes instead of a ``GPT_models`` preset);
  ``n_kv_head`` is left unset (LlamaGen's KV cache assumes n_kv_head == n_head).

Writes (all < 1 MB together):
  gpt_t2i.pt, gpt_c2i.pt, vq.pt     LlamaGen checkpoints ({"model": state_dict})
  t5_features.npz                   LlamaGen's T5 features of the prompts, left-padded:
                                    features (P, 120, 32) float32, mask (P, 120) bool, prompts (P,)
  expected.npz                      t2i_tokens / c2i_tokens (P, 16) int32, t2i_images /
                                    c2i_images (P, 8, 8, 3) float32 NHWC (decode_code output),
                                    t2i_uint8 / c2i_uint8 (P, 8, 8, 3), t2i_input_ids (P, 120)
  expected.json                     prompts, their preprocessed text, piece counts, class ids,
                                    sampling settings, configs, versions, the T5 folder's hashes
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_folder import fixture_folder  # noqa: E402  (same folder)
from make_fixtures import _import_llamagen, randomize  # noqa: E402  (same folder, dev-time helpers)

GRID = 4
T5_LEN = 120
GPT_COMMON = dict(dim=16, n_layer=2, n_head=2, multiple_of=16, vocab_size=16, block_size=GRID * GRID,
                  token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                  drop_path_rate=0.0, class_dropout_prob=0.1)
GPT_T2I = dict(GPT_COMMON, model_type="t2i", cls_token_num=T5_LEN, caption_dim=32)
GPT_C2I = dict(GPT_COMMON, model_type="c2i", cls_token_num=1, num_classes=10)
VQ = dict(ch=4, num_res_blocks=1, norm_groups=4, ch_mult=[1, 2], z_channels=8, codebook_size=16,
          codebook_embed_dim=4)
SAMPLING_T2I = dict(cfg_scale=7.5, temperature=1.0, top_k=1, top_p=1.0)
SAMPLING_C2I = dict(cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_k=1, top_p=1.0)
PROMPTS = [
    "A photo of a Red CAT on a <b>wooden</b> table https://example.com/cat.png",
    "two dogs &amp; a ball",
    ("A portrait photo of a kangaroo wearing an orange hoodie and blue sunglasses standing on the grass in "
     "front of the Sydney Opera House holding a sign on the chest that says Welcome Friends! A photo of an "
     "astronaut riding a horse in the forest. There is a river in front of them with water lilies."),
]
CLASS_IDS = [3, 7, 0]


@contextlib.contextmanager
def _tiny_vq_parts(vq_mod):
    """LlamaGen's Encoder/Decoder with VQ's ch and num_res_blocks and GroupNorm(norm_groups)
    while a VQModel is constructed (its __init__ passes neither)."""
    names = ("Encoder", "Decoder", "Normalize")
    original = {n: getattr(vq_mod, n) for n in names}
    vq_mod.Encoder = functools.partial(original["Encoder"], ch=VQ["ch"], num_res_blocks=VQ["num_res_blocks"])
    vq_mod.Decoder = functools.partial(original["Decoder"], ch=VQ["ch"], num_res_blocks=VQ["num_res_blocks"])
    vq_mod.Normalize = lambda c, norm_type="group": nn.GroupNorm(VQ["norm_groups"], c, eps=1e-6, affine=True)
    try:
        yield
    finally:
        for n, fn in original.items():
            setattr(vq_mod, n, fn)


def build_models(src: Path):
    gpt_mod = _import_llamagen(src, "autoregressive.models.gpt")
    vq_mod = _import_llamagen(src, "tokenizer.tokenizer_image.vq_model")
    models = {}
    for seed, (name, cfg) in enumerate((("gpt_t2i", GPT_T2I), ("gpt_c2i", GPT_C2I)), start=11):
        model = gpt_mod.Transformer(gpt_mod.ModelArgs(**cfg))
        model.load_state_dict(randomize(model, seed), strict=True)
        models[name] = model.eval()
    with _tiny_vq_parts(vq_mod):
        vq = vq_mod.VQModel(vq_mod.ModelArgs(
            codebook_size=VQ["codebook_size"], codebook_embed_dim=VQ["codebook_embed_dim"],
            codebook_show_usage=False, encoder_ch_mult=VQ["ch_mult"], decoder_ch_mult=VQ["ch_mult"],
            z_channels=VQ["z_channels"]))
    sd = randomize(vq, 13)
    for k, v in sd.items():  # keep the decoder's activations O(1): images near [-1, 1]
        if v.is_floating_point() and v.ndim == 4:
            v.mul_(0.6)
    vq.load_state_dict(sd, strict=True)
    models["vq"] = vq.eval()
    return models


def to_uint8_like_save_image(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8 as save_image(normalize=True,
    value_range=(-1, 1)) writes one image."""
    x = images.clamp(-1.0, 1.0).sub(-1.0).div(2.0)
    return x.mul(255).add(0.5).clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()


def t2i_sample(src: Path, gpt, vq, t5_dir: Path):
    t5 = _import_llamagen(src, "language.t5")
    gen = _import_llamagen(src, "autoregressive.models.generate")
    embedder = t5.T5Embedder(device="cpu", local_cache=True, cache_dir=str(t5_dir.parent), dir_or_name=t5_dir.name,
                             torch_dtype=torch.float32, model_max_length=T5_LEN,
                             t5_model_kwargs={"torch_dtype": torch.float32})
    caption_embs, emb_masks = embedder.get_text_embeddings(PROMPTS)
    texts = [embedder.text_preprocessing(p) for p in PROMPTS]
    ids = embedder.tokenizer(texts, max_length=T5_LEN, padding="max_length", truncation=True,
                             return_tensors="pt")["input_ids"]
    n_pieces = [len(embedder.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # sample_t2i's left padding: each row's valid (leading) features move to the end, the mask is flipped
    valid = emb_masks.sum(dim=1).tolist()
    c_indices = torch.stack([torch.roll(e, -int(n), dims=0) for e, n in zip(caption_embs, valid)])
    c_emb_masks = torch.flip(emb_masks, dims=[-1])
    c_indices = c_indices * c_emb_masks[:, :, None]
    torch.manual_seed(0)
    tokens = gen.generate(gpt, c_indices, GRID * GRID, c_emb_masks, sample_logits=True, **SAMPLING_T2I)
    images = vq.decode_code(tokens, [len(PROMPTS), VQ["codebook_embed_dim"], GRID, GRID])
    info = {"prompts": PROMPTS, "preprocessed": texts, "pieces": n_pieces, "valid_tokens": valid,
            "truncated": [n > T5_LEN - 1 for n in n_pieces]}
    arrays = {"t2i_tokens": tokens.int().numpy(), "t2i_images": images.permute(0, 2, 3, 1).float().numpy(),
              "t2i_uint8": to_uint8_like_save_image(images), "t2i_input_ids": ids.int().numpy()}
    features = {"features": c_indices.float().numpy(), "mask": c_emb_masks.bool().numpy(),
                "prompts": np.array(PROMPTS)}
    return arrays, features, info


def c2i_sample(src: Path, gpt, vq):
    gen = _import_llamagen(src, "autoregressive.models.generate")
    torch.manual_seed(0)
    tokens = gen.generate(gpt, torch.tensor(CLASS_IDS), GRID * GRID, sample_logits=True, **SAMPLING_C2I)
    images = vq.decode_code(tokens, [len(CLASS_IDS), VQ["codebook_embed_dim"], GRID, GRID])
    return {"c2i_tokens": tokens.int().numpy(), "c2i_images": images.permute(0, 2, 3, 1).float().numpy(),
            "c2i_uint8": to_uint8_like_save_image(images)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamagen-src", required=True, type=Path)
    ap.add_argument("--t5", type=Path, default=ROOT / "tests" / "fixtures" / "t5_tiny")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "llamagen_e2e")
    a = ap.parse_args()
    src, t5_dir = a.llamagen_src.resolve(), a.t5.resolve()
    torch.set_grad_enabled(False)
    models = build_models(src)
    # the weights as built (generate() later attaches KV-cache buffers to the attention modules)
    weights = {name: OrderedDict((k, v.clone()) for k, v in m.state_dict().items()) for name, m in models.items()}
    t2i, features, t2i_info = t2i_sample(src, models["gpt_t2i"], models["vq"], t5_dir)
    c2i = c2i_sample(src, models["gpt_c2i"], models["vq"])
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    import transformers

    facts = {
        "made_by": "conversion/make_llamagen_e2e_fixture.py",
        "llamagen_commit": commit or None, "torch": torch.__version__, "transformers": transformers.__version__,
        "grid_size": GRID, "image_size": int(t2i["t2i_images"].shape[1]), "t5_max_length": T5_LEN,
        "gpt_t2i": GPT_T2I, "gpt_c2i": GPT_C2I, "vq": VQ,
        "convert_overrides": {"gpt": {"n_head": GPT_COMMON["n_head"], "grid_size": GRID},
                              "vq": {"norm_groups": VQ["norm_groups"]}},
        "t2i": dict(t2i_info, sampling=SAMPLING_T2I, seed=0),
        "c2i": {"class_ids": CLASS_IDS, "sampling": SAMPLING_C2I, "seed": 0},
        "t5_dir": "tests/fixtures/t5_tiny",
        "t5_sha256": {f.name: _sha256(f) for f in sorted(t5_dir.iterdir())
                      if f.name in ("config.json", "model.safetensors", "spiece.model")},
    }
    with fixture_folder(a.out, 1_000_000) as tmp:
        for name in ("gpt_t2i", "gpt_c2i", "vq"):
            torch.save({"model": weights[name]}, tmp / f"{name}.pt")
        np.savez(tmp / "expected.npz", **t2i, **c2i)
        np.savez(tmp / "t5_features.npz", **features)
        (tmp / "expected.json").write_text(json.dumps(facts, indent=1) + "\n")
    print("t2i tokens\n", t2i["t2i_tokens"], "\nc2i tokens\n", c2i["c2i_tokens"])
    print("pieces", t2i_info["pieces"], "images range", t2i["t2i_images"].min(), t2i["t2i_images"].max())


if __name__ == "__main__":
    main()
