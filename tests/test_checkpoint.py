"""Checkpoints hold the strategy's state and load without unpickling anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedlab.config.schema import StrategyConfig
from fedlab.fl.strategy import build_strategy
from fedlab.record import checkpoint


def _strategy(target: str, **kwargs):
    return build_strategy(StrategyConfig(name="x", flower={"_target_": target, **kwargs}))


@pytest.mark.parametrize(("target", "attrs"), [
    ("flwr.serverapp.strategy.FedAdam", ("m_t", "v_t")),
    ("flwr.serverapp.strategy.FedYogi", ("m_t", "v_t")),
    ("flwr.serverapp.strategy.FedAdagrad", ("m_t", "v_t")),
])
def test_server_optimizer_moments_round_trip(tmp_path, target, attrs) -> None:
    strategy = _strategy(target)
    rng = np.random.default_rng(0)
    for attr in attrs:
        setattr(strategy, attr, {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)})
    arrays = ArrayRecord({"w": torch.ones(3, 4), "b": torch.zeros(4)})
    checkpoint.save(tmp_path, 7, arrays, strategy, {"privacy": None, "note": [1, 2]})
    saved = checkpoint.load(tmp_path)
    assert saved.server_round == 7 and saved.state == {"privacy": None, "note": [1, 2]}
    assert torch.equal(saved.model["w"], torch.ones(3, 4))
    fresh = _strategy(target)
    checkpoint.restore_strategy(fresh, saved.strategy, saved.layout)
    for attr in attrs:
        for key in ("w", "b"):
            assert np.array_equal(getattr(fresh, attr)[key], getattr(strategy, attr)[key])


def test_fedavgm_momentum_and_dp_clipping_norm(tmp_path) -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping

    inner = _strategy("flwr.serverapp.strategy.FedAvgM", server_momentum=0.9)
    inner.momentum_vector = [np.arange(4.0), np.ones((2, 2))]
    wrapped = DifferentialPrivacyServerSideAdaptiveClipping(
        inner, noise_multiplier=0.5, num_sampled_clients=5, clipped_count_stddev=1.0)
    wrapped.clipping_norm = 0.37
    checkpoint.save(tmp_path, 2, ArrayRecord({"w": torch.zeros(2)}), wrapped, {})
    saved = checkpoint.load(tmp_path)
    fresh = DifferentialPrivacyServerSideAdaptiveClipping(
        _strategy("flwr.serverapp.strategy.FedAvgM", server_momentum=0.9),
        noise_multiplier=0.5, num_sampled_clients=5, clipped_count_stddev=1.0)
    checkpoint.restore_strategy(fresh, saved.strategy, saved.layout)
    assert fresh.clipping_norm == 0.37
    assert all(np.array_equal(a, b) for a, b in
               zip(fresh.strategy.momentum_vector, inner.momentum_vector, strict=True))


def test_checkpoint_file_is_safetensors_only(tmp_path) -> None:
    checkpoint.save(tmp_path, 1, ArrayRecord({"w": torch.zeros(2)}),
                    _strategy("flwr.serverapp.strategy.FedAvg"), {})
    raw = (tmp_path / checkpoint.FILE).read_bytes()
    assert b"\x80\x04" not in raw[:16] and raw[8:9] == b"{"  # a JSON header, not a pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILE]  # atomic: no temp


def test_arrayrecord_state_round_trips(tmp_path) -> None:
    """An ArrayRecord attribute (a DP wrapper's current model, say) comes back as one."""
    strategy = _strategy("flwr.serverapp.strategy.FedAvg")
    strategy.current_arrays = ArrayRecord({"w": torch.arange(4.0)})
    checkpoint.save(tmp_path, 3, ArrayRecord({"w": torch.zeros(4)}), strategy, {})
    saved = checkpoint.load(tmp_path)
    fresh = _strategy("flwr.serverapp.strategy.FedAvg")
    checkpoint.restore_strategy(fresh, saved.strategy, saved.layout)
    assert isinstance(fresh.current_arrays, ArrayRecord)
    assert np.array_equal(fresh.current_arrays["w"].numpy(), np.arange(4.0))


def test_the_record_csvs_written_round_by_round_equal_one_write_of_every_row(tmp_path) -> None:
    """RunRecord serializes only each round's new rows (the text of earlier ones is kept):
    after many rounds, and after a resume that drops the later ones, rounds.csv and
    clients.csv are byte for byte what writing all their rows at once gives."""
    from fedlab.record.run_dir import RunRecord, csv_text

    columns, client_columns = ["round", "central_accuracy", "note"], ["round", "client", "x"]
    record = RunRecord(tmp_path, columns, client_columns)
    record.start("{}", {})
    rounds, clients = [], []
    for r in range(1, 151):  # past the 64 chunks that are joined into one
        row = {"round": r, "central_accuracy": r / 7, "note": "a, \"quoted\"" if r % 5 else None}
        rows = [{"round": r, "client": c, "x": c * 0.1} for c in range(r % 4)]
        record.add_round(row, rows)
        rounds.append(row)
        clients.extend(rows)
        if r in (1, 64, 65, 150):
            assert (tmp_path / "rounds.csv").read_text() == csv_text(rounds, columns)
            assert (tmp_path / "clients.csv").read_text() == csv_text(clients, client_columns)
    resumed = RunRecord.resume(tmp_path, 100, columns, client_columns)
    resumed.add_round({"round": 101, "central_accuracy": 0.5}, [{"round": 101, "client": 0}])
    text = (tmp_path / "rounds.csv").read_text().splitlines()
    assert len(text) == 102 and text[-1] == "101,0.5," and text[100].startswith("100,")
    assert (tmp_path / "clients.csv").read_text().splitlines()[-1] == "101,0,"
