"""twin screen: the streamed top / bottom crops and histograms against predictions of every crop
(twin predict), and on the simulated animal's own neurons (its simple cells and known optima)."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from test_evaluate import untrained_run
from twin import checkpoint
from twin.cli import main
from twin.data.loader import load_session
from twin.data.simulate import ground_truth, mean_response, natural_images, simulate
from twin.data.sources import ArraySource
from twin.data.store import open_dataset, write_session
from twin.mei.masks import walker_mask
from twin.mei.store import meis_dataset, write_meis
from twin.mei.validate import GroundTruth, optimum_correlation
from twin.screen import Crops, fraction_reaching, screen

SIZE = (12, 16)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An (untrained) run of 6 neurons on 12x16 grey images: (run dir, its session store)."""
    root = tmp_path_factory.mktemp("screen")
    store = root / "sim.zarr"
    write_session(simulate(6, 40, 5, 3, size=SIZE, seed=3), store)
    return untrained_run(store, root / "run"), store


def twin(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def predicted(run_dir, images, tmp_path, capsys, neurons="all"):
    """twin predict's responses (n, k) to images (n, y, x) in pixel levels."""
    np.save(tmp_path / "shown.npy", images)
    assert twin(["predict", run_dir, tmp_path / "shown.npy", "--out", tmp_path / "p.npy", "--neurons", neurons, "--overwrite"], capsys)[0] == 0
    return np.load(tmp_path / "p.npy")


def test_top_bottom_and_histogram_match_every_prediction(run, tmp_path, capsys):
    run_dir, _ = run
    images = natural_images(70, SIZE, np.random.default_rng(0))
    with zipfile.ZipFile(tmp_path / "few.zip", "w") as archive:
        for i, image in enumerate(images[:6]):
            Image.fromarray(image).save(tmp_path / f"im{i}.png")
            archive.write(tmp_path / f"im{i}.png", f"im{i}.png")
    np.save(tmp_path / "rest.npy", images[6:])
    out = tmp_path / "s.zarr"
    argv = ["screen", run_dir, tmp_path / "few.zip", tmp_path / "rest.npy", "--out", out, "--top", "5", "--batch-size", "16"]
    assert twin(argv, capsys)[0] == 0
    expected = predicted(run_dir, images, tmp_path, capsys)
    ds = open_dataset(out).load()
    order = np.argsort(-expected, axis=0, kind="stable")
    np.testing.assert_allclose(ds["top_response"].values, np.take_along_axis(expected, order[:5], 0).T, rtol=1e-5)
    np.testing.assert_allclose(ds["bottom_response"].values, np.take_along_axis(expected, order[::-1][:5], 0).T, rtol=1e-5)
    best = ds["top_crop"].values[:, 0]
    names = [f"im{i}.png" for i in range(6)] + [str(i) for i in range(64)]
    assert ds["crop_name"].values[best].tolist() == [names[i] for i in order[0]]
    np.testing.assert_allclose(ds["crop_pixels"].values[best], images[order[0]], atol=1e-4)
    counts, edges = ds["histogram_counts"].values, ds["histogram_edges"].values
    assert (counts.sum(1) == 70).all() and ds.attrs["n_images"] == 70
    assert fraction_reaching(counts, edges, edges[:, 0])[0] == pytest.approx(1.0)
    kl = ds["crop_spectral_kl"].values
    assert kl.shape == ds["crop_id"].shape and np.all(kl >= 0) and ds.attrs["natural_spectral_slope"] < 0
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_crops_are_resampled_windows_with_their_offsets(run, tmp_path, capsys):
    run_dir, _ = run
    big = natural_images(2, (36, 48), np.random.default_rng(1))  # 24x32 windows, stride 12: 2 x 2 each
    np.save(tmp_path / "big.npy", big)
    out = tmp_path / "c.zarr"
    argv = ["screen", run_dir, tmp_path / "big.npy", "--out", out, "--crops", "24x32", "--stride", "12", "--neurons", "1,4"]
    code, text, _ = twin(argv, capsys)
    assert code == 0 and "2 images, 8 crops x 2 neurons" in text
    windows = np.stack([image[y : y + 24, x : x + 32] for image in big for y in (0, 12) for x in (0, 12)])
    expected = predicted(run_dir, windows, tmp_path, capsys, neurons="1,4")  # resampled as predict does
    ds = open_dataset(out).load()
    np.testing.assert_allclose(ds["top_response"].values, -np.sort(-expected, axis=0).T, rtol=1e-5)
    best = ds["top_crop"].values[:, 0]
    where = expected.argmax(0)
    offsets = np.array([(y, x) for y in (0, 12) for x in (0, 12)])
    np.testing.assert_array_equal(ds["crop_offset"].values[best], offsets[where % 4])
    assert ds["crop_name"].values[best].tolist() == [str(i) for i in where // 4]


def test_masked_screen_with_meis(run, tmp_path, capsys):
    run_dir, store = run
    data = checkpoint.load_run(run_dir).sessions[0]
    rng = np.random.default_rng(2)
    mei_pixels = np.full((2, 1, *SIZE), 128.0)
    mei_pixels[:, 0, 3:9, 4:10] += rng.choice([-80.0, 80.0], (2, 6, 6))  # a patch for the Walker mask
    meis = meis_dataset(
        {
            "images": data.normalize_images(mei_pixels), "activations": np.array([[2.0], [3.0]], np.float32),
            "best_seed": np.zeros(2, np.int64), "unit_id": data.unit_id[[1, 3]], "neuron_index": np.array([1, 3]),
            "image_mean": data.image_mean, "image_std": data.image_std,
        },
        {"session": 0},
    )
    write_meis(meis, tmp_path / "m.zarr")
    images = natural_images(20, SIZE, rng)
    np.save(tmp_path / "a.npy", images)
    out = tmp_path / "s.zarr"
    code, text, _ = twin(["screen", run_dir, tmp_path / "a.npy", "--out", out, "--meis", tmp_path / "m.zarr", "--masked"], capsys)
    assert code == 0 and "reaching a fraction of the MEI" in text
    ds = open_dataset(out).load()
    masks = ds["mask"].values
    np.testing.assert_allclose(masks[0], walker_mask(mei_pixels[0, 0], 128.0), atol=1e-6)
    assert ds["unit_id"].values.tolist() == [1, 3]
    np.testing.assert_allclose(ds["mei_activation"].values, [2.0, 3.0] * data.response_std[[1, 3]], rtol=1e-6)
    shown = np.concatenate([data.image_mean + mask * (images - data.image_mean) for mask in masks])
    expected = predicted(run_dir, shown, tmp_path, capsys, neurons="1,3").reshape(2, 20, 2)
    np.testing.assert_allclose(ds["top_response"].values[:, 0], [expected[0, :, 0].max(), expected[1, :, 1].max()], rtol=1e-5)


def test_plain_zarr_array_is_a_source(run, tmp_path, capsys):
    import zarr

    run_dir, _ = run
    images = natural_images(5, SIZE, np.random.default_rng(4))
    zarr.create_array(str(tmp_path / "a.zarr"), shape=images.shape, dtype="float32")[...] = images / 255.0
    assert twin(["screen", run_dir, tmp_path / "a.zarr", "--out", tmp_path / "s.zarr", "--top", "2"], capsys)[0] == 0
    expected = predicted(run_dir, images, tmp_path, capsys)
    ds = open_dataset(tmp_path / "s.zarr").load()
    assert ds.attrs["n_images"] == 5
    np.testing.assert_allclose(ds["top_response"].values[:, 0], expected.max(0), rtol=1e-4)


def test_bad_inputs_are_one_line_and_write_nothing(run, tmp_path, capsys):
    run_dir, _ = run
    np.save(tmp_path / "small.npy", natural_images(3, SIZE, np.random.default_rng(3)))
    out = tmp_path / "s.zarr"
    cases = [
        (["--masked"], "--masked: the masks come from the neurons' MEIs; pass --meis"),
        (["--stride", "4"], "--stride 4: only goes with --crops"),
        (["--crops", "24x24"], "--crops 24x24: the run's images are 12x16"),
        (["--crops", "24x32"], "no image is as large as --crops 24x32"),
        (["--top", "2000000000"], "--top 2000000000: keeps at most 10,000 images"),
        (["--neurons="], "--neurons '': not a list of integers"),
    ]
    for extra, message in cases:
        code, _, err = twin(["screen", run_dir, tmp_path / "small.npy", "--out", out, *extra], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".s.zarr*"))
    meis = meis_dataset(
        {
            "images": np.zeros((1, 1, *SIZE), np.float32), "activations": np.ones((1, 1), np.float32),
            "best_seed": np.zeros(1, np.int64), "unit_id": np.array([0]), "neuron_index": np.array([0]),
            "image_mean": np.float32(0), "image_std": np.float32(1),
        },
        {"session": 0, "run": str(tmp_path / "elsewhere")},
    )
    write_meis(meis, tmp_path / "other.zarr")
    write_meis(meis.assign_attrs(run=str(run_dir), surround="excite"), tmp_path / "surround.zarr")
    for store, message in (("other.zarr", "attribute run is"), ("surround.zarr", "holds surround or transparent images")):
        code, _, err = twin(["screen", run_dir, tmp_path / "small.npy", "--out", out, "--meis", tmp_path / store], capsys)
        assert code == 2 and f"--meis {tmp_path / store}: {message}" in err and not out.exists(), err
    code, _, err = twin(["screen", run_dir, tmp_path / "missing.npy", "--out", out], capsys)
    assert code == 2 and "missing.npy: no such file" in err
    code, _, err = twin(["screen", "--summary", tmp_path / "small.npy"], capsys)
    assert code == 2 and "no zarr store here" in err


@pytest.fixture(scope="module")
def animal(tmp_path_factory):
    """The simulated animal's noise-free neurons as a model, its SessionData and ground truth."""
    store = tmp_path_factory.mktemp("animal") / "sim.zarr"
    write_session(simulate(12, 200, 2, 1, size=(18, 32), seed=0), store)
    data = load_session(store)
    params = ground_truth(open_dataset(store))
    return GroundTruth(params, data.image_mean, data.image_std), data, params


def test_top_images_of_a_simple_cell_correlate_with_its_gabor(animal):
    model, data, params = animal
    simple = int(np.flatnonzero(params["kind"] == "simple")[0])
    images = natural_images(1000, (18, 32), np.random.default_rng(4))
    found = screen(model, 0, data, [ArraySource("natural", images, (0.0, 255.0))], [simple], top=20, batch=256)
    truth = mean_response(params, images)[:, simple]
    np.testing.assert_allclose(found.top_value[0], np.sort(truth)[::-1][:20], rtol=1e-4)
    top, bottom = images[found.top_id[0]].astype(float), images[found.bottom_id[0]].astype(float)
    optimal = params["optimal_stimulus"][[simple]]
    # The top images' average departure from the collection's mean image looks like the Gabor.
    mean_image = images.mean(0)
    assert optimum_correlation((top - mean_image).mean(0, keepdims=True), optimal - 128)[0] > 0.5
    assert optimum_correlation((bottom - mean_image).mean(0, keepdims=True), optimal - 128)[0] < 0.3


def test_screening_a_collection_holding_the_true_optimum_finds_it(animal):
    model, data, params = animal
    simple = np.flatnonzero(params["kind"] == "simple")[:3]
    images = natural_images(300, (18, 32), np.random.default_rng(5))
    planted = np.array([37, 150, 299])
    images[planted] = np.round(params["optimal_stimulus"][simple]).astype(np.uint8)
    found = screen(model, 0, data, [ArraySource("natural", images, (0.0, 255.0))], simple, top=4, batch=64)
    np.testing.assert_array_equal(found.top_id[:, 0], planted)
    assert (found.counts.sum(1) == 300).all()
    # Crops: the optimum pasted into a larger gray scene is found at its offset.
    scene = np.full((1, 36, 64), 128, np.uint8)
    scene[0, 9:27, 16:48] = images[37]
    crops = Crops((18, 32), 1)
    found = screen(model, 0, data, [ArraySource("scene", scene, (0.0, 255.0))], simple[:1], top=1, crops=crops, batch=128)
    np.testing.assert_array_equal(crops.offsets((36, 64))[found.top_id[0, 0]], [9, 16])
