"""How far a synthesized stimulus strays from natural image statistics: its radial power spectrum
against the spectrum of the session's natural images.

Natural images have power falling as ~1 / f^2 with spatial frequency f (a log-log slope near -2);
MEIs are often smoother or richer in fine structure. Two numbers per stimulus:

- ``spectral_kl``: KL divergence (nats) of the stimulus's normalized radial spectrum from the
  natural images' mean normalized spectrum; 0 when the shapes agree, larger the further apart.
- ``spectral_slope``: the least-squares slope of log power against log frequency.

Spectra are those of each image minus its mean, under a Hann window (so the image's border does
not add a cross of spurious power), averaged over channels and over rings one frequency step
(1 / min(height, width) cycles per pixel) wide, from the lowest non-zero frequency to Nyquist.
"""

from __future__ import annotations

import numpy as np

MAX_REFERENCE_IMAGES = 1000  # natural images averaged into the reference spectrum
TINY = 1e-12  # relative to the strongest ring: keeps the logarithms of powerless rings finite


def radial_spectra(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Power per frequency ring of ``images (n, y, x)`` or ``(n, channel, y, x)``.

    Returns (power (n, rings), frequency (rings,) in cycles per pixel).
    """
    images = np.asarray(images, np.float64)
    if images.ndim == 3:
        images = images[:, None]
    height, width = images.shape[-2:]
    window = np.outer(np.hanning(height), np.hanning(width))
    centred = images - images.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(centred * window)) ** 2).mean(axis=1)  # (n, y, x)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    step = 1.0 / min(height, width)
    ring = np.rint(radius / step).astype(int).ravel()
    rings = min(height, width) // 2
    sums = np.stack([np.bincount(ring, weights=p.ravel(), minlength=rings + 1) for p in power])
    counts = np.bincount(ring, minlength=rings + 1)
    power = sums[:, 1 : rings + 1] / counts[1 : rings + 1]
    return power, np.arange(1, rings + 1) * step


def floored(power: np.ndarray) -> np.ndarray:
    """``power (n, rings)`` plus TINY times each spectrum's largest ring (scale-free)."""
    return power + TINY * power.max(axis=-1, keepdims=True) + np.finfo(np.float64).tiny


def normalized(power: np.ndarray) -> np.ndarray:
    """Spectra ``(n, rings)`` scaled to sum to 1 (contrast-free shape)."""
    power = floored(power)
    return power / power.sum(axis=-1, keepdims=True)


def spectral_slope(power: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """Slope of log power against log frequency per spectrum: ``(n,)``."""
    x = np.log(frequency)
    y = np.log(floored(power))
    x = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ x / (x @ x)


def reference_images(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """At most MAX_REFERENCE_IMAGES of ``images``, a seeded sample when there are more."""
    if len(images) <= MAX_REFERENCE_IMAGES:
        return np.asarray(images)
    pick = np.random.default_rng(seed).choice(len(images), MAX_REFERENCE_IMAGES, replace=False)
    return np.asarray(images[np.sort(pick)])


def naturalness(stimuli: np.ndarray, natural: np.ndarray) -> dict:
    """Spectral distance of ``stimuli (n, [channel,] y, x)`` from ``natural (m, [channel,] y, x)``
    (same layout and size; both in the same units, pixel or normalized, or any affine rescale).

    Returns {"spectral_kl": (n,), "spectral_slope": (n,), "natural_spectral_slope": float}.
    """
    stimulus_power, frequency = radial_spectra(stimuli)
    natural_power, _ = radial_spectra(reference_images(natural))
    reference = normalized(natural_power).mean(axis=0)
    shape = normalized(stimulus_power)
    return {
        "spectral_kl": (shape * np.log(shape / reference)).sum(axis=-1),
        "spectral_slope": spectral_slope(stimulus_power, frequency),
        "natural_spectral_slope": float(spectral_slope(reference[None], frequency)[0]),
    }
