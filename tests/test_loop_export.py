"""Rig export pieces: the monitor model, luminance/contrast matching, PNG round trip."""

import numpy as np
import pytest
from PIL import Image

from twin.errors import ConfigError
from twin.loop.export import render
from twin.loop.monitor import Monitor, fit_gamma, load_monitor, match_luminance, png_to_model, upsample

GAMMA_MONITOR = Monitor(a=70.0, gamma=2.2, c=0.5)


def smooth_image(seed, shape=(18, 32), contrast=40.0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    spectrum = np.fft.fft2(noise) / (1 + np.hypot(*np.meshgrid(np.fft.fftfreq(shape[1]), np.fft.fftfreq(shape[0]))) * 20)
    image = np.real(np.fft.ifft2(spectrum))
    return np.clip(128 + contrast * image / image.std(), 0, 255)


def test_fit_gamma_recovers_parameters():
    pixel = np.linspace(0, 255, 9)
    luminance = 60.0 * (pixel / 255) ** 2.3 + 0.8
    a, gamma, c = fit_gamma(pixel, luminance)
    assert a == pytest.approx(60.0, rel=1e-3)
    assert gamma == pytest.approx(2.3, rel=1e-3)
    assert c == pytest.approx(0.8, abs=1e-2)


def test_load_monitor_from_toml(tmp_path):
    pixel = [0, 32, 64, 128, 192, 255]
    luminance = [float(50 * (p / 255) ** 1.8 + 1) for p in pixel]
    path = tmp_path / "monitor.toml"
    path.write_text(
        f"[calibration]\npixel = {pixel}\nluminance = {luminance}\n"
        "[screen]\nheight = 72\nwidth = 128\n[target]\nmean_luminance = 12.0\nrms_contrast = 3\n"
    )
    monitor = load_monitor(path)
    assert monitor.gamma == pytest.approx(1.8, rel=1e-3)
    assert monitor.screen == (72, 128)
    assert (monitor.mean_luminance, monitor.rms_contrast) == (12.0, 3.0)
    assert load_monitor(None) == Monitor()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[screen]\nheight = 1\n", "missing \\[calibration\\]"),
        ("[calibration]\npixel = [0, 255]\nluminance = [1, 2]\n", "at least 3"),
        ("[calibration]\npixel = [0, 100, 255]\nluminance = [5, 2, 9]\n", "luminance must increase"),
        ("[calibration]\npixel = [0, 100, 300]\nluminance = [1, 2, 9]\n", "pixel must increase within"),
        (
            "[calibration]\npixel = [0, 100, 255]\nluminance = [1, 2, 9]\n[target]\nmean_luminance = 50\n",
            "outside the monitor's range",
        ),
        ("[calibration\n", "not valid TOML"),
        ("[calibraton]\npixel = [0, 100, 255]\n", "unknown table \\[calibraton\\]"),
        ("[calibration]\npixel = [0, 100, 255]\nluminance = [1, 2, 9]\ngama = 2.2\n", "unknown key \\[calibration\\].gama"),
    ],
)
def test_bad_monitor_files(tmp_path, text, message):
    path = tmp_path / "monitor.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_monitor(path)


def test_match_luminance_hits_targets_despite_clipping():
    image = GAMMA_MONITOR.model_to_luminance(smooth_image(0, contrast=70.0))
    matched = match_luminance(image, 30.0, 15.0, GAMMA_MONITOR.black, GAMMA_MONITOR.white)
    assert matched.min() >= GAMMA_MONITOR.black and matched.max() <= GAMMA_MONITOR.white
    # one rescale would clip and miss; the iteration lands on both targets
    assert matched.mean() == pytest.approx(30.0, rel=1e-4)
    assert matched.std() == pytest.approx(15.0, rel=1e-4)


@pytest.mark.parametrize("monitor", [Monitor(), GAMMA_MONITOR])
def test_render_on_target_and_png_round_trip(tmp_path, monitor):
    pixels = smooth_image(1)
    mean, contrast = monitor.model_to_luminance(120.0), 25.0 / 255 * (monitor.white - monitor.black)
    shown = render(pixels, monitor, mean, contrast)
    assert shown["mean_luminance"] == pytest.approx(mean, rel=0.01)
    assert shown["rms_contrast"] == pytest.approx(contrast, rel=0.01)

    path = tmp_path / "stimulus.png"
    Image.fromarray(upsample(shown["screen"], (72, 128)).astype(np.uint8)).save(path)
    recovered = png_to_model(path, monitor, pixels.shape)
    np.testing.assert_allclose(recovered, shown["model"], atol=1e-3)
    # the quantized image differs from the matched one by at most half a screen step
    q = shown["screen"].astype(float)
    step = monitor.luminance_to_model(monitor.luminance(np.minimum(q + 0.5, 255))) - monitor.luminance_to_model(
        monitor.luminance(np.maximum(q - 0.5, 0))
    )
    assert np.all(np.abs(recovered - shown["matched"]) <= step / 2 + 1e-6)
