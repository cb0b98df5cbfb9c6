"""Hostile checkpoints and bad arguments (issue 18): each is refused with one line (library
error or exit status 2), nothing runs, nothing is left behind, and memory stays bounded.

Every malicious file is generated here by hand (no torch): `_zip` writes a torch-like zip
archive around a hand-assembled pickle. `test_bombs_in_a_subprocess` converts all of them
with `scalingar convert` in one child process and checks the exit status, the single stderr
line, the traced numpy/Python allocation peak of each, and the child's peak RSS.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scalingar_jax import atomic
from scalingar_jax.convert import load_checkpoint
from scalingar_jax.convert import run
from scalingar_jax.convert import safetensors as sft
from scalingar_jax.convert import torch_pickle as tp
from scalingar_jax.convert.torch_pickle import CheckpointBudgetError, CheckpointFormatError, UnsafePickleError

FIX = Path(__file__).parent / "fixtures" / "convert"
MB = 1 << 20


# --------------------------------------------------------------------------------------------
# hand-made files
# --------------------------------------------------------------------------------------------


def _zip(path: Path, pkl: bytes, records: dict[str, bytes] | None = None, *,
         method=zipfile.ZIP_STORED, extra: list[tuple[str, bytes]] = ()) -> Path:
    """A torch-like zip: archive/data.pkl, byteorder, data/<key> records, version."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        with zipfile.ZipFile(path, "w", method) as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/byteorder", b"little")
            for k, v in (records or {}).items():
                zf.writestr(f"archive/data/{k}", v)
            for name, data in extra:
                zf.writestr(name, data)
            zf.writestr("archive/version", b"3\n")
    return path


def _tensor_ops(w: tp._PickleWriter, key: str, numel: int, size, stride) -> None:
    """Emits `_rebuild_tensor_v2(storage key, 0, size, stride, False, OrderedDict())` (the
    writer's own tensor record, with the storage size and strides replaced)."""
    rec = tp._TensorRecord(key, "FloatStorage", size)
    rec.numel, rec.stride = numel, tuple(stride)
    w.tensor(rec)


def _state_dict_pickle(tensors: list[tuple[str, str, int, tuple, tuple]]) -> bytes:
    """{"model": {name: tensor}} for (name, storage key, numel, size, stride) entries."""
    w = tp._PickleWriter()
    w._w(b"}")
    w.value("model")
    w._w(b"}(")
    for name, key, numel, size, stride in tensors:
        w.value(name)
        _tensor_ops(w, key, numel, size, stride)
    w._w(b"us")
    return w.getvalue()


def _binput(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def _binget(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def make_bombs(folder: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, regex the one-line error must match)}: every hostile `.pt` of the issue."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {}
    # a 45-byte pickle whose memo index asks the C unpickler for a 1.4e9-entry table
    f["memo_index"] = (_zip(folder / "memo_index.pt", b"\x80\x02N" + _binput(1_400_000_000) + _binget(1_400_000_000)
                            + b"\x86."), "not a dict of tensors|holds a tuple")
    f["memo_get_unset"] = (_zip(folder / "memo_get.pt", b"\x80\x02" + _binget(1_400_000_000) + b"."),
                           "never stored")
    # shared references 40 deep: t_i = (t_{i-1}, t_{i-1}), t_0 = [] (2**40 leaves if copied)
    p = b"\x80\x02]" + _binput(0)
    for i in range(1, 41):
        p += _binget(i - 1) + b"\x86" + _binput(i)
    f["shared_refs"] = (_zip(folder / "shared_refs.pt", p + b"."), "not a dict of tensors|holds a tuple")
    f["self_list"] = (_zip(folder / "self_list.pt", b"\x80\x02]" + _binput(0) + _binget(0) + b"a."), "cycle")
    f["self_dict"] = (_zip(folder / "self_dict.pt", b"\x80\x02}" + _binput(0) + b"X\x01\x00\x00\x00m" + _binget(0)
                           + b"s."), "cycle")
    depth = 50_000  # (at 100_000 the object budget refuses it first)
    f["deep_nesting"] = (_zip(folder / "deep.pt", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."),
                         "nest more than")
    # stride-0: one float viewed as a 60000 x 60000 matrix (14 GB if materialised)
    f["stride0"] = (_zip(folder / "stride0.pt", _state_dict_pickle([("w", "0", 1, (60000, 60000), (0, 0))]),
                         {"0": b"\0" * 4}), "byte budget")
    # 3000 tensors all viewing the same 64 KiB storage (192 MB if materialised)
    n = 16384
    f["shared_storage"] = (_zip(folder / "shared_storage.pt",
                                _state_dict_pickle([(f"w{i}", "0", n, (n,), (1,)) for i in range(3000)]),
                                {"0": b"\0" * (4 * n)}), "byte budget")
    sd_ok = _state_dict_pickle([("w", "0", 4, (4,), (1,))])
    f["bzip2"] = (_zip(folder / "bzip2.pt", sd_ok, {"0": b"\0" * 16}, method=zipfile.ZIP_BZIP2), "zip method 12")
    f["lzma"] = (_zip(folder / "lzma.pt", sd_ok, {"0": b"\0" * 16}, method=zipfile.ZIP_LZMA), "zip method 14")
    f["duplicate"] = (_zip(folder / "duplicate.pt", sd_ok, {"0": b"\0" * 16},
                           extra=[("archive/data/0", b"\1" * 16)]), "twice")
    # a deflated data.pkl declaring 24 MB (a few KB on disk)
    f["deflate_pickle"] = (_zip(folder / "deflate_pickle.pt", b"\x80\x02N." + b"\0" * (24 * MB),
                                method=zipfile.ZIP_DEFLATED), "byte budget")
    # the reader's own stand-ins must not be patched by BUILD
    state = b"}X\x04\x00\x00\x00typeX\x04\x00\x00\x00evils"
    f["build_device"] = (_zip(folder / "build_device.pt", b"\x80\x02ctorch\ndevice\n" + state + b"b."),
                         "refusing BUILD")
    f["build_parameter"] = (_zip(folder / "build_param.pt", b"\x80\x02ctorch._utils\n_rebuild_parameter\n" + state
                                 + b"b."), "refusing BUILD")
    f["build_dict"] = (_zip(folder / "build_dict.pt", b"\x80\x02}" + state + b"b."), "refusing BUILD")
    marker = folder / "MARKER"
    f["os_system"] = (_zip(folder / "os_system.pt", b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(
        f"touch {marker}")) + f"touch {marker}".encode() + b"\x85R."), "refusing to load global 'posix.system'")
    f["inst_opcode"] = (_zip(folder / "inst.pt", b"\x80\x02(ios\nsystem\n."), "opcode 'INST'")
    f["protocol5"] = (_zip(folder / "proto5.pt", b"\x80\x05N."), "protocol")
    # many small objects: 4 MB of EMPTY_DICT inside one tuple (1 byte each in the file)
    f["object_flood"] = (_zip(folder / "flood.pt", b"\x80\x02(" + b"}" * (4 * MB) + b"t.",
                              method=zipfile.ZIP_DEFLATED), "byte budget")
    return f


# --------------------------------------------------------------------------------------------
# library-level refusals
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    return make_bombs(tmp_path_factory.mktemp("bombs"))


@pytest.mark.parametrize("case", ["memo_get_unset", "self_list", "self_dict", "deep_nesting", "stride0",
                                  "shared_storage", "bzip2", "lzma", "duplicate", "deflate_pickle", "build_device",
                                  "build_parameter", "build_dict", "os_system", "inst_opcode", "protocol5",
                                  "object_flood", "memo_index", "shared_refs"])
def test_reader_refuses(bombs, case):
    path, match = bombs[case]
    with pytest.raises(CheckpointFormatError, match=match):
        load_checkpoint(path)
    assert not (path.parent / "MARKER").exists()


def test_memo_and_shared_references_stay_small(bombs):
    # the large memo index is a dict entry; the 40-deep shared structure is not copied
    assert tp.load(bombs["memo_index"][0]) == (None, None)
    obj = tp.load(bombs["shared_refs"][0])
    for _ in range(40):
        assert obj[0] is obj[1]
        obj = obj[0]
    assert obj == []


def test_refused_build_leaves_the_reader_intact(bombs):
    before = (dict(vars(tp._Device)), dict(vars(tp._rebuild_parameter)))
    for case in ("build_device", "build_parameter"):
        with pytest.raises(UnsafePickleError, match="refusing BUILD"):
            tp.load(bombs[case][0])
    assert (dict(vars(tp._Device)), dict(vars(tp._rebuild_parameter))) == before
    sd, _ = tp.load_state_dict(FIX / "gpt_c2i_train.pt")  # a legitimate file still loads, devices and all
    assert "tok_embeddings.weight" in sd
    assert str(tp._Device("cuda", 0)) == "cuda:0"


def test_legitimate_build_and_protocol_4(tmp_path):
    # OrderedDict state (nn.Module's `_metadata`) is accepted and dropped; Namespace state becomes items
    w = tp._PickleWriter()
    w._w(b"}(")
    w.value("model")
    w.glob("collections", "OrderedDict")
    w._w(b")R(")
    w.value("w")
    _tensor_ops(w, "0", 4, (2, 2), (2, 1))
    w._w(b"u}(")
    w.value("_metadata")
    w._w(b"}ub")
    w.value("args")
    w.glob("argparse", "Namespace")
    w._w(b")\x81}(")
    w.value("image_size")
    w.value(256)
    w._w(b"ub")
    w.value("device")
    w.glob("torch", "device")
    w.value(("cuda", 1))
    w._w(b"R")
    w._w(b"u")
    path = _zip(tmp_path / "ok.pt", w.getvalue(), {"0": np.arange(4, dtype=np.float32).tobytes()})
    obj = tp.load(path)
    assert type(obj["args"]) is dict and obj["args"] == {"image_size": 256}
    assert obj["device"] == "cuda:1" and type(obj["device"]) is str
    np.testing.assert_array_equal(obj["model"]["w"].numpy(), [[0, 1], [2, 3]])
    # protocol 4 with frames, MEMOIZE and STACK_GLOBAL: the same data
    import pickle

    p4 = pickle.dumps({"a": [1, 2.5, "x", (None, True)], "b": b"bytes"}, protocol=4)
    assert tp.load(_zip(tmp_path / "p4.pt", p4)) == {"a": [1, 2.5, "x", (None, True)], "b": b"bytes"}


def test_budget_is_raised_by_max_bytes(bombs):
    path = bombs["shared_storage"][0]
    sd, _ = load_checkpoint(path, max_bytes=256 * MB)  # 3000 x 64 KiB = 196 MB fits
    assert len(sd) == 3000 and sd["w0"].storage_key == sd["w2999"].storage_key
    assert tp.check_budget(sd, 256 * MB) == 3000 * 4 * 16384
    with pytest.raises(CheckpointBudgetError, match="3000 of 3000 tensors|byte budget"):
        tp.check_budget(sd, 100 * MB)


def test_entry_count_bound(tmp_path, monkeypatch):
    path = _zip(tmp_path / "many.pt", b"\x80\x02N.", {str(i): b"" for i in range(20)})
    monkeypatch.setattr(tp, "MAX_ZIP_ENTRIES", 10)
    with pytest.raises(CheckpointFormatError, match="lists 23 records"):
        tp.load(path)


def _safetensors(path: Path, header_raw: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header_raw)) + header_raw + data)
    return path


def test_safetensors_header_depth_and_names(tmp_path):
    deep = b'{"__metadata__": {"x": "y"}, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(CheckpointFormatError, match="nests 100001 deep"):
        sft.read_header(_safetensors(tmp_path / "deep.safetensors", deep))
    ok = b'{"a": {"dtype": "F32", "shape": [[[[1]]]], "data_offsets": [0, 4]}, "s": "[[[[["}'
    with pytest.raises(CheckpointFormatError, match="shape must be"):  # depth 5: parsed, then refused
        sft.read_header(_safetensors(tmp_path / "ok.safetensors", ok, b"\0" * 4))
    evil = json.dumps({"\x1b[2J\x1b[31mevil": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = _safetensors(tmp_path / "evil.safetensors", evil, b"\0" * 4)
    rc, err = _convert_cli([str(path), str(tmp_path / "out")])
    assert rc == 2 and "\x1b" not in err and "\\x1b[2J" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------
# config fields, shapes and finiteness
# --------------------------------------------------------------------------------------------


def _convert_cli(argv, capsys=None) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        rc = run.main(argv)
    return rc, buf.getvalue()


def _gpt_arrays() -> dict[str, np.ndarray]:
    sd, _ = tp.load_state_dict(FIX / "gpt_c2i_model.pt")
    return {k: v.numpy() for k, v in sd.items()}


def _assert_refused(rc, err, dst: Path, *fragments):
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not dst.exists()
    assert not dst.parent.exists() or not any(p.name.startswith(f".{dst.name}.") for p in dst.parent.iterdir())


@pytest.mark.parametrize("hint, args, opts, fragment", [
    ({"n_head": 0, "grid_size": 4}, None, [], "n_head must be in [1, 1024], got 0"),
    ({"n_head": 2, "grid_size": 4, "norm_eps": "abc"}, None, [], "norm_eps must be a number"),
    ({"n_head": 2}, {"image_size": 2**44, "downsample_size": 16}, ["--verify"], "grid_size must be in [1, 256]"),
    ({"grid_size": 4}, None, ["--set", "n_head=0"], "n_head must be in [1, 1024], got 0"),
    ({"grid_size": 4}, None, ["--set", "n_head=[2]"], "n_head must be an integer"),
    ({"n_head": 2}, None, ["--grid-size", str(2**40)], "--grid-size must be in [1, 256]"),
    ({"n_head": 2, "grid_size": 4}, None, ["--seed", str(2**70)], "--seed must be in"),
    ({"n_head": 2, "grid_size": 4}, None, ["--max-bytes", "lots"], "expected a byte count"),
])
def test_config_fields_checked_where_read(tmp_path, hint, args, opts, fragment):
    extra = {"scalingar_config": hint, **({"args": args} if args else {})}
    src = tp.save_torch_state_dict(tmp_path / "g.pt", _gpt_arrays(), wrapper="model", extra=extra)
    dst = tmp_path / "sub" / "out"
    rc, err = _convert_cli([str(src), str(dst), *opts])
    _assert_refused(rc, err, dst, fragment)
    assert not (tmp_path / "sub").exists()


def test_non_finite_weights_and_config_json_checked_at_load(tmp_path):
    from scalingar_jax.checkpoint import load_model, read_config

    arrays = _gpt_arrays()
    arrays["norm.weight"][1] = np.nan
    src = tp.save_torch_state_dict(tmp_path / "nan.pt", arrays, wrapper="model",
                                   extra={"scalingar_config": {"n_head": 2, "grid_size": 4}})
    dst = tmp_path / "out"
    rc, err = _convert_cli([str(src), str(dst)])
    _assert_refused(rc, err, dst, "NaN or inf", "norm", "--allow-non-finite")
    assert _convert_cli([str(src), str(dst), "--allow-non-finite"])[0] == 0
    with pytest.raises(ValueError, match=r"NaN or inf values \(norm/weight: 1\)"):
        load_model(dst)
    params, _ = load_model(dst, allow_non_finite=True)
    # config.json disagreeing with the weights, garbage, a list
    cfg_file = dst / "config.json"
    record = json.loads(cfg_file.read_text())
    record["config"]["dim"] = 32
    cfg_file.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not describe the stored weights.*shape mismatch"):
        load_model(dst, allow_non_finite=True)
    record["config"]["dim"], record["config"]["n_layer"] = 16, 3
    cfg_file.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"shape mismatch for layers/attention/wqkv/kernel: tree has \(2, 16, 32\)"):
        load_model(dst, allow_non_finite=True)
    for text, match in (("{garbage", "not valid JSON"), ("[1, 2]", "JSON list"),
                        ('{"kind": "gpt", "config": []}', "'config' an object"),
                        ('{"kind": "gpt", "config": {"n_head": 0}}', "n_head must be in")):
        cfg_file.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_config(dst)


def test_grid_from_training_args_is_bounded():
    from scalingar_jax.config import GPTConfig

    with pytest.raises(ValueError, match="grid_size must be in"):
        GPTConfig(n_head=12, grid_size=2**40).validate()
    with pytest.raises(ValueError, match="norm_eps must be a number"):
        GPTConfig(norm_eps="abc").validate()
    with pytest.raises(ValueError, match="n_layer must be an integer"):
        GPTConfig(n_layer=True).validate()


# --------------------------------------------------------------------------------------------
# killed runs and atomic folders
# --------------------------------------------------------------------------------------------


def test_leftovers_of_killed_runs_are_recovered(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    target = tmp_path / "out"
    (tmp_path / f".out.tmp-{dead}-abc_1234").mkdir()  # a killed writer's half-written folder
    aside = tmp_path / f".out.old-{dead}-xyz_1234"
    (aside / "x").mkdir(parents=True)  # killed between the two renames: the old version aside
    (aside / "x" / "result.json").write_text("old")
    live = tmp_path / f".out.tmp-{os.getpid()}-live1234"  # a running writer's folder stays
    live.mkdir()
    (tmp_path / f".f.bin.{dead}-q1234567.tmp").write_text("partial")  # atomic_file leftover
    legacy = tmp_path / ".out.tmp-oldstyle"  # a pid-less temp folder of an earlier version, 2 h old
    legacy.mkdir()
    os.utime(legacy, (legacy.stat().st_atime - 7200, legacy.stat().st_mtime - 7200))
    (tmp_path / ".out.notes").write_text("a user's file")  # not a temp name: stays
    atomic.recover(target)
    assert (target / "result.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, f".f.bin.{dead}-q1234567.tmp",
                                                                  ".out.notes"])
    atomic.atomic_write_bytes(tmp_path / "f.bin", b"new")  # the next write of f.bin cleans its leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, "f.bin", ".out.notes"])


def test_overwrite_swaps_and_failures_keep_the_old_folder(tmp_path):
    target = tmp_path / "d"
    with atomic.atomic_dir(target) as t:
        Path(t, "v").write_text("1")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "which").write_text("a")
    if atomic._exchange(str(a), str(b)):  # Linux: the path is never missing during an overwrite
        assert (b / "which").read_text() == "a" and not (a / "which").exists()
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target, overwrite=True) as t:
            Path(t, "v").write_text("2")
            raise RuntimeError("killed")
    assert (target / "v").read_text() == "1"
    with atomic.atomic_dir(target, overwrite=True) as t:
        Path(t, "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "d"]


def test_convert_removes_leftover_temp_folders(tmp_path):
    dead = 2**22 + 54321
    stale = tmp_path / f".out.tmp-{dead}-abcd1234"
    (stale / "params").mkdir(parents=True)
    rc, err = _convert_cli([str(FIX / "gpt_c2i_model.pt"), str(tmp_path / "out"), "--set", "n_head=2",
                            "--grid-size", "4"])
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------------------------
# the scalingar command
# --------------------------------------------------------------------------------------------


def _cli(argv) -> tuple[int, str]:
    import contextlib
    import io

    from scalingar_jax import cli

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    return rc, buf.getvalue()


@pytest.mark.parametrize("opts, fragment", [
    (["--seed", str(2**70)], "--seed must be <="),
    (["--seed", "2**70"], "argument --seed: invalid int value: '2**70'"),
    (["--seed", "-1"], "--seed must be >="),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--scale", "0"], "--scale must be >= 1"),
    (["--scale", "100000"], "--scale must be <= 16"),
    (["-n", "1000000"], "-n/--num-candidates must be <= 1024"),
    (["--cfg", "nan"], "--cfg must be finite"),
])
def test_generate_options_refused_before_anything(tmp_path, opts, fragment):
    out = tmp_path / "o"
    rc, err = _cli(["generate", "a photo of a circle", "--checkpoint", str(tmp_path / "none"), "--out", str(out),
                    *opts])
    assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert not out.exists()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A copy of the embedded shapes-world checkpoint (copying is faster than making one)."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"
    if not (src / "gpt" / "config.json").is_file():
        pytest.skip("the embedded checkpoints/shapes is not in this checkout")
    return Path(shutil.copytree(src, tmp_path_factory.mktemp("world") / "shapes"))


def test_generate_refuses_bad_checkpoints_before_generating(world, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(world, bad)
    out = tmp_path / "o"
    gpt_cfg = bad / "gpt" / "config.json"
    good = gpt_cfg.read_text()
    record = json.loads(good)
    cases = [
        (json.dumps({**record, "config": {**record["config"], "dim": record["config"]["dim"] * 2}}),
         "does not describe the stored weights"),
        (json.dumps({**record, "config": {**record["config"], "n_layer": record["config"]["n_layer"] + 1}}),
         "does not describe the stored weights"),
        ("\x00garbage", "not valid JSON"),
        ("[1, 2, 3]", "JSON list"),
    ]
    for text, fragment in cases:
        gpt_cfg.write_text(text)
        rc, err = _cli(["generate", "a photo of a circle", "--checkpoint", str(bad), "--out", str(out)])
        assert rc == 2 and err.count("\n") == 1 and fragment in err, (fragment, err)
        assert not out.exists()
    gpt_cfg.write_text(good)
    # NaN weights: refused at load, not turned into garbage images
    from scalingar_jax.checkpoint import load_model, save_model

    params, cfg = load_model(bad / "gpt")
    params = jax_tree_map_first_leaf_nan(params)
    save_model(bad / "gpt", params, cfg, kind="gpt", overwrite=True)
    rc, err = _cli(["generate", "a photo of a circle", "--checkpoint", str(bad), "--out", str(out)])
    assert rc == 2 and err.count("\n") == 1 and "NaN or inf" in err and not out.exists(), err
    # the VQ folder where the GPT belongs
    shutil.rmtree(bad / "gpt")
    shutil.copytree(bad / "vq", bad / "gpt")
    rc, err = _cli(["generate", "a photo of a circle", "--checkpoint", str(bad), "--out", str(out)])
    assert rc == 2 and err.count("\n") == 1 and "'vq'" in err and not out.exists(), err


def jax_tree_map_first_leaf_nan(params):
    import jax

    leaves, treedef = jax.tree.flatten(params)
    first = np.array(leaves[0], copy=True)
    first.reshape(-1)[0] = np.nan
    return jax.tree.unflatten(treedef, [first, *leaves[1:]])


@pytest.mark.parametrize("error", [MemoryError(), RecursionError("maximum recursion depth exceeded"),
                                   ZeroDivisionError("integer division or modulo by zero"),
                                   ValueError("name \x1b[31mred\x1b[0m\nsecond line")])
def test_deep_errors_are_one_line(tmp_path, monkeypatch, error):
    from scalingar_jax import pipeline
    from scalingar_jax.convert import run as convert_run

    def boom(*a, **k):
        raise error

    monkeypatch.setattr(pipeline, "load_pipeline", boom)
    rc, err = _cli(["generate", "a photo of a circle", "--out", str(tmp_path / "o")])
    assert rc == 2 and err.count("\n") == 1 and "\x1b" not in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(convert_run, "_convert", boom)
    rc, err = _convert_cli([str(FIX / "gpt_c2i_model.pt"), str(tmp_path / "c")])
    assert rc == 2 and err.count("\n") == 1 and "\x1b" not in err, err
    assert sorted(os.listdir(tmp_path)) == []


def test_generate_out_folder_is_replaced_whole_and_guarded(world, tmp_path, monkeypatch):
    """--out is written as one folder: foreign content is refused, a run killed while writing
    leaves the previous outputs whole, and the next run replaces them all together."""
    from types import SimpleNamespace

    from scalingar_jax import cli, pipeline

    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: SimpleNamespace(seconds=0.0))

    def writer(seed, fail):
        def write(out, args, *rest):
            (out / "selected.png").write_bytes(b"png %d" % seed)
            if fail:
                raise KeyboardInterrupt  # killed between two files
            (out / "result.json").write_text(json.dumps({"seed": seed}))
            return {"selected": str(out / "selected.png")}, {"winner": 0, "tokens_used": 1, "tokens_full": 2}
        return write

    out = tmp_path / "o"
    argv = ["generate", "a photo of a circle", "--checkpoint", str(world), "--out", str(out)]
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = _cli(argv)
    assert rc == 2 and "notes.txt" in err and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    monkeypatch.setattr(cli, "_write_generate_outputs", writer(1, False))
    assert _cli(argv + ["--seed", "1"])[0] == 0
    monkeypatch.setattr(cli, "_write_generate_outputs", writer(2, True))
    with pytest.raises(KeyboardInterrupt):
        _cli(argv + ["--seed", "2"])
    assert (out / "selected.png").read_bytes() == b"png 1" and json.loads((out / "result.json").read_text()) == {
        "seed": 1}
    assert sorted(os.listdir(tmp_path)) == ["o"]
    monkeypatch.setattr(cli, "_write_generate_outputs", writer(3, False))
    assert _cli(argv + ["--seed", "3"])[0] == 0
    assert sorted(os.listdir(out)) == ["result.json", "selected.png"]
    assert json.loads((out / "result.json").read_text()) == {"seed": 3}
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_evaluate_refuses_huge_declared_png_before_decoding(tmp_path):
    from scalingar_jax.cli import png_size

    sample = tmp_path / "00000" / "samples" / "0000.png"
    sample.parent.mkdir(parents=True)
    (tmp_path / "00000" / "metadata.jsonl").write_text(json.dumps(
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}))
    ihdr = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 20000, 20000)
    sample.write_bytes(ihdr + b"\x08\x02\x00\x00\x00" + os.urandom(1 << 16))
    assert png_size(sample) == (20000, 20000)
    rc, err = _cli(["evaluate", str(tmp_path)])
    assert rc == 2 and "20000 x 20000" in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------------------------
# peak memory of converting every bomb (one child process)
# --------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import contextlib, io, json, os, resource, sys, tracemalloc
    from scalingar_jax.convert import run
    report = {}
    tracemalloc.start()
    for case, path in json.loads(sys.argv[1]).items():
        tracemalloc.reset_peak()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = run.main([path, path + ".out"])
        report[case] = {"rc": rc, "err": err.getvalue(), "traced_peak": tracemalloc.get_traced_memory()[1],
                        "left": os.path.exists(path + ".out")}
    # VmHWM: this process image's peak RSS (ru_maxrss would include the forked pytest parent's)
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    report["_maxrss"] = int(hwm[0].split()[1]) * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report))
""")


def test_bombs_in_a_subprocess(bombs):
    """Done-when of issue 18: converting any bomb file exits 2 with one line, runs nothing, leaves
    nothing, and the child's peak RSS stays under max(256 MB, 3x the largest file)."""
    paths = {case: str(path) for case, (path, _) in bombs.items()}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, (path, match) in bombs.items():
        r = report[case]
        assert r["rc"] == 2, (case, r)
        assert r["err"].count("\n") == 1 and "Traceback" not in r["err"], (case, r["err"])
        assert not r["left"], case
        assert r["traced_peak"] < 64 * MB, (case, r["traced_peak"])
    largest = max(p.stat().st_size for p, _ in bombs.values())
    assert report["_maxrss"] < max(256 * MB, 3 * largest), report["_maxrss"]
    assert not (next(iter(bombs.values()))[0].parent / "MARKER").exists()
