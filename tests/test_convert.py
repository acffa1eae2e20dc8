"""neuralpredictors checkpoints -> twin: same predictions in eval mode, clear errors for bad files."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("neuralpredictors")

import jax.numpy as jnp  # noqa: E402

from benchmarks.peer_torch import build_model  # noqa: E402
from twin.convert import read_state_dict, twin_from_state_dict  # noqa: E402
from twin.errors import ConfigError  # noqa: E402

SHAPE = (20, 24)


def random_peer(**options):
    """A peer model with random weights everywhere and non-trivial BatchNorm running statistics."""
    model = build_model(30, SHAPE, channels=8, layers=3, seed=1, **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def state_of(model) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in model.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [{}, {"gauss_type": "isotropic"}, {"shifter": True, "grid_mean_predictor": True}],
    ids=["full", "isotropic", "shifter+grid_predictor"],
)
def test_predictions_match_pytorch(options):
    peer = random_peer(**options)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(6, 1, *SHAPE, generator=generator)
    pupil = torch.randn(6, 2, generator=generator) if options.get("shifter") else None
    with torch.no_grad():
        expected = peer(images, data_key="session", pupil_center=pupil).numpy()

    model, config, keys = twin_from_state_dict(state_of(peer), SHAPE)
    predicted = model(
        jnp.asarray(images.numpy().transpose(0, 2, 3, 1)),
        0,
        pupil_center=None if pupil is None else jnp.asarray(pupil.numpy()),
    )

    assert keys == ["session"]
    assert (config.core_layers, config.core_channels, config.hidden_kernel) == (3, 8, 7)
    assert config.shifter == bool(options.get("shifter"))
    assert config.gauss_type == options.get("gauss_type", "full")
    np.testing.assert_allclose(np.asarray(predicted), expected, rtol=1e-4, atol=1e-6)


def test_reads_a_saved_state_dict(tmp_path):
    peer = random_peer()
    path = tmp_path / "model.pth"
    torch.save(peer.state_dict(), path)
    state = read_state_dict(path)
    assert set(state) == set(peer.state_dict())
    np.testing.assert_array_equal(state["readout.session.bias"], peer.readout["session"].bias.detach().numpy())


def test_whole_pickled_model_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(random_peer(), path)
    with pytest.raises(ConfigError, match="model.pth: not a loadable weights-only state dict"):
        read_state_dict(path)


def test_missing_and_unknown_keys_are_listed():
    state = state_of(random_peer())
    del state["core.features.layer1.norm.running_var"]
    state["readout.session.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ConfigError) as error:
        twin_from_state_dict(state, SHAPE, source="model.pth")
    message = str(error.value)
    assert "missing keys: core.features.layer1.norm.running_var" in message
    assert "unknown keys: readout.session.extra" in message
    assert "\n" not in message


def test_wrong_shape_is_named():
    state = state_of(random_peer())
    state["readout.session.bias"] = state["readout.session.bias"][:-1]
    state["readout.session._features"] = state["readout.session._features"][..., :-1]
    state["readout.session.sigma"] = state["readout.session.sigma"][:, :-1]
    with pytest.raises(ConfigError, match="readout.session._mu maps to shape"):
        twin_from_state_dict(state, SHAPE, source="model.pth")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from twin.data.simulate import simulate
    from twin.data.store import write_session

    path = tmp_path_factory.mktemp("store") / "sim.zarr"
    write_session(simulate(30, 20, 2, 2, size=SHAPE, seed=0), path)
    return path


def test_cli_writes_a_run_that_predicts_like_pytorch(tmp_path, store):
    from twin.checkpoint import load_run
    from twin.cli import main

    peer = random_peer(grid_mean_predictor=True)
    checkpoint = tmp_path / "model.pth"
    torch.save(peer.state_dict(), checkpoint)
    run_dir = tmp_path / "run"
    assert main(["convert", "neuralpredictors", str(checkpoint), "--out", str(run_dir), "--store", str(store)]) == 0

    run = load_run(run_dir)
    images = run.sessions[0].images[:5]
    with torch.no_grad():
        expected = peer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), data_key="session").numpy()
    np.testing.assert_allclose(np.asarray(run.model(jnp.asarray(images))), expected, rtol=1e-4, atol=1e-6)
    assert run.config.model.grid_mean_predictor


def test_cli_needs_one_matching_store_per_readout(tmp_path, store, capsys):
    from twin.cli import main

    checkpoint = tmp_path / "model.pth"
    torch.save(build_model(31, SHAPE, channels=8, layers=3).state_dict(), checkpoint)
    assert main(["convert", "neuralpredictors", str(checkpoint), "--out", str(tmp_path / "a")]) == 2
    assert "1 readouts (session) need as many --store arguments (got 0)" in capsys.readouterr().err
    assert main(["convert", "neuralpredictors", str(checkpoint), "--out", str(tmp_path / "b"), "--store", str(store)]) == 2
    assert "30 neurons but readout.session has 31" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_kill_9_before_the_run_lands_keeps_the_previous_run(tmp_path, store):
    from test_outputs import kill_before_commit, snapshot

    checkpoint = tmp_path / "model.pth"
    torch.save(random_peer().state_dict(), checkpoint)
    argv = ["convert", "neuralpredictors", str(checkpoint), "--out", "run", "--store", str(store)]
    kill_before_commit(argv, tmp_path)  # a first convert killed before its run lands
    assert not (tmp_path / "run").exists()
    from twin.cli import main

    assert main([*argv[:4], str(tmp_path / "run"), *argv[5:]]) == 0  # removes the first one's leftovers
    before = snapshot(tmp_path / "run")
    kill_before_commit([*argv, "--overwrite"], tmp_path)
    assert snapshot(tmp_path / "run") == before
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and left[0].startswith(".run.partial-"), left
