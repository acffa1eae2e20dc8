"""Motion of clips: the dominant direction of a clip from its space-time power spectrum, and the
drifting gratings that probe it. Pure numpy.

Direction convention (shared by the simulator, experiments and the engine's tests): degrees in
[0, 360), counter-clockwise as displayed; 0 = rightward (+x, increasing column), 90 = upward
(decreasing row), 180 = leftward, 270 = downward.
"""

from __future__ import annotations

import numpy as np


def motion_direction(clip: np.ndarray) -> float:
    """Dominant motion direction of ``clip (frame, y, x)`` or ``(frame, channel, y, x)`` in degrees
    (module convention).

    A pattern moving with velocity v has its energy on the plane omega = -k . v of its 3-D power
    spectrum (k the spatial frequency, omega the temporal one); v is the power-weighted least-squares
    fit of that plane, v = -(sum P k k^T)^-1 sum P omega k, with a small ridge so that a grating
    (one orientation: the aperture problem) gets the velocity along its k. The clip is
    Hann-windowed in time and space first, so that clips that do not wrap around leak little energy.
    The window spreads each component's power over neighbouring frequencies, more along the
    shorter side of a clip that is not square; that spread (``window_spread``) is taken off
    sum P k k^T, else a grating's direction would lean towards the longer side's axis (45 degrees
    read as 17 on 18x32 frames). NaN for a clip without motion (every frame alike).
    """
    clip = np.asarray(clip, np.float64)
    if clip.ndim == 4:
        clip = clip.mean(axis=1)
    if np.all(clip == clip[:1]):
        return float("nan")
    frames, height, width = clip.shape
    window = np.hanning(frames)[:, None, None] * np.hanning(height)[None, :, None] * np.hanning(width)[None, None, :]
    power = np.abs(np.fft.fftn((clip - clip.mean()) * window)) ** 2
    omega, ky, kx = np.meshgrid(
        np.fft.fftfreq(frames), np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"
    )
    k = np.stack([kx.ravel(), ky.ravel()])  # (2, frequencies): columns, rows (down)
    weight = power.ravel()
    moment = (k * weight) @ k.T - weight.sum() * np.diag([window_spread(width), window_spread(height)])
    moment += 1e-3 * np.trace(moment) * np.eye(2)
    vx, vy = -np.linalg.solve(moment, k @ (weight * omega.ravel()))
    return float(np.degrees(np.arctan2(-vy, vx)) % 360.0)


def window_spread(n: int) -> float:
    """Second moment (cycles per pixel, squared) of the power spectrum of a Hann window of ``n``
    pixels: how far windowing spreads a single frequency along that axis."""
    power = np.abs(np.fft.fft(np.hanning(n))) ** 2
    return float((power * np.fft.fftfreq(n) ** 2).sum() / power.sum())


def drifting_grating(
    frames: int, shape: tuple[int, int], direction: float, period: float = 8.0, speed: float = 1.0, phase: float = 0.0
) -> np.ndarray:
    """(frames, y, x) sinusoidal grating in [-1, 1] of spatial ``period`` pixels drifting at
    ``speed`` pixels per frame towards ``direction`` degrees (module convention)."""
    radians = np.radians(direction)
    rows, cols = np.indices(shape)
    # Position along the motion direction: +x is rightward, up is decreasing row.
    along = cols * np.cos(radians) - rows * np.sin(radians)
    t = np.arange(frames)[:, None, None]
    return np.cos(2 * np.pi * (along[None] - speed * t) / period + phase)
