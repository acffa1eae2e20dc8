"""The twin's responses to arbitrary images, with behavior and eye position held at training means."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BATCH = 256


def predict(model, data, session: int, images: np.ndarray, neurons: np.ndarray | None = None) -> np.ndarray:
    """Responses (n, k) in normalized units to images (n, y, x, channel), normalized.

    model: Twin or Ensemble (eval mode); data: the session's SessionData (behavior and pupil
    centre, when the twin uses them, are fixed at their train-trial means); neurons: (k,) indices
    or None for all.
    """
    train = data.tier == "train"
    # A twin without behavior channels or shifter ignores these.
    extra = {}
    if data.behavior is not None:
        extra["behavior"] = data.behavior[train].mean(0)
    if data.pupil_center is not None:
        extra["pupil_center"] = data.pupil_center[train].mean(0)
    graphdef, state = nnx.split(model)
    index = None if neurons is None else jnp.asarray(neurons, jnp.int32)

    @jax.jit
    def forward(state, batch, extra):
        fixed = {k: jnp.broadcast_to(v, (batch.shape[0],) + v.shape) for k, v in extra.items()}
        return nnx.merge(graphdef, state)(batch, session, neurons=index, **fixed)

    extra = {k: jnp.asarray(v, jnp.float32) for k, v in extra.items()}
    outputs = [
        np.asarray(forward(state, jnp.asarray(images[i : i + BATCH], jnp.float32), extra))
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0 if index is None else len(index)))


def twin_responses(run, session: int, pixels: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """The twin's responses (n, k) in the recording's units to model-space images (n, y, x) 0..255.

    run: a loaded twin.checkpoint.Run; neurons: (k,) indices within the session.
    """
    data = run.sessions[session]
    images = data.normalize_images(np.asarray(pixels, np.float32))[..., None]
    return predict(run.model, data, session, images, neurons) * data.response_std[neurons]
