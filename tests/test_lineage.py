"""Lineage: the hashes a run records are those of its files and data (recomputed here with
hashlib and numpy), ``fedlab-lineage`` verifies a clean run, and names the file when the
partition, the config, the checkpoint, a result or the lineage file itself was changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedlab.config.errors import ConfigError
from fedlab.config.experiment import Experiment
from fedlab.lineage_cli import main
from fedlab.record import lineage

SMALL = ("dataset=iris", "num_clients=3", "num_rounds=2", "simulation=inprocess", "carbon=off")
STAGES = ["dataset", "partition", "config", "code", "checkpoint", "model", "metrics", "results"]


@pytest.fixture()
def run_dir(small_run: Path) -> Path:
    return small_run


@pytest.fixture()
def copy(small_run_copy: Path) -> Path:
    return small_run_copy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_record_holds_the_chain_of_its_files_and_data(compose_cfg, run_dir: Path) -> None:
    doc = json.loads((run_dir / "lineage.json").read_text())
    stages = {s["stage"]: s for s in doc["stages"]}
    assert list(stages) == STAGES
    for name in ("config.yaml", "partition.json", "checkpoint.safetensors", "model.safetensors"):
        recorded = next(s["files"][name] for s in doc["stages"] if name in s.get("files", {}))
        assert recorded == _sha(run_dir / name)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["lineage"]["digest"] == doc["digest"]
    assert results["lineage"]["model"] == _sha(run_dir / "model.safetensors")
    # each link hashes the previous link, the stage and its hash
    link = ""
    for stage in doc["stages"]:
        link = hashlib.sha256(f"{link}|{stage['stage']}|{stage['sha256']}".encode()).hexdigest()
        assert stage["chain"] == link
    assert doc["head"] == link
    # the dataset's arrays and the clients' indices, from the data prepared again here
    fed = Experiment.from_config(compose_cfg(*SMALL)).load_data()
    x = np.ascontiguousarray(fed.pool.x)
    expected_x = hashlib.sha256(f"{x.dtype.str}|{list(x.shape)}|".encode() + x.tobytes())
    assert stages["dataset"]["arrays"]["pool.x"]["sha256"] == expected_x.hexdigest()
    assert stages["dataset"]["arrays"]["test.y"]["shape"] == [len(fed.test.y)]
    clients = json.loads((run_dir / "partition.json").read_text())["clients"]
    assert [c["train"] for c in clients] == [idx.tolist() for idx in fed.client_train]
    assert [c["test"] for c in clients] == [idx.tolist() for idx in fed.client_test]
    # the code: the commit and, with uncommitted changes, a hash of the diff
    versions = results["versions"]
    assert stages["code"]["git_commit"] == versions["git_commit"]
    if versions["git_dirty"]:
        assert len(versions["git_diff_sha256"]) == 64
    # the results' values, one by one
    assert stages["results"]["values"]["accuracy"] == lineage.value_sha256(results["accuracy"])
    # and the model card quotes the digest
    assert lineage.card_digest_line(doc["digest"]) in (run_dir / "model_card.md").read_text()


def test_a_clean_run_verifies(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "-> partition" in out and "-> model" in out
    assert "fedlab-lineage: verified: 6 files" in out
    assert main([str(run_dir), "--data"]) == 0  # the data re-derived from config.yaml


@pytest.mark.parametrize("name", ["partition.json", "config.yaml", "checkpoint.safetensors",
                                  "model.safetensors", "clients.csv"])
def test_a_changed_file_is_named(copy: Path, name: str, capsys) -> None:
    path = copy / name
    data = bytearray(path.read_bytes())
    data[-2] ^= 1  # one bit of the file's end (a digit, a tensor byte)
    path.write_bytes(bytes(data))
    assert main([str(copy)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedlab-lineage: error: {name}: sha256 ")


def test_a_missing_model_is_named(copy: Path, capsys) -> None:
    (copy / "model.safetensors").unlink()
    assert main([str(copy)]) == 1
    assert "error: model.safetensors: missing" in capsys.readouterr().err


def test_an_edited_result_is_named(copy: Path, capsys) -> None:
    results = json.loads((copy / "results.json").read_text())
    results["accuracy"] = 0.999
    (copy / "results.json").write_text(json.dumps(results))
    assert main([str(copy)]) == 1
    assert "error: results.json: 'accuracy' changed" in capsys.readouterr().err


def test_an_edited_lineage_file_is_detected(copy: Path, capsys) -> None:
    path = copy / "lineage.json"
    doc = json.loads(path.read_text())
    # a hand edit: point the partition at a tampered file's hash
    (copy / "partition.json").write_text((copy / "partition.json").read_text() + " ")
    doc["stages"][1]["files"]["partition.json"] = _sha(copy / "partition.json")
    path.write_text(json.dumps(doc))
    assert main([str(copy)]) == 1
    assert "error: lineage.json: its content no longer matches its own digest" in (
        capsys.readouterr().err
    )
    # ... and with the digest recomputed too: results.json's copy of it disagrees
    doc["digest"] = lineage.value_sha256({k: v for k, v in doc.items() if k != "digest"})
    path.write_text(json.dumps(doc))
    assert main([str(copy)]) == 1
    assert "lineage.json: digest" in capsys.readouterr().err
    path.write_text("{ not json")
    assert main([str(copy)]) == 1
    assert "error: lineage.json: malformed" in capsys.readouterr().err
    path.unlink()
    assert main([str(copy)]) == 1
    assert "error: lineage.json: missing" in capsys.readouterr().err


def test_a_card_of_another_record_is_detected(copy: Path, capsys) -> None:
    card = copy / "model_card.md"
    digest = json.loads((copy / "lineage.json").read_text())["digest"]
    card.write_text(card.read_text().replace(digest, "0" * 64))
    assert main([str(copy)]) == 1
    assert "error: model_card.md: quotes lineage digest 000000000000" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(copy: Path, tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("fedlab-lineage: error: ")
    (copy / "lineage.json").unlink()
    results = json.loads((copy / "results.json").read_text())
    del results["lineage"]
    (copy / "results.json").write_text(json.dumps(results))
    assert main([str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no lineage recorded" in err[0]
    assert main([]) == 2


def test_resume_refuses_other_data(compose_cfg, copy: Path) -> None:
    fed = Experiment.from_config(compose_cfg(*SMALL)).load_data()
    lineage.check_resumable(copy, fed)  # its own data: fine
    doc = json.loads((copy / "partition.json").read_text())
    doc["clients"][0]["train"] = doc["clients"][0]["train"][1:]
    (copy / "partition.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"differ from partition\.json"):
        lineage.check_resumable(copy, fed)


def test_array_hash_sees_dtype_shape_and_layout() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert lineage.array_sha256(a) == lineage.array_sha256(np.asfortranarray(a))
    assert lineage.array_sha256(a) != lineage.array_sha256(a.reshape(3, 2))
    assert lineage.array_sha256(a) != lineage.array_sha256(a.astype(np.float64))
    assert lineage.value_sha256({"b": 1, "a": float("nan")}) == lineage.value_sha256(
        {"a": None, "b": 1}
    )


def test_a_resumed_run_writes_its_lineage_again(compose_cfg, copy: Path, capsys) -> None:
    """Extending the run by a round (``resume=`` with more rounds) rewrites the chain: the new
    checkpoint and model, the code that resumed it, and it verifies again."""
    from fedlab.run import run_experiment

    before = json.loads((copy / "lineage.json").read_text())
    run_experiment(compose_cfg(f"resume={copy}", "num_rounds=3"), copy, ["num_rounds=3"])
    doc = json.loads((copy / "lineage.json").read_text())
    stages = {s["stage"]: s for s in doc["stages"]}
    assert stages["checkpoint"]["round"] == 3
    assert stages["model"]["sha256"] == _sha(copy / "model.safetensors")
    assert stages["model"]["sha256"] != before["stages"][5]["sha256"]
    assert len(stages["code"]["resumed_with"]) == 1
    assert stages["partition"]["sha256"] == before["stages"][1]["sha256"]  # its own data
    assert main([str(copy)]) == 0
