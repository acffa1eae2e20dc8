"""Run configuration: frozen dataclasses with every default written once, and a TOML round trip.

A run directory holds ``config.toml`` with the exact values a run used. A TOML file may set any
subset of fields, in tables named after the sections: ``[data]``, ``[model]``, ``[fit]``, ``[mei]``.
Defaults reproduce the Sensorium 2022 baseline (see REFERENCE values in the docstrings).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from twin.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How sessions are batched and normalized."""

    batch_size: int = 128
    # "global": one image mean/std over all train pixels; "per_pixel": a mean/std image.
    image_normalization: str = "global"
    # Responses are divided by their train std; stds below this fraction of the mean std are
    # replaced by it (neuralpredictors' NeuroNormalizer floor).
    response_std_floor: float = 0.01
    shuffle_seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Stacked2dCore + per-session readouts. Defaults: the Sensorium 2022 baseline."""

    core_layers: int = 4
    core_channels: int = 64
    input_kernel: int = 9
    hidden_kernel: int = 7
    depth_separable: bool = True
    pad_input: bool = False
    # Biases of the hidden (depth-separable) convs; Sensorium's SE2dCore uses core_bias=False.
    core_bias: bool = False
    # Indices of the layers whose outputs are concatenated for the readout (-1: last only).
    stack: tuple[int, ...] = (-1,)
    # Flax convention: running = momentum * running + (1 - momentum) * batch.
    # PyTorch's momentum 0.9 in the baseline is 1 - 0.9 = 0.1 here.
    batch_norm_momentum: float = 0.1
    batch_norm_eps: float = 1e-5
    gamma_input: float = 6.3831
    readout: str = "gaussian"  # "gaussian" or "factorized"
    gauss_type: str = "full"  # "full" (2x2 covariance) or "isotropic"
    init_mu_range: float = 0.3
    init_sigma: float = 0.1
    gamma_readout: float = 0.0076
    grid_mean_predictor: bool = False
    grid_mean_hidden: int = 30
    shifter: bool = False
    shifter_hidden: int = 5
    # Behavior variables enter as extra constant image channels when True.
    use_behavior: bool = False


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Training protocol. Defaults: the Sensorium 2022 trainer."""

    learning_rate: float = 0.009
    max_epochs: int = 200
    # Plateau schedule on validation single-trial correlation.
    lr_decay_factor: float = 0.3
    patience: int = 5
    tolerance: float = 1e-6
    max_lr_decays: int = 4
    min_learning_rate: float = 1e-4
    restore_best: bool = True
    # Poisson loss summed over batch and neurons, times sqrt(n_train / batch_size).
    scale_loss: bool = True
    seed: int = 0
    # Ensemble members trained together (different init seeds), held as one stacked model.
    ensemble_size: int = 1


@dataclasses.dataclass(frozen=True)
class MEIConfig:
    """One MEI recipe. Named presets live in twin.mei.recipes; a TOML [mei] table overrides fields.

    Defaults: Walker et al. 2019 (the inception loop). Images are in normalized units (0 = mean
    gray); pixel-unit values below are converted with the session's normalization.
    """

    recipe: str = "walker2019"
    steps: int = 1000
    optimizer: str = "sgd"  # "sgd", "adam" or "adamw" (optax)
    learning_rate: float = 3.0
    final_learning_rate: float = 0.125
    schedule: str = "linear"  # learning rate: "constant", "linear" or "cosine" to the final rate
    # step = step_gain * lr / mean(|grad|) * grad, step_gain in pixel levels (Walker 2019: 0.1 of
    # a level per unit of lr, written 0.1 / 255 for images scaled to 0..1).
    normalize_gradient: bool = True
    step_gain: float = 0.1
    weight_decay: float = 0.0  # adamw only
    parametrization: str = "pixel"  # "pixel" or "fourier" (lucid)
    fourier_decay: float = 1.0  # spectrum scaled by 1 / max(f, 1 / max(h, w)) ** decay
    fourier_init_std: float = 0.01  # lucid random spectrum
    # Pixel initialization N(init_mean, init_std) in pixel units, clipped to 0..255.
    init_mean: float = 128.0
    init_std: float = 8.0
    # Gradient preconditioning in Fourier space: each frequency scaled 1 / max(1, r ** (2 * p));
    # 0 disables (pixel parametrization only).
    precondition: float = 0.1
    blur_target: str = "image"  # Gaussian blur of the "image", the "gradient", or "none"
    blur_sigma: float = 1.5  # pixels, falling linearly to final_blur_sigma
    final_blur_sigma: float = 0.01
    # Fixed L2 norm of the image in normalized units after each step; 0 disables.
    norm: float = 0.0
    # Clip to the 0..255 pixel range after each step (fourier: squash with a sigmoid).
    clip_range: bool = True
    jitter: int = 0  # max random translation in pixels per step
    scale_jitter: float = 0.0  # max relative random zoom per step
    rotate: float = 0.0  # max random rotation in degrees per step
    # Stop a (neuron, seed) pair when its activation improves less than this relative amount
    # over `window` steps; 0 runs all steps.
    tolerance: float = 0.0
    window: int = 50
    seeds: int = 4
    # (neuron, seed) pairs per compiled chunk; 0 picks the largest that fits device memory.
    chunk_size: int = 0
    # Diverse exciting inputs: each keeps >= dei_fraction of its MEI's activation.
    dei_fraction: float = 0.85
    dei_steps: int = 300
    dei_learning_rate: float = 0.05
    dei_penalty: float = 10.0  # weight of the activation constraint against diversity
    dei_diversity: str = "pixel"  # "pixel" (RMS difference) or "population" (response cosine)


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


def section_from_dict(cls: type, values: dict[str, Any], source: str, section: str):
    """Build dataclass ``cls`` from ``values``; unknown keys and wrong types raise ConfigError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{source}: unknown key [{section}].{key}; known keys: {known}")
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, type(default)) or (
            isinstance(value, bool) != isinstance(default, bool)
        ):
            raise ConfigError(
                f"{source}: [{section}].{key} = {value!r} must be a {type(default).__name__}"
                f" like the default {default!r}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any], source: str = "<config>") -> RunConfig:
    """RunConfig from a dict of sections, e.g. the parsed TOML file ``source``."""
    unknown = set(values) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{sorted(unknown)[0]}]; use {', '.join(SECTIONS)}"
        )
    return RunConfig(
        **{
            name: section_from_dict(cls, values.get(name, {}), source, name)
            for name, cls in SECTIONS.items()
        }
    )


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Parse the TOML file ``path``; a missing file or bad syntax is a one-line ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found; pass an existing TOML file") from None
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
