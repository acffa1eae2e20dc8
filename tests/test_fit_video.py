"""twin fit and twin evaluate on a video session: clips in training, frames scored after the burn-in."""

import json

import numpy as np
import pytest

from twin import checkpoint
from twin.cli import main
from twin.config import DataConfig
from twin.data import simulate_video as sv
from twin.data.loader import load_session
from twin.data.store import write_session

CONFIG = """
[data]
clip_frames = 20
burn_in_frames = 10
[model]
core = "factorized3d"
core_layers = 1
core_channels = 4
input_kernel = 5
temporal_input_kernel = 5
readout_init = "random"
[fit]
max_epochs = 2
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_video")
    path = root / "v.zarr"
    write_session(sv.simulate(6, 12, 20, 2, frames=30, size=(12, 16), seed=2), path)
    (root / "c.toml").write_text(CONFIG)
    return path


def twin(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_scored_rows_are_the_recorded_frames_after_the_burn_in(store):
    data = load_session(store, DataConfig(burn_in_frames=10))
    trials = data.trials("test")
    ids, responses = data.scored(trials, data.responses[trials])
    assert responses.shape == (int((data.frame_count[trials] - 10).sum()), data.n_neurons)
    # The same frame of the same video has the same id: 20 videos x 2 repeats x 20 frames.
    assert len(np.unique(ids)) == 20 * 20 and np.isfinite(responses).all()


def test_fit_then_evaluate_scores_frames(store, capsys):
    root = store.parent
    code, out, err = twin(["fit", store, "--config", root / "c.toml", "--out", root / "run"], capsys)
    assert code == 0, err
    history = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    code, out, err = twin(["evaluate", root / "run", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert np.isfinite(result["single_trial_correlation"]) and np.isfinite(result["correlation_to_average"])
    assert 0 < result["ground_truth_ceiling"]["correlation_to_average"] <= 1
    assert len(result["per_neuron"]["single_trial_correlation"]) == 6


def test_image_core_on_a_video_store_is_one_line(store, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[data]\nburn_in_frames = 10\n")
    code, out, err = twin(["fit", store, "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "[model].core = 'stacked2d' reads single images" in err and "'factorized3d'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_burn_in_beyond_the_trials_is_one_line(store, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("burn_in_frames = 10", "burn_in_frames = 30"))
    code, out, err = twin(["fit", store, "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "[data].burn_in_frames = 30 leaves no frame to score" in err
    assert not (tmp_path / "run").exists()


def test_behavior_gain_is_fit_from_the_train_mean_behavior(store, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("readout_init", "behavior_gain = true\nreadout_init"))
    code, out, err = twin(["fit", store, "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    run = checkpoint.load_run(tmp_path / "run")
    data, gain = run.sessions[0], run.model.gains[0]
    train_mean = data.behavior[data.trials("train")].reshape(-1, data.behavior.shape[-1]).mean(0)
    np.testing.assert_allclose(gain.center[...], train_mean, rtol=1e-5)
    assert gain.weight[...].shape == (3, 6) and float(np.abs(gain.weight[...]).max()) > 0
    code, out, err = twin(["evaluate", tmp_path / "run", "--json"], capsys)
    assert code == 0 and np.isfinite(json.loads(out)["single_trial_correlation"]), err


def test_behavior_gain_without_behavior_is_one_line(tmp_path, capsys):
    path = tmp_path / "no_behavior.zarr"
    ds = sv.simulate(6, 12, 20, 2, frames=30, size=(12, 16), seed=2).drop_vars(["behavior", "behavior_var"])
    write_session(ds, path)
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("readout_init", "behavior_gain = true\nreadout_init"))
    code, out, err = twin(["fit", path, "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and f"{path.absolute()}: has no behavior variable for [model].behavior_gain = true" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
