"""Two local processes x 4 CPU devices with `jax.distributed` (gloo collectives): a global mesh
over both gives the single-device results, and per-host runs merged with
`merge_geneval_folders` give the same GenEval folder as one process. Runs
`tests/multihost_worker.py` twice (about a minute on a 2-core machine)."""
import filecmp
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from exactness import worker_env

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.mark.slow
@pytest.mark.exactness
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    env = worker_env()
    cmd = [sys.executable, str(ROOT / "tests" / "multihost_worker.py")]
    procs = [subprocess.Popen(cmd + [str(i), "2", str(port), str(tmp_path), "--fast-compile"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any("gloo" in o.lower() and "not" in o.lower() and p.returncode for o, p in zip(outs, procs)):
        pytest.skip("this jaxlib has no gloo CPU collectives")
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    for i in range(2):
        rep = json.loads((tmp_path / f"report{i}.json").read_text())
        assert rep["process_count"] == 2 and rep["devices"] == 8 and rep["local_devices"] == 4
        assert rep["global_scalingar_equal"] and rep["global_scalingar_pruned"] > 0
        assert rep["global_is_equal"]
    assert sorted(os.listdir(tmp_path / "merged")) == ["00000", "00001", "00002", "00003"]
    assert _same_tree(tmp_path / "merged", tmp_path / "ref")
