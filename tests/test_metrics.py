"""twin.metrics against values computed by hand (Sensorium definitions)."""

import numpy as np
import pytest

from twin import metrics

# Two neurons; images 0 and 1 shown twice, image 2 once (left out of FEVE and the oracle).
IMAGE_ID = np.array([0, 0, 1, 1, 2])
RESPONSES = np.array(
    [
        [1.0, 0.0],
        [3.0, 4.0],
        [5.0, 1.0],
        [7.0, 3.0],
        [4.0, 2.0],
    ]
)
PREDICTIONS = np.array(
    [
        [2.0, 1.0],
        [2.0, 1.0],
        [5.0, 2.0],
        [5.0, 2.0],
        [3.0, 2.0],
    ]
)


def test_single_trial_correlation_matches_pearson():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 50, 3))
    expected = [np.corrcoef(x[:, i], y[:, i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(metrics.single_trial_correlation(x, y), expected, atol=1e-7)


def test_constant_prediction_scores_zero_not_nan():
    r = metrics.single_trial_correlation(RESPONSES, np.ones_like(RESPONSES))
    np.testing.assert_array_equal(r, [0.0, 0.0])


def test_correlation_to_average_by_hand():
    # Neuron 0: image means of responses [2, 6, 4], of predictions [2, 5, 3].
    # Centered: [-2, 2, 0] and [-4/3, 5/3, -1/3]; sum xy = 6, sum x^2 = 8, sum y^2 = 42/9.
    r = metrics.correlation_to_average(RESPONSES, PREDICTIONS, IMAGE_ID)
    assert r[0] == pytest.approx(6 / np.sqrt(8 * 42 / 9), abs=1e-7)


def test_feve_noise_term_and_fev_filter_by_hand():
    # Neuron 0 over the repeated trials [1, 3, 5, 7]: noise = mean(var([1,3]), var([5,7])) = 2
    # (ddof=1); total = 20/3 (ddof=1); MSE of [2, 2, 5, 5] = 1.5 -> FEVE = 1 + 0.5 / (14/3).
    # Neuron 1 over [0, 4, 1, 3]: noise = (8 + 2) / 2 = 5 > total 10/3 -> FEV < 0.15 -> NaN.
    total, noise = metrics.explainable_variance(RESPONSES, IMAGE_ID)
    np.testing.assert_allclose(total, [20 / 3, 10 / 3])
    np.testing.assert_allclose(noise, [2.0, 5.0])
    np.testing.assert_allclose(metrics.fev(RESPONSES, IMAGE_ID)[0], 0.7)
    scores = metrics.feve(RESPONSES, PREDICTIONS, IMAGE_ID)
    assert scores[0] == pytest.approx(1 + 0.5 * 3 / 14)
    assert np.isnan(scores[1])


def test_fev_threshold_is_inclusive_and_configurable():
    # Neuron 0 has FEV 0.7: kept at 0.7, dropped just above it.
    assert np.isfinite(metrics.feve(RESPONSES, PREDICTIONS, IMAGE_ID, min_fev=0.7)[0])
    assert np.isnan(metrics.feve(RESPONSES, PREDICTIONS, IMAGE_ID, min_fev=0.71)[0])


def test_oracle_correlation_jackknife_by_hand():
    # Neuron 0: held out [1, 3, 5, 7] vs the other repeat [3, 1, 7, 5]:
    # centered [-3, -1, 1, 3] and [-1, -3, 3, 1] -> r = 12 / 20.
    oracle = metrics.oracle_correlation(RESPONSES, IMAGE_ID)
    assert oracle[0] == pytest.approx(0.6, abs=1e-7)


def test_oracle_leave_one_out_with_three_repeats():
    responses = np.array([[1.0], [2.0], [6.0], [0.0], [3.0], [3.0]])
    image_id = np.array([0, 0, 0, 1, 1, 1])
    # Mean of the other two repeats of each trial.
    others = np.array([4.0, 3.5, 1.5, 3.0, 1.5, 1.5])
    expected = np.corrcoef(responses[:, 0], others)[0, 1]
    assert metrics.oracle_correlation(responses, image_id)[0] == pytest.approx(expected, abs=1e-7)


def test_fraction_of_oracle_is_slope_through_origin():
    assert metrics.fraction_of_oracle([0.3, 0.6, np.nan], [0.5, 1.0, 0.9]) == pytest.approx(0.6)


def test_no_repeats_is_an_error_for_feve():
    with pytest.raises(ValueError, match="repeat"):
        metrics.feve(RESPONSES, PREDICTIONS, np.arange(5))


def test_score_leaves_out_repeat_metrics_below_the_minimum_of_repeated_images():
    # Two repeated images (IMAGE_ID) are too few: only the single-trial correlation is scored.
    assert set(metrics.score(RESPONSES, PREDICTIONS, IMAGE_ID)) == {"single_trial_correlation"}
    assert metrics.repeats_note(IMAGE_ID) == "n/a: only 2 test images are repeated (at least 20 needed)"
    image_id = np.repeat(np.arange(metrics.MIN_REPEATED_IMAGES), 2)
    rng = np.random.default_rng(0)
    responses, predictions = rng.normal(size=(2, len(image_id), 3))
    assert metrics.repeats_note(image_id) is None
    assert set(metrics.score(responses, predictions, image_id)) == {
        "single_trial_correlation",
        "correlation_to_average",
        "feve",
        "oracle_correlation",
    }
