"""[fit] / [mei] precision = "bfloat16": the core's convolutions in bfloat16 with float32 sums;
parameters, optimizer state, images and outputs stay float32 (twin.precision)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from twin import checkpoint
from twin.cli import main
from twin.data.simulate import simulate
from twin.data.store import write_session
from twin.fit import make_train_step
from twin.mei.optimize import optimize_meis
from twin.mei.recipes import RECIPES
from twin.models.twin import ReadoutSpec, Twin
from twin.precision import set_precision

SHAPE = (12, 16)
MODEL = dict(core_layers=2, core_channels=8, input_kernel=5, hidden_kernel=3)


def tiny_twin(seed: int = 0) -> Twin:
    from twin.config import ModelConfig

    spec = ReadoutSpec(6, np.ones(6, np.float32))
    return Twin(ModelConfig(**MODEL), 1, SHAPE, [spec], rngs=nnx.Rngs(seed))


def images(n: int = 8, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (n, *SHAPE, 1))


def leaf_dtypes(tree) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_bfloat16_forward_is_close_to_float32_but_not_identical():
    model = tiny_twin()
    model.eval()
    graphdef, state = nnx.split(model)
    x = images()

    @jax.jit
    def both(state, x):
        def run(precision):
            twin = set_precision(nnx.merge(graphdef, state), precision)
            return twin(x), twin.target_responses(x, neurons=jnp.arange(len(x)) % 6)

        return run("float32"), run("bfloat16")

    (full, target_full), (half, target_half) = both(state, x)
    assert half.dtype == target_half.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 per input).
    np.testing.assert_allclose(half, full, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(target_half, target_full, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(half, full) and not np.array_equal(target_half, target_full)
    # the receptive-field path computes the same values as the whole-image one, in bfloat16 too
    np.testing.assert_allclose(target_half, half[np.arange(len(x)), np.arange(len(x)) % 6], rtol=2e-2)


def test_bfloat16_train_step_keeps_parameters_and_adam_state_float32():
    model = tiny_twin()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(0.01)
    x = images(16)
    batch = {"images": x, "responses": jnp.abs(jax.random.normal(jax.random.PRNGKey(2), (16, 6)))}
    results = {}
    for precision in ("float32", "bfloat16"):
        step = make_train_step(graphdef, tx, [64], True, False, precision=precision)
        results[precision] = step(params, rest, tx.init(params), jnp.float32(0.01), (batch,), (0,))

    new_params, new_rest, opt_state, values = results["bfloat16"]
    assert leaf_dtypes(new_params) == leaf_dtypes(opt_state) == leaf_dtypes(new_rest) == {jnp.dtype(jnp.float32)}
    assert not np.allclose(new_params["core"]["layers"][0]["conv"]["kernel"][...], params["core"]["layers"][0]["conv"]["kernel"][...])
    # The same step as float32's, to bfloat16 rounding: the loss and the Adam moments.
    full_params, _, full_state, full_values = results["float32"]
    np.testing.assert_allclose(values["loss"], full_values["loss"], rtol=1e-2)
    first_moment = jax.tree.leaves(opt_state[0].mu)
    full_moment = jax.tree.leaves(full_state[0].mu)
    for half, full in zip(first_moment, full_moment):
        np.testing.assert_allclose(half, full, rtol=0.1, atol=0.05 * float(jnp.abs(full).max()) + 1e-6)


def test_bfloat16_meis_are_float32_images_close_to_float32_ones():
    model = tiny_twin()
    model.eval()
    neurons = np.arange(4)
    runs = {}
    for precision in ("float32", "bfloat16"):
        config = dataclasses.replace(RECIPES["walker2019"], steps=20, seeds=2, chunk_size=8, precision=precision)
        runs[precision] = optimize_meis(
            model, 0, neurons, config, image_shape=SHAPE, pixel_range=(-2.0, 2.0), progress=False
        )
    full, half = runs["float32"], runs["bfloat16"]
    assert half.images.dtype == np.float32 and half.activations.dtype == np.float32
    assert not np.array_equal(half.images, full.images)
    # The ascent improved on the starting point and reaches float32's activation.
    np.testing.assert_allclose(half.activations, full.activations, rtol=0.05)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "sim.zarr"
    write_session(simulate(8, 80, 4, 2, size=SHAPE, seed=2), path)
    return str(path)


def test_bfloat16_fit_writes_a_float32_checkpoint(tmp_path, store):
    config = tmp_path / "bf16.toml"
    config.write_text(
        "[data]\nbatch_size = 24\n[model]\n"
        + "".join(f"{k} = {v}\n" for k, v in MODEL.items())
        + '[fit]\nmax_epochs = 1\nprecision = "bfloat16"\n'
    )
    run = tmp_path / "run"
    assert main(["fit", store, "--out", str(run), "--config", str(config)]) == 0
    loaded = checkpoint.load_run(run, load_sessions=False)
    assert loaded.config.fit.precision == "bfloat16"
    assert leaf_dtypes(nnx.state(loaded.model)) == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(nnx.state(loaded.model, nnx.Param)))
