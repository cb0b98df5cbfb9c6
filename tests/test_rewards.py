"""Rewards for real images: CLIPScore on the tiny HF CLIP fixture, `--reward module:function`
plug-ins (tests/reward_plugin.py), and Best-of-N with a plug-in on the embedded shapes-world bundle."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from scalingar_jax import cli, rewards
from scalingar_jax.pipeline import generate, load_pipeline

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "clip_tiny")


@pytest.fixture(scope="module")
def fixture_data():
    images = np.load(os.path.join(FIXTURE, "images.npz"))
    with open(os.path.join(FIXTURE, "tokenizer_fuzz.json"), encoding="utf-8") as f:
        prompts = json.load(f)["prompts"]
    return [images[k] for k in sorted(images)], prompts, np.load(os.path.join(FIXTURE, "expected.npz"))


def test_clipscore_matches_transformers_and_ranks(fixture_data):
    images, prompts, expected = fixture_data
    fn = rewards.load_reward(f"clipscore:{FIXTURE}")
    cos = expected["logits_per_image"] / np.exp(1.7)  # the fixture's logit scale
    assert (cos < 0).any()  # the clamp at 0 is exercised
    before = rewards._clipscore_jit._cache_size()
    for i, image in enumerate(images):
        scores = fn(np.repeat(image[None], len(prompts), axis=0), prompts)
        assert scores.shape == (len(prompts),) and scores.dtype == np.float64
        np.testing.assert_allclose(scores, 2.5 * np.maximum(cos[i], 0), atol=1e-5)
        np.testing.assert_array_equal(np.argsort(-scores, kind="stable")[:5], np.argsort(-cos[i], kind="stable")[:5])
    # row b scores image b with prompt b: prompts reversed, scores reversed
    flipped = fn(np.repeat(images[1][None], len(prompts), axis=0), prompts[::-1])
    np.testing.assert_allclose(flipped, 2.5 * np.maximum(cos[1, ::-1], 0), atol=1e-5)
    assert rewards._clipscore_jit._cache_size() == before + 1  # one batch shape, one compile
    batch = np.stack([images[0], images[0]])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        fn(batch, prompts[:1])
    with pytest.raises(ValueError, match="uint8"):
        fn(batch.astype(np.float32), prompts[:2])


def test_plugin_contract():
    fn = rewards.load_reward("reward_plugin:brightness")
    images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 200, 30)])
    np.testing.assert_array_equal(fn(images, ["a", "b", "c"]), [10.0, 200.0, 30.0])
    for name, message in [("wrong_shape", r"returned shape \(3, 2\) for 3 images"),
                          ("not_finite", "returned 1 non-finite score"),
                          ("not_numbers", "returned list, not numbers")]:
        bad = rewards.load_reward(f"reward_plugin:{name}")
        with pytest.raises(ValueError, match=f"reward plug-in reward_plugin:{name} {message}"):
            bad(images, ["a", "b", "c"])


@pytest.mark.parametrize("spec, error, message", [
    ("reward_plugin", ValueError, "expected 'clipscore:PATH' or 'module:function'"),
    ("no_such_module_xyz:f", ValueError, "cannot import module 'no_such_module_xyz'"),
    ("reward_plugin:nothing", ValueError, "has no 'nothing'"),
    ("reward_plugin:NOT_A_FUNCTION", ValueError, "is a int, not a function"),
    ("reward_plugin:one_argument", ValueError, r"cannot be called as fn\(images, prompts\)"),
    ("clipscore:", ValueError, "give the folder"),
    ("clipscore:/no/such/clip", FileNotFoundError, "--reward clipscore:/no/such/clip: CLIP model folder"),
])
def test_load_reward_errors(spec, error, message):
    with pytest.raises(error, match=message):
        rewards.load_reward(spec)


def test_clipscore_folder_errors(tmp_path):
    d = tmp_path / "clip"
    shutil.copytree(FIXTURE, d)
    os.remove(d / "vocab.json")
    with pytest.raises(FileNotFoundError, match=f"--reward clipscore:{d}: .*no vocab.json"):
        rewards.load_reward(f"clipscore:{d}")
    shutil.copy(os.path.join(FIXTURE, "vocab.json"), d / "vocab.json")
    conf = json.loads((d / "config.json").read_text())
    conf["vision_config"]["patch_size"] = 16  # 16 px patches: the 8 px patch kernel does not fit
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"patch_embedding.weight: expected shape \(24, 3, 16, 16\)"):
        rewards.load_reward(f"clipscore:{d}")


def test_best_of_n_picks_the_reward_winner(tmp_path, capsys):
    """Embedded shapes-world bundle, N = 3: the winner is the candidate the reward scores highest,
    with two opposite plug-ins (so the choice cannot be an accident of the candidate order) and
    CLIPScore with the tiny CLIP (48 px images resized and cropped to its 32 px)."""
    pipe = load_pipeline()
    prompt = "a photo of a red circle"
    winners = {}
    for name, spec in [("brightness", "reward_plugin:brightness"), ("darkness", "reward_plugin:darkness"),
                       ("clipscore", f"clipscore:{FIXTURE}")]:
        p = dataclasses.replace(pipe, reward=rewards.load_reward(spec))
        out = generate(p, [prompt], strategy="best_of_n", num_candidates=3, seed=0, decode_candidates=True)
        scores = p.reward(out.candidates[0], [prompt] * 3)
        np.testing.assert_allclose(np.asarray(out.result.score[0]), scores, rtol=1e-6)
        winners[name] = int(out.result.winner[0])
        assert winners[name] == int(np.argmax(scores))
        np.testing.assert_array_equal(out.images[0], out.candidates[0, winners[name]])
    assert winners["brightness"] != winners["darkness"]

    # the command: --reward replaces the bundle's reward, recorded in result.json
    assert cli.main(["generate", prompt, "--strategy", "best_of_n", "-n", "3", "--reward", "reward_plugin:darkness",
                     "--out", str(tmp_path / "o"), "--scale", "1"]) == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert (result["winner"], result["reward"]) == (winners["darkness"], "reward_plugin:darkness")
    # every candidate's reward, the candidates as decoded (tolerance: the candidates' float decode)
    darkness = dataclasses.replace(pipe, reward=rewards.load_reward("reward_plugin:darkness"))
    out = generate(darkness, [prompt], strategy="best_of_n", num_candidates=3, seed=0, decode_candidates=True)
    np.testing.assert_allclose(result["candidate_rewards"], darkness.reward(out.candidates[0], [prompt] * 3),
                               rtol=1e-6)
    assert int(np.argmax(result["candidate_rewards"])) == result["winner"]


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "scalingar", "--reward", "reward_plugin:brightness"],
     "--reward applies to best_of_n and importance_sampling; strategy 'scalingar' uses no reward"),
    (["--strategy", "best_of_n", "--reward", "reward_plugin:nothing"], "has no 'nothing'"),
    (["--strategy", "best_of_n", "--reward", "clipscore:/no/such/clip"], "CLIP model folder"),
])
def test_cli_reward_errors(tmp_path, capsys, extra, message):
    assert cli.main(["generate", "a photo of a red circle", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
