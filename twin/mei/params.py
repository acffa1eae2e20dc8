"""Image parametrizations: what gradient ascent updates, and how it becomes an image.

Images are ``(pairs, y, x)``, or ``(pairs, channel, y, x)`` for several channels, in normalized
units, where 0 is the mean gray of the training images.
- pixel: the parameters are the image.
- fourier (lucid): the parameters are a real/imaginary spectrum ``(pairs, [channel,] 2, y, x // 2 + 1)``
  scaled by 1 / max(f, 1 / max(y, x)) ** decay (f in cycles per pixel) and inverted with the
  orthonormal inverse FFT; with range clipping the result is squashed into the pixel range by a
  sigmoid that maps 0 to 0, as lucid squashes into [0, 1].

Clips (most exciting videos) are ``(pairs, frame, [channel,] y, x)``:
- pixel: the parameters are the clip.
- fourier: a space-time spectrum ``(pairs, [channel,] 2, frame, y, x // 2 + 1)`` scaled by
  1 / max(f, 1 / max(frame, y, x)) ** decay, f the norm of (cycles per frame, cycles per pixel
  along y, along x), inverted with the orthonormal 3-D inverse FFT.
- static: the parameters are one image (either parametrization), shown on every frame.

Transparency (sinzlab/mei's transparent MEIs): the parameters are a dict of the image's parameters
("image", either of the above) and per-pixel opacity logits ("opacity", (pairs, y, x)); the model
sees opacity * image + (1 - opacity) * background, the background drawn at random each step from
a bank of images (mean gray, noise or natural images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from twin.config import MEIConfig
from twin.mei import ops


def pixels_to_normalized(pixels, pixel_range: tuple[float, float]):
    """Pixel units 0..255 -> normalized units, given the normalized values of 0 and 255."""
    lo, hi = pixel_range
    return lo + (hi - lo) * (pixels / 255.0)


def fourier_scale(height: int, width: int, decay: float) -> np.ndarray:
    """(y, x // 2 + 1) lucid spectrum scale 1 / max(f, 1 / max(h, w)) ** decay."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx**2 + fy**2)
    return (1.0 / np.maximum(frequency, 1.0 / max(height, width)) ** decay).astype(np.float32)


def fourier_scale3(frames: int, height: int, width: int, decay: float) -> np.ndarray:
    """(frame, y, x // 2 + 1) space-time spectrum scale 1 / max(f, 1 / max(t, h, w)) ** decay."""
    ft = np.fft.fftfreq(frames)[:, None, None]
    fy = np.fft.fftfreq(height)[None, :, None]
    fx = np.fft.rfftfreq(width)[None, None, :]
    frequency = np.sqrt(ft**2 + fy**2 + fx**2)
    return (1.0 / np.maximum(frequency, 1.0 / max(frames, height, width)) ** decay).astype(np.float32)


def fourier_to_clip(spectrum: jax.Array, scale: jax.Array, width: int, channels: bool) -> jax.Array:
    """``spectrum (..., [channel,] 2, frame, y, x // 2 + 1)`` -> clip ``(..., frame, [channel,] y,
    width)`` (orthonormal 3-D inverse FFT); ``scale (frame, y, x // 2 + 1)``."""
    clip = ops.irfft3(spectrum[..., 0, :, :, :] * scale, spectrum[..., 1, :, :, :] * scale, width)
    return jnp.moveaxis(clip, -4, -3) if channels else clip


def clip_to_fourier(clips: jax.Array, scale: jax.Array, channels: bool) -> jax.Array:
    """Inverse of fourier_to_clip: ``clips (..., frame, [channel,] y, x)`` -> ``(..., [channel,] 2,
    frame, y, x // 2 + 1)``."""
    if channels:
        clips = jnp.moveaxis(clips, -3, -4)
    real, imag = ops.rfft3(clips)
    return jnp.stack([real / scale, imag / scale], axis=-4)


def fourier_to_image(spectrum: jax.Array, scale: jax.Array, width: int) -> jax.Array:
    """``spectrum (..., 2, y, x // 2 + 1)`` -> image ``(..., y, width)`` (orthonormal inverse FFT)."""
    return ops.irfft2(spectrum[..., 0, :, :] * scale, spectrum[..., 1, :, :] * scale, width)


def image_to_fourier(images: jax.Array, scale: jax.Array) -> jax.Array:
    """Inverse of fourier_to_image: ``images (..., y, x)`` -> ``(..., 2, y, x // 2 + 1)``."""
    real, imag = ops.rfft2(images)
    return jnp.stack([real / scale, imag / scale], axis=-3)


def squash(values: jax.Array, pixel_range: tuple[float, float]) -> jax.Array:
    """Sigmoid from the real line into (lo, hi) that maps 0 to 0 (needs lo < 0 < hi)."""
    lo, hi = pixel_range
    offset = np.log(hi / -lo)  # minus the logit of the position of 0 within (lo, hi)
    return lo + (hi - lo) * jax.nn.sigmoid(values - offset)


def unsquash(images: jax.Array, pixel_range: tuple[float, float]) -> jax.Array:
    """Inverse of squash for images strictly inside the range."""
    lo, hi = pixel_range
    fraction = jnp.clip((images - lo) / (hi - lo), 1e-4, 1 - 1e-4)
    return jnp.log(fraction / (1 - fraction)) + np.log(hi / -lo)


class Parametrization:
    """Maps parameters to images (or clips) for one recipe and image shape.

    image_shape: (y, x), or (channel, y, x) for several channels; frames: 0 for images, else the
    clip length T: stimuli are then clips ``shape`` = (T, *image_shape) (one image repeated when
    ``config.static``); pixel_range: (lo, hi) valid
    normalized values (floats, or arrays broadcasting against one image, e.g. (y, x) for per-pixel
    or (channel, 1, 1) for per-channel normalization); image_stats: (mean, std) of the
    normalization in pixel levels 0..255 (same layouts; the loader maps the store's pixel_range
    onto 0..255, so recipes written for 0..255 fit any store), used to place the initialization
    (without it pixel_range is taken to be 0..255); backgrounds: for transparent images, the bank
    (k, *image_shape) in normalized units that each step draws one background from per pair;
    None for opaque images.
    """

    def __init__(
        self, config: MEIConfig, image_shape: tuple[int, int], pixel_range, image_stats=None,
        backgrounds=None, frames: int = 0,
    ):
        self.config = config
        self.backgrounds = None if backgrounds is None else jnp.asarray(backgrounds, jnp.float32)
        self.image_shape = tuple(image_shape)
        self.frames = frames
        self.shape = (frames, *self.image_shape) if frames else self.image_shape
        # What the parameters describe: the stimulus, or the one image of a static clip.
        self.optimized_shape = self.shape if self.temporal else self.image_shape
        self.pixel_range = (np.float32(pixel_range[0]), np.float32(pixel_range[1]))
        self.image_stats = image_stats
        # One pixel level in normalized units: 1 / std of the normalization.
        if image_stats is None:
            self.pixel_unit = (self.pixel_range[1] - self.pixel_range[0]) / np.float32(255)
        else:
            self.pixel_unit = 1 / np.asarray(image_stats[1], np.float32)
        if self.temporal:
            self.scale = jnp.asarray(fourier_scale3(frames, *self.shape[-2:], config.fourier_decay))
        else:
            self.scale = jnp.asarray(fourier_scale(*self.shape[-2:], config.fourier_decay))

    @property
    def fourier(self) -> bool:
        return self.config.parametrization == "fourier"

    @property
    def temporal(self) -> bool:
        """Whether the parameters have a frame axis (clips that are not static)."""
        return bool(self.frames) and not self.config.static

    @property
    def channels(self) -> bool:
        """Whether images have a channel axis."""
        return len(self.image_shape) == 3

    @property
    def transparent(self) -> bool:
        return self.backgrounds is not None

    def split(self, params):
        """(the image's parameters, the opacity logits or None) of ``params``."""
        return (params["image"], params["opacity"]) if self.transparent else (params, None)

    def join(self, image, opacity):
        """Inverse of ``split``."""
        return {"image": image, "opacity": opacity} if self.transparent else image

    def init(self, key: jax.Array):
        """One random initialization of the image (see ``init_image``); transparent images start
        half opaque (logits 0)."""
        return self.join(self.init_image(key), jnp.zeros(self.shape[-2:], jnp.float32))

    def init_image(self, key: jax.Array) -> jax.Array:
        """Pixel noise N(init_mean, init_std) clipped to 0..255 and normalized (Walker 2019), or a
        lucid random spectrum with sd ``fourier_init_std``."""
        config = self.config
        if self.fourier:
            height, width = self.shape[-2:]
            spectrum = (2, self.frames) if self.temporal else (2,)
            shape = (*self.image_shape[:-2], *spectrum, height, width // 2 + 1)
            return config.fourier_init_std * jax.random.normal(key, shape, jnp.float32)
        noise = config.init_mean + config.init_std * jax.random.normal(key, self.optimized_shape)
        pixels = jnp.clip(noise, 0.0, 255.0)
        if self.image_stats is None:
            return pixels_to_normalized(pixels, self.pixel_range)
        mean, std = self.image_stats
        return (pixels - mean) / std

    def image(self, params) -> jax.Array:
        """``params (p, ...)`` -> images ``(p, *shape)``; for transparent images the image under
        the opacity."""
        params, _ = self.split(params)
        if not self.fourier:
            image = params
        elif self.temporal:
            image = fourier_to_clip(params, self.scale, self.shape[-1], self.channels)
        else:
            image = fourier_to_image(params, self.scale, self.shape[-1])
        if self.fourier and self.config.clip_range:
            image = squash(image, self.pixel_range)
        if self.frames and not self.temporal:
            image = jnp.broadcast_to(image[:, None], (len(image), *self.shape))
        return image

    def opacity(self, params) -> jax.Array:
        """(p, y, x) opacity in (0, 1) of transparent ``params``."""
        return jax.nn.sigmoid(self.split(params)[1])

    def to_image(self, params, keys: jax.Array | None = None) -> jax.Array:
        """What the model sees, ``(p, *shape)``: the image, or for transparent images
        opacity * image + (1 - opacity) * background, the background drawn from the bank by
        ``keys (p, 2)`` (the mean gray, 0, without keys)."""
        image = self.image(params)
        if not self.transparent:
            return image
        opacity = self.opacity(params)
        opacity = opacity[:, None] if image.ndim == 4 else opacity  # shared by the channels
        if keys is None:
            return opacity * image
        # fold_in: a stream apart from the one of the random transforms, which split the same keys
        draw = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, len(self.backgrounds)))
        return opacity * image + (1 - opacity) * self.backgrounds[draw(keys)]

    def from_image(self, images: jax.Array) -> jax.Array:
        """Parameters that reproduce ``images (p, *shape)`` (used to start from an MEI); a
        static clip from its first frame."""
        if self.frames and not self.temporal:
            images = images[:, 0]
        if not self.fourier:
            return images
        if self.config.clip_range:
            images = unsquash(images, self.pixel_range)
        if self.temporal:
            return clip_to_fourier(images, self.scale, self.channels)
        return image_to_fourier(images, self.scale)
