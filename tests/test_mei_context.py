"""Centre-surround and transparent MEIs: on the simulated animal's own neurons (where the
receptive field and the surround are known) and through `twin mei` on a tiny twin."""

import json

import numpy as np
import pytest
import xarray as xr
from test_mei_gt import MEAN, SHAPE, STD
from test_mei_run import run_dir  # noqa: F401 (fixture)

from twin.cli import main
from twin.config import MEIConfig
from twin.data.simulate import ground_truth, simulate
from twin.mei.context import surround_inputs
from twin.mei.masks import tight_masks
from twin.mei.optimize import evaluate_pairs, neuron_objective, optimize_meis
from twin.mei.store import open_meis, write_meis
from twin.mei.validate import GroundTruth

RANGE = (-MEAN / STD, 127 / STD)
NEURONS = np.array([2, 11])  # complex cells, without and with surround normalization


@pytest.fixture(scope="module")
def animal():
    params = ground_truth(simulate(12, 30, 2, 1, size=SHAPE, seed=0))
    assert list(params["kind"][NEURONS]) == ["complex", "complex_normalized"]
    return params, GroundTruth(params, MEAN, STD)


def engine(**changes):
    return dict(image_shape=SHAPE, pixel_range=RANGE, image_stats=(MEAN, STD), progress=False) | changes


def test_surround_keeps_the_centre_and_excites_or_suppresses(animal):
    """Centres: each neuron's Gabor inside its tight mask. The surround leaves the pixels where
    the mask is 1 exactly as they were; the exciting one raises the true response above the
    centre's alone, the suppressing one lowers it."""
    params, model = animal
    gabor = np.clip(MEAN + params["optimal_norm"][:, None, None] * params["filter_even"], 0, 255)
    centres = ((gabor[NEURONS] - MEAN) / STD).astype(np.float32)
    masks = tight_masks(model, neuron_objective(0), centres, NEURONS, STD, solid=True)
    inside = masks == 1
    assert inside.sum(axis=(1, 2)).min() > 5 and (masks < 1).mean() > 0.8
    config = MEIConfig(steps=60, seeds=1, chunk_size=2)
    ratios = {}
    for direction in ("excite", "suppress"):
        found = surround_inputs(
            model, 0, NEURONS, config, centre=centres, centre_mask=masks, direction=direction, **engine()
        )
        images = found.result.images[:, 0]
        assert np.all(found.surround[:, 0][inside] == 0)
        assert np.array_equal(images[inside], centres[inside])
        np.testing.assert_allclose(found.surround[:, 0], images - masks * centres, atol=1e-6)
        alone = evaluate_pairs(model, neuron_objective(0), masks * centres, {"neuron": NEURONS})
        np.testing.assert_allclose(found.centre_activation, alone, rtol=1e-5)
        shown = evaluate_pairs(model, neuron_objective(0), images, {"neuron": NEURONS})
        np.testing.assert_allclose(found.result.activations[:, 0], shown, rtol=1e-5)
        ratios[direction] = found.ratio
    assert np.all(ratios["excite"] > 1.01), ratios
    assert np.all(ratios["suppress"] < 0.95), ratios


def test_transparency_opacity_follows_the_receptive_field_and_the_penalty(animal):
    params, model = animal
    energy = params["filter_even"][NEURONS] ** 2 + params["filter_odd"][NEURONS] ** 2
    field = energy / energy.sum(axis=(1, 2), keepdims=True)
    gray = np.zeros((1, *SHAPE), np.float32)
    mean_opacity = {}
    for penalty in (0.01, 0.04):
        config = MEIConfig(steps=100, seeds=1, chunk_size=2, opacity_penalty=penalty, opacity_learning_rate=0.1)
        result = optimize_meis(model, 0, NEURONS, config, backgrounds=gray, **engine())
        opacity = result.opacity[:, 0]
        assert opacity.shape == (2, *SHAPE) and opacity.min() >= 0 and opacity.max() <= 1
        # Over the mean gray the model sees opacity x foreground.
        np.testing.assert_allclose(result.images[:, 0], opacity * result.foreground[:, 0], atol=1e-6)
        mean_opacity[penalty] = opacity.mean(axis=(1, 2))
        # Opaque where the receptive field is: its energy-weighted opacity is well above the mean.
        assert np.all((opacity * field).sum(axis=(1, 2)) > 3 * mean_opacity[penalty]), penalty
    assert np.all(mean_opacity[0.04] < mean_opacity[0.01]), mean_opacity


@pytest.fixture(scope="module")
def centre_store(run_dir):  # noqa: F811
    out = run_dir / "centres.zarr"
    (run_dir / "centres.toml").write_text("[mei]\nsteps = 30\nchunk_size = 4\n")  # a centre beyond the gray
    argv = ["mei", str(run_dir / "run"), "--neurons", "0,2", "--seeds", "1", "--config",
            str(run_dir / "centres.toml"), "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_mei_command_surround_store_png_and_summary(run_dir, centre_store, capsys):  # noqa: F811
    capsys.readouterr()
    out = run_dir / "surround.zarr"
    argv = ["mei", str(run_dir / "run"), "--surround", "suppress", "--centre", str(centre_store), "--seeds",
            "2", "--config", str(run_dir / "mei.toml"), "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["surround"] == "suppress" and [n["id"] for n in summary["neurons"]] == [0, 2]
    ds = open_meis(out)
    assert ds.attrs["surround"] == "suppress" and ds["surround"].shape == (2, 2, *SHAPE)
    centres = open_meis(centre_store)
    mei = (centres["images"].values[[0, 1], centres["best_seed"].values]).astype(np.float32)
    inside = ds["centre_mask"].values == 1
    assert inside.any(axis=(1, 2)).all()
    images = ds["images"].values
    for seed in range(2):
        assert np.array_equal(images[:, seed][inside], mei[inside])
        assert np.all(ds["surround"].values[:, seed][inside] == 0)
    best = ds["activations"].values.min(axis=1)
    np.testing.assert_allclose(ds["surround_ratio"].values, best / ds["centre_activation"].values, rtol=1e-5)
    assert [n["surround_ratio"] for n in summary["neurons"]] == pytest.approx(ds["surround_ratio"].values)
    assert np.all(np.isfinite(ds["true_surround_ratio"].values))
    assert (run_dir / "surround.png").stat().st_size > 0
    # A surround needs the centre alone as its control, which the rig export does not write.
    assert main(["export", str(out), "--out", str(run_dir / "stimuli")]) == 2
    error = capsys.readouterr().err
    assert "surround.zarr: holds suppress surrounds" in error and len(error.strip().splitlines()) == 1
    assert not (run_dir / "stimuli").exists()


def test_mei_command_transparency_store_and_export(run_dir, capsys):  # noqa: F811
    out = run_dir / "transparent.zarr"
    argv = ["mei", str(run_dir / "run"), "--transparency", "--background", "noise", "--neurons", "1,3",
            "--seeds", "2", "--config", str(run_dir / "mei.toml"), "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    ds = open_meis(out)
    assert ds.attrs["background"] == "noise" and ds["opacity"].shape == (2, 2, *SHAPE)
    opacity = ds["opacity"].values
    assert opacity.min() >= 0 and opacity.max() <= 1
    np.testing.assert_allclose(ds["images"].values, opacity * ds["foreground"].values, atol=1e-6)
    chosen = opacity[[0, 1], ds["best_seed"].values].mean(axis=(1, 2))
    np.testing.assert_allclose(ds["mean_opacity"].values, chosen, rtol=1e-6)
    assert summary["mean_opacity"] == pytest.approx(float(chosen.mean()), rel=1e-5)
    # Exported as shown over the mean gray, with the usual natural controls.
    assert main(["export", str(out), "--out", str(run_dir / "transparent_stimuli")]) == 0
    assert (run_dir / "transparent_stimuli" / "manifest.csv").exists()


def damaged(source, path, change):
    """A copy of the MEI store ``source`` changed by ``change`` (written once) at ``path``."""
    if not path.exists():
        write_meis(change(open_meis(source)), path)
    return path


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--surround", "excite"], "--surround excite: give --centre"),
        (["--centre", "STORE"], "give --surround excite or --surround suppress"),
        (["--transparency", "--surround", "excite", "--centre", "STORE"], "--transparency with --surround"),
        (["--background", "noise"], "--background noise: backgrounds are for --transparency"),
        (["--transparency", "--deis", "2"], "--deis 2: DEIs are made for plain MEIs"),
        (["--surround", "excite", "--centre", "STORE", "--neurons", "3"],
         "variable neuron_index lacks neuron 3 of --neurons"),
        (["--surround", "excite", "--centre", "OTHER_RUN"], "attribute run is '/elsewhere/run'"),
        (["--surround", "excite", "--centre", "SMALL"], "variable images holds 1-channel 18x16 images"),
        (["--surround", "excite", "--centre", "IDS"], "variable unit_id does not match"),
        (["--surround", "excite", "--centre", "SESSION"], "variable 'activations' is missing"),
        (["--surround", "excite", "--centre", "TWO.npy", "--neurons", "0,1,2"], "holds 2 images for 3 neurons"),
        (["--surround", "excite", "--centre", "GRAY.npy"], "nowhere differs from the mean gray"),
        (["--surround", "excite", "--centre", "FAINT"], "the MEI of unit 0 has no centre (it nowhere differs from the mean gray"),
        (["--transparency", "--background", "missing.npy"], "missing.npy: no such file"),
        (["--transparency", "--background", "pink"], "--background pink: no such file or folder; give grey, noise"),
    ],
)
def test_surround_and_transparency_errors_exit_2_without_output(run_dir, centre_store, capsys, flags, message):  # noqa: F811
    paths = {
        "STORE": centre_store,
        "OTHER_RUN": damaged(centre_store, run_dir / "other.zarr",
                             lambda ds: ds.assign_attrs(run="/elsewhere/run")),
        "SMALL": damaged(centre_store, run_dir / "small.zarr", lambda ds: ds.isel(x=slice(0, 16))),
        "IDS": damaged(centre_store, run_dir / "ids.zarr",
                       lambda ds: ds.assign(unit_id=xr.DataArray(np.array([7, 8]), dims="neuron"))),
        "SESSION": run_dir / "sim.zarr",
        "FAINT": damaged(centre_store, run_dir / "faint.zarr", lambda ds: ds.assign(images=ds["images"] * 0.01)),
    }
    rng = np.random.default_rng(0)
    np.save(run_dir / "TWO.npy", rng.integers(0, 255, (2, *SHAPE)).astype(np.uint8))
    np.save(run_dir / "GRAY.npy", np.full((1, *SHAPE), 128, np.uint8))
    flags = [str(paths.get(f, run_dir / f if f.endswith(".npy") else f)) for f in flags]
    out = run_dir / "bad.zarr"
    assert main(["mei", str(run_dir / "run"), "--config", str(run_dir / "mei.toml"), "--out", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert not out.exists() and not (run_dir / "bad.png").exists()
