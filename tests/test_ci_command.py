"""`.ci/run` runs exactly the README's test command, whose AVX2 rerun of the exactness tests
runs only on a host with AVX-512 (on another host the first run already is that run)."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RERUN = "XLA_FLAGS=--xla_cpu_max_isa=AVX2 python -m pytest -q -m exactness"


def readme_command() -> str:
    """The one line of the bash block after README's "Run the tests"."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("Run the tests"):].split("```bash\n", 1)[1].split("```", 1)[0]
    assert block.count("\n") == 1, block
    return block.strip()


def test_ci_runs_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == readme_command()
    assert readme_command().startswith('pip install -e ".[test]" && python -m pytest -q && ')


def test_the_avx2_rerun_runs_only_on_an_avx512_host(tmp_path):
    """The command's last part, with /proc/cpuinfo replaced and the rerun replaced by a marker
    that fails: run (and its failure kept) with avx512f, skipped (status 0) without."""
    tail = readme_command().split(" && ", 2)[2]
    assert RERUN in tail and "/proc/cpuinfo" in tail
    for flags, want in (("fpu avx2 avx512f avx512bw", 7), ("fpu avx2 fma", 0)):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        script = tail.replace("/proc/cpuinfo", str(tmp_path / "cpuinfo")).replace(RERUN, "exit 7")
        assert subprocess.run(["bash", "-euo", "pipefail", "-c", script]).returncode == want, flags
