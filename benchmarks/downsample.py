"""Block-averaged images for the benchmark fits (the peer and the ridge baselines), numpy only."""

from __future__ import annotations

import numpy as np


def block_average(images: np.ndarray, factor: int) -> np.ndarray:
    """(n, y, x, c) -> (n, y // factor, x // factor, c): mean of each factor x factor block (rows
    and columns beyond the last whole block are dropped)."""
    n, height, width, channels = images.shape
    h, w = height // factor, width // factor
    blocks = images[:, : h * factor, : w * factor].reshape(n, h, factor, w, factor, channels)
    return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def downsample_sessions(sessions, factor: int) -> None:
    """Block-average the normalized images of every SessionData in ``sessions`` in place, then
    standardize them again with the per-channel train mean/std of the block-averaged train
    images: the same as computing the store's statistics on block-averaged pixels."""
    for data in sessions:
        images = block_average(data.images, factor)
        train = images[data.tier == "train"]
        mean = train.mean(axis=(0, 1, 2), dtype=np.float64)
        std = train.std(axis=(0, 1, 2), dtype=np.float64)
        data.images = ((images - mean) / np.where(std > 0, std, 1)).astype(np.float32)
