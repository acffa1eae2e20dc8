"""Loader of video sessions: frame axis, normalization over recorded frames, clips, padding masks."""

import numpy as np
import pytest
from test_video_store import FRAME_COUNT, video_arrays

from twin.config import DataConfig
from twin.data.loader import batches, load_session, load_sessions
from twin.data.schema import make_session
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.errors import ConfigError, SessionError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "v.zarr"
    write_session(make_session("video.npz", **video_arrays()), path)
    return path


@pytest.fixture(scope="module")
def session(store):
    return load_session(store)


def test_video_session_has_a_frame_axis(session):
    assert session.video
    assert session.images.shape == (8, 10, 8, 12, 1) and session.images.dtype == np.float32
    assert session.responses.shape == (8, 10, 3)
    assert session.behavior.shape == (8, 10, 2) and session.pupil_center.shape == (8, 10, 2)
    np.testing.assert_array_equal(session.frame_count, FRAME_COUNT)
    assert session.frame_rate == 30.0
    assert session.image_shape == (8, 12) and session.channels == 1 and session.n_neurons == 3
    assert session.mean_response.shape == (3,)


def test_recorded_train_frames_are_normalized(session):
    train = session.trials("train")
    shown = np.arange(10) < FRAME_COUNT[train, None]
    pixels = session.images[train][shown]
    assert abs(pixels.mean()) < 1e-5 and pixels.std() == pytest.approx(1, rel=1e-5)
    padded = ~(np.arange(10) < FRAME_COUNT[:, None])
    assert np.isnan(session.responses[padded]).all()
    assert np.isfinite(session.responses[~padded]).all()


def test_train_means_average_the_recorded_train_frames(session):
    means = session.train_means()
    train = session.trials("train")
    for name in ("behavior", "pupil_center"):
        recorded = [getattr(session, name)[t, : FRAME_COUNT[t]] for t in train]  # not the padding
        np.testing.assert_allclose(means[name], np.concatenate(recorded).mean(0), rtol=1e-5)


def test_colour_video_loads_channels_last(tmp_path):
    arrays = video_arrays()
    arrays["images"] = np.stack([arrays["images"], 255 - arrays["images"], arrays["images"] // 2], axis=2)
    write_session(make_session("video.npz", **arrays), tmp_path / "c.zarr")
    session = load_session(tmp_path / "c.zarr")
    assert session.images.shape == (8, 10, 8, 12, 3) and session.channels == 3
    raw = arrays["images"].astype(np.float32)
    np.testing.assert_allclose(
        session.images[..., 1], (raw[:, :, 1] - session.image_mean[1]) / session.image_std[1], rtol=1e-5, atol=1e-5
    )


def test_whole_trials_mask_their_padding(session):
    seen = []
    for batch in batches([session], "train", 2, shuffle=True, seed=3):
        assert batch.images.shape == (len(batch.trials), 10, 8, 12, 1)
        assert batch.responses.shape == batch.mask.shape == (len(batch.trials), 10, 3)
        assert batch.behavior.shape == batch.pupil_center.shape == (len(batch.trials), 10, 2)
        shown = np.arange(10) < FRAME_COUNT[batch.trials, None]
        np.testing.assert_array_equal(batch.mask, np.repeat(shown[..., None], 3, axis=2))
        assert (batch.responses[~batch.mask] == 0).all()
        np.testing.assert_array_equal(batch.images, session.images[batch.trials])
        seen.extend(batch.trials)
    assert sorted(seen) == list(session.trials("train"))


def clips(session, seed, clip_frames, tier="train"):
    return list(batches([session], tier, 3, shuffle=True, seed=seed, clip_frames=clip_frames))


def clip_starts(session, batch):
    """(b,) the first frame of each clip, found by matching the clip's images to its trial."""
    starts = []
    for row, trial in zip(batch.images, batch.trials):
        t = len(row)
        matches = [s for s in range(11 - t) if np.array_equal(session.images[trial, s : s + t], row)]
        starts.append(matches[0])
    return np.array(starts)


def test_clips_are_seeded_random_windows_of_recorded_frames(session):
    starts = []
    for batch in clips(session, 0, 4):
        assert batch.images.shape == (len(batch.trials), 4, 8, 12, 1)
        assert batch.mask.all()  # clips of 4 frames fit inside every trial's recorded frames
        first = clip_starts(session, batch)
        assert ((first >= 0) & (first <= FRAME_COUNT[batch.trials] - 4)).all()
        for i, (trial, start) in enumerate(zip(batch.trials, first)):
            np.testing.assert_array_equal(batch.responses[i], session.responses[trial, start : start + 4])
            np.testing.assert_array_equal(batch.behavior[i], session.behavior[trial, start : start + 4])
            np.testing.assert_array_equal(batch.pupil_center[i], session.pupil_center[trial, start : start + 4])
        starts.append(first)
    again = [clip_starts(session, b) for b in clips(session, 0, 4)]
    np.testing.assert_array_equal(np.concatenate(starts), np.concatenate(again))
    other = np.concatenate([clip_starts(session, b) for b in clips(session, 1, 4)])
    assert not np.array_equal(np.concatenate(starts), other)


def test_clip_longer_than_a_trial_starts_at_zero_and_masks_padding(session):
    # Trial 4 (train) records 6 frames: an 8-frame clip starts at 0 and its last 2 frames are masked.
    batch, i = next((b, list(b.trials).index(4)) for b in clips(session, 0, 8) if 4 in b.trials)
    np.testing.assert_array_equal(batch.images[i], session.images[4, :8])
    np.testing.assert_array_equal(batch.mask[i].any(axis=1), np.arange(8) < 6)


def test_clip_longer_than_the_session_gives_whole_trials(session):
    assert DataConfig().clip_frames == 80
    for batch in clips(session, 0, DataConfig().clip_frames):
        np.testing.assert_array_equal(batch.images, session.images[batch.trials])


def test_bad_clip_frames_is_a_config_error(session):
    with pytest.raises(ConfigError, match=r"\[data\].clip_frames = 0"):
        clips(session, 0, 0)


def test_image_sessions_ignore_clip_frames(tmp_path):
    write_session(simulate(10, 50, 4, 3, size=(16, 24), seed=0), tmp_path / "a.zarr")
    images = load_session(tmp_path / "a.zarr")
    assert not images.video and images.frame_count is None and images.frame_rate is None
    plain = list(batches([images], "train", 16, shuffle=True, seed=2))
    clipped = list(batches([images], "train", 16, shuffle=True, seed=2, clip_frames=4))
    for a, b in zip(plain, clipped, strict=True):
        np.testing.assert_array_equal(a.trials, b.trials)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.images.ndim == 4 and a.mask is None


def test_image_and_video_sessions_do_not_mix(tmp_path, store):
    arrays = video_arrays()
    write_session(
        make_session(
            "images.npz", images=arrays["images"][:, 0], responses=np.nan_to_num(arrays["responses"][:, 0]),
            tier=arrays["tier"], image_id=arrays["image_id"],
        ),
        tmp_path / "i.zarr",
    )
    with pytest.raises(SessionError, match="has no frame dim but .* is a video session"):
        load_sessions([store, tmp_path / "i.zarr"])
