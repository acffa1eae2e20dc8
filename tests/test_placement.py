"""Readout positions from the data (twin.models.placement): receptive fields found on a simulated
session, the pixel <-> grid mapping of the readout's sampling, missing responses, the config."""

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from twin.config import ModelConfig
from twin.data.loader import load_session
from twin.data.simulate import ground_truth, simulate
from twin.data.store import write_session
from twin.errors import ConfigError
from twin.models import placement
from twin.models.readouts import FactorizedReadout, GaussianReadout, bilinear_readout
from twin.models.twin import ReadoutSpec, Twin, make_ensemble

SIZE = (18, 32)
SMALL = ModelConfig(core_layers=1, core_channels=4, input_kernel=5, pad_input=False)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """(SessionData, ground truth) of 24 simulated neurons, 600 train images."""
    ds = simulate(24, 600, 2, 1, size=SIZE, seed=1)
    path = tmp_path_factory.mktemp("placement") / "sim.zarr"
    write_session(ds, path)
    return load_session(path), ground_truth(ds)


def errors(position, truth):
    """Distances (n,) in pixels between (n, 2) (x, y) positions and the ground-truth centres."""
    return np.hypot(position[:, 0] - truth["x"], position[:, 1] - truth["y"])


def specs(data):
    return [ReadoutSpec(data.n_neurons, data.mean_response, data.cell_xyz)]


def small_twin(data, **changes):
    """A Twin of SMALL (with ``changes``) for ``data``, built in one compiled call (fast)."""
    config = dataclasses.replace(SMALL, **changes)
    return nnx.jit(lambda: Twin(config, 1, SIZE, specs(data), rngs=nnx.Rngs(0)))()


def test_contrast_energy_finds_the_receptive_fields(session):
    data, truth = session
    trials = data.trials("train")
    found = placement.energy_positions(data.images[trials], data.responses[trials])
    assert found["significant"].mean() >= 0.9
    assert np.mean(errors(found["position"], truth) <= 2.0) >= 0.8


def test_colour_opponent_neurons_are_found():
    """Colour-opponent neurons respond to colour contrast at unchanged luminance: the energy in
    the principal colour components finds them as it finds the luminance neurons."""
    ds = simulate(24, 600, 2, 1, size=SIZE, seed=2, channels=3)
    truth = ground_truth(ds)
    images = np.moveaxis(ds["images"].values[ds["tier"].values == "train"], 1, -1).astype(np.float32)
    responses = ds["responses"].values[ds["tier"].values == "train"]
    found = placement.energy_positions(images, responses)
    close = errors(found["position"], truth) <= 2.0
    assert np.mean(close) >= 0.75
    assert np.mean(close[truth["colour"] != "luminance"]) >= 0.6


def test_grid_points_read_the_pixel_they_come_from():
    """A grid point from pixels_to_grid samples exactly that pixel of the map (the readout's
    bilinear sampling), with and without an offset between image and map; grid_to_pixels inverts it."""
    map_shape, offset = (7, 11), (2.0, 2.0)
    pixels = np.array([[0, 0], [10, 6], [3, 4], [7, 1]], np.float32)
    for shift in ((0.0, 0.0), offset):
        grid = placement.pixels_to_grid(pixels + shift, map_shape, shift)
        assert np.allclose(placement.grid_to_pixels(grid, map_shape, shift), pixels + shift, atol=1e-5)
        assert grid.min() == -1 and grid.max() == 1
        fmap = np.zeros((len(pixels),) + map_shape + (1,), np.float32)
        for k, (x, y) in enumerate(pixels.astype(int)):
            fmap[k, y, x, 0] = 1.0
        read = bilinear_readout(jnp.asarray(fmap), jnp.asarray(grid), jnp.ones((len(pixels), 1)))
        assert np.allclose(np.diag(np.asarray(read)), 1.0, atol=1e-5)
    # beyond the map: clipped to its edge; a map one pixel wide: its centre
    assert np.array_equal(placement.pixels_to_grid(np.array([[-3.0, 20.0]]), map_shape), [[-1.0, 1.0]])
    assert np.array_equal(placement.pixels_to_grid(np.array([[4.0, 0.0]]), (1, 1)), [[0.0, 0.0]])


def test_twin_readouts_start_on_the_receptive_fields(session):
    """The core (5x5 input conv, no padding) gives a 14x28 map: mu maps back to image pixels near
    the true centres; neurons without a significant map keep their random mu."""
    data, truth = session
    model = small_twin(data)
    before = np.asarray(model.readouts[0].mu[...])
    (placed,) = placement.place_readouts(model, [data])
    mu = np.asarray(model.readouts[0].mu[...])
    pixels = placement.grid_to_pixels(mu, (14, 28), (2.0, 2.0))
    inside = (truth["x"] >= 2) & (truth["x"] <= 29) & (truth["y"] >= 2) & (truth["y"] <= 15)
    assert np.mean(errors(pixels, truth)[placed & inside] <= 2.0) >= 0.8
    assert np.array_equal(mu[~placed], before[~placed])


def test_missing_responses_are_left_out(session):
    data, truth = session
    trials = data.trials("train")
    responses = data.responses[trials].copy()
    rng = np.random.default_rng(0)
    responses[rng.random(responses.shape) < 0.3] = np.nan  # 30% missing, scattered
    responses[: len(trials) // 2, 0] = np.nan  # neuron 0 misses half its trials
    responses[:, 1] = np.nan  # neuron 1 was never recorded
    found = placement.energy_positions(data.images[trials], responses)
    assert np.isfinite(found["r"][2:]).all() and not found["significant"][1]
    close = errors(found["position"], truth) <= 2.0
    assert np.mean(close[2:]) >= 0.75 and found["significant"][0]
    # r of one neuron equals Pearson's r over its recorded trials where the maps are constant-stat
    maps = rng.normal(size=(len(trials), 3)).astype(np.float32)
    weights, count = placement.response_weights(responses[:, :1])
    r = placement.correlation_maps(weights, maps)
    keep = np.isfinite(responses[:, 0])
    assert count[0] == keep.sum()
    expected = [np.corrcoef(responses[keep, 0], maps[keep, j])[0, 1] for j in range(3)]
    assert np.allclose(r[0], expected, atol=0.05)


def test_video_readouts_are_placed_frame_by_frame(session):
    """The simulated train images as videos of 30 frames at 30 Hz, each response recorded
    LAG_SECONDS (3 frames) after its image: the frames place the readouts of a video twin as the
    images place an image twin's; the same videos without the lag place few."""
    data, truth = session
    k = len(data.trials("train")) // 30
    trials = data.trials("train")[: k * 30]
    lag = round(placement.LAG_SECONDS * 30)
    responses = np.full((k, 30, data.n_neurons), np.nan, np.float32)
    responses[:, lag:] = data.responses[trials].reshape(k, 30, -1)[:, : 30 - lag]
    videos = SimpleNamespace(
        images=data.images[trials].reshape((k, 30) + data.images.shape[1:]),
        responses=responses,
        frame_count=np.full(k, 30),
        frame_rate=30.0,
        n_neurons=data.n_neurons,
        trials=lambda tier: np.arange(k),
    )
    config = dataclasses.replace(SMALL, core="factorized3d")
    model = nnx.jit(lambda: Twin(config, 1, SIZE, specs(data), rngs=nnx.Rngs(0)))()
    (placed,) = placement.place_readouts(model, [videos])
    pixels = placement.grid_to_pixels(np.asarray(model.readouts[0].mu[...]), (14, 28), (2.0, 2.0))
    inside = (truth["x"] >= 2) & (truth["x"] <= 29) & (truth["y"] >= 2) & (truth["y"] <= 15)
    assert placed.mean() >= 0.7
    assert np.mean(errors(pixels, truth)[placed & inside] <= 2.0) >= 0.8
    videos.responses = data.responses[trials].reshape(k, 30, -1)
    (placed,) = placement.place_readouts(model, [videos])
    assert placed.mean() <= 0.3


def test_ensemble_members_share_the_data_positions(session):
    data, _ = session
    model = nnx.jit(lambda: make_ensemble(SMALL, 1, SIZE, specs(data), 0, [0, 1]))()
    (placed,) = placement.place_readouts(model, [data])
    mu = np.asarray(model.members.readouts[0].mu[...])
    assert placed.shape == (2, data.n_neurons) and placed.any()
    assert np.array_equal(mu[0][placed[0]], mu[1][placed[0]])


def test_factorized_and_grid_predictor_readouts_are_skipped(session):
    data, _ = session
    shape, mean = (14, 28, 4), data.mean_response
    for readout in (
        FactorizedReadout(shape, mean, rngs=nnx.Rngs(0)),
        GaussianReadout(shape, mean, positions=data.cell_xyz, rngs=nnx.Rngs(0)),
    ):
        before = nnx.state(readout, nnx.Param)
        (placed,) = placement.place_readouts(SimpleNamespace(readouts=[readout]), [data])
        assert not placed.any()
        after = nnx.state(readout, nnx.Param)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_readout_init_is_checked():
    assert ModelConfig().readout_init == "data"
    with pytest.raises(ConfigError, match=r"^\[model\]\.readout_init = 'center' is not a known value; use one of"
                       r" 'data', 'random'$"):
        ModelConfig(readout_init="center")
