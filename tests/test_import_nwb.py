"""twin import nwb: two-photon sessions in NWB files, written here with pynwb."""

from datetime import UTC, datetime

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.base import ImageReferences, Images
from pynwb.behavior import BehavioralTimeSeries
from pynwb.image import GrayscaleImage, ImageSeries, IndexSeries, RGBImage
from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel

from twin.cli import main
from twin.data.store import open_session

N_TEMPLATES, N_ROIS, RATE = 32, 5, 8.0  # 8 Hz: sample times k / 8 are exact binary fractions
ROI_IDS = [10, 11, 12, 13, 14]
BASELINE = np.array([0.5, 1.0, 1.5, 2.0, 2.5])


def design(seed: int = 0) -> np.ndarray:
    """(42,) template index per presentation: templates 0 and 1 five times each, 2..31 once, and
    two blank presentations (-1), shuffled."""
    shown = np.array([0] * 5 + [1] * 5 + list(range(2, N_TEMPLATES)) + [-1, -1])
    return np.random.default_rng(seed).permutation(shown)


def templates(rgb: bool = False) -> np.ndarray:
    """Distinct uint8 templates (image, 8, 8) or (image, 8, 8, 3)."""
    shape = (N_TEMPLATES, 8, 8, 3) if rgb else (N_TEMPLATES, 8, 8)
    return np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)


def presentation_responses(n: int) -> np.ndarray:
    """(presentation, roi) the trace's value during each presentation."""
    return np.random.default_rng(2).uniform(3.0, 9.0, (n, N_ROIS)).round(3)


def trace(index: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, roi) trace at RATE from 0 s: BASELINE everywhere except values[i] during
    presentation i, which starts at 1 + i s and lasts 0.5 s; and its sample times."""
    times = np.arange(int((len(index) + 2) * RATE)) / RATE
    data = np.tile(BASELINE, (len(times), 1))
    for i in range(len(index)):
        data[(times >= 1 + i) & (times < 1.5 + i)] = values[i]
    return data, times


def write_nwb(
    path,
    *,
    series=("DfOverF",),
    rgb: bool = False,
    images_container: bool = False,
    timestamps: bool = True,
    table: str = "natural_scenes_presentations",
    column: str = "frame",
    pixel_masks: bool = False,
    movie: bool = False,
    seed: int = 0,
):
    """An NWB file of a two-photon session; returns (template index per presentation (42,),
    trace value per presentation (42, roi), templates)."""
    index = design(seed)
    values = presentation_responses(len(index))
    data, times = trace(index, values)
    pictures = templates(rgb)
    nwb = NWBFile(
        session_description="twin test", identifier="nwb-test",
        session_start_time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    plane = nwb.create_imaging_plane(
        name="plane", description="V1", device=nwb.create_device(name="scope"),
        optical_channel=OpticalChannel(name="green", description="GCaMP", emission_lambda=510.0),
        excitation_lambda=920.0, imaging_rate=RATE, indicator="GCaMP6f", location="VISp",
        grid_spacing=[2e-6, 3e-6], origin_coords=[0.0, 0.0, 1e-4],
    )
    segmentation = ImageSegmentation()
    cells = segmentation.create_plane_segmentation(
        description="cells", imaging_plane=plane, name="PlaneSegmentation"
    )
    for k, roi_id in enumerate(ROI_IDS):  # ROI k is centred on pixel x = k, y = k + 1
        if pixel_masks:
            cells.add_roi(id=roi_id, pixel_mask=[(k, k, 1.0), (k, k + 2, 1.0)])
        else:
            mask = np.zeros((16, 16))
            mask[k, k : k + 3] = 0.5
            cells.add_roi(id=roi_id, image_mask=mask)
    ophys = nwb.create_processing_module(name="ophys", description="two-photon")
    ophys.add(segmentation)
    region = cells.create_roi_table_region(description="all", region=list(range(N_ROIS)))
    timing = {"timestamps": times} if timestamps else {"starting_time": 0.0, "rate": RATE}
    for name in series:
        interface = DfOverF() if name == "DfOverF" else Fluorescence()
        ophys.add(interface)
        interface.create_roi_response_series(
            name="RoiResponseSeries", data=data, unit="n.a.", rois=region, **timing
        )
    # running speed 10 + i during presentation i (0 between them), at 16 Hz; pupil area 2.0 with
    # NaN samples (blinks)
    fast = np.arange(int((len(index) + 2) * 16)) / 16
    speed = np.zeros(len(fast))
    for i in range(len(index)):
        speed[(fast >= 1 + i) & (fast < 1.5 + i)] = 10 + i
    running = nwb.create_processing_module(name="running", description="wheel")
    running.add(BehavioralTimeSeries(TimeSeries(name="running_speed", data=speed, unit="cm/s", rate=16.0)))
    pupil = np.full(len(times), 2.0)
    pupil[::3] = np.nan
    nwb.add_acquisition(TimeSeries(name="pupil_area", data=pupil, unit="px", timestamps=times))
    if images_container:
        kind = RGBImage if rgb else GrayscaleImage
        items = [kind(name=f"im{i:03d}", data=p) for i, p in enumerate(pictures)]
        order = ImageReferences(name="order_of_images", data=items)
        shown = Images(name="natural_scenes", images=items, description="templates", order_of_images=order)
    else:
        shown = ImageSeries(name="natural_scenes", data=pictures, unit="n.a.", rate=1.0)
    nwb.add_stimulus_template(shown)
    onsets = 1.0 + np.arange(len(index))
    if table == "IndexSeries":  # image i from its timestamp on; uint32 data cannot hold blanks (-1)
        nwb.add_stimulus(
            IndexSeries(
                name="scenes", data=index[index >= 0].astype(np.uint32), unit="N/A", indexed_images=shown,
                timestamps=onsets[index >= 0],
            )
        )
    elif table == "trials":
        nwb.add_trial_column(name=column, description="template index")
        for onset, i in zip(onsets, index):
            nwb.add_trial(start_time=onset, stop_time=onset + 0.5, **{column: int(i)})
    else:
        intervals = nwb.create_time_intervals(name=table, description="natural scenes")
        intervals.add_column(name=column, description="template index")
        for onset, i in zip(onsets, index):  # float indices, as the Allen Brain Observatory stores them
            intervals.add_interval(start_time=onset, stop_time=onset + 0.5, **{column: float(i)})
    if movie:  # a second stimulus with its own table and template entry, as Allen sessions have
        frames = np.zeros((3, 8, 8), dtype=np.uint8)
        nwb.add_stimulus_template(ImageSeries(name="natural_movie_one", data=frames, unit="n.a.", rate=30.0))
        clips = nwb.create_time_intervals(name="natural_movie_one_presentations", description="movie")
        clips.add_column(name="frame", description="frame index")
        for i in range(3):
            clips.add_interval(start_time=50.0 + i / 30, stop_time=50.0 + (i + 1) / 30, frame=i)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return index, values, pictures


def assert_positions(ds) -> None:
    """Mask centres (k, k + 1) pixels times the grid spacing 2 x 3 um, at the plane's z 100 um."""
    k = np.arange(N_ROIS)
    np.testing.assert_allclose(ds["cell_x"].values, 2.0 * k, atol=1e-4)
    np.testing.assert_allclose(ds["cell_y"].values, 3.0 * (k + 1), atol=1e-4)
    np.testing.assert_allclose(ds["cell_z"].values, 100.0, atol=1e-4)
    assert ds.attrs["cell_positions"] == "PlaneSegmentation mask centres x plane.grid_spacing"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_imports_window_means_ids_tiers_and_labels(tmp_path, capsys):
    index, values, pictures = write_nwb(tmp_path / "s.nwb")
    out = tmp_path / "s.zarr"
    assert run(["import", "nwb", tmp_path / "s.nwb", out], capsys) == (0, "")
    ds = open_session(out)
    shown = index >= 0
    np.testing.assert_allclose(ds["responses"].values, values[shown], rtol=1e-6)
    np.testing.assert_array_equal(ds["images"].values, pictures[index[shown]])
    assert ds["unit_id"].values.tolist() == ROI_IDS
    assert_positions(ds)
    assert ds["image_id"].values.tolist() == index[shown].tolist()
    assert ds["image_name"].values.tolist() == [f"natural_scenes[{i}]" for i in index[shown]]
    tier = ds["tier"].values
    repeated = np.isin(index[shown], [0, 1])
    assert set(tier[repeated]) == {"test"} and not np.any(tier[~repeated] == "test")
    assert ds.attrs["left_out"] == "2 presentations with frame -1 (blank screen)"
    assert ds.attrs["response_window"] == "start_time..stop_time"


def test_window_rate_rgb_images_container_and_trials(tmp_path, capsys):
    """--window 0,1 averages half presentation, half baseline; starting_time + rate instead of
    timestamps; RGB templates in an Images container; the table is nwb.trials."""
    path = tmp_path / "s.nwb"
    index, values, pictures = write_nwb(
        path, rgb=True, images_container=True, timestamps=False, table="trials", column="image_index",
        pixel_masks=True,
    )
    out = tmp_path / "s.zarr"
    assert run(["import", "nwb", path, out, "--window", "0,1"], capsys) == (0, "")
    ds = open_session(out)
    shown = index >= 0
    np.testing.assert_allclose(ds["responses"].values, (values[shown] + BASELINE) / 2, rtol=1e-6)
    assert ds["images"].dims == ("trial", "channel", "y", "x")
    np.testing.assert_array_equal(ds["images"].values, np.moveaxis(pictures[index[shown]], -1, 1))
    assert ds["image_name"].values.tolist() == [f"im{i:03d}" for i in index[shown]]
    assert ds.attrs["response_window"] == "onset+0..onset+1 s"
    assert_positions(ds)


def test_responses_pick_seed_tiers_shift_and_size(tmp_path, capsys):
    path = tmp_path / "s.nwb"
    index, values, _ = write_nwb(path, series=("Fluorescence", "DfOverF"))
    out = tmp_path / "s.zarr"
    code, err = run(["import", "nwb", path, out], capsys)
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "ophys/DfOverF/RoiResponseSeries, ophys/Fluorescence/RoiResponseSeries; pick one with --responses" in err
    shown = index >= 0
    tiers = np.where(np.isin(index[shown], [0, 1]), "test", np.where(index[shown] % 2, "validation", "train"))
    np.save(tmp_path / "tiers.npy", tiers)
    argv = ["import", "nwb", path, out, "--responses", "Fluorescence", "--tiers", tmp_path / "tiers.npy",
            "--shift-responses", "global", "--size", "16x16"]
    assert run(argv, capsys) == (0, "")
    ds = open_session(out)
    assert ds["tier"].values.tolist() == tiers.tolist()
    np.testing.assert_allclose(ds["responses"].values + ds["response_offset"].values, values[shown], rtol=1e-6)
    assert ds["images"].shape[1:] == (16, 16)


def test_seed_changes_the_split_of_unrepeated_images(tmp_path, capsys):
    write_nwb(tmp_path / "s.nwb")
    splits = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}.zarr"
        assert run(["import", "nwb", tmp_path / "s.nwb", out, "--seed", seed], capsys)[0] == 0
        splits.append(open_session(out)["tier"].values.tolist())
    assert splits[0] != splits[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--window", "0,9"], "s lies outside ophys/DfOverF/RoiResponseSeries (0..44 s); pass a --window inside"),
        (["--window", "0.01,0.1"], "holds no sample of ophys/DfOverF/RoiResponseSeries (one every 0.125 s)"),
        (["--responses", "Deconvolved"], "--responses 'Deconvolved' names none of them"),
        (["--image-column", "image_index"], "no table with a column image_index (tables: natural_scenes_presentations)"),
        (["--templates", "movie"], "--templates 'movie' names none of them"),
    ],
)
def test_bad_choices_fail_in_one_line(tmp_path, capsys, argv, message):
    write_nwb(tmp_path / "s.nwb")
    out = tmp_path / "s.zarr"
    code, err = run(["import", "nwb", tmp_path / "s.nwb", out, *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith(f"twin import: error: {tmp_path / 's.nwb'}: ")
    assert not out.exists()


@pytest.mark.parametrize(
    "window, message",
    [("0.5", "--window '0.5': write START,END"), ("0.5,0.1", "--window '0.5,0.1': give finite START below END")],
)
def test_bad_window_flags(tmp_path, capsys, window, message):
    write_nwb(tmp_path / "s.nwb")
    code, err = run(["import", "nwb", tmp_path / "s.nwb", tmp_path / "s.zarr", f"--window={window}"], capsys)
    assert code == 2 and err.startswith(f"twin import: error: {message}") and err.count("\n") == 1


def test_not_an_nwb_file(tmp_path, capsys):
    path = tmp_path / "s.nwb"
    path.write_bytes(b"not hdf5")
    code, err = run(["import", "nwb", path, tmp_path / "s.zarr"], capsys)
    assert code == 2 and err == f"twin import: error: {path}: is not an HDF5 file (NWB 2 files are HDF5); pass an .nwb file, or download it again\n"


def test_several_tables_pick_one_and_its_templates_follow(tmp_path, capsys):
    path, out = tmp_path / "s.nwb", tmp_path / "s.zarr"
    index, values, _ = write_nwb(path, movie=True)
    code, err = run(["import", "nwb", path, out], capsys)
    assert code == 2 and not out.exists()
    assert err == (
        f"twin import: error: {path}: holds 2 stimulus tables: natural_movie_one_presentations,"
        " natural_scenes_presentations; pick one with --stimulus-table NAME\n"
    )
    assert run(["import", "nwb", path, out, "--stimulus-table", "natural_scenes_presentations"], capsys) == (0, "")
    ds = open_session(out)
    np.testing.assert_allclose(ds["responses"].values, values[index >= 0], rtol=1e-6)
    assert "natural_scenes" in ds.attrs["source"]


def test_hdf5_that_is_not_nwb(tmp_path, capsys):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    code, err = run(["import", "nwb", path, tmp_path / "s.zarr"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"twin import: error: {path}: cannot be read as NWB (")


def test_behavior_series_are_window_means_of_finite_samples(tmp_path, capsys):
    path, out = tmp_path / "s.nwb", tmp_path / "s.zarr"
    index, _, _ = write_nwb(path)
    argv = ["import", "nwb", path, out, "--behavior", "running_speed", "--behavior", "pupil_area"]
    assert run(argv, capsys) == (0, "")
    ds = open_session(out)
    assert ds["behavior_var"].values.tolist() == ["running/BehavioralTimeSeries/running_speed", "acquisition/pupil_area"]
    np.testing.assert_allclose(ds["behavior"].values[:, 0], 10 + np.flatnonzero(index >= 0))
    np.testing.assert_allclose(ds["behavior"].values[:, 1], 2.0)
    code, err = run(["import", "nwb", path, tmp_path / "t.zarr", "--behavior", "pupil"], capsys)
    assert code == 2 and "--behavior 'pupil' names none of them; the TimeSeries are acquisition/pupil_area," in err


def test_index_series_presentations_use_the_images_they_index(tmp_path, capsys):
    """An IndexSeries in nwb.stimulus instead of a table: image i shows from its timestamp to the
    next, and its indexed_images are the templates (the other entry is not asked about)."""
    path, out = tmp_path / "s.nwb", tmp_path / "s.zarr"
    index, values, pictures = write_nwb(path, images_container=True, table="IndexSeries", movie=True)
    argv = ["import", "nwb", path, out, "--stimulus-table", "scenes", "--window", "0,0.5"]
    assert run(argv, capsys) == (0, "")
    ds = open_session(out)
    shown = index >= 0
    np.testing.assert_allclose(ds["responses"].values, values[shown], rtol=1e-6)
    np.testing.assert_array_equal(ds["images"].values, pictures[index[shown]])
    assert ds["image_name"].values.tolist() == [f"im{i:03d}" for i in index[shown]]
    assert "stimulus/scenes.data" in ds.attrs["source"]
