"""Independent reference forward passes for checking a conversion (`scalingar convert --verify`).

Two references, both computed straight from a PyTorch-layout LlamaGen state dict (PyTorch key
-> `LazyTensor` or array), so they check the key/shape mapping as well as the Flax model:

* NumPy (default, no torch): `gpt_logits` and `vq_decode`, written for this purpose from the
  LlamaGen architecture (`/work/shared/specs/llamagen.md`), sharing no code with
  `scalingar_jax.gpt` / `scalingar_jax.vq`. They compute in float64 (`dtype=`) on PyTorch's
  layouts: Linear weights (out, in) applied as `x @ W.T`, NCHW activations with OIHW conv
  weights, and read one tensor at a time when it is used (`LazyTensor.numpy()`), so a GPT-XL
  reference needs a few hundred MB beyond the token embedding and output tables.
* The original PyTorch code (`LlamaGenReference`): LlamaGen's own `Transformer` / `VQModel`
  imported at run time from the user's checkout (`--llamagen-src PATH`), with the same state
  dict copied in tensor by tensor. Needs torch; nothing of LlamaGen is shipped here.

`random_inputs` draws the small inputs `--verify` uses (batch 2, a few tokens or a 3 x 4 code
grid), and `compare` reports the largest absolute and relative difference.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import sys
from typing import Any, Mapping

import numpy as np

from scalingar_jax.convert.torch_pickle import LazyTensor

__all__ = [
    "random_inputs",
    "gpt_logits",
    "vq_decode",
    "compare",
    "LlamaGenReference",
    "LlamaGenSourceError",
]


def _get(sd: Mapping[str, Any], key: str, dtype) -> np.ndarray:
    if key not in sd:
        raise KeyError(f"the state dict has no {key!r}")
    v = sd[key]
    a = v.numpy() if isinstance(v, LazyTensor) else np.asarray(v)
    return a.astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Inputs and comparison
# --------------------------------------------------------------------------------------------


def random_inputs(kind: str, cfg, *, seed: int = 0, batch: int = 2, n_tokens: int | None = None,
                  code_grid: tuple[int, int] = (3, 4)) -> dict[str, np.ndarray]:
    """Small deterministic inputs for comparing a converted model with a reference.

    GPT (cfg: GPTConfig): "tokens" (batch, T) int32 with T = n_tokens or
      min(grid_size + 2, grid_size**2) (so the fed tokens reach the second grid row and both
      rotary halves are exercised); "drop" (batch,) bool, True on the last row (the CFG null
      condition) when batch > 1; "cond": c2i class ids (batch,) int32 in [0, num_classes), t2i
      features (batch, cls_token_num, caption_dim) float32, left-padded: row b has a random
      number of valid positions at the END, padded rows zeroed; "cond_mask" (t2i only)
      (batch, cls_token_num) bool, True at valid positions.
    VQ (cfg: VQConfig): "codes" (batch, h, w) int32 for `code_grid` = (h, w) (not square, so
      a transposed grid shows).
    """
    rng = np.random.default_rng(seed)
    if kind == "vq":
        h, w = code_grid
        return {"codes": rng.integers(0, cfg.codebook_size, (batch, h, w)).astype(np.int32)}
    if kind != "gpt":
        raise ValueError(f"unknown model kind {kind!r}; expected 'gpt' or 'vq'")
    T = n_tokens if n_tokens is not None else min(cfg.grid_size + 2, cfg.block_size)
    if not 2 <= T <= cfg.block_size:
        raise ValueError(f"the number of verification tokens must be in [2, {cfg.block_size}], got {T}")
    out: dict[str, np.ndarray] = {
        "tokens": rng.integers(0, cfg.vocab_size, (batch, T)).astype(np.int32),
        "drop": np.arange(batch) == batch - 1 if batch > 1 else np.zeros(batch, bool),
    }
    if cfg.model_type == "c2i":
        out["cond"] = rng.integers(0, cfg.num_classes, (batch,)).astype(np.int32)
    else:
        n = cfg.cls_token_num
        valid = rng.integers(1, n + 1, (batch,))
        mask = np.arange(n)[None, :] >= (n - valid)[:, None]  # left padding: valid at the end
        feats = rng.standard_normal((batch, n, cfg.caption_dim)).astype(np.float32)
        out["cond"] = feats * mask[:, :, None]
        out["cond_mask"] = mask
    return out


def compare(got, want) -> dict[str, float]:
    """{"max_abs": max |got - want|, "max_rel": max_abs / max |want|, "ref_max": max |want|}.

    The relative figure divides by the largest reference magnitude (not elementwise), so
    near-zero reference entries do not blow it up. NaN anywhere gives inf."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"output shapes differ: {got.shape} vs reference {want.shape}")
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return {"max_abs": math.inf, "max_rel": math.inf, "ref_max": float(np.nanmax(np.abs(want)))}
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return {"max_abs": diff, "max_rel": diff / max(scale, 1e-30), "ref_max": scale}


# --------------------------------------------------------------------------------------------
# GPT in NumPy
# --------------------------------------------------------------------------------------------


def _linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """PyTorch Linear without bias: x (..., in) @ w(out, in).T, as one 2-D product (a stacked
    3-D matmul would stream the weight once per batch row)."""
    return (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotary_tables(cfg, seq_len: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (seq_len, head_dim // 2): zero on the condition positions; image token k at
    grid cell (k // g, k % g) rotates its first hd/4 pairs by row * f_i, the rest by col * f_i,
    with f_i = base ** (-2 i / (hd / 2))."""
    hd = cfg.dim // cfg.n_head
    quarter = hd // 4
    f = cfg.rope_base ** (-(2.0 * np.arange(quarter)) / (hd // 2))
    cos = np.zeros((seq_len, hd // 2), dtype)
    sin = np.zeros((seq_len, hd // 2), dtype)
    for pos in range(cfg.cls_token_num, seq_len):
        k = pos - cfg.cls_token_num
        row, col = divmod(k, cfg.grid_size)
        ang = np.concatenate([row * f, col * f])
        cos[pos], sin[pos] = np.cos(ang), np.sin(ang)
    return cos, sin


def _rotate_pairs(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (B, S, H, hd): rotate each adjacent pair (x[2j], x[2j+1]) by the angle of cos/sin (S, hd/2)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = odd * c + even * s
    return out


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def gpt_logits(state_dict: Mapping[str, Any], cfg, cond, tokens, cond_mask=None, drop=None,
               dtype=np.float64) -> np.ndarray:
    """Teacher-forced LlamaGen GPT logits from a PyTorch-layout state dict, in NumPy.

    state_dict: PyTorch key -> LazyTensor/array (LlamaGen names, Linear weights (out, in)).
    cfg: GPTConfig (the fields not stored in the weights: n_head, grid_size, rope_base, ...).
    cond: c2i class ids (B,) int or t2i caption features (B, cls_token_num, caption_dim).
    tokens: (B, T) int image tokens; the input is the condition then tokens[:, :-1].
    cond_mask: optional (B, cls_token_num) bool (t2i), False at padded caption positions,
      which no query may attend to (each position still attends to itself).
    drop: optional (B,) bool, rows that use the null condition (class id num_classes, or the
      `uncond_embedding` caption).
    Returns logits (B, T, vocab_size) in `dtype`; logits[:, k] predicts tokens[:, k].
    """
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    n_cls = cfg.cls_token_num
    drop = np.zeros(B, bool) if drop is None else np.asarray(drop, bool)
    H = cfg.n_head
    Hkv = cfg.n_kv_head if cfg.n_kv_head is not None else H
    hd = cfg.dim // H
    get = lambda k: _get(state_dict, k, dtype)  # noqa: E731

    # condition embeddings
    if cfg.model_type == "c2i":
        labels = np.where(drop, cfg.num_classes, np.asarray(cond))
        cond_emb = get("cls_embedding.embedding_table.weight")[labels][:, None, :]
    else:
        feats = np.asarray(cond, dtype)
        feats = np.where(drop[:, None, None], get("cls_embedding.uncond_embedding")[None], feats)
        hidden = _gelu_tanh(_linear(feats, get("cls_embedding.cap_proj.fc1.weight")))
        cond_emb = _linear(hidden, get("cls_embedding.cap_proj.fc2.weight"))
    x = np.concatenate([cond_emb, get("tok_embeddings.weight")[tokens[:, :-1]]], axis=1)
    S = x.shape[1]

    cos, sin = _rotary_tables(cfg, S, dtype)
    allowed = np.tril(np.ones((S, S), bool))[None].repeat(B, 0)  # (B, query, key)
    if cond_mask is not None:
        key_ok = np.ones((B, S), bool)
        key_ok[:, :n_cls] = np.asarray(cond_mask, bool)
        allowed &= key_ok[:, None, :]
    allowed |= np.eye(S, dtype=bool)[None]

    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        h = _rms_norm(x, get(p + "attention_norm.weight"), cfg.norm_eps)
        qkv = _linear(h, get(p + "attention.wqkv.weight"))
        q = qkv[..., : H * hd].reshape(B, S, H, hd)
        k = qkv[..., H * hd : (H + Hkv) * hd].reshape(B, S, Hkv, hd)
        v = qkv[..., (H + Hkv) * hd :].reshape(B, S, Hkv, hd)
        q, k = _rotate_pairs(q, cos, sin), _rotate_pairs(k, cos, sin)
        # grouped-query attention: query head j reads kv head j // (H // Hkv)
        k = np.repeat(k, H // Hkv, axis=2)
        v = np.repeat(v, H // Hkv, axis=2)
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        scores = np.where(allowed[:, None], scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attn = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, S, H * hd)
        x = x + _linear(attn, get(p + "attention.wo.weight"))
        h = _rms_norm(x, get(p + "ffn_norm.weight"), cfg.norm_eps)
        gate = _silu(_linear(h, get(p + "feed_forward.w1.weight"))) * _linear(h, get(p + "feed_forward.w3.weight"))
        x = x + _linear(gate, get(p + "feed_forward.w2.weight"))
    x = _rms_norm(x, get("norm.weight"), cfg.norm_eps)
    logits = _linear(x[:, n_cls - 1 :], get("output.weight"))
    return logits


# --------------------------------------------------------------------------------------------
# VQ decoder in NumPy (NCHW, OIHW weights, as PyTorch)
# --------------------------------------------------------------------------------------------


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution: x (B, C, H, W), w (O, C, k, k), b (O,) -> (B, O, H, W)."""
    B, C, Hh, Ww = x.shape
    O, _, kh, kw = w.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((B, O, Hh * Ww), x.dtype)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, :, dy : dy + Hh, dx : dx + Ww].reshape(B, C, Hh * Ww)
            out += w[:, :, dy, dx] @ patch  # (O, C) @ (B, C, HW)
    return out.reshape(B, O, Hh, Ww) + b[None, :, None, None]


def _group_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int, eps: float = 1e-6) -> np.ndarray:
    B, C, Hh, Ww = x.shape
    g = x.reshape(B, groups, C // groups, Hh, Ww)
    mean = g.mean(axis=(2, 3, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(2, 3, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(B, C, Hh, Ww) * w[None, :, None, None] + b[None, :, None, None]


def vq_decode(state_dict: Mapping[str, Any], cfg, codes, dtype=np.float64) -> np.ndarray:
    """LlamaGen VQ decoding of a token grid from a PyTorch-layout state dict, in NumPy.

    state_dict: PyTorch key -> LazyTensor/array (conv weights (out, in, kh, kw)).
    cfg: VQConfig (ch_mult, num_res_blocks, norm_groups, codebook_l2_norm are used).
    codes: (B, h, w) int in [0, codebook_size).
    Returns images (B, h * ds, w * ds, out_channels) in `dtype`, NOT clipped (NHWC, like
    `scalingar_jax.vq.decode_codes(..., clip=False)`).
    """
    codes = np.asarray(codes)
    get = lambda k: _get(state_dict, k, dtype)  # noqa: E731
    G = cfg.norm_groups

    def conv(name, x):
        return _conv2d(x, get(name + ".weight"), get(name + ".bias"))

    def norm(name, x):
        return _group_norm(x, get(name + ".weight"), get(name + ".bias"), G)

    def swish(x):
        return x / (1.0 + np.exp(-x))

    def res(name, x):
        h = conv(name + ".conv1", swish(norm(name + ".norm1", x)))
        h = conv(name + ".conv2", swish(norm(name + ".norm2", h)))
        if name + ".nin_shortcut.weight" in state_dict:
            x = conv(name + ".nin_shortcut", x)
        return x + h

    def attn(name, x):
        B, C, Hh, Ww = x.shape
        h = norm(name + ".norm", x)
        q = conv(name + ".q", h).reshape(B, C, Hh * Ww)
        k = conv(name + ".k", h).reshape(B, C, Hh * Ww)
        v = conv(name + ".v", h).reshape(B, C, Hh * Ww)
        s = np.einsum("bci,bcj->bij", q, k) * C**-0.5  # (B, query, key)
        s = np.exp(s - s.max(-1, keepdims=True))
        p = s / s.sum(-1, keepdims=True)
        out = np.einsum("bcj,bij->bci", v, p).reshape(B, C, Hh, Ww)
        return x + conv(name + ".proj_out", out)

    emb = get("quantize.embedding.weight")
    if cfg.codebook_l2_norm:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    z = emb[codes].transpose(0, 3, 1, 2)  # (B, e, h, w)
    x = conv("post_quant_conv", z)
    x = conv("decoder.conv_in", x)
    x = res("decoder.mid.0", x)
    x = attn("decoder.mid.1", x)
    x = res("decoder.mid.2", x)
    n = len(cfg.ch_mult)
    for lvl in range(n):  # decoder conv_blocks.0 is the lowest resolution
        for j in range(cfg.num_res_blocks + 1):
            x = res(f"decoder.conv_blocks.{lvl}.res.{j}", x)
            if lvl == 0:
                x = attn(f"decoder.conv_blocks.{lvl}.attn.{j}", x)
        if lvl != n - 1:
            x = x.repeat(2, axis=2).repeat(2, axis=3)  # nearest x2
            x = conv(f"decoder.conv_blocks.{lvl}.upsample.conv", x)
    x = conv("decoder.conv_out", swish(norm("decoder.norm_out", x)))
    return x.transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# The original PyTorch LlamaGen, imported at run time from the user's checkout
# --------------------------------------------------------------------------------------------


class LlamaGenSourceError(ValueError):
    """The LlamaGen checkout or torch is missing or unusable."""


_GPT_FILE = os.path.join("autoregressive", "models", "gpt.py")
_VQ_FILE = os.path.join("tokenizer", "tokenizer_image", "vq_model.py")


def check_llamagen_source(path, kind: str) -> str:
    """Raises LlamaGenSourceError unless torch is importable and `path` is a LlamaGen checkout
    with the module `kind` needs. Returns the absolute path. Imports nothing."""
    if importlib.util.find_spec("torch") is None:
        raise LlamaGenSourceError(
            "--llamagen-src runs the original PyTorch LlamaGen code and needs torch, which is not installed "
            "in this environment (pip install torch, or drop --llamagen-src to verify against the NumPy reference)"
        )
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise LlamaGenSourceError(f"--llamagen-src {path} is not a directory (expected a LlamaGen checkout)")
    need = _GPT_FILE if kind == "gpt" else _VQ_FILE
    if not os.path.isfile(os.path.join(path, need)):
        raise LlamaGenSourceError(f"--llamagen-src {path} is not a LlamaGen checkout: {need} is missing")
    return path


@contextlib.contextmanager
def _on_path(path: str):
    sys.path.insert(0, path)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(path)


def _import(path: str, module: str):
    with _on_path(path):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise LlamaGenSourceError(f"cannot import {module} from the LlamaGen checkout {path}: {e}") from None
    origin = os.path.abspath(getattr(mod, "__file__", "") or "")
    if not origin.startswith(path + os.sep):
        raise LlamaGenSourceError(
            f"importing {module} found {origin}, not the LlamaGen checkout {path} (a module of that name is "
            "already loaded or earlier on sys.path)"
        )
    return mod


@dataclasses.dataclass
class LlamaGenReference:
    """Runs LlamaGen's own PyTorch modules on a PyTorch-layout state dict.

    GPT: `autoregressive.models.gpt.Transformer(ModelArgs(...))` in eval mode (dropout off),
    its full-sequence forward with `input_pos = arange(S)`; for t2i with a caption mask, the
    attention mask is built as LlamaGen's `generate` builds it (causal, padded caption keys
    hidden, the diagonal always allowed) and passed as `mask`.
    VQ: `tokenizer.tokenizer_image.vq_model.VQModel(ModelArgs(...))` and its `decode_code`.
    LlamaGen's VQModel hard-codes ch=128, num_res_blocks=2 and GroupNorm(32); other configs
    are built from the same module's Encoder/Decoder classes with those values passed in, and
    `notes` says so.
    """

    src: str
    notes: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        import torch  # noqa: F401  (fails early with a clear message via check_llamagen_source)

        self.src = os.path.abspath(self.src)

    def prepare(self, kind: str, cfg) -> None:
        """Imports the LlamaGen module `kind` needs and checks that it can represent `cfg`, so
        that problems show before any output is written. Raises LlamaGenSourceError."""
        if kind == "gpt":
            _import(self.src, "autoregressive.models.gpt")
            if cfg.model_type == "t2i" and cfg.cls_token_num != 120:
                raise LlamaGenSourceError(
                    f"LlamaGen's CaptionEmbedder has a fixed 120 caption tokens; this model has cls_token_num="
                    f"{cfg.cls_token_num}"
                )
        else:
            _import(self.src, "tokenizer.tokenizer_image.vq_model")

    # -- weights ---------------------------------------------------------------------------
    @staticmethod
    def _copy_weights(model, state_dict, expected: Mapping[str, tuple], ignore=()) -> None:
        """Copies every expected tensor into the model's state dict (one at a time), checking
        that LlamaGen's modules have exactly these names and shapes."""
        import torch

        target = model.state_dict()
        names = set(target) - set(ignore)
        missing = sorted(set(expected) - names)
        extra = sorted(names - set(expected))
        if missing or extra:
            raise LlamaGenSourceError(
                f"LlamaGen's module and the converter disagree on the state-dict keys: only in the converter "
                f"{missing[:8]}, only in LlamaGen {extra[:8]}"
            )
        with torch.no_grad():
            for k in expected:
                a = _get(state_dict, k, np.float32)
                if tuple(target[k].shape) != a.shape:
                    raise LlamaGenSourceError(f"{k}: LlamaGen expects {tuple(target[k].shape)}, the file has {a.shape}")
                target[k].copy_(torch.from_numpy(np.ascontiguousarray(a)))
                del a

    # -- GPT --------------------------------------------------------------------------------
    def gpt_model(self, cfg, state_dict):
        from scalingar_jax.convert.mapping import gpt_torch_shapes

        self.prepare("gpt", cfg)
        gpt = _import(self.src, "autoregressive.models.gpt")
        args = gpt.ModelArgs(
            dim=cfg.dim, n_layer=cfg.n_layer, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head,
            multiple_of=cfg.multiple_of, ffn_dim_multiplier=cfg.ffn_dim_multiplier, rope_base=cfg.rope_base,
            norm_eps=cfg.norm_eps, token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0,
            ffn_dropout_p=0.0, drop_path_rate=0.0, num_classes=cfg.num_classes, caption_dim=cfg.caption_dim,
            class_dropout_prob=0.1,  # > 0 so the c2i table has the null-class row, as released models
            model_type=cfg.model_type, vocab_size=cfg.vocab_size, cls_token_num=cfg.cls_token_num,
            block_size=cfg.grid_size**2,
        )
        model = gpt.Transformer(args)
        self._copy_weights(model, state_dict, gpt_torch_shapes(cfg))
        return model.eval()

    def gpt_logits(self, cfg, state_dict, cond, tokens, cond_mask=None, drop=None, model=None) -> np.ndarray:
        """Same contract as the NumPy `gpt_logits`, float32, computed by LlamaGen's Transformer."""
        import torch

        model = model if model is not None else self.gpt_model(cfg, state_dict)
        tokens = np.asarray(tokens)
        B, T = tokens.shape
        drop = np.zeros(B, bool) if drop is None else np.asarray(drop, bool)
        if cfg.model_type == "c2i":
            labels = np.where(drop, cfg.num_classes, np.asarray(cond)).astype(np.int64)
            cond_t = torch.from_numpy(labels)
        else:
            feats = torch.from_numpy(np.asarray(cond, np.float32).copy())
            uncond = model.cls_embedding.uncond_embedding.detach()
            d = torch.from_numpy(drop)[:, None, None]
            cond_t = torch.where(d, torch.zeros_like(feats) + uncond, feats)  # as generate() builds the null half
        S = cfg.cls_token_num + T - 1
        mask = None
        if cond_mask is not None:
            causal = torch.tril(torch.ones(S, S, dtype=torch.bool))[None].repeat(B, 1, 1)
            em = torch.from_numpy(np.asarray(cond_mask, bool))
            causal[:, :, : cfg.cls_token_num] = causal[:, :, : cfg.cls_token_num] & em[:, None, :]
            causal = causal | torch.eye(S, dtype=torch.bool)[None]
            mask = causal[:, None]  # (B, 1, S, S)
        with torch.no_grad():
            logits, _ = model(idx=torch.from_numpy(tokens[:, :-1].astype(np.int64)), cond_idx=cond_t,
                              input_pos=torch.arange(S), mask=mask)
        return logits[:, cfg.cls_token_num - 1 :].float().numpy()

    # -- VQ ---------------------------------------------------------------------------------
    def vq_model(self, cfg, state_dict):
        import functools

        import torch

        from scalingar_jax.convert.mapping import vq_torch_shapes

        vqm = _import(self.src, "tokenizer.tokenizer_image.vq_model")
        args = vqm.ModelArgs(codebook_size=cfg.codebook_size, codebook_embed_dim=cfg.codebook_embed_dim,
                             codebook_l2_norm=cfg.codebook_l2_norm, encoder_ch_mult=list(cfg.ch_mult),
                             decoder_ch_mult=list(cfg.ch_mult), z_channels=cfg.z_channels, dropout_p=0.0)
        stock = (cfg.ch, cfg.num_res_blocks, cfg.norm_groups, cfg.in_channels, cfg.out_channels) == (128, 2, 32, 3, 3)
        saved = {n: getattr(vqm, n) for n in ("Encoder", "Decoder", "Normalize")}
        try:
            if not stock:
                # LlamaGen's VQModel passes only ch_mult / z_channels / dropout to its Encoder and
                # Decoder, whose other arguments default to VQ-16's; its Normalize hard-codes 32
                # groups. Build the same classes with this config's values instead.
                self.notes.append(
                    f"LlamaGen's VQModel hard-codes ch=128, num_res_blocks=2, GroupNorm(32): built its Encoder/"
                    f"Decoder with ch={cfg.ch}, num_res_blocks={cfg.num_res_blocks}, GroupNorm({cfg.norm_groups})")
                vqm.Encoder = functools.partial(saved["Encoder"], ch=cfg.ch, num_res_blocks=cfg.num_res_blocks,
                                                in_channels=cfg.in_channels)
                vqm.Decoder = functools.partial(saved["Decoder"], ch=cfg.ch, num_res_blocks=cfg.num_res_blocks,
                                                out_channels=cfg.out_channels)

                def normalize(in_channels, norm_type="group"):
                    return torch.nn.GroupNorm(cfg.norm_groups, in_channels, eps=1e-6, affine=True)

                vqm.Normalize = normalize
            model = vqm.VQModel(args)
        finally:
            for n, v in saved.items():
                setattr(vqm, n, v)
        self._copy_weights(model, state_dict, vq_torch_shapes(cfg), ignore=("quantize.codebook_used",))
        return model.eval()

    def vq_decode(self, cfg, state_dict, codes, model=None) -> np.ndarray:
        """Same contract as the NumPy `vq_decode` (NHWC, not clipped), float32, by LlamaGen's
        `VQModel.decode_code`."""
        import torch

        model = model if model is not None else self.vq_model(cfg, state_dict)
        codes = np.asarray(codes)
        B, h, w = codes.shape
        with torch.no_grad():
            out = model.decode_code(torch.from_numpy(codes.reshape(-1).astype(np.int64)),
                                    shape=(B, cfg.codebook_embed_dim, h, w))
        return out.float().numpy().transpose(0, 2, 3, 1)
