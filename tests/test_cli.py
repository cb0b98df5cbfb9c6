"""The `scalingar` command and the pipeline API on a tiny random world checkpoint."""
import json
import os

import numpy as np
import pytest

from scalingar_jax import cli
from scalingar_jax.images import read_png
from scalingar_jax.pipeline import generate, load_pipeline
from scalingar_jax.scaling.options import Strategy

PROMPT = "a photo of a red circle left of a blue square"


@pytest.fixture(scope="module")
def world(random_world):
    return str(random_world)


def test_generate_writes_every_output(world, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["generate", PROMPT, "-n", "4", "--checkpoint", world, "--out", str(out), "--seed", "1"])
    assert rc == 0
    for name in ("selected.png", "candidates.png", "result.json"):
        assert (out / name).is_file(), name
    img = read_png(out / "selected.png")
    assert img.shape == (64, 64, 3)  # 16x16 image upscaled 4x
    result = json.loads((out / "result.json").read_text())
    assert result["num_candidates"] == 4 and 0 <= result["winner"] < 4
    assert result["tokens_used"] <= 4 * 16
    # compile and run seconds apart; what selection ranked per candidate (None: pruned)
    assert result["compile_seconds"] >= 0 and result["run_seconds"] >= 0
    scores = result["candidate_scores"]
    assert len(scores) == 4 and scores[result["winner"]] == max(s for s in scores if s is not None)
    assert [s is None for s in scores] == [t >= 0 for t in result["terminated_at"]]
    captured = capsys.readouterr()
    assert "scalingar: compiling the scalingar token loop for 1 prompt(s) x 4 candidates, 16 tokens" in captured.err
    assert "compile " in captured.out and " s, run " in captured.out
    pytest.importorskip("matplotlib")
    assert (out / "confidence.png").is_file() and (out / "entropy.png").is_file()


def test_generate_prompt_file_then_evaluate(world, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    recs = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
            {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}],
             "prompt": "a photo of a red square"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "gen"
    assert cli.main(["generate", "--prompts", str(prompts), "-n", "2", "--checkpoint", world, "--out", str(out),
                     "--strategy", "plain"]) == 0
    assert sorted(os.listdir(out)) == ["00000", "00001", "scalingar_run.json"]
    # plain keeps candidate 0 only (N = 1): nothing to save
    assert "images/s, tokens saved 0 (0%)" in capsys.readouterr().out
    assert cli.main(["evaluate", str(out)]) == 0
    assert "overall" in capsys.readouterr().out


def test_prompt_bar_reports_rate_and_saved_tokens():
    from scalingar_jax.cli.generate import prompt_bar_fields

    tally = {"folders": 2, "images": 8, "tokens_used": 96, "tokens_full": 128}
    assert prompt_bar_fields(tally, 4.0) == {"rate": "2.00 images/s", "saved": "tokens saved 32 (25%)"}
    assert prompt_bar_fields(dict(tally, images=0, tokens_used=0, tokens_full=0), 0.0) == {
        "rate": "0.00 images/s", "saved": "tokens saved 0"}


@pytest.mark.parametrize("argv, message", [
    (["generate", "   "], "empty"),
    (["generate", "a photo of a red unicorn"], "unicorn"),
    (["generate", PROMPT, "-n", "0"], "must be >= 1"),
])
def test_generate_bad_input(world, tmp_path, capsys, argv, message):
    rc = cli.main(argv + ["--checkpoint", world, "--out", str(tmp_path / "o")])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_and_unwritable_output(tmp_path, capsys, world):
    assert cli.main(["generate", PROMPT, "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no model bundle" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["generate", PROMPT, "--checkpoint", world, "--out", str(blocker / "sub")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err


def test_library_generate_every_strategy(world):
    pipe = load_pipeline(world)
    for strategy in ("plain", "confidence_only", "scalingar", "best_of_n", "importance_sampling"):
        out = generate(pipe, [PROMPT, "a photo of two squares"], strategy=strategy, num_candidates=2, seed=0)
        assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == np.uint8
        assert out.result.winner.shape == (2,)
    with pytest.raises(ValueError, match="unknown strategy"):
        generate(pipe, [PROMPT], strategy="beam")
    with pytest.raises(ValueError, match="num_candidates"):
        generate(pipe, [PROMPT], num_candidates=0)
    with pytest.raises(ValueError, match="first_candidate applies to"):
        generate(pipe, [PROMPT], strategy=Strategy("best_of_n", first_candidate=2))
    # candidate 1 of a 2-candidate run, decoded alone, is the same image
    both = generate(pipe, [PROMPT], strategy="plain", num_candidates=2, seed=0, decode_candidates=True)
    one = generate(pipe, [PROMPT], strategy=Strategy("plain", 1, first_candidate=1), seed=0)
    np.testing.assert_array_equal(one.images[0], both.candidates[0, 1])


def test_pruned_candidates_show_ungenerated_tokens_grey(world):
    from scalingar_jax.pipeline import UNGENERATED_GREY
    from scalingar_jax.scaling import ScalingARConfig

    pipe = load_pipeline(world)
    eager = ScalingARConfig(probation_steps=1, p=0.9, rebound_threshold=1e9, min_survivors=1)  # prunes at once
    out = generate(pipe, [PROMPT], strategy=Strategy("scalingar", 4, scaling=eager), seed=0,
                   decode_candidates=True)
    g, f = pipe.gpt_cfg.grid_size, out.candidates.shape[2] // pipe.gpt_cfg.grid_size
    term = np.asarray(out.result.terminated_at[0])
    assert (term >= 0).any() and (term < g * g - 1).any()
    for n, t in enumerate(term):
        cells = out.candidates[0, n].reshape(g, f, g, f, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, -1)
        grey = (cells == UNGENERATED_GREY).all(axis=1)  # token cells painted grey
        generated = np.arange(g * g) <= t if t >= 0 else np.ones(g * g, bool)
        assert grey[~generated].all() and not grey[generated].any(), (n, t)


def test_bad_mesh(world, tmp_path, capsys):
    assert cli.main(["generate", PROMPT, "--checkpoint", world, "--out", str(tmp_path / "o"), "--mesh", "2y4"]) == 2
    assert "--mesh" in capsys.readouterr().err


def test_package_warnings_show_as_one_line_and_python_format_comes_back(monkeypatch, capsys):
    """A warning of the package (e.g. a T5 prompt cut at 119 pieces) prints as one `scalingar:
    warning:` line while the command runs; another library's keeps Python's format; afterwards
    Python's formatting is back."""
    import warnings

    from scalingar_jax import text_features

    python_format = warnings.formatwarning
    seen = {}

    def fake_merge(args):
        seen["ours"] = warnings.formatwarning("prompt 0 is 680 pieces long", UserWarning, text_features.__file__, 411)
        seen["theirs"] = warnings.formatwarning("deprecated", DeprecationWarning, np.__file__, 7, "x = 1")
        return 0

    monkeypatch.setattr(cli.merge, "run", fake_merge)
    assert cli.main(["merge", "a", "--out", "b"]) == 0
    assert seen["ours"] == "scalingar: warning: prompt 0 is 680 pieces long\n"
    assert seen["theirs"] == python_format("deprecated", DeprecationWarning, np.__file__, 7, "x = 1")
    assert warnings.formatwarning is python_format
