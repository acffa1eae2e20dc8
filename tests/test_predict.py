"""twin predict: a run's responses to images from a store, a folder, a .zip or an .npy array."""

import csv
import zipfile

import numpy as np
import pytest
from PIL import Image

from test_evaluate import untrained_run
from twin import checkpoint
from twin.cli import main
from twin.config import ModelConfig, RunConfig
from twin.data.loader import load_session
from twin.data.simulate import simulate
from twin.data.store import open_dataset, open_session, write_session
from twin.evaluate import predict

SHOWN = 5  # trials of the store written as image files


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An (untrained) run on a simulated session (12x16 grey): (run dir, store, predictions of
    every trial (trial, neuron) in the store's units: evaluate's normalized ones times the
    loader's response std, the store's images (trial, y, x))."""
    root = tmp_path_factory.mktemp("predict")
    store = root / "sim.zarr"
    write_session(simulate(6, 40, 5, 3, size=(12, 16), seed=3), store)
    loaded = checkpoint.load_run(untrained_run(store, root / "run"))
    data = loaded.sessions[0]
    assert not np.allclose(data.response_std, 1)  # else units would not be tested
    expected = predict(loaded.model, 0, data, np.arange(data.tier.size)) * data.response_std
    images = open_session(store)["images"].values
    return root / "run", store, expected, images


def twin(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_store_matches_evaluate(run, tmp_path, capsys):
    run_dir, store, expected, _ = run
    out = tmp_path / "p.npy"
    assert twin(["predict", run_dir, store, "--out", out, "--batch-size", "7"], capsys)[0] == 0
    predictions = np.load(out)
    assert predictions.dtype == np.float32 and predictions.shape == expected.shape
    np.testing.assert_allclose(predictions, expected, atol=1e-5)


def test_blocks_stream_through_with_the_same_predictions(run, tmp_path, capsys, monkeypatch):
    """Images are read and predicted a block at a time: a block smaller than the store (and not
    dividing it) gives the whole store's predictions in order."""
    run_dir, store, expected, _ = run
    monkeypatch.setattr("twin.predict.BLOCK", 7)
    out = tmp_path / "p.npy"
    assert twin(["predict", run_dir, store, "--out", out], capsys)[0] == 0
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_folder_zip_and_npy_give_the_same_predictions(run, tmp_path, capsys):
    run_dir, _, expected, images = run
    folder = tmp_path / "pngs"
    folder.mkdir()
    names = [f"im{i}.png" for i in range(SHOWN)]  # natural order: im2 before im10 would hold too
    for name, image in zip(names, images[:SHOWN]):
        Image.fromarray(image).save(folder / name)
    with zipfile.ZipFile(tmp_path / "pngs.zip", "w") as archive:
        for name in names:
            archive.write(folder / name, name)
    np.save(tmp_path / "images.npy", images[:SHOWN])
    for source in (folder, tmp_path / "pngs.zip", tmp_path / "images.npy"):
        out = tmp_path / f"{source.stem}-{source.suffix[1:]}.npy"
        assert twin(["predict", run_dir, source, "--out", out], capsys)[0] == 0
        np.testing.assert_allclose(np.load(out), expected[:SHOWN], atol=1e-5)


def test_csv_and_zarr_outputs_name_images_and_units(run, tmp_path, capsys):
    run_dir, store, expected, _ = run
    csv_path, zarr_path = tmp_path / "p.csv", tmp_path / "p.zarr"
    assert twin(["predict", run_dir, store, "--out", csv_path, "--neurons", "1,4"], capsys)[0] == 0
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["image_name", "1", "4"] and rows[1][0] == "0" and len(rows) == len(expected) + 1
    np.testing.assert_allclose(np.array(rows[1:])[:, 1:].astype(float), expected[:, [1, 4]], atol=1e-5)
    assert twin(["predict", run_dir, store, "--out", zarr_path, "--neurons", "2:5"], capsys)[0] == 0
    ds = open_dataset(zarr_path)
    assert ds["predictions"].dims == ("image", "neuron")
    assert ds["unit_id"].values.tolist() == [2, 3, 4] and len(ds["image_name"]) == len(expected)
    assert ds.attrs["run"] == str(run_dir) and ds.attrs["session"] == "sim"
    assert ds.attrs["units"] == "the session store's response units"
    np.testing.assert_allclose(ds["predictions"].values, expected[:, 2:5], atol=1e-5)


def test_other_size_is_resampled_and_said(run, tmp_path, capsys):
    run_dir, _, _, images = run
    np.save(tmp_path / "big.npy", np.repeat(np.repeat(images[:3], 2, axis=1), 2, axis=2))
    code, _, err = twin(["predict", run_dir, tmp_path / "big.npy", "--out", tmp_path / "p.npy"], capsys)
    assert code == 0 and "resampled 3 of 3 images to the run's size 12x16" in err
    assert np.load(tmp_path / "p.npy").shape == (3, 6)


@pytest.mark.parametrize(
    "images, extra, message",
    [
        ("wide.npy", [], "an image is 12x32 but the run's images are 12x16; crop the images"),
        ("rgb.npy", [], "images have 3 channels but the run's have 1; give grey images"),
        ("grey.npy", ["--neurons", "9"], "--neurons '9': neuron 9 is out of range"),
        ("grey.npy", ["--session", "1"], "--session 1: run"),
        ("missing", [], "no such file or folder"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(run, tmp_path, capsys, images, extra, message):
    run_dir = run[0]
    np.save(tmp_path / "wide.npy", np.zeros((2, 12, 32), np.uint8))
    np.save(tmp_path / "rgb.npy", np.zeros((2, 3, 12, 16), np.uint8))
    np.save(tmp_path / "grey.npy", np.zeros((2, 12, 16), np.uint8))
    out = tmp_path / "p.npy"
    code, _, err = twin(["predict", run_dir, tmp_path / images, "--out", out, *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".p.npy") for p in tmp_path.iterdir())


def test_existing_output_needs_overwrite(run, tmp_path, capsys):
    run_dir, store, _, _ = run
    out = tmp_path / "p.npy"
    out.write_bytes(b"keep")
    code, _, err = twin(["predict", run_dir, store, "--out", out], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err and out.read_bytes() == b"keep"
    assert twin(["predict", run_dir, store, "--out", out, "--overwrite"], capsys)[0] == 0
    assert np.load(out).shape[1] == 6


def test_rgb_run_on_an_imported_store_keeps_image_names(tmp_path, capsys):
    """RGB images imported with twin import images --shift-responses: the store, its image files
    and an (n, 3, y, x) array give evaluate's predictions in the recording's units (times the
    response std, plus the shifted offset); the csv rows carry the file names."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 12, 16, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "imgs" / f"img{i}.png")
    responses = rng.poisson(2.0, (20, 3)) + np.array([10.0, 20.0, 30.0])
    np.save(tmp_path / "r.npy", responses)
    store = tmp_path / "s.zarr"
    argv = ["import", "images", tmp_path / "imgs", tmp_path / "r.npy", store, "--shift-responses", "neuron"]
    assert twin(argv, capsys)[0] == 0
    loaded = checkpoint.load_run(untrained_run(store, tmp_path / "run"))
    data = loaded.sessions[0]
    expected = predict(loaded.model, 0, data, np.arange(20)) * data.response_std + responses.min(0)
    np.save(tmp_path / "a.npy", np.moveaxis(images, -1, 1))
    for source in (store, tmp_path / "imgs", tmp_path / "a.npy"):
        out = tmp_path / f"p-{source.name}.csv"
        assert twin(["predict", tmp_path / "run", source, "--out", out], capsys)[0] == 0
        rows = np.array(list(csv.reader(out.open())))
        np.testing.assert_allclose(rows[1:, 1:].astype(float), expected, atol=1e-5)
    assert rows[1:, 0].tolist() == [str(i) for i in range(20)]
    names = np.array(list(csv.reader((tmp_path / "p-s.zarr.csv").open())))[1:, 0]
    assert names[:3].tolist() == ["img0.png", "img1.png", "img2.png"]


def test_behavior_and_pupil_center_are_held_at_their_train_means(run):
    from twin.predict import predict_images

    store = run[1]
    data = load_session(store)
    config = RunConfig(model=ModelConfig(
        core_layers=1, core_channels=4, input_kernel=5, use_behavior=True, shifter=True
    ))
    model = checkpoint.make_model(config, [checkpoint.session_record(data)], checkpoint.readout_specs([data]))
    model.eval()
    images = data.images[:4]
    train = data.trials("train")
    behavior = np.repeat(data.behavior[train].mean(0)[None], 4, 0)
    pupil_center = np.repeat(data.pupil_center[train].mean(0)[None], 4, 0)
    expected = np.asarray(model(images, 0, behavior=behavior, pupil_center=pupil_center))
    np.testing.assert_allclose(predict_images(model, 0, data, images, batch_size=3), expected, atol=1e-5)
