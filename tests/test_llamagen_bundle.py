"""LlamaGen bundles (issue 17, points 1 and 2): `scalingar bundle` from LlamaGen-layout files, then
`scalingar generate --checkpoint` with class ids (c2i) or text (t2i: precomputed T5 features, or the
Flax T5 converted from a Hugging Face folder), and every bad input of the issue as one line, exit 2,
nothing written.

Tiny models that fit together (VQ codebook 8 = GPT vocabulary 8; t2i caption_dim 32 = the tiny
T5's d_model 32) are made here with the package's own parameter shapes and export function, and so
are parts that do not fit (a GPT with vocabulary 16, one with caption_dim 4)."""
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from scalingar_jax import cli, llamagen
from scalingar_jax.bundle import read_bundle
from scalingar_jax.checkpoint import save_model
from scalingar_jax.config import GPTConfig, SamplingConfig
from scalingar_jax.convert.run import export
from scalingar_jax.images import read_png
from scalingar_jax.pipeline import load_pipeline

FIXTURES = Path(__file__).parent / "fixtures"
T5_DIR = FIXTURES / "t5_tiny"                       # HF T5, d_model 32, spiece.model
LOWER = "lowercase"  # LlamaGen's use_text_preprocessing=False, by name (registry's "preprocess" table)
PROMPTS = ["a red cat", "two dogs"]
CLS, VOCAB, CLASSES, GRID = 8, 8, 10, 4             # image 8 px: grid 4 x VQ downsampling 2


def _quiet(_):
    pass


def _random_params(shapes, seed: int):
    """Random weights of the given ShapeDtypeStructs (normal, std 0.2): what init gives, minus its
    compile time (eval_shape only)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.2, s.shape).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """LlamaGen-layout .pt files (t2i GPT, c2i GPT, VQ), a features .npz, and three bundles built
    by the command: c2i, t2i with features, t2i with the tiny T5."""
    from scalingar_jax import gpt, vq

    d = tmp_path_factory.mktemp("llamagen")
    common = dict(n_layer=1, n_head=2, dim=16, vocab_size=VOCAB, multiple_of=16, grid_size=GRID)
    cfgs = {"gpt_t2i": GPTConfig(model_type="t2i", cls_token_num=CLS, caption_dim=32, **common),
            "gpt_c2i": GPTConfig(model_type="c2i", num_classes=CLASSES, **common),
            "misfit_vocab": GPTConfig(model_type="c2i", num_classes=CLASSES, **{**common, "vocab_size": 16}),
            "misfit_caption": GPTConfig(model_type="t2i", cls_token_num=CLS, caption_dim=4, **common)}
    for seed, (name, cfg) in enumerate(cfgs.items()):
        save_model(d / "m" / name, _random_params(gpt.param_shapes(cfg), seed), cfg, kind="gpt")
    vq_cfg = vq.VQConfig(codebook_size=VOCAB, codebook_embed_dim=2, ch=4, ch_mult=(1, 2), z_channels=4,
                         num_res_blocks=1, norm_groups=4)
    save_model(d / "m" / "vq", _random_params(vq.vq_param_shapes(vq_cfg), 2), vq_cfg, kind="vq")
    for name in (*cfgs, "vq"):
        export(d / "m" / name, d / f"{name}.pt", log=_quiet)
    feats = np.random.default_rng(0).normal(size=(2, 5, 32)).astype(np.float32)
    np.savez(d / "feats.npz", features=feats, mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool),
             prompts=np.array(PROMPTS))
    assert cli.main(["bundle", str(d / "c2i"), "--gpt", str(d / "gpt_c2i.pt"), "--vq", str(d / "vq.pt")]) == 0
    assert cli.main(["bundle", str(d / "t2i_f"), "--gpt", str(d / "gpt_t2i.pt"), "--vq", str(d / "vq.pt"),
                     "--t5-features", str(d / "feats.npz"), "--name", "tiny t2i"]) == 0
    assert cli.main(["bundle", str(d / "t2i_t5"), "--gpt", str(d / "gpt_t2i.pt"), "--vq", str(d / "vq.pt"),
                     "--t5", str(T5_DIR), "--preprocess", LOWER]) == 0
    return d, feats


def _error_line(capsys) -> str:
    """The command's stderr, checked to be exactly one 'scalingar: error:' line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalingar: error:"), err
    return err[0]


def _refused(capsys, argv, *needles, absent=None):
    """argv exits 2 with one error line holding every needle; `absent` was not created."""
    assert cli.main([str(a) for a in argv]) == 2
    line = _error_line(capsys)
    for needle in needles:
        assert needle in line, line
    if absent is not None:
        assert not Path(absent).exists()
        if Path(absent).parent.exists():
            assert not [p for p in Path(absent).parent.iterdir() if p.name.startswith(f".{Path(absent).name}.")]
    return line


def _copy(src, dst, edit=None):
    """A copy of bundle `src`; edit(record) changes its manifest."""
    shutil.copytree(src, dst)
    if edit is not None:
        path = dst / "bundle.json"
        record = json.loads(path.read_text())
        edit(record)
        path.write_text(json.dumps(record))
    return dst


def _edit_config(path, **fields):
    record = json.loads((path / "config.json").read_text())
    record["config"].update(fields)
    (path / "config.json").write_text(json.dumps(record))


# ------------------------------------------------------------------------------------ manifests

def test_manifests_record_llamagen_defaults_and_parts(made):
    d, _ = made
    c2i, t2i_f, t2i_t5 = (read_bundle(d / n) for n in ("c2i", "t2i_f", "t2i_t5"))
    assert (c2i.kind, t2i_f.kind, t2i_t5.kind) == (llamagen.KIND_C2I, llamagen.KIND_T2I, llamagen.KIND_T2I)
    assert "loader" not in json.loads((d / "c2i" / "bundle.json").read_text())  # a bundle names no code
    assert c2i.image_size == t2i_f.image_size == 8
    # LlamaGen's defaults, top-k capped at the tiny vocabulary (8 codes)
    assert c2i.sampling == SamplingConfig(cfg_scale=4.0, temperature=1.0, top_k=8, top_p=1.0)
    assert t2i_f.sampling == SamplingConfig(cfg_scale=7.5, temperature=1.0, top_k=8, top_p=1.0)
    big = GPTConfig(model_type="t2i", cls_token_num=120, vocab_size=16384)
    assert llamagen.sampling_defaults(big) == llamagen.T2I_SAMPLING
    assert llamagen.sampling_defaults(GPTConfig()) == llamagen.C2I_SAMPLING
    assert llamagen.T2I_SAMPLING.top_k == 1000 and llamagen.C2I_SAMPLING.top_k == 2000
    assert dict(c2i.parts) == {"gpt": "gpt", "vq": "vq"} and not c2i.options
    assert dict(t2i_f.parts) == {"gpt": "gpt", "vq": "vq", "features": "features"} and t2i_f.name == "tiny t2i"
    assert dict(t2i_t5.parts) == {"gpt": "gpt", "vq": "vq", "text": "text"}
    assert dict(t2i_t5.options) == {"preprocess": LOWER, "max_length": CLS}
    text = json.loads((d / "t2i_t5" / "text" / "config.json").read_text())
    assert text["kind"] == "t5" and "config_class" not in text
    assert (d / "t2i_t5" / "text" / "spiece.model").read_bytes() == (T5_DIR / "spiece.model").read_bytes()


def test_t5_part_round_trips_the_hf_weights(made):
    """text/ holds the converted HF encoder: T5Config and every weight come back exactly."""
    from scalingar_jax.checkpoint import load_model
    from scalingar_jax.t5 import load_hf_t5_encoder

    d, _ = made
    params, cfg = load_model(d / "t2i_t5" / "text", expect_kind="t5")
    ref_params, ref_cfg = load_hf_t5_encoder(T5_DIR)
    assert cfg == ref_cfg
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)


# ------------------------------------------------------------------------------------ c2i

def test_c2i_class_ids_end_to_end(made, tmp_path, monkeypatch, capsys):
    """`generate --class-ids-file` (the ids of --class-ids, read from a file): one folder per id with
    what a prompt run writes; tokens.npy holds every candidate's tokens, the winner's decode to selected.png."""
    from scalingar_jax import viz
    from scalingar_jax.pipeline import generate

    def no_matplotlib(*args, **kwargs):
        raise ImportError("plotting needs matplotlib")

    monkeypatch.setattr(viz, "plot_confidence_trajectories", no_matplotlib)  # as installed without the viz extra
    d, _ = made
    out, ids = tmp_path / "o", tmp_path / "ids.txt"
    ids.write_text("3\n 7 \n")
    assert cli.main(["generate", "--checkpoint", str(d / "c2i"), "--class-ids-file", str(ids), "-n", "2",
                     "--scale", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
    assert capsys.readouterr().err.count("note: plots skipped (plotting needs matplotlib)") == 1  # not one per id
    pipe = load_pipeline(d / "c2i")
    labels, mask = pipe.condition(["3", "7"])
    assert labels.dtype == np.int32 and labels.tolist() == [3, 7] and mask is None
    lib = generate(pipe, [3, 7], strategy="scalingar", num_candidates=2, seed=0)  # the same run, as a library
    for i, (name, class_id) in enumerate((("00000", "3"), ("00001", "7"))):
        result = json.loads((out / name / "result.json").read_text())
        assert result["prompt"] == class_id and result["winner"] == int(lib.result.winner[i])
        tokens = np.load(out / name / "tokens.npy")
        assert tokens.dtype == np.int32 and tokens.shape == (2, GRID * GRID)
        np.testing.assert_array_equal(tokens, np.asarray(lib.result.all_tokens[i]))
        winner = tokens[result["winner"]]
        assert ((winner >= 0) & (winner < VOCAB)).all()
        image = read_png(out / name / "selected.png")
        assert image.shape == (8, 8, 3)
        np.testing.assert_array_equal(image, pipe.decode_images(winner[None])[0])  # tokens.npy is what was drawn


def test_class_ids_parsing(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("207 360\n\n 387\t1\n")
    assert llamagen.read_class_ids_file(path) == ["207", "360", "387", "1"]
    assert llamagen.parse_class_ids(["0", " 9 "], 10).tolist() == [0, 9]
    with pytest.raises(ValueError, match=r"10 is out of range.*\[0, 10\)"):
        llamagen.parse_class_ids(["10"], 10)
    for bad in ("-1", "a cat", "3.0", "", 3.0, True, None):
        with pytest.raises(ValueError, match="not a class id"):
            llamagen.parse_class_ids([bad], 10)
    # the library takes integers too: generate(pipe, [3, 7])
    assert llamagen.parse_class_ids([3, np.int64(9), "0"], 10).tolist() == [3, 9, 0]
    for bad in (10, -1):
        with pytest.raises(ValueError, match=rf"{bad} is out of range"):
            llamagen.parse_class_ids([bad], 10)


# ------------------------------------------------------------------------------------ t2i

def test_t2i_features_end_to_end_and_geneval_run(made, tmp_path, capsys):
    d, feats = made
    pipe = load_pipeline(d / "t2i_f")
    f, m = pipe.condition(["two dogs", "a red cat"])
    assert f.shape == (2, CLS, 32) and f.dtype == np.float32 and m.dtype == bool
    # left padding: the valid rows at the end, in order, padded rows zero
    np.testing.assert_array_equal(f[0, -5:], feats[1])
    np.testing.assert_array_equal(f[1, -3:], feats[0, :3])
    assert m[1].tolist() == [False] * 5 + [True] * 3 and not f[1, :5].any()
    # one (1, n, C) array per prompt, keyed by its text (LlamaGen's extract_t5_feature.py arrays)
    np.savez(tmp_path / "keyed.npz", **{"a red cat": feats[:1, :3], "two dogs": feats[1:]})
    keyed = llamagen.assemble_bundle(tmp_path / "keyed", gpt=d / "t2i_f" / "gpt", vq=d / "t2i_f" / "vq",
                                     t5_features=tmp_path / "keyed.npz", log=_quiet)
    kf, km = load_pipeline(keyed).condition(["two dogs", "a red cat"])
    np.testing.assert_array_equal(kf, f)
    np.testing.assert_array_equal(km, m)
    out = tmp_path / "o"
    assert cli.main(["generate", "--checkpoint", str(d / "t2i_f"), "a red cat", "-n", "2", "--scale", "1",
                     "--out", str(out)]) == 0
    tokens = np.load(out / "tokens.npy")
    result = json.loads((out / "result.json").read_text())
    assert tokens.shape == (2, GRID * GRID) and tokens.dtype == np.int32
    np.testing.assert_array_equal(read_png(out / "selected.png"), pipe.decode_images(tokens[result["winner"]][None])[0])
    # GenEval --prompts: any GenEval record is accepted by a t2i bundle (here: the prompts it has features for)
    records = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": p} for p in PROMPTS]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    assert cli.main(["generate", "--checkpoint", str(d / "t2i_f"), "--prompts", str(prompts), "--images-per-prompt",
                     "1", "--batch", "1", "-n", "2", "--out", str(run)]) == 0
    for i in range(2):
        assert json.loads((run / f"{i:05d}" / "metadata.jsonl").read_text()) == records[i]
        assert read_png(run / f"{i:05d}" / "samples" / "0000.png").shape == (8, 8, 3)
    assert "wrote 2 prompt folders (2 in all" in capsys.readouterr().out
    prompts.write_text(json.dumps(records[1]) + "\n")
    assert cli.main(["generate", "--checkpoint", str(d / "t2i_f"), "--prompts", str(prompts), "--images-per-prompt",
                     "1", "-n", "2", "--out", str(tmp_path / "run1")]) == 0
    assert "wrote 1 prompt folder (1 in all" in capsys.readouterr().out
    # `scalingar evaluate` judges the shapes world only: a real-model GenEval run is pointed at GenEval's scripts
    line = _refused(capsys, ["evaluate", run], "shapes world's judge", "evaluate_images.py", "summary_scores.py",
                    "GenEval layout")
    assert "not a shape of this world" not in line


def test_t2i_features_unknown_prompt_refused(made, tmp_path, capsys):
    d, _ = made
    _refused(capsys, ["generate", "--checkpoint", d / "t2i_f", "a blue cat", "--out", tmp_path / "o"],
             "no features", "'a blue cat'", absent=tmp_path / "o")
    rec = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a blue cat"}
    (tmp_path / "p.jsonl").write_text(json.dumps(rec) + "\n")
    _refused(capsys, ["generate", "--checkpoint", d / "t2i_f", "--prompts", tmp_path / "p.jsonl", "--out",
                      tmp_path / "run"], "no precomputed features", absent=tmp_path / "run")


def test_t2i_t5_conditioning_equals_the_encoder(made):
    """The bundle's conditioner is the T5 encoder of the HF folder: same features, same mask."""
    pytest.importorskip("sentencepiece", reason="the T5 bundles' tokenizer (in the test extra) is not installed")
    from scalingar_jax.caption import lowercase
    from scalingar_jax.text_features import T5TextEncoder

    d, _ = made
    pipe = load_pipeline(d / "t2i_t5")
    assert pipe.check_record is None  # a T5 encodes any text: every GenEval record is accepted
    prompts = ["A Red Circle above a blue square", "zebra"]
    with pytest.warns(UserWarning, match="truncated"):  # prompt 0 is longer than the tiny CLS slots
        f, m = pipe.condition(prompts)
    with pytest.warns(UserWarning, match="truncated"):
        ref_f, ref_m = T5TextEncoder(T5_DIR, max_length=CLS, preprocess=lowercase).encode(prompts)
    assert f.shape == (2, CLS, 32) and m.shape == (2, CLS)
    np.testing.assert_array_equal(m, ref_m)
    np.testing.assert_allclose(f, ref_f, rtol=0, atol=1e-6)
    assert m[1].sum() < CLS and not m[1, 0]  # left padded


def test_t5_bundle_without_sentencepiece_is_one_line(made, tmp_path, capsys, monkeypatch):
    d, _ = made
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails as in CI
    with pytest.raises(ImportError, match=r"scalingar-jax\[t5\]"):
        load_pipeline(d / "t2i_t5")
    _refused(capsys, ["generate", "--checkpoint", d / "t2i_t5", "a cat", "--out", tmp_path / "o"],
             "sentencepiece", absent=tmp_path / "o")


# ------------------------------------------------------------------------------------ bad input

def test_class_ids_to_t2i_and_text_to_c2i_refused(made, tmp_path, capsys):
    d, _ = made
    o = tmp_path / "o"
    _refused(capsys, ["generate", "--checkpoint", d / "t2i_f", "--class-ids", "3", "--out", o], "(t2i)", absent=o)
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "a red cat", "--out", o], "(c2i)", "--class-ids",
             absent=o)
    rec = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"}
    (tmp_path / "p.jsonl").write_text(json.dumps(rec) + "\n")
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--prompts", tmp_path / "p.jsonl", "--out", o],
             "--prompts", "(c2i)", absent=o)
    clip = Path(__file__).parent / "fixtures" / "clip_tiny"  # CLIPScore would score the images against "3"
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids", "3", "--strategy", "best_of_n",
                      "--reward", f"clipscore:{clip}", "--out", o], "--reward clipscore", "(c2i)", absent=o)
    _refused(capsys, ["generate", "a cat", "--checkpoint", d / "c2i", "--class-ids", "3", "--out", o], "one of",
             absent=o)


def test_class_ids_out_of_range_or_malformed_refused(made, tmp_path, capsys):
    d, _ = made
    o, ids = tmp_path / "o", tmp_path / "ids.txt"
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids", "3", "10", "--out", o],
             "class id 10 is out of range", "[0, 10)", absent=o)
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids", "3", "x7", "--out", o], "'x7'", absent=o)
    ids.write_text("1 2\n3 12\n")
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids-file", ids, "--out", o],
             f"--class-ids-file {ids}: class id 12", "[0, 10)", absent=o)
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids-file", tmp_path / "nope.txt", "--out", o],
             f"--class-ids-file {tmp_path / 'nope.txt'}: no such file", absent=o)
    ids.write_text("1\n2 three\n")
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids-file", ids, "--out", o], "line 2", "'three'",
             absent=o)
    ids.write_bytes(b"1 " * (llamagen.MAX_CLASS_IDS_BYTES // 2 + 1))
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids-file", ids, "--out", o],
             f"more than the {llamagen.MAX_CLASS_IDS_BYTES}-byte limit; not a class-ids file", absent=o)
    os.mkfifo(tmp_path / "fifo.txt")  # refused, not waited on
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids-file", tmp_path / "fifo.txt", "--out", o],
             "is a FIFO (named pipe), not a regular file", absent=o)
    ids.write_text("\n \n")
    _refused(capsys, ["generate", "--checkpoint", d / "c2i", "--class-ids-file", ids, "--out", o], "no class id",
             absent=o)


def test_bundle_missing_a_part_refused(made, tmp_path, capsys):
    d, _ = made
    o = tmp_path / "o"
    gone = _copy(d / "c2i", tmp_path / "gone")
    shutil.rmtree(gone / "vq")
    _refused(capsys, ["generate", "--checkpoint", gone, "--class-ids", "3", "--out", o], "lacks parts", "vq",
             absent=o)
    unlisted = _copy(d / "c2i", tmp_path / "unlisted", lambda r: r["parts"].pop("vq"))
    _refused(capsys, ["generate", "--checkpoint", unlisted, "--class-ids", "3", "--out", o], "missing ['vq']",
             absent=o)
    no_text = _copy(d / "t2i_f", tmp_path / "no_text", lambda r: r["parts"].pop("features"))
    _refused(capsys, ["generate", "--checkpoint", no_text, "a red cat", "--out", o], "text", "features", absent=o)
    no_spiece = _copy(d / "t2i_t5", tmp_path / "no_spiece")
    (no_spiece / "text" / "spiece.model").unlink()
    _refused(capsys, ["generate", "--checkpoint", no_spiece, "a red cat", "--out", o], "spiece.model", absent=o)
    no_params = _copy(d / "c2i", tmp_path / "no_params")
    shutil.rmtree(no_params / "gpt" / "params")
    _refused(capsys, ["generate", "--checkpoint", no_params, "--class-ids", "3", "--out", o], "params", absent=o)


def test_codebook_not_matching_vocabulary_refused_at_assembly_and_load(made, tmp_path, capsys):
    d, _ = made
    out = tmp_path / "models" / "b"  # the folder above is made for the bundle, and removed again on the error
    _refused(capsys, ["bundle", out, "--gpt", d / "misfit_vocab.pt", "--vq", d / "vq.pt"], "VQ codebook has 8 codes",
             "vocabulary has 16", absent=out)
    assert not out.parent.exists()
    bad = _copy(d / "c2i", tmp_path / "bad")
    _edit_config(bad / "gpt", vocab_size=16)
    _refused(capsys, ["generate", "--checkpoint", bad, "--class-ids", "3", "--out", tmp_path / "o"],
             "VQ codebook has 8 codes", "vocabulary has 16", absent=tmp_path / "o")


def test_t5_width_not_matching_caption_dim_refused_at_assembly_and_load(made, tmp_path, capsys):
    d, feats = made
    out = tmp_path / "b"
    _refused(capsys, ["bundle", out, "--gpt", d / "misfit_caption.pt", "--vq", d / "vq.pt", "--t5", T5_DIR,
                      "--preprocess", LOWER], "hidden size 32", "caption_dim is 4", absent=out)
    np.savez(tmp_path / "f16.npz", features=np.zeros((1, 3, 16), np.float32), prompts=np.array(["a"]))
    _refused(capsys, ["bundle", out, "--gpt", d / "gpt_t2i.pt", "--vq", d / "vq.pt", "--t5-features",
                      tmp_path / "f16.npz"], "features", "have width 16 but the GPT's caption_dim is 32", absent=out)
    bad = _copy(d / "t2i_t5", tmp_path / "bad")
    _edit_config(bad / "text", d_model=16)
    _refused(capsys, ["generate", "--checkpoint", bad, "a cat", "--out", tmp_path / "o"], "hidden size 16",
             "caption_dim is 32", absent=tmp_path / "o")
    bad_f = _copy(d / "t2i_f", tmp_path / "bad_f")
    _edit_config(bad_f / "gpt", caption_dim=48)
    _refused(capsys, ["generate", "--checkpoint", bad_f, "a red cat", "--out", tmp_path / "o"], "have width 32",
             "caption_dim is 48", absent=tmp_path / "o")


def test_bundle_command_refuses_parts_of_the_wrong_type(made, tmp_path, capsys):
    d, _ = made
    out = tmp_path / "b"
    _refused(capsys, ["bundle", out, "--gpt", d / "gpt_t2i.pt", "--vq", d / "vq.pt"], "needs --t5", absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "gpt_c2i.pt", "--vq", d / "vq.pt", "--t5-features",
                      d / "feats.npz"], "takes no text", absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "vq.pt", "--vq", d / "vq.pt"], "not a 'gpt'", absent=out)
    np.savez(tmp_path / "unnamed.npz", features=np.zeros((1, 3, 32), np.float32))
    np.save(tmp_path / "unnamed.npy", np.zeros((1, 3, 32), np.float32))
    for path, needle in (("unnamed.npz", "must name their prompts"), ("unnamed.npy", "expected a .npz")):
        _refused(capsys, ["bundle", out, "--gpt", d / "gpt_t2i.pt", "--vq", d / "vq.pt", "--t5-features",
                          tmp_path / path], needle, absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "gpt_c2i.pt", "--vq", d / "nope.pt"], "nope.pt", absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "gpt_t2i.pt", "--vq", d / "vq.pt", "--t5", T5_DIR,
                      "--preprocess", "scalingar_jax.nothing:here"], "preprocess", absent=out)
    with pytest.raises(SystemExit) as exit_:  # argparse: not both
        cli.main(["bundle", str(out), "--gpt", str(d / "gpt_t2i.pt"), "--vq", str(d / "vq.pt"), "--t5", str(T5_DIR),
                  "--t5-features", str(d / "feats.npz")])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_failed_overwrite_keeps_the_old_bundle(made, tmp_path, capsys):
    """Assembly is atomic: an error halfway (after the GPT was converted) leaves the existing bundle as it was."""
    d, _ = made
    out = _copy(d / "c2i", tmp_path / "b")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    _refused(capsys, ["bundle", out, "--gpt", d / "gpt_c2i.pt", "--vq", d / "vq.pt"], "already exists",
             "pass --overwrite")
    assert cli.main(["bundle", str(out), "--gpt", str(d / "misfit_vocab.pt"), "--vq", str(d / "vq.pt"),
                     "--overwrite"]) == 2
    _error_line(capsys)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert read_bundle(out).kind == llamagen.KIND_C2I
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]


def test_converted_model_directories_are_accepted(made, tmp_path):
    """gpt/vq may be model directories `scalingar convert` wrote: the bundle then loads the same weights."""
    d, _ = made
    out = llamagen.assemble_bundle(tmp_path / "b", gpt=d / "c2i" / "gpt", vq=d / "c2i" / "vq", log=_quiet)
    a, b = load_pipeline(out), load_pipeline(d / "c2i")
    logged = []  # the log names the bundle's folder, not the temp folder it is assembled in
    llamagen.assemble_bundle(tmp_path / "b", gpt=d / "c2i" / "gpt", vq=d / "c2i" / "vq", log=logged.append,
                             overwrite=True)
    assert len(logged) == 3 and not [m for m in logged if ".tmp-" in m], logged
    assert f"-> {tmp_path / 'b' / 'gpt'}" in logged[0] and f"-> {tmp_path / 'b' / 'vq'}" in logged[1]
    assert a.gpt_cfg == b.gpt_cfg and a.vq_cfg == b.vq_cfg and a.sampling == b.sampling
    jax.tree.map(np.testing.assert_array_equal, a.gpt_params, b.gpt_params)


def test_parts_that_do_not_fit_are_refused_before_any_conversion(made, tmp_path, capsys, monkeypatch):
    """The fit (codebook = vocabulary, features / T5 width = caption_dim) is read from the files' tensor
    shapes or config.json: a 3 GB GPT is not converted before a wrong VQ is reported."""
    from scalingar_jax import checkpoint
    from scalingar_jax.convert import run

    d, _ = made

    def must_not_run(*args, **kwargs):
        raise AssertionError("converted or loaded weights before checking the parts fit")

    monkeypatch.setattr(run, "convert", must_not_run)
    monkeypatch.setattr("scalingar_jax.convert.mapping.torch_to_flax_gpt", must_not_run)
    monkeypatch.setattr("scalingar_jax.convert.mapping.torch_to_flax_vq", must_not_run)
    monkeypatch.setattr(checkpoint, "load_model", must_not_run)
    monkeypatch.setattr(shutil, "copytree", must_not_run)
    out = tmp_path / "b"
    _refused(capsys, ["bundle", out, "--gpt", d / "misfit_vocab.pt", "--vq", d / "vq.pt"], "VQ codebook has 8 codes",
             "vocabulary has 16", absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "misfit_vocab.pt", "--vq", d / "c2i" / "vq"], "vocabulary has 16",
             absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "c2i" / "gpt", "--vq", d / "misfit_vocab.pt"],
             "not a 'vq' one", absent=out)
    _refused(capsys, ["bundle", out, "--gpt", d / "misfit_caption.pt", "--vq", d / "vq.pt", "--t5-features",
                      d / "feats.npz"], "have width 32 but the GPT's caption_dim is 4", absent=out)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def kept_and_cast(made, tmp_path_factory):
    """The t2i T5 bundle's model directories bundled again as they are and with --dtype bfloat16."""
    d, _ = made
    out = tmp_path_factory.mktemp("casts")
    parts = dict(gpt=d / "t2i_t5" / "gpt", vq=d / "t2i_t5" / "vq", t5=d / "t2i_t5" / "text", log=_quiet)
    return (llamagen.assemble_bundle(out / "kept", **parts),
            llamagen.assemble_bundle(out / "cast", dtype="bfloat16", **parts))


def test_dtype_casts_converted_model_directories(made, kept_and_cast):
    """--dtype bfloat16 with model directories: their weights are cast (and the configs say so);
    without --dtype they are copied as they are. Needs no sentencepiece."""
    import jax.numpy as jnp

    from scalingar_jax.checkpoint import load_model, read_config

    d, _ = made
    kept, cast = kept_and_cast
    for part in ("gpt", "vq", "text"):
        src, _ = load_model(d / "t2i_t5" / part)
        a, _ = load_model(kept / part)
        b, cfg = load_model(cast / part)
        assert {x.dtype for x in jax.tree.leaves(a)} == {np.dtype(np.float32)}, part
        assert {x.dtype for x in jax.tree.leaves(b)} == {np.dtype(jnp.bfloat16)}, part
        jax.tree.map(np.testing.assert_array_equal, a, src)
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, np.asarray(y).astype(jnp.bfloat16)), b, src)
        assert getattr(cfg, "param_dtype", "bfloat16") == "bfloat16"
        assert read_config(cast / part)[2]["converted_dtype"] == "bfloat16"
    assert (cast / "text" / llamagen.SPIECE_FILE).is_file()


@pytest.mark.filterwarnings("ignore:prompt .* pieces long")
def test_a_cast_bundle_conditions_like_the_float32_one(kept_and_cast):
    """The bfloat16 bundle's T5 features are the float32 bundle's within bf16 rounding (0.1)."""
    pytest.importorskip("sentencepiece", reason="the T5 bundles' tokenizer (in the test extra) is not installed")
    kept, cast = kept_and_cast
    f32 = load_pipeline(kept).condition(PROMPTS)[0]
    np.testing.assert_allclose(load_pipeline(cast).condition(PROMPTS)[0], f32, atol=0.1)
