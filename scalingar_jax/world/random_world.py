"""A tiny RANDOM (untrained) shapes-world checkpoint, for tests and smoke runs.

Its images are noise: it exercises every code path of the trained world (VQ, t2i GPT, text
encoder, reward, CLI) in seconds, and is labelled "random" wherever it is used.
"""
from __future__ import annotations

from pathlib import Path

import jax

from scalingar_jax import gpt, vq
from scalingar_jax.checkpoint import save_model
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.scaling.config import ScalingARConfig

# The random world's own defaults, fixed: retuning the trained world (world.pipeline's
# WORLD_SAMPLING / WORLD_SCALING) must not change what the tests' random world computes. These are
# the settings its exactness tests were checked at, on AVX2 and AVX-512 (no decision of the random
# model within a rounding of a tie).
RANDOM_WORLD_SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=1.0, top_k=16, top_p=1.0)
RANDOM_WORLD_SCALING = ScalingARConfig(probation_steps=2, p=0.2)


def random_world_configs(grid_size: int = 4):
    """Tiny configs: 16x16 images (VQ downsample 4), a 4x4 token grid, a 1-layer GPT."""
    from scalingar_jax.world.reward import default_reward_config
    from scalingar_jax.world.text_encoder import default_text_config

    text = default_text_config(dim=16, n_layer=1, n_head=2, out_dim=8)
    vq_cfg = vq.VQConfig(codebook_size=32, codebook_embed_dim=4, ch=16, ch_mult=(1, 1, 2), z_channels=16,
                         num_res_blocks=1, norm_groups=8)
    g = GPTConfig(model_type="t2i", n_layer=1, n_head=2, dim=16, vocab_size=32, cls_token_num=text.max_len,
                  caption_dim=text.out_dim, grid_size=grid_size, multiple_of=16)
    image = grid_size * vq_cfg.downsample
    reward = default_reward_config(image_size=image, channels=(8,), dim=16, n_head=2, text_dim=16, text_layers=1,
                                   text_heads=2)
    return {"vq": vq_cfg, "gpt": g, "text": text, "reward": reward}


def save_random_world(path, seed: int = 0, grid_size: int = 4) -> Path:
    """Writes vq/, gpt/, text/, reward/ with random parameters and a `bundle.json`
    (`RANDOM_WORLD_SAMPLING` / `RANDOM_WORLD_SCALING`) under `path`; returns it."""
    from scalingar_jax.world.pipeline import write_world_manifest
    from scalingar_jax.world.reward import init_reward_params
    from scalingar_jax.world.text_encoder import init_text_params

    cfgs = random_world_configs(grid_size)
    keys = jax.random.split(jax.random.key(seed), 4)
    params = {
        "vq": vq.init_vq_params(cfgs["vq"], keys[0]),
        "gpt": gpt.init_params(cfgs["gpt"], keys[1]),
        "text": init_text_params(cfgs["text"], keys[2]),
        "reward": init_reward_params(cfgs["reward"], keys[3]),
    }
    path = Path(path)
    meta = {"random": True, "note": "untrained random weights (tests/smoke runs only)"}
    for kind, p in params.items():
        save_model(path / kind, p, cfgs[kind], kind=kind, meta=meta, overwrite=True)
    write_world_manifest(path, sampling=RANDOM_WORLD_SAMPLING, scaling=RANDOM_WORLD_SCALING,
                         name=f"tiny random shapes world (seed {seed}, untrained)")
    return path
