"""Gradient ascent on the simulated animal's own neurons recovers the known optimal stimulus."""

import jax.numpy as jnp
import numpy as np

from twin.config import MEIConfig
from twin.data.simulate import ground_truth, mean_response, simulate
from twin.mei.optimize import optimize_meis
from twin.mei.validate import (
    GroundTruth,
    optimum_correlation,
    true_best_natural,
    true_responses,
)

SHAPE = (18, 32)
MEAN, STD = 128.0, 40.0  # normalization with the gray at 0, so the L2 norm is about gray


def session():
    ds = simulate(12, 30, 2, 1, size=SHAPE, seed=0)
    return ds, ground_truth(ds)


def test_adapter_matches_mean_response_and_reads_out_chosen_neurons():
    ds, params = session()
    pixels = ds["images"].values[:5].astype(np.float32)
    model = GroundTruth(params, MEAN, STD)
    z = jnp.asarray((pixels - MEAN) / STD)[..., None]
    np.testing.assert_allclose(model(z), mean_response(params, pixels), rtol=1e-4)
    np.testing.assert_allclose(
        model(z, neurons=jnp.array([4, 1])), mean_response(params, pixels)[:, [4, 1]], rtol=1e-4
    )
    np.testing.assert_allclose(
        true_responses(params, pixels[:2], [4, 1]), mean_response(params, pixels)[[0, 1], [4, 1]],
        rtol=1e-5,
    )
    best, where = true_best_natural(params, pixels, [0, 3])
    full = mean_response(params, pixels)
    np.testing.assert_array_equal(where, full[:, [0, 3]].argmax(0))
    np.testing.assert_allclose(best, full[:, [0, 3]].max(0), rtol=1e-6)


def test_ground_truth_simple_cell_gabor_is_recovered():
    _, params = session()
    simple = np.flatnonzero(params["kind"] == "simple")[:1]
    optimal = params["optimal_stimulus"][simple]
    norm = float(params["optimal_norm"][simple[0]]) / STD  # the optimum's norm, normalized units
    # Projected normalized-gradient ascent at the optimum's norm; 8 seeds because the rectified
    # drive has no gradient where a seed starts on the wrong side.
    config = MEIConfig(
        steps=300, seeds=8, optimizer="sgd", learning_rate=2.0, final_learning_rate=2.0,
        schedule="constant", step_gain=1.0, precondition=0.0, blur_target="none", norm=norm,
        chunk_size=8,
    )
    model = GroundTruth(params, MEAN, STD)
    result = optimize_meis(
        model, 0, simple, config, image_shape=SHAPE, pixel_range=(-MEAN / STD, 127 / STD),
        image_stats=(MEAN, STD), progress=False,
    )
    pixels = result.best_images() * STD + MEAN
    correlation = optimum_correlation(pixels, optimal)
    assert correlation[0] >= 0.9, correlation
    true_optimum = true_responses(params, optimal, simple)
    assert result.best_activations()[0] >= 0.99 * true_optimum[0]
    # 1 for the optimum itself, NaN where no optimum is known.
    assert optimum_correlation(optimal, optimal)[0] == 1.0
    assert np.isnan(optimum_correlation(optimal, np.full_like(optimal, np.nan))[0])
