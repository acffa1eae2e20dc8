"""`twin import nwb` on damaged NWB files: exit 2, one line naming the file, nothing written."""

import shutil

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_import_nwb import N_TEMPLATES, RATE, write_nwb

from twin.cli import main

SERIES = "processing/ophys/DfOverF/RoiResponseSeries"
TABLE = "intervals/natural_scenes_presentations"


def truncate(path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def edit(path, change) -> None:
    with h5py.File(path, "r+") as f:
        change(f)


def shuffle(values, seed: int) -> np.ndarray:
    """``values`` permuted so that they are no longer increasing."""
    shuffled = np.random.default_rng(seed).permutation(values)
    return shuffled if (np.diff(shuffled) <= 0).any() else shuffled[::-1]


def set_value(f, name: str, position: int, value) -> None:
    values = f[name][()]
    values[position % len(values)] = value
    f[name][...] = values


def during_presentation(f, k: int) -> int:
    """A sample of the trace inside presentation k (mod their number): the trace of
    tests/test_import_nwb.py has RATE samples a second, presentation i from 1 + i to 1.5 + i s."""
    n_presentations = len(f[f"{SERIES}/data"]) // int(RATE) - 2
    return int(((k % n_presentations) + 1.25) * RATE)


def showing_an_image(f, k: int) -> int:
    """Presentation k (mod their number) among those that show an image: a blank-screen
    presentation (frame -1) is left out of the import, so damage there changes nothing."""
    rows = np.flatnonzero(f[f"{TABLE}/frame"][()] >= 0)
    return int(rows[k % len(rows)])


DAMAGES = {
    "truncate": lambda path, k: truncate(path, (k % 1000) / 1000),
    "no stimulus table": lambda path, k: edit(path, lambda f: f.__delitem__(TABLE)),
    "no templates": lambda path, k: edit(path, lambda f: f.__delitem__("stimulus/templates/natural_scenes")),
    "no responses": lambda path, k: edit(path, lambda f: f.__delitem__("processing/ophys/DfOverF")),
    "no series data": lambda path, k: edit(path, lambda f: f.__delitem__(f"{SERIES}/data")),
    "shuffled timestamps": lambda path, k: edit(
        path, lambda f: f[f"{SERIES}/timestamps"].__setitem__(..., shuffle(f[f"{SERIES}/timestamps"][()], k))
    ),
    "NaN timestamp": lambda path, k: edit(path, lambda f: set_value(f, f"{SERIES}/timestamps", k, np.nan)),
    "index above templates": lambda path, k: edit(path, lambda f: set_value(f, f"{TABLE}/frame", k, N_TEMPLATES + k)),
    "negative index": lambda path, k: edit(path, lambda f: set_value(f, f"{TABLE}/frame", k, -2 - k)),
    "fractional index": lambda path, k: edit(path, lambda f: set_value(f, f"{TABLE}/frame", k, 2.5)),
    "NaN trace": lambda path, k: edit(path, lambda f: set_value(f, f"{SERIES}/data", during_presentation(f, k), np.nan)),
    "stop before start": lambda path, k: edit(
        path, lambda f: set_value(f, f"{TABLE}/stop_time", showing_an_image(f, k), 0.0)
    ),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("nwb") / "pristine.nwb"
    write_nwb(path)
    return path


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 10_000))
def test_damaged_files_fail_in_one_line_and_write_nothing(pristine, tmp_path, capsys, damage, k):
    case = tmp_path / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    path = case / "session.nwb"
    shutil.copy(pristine, path)
    DAMAGES[damage](path, k)
    out = case / "out"
    out.mkdir()
    code = main(["import", "nwb", str(path), str(out / "s.zarr")])
    err = capsys.readouterr().err
    assert code == 2, (damage, err)
    assert err.count("\n") == 1 and err.startswith(f"twin import: error: {path}: "), (damage, err)
    assert list(out.iterdir()) == []
