"""Session stores: round trips, statistics, atomic writes (also under kill -9)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr
from xarray.backends import BackendArray
from xarray.core.indexing import LazilyIndexedArray

from twin.cli import main
from twin.data.schema import pixel_range
from twin.data.simulate import simulate
from twin.data.store import open_session, session_info, write_dataset, write_session
from twin.errors import OutputError, SessionError


@pytest.fixture(scope="module")
def session():
    return simulate(12, 40, 4, 3, size=(16, 24), seed=1)


def test_round_trip_keeps_every_value_and_dtype(session, tmp_path):
    write_session(session, tmp_path / "s.zarr")
    opened = open_session(tmp_path / "s.zarr")
    for name, var in session.variables.items():
        stored = opened[name]
        assert stored.dims == var.dims, name
        if var.dtype.kind == "O":
            assert list(stored.values.astype(object)) == list(var.values), name
        else:
            assert stored.dtype == var.dtype, name
            np.testing.assert_array_equal(stored.values, var.values, err_msg=name)
    assert opened.attrs["simulated"] is True
    assert opened.attrs["session"] == "s"
    assert opened.attrs["schema_version"] == 1


def test_statistics_are_computed_on_train_trials(session, tmp_path):
    write_session(session, tmp_path / "s.zarr")
    opened = open_session(tmp_path / "s.zarr")
    train = session.tier.values == "train"
    responses = session.responses.values[train].astype(np.float64)
    np.testing.assert_allclose(opened.stats_response_std.values, responses.std(0), rtol=1e-5)
    np.testing.assert_allclose(opened.stats_response_mean.values, responses.mean(0), rtol=1e-5)
    pixels = session.images.values[train].astype(np.float64)
    np.testing.assert_allclose(float(opened.stats_image_mean), pixels.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(opened.stats_image_std), pixels.std(), rtol=1e-6)
    np.testing.assert_allclose(opened.stats_image_pixel_mean.values, pixels.mean(0), rtol=1e-5)
    assert float(opened.stats_image_max) == pixels.max()
    behavior = session.behavior.values[train].astype(np.float64)
    np.testing.assert_allclose(opened.stats_behavior_std.values, behavior.std(0), rtol=1e-5)


def test_store_is_chunked_along_trials(session, tmp_path):
    write_session(session, tmp_path / "s.zarr")
    encoding = open_session(tmp_path / "s.zarr").responses.encoding
    assert encoding["chunks"][1] == session.sizes["neuron"]


def test_write_replaces_an_existing_store_and_leaves_nothing_beside(session, tmp_path):
    target = tmp_path / "s.zarr"
    write_session(session, target)
    smaller = session.isel(neuron=slice(0, 5))
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        write_session(smaller, target)
    assert open_session(target).sizes["neuron"] == session.sizes["neuron"]
    write_session(smaller, target, overwrite=True)
    assert open_session(target).sizes["neuron"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_write_refuses_to_replace_something_that_is_not_a_store(session, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is a file but a folder goes here"):
            write_session(session, target, overwrite=overwrite)
    assert target.read_text() == "keep me"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    write = xr.Dataset.to_zarr

    def write_then_fail(self, *args, **kwargs):
        write(self, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_zarr", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(xr.Dataset({"a": ("x", np.arange(4.0))}), tmp_path / "m.zarr")
    assert list(tmp_path.iterdir()) == []


def test_write_dataset_round_trips_any_dataset(tmp_path):
    ds = xr.Dataset(
        {"images": (("neuron", "seed"), np.ones((3, 2), np.float32))}, attrs={"recipe": "lucid"}
    )
    write_dataset(ds, tmp_path / "m.zarr")
    back = xr.open_dataset(tmp_path / "m.zarr", engine="zarr", consolidated=False)
    assert back.attrs["recipe"] == "lucid"
    np.testing.assert_array_equal(back.images.values, ds.images.values)


def test_open_session_errors_name_the_path(tmp_path):
    with pytest.raises(SessionError, match="no zarr store"):
        open_session(tmp_path / "missing.zarr")
    write_dataset(xr.Dataset({"a": ("x", np.arange(3))}), tmp_path / "other.zarr")
    with pytest.raises(SessionError, match="other.zarr: variable 'images' is missing"):
        open_session(tmp_path / "other.zarr")


def test_session_info_counts_tiers_and_repeats(session):
    info = session_info(session, "s.zarr")
    assert info["trials"] == {"train": 36, "validation": 4, "test": 12}
    assert info["neurons"] == 12
    assert info["image_shape"] == [16, 24]
    assert info["repeats_per_test_image"] == {"min": 3, "median": 3.0, "max": 3}
    assert info["behavior"] == ["pupil", "pupil_derivative", "running"]
    # 4 repeated test images are too few for the repeat metrics (twin.metrics.MIN_REPEATED_IMAGES).
    assert "oracle_correlation" not in info
    assert info["repeat_metrics"] == "n/a: only 4 test images are repeated (at least 20 needed)"
    assert info["trials_without_responses"] == info["missing_responses"] == 0
    assert info["pixel_range"] == [0.0, 255.0] and info["test_repeats"] is True
    assert info["responses_signed"] is False and info["response_shift"] == ""
    quiet = info["quiet_neurons"]
    assert quiet["all_zero"]["count"] == quiet["constant"]["count"] == 0
    # 36 train trials: neurons silent on more than 26 of them are sparse.
    assert quiet["sparse"] == {"count": 5, "unit_ids": [1, 2, 3, 9, 11]}
    assert set(info["ground_truth_ceiling"]) == {"single_trial_correlation"}


def test_cli_simulate_and_info(tmp_path, capsys):
    store = tmp_path / "sim.zarr"
    args = ["simulate", str(store), "--neurons", "8", "--train-images", "30"]
    assert main([*args, "--test-images", "3", "--repeats", "2", "--size", "16x24"]) == 0
    assert main(["info", str(store), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"neurons": 8' in out and "ground_truth_ceiling" in out
    assert main(["info", str(store)]) == 0
    assert "ground truth ceiling" in capsys.readouterr().out


def test_cli_info_of_a_missing_store_exits_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "none.zarr" in err


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from twin.data.schema import make_session
    from twin.data.store import write_session

    n, k = 3000, 6000
    rng = np.random.default_rng(0)
    ds = make_session(
        "kill test",
        images=rng.integers(0, 256, (n, 16, 16), dtype=np.uint8),
        responses=rng.random((n, k), dtype=np.float32),
        tier=np.where(np.arange(n) % 10 == 0, "test", "train"),
        image_id=np.arange(n),
    )
    print("ready", flush=True)
    write_session(ds, sys.argv[1])
    """
)


def test_write_killed_mid_way_leaves_no_valid_store(tmp_path):
    target = tmp_path / "s.zarr"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    # Kill as soon as the responses array has started to land in the partial store.
    while not list(tmp_path.glob(".s.zarr.partial-*/responses/c")):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not target.exists()
    with pytest.raises(SessionError):
        open_session(target)
    # The next write clears what the killed writer left beside the target.
    write_session(simulate(3, 10, 2, 2, size=(8, 8), seed=0), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_an_uninferable_pixel_range_names_the_store(session):
    ds = session.assign(images=session["images"].astype(np.float32) * 2 - 300)
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "pixel_range"}
    ds = ds.drop_vars(["stats_image_min", "stats_image_max"], errors="ignore")
    with pytest.raises(SessionError, match=r"^s\.zarr: variable 'images' has values -"):
        session_info(ds, "s.zarr")


def test_uint8_pixel_range_reads_no_images():
    class Unreadable(BackendArray):
        shape, dtype = (2, 4, 4), np.dtype(np.uint8)

        def __getitem__(self, key):
            raise AssertionError("the images were read")

    ds = xr.Dataset({"images": (("trial", "y", "x"), LazilyIndexedArray(Unreadable()))})
    assert pixel_range(ds, "s.zarr") == (0.0, 255.0)


@pytest.mark.parametrize("name, writer", [("histogram_counts", "twin screen"), ("initial_cluster", "twin mds")])
def test_screen_and_mds_stores_are_not_sessions(tmp_path, name, writer):
    path = write_dataset(xr.Dataset({name: ("neuron", np.zeros(3, np.int64))}), tmp_path / "out.zarr")
    with pytest.raises(SessionError, match=f"holds the output of {writer}, not a session"):
        open_session(path)
