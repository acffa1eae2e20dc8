"""The display model shared by export (model space -> PNG) and the simulated rig (PNG -> model space).

Luminance (cd/m²) of a screen pixel value q in 0..255 is ``a * (q / 255) ** gamma + c``, fit from a
calibration table. Model space (the session's pixel units, 0..255) is taken to be linear in
luminance between the monitor's black (q = 0) and white (q = 255), as for a gamma-corrected rig.

A colour monitor has that model once per primary (red, green, blue): image channel k drives
primary k, and model space is linear in each primary's luminance. Every field then holds a value
per primary; one value applies to every primary, so a gray monitor's calibration also describes
a colour monitor whose primaries are alike. Images are (y, x) on one primary and
(primary, y, x) on several.

A monitor TOML file has a ``[calibration]`` table (required unless ``twin export --gamma /
--max-luminance`` give it) and optional ``[screen]`` and ``[target]`` tables::

    [calibration]
    pixel = [0, 64, 128, 192, 255]           # screen values measured
    luminance = [0.5, 4.1, 17.0, 39.8, 72.3]  # cd/m² measured at each; a colour monitor's:
                                             # one list per primary, [[red], [green], [blue]]
    # or, instead of pixel and luminance, the model itself (a number or [red, green, blue]):
    # gamma = [2.2, 2.1, 2.3]
    # max_luminance = [18.0, 60.0, 7.0]      # cd/m² at pixel 255
    # black = 0.0                            # cd/m² at pixel 0 (default 0)
    [screen]
    height = 144                             # PNG size; default: the size the session was shown at
                                             # (attrs shown_size), else 4 x the model image
    width = 256
    [target]
    mean_luminance = 20.0                    # cd/m²; default: the session's mean image value
    rms_contrast = 8.0                       # std of luminance over pixels, cd/m²;
                                             # default: the session's image std
    # colour stimuli matched per primary (twin export --matching channel) may give
    # [red, green, blue] for either; matched on luminance, the numbers are of the summed luminance
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
PRIMARIES = ("red", "green", "blue")
# A monitor value: one number, or one per primary.
Value = float | tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Monitor:
    """luminance = a * (pixel / 255) ** gamma + c, in cd/m², per primary (see the module doc).
    The default is linear, 0 to 80 cd/m² (on each primary)."""

    a: Value = 80.0
    gamma: Value = 1.0
    c: Value = 0.0
    screen: tuple[int, int] | None = None  # (height, width) of the PNGs
    mean_luminance: Value | None = None  # target, cd/m²
    rms_contrast: Value | None = None  # target std of luminance, cd/m²

    @property
    def primaries(self) -> int:
        """1 for a gray monitor (every value one number), else the values given per primary."""
        return max((len(v) for v in (self.a, self.gamma, self.c) if isinstance(v, tuple)), default=1)

    def per_primary(self, value: Value):
        """A value as a number (one primary) or a (primary, 1, 1) array, which broadcasts over
        images (..., primary, y, x)."""
        if self.primaries == 1:
            return value[0] if isinstance(value, tuple) else value
        return np.broadcast_to(np.asarray(value, np.float64), (self.primaries,))[:, None, None]

    def for_channels(self, channels: int, source) -> Monitor:
        """This monitor for images of ``channels`` (1 gray, 3 RGB): one value per field is
        repeated for every primary. ``source`` names the monitor in the error."""
        if self.primaries not in (1, channels):
            raise ConfigError(
                f"{source}: the monitor has {self.primaries} primaries but the images"
                f" {channels} channel{'s' * (channels > 1)}; give one value per channel"
            )
        if channels == 1:
            return self

        def spread(value):
            return value if isinstance(value, tuple) else (float(value),) * channels

        return dataclasses.replace(self, a=spread(self.a), gamma=spread(self.gamma), c=spread(self.c))

    @property
    def black(self):
        return self.per_primary(self.c)

    @property
    def white(self):
        return self.per_primary(self.a) + self.per_primary(self.c)

    def luminance(self, screen_pixels: np.ndarray) -> np.ndarray:
        """Screen values 0..255 (..., [primary,] y, x) -> cd/m²."""
        a, gamma, c = (self.per_primary(v) for v in (self.a, self.gamma, self.c))
        return a * (np.asarray(screen_pixels, np.float64) / 255.0) ** gamma + c

    def screen_pixels(self, luminance: np.ndarray) -> np.ndarray:
        """cd/m² -> screen values 0..255 (float; clipped to the displayable range)."""
        a, gamma, c = (self.per_primary(v) for v in (self.a, self.gamma, self.c))
        x = np.clip((np.asarray(luminance, np.float64) - c) / a, 0.0, 1.0)
        return 255.0 * x ** (1.0 / gamma)

    def model_to_luminance(self, model_pixels: np.ndarray) -> np.ndarray:
        """Model-space pixel values 0..255 -> cd/m² (linear between black and white)."""
        return self.black + np.asarray(model_pixels, np.float64) / 255.0 * (self.white - self.black)

    def luminance_to_model(self, luminance: np.ndarray) -> np.ndarray:
        """cd/m² -> model-space pixel values 0..255."""
        return (np.asarray(luminance, np.float64) - self.black) / (self.white - self.black) * 255.0

    def to_dict(self) -> dict:
        """JSON-ready fields (as stored in manifest.json): numbers, or lists per primary."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_dict(cls, values: dict) -> Monitor:
        """The inverse of ``to_dict``."""
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})


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


def per_primary_value(value, where: str, zero: bool = False) -> Value:
    """A number > 0 (>= 0 with ``zero``) or a list of one per primary (red, green, blue) ->
    float or tuple; anything else is a ConfigError naming ``where``."""
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, len(PRIMARIES)) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and (v > 0 or zero and v == 0)
        for v in values
    ):
        raise ConfigError(
            f"{where} = {value!r}: give a number {'>=' if zero else '>'} 0 or one per primary,"
            " [red, green, blue]"
        )
    return float(values[0]) if not isinstance(value, list) else tuple(float(v) for v in values)


def measured_calibration(path: Path, table: dict) -> tuple[Value, Value, Value]:
    """(a, gamma, c) fit to a [calibration] pixel / luminance table, per primary when the
    luminance holds one list per primary."""
    try:
        pixel = np.asarray(table["pixel"], np.float64)
        luminance = np.asarray(table["luminance"], np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{path}: [calibration] pixel and luminance must be lists of numbers (luminance: one"
            " list per primary for a colour monitor)"
        ) from None
    rows = luminance[None] if luminance.ndim == 1 else luminance
    if pixel.ndim != 1 or rows.ndim != 2 or rows.shape[1:] != pixel.shape or len(pixel) < 3:
        raise ConfigError(
            f"{path}: [calibration] pixel and luminance need the same length, at least 3 values"
        )
    if len(rows) not in (1, len(PRIMARIES)):
        raise ConfigError(f"{path}: [calibration].luminance has {len(rows)} lists; give one or 3 (red, green, blue)")
    if pixel.min() < 0 or pixel.max() > 255 or np.any(np.diff(pixel) <= 0):
        raise ConfigError(f"{path}: [calibration].pixel must increase within 0..255")
    if np.any(np.diff(rows, axis=1) <= 0) or not np.all(np.isfinite(rows)):
        raise ConfigError(f"{path}: [calibration].luminance must increase with pixel; remeasure")
    fits = [fit_gamma(pixel, row) for row in rows]
    if luminance.ndim == 1:
        return fits[0]
    a, gamma, c = zip(*fits)
    return tuple(a), tuple(gamma), tuple(c)


def model_calibration(names: tuple[str, str, str], gamma, max_luminance, black) -> tuple[Value, Value, Value]:
    """(a, gamma, c) from gamma, max_luminance (cd/m² at 255) and black (cd/m² at 0): numbers
    or one per primary; ``names`` name the three in errors."""
    gamma = per_primary_value(gamma, names[0])
    white = per_primary_value(max_luminance, names[1])
    black = per_primary_value(black, names[2], zero=True)
    if np.any(np.asarray(white) <= np.asarray(black)):
        raise ConfigError(f"{names[1]} = {max_luminance!r} must lie above black ({black} cd/m²) on every primary")
    n = max((len(v) for v in (gamma, white, black) if isinstance(v, tuple)), default=1)
    if n == 1:
        return white - black, gamma, black
    gamma, white, black = (np.broadcast_to(np.asarray(v), (n,)).tolist() for v in (gamma, white, black))
    return tuple(w - b for w, b in zip(white, black)), tuple(gamma), tuple(black)


CALIBRATION_KEYS = ("pixel", "luminance", "gamma", "max_luminance", "black")
TABLES = {
    "calibration": CALIBRATION_KEYS,
    "screen": ("height", "width"),
    "target": ("mean_luminance", "rms_contrast"),
}


def load_monitor(path: str | Path | None, gamma=None, max_luminance=None) -> Monitor:
    """Monitor from a calibration TOML file (see the module docstring) and/or the model's
    ``gamma`` and ``max_luminance`` (numbers or one per primary, e.g. from --gamma and
    --max-luminance, in place of the file's [calibration]); none of them: the linear default."""
    flags = gamma is not None or max_luminance is not None
    if path is None and not flags:
        return Monitor()
    values = {} if path is None else read_toml(Path(path), "monitor")
    for name, value in values.items():
        if name not in TABLES or not isinstance(value, dict):
            raise ConfigError(f"{path}: unknown table [{name}]; a monitor file has [{'], ['.join(TABLES)}]")
        unknown = sorted(set(value) - set(TABLES[name]))
        if unknown:
            raise ConfigError(f"{path}: unknown key [{name}].{unknown[0]}; use {', '.join(TABLES[name])}")
    table = values.get("calibration")
    if flags and table:
        raise ConfigError(
            f"{path}: has a [calibration] table and --gamma/--max-luminance were given; use one of them"
        )
    if flags:
        a, gamma, c = model_calibration(
            ("--gamma", "--max-luminance", "black"),
            1.0 if gamma is None else gamma,
            Monitor.a if max_luminance is None else max_luminance,
            0.0,
        )
    elif table and "pixel" in table and "luminance" in table:
        a, gamma, c = measured_calibration(Path(path), table)
    elif table and "gamma" in table and "max_luminance" in table:
        names = tuple(f"{path}: [calibration].{key}" for key in ("gamma", "max_luminance", "black"))
        a, gamma, c = model_calibration(names, table["gamma"], table["max_luminance"], table.get("black", 0.0))
    else:
        raise ConfigError(
            f"{path}: missing [calibration] pixel = [...] and luminance = [...] (or gamma and"
            " max_luminance); add the table"
        )
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
        if value is not None and not (
            isinstance(value, int | float) and value > 0
            or isinstance(value, list) and len(value) == len(PRIMARIES)
            and all(isinstance(v, int | float) and v > 0 for v in value)
        ):
            raise ConfigError(
                f"{path}: [target].{name} = {value!r} must be a positive number (or one per primary)"
            )
    monitor = Monitor(
        a=a,
        gamma=gamma,
        c=c,
        screen=size,
        mean_luminance=tuple(map(float, mean)) if isinstance(mean, list) else None if mean is None else float(mean),
        rms_contrast=tuple(map(float, contrast)) if isinstance(contrast, list) else None if contrast is None else float(contrast),
    )
    if isinstance(mean, int | float) and monitor.primaries == 1 and not monitor.white > mean > monitor.black:
        raise ConfigError(
            f"{path}: [target].mean_luminance = {mean} is outside the monitor's range"
            f" {monitor.black:.3g}..{monitor.white:.3g} cd/m²; lower it"
        )
    return monitor


def spread(image: np.ndarray, pooled: bool):
    """RMS contrast (std over pixels) of an image (y, x) in cd/m²: a number; of (primary, y, x):
    per primary (primary, 1, 1), or, ``pooled``, of the luminance summed over primaries."""
    if image.ndim == 2 or pooled:
        return (image.sum(axis=0) if image.ndim == 3 else image).std()
    return image.std(axis=(-2, -1))[:, None, None]


def measure(image: np.ndarray, pooled: bool) -> tuple:
    """(mean, RMS contrast) in cd/m² of an image (y, x): numbers; of (primary, y, x): per
    primary (lists), or, ``pooled``, of the luminance summed over primaries (numbers)."""
    if image.ndim == 2 or pooled:
        total = image.sum(axis=0) if image.ndim == 3 else image
        return float(total.mean()), float(total.std())
    return image.mean(axis=(-2, -1)).tolist(), image.std(axis=(-2, -1)).tolist()


def match_luminance(
    luminance: np.ndarray, mean, contrast, lo, hi, pooled: bool = False, iterations: int = 50
) -> np.ndarray:
    """Rescale an image (y, x), or (primary, y, x), in cd/m² to target means and RMS contrast
    within [lo, hi] (numbers, or (primary, 1, 1) per primary).

    Each primary is scaled about its own mean and moved to ``mean``; the gain sets its std to
    ``contrast``, or, ``pooled``, one gain for all primaries (keeping the image's colours) sets
    the std of the luminance summed over primaries to ``contrast`` (a number). Clipping to the
    displayable range moves mean and std, so rescale and clip again until stable.
    """
    image = np.asarray(luminance, np.float64)
    for _ in range(iterations):
        std = spread(image, pooled)
        scale = np.where(std > 0, contrast / np.where(std > 0, std, 1.0), 0.0)
        image = np.clip(mean + (image - image.mean(axis=(-2, -1), keepdims=True)) * scale, lo, hi)
        means = image.mean(axis=(-2, -1), keepdims=True)
        if np.all(np.abs(means - mean) < 1e-6 * mean) and np.all(
            np.abs(spread(image, pooled) - contrast) < 1e-6 * contrast
        ):
            break
    return image


def resize(image: np.ndarray, shape: tuple[int, int], resample) -> np.ndarray:
    """Float image (y, x) or (primary, y, x) resized to shape (height, width) with a PIL filter."""
    if image.ndim == 3:
        return np.stack([resize(plane, shape, resample) for plane in image])
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


def image_mode(primaries: int) -> str:
    """The PNG mode of stimuli for a monitor of ``primaries``: 8-bit gray L or 8-bit RGB."""
    return "L" if primaries == 1 else "RGB"


def save_png(screen: np.ndarray, shape: tuple[int, int], path: str | Path) -> None:
    """Screen values (y, x) or (3, y, x) uint8 upsampled to ``shape`` as a gray or RGB PNG."""
    pixels = upsample(screen, shape).astype(np.uint8)
    Image.fromarray(pixels if pixels.ndim == 2 else np.moveaxis(pixels, 0, -1)).save(path)


def save_gif(screens: np.ndarray, shape: tuple[int, int], path: str | Path, frame_rate: float) -> None:
    """Screen frames (frame, y, x) or (frame, 3, y, x) uint8 upsampled to ``shape`` as an animated
    GIF looping at ``frame_rate`` Hz (a preview: GIF times frames in 10 ms steps and holds 256
    colours)."""
    frames = [
        Image.fromarray(pixels if pixels.ndim == 2 else np.moveaxis(pixels, 0, -1))
        for pixels in (upsample(screen, shape).astype(np.uint8) for screen in screens)
    ]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / frame_rate), loop=0)


def png_to_model(path: str | Path, monitor: Monitor, shape: tuple[int, int]) -> np.ndarray:
    """Read an exported PNG and return what the eye sees in model space: (y, x) float64 0..255,
    or (primary, y, x) on a colour monitor.

    Luminance is what the retina averages, so downsample after applying the monitor model.
    """
    screen = np.asarray(Image.open(path).convert(image_mode(monitor.primaries)))
    if screen.ndim == 3:
        screen = np.moveaxis(screen, -1, 0)
    return monitor.luminance_to_model(downsample(monitor.luminance(screen), shape))
