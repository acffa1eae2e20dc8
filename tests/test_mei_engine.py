"""The batched MEI engine: batching, chunking and sharding do not change results; ensembles;
per-pair early stopping; validator seed choice."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twin.config import ModelConfig
from twin.mei.optimize import evaluate_pairs, neuron_objective, optimize_meis
from twin.mei.recipes import RECIPES
from twin.models.twin import Ensemble, ReadoutSpec, make_ensemble

SHAPE = (12, 16)
RANGE = (-2.0, 2.0)


class Toy(nnx.Module):
    """A tiny twin with the Twin call signature: conv + BatchNorm + ELU core, point readout."""

    def __init__(self, n_neurons: int = 6, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.conv = nnx.Conv(1, 4, (5, 5), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        rng = np.random.default_rng(seed)
        self.weight = nnx.Param(jnp.asarray(rng.normal(size=(n_neurons, 4)), jnp.float32))
        rows = rng.integers(1, SHAPE[0] - 5, n_neurons)
        cols = rng.integers(1, SHAPE[1] - 5, n_neurons)
        self.position = nnx.Variable(jnp.asarray(np.stack([rows, cols], 1)))

    def __call__(self, images, session=0, *, neurons=None, behavior=None, pupil_center=None):
        """images (b, y, x, 1) -> (b, n) or (b, k)."""
        features = jax.nn.elu(self.bn(self.conv(images)))
        weight, position = self.weight[...], self.position[...]
        if neurons is not None:
            weight, position = weight[neurons], position[neurons]
        local = features[:, position[:, 0], position[:, 1], :]
        return jax.nn.elu(jnp.einsum("bkc,kc->bk", local, weight)) + 1


def toy(seed=0):
    model = Toy(seed=seed)
    model.eval()
    return model


def config(**changes):
    values = dict(steps=12, seeds=2, chunk_size=4) | changes
    return dataclasses.replace(RECIPES["walker2019"], **values)


def run(model, neurons, cfg, **kwargs):
    return optimize_meis(
        model, 0, neurons, cfg, image_shape=SHAPE, pixel_range=RANGE, progress=False, **kwargs
    )


def test_batched_equals_one_at_a_time_and_improves():
    model = toy()
    cfg = dataclasses.replace(RECIPES["sinz_ga"], steps=12, seeds=2, chunk_size=4, norm=3.0)
    batched = run(model, [0, 3, 5], cfg)
    assert batched.images.shape == (3, 2, *SHAPE)
    assert batched.activations.shape == (3, 2) and batched.best_seed.shape == (3,)
    alone = run(model, [3], cfg)
    np.testing.assert_allclose(alone.images[0], batched.images[1], atol=1e-5)
    np.testing.assert_allclose(alone.activations[0], batched.activations[1], rtol=1e-5)
    # The activation is the model's response to the stored image, and ascent raised it above
    # the response to the initial noise (Walker: N(128, 8) pixels, i.e. about gray).
    objective = neuron_objective(0)
    flat = np.concatenate([batched.images.reshape(6, *SHAPE), np.zeros((6, *SHAPE), np.float32)])
    values = evaluate_pairs(model, objective, flat, {"neuron": np.tile(np.repeat([0, 3, 5], 2), 2)})
    np.testing.assert_allclose(values[:6].reshape(3, 2), batched.activations, rtol=1e-5)
    assert np.all(values[:6] > values[6:])
    assert np.all(batched.images >= RANGE[0]) and np.all(batched.images <= RANGE[1])
    norms = np.linalg.norm(batched.images.reshape(6, -1), axis=1)
    np.testing.assert_allclose(norms, 3.0, rtol=1e-3)


def test_four_devices_equal_one_and_chunking():
    model = toy()
    cfg = dataclasses.replace(RECIPES["lucid"], steps=8, seeds=3, chunk_size=4)
    four = run(model, [1, 2, 4], cfg)  # 9 pairs: 3 chunks of 4, sharded over 4 devices
    one = run(model, [1, 2, 4], dataclasses.replace(cfg, chunk_size=0), devices=jax.devices()[:1])
    assert len(jax.devices()) == 4
    np.testing.assert_allclose(four.images, one.images, atol=1e-5)
    np.testing.assert_allclose(four.activations, one.activations, rtol=1e-5)
    np.testing.assert_array_equal(four.best_seed, one.best_seed)


def test_ensemble_objective_is_the_member_mean():
    members = [toy(0), toy(1)]
    graphdef, _ = nnx.split(members[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(m) for m in members])
    ensemble = Ensemble(nnx.merge(graphdef, stacked), 2)
    result = run(ensemble, [2, 4], config())
    flat = result.images.reshape(4, *SHAPE)
    targets = {"neuron": np.repeat([2, 4], 2)}
    objective = neuron_objective(0)
    mean = np.mean([evaluate_pairs(m, objective, flat, targets) for m in members], axis=0)
    np.testing.assert_allclose(result.activations.reshape(-1), mean, rtol=1e-5)


def test_validator_picks_the_seed():
    model, validator = toy(0), toy(1)
    result = run(model, [0, 3], config(seeds=3), validator=validator)
    assert result.validator_activations.shape == (2, 3)
    np.testing.assert_array_equal(result.best_seed, result.validator_activations.argmax(1))
    best = result.best_images()
    np.testing.assert_array_equal(best[1], result.images[1, result.best_seed[1]])


def test_early_stopping_masks_stopped_pairs():
    model = toy()
    # Neuron 0 gets zero readout weights: a constant response, no improvement, so it stops
    # after `window` + 1 steps while neuron 1 keeps improving for all steps.
    model.weight[...] = model.weight[...].at[0].set(0.0)
    cfg = config(
        steps=20, tolerance=1e-7, window=5, schedule="constant", final_blur_sigma=1.5, seeds=1
    )
    stopped = run(model, [0, 1], cfg)
    free = run(model, [0, 1], dataclasses.replace(cfg, tolerance=0.0))
    short = run(model, [0], dataclasses.replace(cfg, tolerance=0.0, steps=6))
    np.testing.assert_array_equal(stopped.steps[:, 0], [6, 20])
    np.testing.assert_array_equal(free.steps[:, 0], [20, 20])
    np.testing.assert_allclose(stopped.images[0], short.images[0], atol=1e-6)
    np.testing.assert_allclose(stopped.images[1], free.images[1], atol=1e-6)


def test_mask_multiplies_the_image():
    model = toy()
    mask = np.zeros(SHAPE, np.float32)
    mask[2:10, 3:12] = 1.0
    result = run(model, [0], config(), mask=mask)
    assert np.all(result.images[..., mask == 0] == 0)
    assert np.any(result.images[..., mask == 1] != 0)


def test_two_channel_twin_ensemble_batched_sharded_and_alone_agree():
    """A real (receptive-field) twin ensemble on (channel, y, x) images: lucid's Fourier images
    with jitter, zoom and rotation under a mask, on 4 devices and on 1, and one neuron alone."""
    model_config = ModelConfig(core_layers=3, core_channels=8, input_kernel=5, hidden_kernel=3, init_mu_range=0.8)
    specs = [ReadoutSpec(6, np.ones(6, np.float32))]
    ensemble = make_ensemble(model_config, 2, SHAPE, specs, 0, [0, 1])
    ensemble.eval()
    cfg = dataclasses.replace(RECIPES["lucid"], steps=8, seeds=2, chunk_size=4)
    mask = np.zeros(SHAPE, np.float32)
    mask[2:10, 3:13] = 1.0
    shape = (2, *SHAPE)
    four = optimize_meis(ensemble, 0, [0, 3, 5], cfg, image_shape=shape, pixel_range=RANGE, mask=mask, progress=False)
    one = optimize_meis(
        ensemble, 0, [0, 3, 5], cfg, image_shape=shape, pixel_range=RANGE, mask=mask, progress=False,
        devices=jax.devices()[:1],
    )
    alone = optimize_meis(ensemble, 0, [3], cfg, image_shape=shape, pixel_range=RANGE, mask=mask, progress=False)
    assert four.images.shape == (3, 2, 2, *SHAPE)
    np.testing.assert_allclose(four.images, one.images, atol=1e-5)
    np.testing.assert_allclose(alone.images[0], four.images[1], atol=1e-5)
    np.testing.assert_allclose(alone.activations[0], four.activations[1], rtol=1e-5)
    assert np.all(four.images[..., 0, :] == 0)  # the mask
    assert np.any(four.images[:, :, 1, 5, 5] != four.images[:, :, 0, 5, 5])  # channels differ
    # Stored activations are the ensemble's responses to the stored images.
    responses = ensemble(jnp.moveaxis(jnp.asarray(four.images.reshape(6, *shape)), 1, -1))
    expected = responses[np.arange(6), np.repeat([0, 3, 5], 2)]
    np.testing.assert_allclose(four.activations.reshape(-1), expected, rtol=1e-5)
