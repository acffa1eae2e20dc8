"""Several simulated animals and day 2 of the same field of view."""

import numpy as np
import pytest

from twin.cli import main
from twin.data.simulate import DAY2_JITTER_UM, DAY2_LOST, DAY2_NEW, KINDS, day2, ground_truth, simulate
from twin.data.store import open_session

SIZES = ["--neurons", "12", "--train-images", "20", "--test-images", "3", "--repeats", "2", "--size", "16x24"]


def test_animals_write_one_store_each_and_animal_1_is_the_single_animal(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "herd"), "--animals", "3", "--seed", "4", *SIZES]) == 0
    assert sorted(p.name for p in (tmp_path / "herd").iterdir() if p.name != ".twin") == [
        "animal_1.zarr", "animal_2.zarr", "animal_3.zarr",
    ]
    assert main(["simulate", str(tmp_path / "one.zarr"), "--seed", "4", *SIZES]) == 0
    one = open_session(tmp_path / "one.zarr").load()
    animals = [open_session(tmp_path / "herd" / f"animal_{k}.zarr").load() for k in (1, 2, 3)]
    for name in ("images", "responses", "image_id", "cell_x", "gt_filter_even", "gt_kind"):
        np.testing.assert_array_equal(animals[0][name].values, one[name].values)
    for other in animals[1:]:
        assert not np.array_equal(other.images.values, one.images.values)
        assert not np.array_equal(other.gt_filter_even.values, one.gt_filter_even.values)
        # the same kinds of cells in the same proportions
        assert sorted(other.gt_kind.values.tolist()) == sorted(one.gt_kind.values.tolist())
    assert animals[1].attrs["animal"] == "simulated 2" and animals[1].attrs["session"] == "animal_2"
    # existing output refused as everywhere
    assert main(["simulate", str(tmp_path / "herd"), "--animals", "2", *SIZES]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_animals_share_the_population_statistics():
    a, b = (simulate(400, 30, 2, 2, size=(16, 24), seed=1, animal=k) for k in (1, 2))
    pa, pb = ground_truth(a), ground_truth(b)
    assert set(pa["kind"]) == set(pb["kind"]) == set(KINDS)
    for name in ("sigma", "c50", "rmax"):  # same distributions, different draws
        assert not np.array_equal(pa[name], pb[name])
        assert abs(np.median(np.log(pa[name])) - np.median(np.log(pb[name]))) < 0.15


@pytest.fixture(scope="module")
def days():
    one = simulate(200, 40, 6, 3, size=(18, 32), seed=2)
    return one, day2(one, seed=5)


def test_day2_keeps_most_cells_shifts_them_and_hides_the_answer(days):
    one, two = days
    truth = two.gt_day1_unit.values
    kept = truth >= 0
    assert kept.sum() == 200 - round(DAY2_LOST * 200) and (~kept).sum() == round(DAY2_NEW * 200)
    assert len(np.unique(truth[kept])) == kept.sum()
    np.testing.assert_array_equal(two.unit_id.values, np.arange(two.sizes["neuron"]))
    assert np.mean(two.unit_id.values[kept] == truth[kept]) < 0.1  # ids say nothing of day 1
    xyz1 = np.stack([one[f"cell_{a}"].values for a in "xyz"], 1)[truth[kept]]
    xyz2 = np.stack([two[f"cell_{a}"].values for a in "xyz"], 1)[kept]
    shift = np.array(two.attrs["gt_shift_um"])
    assert 20 <= np.hypot(*shift[:2]) <= 50
    residual = xyz2 - xyz1 - shift
    assert np.abs(residual).max() < 6 * DAY2_JITTER_UM and 0.5 < residual.std() / DAY2_JITTER_UM < 1.5
    # the same neurons (filters), with drifted gains
    np.testing.assert_array_equal(two.gt_filter_even.values[kept], one.gt_filter_even.values[truth[kept]])
    drift = two.gt_rmax.values[kept] / one.gt_rmax.values[truth[kept]]
    assert 0.1 < np.log(drift).std() < 0.3
    np.testing.assert_allclose(two.gt_event_size.values[kept] / one.gt_event_size.values[truth[kept]], drift, rtol=1e-5)


def test_day2_shows_day1_test_images_again_under_other_ids(days):
    one, two = days

    def test_images(ds):
        test = ds.tier.values == "test"
        return {ds.images.values[i].tobytes(): ds.image_id.values[i] for i in np.flatnonzero(test)}

    first, second = test_images(one), test_images(two)
    assert set(first) == set(second) and len(first) == 6
    assert sum(first[k] == second[k] for k in first) < 6
    assert (two.tier.values == "test").sum() == 6 * 3
    train = np.isin(two.tier.values, ["train", "validation"])
    assert len(np.unique(two.image_id.values[train])) == 40
    assert not set(two.images.values[train][i].tobytes() for i in range(5)) & set(first)


def test_simulate_day2_cli(tmp_path, capsys):
    day1 = tmp_path / "day1.zarr"
    assert main(["simulate", str(day1), *SIZES]) == 0
    assert main(["simulate", str(tmp_path / "day2.zarr"), "--day2-of", str(day1), "--seed", "3"]) == 0
    two = open_session(tmp_path / "day2.zarr")
    assert two.attrs["day"] == 2 and "gt_day1_unit" in two
    assert main(["simulate", str(tmp_path / "x.zarr"), "--day2-of", str(day1), "--neurons", "5"]) == 2
    assert "--neurons with --day2-of" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "x.zarr"), "--day2-of", str(day1), "--types", "2"]) == 2
    assert "--types with --day2-of" in capsys.readouterr().err
    assert main(["simulate", str(day1), "--day2-of", str(day1), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_animals_beyond_the_free_disk_are_refused_before_writing(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "herd"), "--animals", "100000000", *SIZES]) == 2
    err = capsys.readouterr().err
    assert "--animals 100000000" in err and "GiB free" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_day2_of_a_store_with_a_nan_position_names_the_store_given(tmp_path, capsys):
    import zarr

    day1 = tmp_path / "day1.zarr"
    assert main(["simulate", str(day1), *SIZES]) == 0
    array = zarr.open_array(str(day1 / "cell_y"), mode="r+")
    values = array[...]
    values[3] = np.nan
    array[...] = values
    assert main(["simulate", str(tmp_path / "d2.zarr"), "--day2-of", str(day1)]) == 2
    err = capsys.readouterr().err
    assert f"{day1}: variable 'cell_y' holds NaN" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d2.zarr").exists()
