"""The release gate: a policy the run meets passes (exit 0), one it does not fails naming the
rule (exit 1), a bad policy is one line and exit 2 with nothing written; the verdict reaches
results.json, the model card and a tracked run's MLflow tags; fedlab-compare says when runs
share data and partition."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from fedlab.record.reader import Run
from fedlab.reports.compare import compare
from fedlab.reports.gate import MissingKey, lookup, main
from fedlab.reports.model_card import client_fairness


@pytest.fixture()
def run_dir(small_run: Path) -> Path:
    return small_run


@pytest.fixture()
def copy(small_run_copy: Path) -> Path:
    return small_run_copy


def _policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_a_policy_the_run_meets_passes(copy: Path, tmp_path: Path, capsys) -> None:
    results = _results(copy)
    worst = client_fairness(Run(copy, results, {}, []).clients)
    assert worst is not None
    policy = _policy(tmp_path, f"""rules:
  accuracy: {{min: {results["accuracy"] - 0.01}}}
  status: completed
  experiment.num_clients: {{one_of: [3, 4]}}
  clients.accuracy_worst_10pct: {{min: {worst.worst_mean}}}
  lineage: verified
  model_card: present
""")
    assert main([str(copy), "--policy", policy]) == 0
    out = capsys.readouterr().out
    assert "PASS  accuracy" in out and "passed: all 6 rules" in out
    gate = _results(copy)["gate"]
    assert gate["passed"] is True and gate["failed"] == []
    assert gate["rules"][0] == {"rule": "accuracy", "bound": f">= {results['accuracy'] - 0.01:g}",
                                "value": results["accuracy"], "passed": True}
    assert gate["rules"][3]["value"] == worst.worst_mean
    import hashlib

    assert gate["policy_sha256"] == hashlib.sha256(Path(policy).read_bytes()).hexdigest()
    card = (copy / "model_card.md").read_text()
    assert "## Release gate" in card and "**passed** against" in card
    # the gate's writes leave the lineage intact (it reads neither results.json's gate nor
    # the card's gate section)
    from fedlab.lineage_cli import main as lineage_main

    assert lineage_main([str(copy)]) == 0


def test_a_policy_the_run_misses_fails_naming_the_rule(copy: Path, tmp_path: Path,
                                                       capsys) -> None:
    accuracy = _results(copy)["accuracy"]
    policy = _policy(tmp_path, f"rules:\n  accuracy: {{min: {accuracy + 0.001}}}\n"
                     "  carbon.emissions_kg: {max: 0.01}\n  loss: {max: 100}\n")
    assert main([str(copy), "--policy", policy]) == 1
    out = capsys.readouterr().out
    assert "FAIL  accuracy" in out and "PASS  loss" in out
    assert "failed: 2 of 3 rules (accuracy, carbon.emissions_kg)" in out
    gate = _results(copy)["gate"]
    assert gate["passed"] is False and gate["failed"] == ["accuracy", "carbon.emissions_kg"]
    assert gate["rules"][1]["value"] is None  # carbon=off: not measured fails the bound
    assert "**failed** against" in (copy / "model_card.md").read_text()


def test_a_tampered_run_fails_the_lineage_rule(copy: Path, tmp_path: Path, capsys) -> None:
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "# edited\n")
    assert main([str(copy), "--policy", _policy(tmp_path, "rules:\n  lineage: verified\n")]) == 1
    rule = _results(copy)["gate"]["rules"][0]
    assert rule["passed"] is False and rule["note"].startswith("config.yaml: sha256")


def test_a_key_the_record_lacks_is_exit_2_and_nothing_written(copy: Path, tmp_path: Path,
                                                              capsys) -> None:
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    policy = _policy(tmp_path, "rules:\n  accuracy: {min: 0.5}\n  privacy.epsilonn: {max: 8}\n")
    assert main([str(copy), "--policy", policy]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"fedlab-gate: error: {policy}: rule 'privacy.epsilonn': the record has no key "
        "'privacy.epsilonn' (it has: mode, unit, epsilon, delta, accountant)\n"
    )
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  accuracy: {above: 1}\n", "rule 'accuracy': unknown bound above"),
        ("rules:\n  accuracy: {min: 0.9, max: 0.5}\n", "min 0.9 is above max 0.5"),
        ("rules:\n  accuracy: {min: high}\n", "'min' must be a number"),
        ("rules:\n  lineage: yes please\n", "rule 'lineage': allowed value is 'verified'"),
        ("rules:\n  status: {min: 1}\n", "rule 'status': bounds need a number"),
        ("rules: [accuracy]\n", "a policy is a mapping with 'rules:"),
        ("rules:\n  accuracy: {min: 1}\nrulez: {}\n", "unknown key 'rulez'"),
        ("rules: {a: [\n", "not YAML"),
    ],
)
def test_a_malformed_policy_is_one_line_and_exit_2(copy: Path, tmp_path: Path, capsys,
                                                   text: str, message: str) -> None:
    assert main([str(copy), "--policy", _policy(tmp_path, text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedlab-gate: error: ") and message in err[0]
    assert "gate" not in _results(copy)


def test_a_missing_policy_or_run_is_exit_2(copy: Path, tmp_path: Path, capsys) -> None:
    assert main([str(copy), "--policy", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: cannot read the policy" in capsys.readouterr().err
    policy = _policy(tmp_path, "rules:\n  accuracy: {min: 0}\n")
    assert main([str(tmp_path / "nowhere"), "--policy", policy]) == 2
    assert main([str(copy)]) == 2  # --policy is required


def test_the_shipped_release_policy_is_found_by_name(copy: Path, capsys) -> None:
    # carbon=off and no DP: its emissions and epsilon rules fail, the rest pass
    assert main([str(copy), "--policy", "release"]) == 1
    gate = _results(copy)["gate"]
    assert gate["policy"].endswith("policies/release.yaml")
    assert gate["failed"] == ["privacy.epsilon", "carbon.emissions_kg"]


def test_a_tracked_run_gets_the_verdict_as_a_tag(copy: Path, tmp_path: Path, monkeypatch,
                                                 capsys) -> None:
    calls = []
    fake = types.ModuleType("fedlab.trackers.tracking.mlflow")
    fake.tag_run = lambda section, tags: calls.append((section, tags))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fedlab.trackers.tracking.mlflow", fake)
    results = _results(copy)
    results["tracking"] = {"backend": "mlflow", "run_id": "abc123"}
    (copy / "results.json").write_text(json.dumps(results))
    assert main([str(copy), "--policy", _policy(tmp_path, "rules:\n  loss: {max: 100}\n")]) == 0
    assert calls == [({"backend": "mlflow", "run_id": "abc123"}, {"fedlab.gate": "passed"})]


def test_lookup_follows_dots_and_list_items(tmp_path: Path) -> None:
    run = Run(tmp_path, {"a": {"b": [1, {"c": 2}], "3": "x"}, "v": None}, {}, [])
    assert lookup(run, "a.b[0]") == 1 and lookup(run, "a.b.1.c") == 2
    assert lookup(run, "a.b[-1].c") == 2 and lookup(run, "a.3") == "x"
    assert lookup(run, "v") is None  # present but null: a value, not a missing key
    with pytest.raises(MissingKey, match="a list of 2"):
        lookup(run, "a.b[5]")
    with pytest.raises(MissingKey, match="b, 3"):
        lookup(run, "a.d")
    assert lookup(run, "clients.evaluated") == 0  # derived from clients.csv (none here)


def test_compare_says_when_runs_share_data_and_partition(run_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for name in ("a", "b"):
        shutil.copytree(run_dir, root / name)
    notes = compare([root]).notes
    digest = _results(run_dir)["lineage"]
    assert any(n.startswith("all 2 runs share data and partition") and digest["dataset"][:12]
               in n for n in notes)
    results = _results(root / "b")
    results["lineage"]["partition"] = "f" * 64
    (root / "b" / "results.json").write_text(json.dumps(results))
    notes = compare([root]).notes
    assert any("runs differ in partition (same dataset)" in n and "ffffffffffff: b" in n
               for n in notes)
