"""twin evaluate: scores of a run against twin.metrics, the ground-truth ceiling, store mismatches."""

import json

import numpy as np
import pytest

from twin import checkpoint, metrics
from twin.cli import main
from twin.config import ModelConfig, RunConfig
from twin.data.loader import load_session
from twin.data.simulate import ground_truth_ceiling, simulate
from twin.data.store import open_session, write_session
from twin.errors import RunError
from twin.evaluate import evaluate_run

CONFIG = RunConfig(model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3))


def untrained_run(store, out, config=CONFIG):
    """Write an untrained run directory ``out`` for the session store ``store``; returns ``out``."""
    data = load_session(store)
    model = checkpoint.make_model(config, [checkpoint.session_record(data)], checkpoint.readout_specs([data]))
    model.eval()
    checkpoint.save_run_model(out, model, config, [data])
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An (untrained) run on a simulated session with 20 repeated test images (the fewest the
    repeat metrics take): (run dir, store path)."""
    root = tmp_path_factory.mktemp("evaluate")
    store = root / "sim.zarr"
    write_session(simulate(6, 40, 20, 2, size=(12, 16), seed=3), store)
    return untrained_run(store, root / "run"), store


def test_scores_match_twin_metrics(run):
    run_dir, store = run
    (result,) = evaluate_run(run_dir)
    loaded = checkpoint.load_run(run_dir)
    data = loaded.sessions[0]
    test = data.trials("test")
    predictions = np.asarray(loaded.model(data.images[test], 0))
    responses = data.responses[test]
    assert result["tier"] == "test" and result["n_neurons"] == 6 and result["n_trials"] == 40
    expected_r = metrics.single_trial_correlation(responses, predictions)
    assert result["single_trial_correlation"] == pytest.approx(expected_r.mean(), abs=1e-5)
    np.testing.assert_allclose(result["per_neuron"]["single_trial_correlation"], expected_r, atol=1e-5)
    assert result["correlation_to_average"] == pytest.approx(
        metrics.correlation_to_average(responses, predictions, data.image_id[test]).mean(), abs=1e-5
    )
    oracle = metrics.oracle_correlation(responses, data.image_id[test])
    assert result["oracle_correlation"] == pytest.approx(oracle.mean(), abs=1e-6)
    assert result["fraction_of_oracle"] == pytest.approx(metrics.fraction_of_oracle(expected_r, oracle), abs=1e-5)
    assert result["per_neuron"]["unit_id"] == data.unit_id.tolist()


def test_ground_truth_ceiling_matches_the_simulator(run):
    run_dir, store = run
    (result,) = evaluate_run(run_dir)
    expected = ground_truth_ceiling(open_session(store))
    ceiling = result["ground_truth_ceiling"]
    for name in ("single_trial_correlation", "correlation_to_average"):
        assert ceiling[name] == pytest.approx(expected[name].mean(), abs=1e-5)
    assert result["fraction_of_ceiling"] == pytest.approx(
        result["correlation_to_average"] / ceiling["correlation_to_average"]
    )


def test_cli_prints_the_issue_json(run, capsys):
    run_dir, _ = run
    assert main(["evaluate", str(run_dir), "--tier", "test", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("tier", "single_trial_correlation", "correlation_to_average", "feve", "oracle_correlation", "n_neurons", "per_neuron"):
        assert key in printed
    assert len(printed["per_neuron"]["correlation_to_average"]) == 6


def test_validation_tier_has_no_repeat_metrics(run):
    (result,) = evaluate_run(run[0], tier="validation")
    assert result["feve"] is None and result["oracle_correlation"] is None
    assert result["repeat_metrics"] == "n/a: only 0 validation images are repeated (at least 20 needed)"


def test_store_with_other_neurons_is_a_run_error(run, tmp_path, capsys):
    other = tmp_path / "other.zarr"
    write_session(simulate(7, 40, 5, 3, size=(12, 16), seed=3), other)
    with pytest.raises(RunError, match="unit_id"):
        evaluate_run(run[0], stores=[str(other)])
    assert main(["evaluate", str(run[0]), "--store", str(other)]) == 2
    assert "pass the store the run was fitted on" in capsys.readouterr().err


def test_same_neurons_on_an_explicit_store(run):
    (own,) = evaluate_run(run[0])
    (explicit,) = evaluate_run(run[0], stores=[str(run[1])])
    assert explicit["single_trial_correlation"] == pytest.approx(own["single_trial_correlation"])


def test_missing_tier_is_a_run_error(run):
    with pytest.raises(RunError, match="final_test"):
        evaluate_run(run[0], tier="final_test")
