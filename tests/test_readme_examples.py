"""The README's "Using it" block, run as a user would: each ``fedlab-run`` line with the rounds
cut to two, in-process (Ray costs ~10 s a run and is tested in test_simulation.py), failing on
a non-zero exit or a divergence warning. Lines that are not one run are handled apart: ``-m``
(a multirun) runs with its own sweep directory under tmp; ``resume=`` continues the first
example's record; ``--cfg`` only prints."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "fedlab-run"


def readme_lines() -> list[list[str]]:
    """The arguments of every ``fedlab-run`` line in the README's "## Using it" code block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's 'Using it' section has no bash block"
    lines = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "fedlab-run":
            lines.append(words[1:])
    return lines


LINES = readme_lines()


def _fedlab_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


def _cut(args: list[str]) -> list[str]:
    """The line with two rounds, in-process unless it chooses the engine itself."""
    extra = ["num_rounds=2"]
    if not any(a.startswith("simulation=") for a in args):
        extra.append("simulation=inprocess")
    return [*args, *extra]


@pytest.mark.parametrize("args", LINES, ids=[" ".join(a) or "(defaults)" for a in LINES])
def test_readme_line_runs_sensibly(args: list[str], tmp_path: Path) -> None:
    if args[:1] == ["--cfg"]:
        result = _fedlab_run(args, tmp_path)
        assert result.returncode == 0 and "num_rounds:" in result.stdout
        return
    if args and args[0].startswith("resume="):
        first = tmp_path / "first"
        done = _fedlab_run(_cut([*LINES[0], f"hydra.run.dir={first}"]), tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        # the README resumes a killed run; a finished one is extended by one round instead
        result = _fedlab_run([f"resume={first}", "num_rounds=3"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads((first / "results.json").read_text())["rounds_completed"] == 3
        return
    if args[:1] == ["-m"]:
        swept = [a if not a.startswith("hydra.sweep.dir=") else f"hydra.sweep.dir={tmp_path}/s"
                 for a in args]
        result = _fedlab_run(_cut(swept), tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        records = sorted((tmp_path / "s").glob("*/results.json"))
        assert records
        for path in records:
            results = json.loads(path.read_text())
            assert results["status"] == "completed" and not results["warnings"], path
        return
    run_dir = tmp_path / "run"
    result = _fedlab_run(_cut([*args, f"hydra.run.dir={run_dir}"]), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert not [w for w in results["warnings"] if "diverg" in w], results["warnings"]
    assert "warning: round" not in result.stdout  # no divergence warning on the console
