"""Core, readouts, Twin and Ensemble: shapes, numerics against numpy/lax references, seeding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from twin.config import ModelConfig
from twin.errors import ConfigError
from twin.models.cores import PATCH_LIMIT, Stacked2dCore, conv, depthwise_conv, laplace_l2norm
from twin.models.readouts import FactorizedReadout, GaussianReadout, bilinear_readout
from twin.models.twin import ReadoutSpec, Twin, make_ensemble

SMALL = ModelConfig(core_layers=3, core_channels=8, input_kernel=5, hidden_kernel=3)


def specs(*counts, positions=False, n_behavior=2):
    rng = np.random.default_rng(0)
    return [
        ReadoutSpec(
            n,
            rng.random(n).astype(np.float32),
            rng.random((n, 3)) * 500 if positions else None,
            rng.normal(size=n_behavior).astype(np.float32) if n_behavior else None,
        )
        for n in counts
    ]


def images(b=3, h=12, w=16, c=1, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, h, w, c))


@pytest.mark.parametrize(
    "changes, in_channels, shape",
    [
        ({}, 1, (3, 8, 12, 7)),
        (
            {"depth_separable": False, "pad_input": True, "stack": (0, -1), "gauss_type": "isotropic",
             "shifter": True, "use_behavior": True, "core_bias": True},
            2,
            (3, 12, 16, 7),
        ),
        ({"grid_mean_predictor": True}, 1, (3, 8, 12, 7)),
        ({"readout": "factorized"}, 1, (3, 8, 12, 7)),
    ],
)
def test_twin_shapes(changes, in_channels, shape):
    config = dataclasses.replace(SMALL, **changes)
    model = Twin(config, in_channels, (12, 16), specs(7, 4, positions=True), n_behavior=2, rngs=nnx.Rngs(0))
    x = images(c=in_channels)
    kwargs = {"behavior": jnp.ones((3, 2)), "pupil_center": jnp.zeros((3, 2))}
    fmap_channels = 8 * len(config.stack)
    assert model.core.output_shape((12, 16)) == shape[1:3] + (fmap_channels,)
    for mode in (model.train, model.eval):
        mode()
        out0 = model(x, 0, **kwargs)
        out1 = model(x, 1, **kwargs)
        assert out0.shape == (3, 7) and out1.shape == (3, 4)
        assert bool(jnp.all(out0 > 0)) and bool(jnp.all(jnp.isfinite(out0)))
        assert model(x, 0, neurons=jnp.array([6, 0]), **kwargs).shape == (3, 2)
    assert model.regularizer(1).shape == ()


def test_baseline_parameter_counts():
    model = Twin(ModelConfig(), 1, (36, 64), specs(100), rngs=nnx.Rngs(0))
    count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))  # noqa: E731
    # 9x9x64 conv + 3 x (64x64 + 7x7x64 + 64x64) + 4 BatchNorms (scale, bias)
    assert count(model.core) == 81 * 64 + 3 * (2 * 64 * 64 + 49 * 64) + 4 * 128 == 39680
    # mu 2 + sigma 4 + features 64 + bias 1
    assert count(model.readouts[0]) == 71 * 100
    assert model.core.output_shape((36, 64)) == (28, 56, 64)


def test_grid_mean_predictor_needs_positions():
    with pytest.raises(ConfigError, match="grid_mean_predictor"):
        Twin(dataclasses.replace(SMALL, grid_mean_predictor=True), 1, (12, 16), specs(3), rngs=nnx.Rngs(0))


def test_depthwise_conv_equals_grouped_conv():
    x = images(b=2, c=5)
    kernel = jax.random.normal(jax.random.key(2), (7, 7, 5))
    expected = jax.lax.conv_general_dilated(
        x,
        kernel[:, :, None, :],
        (1, 1),
        ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=5,
    )
    np.testing.assert_allclose(depthwise_conv(x, kernel, 3), expected, atol=1e-5)
    np.testing.assert_allclose(depthwise_conv(x, kernel, 0), expected[:, 3:-3, 3:-3], atol=1e-5)


def test_one_by_one_conv_equals_lax_conv():
    x = images(b=2, c=4)
    kernel = jax.random.normal(jax.random.key(3), (1, 1, 4, 6))
    expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv(x, kernel, 0), expected, atol=1e-5)


def test_laplace_l2norm_against_numpy():
    kernel = np.asarray(jax.random.normal(jax.random.key(4), (5, 5, 2, 3)))
    lap = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    total = 0.0
    for i in range(2):
        for o in range(3):
            padded = np.pad(kernel[:, :, i, o], 1)
            for y in range(5):
                for x in range(5):
                    total += np.sum(padded[y : y + 3, x : x + 3] * lap) ** 2
    expected = total / np.sum(kernel**2)
    np.testing.assert_allclose(laplace_l2norm(jnp.asarray(kernel)), expected, rtol=1e-5)
    core = Stacked2dCore(2, layers=2, channels=3, input_kernel=5, hidden_kernel=3, gamma_input=2.0, rngs=nnx.Rngs(0))
    core.layers[0].conv.kernel[...] = jnp.asarray(kernel)
    np.testing.assert_allclose(core.regularizer(), 2.0 * expected, rtol=1e-5)


def numpy_bilinear(fmap, x, y):
    """grid_sample(align_corners=True, zeros padding) of fmap (h, w, c) at one point (x, y)."""
    h, w, _ = fmap.shape
    px = (x + 1) / 2 * (w - 1)
    py = (y + 1) / 2 * (h - 1)
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    value = np.zeros(fmap.shape[2])
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < h and 0 <= xi < w:
                value += wx * wy * fmap[yi, xi]
    return value


def test_gaussian_readout_eval_is_bilinear_at_mu():
    fmap = images(b=2, h=6, w=9, c=4)
    readout = GaussianReadout((6, 9, 4), np.arange(5, dtype=np.float32), rngs=nnx.Rngs(0))
    mu = np.array([[-1, -1], [1, 1], [0.13, -0.71], [0.5, 0.25], [-0.99, 0.999]], np.float32)
    readout.mu[...] = jnp.asarray(mu)
    readout.features[...] = jax.random.normal(jax.random.key(5), (5, 4))
    readout.eval()
    out = np.asarray(readout(fmap))
    features = np.asarray(readout.features[...])
    for b in range(2):
        for n in range(5):
            expected = numpy_bilinear(np.asarray(fmap[b]), *mu[n]) @ features[n] + n
            np.testing.assert_allclose(out[b, n], expected, rtol=1e-5, atol=1e-5)
    # A shift past the edge reads zeros there (grid_sample's zero padding).
    shift = jnp.array([[0.3, 0.0], [0.0, -0.2]])
    shifted = np.asarray(readout(fmap, shift=shift))
    for b in range(2):
        for n in range(5):
            x, y = mu[n] + np.asarray(shift[b])
            expected = numpy_bilinear(np.asarray(fmap[b]), x, y) @ features[n] + n
            np.testing.assert_allclose(shifted[b, n], expected, rtol=1e-5, atol=1e-5)


def test_bilinear_readout_per_image_grid_equals_shared_grid():
    fmap = images(b=2, h=6, w=9, c=4)
    grid = jax.random.uniform(jax.random.key(6), (5, 2), minval=-1, maxval=1)
    features = jax.random.normal(jax.random.key(7), (5, 4))
    shared = bilinear_readout(fmap, grid, features)
    per_image = bilinear_readout(fmap, jnp.broadcast_to(grid, (2, 5, 2)), features)
    np.testing.assert_allclose(shared, per_image, rtol=1e-6)


def test_mu_is_clipped_to_the_grid():
    fmap = images(b=1, h=6, w=9, c=4)
    readout = GaussianReadout((6, 9, 4), np.zeros(1, np.float32), rngs=nnx.Rngs(0))
    readout.eval()
    readout.mu[...] = jnp.array([[1.7, -3.0]])
    at_edge = readout(fmap)
    readout.mu[...] = jnp.array([[1.0, -1.0]])
    np.testing.assert_allclose(at_edge, readout(fmap), rtol=1e-6)


def test_neuron_subset_equals_indexed_full_readout():
    config = dataclasses.replace(SMALL, shifter=True)
    model = Twin(config, 1, (12, 16), specs(9), rngs=nnx.Rngs(0))
    model.eval()
    x = images()
    pupil = jnp.array([[0.1, -0.2], [0.5, 0.3], [0.0, 0.0]])
    full = model(x, pupil_center=pupil)
    neurons = jnp.array([8, 2, 2, 5])
    np.testing.assert_allclose(model(x, pupil_center=pupil, neurons=neurons), full[:, neurons], rtol=1e-6)
    factorized = Twin(dataclasses.replace(SMALL, readout="factorized"), 1, (12, 16), specs(9), rngs=nnx.Rngs(0))
    factorized.eval()
    np.testing.assert_allclose(factorized(x, neurons=neurons), factorized(x)[:, neurons], rtol=1e-6)
    grid = Twin(dataclasses.replace(SMALL, grid_mean_predictor=True), 1, (12, 16), specs(9, positions=True), rngs=nnx.Rngs(0))
    grid.eval()
    np.testing.assert_allclose(grid(x, neurons=neurons), grid(x)[:, neurons], rtol=1e-6)


def test_factorized_readout_against_numpy():
    fmap = images(b=2, h=4, w=5, c=3)
    readout = FactorizedReadout((4, 5, 3), np.ones(2, np.float32), gamma_readout=0.5, rngs=nnx.Rngs(0))
    spatial = np.asarray(readout.spatial[...])
    features = np.asarray(readout.features[...])
    mask = spatial / (np.sqrt((spatial**2).sum(axis=(1, 2), keepdims=True)) + 1e-6)
    expected = np.einsum("byxc,nyx,nc->bn", np.asarray(fmap), mask, features) + 1
    np.testing.assert_allclose(readout(fmap), expected, rtol=1e-4)
    l1 = 0.5 * np.sum(np.abs(mask).sum(axis=(1, 2)) * np.abs(features).sum(axis=1))
    np.testing.assert_allclose(readout.regularizer(), l1, rtol=1e-5)


def test_train_sampling_is_seeded_and_differs_from_eval():
    def build():
        return Twin(SMALL, 1, (12, 16), specs(6), rngs=nnx.Rngs(3))

    x = images()
    a, b = build(), build()
    first, again = a(x), a(x)
    np.testing.assert_array_equal(first, b(x))
    assert not np.allclose(first, again)
    # With sigma = 0 the sampled positions are mu: training differs from eval only by BatchNorm.
    c = build()
    c.readouts[0].sigma[...] = jnp.zeros_like(c.readouts[0].sigma[...])
    fmap = c.core(x)
    c.eval()
    readout = c.readouts[0]
    at_mu = readout(fmap)
    readout.train()
    np.testing.assert_allclose(readout(fmap), at_mu, rtol=1e-6)


def test_readout_l1_uses_sum():
    model = Twin(dataclasses.replace(SMALL, gamma_readout=0.5), 1, (12, 16), specs(6), rngs=nnx.Rngs(0))
    features = model.readouts[0].features[...]
    np.testing.assert_allclose(
        model.regularizer(0), model.core.regularizer() + 0.5 * jnp.abs(features).sum(), rtol=1e-6
    )


def test_batchnorm_momentum_is_flax_convention():
    model = Twin(dataclasses.replace(SMALL, batch_norm_momentum=0.1), 1, (12, 16), specs(6), rngs=nnx.Rngs(0))
    x = images()
    model(x)
    norm = model.core.layers[0].norm
    pre = model.core.layers[0].conv(x)
    batch_mean = pre.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(norm.mean[...], 0.9 * batch_mean, rtol=1e-4, atol=1e-6)


def test_ensemble_mean_equals_members():
    config = dataclasses.replace(SMALL, shifter=True)
    ensemble = make_ensemble(config, 1, (12, 16), specs(5, 3), 0, seeds=[0, 7, 9])
    ensemble.eval()
    x = images()
    pupil = jnp.zeros((3, 2))
    members = []
    for seed in (0, 7, 9):
        model = Twin(config, 1, (12, 16), specs(5, 3), rngs=nnx.Rngs(seed))
        model.eval()
        members.append(model(x, 1, pupil_center=pupil))
    outputs = ensemble.member_outputs(x, 1, pupil_center=pupil)
    assert outputs.shape == (3, 3, 3)
    np.testing.assert_allclose(outputs, np.stack(members), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble(x, 1, pupil_center=pupil), np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble.member(1)(x, 1, pupil_center=pupil), members[1], rtol=1e-5, atol=1e-6)
    assert ensemble.regularizer(0).shape == (3,)
    assert ensemble.n_neurons == [5, 3]  # neurons per session, not members
    neurons = jnp.array([2, 0])
    np.testing.assert_allclose(ensemble(x, 1, pupil_center=pupil, neurons=neurons), ensemble(x, 1, pupil_center=pupil)[:, neurons], rtol=1e-6)


def test_depthwise_conv_gradient_equals_grouped_conv_gradient():
    x = images(b=2, h=7, w=9, c=3)
    kernel = jax.random.normal(jax.random.key(8), (5, 5, 3))
    weights = jax.random.normal(jax.random.key(9), (2, 7, 9, 3))

    def grouped(x, kernel):
        out = jax.lax.conv_general_dilated(
            x, kernel[:, :, None, :], (1, 1), ((2, 2), (2, 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3,
        )
        return jnp.sum(out * weights)

    expected = jax.grad(grouped, argnums=(0, 1))(x, kernel)
    actual = jax.grad(lambda x, k: jnp.sum(depthwise_conv(x, k, 2) * weights), argnums=(0, 1))(x, kernel)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", [0, 4])
def test_first_layer_conv_and_its_gradients_equal_lax_conv(padding):
    # 3 images: not a whole number of the kernel gradient's 8-image chunks.
    x = images(b=3, h=14, w=17, c=2)
    kernel = jax.random.normal(jax.random.key(10), (9, 9, 2, 6))
    assert 9 * 9 * 2 <= PATCH_LIMIT
    weights = jax.random.normal(jax.random.key(11), (3, 14 + 2 * padding - 8, 17 + 2 * padding - 8, 6))

    def plain(x, kernel):
        pads = ((padding, padding), (padding, padding))
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def relative(actual, expected):
        return float(jnp.abs(actual - expected).max() / jnp.abs(expected).max())

    assert relative(conv(x, kernel, padding), plain(x, kernel)) < 1e-5
    expected = jax.grad(lambda x, k: jnp.sum(plain(x, k) * weights), argnums=(0, 1))(x, kernel)
    actual = jax.grad(lambda x, k: jnp.sum(conv(x, k, padding) * weights), argnums=(0, 1))(x, kernel)
    for a, e in zip(actual, expected):
        assert relative(a, e) < 1e-5


def test_output_nonlinearity_is_elu_plus_one_and_stays_positive():
    from twin.models.twin import elu1

    x = jnp.array([-1e4, -200.0, -30.0, -17.0, -1.0, 0.0, 0.5, 3.0])
    out = jax.jit(elu1)(x)
    # Equal up to float32 rounding of 1 (elu(x) + 1 loses exp(x) below ~6e-8; elu1 keeps it).
    np.testing.assert_allclose(out[3:], jax.nn.elu(x[3:]) + 1, rtol=1e-6, atol=6e-8)
    np.testing.assert_allclose(out[2:4], np.exp(np.asarray(x[2:4], np.float64)), rtol=1e-6)
    assert bool(jnp.all(out >= 0))
    assert bool(jnp.all(jnp.isfinite(jax.jit(lambda v: jnp.log(elu1(v) + 1e-8))(x))))


@pytest.mark.parametrize(
    "changes, in_channels",
    [
        ({}, 1),
        ({"depth_separable": False, "core_bias": True, "stack": (0, -1)}, 2),
        ({"pad_input": True, "stack": (1,), "gauss_type": "isotropic", "shifter": True, "use_behavior": True}, 1),
        ({"grid_mean_predictor": True, "core_bias": True}, 1),
        ({"behavior_gain": True}, 1),
    ],
)
def test_target_responses_on_receptive_fields_equal_full_maps(changes, in_channels):
    """One neuron per image from its receptive field equals the whole map read at that neuron, in
    value and in the gradient w.r.t. the image, for readout points anywhere, edges included."""
    config = dataclasses.replace(SMALL, init_mu_range=1.3, **changes)
    model = Twin(config, in_channels, (14, 20), specs(25, positions=True), n_behavior=2, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    for layer in model.core.layers:  # BatchNorm statistics far from identity
        layer.norm.mean[...] = jnp.asarray(rng.normal(size=8), jnp.float32)
        layer.norm.bias[...] = jnp.asarray(rng.normal(size=8), jnp.float32)
    if config.behavior_gain:
        model.gains[0].weight[...] = jnp.asarray(rng.normal(size=(2, 25)), jnp.float32)
    model.eval()
    b = 25
    x = images(b=b, h=14, w=20, c=in_channels, seed=4)
    neurons = jnp.asarray(rng.permutation(25), jnp.int32)
    uses_behavior = config.use_behavior or config.behavior_gain
    kwargs = {"behavior": jnp.asarray(rng.normal(size=(b, 2)), jnp.float32)} if uses_behavior else {}
    if config.shifter:
        kwargs["pupil_center"] = jnp.asarray(rng.normal(size=(b, 2)) * 3, jnp.float32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def both(state, x):
        model = nnx.merge(graphdef, state)
        full = lambda x: model(x, **kwargs)[jnp.arange(b), neurons]  # noqa: E731
        window = lambda x: model.target_responses(x, neurons=neurons, **kwargs)  # noqa: E731
        return full(x), window(x), jax.grad(lambda x: full(x).sum())(x), jax.grad(lambda x: window(x).sum())(x)

    full, window, full_grad, window_grad = both(state, x)
    np.testing.assert_allclose(window, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(window_grad, full_grad, rtol=1e-4, atol=1e-6 * float(jnp.abs(full_grad).max()))
    assert float(jnp.abs(full_grad).max()) > 0


def test_behavior_gain_multiplies_each_neuron_by_exp_of_its_centered_behavior():
    config = dataclasses.replace(SMALL, behavior_gain=True)
    spec = specs(6)[0]
    model = Twin(config, 1, (12, 16), [spec], n_behavior=2, rngs=nnx.Rngs(0))
    model.eval()
    behavior = jax.random.normal(jax.random.key(2), (3, 2))
    ungained = np.asarray(model(images(), behavior=behavior))
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    model.gains[0].weight[...], model.gains[0].bias[...] = jnp.asarray(weight), jnp.asarray(bias)
    expected = ungained * np.exp((np.asarray(behavior) - spec.behavior_mean) @ weight + bias)
    np.testing.assert_allclose(model(images(), behavior=behavior), expected, rtol=1e-5)
    neurons = jnp.array([5, 0])
    np.testing.assert_allclose(model(images(), behavior=behavior, neurons=neurons), expected[:, [5, 0]], rtol=1e-5)
    with pytest.raises(ValueError, match="has a behavior gain; pass behavior"):
        model(images())


def test_behavior_gain_needs_behavior_in_every_session():
    config = dataclasses.replace(SMALL, behavior_gain=True)
    with pytest.raises(ConfigError, match=r"\[model\].behavior_gain = true needs behavior .* every session"):
        Twin(config, 1, (12, 16), specs(6, 4, n_behavior=0), rngs=nnx.Rngs(0))


def test_target_responses_of_a_factorized_readout_read_the_full_map():
    config = dataclasses.replace(SMALL, readout="factorized", use_behavior=True)
    model = Twin(config, 1, (12, 16), specs(7), n_behavior=2, rngs=nnx.Rngs(0))
    model.eval()
    neurons = jnp.array([6, 0, 3])
    behavior = jax.random.normal(jax.random.key(2), (3, 2))
    expected = model(images(), behavior=behavior)[jnp.arange(3), neurons]
    window = model.target_responses(images(), neurons=neurons, behavior=behavior)
    np.testing.assert_allclose(window, expected, rtol=1e-6)


def test_target_responses_need_eval_mode_for_a_gaussian_readout():
    model = Twin(SMALL, 1, (12, 16), specs(7), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="call model.eval"):
        model.target_responses(images(), neurons=jnp.array([6, 0, 3]))
