"""Beyond single MEIs: diverse exciting inputs (DEIs) and population objectives.

- DEIs: for each neuron, D images that each keep >= ``dei_fraction`` of the MEI's activation while
  their mean pairwise distance grows (the constraint enters as a hinge penalty). Distance
  (``dei_diversity``): "pixel", the RMS pixel difference, or "population", the cosine distance
  between the session's population responses to the two images (images that drive the rest of
  the population differently, not only look different).
- One-hot control: drive the target neuron while holding all others at their mean response.
- Most inhibitory input: minimize the target's response.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from twin.config import MEIConfig
from twin.mei import ops
from twin.mei.optimize import (
    MEIResult,
    Objective,
    evaluate_pairs,
    fixed_inputs,
    model_input,
    neuron_objective,
    optimize_meis,
    pair_keys,
    run_pairs,
)
from twin.mei.params import Parametrization


def pairwise_distance(features: jax.Array, group: int, kind: str) -> jax.Array:
    """(p,) mean distance of each row of ``features (p, d)`` to the other ``group - 1`` rows of its
    group (consecutive rows): RMS difference ("pixel") or 1 - cosine ("population")."""
    grouped = features.reshape(-1, group, features.shape[-1])
    if kind == "pixel":
        squared = jnp.sum((grouped[:, :, None] - grouped[:, None]) ** 2, axis=-1) / grouped.shape[-1]
        distance = jnp.sqrt(squared + 1e-12)
    else:
        unit = grouped / jnp.sqrt(jnp.sum(grouped**2, axis=-1, keepdims=True) + 1e-12)
        distance = 1.0 - jnp.einsum("gid,gjd->gij", unit, unit)
    distance = distance * (1.0 - jnp.eye(group))
    return distance.sum(-1).reshape(-1) / (group - 1)


def dei_objective(
    base: Objective, fraction: float, penalty: float, group: int, population: Callable | None = None
) -> Objective:
    """Per image: its mean distance to the other ``group - 1`` images of its neuron plus
    ``penalty`` x min(0, activation / (fraction x MEI activation) - 1).

    targets: "neuron" (p,) and "mei_activation" (p,); pairs come in consecutive groups.
    population: ``(model, images (p, ...)) -> (p, neurons)`` responses to measure the distance
    between (cosine), or None for the RMS pixel distance.
    """

    def objective(model, images, targets):
        activation = base(model, images, targets)
        floor = fraction * targets["mei_activation"]
        constraint = jnp.minimum(activation / floor - 1.0, 0.0)
        if population is None:
            diversity = pairwise_distance(images.reshape(len(images), -1), group, "pixel")
        else:
            diversity = pairwise_distance(population(model, images), group, "population")
        return diversity + penalty * constraint

    return objective


def population_responses(session: int, behavior=None, pupil_center=None) -> Callable:
    """``(model, images (p, [channel,] y, x)) -> (p, neurons)``: the whole session's responses."""
    extra = fixed_inputs(behavior, pupil_center)

    def responses(model, images):
        batch = {k: jnp.broadcast_to(v, (len(images), v.shape[1])) for k, v in extra.items()}
        return model(model_input(images), session, **batch)

    return responses


def dei_config(config: MEIConfig) -> MEIConfig:
    """The recipe's constraints (norm, pixel range) with Adam on pixels at dei_learning_rate for
    dei_steps; no blur or jitter (diversity is measured on the images themselves)."""
    return dataclasses.replace(
        config,
        steps=config.dei_steps,
        optimizer="adam",
        learning_rate=config.dei_learning_rate,
        final_learning_rate=config.dei_learning_rate,
        schedule="constant",
        normalize_gradient=False,
        parametrization="pixel",
        precondition=0.0,
        blur_target="none",
        jitter=0,
        scale_jitter=0.0,
        rotate=0.0,
        tolerance=0.0,
    )


def diverse_images(
    model,
    session: int,
    neurons,
    meis: np.ndarray,
    mei_activations: np.ndarray,
    config: MEIConfig,
    n_deis: int,
    *,
    pixel_range: tuple[float, float],
    seed: int = 0,
    behavior=None,
    pupil_center=None,
    devices=None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_deis`` DEIs per neuron, started from the MEI ``meis (n, [channel,] y, x)`` plus pixel
    noise (``init_std``), each keeping at least ``dei_fraction`` of ``mei_activations (n,)``.
    Returns images (n, n_deis, [channel,] y, x) and activations (n, n_deis)."""
    neurons = np.asarray(neurons, np.int64).reshape(-1)
    if n_deis < 2:
        raise ValueError("diverse_images needs at least 2 images per neuron")
    config = dei_config(config)
    n, image_shape = len(meis), meis.shape[1:]
    rng = np.random.default_rng(seed)
    lo, hi = pixel_range
    noise = rng.normal(0, config.init_std * (hi - lo) / 255.0, (n, n_deis, *image_shape))
    start = np.clip(meis[:, None] + noise, lo, hi).reshape(n * n_deis, *image_shape)
    targets = {
        "neuron": np.repeat(neurons, n_deis).astype(np.int32),
        "mei_activation": np.repeat(mei_activations, n_deis).astype(np.float32),
    }
    base = neuron_objective(session, behavior, pupil_center)
    population = None
    if config.dei_diversity == "population":
        population = population_responses(session, behavior, pupil_center)
    objective = dei_objective(base, config.dei_fraction, config.dei_penalty, n_deis, population)
    keys = pair_keys(seed, targets["neuron"], np.tile(np.arange(n_deis), n))
    images, _, _ = run_pairs(
        model, objective, targets, keys, config, Parametrization(config, image_shape, pixel_range),
        start=start.astype(np.float32), group=n_deis, devices=devices, progress=progress, desc="DEIs",
    )
    activations = evaluate_pairs(model, base, images, targets, devices=devices)
    # The hinge penalty lets a few DEIs end just under the floor: move those back toward their
    # MEI (blend factor 0.9, 0.8, ..., 0 = the MEI itself) until they keep the fraction.
    floor = config.dei_fraction * targets["mei_activation"]
    mei_rows = np.repeat(meis, n_deis, axis=0).astype(np.float32)
    for blend in np.linspace(0.9, 0.0, 10):
        low = np.flatnonzero(activations < floor)
        if len(low) == 0:
            break
        blended = mei_rows[low] + np.float32(blend) * (images[low] - mei_rows[low])
        if config.norm > 0:  # the recipe's constraints, in the engine's order
            blended = np.asarray(ops.set_norm(jnp.asarray(blended), config.norm))
        blended = np.clip(blended, lo, hi) if config.clip_range else blended
        values = evaluate_pairs(model, base, blended, {k: v[low] for k, v in targets.items()}, devices=devices)
        kept = values >= floor[low]
        images[low[kept]], activations[low[kept]] = blended[kept], values[kept]
    return images.reshape(n, n_deis, *image_shape), activations.reshape(n, n_deis)


def control_objective(
    session: int, mean_response, weight: float = 1.0, behavior=None, pupil_center=None
) -> Objective:
    """One-hot control: the target's response minus ``weight`` x the mean squared deviation of all
    other neurons from ``mean_response (neurons,)`` (normalized response units)."""
    extra = fixed_inputs(behavior, pupil_center)
    mean_response = jnp.asarray(mean_response, jnp.float32)

    def objective(model, images, targets):
        def one(image, neuron):
            population = model(model_input(image[None]), session, **extra)[0]
            others = jnp.arange(population.shape[0]) != neuron
            deviation = jnp.sum(others * (population - mean_response) ** 2) / others.sum()
            return population[neuron] - weight * deviation

        return jax.vmap(one)(images, targets["neuron"])

    return objective


def inhibit_objective(session: int, behavior=None, pupil_center=None) -> Objective:
    """Most inhibitory input: the negated response of the target neuron."""
    base = neuron_objective(session, behavior, pupil_center)
    return lambda model, images, targets: -base(model, images, targets)


def control_inputs(model, session: int, neurons, config: MEIConfig, *, mean_response,
                   weight: float = 1.0, behavior=None, pupil_center=None, **kwargs) -> MEIResult:
    """One-hot control images; ``activations`` hold the control objective. Other keyword
    arguments as optimize_meis (image_shape, pixel_range, seed, devices, ...)."""
    objective = control_objective(session, mean_response, weight, behavior, pupil_center)
    return optimize_meis(model, session, neurons, config, objective=objective, **kwargs)


def inhibitory_inputs(model, session: int, neurons, config: MEIConfig, *, behavior=None,
                      pupil_center=None, **kwargs) -> MEIResult:
    """Most inhibitory inputs; ``activations`` are responses and ``best_seed`` the lowest."""
    objective = inhibit_objective(session, behavior, pupil_center)
    result = optimize_meis(model, session, neurons, config, objective=objective, **kwargs)
    validator = result.validator_activations
    return dataclasses.replace(
        result,
        activations=-result.activations,
        validator_activations=None if validator is None else -validator,
    )
