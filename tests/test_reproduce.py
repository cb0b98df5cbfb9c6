"""experiments/reproduce.py and experiments/runner.py: every subcommand with --smoke on a tiny random
world (no checkpoint). pyproject puts experiments/ on pytest's sys.path."""
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import reproduce as R  # noqa: E402
import runner  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return runner.tiny_world_pipeline(0)


@pytest.fixture(scope="module")
def smoke(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert R.main(["all", "--smoke", "--out", str(out)], pipe=pipe) == 0
    return out


PNGS = {"main": ["main_accuracy.png", "main_cost.png"], "ablations": ["ablations.png"],
        "width": ["width_accuracy.png", "width_tokens.png"], "robustness": ["robustness.png"],
        "efficiency": ["efficiency.png"], "sensitivity": ["sensitivity_p.png", "sensitivity_delta_rec.png"],
        "signals": ["signals_auroc.png"]}


@pytest.mark.parametrize("name", R.EXPERIMENTS)
def test_every_experiment_writes_json_md_png(smoke, name):
    d = json.loads((smoke / f"{name}.json").read_text())
    for key in ("experiment", "stamp", "settings", "paper", "files"):
        assert key in d, key
    for key in ("command", "seeds", "git_rev", "machine"):
        assert key in d["stamp"], key
    md = (smoke / f"{name}.md").read_text()
    assert md.startswith(f"# {name}") and "|---" in md
    for png in PNGS[name]:
        assert (smoke / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_main_contents(smoke):
    d = json.loads((smoke / "main.json").read_text())
    st = d["strategies"]
    assert set(st) >= {"plain", "best_of_n", "oracle_bon", "importance", "confidence", "scalingar"}
    assert "oracle" in st["oracle_bon"]["label"] and "upper bound" in st["oracle_bon"]["label"]
    T, N = d["settings"]["T"], d["settings"]["N"]
    assert st["plain"]["tokens_per_image"] == T and st["best_of_n"]["tokens_per_image"] == N * T
    assert st["scalingar"]["tokens_per_image"] <= N * T
    for s in st.values():
        lo, hi = s["overall_ci"]
        assert lo <= s["overall"] + 1e-9 and s["overall"] <= hi + 1e-9
        assert set(s["per_group"]) == set(d["groups"]) and s["s_per_image"] >= 0
        # oracle >= learned-reward BoN on every record (same candidates)
    assert all(o >= b for o, b in zip(st["oracle_bon"]["per_record_correct"][0], st["best_of_n"]["per_record_correct"][0]))
    assert {"relative_gain_vs_plain", "token_fraction_of_bon", "speedup_vs_bon"} <= set(d["headline"])
    assert all("diff_ci" in c and "within_noise" in c for c in d["comparisons"])
    assert "within noise" in (smoke / "main.md").read_text() or "significant" in (smoke / "main.md").read_text()


def test_other_contents(smoke):
    ab = json.loads((smoke / "ablations.json").read_text())
    assert set(ab["strategies"]) >= {"full", "no_conditional", "no_worst_block", "no_token_level", "termination_only",
                                     "scheduler_only"}
    w = json.loads((smoke / "width.json").read_text())
    assert set(w["curves"]) == {"best_of_n", "importance", "scalingar"}
    assert all(len(c["accuracy"]) == len(w["settings"]["widths"]) for c in w["curves"].values())
    T, widths = w["settings"]["T"], w["settings"]["widths"]
    for e in w["equal_tokens"]:  # Best-of-M spends at least ScalingAR's tokens (unless M is capped)
        assert e["bon_tokens"] == e["M"] * T and (e["bon_tokens"] >= e["scalingar_tokens"] or e["M"] == max(widths))
    assert set(w["accuracy_vs_tokens"]) >= {"ScalingAR", "importance sampling", "confidence-only"}
    assert (smoke / "accuracy_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    rb = json.loads((smoke / "robustness.json").read_text())
    assert set(rb["drops"]) >= {"plain", "best_of_n", "importance", "scalingar"} and "mitigation_vs" in rb
    ef = json.loads((smoke / "efficiency.json").read_text())
    for k in ("base", "best_of_n", "scalingar"):
        s = ef["strategies"][k]
        assert s["peak_mb"] > 0 and s["s_per_step"] > 0 and s["tokens_per_image"] > 0
    assert ef["strategies"]["best_of_n"]["peak_mb"] > ef["strategies"]["base"]["peak_mb"]
    # the paper's protocol: the same candidates decoded one at a time (same keys; at this tiny size the
    # 2-row and 4-row matmuls round alike, so the tokens match too)
    assert ef["headline"]["sequential_bon_same_candidates"] == 1.0
    assert ef["strategies"]["best_of_n_seq"]["tokens_per_image"] == ef["strategies"]["best_of_n"]["tokens_per_image"]
    se = json.loads((smoke / "sensitivity.json").read_text())
    assert set(se["curves"]) == {"p", "delta_rec"}
    res = (smoke / "RESULTS.md").read_text()
    assert "## Targets" in res and "0.32" in res and "46.5" in res and "26%" in res
    # the answer opens the report: one line per question, the equal-tokens one from width.json
    answer = res[res.index("## The answer"):res.index("## Targets")]
    assert answer.count("- **Does ScalingAR") == 4 and "at equal tokens?" in answer
    N, eq = w["settings"]["N"], {e["N"]: e for e in w["equal_tokens"]}
    assert f"Best-of-{eq[N]['M']} spends {eq[N]['bon_tokens']}" in answer


def test_signals_contents(smoke):
    sg = json.loads((smoke / "signals.json").read_text())
    main = json.loads((smoke / "main.json").read_text())["strategies"]
    t = sg["signals"]
    assert set(t) >= {"C_final", "C_warmup", "D_final", "mean_confidence", "reward"}
    for v in t.values():
        assert 0.0 <= v["within_prompt_auroc"] <= 1.0 and 0.0 <= v["pick_accuracy"] <= 1.0
    # the same candidate set as main's (same seeds, same keys): picking by the reward IS main's Best-of-N,
    # by mean token confidence main's confidence-only, the oracle main's oracle Best-of-N
    assert t["reward"]["pick_accuracy"] == pytest.approx(main["best_of_n"]["overall"])
    assert t["mean_confidence"]["pick_accuracy"] == pytest.approx(main["confidence"]["overall"])
    assert sg["references"]["oracle"]["pick_accuracy"] == pytest.approx(main["oracle_bon"]["overall"])
    assert len(sg["curves"]["C"]) == len(sg["curve_steps"])
    for v in t.values():  # correlation with the drawn area: None when every candidate drew the same
        assert v["area_spearman"] is None or -1.0 <= v["area_spearman"] <= 1.0
    assert "vs drawn area" in (smoke / "signals.md").read_text()
    tags = {r["tag"] for r in R.prompt_set("eval", 1)}
    for k in R.PER_TAG_SIGNALS:  # per tag: an AUROC in [0, 1] where the tag has a (correct, wrong) pair
        assert set(sg["per_tag"][k]) == tags
        for v in sg["per_tag"][k].values():
            assert (v["within_prompt_auroc"] is None) == (v["pairs"] == 0)
            assert v["within_prompt_auroc"] is None or 0.0 <= v["within_prompt_auroc"] <= 1.0
    assert "## Per tag" in (smoke / "signals.md").read_text()


def test_tune_then_tuned_and_report(pipe, smoke):
    assert R.main(["tune", "--smoke", "--out", str(smoke)], pipe=pipe) == 0
    t = json.loads((smoke / "tune.json").read_text())
    assert t["settings"]["split"] == "dev" and set(t["chosen"]) == {"Delta_rec", "p"}
    sweep = t["cfg_sweep"]  # every scale's candidate set, reported: Best-of-N, confidence-only, oracle
    assert sorted(map(float, sweep["reward_within_prompt_auroc"])) == sorted(t["settings"]["cfg_grid"])
    for c in t["settings"]["cfg_grid"]:
        bon, orc = sweep["strategies"][f"best_of_n,cfg={c}"], sweep["strategies"][f"oracle_bon,cfg={c}"]
        assert bon["overall"] <= orc["overall"] + 1e-9  # the oracle picks a correct candidate when there is one
    argv = ["sensitivity", "--smoke", "--tuned", "--p-values", str(t["chosen"]["p"]), "--delta-values", "0.05"]
    assert R.main(argv + ["--out", str(smoke)], pipe=pipe) == 0
    settings = json.loads((smoke / "sensitivity.json").read_text())["settings"]
    assert t["chosen_cfg_scale"] in t["settings"]["cfg_grid"]
    assert settings["tuned"] == {**t["chosen"], "cfg_scale": t["chosen_cfg_scale"]}
    assert settings["sampling"]["cfg_scale"] == t["chosen_cfg_scale"]  # the dev-chosen base CFG applies to all
    assert "plain,cfg=" + str(t["chosen_cfg_scale"]) in t["strategies"]
    # --cfg-scale overrides the tuned base CFG for every strategy and says so in the settings
    assert R.main(argv + ["--cfg-scale", "2.5", "--out", str(smoke)], pipe=pipe) == 0
    settings = json.loads((smoke / "sensitivity.json").read_text())["settings"]
    assert settings["sampling"]["cfg_scale"] == 2.5
    assert settings["tuned"] == {**t["chosen"], "cfg_scale": 2.5, "cfg_scale_from": "--cfg-scale"}
    with pytest.raises(SystemExit, match="--cfg-scale must be > 0"):
        R.main(argv + ["--cfg-scale", "0", "--out", str(smoke)], pipe=pipe)
    assert R.main(argv + ["--out", str(smoke)], pipe=pipe) == 0  # back to the tuned run for the report
    assert R.main(["report", "--out", str(smoke)]) == 0
    assert "## tune" in (smoke / "RESULTS.md").read_text()


def test_shared_candidate_set_is_best_of_n(pipe):
    """The shared N-candidate loop + reward selection equals generate(strategy="best_of_n")."""
    from scalingar_jax.pipeline import generate
    from scalingar_jax.world.prompts import evaluation_set

    recs = evaluation_set(per_tag=1)[:1]  # one prompt, N = 2: the shapes the smoke run compiled
    prompts = [r["prompt"] for r in recs]
    ref = generate(pipe, prompts, strategy="best_of_n", num_candidates=2, seed=5, prompt_ids=[0])
    run = runner.Runner(pipe, batch=1).candidates(recs, "eval", 2, 5)["best_of_n"]
    imgs = ref.images
    from scalingar_jax.world.judge import judge_image
    assert run.correct.tolist() == [judge_image(im, r).correct for im, r in zip(imgs, recs)]
    conf = generate(pipe, prompts, strategy="confidence_only", num_candidates=2, seed=5, prompt_ids=[0])
    np.testing.assert_array_equal(np.asarray(conf.result.all_tokens), np.asarray(ref.result.all_tokens))


def test_first_of_selects_among_the_first_m_candidates():
    """Runner.first_of: Best-of-M by reward, the oracle and confidence-only over candidates [0, M)."""
    correct = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 1]], bool)
    reward = np.array([[0.1, 0.9, 0.2, 5.0], [0.5, 0.4, 9.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    conf = np.array([[0.3, 0.1, 0.9, 0.0], [0.1, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    pc = {"all_tokens": np.zeros((3, 4, 6), np.int32), "correct": correct, "reward": reward, "mean_confidence": conf}
    split = {"loop": 8.0, "decode": 4.0, "reward": 2.0, "judge": 1.0}
    bon = runner.Run(correct[:, 0], np.full(3, 24), 14.0, 3, 0.0, {"seconds_split": split}, pc)
    for M, want in ((1, ([0, 1, 0], [0, 1, 0], [0, 1, 0])), (2, ([1, 1, 0], [1, 1, 0], [0, 0, 0])),
                    (3, ([1, 0, 0], [1, 1, 0], [1, 0, 0])), (4, ([0, 0, 1], [1, 1, 1], [1, 0, 1]))):
        got = runner.Runner.first_of({"best_of_n": bon}, M)
        assert [got[k].correct.astype(int).tolist() for k in ("best_of_n", "oracle_bon", "confidence")] == \
            [list(w) for w in want], M
        assert got["best_of_n"].tokens.tolist() == [M * 6] * 3
        assert got["confidence"].seconds == pytest.approx(8.0 * M / 4)
        assert got["best_of_n"].seconds == pytest.approx((8.0 + 6.0) * M / 4)
    with pytest.raises(ValueError, match="M must be in"):
        runner.Runner.first_of({"best_of_n": bon}, 5)


def test_batches():
    assert list(runner.batches(5, 2)) == [([0, 1], [0, 1]), ([2, 3], [2, 3]), ([4], [4, 5])]


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        R.main(["main", "--batch", "0", "--checkpoint", "random"])
    with pytest.raises(SystemExit):
        R.main(["nope"])
    with pytest.raises(SystemExit) as e:
        R.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--checkpoint", "--prompts-per-tag", "--seeds", "--num-candidates", "--batch", "--split", "--out",
                "--smoke", "--tuned"):
        assert opt in help_text


def test_clock_counts_the_compiles_inside_its_block_only():
    import jax
    import jax.numpy as jnp

    with runner.Clock() as outer:
        with runner.Clock() as inner:
            jax.block_until_ready(jax.jit(lambda x: x * 3 + 1)(jnp.ones(5)))  # a fresh function: one compile
    assert inner.compile > 0 and outer.compile >= inner.compile
    assert 0 <= inner.seconds <= inner.wall and inner.seconds == max(0.0, inner.wall - inner.compile)
    before = inner.compile
    jax.block_until_ready(jax.jit(lambda x: x * 5 - 2)(jnp.ones(5)))  # after the block: not counted
    assert inner.compile == before
