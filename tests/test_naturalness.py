"""The naturalness score: radial power spectra against a natural reference."""

import numpy as np
import pytest

from twin.naturalness import naturalness, radial_spectra


def power_law_images(count: int, height: int, width: int, exponent: float, seed: int) -> np.ndarray:
    """Random-phase images whose power falls as 1 / f ** exponent."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    frequency = np.hypot(fy, fx)
    frequency[0, 0] = 1.0
    spectrum = rng.standard_normal((count, height, width)) + 1j * rng.standard_normal((count, height, width))
    return np.fft.ifft2(spectrum / frequency ** (exponent / 2)).real


def test_ring_power_of_a_grating_sits_at_its_frequency():
    x = np.arange(64)
    grating = np.tile(np.cos(2 * np.pi * 8 * x / 64), (64, 1))[None]
    power, frequency = radial_spectra(grating)
    assert power.shape == (1, 32) and frequency[0] == pytest.approx(1 / 64)
    assert frequency[power[0].argmax()] == pytest.approx(8 / 64)


def test_slopes_and_distances_of_known_spectra():
    natural = power_law_images(300, 36, 64, 2.0, seed=0)
    pink = power_law_images(50, 36, 64, 2.0, seed=1)
    white = np.random.default_rng(2).standard_normal((50, 36, 64))
    y, x = np.mgrid[:36, :64]
    gabor = np.exp(-((x - 32) ** 2 + (y - 18) ** 2) / 32.0) * np.cos(2 * np.pi * x / 8)
    scores = naturalness(np.concatenate([pink, white, gabor[None]]), natural)
    assert scores["natural_spectral_slope"] == pytest.approx(-2.0, abs=0.3)
    assert np.median(scores["spectral_slope"][:50]) == pytest.approx(-2.0, abs=0.6)
    assert np.median(scores["spectral_slope"][50:100]) == pytest.approx(0.0, abs=0.2)
    kl = scores["spectral_kl"]
    assert np.all(kl >= 0)
    assert np.median(kl[:50]) < 0.5 < np.median(kl[50:100]) and kl[100] > np.median(kl[:50])


def test_contrast_offset_and_channels_do_not_change_the_score():
    natural = power_law_images(40, 20, 20, 2.0, seed=3)
    stimuli = power_law_images(3, 20, 20, 1.0, seed=4)
    base = naturalness(stimuli, natural)
    scaled = naturalness(5 * stimuli + 100, 0.1 * natural - 3)
    np.testing.assert_allclose(scaled["spectral_kl"], base["spectral_kl"], rtol=1e-6)
    np.testing.assert_allclose(scaled["spectral_slope"], base["spectral_slope"], rtol=1e-6)
    grey_rgb = naturalness(np.repeat(stimuli[:, None], 3, 1), np.repeat(natural[:, None], 3, 1))
    np.testing.assert_allclose(grey_rgb["spectral_kl"], base["spectral_kl"], rtol=1e-6)
