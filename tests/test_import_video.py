"""`twin import sensorium` on Sensorium 2023 video trees (folder and zip), and their errors."""

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sensorium_fuzz import DAMAGES

from twin.cli import main
from twin.data.importers import from_sensorium
from twin.data.schema import is_video, validate
from twin.data.store import open_session
from twin.errors import SessionError

TIERS = ["train", "train", "train", "train", "oracle", "oracle", "none", "live_test_main", "final_test_bonus"]
LENGTHS = [40, 32, 20, 40, 36, 36, 30, 25, 40]
N_NEURONS = 5


def video_tree(root, ids: bool = False, seed: int = 0) -> dict:
    """A Sensorium 2023 tree under ``root``: 9 trials of 8x12 pixels, 20-40 frames, frames last.
    Even trials are stored 40 frames long with NaN after their length (as the published tree
    pads), odd trials at their own length. Trial 6 ('none') has no files; trial 8 (final_test)
    has no responses; trial 7 (live_test) has all-NaN responses. Returns the recorded arrays by
    trial: videos (frames, y, x), responses (frames, n), behavior (frames, 2), pupil_center."""
    rng = np.random.default_rng(seed)
    for folder in ("videos", "responses", "behavior", "pupil_center"):
        (root / "data" / folder).mkdir(parents=True)
    (root / "meta" / "trials").mkdir(parents=True)
    (root / "meta" / "neurons").mkdir(parents=True)
    recorded = {"videos": {}, "responses": {}, "behavior": {}, "pupil_center": {}}
    for trial, (tier, length) in enumerate(zip(TIERS, LENGTHS)):
        if tier == "none":
            continue
        stored = 40 if trial % 2 == 0 else length
        values = {
            "videos": rng.integers(0, 256, (8, 12, length)).astype(np.float32),
            "responses": rng.gamma(2.0, 1.0, (N_NEURONS, length)).astype(np.float32),
            "behavior": rng.normal(size=(2, length)).astype(np.float32),
            "pupil_center": rng.normal(size=(2, length)).astype(np.float32),
        }
        if trial == 5:  # an oracle repeat of trial 4's video
            values["videos"] = np.load(root / "data" / "videos" / "4.npy")[..., :length]
        if tier.startswith("live_test"):
            values["responses"][:] = np.nan
        for folder, value in values.items():
            recorded[folder][trial] = np.moveaxis(value, -1, 0)
            if folder == "responses" and tier.startswith("final_test"):
                continue
            padded = np.full((*value.shape[:-1], stored), np.nan, np.float32)
            padded[..., :length] = value
            np.save(root / "data" / folder / f"{trial}.npy", padded)
    np.save(root / "meta" / "trials" / "tiers.npy", np.array(TIERS))
    if ids:
        hashes = [f"hash{trial}" for trial in range(len(TIERS))]
        hashes[5] = hashes[4]
        np.save(root / "meta" / "trials" / "condition_hash.npy", np.array(hashes))
    np.save(root / "meta" / "neurons" / "unit_ids.npy", np.arange(N_NEURONS) + 100)
    np.save(root / "meta" / "neurons" / "cell_motor_coordinates.npy", rng.normal(size=(N_NEURONS, 3)))
    return recorded


def test_video_tree_folder_imports_padded_trials(tmp_path):
    recorded = video_tree(tmp_path / "mouse")
    ds = from_sensorium(tmp_path / "mouse", size=(8, 12))
    assert is_video(ds)
    kept = [t for t, tier in enumerate(TIERS) if tier != "none"]
    assert ds.images.dims == ("trial", "frame", "y", "x") and ds.images.shape == (8, 40, 8, 12)
    assert ds.responses.shape == (8, 40, N_NEURONS)
    np.testing.assert_array_equal(ds.frame_count.values, [LENGTHS[t] for t in kept])
    assert list(ds.tier.values) == ["train"] * 4 + ["test"] * 2 + ["final_test"] * 2
    np.testing.assert_array_equal(ds.image_id.values, np.arange(8))
    assert ds.attrs["frame_rate"] == 30.0
    assert list(ds.behavior_var.values) == ["pupil", "running"]
    np.testing.assert_array_equal(ds.unit_id.values, np.arange(N_NEURONS) + 100)
    for row, trial in enumerate(kept):
        length = LENGTHS[trial]
        np.testing.assert_array_equal(ds.images.values[row, :length], recorded["videos"][trial])
        np.testing.assert_array_equal(ds.images.values[row, length:], np.broadcast_to(
            recorded["videos"][trial][-1], (40 - length, 8, 12)))
        for name in ("behavior", "pupil_center"):
            np.testing.assert_array_equal(ds[name].values[row, :length], recorded[name][trial])
            assert (ds[name].values[row, length:] == recorded[name][trial][-1]).all()
        assert np.isnan(ds.responses.values[row, length:]).all()
        if TIERS[trial] == "train" or TIERS[trial] == "oracle":
            np.testing.assert_array_equal(ds.responses.values[row, :length], recorded["responses"][trial])
        else:
            assert np.isnan(ds.responses.values[row]).all()


def test_video_tree_zip_matches_the_folder(tmp_path):
    video_tree(tmp_path / "top" / "mouse")
    archive = shutil.make_archive(str(tmp_path / "mouse"), "zip", tmp_path / "top")
    folder = from_sensorium(tmp_path / "top" / "mouse", size=(8, 12))
    zipped = from_sensorium(archive, size=(8, 12))
    for name in folder.variables:
        np.testing.assert_array_equal(zipped[name].values, folder[name].values, err_msg=name)


def test_video_ids_from_the_tree_mark_repeats(tmp_path):
    video_tree(tmp_path / "mouse", ids=True)
    ds = from_sensorium(tmp_path / "mouse", size=(8, 12))
    np.testing.assert_array_equal(ds.image_id.values, [0, 1, 2, 3, 4, 4, 5, 6])
    assert ds.attrs["video_ids_from"] == "meta/trials/condition_hash.npy"


def test_videos_are_block_averaged_to_the_working_size(tmp_path):
    recorded = video_tree(tmp_path / "mouse")
    ds = from_sensorium(tmp_path / "mouse", size=(4, 6))
    assert ds.images.shape[-2:] == (4, 6) and ds.attrs["shown_size"] == [8, 12]
    block = recorded["videos"][0][0].reshape(4, 2, 6, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(ds.images.values[0, 0], block, rtol=1e-6)


def test_cli_imports_a_video_tree(tmp_path, capsys):
    video_tree(tmp_path / "mouse")
    assert main(["import", "sensorium", str(tmp_path / "mouse"), str(tmp_path / "v.zarr")]) == 0
    assert "8 trials x 5 neurons x 40 frames" in capsys.readouterr().out
    ds = open_session(tmp_path / "v.zarr")
    assert is_video(ds) and ds.attrs["frame_rate"] == 30.0


def test_shift_responses_keeps_the_frame_axis(tmp_path):
    video_tree(tmp_path / "mouse")
    args = ["import", "sensorium", str(tmp_path / "mouse"), str(tmp_path / "v.zarr"), "--shift-responses", "neuron"]
    assert main(args) == 0
    ds = open_session(tmp_path / "v.zarr")
    plain = from_sensorium(tmp_path / "mouse")
    lowest = np.nanmin(plain.responses.values, axis=(0, 1))
    assert ds.responses.dims == ("trial", "frame", "neuron")
    np.testing.assert_allclose(ds.response_offset.values, lowest)
    np.testing.assert_allclose(ds.responses.values, plain.responses.values - lowest, rtol=1e-6)


def save(path, value):
    np.save(path, value)


BAD_TREES = {
    "frames differ": (
        lambda root: save(root / "data/responses/1.npy", np.ones((N_NEURONS, 33), np.float32)),
        "file data/responses/1.npy has 33 frames but data/videos/1.npy has 32",
    ),
    "video ndim": (
        lambda root: save(root / "data/videos/3.npy", np.ones((8, 12), np.float32)),
        "file data/videos/3.npy has shape (8, 12); give (y, x, frames) with frames last",
    ),
    "video missing": (
        lambda root: (root / "data/videos/5.npy").unlink(),
        "file data/videos/5.npy is missing",
    ),
    "responses missing": (
        lambda root: (root / "data/responses/2.npy").unlink(),
        "file data/responses/2.npy is missing",
    ),
    "pupil rows": (
        lambda root: save(root / "data/pupil_center/0.npy", np.ones((3, 40), np.float32)),
        "file data/pupil_center/0.npy has shape (3, 40); give (2, frames)",
    ),
    "video size": (
        lambda root: save(root / "data/videos/4.npy", np.ones((8, 10, 36), np.float32)),
        "file data/videos/4.npy is 8x10 pixels but data/videos/0.npy is 8x12",
    ),
    "neurons differ": (
        lambda root: save(root / "data/responses/3.npy", np.ones((4, 40), np.float32)),
        "file data/responses/3.npy has 4 neurons but data/responses/0.npy has 5",
    ),
    "unknown tier": (
        lambda root: save(root / "meta/trials/tiers.npy", np.array(["bogus"] + TIERS[1:])),
        "file meta/trials/tiers.npy has unknown tier 'bogus'",
    ),
    "nan from the start": (
        lambda root: save(root / "data/behavior/2.npy", np.full((2, 40), np.nan, np.float32)),
        "file data/behavior/2.npy has NaN from its first frame",
    ),
    "strings": (
        lambda root: save(root / "data/videos/1.npy", np.array([["a"]])),
        "file data/videos/1.npy holds <U1 values; save real numbers (y, x, frames)",
    ),
    "tiers short": (
        lambda root: save(root / "meta/trials/tiers.npy", np.array(TIERS[:-1])),
        "file meta/trials/tiers.npy names 8 trials but data/videos/8.npy exists; give one tier per trial",
    ),
    "header beyond memory": (
        lambda root: lying_header(root / "data/videos/2.npy"),
        "file data/videos/2.npy is larger than this machine's memory (or its header says so)",
    ),
}


def lying_header(path):
    """A .npy whose header claims 4 PB of float32 frames but holds 16 bytes."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": (8, 12, 10**13)})
        file.write(bytes(16))


@pytest.mark.parametrize("case", BAD_TREES)
def test_bad_video_trees_fail_in_one_line_and_write_nothing(tmp_path, capsys, case):
    damage, message = BAD_TREES[case]
    video_tree(tmp_path / "mouse")
    damage(tmp_path / "mouse")
    assert main(["import", "sensorium", str(tmp_path / "mouse"), str(tmp_path / "v.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(tmp_path / "mouse") in err
    assert "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mouse"]


def test_missing_tree_fails_in_one_line(tmp_path, capsys):
    assert main(["import", "sensorium", str(tmp_path / "nowhere"), str(tmp_path / "v.zarr")]) == 2
    assert "no such folder or .zip" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


FILES = [
    "meta/trials/tiers.npy",
    "meta/trials/condition_hash.npy",
    "meta/neurons/unit_ids.npy",
    "meta/neurons/cell_motor_coordinates.npy",
    "data/videos/0.npy",
    "data/videos/5.npy",
    "data/responses/3.npy",
    "data/responses/7.npy",
    "data/behavior/2.npy",
    "data/pupil_center/1.npy",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damages=st.lists(st.tuples(st.sampled_from(FILES), st.sampled_from(sorted(DAMAGES))), min_size=1, max_size=3),
    zipped=st.booleans(),
)
def test_damaged_video_trees_import_or_fail_in_one_line(tmp_path, damages, zipped):
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    video_tree(root / "mouse", ids=True)
    for name, damage in damages:
        path = root / "mouse" / name
        if path.is_file():
            try:
                DAMAGES[damage](path)
            except (ValueError, TypeError, EOFError, OSError, IndexError):  # does not apply to that file
                pass
    source = root / "mouse"
    if zipped:
        source = shutil.make_archive(str(root / "mouse"), "zip", root / "mouse")
    try:
        ds = from_sensorium(source, size=(8, 12))
    except SessionError as error:
        message = str(error)
        assert "\n" not in message and str(source) in message, message
    else:
        validate(ds, source)
