"""`twin loop --days 2`: the stimuli shown on day 2 of the same animal, to the neurons found again."""

import json
import shutil
import warnings

import numpy as np
import pytest

from twin.cli import main
from twin.data.store import open_session
from twin.errors import TwinWarning
from twin.loop.files import read_responses
from twin.loop.run import Stages, day2_stages


@pytest.fixture(scope="module")
def day2_loop(loop_dir, tmp_path_factory):
    """The day-2 stages run on the miniature one-day loop's twin, MEIs and stimuli."""
    out = tmp_path_factory.mktemp("days") / "out"
    shutil.copytree(loop_dir, out, ignore=shutil.ignore_patterns("report", "responses.npz", "loop.json"))
    selection = json.loads((out / "selection.json").read_text())
    day1 = json.loads((loop_dir / "loop.json").read_text())
    before = ["neurons", "twin_median_mei_over_best_natural", "true_median_mei_over_best_natural", "stimuli", "rejected"]
    stages = Stages(["day 2", "match", "respond", "closeloop"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TwinWarning)  # selected neurons lost on day 2, if any
        result = day2_stages(
            stages, out, out / "session.zarr", selection, {"out": str(out)} | {k: day1[k] for k in before}, seed=0
        )
    return out, result, selection


def test_day2_stages_write_their_files(day2_loop):
    out, result, selection = day2_loop
    for name in ["day2.zarr", "matches.csv", "responses_day2.npz", "responses.npz", "report/index.html", "loop.json"]:
        assert (out / name).exists(), name
    assert json.loads((out / "loop.json").read_text())["day2"] == result["day2"]
    assert set(result["seconds"]) == {"day 2", "match", "respond", "closeloop", "total"}


def test_found_neurons_are_the_true_ones_and_scored_on_day2(day2_loop):
    out, result, selection = day2_loop
    day2 = result["day2"]
    assert day2["selected"] == len(selection["unit_id"])
    truth = open_session(out / "day2.zarr")["gt_day1_unit"].values
    for unit in day2["units"]:
        true = np.flatnonzero(truth == unit["day1_unit"])
        assert unit["true_day2_unit"] == (int(true[0]) if len(true) else None)
    assert day2["found_correctly"] == day2["found_again"] == day2["still_imaged"]
    assert day2["match_precision"] >= 0.95 and day2["match_recall"] >= 0.95
    assert np.abs(np.array(day2["shift_um"]) - day2["true_shift_um"]).max() < 2
    # closeloop scored the found neurons on day 2's responses, under their day-1 ids
    summary = json.loads((out / "report" / "summary.json").read_text())
    found = {u["day1_unit"] for u in day2["units"] if u["day2_unit"] is not None}
    assert {n["unit_id"] for n in summary["neurons"]} == found == set(selection["unit_id"]) - set(
        summary["units_without_responses"]
    )
    assert summary["day2"] == day2 and result["n_neurons"] == len(found)
    page = (out / "report" / "index.html").read_text()
    assert "day 2: selected neurons found again" in page


def test_day2_responses_are_the_matched_day2_units_renamed(day2_loop):
    out, result, selection = day2_loop
    renamed, raw = read_responses(out / "responses.npz"), read_responses(out / "responses_day2.npz")
    pairs = np.genfromtxt(out / "matches.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(renamed["unit_id"], pairs["day1_unit"].astype(np.int64))
    columns = [int(np.flatnonzero(raw["unit_id"] == u)[0]) for u in pairs["day2_unit"].astype(np.int64)]
    np.testing.assert_array_equal(renamed["responses"], raw["responses"][:, columns])
    np.testing.assert_array_equal(renamed["stimulus_id"], raw["stimulus_id"])


def test_days_2_needs_a_simulated_session(tmp_path, capsys):
    from twin.data.simulate import simulate
    from twin.data.store import write_session

    ds = simulate(6, 20, 3, 2, size=(16, 24), seed=1)
    ds.attrs["simulated"] = False
    write_session(ds.drop_vars([v for v in ds.variables if str(v).startswith("gt_")]), tmp_path / "real.zarr")
    assert main(["loop", str(tmp_path / "out"), "--session", str(tmp_path / "real.zarr"), "--days", "2"]) == 2
    err = capsys.readouterr().err
    assert "--days 2:" in err and "not a simulated session" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_loop_days_2_end_to_end(tmp_path, capsys):
    from conftest import TINY_LOOP

    (tmp_path / "tiny.toml").write_text(TINY_LOOP)
    out = tmp_path / "out"
    assert main(["loop", str(out), "--neurons", "3", "--config", str(tmp_path / "tiny.toml"), "--days", "2"]) == 0
    result = json.loads((out / "loop.json").read_text())
    assert set(result["seconds"]) == {
        "simulate", "fit", "select", "mei", "export", "day 2", "match", "respond", "closeloop", "total",
    }
    assert result["day2"]["selected"] == 3 and (out / "report" / "index.html").exists()
    assert "selected neurons found again" in capsys.readouterr().out


def test_no_selected_neuron_found_again_still_finishes(loop_dir, tmp_path, capsys):
    from twin.data.simulate import day2

    out = tmp_path / "out"
    shutil.copytree(loop_dir, out, ignore=shutil.ignore_patterns("report", "responses.npz", "loop.json"))
    session = open_session(out / "session.zarr").load()
    lost = sorted(set(session["unit_id"].values.tolist()) - set(day2(session, seed=0)["gt_day1_unit"].values.tolist()))
    selection = {"unit_id": lost[:1]}
    before = {"out": str(out), "twin_median_mei_over_best_natural": None, "true_median_mei_over_best_natural": None}
    stages = Stages(["day 2", "match", "respond", "closeloop"])
    result = day2_stages(stages, out, out / "session.zarr", selection, before, seed=0)
    assert result["day2"]["found_again"] == 0 and result["n_neurons"] == 0
    assert "closeloop" not in result["seconds"] and not (out / "report").exists()
    assert "no selected neuron was found again" in capsys.readouterr().out
    assert json.loads((out / "loop.json").read_text())["units_without_responses"] == lost[:1]
