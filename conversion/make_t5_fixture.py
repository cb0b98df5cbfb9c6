"""Generate the tiny T5 reference fixture used by tests/test_t5.py (needs torch + transformers).

Run ONCE, in an environment with torch and transformers (NOT the project's core env), e.g.::

    python -m venv /tmp/t5env
    /tmp/t5env/bin/pip install torch==2.13.0          # CPU wheel first
    /tmp/t5env/bin/pip install transformers numpy sentencepiece protobuf
    /tmp/t5env/bin/python conversion/make_t5_fixture.py

Writes ``tests/fixtures/t5_tiny/`` (a few tens of KB):

- ``config.json`` + ``model.safetensors``: a tiny random ``T5EncoderModel`` (T5 v1.1 layout:
  gated-gelu FFN, no tied scaling) saved with ``save_pretrained(safe_serialization=True)``;
  deliberately odd sizes (``num_heads * d_kv != d_model``, non-default relative-attention
  buckets / max distance) and randomised LayerNorm weights, so layout bugs cannot cancel out;
- ``input_ids.npy`` (B, L) int32, ``attention_mask.npy`` (B, L) int32: ragged rows (full,
  right-padded, left-padded);
- ``expected.npy`` (B, L, d_model) float32: ``last_hidden_state`` computed in float64;
- ``buckets.npz``: HF's bidirectional relative-position buckets for offsets -300..300 with
  (num_buckets, max_distance) = (32, 128) (flan-t5) and (8, 20);
- ``spiece.model``: a tiny SentencePiece unigram model with T5's special ids (pad 0, eos 1,
  unk 2, no bos), and ``tokenizer_expected.json``: ids and masks produced by transformers'
  ``T5Tokenizer`` (``padding="max_length"``, ``truncation=True``) for a few prompts.

The fixture is written into a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "t5_tiny")

CONFIG = dict(
    vocab_size=100, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=20,
    layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
SEQ_LEN = 24
TOKENIZER_MAX_LEN = 12
CORPUS = [
    "a red circle above a blue square",
    "a small green triangle to the left of a large yellow circle",
    "two blue squares and one red triangle",
    "a photo of a cat sitting on a wooden table",
    "an astronaut riding a horse in the forest",
    "the quick brown fox jumps over the lazy dog",
    "a portrait of a kangaroo wearing an orange hoodie",
    "three purple stars below a white moon",
] * 8
PROMPTS = [
    "a red circle above a blue square",
    "a small green triangle to the left of a large yellow circle and two blue squares",
    "an astronaut riding a horse",
    "zebra",
    "  two   blue squares,  and one red triangle!  ",
]


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(**CONFIG)
    model = transformers.T5EncoderModel(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def make_inputs(seed: int = 2):
    rng = np.random.default_rng(seed)
    lengths = [SEQ_LEN, 13, 5, 9]
    ids = np.zeros((len(lengths), SEQ_LEN), np.int32)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        toks = rng.integers(3, CONFIG["vocab_size"], size=n).astype(np.int32)
        toks[-1] = 1  # </s>
        if b == 3:  # left-padded row: valid tokens at the end
            ids[b, -n:], mask[b, -n:] = toks, 1
        else:
            ids[b, :n], mask[b, :n] = toks, 1
    return ids, mask


def make_spiece(path_dir: str) -> str:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="identity",
        character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    path = os.path.join(path_dir, "spiece.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def main() -> int:
    out = os.path.abspath(OUT)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".t5_tiny.", dir=os.path.dirname(out))
    try:
        model = make_model()
        model.save_pretrained(tmp, safe_serialization=True)
        ids, mask = make_inputs()
        with torch.no_grad():
            ref = model.double()(input_ids=torch.from_numpy(ids).long(),
                                 attention_mask=torch.from_numpy(mask).long()).last_hidden_state
        np.save(os.path.join(tmp, "input_ids.npy"), ids)
        np.save(os.path.join(tmp, "attention_mask.npy"), mask)
        np.save(os.path.join(tmp, "expected.npy"), ref.numpy().astype(np.float32))

        # reference bucket tables (T5Attention._relative_position_bucket, bidirectional)
        from transformers.models.t5.modeling_t5 import T5Attention
        rel = torch.arange(-300, 301)
        np.savez(os.path.join(tmp, "buckets.npz"), relative_position=rel.numpy().astype(np.int32),
                 **{f"b{nb}_{md}": T5Attention._relative_position_bucket(rel, True, nb, md)
                    .numpy().astype(np.int8) for nb, md in ((32, 128), (8, 20))})

        make_spiece(tmp)
        # the way LlamaGen loads it (AutoTokenizer.from_pretrained on the checkpoint dir)
        tok = transformers.AutoTokenizer.from_pretrained(tmp, extra_ids=0)
        enc = tok(PROMPTS, max_length=TOKENIZER_MAX_LEN, padding="max_length", truncation=True,
                  add_special_tokens=True)
        with open(os.path.join(tmp, "tokenizer_expected.json"), "w") as f:
            json.dump({"max_length": TOKENIZER_MAX_LEN, "prompts": PROMPTS,
                       "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                       "transformers": transformers.__version__}, f, indent=1)
        # keep only what the tests read
        keep = {"config.json", "model.safetensors", "input_ids.npy", "attention_mask.npy",
                "expected.npy", "spiece.model", "tokenizer_expected.json", "buckets.npz"}
        for name in os.listdir(tmp):
            if name not in keep:
                os.remove(os.path.join(tmp, name))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {out} ({total / 1024:.1f} KiB): {sorted(os.listdir(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
