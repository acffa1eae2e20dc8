"""Video sessions in the store: schema, round trip, statistics over recorded frames, errors."""

import numpy as np
import pytest

from twin import metrics
from twin.cli import main
from twin.data.schema import is_video, make_session, validate
from twin.data.simulate import simulate
from twin.data.store import open_session, session_info, write_session
from twin.errors import SessionError

FRAME_COUNT = np.array([10, 7, 9, 10, 6, 8, 10, 10])


def video_arrays(seed: int = 0) -> dict:
    """8 trials of up to 10 frames at 8x12 pixels, 3 neurons; padding as the schema states."""
    rng = np.random.default_rng(seed)
    n_trials, n_frames = len(FRAME_COUNT), FRAME_COUNT.max()
    padded = np.arange(n_frames) >= FRAME_COUNT[:, None]
    responses = rng.gamma(2.0, 1.0, (n_trials, n_frames, 3)).astype(np.float32)
    responses[padded] = np.nan
    behavior = rng.normal(size=(n_trials, n_frames, 2)).astype(np.float32)
    pupil = rng.normal(size=(n_trials, n_frames, 2)).astype(np.float32)
    for i, count in enumerate(FRAME_COUNT):
        behavior[i, count:] = behavior[i, count - 1]
        pupil[i, count:] = pupil[i, count - 1]
    return dict(
        images=rng.integers(0, 256, (n_trials, n_frames, 8, 12), dtype=np.uint8),
        responses=responses,
        tier=np.array(["train"] * 5 + ["test"] * 3),
        image_id=np.array([0, 1, 2, 3, 4, 5, 5, 6]),
        behavior=behavior,
        behavior_names=["pupil", "running"],
        pupil_center=pupil,
        frame_count=FRAME_COUNT,
        attrs={"frame_rate": 30.0, "source": "test"},
    )


@pytest.fixture
def video():
    return make_session("video.npz", **video_arrays())


def test_make_session_builds_a_video_session(video):
    assert is_video(video)
    assert video["images"].dims == ("trial", "frame", "y", "x")
    assert video["responses"].dims == ("trial", "frame", "neuron")
    assert video["behavior"].dims == ("trial", "frame", "behavior_var")
    assert video["pupil_center"].dims == ("trial", "frame", "xy")
    assert video["frame_count"].dtype == np.int64
    np.testing.assert_array_equal(video["frame_count"].values, FRAME_COUNT)
    assert video.attrs["frame_rate"] == 30.0


def test_colour_video_has_a_channel_dim_after_frame():
    arrays = video_arrays()
    arrays["images"] = np.repeat(arrays["images"][:, :, None], 3, axis=2)
    ds = make_session("video.npz", **arrays)
    assert ds["images"].dims == ("trial", "frame", "channel", "y", "x")


def test_round_trip_keeps_every_value_dtype_and_attr(video, tmp_path):
    write_session(video, tmp_path / "v.zarr")
    opened = open_session(tmp_path / "v.zarr")
    assert is_video(opened)
    for name, var in video.variables.items():
        stored = opened[name]
        assert stored.dims == var.dims, name
        if var.dtype.kind == "O":
            assert list(stored.values.astype(object)) == list(var.values), name
        else:
            assert stored.dtype == var.dtype, name
            np.testing.assert_array_equal(stored.values, var.values, err_msg=name)
    assert opened.attrs["frame_rate"] == 30.0
    assert opened.attrs["pixel_range"] == [0.0, 255.0]


def test_statistics_use_only_recorded_frames_of_train_trials(video, tmp_path):
    write_session(video, tmp_path / "v.zarr")
    opened = open_session(tmp_path / "v.zarr")
    train = np.flatnonzero(video.tier.values == "train")
    frames = lambda name: np.concatenate(  # noqa: E731
        [video[name].values[i, : FRAME_COUNT[i]].astype(np.float64) for i in train]
    )
    pixels, responses = frames("images"), frames("responses")
    assert not np.isnan(responses).any()
    np.testing.assert_allclose(float(opened.stats_image_mean), pixels.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(opened.stats_image_std), pixels.std(), rtol=1e-6)
    np.testing.assert_allclose(opened.stats_image_pixel_mean.values, pixels.mean(0), rtol=1e-5)
    assert opened.stats_image_pixel_mean.dims == ("y", "x")
    assert float(opened.stats_image_max) == pixels.max()
    np.testing.assert_allclose(opened.stats_response_mean.values, responses.mean(0), rtol=1e-5)
    np.testing.assert_allclose(opened.stats_response_std.values, responses.std(0), rtol=1e-5)
    np.testing.assert_allclose(opened.stats_behavior_std.values, frames("behavior").std(0), rtol=1e-5)
    np.testing.assert_allclose(opened.stats_pupil_center_mean.values, frames("pupil_center").mean(0), rtol=1e-5)


def test_store_is_chunked_along_trials_only(video, tmp_path):
    write_session(video, tmp_path / "v.zarr")
    opened = open_session(tmp_path / "v.zarr")
    assert opened.images.encoding["chunks"][1:] == (10, 8, 12)
    assert opened.responses.encoding["chunks"][1:] == (10, 3)


def test_image_sessions_have_no_frame_axis(tmp_path):
    images = simulate(12, 40, 4, 3, size=(16, 24), seed=1)
    assert not is_video(images)
    write_session(images, tmp_path / "s.zarr")
    opened = open_session(tmp_path / "s.zarr")
    assert not is_video(opened)
    assert "frame_count" not in opened and "frame" not in opened.dims
    assert "frame_rate" not in opened.attrs


def without_frame_rate(ds):
    ds = ds.copy()
    del ds.attrs["frame_rate"]
    return ds


BAD_DATASETS = {
    "frame_count missing": (
        lambda ds: ds.drop_vars("frame_count"),
        "variable 'frame_count' is missing; add it (trial,) int64",
    ),
    "frame_rate missing": (without_frame_rate, "attribute 'frame_rate' is missing"),
    "frame_rate zero": (lambda ds: ds.assign_attrs(frame_rate=0.0), "attribute 'frame_rate' is 0.0"),
    "frame_count too large": (
        lambda ds: ds.assign(frame_count=ds.frame_count + 1),
        "variable 'frame_count' is 11 on trial 0; give 1..10",
    ),
    "frame_count zero": (
        lambda ds: ds.assign(frame_count=ds.frame_count * 0),
        "variable 'frame_count' is 0 on trial 0; give 1..10",
    ),
    "responses past frame_count": (
        lambda ds: ds.assign(responses=ds.responses.fillna(1.0)),
        "variable 'responses' has values past frame_count on trial 1",
    ),
    "responses without frame": (
        lambda ds: ds.assign(responses=ds.responses.isel(frame=0)),
        "variable 'responses' has dims ('trial', 'neuron'); a video session",
    ),
    "behavior without frame": (
        lambda ds: ds.assign(behavior=ds.behavior.isel(frame=0)),
        "variable 'behavior' has dims ('trial', 'behavior_var'); a video session",
    ),
    "frame_count dtype": (
        lambda ds: ds.assign(frame_count=ds.frame_count.astype(np.float32)),
        "variable 'frame_count' has dtype float32; convert it to int64",
    ),
}


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_validate_rejects_bad_video_datasets_in_one_line(video, case):
    change, message = BAD_DATASETS[case]
    with pytest.raises(SessionError) as error:
        validate(change(video), "v.zarr")
    assert str(error.value).startswith("v.zarr: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_image_session_with_video_fields_is_refused():
    images = simulate(12, 40, 4, 3, size=(16, 24), seed=1)
    with pytest.raises(SessionError, match="'frame_rate' is given for an image session"):
        validate(images.assign_attrs(frame_rate=30.0), "s.zarr")


BAD_ARRAYS = {
    "images frames": (
        lambda a: a.update(images=a["images"][:, :9]),
        "variable 'images' has 9 frames but 'responses' has 10; give both the same frames",
    ),
    "behavior frames": (
        lambda a: a.update(behavior=a["behavior"][:, :4]),
        "variable 'behavior' has 4 frames but 'responses' has 10",
    ),
    "pupil without frames": (
        lambda a: a.update(pupil_center=a["pupil_center"][:, 0]),
        "variable 'pupil_center' has shape (8, 2); give (trial, frame, ...)",
    ),
    "images ndim": (
        lambda a: a.update(images=a["images"][:, :, 0]),
        "variable 'responses' has shape (8, 10, 3) but 'images' (8, 10, 12) has no frame axis",
    ),
    "frame_count trials": (
        lambda a: a.update(frame_count=a["frame_count"][:5]),
        "variable 'frame_count' has 5 trials but 'responses' has 8",
    ),
    "frame_count for images": (
        lambda a: a.update(responses=a["responses"][:, 0], images=a["images"][:, 0]),
        "variable 'frame_count' is given for responses (trial, neuron)",
    ),
    "no frame_rate": (
        lambda a: a.update(attrs={}),
        "attribute 'frame_rate' is missing",
    ),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_make_session_rejects_bad_video_arrays_in_one_line(case):
    arrays = video_arrays()
    change, message = BAD_ARRAYS[case]
    change(arrays)
    with pytest.raises(SessionError) as error:
        make_session("video.npz", **arrays)
    assert str(error.value).startswith("video.npz: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_info_shows_frames_frame_rate_and_clip_length(video, tmp_path, capsys):
    write_session(video, tmp_path / "v.zarr")
    info = session_info(open_session(tmp_path / "v.zarr"), tmp_path / "v.zarr")
    assert info["frames"] == {"min": 6, "median": 9.5, "max": 10}
    assert info["frame_rate"] == 30.0 and info["clip_frames"] == 10  # default 80, cut to the 10 frames
    assert info["image_shape"] == [8, 12]
    assert info["missing_responses"] == 0  # padding is not missing
    # One test video repeats, but evaluate scores frames after the 50-frame burn-in only.
    assert info["repeat_metrics"] == "n/a: only 0 test frames are repeated (at least 20 needed)"
    assert main(["info", str(tmp_path / "v.zarr")]) == 0
    out = capsys.readouterr().out
    assert "frames       6..10 per trial (median 9.5) at 30 Hz; training clips of 10 frames" in out


def test_video_oracle_pairs_each_frame_with_the_same_frame_of_other_repeats(tmp_path):
    rng = np.random.default_rng(3)
    n_videos, repeats, n_frames, burn_in = 20, 3, 56, metrics.BURN_IN_FRAMES
    signal = rng.gamma(2.0, 1.0, (n_videos, n_frames, 4))
    image_id = np.r_[np.arange(100, 110), np.repeat(np.arange(n_videos), repeats)]
    count = rng.integers(burn_in + 3, n_frames + 1, len(image_id))
    responses = np.full((len(image_id), n_frames, 4), np.nan, np.float32)
    rows, ids = [], []
    for trial, (video, frames) in enumerate(zip(image_id, count)):
        values = (signal[video % n_videos, :frames] + rng.normal(0, 0.5, (frames, 4))).astype(np.float32)
        responses[trial, :frames] = values
        if trial >= 10:  # test trials: the frames after the burn-in are scored
            rows.append(values[burn_in:])
            ids.extend(video * n_frames + np.arange(burn_in, frames))
    ds = make_session(
        "v.npz",
        images=rng.integers(0, 256, (len(image_id), n_frames, 4, 4), dtype=np.uint8),
        responses=responses,
        tier=["train"] * 10 + ["test"] * (n_videos * repeats),
        image_id=image_id,
        frame_count=count,
        attrs={"frame_rate": 30.0},
    )
    write_session(ds, tmp_path / "v.zarr")
    info = session_info(open_session(tmp_path / "v.zarr"), tmp_path / "v.zarr")
    expected = metrics.oracle_correlation(np.concatenate(rows), np.array(ids))
    assert info["oracle_correlation"] == pytest.approx(float(np.nanmean(expected)), rel=1e-9)
    assert info["oracle_correlation"] > 0.5
