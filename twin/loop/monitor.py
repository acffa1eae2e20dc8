"""The display model shared by export (model space -> PNG) and the simulated rig (PNG -> model space).

Luminance (cd/m²) of a screen pixel value q in 0..255 is ``a * (q / 255) ** gamma + c``, fit from a
calibration table. Model space (the session's pixel units, 0..255) is taken to be linear in
luminance between the monitor's black (q = 0) and white (q = 255), as for a gamma-corrected rig.

A monitor TOML file has a required ``[calibration]`` table and optional ``[screen]`` and
``[target]`` tables::

    [calibration]
    pixel = [0, 64, 128, 192, 255]           # screen values measured
    luminance = [0.5, 4.1, 17.0, 39.8, 72.3]  # cd/m² measured at each
    [screen]
    height = 144                             # PNG size; default 4 x the model's image size
    width = 256
    [target]
    mean_luminance = 20.0                    # cd/m²; default: the session's mean image value
    rms_contrast = 8.0                       # std of luminance over pixels, cd/m²;
                                             # default: the session's image std
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import minimize_scalar

from twin.config import read_toml
from twin.errors import ConfigError

# Screen size when the monitor file gives none: Sensorium images (36x64) are the rig's 144x256
# frames downscaled by 4.
UPSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Monitor:
    """luminance = a * (pixel / 255) ** gamma + c, in cd/m². The default is linear, 0 to 80 cd/m²."""

    a: float = 80.0
    gamma: float = 1.0
    c: float = 0.0
    screen: tuple[int, int] | None = None  # (height, width) of the PNGs
    mean_luminance: float | None = None  # target, cd/m²
    rms_contrast: float | None = None  # target std of luminance, cd/m²

    @property
    def black(self) -> float:
        return self.c

    @property
    def white(self) -> float:
        return self.a + self.c

    def luminance(self, screen_pixels: np.ndarray) -> np.ndarray:
        """Screen values 0..255 (any shape) -> cd/m²."""
        return self.a * (np.asarray(screen_pixels, np.float64) / 255.0) ** self.gamma + self.c

    def screen_pixels(self, luminance: np.ndarray) -> np.ndarray:
        """cd/m² -> screen values 0..255 (float; clipped to the displayable range)."""
        x = np.clip((np.asarray(luminance, np.float64) - self.c) / self.a, 0.0, 1.0)
        return 255.0 * x ** (1.0 / self.gamma)

    def model_to_luminance(self, model_pixels: np.ndarray) -> np.ndarray:
        """Model-space pixel values 0..255 -> cd/m² (linear between black and white)."""
        return self.black + np.asarray(model_pixels, np.float64) / 255.0 * (self.white - self.black)

    def luminance_to_model(self, luminance: np.ndarray) -> np.ndarray:
        """cd/m² -> model-space pixel values 0..255."""
        return (np.asarray(luminance, np.float64) - self.black) / (self.white - self.black) * 255.0

    def to_dict(self) -> dict:
        """JSON-ready fields (as stored in manifest.json)."""
        return dataclasses.asdict(self) | {"screen": list(self.screen) if self.screen else None}

    @classmethod
    def from_dict(cls, values: dict) -> Monitor:
        """The inverse of ``to_dict``."""
        screen = values.get("screen")
        return cls(**values | {"screen": tuple(screen) if screen else None})


def fit_gamma(pixel: np.ndarray, luminance: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (a, gamma, c) of luminance = a * (pixel / 255) ** gamma + c.

    For a fixed gamma the model is linear in (a, c), so only gamma is searched.
    """
    x = np.asarray(pixel, np.float64) / 255.0

    def linear_fit(gamma: float):
        design = np.stack([x**gamma, np.ones_like(x)], axis=1)
        coef, *_ = np.linalg.lstsq(design, luminance, rcond=None)
        return coef, float(np.sum((design @ coef - luminance) ** 2))

    best = minimize_scalar(lambda g: linear_fit(g)[1], bounds=(0.2, 5.0), method="bounded")
    (a, c), _ = linear_fit(best.x)
    return float(a), float(best.x), float(c)


def load_monitor(path: str | Path | None) -> Monitor:
    """Monitor from a calibration TOML file (see the module docstring); None: the linear default."""
    if path is None:
        return Monitor()
    path = Path(path)
    values = read_toml(path, "monitor")
    tables = {"calibration": ("pixel", "luminance"), "screen": ("height", "width"), "target": ("mean_luminance", "rms_contrast")}
    for name, value in values.items():
        if name not in tables or not isinstance(value, dict):
            raise ConfigError(f"{path}: unknown table [{name}]; a monitor file has [{'], ['.join(tables)}]")
        unknown = sorted(set(value) - set(tables[name]))
        if unknown:
            raise ConfigError(f"{path}: unknown key [{name}].{unknown[0]}; use {', '.join(tables[name])}")
    table = values.get("calibration")
    if not isinstance(table, dict) or "pixel" not in table or "luminance" not in table:
        raise ConfigError(
            f"{path}: missing [calibration] pixel = [...] and luminance = [...]; add the table"
        )
    try:
        pixel = np.asarray(table["pixel"], np.float64)
        luminance = np.asarray(table["luminance"], np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: [calibration] pixel and luminance must be lists of numbers") from None
    if pixel.ndim != 1 or pixel.shape != luminance.shape or len(pixel) < 3:
        raise ConfigError(
            f"{path}: [calibration] pixel and luminance need the same length, at least 3 values"
        )
    if pixel.min() < 0 or pixel.max() > 255 or np.any(np.diff(pixel) <= 0):
        raise ConfigError(f"{path}: [calibration].pixel must increase within 0..255")
    if np.any(np.diff(luminance) <= 0) or not np.all(np.isfinite(luminance)):
        raise ConfigError(f"{path}: [calibration].luminance must increase with pixel; remeasure")
    a, gamma, c = fit_gamma(pixel, luminance)
    screen = values.get("screen", {})
    target = values.get("target", {})
    size = None
    if screen:
        try:
            size = (int(screen["height"]), int(screen["width"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: [screen] needs integer height and width") from None
        if min(size) < 1:
            raise ConfigError(f"{path}: [screen] height and width must be positive")
    mean = target.get("mean_luminance")
    contrast = target.get("rms_contrast")
    for name, value in (("mean_luminance", mean), ("rms_contrast", contrast)):
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ConfigError(f"{path}: [target].{name} = {value!r} must be a positive number")
    if mean is not None and not a + c > mean > c:
        raise ConfigError(
            f"{path}: [target].mean_luminance = {mean} is outside the monitor's range"
            f" {c:.3g}..{a + c:.3g} cd/m²; lower it"
        )
    return Monitor(
        a=a,
        gamma=gamma,
        c=c,
        screen=size,
        mean_luminance=None if mean is None else float(mean),
        rms_contrast=None if contrast is None else float(contrast),
    )


def match_luminance(
    luminance: np.ndarray, mean: float, contrast: float, lo: float, hi: float, iterations: int = 50
) -> np.ndarray:
    """Rescale an image (y, x) in cd/m² to the target mean and RMS contrast (std) within [lo, hi].

    Clipping to the displayable range moves mean and std, so rescale and clip again until stable.
    """
    image = np.asarray(luminance, np.float64)
    for _ in range(iterations):
        std = image.std()
        scale = contrast / std if std > 0 else 0.0
        image = np.clip(mean + (image - image.mean()) * scale, lo, hi)
        if abs(image.mean() - mean) < 1e-6 * mean and abs(image.std() - contrast) < 1e-6 * contrast:
            break
    return image


def resize(image: np.ndarray, shape: tuple[int, int], resample) -> np.ndarray:
    """Float image (y, x) resized to shape (height, width) with a PIL filter."""
    resized = Image.fromarray(np.asarray(image, np.float32)).resize(
        (shape[1], shape[0]), resample
    )
    return np.asarray(resized, np.float64)


def upsample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Model-size image -> screen size. Nearest neighbour, so box-downsampling returns the image."""
    return resize(image, shape, Image.Resampling.NEAREST)


def downsample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Screen-size image -> model size by averaging the screen pixels each model pixel covers."""
    return resize(image, shape, Image.Resampling.BOX)


def png_to_model(path: str | Path, monitor: Monitor, shape: tuple[int, int]) -> np.ndarray:
    """Read an exported PNG and return what the eye sees in model space: (y, x) float64 0..255.

    Luminance is what the retina averages, so downsample after applying the monitor model.
    """
    screen = np.asarray(Image.open(path).convert("L"))
    return monitor.luminance_to_model(downsample(monitor.luminance(screen), shape))
