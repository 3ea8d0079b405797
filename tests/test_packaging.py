"""A non-editable install carries conf/ (as fedlab.conf) and works from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_configs_and_runs_from_anywhere(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    # a conf/ folder or package missing from pyproject's `packages` list makes setuptools warn
    assert "Package would be ignored" not in built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("fedlab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for conf in (ROOT / "conf").rglob("*.yaml"):
        assert f"fedlab/conf/{conf.relative_to(ROOT / 'conf')}" in names
    # every module of both packages (a subpackage missing from pyproject's list would not be)
    for package in ("fedlab", "sandbox_quantum"):
        for module in (ROOT / package).rglob("*.py"):
            assert str(module.relative_to(ROOT)) in names, module
    assert "sandbox_quantum/conf/config.yaml" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy (not this checkout) composes the default config and a preset.
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.argv = ['fedlab-run', 'experiment=fedprox_synthetic', '--cfg', 'job'];"
         f"import fedlab.conf, fedlab.cli; assert fedlab.conf.__file__.startswith({str(site)!r});"
         "fedlab.cli.main()"],
        cwd=elsewhere, capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "proximal_mu: 1.0" in result.stdout and "num_clients: 30" in result.stdout
