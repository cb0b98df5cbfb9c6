"""Builds tests/fixtures/janus_tiny/: a tiny random Janus-Pro made with Janus's own classes, saved in
the released layout, and what Janus's own text-to-image loop makes of it, for tests/test_janus.py
(which runs without torch).

Development time only: needs torch, transformers 4.x (Janus's config classes break under 5.x),
tokenizers, attrdict, einops and a checkout of deepseek-ai/Janus, whose `janus` package is
imported at run time and whose `generate` function is taken from its generation_inference.py
(nothing of Janus is copied here)::

    python -m venv .venv-fixture && .venv-fixture/bin/pip install torch "transformers<5" tokenizers \
        attrdict einops pillow numpy
    .venv-fixture/bin/python conversion/make_janus_fixture.py --janus-src /path/to/Janus

What it does:

1. A tiny byte-level BPE tokenizer trained with the `tokenizers` library on the prompts' words,
   with the special tokens Janus-Pro's generation reads (BOS `<｜begin▁of▁sentence｜>`, the pad
   `<｜▁pad▁｜>`, `<begin_of_image>`, `<|User|>`, `<|Assistant|>`, ...), saved as tokenizer.json with
   tokenizer_config.json / special_tokens_map.json / processor_config.json /
   preprocessor_config.json as the released folders have them.
2. `janus.models.MultiModalityCausalLM` from a config.json in the released layout (nested
   language_config / vision_config / aligner_config / gen_vision_config / gen_aligner_config /
   gen_head_config blocks with `cls` and `params`), tiny sizes, GQA (4 query heads, 2 key/value
   heads), every floating weight replaced by seeded noise and rounded to bfloat16 (the released
   weights are bfloat16), saved with `torch.save` as `released/pytorch_model.bin` and as two shards
   with `pytorch_model.bin.index.json` (`released_sharded/`), each folder complete.
3. The saved folder loaded back with `MultiModalityCausalLM.from_pretrained` and
   `VLChatProcessor.from_pretrained` (float32), the prompt built as the Janus-Pro README does
   (`apply_sft_template_for_multi_turn_prompts` with roles `<|User|>` / `<|Assistant|>`, empty
   system prompt, then `image_start_tag`), and generation_inference.py's `generate` run on it with
   `parallel_size=1`, `image_token_num_per_image=16`, `img_size=8`, `patch_size=2`, at cfg_weight 1
   and 5, greedily: `torch.multinomial` answers the argmax of the probabilities it is given (the
   temperature -> 0 limit of the same draw). Captured: those probabilities (softmax of the guided
   logits, every step), the tokens and float images `decode_code` was called with / returned, and
   the uint8 images handed to `PIL.Image.fromarray`.

Patches and stand-ins (each needed to build or run Janus's code here; none touches the generation path):

- the VQ: Janus builds the full VQ-16 (`VQ_models["VQ-16"]()`, ~70M parameters) whatever its config
  says; while the model is built, `VQ_models["VQ-16"]` makes Janus's `VQModel` with a 32-code
  codebook of dimension 8 (Janus's generate hard-codes 8), `ch_mult=[1, 2]`, `z_channels=8`, no
  usage buffer, and its `Encoder` / `Decoder` / `Normalize` get ch 4, one res block and 4 GroupNorm
  groups (Janus hard-codes 128 / 2 / 32). The same patch is in place when the folder is reloaded.
- the understanding tower: `janus.models.siglip_vit.create_siglip_vit` (SigLIP-L, 300M parameters,
  via timm) is replaced by a `Linear(4, 4)` stand-in, so `vision_model.*` and `aligner.*` weights
  exist in the file (generation ignores them) without the tower;
- torchvision: the mirror's torchvision is a CUDA build that cannot load next to CPU torch; Janus
  imports it for image preprocessing only, so a stand-in module that raises if called is installed;
- `.cuda()` is the identity (CPU); generate() saves jpgs into ./generated_samples: run in a temp folder.

Writes (well under 1 MB together): released/ and released_sharded/ (config.json, the weights,
tokenizer files), expected.npz (input ids, and per cfg the step distributions, tokens, float and uint8 images), expected.json
(prompts, settings, sizes, versions, the Janus commit).
"""
from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_folder import fixture_folder  # noqa: E402  (same folder)

GRID, IMAGE_VOCAB, CODE_DIM = 4, 32, 8
VQ = dict(ch=4, num_res_blocks=1, norm_groups=4, ch_mult=[1, 2], z_channels=8)
TEXT_VOCAB = 320  # the LM's embedding rows (>= the tokenizer's size, as Janus-Pro's 102400 >= 100015)
LANGUAGE = dict(vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_theta=10000.0, model_type="llama", torch_dtype="bfloat16")
GEN_HEAD_WIDTH = 48  # image_token_embed: gen_head's hidden width (Janus-Pro: the LM's hidden size)
CFG_WEIGHTS = (1.0, 5.0)
PROMPTS = ["a photo of a cat", "  two red apples on a wooden table, in the morning light  ",
           "a blue dog"]
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
SPECIALS = [BOS, EOS, PAD, "<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>"]
CORPUS = PROMPTS + ["a photo of two cats and a dog on a table", "red green blue yellow white black",
                    "the morning light in a wooden room", "an apple, a cat, a dog; photos of tables"]


def config_json() -> dict:
    """config.json in the released layout (tiny sizes)."""
    return {
        "model_type": "multi_modality", "torch_dtype": "bfloat16", "transformers_version": "4.33.1",
        "language_config": LANGUAGE,
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                          "params": {"image_size": 8, "model_name": "siglip_large_patch16_384",
                                     "select_feature": "same", "select_layer": -1}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                           "params": {"depth": 2, "input_dim": 4, "n_embed": LANGUAGE["hidden_size"],
                                      "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision",
                              "params": {"image_token_size": IMAGE_VOCAB, "n_embed": CODE_DIM}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                               "params": {"depth": 2, "input_dim": CODE_DIM, "n_embed": LANGUAGE["hidden_size"],
                                          "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head",
                            "params": {"image_token_embed": GEN_HEAD_WIDTH, "image_token_size": IMAGE_VOCAB,
                                       "n_embed": LANGUAGE["hidden_size"]}},
    }


# ------------------------------------------------------------------------------ environment stand-ins
def install_stand_ins(janus_src: Path) -> None:
    """A torchvision stand-in (installed after transformers is imported, so transformers sees no
    torchvision), the SigLIP stand-in, and Janus on sys.path."""
    import transformers  # noqa: F401  (its availability checks run now, without the stand-in)

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is a stand-in in the fixture environment (image preprocessing only)")

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms.Normalize = unavailable
    tv.transforms.functional.resize = unavailable
    tv.transforms.functional.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                        "torchvision.transforms.functional": tv.transforms.functional})
    siglip = types.ModuleType("janus.models.siglip_vit")
    siglip.create_siglip_vit = lambda **kwargs: nn.Linear(4, 4)
    sys.modules["janus.models.siglip_vit"] = siglip
    sys.path.insert(0, str(janus_src))


@contextlib.contextmanager
def tiny_vq():
    """Janus's VQ_models["VQ-16"] builds the tiny VQ while the patch is in place (see the docstring)."""
    from janus.models import vq_model as vq_mod

    names = ("Encoder", "Decoder", "Normalize")
    original = {n: getattr(vq_mod, n) for n in names}
    vq16 = vq_mod.VQ_models["VQ-16"]
    vq_mod.Encoder = functools.partial(original["Encoder"], ch=VQ["ch"], num_res_blocks=VQ["num_res_blocks"])
    vq_mod.Decoder = functools.partial(original["Decoder"], ch=VQ["ch"], num_res_blocks=VQ["num_res_blocks"])
    vq_mod.Normalize = lambda c, norm_type="group": nn.GroupNorm(VQ["norm_groups"], c, eps=1e-6, affine=True)
    vq_mod.VQ_models["VQ-16"] = lambda **kw: vq_mod.VQModel(vq_mod.ModelArgs(
        codebook_size=IMAGE_VOCAB, codebook_embed_dim=CODE_DIM, codebook_show_usage=False,
        encoder_ch_mult=VQ["ch_mult"], decoder_ch_mult=VQ["ch_mult"], z_channels=VQ["z_channels"]))
    try:
        yield
    finally:
        for n, fn in original.items():
            setattr(vq_mod, n, fn)
        vq_mod.VQ_models["VQ-16"] = vq16


# ------------------------------------------------------------------------------ the released folder
def write_tokenizer(folder: Path) -> None:
    """tokenizer.json (byte-level BPE, trained here) and the configs Janus's processor reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TEXT_VOCAB - 20, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + [f"<|User|>: {p.strip()}\n\n<|Assistant|>:" for p in PROMPTS], trainer)
    assert tok.get_vocab_size() <= TEXT_VOCAB
    tok.save(str(folder / "tokenizer.json"))
    files = {
        "tokenizer_config.json": {"add_bos_token": True, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS,
                                  "clean_up_tokenization_spaces": False, "model_max_length": 16384,
                                  "pad_token": None, "tokenizer_class": "LlamaTokenizer", "unk_token": None,
                                  "legacy": True},
        "special_tokens_map.json": {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                                    "additional_special_tokens": ["<image_placeholder>", "<|User|>",
                                                                  "<|Assistant|>"]},
        "processor_config.json": {"add_special_token": False, "ignore_id": -100, "image_tag": "<image_placeholder>",
                                  "mask_prompt": True, "num_image_tokens": 576, "processor_class": "VLChatProcessor",
                                  "sft_format": "deepseek"},
        "preprocessor_config.json": {"background_color": [127, 127, 127], "do_normalize": True,
                                     "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "VLMImageProcessor",
                                     "image_size": 8, "image_std": [0.5, 0.5, 0.5], "min_size": 4,
                                     "processor_class": "VLChatProcessor", "rescale_factor": 1 / 255},
    }
    for name, record in files.items():
        (folder / name).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def randomized_bf16(model: nn.Module, seed: int) -> dict:
    """model.state_dict() with every float entry seeded noise (matrices N(0, 1/fan_in), the VQ's
    convolutions half that, so images stay near [-1, 1]; vectors around 1 for norms and 0.1-scaled
    for biases; embeddings N(0, 1)), rounded to bfloat16."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    out = collections.OrderedDict()
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        noise = torch.randn(v.shape, generator=g)
        if "embed" in k and v.ndim == 2:
            x = noise
        elif v.ndim >= 2:
            x = noise / np.sqrt(np.prod(v.shape[1:])) * (0.5 if k.startswith("gen_vision_model.") else 1.0)
        elif k.endswith("norm.weight") or "layernorm" in k or ".norm" in k:
            x = 1.0 + 0.1 * noise
        else:
            x = 0.1 * noise
        out[k] = x.to(torch.bfloat16)
    return out


def save_released(model, folder: Path, sd: dict, *, shards: int) -> None:
    """config.json, tokenizer files and the weights (one file or `shards` files + index) in `folder`."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_json(), indent=2) + "\n")
    write_tokenizer(folder)
    if shards == 1:
        torch.save(sd, folder / "pytorch_model.bin")
        return
    keys = list(sd)
    cut = [i * len(keys) // shards for i in range(shards + 1)]
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = collections.OrderedDict((k, sd[k]) for k in keys[cut[s]:cut[s + 1]])
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
        total += sum(v.numel() * v.element_size() for v in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build(folder: Path) -> None:
    """Janus's model from the released config, randomized, written as released/ and released_sharded/."""
    from janus.models import MultiModalityCausalLM
    from janus.models.modeling_vlm import MultiModalityConfig

    with tiny_vq():
        model = MultiModalityCausalLM(MultiModalityConfig(**config_json()))
    sd = randomized_bf16(model, seed=30)
    save_released(model, folder / "released", sd, shards=1)
    save_released(model, folder / "released_sharded", sd, shards=2)


# ------------------------------------------------------------------------------ Janus's own loop
def janus_generate_function(janus_src: Path):
    """generation_inference.py's `generate`, compiled from that file alone (its module level loads
    a model from the hub: only the function definition is taken)."""
    path = janus_src / "generation_inference.py"
    tree = ast.parse(path.read_text())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate"]
    assert len(fn) == 1, f"{path}: no single `generate` function"
    import PIL.Image

    namespace = {"torch": torch, "np": np, "os": os, "PIL": PIL}
    exec(compile(ast.Module(body=fn, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["generate"]


@contextlib.contextmanager
def greedy_cpu_capture(mmgpt):
    """`.cuda()` as the identity, `torch.multinomial` as the argmax, and the decode_code calls and
    fromarray images recorded."""
    import PIL.Image

    seen = {"tokens": [], "images": [], "uint8": [], "probs": []}
    decode_code = mmgpt.gen_vision_model.decode_code

    def recording_decode(code_b, shape=None, channel_first=True):
        out = decode_code(code_b, shape=shape, channel_first=channel_first)
        seen["tokens"].append(code_b.clone())
        seen["images"].append(out.detach().float().permute(0, 2, 3, 1).clone())
        return out

    fromarray = PIL.Image.fromarray

    def recording_fromarray(a, *args, **kwargs):
        seen["uint8"].append(np.array(a, copy=True))
        return fromarray(a, *args, **kwargs)

    cuda, multinomial = torch.Tensor.cuda, torch.multinomial
    torch.Tensor.cuda = lambda self, *a, **k: self

    def argmax(probs, num_samples=1, **kwargs):
        seen["probs"].append(probs.clone())
        return torch.argmax(probs, dim=-1, keepdim=True)

    torch.multinomial = argmax
    mmgpt.gen_vision_model.decode_code = recording_decode
    PIL.Image.fromarray = recording_fromarray
    try:
        yield seen
    finally:
        torch.Tensor.cuda, torch.multinomial = cuda, multinomial
        mmgpt.gen_vision_model.decode_code = decode_code
        PIL.Image.fromarray = fromarray


def run_janus(janus_src: Path, folder: Path) -> tuple[dict, dict]:
    """Janus's loop on the released folder, greedily, at each cfg weight. Returns (arrays, facts)."""
    from janus.models import MultiModalityCausalLM, VLChatProcessor

    processor = VLChatProcessor.from_pretrained(str(folder))
    with tiny_vq():
        mmgpt = MultiModalityCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    generate = janus_generate_function(janus_src)
    texts, ids = [], []
    for p in PROMPTS:
        conversation = [{"role": "<|User|>", "content": p}, {"role": "<|Assistant|>", "content": ""}]
        sft = processor.apply_sft_template_for_multi_turn_prompts(conversations=conversation,
                                                                  sft_format=processor.sft_format, system_prompt="")
        texts.append(sft + processor.image_start_tag)
        ids.append(processor.tokenizer.encode(texts[-1]))
    width = max(map(len, ids))
    arrays = {"input_ids": np.array([[-1] * (width - len(i)) + i for i in ids], np.int32)}
    run_dir = Path(tempfile.mkdtemp(prefix="janus_run_"))
    cwd = os.getcwd()
    try:
        os.chdir(run_dir)
        for cfg_weight in CFG_WEIGHTS:
            tag = f"cfg{cfg_weight:g}"
            with greedy_cpu_capture(mmgpt) as seen:
                for text in texts:
                    generate(mmgpt, processor, text, temperature=1.0, parallel_size=1, cfg_weight=cfg_weight,
                             image_token_num_per_image=GRID * GRID, img_size=GRID * 2, patch_size=2)
            arrays[f"{tag}_tokens"] = torch.cat(seen["tokens"]).int().numpy()
            arrays[f"{tag}_images"] = torch.cat(seen["images"]).numpy()
            arrays[f"{tag}_uint8"] = np.stack(seen["uint8"])
            # the distribution each token was drawn from: (prompts, steps, image vocabulary)
            arrays[f"{tag}_probs"] = torch.stack(seen["probs"]).reshape(len(texts), GRID * GRID, -1).numpy()
    finally:
        os.chdir(cwd)
        shutil.rmtree(run_dir)
    facts = {"texts": texts, "pad_id": processor.pad_id, "image_start_id": processor.image_start_id,
             "bos_id": processor.tokenizer.bos_token_id, "tokenizer_size": len(processor.tokenizer)}
    return arrays, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--janus-src", required=True, type=Path, help="a checkout of deepseek-ai/Janus")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "janus_tiny")
    a = ap.parse_args()
    src = a.janus_src.resolve()
    install_stand_ins(src)
    torch.set_grad_enabled(False)
    with fixture_folder(a.out, 800_000) as tmp:  # well under 1 MB
        build(tmp)
        arrays, facts = run_janus(src, tmp / "released")
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        import tokenizers
        import transformers

        facts.update({
            "made_by": "conversion/make_janus_fixture.py", "janus_commit": commit or None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "prompts": PROMPTS, "cfg_weights": list(CFG_WEIGHTS),
            "temperature": 1.0, "greedy": "torch.multinomial -> argmax", "grid_size": GRID,
            "image_size": int(arrays["cfg1_images"].shape[1]), "vq_norm_groups": VQ["norm_groups"], "vq": VQ,
            "config": config_json()})
        np.savez(tmp / "expected.npz", **arrays)
        (tmp / "expected.json").write_text(json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
    for cfg_weight in CFG_WEIGHTS:
        tag = f"cfg{cfg_weight:g}"
        print(tag, "tokens\n", arrays[f"{tag}_tokens"], "\nimages range", arrays[f"{tag}_images"].min(),
              arrays[f"{tag}_images"].max())
    print("input ids\n", arrays["input_ids"])


if __name__ == "__main__":
    main()
