"""Builds the tiny checkpoint fixtures of `tests/fixtures/convert/` WITH torch (never imported by
the library or the tests, which read the files without torch).

Run in a separate environment that has torch (and, for the .safetensors fixture, the
`safetensors` package; without it an existing gpt_c2i.safetensors is kept):

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy safetensors
    /tmp/torchenv/bin/python conversion/make_fixtures.py [--out tests/fixtures/convert] \
        [--llamagen-src /path/to/LlamaGen]

With `--llamagen-src`, the ORIGINAL LlamaGen modules are imported from that checkout (at run
time; nothing of LlamaGen is copied here), every GPT/VQ fixture is loaded into them (strictly,
which also checks the skeleton key names below against LlamaGen's), and their outputs on fixed
random inputs are stored as reference outputs (llamagen_outputs.npz/.json). Without it, an
existing llamagen_outputs.* is left as is.

The module skeletons below reproduce LlamaGen's module hierarchy (attribute names, ModuleLists,
buffers) so that `state_dict()` yields the exact LlamaGen key names; they have no forward pass.
Everything is seeded, so the output is byte-for-byte reproducible for a given torch version.

Outputs (all tiny, < 1 MB together):
  gpt_c2i_{model,module,state_dict,bare}.pt   c2i GPT (GQA: n_head 2, n_kv_head 1) in each wrapper
  gpt_c2i_train.pt     {"model", "optimizer" (AdamW state), "steps", "args" (argparse.Namespace)}
  gpt_t2i_bf16.pt      t2i GPT in bfloat16, uncond_embedding of 120 rows x caption_dim 4
  gpt_t2i_gqa.pt       t2i GPT in float32 with grouped-query attention (n_head 4, n_kv_head 2) and
                       an ffn_dim_multiplier
  gpt_c2i.safetensors  the c2i GPT written by the `safetensors` package
  vq_tiny.pt           tiny VQ tokenizer {"model": sd} incl. the codebook_used buffer
  mixed.pt             bare dict: f32/f64/f16/bf16/i64/i32/i16/i8/u8/bool, 0-d, empty, and
                       non-contiguous views sharing storage (transpose, offset slice, expand)
  legacy.pt            pre-1.6 (non-zip) serialization (no tensors, so the bytes are stable)
  truncated.pt         gpt_c2i_model.pt cut in half
  malicious_os_system.pt   pickle calling os.system("touch /tmp/scalingar_marker_os_system")
  malicious_exec.pt        protocol-4 pickle calling builtins.exec(...) that would create
                           /tmp/scalingar_marker_exec
  expected.npz         reference arrays "<group>::<key>" (bfloat16 stored as uint16 bits, key
                       suffix "::bf16bits")
  expected.json        per-fixture facts: group, wrapper, other top-level keys, args, steps, config
  llamagen_outputs.npz (--llamagen-src) "<group>::<name>": the inputs and LlamaGen's outputs:
                       GPT groups gpt_c2i, gpt_t2i_bf16, gpt_t2i_gqa: "cond" (class ids (B,) or
                       left-padded caption features (B, 120, caption_dim)), "cond_mask" (t2i,
                       (B, 120) bool), "drop" (B,) bool (null condition), "tokens" (B, 16) and
                       "logits" (B, 16, vocab) float32, logits[:, k] predicting tokens[:, k];
                       VQ group vq_tiny: "codes" (B, h, w) and "pixels" (B, 2h, 2w, 3) float32
                       (NHWC, not clipped) from VQModel.decode_code
  llamagen_outputs.json  how each was computed (LlamaGen commit, torch version, notes)
"""
from __future__ import annotations

import argparse
import builtins
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

MARKER_OS_SYSTEM = "/tmp/scalingar_marker_os_system"
MARKER_EXEC = "/tmp/scalingar_marker_exec"


# ---------------------------------------------------------------------------------------------
# LlamaGen-shaped module skeletons (names only; the weights are filled with seeded noise)
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Attention(nn.Module):
    def __init__(self, dim, n_head, n_kv_head):
        super().__init__()
        hd = dim // n_head
        self.wqkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * hd, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)


class Block(nn.Module):
    def __init__(self, dim, n_head, n_kv_head, hidden):
        super().__init__()
        self.attention = Attention(dim, n_head, n_kv_head)
        self.feed_forward = FeedForward(dim, hidden)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, dim):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # + the CFG null class


class MLP(nn.Module):
    def __init__(self, cin, hidden, cout):
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, cout, bias=False)


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_dim, dim, token_num=120):
        super().__init__()
        self.cap_proj = MLP(caption_dim, dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(token_num, caption_dim) / caption_dim**0.5)


class Transformer(nn.Module):
    def __init__(self, model_type, n_layer, n_head, dim, vocab, hidden, n_kv_head=None, num_classes=10, caption_dim=4):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if model_type == "c2i":
            self.cls_embedding = LabelEmbedder(num_classes, dim)
        else:
            self.cls_embedding = CaptionEmbedder(caption_dim, dim)
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.tok_dropout = nn.Dropout(0.1)
        self.layers = nn.ModuleList(Block(dim, n_head, n_kv_head, hidden) for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)


def _norm(c):
    return nn.GroupNorm(num_groups=VQ_TINY["norm_groups"], num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)


class Resample(nn.Module):
    def __init__(self, c, stride):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=stride, padding=0 if stride == 2 else 1)


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, in_channels=3):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for lvl in range(n):
            blk = nn.Module()
            blk.res, blk.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blk.res.append(ResnetBlock(block_in, ch * ch_mult[lvl]))
                block_in = ch * ch_mult[lvl]
                if lvl == n - 1:
                    blk.attn.append(AttnBlock(block_in))
            if lvl != n - 1:
                blk.downsample = Resample(block_in, 2)
            self.conv_blocks.append(blk)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_channels=3):
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.conv_blocks = nn.ModuleList()
        for lvl in reversed(range(n)):  # conv_blocks.0 is the lowest resolution
            blk = nn.Module()
            blk.res, blk.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blk.res.append(ResnetBlock(block_in, ch * ch_mult[lvl]))
                block_in = ch * ch_mult[lvl]
                if lvl == n - 1:
                    blk.attn.append(AttnBlock(block_in))
            if lvl != 0:
                blk.upsample = Resample(block_in, 1)
            self.conv_blocks.append(blk)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)


class VectorQuantizer(nn.Module):
    def __init__(self, n_e, e_dim):
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)
        self.register_buffer("codebook_used", torch.zeros(64))  # LlamaGen: 65536; shrunk here


class VQModel(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, codebook_size, embed_dim):
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)
        self.quantize = VectorQuantizer(codebook_size, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)


def randomize(module: nn.Module, seed: int) -> OrderedDict:
    """module.state_dict() with every float entry replaced by seeded noise (ones stay distinct)."""
    g = torch.Generator().manual_seed(seed)
    sd = module.state_dict()
    for k, v in sd.items():
        if v.is_floating_point():
            v.copy_(torch.randn(v.shape, generator=g) * 0.5)
    return sd


# ---------------------------------------------------------------------------------------------
# Malicious payloads
# ---------------------------------------------------------------------------------------------


class OsSystemPayload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER_OS_SYSTEM}",))


class ExecPayload:
    def __reduce__(self):
        return (builtins.exec, (f"open({MARKER_EXEC!r}, 'w').close()",))


# ---------------------------------------------------------------------------------------------


GPT_C2I = dict(model_type="c2i", n_layer=2, n_head=2, n_kv_head=1, dim=16, vocab_size=32, num_classes=10,
               multiple_of=16, grid_size=4)
GPT_T2I = dict(model_type="t2i", n_layer=2, n_head=2, n_kv_head=None, dim=16, vocab_size=32, cls_token_num=120,
               caption_dim=4, multiple_of=16, grid_size=4)
# GQA with more than one kv head: query head j must read kv head j // 2 (repeat_interleave); a
# small ffn_dim_multiplier keeps the file small (FFN hidden int(0.25 * 85) -> 32)
GPT_T2I_GQA = dict(model_type="t2i", n_layer=2, n_head=4, n_kv_head=2, dim=32, vocab_size=32, cls_token_num=120,
                   caption_dim=4, multiple_of=16, ffn_dim_multiplier=0.25, grid_size=4)
# scalingar_jax.vq.VQConfig field names; GroupNorm uses norm_groups groups
VQ_TINY = dict(ch=4, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, codebook_size=8, codebook_embed_dim=2,
               in_channels=3, out_channels=3, norm_groups=4)


def ffn_hidden(dim, multiple_of, multiplier=None):
    h = int(2 * 4 * dim / 3)
    if multiplier is not None:
        h = int(multiplier * h)
    return h if h % multiple_of == 0 else h + multiple_of - h % multiple_of


def build_gpt(cfg, seed):
    m = Transformer(cfg["model_type"], cfg["n_layer"], cfg["n_head"], cfg["dim"], cfg["vocab_size"],
                    ffn_hidden(cfg["dim"], cfg["multiple_of"], cfg.get("ffn_dim_multiplier")), cfg.get("n_kv_head"), cfg.get("num_classes", 10),
                    cfg.get("caption_dim", 4))
    return m, randomize(m, seed)


# ---------------------------------------------------------------------------------------------
# Reference outputs from the original LlamaGen modules (imported from the user's checkout)
# ---------------------------------------------------------------------------------------------


def _import_llamagen(src: Path, module: str):
    import importlib

    sys.path.insert(0, str(src))
    try:
        mod = importlib.import_module(module)
    finally:
        sys.path.remove(str(src))
    assert Path(mod.__file__).resolve().is_relative_to(src), f"{module} was not imported from {src}"
    return mod


def gpt_inputs(cfg, seed, valid_counts=None):
    """Fixed inputs: batch 3 (two conditioned rows and a null-condition row), all 16 tokens of
    the 4 x 4 grid (15 fed back, so every grid row and column is exercised)."""
    rng = np.random.default_rng(seed)
    B, T = 3, cfg["grid_size"] ** 2
    inp = {"tokens": rng.integers(0, cfg["vocab_size"], (B, T)).astype(np.int32),
           "drop": np.array([False, False, True])}
    if cfg["model_type"] == "c2i":
        inp["cond"] = rng.integers(0, cfg["num_classes"], (B,)).astype(np.int32)
    else:
        n = cfg["cls_token_num"]
        valid = np.asarray(valid_counts)
        mask = np.arange(n)[None, :] >= (n - valid)[:, None]  # left padding: valid tokens at the end
        inp["cond"] = rng.standard_normal((B, n, cfg["caption_dim"])).astype(np.float32) * mask[:, :, None]
        inp["cond_mask"] = mask
    return inp


def llamagen_gpt_logits(gpt_mod, cfg, sd, inp):
    """LlamaGen's Transformer in eval mode (dropout off, no label/caption dropout), full-sequence
    forward (`idx` and `cond_idx` together, input_pos = arange(S)). For t2i the attention mask is
    LlamaGen's own `causal_mask` from `setup_caches`, restricted by the caption masks and given
    its diagonal the way `generate()` does it; the KV caches `setup_caches` creates are detached
    again so the forward attends over the sequence itself."""
    args = gpt_mod.ModelArgs(
        dim=cfg["dim"], n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_kv_head=cfg["n_kv_head"],
        multiple_of=cfg["multiple_of"], ffn_dim_multiplier=cfg.get("ffn_dim_multiplier"), vocab_size=cfg["vocab_size"], num_classes=cfg.get("num_classes", 1000),
        caption_dim=cfg.get("caption_dim", 2048), model_type=cfg["model_type"], cls_token_num=cfg.get("cls_token_num", 1),
        block_size=cfg["grid_size"] ** 2, class_dropout_prob=0.1,
        token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, drop_path_rate=0.0)
    model = gpt_mod.Transformer(args)
    model.load_state_dict(OrderedDict((k, v.float()) for k, v in sd.items()), strict=True)
    model.eval()
    n_cls = args.cls_token_num
    B, T = inp["tokens"].shape
    S = n_cls + T - 1
    drop = torch.from_numpy(inp["drop"])
    if cfg["model_type"] == "c2i":
        cond = torch.where(drop, model.num_classes, torch.from_numpy(inp["cond"]).long())
    else:  # the null caption is the learned uncond_embedding, as generate() builds the CFG half
        feats = torch.from_numpy(inp["cond"])
        cond = torch.where(drop[:, None, None], torch.zeros_like(feats) + model.cls_embedding.uncond_embedding, feats)
    mask = None
    if "cond_mask" in inp:
        model.setup_caches(max_batch_size=B, max_seq_length=S, dtype=torch.float32)
        emb_masks = torch.from_numpy(inp["cond_mask"])
        cm = model.causal_mask
        cm[:, :, :n_cls] = cm[:, :, :n_cls] * emb_masks.unsqueeze(1)
        eye = torch.eye(cm.size(1), cm.size(2))
        cm[:] = cm * (1 - eye) + eye
        mask = cm[:, None, :S, :S]
        for layer in model.layers:
            layer.attention.kv_cache = None
    with torch.no_grad():
        logits, _ = model(idx=torch.from_numpy(inp["tokens"][:, :-1]).long(), cond_idx=cond,
                          input_pos=torch.arange(S), mask=mask)
    return logits[:, n_cls - 1:].float().numpy()


def llamagen_vq_pixels(vq_mod, cfg, sd, codes):
    """LlamaGen's VQModel.decode_code. LlamaGen's VQModel hard-codes ch=128, num_res_blocks=2 and
    GroupNorm(32 groups), which a tiny fixture cannot have: the model is built by LlamaGen's own
    VQModel with its Encoder/Decoder given this config's ch / num_res_blocks and its Normalize
    the config's group count (module attributes swapped only while constructing)."""
    import functools

    saved = {n: getattr(vq_mod, n) for n in ("Encoder", "Decoder", "Normalize")}
    try:
        vq_mod.Encoder = functools.partial(saved["Encoder"], ch=cfg["ch"], num_res_blocks=cfg["num_res_blocks"])
        vq_mod.Decoder = functools.partial(saved["Decoder"], ch=cfg["ch"], num_res_blocks=cfg["num_res_blocks"])
        vq_mod.Normalize = lambda c, norm_type="group": nn.GroupNorm(cfg["norm_groups"], c, eps=1e-6, affine=True)
        model = vq_mod.VQModel(vq_mod.ModelArgs(
            codebook_size=cfg["codebook_size"], codebook_embed_dim=cfg["codebook_embed_dim"],
            encoder_ch_mult=list(cfg["ch_mult"]), decoder_ch_mult=list(cfg["ch_mult"]), z_channels=cfg["z_channels"]))
    finally:
        for n, v in saved.items():
            setattr(vq_mod, n, v)
    weights = OrderedDict((k, v) for k, v in sd.items() if k != "quantize.codebook_used")  # 65536 in LlamaGen
    res = model.load_state_dict(weights, strict=False)
    assert list(res.missing_keys) == ["quantize.codebook_used"] and not res.unexpected_keys, res
    model.eval()
    B, h, w = codes.shape
    with torch.no_grad():
        out = model.decode_code(torch.from_numpy(codes.reshape(-1)).long(), shape=(B, cfg["codebook_embed_dim"], h, w))
    return out.float().numpy().transpose(0, 2, 3, 1)


def llamagen_outputs(src: Path, fixtures: dict) -> tuple[dict, dict]:
    import subprocess

    gpt_mod = _import_llamagen(src, "autoregressive.models.gpt")
    vq_mod = _import_llamagen(src, "tokenizer.tokenizer_image.vq_model")
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    arrays, info = {}, {"llamagen_commit": commit, "torch": torch.__version__, "groups": {}}
    valid = {"gpt_t2i_bf16": [5, 120, 17], "gpt_t2i_gqa": [1, 64, 120]}
    for i, (group, (fname, cfg, sd)) in enumerate(fixtures.items()):
        if group.startswith("gpt"):
            inp = gpt_inputs(cfg, seed=100 + i, valid_counts=valid.get(group))
            inp["logits"] = llamagen_gpt_logits(gpt_mod, cfg, sd, inp)
            how = ("autoregressive.models.gpt.Transformer, eval mode, full-sequence forward with input_pos=arange(S)"
                   + ("; mask from setup_caches' causal_mask x caption masks + diagonal, as generate()"
                      if "cond_mask" in inp else "; causal (mask=None)"))
        else:
            rng = np.random.default_rng(100 + i)
            inp = {"codes": rng.integers(0, cfg["codebook_size"], (2, 3, 4)).astype(np.int32)}
            inp["pixels"] = llamagen_vq_pixels(vq_mod, cfg, sd, inp["codes"])
            how = ("tokenizer.tokenizer_image.vq_model.VQModel.decode_code; VQModel hard-codes ch=128, "
                   "num_res_blocks=2, GroupNorm(32): built with this config's ch, num_res_blocks and "
                   f"GroupNorm({cfg['norm_groups']}) passed to LlamaGen's Encoder/Decoder/Normalize")
        for k, v in inp.items():
            arrays[f"{group}::{k}"] = v
        info["groups"][group] = {"fixture": fname, "config": cfg, "how": how}
        print(f"LlamaGen outputs for {group} ({fname}): " + ", ".join(f"{k} {v.shape}" for k, v in inp.items()))
    return arrays, info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "convert"))
    ap.add_argument("--llamagen-src", default=None,
                    help="a LlamaGen checkout: also store the original modules' outputs (llamagen_outputs.npz)")
    cli = ap.parse_args()
    out = Path(cli.out)
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    expected: dict[str, np.ndarray] = {}
    facts: dict[str, dict] = {}

    def record(group, sd):
        for k, v in sd.items():
            if v.dtype == torch.bfloat16:
                expected[f"{group}::{k}::bf16bits"] = v.contiguous().view(torch.int16).numpy().view(np.uint16).copy()
            else:
                expected[f"{group}::{k}"] = v.contiguous().numpy().copy()

    def save(name, obj, **kw):
        # torch names the archive's top directory after the file: save under the final name
        torch.save(obj, tmp / name, **kw)

    # --- c2i GPT in every wrapper ------------------------------------------------------------
    gpt, sd = build_gpt(GPT_C2I, seed=1)
    record("gpt_c2i", sd)
    save("gpt_c2i_model.pt", {"model": sd})
    save("gpt_c2i_module.pt", {"module": sd})
    save("gpt_c2i_state_dict.pt", {"state_dict": sd})
    bare = OrderedDict(sd)
    # a non-contiguous (transposed-view) tensor inside a real model file
    bare["output.weight"] = sd["output.weight"].t().contiguous().t()
    assert not bare["output.weight"].is_contiguous()
    save("gpt_c2i_bare.pt", bare)
    for w in ("model", "module", "state_dict"):
        facts[f"gpt_c2i_{w}.pt"] = {"group": "gpt_c2i", "wrapper": w, "other_keys": [], "config": GPT_C2I}
    facts["gpt_c2i_bare.pt"] = {"group": "gpt_c2i", "wrapper": None, "other_keys": [], "config": GPT_C2I}

    # training checkpoint: optimizer state, step count, argparse.Namespace
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    loss = sum(p.float().pow(2).sum() for p in gpt.parameters())
    loss.backward()
    opt.step()
    train_sd = randomize(gpt, seed=1)  # same weights as `sd` (same seed), after the step
    args = argparse.Namespace(gpt_model="GPT-tiny", gpt_type="c2i", image_size=64, downsample_size=16,
                              num_classes=10, lr=1e-4, ema=False, results_dir=None, beta=[0.9, 0.95])
    save("gpt_c2i_train.pt", {"model": train_sd, "optimizer": opt.state_dict(), "steps": 1234, "args": args})
    facts["gpt_c2i_train.pt"] = {
        "group": "gpt_c2i", "wrapper": "model", "other_keys": ["optimizer", "steps", "args"],
        "steps": 1234, "args": vars(args), "config": GPT_C2I,
    }

    # --- t2i GPT in bfloat16 -----------------------------------------------------------------
    _, sd_t2i = build_gpt(GPT_T2I, seed=2)
    sd_t2i = OrderedDict((k, v.to(torch.bfloat16)) for k, v in sd_t2i.items())
    record("gpt_t2i_bf16", sd_t2i)
    save("gpt_t2i_bf16.pt", {"model": sd_t2i})
    facts["gpt_t2i_bf16.pt"] = {"group": "gpt_t2i_bf16", "wrapper": "model", "other_keys": [], "config": GPT_T2I}

    # --- t2i GPT with grouped-query attention (float32) ---------------------------------------
    _, sd_gqa = build_gpt(GPT_T2I_GQA, seed=5)
    record("gpt_t2i_gqa", sd_gqa)
    save("gpt_t2i_gqa.pt", {"model": sd_gqa})
    facts["gpt_t2i_gqa.pt"] = {"group": "gpt_t2i_gqa", "wrapper": "model", "other_keys": [], "config": GPT_T2I_GQA}

    # --- safetensors version of the c2i GPT --------------------------------------------------
    st_facts = {"group": "gpt_c2i", "wrapper": None, "other_keys": [], "config": GPT_C2I, "metadata": {"format": "pt"}}
    try:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "gpt_c2i.safetensors"),
                  metadata={"format": "pt"})  # one key: the Rust writer orders a map arbitrarily
        facts["gpt_c2i.safetensors"] = st_facts
    except ImportError:
        if (out / "gpt_c2i.safetensors").is_file():
            print("safetensors not installed: keeping the existing gpt_c2i.safetensors")
            facts["gpt_c2i.safetensors"] = st_facts
        else:
            print("safetensors not installed: skipping gpt_c2i.safetensors")

    # --- tiny VQ -----------------------------------------------------------------------------
    vq = VQModel(VQ_TINY["ch"], VQ_TINY["ch_mult"], VQ_TINY["num_res_blocks"], VQ_TINY["z_channels"],
                 VQ_TINY["codebook_size"], VQ_TINY["codebook_embed_dim"])
    sd_vq = randomize(vq, seed=3)
    record("vq_tiny", sd_vq)
    save("vq_tiny.pt", {"model": sd_vq})
    facts["vq_tiny.pt"] = {"group": "vq_tiny", "wrapper": "model", "other_keys": [], "config": VQ_TINY}

    # --- every dtype, 0-d, empty, and views sharing one storage ------------------------------
    g = torch.Generator().manual_seed(4)
    base = torch.randn(4, 6, generator=g)
    mixed = OrderedDict(
        f32=torch.randn(3, 5, generator=g),
        f64=torch.randn(2, 3, generator=g).double(),
        f16=torch.randn(3, 4, generator=g).half(),
        bf16=torch.randn(4, 3, generator=g).bfloat16(),
        i64=torch.arange(-3, 7),
        i32=torch.arange(12, dtype=torch.int32).reshape(3, 4),
        i16=torch.arange(-4, 4, dtype=torch.int16),
        i8=torch.arange(-4, 4, dtype=torch.int8),
        u8=torch.arange(250, 256, dtype=torch.uint8),
        bool=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3),
        base=base,
        transposed=base.t(),  # stride (1, 6)
        sliced=base[1:, 2:5],  # offset 8, stride (6, 1)
        expanded=base[0, :3].expand(2, 3),  # stride (0, 1)
        bf16_t=torch.randn(3, 2, generator=g).bfloat16().t(),
    )
    assert not mixed["transposed"].is_contiguous() and not mixed["sliced"].is_contiguous()
    record("mixed", mixed)
    save("mixed.pt", mixed)
    facts["mixed.pt"] = {"group": "mixed", "wrapper": None, "other_keys": []}

    # --- legacy, truncated, malicious --------------------------------------------------------
    # (no tensors: the legacy format names storages by memory address, which would make the
    # file differ from run to run; the reader only needs the legacy header to refuse it)
    save("legacy.pt", {"model": OrderedDict(), "steps": 1}, _use_new_zipfile_serialization=False)
    data = (tmp / "gpt_c2i_model.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    save("malicious_os_system.pt", {"model": OrderedDict(w=torch.ones(2)), "x": OsSystemPayload()})
    save("malicious_exec.pt", {"model": OrderedDict(w=torch.ones(2)), "x": ExecPayload()}, pickle_protocol=4)
    facts["malicious_os_system.pt"] = {"global": "posix.system", "marker": MARKER_OS_SYSTEM}
    facts["malicious_exec.pt"] = {"global": "builtins.exec", "marker": MARKER_EXEC}

    np.savez(tmp / "expected.npz", **expected)
    (tmp / "expected.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")

    # --- reference outputs of the original LlamaGen modules ----------------------------------
    if cli.llamagen_src:
        outputs, info = llamagen_outputs(Path(cli.llamagen_src).resolve(), {
            "gpt_c2i": ("gpt_c2i_model.pt", GPT_C2I, sd),
            "gpt_t2i_bf16": ("gpt_t2i_bf16.pt", GPT_T2I, sd_t2i),
            "gpt_t2i_gqa": ("gpt_t2i_gqa.pt", GPT_T2I_GQA, sd_gqa),
            "vq_tiny": ("vq_tiny.pt", VQ_TINY, sd_vq),
        })
        np.savez(tmp / "llamagen_outputs.npz", **outputs)
        (tmp / "llamagen_outputs.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    else:
        print("no --llamagen-src: llamagen_outputs.npz not regenerated")

    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in sorted(tmp.iterdir()):
        shutil.copyfile(f, out / f.name)
        total += f.stat().st_size
        print(f"{f.stat().st_size:8d}  {f.name}")
    shutil.rmtree(tmp)
    print(f"{total:8d}  total bytes -> {out}")
    assert total < 1_000_000, "fixtures must stay under 1 MB"


if __name__ == "__main__":
    main()
