"""Scores of a twin's predictions, Sensorium 2022 definitions, in plain numpy (no JAX).

Every function takes trial-major arrays: ``responses`` and ``predictions`` are (trial, neuron),
``image_id`` is (trial,) and marks repeats of the same image. Per-neuron results are (neuron,).
Responses may hold NaN where a neuron was not recorded on a trial (a dropped frame): each
neuron is then scored on its finite trials only, computed for all neurons at once with masked
sums (``masked_correlation``, ``image_sums``); predictions are finite. Without NaN the plain
computations run unchanged.
"""

from __future__ import annotations

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
# Video trials are scored per frame after dropping this many first frames of each trial, while the
# responses still depend on what came before the trial (Sensorium 2023).
BURN_IN_FRAMES = 50


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
    finite = np.isfinite(responses)
    if finite.all():
        return correlation(responses, predictions, axis=0)
    return masked_correlation(responses, predictions, finite)


def masked_correlation(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``correlation`` along axis 0 over the entries where ``mask`` is True, per column: (k, n)
    x3 -> (n,); NaN for a column without entries. Values outside the mask are ignored."""
    count = mask.sum(axis=0)
    x, y = (np.where(mask, np.asarray(v, np.float64), 0.0) for v in (x, y))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(mask, x - x.sum(axis=0) / count, 0.0)
        y = np.where(mask, y - y.sum(axis=0) / count, 0.0)
        constant = (np.abs(x).max(axis=0, initial=0) == 0) | (np.abs(y).max(axis=0, initial=0) == 0)
        x = x / (np.sqrt((x**2).sum(axis=0) / count) + EPS)
        y = y / (np.sqrt((y**2).sum(axis=0) / count) + EPS)
        r = np.where(constant, 0.0, (x * y).sum(axis=0) / count)
    return np.where(count > 0, r, np.nan)


def image_sums(values: np.ndarray, mask: np.ndarray, image_id: np.ndarray):
    """Per image (in order of image id) and neuron, over the finite repeats (``mask``) of
    ``values`` (trial, neuron): (count, mean), each (image, neuron), and row (trial,): each
    trial's row in them."""
    image_id = np.asarray(image_id)
    order = np.argsort(image_id, kind="stable")
    _, starts, image = np.unique(image_id[order], return_index=True, return_inverse=True)
    row = np.empty(len(image_id), np.int64)
    row[order] = image.reshape(-1)
    values = np.where(mask, np.asarray(values, np.float64), 0.0)
    count = np.add.reduceat(mask[order].astype(np.float64), starts, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.add.reduceat(values[order], starts, axis=0) / count
    return count, mean, row


def masked_repeats(responses: np.ndarray, image_id: np.ndarray):
    """(responses with NaN set to 0, used, count, mean, row): ``used`` (trial, neuron) marks each
    neuron's finite trials of images it has at least two finite repeats of; count, mean and row
    as ``image_sums``."""
    finite = np.isfinite(responses)
    count, mean, row = image_sums(responses, finite, image_id)
    used = finite & (count[row] > 1)
    return np.where(finite, responses, 0.0), used, count, mean, row


def masked_variances(responses: np.ndarray, image_id: np.ndarray):
    """``explainable_variance`` per neuron over its finite repeats: (total, noise, used); NaN
    for neurons without an image repeated on their finite trials."""
    responses, used, count, mean, row = masked_repeats(np.asarray(responses, np.float64), image_id)
    repeated = count > 1
    deviation = np.where(used, responses - mean[row], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_image = np.zeros(count.shape)
        np.add.at(per_image, row, deviation**2)
        per_image = np.where(repeated, per_image / (count - 1), 0.0)
        noise = per_image.sum(axis=0) / repeated.sum(axis=0)
        n = used.sum(axis=0)
        centred = np.where(used, responses - np.where(used, responses, 0.0).sum(axis=0) / n, 0.0)
        total = (centred**2).sum(axis=0) / (n - 1)
    return np.where(n > 1, total, np.nan), noise, used


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


def repeats_note(image_id: np.ndarray, tier: str = "test", unit: str = "images") -> str | None:
    """None when enough images of ``image_id`` (trial,) repeat for the repeat metrics, else why
    they are not scored, e.g. 'n/a: only 3 test images are repeated (at least 20 needed)'; ``unit``
    names what the ids count ("frames" for the scored frames of videos)."""
    count = repeated_images(image_id)
    if count >= MIN_REPEATED_IMAGES:
        return None
    return f"n/a: only {count} {tier} {unit} are repeated (at least {MIN_REPEATED_IMAGES} needed)"


def average_over_repeats(values: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Mean over the repeats of each image: (trial, neuron) -> (image, neuron)."""
    values = np.asarray(values, dtype=np.float64)
    return np.stack([values[group].mean(axis=0) for group in repeat_groups(image_id)])


def correlation_to_average(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray
) -> np.ndarray:
    """r across images between repeat-averaged responses and predictions: -> (neuron,)."""
    finite = np.isfinite(responses)
    if finite.all():
        return correlation(
            average_over_repeats(responses, image_id), average_over_repeats(predictions, image_id), axis=0
        )
    count, response_mean, _ = image_sums(responses, finite, image_id)
    _, prediction_mean, _ = image_sums(predictions, finite, image_id)
    return masked_correlation(response_mean, prediction_mean, count > 0)


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


def fev(responses: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance (total - noise) / total: -> (neuron,)."""
    if np.isfinite(responses).all():
        total, noise = explainable_variance(responses, image_id)
    else:
        repeated_groups(image_id)
        total, noise, _ = masked_variances(responses, image_id)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (total - noise) / total


def feve(
    responses: np.ndarray, predictions: np.ndarray, image_id: np.ndarray, min_fev: float = 0.15
) -> np.ndarray:
    """Fraction of explainable variance explained, 1 - (MSE - noise) / (total - noise): (neuron,).

    Neurons whose FEV is below ``min_fev`` are NaN (their explainable variance is too small to
    score). Only trials of repeated images enter, as in Sensorium.
    """

    trials = np.concatenate(repeated_groups(image_id))
    predictions = np.asarray(predictions, np.float64)
    if np.isfinite(responses).all():
        total, noise = explainable_variance(responses, image_id)
        residual = np.asarray(responses, np.float64)[trials] - predictions[trials]
        mse = (residual**2).mean(axis=0)
    else:
        total, noise, used = masked_variances(responses, image_id)
        residual = np.where(used, np.asarray(responses, np.float64) - predictions, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mse = (residual**2).sum(axis=0) / used.sum(axis=0)
    # Silent neurons (no variance) divide by zero; the FEV filter turns them into NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = 1 - (mse - noise) / (total - noise)
        return np.where((total - noise) / total >= min_fev, scores, np.nan)


def oracle_correlation(responses: np.ndarray, image_id: np.ndarray) -> np.ndarray:
    """Jackknife oracle: r over trials between each response and the mean of its image's other
    repeats, (trial, neuron) -> (neuron,); images shown once are left out."""
    responses = np.asarray(responses, dtype=np.float64)
    groups = repeated_groups(image_id)
    if np.isfinite(responses).all():
        held_out = np.concatenate([responses[g] for g in groups])
        others = np.concatenate([(responses[g].sum(axis=0) - responses[g]) / (len(g) - 1) for g in groups])
        return correlation(held_out, others, axis=0)
    responses, used, count, mean, row = masked_repeats(responses, image_id)
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (mean[row] * count[row] - responses) / (count[row] - 1)
    return masked_correlation(responses, others, used)


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


def adjusted_rand_index(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings (n,) of the same items: 1 for
    the same partition, about 0 for independent ones (any label values, any numbers of groups)."""
    a = np.unique(np.asarray(labels_a), return_inverse=True)[1].reshape(-1)
    b = np.unique(np.asarray(labels_b), return_inverse=True)[1].reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"labelings of {len(a)} and {len(b)} items")
    table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(counts):
        return (counts * (counts - 1) // 2).sum()

    index = pairs(table)
    rows, cols, total = pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / total if total else 0.0
    largest = (rows + cols) / 2
    if largest == expected:  # both labelings put everything together or everything apart
        return 1.0
    return float((index - expected) / (largest - expected))


def scored_frames(frame_count: np.ndarray, image_id: np.ndarray, n_frames: int, burn_in: int = BURN_IN_FRAMES):
    """The frames of video trials that are scored (Sensorium 2023): each trial's recorded frames
    (``frame_count`` (trial,)) from ``burn_in`` on, of trials padded to ``n_frames``. Returns
    (trial, frame, frame_id), each (k,): ``values[trial, frame]`` turns (trial, frame, neuron)
    into rows (k, neuron) for ``score``, and frame_id is the same for the same frame of the same
    video (``image_id`` (trial,)), so repeat metrics average over repeats frame by frame."""
    frame_count = np.asarray(frame_count)
    trial, frame = np.nonzero((np.arange(n_frames) >= burn_in) & (np.arange(n_frames) < frame_count[:, None]))
    return trial, frame, np.asarray(image_id, np.int64)[trial] * n_frames + frame
