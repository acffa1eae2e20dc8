"""The benchmark fits (benchmarks/ridge_fit.py, benchmarks/peer_fit_torch.py) on tiny simulated
stores: they run, write metrics.json with twin's score keys, and the scores are finite; and
benchmarks/fit_time.py's combination of both sides' histories, and its --quick run."""

import importlib.util
import json
import math
import os
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


def side(epochs: list[tuple[float, float]], test: float, checkpoint: float = 0.0) -> dict:
    """A fit_time side result from (validation r, wall s) per epoch; CPU = 1.5 x wall."""
    history = [
        {"epoch": i + 1, "validation_correlation": r, "wall_s": wall, "cpu_s": 1.5 * wall,
         "train_s": 10.0 + i, "validation_s": 2.0, "checkpoint_s": checkpoint}
        for i, (r, wall) in enumerate(epochs)
    ]
    return {"epochs": len(epochs), "max_epochs": 4, "stopped": "max_epochs", "history": history,
            "test_correlation": test, "wall_s": epochs[-1][1] + 5, "cpu_s": 2 * epochs[-1][1]}


def test_fit_time_combine_times_both_sides_to_the_lower_best():
    from benchmarks.fit_time import combine, markdown

    twin = side([(0.1, 20), (0.25, 30), (0.3, 40), (0.29, 50)], 0.28, checkpoint=0.5)
    peer = side([(0.05, 15), (0.2, 30), (0.26, 45), (0.24, 60)], 0.22)
    combined = combine({"twin": twin, "peer": peer})
    assert combined["target_validation_correlation"] == 0.26
    t, p = combined["sides"]["twin"], combined["sides"]["peer"]
    assert (t["epoch_to_target"], t["wall_s_to_target"], t["cpu_s_to_target"]) == (3, 40, 60)
    assert (p["epoch_to_target"], p["wall_s_to_target"]) == (3, 45)
    assert combined["wall_ratio"] == pytest.approx(45 / 40) and combined["cpu_ratio"] == pytest.approx(45 / 40)
    # Startup: the first epoch's wall seconds less its train, validation and checkpoint parts.
    assert t["startup_s"] == pytest.approx(20 - 10 - 2 - 0.5) and p["startup_s"] == pytest.approx(3)
    # Medians leave out the first epoch (twin compiles in it).
    assert t["epoch_train_s"] == 12 and t["first_epoch_train_s"] == 10
    table = markdown(combined)
    assert "Target validation r: 0.2600" in table and "| **wall s to the target** | **40** | **45** | 1.12x |" in table
    assert "| test single-trial r | 0.2800 | 0.2200 |  |" in table
    alone = combine({"twin": twin})
    assert alone["target_validation_correlation"] == 0.3 and "wall_ratio" not in alone
    assert "| epochs run | 4 |" in markdown(alone)


# Three processes (simulate, twin, peer) that import jax or torch and compile: ~50 CPU seconds.
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("neuralpredictors") is None, reason="neuralpredictors not installed")
def test_fit_time_quick_runs_both_sides(tmp_path):
    out = tmp_path / "fit_time"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fit_time.py"), "--out", str(out), "--quick"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    combined = json.loads((out / "fit_time.json").read_text())
    assert (out / "fit_time.md").read_text() in done.stdout
    for name in ("twin", "peer"):
        result = json.loads((out / f"{name}.json").read_text())
        walls = [line["wall_s"] for line in result["history"]]
        assert 1 <= result["epochs"] == len(walls) <= 2 and walls == sorted(walls) and walls[0] > 0
        assert all(line["cpu_s"] > 0 and line["train_s"] > 0 for line in result["history"])
        assert math.isfinite(result["test_correlation"]) and result["quick"]
        best = combined["sides"][name]["best_validation_correlation"]
        assert combined["target_validation_correlation"] <= best
        assert combined["sides"][name]["wall_s_to_target"] in walls
    assert json.loads((out / "peer.json").read_text())["glibc_tunables"]


def test_fit_time_refuses_a_missing_store(tmp_path):
    from benchmarks.fit_time import main as fit_time

    assert fit_time(["--out", str(tmp_path / "o"), "--store", str(tmp_path / "none.zarr")]) == 2
    assert not (tmp_path / "o").exists()
