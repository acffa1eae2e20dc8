"""Scores of a twin's predictions, Sensorium 2022 definitions, in plain numpy (no JAX).

Every function takes trial-major arrays: ``responses`` and ``predictions`` are (trial, neuron),
``image_id`` is (trial,) and marks repeats of the same image. Per-neuron results are (neuron,).
"""

from __future__ import annotations

import numpy as np

# Added to the standard deviations before dividing, as in Sensorium's corr().
EPS = 1e-8


def correlation(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
    """Pearson r along ``axis`` (std with ddof=0, eps 1e-8 added), e.g. (trial, neuron) -> (neuron,).

    Where ``x`` or ``y`` is constant along ``axis`` (a silent or constant neuron, a constant
    prediction) r is exactly 0, not NaN: such neurons count as unpredicted in every mean.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=axis, keepdims=True)
    y = y - y.mean(axis=axis, keepdims=True)
    constant = (np.ptp(x, axis=axis) == 0) | (np.ptp(y, axis=axis) == 0) if x.size else False
    x = x / (x.std(axis=axis, keepdims=True) + EPS)
    y = y / (y.std(axis=axis, keepdims=True) + EPS)
    return np.where(constant, 0.0, (x * y).mean(axis=axis))


def single_trial_correlation(responses: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """r over all trials per neuron: (trial, neuron) x2 -> (neuron,)."""
    return correlation(responses, predictions, axis=0)


def repeat_groups(image_id: np.ndarray) -> list[np.ndarray]:
    """Trial indices of each distinct image, in order of first image id: list of (repeats,)."""
    image_id = np.asarray(image_id)
    order = np.argsort(image_id, kind="stable")
    _, starts = np.unique(image_id[order], return_index=True)
    return np.split(order, starts[1:])


def average_over_repeats(values: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Mean over the repeats of each image: (trial, neuron) -> (image, neuron)."""
    values = np.asarray(values, dtype=np.float64)
    return np.stack([values[group].mean(axis=0) for group in repeat_groups(image_id)])


def correlation_to_average(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray
) -> np.ndarray:
    """r across images between repeat-averaged responses and predictions: -> (neuron,)."""
    return correlation(
        average_over_repeats(responses, image_id),
        average_over_repeats(predictions, image_id),
        axis=0,
    )


def explainable_variance(responses: np.ndarray, image_id: np.ndarray):
    """(total variance, noise variance), each (neuron,), over images shown at least twice.

    Noise variance is the mean over images of the across-repeat variance (ddof=1); total variance
    is the variance over all those trials (ddof=1).
    """
    groups = [g for g in repeat_groups(image_id) if len(g) > 1]
    if not groups:
        raise ValueError("no image is repeated; FEVE and oracle correlation need repeats")
    responses = np.asarray(responses, dtype=np.float64)
    noise = np.mean([responses[g].var(axis=0, ddof=1) for g in groups], axis=0)
    total = responses[np.concatenate(groups)].var(axis=0, ddof=1)
    return total, noise


def fev(responses: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance (total - noise) / total: -> (neuron,)."""
    total, noise = explainable_variance(responses, image_id)
    return (total - noise) / total


def feve(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray, min_fev: float = 0.15
) -> np.ndarray:
    """Fraction of explainable variance explained, 1 - (MSE - noise) / (total - noise): (neuron,).

    Neurons whose FEV is below ``min_fev`` are NaN (their explainable variance is too small to
    score). Only trials of repeated images enter, as in Sensorium.
    """
    groups = [g for g in repeat_groups(image_id) if len(g) > 1]
    total, noise = explainable_variance(responses, image_id)
    trials = np.concatenate(groups)
    residual = np.asarray(responses, np.float64)[trials] - np.asarray(predictions, np.float64)[trials]
    mse = (residual**2).mean(axis=0)
    # Silent neurons (no variance) divide by zero; the FEV filter turns them into NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = 1 - (mse - noise) / (total - noise)
        return np.where((total - noise) / total >= min_fev, scores, np.nan)


def oracle_correlation(responses: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Jackknife oracle: r over trials between each response and the mean of its image's other
    repeats, (trial, neuron) -> (neuron,); images shown once are left out."""
    responses = np.asarray(responses, dtype=np.float64)
    groups = [g for g in repeat_groups(image_id) if len(g) > 1]
    if not groups:
        raise ValueError("no image is repeated; the oracle correlation needs repeats")
    held_out = np.concatenate([responses[g] for g in groups])
    others = np.concatenate(
        [(responses[g].sum(axis=0) - responses[g]) / (len(g) - 1) for g in groups]
    )
    return correlation(held_out, others, axis=0)


def fraction_of_oracle(correlations: np.ndarray, oracle: np.ndarray) -> float:
    """Least-squares slope through the origin of per-neuron ``correlations`` against ``oracle``
    (Sensorium's fraction of oracle); both (neuron,), NaNs dropped."""
    correlations = np.asarray(correlations, dtype=np.float64)
    oracle = np.asarray(oracle, dtype=np.float64)
    keep = np.isfinite(correlations) & np.isfinite(oracle)
    return float(correlations[keep] @ oracle[keep] / (oracle[keep] @ oracle[keep]))


def score(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray, min_fev: float = 0.15
) -> dict[str, np.ndarray]:
    """All per-neuron scores of one tier: single_trial_correlation, correlation_to_average and,
    when some image is repeated, feve and oracle_correlation; each (neuron,)."""
    scores = {
        "single_trial_correlation": single_trial_correlation(responses, predictions),
        "correlation_to_average": correlation_to_average(responses, predictions, image_id),
    }
    if any(len(g) > 1 for g in repeat_groups(image_id)):
        scores["feve"] = feve(responses, predictions, image_id, min_fev)
        scores["oracle_correlation"] = oracle_correlation(responses, image_id)
    return scores
