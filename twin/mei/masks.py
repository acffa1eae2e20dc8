"""Masks from an MEI (Walker et al. 2019): where the MEI differs from gray.

- ``walker_mask``: |MEI - mean| > threshold (pixel levels 0..255), blobs smaller than ``min_blob`` pixels
  dropped, convex hull, dilated, blurred; values in [0, 1].
- ``gaussian_mask``: a Gaussian envelope fitted to the MEI's contrast energy.
- ``tight_mask``: the Walker mask eroded step by step until the model's activation falls to
  ``fraction`` (90%) of the full-mask value; the last mask above it (``tight_masks``: many at
  once; ``solid``: masks that are 1 on the whole eroded region, for a centre kept exactly).

A mask m shows an image as mean + m * (image - mean); in normalized units (mean 0), m * image.
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as Polygon
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from twin.mei.optimize import Objective, evaluate_pairs

THRESHOLD = 16.0  # pixel levels 0..255 (twin.data.loader maps any store range onto them)
MIN_BLOB = 50  # pixels
DILATE = 2  # pixels
BLUR = 1.5  # pixels
MASKED_VALUES = 1 << 26  # float32 values of masked candidates held at once in tight_masks (256 MiB)


def convex_hull(region: np.ndarray) -> np.ndarray:
    """Filled convex hull (y, x) bool of a boolean region (the region itself when degenerate)."""
    points = np.argwhere(region)
    if len(points) < 3:
        return region
    try:
        hull = ConvexHull(points)
    except QhullError:  # collinear points
        return region
    polygon = Polygon(points[hull.vertices])
    grid = np.argwhere(np.ones_like(region, bool))
    inside = polygon.contains_points(grid, radius=0.5) | polygon.contains_points(grid, radius=-0.5)
    return inside.reshape(region.shape) | region


def hull_region(
    mei: np.ndarray, mean: float, threshold: float = THRESHOLD, min_blob: int = MIN_BLOB,
    dilate: int = DILATE,
) -> np.ndarray:
    """(y, x) bool: thresholded |mei - mean| (pixel levels), small blobs dropped, convex hull,
    dilated. Without a blob of ``min_blob`` pixels the largest blob is kept. A colour MEI
    (channel, y, x) with mean a number or (channel, 1, 1) passes where any channel passes; a clip
    (frame, [channel,] y, x) where any frame passes."""
    above = np.abs(np.asarray(mei, np.float64) - mean) > threshold
    above = above.reshape(-1, *above.shape[-2:]).any(axis=0)
    labels, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = ndimage.sum(above, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= min_blob) + 1
    if len(keep) == 0:
        keep = [int(np.argmax(sizes)) + 1]
    region = convex_hull(np.isin(labels, keep))
    return ndimage.binary_dilation(region, iterations=dilate) if dilate else region


def walker_mask(
    mei: np.ndarray, mean: float, threshold: float = THRESHOLD, min_blob: int = MIN_BLOB,
    dilate: int = DILATE, blur: float = BLUR,
) -> np.ndarray:
    """Walker 2019 mask (y, x) in [0, 1] of ``mei (y, x)`` or ``(channel, y, x)`` in pixel levels
    around gray ``mean`` (a number or (channel, 1, 1)); all zeros when no pixel passes the
    threshold."""
    region = hull_region(mei, mean, threshold, min_blob, dilate).astype(np.float64)
    return np.clip(ndimage.gaussian_filter(region, blur, mode="constant"), 0, 1) if blur else region


def gaussian_mask(mei: np.ndarray, mean: float, width: float = 2.0) -> np.ndarray:
    """(y, x) Gaussian envelope, peak 1, fitted to the contrast energy (mei - mean)^2: its centre
    and covariance, widened ``width`` times in standard deviations."""
    energy = (np.asarray(mei, np.float64) - mean) ** 2
    total = energy.sum()
    if total == 0:
        return np.zeros_like(energy)
    yy, xx = np.mgrid[: energy.shape[0], : energy.shape[1]]
    coords = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    weights = energy.ravel() / total
    centre = weights @ coords
    offset = coords - centre
    covariance = (offset * weights[:, None]).T @ offset + 1e-3 * np.eye(2)
    distance = np.einsum("pi,ij,pj->p", offset, np.linalg.inv(covariance), offset)
    return np.exp(-0.5 * distance / width**2).reshape(energy.shape)


def solid_edge(region: np.ndarray, blur: float = BLUR) -> np.ndarray:
    """(y, x) mask that is 1 on the whole boolean ``region`` and fades outward as its Gaussian
    blur: max(region, blurred region), so pixels of the region are kept exactly."""
    region = region.astype(np.float64)
    return np.maximum(region, ndimage.gaussian_filter(region, blur, mode="constant"))


def candidate_masks(mei: np.ndarray, image_std, blur: float = BLUR, solid: bool = False) -> np.ndarray:
    """(k, y, x) float32: the Walker mask of ``mei ([frame,] [channel,] y, x)`` (normalized units)
    eroded step by step down to nothing, before the blur (``solid_edge`` masks when ``solid``)."""
    regions = [hull_region(mei * image_std, 0.0)]
    while regions[-1].any():
        regions.append(ndimage.binary_erosion(regions[-1]))
    if solid:
        masks = [solid_edge(r, blur) for r in regions]
    else:
        masks = [ndimage.gaussian_filter(r.astype(np.float64), blur, mode="constant") for r in regions]
    return np.stack(masks).astype(np.float32)


def tight_masks(
    model,
    objective: Objective,
    meis: np.ndarray,
    neurons,
    image_std,
    fraction: float = 0.9,
    blur: float = BLUR,
    solid: bool = False,
) -> np.ndarray:
    """(n, y, x) Walker masks of ``meis (n, [frame,] [channel,] y, x)`` (normalized units, mean 0;
    ``image_std`` converts the pixel threshold; one mask for all frames of a clip, scored by a
    clip ``objective``) of ``neurons (n,)``, each eroded until the activation falls below
    ``fraction`` of its full-mask one; the candidates of many neurons are scored together, up to
    MASKED_VALUES values at a time. solid: candidates are ``solid_edge`` masks (1 on the whole
    eroded region) instead of the blurred region."""
    neurons = np.asarray(neurons, np.int64).reshape(-1)
    candidates = [candidate_masks(mei, image_std, blur, solid) for mei in meis]
    chosen = []
    for group in value_groups([len(masks) * mei.size for masks, mei in zip(candidates, meis)], MASKED_VALUES):
        # (k, y, x) masks shared by the frames and channels of a ([frame,] [channel,] y, x) MEI
        images = np.concatenate([
            candidates[i].reshape(len(candidates[i]), *[1] * (meis[i].ndim - 2), *meis[i].shape[-2:]) * meis[i][None]
            for i in group
        ])
        owner = np.repeat(neurons[group], [len(candidates[i]) for i in group]).astype(np.int32)
        values = evaluate_pairs(model, objective, images, {"neuron": owner})
        first = 0
        for i in group:
            scores = values[first : first + len(candidates[i])]
            first += len(candidates[i])
            below = np.flatnonzero(scores < fraction * scores[0])
            chosen.append(candidates[i][below[0] - 1] if len(below) else candidates[i][-1])
    return np.stack(chosen)


def value_groups(sizes: list[int], budget: int) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped so that each group's sizes add up to at most
    ``budget`` (a larger size alone in its group)."""
    groups, total = [[]], 0
    for i, size in enumerate(sizes):
        if groups[-1] and total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += size
    return groups if groups[0] else []


def tight_mask(
    model,
    objective: Objective,
    mei: np.ndarray,
    neuron: int,
    image_std: float,
    fraction: float = 0.9,
    blur: float = BLUR,
) -> np.ndarray:
    """(y, x) Walker mask of ``mei (y, x)`` (normalized units, mean 0; ``image_std`` converts the
    pixel threshold) eroded until the activation falls below ``fraction`` of the full-mask one."""
    return tight_masks(model, objective, mei[None], [neuron], image_std, fraction, blur)[0]
