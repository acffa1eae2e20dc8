"""Run configuration: frozen dataclasses with every default written once, and a TOML round trip.

A run directory holds ``config.toml`` with the exact values a run used. A TOML file may set any
subset of fields, in tables named after the sections: ``[data]``, ``[model]``, ``[fit]``, ``[mei]``.
Defaults reproduce the Sensorium 2022 baseline (see REFERENCE values in the docstrings).

Each field declares the values it accepts next to its default (``integer``, ``number``, ``choice``,
``flag``, ``label``, ``integers``); rules that tie fields together are the class's ``RULES``. Both
are checked by ``Checked.__post_init__`` whenever a config is built, from a file or from Python.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import tomllib
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import tomli_w

from twin.errors import ConfigError


class Valid(NamedTuple):
    """The values one field accepts: ``accepts(value)`` and the fix, e.g. "an integer >= 1"."""

    accepts: Callable[[Any], bool]
    description: str
    problem: str = "is out of range"


class Rule(NamedTuple):
    """A rule between fields: ``key`` is wrong unless ``holds(config)``; ``says(config)`` ends the
    error line after the value: what is wrong and the fix."""

    key: str
    holds: Callable[[Any], bool]
    says: Callable[[Any], str]


def bounds(lo: float, hi: float | None, lo_open: bool, hi_open: bool) -> tuple[Callable, str]:
    """(test, text) of the interval from lo to hi (None: no upper end), e.g. (.., ">= 1") or
    (.., "in (0, 1]")."""

    def test(value) -> bool:
        above = value > lo if lo_open else value >= lo
        below = hi is None or (value < hi if hi_open else value <= hi)
        return above and below

    def written(end: float) -> str:
        return str(end) if isinstance(end, int) else f"{end:g}"

    if hi is None:
        text = f"{'>' if lo_open else '>='} {written(lo)}"
    else:
        text = f"in {'(' if lo_open else '['}{written(lo)}, {written(hi)}{')' if hi_open else ']'}"
    return test, text


# Seeds are below 2**32: nnx.Rngs and jax.random.PRNGKey overflow on larger ones.
SEED_LIMIT = 2**32
# Model sizes beyond these are typing errors: they would not fit any accelerator's memory, and
# are refused before anything is allocated.
MAX_LAYERS = 64
MAX_WIDTH = 4096


def integer(default: int, lo: int, *, below: int | None = None, odd: bool = False):
    """An int field of ``default``, at least ``lo`` (below ``below`` when given; odd, when ``odd``)."""
    test, text = bounds(lo, below, False, True)
    valid = Valid(
        lambda value: test(value) and (not odd or value % 2 == 1),
        f"{'an odd' if odd else 'an'} integer {text}",
    )
    return dataclasses.field(default=default, metadata={"valid": valid})


def number(
    default: float,
    lo: float,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
):
    """A finite float field of ``default`` between lo and hi (ends excluded when *_open)."""
    test, text = bounds(lo, hi, lo_open, hi_open)
    valid = Valid(lambda value: math.isfinite(value) and test(value), f"a number {text}")
    return dataclasses.field(default=default, metadata={"valid": valid})


def choice(default: str, *options: str):
    """A str field of ``default`` that is one of ``options`` (the default first)."""
    valid = Valid(
        lambda value: value in (default, *options),
        "one of " + ", ".join(repr(option) for option in (default, *options)),
        "is not a known value",
    )
    return dataclasses.field(default=default, metadata={"valid": valid})


def flag(default: bool):
    """A bool field."""
    return dataclasses.field(default=default, metadata={"valid": Valid(lambda value: True, "true or false")})


def label(default: str):
    """A free str field that must not be empty."""
    valid = Valid(lambda value: bool(value.strip()), "a non-empty name", "is empty")
    return dataclasses.field(default=default, metadata={"valid": valid})


def integers(default: tuple[int, ...], lo: int | None = None, length: int | None = None):
    """A tuple-of-int field (a TOML list): ``length`` items (else at least one), each >= lo."""
    count = f"{length}" if length else "one or more"
    valid = Valid(
        lambda value: (len(value) == length if length else len(value) > 0)
        and all(lo is None or item >= lo for item in value),
        f"a list of {count} integers" + (f" >= {lo}" if lo is not None else ""),
    )
    return dataclasses.field(default=default, metadata={"valid": valid})


def shown(value) -> str:
    """A value as a TOML file writes it: true/false, lists in brackets, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    return repr(value)


# What a value of each field type must be, for type errors.
KINDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    tuple: "a list of integers",
}


def typed(value, default, where: str):
    """``value`` as the type of ``default`` (ints for floats, lists for tuples, numpy scalars as
    Python numbers), or a ConfigError naming ``where`` (``[table].key``)."""
    given = value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        try:
            value = float(value) if ok else value
        except OverflowError:  # an integer beyond any float: out of range, like inf
            value = math.inf if value > 0 else -math.inf
    elif isinstance(default, tuple):
        value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        ok = all(isinstance(item, numbers.Integral) and not isinstance(item, bool) for item in value)
        value = tuple(int(item) for item in value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = KINDS.get(type(default), type(default).__name__)
        raise ConfigError(f"{where} = {shown(given)} must be {kind} like the default {shown(default)}")
    return value


class Checked:
    """Base of the config dataclasses: types, declared ranges and ``RULES`` are checked on build.

    A class sets ``TABLE`` (its TOML table name) and may set ``RULES``. Errors are one line:
    ``[fit].batch_size = 0 is out of range; use an integer >= 1``.
    """

    TABLE: ClassVar[str]
    RULES: ClassVar[tuple[Rule, ...]] = ()

    def __post_init__(self):
        for field in dataclasses.fields(self):
            where = f"[{self.TABLE}].{field.name}"
            value = typed(getattr(self, field.name), field.default, where)
            object.__setattr__(self, field.name, value)
            valid = field.metadata["valid"]
            if not valid.accepts(value):
                raise ConfigError(f"{where} = {shown(value)} {valid.problem}; use {valid.description}")
        for rule in self.RULES:
            if not rule.holds(self):
                value = shown(getattr(self, rule.key))
                raise ConfigError(f"[{self.TABLE}].{rule.key} = {value} {rule.says(self)}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
    """How sessions are batched and normalized."""

    TABLE: ClassVar[str] = "data"

    batch_size: int = integer(128, 1)
    # Small recordings train on smaller batches so that an epoch has at least this many steps
    # (never below 8 trials): with batch_size 128, 640 train trials make 5 steps an epoch and the
    # plateau schedule stops long before the fit converges (Cowley V4: test r 0.28 instead of 0.36).
    # Sensorium-sized sessions (thousands of trials) keep batch_size.
    min_steps_per_epoch: int = integer(20, 1)
    # "global": one image mean/std over all train pixels; "per_pixel": a mean/std image.
    image_normalization: str = choice("global", "per_pixel")
    # Responses are divided by their train std; stds below this fraction of the mean std are
    # replaced by it (neuralpredictors' NeuroNormalizer floor); 0 leaves responses unscaled.
    response_std_floor: float = number(0.01, 0)
    shuffle_seed: int = integer(0, 0, below=SEED_LIMIT)
    # Fit on this fraction of each session's train images (all their trials), a seeded subset
    # nested across fractions (the 10% subset lies inside the 25% one): data-efficiency curves.
    # Validation and test tiers are untouched.
    train_fraction: float = number(1.0, 0, 1, lo_open=True)
    # Video sessions train on clips of this many frames at a random start per trial and epoch
    # (Sensorium 2023: 80); at most a session's frames, a shorter trial's clip ends in masked padding.
    clip_frames: int = integer(80, 1)
    # Video trials are scored per frame from this frame on: earlier frames still depend on what
    # came before the trial (Sensorium 2023: 50).
    burn_in_frames: int = integer(50, 0)


@dataclasses.dataclass(frozen=True)
class ModelConfig(Checked):
    """A core + per-session readouts. Defaults: the Sensorium 2022 baseline; the video-core fields:
    the Sensorium 2023 baselines (ecker-lab/sensorium_2023)."""

    TABLE: ClassVar[str] = "model"
    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "stack",
            lambda c: all(-c.core_layers <= i < c.core_layers for i in c.stack),
            lambda c: f"is out of range; use layer indices from {-c.core_layers} to {c.core_layers - 1}"
            f" ([model].core_layers = {c.core_layers})",
        ),
        Rule(
            "input_kernel",
            lambda c: not c.pad_input or c.input_kernel % 2 == 1,
            lambda c: "is even; with pad_input = true use an odd kernel (only then does the padding keep"
            " the image size)",
        ),
        Rule(
            "readout",
            lambda c: c.readout == "gaussian" or not (c.shifter or c.grid_mean_predictor),
            lambda c: "has no grid; set shifter and grid_mean_predictor to false or use 'gaussian'",
        ),
    )

    # "stacked2d": images (b, y, x, c). Videos (b, frame, y, x, c), causal in time:
    # "factorized3d" (each layer a spatial conv, then a temporal conv) or "gru" (the stacked2d core
    # on every frame, then a ConvGRU). Both use the fields below for their spatial convs; the
    # Sensorium 2023 factorized baseline is core_layers = 3, input_kernel = 11, pad_input = true,
    # depth_separable = false, batch_norm_momentum = 0.3; its gru baseline depth_separable = false.
    core: str = choice("stacked2d", "factorized3d", "gru")
    core_layers: int = integer(4, 1, below=MAX_LAYERS + 1)
    core_channels: int = integer(64, 1, below=MAX_WIDTH + 1)
    # Without pad_input the first layer shrinks the image by input_kernel - 1 pixels.
    input_kernel: int = integer(9, 1)
    # Hidden layers pad by hidden_kernel // 2, which keeps the map size for odd kernels only.
    hidden_kernel: int = integer(7, 1, odd=True)
    depth_separable: bool = flag(True)
    pad_input: bool = flag(False)
    # Biases of the hidden (depth-separable) convs; Sensorium's SE2dCore uses core_bias=False.
    core_bias: bool = flag(False)
    # Indices of the layers whose outputs are concatenated for the readout (-1: last only).
    stack: tuple[int, ...] = integers((-1,))
    # Flax convention: running = momentum * running + (1 - momentum) * batch (1 would never
    # update). PyTorch's momentum 0.9 in the baseline is 1 - 0.9 = 0.1 here.
    batch_norm_momentum: float = number(0.1, 0, 1, hi_open=True)
    batch_norm_eps: float = number(1e-5, 0, lo_open=True)
    gamma_input: float = number(6.3831, 0)
    # factorized3d: frames of the temporal conv of the first layer and of the others (causal:
    # the current frame and the ones before it).
    temporal_input_kernel: int = integer(11, 1)
    temporal_hidden_kernel: int = integer(7, 1)
    # factorized3d: weight of the smoothness penalty (1d Laplace) on the first temporal kernel.
    gamma_temporal: float = number(0.01, 0)
    # gru: state channels and the kernels of its input and recurrent ('same'-padded) convs.
    gru_channels: int = integer(64, 1, below=MAX_WIDTH + 1)
    gru_input_kernel: int = integer(7, 1, odd=True)
    gru_kernel: int = integer(7, 1, odd=True)
    readout: str = choice("gaussian", "factorized")
    gauss_type: str = choice("full", "isotropic")  # 2x2 covariance or one sigma
    # Readout positions start uniform in +-init_mu_range of the grid (-1..1; beyond reads padding).
    init_mu_range: float = number(0.3, 0)
    # "data": a fit from scratch starts each Gaussian readout position where the neuron's responses
    # correlate best with the images' local contrast energy (twin.models.placement), neurons
    # without a significant estimate at random; "random": all uniform in +-init_mu_range.
    # Factorized readouts and the grid-mean predictor ignore it.
    readout_init: str = choice("data", "random")
    init_sigma: float = number(0.1, 0)
    gamma_readout: float = number(0.0076, 0)
    grid_mean_predictor: bool = flag(False)
    grid_mean_hidden: int = integer(30, 1, below=MAX_WIDTH + 1)
    shifter: bool = flag(False)
    shifter_hidden: int = integer(5, 1, below=MAX_WIDTH + 1)
    # Behavior variables enter as extra constant image channels when True.
    use_behavior: bool = flag(False)
    # Each neuron's predicted response is multiplied by exp(w . (behavior - its train mean) + c),
    # per neuron and frame (the gain that running and pupil set in mouse visual cortex); w and c
    # start at 0 (gain 1). Needs behavior in every session.
    behavior_gain: bool = flag(False)


@dataclasses.dataclass(frozen=True)
class FitConfig(Checked):
    """Training protocol. Defaults: the Sensorium 2022 trainer."""

    TABLE: ClassVar[str] = "fit"
    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "min_learning_rate",
            lambda c: c.min_learning_rate <= c.learning_rate,
            lambda c: f"is above [fit].learning_rate = {c.learning_rate!r}; use at most that",
        ),
    )

    learning_rate: float = number(0.009, 0, lo_open=True)
    max_epochs: int = integer(200, 1)
    # Plateau schedule on validation single-trial correlation.
    lr_decay_factor: float = number(0.3, 0, 1, lo_open=True, hi_open=True)
    patience: int = integer(5, 1)
    tolerance: float = number(1e-6, 0)
    max_lr_decays: int = integer(4, 0)
    min_learning_rate: float = number(1e-4, 0)
    restore_best: bool = flag(True)
    # "poisson": Poisson NLL, for non-negative rates (ELU + 1 output). "gaussian": squared error,
    # for signed responses such as dF/F (linear output, predictions may be negative).
    loss: str = choice("poisson", "gaussian")
    # The loss summed over batch and neurons, times sqrt(n_train / batch_size).
    scale_loss: bool = flag(True)
    seed: int = integer(0, 0, below=SEED_LIMIT)
    # Ensemble members trained together (different init seeds), held as one stacked model.
    ensemble_size: int = integer(1, 1)
    # "bfloat16": the core's convolutions take bfloat16 inputs and weights and accumulate in
    # float32; parameters, optimizer state, BatchNorm statistics, readout and loss stay float32
    # (twin.precision).
    precision: str = choice("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class MEIConfig(Checked):
    """One MEI recipe. Named presets live in twin.mei.recipes; a TOML [mei] table overrides fields.

    Defaults: Walker et al. 2019 (the inception loop). Images are in normalized units (0 = mean
    gray); pixel-unit values below are converted with the session's normalization.
    """

    TABLE: ClassVar[str] = "mei"
    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "response_window",
            lambda c: c.response_window <= c.frames,
            lambda c: f"is above [mei].frames = {c.frames}; use at most that",
        ),
    )

    recipe: str = label("walker2019")
    steps: int = integer(1000, 1)
    optimizer: str = choice("sgd", "adam", "adamw")  # optax
    learning_rate: float = number(3.0, 0, lo_open=True)
    final_learning_rate: float = number(0.125, 0)
    # Learning rate: constant, or linear / cosine to the final rate.
    schedule: str = choice("linear", "constant", "cosine")
    # step = step_gain * lr / mean(|grad|) * grad, step_gain in pixel levels (Walker 2019: 0.1 of
    # a level per unit of lr, written 0.1 / 255 for images scaled to 0..1).
    normalize_gradient: bool = flag(True)
    step_gain: float = number(0.1, 0, lo_open=True)
    weight_decay: float = number(0.0, 0)  # adamw only
    parametrization: str = choice("pixel", "fourier")  # fourier: lucid
    fourier_decay: float = number(1.0, 0)  # spectrum scaled by 1 / max(f, 1 / max(h, w)) ** decay
    fourier_init_std: float = number(0.01, 0)  # lucid random spectrum
    # Pixel initialization N(init_mean, init_std) in pixel units, clipped to 0..255.
    init_mean: float = number(128.0, 0, 255)
    init_std: float = number(8.0, 0)
    # Gradient preconditioning in Fourier space: each frequency scaled 1 / max(1, r ** (2 * p));
    # 0 disables (pixel parametrization only; each frame of a clip alike).
    precondition: float = number(0.1, 0)
    blur_target: str = choice("image", "gradient", "none")  # what the Gaussian blur smooths
    blur_sigma: float = number(1.5, 0)  # pixels, falling linearly to final_blur_sigma
    final_blur_sigma: float = number(0.01, 0)
    # Fixed L2 norm of the image in normalized units after each step; 0 disables.
    norm: float = number(0.0, 0)
    # Clip to the 0..255 pixel range after each step (fourier: squash with a sigmoid).
    clip_range: bool = flag(True)
    jitter: int = integer(0, 0)  # max random translation in pixels per step
    scale_jitter: float = number(0.0, 0, 1, hi_open=True)  # max relative random zoom per step
    rotate: float = number(0.0, 0, 180)  # max random rotation in degrees per step
    # Stop a (neuron, seed) pair when its activation improves less than this relative amount
    # over `window` steps; 0 runs all steps.
    tolerance: float = number(0.0, 0)
    window: int = integer(50, 1)
    seeds: int = integer(4, 1)
    # (neuron, seed) pairs per compiled chunk; 0 picks the largest that fits device memory.
    chunk_size: int = integer(0, 0)
    # Diverse exciting inputs: each keeps >= dei_fraction of its MEI's activation.
    dei_fraction: float = number(0.85, 0, 1, lo_open=True)
    dei_steps: int = integer(300, 1)
    dei_learning_rate: float = number(0.05, 0, lo_open=True)
    dei_penalty: float = number(10.0, 0)  # weight of the activation constraint against diversity
    # "pixel" (RMS difference) or "population" (response cosine).
    dei_diversity: str = choice("pixel", "population")
    # Transparent MEIs (`twin mei --transparency`): the loss is -activation + opacity_penalty x the
    # mean opacity (normalized response units per unit of opacity); the per-pixel opacity is a
    # sigmoid of logits that start at 0 (half opaque) and step with Adam at opacity_learning_rate.
    opacity_penalty: float = number(0.1, 0)
    opacity_learning_rate: float = number(0.05, 0, lo_open=True)
    # Precision of the model in the ascent's objective and gradient (as [fit].precision); the
    # images, their updates and the reported activations stay float32.
    precision: str = choice("float32", "bfloat16")
    # Most exciting videos (MEVs), used when the model is a video model (its `video` attribute):
    # clips of `frames` frames, the objective the target's response averaged over the last
    # `response_window` frames; the space-time Gaussian blur has the spatial sigma above and a
    # constant temporal sigma in frames (0 disables); `static` optimizes one image shown on every frame.
    frames: int = integer(30, 1)
    response_window: int = integer(10, 1)
    temporal_blur_sigma: float = number(1.0, 0)
    static: bool = flag(False)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "fit": FitConfig,
    "mei": MEIConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run used."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    fit: FitConfig = FitConfig()
    mei: MEIConfig = MEIConfig()


def section_from_dict(cls: type, values: dict[str, Any], source: str):
    """Build the config dataclass ``cls`` from the table ``values`` of the file ``source``;
    unknown keys and values the class refuses raise a ConfigError that names ``source``."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: {cls.TABLE} = {shown(values)} is not a table; write [{cls.TABLE}] and its keys"
        )
    known = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            raise ConfigError(f"{source}: unknown key [{cls.TABLE}].{key}; known keys: {', '.join(known)}")
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def check_image_size(
    model: ModelConfig, image_shape: tuple[int, int], images: str, source: str | None = None
) -> None:
    """ConfigError unless the core leaves at least one pixel of the ``image_shape`` (y, x) images
    of ``images`` (a store): without pad_input the first layer drops input_kernel - 1 rows and
    columns; the hidden layers keep the size. source: the config file, when there is one."""
    height, width = image_shape
    kernel = model.input_kernel
    if model.pad_input or kernel <= min(height, width):
        return
    out = f"{max(height - kernel + 1, 0)}x{max(width - kernel + 1, 0)}"
    raise ConfigError(
        (f"{source}: " if source else "")
        + f"[model].input_kernel = {kernel} does not fit the {height}x{width} images of {images} (the"
        f" first layer's output would be {out}); use at most {min(height, width)} or set pad_input = true"
    )


def check_core(model: ModelConfig, video: bool, store: str, source: str | None = None) -> None:
    """ConfigError unless [model].core reads what the session ``store`` holds: "stacked2d" images,
    "factorized3d" and "gru" videos (``video``). source: the config file, when there is one."""
    if (model.core != "stacked2d") == video:
        return
    if video:
        fix = f"reads single images but {store} is a video session; use 'factorized3d' or 'gru'"
    else:
        fix = f"is a video core but {store} holds images; use 'stacked2d'"
    raise ConfigError((f"{source}: " if source else "") + f"[model].core = {model.core!r} {fix}")


def config_from_dict(values: dict[str, Any], source: str = "<config>") -> RunConfig:
    """RunConfig from a dict of sections, e.g. the parsed TOML file ``source``."""
    unknown = set(values) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{sorted(unknown)[0]}]; use {', '.join(SECTIONS)}"
        )
    return RunConfig(
        **{
            table: section_from_dict(cls, values.get(table, {}), source)
            for table, cls in SECTIONS.items()
        }
    )


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Parse the TOML file ``path``; a missing file or bad syntax is a one-line ConfigError."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ConfigError(f"{path}: not a regular file (a pipe or device); pass the {what} TOML file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # editors may add a BOM
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found; pass an existing TOML file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass the {what} TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; pass a {what} TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error}); fix the syntax") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a (partial) TOML config; unset fields keep their defaults."""
    return config_from_dict(read_toml(path), str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """All sections with every value (tuples become lists for TOML)."""

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    return {
        name: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, name)).items()}
        for name in SECTIONS
    }


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write every value of ``config`` as TOML (atomically: write beside, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomli_w.dumps(config_to_dict(config)))
    tmp.replace(path)
