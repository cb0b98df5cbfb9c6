"""Generate the tiny CLIP reference fixture used by tests/test_clip.py (needs torch + transformers).

Run once at development time (torch and transformers installed):

    python conversion/make_clip_fixture.py

Writes ``tests/fixtures/clip_tiny/`` (about 250 KB), a Hugging Face CLIP folder plus what
transformers computes from it:

- ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``: a tiny byte-level BPE vocabulary
  laid out as CLIP's (256 byte characters, the same with ``</w>``, the merges, then
  ``<|startoftext|>``, ``<|endoftext|>``), 150 merges learnt here from GenEval-like prompts;
- ``config.json`` + ``model.safetensors``: a tiny random ``CLIPModel`` (text width 32, quick_gelu;
  vision width 24, gelu, 32 px images, 8 px patches; projection 16), with random biases, LayerNorm
  weights and logit scale so that no layout bug can hide behind zeros or ones;
- ``preprocessor_config.json``: CLIPImageProcessor settings (shortest edge 40, centre crop 32,
  bicubic, OpenAI's mean and std): the resize and the crop both do something;
- ``images.npz``: three uint8 images of different shapes; ``expected.npz``: transformers' outputs
  (models in float64): ``input_ids`` (10, 77) of ``PROMPTS`` (``padding="max_length"``,
  ``truncation=True``), ``pixel_values`` (3, 3, 32, 32) from ``CLIPImageProcessorPil`` (the
  processor whose resize is Pillow's, as the original CLIP's),
  ``text_embeds`` / ``image_embeds`` (``get_text_features`` / ``get_image_features``),
  ``logits_per_image`` (3, 10), and for raw id rows ``raw_ids`` (4, 20) the text embeddings under
  both pooling rules (``raw_text_embeds`` with eos_token_id = the end-of-text id,
  ``raw_text_embeds_legacy`` with eos_token_id = 2);
- ``tokenizer_fuzz.json``: [text, ids] for 200 random strings of odd pieces (case, whitespace of
  every kind, contractions, accents, digits of other scripts, emoji, special-token look-alikes).

The fixture is written into a temporary sibling folder and renamed into place (`atomic_dir`).
"""
from __future__ import annotations

import collections
import json
import os
import random
import sys

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from scalingar_jax.atomic import atomic_dir  # noqa: E402
from scalingar_jax.clip import _BYTE_CHARS  # noqa: E402  (GPT-2's byte table, also what the fixture checks)

OUT = os.path.join(HERE, "..", "tests", "fixtures", "clip_tiny")
NUM_MERGES = 150
CORPUS = [
    "a photo of a bench", "a photo of a red circle left of a blue square", "a photo of two dogs and a cat",
    "a photo of a toaster above a bicycle", "a photo of a giraffe", "a photo of three purple stars",
    "a photo of a green triangle below a yellow circle", "a photo of an orange and a banana",
    "a photo of a white cow right of a black horse", "a photo of four teddy bears",
    "the quick brown fox jumps over the lazy dog", "a photo of a pink umbrella and a brown suitcase",
]
PROMPTS = [
    "a photo of a bench",
    "a photo of a red circle left of a blue square",
    "A Photo of TWO dogs and a Cat.",
    "  a   photo\tof\na giraffe  ",
    "it's a dog's life, isn't it? they'll see",
    "3 apples and 12 oranges, 1/2 price!!",
    "café naïve résumé ΣΑΣ",
    "a <|endoftext|> in the middle",
    "",
    "a photo of " + " and ".join(["a red circle", "a blue square", "a green triangle"] * 8),
]
ALPHABET = ["a", "B", "the", "THE", "photo", " ", "  ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\xa0", "\u3000",
            "\u2009", "\u200b", "\u180e", "\x85", "'s", "'S", "'ll", "'LL", "'d", "'re", "'ve", "'m", "'x", "''",
            "!", "?!", ".", ",", "-", "_", "<", "|>", "<|", "<|endoftext|>", "<|ENDOFTEXT|>", "<|startoftext|>",
            "0", "42", "123", "½", "²", "٣", "Ⅻ", "é", "e\u0301", "\u0301", "ß", "İ", "ﬁ", "Σ", "ΣΑΣ", "ς",
            "你好", "日本", "🙂", "👍🏽", "\U0001f600x", "\x00", "\x7f", "ǅ", "ǈ", "Ω", "K"]


def train_merges(corpus, n):
    """Plain BPE on byte-mapped words with the end-of-word suffix, most frequent pair first."""
    words = collections.Counter()
    for line in corpus:
        for w in line.lower().split():
            chars = [_BYTE_CHARS[b] for b in w.encode("utf-8")]
            chars[-1] += "</w>"
            words[tuple(chars)] += 1
    merges = []
    for _ in range(n):
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return merges


def write_tokenizer(d):
    merges = train_merges(CORPUS, NUM_MERGES)
    vocab = {c: i for i, c in enumerate(_BYTE_CHARS)}
    for c in _BYTE_CHARS:
        vocab[c + "</w>"] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
                  f, indent=2)
    return vocab


def make_model(vocab_size, bos, eos, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=16)
    model = transformers.CLIPModel(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(1.7)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("class_embedding") or "embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return model


def make_images(seed=3):
    rng = np.random.default_rng(seed)
    out = {}
    for n, (h, w) in enumerate([(48, 48), (64, 40), (30, 71)]):  # 30x71 -> 40x94.67: int, not round
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
        out[f"image{n}"] = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return out


def write_fixture(tmp):
    vocab = write_tokenizer(tmp)
    tok = transformers.CLIPTokenizer.from_pretrained(tmp)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (tok.bos_token_id, tok.eos_token_id) == (bos, eos)
    model = make_model(len(vocab), bos, eos)
    model.save_pretrained(tmp, safe_serialization=True)
    pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 40},
           "resample": 3, "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
           "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
    with open(os.path.join(tmp, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)
    proc_args = {k: v for k, v in pre.items() if k != "image_processor_type"}
    proc = transformers.models.clip.image_processing_pil_clip.CLIPImageProcessorPil(**proc_args)

    images = make_images()
    np.savez(os.path.join(tmp, "images.npz"), **images)
    pixel_values = proc([images[k] for k in sorted(images)], return_tensors="np")["pixel_values"]
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]

    m64 = model.double()
    rng = np.random.default_rng(5)
    raw = rng.integers(0, eos - 1, size=(4, 20))
    raw[0, 7] = eos
    raw[1, 3], raw[1, 12] = eos, eos  # two: the first counts
    raw[2, 0] = bos  # rows 2, 3 have no end-of-text token: position 0, or the largest id (legacy)
    with torch.no_grad():
        tids, pv = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(pixel_values).double()
        res = m64(input_ids=tids, pixel_values=pv)
        text_embeds = m64.get_text_features(input_ids=tids).pooler_output.numpy()
        image_embeds = m64.get_image_features(pixel_values=pv).pooler_output.numpy()
        raw_t = torch.from_numpy(raw)
        raw_embeds = m64.get_text_features(input_ids=raw_t).pooler_output.numpy()
        m64.text_model.eos_token_id = 2
        raw_legacy = m64.get_text_features(input_ids=raw_t).pooler_output.numpy()
    assert not np.allclose(raw_embeds[2:], raw_legacy[2:])
    np.savez(os.path.join(tmp, "expected.npz"), input_ids=ids.astype(np.int32),
             pixel_values=pixel_values.astype(np.float32), text_embeds=text_embeds, image_embeds=image_embeds,
             logits_per_image=res.logits_per_image.numpy(), raw_ids=raw.astype(np.int32),
             raw_text_embeds=raw_embeds, raw_text_embeds_legacy=raw_legacy)

    r = random.Random(7)
    fuzz = []
    for _ in range(200):
        text = "".join(r.choice(ALPHABET) for _ in range(r.randint(0, 12)))
        fuzz.append([text, tok(text, truncation=True, max_length=77)["input_ids"]])
    with open(os.path.join(tmp, "tokenizer_fuzz.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "fuzz": fuzz}, f)
    for name in os.listdir(tmp):
        if name == "generation_config.json":
            os.remove(os.path.join(tmp, name))
        else:
            os.chmod(os.path.join(tmp, name), 0o644)


def main() -> int:
    out = os.path.abspath(OUT)
    with atomic_dir(out, overwrite=True) as tmp:
        write_fixture(tmp)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {out}: {sorted(os.listdir(out))}, {size / 1024:.0f} KB; transformers {transformers.__version__}, "
          f"torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
