"""Resume after kill -9 repeats the uninterrupted numbers; ensemble members train like twins."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

# The session and the uninterrupted reference fit are test_fit's module fixtures.
from test_fit import CONFIG, assert_same_numbers, read_metrics, reference, store  # noqa: F401
from twin import checkpoint
from twin.config import save_config
from twin.fit import fit


FIT_SCRIPT = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
from twin.config import load_config
from twin.fit import fit
fit(load_config(sys.argv[1]), [sys.argv[2]], sys.argv[3], progress=False)
"""


def test_resume_after_kill_reaches_the_same_numbers(tmp_path, store, reference):
    save_config(CONFIG, tmp_path / "config.toml")
    run = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        [sys.executable, "-c", FIT_SCRIPT, str(tmp_path / "config.toml"), store, str(run)], env=env
    )
    metrics_path = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoint.latest_step(run / "checkpoints" / "latest")
    assert killed_at is not None and killed_at < CONFIG.fit.max_epochs, "the run was not killed mid-way"

    fit(CONFIG, [store], run, resume=True, progress=False)
    assert_same_numbers(read_metrics(run), reference[1], rtol=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_validation_correlation"] == pytest.approx(
        json.loads((reference[0] / "summary.json").read_text())["best_validation_correlation"], rel=1e-6
    )


def test_ensemble_members_train_like_single_twins(tmp_path, store, reference):
    # Members of seeds 0 and 1; member 0 must follow the seed-0 reference (no decay in 2 epochs).
    pair = dataclasses.replace(CONFIG, fit=dataclasses.replace(CONFIG.fit, max_epochs=2, ensemble_size=2))
    fit(pair, [store], tmp_path / "pair", progress=False)
    lines = read_metrics(tmp_path / "pair")
    for line, want in zip(lines, reference[1][:2]):
        member_loss = line["member_loss"]
        assert member_loss[0] == pytest.approx(want["loss"], rel=1e-5)
        assert line["member_validation_correlation"][0] == pytest.approx(want["validation_correlation"], rel=1e-4)
        assert member_loss[1] != pytest.approx(member_loss[0], rel=1e-3)
    run = checkpoint.load_run(tmp_path / "pair")
    assert run.model.size == 2
    images = run.sessions[0].images[:6]
    np.testing.assert_allclose(
        np.asarray(run.model(images, 0)),
        np.mean([np.asarray(run.model.member(i)(images, 0)) for i in range(2)], axis=0),
        rtol=1e-5,
    )
