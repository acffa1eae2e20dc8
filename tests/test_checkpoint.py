"""Run directories: save_run_model -> load_run gives the same model, outputs identical."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin import checkpoint
from twin.config import FitConfig, ModelConfig, RunConfig
from twin.data.loader import load_session
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.errors import RunError
from twin.models.twin import Ensemble, Twin

TINY = ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "sim.zarr"
    write_session(simulate(6, 40, 4, 2, size=(12, 16), seed=1), path)
    return load_session(path)


def trained_model(config, session):
    """A model whose batch statistics and rng counters have moved away from their initial values."""
    records = [checkpoint.session_record(session)]
    model = checkpoint.make_model(config, records, checkpoint.readout_specs([session]))
    model(jnp.asarray(session.images[:8]), 0)
    return model


@pytest.mark.parametrize("ensemble_size", [1, 3])
def test_round_trip_gives_identical_outputs(tmp_path, session, ensemble_size):
    config = RunConfig(model=TINY, fit=FitConfig(ensemble_size=ensemble_size, seed=4))
    model = trained_model(config, session)
    model.eval()
    expected = np.asarray(model(jnp.asarray(session.images[:5]), 0))
    checkpoint.save_run_model(tmp_path / "run", model, config, [session])

    run = checkpoint.load_run(tmp_path / "run")
    assert isinstance(run.model, Ensemble if ensemble_size > 1 else Twin)
    assert run.config == config
    assert [s.name for s in run.sessions] == [session.name]
    np.testing.assert_array_equal(np.asarray(run.model(jnp.asarray(session.images[:5]), 0)), expected)
    records = json.loads((tmp_path / "run" / "sessions.json").read_text())
    assert records[0]["unit_id"] == session.unit_id.tolist()


def test_random_keys_survive_the_round_trip():
    tree = {"key": jax.random.key(3), "x": jnp.arange(3.0), "nested": [jnp.ones((2, 2))]}
    arrays = checkpoint.tree_to_arrays(tree)
    assert set(arrays) == {"key", "x", "nested.0"}
    back = checkpoint.arrays_to_tree(arrays, tree, "test")
    assert jax.random.normal(back["key"], ()) == jax.random.normal(tree["key"], ())
    np.testing.assert_array_equal(back["nested"][0], tree["nested"][0])


def test_mismatched_config_is_a_run_error(tmp_path, session):
    config = RunConfig(model=TINY)
    checkpoint.save_run_model(tmp_path / "run", trained_model(config, session), config, [session])
    wider = dataclasses.replace(config, model=dataclasses.replace(TINY, core_channels=6))
    checkpoint.write_run_files(tmp_path / "run", wider, [checkpoint.session_record(session)])
    with pytest.raises(RunError, match="shape"):
        checkpoint.load_run(tmp_path / "run", load_sessions=False)


def test_missing_run_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="config.toml"):
        checkpoint.load_run(tmp_path)


def test_save_step_keeps_only_the_newest_and_can_move_back(tmp_path):
    for step in (1, 2, 5):
        checkpoint.save_step(tmp_path / "c", step, {"x": {"a": jnp.full(2, step)}}, {"step": step})
    assert checkpoint.latest_step(tmp_path / "c") == 5
    checkpoint.save_step(tmp_path / "c", 3, {"x": {"a": jnp.full(2, 3)}}, {"step": 3})
    trees, meta = checkpoint.restore_step(tmp_path / "c", {"x": {"a": jnp.zeros(2, jnp.int32)}})
    assert meta == {"step": 3}
    np.testing.assert_array_equal(trees["x"]["a"], [3, 3])
