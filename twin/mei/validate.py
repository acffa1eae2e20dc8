"""In-silico checks of MEIs: against the session's natural images, contrast tuning, shift
robustness, and, for simulated sessions, the ground-truth neurons themselves.

Images are in normalized units unless a name says pixels. ``GroundTruth`` wraps the simulated
animal's noise-free neurons (twin.data.simulate.mean_response with xp=jax.numpy) in the Twin call
signature, so the MEI engine runs gradient ascent on the true neurons as on any twin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from twin.data.simulate import mean_response
from twin.mei import ops
from twin.mei.optimize import (
    Objective,
    apply_model,
    evaluate_pairs,
    fixed_inputs,
    split_model,
)

# Ground-truth parameters with a leading neuron axis that mean_response reads.
GT_NEURON_PARAMS = (
    "filter_even",
    "filter_odd",
    "surround",
    "complex",
    "norm_weight",
    "c50",
    "rmax",
    "baseline",
)
SHIFT = 5  # pixels
CONTRAST_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def gt_subset(params: dict, neurons) -> dict:
    """The ground-truth parameters of ``neurons (k,)`` only."""
    return {name: np.asarray(params[name])[np.asarray(neurons)] for name in GT_NEURON_PARAMS}


class GroundTruth(nnx.Module):
    """The simulated animal's noise-free neurons with the Twin call signature.

    params: ``twin.data.simulate.ground_truth(ds)``; image_mean, image_std: the session's
    normalization in the layouts of ``SessionData.image_mean`` ((), (y, x), (channel,) or
    (y, x, channel)), to turn normalized images back into pixel units.
    """

    def __init__(self, params: dict, image_mean, image_std):
        for name in GT_NEURON_PARAMS:
            setattr(self, name, nnx.Variable(jnp.asarray(params[name], jnp.float32)))
        self.image_mean = nnx.Variable(jnp.asarray(image_mean, jnp.float32))
        self.image_std = nnx.Variable(jnp.asarray(image_std, jnp.float32))

    def __call__(self, images, session=0, *, neurons=None, behavior=None, pupil_center=None):
        """images (b, y, x, channel) normalized -> noise-free responses (b, n) or (b, k) for
        neurons (k,)."""
        params = {name: getattr(self, name)[...] for name in GT_NEURON_PARAMS}
        if neurons is not None:
            params = {name: value[neurons] for name, value in params.items()}
        if images.shape[-1] == 1:
            pixels = images[..., 0] * self.image_std[...] + self.image_mean[...]
        else:
            pixels = jnp.moveaxis(images * self.image_std[...] + self.image_mean[...], -1, 1)
        return mean_response(params, pixels, xp=jnp)


def best_natural(
    model: nnx.Module,
    session: int,
    images: np.ndarray,
    neurons,
    *,
    behavior=None,
    pupil_center=None,
    batch_size: int = 128,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The strongest natural image of each neuron under ``model``.

    images: (trial, y, x, channel) normalized, or clips (trial, frame, y, x, channel) of a video
    model with ``window``: a clip's activation is the response averaged over its last ``window``
    frames (the MEV objective), behavior and pupil centre held on every frame; neurons: (n,).
    Returns activation (n,) and the index (n,) into ``images`` of the best one.
    """
    graphdef, state, stacked = split_model(model)
    neurons = jnp.asarray(neurons, jnp.int32)
    extra = fixed_inputs(behavior, pupil_center)

    @jax.jit
    def predict(state, batch):
        lead = batch.shape[:2] if window else batch.shape[:1]
        kwargs = {k: jnp.broadcast_to(v[0], lead + v.shape[1:]) for k, v in extra.items()}
        out = apply_model(graphdef, state, stacked, lambda m: m(batch, session, neurons=neurons, **kwargs))
        return out[:, -window:].mean(axis=1) if window else out

    best = np.full(len(neurons), -np.inf, np.float32)
    where = np.zeros(len(neurons), np.int64)
    for first in range(0, len(images), batch_size):
        index = np.minimum(np.arange(first, first + batch_size), len(images) - 1)
        out = np.asarray(predict(state, jnp.asarray(images[index], jnp.float32)))
        top = out.argmax(axis=0)
        better = out[top, np.arange(len(neurons))] > best
        best = np.where(better, out[top, np.arange(len(neurons))], best)
        where = np.where(better, index[top], where)
    return best, where


def contrast_tuning(
    model: nnx.Module,
    objective: Objective,
    images: np.ndarray,
    neurons,
    pixel_range,
    factors=CONTRAST_FACTORS,
) -> tuple[np.ndarray, np.ndarray]:
    """Activation vs RMS contrast: each image (n, [channel,] y, x) scaled about the mean gray by
    ``factors`` and clipped to the pixel range. Returns rms (n, factors) over the image's values
    and activation (n, factors)."""
    factors = np.asarray(factors).reshape(1, -1, *([1] * (images.ndim - 1)))
    scaled = np.clip(images[:, None] * factors, *pixel_range)
    n, k = scaled.shape[:2]
    flat = scaled.reshape(n * k, *images.shape[1:]).astype(np.float32)
    values = evaluate_pairs(model, objective, flat, {"neuron": np.repeat(neurons, k)})
    return scaled.reshape(n, k, -1).std(axis=2), values.reshape(n, k)


def shift_offsets(shift: int = SHIFT) -> np.ndarray:
    """(4, 2) (dy, dx) offsets: down, up, right, left by ``shift`` pixels."""
    return np.array([[shift, 0], [-shift, 0], [0, shift], [0, -shift]], np.float32)


def shift_robustness(
    model: nnx.Module, objective: Objective, images: np.ndarray, neurons, shift: int = SHIFT
) -> np.ndarray:
    """(n, 4) activation of each image (n, [channel,] y, x) translated by ``shift_offsets(shift)``
    (the uncovered border becomes mean gray)."""
    offsets = shift_offsets(shift)
    n, k = len(images), len(offsets)
    repeated = jnp.asarray(np.repeat(images, k, axis=0), jnp.float32)
    moved = ops.transform(repeated, jnp.tile(offsets, (n, 1)), jnp.ones(n * k))
    values = evaluate_pairs(model, objective, np.asarray(moved), {"neuron": np.repeat(neurons, k)})
    return values.reshape(n, k)


def true_responses(params: dict, pixels: np.ndarray, neurons) -> np.ndarray:
    """(n,) noise-free response of neuron ``neurons[i]`` to image ``pixels[i]`` ((y, x) or
    (channel, y, x), pixel units)."""
    sub = gt_subset(params, neurons)
    out = mean_response(sub, np.asarray(pixels, np.float32))
    return out[np.arange(len(pixels)), np.arange(len(pixels))]


def true_best_natural(params: dict, pixels: np.ndarray, neurons, batch_size: int = 512):
    """The ground truth's strongest natural image per neuron: response (n,), index (n,) into
    ``pixels (trial, [channel,] y, x)``."""
    sub = gt_subset(params, neurons)
    best = np.full(len(neurons), -np.inf)
    where = np.zeros(len(neurons), np.int64)
    for first in range(0, len(pixels), batch_size):
        out = mean_response(sub, np.asarray(pixels[first : first + batch_size], np.float32))
        top = out.argmax(axis=0)
        value = out[top, np.arange(len(neurons))]
        better = value > best
        best = np.where(better, value, best)
        where = np.where(better, first + top, where)
    return best.astype(np.float32), where


def optimum_correlation(pixels: np.ndarray, optimal: np.ndarray) -> np.ndarray:
    """(n,) Pearson correlation over pixels of each image (n, [channel,] y, x) with the known
    optimal stimulus (same shape); NaN where the optimum is unknown (NaN)."""
    a = pixels.reshape(len(pixels), -1).astype(np.float64)
    b = optimal.reshape(len(optimal), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
