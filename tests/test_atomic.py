"""Atomic writes: the target holds the old content or the new one, never a half-written file."""
from __future__ import annotations

import os

import pytest

from scalingar_jax.atomic import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text


def test_atomic_file_replaces_on_success_and_keeps_old_on_error(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(p, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]  # no temp file left
    assert atomic_write_bytes(p, b"new") == str(p)
    assert p.read_bytes() == b"new"


def test_atomic_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "a.txt", "x")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    with pytest.raises(TypeError, match="str or os.PathLike"):
        atomic_write_text(3, "x")
    with pytest.raises(ValueError, match="mode"):
        with atomic_file(tmp_path / "a", "a"):
            pass


def test_atomic_dir_swaps_whole_folders(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as d:
        open(os.path.join(d, "one"), "w").close()
    assert sorted(os.listdir(out)) == ["one"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as d:
            open(os.path.join(d, "two"), "w").close()
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["one"]  # untouched
    with atomic_dir(out, overwrite=True) as d:
        open(os.path.join(d, "two"), "w").close()
    assert sorted(os.listdir(out)) == ["two"]
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temp or old folders left


def test_atomic_dir_removes_the_parents_it_created_on_error(tmp_path):
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "keep" / "new" / "deeper" / "model") as d:
            open(os.path.join(d, "one"), "w").close()
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["keep"] and os.listdir(tmp_path / "keep") == []
    # a parent someone else wrote into meanwhile stays, with what they wrote
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "a" / "b" / "model"):
            (tmp_path / "a" / "theirs").write_text("x")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path / "a")) == ["theirs"]
    with atomic_dir(tmp_path / "c" / "model") as d:  # on success the parents stay, of course
        open(os.path.join(d, "one"), "w").close()
    assert os.listdir(tmp_path / "c" / "model") == ["one"]
