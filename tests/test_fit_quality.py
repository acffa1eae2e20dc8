"""Quality bar, fast version: a tiny twin fit on a small simulated session gets a good part of the
way to the ground-truth ceiling (the full bar, >= 0.9 of it, is experiments/fit_simulated.md).
With readout positions from the data it reaches 0.77 of the ceiling in 8 epochs (0.55 with
readout_init = "random")."""

import dataclasses
from pathlib import Path

from twin.config import load_config
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.evaluate import evaluate_run
from twin.fit import fit

EXPERIMENT = Path(__file__).parents[1] / "experiments" / "small_twin.toml"


def test_tiny_twin_approaches_the_ground_truth_ceiling(tmp_path):
    store = tmp_path / "sim.zarr"
    write_session(simulate(30, 800, 20, 10, size=(18, 32), seed=0), store)
    config = load_config(EXPERIMENT)
    config = dataclasses.replace(config, fit=dataclasses.replace(config.fit, max_epochs=8))
    fit(config, [str(store)], tmp_path / "run", progress=False)
    (result,) = evaluate_run(tmp_path / "run")
    assert result["ground_truth_ceiling"]["correlation_to_average"] > 0.8
    assert result["fraction_of_ceiling"] >= 0.6
