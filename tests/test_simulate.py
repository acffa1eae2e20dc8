"""The simulated animal: reproducible, realistic noise, recoverable ground truth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin import metrics
from twin.data.simulate import (
    KINDS,
    day2,
    ground_truth,
    ground_truth_ceiling,
    mean_response,
    natural_images,
    respond,
    simulate,
)
from twin.errors import ConfigError, SessionError


@pytest.fixture(scope="module")
def session():
    return simulate(40, 300, 20, 10, size=(36, 64), seed=3)


@pytest.fixture(scope="module")
def params(session):
    return ground_truth(session)


def test_same_seed_same_session_other_seed_differs():
    a = simulate(6, 20, 3, 2, size=(16, 24), seed=5)
    b = simulate(6, 20, 3, 2, size=(16, 24), seed=5)
    c = simulate(6, 20, 3, 2, size=(16, 24), seed=6)
    assert a.identical(b)
    assert not np.array_equal(a.responses.values, c.responses.values)


def test_session_layout(session):
    tier = session.tier.values
    assert (tier == "train").sum() == 270 and (tier == "validation").sum() == 30
    assert (tier == "test").sum() == 200
    test_ids, counts = np.unique(session.image_id.values[tier == "test"], return_counts=True)
    assert len(test_ids) == 20 and set(counts) == {10}
    # Repeats of a test image are the same pixels.
    first = session.images.values[session.image_id.values == test_ids[0]]
    assert (first == first[0]).all()
    assert session.attrs["simulated"] is True
    assert set(session.gt_kind.values) == set(KINDS)


def test_images_are_natural_like():
    images = natural_images(200, (36, 64), np.random.default_rng(0)).astype(np.float64)
    assert 110 < images.mean() < 145 and 15 < images.std() < 50
    # Power falls with spatial frequency roughly as 1/f^2 (amplitude 1/f).
    power = np.abs(np.fft.fft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(36)))
    low = power[:, (f > 0.04) & (f < 0.08)].mean()
    high = power[:, (f > 0.16) & (f < 0.32)].mean()
    assert 4**1.3 < low / high < 4**2.7


def test_responses_look_like_deconvolved_calcium(session):
    responses = session.responses.values
    assert (responses >= 0).all()
    assert 0.2 < (responses == 0).mean() < 0.7
    test = session.tier.values == "test"
    groups = metrics.repeat_groups(session.image_id.values[test])
    r = responses[test]
    # Overdispersed: across-repeat variance exceeds the mean, scaled to event units.
    event = ground_truth(session)["event_size"]
    var = np.mean([r[g].var(0, ddof=1) for g in groups], 0) / event**2
    mean = np.mean([r[g].mean(0) for g in groups], 0) / event
    assert np.median(var / mean) > 1.5


def test_oracle_and_ceiling_in_the_designed_range(session):
    test = session.tier.values == "test"
    oracle = metrics.oracle_correlation(session.responses.values[test], session.image_id.values[test])
    assert 0.5 < oracle.mean() < 0.85
    ceiling = ground_truth_ceiling(session)
    assert ceiling["correlation_to_average"].mean() > 0.85
    assert ceiling["single_trial_correlation"].mean() > oracle.mean() - 0.05


def test_optimal_stimulus_beats_every_training_image(session, params):
    known = ~np.isnan(params["optimal_stimulus"][:, 0, 0])
    np.testing.assert_array_equal(known, ~np.char.endswith(params["kind"].astype(str), "normalized"))
    optimal = params["optimal_stimulus"][known]
    assert optimal.min() >= 0 and optimal.max() <= 255
    norms = np.linalg.norm((optimal - 128).reshape(len(optimal), -1), axis=1)
    np.testing.assert_allclose(norms, params["optimal_norm"][known], rtol=1e-4)
    at_optimum = np.diag(mean_response(params, optimal)[:, known])
    train = session.images.values[session.tier.values == "train"]
    best_train = mean_response(params, train)[:, known].max(axis=0)
    assert (at_optimum > best_train).all()


def test_simple_cell_prefers_its_gabor_over_other_phases_and_neighbours(params):
    i = int(np.flatnonzero(params["kind"] == "simple")[0])
    gabor = params["optimal_stimulus"][i]
    flipped = 256 - gabor  # opposite phase: the rectified drive is zero
    other = params["optimal_stimulus"][np.flatnonzero(params["kind"] == "simple")[1]]
    r = mean_response(params, np.stack([gabor, flipped, other]))[:, i]
    assert r[0] > r[2] and r[0] > r[1]
    assert r[1] == pytest.approx(params["baseline"][i], rel=1e-3)


def test_mean_response_is_the_same_and_differentiable_in_jax(session, params):
    images = session.images.values[:5].astype(np.float32)
    expected = mean_response(params, images)
    got = jax.jit(lambda x: mean_response(params, x, jnp))(images)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-4, atol=1e-6)
    grad = jax.grad(lambda x: mean_response(params, x, jnp).sum())(jnp.asarray(images))
    assert grad.shape == images.shape and float(jnp.abs(grad).max()) > 0


def test_respond_averages_to_the_mean(session, params):
    images = session.images.values[:3]
    mean, noisy = respond(session, images, repeats=4000, seed=0)
    assert mean.shape == (3, 40) and noisy.shape == (4000, 3, 40)
    np.testing.assert_allclose(mean, mean_response(params, images), rtol=1e-5)
    np.testing.assert_allclose(noisy.mean(0), mean, rtol=0.1, atol=0.02)
    again = respond(params, images, repeats=4, seed=1)[1]
    np.testing.assert_array_equal(again, respond(params, images, repeats=4, seed=1)[1])


def test_respond_rejects_images_of_another_size(params):
    with pytest.raises(SessionError, match=r"give \(n, 36, 64\)"):
        respond(params, np.zeros((2, 16, 16)))


def test_bad_arguments_and_non_simulated_sessions(session):
    with pytest.raises(ConfigError, match="--neurons 0"):
        simulate(0, 10, 2, 2)
    with pytest.raises(SessionError, match="not a simulated session"):
        ground_truth(session.drop_vars([n for n in session.variables if n.startswith("gt_")]))


def test_functional_types_share_a_prototype_up_to_small_jitter():
    ds = simulate(24, 30, 2, 2, size=(18, 32), seed=4, types=3)
    params = ground_truth(ds)
    kind_of_type = np.array(KINDS)[np.arange(3)]
    np.testing.assert_array_equal(np.bincount(params["type"]), [8, 8, 8])
    np.testing.assert_array_equal(params["kind"], kind_of_type[params["type"]])
    for t in range(3):
        members = params["type"] == t
        angles = 2 * params["orientation"][members]  # orientation is periodic in pi
        spread = np.sqrt(-2 * np.log(np.abs(np.mean(np.exp(1j * angles))))) / 2
        assert spread < 0.2  # radians; types are 60 degrees apart
        assert np.ptp(params["x"][members]) < 8 and np.ptp(params["y"][members]) < 8
    # Without types there is no gt_type and the population is drawn as before.
    assert "gt_type" not in simulate(6, 20, 2, 2, size=(16, 24), seed=5)
    with pytest.raises(ConfigError, match="--types -1"):
        simulate(6, 20, 2, 2, types=-1)
    with pytest.raises(ConfigError, match="--types 7: more types than the 6 neurons"):
        simulate(6, 20, 2, 2, types=7)
    with pytest.raises(ConfigError, match="day1.zarr: simulated with --types"):
        day2(ds, source="day1.zarr")


def test_functional_types_in_colour_follow_the_type():
    params = ground_truth(simulate(12, 20, 2, 2, size=(16, 24), seed=1, channels=3, types=3))
    np.testing.assert_array_equal(params["colour"], np.array(["luminance", "red_green", "blue_yellow"])[params["type"]])
