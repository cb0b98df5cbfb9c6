"""The torch-free `.pt` reader/writer and the safetensors reader/writer (no torch needed).

Fixtures come from `conversion/make_fixtures.py` (run with torch, committed as tiny files).
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalingar_jax.convert import load_checkpoint
from scalingar_jax.convert import safetensors as sft
from scalingar_jax.convert import torch_pickle as tp
from scalingar_jax.convert.torch_pickle import CheckpointFormatError, LazyTensor, UnsafePickleError

FIX = Path(__file__).parent / "fixtures" / "convert"
FACTS = json.loads((FIX / "expected.json").read_text())
EXPECTED = dict(np.load(FIX / "expected.npz"))
LOADABLE = sorted(k for k, v in FACTS.items() if "group" in v)
MALICIOUS = sorted(k for k, v in FACTS.items() if "global" in v)


def expected_group(group: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in EXPECTED.items():
        g, _, rest = k.partition("::")
        if g != group:
            continue
        if rest.endswith("::bf16bits"):
            out[rest[: -len("::bf16bits")]] = v.view(ml_dtypes.bfloat16)
        else:
            out[rest] = v
    return out


def _bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_exact(a: np.ndarray, e: np.ndarray, what=""):
    assert a.dtype == e.dtype, (what, a.dtype, e.dtype)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    assert a.flags.c_contiguous
    if a.dtype == ml_dtypes.bfloat16:
        a, e = _bytes(a), _bytes(e)
    np.testing.assert_array_equal(a, e, err_msg=what)


# --------------------------------------------------------------------------------------------
# fixtures written by torch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOADABLE)
def test_fixture_matches_expected_arrays(name):
    sd, meta = load_checkpoint(FIX / name)
    want = expected_group(FACTS[name]["group"])
    assert set(sd) == set(want)
    for k, t in sd.items():
        assert isinstance(t, LazyTensor)
        assert t.shape == want[k].shape and t.dtype == want[k].dtype
        assert_exact(t.numpy(), want[k], f"{name}:{k}")


@pytest.mark.parametrize("name", [n for n in LOADABLE if n.endswith(".pt")])
def test_wrapper_and_meta(name):
    facts = FACTS[name]
    sd, meta = tp.load_state_dict(FIX / name)
    assert meta["format"] == "torch-zip" and meta["byteorder"] == "little"
    assert meta["wrapper"] == facts["wrapper"]
    assert sorted(meta["other_keys"]) == sorted(facts["other_keys"])
    if "args" in facts:
        assert type(meta["args"]) is dict and meta["args"] == facts["args"]
        assert meta["steps"] == facts["steps"]
    else:
        assert meta["args"] is None


def test_namespace_becomes_plain_dict_and_optimizer_stays_lazy():
    obj = tp.load(FIX / "gpt_c2i_train.pt")
    assert type(obj["args"]) is dict
    assert obj["args"]["beta"] == [0.9, 0.95] and obj["args"]["results_dir"] is None
    assert obj["steps"] == 1234
    state = obj["optimizer"]["state"]
    first = state[0]
    assert isinstance(first["exp_avg"], LazyTensor) and isinstance(first["step"], LazyTensor)
    assert first["step"].shape == () and first["step"].numpy() == 1.0
    groups = obj["optimizer"]["param_groups"]
    assert groups[0]["betas"] == (0.9, 0.95) and groups[0]["params"][:2] == [0, 1]


def test_explicit_key_and_missing_key():
    sd, meta = tp.load_state_dict(FIX / "gpt_c2i_train.pt", key="model")
    assert meta["wrapper"] == "model" and "tok_embeddings.weight" in sd
    with pytest.raises(KeyError, match="ema"):
        tp.load_state_dict(FIX / "gpt_c2i_train.pt", key="ema")


def test_non_contiguous_views_and_shared_storage():
    sd, _ = tp.load_state_dict(FIX / "mixed.pt")
    want = expected_group("mixed")
    assert sd["transposed"].stride == (1, 6) and not sd["transposed"].is_contiguous()
    assert sd["sliced"].offset == 8 and sd["sliced"].stride == (6, 1)
    assert sd["expanded"].stride == (0, 1)
    assert sd["base"].storage_key == sd["transposed"].storage_key == sd["sliced"].storage_key
    for k in ("transposed", "sliced", "expanded", "bf16_t"):
        assert_exact(sd[k].numpy(), want[k], k)
    np.testing.assert_array_equal(np.asarray(sd["transposed"]), want["base"].T)
    # the transposed output.weight inside a real model file
    sd, _ = tp.load_state_dict(FIX / "gpt_c2i_bare.pt")
    assert not sd["output.weight"].is_contiguous()
    assert_exact(sd["output.weight"].numpy(), expected_group("gpt_c2i")["output.weight"])


def test_memmap_view_is_zero_copy_and_equal():
    sd, _ = tp.load_state_dict(FIX / "gpt_c2i_model.pt")
    t = sd["tok_embeddings.weight"]
    m = t.memmap()
    assert not m.flags.writeable
    np.testing.assert_array_equal(m, t.numpy())
    with pytest.raises(ValueError, match="contiguous"):
        tp.load_state_dict(FIX / "mixed.pt")[0]["transposed"].memmap()


# --------------------------------------------------------------------------------------------
# malicious and broken files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MALICIOUS)
def test_malicious_fixture_refused_and_nothing_runs(name):
    facts = FACTS[name]
    marker = Path(facts["marker"])
    marker.unlink(missing_ok=True)
    for loader in (tp.load, tp.load_state_dict, load_checkpoint):
        with pytest.raises(UnsafePickleError, match=facts["global"].replace(".", r"\.")):
            loader(FIX / name)
    assert not marker.exists()


def _torch_like_zip(path: Path, pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        for k, v in (records or {}).items():
            zf.writestr(f"archive/data/{k}", v)
        zf.writestr("archive/version", b"3\n")
    return path


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("kind", ["system", "eval", "popen", "nested"])
def test_handmade_malicious_pickles(tmp_path, protocol, kind):
    import subprocess

    marker = tmp_path / "marker"
    cmd = f"touch {marker}"
    payload = {
        "system": _Reduce(os.system, (cmd,)),
        "eval": _Reduce(eval, (f"open({str(marker)!r}, 'w')",)),
        "popen": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
        # hidden inside a legitimate-looking container
        "nested": collections.OrderedDict(w=[1, {"x": _Reduce(os.system, (cmd,))}]),
    }[kind]
    path = _torch_like_zip(tmp_path / "evil.pt", pickle.dumps({"model": payload}, protocol=protocol))
    # protocols 2 and 4 reach the global; 0 and 5 are refused at their first foreign opcode
    refusal = "refusing to load global" if protocol in (2, 4) else "refusing pickle (opcode|protocol)"
    with pytest.raises(UnsafePickleError, match=refusal):
        tp.load(path)
    assert not marker.exists()


def test_forbidden_torch_globals_are_refused(tmp_path):
    # torch.storage._load_from_bytes would unpickle nested bytes: not allowed
    pkl = b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x01xq\x00\x85R."
    with pytest.raises(UnsafePickleError, match=r"torch\.storage\._load_from_bytes"):
        tp.load(_torch_like_zip(tmp_path / "a.pt", pkl))
    # _codecs.encode only as the latin1 bytes trick
    pkl = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        tp.load(_torch_like_zip(tmp_path / "b.pt", pkl))


def test_misused_rebuild_is_a_format_error(tmp_path):
    # _rebuild_tensor_v2 called on a string instead of a storage
    pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(X\x01\x00\x00\x00sK\x00)))tR."
    with pytest.raises(CheckpointFormatError, match="storage record"):
        tp.load(_torch_like_zip(tmp_path / "a.pt", pkl))


def _storage_pickle(key="0", numel=4, size=(4,), stride=(1,), offset=0) -> bytes:
    w = tp._PickleWriter()
    w.glob("torch._utils", "_rebuild_tensor_v2")
    w._w(b"((")
    w.value("storage")
    w.glob("torch", "FloatStorage")
    w.value(key)
    w.value("cpu")
    w.value(numel)
    w._w(b"tQ")
    w.value(offset)
    w.value(size)
    w.value(stride)
    w.value(False)
    w._w(b"}tR")
    return w.getvalue()


def test_storage_bounds_are_checked(tmp_path):
    data = np.arange(4, dtype=np.float32).tobytes()
    ok = _torch_like_zip(tmp_path / "ok.pt", _storage_pickle(), {"0": data})
    np.testing.assert_array_equal(tp.load(ok).numpy(), np.arange(4, dtype=np.float32))
    with pytest.raises(CheckpointFormatError, match="holds 16 bytes"):
        tp.load(_torch_like_zip(tmp_path / "a.pt", _storage_pickle(numel=5), {"0": data}))
    with pytest.raises(CheckpointFormatError, match="reaches past the end"):
        tp.load(_torch_like_zip(tmp_path / "b.pt", _storage_pickle(size=(3,), offset=2), {"0": data}))
    with pytest.raises(CheckpointFormatError, match="missing"):
        tp.load(_torch_like_zip(tmp_path / "c.pt", _storage_pickle(key="7"), {"0": data}))


def test_compressed_members_still_read(tmp_path):
    # a re-zipped (deflated) checkpoint is still valid: read through zipfile
    src = zipfile.ZipFile(FIX / "gpt_c2i_model.pt")
    out = tmp_path / "deflated.pt"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in src.infolist():
            zf.writestr(info.filename, src.read(info.filename))
    sd, _ = tp.load_state_dict(out)
    want = expected_group("gpt_c2i")
    for k in ("layers.1.feed_forward.w2.weight", "output.weight"):
        assert_exact(sd[k].numpy(), want[k], k)
    with pytest.raises(CheckpointFormatError, match="compressed"):
        sd["output.weight"].memmap()


def test_truncated_archive():
    with pytest.raises(CheckpointFormatError, match=r"truncated\.pt.*(corrupt|truncated)"):
        tp.load_state_dict(FIX / "truncated.pt")


def test_file_shrinking_under_a_lazy_tensor(tmp_path):
    # tensors are read lazily: a file cut after opening gives a clear error at read time
    path = tmp_path / "cut.pt"
    path.write_bytes((FIX / "gpt_c2i_model.pt").read_bytes())
    sd, _ = tp.load_state_dict(path)
    t = sd["output.weight"]
    with open(path, "r+b") as f:
        f.truncate(t._storage.region.start + 4)
    with pytest.raises(CheckpointFormatError, match="truncated"):
        t.numpy()


def test_legacy_format_message():
    with pytest.raises(CheckpointFormatError, match=r"legacy.*torch>=1\.6"):
        tp.load_state_dict(FIX / "legacy.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="not a torch zip checkpoint"):
        tp.load(tmp_path / "x.pt")
    with zipfile.ZipFile(tmp_path / "y.pt", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        tp.load(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError):
        tp.load(tmp_path / "missing.pt")
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as zf:
        zf.writestr("m/data.pkl", b"\x80\x02}.")
        zf.writestr("m/constants.pkl", b"\x80\x02).")
    with pytest.raises(CheckpointFormatError, match="TorchScript"):
        tp.load(tmp_path / "z.pt")
    _torch_like_zip(tmp_path / "w.pt", b"\x80\x02(garbage")
    with pytest.raises(CheckpointFormatError, match="malformed pickle|refusing pickle opcode 'GET'"):
        tp.load(tmp_path / "w.pt")


def test_state_dict_with_non_tensor_entries(tmp_path):
    path = _torch_like_zip(tmp_path / "a.pt", pickle.dumps({"model": {"w": 3}}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="non-tensor"):
        tp.load_state_dict(path)
    path = _torch_like_zip(tmp_path / "b.pt", pickle.dumps({"weights": {}}, protocol=2))
    with pytest.raises(CheckpointFormatError, match="cannot find the weights"):
        tp.load_state_dict(path)


# --------------------------------------------------------------------------------------------
# the torch-compatible writer
# --------------------------------------------------------------------------------------------

ALL_DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int16, np.int8,
              np.uint8, np.bool_]


def _rand(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def test_writer_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"t{i}.{np.dtype(d).name}": _rand(rng, (3, i + 1), d) for i, d in enumerate(ALL_DTYPES)}
    arrays["scalar"] = np.array(1.5, np.float32)
    arrays["empty"] = np.zeros((0, 4), np.float16)
    arrays["fortran"] = np.asfortranarray(rng.standard_normal((4, 5)).astype(np.float32))
    path = tp.save_torch_state_dict(tmp_path / "w.pt", arrays, wrapper="model",
                                    extra={"steps": 3, "args": {"a": [1, 2.5, None, "x", (1, 2, 3, 4)]}})
    sd, meta = tp.load_state_dict(path)
    assert list(sd) == list(arrays) and meta["steps"] == 3 and meta["wrapper"] == "model"
    for k, a in arrays.items():
        assert_exact(sd[k].numpy(), np.array(a, order="C"), k)  # 0-d stays 0-d, as in torch
    # every storage record starts on a 64-byte boundary, as torch writes them (mmap loading)
    archive = tp._Archive(str(path))
    for key in range(len(arrays)):
        assert archive.region(str(key)).start % 64 == 0
    assert tp.load(path)["args"]["a"][4] == (1, 2, 3, 4)


def test_writer_streams_pairs_and_is_atomic(tmp_path):
    def gen():
        yield "a", np.ones(3, np.float32)
        yield "b", np.ones(3, np.complex64) * 1j
        yield "c", np.array(["not", "numeric"])  # unsupported: the write must fail cleanly

    with pytest.raises(TypeError, match="cannot store dtype"):
        tp.save_torch_state_dict(tmp_path / "x.pt", gen())
    assert list(tmp_path.iterdir()) == []
    tp.save_torch_state_dict(tmp_path / "y.pt", ((k, np.full(2, i, np.int64)) for i, k in enumerate("pq")))
    sd, meta = tp.load_state_dict(tmp_path / "y.pt")
    assert meta["wrapper"] is None and sd["q"].numpy().tolist() == [1, 1]


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
    dtype=st.sampled_from(ALL_DTYPES),
    perm_seed=st.integers(0, 100),
)
def test_writer_reader_property(tmp_path_factory, shape, dtype, perm_seed):
    rng = np.random.default_rng(perm_seed)
    a = _rand(rng, tuple(shape), dtype)
    if a.ndim >= 2:  # a non-contiguous input is stored contiguous
        a = np.transpose(a, rng.permutation(a.ndim))
    path = tmp_path_factory.mktemp("p") / "x.pt"
    tp.save_torch_state_dict(path, {"x": a})
    out = tp.load_state_dict(path)[0]["x"].numpy()
    assert_exact(out, np.array(a, order="C"))


# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------


def test_safetensors_fixture_from_official_writer():
    tensors, meta = sft.load_file(FIX / "gpt_c2i.safetensors")
    assert meta == FACTS["gpt_c2i.safetensors"]["metadata"]
    want = expected_group("gpt_c2i")
    for k, t in tensors.items():
        assert_exact(t.numpy(), want[k], k)
        np.testing.assert_array_equal(t.memmap(), want[k])


SFT_DTYPES = list(sft.DTYPES.values())


def test_safetensors_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for i, d in enumerate(SFT_DTYPES):
        if d.kind == "f" or d in (np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn),
                                  np.dtype(ml_dtypes.float8_e5m2)):
            arrays[f"x{i}"] = rng.standard_normal((2, i + 1)).astype(d)
        else:
            arrays[f"x{i}"] = _rand(rng, (2, i + 1), d)
    arrays["empty"] = np.zeros((3, 0), np.float32)
    arrays["scalar"] = np.array(7, np.int64)
    sft.save_file(tmp_path / "a.safetensors", arrays, metadata={"k": "v"})
    back = sft.load_arrays(tmp_path / "a.safetensors")
    assert set(back) == set(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape
        np.testing.assert_array_equal(_bytes(back[k]), _bytes(a))
    assert sft.load_file(tmp_path / "a.safetensors")[1] == {"k": "v"}
    raw = (tmp_path / "a.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 3), max_size=3), min_size=1, max_size=4),
    dtype=st.sampled_from(SFT_DTYPES),
)
def test_safetensors_property(tmp_path_factory, shapes, dtype):
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": _rand(rng, tuple(s), dtype) if dtype.kind in "iub" else
              rng.standard_normal(tuple(s)).astype(dtype) for i, s in enumerate(shapes)}
    path = tmp_path_factory.mktemp("s") / "x.safetensors"
    sft.save_file(path, arrays)
    back = sft.load_arrays(path)
    for k, a in arrays.items():
        np.testing.assert_array_equal(_bytes(back[k]), _bytes(a))


def test_safetensors_from_lazy_tensors_and_load_checkpoint(tmp_path):
    sd, _ = tp.load_state_dict(FIX / "mixed.pt")
    keep = {k: v for k, v in sd.items() if k in ("f32", "bf16", "transposed", "bool", "scalar")}
    sft.save_file(tmp_path / "m.safetensors", keep)
    tensors, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta["format"] == "safetensors"
    want = expected_group("mixed")
    for k in keep:
        assert_exact(tensors[k].numpy(), want[k], k)
    with pytest.raises(ValueError, match="key="):
        load_checkpoint(tmp_path / "m.safetensors", key="model")


def _raw_safetensors(path: Path, header, data: bytes = b"", header_len=None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header,data,header_len,match",
    [
        (b"{}", b"", 1000, "past the end"),
        (b"{}", b"", 10**9, "exceeds"),
        (b"not json", b"", None, "not UTF-8 JSON"),
        (b"[1, 2]", b"", None, "JSON list"),
        ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), None, "shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), None, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), None, "needs 12"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(8), None, "past the 8-byte"),
        ({"a": F32x2, "b": F32x2}, bytes(8), None, "overlap"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), None, "gap"),
        ({"a": F32x2}, bytes(12), None, "cover 8 bytes"),
        ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "exactly dtype"),
        ({"__metadata__": {"a": 1}, "a": F32x2}, bytes(8), None, "__metadata__"),
    ],
)
def test_safetensors_header_validation(tmp_path, header, data, header_len, match):
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(CheckpointFormatError, match=match) as e:
        sft.load_file(path)
    assert "bad.safetensors" in str(e.value)


def test_safetensors_short_file_and_atomic_write(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointFormatError, match="shorter"):
        sft.read_header(tmp_path / "s.safetensors")
    with pytest.raises(TypeError, match="cannot be stored"):
        sft.save_file(tmp_path / "o.safetensors", {"a": np.ones(2, np.float32), "b": np.array(["x"])})
    assert not (tmp_path / "o.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]
