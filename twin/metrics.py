"""Scores of a twin's predictions, Sensorium 2022 definitions, in plain numpy (no JAX).

Every function takes trial-major arrays: ``responses`` and ``predictions`` are (trial, neuron),
``image_id`` is (trial,) and marks repeats of the same image. Per-neuron results are (neuron,).
Responses may hold NaN where a neuron was not recorded on a trial (a dropped frame): each
neuron is then scored on its finite trials only (``per_finite``); predictions are finite.
"""

from __future__ import annotations

import functools

import numpy as np

# Added to the standard deviations before dividing, as in Sensorium's corr().
EPS = 1e-8
# The repeat metrics (correlation to average, FEVE, oracle correlation, fraction of oracle) are
# scored only when at least this many distinct images of a tier are shown twice or more. They
# are statistics across images: a per-neuron correlation over k images has a Fisher-z standard
# error of about 1 / sqrt(k - 3) (0.24 at 20 images, 0.7 at 5) and the noise variance of FEVE
# rests on k degrees of freedom (relative error sqrt(2 / k): 0.32 at 20). Below 20 they are
# noise, e.g. an oracle r of 0.0005 and FEVE above 1 from 3 repeated images; Sensorium has 100.
MIN_REPEATED_IMAGES = 20
REPEAT_METRICS = ("correlation_to_average", "feve", "oracle_correlation", "fraction_of_oracle")


def per_finite(score, responses: np.ndarray, *args) -> np.ndarray:
    """``score(responses, *args)`` -> (neuron,), each neuron scored on its finite responses only.

    args: numpy arrays (trial, neuron) or (trial,), cut to the same trials (and neurons) as
    ``responses``. Neurons with the same finite trials are
    scored in one call, so responses without NaN take exactly one. Neurons without finite
    responses are NaN.
    """
    responses = np.asarray(responses)
    finite = np.isfinite(responses)
    if finite.all():
        return score(responses, *args)
    scores = np.full(responses.shape[1], np.nan)
    patterns, group = np.unique(finite.T, axis=0, return_inverse=True)
    for index, rows in enumerate(patterns):
        if not rows.any():
            continue
        columns = np.flatnonzero(group.reshape(-1) == index)

        def cut(value):
            return value[rows][:, columns] if value.ndim == 2 else value[rows]

        scores[columns] = score(responses[rows][:, columns], *(cut(a) for a in args))
    return scores


def correlation(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
    """Pearson r along ``axis`` (std with ddof=0, eps 1e-8 added), e.g. (trial, neuron) -> (neuron,).

    Where ``x`` or ``y`` is constant along ``axis`` (a silent or constant neuron, a constant
    prediction) r is exactly 0, not NaN: such neurons count as unpredicted in every mean. NaN in
    ``x`` or ``y`` propagates (``single_trial_correlation`` skips missing responses).
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
    return per_finite(correlation, responses, np.asarray(predictions))


def repeat_groups(image_id: np.ndarray) -> list[np.ndarray]:
    """Trial indices of each distinct image, in order of first image id: list of (repeats,)."""
    image_id = np.asarray(image_id)
    order = np.argsort(image_id, kind="stable")
    _, starts = np.unique(image_id[order], return_index=True)
    return np.split(order, starts[1:])


def repeated_images(image_id: np.ndarray) -> int:
    """How many distinct images of ``image_id`` (trial,) are shown at least twice."""
    _, counts = np.unique(np.asarray(image_id), return_counts=True)
    return int(np.sum(counts > 1))


def repeats_note(image_id: np.ndarray, tier: str = "test") -> str | None:
    """None when enough images of ``image_id`` (trial,) repeat for the repeat metrics, else why
    they are not scored, e.g. 'n/a: only 3 test images are repeated (at least 20 needed)'."""
    count = repeated_images(image_id)
    if count >= MIN_REPEATED_IMAGES:
        return None
    return f"n/a: only {count} {tier} images are repeated (at least {MIN_REPEATED_IMAGES} needed)"


def average_over_repeats(values: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Mean over the repeats of each image: (trial, neuron) -> (image, neuron)."""
    values = np.asarray(values, dtype=np.float64)
    return np.stack([values[group].mean(axis=0) for group in repeat_groups(image_id)])


def correlation_to_average(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray
) -> np.ndarray:
    """r across images between repeat-averaged responses and predictions: -> (neuron,)."""

    def score(responses, predictions, image_id):
        return correlation(
            average_over_repeats(responses, image_id), average_over_repeats(predictions, image_id), axis=0
        )

    return per_finite(score, responses, np.asarray(predictions), np.asarray(image_id))


def repeated_groups(image_id: np.ndarray) -> list[np.ndarray]:
    """``repeat_groups`` of the images shown at least twice; ValueError when there are none."""
    groups = [g for g in repeat_groups(image_id) if len(g) > 1]
    if not groups:
        raise ValueError("no image is repeated; FEVE and oracle correlation need repeats")
    return groups


def explainable_variance(responses: np.ndarray, image_id: np.ndarray):
    """(total variance, noise variance), each (neuron,), over images shown at least twice
    (responses without NaN).

    Noise variance is the mean over images of the across-repeat variance (ddof=1); total variance
    is the variance over all those trials (ddof=1).
    """
    groups = repeated_groups(image_id)
    responses = np.asarray(responses, dtype=np.float64)
    noise = np.mean([responses[g].var(axis=0, ddof=1) for g in groups], axis=0)
    total = responses[np.concatenate(groups)].var(axis=0, ddof=1)
    return total, noise


def with_repeats(score):
    """``score(responses, ..., image_id)`` for one set of finite trials, NaN (neuron,) when none
    of their images repeats (neurons that missed the repeats)."""

    @functools.wraps(score)
    def scored(responses, *args):
        if repeated_images(args[-1]) == 0:
            return np.full(responses.shape[1], np.nan)
        return score(responses, *args)

    return scored


def fev(responses: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance (total - noise) / total: -> (neuron,)."""

    @with_repeats
    def score(responses, image_id):
        total, noise = explainable_variance(responses, image_id)
        return (total - noise) / total

    repeated_groups(image_id)
    return per_finite(score, responses, np.asarray(image_id))


def feve(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray, min_fev: float = 0.15
) -> np.ndarray:
    """Fraction of explainable variance explained, 1 - (MSE - noise) / (total - noise): (neuron,).

    Neurons whose FEV is below ``min_fev`` are NaN (their explainable variance is too small to
    score). Only trials of repeated images enter, as in Sensorium.
    """

    @with_repeats
    def score(responses, predictions, image_id):
        trials = np.concatenate(repeated_groups(image_id))
        total, noise = explainable_variance(responses, image_id)
        residual = np.asarray(responses, np.float64)[trials] - np.asarray(predictions, np.float64)[trials]
        mse = (residual**2).mean(axis=0)
        # Silent neurons (no variance) divide by zero; the FEV filter turns them into NaN.
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = 1 - (mse - noise) / (total - noise)
            return np.where((total - noise) / total >= min_fev, scores, np.nan)

    repeated_groups(image_id)
    return per_finite(score, responses, np.asarray(predictions), np.asarray(image_id))


def oracle_correlation(responses: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Jackknife oracle: r over trials between each response and the mean of its image's other
    repeats, (trial, neuron) -> (neuron,); images shown once are left out."""

    @with_repeats
    def score(responses, image_id):
        responses = np.asarray(responses, dtype=np.float64)
        groups = repeated_groups(image_id)
        held_out = np.concatenate([responses[g] for g in groups])
        others = np.concatenate([(responses[g].sum(axis=0) - responses[g]) / (len(g) - 1) for g in groups])
        return correlation(held_out, others, axis=0)

    repeated_groups(image_id)
    return per_finite(score, responses, np.asarray(image_id))


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
    """All per-neuron scores of one tier: single_trial_correlation and, when at least
    MIN_REPEATED_IMAGES images repeat (``repeats_note`` is None), correlation_to_average, feve
    and oracle_correlation; each (neuron,)."""
    scores = {"single_trial_correlation": single_trial_correlation(responses, predictions)}
    if repeats_note(image_id) is None:
        scores["correlation_to_average"] = correlation_to_average(responses, predictions, image_id)
        scores["feve"] = feve(responses, predictions, image_id, min_fev)
        scores["oracle_correlation"] = oracle_correlation(responses, image_id)
    return scores
