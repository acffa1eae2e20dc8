"""Importers: .npz arrays and the Sensorium 2022 file tree (folder and zip)."""

import shutil

import numpy as np
import pytest

from twin.cli import main
from twin.data.importers import from_arrays, from_sensorium, split_tiers
from twin.data.store import open_session, write_session
from twin.errors import SessionError


def recording(n=30, k=5, size=(8, 12), seed=0):
    """A small recording: 10 images shown 3 times each, in random order; by image: 7 train,
    1 validation, 2 test."""
    rng = np.random.default_rng(seed)
    pictures = rng.integers(0, 256, (n // 3, *size), dtype=np.uint8)
    shown = rng.permutation(np.repeat(np.arange(n // 3), 3))
    return {
        "images": pictures[shown],
        "responses": rng.gamma(1.0, 1.0, (n, k)).astype(np.float32),
        "tiers": np.array(["train"] * 7 + ["validation"] + ["test"] * 2)[shown * 10 // (n // 3)],
        "image_ids": shown,
        "behavior": rng.normal(size=(n, 3)).astype(np.float32),
        "pupil_center": rng.normal(size=(n, 2)).astype(np.float32),
        "neuron_ids": np.arange(k) + 100,
        "cell_xyz": rng.normal(size=(k, 3)),
    }


def test_arrays_with_every_key_round_trip(tmp_path):
    arrays = recording()
    np.savez(tmp_path / "r.npz", **arrays)
    write_session(from_arrays(tmp_path / "r.npz"), tmp_path / "r.zarr")
    ds = open_session(tmp_path / "r.zarr")
    np.testing.assert_array_equal(ds.images.values, arrays["images"])
    np.testing.assert_array_equal(ds.responses.values, arrays["responses"])
    assert list(ds.tier.values) == list(arrays["tiers"])
    np.testing.assert_array_equal(ds.image_id.values, arrays["image_ids"])
    np.testing.assert_array_equal(ds.behavior.values, arrays["behavior"])
    np.testing.assert_array_equal(ds.pupil_center.values, arrays["pupil_center"])
    np.testing.assert_array_equal(ds.unit_id.values, arrays["neuron_ids"])
    np.testing.assert_allclose(ds.cell_y.values, arrays["cell_xyz"][:, 1], rtol=1e-6)


def test_arrays_without_optional_keys_find_repeats_and_split_by_image(tmp_path):
    arrays = recording(n=300)
    np.savez(tmp_path / "r.npz", images=arrays["images"], responses=arrays["responses"])
    ds = from_arrays(tmp_path / "r.npz", seed=4)
    ids = ds.image_id.values
    # Same pixels <-> same id: exactly the original grouping.
    for original in np.unique(arrays["image_ids"]):
        assert len(np.unique(ids[arrays["image_ids"] == original])) == 1
    assert len(np.unique(ids)) == 100
    tier = ds.tier.values
    for i in np.unique(ids):
        assert len(set(tier[ids == i])) == 1
    # Every image repeats: the design names no test set, so the seeded 80/10/10 split stands.
    assert [np.sum(tier == t) // 3 for t in ("train", "validation", "test")] == [80, 10, 10]
    assert "every image repeats" in ds.attrs["tier_split"]
    assert list(from_arrays(tmp_path / "r.npz", seed=4).tier.values) == list(tier)
    assert list(from_arrays(tmp_path / "r.npz", seed=5).tier.values) != list(tier)
    assert "behavior" not in ds and "cell_x" not in ds
    np.testing.assert_array_equal(ds.unit_id.values, np.arange(5))


def test_split_keeps_a_test_image_for_tiny_recordings():
    tiers, _ = split_tiers(np.array([0, 1, 2]), seed=0)
    assert "test" in set(tiers) and "train" in set(tiers)


def test_split_puts_repeated_images_in_test():
    # Images 0..19 shown once, images 100..104 shown 4 times each (the lab's test set).
    image_id = np.random.default_rng(0).permutation(np.r_[np.arange(20), np.repeat(np.arange(100, 105), 4)])
    tiers, note = split_tiers(image_id, seed=3)
    assert set(image_id[tiers == "test"]) == set(range(100, 105))
    assert np.sum(tiers == "test") == 20
    assert (np.sum(tiers == "train"), np.sum(tiers == "validation")) == (18, 2)
    assert "5 images shown more than once are the test tier" in note
    assert list(split_tiers(image_id, seed=3)[0]) == list(tiers)


def test_split_without_repeats_says_so(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "r.npz", images=images, responses=rng.gamma(1.0, 1.0, (40, 3)))
    write_session(from_arrays(tmp_path / "r.npz"), tmp_path / "r.zarr")
    ds = open_session(tmp_path / "r.zarr")
    assert "no image repeats" in ds.attrs["tier_split"]
    assert [int(np.sum(ds.tier.values == t)) for t in ("train", "validation", "test")] == [32, 4, 4]


def test_arrays_with_channels(tmp_path):
    arrays = recording()
    images = np.stack([arrays["images"], 255 - arrays["images"]], axis=1)
    np.savez(tmp_path / "r.npz", images=images, responses=arrays["responses"], tiers=arrays["tiers"])
    ds = from_arrays(tmp_path / "r.npz")
    assert ds.images.dims == ("trial", "channel", "y", "x")


def test_image_ids_of_the_wrong_shape_are_named(tmp_path):
    arrays = recording()
    del arrays["tiers"]
    np.savez(tmp_path / "r.npz", **(arrays | {"image_ids": np.int64(3)}))
    with pytest.raises(SessionError, match=r"r.npz: variable 'image_ids' has shape \(\); give one value per trial"):
        from_arrays(tmp_path / "r.npz")


def test_arrays_reject_pickles_and_unknown_keys(tmp_path):
    arrays = recording()
    np.savez(tmp_path / "o.npz", images=arrays["images"], responses=arrays["responses"],
             tiers=arrays["tiers"].astype(object))
    with pytest.raises(SessionError, match="'tiers' is an object array"):
        from_arrays(tmp_path / "o.npz")
    np.savez(tmp_path / "u.npz", images=arrays["images"], responses=arrays["responses"], tier=arrays["tiers"])
    with pytest.raises(SessionError, match="unknown key 'tier'"):
        from_arrays(tmp_path / "u.npz")
    with pytest.raises(SessionError, match="no such file"):
        from_arrays(tmp_path / "missing.npz")


def write_tree(root, arrays, behavior=True, neurons_meta=True, image_scale=1):
    """The neuralpredictors file tree: data/<kind>/<i>.npy and meta/... under ``root``."""
    for kind in ("images", "responses", "behavior", "pupil_center"):
        if kind in ("behavior", "pupil_center") and not behavior:
            continue
        (root / "data" / kind).mkdir(parents=True)
        for i, value in enumerate(arrays[kind]):
            if kind == "images":
                value = np.kron(value, np.ones((image_scale, image_scale)))[None].astype(np.float32)
            np.save(root / "data" / kind / f"{i}.npy", value)
    (root / "meta" / "trials").mkdir(parents=True)
    (root / "meta" / "neurons").mkdir(parents=True)
    np.save(root / "meta" / "trials" / "tiers.npy", arrays["tiers"])
    np.save(root / "meta" / "trials" / "frame_image_id.npy", arrays["image_ids"])
    if neurons_meta:
        np.save(root / "meta" / "neurons" / "unit_ids.npy", arrays["neuron_ids"])
        np.save(root / "meta" / "neurons" / "cell_motor_coordinates.npy", arrays["cell_xyz"])


def test_sensorium_folder(tmp_path):
    arrays = recording()
    write_tree(tmp_path / "mouse", arrays)
    ds = from_sensorium(tmp_path / "mouse", size=(8, 12))
    assert ds.images.dims == ("trial", "y", "x") and ds.images.dtype == np.float32
    np.testing.assert_array_equal(ds.images.values, arrays["images"])
    np.testing.assert_array_equal(ds.responses.values, arrays["responses"])
    np.testing.assert_array_equal(ds.image_id.values, arrays["image_ids"])
    assert list(ds.tier.values) == list(arrays["tiers"])
    np.testing.assert_array_equal(ds.behavior.values, arrays["behavior"])
    assert list(ds.behavior_var.values) == ["pupil", "pupil_derivative", "running"]
    np.testing.assert_array_equal(ds.unit_id.values, arrays["neuron_ids"])


def test_sensorium_zip_with_top_folder_and_downscaling(tmp_path):
    arrays = recording()
    write_tree(tmp_path / "pack" / "static-mouse", arrays, image_scale=4)
    archive = shutil.make_archive(str(tmp_path / "mouse"), "zip", tmp_path / "pack")
    ds = from_sensorium(archive, size=(8, 12))
    # 32x48 block-averaged by 4 gives back the original 8x12 pixels.
    np.testing.assert_allclose(ds.images.values, arrays["images"], atol=1e-4)
    assert ds.sizes["neuron"] == 5
    kept = from_sensorium(archive, size=None)
    assert kept.sizes["y"] == 32


def test_sensorium_without_optional_parts(tmp_path):
    arrays = recording()
    write_tree(tmp_path / "mouse", arrays, behavior=False, neurons_meta=False)
    ds = from_sensorium(tmp_path / "mouse", size=(8, 12))
    assert "behavior" not in ds and "pupil_center" not in ds and "cell_x" not in ds
    np.testing.assert_array_equal(ds.unit_id.values, np.arange(5))


def test_sensorium_errors_name_the_file(tmp_path):
    arrays = recording()
    write_tree(tmp_path / "mouse", arrays)
    (tmp_path / "mouse" / "data" / "responses" / "7.npy").unlink()
    with pytest.raises(SessionError, match="data/responses/7.npy is missing"):
        from_sensorium(tmp_path / "mouse")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SessionError, match="no meta/trials/tiers.npy"):
        from_sensorium(tmp_path / "empty")


def test_sensorium_trial_files_past_the_tiers_are_refused(tmp_path):
    arrays = recording()
    write_tree(tmp_path / "mouse", arrays)
    (tmp_path / "mouse" / "meta" / "trials" / "frame_image_id.npy").unlink()
    np.save(tmp_path / "mouse" / "meta" / "trials" / "tiers.npy", arrays["tiers"][:-1])
    with pytest.raises(SessionError, match="tiers.npy names 29 trials but data/images/29.npy exists"):
        from_sensorium(tmp_path / "mouse")


def test_cli_import_then_info(tmp_path, capsys):
    np.savez(tmp_path / "r.npz", **recording())
    assert main(["import", "arrays", str(tmp_path / "r.npz"), str(tmp_path / "r.zarr")]) == 0
    assert main(["info", str(tmp_path / "r.zarr")]) == 0
    out = capsys.readouterr().out
    assert "21 train, 3 validation, 6 test" in out and "3..3 per image" in out
    write_tree(tmp_path / "mouse", recording())
    assert main(["import", "sensorium", str(tmp_path / "mouse"), str(tmp_path / "m.zarr")]) == 0
    assert open_session(tmp_path / "m.zarr").sizes["trial"] == 30


@pytest.mark.parametrize(
    "importer, names",
    [
        ("arrays", ["images", "responses", "tiers", "image_ids", "behavior_names", "pupil_center", "neuron_ids", "cell_xyz"]),
        (
            "sensorium",
            ["data/images", "data/responses", "meta/trials/tiers.npy", "frame_image_id", "unit_ids", "data/videos"],
        ),
    ],
)
def test_importer_help_lists_what_it_reads(importer, names, capsys):
    with pytest.raises(SystemExit):
        main(["import", importer, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in names) and "optional" in text
