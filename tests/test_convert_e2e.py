"""End-to-end conversion: LlamaGen fixtures -> orbax -> the Flax models, matched against the
outputs of the ORIGINAL LlamaGen PyTorch modules stored by `conversion/make_fixtures.py
--llamagen-src` (tests/fixtures/convert/llamagen_outputs.npz); round trips and bad input
through the `scalingar convert` entry point. No torch needed (one test uses it if present).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from scalingar_jax import cli, gpt, vq
from scalingar_jax.checkpoint import load_model, save_model
from scalingar_jax.convert import load_checkpoint, save_torch_state_dict
from scalingar_jax.convert import mapping as M
from scalingar_jax.convert import reference as R
from scalingar_jax.cli import convert as convert_cli
from scalingar_jax.convert import checkpoints

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "convert"
LG = dict(np.load(FIX / "llamagen_outputs.npz"))
LG_INFO = json.loads((FIX / "llamagen_outputs.json").read_text())["groups"]
GPT_GROUPS = [g for g in LG_INFO if g.startswith("gpt")]


def lg(group: str) -> dict[str, np.ndarray]:
    return {k.split("::", 1)[1]: v for k, v in LG.items() if k.startswith(group + "::")}


def overrides(group: str) -> dict:
    """Config fields the weights do not hold (the fixtures match no LlamaGen preset)."""
    c = LG_INFO[group]["config"]
    return {"n_head": c["n_head"], "grid_size": c["grid_size"]} if group.startswith("gpt") else \
        {"norm_groups": c["norm_groups"]}


def rel_err(got, want) -> float:
    return R.compare(got, want)["max_rel"]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each LlamaGen-output fixture converted once with the library function."""
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for group, info in LG_INFO.items():
        dst = root / group
        kind, cfg = checkpoints.convert(FIX / info["fixture"], dst, overrides=overrides(group), log=quiet)
        out[group] = dst
    return out


# --------------------------------------------------------------------------------------------
# agreement with the original LlamaGen modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", GPT_GROUPS)
def test_gpt_matches_llamagen_logits(converted, group):
    params, cfg = load_model(converted[group])
    d = lg(group)
    got = np.asarray(gpt.forward(params, cfg, d["cond"], d["tokens"], d.get("cond_mask"), d["drop"]))
    assert got.shape == d["logits"].shape == d["tokens"].shape + (cfg.vocab_size,)
    assert rel_err(got, d["logits"]) <= 1e-5
    # the NumPy reference of --verify agrees with LlamaGen too (it reads the PyTorch file)
    sd, _ = load_checkpoint(FIX / LG_INFO[group]["fixture"])
    ref = R.gpt_logits(sd, cfg, d["cond"], d["tokens"], d.get("cond_mask"), d["drop"])
    assert rel_err(ref, d["logits"]) <= 1e-5


@pytest.mark.parametrize("group", [g for g in GPT_GROUPS if "cond_mask" in lg(g)])
def test_t2i_fixture_exercises_the_caption_mask(converted, group):
    """The stored logits depend on the mask and on the null caption: the same model without
    the mask, or without the null-condition row, is far off."""
    params, cfg = load_model(converted[group])
    d = lg(group)
    assert (~d["cond_mask"]).any(axis=1).sum() >= 2  # ragged left padding on at least two rows
    unmasked = np.asarray(gpt.forward(params, cfg, d["cond"], d["tokens"], None, d["drop"]))
    assert rel_err(unmasked, d["logits"]) > 1e-2
    no_drop = np.asarray(gpt.forward(params, cfg, d["cond"], d["tokens"], d["cond_mask"], None))
    assert rel_err(no_drop[-1:], d["logits"][-1:]) > 1e-2


def test_vq_matches_llamagen_pixels(converted):
    params, cfg = load_model(converted["vq_tiny"])
    d = lg("vq_tiny")
    got = np.asarray(vq.decode_codes(params, cfg, d["codes"], clip=False))
    assert got.shape == d["pixels"].shape
    assert rel_err(got, d["pixels"]) <= 1e-5
    sd, _ = load_checkpoint(FIX / LG_INFO["vq_tiny"]["fixture"])
    assert rel_err(R.vq_decode(sd, cfg, d["codes"]), d["pixels"]) <= 1e-5


def test_llamagen_reference_runner_matches_stored_outputs():
    """`--llamagen-src`'s runner (needs torch and a LlamaGen checkout: LLAMAGEN_SRC)."""
    pytest.importorskip("torch")
    src = os.environ.get("LLAMAGEN_SRC", "/tmp/llamagen_src")
    if not os.path.isfile(os.path.join(src, "autoregressive", "models", "gpt.py")):
        pytest.skip("no LlamaGen checkout (set LLAMAGEN_SRC)")
    runner = R.LlamaGenReference(src)
    for group, info in LG_INFO.items():
        sd, _ = load_checkpoint(FIX / info["fixture"])
        d = lg(group)
        if group.startswith("gpt"):
            cfg = M.as_gpt_config(M.infer_gpt_config(sd, **overrides(group)))
            out = runner.gpt_logits(cfg, sd, d["cond"], d["tokens"], d.get("cond_mask"), d["drop"])
            assert rel_err(out, d["logits"]) <= 1e-6, group
        else:
            from scalingar_jax.vq import VQConfig

            cfg = VQConfig(**M.infer_vq_config(sd, **overrides(group)))
            assert rel_err(runner.vq_decode(cfg, sd, d["codes"]), d["pixels"]) <= 1e-6


# --------------------------------------------------------------------------------------------
# --verify
# --------------------------------------------------------------------------------------------


def test_verify_passes_and_reports(tmp_path, capsys):
    dst = tmp_path / "t2i"
    rc = convert_cli.main([str(FIX / "gpt_t2i_gqa.pt"), str(dst), "--set", "n_head=4", "--grid-size", "4", "--verify"])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(l for l in out.splitlines() if l.startswith("verify"))
    assert "NumPy" in line and "max abs diff" in line and "max rel diff" in line and line.endswith("OK")
    assert (dst / "config.json").is_file()


def test_verify_catches_a_wrong_mapping(tmp_path, capsys, monkeypatch):
    """A mapping bug (w1 and w3 swapped) passes the shape checks but not --verify: exit 1,
    and the wrong model is removed."""
    real = M.torch_to_flax_gpt

    def swapped(*a, **k):
        p = real(*a, **k)
        ff = p["layers"]["feed_forward"]
        ff["w1"], ff["w3"] = ff["w3"], ff["w1"]
        return p

    monkeypatch.setattr(M, "torch_to_flax_gpt", swapped)
    dst = tmp_path / "out" / "c2i"
    rc = convert_cli.main([str(FIX / "gpt_c2i_model.pt"), str(dst), "--set", "n_head=2", "--grid-size", "4", "--verify"])
    err = capsys.readouterr().err
    assert rc == 1 and "verification failed" in err
    assert not dst.exists() and not (tmp_path / "out").exists()


def test_verify_detects_swapped_rotary_halves(monkeypatch):
    """The verification tokens reach the second grid row, so a row/column mix-up shows."""
    sd, _ = load_checkpoint(FIX / "gpt_c2i_model.pt")
    cfg = M.as_gpt_config(M.infer_gpt_config(sd, n_head=2, grid_size=4))
    inp = R.random_inputs("gpt", cfg)
    assert inp["tokens"].shape == (2, cfg.grid_size + 2)
    good = R.gpt_logits(sd, cfg, inp["cond"], inp["tokens"], drop=inp["drop"])
    orig = R._rotary_tables

    def col_then_row(c, S, dt):
        cos, sin = orig(c, S, dt)
        q = cos.shape[1] // 2
        return np.roll(cos, q, axis=1), np.roll(sin, q, axis=1)

    monkeypatch.setattr(R, "_rotary_tables", col_then_row)
    bad = R.gpt_logits(sd, cfg, inp["cond"], inp["tokens"], drop=inp["drop"])
    assert rel_err(bad, good) > 1e-3


def test_llamagen_src_without_torch_is_a_clear_error(tmp_path, capsys):
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed here")
    except ImportError:
        pass
    dst = tmp_path / "x"
    rc = convert_cli.main([str(FIX / "vq_tiny.pt"), str(dst), "--set", "norm_groups=4", "--llamagen-src", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "needs torch" in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()


# --------------------------------------------------------------------------------------------
# round trips through the command
# --------------------------------------------------------------------------------------------


def assert_same_tree(a, b):
    fa, fb = M._flatten(a), M._flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), k


def test_round_trip_gpt_t2i_pt_orbax_safetensors_orbax(tmp_path, capsys):
    a, st, b = tmp_path / "a", tmp_path / "t2i.safetensors", tmp_path / "b"
    assert convert_cli.main([str(FIX / "gpt_t2i_bf16.pt"), str(a), "--set", "n_head=2", "--grid-size", "4",
                     "--dtype", "bfloat16"]) == 0
    assert cli.main(["convert", "--export", str(a), str(st)]) == 0
    # the export is LlamaGen's state dict, bit for bit
    sd_src, _ = load_checkpoint(FIX / "gpt_t2i_bf16.pt")
    sd_out, meta = load_checkpoint(st)
    assert set(sd_out) == set(sd_src) and meta["metadata"]["format"] == "pt"
    for k in sd_src:
        x, y = sd_src[k].numpy(), sd_out[k].numpy()
        assert x.dtype == y.dtype == ml_dtypes.bfloat16 and np.array_equal(x.view(np.uint16), y.view(np.uint16)), k
    # back without options: heads and grid travel in the file's metadata
    assert cli.main(["convert", str(st), str(b), "--dtype", "bfloat16"]) == 0
    (pa, ca), (pb, cb) = load_model(a), load_model(b)
    assert ca == cb
    assert_same_tree(pa, pb)


def test_round_trip_vq_pt_orbax_safetensors_orbax_and_pt(tmp_path, capsys):
    a, st, b = tmp_path / "a", tmp_path / "vq.safetensors", tmp_path / "b"
    assert convert_cli.main([str(FIX / "vq_tiny.pt"), str(a), "--set", "norm_groups=4"]) == 0
    assert convert_cli.main(["--export", str(a), str(st)]) == 0
    assert convert_cli.main([str(st), str(b)]) == 0  # norm_groups from the metadata
    (pa, ca), (pb, cb) = load_model(a), load_model(b)
    assert ca == cb
    assert_same_tree(pa, pb)
    # and through a .pt export ({"model": sd, "scalingar_config": ...}), verified on the way
    pt, c = tmp_path / "vq.pt", tmp_path / "c"
    assert convert_cli.main(["--export", str(b), str(pt), "--verify"]) == 0
    sd, meta = load_checkpoint(pt)
    assert meta["wrapper"] == "model" and meta["scalingar_config"]["norm_groups"] == 4
    assert convert_cli.main([str(pt), str(c)]) == 0
    assert_same_tree(pa, load_model(c)[0])


# --------------------------------------------------------------------------------------------
# bad input: exit 2, one clear line, nothing left behind
# --------------------------------------------------------------------------------------------


def _variant(tmp_path, edit) -> Path:
    sd, _ = load_checkpoint(FIX / "gpt_c2i_model.pt")
    arrays = {k: v.numpy() for k, v in sd.items()}
    edit(arrays)
    return save_torch_state_dict(tmp_path / "in" / "variant.pt", arrays, wrapper="model")


def _drop_key(a):
    del a["layers.1.feed_forward.w2.weight"]


def _bad_shape(a):
    a["norm.weight"] = np.ones(17, np.float32)


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated"),
    ("vq_as_gpt", "VQ tokenizer checkpoint"),
    ("missing_key", "missing keys: layers.1.feed_forward.w2.weight"),
    ("wrong_shape", "shape mismatch for norm.weight"),
    ("unwritable", "is not a directory"),
    ("read_only", "is not writable"),
    ("exists", "already exists"),
    ("no_heads", "--set n_head=N"),
    ("bad_export_suffix", ".safetensors, .pt"),
])
def test_bad_input_exit_2_and_nothing_written(tmp_path, capsys, case, message):
    out_root = tmp_path / "out"
    dst = out_root / "deep" / "model"
    opts = ["--set", "n_head=2", "--grid-size", "4"]
    if case == "truncated":
        argv = [str(FIX / "truncated.pt"), str(dst)]
    elif case == "vq_as_gpt":
        argv = [str(FIX / "vq_tiny.pt"), str(dst), "--kind", "gpt"]
    elif case == "missing_key":
        argv = [str(_variant(tmp_path, _drop_key)), str(dst), *opts]
    elif case == "wrong_shape":
        argv = [str(_variant(tmp_path, _bad_shape)), str(dst), *opts]
    elif case == "unwritable":
        out_root.mkdir()
        (out_root / "deep").write_text("a file where a folder should be")
        argv = [str(FIX / "gpt_c2i_model.pt"), str(dst), *opts]
    elif case == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root can write into a read-only directory")
        out_root.mkdir()
        out_root.chmod(0o500)
        argv = [str(FIX / "gpt_c2i_model.pt"), str(dst), *opts]
    elif case == "exists":
        dst.mkdir(parents=True)
        argv = [str(FIX / "gpt_c2i_model.pt"), str(dst), *opts]
    elif case == "no_heads":
        argv = [str(FIX / "gpt_c2i_model.pt"), str(dst), "--grid-size", "4"]
    else:
        argv = ["--export", str(FIX), str(out_root / "x.npz")]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = convert_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # no output, no temporary or parent directories


def test_help_lists_every_option(capsys):
    assert cli.main(["convert", "--help"]) == 0
    text = capsys.readouterr().out
    for action in convert_cli.build_parser()._actions:
        for opt in action.option_strings:
            assert opt in text
        assert action.help and len(action.help) > 10
    for word in ("--export", "--verify", "--llamagen-src", "exit status"):
        assert word in text


def test_conversion_script_is_a_thin_wrapper():
    proc = subprocess.run([sys.executable, str(ROOT / "conversion" / "convert.py"), "--help"], capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 0 and "--export" in proc.stdout


def test_save_model_layout_is_readable_by_standard_checkpointer(tmp_path):
    """The low-memory save keeps the orbax layout: StandardCheckpointer restores it."""
    import orbax.checkpoint as ocp

    from scalingar_jax.config import GPTConfig

    from scalingar_jax.convert import mapping as M

    cfg = GPTConfig(n_layer=1, n_head=1, dim=8, vocab_size=8, num_classes=2, grid_size=2)
    params: dict = {}
    for i, (path, shape) in enumerate(M.gpt_flax_shapes(cfg).items()):  # float32 and bfloat16 leaves
        M._set(params, path, np.arange(np.prod(shape), dtype=np.float32).reshape(shape).astype(
            ml_dtypes.bfloat16 if i % 2 else np.float32))
    save_model(tmp_path / "m", params, cfg, kind="gpt")
    restored = ocp.StandardCheckpointer().restore((tmp_path / "m" / "params").absolute())
    assert_same_tree(params, restored)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "params"]
    assert jax.tree.structure(load_model(tmp_path / "m")[0]) == jax.tree.structure(params)
    # load_model compares the stored shapes with config.json
    save_model(tmp_path / "bad", {"a": np.zeros((2, 3), np.float32)}, cfg, kind="gpt")
    with pytest.raises(ValueError, match="does not describe the stored weights"):
        load_model(tmp_path / "bad")
