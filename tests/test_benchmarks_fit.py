"""The benchmark fits (benchmarks/ridge_fit.py, benchmarks/peer_fit_torch.py) on tiny simulated
stores: they run, write metrics.json with twin's score keys, and the scores are finite."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.downsample import block_average, downsample_sessions
from twin.cli import main
from twin.data.loader import load_session

ROOT = Path(__file__).resolve().parents[1]
SCORE_KEYS = {"tier", "session", "single_trial_correlation", "correlation_to_average", "feve", "n_neurons", "per_neuron"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_fit")
    paths = []
    for seed, neurons in ((0, 8), (1, 6)):
        path = root / f"s{seed}.zarr"
        args = ["simulate", str(path), "--neurons", str(neurons), "--train-images", "60", "--test-images", "4"]
        assert main([*args, "--repeats", "2", "--size", "20x24", "--seed", str(seed)]) == 0
        paths.append(path)
    return paths


def run_script(name: str, *args) -> dict:
    """Run benchmarks/<name> with ``args`` (the last two: --out DIR) and return its metrics.json."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((Path(args[-1]) / "metrics.json").read_text())


def check_scores(result: dict, n_neurons: int) -> None:
    assert SCORE_KEYS <= set(result)
    assert result["tier"] == "test" and result["n_neurons"] == n_neurons
    per_neuron = result["per_neuron"]["single_trial_correlation"]
    assert len(per_neuron) == n_neurons and all(math.isfinite(r) for r in per_neuron)
    assert math.isfinite(result["single_trial_correlation"])


def test_block_average_means_each_block():
    images = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    out = block_average(images, 2)
    assert out.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(out[1, 1, 2, 0], images[1, 2:4, 4:6, 0].mean())


def test_downsample_sessions_standardizes_train_images(stores):
    data = load_session(stores[0])
    downsample_sessions([data], 2)
    train = data.images[data.tier == "train"]
    assert data.images.shape[1:] == (10, 12, 1)
    np.testing.assert_allclose([train.mean(), train.std()], [0, 1], atol=1e-4)


def test_ridge_fit_writes_both_baselines(stores, tmp_path):
    metrics = run_script("ridge_fit.py", stores[0], "--downsample", "2", "--out", tmp_path / "ridge")
    assert metrics["image_shape"] == [10, 12, 1]
    for name in ("pixels", "gabor"):
        check_scores(metrics[name], 8)
        assert metrics[name]["mean_test_correlation"] == metrics[name]["single_trial_correlation"]
        assert metrics[name]["n_features"] > 0 and len(metrics[name]["penalties"]) == 8
        assert metrics[name]["wall_s"] > 0 and metrics[name]["cpu_s"] > 0


@pytest.mark.skipif(importlib.util.find_spec("neuralpredictors") is None, reason="neuralpredictors not installed")
def test_peer_fit_two_sessions(stores, tmp_path):
    out = tmp_path / "peer"
    metrics = run_script("peer_fit_torch.py", *stores, "--epochs", "2", "--threads", "1", "--out", out)
    assert [s["n_neurons"] for s in metrics["sessions"]] == [8, 6]
    for result, n in zip(metrics["sessions"], (8, 6)):
        check_scores(result, n)
    assert 1 <= metrics["epochs"] <= 2 and metrics["threads"] == 1
    assert math.isfinite(metrics["mean_test_correlation"]) and metrics["cpu_s"] > 0
    assert {"torch", "neuralpredictors", "twin"} <= set(metrics["versions"])
