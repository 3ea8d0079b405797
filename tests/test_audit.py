"""The audit tracker: drift, the Fairlearn fairness audit and Captum explanations, each checked
against an independent calculation from the saved model and the data (one small run shared by
the module), plus unit checks on hand-made arrays and every kind of bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError
from fedlab.fl.model import build_model
from fedlab.record.reader import load_run
from fedlab.record.run_dir import load_model, read_csv
from fedlab.trackers.audit import explain as ex
from fedlab.trackers.audit.drift import label_histogram, total_variation, update_distance
from fedlab.trackers.audit.report import run_panels
from fedlab.trackers.audit.tracker import AuditTracker
from fedlab.trackers.base import RoundContext

EXE = Path(sys.executable).parent
# 4 clients, 2 sampled per round (so the trained labels shift), clients 0 and 1 placed in
# their own regions and 2-3 in a third, with carbon measurement off (the groups stay)
ARGS = (
    "dataset=digits", "num_clients=4", "num_rounds=2", "simulation=inprocess", "carbon=off",
    "strategy.fraction_train=0.5", "carbon.regions={0:FRA,1:DEU,default:POL}",
)
REGIONS = {0: "FRA", 1: "DEU", 2: "POL", 3: "POL"}


@pytest.fixture(scope="module")
def run(compose_cfg, tmp_path_factory):
    """The run, and what an independent check needs: the experiment, its data, the model."""
    from fedlab.run import run_experiment

    run_dir = tmp_path_factory.mktemp("audit") / "run"
    cfg = compose_cfg(*ARGS)
    run_experiment(cfg, run_dir, list(ARGS))
    exp = Experiment.from_config(cfg)
    fed, _ = exp.prepare()
    model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    model.load_state_dict(load_model(run_dir / "model.safetensors"))
    model.eval()
    results = json.loads((run_dir / "results.json").read_text())
    return SimpleNamespace(dir=run_dir, exp=exp, fed=fed, model=model, results=results,
                           audit=results["audit"])


def _client_correct(run) -> dict[int, np.ndarray]:
    """Each client's per-example correctness on its local test split, by hand."""
    out = {}
    with torch.no_grad():
        for pid, index in enumerate(run.fed.client_test):
            x, y = run.fed.pool.x[index], run.fed.pool.y[index]
            out[pid] = run.model(torch.from_numpy(x)).argmax(1).numpy() == y
    return out


def test_fairness_by_group_equals_accuracy_by_hand(run) -> None:
    fair = run.audit["fairness"]
    correct = _client_correct(run)
    by_client = fair["by"]["client"]["by_group"]
    for pid, hits in correct.items():
        assert by_client[str(pid)]["examples"] == len(hits)
        assert math.isclose(by_client[str(pid)]["accuracy"], hits.mean(), rel_tol=1e-12)
    # the clients evaluated the same final model in round 2: their reported accuracy agrees
    evaluated = [r for r in read_csv(run.dir / "clients.csv")
                 if r["round"] == "2" and r["phase"] == "evaluate" and r["status"] == "ok"]
    assert len(evaluated) == 4
    for row in evaluated:
        assert math.isclose(float(row["accuracy"]), by_client[row["client"]]["accuracy"],
                            rel_tol=1e-9)
    everything = np.concatenate(list(correct.values()))
    assert math.isclose(fair["overall"]["accuracy"], everything.mean(), rel_tol=1e-12)
    accuracies = sorted(h.mean() for h in correct.values())
    assert math.isclose(fair["worst_10pct_client_accuracy"]["mean"], accuracies[0])  # ceil(0.4)
    # regions from the explicit placement: pooled examples of the region's clients
    region = fair["by"]["region"]
    expected = {
        code: np.concatenate([correct[p] for p, c in REGIONS.items() if c == code]).mean()
        for code in set(REGIONS.values())
    }
    assert set(region["by_group"]) == set(expected)
    for code, value in expected.items():
        assert math.isclose(region["by_group"][code]["accuracy"], value, rel_tol=1e-12)
    values = list(expected.values())
    assert math.isclose(region["difference"]["accuracy"], max(values) - min(values),
                        abs_tol=1e-12)
    assert math.isclose(region["ratio"]["accuracy"], min(values) / max(values), rel_tol=1e-12)
    # dominant training label of each client, by hand
    dominant = {pid: str(np.bincount(run.fed.pool.y[idx], minlength=10).argmax())
                for pid, idx in enumerate(run.fed.client_train)}
    groups = fair["by"]["dominant_label"]["by_group"]
    assert set(groups) == set(dominant.values())
    assert sum(g["examples"] for g in groups.values()) == len(everything)
    assert fair["sensitive_column"] is None and "none of fedlab's datasets" in fair[
        "sensitive_column_note"]


def test_update_distance_on_hand_made_arrays() -> None:
    rng = np.random.default_rng(1)
    w = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5)}
    v = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5)}
    expected = np.sqrt(sum(np.sum((w[k].astype(float) - v[k].astype(float)) ** 2) for k in w))
    assert math.isclose(update_distance(w, v), expected, rel_tol=1e-12)
    assert math.isnan(update_distance({"a": w["a"]}, v))  # different entries: not comparable

    # end_round adds the client column to the train row and the round's mean and max
    glob = ArrayRecord({k: Array(np.asarray(x)) for k, x in v.items()})
    other = {k: x + 1.0 for k, x in w.items()}
    updates = {0: {"arrays": ArrayRecord({k: Array(np.asarray(x)) for k, x in w.items()})},
               1: {"arrays": ArrayRecord({k: Array(np.asarray(x)) for k, x in other.items()})}}
    rows = [{"client": 0, "phase": "train", "status": "ok"},
            {"client": 1, "phase": "train", "status": "ok"},
            {"client": 0, "phase": "evaluate", "status": "ok"}]
    tracker = AuditTracker(exp=None, fed=None, run_dir=Path("."))  # type: ignore[arg-type]
    ctx = RoundContext(1, SimpleNamespace(updates=updates, rows=rows), None, {}, glob)
    columns = tracker.end_round(ctx)
    d1 = update_distance(other, v)
    assert rows[0]["update_distance"] == pytest.approx(expected, rel=1e-9)
    assert rows[1]["update_distance"] == pytest.approx(d1, rel=1e-9)
    assert "update_distance" not in rows[2]
    assert columns["update_distance_mean"] == pytest.approx((expected + d1) / 2, rel=1e-9)
    assert columns["update_distance_max"] == pytest.approx(max(expected, d1), rel=1e-9)
    assert total_variation(np.array([0.5, 0.5, 0]), np.array([0, 0.5, 0.5])) == 0.5
    counts = np.array([[2, 0], [1, 1]])
    assert label_histogram(counts, [0, 1]).tolist() == [0.75, 0.25]


def test_drift_columns_in_the_record(run) -> None:
    clients = read_csv(run.dir / "clients.csv")
    rounds = {r["round"]: r for r in read_csv(run.dir / "rounds.csv")}
    trained: dict[str, list[int]] = {}
    for rnd in ("1", "2"):
        train = [r for r in clients if r["round"] == rnd and r["phase"] == "train"
                 and r["status"] == "ok"]
        assert len(train) == 2 and all(float(r["update_distance"]) > 0 for r in train)
        distances = [float(r["update_distance"]) for r in train]
        assert float(rounds[rnd]["update_distance_mean"]) == pytest.approx(np.mean(distances))
        assert float(rounds[rnd]["update_distance_max"]) == pytest.approx(max(distances))
        trained[rnd] = [int(r["client"]) for r in train]
    assert rounds["1"]["label_shift_tv"] == ""  # nothing to compare round 1 with

    def hist(ids: list[int]) -> np.ndarray:
        counts = sum(np.bincount(run.fed.pool.y[run.fed.client_train[p]], minlength=10)
                     for p in ids)
        return counts / counts.sum()

    tv = 0.5 * np.abs(hist(trained["2"]) - hist(trained["1"])).sum()
    assert float(rounds["2"]["label_shift_tv"]) == pytest.approx(tv, abs=1e-12)
    drift = run.audit["drift"]
    assert drift["update_distance"]["client_rounds"] == 4
    assert drift["label_shift_tv"]["rounds"] == 1


def test_integrated_gradients_are_complete(run) -> None:
    x = torch.from_numpy(run.fed.test.x[:40])
    y = torch.from_numpy(run.fed.test.y[:40])
    base = torch.zeros_like(x[:1])
    attr, delta = ex.integrated_gradients(run.model, x, y, base, 32)
    with torch.no_grad():
        fx = run.model(x).gather(1, y[:, None])[:, 0]
        fb = run.model(base)[0, y]
    change = (fx - fb).numpy().astype(float)
    total = attr.reshape(len(x), -1).sum(1).numpy().astype(float)
    # Captum's delta is exactly what is left of completeness, and it is small
    assert np.allclose(total - change, delta.numpy(), atol=1e-4)
    assert np.abs(total - change).max() <= 0.02 * np.abs(change).max() + 1e-4
    # the recorded per-class means are those of the recorded sample
    saved = ex.load_attributions(run.dir / ex.ATTRIBUTIONS)
    index = ex.sample(len(run.fed.test.y), 200, run.exp.cfg.seed)
    xs, ys = run.fed.test.x[index], run.fed.test.y[index]
    all_attr, _ = ex.integrated_gradients(run.model, torch.from_numpy(xs), torch.from_numpy(ys),
                                          torch.zeros_like(torch.from_numpy(xs[:1])), 32)
    c = int(ys[0])
    assert saved["class_count"][c] == (ys == c).sum()
    assert np.allclose(saved["class_mean"][c], all_attr.numpy()[ys == c].mean(0), atol=1e-5)
    recorded = run.audit["explanations"]
    assert recorded["examples"] == len(ys) and recorded["max_abs_delta"] < 0.05


def test_client_attribution_distances(run) -> None:
    saved = ex.load_attributions(run.dir / ex.ATTRIBUTIONS)
    clients = run.audit["explanations"]["across_clients"]
    profiles, glob = saved["client_profiles"].astype(float), saved["global_profile"].astype(float)
    assert saved["client_ids"].tolist() == [0, 1, 2, 3]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return 1 - float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    for pid, profile in zip(saved["client_ids"], profiles, strict=True):
        assert clients["from_global"][str(pid)] == pytest.approx(cosine(profile, glob), abs=1e-6)
    pairs = [cosine(profiles[i], profiles[j]) for i in range(4) for j in range(i + 1, 4)]
    assert clients["mean_pairwise"] == pytest.approx(np.mean(pairs), abs=1e-6)


def test_card_picture_and_panels(run) -> None:
    from matplotlib.image import imread

    card = (run.dir / "model_card.md").read_text()
    for title in ("## Fairness audit (Fairlearn MetricFrame)",
                  "## Explanations (Integrated Gradients)", "## Drift across rounds"):
        assert title in card
    assert "![Mean attribution per class](attributions.png)" in card
    assert "| client's region (carbon.regions) | 3 |" in card
    assert imread(run.dir / "attributions.png").shape[2] in (3, 4)
    panels = run_panels(load_run(run.dir))
    assert [p.title for p in panels] == ["Update distance from the aggregate",
                                         "Label shift between rounds"]
    rounds = read_csv(run.dir / "rounds.csv")
    assert panels[0].series[0][2] == tuple(float(r["update_distance_mean"]) for r in rounds[1:])


def test_models_that_cannot_be_explained_are_skipped(run) -> None:
    from fedlab.fl.model import MLP
    from sandbox_quantum.torch_model import HybridQNN

    assert "quantum" in ex.skip_reason(HybridQNN)
    assert ex.skip_reason(MLP) is None

    class Hard(torch.nn.Module):  # argmax: no gradient reaches the input
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            one_hot = torch.nn.functional.one_hot(x.flatten(1).argmax(1), 10).float()
            return one_hot.detach()

    options = dict(steps=4, max_examples=5, client_examples=2, max_clients=2, baseline="zeros",
                   seed=0)
    skipped = ex.explain(Hard(), run.fed, **options)
    assert skipped["skipped"].startswith("Integrated Gradients failed on this model")
    broken = build_model(run.exp.cfg.model, run.fed.input_shape, run.fed.num_classes)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    assert "non-finite" in ex.explain(broken, run.fed, **options)["skipped"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trackers.audit.ig_steps=0", "trackers.audit.ig_steps"),
        ("trackers.audit.max_examples=-1", "trackers.audit.max_examples"),
        ("trackers.audit.baseline=noise", "trackers.audit.baseline"),
        ("trackers.audit.fairness=maybe", "trackers.audit.fairness"),
        ("+trackers.audit.steps=3", "trackers.audit.steps"),
        ("carbon.regions={0:XXX,default:FRA}", "carbon.regions"),  # checked with carbon=off too
    ],
)
def test_bad_options_name_their_key(compose_cfg, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_cfg("carbon=off", override))
    assert err.value.key == key


def test_bad_option_on_the_command_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [str(EXE / "fedlab-run"), "trackers.audit.ig_steps=0", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["fedlab-run: error: trackers.audit.ig_steps: must be an integer in "
                     "1..1000, got 0"]
    assert not run_dir.exists()


def test_quantum_model_is_audited_but_not_explained(compose_cfg, tmp_path: Path) -> None:
    exp = Experiment.from_config(compose_cfg("carbon=off", "model=qnn", "dataset=iris",
                                             "dataset.binary=true"))
    fed, _ = exp.prepare()
    model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    tracker = AuditTracker(exp, fed, tmp_path)
    tracker.last = (3, ArrayRecord(model.state_dict()))
    section = tracker.close()
    assert section["model"] == "global model of round 3"
    assert "quantum" in section["explanations"]["skipped"]
    assert section["fairness"]["clients"] == sum(1 for idx in fed.client_test if len(idx))
    assert not (tmp_path / ex.ATTRIBUTIONS).exists()


def test_drift_state_survives_a_checkpoint() -> None:
    from fedlab.trackers.audit.drift import DriftLedger

    ledger = DriftLedger()
    ledger.end_round(1, {0: 1.0, 1: 3.0}, np.array([0.5, 0.5]))
    restored = DriftLedger()
    restored.load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert restored.summary() == ledger.summary()
    columns = restored.end_round(2, {1: 2.0}, np.array([1.0, 0.0]))
    assert columns == {"update_distance_mean": 2.0, "update_distance_max": 2.0,
                       "label_shift_tv": 0.5}
    assert restored.summary()["update_distance"]["by_client_mean"] == {"0": 1.0, "1": 2.5}


def _trackers_with_final_model(run, run_dir: Path, ahead: bool = True):
    """The run's trackers built afresh over ``run_dir``, the audit's closer forked ``ahead``
    (as when the rounds start), and then given the run's final model and a round of drift."""
    from fedlab.trackers.base import RunContext
    from fedlab.trackers.registry import Trackers

    run_dir.mkdir()
    trackers = Trackers.build(RunContext(run.exp, run.fed, run_dir))
    if ahead:
        trackers.fork_closer()
    audit = next(t for t in trackers if isinstance(t, AuditTracker))
    audit.last = (2, ArrayRecord(run.model.state_dict()))
    audit.ledger.end_round(1, {0: 1.0, 2: 3.0}, np.array([0.25, 0.75]))
    return trackers, audit


def test_the_audit_closed_in_a_child_is_the_one_closed_here(run, tmp_path: Path) -> None:
    """The audit closes in a child (``closes_apart``) forked before the rounds and sent the
    drift and the final model at the end, or forked at the end: its section is the one
    closing it here gives."""
    apart, _ = _trackers_with_final_model(run, tmp_path / "apart")
    assert apart._closer is not None
    late, _ = _trackers_with_final_model(run, tmp_path / "late", ahead=False)
    assert late._closer is None
    _, audit = _trackers_with_final_model(run, tmp_path / "here", ahead=False)
    child, at_close, own = apart.close()["audit"], late.close()["audit"], audit.close()
    assert child.pop("audit_s") > 0 and own.pop("audit_s") > 0 and at_close.pop("audit_s") > 0
    assert json.dumps(at_close, sort_keys=True) == json.dumps(own, sort_keys=True)
    assert child["model"] == "global model of round 2"
    assert child["drift"]["update_distance"]["by_client_mean"] == {"0": 1.0, "2": 3.0}
    assert json.dumps(child, sort_keys=True) == json.dumps(own, sort_keys=True)
    assert (tmp_path / "apart" / ex.ATTRIBUTIONS).read_bytes() == (
        tmp_path / "here" / ex.ATTRIBUTIONS
    ).read_bytes()


def test_a_closer_that_died_is_replaced_by_closing_here(run, tmp_path: Path, caplog) -> None:
    trackers, _ = _trackers_with_final_model(run, tmp_path / "run")
    assert trackers._closer is not None
    trackers._closer._process.kill()  # the OOM killer, say
    with caplog.at_level("WARNING", logger="fedlab"):
        section = trackers.close()["audit"]
    assert section["model"] == "global model of round 2" and "fairness" in section
    assert any("closing in a child failed" in r.getMessage() for r in caplog.records)
