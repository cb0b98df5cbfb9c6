"""The LlamaGen VQ image tokenizer (VQ-16 / VQ-8) in Flax linen, weight compatible with PyTorch.

Images are NHWC float arrays in [-1, 1]. The encoder downsamples by `cfg.downsample`
(2 ** (len(ch_mult) - 1)), a 1x1 `quant_conv` maps to the codebook dimension `e`, and each
latent vector is replaced by its nearest codebook row (both L2-normalised when
`codebook_l2_norm`). Decoding looks the codes up, applies a 1x1 `post_quant_conv` and the
decoder, which upsamples back by `cfg.downsample`.

Architecture (LlamaGen `tokenizer/tokenizer_image/vq_model.py`):
  ResnetBlock: x + conv2(swish(norm2(conv1(swish(norm1(x)))))), the residual through a 1x1
    `nin_shortcut` when the channel count changes; GroupNorm(norm_groups, eps=1e-6).
  AttnBlock: single-head self-attention over the h*w positions, 1x1 q/k/v/proj_out,
    scale c**-0.5, residual.
  Encoder level l (l = 0 .. L-1, highest resolution first): num_res_blocks ResnetBlocks,
    each followed by an AttnBlock at the last (lowest-resolution) level; a Downsample (pad
    right/bottom by one, 3x3 conv stride 2) after every level but the last. Then mid
    [res, attn, res], norm_out, swish, conv_out (-> z_channels).
  Decoder: conv_in (z_channels -> ch * ch_mult[-1]), mid [res, attn, res], then levels from
    the LOWEST resolution up (decoder level 0 = lowest): num_res_blocks + 1 ResnetBlocks,
    with AttnBlocks at level 0; an Upsample (nearest x2, 3x3 conv) after every level but the
    last; norm_out, swish, conv_out (-> out_channels).

Parameter tree (PyTorch `a.b.3.c` -> `a/b_3/c`; Conv2d weight (out, in, kh, kw) -> kernel
(kh, kw, in, out); GroupNorm weight -> scale; see `torch_style_keys`):
  encoder/{conv_in, norm_out, conv_out}
  encoder/conv_blocks_{l}/res_{j}/{norm1, conv1, norm2, conv2[, nin_shortcut]}
  encoder/conv_blocks_{l}/attn_{j}/{norm, q, k, v, proj_out}
  encoder/conv_blocks_{l}/downsample/conv
  encoder/mid_0 (res), encoder/mid_1 (attn), encoder/mid_2 (res)
  decoder/... the same, with upsample/conv instead of downsample/conv
  quantize/embedding (codebook_size, e), quant_conv, post_quant_conv
LlamaGen's `quantize.codebook_used` is a training buffer and has no counterpart here.
"""
from __future__ import annotations

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.config import check_float, check_int, to_dtype

# --------------------------------------------------------------------------------------------
# Config (to move into config.py)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """A LlamaGen VQ tokenizer. Defaults are VQ-16 (codebook 16384 x 8, downsample 16)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    commit_loss_beta: float = 0.25
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2  # per encoder level; decoder levels use num_res_blocks + 1
    norm_groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; distances, softmax and outputs are float32

    def __post_init__(self):
        # Keep the config hashable (usable as a jit static argument) if given a list.
        if not isinstance(self.ch_mult, (list, tuple)):
            raise ValueError(f"VQConfig.ch_mult must be a list of integers, got {self.ch_mult!r:.60}")
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))

    @property
    def downsample(self) -> int:
        """Image side / token-grid side."""
        return 2 ** (len(self.ch_mult) - 1)

    def validate(self) -> "VQConfig":
        """Type- and range-checks every field (sizes bounded); returns self."""
        for name, hi in (("codebook_size", 1 << 24), ("codebook_embed_dim", 4096), ("ch", 4096),
                         ("z_channels", 4096), ("num_res_blocks", 64), ("norm_groups", 4096),
                         ("in_channels", 64), ("out_channels", 64)):
            check_int("VQConfig", name, getattr(self, name), 1, hi)
        if not 1 <= len(self.ch_mult) <= 8:
            raise ValueError(f"VQConfig.ch_mult must have 1 to 8 entries, got {len(self.ch_mult)}")
        for m in self.ch_mult:
            check_int("VQConfig", "ch_mult entry", m, 1, 64)
        if not isinstance(self.codebook_l2_norm, bool):
            raise ValueError(f"VQConfig.codebook_l2_norm must be true or false, got {self.codebook_l2_norm!r:.60}")
        check_float("VQConfig", "commit_loss_beta", self.commit_loss_beta, 0.0, 1e6)
        if self.ch % self.norm_groups:
            # every GroupNorm sees ch * m channels for some m in (1,) + ch_mult
            raise ValueError(f"VQConfig.ch={self.ch} must be divisible by norm_groups={self.norm_groups}")
        if not (np.isfinite(self.commit_loss_beta) and self.commit_loss_beta >= 0):
            raise ValueError(f"VQConfig.commit_loss_beta must be finite and >= 0, got {self.commit_loss_beta}")
        to_dtype(self.param_dtype), to_dtype(self.dtype)
        return self


VQ_PRESETS: dict[str, VQConfig] = {
    "VQ-16": VQConfig(ch_mult=(1, 1, 2, 2, 4)),
    "VQ-8": VQConfig(ch_mult=(1, 2, 2, 4)),
}


def vq_config(name: str = "VQ-16", **overrides) -> VQConfig:
    """A validated `VQConfig` for a LlamaGen preset ("VQ-16", "VQ-8"), with field overrides."""
    if name not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {name!r}; available presets: {', '.join(VQ_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(VQConfig)}
    if unknown := sorted(set(overrides) - fields):
        raise ValueError(f"unknown VQConfig field(s) {unknown}; fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(VQ_PRESETS[name], **overrides).validate()


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

# PyTorch's Conv2d default kernel init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
_torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(cfg: VQConfig, features: int, kernel: int, name: str, stride: int = 1, pad: int | None = None):
    """kernel x kernel conv; `pad` on every side (default kernel // 2, i.e. 'same' at stride 1)."""
    pad = kernel // 2 if pad is None else pad
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype),
                   kernel_init=_torch_conv_init, name=name)


def _norm(cfg: VQConfig, name: str):
    # Two-pass variance (as PyTorch) rather than E[x^2] - E[x]^2.
    return nn.GroupNorm(num_groups=cfg.norm_groups, epsilon=1e-6, use_fast_variance=False,
                        dtype=to_dtype(cfg.dtype), param_dtype=to_dtype(cfg.param_dtype), name=name)


def _l2_normalize(x, axis=-1):
    """x / max(||x||_2, 1e-12), as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


class ResnetBlock(nn.Module):
    cfg: VQConfig
    out_ch: int

    @nn.compact
    def __call__(self, x):
        h = _conv(self.cfg, self.out_ch, 3, "conv1")(nn.swish(_norm(self.cfg, "norm1")(x)))
        h = _conv(self.cfg, self.out_ch, 3, "conv2")(nn.swish(_norm(self.cfg, "norm2")(h)))
        if x.shape[-1] != self.out_ch:
            x = _conv(self.cfg, self.out_ch, 1, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    cfg: VQConfig

    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        h = _norm(self.cfg, "norm")(x)
        q, k, v = (_conv(self.cfg, C, 1, n)(h).reshape(B, H * W, C) for n in ("q", "k", "v"))
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) * (C ** -0.5)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bij,bjc->bic", probs, v).reshape(B, H, W, C)
        return x + _conv(self.cfg, C, 1, "proj_out")(out)


class Downsample(nn.Module):
    cfg: VQConfig

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # right/bottom only
        return _conv(self.cfg, x.shape[-1], 3, "conv", stride=2, pad=0)(x)


class Upsample(nn.Module):
    cfg: VQConfig

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
        return _conv(self.cfg, x.shape[-1], 3, "conv")(x)


class Level(nn.Module):
    """One `conv_blocks_{l}`: n_res ResnetBlocks (each followed by an AttnBlock if `attn`),
    then an optional resampler (`"downsample"`, `"upsample"` or None)."""

    cfg: VQConfig
    out_ch: int
    n_res: int
    attn: bool
    resample: str | None

    @nn.compact
    def __call__(self, x):
        for j in range(self.n_res):
            x = ResnetBlock(self.cfg, self.out_ch, name=f"res_{j}")(x)
            if self.attn:
                x = AttnBlock(self.cfg, name=f"attn_{j}")(x)
        if self.resample == "downsample":
            x = Downsample(self.cfg, name="downsample")(x)
        elif self.resample == "upsample":
            x = Upsample(self.cfg, name="upsample")(x)
        return x


def _mid(cfg: VQConfig, x):
    c = x.shape[-1]
    x = ResnetBlock(cfg, c, name="mid_0")(x)
    x = AttnBlock(cfg, name="mid_1")(x)
    return ResnetBlock(cfg, c, name="mid_2")(x)


class Encoder(nn.Module):
    """(B, H, W, in_channels) -> (B, H/ds, W/ds, z_channels)."""

    cfg: VQConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        L = len(cfg.ch_mult)
        x = _conv(cfg, cfg.ch, 3, "conv_in")(x)
        for l, m in enumerate(cfg.ch_mult):
            last = l == L - 1
            x = Level(cfg, cfg.ch * m, cfg.num_res_blocks, attn=last,
                      resample=None if last else "downsample", name=f"conv_blocks_{l}")(x)
        x = _mid(cfg, x)
        x = nn.swish(_norm(cfg, "norm_out")(x))
        return _conv(cfg, cfg.z_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
    """(B, h, w, z_channels) -> (B, h*ds, w*ds, out_channels), not clipped."""

    cfg: VQConfig

    @nn.compact
    def __call__(self, z):
        cfg = self.cfg
        L = len(cfg.ch_mult)
        x = _conv(cfg, cfg.ch * cfg.ch_mult[-1], 3, "conv_in")(z)
        x = _mid(cfg, x)
        for i, m in enumerate(reversed(cfg.ch_mult)):  # i = 0 is the lowest resolution
            x = Level(cfg, cfg.ch * m, cfg.num_res_blocks + 1, attn=i == 0,
                      resample=None if i == L - 1 else "upsample", name=f"conv_blocks_{i}")(x)
        x = nn.swish(_norm(cfg, "norm_out")(x))
        return _conv(cfg, cfg.out_channels, 3, "conv_out")(x)


def _codebook_init(l2_norm: bool):
    def init(key, shape, dtype=jnp.float32):
        n = shape[0]
        w = jax.random.uniform(key, shape, jnp.float32, -1.0 / n, 1.0 / n)
        return (_l2_normalize(w) if l2_norm else w).astype(dtype)

    return init


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantizer; the codebook param is `embedding` (codebook_size, e)."""

    cfg: VQConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = self.param("embedding", _codebook_init(cfg.codebook_l2_norm),
                                    (cfg.codebook_size, cfg.codebook_embed_dim), to_dtype(cfg.param_dtype))

    def codebook(self):
        """(codebook_size, e) float32, L2-normalised rows if `codebook_l2_norm`."""
        e = self.embedding.astype(jnp.float32)
        return _l2_normalize(e) if self.cfg.codebook_l2_norm else e

    def lookup(self, codes):
        """codes (...) int -> (..., e) float32 codebook rows (NaN rows for out-of-range ids)."""
        return jnp.take(self.codebook(), codes, axis=0, mode="fill", fill_value=jnp.nan)

    def __call__(self, z):
        """z (..., e) -> (codes (...) int32, z_q (...,e) float32, z (...,e) float32 normalised)."""
        z = z.astype(jnp.float32)
        if self.cfg.codebook_l2_norm:
            z = _l2_normalize(z)
        emb = self.codebook()
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e (argmin ties -> lowest index, as torch.argmin)
        d = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(emb * emb, -1)
             - 2.0 * jnp.einsum("...d,nd->...n", z, emb, precision=jax.lax.Precision.HIGHEST))
        codes = jnp.argmin(d, axis=-1).astype(jnp.int32)
        return codes, jnp.take(emb, codes, axis=0), z


class VQModel(nn.Module):
    cfg: VQConfig

    def setup(self):
        cfg = self.cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = _conv(cfg, cfg.codebook_embed_dim, 1, "quant_conv")
        self.post_quant_conv = _conv(cfg, cfg.z_channels, 1, "post_quant_conv")

    def encode(self, x):
        """x (B,H,W,C) -> (codes (B,h,w) int32, z_q (B,h,w,e), z (B,h,w,e) the quant_conv output, L2-normalised if codebook_l2_norm)."""
        h = self.quant_conv(self.encoder(x.astype(to_dtype(self.cfg.dtype))))
        return self.quantize(h)

    def decode(self, z_q):
        """z_q (B,h,w,e) -> (B,H,W,out_channels) float32, not clipped."""
        h = self.post_quant_conv(z_q.astype(to_dtype(self.cfg.dtype)))
        return self.decoder(h).astype(jnp.float32)

    def lookup(self, codes):
        return self.quantize.lookup(codes)

    def quantize_latents(self, z):
        return self.quantize(z)

    def __call__(self, x):
        """Full reconstruction without straight-through (creates every parameter at init)."""
        _, z_q, _ = self.encode(x)
        return self.decode(z_q)


# --------------------------------------------------------------------------------------------
# Input validation (before any compile)
# --------------------------------------------------------------------------------------------


def _shape_dtype(x):
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return tuple(np.shape(x)), dtype


def _check_images(cfg: VQConfig, images) -> None:
    shape, dtype = _shape_dtype(images)
    if len(shape) != 4:
        raise ValueError(f"images must have shape (B, H, W, {cfg.in_channels}) (NHWC), got shape {shape}")
    B, H, W, C = shape
    if C != cfg.in_channels:
        raise ValueError(f"images must have {cfg.in_channels} channels in the last axis (NHWC), got shape {shape}")
    if B < 1 or H < 1 or W < 1:
        raise ValueError(f"images must be non-empty, got shape {shape}")
    if H % cfg.downsample or W % cfg.downsample:
        raise ValueError(
            f"image height and width must be divisible by the tokenizer's downsample factor "
            f"{cfg.downsample}, got H={H}, W={W}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {dtype}")


def _check_codes(cfg: VQConfig, codes) -> None:
    shape, dtype = _shape_dtype(codes)
    if len(shape) != 3:
        raise ValueError(f"codes must have shape (B, h, w), got shape {shape}")
    if min(shape) < 1:
        raise ValueError(f"codes must be non-empty, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"codes must be integer token ids, got dtype {dtype}")
    if not isinstance(codes, jax.core.Tracer):
        c = np.asarray(codes)
        lo, hi = int(c.min()), int(c.max())
        if lo < 0 or hi >= cfg.codebook_size:
            raise ValueError(f"token ids must be in [0, {cfg.codebook_size}), got range [{lo}, {hi}]")


def _check_latents(cfg: VQConfig, z_q) -> None:
    shape, dtype = _shape_dtype(z_q)
    e = cfg.codebook_embed_dim
    if len(shape) != 4 or shape[-1] != e:
        raise ValueError(f"latents must have shape (B, h, w, {e}), got shape {shape}")
    if min(shape) < 1:
        raise ValueError(f"latents must be non-empty, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"latents must be floating point, got dtype {dtype}")


# --------------------------------------------------------------------------------------------
# Public pure functions
# --------------------------------------------------------------------------------------------


def _init_impl(cfg: VQConfig, key):
    """Flax's own init (module initializers); used for shapes only, see `init_vq_params`."""
    ds = cfg.downsample
    return VQModel(cfg).init(key, jnp.zeros((1, ds, ds, cfg.in_channels), jnp.float32))["params"]


def vq_param_shapes(cfg: VQConfig):
    """Parameter ShapeDtypeStructs via `jax.eval_shape` (no memory is allocated)."""
    cfg.validate()
    return jax.eval_shape(functools.partial(_init_impl, cfg), jax.random.key(0))


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: VQConfig, key):
    # The same distributions as the module initializers, drawn as ONE flat uniform vector:
    # a random draw per leaf makes XLA compile hundreds of threefry kernels (minutes on CPU).
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        jax.eval_shape(functools.partial(_init_impl, cfg), key))
    names = [str(getattr(kp[-1], "key", kp[-1])) for kp, _ in flat]
    n_random = sum(int(np.prod(s.shape)) for (_, s), n in zip(flat, names) if n in ("kernel", "embedding"))
    u = jax.random.uniform(key, (n_random,), jnp.float32, -1.0, 1.0)
    out, offset = [], 0
    for (_, s), name in zip(flat, names):
        size = int(np.prod(s.shape))
        if name == "kernel":  # U(+-1/sqrt(fan_in)), PyTorch's Conv2d default
            x = u[offset:offset + size].reshape(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
            offset += size
        elif name == "embedding":  # U(+-1/codebook_size), then L2-normalised rows
            x = u[offset:offset + size].reshape(s.shape) / s.shape[0]
            x = _l2_normalize(x) if cfg.codebook_l2_norm else x
            offset += size
        elif name == "scale":
            x = jnp.ones(s.shape, jnp.float32)
        else:  # conv and GroupNorm biases
            x = jnp.zeros(s.shape, jnp.float32)
        out.append(x.astype(s.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def init_vq_params(cfg: VQConfig, key: jax.Array):
    """Random parameters as LlamaGen initialises them: conv kernels U(+-1/sqrt(fan_in)) (PyTorch's
    default), zero biases, unit GroupNorm scales, and a U(+-1/codebook_size) codebook with
    L2-normalised rows if `codebook_l2_norm`. Same tree as `vq_param_shapes(cfg)`."""
    cfg.validate()
    return _init(cfg, key)


def _apply(params, cfg: VQConfig, method, *args):
    return VQModel(cfg).apply({"params": params}, *args, method=method)


# Jitted cores, one compile per (cfg, shapes); clipping stays outside so that the clipped and
# unclipped decoders share a compile.
@functools.partial(jax.jit, static_argnums=1)
def _encode(params, cfg, images):
    codes, z_q, _ = _apply(params, cfg, VQModel.encode, images)
    return codes, z_q


@functools.partial(jax.jit, static_argnums=1)
def _decode(params, cfg, z_q):
    return _apply(params, cfg, VQModel.decode, z_q)


@functools.partial(jax.jit, static_argnums=1)
def _lookup(params, cfg, codes):
    return _apply(params, cfg, VQModel.lookup, codes)


@functools.partial(jax.jit, static_argnums=1)
def _quantize(params, cfg, z):
    codes, z_q, _ = _apply(params, cfg, VQModel.quantize_latents, z)
    return codes, z_q


def _maybe_clip(x, clip: bool):
    return jnp.clip(x, -1.0, 1.0) if clip else x


def encode(params, cfg: VQConfig, images):
    """Tokenise images.

    images: (B, H, W, in_channels) float in [-1, 1]; H, W divisible by `cfg.downsample`.
    Returns codes (B, H/ds, W/ds) int32 in [0, codebook_size) and z_q (B, H/ds, W/ds, e)
    float32, the (normalised) codebook rows of those codes.
    """
    cfg.validate()
    _check_images(cfg, images)
    return _encode(params, cfg, images)


def decode_latents(params, cfg: VQConfig, z_q, clip: bool = True):
    """Decode quantised latents z_q (B, h, w, e) float -> images (B, h*ds, w*ds, out_channels)
    float32, clipped to [-1, 1] unless `clip=False`."""
    cfg.validate()
    _check_latents(cfg, z_q)
    return _maybe_clip(_decode(params, cfg, z_q), clip)


def lookup_codes(params, cfg: VQConfig, codes):
    """codes (B, h, w) int in [0, codebook_size) -> z_q (B, h, w, e) float32, the
    (normalised) codebook rows."""
    cfg.validate()
    _check_codes(cfg, codes)
    return _lookup(params, cfg, codes)


def decode_codes(params, cfg: VQConfig, codes, clip: bool = True):
    """Decode a token grid codes (B, h, w) int in [0, codebook_size) -> images
    (B, h*ds, w*ds, out_channels) float32 in [-1, 1] (clipped unless `clip=False`).

    Out-of-range ids raise ValueError when `codes` is concrete; under an outer jit they
    cannot be checked, and decode to NaN pixels."""
    return decode_latents(params, cfg, lookup_codes(params, cfg, codes), clip)


def quantize(params, cfg: VQConfig, z):
    """Nearest codebook rows of latents z (..., e) float (L2-normalised first if
    `codebook_l2_norm`): codes (...) int32 and z_q (..., e) float32."""
    cfg.validate()
    shape, dtype = _shape_dtype(z)
    if not shape or shape[-1] != cfg.codebook_embed_dim or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"latents must be float of shape (..., {cfg.codebook_embed_dim}), got {shape} {dtype}")
    return _quantize(params, cfg, z)


def reconstruct(params, cfg: VQConfig, images):
    """decode_latents(encode(images)): (B, H, W, in_channels) -> (B, H, W, out_channels)
    float32 in [-1, 1]."""
    _, z_q = encode(params, cfg, images)
    return _maybe_clip(_decode(params, cfg, z_q), True)


def vq_losses(params, cfg: VQConfig, images) -> dict[str, jax.Array]:
    """LlamaGen's tokenizer training losses (without the perceptual and GAN terms).

    images: (B, H, W, in_channels) float in [-1, 1]. Returns float32 scalars:
      recon  = mean((decoder(z_st) - images)**2), with the straight-through latent
               z_st = z + stop_gradient(z_q - z), so the encoder gets the decoder's gradient;
      vq     = mean((z_q - stop_gradient(z))**2), moves the codebook to the latents;
      commit = commit_loss_beta * mean((stop_gradient(z_q) - z)**2), keeps latents near codes;
      total  = recon + vq + commit.
    z is the (normalised) quant_conv output, z_q its nearest codebook rows. Differentiable in
    `params`; jit it with `cfg` static.
    """
    cfg.validate()
    _check_images(cfg, images)
    sg = jax.lax.stop_gradient

    def run(m: VQModel):
        _, z_q, z = m.encode(images)
        z_st = z + sg(z_q - z)
        rec = m.decode(z_st)
        recon = jnp.mean(jnp.square(rec - images.astype(jnp.float32)))
        vq = jnp.mean(jnp.square(z_q - sg(z)))
        commit = cfg.commit_loss_beta * jnp.mean(jnp.square(sg(z_q) - z))
        return dict(recon=recon, vq=vq, commit=commit, total=recon + vq + commit)

    return nn.apply(run, VQModel(cfg))({"params": params})


# --------------------------------------------------------------------------------------------
# PyTorch (LlamaGen) state-dict names
# --------------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^(conv_blocks|res|attn|mid)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def torch_key(path: tuple[str, ...]) -> str:
    """Flax param path -> LlamaGen state-dict key, e.g.
    ("encoder", "conv_blocks_4", "attn_1", "q", "kernel") -> "encoder.conv_blocks.4.attn.1.q.weight",
    ("quantize", "embedding") -> "quantize.embedding.weight"."""
    *mods, leaf = path
    parts = []
    for p in mods:
        m = _INDEXED.match(p)
        parts.extend([m.group(1), m.group(2)] if m else [p])
    if tuple(path) == ("quantize", "embedding"):
        return "quantize.embedding.weight"
    if leaf not in _LEAF:
        raise KeyError(f"no PyTorch name for parameter {'/'.join(path)}")
    return ".".join(parts + [_LEAF[leaf]])


def torch_style_keys(params) -> dict[str, tuple[int, ...]]:
    """LlamaGen state-dict key -> PyTorch tensor shape for every parameter (conv kernels
    (kh, kw, in, out) become (out, in, kh, kw))."""
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tuple(str(getattr(k, "key", k)) for k in kp)
        shape = tuple(leaf.shape)
        if path[-1] == "kernel" and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        out[torch_key(path)] = shape
    return out
