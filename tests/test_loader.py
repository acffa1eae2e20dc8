"""Loader: normalization with the stored statistics, epochs, several sessions."""

import numpy as np
import pytest

from twin.config import DataConfig
from twin.data.loader import batches, load_session, load_sessions
from twin.data.schema import make_session
from twin.data.simulate import simulate
from twin.data.store import open_session, write_session
from twin.errors import ConfigError, SessionError


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    write_session(simulate(10, 50, 4, 3, size=(16, 24), seed=0), root / "a.zarr")
    write_session(simulate(7, 30, 3, 2, size=(16, 24), seed=1), root / "b.zarr")
    return root / "a.zarr", root / "b.zarr"


def test_images_are_channels_last_and_globally_normalized(stores):
    session = load_session(stores[0], DataConfig())
    assert session.images.shape == (62, 16, 24, 1) and session.images.dtype == np.float32
    train = session.images[session.trials("train")]
    assert abs(train.mean()) < 1e-5 and train.std() == pytest.approx(1, rel=1e-5)
    assert session.image_mean.shape == ()
    assert session.name == "a" and session.channels == 1 and session.image_shape == (16, 24)


def test_per_pixel_normalization(stores):
    session = load_session(stores[0], DataConfig(image_normalization="per_pixel"))
    train = session.images[session.trials("train")]
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    assert session.image_mean.shape == (16, 24)
    lo, hi = session.pixel_range
    assert lo.shape == (16, 24) and (lo < hi).all()


@pytest.mark.parametrize("normalization", ["global", "per_pixel"])
def test_one_channel_stored_with_a_channel_axis_loads_as_one_channel(tmp_path, normalization):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (20, 8, 10), dtype=np.uint8)
    common = dict(
        responses=rng.random((20, 3)).astype(np.float32), tier=["train"] * 15 + ["test"] * 5, image_id=np.arange(20)
    )
    write_session(make_session("flat", images=pixels, **common), tmp_path / "flat.zarr")
    write_session(make_session("axis", images=pixels[:, None], **common), tmp_path / "axis.zarr")
    config = DataConfig(image_normalization=normalization)
    flat, axis = load_session(tmp_path / "flat.zarr", config), load_session(tmp_path / "axis.zarr", config)
    assert axis.images.shape == (20, 8, 10, 1) and axis.channels == 1
    assert axis.image_mean.shape == flat.image_mean.shape == ((8, 10) if normalization == "per_pixel" else ())
    np.testing.assert_allclose(axis.images, flat.images, rtol=1e-6)
    np.testing.assert_allclose(axis.normalize_images(pixels), flat.images[..., 0], rtol=1e-6)


def test_normalize_and_denormalize_are_inverse(stores):
    session = load_session(stores[0], DataConfig())
    pixels = np.linspace(0, 255, 16 * 24).reshape(16, 24)
    np.testing.assert_allclose(session.denormalize_images(session.normalize_images(pixels)), pixels, atol=1e-3)
    lo, hi = session.pixel_range
    assert lo == pytest.approx(float(session.normalize_images(0.0)))
    assert hi == pytest.approx(float(session.normalize_images(255.0)))


def test_responses_divided_by_the_floored_train_std(stores):
    session = load_session(stores[0], DataConfig())
    train = session.responses[session.trials("train")]
    np.testing.assert_allclose(train.std(0), 1, rtol=1e-4)
    np.testing.assert_allclose(session.mean_response, train.mean(0))
    # Raw responses come back when multiplied by response_std.
    raw = open_session(stores[0]).responses.values
    np.testing.assert_allclose(session.responses * session.response_std, raw, rtol=1e-5, atol=1e-7)


def test_std_floor_for_silent_neurons(tmp_path):
    rng = np.random.default_rng(0)
    responses = rng.random((20, 3)).astype(np.float32) * [1, 3, 0]
    responses[:, 2] = 0.5  # a constant neuron: its std is replaced by the floor
    ds = make_session(
        "floor", images=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), responses=responses,
        tier=["train"] * 15 + ["test"] * 5, image_id=np.arange(20),
    )
    write_session(ds, tmp_path / "f.zarr")
    session = load_session(tmp_path / "f.zarr", DataConfig(response_std_floor=0.1))
    stds = responses[:15].std(0)
    floor = 0.1 * stds.mean()
    np.testing.assert_allclose(session.response_std, [stds[0], stds[1], floor], rtol=1e-5)
    np.testing.assert_allclose(session.responses[:, 2], 0.5 / floor, rtol=1e-5)


def test_behavior_scaled_and_pupil_standardized(stores):
    session = load_session(stores[0], DataConfig())
    train = session.trials("train")
    np.testing.assert_allclose(session.behavior[train].std(0), 1, rtol=1e-4)
    assert session.behavior[train, 0].mean() > 3  # scaled, not centered (pupil ~ 20 / 3)
    np.testing.assert_allclose(session.pupil_center[train].mean(0), 0, atol=1e-5)
    assert session.behavior_names == ("pupil", "pupil_derivative", "running")
    assert session.cell_xyz.shape == (10, 3)


def test_every_train_trial_once_per_epoch_sessions_alternate(stores):
    sessions = load_sessions(stores, DataConfig())
    seen = {0: [], 1: []}
    order = []
    for batch in batches(sessions, "train", 8, shuffle=True, seed=3):
        s = sessions[batch.session]
        np.testing.assert_array_equal(batch.images, s.images[batch.trials])
        np.testing.assert_array_equal(batch.responses, s.responses[batch.trials])
        np.testing.assert_array_equal(batch.behavior, s.behavior[batch.trials])
        assert batch.images.shape[1:] == (16, 24, 1) and len(batch.trials) <= 8
        seen[batch.session].extend(batch.trials)
        order.append(batch.session)
    for index, session in enumerate(sessions):
        np.testing.assert_array_equal(np.sort(seen[index]), session.trials("train"))
    assert order[:6] == [0, 1, 0, 1, 0, 1]
    assert seen[0] != sorted(seen[0])


def test_shuffle_follows_the_seed_and_drop_last(stores):
    session = load_session(stores[0], DataConfig())

    def trials(**kwargs):
        return [b.trials.tolist() for b in batches([session], "train", 8, **kwargs)]

    assert trials(shuffle=True, seed=1) == trials(shuffle=True, seed=1)
    assert trials(shuffle=True, seed=1) != trials(shuffle=True, seed=2)
    assert sum(trials(shuffle=False), []) == session.trials("train").tolist()
    kept = trials(shuffle=True, seed=1, drop_last=True)
    assert all(len(t) == 8 for t in kept) and len(kept) == len(session.trials("train")) // 8


def test_bad_requests(stores, tmp_path):
    session = load_session(stores[0], DataConfig())
    with pytest.raises(ConfigError, match="tier 'training'"):
        list(batches([session], "training", 8, shuffle=False))
    write_session(simulate(3, 10, 2, 2, size=(12, 12), seed=0), tmp_path / "c.zarr")
    with pytest.raises(SessionError, match="one image shape"):
        load_sessions([stores[0], tmp_path / "c.zarr"], DataConfig())


@pytest.mark.parametrize("normalization", ["global", "per_pixel"])
def test_channel_images_come_channels_last(tmp_path, normalization):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 2, 8, 10), dtype=np.uint8)
    images[:, 1] //= 4  # channels with different statistics
    ds = make_session(
        "channels", images=images, responses=rng.random((20, 3)),
        tier=["train"] * 15 + ["test"] * 5, image_id=np.arange(20),
    )
    write_session(ds, tmp_path / "c.zarr")
    session = load_session(tmp_path / "c.zarr", DataConfig(image_normalization=normalization))
    assert session.images.shape == (20, 8, 10, 2) and session.channels == 2
    train = session.images[:15]
    np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1, rtol=0.05)
    pixels = np.moveaxis(images[:3], 1, -1)
    np.testing.assert_allclose(session.normalize_images(pixels), session.images[:3], rtol=1e-5, atol=1e-5)


def test_train_fraction_keeps_nested_subsets_of_train_images(stores):
    full = load_session(stores[0], DataConfig())
    parts = {f: load_session(stores[0], DataConfig(train_fraction=f)) for f in (0.1, 0.25, 0.5)}
    train_images = np.unique(full.image_id[full.trials("train")])
    previous = set()
    for fraction, session in parts.items():
        kept = set(session.image_id[session.trials("train")].tolist())
        assert len(kept) == round(fraction * len(train_images))
        assert previous <= kept  # smaller fractions are subsets of larger ones
        previous = kept
        for tier in ("validation", "test"):
            np.testing.assert_array_equal(session.trials(tier), full.trials(tier))
        assert sum(len(b.trials) for b in batches([session], "train", 8, shuffle=True)) == len(session.trials("train"))
    with pytest.raises(ConfigError, match="train_fraction"):
        DataConfig(train_fraction=0.0)
