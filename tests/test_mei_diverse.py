"""DEIs, population objectives and the tight mask on the tiny twin of test_mei_engine."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from test_mei_engine import RANGE, SHAPE, config, toy

from twin.mei.diverse import (
    control_objective,
    diverse_images,
    inhibitory_inputs,
    pairwise_distance,
)
from twin.mei.masks import BLUR, hull_region, tight_mask
from twin.mei.optimize import evaluate_pairs, neuron_objective, optimize_meis


def test_deis_keep_the_activation_and_spread_out():
    model = toy()
    cfg = config(steps=30, step_gain=2.0, dei_steps=40, dei_learning_rate=0.05)
    meis = optimize_meis(model, 0, [1, 4], cfg, image_shape=SHAPE, pixel_range=RANGE, progress=False)
    images, activations = diverse_images(
        model, 0, [1, 4], meis.best_images(), meis.best_activations(), cfg, 3,
        pixel_range=RANGE, progress=False,
    )
    assert images.shape == (2, 3, *SHAPE) and activations.shape == (2, 3)
    assert np.all(activations >= 0.85 * meis.best_activations()[:, None])
    # Mean pairwise RMS distance grew well beyond the starting noise (init_std pixel levels).
    flat = images.reshape(2, 3, -1)
    distance = np.sqrt(((flat[:, :, None] - flat[:, None]) ** 2).mean(-1))
    start = cfg.init_std * (RANGE[1] - RANGE[0]) / 255 * np.sqrt(2)
    assert distance[:, 0, 1].min() > 2 * start


def test_population_deis_spread_the_population_response():
    """DEIs by population-response cosine keep the activation and differ more in the population
    response than DEIs by pixel distance from the same start."""
    model = toy()
    cfg = config(steps=30, step_gain=2.0, dei_steps=40, dei_learning_rate=0.05)
    meis = optimize_meis(model, 0, [1, 4], cfg, image_shape=SHAPE, pixel_range=RANGE, progress=False)
    spread = {}
    for kind in ("pixel", "population"):
        images, activations = diverse_images(
            model, 0, [1, 4], meis.best_images(), meis.best_activations(),
            dataclasses.replace(cfg, dei_diversity=kind), 3, pixel_range=RANGE, progress=False,
        )
        assert np.all(activations >= 0.85 * meis.best_activations()[:, None])
        responses = np.asarray(model(jnp.asarray(images.reshape(6, *SHAPE, 1)))).reshape(2, 3, -1)
        unit = responses / np.linalg.norm(responses, axis=-1, keepdims=True)
        spread[kind] = 1 - np.einsum("gid,gjd->gij", unit, unit)[:, [0, 0, 1], [1, 2, 2]].mean()
    assert spread["population"] > 1.5 * spread["pixel"]


@pytest.mark.parametrize("norm", [0.0, 3.0])
def test_deis_keep_the_fraction_even_without_the_penalty(norm):
    """With no penalty the ascent only spreads the images; those that lose too much activation
    are moved back toward their MEI until they keep the fraction, within the recipe's norm."""
    model = toy()
    cfg = config(steps=30, step_gain=2.0, dei_steps=40, dei_learning_rate=0.2, dei_penalty=0.0, norm=norm)
    meis = optimize_meis(model, 0, [1, 4], cfg, image_shape=SHAPE, pixel_range=RANGE, progress=False)
    images, activations = diverse_images(
        model, 0, [1, 4], meis.best_images(), meis.best_activations(), cfg, 3,
        pixel_range=RANGE, progress=False,
    )
    assert np.all(activations >= 0.85 * meis.best_activations()[:, None])
    assert not np.allclose(images, meis.best_images()[:, None])
    assert np.all(images >= RANGE[0]) and np.all(images <= RANGE[1])
    if norm:
        np.testing.assert_allclose(np.linalg.norm(images.reshape(6, -1), axis=1), norm, rtol=1e-3)


def test_pairwise_distance_against_numpy():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 5)).astype(np.float32)
    pixel = np.asarray(pairwise_distance(jnp.asarray(features), 3, "pixel"))
    cosine = np.asarray(pairwise_distance(jnp.asarray(features), 3, "population"))
    a, b, c = features[:3]
    rms = lambda u, v: np.sqrt(np.mean((u - v) ** 2))  # noqa: E731
    cos = lambda u, v: 1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    assert pixel[0] == pytest.approx((rms(a, b) + rms(a, c)) / 2, rel=1e-5)
    assert cosine[2] == pytest.approx((cos(c, a) + cos(c, b)) / 2, rel=1e-4)


def test_most_inhibitory_input_lowers_the_response():
    model = toy()
    cfg = config(steps=20, step_gain=2.0)
    low = inhibitory_inputs(model, 0, [0, 3], cfg, image_shape=SHAPE, pixel_range=RANGE, progress=False)
    gray = evaluate_pairs(model, neuron_objective(0), np.zeros((2, *SHAPE), np.float32), {"neuron": np.array([0, 3])})
    assert np.all(low.best_activations() < gray)
    np.testing.assert_array_equal(low.best_seed, low.activations.argmin(1))


def test_control_objective_penalizes_the_other_neurons():
    model = toy()
    mean = np.linspace(0.5, 1.5, 6).astype(np.float32)
    images = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)
    values = evaluate_pairs(model, control_objective(0, mean, weight=2.0), images, {"neuron": np.array([1, 5])})
    population = np.asarray(model(jnp.asarray(images)[..., None]))
    for i, target in enumerate([1, 5]):
        others = np.delete(np.arange(6), target)
        expected = population[i, target] - 2.0 * np.mean((population[i, others] - mean[others]) ** 2)
        np.testing.assert_allclose(values[i], expected, rtol=1e-4)


def test_tight_mask_keeps_ninety_percent():
    model = toy()
    meis = optimize_meis(model, 0, [2], config(steps=30, step_gain=4.0, seeds=1), image_shape=SHAPE,
                         pixel_range=RANGE, progress=False)
    mei = meis.best_images()[0]
    mask = tight_mask(model, neuron_objective(0), mei, 2, image_std=64.0)
    assert mask.shape == SHAPE and 0 <= mask.min() and mask.max() <= 1
    full = ndimage.gaussian_filter(hull_region(mei * 64.0, 0.0).astype(np.float64), BLUR, mode="constant")
    assert np.all(mask <= full + 1e-6) and mask.sum() < full.sum()
    both = np.stack([full * mei, mask * mei]).astype(np.float32)
    values = evaluate_pairs(model, neuron_objective(0), both, {"neuron": np.array([2, 2])})
    assert values[1] >= 0.9 * values[0]


def test_tight_masks_scored_in_groups_match_one_batch(monkeypatch):
    from twin.mei import masks as masks_module

    model = toy()
    meis = optimize_meis(model, 0, [1, 2, 4], config(steps=30, step_gain=4.0, seeds=1), image_shape=SHAPE,
                         pixel_range=RANGE, progress=False).best_images()
    together = masks_module.tight_masks(model, neuron_objective(0), meis, [1, 2, 4], 64.0)
    monkeypatch.setattr(masks_module, "MASKED_VALUES", 1)  # every neuron's candidates on their own
    alone = masks_module.tight_masks(model, neuron_objective(0), meis, [1, 2, 4], 64.0)
    assert together.shape == (3, *SHAPE) and together.sum() > 0
    np.testing.assert_array_equal(alone, together)
    assert masks_module.value_groups([3, 3, 3, 10, 1], 6) == [[0, 1], [2], [3], [4]]
