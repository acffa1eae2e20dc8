"""MEI image operations and parametrizations against numpy / scipy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from twin.config import MEIConfig
from twin.mei import ops
from twin.mei.masks import gaussian_mask, walker_mask
from twin.mei.params import Parametrization, fourier_scale, fourier_to_image, image_to_fourier

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(16, 24), (15, 23)])
def test_rfft2_pair_matches_numpy(shape):
    x = RNG.normal(size=(3, *shape)).astype(np.float32)
    real, imag = ops.rfft2(jnp.asarray(x))
    reference = np.fft.rfft2(x, norm="ortho")
    np.testing.assert_allclose(real, reference.real, atol=1e-5)
    np.testing.assert_allclose(imag, reference.imag, atol=1e-5)
    z = RNG.normal(size=reference.shape) + 1j * RNG.normal(size=reference.shape)
    back = ops.irfft2(jnp.asarray(z.real, jnp.float32), jnp.asarray(z.imag, jnp.float32), shape[1])
    np.testing.assert_allclose(back, np.fft.irfft2(z, s=shape, norm="ortho"), atol=1e-5)


@pytest.mark.parametrize("sigma", [0.01, 0.7, 1.5])
def test_gaussian_blur_matches_scipy(sigma):
    x = RNG.normal(size=(2, 12, 17)).astype(np.float32)
    radius = ops.blur_radius(1.5)
    out = ops.gaussian_blur(jnp.asarray(x), jnp.float32(sigma), radius)
    reference = np.stack(
        [ndimage.gaussian_filter(im.astype(np.float64), sigma, mode="reflect", truncate=radius / sigma)
         for im in x]
    )
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_precondition_matches_numpy():
    x = RNG.normal(size=(2, 12, 18)).astype(np.float32)
    fy = np.fft.fftfreq(12)[:, None] * 12
    fx = np.fft.fftfreq(18)[None, :] * 18
    scale = 1 / np.maximum(1, np.sqrt(fy**2 + fx**2) ** (2 * 0.1))
    reference = np.fft.ifft2(np.fft.fft2(x) * scale).real
    np.testing.assert_allclose(ops.precondition(jnp.asarray(x), 0.1), reference, atol=1e-5)
    # Power 0 leaves the gradient alone; the constant component is never scaled.
    np.testing.assert_allclose(ops.precondition(jnp.asarray(x), 0.0), x, atol=1e-5)


def test_fourier_round_trip_and_orthonormality():
    shape = (10, 14)
    scale = jnp.asarray(fourier_scale(*shape, 1.0))
    x = RNG.normal(size=(3, *shape)).astype(np.float32)
    spectrum = image_to_fourier(jnp.asarray(x), scale)
    assert spectrum.shape == (3, 2, 10, 8)
    np.testing.assert_allclose(fourier_to_image(spectrum, scale, shape[1]), x, atol=1e-4)
    # Orthonormal: the image's energy equals its spectrum's (paired frequencies count twice).
    real, imag = ops.rfft2(jnp.asarray(x))
    weight = ops.dft_matrices(*shape)[-1]
    energy = np.sum(weight * (np.asarray(real) ** 2 + np.asarray(imag) ** 2), axis=(1, 2))
    np.testing.assert_allclose(energy, np.sum(x**2, axis=(1, 2)), rtol=1e-4)


def test_lucid_scale_and_init():
    scale = fourier_scale(8, 12, 1.0)
    assert scale[0, 0] == pytest.approx(12.0)  # 1 / max(0, 1 / 12)
    assert scale[0, 1] == pytest.approx(12.0)  # f = 1/12
    assert scale[4, 0] == pytest.approx(2.0)  # f = 1/2
    config = MEIConfig(parametrization="fourier")
    param = Parametrization(config, (32, 48), (-2.0, 3.0))
    import jax

    spectrum = param.init(jax.random.PRNGKey(0))
    assert spectrum.shape == (2, 32, 25)
    assert float(jnp.std(spectrum)) == pytest.approx(0.01, rel=0.05)
    image = param.to_image(spectrum)
    assert float(image.min()) > -2.0 and float(image.max()) < 3.0
    # The squash maps 0 to 0 and round-trips.
    zero = param.to_image(jnp.zeros((2, 32, 25)))
    np.testing.assert_allclose(zero, 0.0, atol=1e-5)
    np.testing.assert_allclose(param.to_image(param.from_image(image)), image, atol=1e-4)


def test_pixel_init_is_walker_noise_in_normalized_units():
    import jax

    config = MEIConfig()
    param = Parametrization(config, (40, 50), (-2.0, 2.0), image_stats=(100.0, 50.0))
    image = np.asarray(param.init(jax.random.PRNGKey(1)))
    pixels = image * 50.0 + 100.0
    assert pixels.mean() == pytest.approx(128.0, abs=1.0)
    assert pixels.std() == pytest.approx(8.0, rel=0.05)


def test_transform_integer_shift_and_identity():
    x = RNG.normal(size=(2, 9, 11)).astype(np.float32)
    shifted = np.asarray(ops.transform(jnp.asarray(x), jnp.array([[2, -3], [0, 0]]), jnp.ones(2)))
    expected = np.zeros_like(x[0])
    expected[2:, :-3] = x[0, :-2, 3:]
    np.testing.assert_allclose(shifted[0], expected, atol=1e-5)
    np.testing.assert_allclose(shifted[1], x[1], atol=1e-5)


def test_transform_rotation_and_zoom():
    x = RNG.normal(size=(1, 9, 9)).astype(np.float32)
    turned = ops.transform(jnp.asarray(x), jnp.zeros((1, 2)), jnp.ones(1), jnp.array([90.0]))
    np.testing.assert_allclose(turned[0], np.rot90(x[0]), atol=1e-5)  # counter-clockwise
    dot = np.zeros((1, 9, 9), np.float32)
    dot[0, 4, 6] = 1.0  # 2 px right of the centre
    zoomed = np.asarray(ops.transform(jnp.asarray(dot), jnp.array([[1, 0]]), jnp.array([1.5]), jnp.array([0.0])))
    # Zoomed 1.5x about the centre (3 px right), then 1 px down; bilinear spread around it.
    assert np.unravel_index(zoomed[0].argmax(), (9, 9)) == (5, 7) and zoomed[0, 5, 7] == pytest.approx(1.0)
    assert zoomed[0, 5, 8] == pytest.approx(1 / 3, abs=1e-6) and zoomed[0, 3, 7] == 0.0


def test_random_transform_stays_within_its_ranges():
    x = jnp.asarray(RNG.normal(size=(64, 9, 11)).astype(np.float32))
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    np.testing.assert_array_equal(ops.random_transform(x, keys, 0, 0.0, 0.0), x)
    turned = np.asarray(ops.random_transform(x, keys, 0, 0.0, 10.0))
    assert not np.allclose(turned, x)
    # A rotation of at most 10 degrees moves the centre pixel's neighbours by less than a pixel.
    np.testing.assert_allclose(turned[:, 4, 5], np.asarray(x)[:, 4, 5], atol=1e-5)


def test_norm_and_normalized_gradient():
    x = jnp.asarray(RNG.normal(size=(3, 6, 7)), jnp.float32)
    np.testing.assert_allclose(np.linalg.norm(ops.set_norm(x, 5.0).reshape(3, -1), axis=1), 5.0, rtol=1e-5)
    step = ops.normalize_gradient(x, 0.5)
    np.testing.assert_allclose(np.abs(step).mean(axis=(1, 2)), 0.5, rtol=1e-5)


def test_schedules():
    linear = ops.schedule(3.0, 0.125, 11, "linear")
    assert float(linear(0)) == pytest.approx(3.0)
    assert float(linear(10)) == pytest.approx(0.125)
    assert float(ops.schedule(1.0, 0.0, 5, "constant")(4)) == 1.0
    cosine = ops.schedule(1.0, 0.1, 5, "cosine")
    assert float(cosine(0)) == pytest.approx(1.0) and float(cosine(4)) == pytest.approx(0.1)


def test_walker_mask_keeps_the_blob_and_drops_small_ones():
    mei = np.full((36, 64), 128.0)
    yy, xx = np.mgrid[:36, :64]
    blob = (yy - 18) ** 2 + (xx - 20) ** 2 < 36
    mei[blob] = 200.0
    mei[2, 60] = 250.0  # a one-pixel speck: dropped
    mask = walker_mask(mei, 128.0)
    assert mask.shape == mei.shape and 0 <= mask.min() and mask.max() <= 1
    assert mask[18, 20] > 0.99
    assert mask[2, 60] < 0.01 and mask[30, 50] < 0.01
    assert walker_mask(np.full((36, 64), 130.0), 128.0).max() == 0
    envelope = gaussian_mask(mei - 0.0 * blob, 128.0)
    assert np.unravel_index(envelope.argmax(), envelope.shape) in [(18, 20), (18, 21), (17, 20)]
