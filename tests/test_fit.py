"""Fitting: plateau schedule, run directory, resume after kill -9, non-finite loss, devices, ensembles."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from twin import checkpoint
from twin.config import DataConfig, FitConfig, ModelConfig, RunConfig
from twin.data import loader
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.errors import RunError, TwinError
from twin.fit import Schedule, fit, plateau_step

# 72 train trials in 3 batches of 24 (divisible by the 4 test devices), 8 validation, 8 test.
CONFIG = RunConfig(
    data=DataConfig(batch_size=24),
    model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3),
    fit=FitConfig(max_epochs=6, learning_rate=0.01),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "sim.zarr"
    write_session(simulate(8, 80, 4, 2, size=(12, 16), seed=2), path)
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store):
    """An uninterrupted 6-epoch fit on all 4 devices: (run dir, metrics lines)."""
    run = tmp_path_factory.mktemp("runs") / "reference"
    fit(CONFIG, [store], run, progress=False)
    return run, read_metrics(run)


def read_metrics(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


METRICS = ("loss", "poisson", "regularizer", "validation_correlation", "learning_rate")


def assert_same_numbers(lines, expected, rtol, keys=METRICS):
    assert [line["epoch"] for line in lines] == [line["epoch"] for line in expected]
    for line, want in zip(lines, expected):
        for key in keys:
            assert line[key] == pytest.approx(want[key], rel=rtol, abs=1e-7), (line["epoch"], key)


def test_plateau_schedule_decays_restores_then_stops():
    fit_config = FitConfig(learning_rate=0.01, patience=2, max_lr_decays=1, lr_decay_factor=0.5, tolerance=0.01)
    schedule = Schedule(learning_rate=fit_config.learning_rate)
    actions = [plateau_step(schedule, s, e, fit_config) for e, s in enumerate([0.1, 0.2, 0.205, 0.1, 0.3], 1)]
    assert actions == ["improved", "improved", "wait", "decay", "improved"]
    assert schedule.learning_rate == 0.005 and schedule.best_epoch == 5
    assert [plateau_step(schedule, 0.3, e, fit_config) for e in (6, 7)] == ["wait", "stop"]


def test_min_learning_rate_bounds_the_decay():
    fit_config = FitConfig(learning_rate=0.01, patience=1, min_learning_rate=0.004, lr_decay_factor=0.3)
    schedule = Schedule(learning_rate=0.01, best_score=1.0)
    assert plateau_step(schedule, 0.5, 1, fit_config) == "decay"
    assert schedule.learning_rate == 0.004
    assert plateau_step(schedule, 0.5, 2, fit_config) == "stop"


def test_run_directory(reference):
    run, lines = reference
    assert [line["epoch"] for line in lines] == list(range(1, 7))
    assert all(math.isfinite(line["loss"]) for line in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]
    for name in ("config.toml", "sessions.json", "fit_curves.png", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    best = max(lines, key=lambda line: line["validation_correlation"])
    assert summary["best_epoch"] == best["epoch"]
    assert checkpoint.latest_step(run / "checkpoints" / "best") == best["epoch"]
    assert checkpoint.latest_step(run / "checkpoints" / "latest") == 6
    assert summary["sessions"][0]["validation"]["single_trial_correlation"] == pytest.approx(
        best["validation_correlation"], abs=1e-5
    )


def test_refuses_to_overwrite_a_run(reference, store):
    with pytest.raises(RunError, match="--resume"):
        fit(CONFIG, [store], reference[0], progress=False)


def test_one_device_gives_the_same_losses(tmp_path, store, reference):
    assert len(jax.devices()) == 4
    fit(CONFIG, [store], tmp_path / "one", devices=jax.devices()[:1], progress=False)
    lines = read_metrics(tmp_path / "one")
    # Splitting a batch changes the order of its float32 sums: the first epochs agree to rounding,
    # and Adam then amplifies the rounding (to ~1e-4 in the loss, ~1% in the correlation of 8
    # validation trials, by epoch 6).
    assert_same_numbers(lines[:2], reference[1][:2], rtol=1e-5)
    assert_same_numbers(lines, reference[1], rtol=1e-3, keys=("loss", "poisson", "regularizer"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, store, monkeypatch):
    from twin.fit import epoch_seed

    original = loader.batches
    poisoned = epoch_seed(CONFIG, 2)

    def batches(sessions, tier, batch_size, *, shuffle, seed=0, drop_last=False, clip_frames=None):
        for batch in original(sessions, tier, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last):
            if seed == poisoned:
                batch = dataclasses.replace(batch, responses=batch.responses * np.nan)
            yield batch

    monkeypatch.setattr(loader, "batches", batches)
    with pytest.raises(TwinError, match="not finite.*epoch 2.*epoch 1"):
        fit(CONFIG, [store], tmp_path / "run", progress=False)
    assert checkpoint.latest_step(tmp_path / "run" / "checkpoints" / "latest") == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_small_recordings_train_on_smaller_batches():
    from twin.fit import train_batch_size

    data = DataConfig(batch_size=128, min_steps_per_epoch=20)
    assert train_batch_size(data, [4473]) == 128  # a Sensorium session keeps the published batch
    assert train_batch_size(data, [640]) == 32  # Cowley V4: 20 steps an epoch instead of 5
    assert train_batch_size(data, [533]) == 24  # a multiple of 8, so it splits over devices
    assert train_batch_size(data, [60]) == 8  # never below 8 trials
    assert train_batch_size(data, [640, 960]) == 80  # sessions fitted together count together
    assert train_batch_size(DataConfig(batch_size=16), [640]) == 16  # batch_size stays the maximum
