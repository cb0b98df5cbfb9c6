"""experiments/bench_generate.py's random-bundle mode: the bundle it builds through
`llamagen.assemble_bundle` loads as a t2i pipeline, and its Best-of-N reward is the mean pixel."""
import numpy as np
import pytest

import bench_generate as BG


def test_random_bundle_loads(tmp_path):
    from scalingar_jax.pipeline import load_pipeline

    args = type("A", (), {"tiny": True})()
    gpt_cfg, vq_cfg = BG.random_configs(args)
    prompts = BG.bench_prompts(3)
    bundle = BG.make_random_bundle(tmp_path / "b", gpt_cfg, vq_cfg, prompts, seed=0, log=lambda m: None)
    pipe = load_pipeline(bundle)
    assert pipe.gpt_cfg == gpt_cfg and pipe.vq_cfg == vq_cfg
    feats, mask = pipe.condition(prompts[::-1])
    assert feats.shape == (3, gpt_cfg.cls_token_num, gpt_cfg.caption_dim) and mask.shape == feats.shape[:2]
    assert mask[:, -1].all() and not np.any(feats[~mask])  # left padded, padding rows zero
    assert pipe.image_size == gpt_cfg.grid_size * 16


def test_brightness_reward_and_runs():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    np.testing.assert_allclose(BG.brightness_reward(images, ["a", "b"]), [0.0, 255.0])
    assert BG.parse_runs(["plain:1", "scalingar:8"]) == [("plain", 1), ("scalingar", 8)]
    with pytest.raises(SystemExit):
        BG.parse_runs(["beam:8"])
