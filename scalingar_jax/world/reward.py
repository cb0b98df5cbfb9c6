"""A learned image-prompt reward model for the shapes world, standing in for ImageReward.

A small CNN encodes the image into a 6x6 grid of features (plus learned 2D position
embeddings); a small text encoder (`text_encoder.TextEncoder`, its own weights) encodes the
prompt; the prompt's tokens cross-attend to the image grid, are mean-pooled over valid
tokens and an MLP produces one scalar: the logit that the image matches the prompt.

It is trained (see `world/train.py`) on renders of a record (positives) against renders with
a perturbed prompt (hard negatives: wrong colour, count, shape, relation). It is imperfect
by construction; its agreement with the exact judge is measured and recorded in
`experiments/results/training/reward_v3.json` (world v3, the shipped one).

Shapes: images (B, H, W, 3) uint8 in [0, 255] or float in [-1, 1]; prompts: B strings;
scores (B,) float32 (higher = better match; > 0 means "predicted match").
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalingar_jax.world.text_encoder import TextEncoder, TextEncoderConfig


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Static shape of the reward model. `channels`: CNN widths, one stride-2 stage each."""

    image_size: int = 48
    channels: tuple[int, ...] = (32, 64, 128)
    dim: int = 128
    n_head: int = 4
    vocab_size: int = 29
    max_len: int = 16
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4

    @property
    def text_config(self) -> TextEncoderConfig:
        return TextEncoderConfig(vocab_size=self.vocab_size, max_len=self.max_len, dim=self.text_dim,
                                 n_layer=self.text_layers, n_head=self.text_heads, out_dim=self.dim)

    @property
    def grid(self) -> int:
        g = self.image_size
        for _ in self.channels:
            g = (g + 1) // 2
        return g

    def validate(self) -> "RewardConfig":
        for name in ("image_size", "dim", "n_head", "vocab_size", "max_len", "text_dim", "text_layers", "text_heads"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"RewardConfig.{name} must be a positive int, got {v!r}")
        if not self.channels or any((not isinstance(c, (int, np.integer))) or c < 1 for c in self.channels):
            raise ValueError(f"RewardConfig.channels must be a non-empty tuple of positive ints, got {self.channels!r}")
        if self.dim % self.n_head:
            raise ValueError(f"RewardConfig.dim={self.dim} is not divisible by n_head={self.n_head}")
        self.text_config.validate()
        return self


def default_reward_config(**overrides) -> RewardConfig:
    from scalingar_jax.world.vocab import MAX_PROMPT_LEN, VOCAB_SIZE

    base = dict(vocab_size=VOCAB_SIZE, max_len=MAX_PROMPT_LEN)
    base.update(overrides)
    return RewardConfig(**base).validate()


class RewardModel(nn.Module):
    cfg: RewardConfig

    def setup(self):
        cfg = self.cfg
        self.convs = [(nn.Conv(ch, (3, 3), name=f"conv{i}a"), nn.GroupNorm(num_groups=min(8, ch), name=f"norm{i}"),
                       nn.Conv(ch, (3, 3), strides=(2, 2), name=f"conv{i}b")) for i, ch in enumerate(cfg.channels)]
        self.img_proj = nn.Dense(cfg.dim, name="img_proj")
        self.img_pos = self.param("img_pos", nn.initializers.normal(0.02), (cfg.grid * cfg.grid, cfg.dim))
        self.img_ln = nn.LayerNorm(name="img_ln")
        self.text = TextEncoder(cfg.text_config, name="text")
        self.txt_ln = nn.LayerNorm(name="txt_ln")
        self.xattn = nn.MultiHeadDotProductAttention(num_heads=cfg.n_head, qkv_features=cfg.dim, out_features=cfg.dim,
                                                     deterministic=True, name="xattn")
        self.mlp_ln = nn.LayerNorm(name="mlp_ln")
        self.mlp_in, self.mlp_out = nn.Dense(2 * cfg.dim, name="mlp_in"), nn.Dense(cfg.dim, name="mlp_out")
        self.head_in, self.head_out = nn.Dense(cfg.dim, name="head_in"), nn.Dense(1, name="head_out")

    def encode_image(self, images):
        """images (B, H, W, 3) float in [-1, 1] -> (B, grid*grid, dim) image tokens."""
        x = images.astype(jnp.float32)
        for conv_a, norm, conv_b in self.convs:
            x = nn.silu(conv_b(nn.silu(norm(conv_a(x)))))
        B, gh, gw, C = x.shape
        return self.img_ln(self.img_proj(x.reshape(B, gh * gw, C)) + self.img_pos[None])

    def encode_text(self, ids, mask):
        """ids/mask (B, L) -> (B, L, dim) contextual prompt tokens (padded rows 0)."""
        return self.text(ids, mask)

    def score(self, img, txt, mask):
        """img (B, G, dim), txt (B, L, dim), mask (B, L) -> (B,) float32 match logits.

        The prompt's tokens cross-attend to the image tokens, are mean-pooled over valid
        tokens, and an MLP head gives one logit."""
        h = txt + self.xattn(self.txt_ln(txt), img)
        h = h + self.mlp_out(nn.gelu(self.mlp_in(self.mlp_ln(h))))
        m = mask[..., None].astype(jnp.float32)
        pooled = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return self.head_out(nn.gelu(self.head_in(pooled)))[:, 0].astype(jnp.float32)

    def __call__(self, images, ids, mask):
        """images (B, H, W, 3) float in [-1, 1]; ids/mask (B, L) -> logits (B,) float32."""
        return self.score(self.encode_image(images), self.encode_text(ids, mask), mask)

    def pairs(self, images, ids, mask, pair_index):
        """Scores many (image, prompt) pairs while encoding each image and prompt once.

        images (Bi, H, W, 3); ids/mask (Bt, L); pair_index (P, 2) int32 of (image, prompt)
        rows -> (P,) float32 logits."""
        img, txt = self.encode_image(images), self.encode_text(ids, mask)
        i, t = pair_index[:, 0], pair_index[:, 1]
        return self.score(img[i], txt[t], mask[t])


def init_reward_params(cfg: RewardConfig, key: jax.Array):
    cfg.validate()
    s = cfg.image_size
    return RewardModel(cfg).init(key, jnp.zeros((1, s, s, 3)), jnp.ones((1, cfg.max_len), jnp.int32),
                                 jnp.ones((1, cfg.max_len), bool))["params"]


def reward_logits(params, cfg: RewardConfig, images, ids, mask) -> jax.Array:
    """Traceable core: images (B, H, W, 3) float in [-1, 1], ids/mask (B, L) -> (B,) float32."""
    return RewardModel(cfg).apply({"params": params}, images, ids, mask)


def reward_pair_logits(params, cfg: RewardConfig, images, ids, mask, pair_index) -> jax.Array:
    """Traceable: images (Bi, H, W, 3) float in [-1, 1]; ids/mask (Bt, L); pair_index (P, 2)
    int32 rows (image, prompt) -> (P,) float32 logits. Each image and prompt is encoded once."""
    return RewardModel(cfg).apply({"params": params}, images, ids, mask, pair_index, method=RewardModel.pairs)


_reward_jit = jax.jit(reward_logits, static_argnums=1)


def to_unit_range(images) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is taken as already in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 in [0,255] or float in [-1,1], got dtype {images.dtype}")
    return images.astype(np.float32)


def reward_scores(params, cfg: RewardConfig, images, prompts: list[str]) -> jax.Array:
    """Scores image-prompt match.

    Args:
      images: (B, H, W, 3) uint8 in [0, 255] or float in [-1, 1], H = W = cfg.image_size.
      prompts: B prompt strings of the shapes world.
    Returns:
      (B,) float32 logits; > 0 means the model predicts the image matches the prompt.
    """
    from scalingar_jax.world.vocab import tokenize

    cfg.validate()
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single str")
    x = to_unit_range(images)
    if x.ndim != 4 or x.shape[1:] != (cfg.image_size, cfg.image_size, 3):
        raise ValueError(f"images must have shape (B, {cfg.image_size}, {cfg.image_size}, 3), got {x.shape}")
    if len(prompts) != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} images but {len(prompts)} prompts")
    ids, mask = tokenize(list(prompts), cfg.max_len)
    return _reward_jit(params, cfg, jnp.asarray(x), jnp.asarray(ids), jnp.asarray(mask))


def ranking_loss(scores: jax.Array, labels: jax.Array, calibration: float = 0.5) -> tuple[jax.Array, dict]:
    """Within-prompt ranking objective of the v2 reward model (traceable).

    scores float (P, K): the logits of K candidate images of each of P prompts; labels
    (P, K) in {0, 1} (1: the image satisfies its prompt, by GenEval's rules on its true
    objects). Three terms, each averaged over the prompts where it is defined:
    - listwise: -log(sum over positives of exp(s) / sum over all K of exp(s)), for prompts
      with at least one positive and one negative (softmax over one prompt's candidates);
    - pairwise: softplus(s_neg - s_pos) over the (positive, negative) pairs of one prompt;
    - `calibration` x class-balanced binary cross-entropy, so that s > 0 still means "match".
    The first two are invariant to a per-prompt shift of the scores: they rank only within a
    prompt. Returns (loss scalar, {"listwise", "pairwise", "bce", "pair_acc"}).
    """
    s = jnp.asarray(scores, jnp.float32)
    y = jnp.asarray(labels, jnp.float32)
    pos, neg = y > 0.5, y < 0.5
    mixed = (pos.any(-1) & neg.any(-1)).astype(jnp.float32)  # (P,)
    n_mixed = jnp.maximum(mixed.sum(), 1.0)
    lse_all = jax.nn.logsumexp(s, axis=-1)
    lse_pos = jax.nn.logsumexp(jnp.where(pos, s, -jnp.inf), axis=-1)
    listwise = (jnp.where(mixed > 0, lse_all - lse_pos, 0.0)).sum() / n_mixed
    pair = pos[:, :, None] & neg[:, None, :]  # (P, K, K): (positive i, negative j)
    diff = s[:, None, :] - s[:, :, None]  # s_j - s_i
    n_pair = jnp.maximum(pair.sum(), 1)
    pairwise = jnp.where(pair, jax.nn.softplus(diff), 0.0).sum() / n_pair
    pair_acc = jnp.where(pair, diff < 0, False).sum() / n_pair
    bce = optax_sigmoid_bce(s, y)
    balanced = (bce * y).sum() / jnp.maximum(y.sum(), 1.0) + (bce * (1 - y)).sum() / jnp.maximum((1 - y).sum(), 1.0)
    loss = listwise + pairwise + calibration * balanced
    return loss, {"listwise": listwise, "pairwise": pairwise, "bce": balanced, "pair_acc": pair_acc}


def optax_sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Elementwise sigmoid binary cross-entropy (same shape as `logits`)."""
    return jax.nn.softplus(logits) - logits * labels
