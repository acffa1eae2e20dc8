"""twin match: units of two sessions of one field of view paired again, on simulated day pairs
with a known answer (shifted field of view, lost and new cells, jitter, drifted gains, noise)."""

import csv

import numpy as np
import pytest

import twin.loop.match as match
from twin.cli import main
from twin.data.simulate import day2, simulate
from twin.data.store import open_session, write_session


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A dense day pair: 600 cells in a 180 x 320 µm field, 200 µm deep (nearest neighbours ~17 µm)."""
    root = tmp_path_factory.mktemp("days")
    one = simulate(600, 100, 20, 3, size=(18, 32), seed=1)
    write_session(one, root / "day1.zarr")
    write_session(day2(one, seed=4), root / "day2.zarr")
    return root


def read_pairs(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def scores(rows, day2_store):
    truth = open_session(day2_store)["gt_day1_unit"].values
    true_pairs = {(int(t), u) for u, t in enumerate(truth) if t >= 0}
    found = {(int(r["day1_unit"]), int(r["day2_unit"])) for r in rows}
    correct = len(found & true_pairs)
    return correct / len(found), correct / len(true_pairs)


def test_match_finds_the_cells_again(pair, capsys):
    out = pair / "matches.csv"
    assert main(["match", str(pair / "day1.zarr"), str(pair / "day2.zarr"), "--out", str(out)]) == 0
    rows = read_pairs(out)
    assert list(rows[0]) == list(match.COLUMNS)
    precision, recall = scores(rows, pair / "day2.zarr")
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    day1_units = [int(r["day1_unit"]) for r in rows]
    assert len(set(day1_units)) == len(rows) == len({r["day2_unit"] for r in rows})  # one to one
    distance = np.array([float(r["distance_um"]) for r in rows])
    confidence = np.array([float(r["confidence"]) for r in rows])
    correlation = np.array([float(r["response_correlation"]) for r in rows])
    assert distance.max() < 10 and ((confidence > 0) & (confidence <= 1)).all()
    assert np.median(correlation) > 0.5  # the same neurons respond alike to the shared images
    printed = capsys.readouterr().out
    assert "shared images: 20" in printed and f"matched: {len(rows)} pairs" in printed
    assert "precision" in printed and "unmatched:" in printed


def test_shift_is_estimated_within_a_micrometre(pair):
    result = match.match_sessions(pair / "day1.zarr", pair / "day2.zarr")
    truth = np.array(open_session(pair / "day2.zarr").attrs["gt_shift_um"])
    assert np.abs(result["shift_um"] - truth).max() < 1.0
    assert result["unmatched_day1"] == result["n_day1"] - len(result["pairs"]["day1_unit"])


def test_positions_alone_still_match(pair, monkeypatch, tmp_path):
    monkeypatch.setattr(match, "MIN_SHARED_IMAGES", 10**9)  # as if no image were shown on both days
    out = tmp_path / "positions.csv"
    result = match.match_command(pair / "day1.zarr", pair / "day2.zarr", out)
    assert result["shared_images"] == 0
    rows = read_pairs(out)
    assert all(r["response_correlation"] == "" for r in rows)
    precision, recall = scores(rows, pair / "day2.zarr")
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_string_ids_and_a_session_matched_with_itself(tmp_path):
    one = simulate(30, 40, 12, 2, size=(16, 24), seed=2)
    one["unit_id"] = ("neuron", np.array([f"cell-{i}" for i in range(30)], dtype=object))
    write_session(one, tmp_path / "a.zarr")
    result = match.match_command(tmp_path / "a.zarr", tmp_path / "a.zarr", tmp_path / "self.csv")
    rows = read_pairs(tmp_path / "self.csv")
    assert [(r["day1_unit"], r["day2_unit"]) for r in rows] == [(f"cell-{i}", f"cell-{i}") for i in range(30)]
    assert np.abs(result["shift_um"]).max() < 1e-6 and all(float(r["distance_um"]) == 0 for r in rows)


def test_match_errors_are_one_line(pair, tmp_path, capsys):
    bare = open_session(pair / "day1.zarr").load().drop_vars(["cell_x", "cell_y", "cell_z"])
    write_session(bare, tmp_path / "bare.zarr")
    cases = [
        ([str(tmp_path / "bare.zarr"), str(pair / "day2.zarr"), "--out", str(tmp_path / "m.csv")], "no cell positions"),
        ([str(pair / "day1.zarr"), str(pair / "day2.zarr"), "--out", str(tmp_path / "m.txt")], ".csv suffix"),
        ([str(pair / "day1.zarr"), str(tmp_path / "none.zarr"), "--out", str(tmp_path / "m.csv")], "no zarr store"),
    ]
    for args, message in cases:
        assert main(["match", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.csv").exists()
    (tmp_path / "mine.csv").write_text("keep")
    args = ["match", str(pair / "day1.zarr"), str(pair / "day2.zarr"), "--out", str(tmp_path / "mine.csv")]
    assert main(args) == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "mine.csv").read_text() == "keep"
    assert main([*args, "--overwrite"]) == 0 and read_pairs(tmp_path / "mine.csv")


def test_positions_that_agree_on_no_shift_are_refused(tmp_path, capsys):
    """One cell (or two unrelated fields) agrees with any shift fitted to it: refused, not one
    pair at distance 0 with confidence 1."""
    one = simulate(6, 30, 10, 2, size=(16, 24), seed=3)
    write_session(one.isel(neuron=[0]), tmp_path / "one.zarr")
    write_session(day2(one, seed=1), tmp_path / "two.zarr")
    assert main(["match", str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr"), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "agree on no shift" in err and "mutual nearest neighbours within --tolerance 10 µm after it: 1 (2 needed)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.csv").exists()


def test_nan_positions_are_refused_by_name(pair, tmp_path, capsys):
    ds = open_session(pair / "day1.zarr")
    with pytest.raises(match.SessionError, match="variable 'cell_z' holds NaN or inf for 1 of"):
        match.cell_positions(ds.assign(cell_z=ds["cell_z"].where(np.arange(ds.sizes["neuron"]) != 5)), "day1.zarr")
    with pytest.raises(match.SessionError, match="all 600 units share one position"):
        match.cell_positions(ds.assign(cell_x=ds["cell_x"] * 0, cell_y=ds["cell_y"] * 0, cell_z=ds["cell_z"] * 0), "day1.zarr")


def test_a_tolerance_within_the_position_noise_warns(pair, capsys):
    with pytest.warns(match.TwinWarning, match="--tolerance 2 µm is below or near the cells' position noise"):
        result = match.match_sessions(pair / "day1.zarr", pair / "day2.zarr", tolerance=2.0)
    assert 0 < len(result["pairs"]["day1_unit"]) < 0.8 * result["n_day1"]
    xyz = match.cell_positions(open_session(pair / "day1.zarr"), "day1")
    spacing = match.spacing(xyz)
    assert 10 < spacing < 25 and match.position_noise(xyz, xyz, 10.0, np.zeros(3), spacing) == 0.0
    rng = np.random.default_rng(0)  # unrelated fields: distances measure spacing, not noise
    assert match.position_noise(xyz, rng.permutation(xyz) + rng.normal(0, 30, xyz.shape), 10.0, np.zeros(3), spacing) is None
    with pytest.warns(match.TwinWarning, match="above the distance between neighbouring cells"):
        match.warn_tolerance(None, spacing, 100.0)


def test_a_unit_without_responses_to_the_shared_images_is_quiet(pair, tmp_path, recwarn):
    two = open_session(pair / "day2.zarr").load()
    test = (two["tier"] == "test").values[:, None] & (np.arange(two.sizes["neuron"]) == 7)[None]
    write_session(two.assign(responses=two["responses"].where(~test)), tmp_path / "two.zarr")
    result = match.match_sessions(pair / "day1.zarr", tmp_path / "two.zarr")
    assert result["shared_images"] == 20 and not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
