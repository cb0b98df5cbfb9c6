"""experiments/bench_generate.py's random-bundle mode: the bundle it builds through
`llamagen.assemble_bundle` loads as a t2i pipeline serving its random features, and its
Best-of-N reward is the mean pixel."""
import numpy as np
import pytest

import bench_generate as BG


def test_random_bundle_loads(tmp_path, random_world):
    from scalingar_jax.checkpoint import read_config
    from scalingar_jax.pipeline import load_pipeline

    prompts = BG.bench_prompts(3)  # the session's tiny random t2i GPT and VQ (no new compiles)
    bundle = BG.make_random_bundle(tmp_path / "b", random_world / "gpt", random_world / "vq", prompts, seed=0,
                                   log=lambda m: None)
    pipe = load_pipeline(bundle)
    gpt_cfg = read_config(random_world / "gpt")[1]
    assert pipe.gpt_cfg == gpt_cfg and pipe.reward is None
    feats, mask = pipe.condition(prompts[::-1])
    first, first_mask = pipe.condition(prompts[2:])
    np.testing.assert_array_equal(feats[0], first[0])  # looked up by prompt, not by position
    assert feats.shape == (3, gpt_cfg.cls_token_num, gpt_cfg.caption_dim) and mask.shape == feats.shape[:2]
    assert mask[:, -1].all() and not np.any(feats[~mask]) and np.all(np.abs(feats[mask]) > 0)  # left padded


def test_brightness_reward_and_runs():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    np.testing.assert_allclose(BG.brightness_reward(images, ["a", "b"]), [0.0, 255.0])
    assert BG.parse_runs(["plain:1", "scalingar:8"]) == [("plain", 1), ("scalingar", 8)]
    with pytest.raises(SystemExit):
        BG.parse_runs(["beam:8"])
