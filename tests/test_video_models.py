"""Video cores and video twins: shapes, causality in time, gradients, ensembles, checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from twin import checkpoint
from twin.config import FitConfig, ModelConfig, RunConfig, check_core
from twin.errors import ConfigError
from twin.models.cores import Conv
from twin.models.twin import Ensemble, ReadoutSpec, Twin, make_ensemble
from twin.models.video import ConvGRU, GruCore, TemporalConv, temporal_conv, temporal_laplace, xla_temporal_conv
from twin.precision import set_precision

FRAMES, SHAPE = 10, (8, 12)
TINY = ModelConfig(
    core_channels=4,
    core_layers=2,
    input_kernel=3,
    hidden_kernel=3,
    temporal_input_kernel=3,
    temporal_hidden_kernel=2,
    gru_channels=4,
    gru_input_kernel=3,
    gru_kernel=3,
    shifter=True,
    use_behavior=True,
    behavior_gain=True,
)
SPEC = ReadoutSpec(5, np.ones(5, np.float32), behavior_mean=np.array([0.3, -0.2], np.float32))
CORES = ["factorized3d", "gru"]


def twin(core: str, seed: int = 0, **changes) -> Twin:
    config = dataclasses.replace(TINY, core=core, **changes)
    model = Twin(config, 1, SHAPE, [SPEC], n_behavior=2, rngs=nnx.Rngs(seed))
    randomize_gains(model, seed)
    return model


def randomize_gains(model, seed: int = 0):
    """Behavior-gain weights and biases away from their start at 0 (gain 1)."""
    gains = model.members.gains if isinstance(model, Ensemble) else model.gains
    rng = np.random.default_rng(seed)
    for gain in gains:
        gain.weight[...] = jnp.asarray(rng.normal(size=gain.weight.shape) * 0.3, jnp.float32)
        gain.bias[...] = jnp.asarray(rng.normal(size=gain.bias.shape) * 0.3, jnp.float32)


def inputs(batch: int = 2, seed: int = 0):
    """images (b, t, y, x, 1), behavior (b, t, 2), pupil_center (b, t, 2)."""
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(batch, FRAMES) + SHAPE + (1,)), jnp.float32)
    behavior = jnp.asarray(rng.normal(size=(batch, FRAMES, 2)), jnp.float32)
    pupil = jnp.asarray(rng.normal(size=(batch, FRAMES, 2)) * 0.1, jnp.float32)
    return images, behavior, pupil


@nnx.jit
def run(model, images, behavior, pupil):
    """(b, t, n): the model's responses for session 0, in one compiled call (op-by-op calls of
    a video core compile many small programs)."""
    return model(images, 0, behavior=behavior, pupil_center=pupil)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("pad_input", [False, True])
def test_video_twin_shapes(core, pad_input):
    model = twin(core, pad_input=pad_input)
    images, behavior, pupil = inputs()
    assert model.video
    fmap = nnx.jit(lambda model, images, behavior: model.features(images, behavior))(model, images, behavior)
    expected = (8, 12) if pad_input else (6, 10)
    assert fmap.shape == (2, FRAMES) + expected + (4,)
    assert model.core.output_shape(SHAPE) == expected + (4,)
    assert run(model, images, behavior, pupil).shape == (2, FRAMES, 5)
    neurons = jnp.array([4, 1])
    subset = nnx.jit(lambda model, neurons: model(images, 0, behavior=behavior, pupil_center=pupil, neurons=neurons))
    assert subset(model, neurons).shape == (2, FRAMES, 2)


def test_image_twins_keep_the_stacked2d_core():
    config = ModelConfig(core_channels=4, core_layers=2)
    model = Twin(config, 1, (12, 16), [ReadoutSpec(3, np.ones(3))], rngs=nnx.Rngs(0))
    assert not model.video
    assert type(model.core).__name__ == "Stacked2dCore"


@pytest.mark.parametrize("core", CORES)
def test_output_frames_depend_on_earlier_input_frames_only(core):
    model = twin(core)
    images, behavior, pupil = inputs()
    run(model, images, behavior, pupil)  # move the batch statistics
    model.eval()
    before = np.asarray(run(model, images, behavior, pupil))
    t = 4
    changed = images.at[:, t + 1 :].add(1.0)
    after = np.asarray(run(model, changed, behavior.at[:, t + 1 :].add(1.0), pupil))
    np.testing.assert_array_equal(after[:, : t + 1], before[:, : t + 1])
    assert np.abs(after[:, t + 1 :] - before[:, t + 1 :]).min(axis=(0, 2)).max() > 0
    # A later frame sees an earlier one (the temporal kernels / the recurrent state carry it).
    earlier = np.asarray(run(model, images.at[:, 0].add(1.0), behavior, pupil))
    assert np.abs(earlier[:, 2] - before[:, 2]).max() > 1e-6


@pytest.mark.parametrize("core", CORES)
def test_gradients_reach_every_core_parameter(core):
    model = twin(core)
    images, behavior, pupil = inputs()

    def loss(model):
        return jnp.mean(model(images, 0, behavior=behavior, pupil_center=pupil)) + model.regularizer(0)

    grads = nnx.jit(nnx.grad(loss))(model)
    core = jax.tree_util.tree_leaves_with_path(grads["core"])
    assert len(core) > 0
    for path, value in core:
        assert np.all(np.isfinite(value)), path
        assert np.abs(value).max() > 0, path


def test_temporal_conv_against_numpy():
    conv = TemporalConv(3, 2, 4, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 6, 3, 5, 3)).astype(np.float32)
    kernel = np.asarray(conv.kernel[...])
    padded = np.concatenate([np.repeat(x[:, :1], 3, axis=1), x], axis=1)  # the first frame before it
    expected = sum(np.einsum("btyxi,io->btyxo", padded[:, i : i + 6], kernel[i]) for i in range(4))
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def test_temporal_conv_of_a_constant_input_is_constant():
    conv = TemporalConv(2, 3, 5, rngs=nnx.Rngs(0))
    x = jnp.broadcast_to(jnp.asarray([6.9, -1.0]), (1, 8, 2, 2, 2))
    y = np.asarray(conv(x))
    np.testing.assert_allclose(y, np.broadcast_to(y[:, -1:], y.shape), rtol=1e-5)


def test_temporal_conv_gradients_equal_xla_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 13, 7, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(5, 4, 6)), jnp.float32)

    def gradients(conv):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1))(x, kernel)

    for ours, theirs in zip(gradients(temporal_conv), gradients(xla_temporal_conv)):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_conv_gru_against_the_gate_equations():
    gru = ConvGRU(3, 4, 3, 5, rngs=nnx.Rngs(1))
    for gate in (gru.update_input, gru.reset_input, gru.out_input):
        gate.bias[...] = jax.random.normal(jax.random.key(2), (4,))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 7, 3)), jnp.float32)
    h = jnp.zeros((2, 6, 7, 4))
    expected = []
    for t in range(5):
        u = jax.nn.sigmoid(gru.update_input(x[:, t]) + gru.update_hidden(h))
        r = jax.nn.sigmoid(gru.reset_input(x[:, t]) + gru.reset_hidden(h))
        h = h * (1 - u) + jnp.tanh(gru.out_input(x[:, t]) + gru.out_hidden(h * r)) * u
        expected.append(h)
    np.testing.assert_allclose(gru(x), jnp.stack(expected, axis=1), rtol=1e-5, atol=1e-5)


def test_temporal_laplace_against_numpy():
    kernel = np.random.default_rng(3).normal(size=(5, 2, 3)).astype(np.float32)
    padded = np.pad(kernel, ((1, 1), (0, 0), (0, 0)))
    lap = 4 * padded[1:-1] - padded[:-2] - padded[2:]
    np.testing.assert_allclose(temporal_laplace(jnp.asarray(kernel)), (lap**2).sum() / (kernel**2).sum(), rtol=1e-5)


def test_regularizers_follow_their_weights():
    model = twin("factorized3d", gamma_input=0.0, gamma_temporal=2.0)
    first = model.core.layers[0]
    np.testing.assert_allclose(model.core.regularizer(), 2.0 * temporal_laplace(first.temporal.kernel[...]), rtol=1e-6)
    gru = twin("gru")
    assert isinstance(gru.core, GruCore)
    np.testing.assert_allclose(gru.core.regularizer(), gru.core.frames.regularizer(), rtol=1e-6)


@pytest.mark.parametrize("core", CORES)
def test_target_responses_of_a_video_twin(core):
    model = twin(core)
    model.eval()
    images, behavior, pupil = inputs(3)
    neurons = jnp.array([4, 0, 2])
    full = run(model, images, behavior, pupil)
    target = model.target_responses(images, 0, neurons=neurons, behavior=behavior, pupil_center=pupil)
    assert target.shape == (3, FRAMES)
    np.testing.assert_allclose(target, full[jnp.arange(3), :, neurons], rtol=1e-5, atol=1e-6)


def test_ensemble_of_two_video_twins():
    config = dataclasses.replace(TINY, core="gru")
    specs = [SPEC]
    ensemble = make_ensemble(config, 1, SHAPE, specs, 2, seeds=[0, 3])
    ensemble.eval()
    images, behavior, pupil = inputs()
    members = []
    for seed in (0, 3):
        model = Twin(config, 1, SHAPE, specs, 2, rngs=nnx.Rngs(seed))
        model.eval()
        members.append(np.asarray(run(model, images, behavior, pupil)))
    outputs = ensemble.member_outputs(images, 0, behavior=behavior, pupil_center=pupil)
    assert outputs.shape == (2, 2, FRAMES, 5)
    np.testing.assert_allclose(outputs, np.stack(members), rtol=1e-5, atol=1e-6)
    mean = run(ensemble, images, behavior, pupil)
    np.testing.assert_allclose(mean, np.mean(members, 0), rtol=1e-5, atol=1e-6)
    assert ensemble.regularizer(0).shape == (2,)


@pytest.mark.parametrize(("core", "ensemble_size"), [("factorized3d", 1), ("gru", 2)])
def test_video_checkpoint_round_trip_gives_identical_outputs(tmp_path, core, ensemble_size):
    config = RunConfig(model=dataclasses.replace(TINY, core=core), fit=FitConfig(ensemble_size=ensemble_size, seed=2))
    records = [
        {"name": "video", "path": str(tmp_path / "video.zarr"), "unit_id": list(range(5)), "n_neurons": 5,
         "image_shape": list(SHAPE), "channels": 1, "n_behavior": 2, "has_positions": False}
    ]
    model = checkpoint.make_model(config, records, [SPEC])
    randomize_gains(model)
    images, behavior, pupil = inputs()
    run(model, images, behavior, pupil)  # batch statistics away from their start
    model.eval()
    expected = np.asarray(run(model, images, behavior, pupil))
    run_dir = tmp_path / "run"
    checkpoint.write_run_files(run_dir, config, records)
    checkpoint.save_step(run_dir / "checkpoints" / "best", 0, {"model": nnx.state(model)}, {"epoch": 0})

    loaded = checkpoint.load_run(run_dir, load_sessions=False)
    assert isinstance(loaded.model, Ensemble if ensemble_size > 1 else Twin)
    centers = loaded.model.members.gains[0].center[...] if ensemble_size > 1 else loaded.model.gains[0].center[...]
    np.testing.assert_array_equal(np.asarray(centers).reshape(-1, 2)[-1], SPEC.behavior_mean)
    assert loaded.config.model.core == core
    np.testing.assert_array_equal(np.asarray(run(loaded.model, images, behavior, pupil)), expected)


def test_config_declares_the_video_fields():
    assert ModelConfig().core == "stacked2d"
    with pytest.raises(ConfigError, match=r"\[model\].core = 'lstm' is not a known value; use one of 'stacked2d'"):
        ModelConfig(core="lstm")
    with pytest.raises(ConfigError, match=r"\[model\].gru_kernel = 4 is out of range; use an odd integer >= 1"):
        ModelConfig(gru_kernel=4)


def test_check_core_refuses_a_core_that_does_not_fit_the_session():
    check_core(ModelConfig(), False, "a.zarr")
    check_core(ModelConfig(core="gru"), True, "v.zarr")
    with pytest.raises(ConfigError, match=r"^run.toml: \[model\].core = 'gru' is a video core but a.zarr holds images"):
        check_core(ModelConfig(core="gru"), False, "a.zarr", "run.toml")
    with pytest.raises(ConfigError, match=r"\[model\].core = 'stacked2d' reads single images but v.zarr is a video"):
        check_core(ModelConfig(), True, "v.zarr")


def test_first_spatial_kernel_is_a_conv():
    model = twin("factorized3d")
    assert isinstance(model.core.layers[0].spatial, Conv)
    assert model.core.layers[0].temporal.kernel.shape == (3, 4, 4)
    assert model.core.layers[1].temporal.kernel.shape == (2, 4, 4)


@pytest.mark.parametrize("core", CORES)
def test_bfloat16_reaches_every_video_conv(core):
    model = twin(core)
    model.eval()
    images, behavior, pupil = inputs()
    full = np.asarray(run(model, images, behavior, pupil))
    set_precision(model, "bfloat16")
    convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, (Conv, TemporalConv))]
    assert len(convs) > 2 and all(m.dtype == jnp.bfloat16 for m in convs)
    half = np.asarray(run(model, images, behavior, pupil))
    assert not np.array_equal(half, full)
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05)
