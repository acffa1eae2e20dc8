"""The simulated animal watching videos: natural-like movies and a population of spatio-temporal
receptive fields with known parameters (the video mode of twin.data.simulate).

Movies are shots of 1/f texture (``pink_spectrum``, periodic in y and x) cut every SHOT_SECONDS.
Within a shot the texture drifts at a random speed and direction and flows: each Fourier
component's phase also diffuses, faster at higher spatial frequency, so the texture deforms
instead of only translating. Pixel units 0..255 around a mean gray of 128, at FRAME_RATE.

Every neuron has the image animal's spatial Gabor quadrature pair (``gabors``: even, odd) and a
temporal pair (``temporal_kernels``), KERNEL_SECONDS long at the frame rate: the fast, biphasic
kernel of Adelson & Bergen (1985) and the same kernel delayed by a quarter period of its preferred
temporal frequency (``gt_temporal_frequency``), in quadrature with it there. With x_even(t) and x_odd(t) the
projections of frame t on the spatial pair and * a causal convolution over frames, the linear
outputs are

    a = t_even * x_even - w t_odd * x_odd,    b = t_even * x_odd + w t_odd * x_even.

w = 0 gives a space-time separable cell; w != 0 adds a second separable component in quadrature,
so the sum is oriented in space-time and prefers motion along +(cos θ, sin θ) in (x, row) of the
Gabor's orientation θ for w > 0, the opposite way for w < 0 (|w| in DIRECTION_WEIGHT: how
selective). Kinds: ``separable_simple`` relu(a)^2, ``separable_complex`` a^2 + b^2 (energy),
``direction_simple`` and ``direction_complex`` the same with w != 0 (``gt_direction_selective``).
Directions (``gt_preferred_direction``) are degrees on the screen: 0 moves rightward, 90 upward
(toward row 0); for separable cells it is one of the two directions across the preferred
orientation (meaningful modulo 180).

The drive g adapts: h(t) = g(t) / (1 + k A(t)), A(t) the exponentially filtered amplitude sqrt(g)
of the frames before t (time constant ``gt_adaptation_tau``, 0.5-1 s). The rate r = baseline + rmax h /
(h + c50) is multiplied by a gain exp(running_gain * running' + pupil_gain * pupil') of the
standardized behavior of that frame, 1 at the mean behavior (BEHAVIOR_MEAN). Recorded responses
are calcium-like: compound Poisson-gamma events per frame with mean gain * r (as in the image
animal), summed with an exponential decay (CALCIUM_TAU_S), plus additive exponential noise; the
noise-free response (``mean_response``) is their expectation.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from twin import metrics
from twin.data.schema import strings
from twin.data.simulate import (
    GRAY,
    NEURON_DIMS,
    animal_rng,
    calcium_events,
    gabors,
    ground_truth,
    pink_spectrum,
    retinotopic_positions,
    to_session,
    trial_plan,
)
from twin.errors import ConfigError, SessionError

FRAME_RATE = 30.0
KINDS = ("separable_simple", "separable_complex", "direction_simple", "direction_complex")
KIND_FRACTIONS = (0.3, 0.3, 0.2, 0.2)
# Movies: shot lengths (s) between cuts; the largest drift speed and flow (pixels per second and
# pixels per square root of a second, at a height of 36 pixels, scaled with the height).
SHOT_SECONDS = (1.0, 3.0)
MAX_SPEED = 60.0
MAX_FLOW = 1.0
# Temporal kernels: length (s), the rate k (1/s) and the weight beta of the negative lobe of the
# Adelson-Bergen kernel (``temporal_kernels``): preferred temporal frequencies of about 3-5 Hz.
KERNEL_SECONDS = 0.35
TEMPORAL_SCALE = (40.0, 70.0)
TEMPORAL_BETA = (0.8, 1.0)
DIRECTION_WEIGHT = (0.3, 1.0)
ADAPTATION_TAU_S = (0.5, 1.0)
# Adaptation strength k times the neuron's mean amplitude (square root of the drive) on the
# training movies: a sustained drive of that amplitude is divided by 1.5-2.5 once adapted. Dividing
# by the amplitude rather than the drive keeps stronger stimuli driving stronger adapted responses
# (h grows as sqrt(g)), so direction and orientation tuning survive adaptation.
ADAPTATION_STRENGTH = (0.5, 1.5)
C50_OVER_BEST_NATURAL = (1.5, 3.0)
# Calcium-like noise: event size in units of the neuron's mean rate on natural movies, gamma shape
# of event sizes, decay time constant (s), and the mean of the additive noise in units of the mean
# noise-free trace.
EVENT_SIZE = 20.0
EVENT_SHAPE = 2.0
CALCIUM_TAU_S = 0.1
ADDITIVE_NOISE = 0.5
# Behavior: an arousal state (standard normal, correlation time AROUSAL_TAU_S) sets the running
# speed and, with a slower independent part, the pupil; per-neuron log-gain weights of
# standardized running and pupil (mean, sd over neurons).
AROUSAL_TAU_S = 2.0
PUPIL_TAU_S = 4.0
PUPIL_MEAN, PUPIL_SD = 20.0, 3.0
RUNNING_GAIN = (0.3, 0.15)
PUPIL_GAIN = (0.1, 0.1)
NEURON_DIMS_VIDEO = NEURON_DIMS | {2: ("neuron", "lag")}


def running_speed(arousal):
    """Running speed (cm/s) at arousal state ``arousal`` (standard normal)."""
    return 5 * np.logaddexp(0, 2 * arousal)


# Mean and standard deviation of running speed over the arousal state (Gauss-Hermite quadrature).
_nodes, _weights = np.polynomial.hermite_e.hermegauss(80)
_weights = _weights / _weights.sum()
RUNNING_MEAN = float(_weights @ running_speed(_nodes))
RUNNING_SD = float(np.sqrt(_weights @ (running_speed(_nodes) - RUNNING_MEAN) ** 2))
# Mean behavior (pupil, pupil_derivative, running): where every gain is 1.
BEHAVIOR_MEAN = np.array([PUPIL_MEAN, 0.0, RUNNING_MEAN], np.float32)


def shot(length: int, size: tuple[int, int], frame_rate: float, rng: np.random.Generator) -> np.ndarray:
    """One shot (length, y, x) float64 in pixel units: a drifting, flowing 1/f texture with its own
    speed, direction, flow, mean luminance and contrast."""
    height, width = size
    scale = height / 36
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    spectrum = pink_spectrum((), size, rng)
    speed = rng.uniform(0, MAX_SPEED) * scale / frame_rate  # pixels per frame
    direction = rng.uniform(0, 2 * np.pi)
    flow = rng.uniform(0, MAX_FLOW) * scale / np.sqrt(frame_rate)
    t = np.arange(length)[:, None, None]
    # Shifting by d multiplies the spectrum by exp(-2 pi i f.d); upward on the screen is -row.
    shift = -2j * np.pi * speed * t * (fx * np.cos(direction) - fy * np.sin(direction))
    steps = rng.normal(size=(length, *spectrum.shape))
    steps[0] = 0
    diffusion = 2j * np.pi * np.hypot(fy, fx) * flow * np.cumsum(steps, axis=0)
    frames = np.fft.irfft2(spectrum * np.exp(shift + diffusion), s=size)
    frames = (frames - frames.mean()) / (frames.std() + 1e-6)
    return GRAY + rng.normal(0, 8) + rng.uniform(15, 40) * frames


def natural_videos(
    n: int, frames: int, size: tuple[int, int], rng: np.random.Generator, frame_rate: float = FRAME_RATE
) -> np.ndarray:
    """Natural-like movies (n, frames, y, x) uint8: shots of drifting, flowing 1/f texture with a
    cut every SHOT_SECONDS (see the module doc)."""
    videos = np.empty((n, frames, *size), np.uint8)
    for video in videos:
        start = 0
        while start < frames:
            length = min(frames - start, max(1, int(round(rng.uniform(*SHOT_SECONDS) * frame_rate))))
            video[start : start + length] = np.clip(np.round(shot(length, size, frame_rate, rng)), 0, 255)
            start += length
    return videos


def drifting_gratings(
    directions, frames: int, size: tuple[int, int], wavelength: float, speed: float,
    frame_rate: float = FRAME_RATE, contrast: float = 30.0,
) -> np.ndarray:
    """Full-field sine gratings (direction, frames, y, x) float32 in pixel units, drifting in each
    of ``directions`` (degrees on the screen: 0 rightward, 90 upward) at ``speed`` pixels per
    second, with ``wavelength`` in pixels and ``contrast`` the amplitude around gray."""
    direction = np.radians(np.asarray(directions, np.float64))[:, None, None, None]
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    along = cols * np.cos(direction) - rows * np.sin(direction)
    t = np.arange(frames)[None, :, None, None] / frame_rate
    return (GRAY + contrast * np.cos(2 * np.pi * (along - speed * t) / wavelength)).astype(np.float32)


def temporal_kernels(scale: np.ndarray, beta: np.ndarray, frame_rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Temporal quadrature pair (neuron, lag), lag 0..KERNEL_SECONDS at ``frame_rate``, unit norm,
    and the preferred temporal frequency (neuron,) Hz. The even kernel is the fast, biphasic
    kernel of Adelson & Bergen (1985), (k t)^3 exp(-k t) (1 / 3! - beta (k t)^2 / 5!) with k =
    ``scale`` (neuron,) per second; the odd one is the same kernel delayed by a quarter period of
    the frequency it passes best (a lagged input), so the two are in quadrature there."""
    lags = np.arange(int(np.ceil(KERNEL_SECONDS * frame_rate)) + 1) / frame_rate

    def kernel(delay):
        s = np.maximum(scale[:, None] * (lags[None, :] - delay[:, None]), 0)
        k = s**3 * np.exp(-s) * (1 / 6 - beta[:, None] * s**2 / 120)
        with np.errstate(invalid="ignore"):  # 0 at every lag (too low a frame rate): NaN, refused by simulate
            return k / np.sqrt((k**2).sum(axis=1, keepdims=True))

    even = kernel(np.zeros_like(scale))
    frequency = np.linspace(0.25, frame_rate / 2, 400)
    passed = np.abs(np.exp(-2j * np.pi * frequency[:, None] * lags[None, :]) @ even.T)
    best = frequency[passed.argmax(axis=0)]
    return even.astype(np.float32), kernel(1 / (4 * best)).astype(np.float32), best.astype(np.float32)


def causal_filter(x, kernel, xp=np):
    """Per-neuron causal convolution over frames: x (n, frame, neuron), kernel (neuron, lag) ->
    (n, frame, neuron); output frame t sums kernel[lag] * x[t - lag] (zeros before frame 0)."""
    frames, lags = x.shape[1], kernel.shape[1]
    padded = xp.pad(x, ((0, 0), (lags - 1, 0), (0, 0)))
    return sum(kernel[:, lag] * padded[:, lags - 1 - lag : lags - 1 - lag + frames] for lag in range(lags))


def leaky_sum(x, decay, xp=np):
    """y[t] = decay * y[t - 1] + x[t] over frames (y[-1] = 0): x (n, frame, neuron), decay scalar
    or (neuron,). Computed by doubling: after the step with shift k, y[t] holds the sum of
    decay^j x[t - j] over j < 2k, so log2(frames) steps suffice."""
    shift, factor = 1, decay
    while shift < x.shape[1]:
        x = x + factor * xp.pad(x[:, :-shift], ((0, 0), (shift, 0), (0, 0)))
        shift, factor = 2 * shift, factor * factor
    return x


def drive(params: dict, videos, xp=np):
    """Energy drive g (n, frame, neuron) of videos (n, frame, y, x) in pixel units, before
    adaptation (see the module doc)."""
    n, frames = videos.shape[:2]
    x = (xp.asarray(videos, dtype=xp.float32) - GRAY) / GRAY
    x = x.reshape(n * frames, -1)
    n_neurons = params["filter_even"].shape[0]
    x_even = (x @ xp.asarray(params["filter_even"]).reshape(n_neurons, -1).T).reshape(n, frames, n_neurons)
    x_odd = (x @ xp.asarray(params["filter_odd"]).reshape(n_neurons, -1).T).reshape(n, frames, n_neurons)
    t_even, t_odd = xp.asarray(params["temporal_even"]), xp.asarray(params["temporal_odd"])
    w = xp.asarray(params["direction_weight"])
    a = causal_filter(x_even, t_even, xp) - w * causal_filter(x_odd, t_odd, xp)
    b = causal_filter(x_odd, t_even, xp) + w * causal_filter(x_even, t_odd, xp)
    is_complex = xp.asarray(params["complex"])
    return is_complex * (a**2 + b**2) + (1 - is_complex) * xp.maximum(a, 0.0) ** 2


def adapted(params: dict, g, xp=np):
    """Adapted drive h = g / (1 + k A) (n, frame, neuron) of the drive g (n, frame, neuron); A is
    the exponentially filtered amplitude sqrt(g) of the earlier frames, 0 at a trial's first frame."""
    decay = xp.asarray(np.exp(-1 / (np.asarray(params["adaptation_tau"]) * float(params["frame_rate"]))))
    filtered = (1 - decay) * leaky_sum(amplitude(g, xp), decay, xp)
    past = xp.concatenate([xp.zeros_like(g[:, :1]), filtered[:, :-1]], axis=1)
    return g / (1 + xp.asarray(params["adaptation_strength"]) * past)


def amplitude(g, xp=np):
    """sqrt(g), with a finite gradient at g = 0."""
    return xp.sqrt(g + 1e-6)


def behavior_gain(params: dict, behavior, xp=np):
    """Gain (n, frame, neuron) of behavior (n, frame, 3: pupil, pupil_derivative, running)."""
    behavior = xp.asarray(behavior, dtype=xp.float32)
    pupil = (behavior[..., 0:1] - PUPIL_MEAN) / PUPIL_SD
    running = (behavior[..., 2:3] - RUNNING_MEAN) / RUNNING_SD
    return xp.exp(xp.asarray(params["pupil_gain"]) * pupil + xp.asarray(params["running_gain"]) * running)


def rate(params: dict, videos, behavior=None, xp=np):
    """Expected calcium events per frame (n, frame, neuron) of videos (n, frame, y, x) in pixel
    units, with behavior (n, frame, 3) or, when None, the mean behavior (gain 1)."""
    h = adapted(params, drive(params, videos, xp), xp)
    c50 = xp.asarray(params["c50"])
    r = xp.asarray(params["baseline"]) + xp.asarray(params["rmax"]) * h / (h + c50)
    return r if behavior is None else r * behavior_gain(params, behavior, xp)


def calcium_decay(params: dict) -> float:
    """Fraction of the calcium trace left one frame later."""
    return float(np.exp(-1 / (float(params["calcium_tau"]) * float(params["frame_rate"]))))


def mean_response(params: dict, videos, xp=np, behavior=None):
    """Noise-free responses (n, frame, neuron) to videos (n, frame, y, x) in pixel units 0..255:
    the expected calcium trace, with behavior (n, frame, 3) or at its mean when None.

    ``params`` is ``ground_truth(ds)`` of a video session; ``xp`` numpy or jax.numpy (so
    ``jax.grad`` goes through it with xp=jax.numpy).
    """
    return expected_trace(params, rate(params, videos, behavior, xp), xp)


def expected_trace(params: dict, expected_rate, xp=np):
    """The expected calcium trace (n, frame, neuron) of the expected rate (n, frame, neuron)."""
    return leaky_sum(expected_rate, calcium_decay(params), xp) + xp.asarray(params["additive_noise"])


def noisy_responses(params: dict, expected_rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Recorded responses (..., frame, neuron) float32 of the expected rate (..., frame, neuron):
    calcium events, their decaying sum and additive exponential noise."""
    events = calcium_events(expected_rate, params["event_size"], params["event_shape"], rng)
    trace = leaky_sum(events.reshape(-1, *events.shape[-2:]), calcium_decay(params)).reshape(events.shape)
    additive = rng.exponential(np.broadcast_to(params["additive_noise"], trace.shape))
    return (trace + additive).astype(np.float32)


def ornstein_uhlenbeck(n: int, frames: int, tau_frames: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary standard normal processes (n, frames) with correlation time ``tau_frames``."""
    a = np.exp(-1 / tau_frames)
    noise = rng.normal(size=(n, frames))
    x = np.empty((n, frames))
    x[:, 0] = noise[:, 0]
    for t in range(1, frames):
        x[:, t] = a * x[:, t - 1] + np.sqrt(1 - a**2) * noise[:, t]
    return x


def draw_behavior(n: int, frames: int, frame_rate: float, rng: np.random.Generator):
    """Behavior (n, frames, 3: pupil, pupil_derivative per second, running) and pupil_center
    (n, frames, 2), float32: running follows an arousal state, the pupil follows it more slowly."""
    arousal = ornstein_uhlenbeck(n, frames, AROUSAL_TAU_S * frame_rate, rng)
    slow = ornstein_uhlenbeck(n, frames, PUPIL_TAU_S * frame_rate, rng)
    pupil = PUPIL_MEAN + PUPIL_SD * (0.8 * arousal + 0.6 * slow)
    derivative = np.gradient(pupil, axis=1) * frame_rate if frames > 1 else np.zeros_like(pupil)
    behavior = np.stack([pupil, derivative, running_speed(arousal)], axis=-1)
    center = [32.0, 18.0] + 1.5 * np.stack([ornstein_uhlenbeck(n, frames, frame_rate, rng) for _ in "xy"], axis=-1)
    return behavior.astype(np.float32), center.astype(np.float32)


def population(
    n_neurons: int, size: tuple[int, int], train_videos: np.ndarray, rng: np.random.Generator,
    frame_rate: float = FRAME_RATE,
) -> dict:
    """Ground-truth parameters of ``n_neurons`` neurons (kinds in KIND_FRACTIONS, spatial receptive
    fields as in ``gabors``); gains and noise are set on ``train_videos`` (n, frame, y, x)."""
    params = gabors(n_neurons, size, rng)
    del params["surround"]
    counts = np.floor(np.array(KIND_FRACTIONS) * n_neurons).astype(int)
    counts[0] += n_neurons - counts.sum()
    kind = rng.permutation(np.repeat(np.array(KINDS), counts))
    selective = np.char.startswith(kind, "direction")
    params["kind"] = kind
    params["complex"] = np.char.endswith(kind, "complex").astype(np.float32)
    params["direction_selective"] = selective
    params["temporal_scale"] = rng.uniform(*TEMPORAL_SCALE, n_neurons).astype(np.float32)
    params["temporal_beta"] = rng.uniform(*TEMPORAL_BETA, n_neurons).astype(np.float32)
    params["temporal_even"], params["temporal_odd"], params["temporal_frequency"] = temporal_kernels(
        params["temporal_scale"], params["temporal_beta"], frame_rate
    )
    sign = rng.choice([-1.0, 1.0], n_neurons)
    weight = np.where(selective, sign * rng.uniform(*DIRECTION_WEIGHT, n_neurons), 0.0)
    params["direction_weight"] = weight.astype(np.float32)
    # The filter prefers motion along sign(w) (cos θ, sin θ) in (x, row); the screen's y is -row.
    direction = -np.degrees(params["orientation"]) + np.where(weight < 0, 180.0, 0.0)
    params["preferred_direction"] = (direction % 360).astype(np.float32)
    params["frame_rate"] = np.float32(frame_rate)
    params["adaptation_tau"] = rng.uniform(*ADAPTATION_TAU_S, n_neurons).astype(np.float32)
    params["running_gain"] = rng.normal(*RUNNING_GAIN, n_neurons).astype(np.float32)
    params["pupil_gain"] = rng.normal(*PUPIL_GAIN, n_neurons).astype(np.float32)
    params["calcium_tau"] = np.float32(CALCIUM_TAU_S)
    g = drive(params, train_videos)
    mean_amplitude = amplitude(g).mean(axis=(0, 1))
    params["adaptation_strength"] = (rng.uniform(*ADAPTATION_STRENGTH, n_neurons) / mean_amplitude).astype(np.float32)
    h = adapted(params, g)
    best = np.maximum(h.max(axis=(0, 1)), 1e-6)
    params["c50"] = (best * rng.uniform(*C50_OVER_BEST_NATURAL, n_neurons)).astype(np.float32)
    params["rmax"] = np.exp(rng.normal(0, 0.4, n_neurons)).astype(np.float32)
    natural_mean = params["rmax"] * (h / (h + params["c50"])).mean(axis=(0, 1))
    params["baseline"] = (0.02 * natural_mean).astype(np.float32)
    params["event_size"] = (EVENT_SIZE * natural_mean).astype(np.float32)
    params["event_shape"] = np.float32(EVENT_SHAPE)
    trace_mean = natural_mean / (1 - calcium_decay(params))
    params["additive_noise"] = (ADDITIVE_NOISE * trace_mean).astype(np.float32)
    return params


def recording(
    params: dict, train_videos: np.ndarray, test_videos: np.ndarray, repeats: int, rng: np.random.Generator
) -> dict:
    """The trials of a video session, laid out as ``trial_plan``: {images (trial, frame, y, x),
    responses (trial, frame, neuron), tier, image_id, frame_count (trial,), behavior (trial, frame,
    3), pupil_center (trial, frame, 2)}; every trial shows all frames of its video."""
    image_id, tier = trial_plan(len(train_videos), len(test_videos), repeats, rng)
    videos = np.concatenate([train_videos, test_videos])[image_id]
    frames = videos.shape[1]
    behavior, pupil_center = draw_behavior(len(videos), frames, float(params["frame_rate"]), rng)
    responses = noisy_responses(params, rate(params, videos, behavior), rng)
    return {
        "images": videos,
        "responses": responses,
        "tier": tier,
        "image_id": image_id,
        "frame_count": np.full(len(videos), frames, np.int64),
        "behavior": behavior,
        "pupil_center": pupil_center,
    }


def simulate(
    n_neurons: int,
    n_train_videos: int,
    n_test_videos: int,
    repeats: int,
    frames: int,
    size: tuple[int, int],
    seed: int = 0,
    frame_rate: float = FRAME_RATE,
    animal: int = 1,
) -> xr.Dataset:
    """A video session of the simulated animal, with ground truth as ``gt_*`` variables.

    ``n_train_videos`` movies of ``frames`` frames are shown once each (10% of them validation),
    ``n_test_videos`` ``repeats`` times each (tier test), in random order, gray, at ``frame_rate``.
    Returns a validated video session Dataset (write it with ``write_session``).
    """
    for name, value, least in (
        ("--neurons", n_neurons, 1),
        ("--train-images", n_train_videos, 2),
        ("--test-images", n_test_videos, 1),
        ("--repeats", repeats, 1),
        ("--frames", frames, 1),
    ):
        if value < least:
            raise ConfigError(f"simulate: {name} {value}: give at least {least}")
    if not frame_rate > 0:
        raise ConfigError(f"simulate: --frame-rate {frame_rate}: give the frames per second, > 0")
    rng = animal_rng(seed, animal)
    train_videos = natural_videos(n_train_videos, frames, size, rng, frame_rate)
    test_videos = natural_videos(n_test_videos, frames, size, rng, frame_rate)
    params = population(n_neurons, size, train_videos, rng, frame_rate)
    silent = ~(np.isfinite(params["event_size"]) & (params["event_size"] > 0))
    if silent.any():
        # A simple cell rectifies: on a few frames its drive can be 0 throughout; below ~15 Hz
        # the temporal kernels are not sampled at all (NaN).
        raise ConfigError(
            f"simulate: --frames {frames} at --frame-rate {frame_rate:g}: {int(silent.sum())} of the {n_neurons}"
            f" simulated neurons never respond to these videos (their temporal kernels last {KERNEL_SECONDS} s"
            " and prefer 3-5 Hz); use more --frames or a --frame-rate of at least 15"
        )
    trials = recording(params, train_videos, test_videos, repeats, rng)
    cell_xyz = retinotopic_positions(params, rng)
    attrs = {"source": f"twin simulate --video seed {seed}", "animal": "simulated", "seed": seed, "frame_rate": frame_rate}
    if animal > 1:
        attrs |= {"source": f"twin simulate --video seed {seed} animal {animal}", "animal": f"simulated {animal}"}
    return to_session(params, trials, cell_xyz, attrs, dims=NEURON_DIMS_VIDEO)


def respond(params: dict, videos, repeats: int = 1, seed: int = 0, behavior=None):
    """Show videos (n, frame, y, x) in pixel units, at the animal's frame rate, to the simulated
    video animal ``params`` (``ground_truth(ds)``). Returns (mean (n, frame, neuron) noise-free,
    noisy (repeats, n, frame, neuron)) float32, with behavior (n, frame, 3) or at its mean."""
    videos = np.asarray(videos)
    image_shape = params["filter_even"].shape[1:]
    if videos.ndim != 4 or videos.shape[2:] != image_shape:
        raise SessionError(
            f"respond: videos have shape {videos.shape}; give (n, frame, {', '.join(map(str, image_shape))})"
            " in pixel units"
        )
    if behavior is not None and np.shape(behavior) != (*videos.shape[:2], 3):
        raise SessionError(
            f"respond: behavior has shape {np.shape(behavior)}; give {(*videos.shape[:2], 3)}"
            " (pupil, pupil_derivative, running per frame) or none for the mean behavior"
        )
    rng = np.random.default_rng(seed)
    expected = rate(params, videos, behavior)
    mean = expected_trace(params, expected).astype(np.float32)
    return mean, noisy_responses(params, np.broadcast_to(expected, (repeats, *expected.shape)), rng)


def ground_truth_ceiling(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Scores (neuron,) of the noise-free responses (given each trial's behavior) against the
    recorded test tier, per frame after ``metrics.BURN_IN_FRAMES`` (Sensorium 2023): the best a
    perfect twin can do on this video session. Keys as the image animal's ceiling."""
    test = ds.isel(trial=np.flatnonzero(strings(ds["tier"].values) == "test"))
    behavior = np.asarray(test["behavior"].values) if "behavior" in test else None
    predictions = mean_response(ground_truth(ds), np.asarray(test["images"].values), behavior=behavior)
    trial, frame, frame_id = metrics.scored_frames(
        test["frame_count"].values, test["image_id"].values, test.sizes["frame"]
    )
    responses = np.asarray(test["responses"].values)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = metrics.score(responses[trial, frame], predictions[trial, frame], frame_id)
    scores.pop("oracle_correlation", None)
    return scores
