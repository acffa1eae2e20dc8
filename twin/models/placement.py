"""Readout positions from the data: each neuron's receptive-field position on the core's output
grid, estimated from the train trials of its session, as the starting ``mu`` of its Gaussian readout,
for fits from scratch and on a transferred core alike.

A readout point that starts far from the receptive field sees features its neuron does not
respond to, gets almost no gradient towards the right place, and often never reaches it
(experiments/fit_simulated.md). The estimator is a correlation map (neuron, y, x) over at most
``MAX_TRIALS`` seeded train trials, whose argmax is the position: the responses against the
local contrast energy of the images, (image - its mean)^2 smoothed by a Gaussian, at several
smoothing scales and, for colour images, in each principal colour component (luminance and the
opponent axes), the best map per neuron. Any visual neuron with a localized receptive field
(simple, complex, normalized; luminance or colour) responds more, on average, to images with more
contrast inside its receptive field, whatever its preferred pattern; contrast elsewhere does not
drive it (and, under surround normalization, suppresses it). The energy map is the one stimulus
statistic that needs no knowledge of the tuning. Averaging the energy over R, G, B instead loses
colour-opponent neurons, whose drive is swamped by luminance contrast: on the simulated colour
animal of tests/test_placement.py only half the neurons then land within 2 pixels of their
receptive field. A trained core's features (the best |r| over channels and positions) place
neurons less well than the images do, also on an animal the core never saw (median 1.25 against
0.65 pixels from the true receptive field, experiments/fit_simulated.md), so a transferred core
is placed by contrast energy too.

A neuron's map maximum is kept only where it is significant: above the Bonferroni bound over all
positions x scales x colour components at family-wise rate ``ALPHA``, with the null distribution of
Fisher's z, atanh(r) sqrt(trials - 3) ~ N(0, 1). Other neurons keep their random init.

Missing responses (NaN) are left out per neuron: its mean and spread are taken over its recorded
trials, its missing trials add nothing to the covariance, and its trial count sets its threshold.

A video session is placed frame by frame: each sample is one recorded frame of a train trial
against the responses ``LAG_SECONDS`` later (activity follows the stimulus), at most ``MAX_FRAMES``
(trial, frame) pairs drawn with the seed. The test counts the frames as independent samples;
frames of one video are not, so a video's threshold is lower than its true family-wise rate asks.
"""

from __future__ import annotations

from statistics import NormalDist

import jax.numpy as jnp
import numpy as np
from scipy.ndimage import gaussian_filter

from twin.models.readouts import GaussianReadout

# Trials used per session (a seeded subset of the train tier): the maps cost
# neurons x trials x positions: at Sensorium scale (8,000 neurons, 36x64) about 10-15 s on 2 CPU
# cores (benchmarks/RESULTS.md).
MAX_TRIALS = 2000
# Family-wise false-positive rate of one neuron's significance test over its whole map.
ALPHA = 0.01
# Smoothing scales of the contrast energy in image pixels; those above a quarter of the image's
# shorter side are dropped.
SCALES = (1.0, 2.0, 4.0, 8.0)
# Videos: the response to a frame is read this long after it, and at most MAX_FRAMES frames are used.
LAG_SECONDS = 0.1
MAX_FRAMES = 4000


def sample_trials(data, n_trials: int = MAX_TRIALS, seed: int = 0) -> np.ndarray:
    """At most ``n_trials`` train trials (k,) of SessionData ``data``, drawn with ``seed``, sorted."""
    trials = data.trials("train")
    if len(trials) > n_trials:
        trials = np.sort(np.random.default_rng(seed).choice(trials, n_trials, replace=False))
    return trials


def frame_samples(data, trials: np.ndarray, n_frames: int = MAX_FRAMES, seed: int = 0):
    """Frames of the video SessionData ``data``'s ``trials`` as images (k, y, x, c) and the
    responses (k, n) LAG_SECONDS after each: at most ``n_frames`` recorded (trial, frame) pairs,
    drawn with ``seed``."""
    lag = int(round(LAG_SECONDS * data.frame_rate))
    counts = np.maximum(np.asarray(data.frame_count)[trials] - lag, 0)
    trial = np.repeat(trials, counts)
    frame = np.concatenate([np.arange(count) for count in counts] + [np.zeros(0, np.int64)])
    if len(trial) > n_frames:
        pick = np.sort(np.random.default_rng(seed).choice(len(trial), n_frames, replace=False))
        trial, frame = trial[pick], frame[pick]
    return data.images[trial, frame], data.responses[trial, frame + lag]


def response_weights(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responses (t, n), NaN where not recorded -> weights (n, t) such that ``weights @ z`` is
    each neuron's Pearson r with a map z (t,) standardized over trials, and the recorded trial
    count (n,). A neuron's mean and spread are over its recorded trials; its missing trials get
    weight 0. Constant neurons get weight 0 (r = 0)."""
    recorded = np.isfinite(responses)
    count = recorded.sum(axis=0)
    mean = np.where(recorded, responses, 0).sum(axis=0) / np.maximum(count, 1)
    centred = np.where(recorded, responses - mean, 0)
    spread = np.sqrt((centred**2).sum(axis=0))  # sqrt(count) x its std
    scale = np.where(spread > 0, spread * np.sqrt(np.maximum(count, 1)), np.inf)
    return np.ascontiguousarray((centred / scale).T, dtype=np.float32), count


def correlation_maps(weights: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """r (n, p) of the neurons of ``weights`` (n, t, from response_weights) with each column of
    ``maps`` (t, p), standardized here over all t trials; constant columns get r = 0."""
    maps = maps - maps.mean(axis=0)
    std = maps.std(axis=0)
    return weights @ (maps / np.where(std > 0, std, np.inf)).astype(np.float32)


def keep_best(best: dict, r: np.ndarray, label: int) -> None:
    """Update ``best`` (``r``, ``index``, ``label``, each (n,)) in place with the maxima of the
    maps r (n, p) named ``label``."""
    index = r.argmax(axis=1)
    top = np.take_along_axis(r, index[:, None], axis=1)[:, 0]
    better = top > best["r"]
    best["r"] = np.where(better, top, best["r"])
    best["index"] = np.where(better, index, best["index"])
    best["label"] = np.where(better, label, best["label"])


def no_best(n: int) -> dict:
    """The starting ``best`` of keep_best for n neurons."""
    return {"r": np.full(n, -np.inf, np.float32), "index": np.zeros(n, np.int64), "label": np.zeros(n, np.int64)}


def threshold(count: np.ndarray, n_tests: int) -> np.ndarray:
    """Smallest significant r (n,) for ``count`` (n,) trials and ``n_tests`` tests per neuron
    (Bonferroni at ALPHA, two-sided, Fisher z); 1 (never reached) below 4 trials."""
    z = NormalDist().inv_cdf(1 - ALPHA / (2 * n_tests))
    return np.where(count > 3, np.tanh(z / np.sqrt(np.maximum(count - 3, 1))), 1.0)


def colour_components(images: np.ndarray) -> np.ndarray:
    """Images (t, y, x, c) minus each image's mean, in the principal colour axes of their pixels
    (t, y, x, c): for natural images luminance and the two colour-opponent axes (Ruderman et al.
    1998), so an opponent neuron's drive lives in one component instead of being spread over
    R, G, B and swamped by luminance. One channel is returned as it is (minus its mean)."""
    deviation = images - images.mean(axis=(1, 2), keepdims=True)
    if images.shape[-1] == 1:
        return deviation
    pixels = deviation.reshape(-1, images.shape[-1])
    _, axes = np.linalg.eigh(pixels.T @ pixels)
    return (deviation @ axes[:, ::-1]).astype(np.float32)


def contrast_energy(components: np.ndarray, scale: float) -> np.ndarray:
    """Local contrast energy (t, y, x) of one colour component (t, y, x) (see colour_components):
    its square smoothed by a Gaussian of ``scale`` pixels, normalized by the weight inside the
    image so edges are not darkened."""
    weight = gaussian_filter(np.ones(components.shape[1:], np.float32), scale, mode="constant")
    return gaussian_filter(components**2, (0, scale, scale), mode="constant") / weight


def energy_positions(images: np.ndarray, responses: np.ndarray) -> dict[str, np.ndarray]:
    """Receptive-field positions from the contrast energy (see the module doc): the best map over
    smoothing scales and colour components.

    images: (t, y, x, c); responses: (t, n) with NaN where missing. Returns ``position`` (n, 2)
    as (x, y) image pixels, ``r`` (n,) the best correlation, ``scale`` (n,) its smoothing scale
    in pixels, ``component`` (n,) its colour component (0: luminance) and ``significant`` (n,) bool.
    """
    t, height, width, channels = images.shape
    scales = [s for s in SCALES if s <= min(height, width) / 4] or [SCALES[0]]
    components = colour_components(images)
    weights, count = response_weights(responses)
    best = no_best(responses.shape[1])
    for component in range(channels):
        for k, scale in enumerate(scales):
            energy = contrast_energy(components[..., component], scale).reshape(t, -1)
            keep_best(best, correlation_maps(weights, energy), component * len(scales) + k)
    return {
        "position": np.stack([best["index"] % width, best["index"] // width], axis=1).astype(np.float32),
        "r": best["r"],
        "scale": np.asarray(scales, np.float32)[best["label"] % len(scales)],
        "component": best["label"] // len(scales),
        "significant": best["r"] > threshold(count, height * width * len(scales) * channels),
    }


def pixels_to_grid(position: np.ndarray, map_shape: tuple[int, int], offset=(0.0, 0.0)) -> np.ndarray:
    """Readout grid points (n, 2) (x, y) in [-1, 1] of pixel positions (n, 2) (x, y).

    map_shape: the core output (h, w); offset: (x, y) of the map's first pixel in the pixel
    coordinates of ``position`` ((image - map) / 2 per axis for image pixels, 0 for map pixels).
    The inverse of the readout's sampling (readouts.grid_corners, align_corners=True): -1 and 1
    are the centres of the first and last pixels. Points beyond the map are clipped to its edge;
    a map one pixel wide has its centre at 0.
    """
    h, w = map_shape
    size = np.array([w - 1, h - 1], np.float32)
    local = np.asarray(position, np.float32) - np.asarray(offset, np.float32)
    grid = np.where(size > 0, 2 * local / np.maximum(size, 1) - 1, 0.0)
    return np.clip(grid, -1, 1).astype(np.float32)


def grid_to_pixels(grid: np.ndarray, map_shape: tuple[int, int], offset=(0.0, 0.0)) -> np.ndarray:
    """Pixel positions (n, 2) (x, y) of readout grid points (n, 2): the inverse of pixels_to_grid
    inside the map."""
    h, w = map_shape
    size = np.array([w - 1, h - 1], np.float32)
    return ((np.asarray(grid, np.float32) + 1) * 0.5 * size + np.asarray(offset, np.float32)).astype(np.float32)


def placeable(readout) -> bool:
    """Whether a readout has free grid means to place: Gaussian, without a grid-mean predictor."""
    return isinstance(readout, GaussianReadout) and readout.grid_predictor is None


def place_readouts(model, sessions, *, n_trials: int = MAX_TRIALS, seed: int = 0) -> list[np.ndarray]:
    """Set the readout positions ``mu`` of ``model`` (Twin or Ensemble) from ``sessions`` (one
    SessionData per readout, in order; videos frame by frame), in place, by contrast energy: the
    same points for every ensemble member, whatever its core. Neurons without a significant map keep their random mu;
    factorized readouts and readouts with a grid-mean predictor are left as they are. Returns per
    session the neurons placed: bool (n,), or (members, n) for an Ensemble (all False for
    readouts left as they are).
    """
    ensemble = hasattr(model, "members")
    base = model.members if ensemble else model
    placed = []
    for index, data in enumerate(sessions):
        readout = base.readouts[index]
        significant = np.zeros(data.n_neurons, bool)
        if placeable(readout):
            trials = sample_trials(data, n_trials, seed)
            if data.images.ndim == 5:  # video: (trial, frame, y, x, c)
                found = energy_positions(*frame_samples(data, trials, seed=seed))
            else:
                found = energy_positions(data.images[trials], data.responses[trials])
            map_shape = tuple(readout.in_shape[:2])
            height, width = data.images.shape[-3:-1]
            offset = ((width - map_shape[1]) / 2, (height - map_shape[0]) / 2)
            grid = pixels_to_grid(found["position"], map_shape, offset)
            significant = found["significant"]
            old = np.asarray(readout.mu[...])  # (n, 2), or (members, n, 2)
            readout.mu[...] = jnp.asarray(np.where(significant[:, None], grid, old), jnp.float32)
        placed.append(np.broadcast_to(significant, (model.size, data.n_neurons)) if ensemble else significant)
    return placed
