"""``fedlab-run --help`` is fedlab's own, read from conf/ without Hydra (issue #22): every group
and option in conf/ (walked here with ``os.walk``, not the help's code), each group's default
from conf/config.yaml, the file's own keys; everything else still goes to Hydra."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedlab import cli
from fedlab.config.errors import ConfigError
from fedlab.help import render_help, wants_help

EXE = Path(sys.executable).parent / "fedlab-run"
CONF = Path(find_spec("fedlab.conf").origin).parent  # pkg://fedlab.conf, editable or not
HEAVY = ("hydra", "omegaconf", "torch", "flwr", "ray")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _walked_groups(conf: Path) -> dict[str, set[str]]:
    """group -> option names: each folder under ``conf`` holding .yaml files, nested ones as
    ``a/b``, without Hydra's own top-level ``hydra/`` and Python's ``__pycache__``."""
    groups: dict[str, set[str]] = {}
    for folder, dirs, files in os.walk(conf):
        relative = Path(folder).relative_to(conf)
        dirs[:] = [d for d in dirs
                   if d != "__pycache__" and not (relative == Path() and d == "hydra")]
        options = {name[: -len(".yaml")] for name in files if name.endswith(".yaml")}
        if options and relative != Path():
            groups[relative.as_posix()] = options
    return groups


def _shown_groups(text: str) -> dict[str, tuple[list[str], str | None]]:
    """The help's group lines: group -> (options in printed order, default or None)."""
    section = text.split("== Configuration groups ==\n")[1].split("\n== Config ==")[0]
    shown = {}
    for line in section.splitlines():
        match = re.fullmatch(r"([\w/]+): (.+?)(?:  \(default: (.+)\))?", line)
        if match:
            shown[match[1]] = (match[2].split(", "), match[3])
    return shown


@pytest.fixture(scope="module")
def help_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    result = _run("--help", cwd=tmp_path_factory.mktemp("help"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_help_lists_every_group_and_option_in_conf(help_text: str) -> None:
    shown = _shown_groups(help_text)
    walked = _walked_groups(CONF)
    assert {"dataset", "strategy", "devices/profiles"} <= set(walked)  # the walk found conf/
    assert set(shown) == set(walked)
    assert list(shown) == sorted(walked)
    for group, options in walked.items():
        assert shown[group][0] == sorted(options), group


def test_help_shows_each_default_of_config_yaml(help_text: str) -> None:
    primary = yaml.safe_load((CONF / "config.yaml").read_text())
    shown = _shown_groups(help_text)
    expected: dict[str, str] = {}
    for entry in primary["defaults"]:
        if not isinstance(entry, dict):
            continue  # fedlab_schema, _self_
        ((key, option),) = entry.items()
        group = key.split()[-1]
        if not group.startswith("hydra/"):
            expected[group] = "none" if option is None else option
    assert expected["dataset"] == "digits" and "recommended" in expected
    for group, option in expected.items():
        default = shown[group][1]
        assert default is not None and default.startswith(option), (group, default)
        if option not in ("none", "${dataset}"):
            assert option in shown[group][0], group  # the default is one of the listed options
    assert {g for g, (_, d) in shown.items() if d is None} == set(shown) - set(expected)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def test_help_shows_the_top_level_keys_with_their_defaults(help_text: str) -> None:
    primary = yaml.safe_load((CONF / "config.yaml").read_text())
    config = help_text.split("\n== Config ==\n")[1].split("\n== More ==")[0].splitlines()
    expected = []
    for top, node in primary.items():
        if top in ("defaults", "hydra"):
            continue
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(value, dict):
                    expected.append((f"{top}.{key}", _plain(value)))
        else:
            expected.append((top, _plain(node)))
    assert ("num_rounds", "10") in expected and ("resume", "null") in expected
    for key, value in expected:
        assert any(line.split("  # ")[0] == f"{key}: {value}" for line in config), key
    assert sum(line.startswith("trackers.audit.") for line in config) == len(
        primary["trackers"]["audit"])
    resume = next(line for line in (CONF / "config.yaml").read_text().splitlines()
                  if line.startswith("resume:"))
    assert f"resume: null  # {resume.split('#', 1)[1].strip()}" in config
    assert not any(line.startswith(("hydra", "defaults")) for line in config)


def test_help_points_on_and_imports_nothing_heavy(tmp_path: Path) -> None:
    code = ("import sys; sys.argv = ['fedlab-run', '-h', 'strategy=fedprox'];"
            "import fedlab.cli; fedlab.cli.main();"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.rstrip().endswith("\n[]"), result.stdout[-300:]
    assert "  fedlab-run strategy=fedprox --cfg job" in result.stdout  # the override's note
    for pointer in ("--cfg job", "--hydra-help", "README.md"):
        assert pointer in result.stdout.split("== More ==")[1]
    assert not list(tmp_path.iterdir())  # help writes nothing


def test_hydra_help_still_goes_to_hydra(tmp_path: Path) -> None:
    result = _run("--hydra-help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hydra (") and "== Flags ==" in result.stdout


@pytest.mark.parametrize(("argv", "ours"), [
    (["--help"], True),
    (["-h"], True),
    (["strategy=fedprox", "num_clients=30", "--help"], True),
    ([], False),
    (["strategy=fedprox"], False),
    (["--hydra-help"], False),
    (["--help", "--cfg", "job"], False),
    (["-h", "-m", "seed=0,1"], False),
    (["--help", "--info"], False),
    (["--help", "--config-dir", "/elsewhere"], False),
    (["--hel"], False),  # an abbreviation only Hydra's argparse knows
])
def test_only_a_plain_help_is_fedlabs(argv: list[str], ours: bool) -> None:
    assert wants_help(argv) is ours


def test_fedlab_callbacks_have_every_hydra_hook() -> None:
    from hydra.experimental.callback import Callback as HydraCallback

    hooks = {name for name in vars(HydraCallback) if name.startswith("on_")}
    assert len(hooks) == 6
    for callback in (cli.OutputDirCheck, cli.SweepSummary):
        assert all(callable(getattr(callback, hook, None)) for hook in hooks), callback


def test_defaults_list_forms(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - schema\n  - _self_\n  - db@store: mysql\n  - optional extra: ${db}\n"
        "  - preset: null\n  - override hydra/launcher: basic\n"
        "name: 'a # b'  # the name\nempty: {}\nsizes: [1, 2]\nflag: false\n")
    for group, options in {"db": ["mysql", "sqlite"], "preset": ["p"], "extra": ["x"]}.items():
        (tmp_path / group).mkdir()
        for option in options:
            (tmp_path / group / f"{option}.yaml").write_text("{}\n")
    (tmp_path / "db" / "__pycache__").mkdir()
    (tmp_path / "db" / "__pycache__" / "stale.yaml").write_text("{}\n")
    (tmp_path / "hydra" / "launcher").mkdir(parents=True)
    (tmp_path / "hydra" / "launcher" / "basic.yaml").write_text("{}\n")
    text = render_help(tmp_path)
    assert _shown_groups(text) == {
        "db": (["mysql", "sqlite"], "mysql"),
        "extra": (["x"], "${db}, if that option exists"),
        "preset": (["p"], "none"),
    }
    config = text.split("\n== Config ==\n")[1].split("\n== More ==")[0].splitlines()
    assert config[-4:] == ["name: a # b", "empty: {}", "sizes: [1, 2]", "flag: false"]


def test_unreadable_config_yaml_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.yaml").write_text("defaults:\n  - a: b\nseed: [0\n")
    with pytest.raises(ConfigError, match=r"^conf/config.yaml: line 4: not valid YAML"):
        render_help(tmp_path)
    stderr = io.StringIO()
    monkeypatch.setattr(cli, "REAL_STDERR", stderr)  # where cli.fail writes
    monkeypatch.setattr(cli, "conf_root", lambda: tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedlab-run", "--help"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert stderr.getvalue().splitlines() == [
        "fedlab-run: error: conf/config.yaml: line 4: not valid YAML "
        "(expected ',' or ']', but got '<stream end>')"]
