"""twin import images: a folder or .zip of image files and a response matrix."""

import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from twin.cli import main
from twin.data.images import natural_key, read_images
from twin.data.store import open_session

N_IMAGES, N_NEURONS = 12, 3


def pictures(n: int = N_IMAGES, size=(10, 14), channels: int = 3, seed: int = 0) -> np.ndarray:
    """Distinct uint8 images (n, y, x, channels)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, channels), dtype=np.uint8)


def write_folder(folder, images, suffix: str = ".png") -> list[str]:
    """image1.png .. imageN.png (numbered from 1, so natural order differs from text order)."""
    folder.mkdir(exist_ok=True)
    names = []
    for i, image in enumerate(images, start=1):
        name = f"image{i}{suffix}"
        Image.fromarray(image.squeeze()).save(folder / name)
        names.append(name)
    return names


def recording(tmp_path, channels: int = 3):
    """(image folder, responses (neurons, images) .npy, the images (n, y, x, c), responses)."""
    images = pictures(channels=channels)
    write_folder(tmp_path / "images", images)
    responses = np.random.default_rng(1).poisson(2.0, (N_NEURONS, N_IMAGES)).astype(np.float64)
    np.save(tmp_path / "responses.npy", responses)
    return tmp_path / "images", tmp_path / "responses.npy", images, responses


def run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_natural_order():
    names = ["image10.png", "image2.png", "image1.png", "a/image3.png"]
    assert sorted(names, key=natural_key) == ["a/image3.png", "image1.png", "image2.png", "image10.png"]


def test_folder_of_pngs_round_trips(tmp_path, capsys):
    folder, responses_path, images, responses = recording(tmp_path)
    out = tmp_path / "rec.zarr"
    assert run(["import", "images", folder, responses_path, out], capsys)[0] == 0
    ds = open_session(out)
    assert ds["images"].dims == ("trial", "channel", "y", "x") and ds["images"].dtype == np.uint8
    np.testing.assert_array_equal(ds["images"].values, np.moveaxis(images, -1, 1))
    np.testing.assert_allclose(ds["responses"].values, responses.T)
    assert ds["image_name"].values.tolist() == [f"image{i}.png" for i in range(1, N_IMAGES + 1)]
    assert set(ds["tier"].values) <= {"train", "validation", "test"}
    assert ds.attrs["pixel_range"] == [0.0, 255.0]


@pytest.mark.parametrize("form", ["column.csv", "row.csv", "vector.npy"])
def test_one_neuron_as_a_column_row_or_vector(tmp_path, capsys, form):
    folder, _, _, responses = recording(tmp_path)
    one = responses[0]
    path = tmp_path / form
    if form == "vector.npy":
        np.save(path, one)
    else:
        path.write_text("\n".join(map(str, one)) if form == "column.csv" else ",".join(map(str, one)))
    out = tmp_path / "rec.zarr"
    assert run(["import", "images", folder, path, out], capsys)[0] == 0
    np.testing.assert_allclose(open_session(out)["responses"].values, one[:, None])


def test_zip_grey_trial_images_tiers_unit_ids(tmp_path, capsys):
    """A .zip (hidden files and __MACOSX skipped), grey images shown several times each, with
    tiers, unit ids and image names per trial from csv files."""
    images = pictures(n=4, channels=1)
    names = write_folder(tmp_path / "src", images)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in names:
            z.write(tmp_path / "src" / name, f"stim/{name}")
        z.writestr("__MACOSX/stim/._image1.png", b"junk")
        z.writestr("stim/.DS_Store", b"junk")
    shown = ["image2.png", "image1.png", "image2.png", "image4.png", "image3.png", "image4.png"]
    (tmp_path / "trials.csv").write_text("\n".join(shown) + "\n")
    (tmp_path / "tiers.csv").write_text("train\nvalidation\ntrain\ntest\ntrain\ntest\n")
    np.savetxt(tmp_path / "ids.csv", [7, 9], fmt="%d")
    responses = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savetxt(tmp_path / "r.csv", responses, delimiter=",")
    out = tmp_path / "rec.zarr"
    argv = ["import", "images", archive, tmp_path / "r.csv", out, "--trial-images", tmp_path / "trials.csv",
            "--tiers", tmp_path / "tiers.csv", "--unit-ids", tmp_path / "ids.csv"]
    assert run(argv, capsys)[0] == 0
    ds = open_session(out)
    assert ds["images"].dims == ("trial", "y", "x")
    assert ds["image_name"].values.tolist() == shown
    np.testing.assert_array_equal(ds["images"].values[0], images[1, ..., 0])
    assert ds["image_id"].values[0] == ds["image_id"].values[2] != ds["image_id"].values[1]
    assert ds["tier"].values.tolist() == ["train", "validation", "train", "test", "train", "test"]
    assert ds["unit_id"].values.tolist() == [7, 9]
    np.testing.assert_allclose(ds["responses"].values, responses)


def test_size_resamples_and_mixed_grey_rgb_become_rgb(tmp_path):
    folder = tmp_path / "images"
    write_folder(folder, pictures(n=2, size=(20, 28)))
    Image.fromarray(pictures(n=1, size=(10, 14), channels=1)[0, ..., 0]).save(folder / "image3.png")
    images, names = read_images(folder, size=(10, 14))
    assert images.shape == (3, 3, 10, 14) and images.dtype == np.uint8
    assert np.all(images[2, 0] == images[2, 1])  # the grey image repeated on every channel


@pytest.mark.parametrize(
    "setup, message",
    [
        ("sizes", "image2.png is 20x28 but image1.png is 10x14; pass --size HxW"),
        ("text", "file notes.txt is not an image pillow can read"),
        ("square", "shape (12, 12) has one row and one column per image; pass --orientation"),
        ("shape", "shape (3, 5) has no axis of 12 (one entry per image)"),
        ("orientation", "has 3 rows but there are 12 images"),
        ("ids-count", "ids.csv has 2 ids for 3 neurons; give one id per neuron"),
        ("ids-duplicate", "ids.csv has duplicate ids: 'neu1' is given to 2 neurons; give every neuron its own id"),
        ("trial-index", "--trial-images"),
        ("tier-label", "tiers.csv: variable 'tier' has unknown label 'bogus'; use one of"),
        ("tier-count", "tiers.csv: holds 5 values in shape (5,); give one tier per trial (12)"),
        ("empty", "holds no image files"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, setup, message):
    folder, responses_path, _, _ = recording(tmp_path)
    extra = []
    if setup == "sizes":
        Image.fromarray(pictures(n=1, size=(20, 28))[0]).save(folder / "image2.png")
    elif setup == "text":
        (folder / "notes.txt").write_text("not an image")
    elif setup == "square":
        np.save(responses_path, np.ones((N_IMAGES, N_IMAGES)))
    elif setup == "shape":
        np.save(responses_path, np.ones((3, 5)))
    elif setup == "orientation":
        extra = ["--orientation", "trials-neurons"]
    elif setup.startswith("ids"):
        (tmp_path / "ids.csv").write_text("neu1\nneu2\n" + ("neu1\n" if setup == "ids-duplicate" else ""))
        extra = ["--unit-ids", tmp_path / "ids.csv"]
    elif setup == "trial-index":
        np.save(tmp_path / "trials.npy", np.array([0, 1, 99]))
        extra = ["--trial-images", tmp_path / "trials.npy"]
    elif setup.startswith("tier"):
        labels = ["train"] * 11 + ["bogus"] if setup == "tier-label" else ["train"] * 5
        (tmp_path / "tiers.csv").write_text("\n".join(labels) + "\n")
        extra = ["--tiers", tmp_path / "tiers.csv"]
    elif setup == "empty":
        for file in folder.iterdir():
            file.unlink()
    out = tmp_path / "rec.zarr"
    code, err = run(["import", "images", folder, responses_path, out, *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "--tiers" in err or not setup.startswith("tier")
    assert not out.exists() and not any(p.name.startswith(".rec.zarr") for p in tmp_path.iterdir())


def test_help_lists_the_inputs(capsys):
    with pytest.raises(SystemExit):
        main(["import", "images", "--help"])
    text = capsys.readouterr().out
    for word in ("IMAGES", "RESPONSES", "OUT", "--trial-images", "--tiers", "--unit-ids", "optional"):
        assert word in text


def zip_of_pngs(tmp_path, extra: list[tuple[str, bytes]]):
    """images.zip of the 12 images of ``recording`` as stim/imageN.png plus ``extra`` (name,
    bytes) entries, and the responses .npy."""
    folder, responses_path, _, _ = recording(tmp_path)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(folder.iterdir()):
            z.write(file, f"stim/{file.name}")
        for name, data in extra:
            z.writestr(name, data)
    return archive, responses_path


def refused(argv, capsys, tmp_path, message: str) -> None:
    """The command exits 2 with one stderr line holding ``message`` and writes no store."""
    code, err = run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "rec.zarr").exists()


@pytest.mark.parametrize("entry", ["../../evil.png", "/x.png", "stim/../../x.png", "C:/x.png"])
def test_zip_entry_climbing_out_is_refused(tmp_path, capsys, entry):
    archive, responses_path = zip_of_pngs(tmp_path, [(entry, b"data")])
    message = f"images.zip: entry {entry!r} climbs out of the archive; remove it"
    refused(["import", "images", archive, responses_path, tmp_path / "rec.zarr"], capsys, tmp_path, message)


def test_zip_with_two_entries_of_one_name_is_refused(tmp_path, capsys):
    archive, responses_path = zip_of_pngs(tmp_path, [])
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "a") as z:
        z.writestr("stim/image3.png", (tmp_path / "images" / "image4.png").read_bytes())
    message = "images.zip: holds two entries named 'image3.png'; remove one of them"
    refused(["import", "images", archive, responses_path, tmp_path / "rec.zarr"], capsys, tmp_path, message)


@pytest.mark.parametrize("limit", ["file", "memory"])
def test_zip_entry_too_large_to_unpack_is_refused_before_reading(tmp_path, capsys, monkeypatch, limit):
    archive, responses_path = zip_of_pngs(tmp_path, [("stim/zz.png", bytes(4000))])
    if limit == "file":
        monkeypatch.setattr("twin.data.images.MAX_FILE_BYTES", 3000)
        message = "images.zip: file 'zz.png' takes 0 MiB, more than the 0 MiB an image file may hold"
    else:
        monkeypatch.setattr("twin.data.images.available_memory", lambda: 100)
        message = "images.zip: the files up to 'image1.png' take 0.0 GiB, more than the 0.0 GiB of free"
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a: pytest.fail("read before the sizes were checked"))
    refused(["import", "images", archive, responses_path, tmp_path / "rec.zarr"], capsys, tmp_path, message)


@pytest.mark.parametrize("pixels", [100, 50])  # 10x14 images: a DecompressionBombWarning, then Error
def test_image_beyond_pillows_pixel_limit_is_refused(tmp_path, capsys, monkeypatch, pixels):
    folder, responses_path, _, _ = recording(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    message = f"file image1.png has more than {pixels} pixels, pillow's limit against decompression bombs"
    refused(["import", "images", folder, responses_path, tmp_path / "rec.zarr"], capsys, tmp_path, message)


def test_empty_responses_csv_is_one_line_without_numpy_warning(tmp_path, capsys):
    folder, _, _, _ = recording(tmp_path)
    (tmp_path / "r.csv").write_text("")
    argv = ["import", "images", folder, tmp_path / "r.csv", tmp_path / "rec.zarr"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(argv, capsys, tmp_path, "r.csv: shape (0, 1) has no axis of 12 (one entry per image)")
    assert not caught


def test_large_images_are_stored_at_the_working_size(tmp_path, capsys):
    """112 x 112 files are block-averaged to 28 x 28 (the size the twin is fitted at), the size shown
    is kept, and image ids come from the full-size pixels; --size native keeps the files' size."""
    from twin.data.images import working_size

    assert working_size(112, 112) == (28, 28) and working_size(144, 256) == (36, 64)
    assert working_size(10, 14) == (10, 14) and working_size(100, 100) == (50, 50)
    images = pictures(n=4, size=(112, 112))
    images[1] = images[0]
    images[1, 0, 0] ^= 1  # differs from image 0 in one pixel only: a different image
    write_folder(tmp_path / "images", images)
    np.save(tmp_path / "responses.npy", np.ones((2, 4)))
    argv = ["import", "images", tmp_path / "images", tmp_path / "responses.npy"]
    assert run([*argv, tmp_path / "auto.zarr", "--tiers", write_tiers(tmp_path)], capsys)[0] == 0
    ds = open_session(tmp_path / "auto.zarr")
    blocks = np.moveaxis(images, -1, 1).reshape(4, 3, 28, 4, 28, 4).astype(np.float64).mean(axis=(3, 5))
    np.testing.assert_array_equal(ds["images"].values, np.clip(np.rint(blocks), 0, 255))
    assert list(ds.attrs["shown_size"]) == [112, 112]
    assert len(np.unique(ds["image_id"].values)) == 4
    assert run([*argv, tmp_path / "native.zarr", "--size", "native"], capsys)[0] == 0
    assert open_session(tmp_path / "native.zarr")["images"].shape == (4, 3, 112, 112)


def write_tiers(tmp_path):
    path = tmp_path / "tiers.csv"
    path.write_text("train\ntrain\ntest\ntest\n")
    return path
