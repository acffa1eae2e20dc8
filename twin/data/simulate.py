"""The simulated animal: natural-like images and a V1-like population with known parameters.

Images are dead-leaves scenes (occluding disks: sharp edges, scale-invariant sizes) mixed with
1/f noise texture, in pixel units 0..255 around a mean gray of 128. Neurons are Gabor models
with receptive fields spread over the field:

- ``simple``: rectified, squared linear Gabor drive, relu(<x, even>)^2;
- ``complex``: phase-invariant energy, <x, even>^2 + <x, odd>^2 (quadrature pair);
- ``simple_normalized`` / ``complex_normalized``: the same drive divided by the local contrast
  energy of an annular surround (divisive normalization, surround suppression).

Here x = (pixels - 128) / 128. A Naka-Rushton output turns the drive g into the mean response
baseline + rmax * g / (g + c50). Trial responses are compound Poisson-gamma draws with that
mean, multiplied by a trial gain that follows running speed: non-negative, exactly zero on
many trials and overdispersed, like deconvolved calcium signals.

Colour (``channels=3``): images are RGB (trial, channel, y, x). Each disk and the texture get a
luminance and two weaker colour-opponent components (red-green R - G, blue-yellow
B - (R + G) / 2), turned into R, G, B. Each neuron's Gabor is multiplied by a unit-norm colour
vector over R, G, B (``gt_colour``): ``luminance`` (1, 1, 1), ``red_green`` (1, -1, 0) or
``blue_yellow`` (-1/2, -1/2, 1), so opponent neurons ignore luminance and respond to
colour contrast alone; the surround pools the contrast energy averaged over channels. One
channel (the default) is the gray animal, drawn exactly as without the option.

Several animals (``simulate(..., animal=k)``) share these statistics, each with its own draws;
``day2`` images the same field of view of a session again (cells shifted, lost, new, gains
drifted, day 1's test images shown again).

Ground truth is stored as ``gt_*`` variables; ``ground_truth(ds)`` returns it without the
prefix, ``mean_response(params, images, xp)`` evaluates the noise-free population with numpy
or jax.numpy (so it can be differentiated), and ``respond`` shows new images to the animal.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from twin import metrics
from twin.data.schema import make_session, strings, unit_ids
from twin.errors import ConfigError, SessionError

GRAY = 128.0
KINDS = ("simple", "complex", "simple_normalized", "complex_normalized")
KIND_FRACTIONS = (0.4, 0.3, 0.15, 0.15)
# Largest deviation from gray of a stored optimal stimulus (pixel units): it stays in 3..253.
OPTIMAL_PEAK = 125.0
# Half-saturation constant c50 drawn uniformly in this range times the neuron's strongest drive
# over the training images: the optimal stimulus then evokes about 1.7x the best natural response.
C50_OVER_BEST_NATURAL = (1.5, 3.0)
# Mean of one calcium event in units of the neuron's mean response to natural images, and the
# gamma shape of event sizes; together they set the noise level (oracle correlations about
# 0.5-0.8 at 10 repeats).
EVENT_SIZE = 0.8
EVENT_SHAPE = 2.0
# Standard deviation of the log trial gain that follows running speed.
GAIN_SD = 0.25
# Colour: opponent components (luminance, red-green, blue-yellow) -> (R, G, B), where luminance is
# the mean of R, G, B, red-green R - G and blue-yellow B - (R + G) / 2; the colour components'
# contrast relative to luminance (natural scenes vary less in colour than in brightness).
OPPONENT_TO_RGB = np.array([[1.0, 0.5, -1 / 3], [1.0, -0.5, -1 / 3], [1.0, 0.0, 2 / 3]])
OPPONENT_CONTRAST = np.array([1.0, 0.5, 0.4])
# Colour tuning of the neurons: unit-norm weights over (R, G, B), and their fractions.
COLOURS = {
    "luminance": np.array([1.0, 1.0, 1.0]) / np.sqrt(3),
    "red_green": np.array([1.0, -1.0, 0.0]) / np.sqrt(2),
    "blue_yellow": np.array([-0.5, -0.5, 1.0]) / np.sqrt(1.5),
}
COLOUR_FRACTIONS = (0.5, 0.25, 0.25)
# Functional types (``types``): each neuron's deviation from its type's prototype, as standard
# deviations of orientation and phase (radians), of the log of size and wavelength, and of the
# centre position (pixels at 36x64, scaled with the image height).
TYPE_JITTER = {"orientation": 0.08, "phase": 0.3, "log_size": 0.05, "position": 1.0}


def pink_spectrum(lead: tuple[int, ...], size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random spectra (*lead, y, x // 2 + 1) complex with amplitude 1/f (spatial frequency f) and
    no mean: ``np.fft.irfft2(spectrum, s=size)`` is 1/f noise, periodic in y and x."""
    height, width = size
    f = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    f[0, 0] = np.inf
    shape = (*lead, *f.shape)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / f


def natural_images(n: int, size: tuple[int, int], rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Natural-like images (n, y, x) uint8, or (n, 3, y, x) RGB for ``channels`` 3: dead leaves
    (edges) + 1/f texture, mean near 128 (see the module doc for colour)."""
    height, width = size
    components = 1 if channels == 1 else 3  # luminance [, red-green, blue-yellow]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    leaves = np.broadcast_to(
        rng.normal(0, 1, (n, components, 1, 1)), (n, components, height, width)
    ).astype(np.float32)
    # Disk radii with density ~ r^-3 between r_min and r_max (scale-invariant dead leaves).
    r_min, r_max = 0.05 * height, 0.8 * height
    for _ in range(24):
        u = rng.uniform(0, 1, (n, 1, 1, 1))
        radius = 1 / np.sqrt(r_min**-2 - u * (r_min**-2 - r_max**-2))
        cy = rng.uniform(0, height, (n, 1, 1, 1))
        cx = rng.uniform(0, width, (n, 1, 1, 1))
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        leaves = np.where(inside, rng.normal(0, 1, (n, components, 1, 1)).astype(np.float32), leaves)
    texture = np.fft.irfft2(pink_spectrum((n, components), size, rng), s=size)

    def standardize(a):
        a = a - a.mean(axis=(2, 3), keepdims=True)
        return a / (a.std(axis=(2, 3), keepdims=True) + 1e-6)

    scene = standardize(standardize(leaves) + 0.5 * standardize(texture))
    contrast = rng.uniform(15, 40, (n, 1, 1))
    luminance = GRAY + rng.normal(0, 8, (n, 1, 1))
    if channels == 1:
        image = luminance + contrast * scene[:, 0]
    else:
        opponent = contrast[:, None] * scene * OPPONENT_CONTRAST[:, None, None]
        opponent[:, 0] += luminance
        image = np.einsum("ck,nkyx->ncyx", OPPONENT_TO_RGB, opponent)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def gabors(n_neurons: int, size: tuple[int, int], rng: np.random.Generator) -> dict:
    """Receptive-field parameters and unit-norm quadrature filters, each (neuron, y, x)."""
    height, width = size
    scale = height / 36
    # Mouse V1 at the Sensorium scale (~2 degrees per pixel at 36x64): receptive fields 10-20
    # degrees wide, preferred wavelengths 15-35 degrees; centres cover the middle of the screen.
    sigma = rng.uniform(2.5, 4.5, n_neurons) * scale
    p = {
        "sigma": sigma,
        "x": rng.uniform(0.15, 0.85, n_neurons) * (width - 1),
        "y": rng.uniform(0.2, 0.8, n_neurons) * (height - 1),
        "orientation": rng.uniform(0, np.pi, n_neurons),
        "wavelength": rng.uniform(2.8, 4.0, n_neurons) * sigma,
        "phase": rng.uniform(0, 2 * np.pi, n_neurons),
        "aspect": rng.uniform(0.6, 1.0, n_neurons),
    }
    return p | gabor_filters(p, size)


def typed_gabors(n_neurons: int, types: int, size: tuple[int, int], rng: np.random.Generator) -> dict:
    """Receptive fields of ``types`` functional types (``gabors``' layout plus ``type`` (neuron,)
    int): each type is a prototype (orientation, phase, size, wavelength, aspect; orientations
    evenly spaced over 180 degrees) and its neurons are copies with small jitter (TYPE_JITTER),
    all centred in one region in the middle of the screen. Neurons are dealt to the types in turn
    and shuffled, so type sizes differ by at most one."""
    height, width = size
    scale = height / 36
    type_of = rng.permutation(np.arange(n_neurons) % types)
    proto_sigma = rng.uniform(2.5, 4.5, types) * scale
    proto = {
        "sigma": proto_sigma,
        "orientation": rng.uniform(0, np.pi) + np.pi * np.arange(types) / types,
        "wavelength": rng.uniform(2.8, 4.0, types) * proto_sigma,
        "phase": rng.uniform(0, 2 * np.pi, types),
        "aspect": rng.uniform(0.6, 1.0, types),
    }
    jitter = TYPE_JITTER
    p = {
        "sigma": proto["sigma"][type_of] * np.exp(rng.normal(0, jitter["log_size"], n_neurons)),
        "x": 0.5 * (width - 1) + rng.normal(0, jitter["position"] * scale, n_neurons),
        "y": 0.5 * (height - 1) + rng.normal(0, jitter["position"] * scale, n_neurons),
        "orientation": (proto["orientation"][type_of] + rng.normal(0, jitter["orientation"], n_neurons)) % np.pi,
        "wavelength": proto["wavelength"][type_of] * np.exp(rng.normal(0, jitter["log_size"], n_neurons)),
        "phase": proto["phase"][type_of] + rng.normal(0, jitter["phase"], n_neurons),
        "aspect": np.clip(proto["aspect"][type_of] + rng.normal(0, 0.05, n_neurons), 0.5, 1.0),
    }
    return p | gabor_filters(p, size) | {"type": type_of}


def gabor_filters(p: dict, size: tuple[int, int]) -> dict:
    """Unit-norm quadrature filters and the surround ring (neuron, y, x) of receptive-field
    parameters ``p`` (sigma, x, y, orientation, wavelength, phase, aspect; each (neuron,))."""
    height, width = size
    sigma = p["sigma"]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = xx - p["x"][:, None, None]
    dy = yy - p["y"][:, None, None]
    cos, sin = np.cos(p["orientation"])[:, None, None], np.sin(p["orientation"])[:, None, None]
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    s = sigma[:, None, None]
    envelope = np.exp(-(along**2 + (p["aspect"][:, None, None] * across) ** 2) / (2 * s**2))
    angle = 2 * np.pi * along / p["wavelength"][:, None, None] + p["phase"][:, None, None]

    def zero_mean(f):  # remove the response to mean luminance, keeping the filter local
        weight = f.sum(axis=(1, 2), keepdims=True) / envelope.sum(axis=(1, 2), keepdims=True)
        return f - envelope * weight

    def dot(a, b):
        return (a * b).sum(axis=(1, 2), keepdims=True)

    even = zero_mean(envelope * np.cos(angle))
    odd = zero_mean(envelope * np.sin(angle))
    # An exact quadrature pair (orthogonal, equal norm) makes every phase equally optimal.
    odd = odd - even * dot(odd, even) / dot(even, even)
    odd = odd * np.sqrt(dot(even, even) / dot(odd, odd))
    norm = np.sqrt(dot(even, even))
    # Surround: Gaussian ring around the receptive field, weights summing to 1.
    r2 = dx**2 + dy**2
    ring = np.clip(np.exp(-r2 / (2 * (2.5 * s) ** 2)) - np.exp(-r2 / (2 * s**2)), 0, None)
    return {
        "filter_even": (even / norm).astype(np.float32),
        "filter_odd": (odd / norm).astype(np.float32),
        "surround": (ring / ring.sum(axis=(1, 2), keepdims=True)).astype(np.float32),
    }


def surround_energy(params: dict, images, xp=np):
    """Contrast energy (n, neurons) in each neuron's surround of images (n, [channel,] y, x) in
    pixel units: x^2 (averaged over channels) weighted by the surround."""
    x = (xp.asarray(images, dtype=xp.float32) - GRAY) / GRAY
    power = x**2 if x.ndim == 3 else (x**2).mean(axis=1)
    n_neurons = params["surround"].shape[0]
    return power.reshape(power.shape[0], -1) @ xp.asarray(params["surround"]).reshape(n_neurons, -1).T


def drive(params: dict, images, xp=np):
    """Normalized drive g (n, neurons) of images (n, y, x), or (n, channel, y, x) for colour
    neurons, in pixel units; see the module doc."""
    x = (xp.asarray(images, dtype=xp.float32) - GRAY) / GRAY
    x = x.reshape(x.shape[0], -1)
    n_neurons = params["filter_even"].shape[0]
    even = x @ xp.asarray(params["filter_even"]).reshape(n_neurons, -1).T
    odd = x @ xp.asarray(params["filter_odd"]).reshape(n_neurons, -1).T
    is_complex = xp.asarray(params["complex"])
    energy = is_complex * (even**2 + odd**2) + (1 - is_complex) * xp.maximum(even, 0.0) ** 2
    surround = surround_energy(params, images, xp)
    return energy / (1.0 + xp.asarray(params["norm_weight"]) * surround)


def mean_response(params: dict, images, xp=np):
    """Noise-free responses (n, neurons) to images (n, [channel,] y, x) in pixel units 0..255.

    ``params`` is ``ground_truth(ds)``; ``xp`` is numpy or jax.numpy (only array operations both
    provide, so ``jax.grad`` goes through it with xp=jax.numpy). For a video animal images are
    videos (n, frame, y, x) and the result is (n, frame, neuron), at the mean behavior
    (twin.data.simulate_video.mean_response).
    """
    if is_video_animal(params):
        from twin.data import simulate_video

        return simulate_video.mean_response(params, images, xp)
    g = drive(params, images, xp)
    c50 = xp.asarray(params["c50"])
    return xp.asarray(params["baseline"]) + xp.asarray(params["rmax"]) * g / (g + c50)


def draw_behavior(n: int, rng: np.random.Generator):
    """Per-trial standard normal state z (n,), behavior (n, 3) and pupil_center (n, 2).

    Running speed rises with z, pupil follows it loosely; z sets the trial gain.
    """
    z = rng.normal(size=n)
    running = 5 * np.logaddexp(0, 2 * z)
    pupil = 20 + 3 * z + rng.normal(0, 2, n)
    behavior = np.stack([pupil, rng.normal(0, 1, n), running], axis=1)
    pupil_center = rng.normal(0, 1.5, (n, 2)) + [32.0, 18.0]
    return z, behavior.astype(np.float32), pupil_center.astype(np.float32)


def noisy_responses(params: dict, mean: np.ndarray, z: np.ndarray, rng: np.random.Generator):
    """Trial responses (..., neurons) with mean ``mean`` (..., neurons) and trial states z (...).

    Compound Poisson-gamma: events ~ Poisson(gain * mean / event_size), each of gamma size
    (shape EVENT_SHAPE, mean event_size); gain = exp(GAIN_SD * z - GAIN_SD^2 / 2) has mean 1.
    """
    sd = float(params["gain_sd"])
    gain = np.exp(sd * z - sd**2 / 2)[..., None]
    return calcium_events(gain * mean, params["event_size"], params["event_shape"], rng)


def calcium_events(mean: np.ndarray, size, shape, rng: np.random.Generator) -> np.ndarray:
    """Compound Poisson-gamma draws (...) float32 with mean ``mean`` (...): events ~
    Poisson(mean / size), each of gamma size (shape ``shape``, mean ``size``, broadcast to mean)."""
    size = np.asarray(size)
    shape = float(shape)
    events = rng.poisson(mean / size)
    amounts = rng.gamma(np.maximum(events, 1) * shape, size / shape)
    return np.where(events > 0, amounts, 0.0).astype(np.float32)


def population(
    n_neurons: int,
    size: tuple[int, int],
    train_images: np.ndarray,
    rng: np.random.Generator,
    channels: int = 1,
    types: int = 0,
) -> dict:
    """Ground-truth parameters of ``n_neurons`` neurons drawn from the population's statistics
    (kinds in KIND_FRACTIONS, colours in COLOUR_FRACTIONS, receptive fields as in ``gabors``);
    surround weights and c50 are scaled on ``train_images`` (n, [channel,] y, x). Arrays are
    (neuron, ...). ``types`` > 0 draws that many functional types instead (``typed_gabors``):
    type t has kind KINDS[t % 4] and colour t % 3 of COLOURS, and ``type`` (neuron,) is stored."""
    if types:
        params = typed_gabors(n_neurons, types, size, rng)
        kind = np.array(KINDS)[params["type"] % len(KINDS)]
    else:
        params = gabors(n_neurons, size, rng)
        counts = np.floor(np.array(KIND_FRACTIONS) * n_neurons).astype(int)
        counts[0] += n_neurons - counts.sum()
        kind = rng.permutation(np.repeat(np.array(KINDS), counts))
    params["kind"] = kind
    params["complex"] = np.char.startswith(kind, "complex").astype(np.float32)
    normalized = np.char.endswith(kind, "normalized")
    if channels == 3:
        if types:
            colour = np.array(list(COLOURS))[params["type"] % len(COLOURS)]
        else:
            counts = np.floor(np.array(COLOUR_FRACTIONS) * n_neurons).astype(int)
            counts[0] += n_neurons - counts.sum()
            colour = rng.permutation(np.repeat(np.array(list(COLOURS)), counts))
        weights = np.stack([COLOURS[c] for c in colour]).astype(np.float32)
        params["colour"] = colour
        params["colour_weights"] = weights
        for name in ("filter_even", "filter_odd"):
            params[name] = weights[:, :, None, None] * params[name][:, None]
    surround = surround_energy(params, train_images)
    weight = rng.uniform(1.0, 4.0, n_neurons) / np.maximum(np.median(surround, axis=0), 1e-6)
    params["norm_weight"] = np.where(normalized, weight, 0.0).astype(np.float32)
    # Half-saturation above the strongest natural drive: natural images use the expansive part
    # of the curve and leave headroom, so a better stimulus can drive a neuron harder (as MEIs
    # do in vivo) instead of meeting a ceiling the best natural image already reaches.
    g = drive(params, train_images)
    c50 = np.maximum(g.max(axis=0), 1e-6) * rng.uniform(*C50_OVER_BEST_NATURAL, n_neurons)
    params["c50"] = c50.astype(np.float32)
    params["rmax"] = np.exp(rng.normal(0, 0.4, n_neurons)).astype(np.float32)
    natural_mean = params["rmax"] * (g / (g + c50)).mean(axis=0)
    params["baseline"] = (0.02 * natural_mean).astype(np.float32)
    params["event_size"] = (EVENT_SIZE * natural_mean).astype(np.float32)
    params["event_shape"] = np.float32(EVENT_SHAPE)
    params["gain_sd"] = np.float32(GAIN_SD)
    # Under a fixed L2 norm the even Gabor is the optimum of simple and complex cells (their
    # drive grows with the projection on the unit-norm filters); each neuron's norm is the largest
    # that keeps its Gabor inside the pixel range. Normalized cells have no closed form: NaN.
    image_axes = tuple(range(1, params["filter_even"].ndim))
    params["optimal_norm"] = OPTIMAL_PEAK / np.abs(params["filter_even"]).max(axis=image_axes)
    per_image = (-1,) + (1,) * len(image_axes)
    gabor = GRAY + params["optimal_norm"].reshape(per_image) * params["filter_even"]
    params["optimal_stimulus"] = np.where(~normalized.reshape(per_image), gabor, np.nan)
    return params


def trial_plan(n_train: int, n_test: int, repeats: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image_id, tier), each (trial,), of a session showing ``n_train`` stimuli once each (10% of
    them validation) and ``n_test`` stimuli ``repeats`` times each, in random order. Ids are
    0..n_train-1 for the train stimuli, then one per test stimulus: indices into the train and
    test stimuli concatenated."""
    n_validation = max(1, n_train // 10) if n_train >= 10 else 0
    image_tier = rng.permutation(np.array(["validation"] * n_validation + ["train"] * (n_train - n_validation)))
    image_id = np.concatenate([np.arange(n_train), np.repeat(np.arange(n_test) + n_train, repeats)])
    tier = np.concatenate([image_tier, np.full(n_test * repeats, "test")])
    order = rng.permutation(len(image_id))
    return image_id[order], tier[order]


def recording(
    params: dict, train_images: np.ndarray, test_images: np.ndarray, repeats: int, rng: np.random.Generator
) -> dict:
    """The trials of a session: train images once each (10% of them validation), test images
    ``repeats`` times each, in random order, with behavior and noisy responses.

    Returns {images (trial, [channel,] y, x), responses (trial, neuron), tier, image_id (trial,),
    behavior (trial, 3), pupil_center (trial, 2)}; image ids are 0.. for the train images in
    their given order, then one per test image.
    """
    image_id, tier = trial_plan(len(train_images), len(test_images), repeats, rng)
    images = np.concatenate([train_images, test_images])[image_id]
    mean = mean_response(params, images)
    z, behavior, pupil_center = draw_behavior(len(images), rng)
    responses = noisy_responses(params, mean, z, rng)
    return {
        "images": images,
        "responses": responses,
        "tier": tier,
        "image_id": image_id,
        "behavior": behavior,
        "pupil_center": pupil_center,
    }


def retinotopic_positions(params: dict, rng: np.random.Generator) -> np.ndarray:
    """Cortical positions (neuron, 3) in µm: x, y follow the receptive-field centre (10 µm per
    pixel, 15 µm scatter), depth z is uniform in 200..400."""
    n_neurons = len(params["x"])
    return np.stack(
        [
            10 * params["x"] + rng.normal(0, 15, n_neurons),
            10 * params["y"] + rng.normal(0, 15, n_neurons),
            rng.uniform(200, 400, n_neurons),
        ],
        axis=1,
    )


NEURON_DIMS = {
    0: (),
    1: ("neuron",),
    2: ("neuron", "channel"),
    3: ("neuron", "y", "x"),
    4: ("neuron", "channel", "y", "x"),
}


def to_session(
    params: dict, trials: dict, cell_xyz: np.ndarray, attrs: dict, unit_id=None, dims: dict = NEURON_DIMS
) -> xr.Dataset:
    """A validated session from ``recording``'s trials, positions (neuron, 3) and the ground
    truth ``params`` (stored as ``gt_*`` variables with ``dims`` by number of dimensions); unit
    ids default to 0..n-1."""
    ds = make_session("simulate", **trials, cell_xyz=cell_xyz, unit_id=unit_id, attrs={"simulated": True, **attrs})
    for name, value in params.items():
        value = np.asarray(value)
        if value.dtype.kind == "U":
            value = value.astype(object)
        elif value.dtype.kind == "f":
            value = value.astype(np.float32)
        ds[f"gt_{name}"] = (dims[value.ndim], value)
    return ds


def animal_rng(seed: int, animal: int) -> np.random.Generator:
    """The random stream of simulated animal ``animal`` (1, 2, ...) of ``seed``: animal 1 is the
    single animal of that seed, so `twin simulate --seed S` and animal 1 of `--animals K` agree."""
    return np.random.default_rng(seed if animal == 1 else [seed, animal])


def simulate(
    n_neurons: int,
    n_train_images: int,
    n_test_images: int,
    repeats: int,
    size: tuple[int, int] = (36, 64),
    seed: int = 0,
    channels: int = 1,
    animal: int = 1,
    types: int = 0,
) -> xr.Dataset:
    """A session of the simulated animal, with ground truth as ``gt_*`` variables.

    ``channels`` 1 gives gray images (trial, y, x); 3 gives RGB images (trial, channel, y, x)
    and a population of luminance and colour-opponent neurons (see the module doc).

    ``n_train_images`` images are shown once each; 10% of them form the validation tier.
    ``n_test_images`` images are shown ``repeats`` times each (tier test). Trials are in random
    order. Returns a validated session Dataset (write it with ``write_session``).

    ``animal`` (1, 2, ...) picks one of several animals of the same seed (``animal_rng``): each
    has its own images, neurons, positions and noise, drawn from the same statistics (kinds of
    cells, receptive-field sizes, gains), so a core fitted on some transfers to the others.

    ``types`` > 0 draws a population of that many functional types (``typed_gabors``; the true
    type of each neuron is ``gt_type``) instead of independent receptive fields.
    """
    for name, value, least in (
        ("--neurons", n_neurons, 1),
        ("--train-images", n_train_images, 2),
        ("--test-images", n_test_images, 1),
        ("--repeats", repeats, 1),
        ("--animals", animal, 1),
        ("--types", types, 0),
    ):
        if value < least:
            raise ConfigError(f"simulate: {name} {value}: give at least {least}")
    if types > n_neurons:
        raise ConfigError(f"simulate: --types {types}: more types than the {n_neurons} neurons; give at most {n_neurons}")
    if channels not in (1, 3):
        raise ConfigError(f"simulate: --channels {channels}: give 1 (gray) or 3 (RGB)")
    rng = animal_rng(seed, animal)
    train_images = natural_images(n_train_images, size, rng, channels)
    test_images = natural_images(n_test_images, size, rng, channels)
    params = population(n_neurons, size, train_images, rng, channels, types)
    trials = recording(params, train_images, test_images, repeats, rng)
    cell_xyz = retinotopic_positions(params, rng)
    attrs = {"source": f"twin simulate seed {seed}", "animal": "simulated", "seed": seed}
    if animal > 1:
        attrs |= {"source": f"twin simulate seed {seed} animal {animal}", "animal": f"simulated {animal}"}
    return to_session(params, trials, cell_xyz, attrs)


# Day 2 of the same field of view (``day2``): a rigid shift of the field of view (µm; its length
# in x-y uniform in this range, in a random direction, and a small shift in depth), each cell's
# own jitter (µm, per axis), the fraction of day-1 cells lost and of day-1's count newly found,
# and the drift of each kept cell's response gain (standard deviation of its log).
DAY2_SHIFT_UM = (20.0, 50.0)
DAY2_DEPTH_SHIFT_SD = 3.0
DAY2_JITTER_UM = 2.0
DAY2_LOST = 0.15
DAY2_NEW = 0.10
DAY2_GAIN_SD = 0.2


def day1_layout(day1: xr.Dataset, source=None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(positions (neuron, 3) µm, test images (image, [channel,] y, x), their repeats, number of
    train + validation images) of a day-1 session; ``source`` names it in errors."""
    source = source or day1.attrs.get("session", "day-1 session")
    if not all(f"cell_{axis}" in day1 for axis in "xyz"):
        raise SessionError(f"{source}: no cell positions (cell_x, cell_y, cell_z); day 2 shifts them, so simulate day 1 with twin simulate")
    xyz = np.stack([np.asarray(day1[f"cell_{axis}"].values, np.float64) for axis in "xyz"], axis=1)
    for axis, values in zip("xyz", xyz.T):
        if not np.isfinite(values).all():
            raise SessionError(f"{source}: variable 'cell_{axis}' holds NaN or inf; day 2 shifts the positions, so write day 1 again with twin simulate")
    tier = strings(day1["tier"].values)
    image_id = np.asarray(day1["image_id"].values)
    test = np.flatnonzero(tier == "test")
    ids, first, counts = np.unique(image_id[test], return_index=True, return_counts=True)
    test_images = np.asarray(day1["images"][test[first]].values)
    n_train = len(np.unique(image_id[np.isin(tier, ("train", "validation"))]))
    return xyz, test_images, int(np.median(counts)), n_train


def day2(day1: xr.Dataset, seed: int = 0, source=None) -> xr.Dataset:
    """Day 2 of the simulated session ``day1``: the same field of view imaged again.

    The field of view moves rigidly (``DAY2_SHIFT_UM`` in x-y, ``DAY2_DEPTH_SHIFT_SD`` in depth)
    and each cell by its own jitter (``DAY2_JITTER_UM``); a fraction ``DAY2_LOST`` of the cells
    is lost and ``DAY2_NEW`` (of day 1's count) new cells appear, drawn like the others at
    retinotopic positions; each kept cell's response gain (rmax, baseline and event size) is
    multiplied by a lognormal (``DAY2_GAIN_SD``). Day 2 shows new train images (as many as day 1)
    and day 1's test images again (same pixels and repeats, other image ids), so both days hold
    responses to shared images. Neurons come in random order with unit ids 0..n-1 that say
    nothing of day 1; the answer is ``gt_day1_unit`` (neuron,): the day-1 unit id of each day-2
    unit, -1 ("" for string ids) for a new cell, and ``attrs["gt_shift_um"]`` the rigid shift
    (x, y, z) added to day-1 positions. ``source`` (the day-1 store's path) names it in errors.
    Returns a validated session like ``simulate``'s. Sessions simulated with functional types
    (``gt_type``) have no day 2: new cells would belong to no type.
    """
    truth = ground_truth(day1, source)
    if "type" in truth:
        raise ConfigError(
            f"{source or 'day 1'}: simulated with --types, which day 2 does not support; simulate day 1"
            " without --types"
        )
    xyz1, test_images, repeats, n_train = day1_layout(day1, source)
    ids1 = unit_ids(day1["unit_id"].values)
    n1 = len(ids1)
    size = tuple(int(n) for n in day1["images"].shape[-2:])
    channels = 3 if day1["images"].ndim == 4 else 1
    rng = np.random.default_rng([seed, int(day1.attrs.get("seed", 0)), 2])
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(*DAY2_SHIFT_UM)
    shift = np.array([length * np.cos(angle), length * np.sin(angle), rng.normal(0, DAY2_DEPTH_SHIFT_SD)])
    kept = np.sort(rng.permutation(n1)[: n1 - int(round(DAY2_LOST * n1))])
    n_new = int(round(DAY2_NEW * n1))
    train_images = natural_images(n_train, size, rng, channels)

    per_neuron = {k: v for k, v in truth.items() if v.ndim >= 1 and k != "day1_unit"}
    params = {k: v[kept] for k, v in per_neuron.items()}
    drift = np.exp(rng.normal(0, DAY2_GAIN_SD, len(kept)))
    for name in ("rmax", "baseline", "event_size"):
        params[name] = params[name] * drift
    xyz = xyz1[kept] + rng.normal(0, DAY2_JITTER_UM, (len(kept), 3))
    day1_unit = ids1[kept]
    if n_new:
        new = population(n_new, size, train_images, rng, channels)
        params = {k: np.concatenate([v, np.asarray(new[k], v.dtype)]) for k, v in params.items()}
        xyz = np.concatenate([xyz, retinotopic_positions(new, rng)])
        day1_unit = np.concatenate([day1_unit, np.full(n_new, "" if ids1.dtype.kind == "U" else -1, ids1.dtype)])
    order = rng.permutation(len(xyz))
    params = {k: v[order] for k, v in params.items()} | {k: v for k, v in truth.items() if v.ndim == 0}
    params["day1_unit"] = day1_unit[order]
    trials = recording(params, train_images, test_images[rng.permutation(len(test_images))], repeats, rng)
    session = day1.attrs.get("session", "day 1")
    attrs = {
        "source": f"twin simulate --day2-of {session} --seed {seed}",
        "animal": day1.attrs.get("animal", "simulated"),
        "seed": seed,
        "day": 2,
        "gt_shift_um": [float(v) for v in shift],
    }
    return to_session(params, trials, xyz[order] + shift, attrs)


def ground_truth(ds: xr.Dataset, source=None) -> dict[str, np.ndarray]:
    """The ground-truth parameters of a simulated session: {name without 'gt_': array};
    ``source`` (its path) names it in errors."""
    names = [str(n) for n in ds.variables if str(n).startswith("gt_")]
    if not names:
        raise SessionError(
            f"{source or ds.attrs.get('session', 'session')}: no gt_* variables; this is not a simulated"
            " session (write one with twin simulate)"
        )
    return {name[3:]: np.asarray(ds[name].values) for name in names}


def is_video_animal(params: dict) -> bool:
    """True for the ground truth of a video animal (spatio-temporal receptive fields)."""
    return "temporal_even" in params


def respond(session_or_params, images, repeats: int = 1, seed: int = 0):
    """Show images (n, y, x) in pixel units to the simulated animal; (n, 3, y, x) to a colour one.

    ``session_or_params`` is a simulated session (Dataset) or ``ground_truth(ds)``. Returns
    (mean (n, neurons) noise-free, noisy (repeats, n, neurons)) float32; each noisy trial draws
    its own behavioral state. A video animal takes videos (n, frame, y, x) and returns (n, frame,
    neurons) and (repeats, n, frame, neurons), at the mean behavior
    (twin.data.simulate_video.respond).
    """
    params = (
        ground_truth(session_or_params)
        if isinstance(session_or_params, xr.Dataset)
        else session_or_params
    )
    if is_video_animal(params):
        from twin.data import simulate_video

        return simulate_video.respond(params, images, repeats, seed)
    images = np.asarray(images)
    image_shape = params["filter_even"].shape[1:]
    if images.shape[1:] != image_shape or images.ndim != len(image_shape) + 1:
        raise SessionError(
            f"respond: images have shape {images.shape}; give (n, {', '.join(map(str, image_shape))})"
            " in pixel units"
        )
    rng = np.random.default_rng(seed)
    mean = mean_response(params, images).astype(np.float32)
    z = rng.normal(size=(repeats, len(images)))
    return mean, noisy_responses(params, mean[None], z, rng)


def ground_truth_ceiling(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Scores (neuron,) of the noise-free responses against the recorded test tier (twin.metrics):
    the best a perfect twin can do on this session. Keys: single_trial_correlation,
    correlation_to_average and, with repeats, feve. Video sessions are scored per frame
    (twin.data.simulate_video.ground_truth_ceiling)."""
    if "frame" in ds["images"].dims:
        from twin.data import simulate_video

        return simulate_video.ground_truth_ceiling(ds)
    test = ds.isel(trial=np.flatnonzero(strings(ds["tier"].values) == "test"))
    images = np.asarray(test["images"].values)
    predictions = mean_response(ground_truth(ds), images)
    # Neurons silent on every test trial score NaN; tiny sessions have some.
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = metrics.score(test["responses"].values, predictions, test["image_id"].values)
    scores.pop("oracle_correlation", None)
    return scores
