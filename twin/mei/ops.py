"""Image and gradient operations of the MEI recipes: blur, Fourier preconditioning, jitter,
constraints and schedules. Pure jax.numpy on batches ``(pairs, y, x)`` or ``(pairs, channel, y,
x)``, and of clips ``(pairs, frame, [channel,] y, x)``: spatial operations act on the last two axes
of every frame and channel alike, norms on whole images or clips. No host syncs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from twin.config import MEIConfig


def blur_radius(*sigmas: float) -> int:
    """Static kernel radius covering 4 standard deviations of the widest sigma in a schedule."""
    return max(1, math.ceil(4.0 * max(sigmas)))


def gaussian_kernel(sigma: jax.Array, radius: int) -> jax.Array:
    """(2 * radius + 1,) normalized Gaussian weights; ``sigma`` may be traced."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-6)) ** 2)
    return weights / weights.sum()


def gaussian_blur(images: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of ``images (..., y, x)`` with mirrored edges (scipy's 'reflect')."""
    kernel = gaussian_kernel(sigma, radius)
    lead = [(0, 0)] * (images.ndim - 2)
    padded = jnp.pad(images, lead + [(radius, radius), (0, 0)], mode="symmetric")
    height, width = images.shape[-2:]
    rows = sum(kernel[k] * padded[..., k : k + height, :] for k in range(2 * radius + 1))
    padded = jnp.pad(rows, lead + [(0, 0), (radius, radius)], mode="symmetric")
    return sum(kernel[k] * padded[..., :, k : k + width] for k in range(2 * radius + 1))


def temporal_blur(clips: jax.Array, sigma: float, radius: int) -> jax.Array:
    """Gaussian blur of ``clips (p, frame, ...)`` along the frame axis with mirrored ends."""
    kernel = gaussian_kernel(sigma, radius)
    frames = clips.shape[1]
    padded = jnp.pad(clips, [(0, 0), (radius, radius)] + [(0, 0)] * (clips.ndim - 2), mode="symmetric")
    return sum(kernel[k] * padded[:, k : k + frames] for k in range(2 * radius + 1))


def frequency_radius(height: int, width: int) -> np.ndarray:
    """(y, x // 2 + 1) spatial frequency of each rfft2 coefficient in cycles per image."""
    fy = np.fft.fftfreq(height) * height
    fx = np.fft.rfftfreq(width) * width
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).astype(np.float32)


# The 2-D real FFTs below are small matrix products instead of jnp.fft: XLA's CPU FFT fails on
# batches sharded over devices, and at MEI image sizes the products cost little.


def dft_matrices(height: int, width: int):
    """Cosine/sine matrices of the orthonormal DFT along y (y, y) and the real DFT along x
    (x // 2 + 1, x), and the weight of each x frequency in the inverse (2 for paired ones)."""
    ky = np.arange(height)
    angle_y = 2 * np.pi * np.outer(ky, ky) / height
    kx = np.arange(width // 2 + 1)
    angle_x = 2 * np.pi * np.outer(kx, np.arange(width)) / width
    weight = np.full(len(kx), 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return (
        np.cos(angle_y) / np.sqrt(height),
        np.sin(angle_y) / np.sqrt(height),
        np.cos(angle_x) / np.sqrt(width),
        np.sin(angle_x) / np.sqrt(width),
        weight,
    )


def rfft2(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Orthonormal rfft2 of ``images (..., y, x)`` -> (real, imag) each ``(..., y, x // 2 + 1)``;
    equals ``np.fft.rfft2(images, norm="ortho")``."""
    cy, sy, cx, sx, _ = (jnp.asarray(m, jnp.float32) for m in dft_matrices(*images.shape[-2:]))
    hi = jax.lax.Precision.HIGHEST
    real = jnp.einsum("...yx,kx->...yk", images, cx, precision=hi)
    imag = -jnp.einsum("...yx,kx->...yk", images, sx, precision=hi)
    # Along y: multiply by exp(-2 pi i ky y / h).
    out_real = jnp.einsum("vy,...yk->...vk", cy, real, precision=hi) + jnp.einsum(
        "vy,...yk->...vk", sy, imag, precision=hi
    )
    out_imag = jnp.einsum("vy,...yk->...vk", cy, imag, precision=hi) - jnp.einsum(
        "vy,...yk->...vk", sy, real, precision=hi
    )
    return out_real, out_imag


def irfft2(real: jax.Array, imag: jax.Array, width: int) -> jax.Array:
    """Orthonormal inverse of rfft2: (real, imag) ``(..., y, x // 2 + 1)`` -> ``(..., y, x)``;
    equals ``np.fft.irfft2(real + 1j * imag, s=(y, width), norm="ortho")``."""
    height = real.shape[-2]
    cy, sy, cx, sx, weight = (jnp.asarray(m, jnp.float32) for m in dft_matrices(height, width))
    hi = jax.lax.Precision.HIGHEST
    # Along y: multiply by exp(+2 pi i ky y / h).
    y_real = jnp.einsum("vy,...yk->...vk", cy, real, precision=hi) - jnp.einsum(
        "vy,...yk->...vk", sy, imag, precision=hi
    )
    y_imag = jnp.einsum("vy,...yk->...vk", cy, imag, precision=hi) + jnp.einsum(
        "vy,...yk->...vk", sy, real, precision=hi
    )
    # Along x: Hermitian symmetry; the imaginary parts of the unpaired frequencies drop out.
    return jnp.einsum("...yk,kx->...yx", y_real * weight, cx, precision=hi) - jnp.einsum(
        "...yk,kx->...yx", y_imag * weight, sx, precision=hi
    )


def complex_dft(real: jax.Array, imag: jax.Array, axis: int, inverse: bool = False) -> tuple[jax.Array, jax.Array]:
    """Orthonormal complex DFT (or its inverse) of (real, imag) along ``axis``."""
    length = real.shape[axis]
    k = np.arange(length)
    angle = 2 * np.pi * np.outer(k, k) / length
    cos = jnp.asarray(np.cos(angle) / np.sqrt(length), jnp.float32)
    sin = jnp.asarray(np.sin(angle) / np.sqrt(length), jnp.float32) * (1.0 if inverse else -1.0)
    hi = jax.lax.Precision.HIGHEST

    def along(matrix, values):
        return jnp.moveaxis(jnp.tensordot(matrix, jnp.moveaxis(values, axis, 0), axes=1, precision=hi), 0, axis)

    # (cos + i sin) (real + i imag)
    return along(cos, real) - along(sin, imag), along(cos, imag) + along(sin, real)


def rfft3(clips: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Orthonormal real FFT of ``clips (..., frame, y, x)`` over its last three axes -> (real,
    imag) each ``(..., frame, y, x // 2 + 1)``; equals ``np.fft.rfftn(clips, axes=(-3, -2, -1),
    norm="ortho")``."""
    real, imag = rfft2(clips)
    return complex_dft(real, imag, -3)


def irfft3(real: jax.Array, imag: jax.Array, width: int) -> jax.Array:
    """Orthonormal inverse of rfft3: (real, imag) ``(..., frame, y, x // 2 + 1)`` -> ``(...,
    frame, y, x)``."""
    real, imag = complex_dft(real, imag, -3, inverse=True)
    return irfft2(real, imag, width)


def precondition(gradient: jax.Array, power: float) -> jax.Array:
    """Walker 2019: scale each frequency of ``gradient (..., y, x)`` by 1 / max(1, r ** (2 * power))."""
    height, width = gradient.shape[-2:]
    scale = 1.0 / np.maximum(1.0, frequency_radius(height, width) ** (2.0 * power))
    real, imag = rfft2(gradient)
    return irfft2(real * scale, imag * scale, width)


def transform(images: jax.Array, shift: jax.Array, scale: jax.Array, angle: jax.Array | None = None) -> jax.Array:
    """Zoom ``images (p, [frame,] [channel,] y, x)`` by ``scale (p,)`` and rotate by ``angle (p,)``
    degrees (counter-clockwise as displayed) about the centre, then translate by ``shift (p, 2)``
    (dy, dx) pixels, every frame of a clip alike; bilinear, and uncovered pixels become 0 (the
    mean gray in normalized units)."""
    height, width = images.shape[-2:]
    centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")).reshape(2, -1)
    if angle is None:
        angle = jnp.zeros(len(images))

    def one(image, offset, factor, degrees):
        # Inverse map: output pixel -> source pixel.
        radians = jnp.deg2rad(degrees)
        cos, sin = jnp.cos(radians), jnp.sin(radians)
        dy, dx = (grid - (centre + offset)[:, None]) / factor
        source = jnp.stack([cos * dy + sin * dx, cos * dx - sin * dy]) + centre[:, None]
        def sample(plane):
            sampled = jax.scipy.ndimage.map_coordinates(plane, list(source), order=1, mode="constant")
            return sampled.reshape(height, width)

        if image.ndim == 2:
            return sample(image)
        return jax.vmap(sample)(image.reshape(-1, height, width)).reshape(image.shape)

    return jax.vmap(one)(images, shift.astype(jnp.float32), scale, angle)


def random_transform(
    images: jax.Array, keys: jax.Array, jitter: int, scale_jitter: float, rotate: float = 0.0
) -> jax.Array:
    """Per-pair random integer shift in [-jitter, jitter], zoom in [1 - s, 1 + s] and rotation in
    [-rotate, rotate] degrees (lucid's transforms), the same for every frame of a clip."""
    if jitter == 0 and scale_jitter == 0.0 and rotate == 0.0:
        return images
    shift_keys, scale_keys, angle_keys = jax.vmap(lambda k: jax.random.split(k, 3), out_axes=1)(keys)
    shift = jax.vmap(lambda k: jax.random.randint(k, (2,), -jitter, jitter + 1))(shift_keys)
    scale = jax.vmap(
        lambda k: jax.random.uniform(k, (), minval=1 - scale_jitter, maxval=1 + scale_jitter)
    )(scale_keys)
    angle = jax.vmap(lambda k: jax.random.uniform(k, (), minval=-rotate, maxval=rotate))(angle_keys)
    return transform(images, shift, scale, angle)


def image_axes(images: jax.Array) -> tuple[int, ...]:
    """The axes of one image in a batch ``(p, ...)``: all but the first."""
    return tuple(range(1, images.ndim))


def set_norm(images: jax.Array, norm: float) -> jax.Array:
    """Rescale each image or clip of ``(p, ...)`` to L2 norm ``norm`` (about 0, the mean gray)."""
    current = jnp.sqrt(jnp.sum(images**2, axis=image_axes(images), keepdims=True))
    return images * (norm / jnp.maximum(current, 1e-8))


def normalize_gradient(gradient: jax.Array, gain) -> jax.Array:
    """Walker 2019: gain / mean(|grad|) * grad, per image or clip of ``(p, ...)``."""
    mean = jnp.mean(jnp.abs(gradient), axis=image_axes(gradient), keepdims=True)
    return gradient * (gain / (mean + 1e-12))


def schedule(start: float, end: float, steps: int, kind: str) -> optax.Schedule:
    """Value per step: "constant" (start), "linear" or "cosine" from start to end (the names
    MEIConfig.schedule accepts)."""
    if kind == "constant":
        return optax.constant_schedule(start)
    if kind == "linear":
        return optax.linear_schedule(start, end, max(steps - 1, 1))
    return optax.cosine_decay_schedule(start, max(steps - 1, 1), alpha=end / start)


def optimizer(config: MEIConfig) -> optax.GradientTransformation:
    """The optax optimizer of a recipe with its learning-rate schedule (ascent: feed -grad)."""
    rate = schedule(config.learning_rate, config.final_learning_rate, config.steps, config.schedule)
    if config.optimizer == "sgd":
        return optax.sgd(rate)
    if config.optimizer == "adam":
        return optax.adam(rate)
    return optax.adamw(rate, weight_decay=config.weight_decay)
