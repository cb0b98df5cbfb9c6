"""End to end against LlamaGen's own sample path (issue 17, point 3), without torch.

tests/fixtures/llamagen_e2e/ holds tiny random LlamaGen checkpoints made with LlamaGen's own
classes and what LlamaGen's sample_t2i.py / sample_c2i.py path made of them (tokens, float images
from VQModel.decode_code, the uint8 images torchvision's save_image writes, and the T5 features
T5Embedder computed), all written by conversion/make_llamagen_e2e_fixture.py. Here the checkpoints
go through `scalingar convert` and `scalingar bundle`, then `scalingar generate --strategy plain
--top-k 1 -n 1 --cfg <LlamaGen's> --scale 1` must give the same tokens, the same uint8 pixels,
and float images within 1e-4.

Routes: c2i (class ids); t2i with LlamaGen's precomputed T5 features (`--t5-features`, runs in
CI); t2i with the Flax T5 from the Hugging Face folder (tokenized with sentencepiece, an optional
extra: skipped without it), which also checks LlamaGen's caption preprocessing, truncation
(one prompt is 212 pieces long) and left padding.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from scalingar_jax import cli, viz, vq
from scalingar_jax.images import read_png, to_uint8
from scalingar_jax.pipeline import load_pipeline

FIX = Path(__file__).parent / "fixtures" / "llamagen_e2e"
T5_DIR = Path(__file__).parent / "fixtures" / "t5_tiny"
FACTS = json.loads((FIX / "expected.json").read_text())


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """generate's matplotlib plots are not under test here (and cost seconds per run)."""
    for name in ("plot_confidence_trajectories", "plot_entropy_heatmap"):
        monkeypatch.setattr(viz, name, lambda path, *args, **kwargs: path)


@pytest.fixture(scope="module")
def expected():
    with np.load(FIX / "expected.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixture's LlamaGen .pt files through `scalingar convert` (a tiny GPT matches no LlamaGen
    preset, so its head count is given, as a user of a custom model would)."""
    out = tmp_path_factory.mktemp("converted")
    sets = FACTS["convert_overrides"]
    for name, extra in (("gpt_t2i", ["--set", f"n_head={sets['gpt']['n_head']}", "--grid-size", str(FACTS["grid_size"])]),
                        ("gpt_c2i", ["--set", f"n_head={sets['gpt']['n_head']}", "--grid-size", str(FACTS["grid_size"])]),
                        ("vq", ["--set", f"norm_groups={sets['vq']['norm_groups']}"])):
        assert cli.main(["convert", str(FIX / f"{name}.pt"), str(out / name), *extra]) == 0
    return out


def _bundle(tmp_path_factory, converted, name, gpt, *text):
    out = tmp_path_factory.mktemp("bundles") / name
    assert cli.main(["bundle", str(out), "--gpt", str(converted / gpt), "--vq", str(converted / "vq"), *text]) == 0
    return out


def _generate(bundle, out, *what, cfg):
    return cli.main(["generate", *what, "--checkpoint", str(bundle), "--out", str(out), "--strategy", "plain",
                     "--top-k", "1", "-n", "1", "--cfg", str(cfg), "--scale", "1"])


def _check_run(folder: Path, pipe, tokens, images, uint8):
    """One generate output folder vs LlamaGen: tokens identical, uint8 pixels identical, the float
    images of the tokens (decoded by this package's VQ, unclipped) within 1e-4."""
    got = np.load(folder / "tokens.npy")
    assert got.shape == (1, tokens.size) and got.dtype == np.int32
    np.testing.assert_array_equal(got[0], tokens)
    g = pipe.gpt_cfg.grid_size
    floats = np.asarray(vq.decode_codes(pipe.vq_params, pipe.vq_cfg, got.reshape(1, g, g), clip=False))[0]
    np.testing.assert_allclose(floats, images, rtol=0, atol=1e-4)
    png = read_png(folder / "selected.png")
    assert png.shape == uint8.shape
    # torchvision: floor(clamp((x+1)/2) * 255 + 0.5), this package: rint(clip((x+1) * 127.5)); they differ
    # only at exact ties (x = -1 + (2k+1)/255), which these images do not hit
    np.testing.assert_array_equal(png, uint8)


def test_fixture_is_small_and_self_consistent(expected):
    assert sum(f.stat().st_size for f in FIX.iterdir()) < 1_000_000
    assert FACTS["t2i"]["truncated"] == [False, False, True]       # one prompt longer than 119 pieces
    assert expected["t2i_tokens"].shape == (3, FACTS["grid_size"] ** 2)
    assert expected["c2i_images"].shape == (3, FACTS["image_size"], FACTS["image_size"], 3)
    # the decoded images leave [-1, 1] somewhere, so the clamp of the uint8 step is exercised
    assert expected["c2i_images"].min() < -1 or expected["c2i_images"].max() > 1
    # save_image's rounding and this package's to_uint8 agree on LlamaGen's own floats (no ties hit)
    for kind in ("t2i", "c2i"):
        np.testing.assert_array_equal(to_uint8(expected[f"{kind}_images"]), expected[f"{kind}_uint8"])
    # the fixture was made from this T5 folder: regenerate it if tests/fixtures/t5_tiny changes
    for name, digest in FACTS["t5_sha256"].items():
        assert hashlib.sha256((T5_DIR / name).read_bytes()).hexdigest() == digest, f"t5_tiny/{name} changed"


def test_c2i_generate_matches_llamagen_sample_c2i(tmp_path_factory, tmp_path, converted, expected):
    bundle = _bundle(tmp_path_factory, converted, "c2i", "gpt_c2i")
    ids = [str(i) for i in FACTS["c2i"]["class_ids"]]
    # `python -m scalingar_jax.cli` runs cli.main; in process, the compiled decode loop is shared across runs
    assert _generate(bundle, tmp_path / "out", "--class-ids", *ids, cfg=FACTS["c2i"]["sampling"]["cfg_scale"]) == 0
    pipe = load_pipeline(bundle)
    for i in range(len(ids)):
        _check_run(tmp_path / "out" / f"{i:05d}", pipe, expected["c2i_tokens"][i], expected["c2i_images"][i],
                   expected["c2i_uint8"][i])


def _t2i_runs(bundle, tmp_path, expected):
    pipe = load_pipeline(bundle)
    for i, prompt in enumerate(FACTS["t2i"]["prompts"]):
        out = tmp_path / f"p{i}"
        assert _generate(bundle, out, prompt, cfg=FACTS["t2i"]["sampling"]["cfg_scale"]) == 0
        _check_run(out, pipe, expected["t2i_tokens"][i], expected["t2i_images"][i], expected["t2i_uint8"][i])
    return pipe


def test_t2i_features_route_matches_llamagen_sample_t2i(tmp_path_factory, tmp_path, converted, expected):
    """LlamaGen's T5 features (T5Embedder + sample_t2i's left padding) as the bundle's features/."""
    bundle = _bundle(tmp_path_factory, converted, "t2i_features", "gpt_t2i",
                     "--t5-features", str(FIX / "t5_features.npz"))
    _t2i_runs(bundle, tmp_path, expected)


def test_t2i_text_route_matches_llamagen_sample_t2i(tmp_path_factory, tmp_path, converted, expected):
    """Prompts in: LlamaGen's preprocessing, T5 tokenisation (truncated at 119 pieces + </s>), the
    Flax T5 encoder, left padding, then the GPT and VQ."""
    pytest.importorskip("sentencepiece", reason="sentencepiece (optional extra) not installed")
    bundle = _bundle(tmp_path_factory, converted, "t2i_text", "gpt_t2i", "--t5", str(T5_DIR))
    prompts = FACTS["t2i"]["prompts"]
    with np.load(FIX / "t5_features.npz") as z:
        ref_features, ref_mask = z["features"], z["mask"]
    with pytest.warns(UserWarning, match=r"is 212 pieces long.*last 93 piece\(s\) are cut") as caught:
        pipe = _t2i_runs(bundle, tmp_path, expected)
        features, mask = pipe.condition(prompts)
    # the long prompt is cut (once in its own generate run, once as prompt 2 of the batch), nothing else
    assert sorted(str(w.message).split()[1] for w in caught) == ["0", "2"]
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(features, ref_features, rtol=0, atol=1e-5)
