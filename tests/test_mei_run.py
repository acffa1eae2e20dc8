"""`twin mei` end to end on a tiny simulated session and a tiny (unfitted) twin."""

import json

import numpy as np
import pytest
from flax import nnx

from twin.checkpoint import readout_specs, save_run_model
from twin.cli import main
from twin.config import DataConfig, ModelConfig, RunConfig
from twin.data.importers import from_arrays
from twin.data.loader import load_session
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.errors import SessionError
from twin.mei.store import meis_dataset, open_meis, write_meis
from twin.models.twin import Twin


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mei_run")
    write_session(simulate(6, 40, 2, 2, size=(18, 32), seed=3), root / "sim.zarr")
    data = load_session(root / "sim.zarr", DataConfig())
    config = RunConfig(
        model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3)
    )
    model = Twin(config.model, 1, (18, 32), readout_specs([data]), rngs=nnx.Rngs(0))
    model.eval()
    save_run_model(root / "run", model, config, [data])
    (root / "mei.toml").write_text("[mei]\nsteps = 6\nchunk_size = 4\ndei_steps = 3\n")
    return root


def test_mei_command_writes_store_grid_and_summary(run_dir, capsys):
    out = run_dir / "meis.zarr"
    argv = ["mei", str(run_dir / "run"), "--neurons", "0,2,5", "--seeds", "2", "--deis", "2",
            "--config", str(run_dir / "mei.toml"), "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recipe"] == "walker2019"
    assert [n["id"] for n in summary["neurons"]] == [0, 2, 5]
    keys = {"id", "activation", "best_natural_activation", "ratio", "true_ratio", "optimum_correlation",
            "spectral_kl", "spectral_slope"}
    assert all(set(n) == keys for n in summary["neurons"])
    assert all(n["spectral_kl"] >= 0 for n in summary["neurons"])
    assert summary["natural_spectral_slope"] < 0
    ds = open_meis(out)
    assert ds["images"].shape == (3, 2, 18, 32) and ds["deis"].shape == (3, 2, 18, 32)
    np.testing.assert_array_equal(ds["neuron_index"].values, [0, 2, 5])
    ratio = ds["activations"].values.max(1) / ds["best_natural_activation"].values
    np.testing.assert_allclose(ds["ratio"].values, ratio, rtol=1e-5)
    assert np.all(np.isfinite(ds["true_ratio"].values))
    assert summary["median_true_ratio"] == pytest.approx(float(np.median(ds["true_ratio"].values)))
    attrs = ds.attrs
    assert attrs["recipe"] == "walker2019" and "steps = 6" in attrs["mei_config"]
    assert (run_dir / "meis.png").stat().st_size > 0
    assert ds["contrast_activation"].shape == (3, 7) and ds["shift_activation"].shape == (3, 4)
    assert ds["spectral_kl"].shape == (3,) and ds["dei_spectral_kl"].shape == (3, 2)
    assert ds.attrs["natural_spectral_slope"] == pytest.approx(summary["natural_spectral_slope"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--neurons", "0:99"], "--neurons '0:99'"),
        (["--neurons", "1;2"], "not a list of integers"),
        (["--session", "3"], "--session 3"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--deis", "1"], "--deis 1"),
    ],
)
def test_bad_arguments_exit_2_without_output(run_dir, capsys, extra, message):
    out = run_dir / "bad.zarr"
    assert main(["mei", str(run_dir / "run"), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (run_dir / "bad.png").exists()


def test_a_store_without_its_normalization_asks_for_a_new_run(tmp_path):
    variables = {"images": np.zeros((1, 1, 4, 4)), "activations": np.ones((1, 1)), "best_seed": np.zeros(1),
                 "unit_id": np.zeros(1), "neuron_index": np.zeros(1)}  # fmt: skip
    write_meis(meis_dataset(variables, {}), tmp_path / "old.zarr")
    with pytest.raises(SessionError, match="old.zarr: variable 'image_mean' is missing; .* run twin mei again"):
        open_meis(tmp_path / "old.zarr")


@pytest.mark.parametrize("channels, normalization", [(2, "global"), (2, "per_pixel"), (1, "per_pixel")])
def test_meis_of_stores_with_a_channel_axis(tmp_path, capsys, channels, normalization):
    """Stores whose images are (trial, channel, y, x): two channels (e.g. UV/green) give MEIs
    (neuron, seed, channel, y, x) within each channel's pixel range, which `twin export` (a
    gray-scale monitor) refuses in one line; one channel gives (neuron, seed, y, x) MEIs that it
    exports."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "color.npz",
        images=rng.integers(0, 255, (30, channels, 18, 32), dtype=np.uint8),
        responses=rng.random((30, 4)).astype(np.float32),
    )
    write_session(from_arrays(tmp_path / "color.npz"), tmp_path / "color.zarr")
    config = RunConfig(
        data=DataConfig(image_normalization=normalization),
        model=ModelConfig(core_layers=2, core_channels=4, input_kernel=5, hidden_kernel=3),
    )
    data = load_session(tmp_path / "color.zarr", config.data)
    model = Twin(config.model, channels, (18, 32), readout_specs([data]), rngs=nnx.Rngs(0))
    model.eval()
    save_run_model(tmp_path / "run", model, config, [data])
    (tmp_path / "mei.toml").write_text("[mei]\nsteps = 20\n")
    out = tmp_path / "meis.zarr"
    argv = ["mei", str(tmp_path / "run"), "--seeds", "2", "--deis", "2", "--config", str(tmp_path / "mei.toml"),
            "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["median_ratio"] > 0
    ds = open_meis(out)
    image_dims = ("channel", "y", "x") if channels > 1 else ("y", "x")
    assert ds["images"].dims == ("neuron", "seed", *image_dims)
    assert ds["images"].shape == (4, 2, *([channels] if channels > 1 else []), 18, 32)
    assert ds["deis"].shape == ds["images"].shape
    assert ds["image_mean"].dims == (("channel",) if normalization == "global" else image_dims)
    pixels = (ds["images"] * ds["image_std"] + ds["image_mean"]).values
    assert pixels.min() >= data.image_min - 1e-3 and pixels.max() <= data.image_max + 1e-3
    assert np.all(ds["activations"].values > 0) and (tmp_path / "meis.png").stat().st_size > 0

    stimuli = tmp_path / "stimuli"
    if channels == 1:
        assert main(["export", str(out), "--out", str(stimuli)]) == 0
        assert (stimuli / "manifest.csv").exists()
        return
    assert main(["export", str(out), "--out", str(stimuli)]) == 2
    error = capsys.readouterr().err
    assert "meis.zarr: images have 2 channels" in error and len(error.strip().splitlines()) == 1
    assert not stimuli.exists()
