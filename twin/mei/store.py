"""The MEI store: an xarray Dataset written atomically as zarr v3 (twin.data.store.write_dataset).

Variables (images in normalized units; pixels = images * image_std + image_mean, broadcast by
dimension name): images (neuron, seed, y, x), or (neuron, seed, channel, y, x) for a model of
several image channels; image_mean, image_std: (), (y, x), (channel,) or (channel, y, x), the
session's normalization; activations (neuron, seed), best_seed (neuron,), steps
(neuron, seed), unit_id (neuron,) int64 or str, neuron_index (neuron,), best_natural_activation,
best_natural_trial, ratio (neuron,), true_ratio, optimum_correlation, true_activation, true_best_natural,
true_best_natural_trial (neuron,; NaN / -1 for recorded sessions), contrast_rms,
contrast_activation (neuron, contrast), shift_offset (shift, yx), shift_activation (neuron, shift),
spectral_kl, spectral_slope (neuron,) of the best MEI (twin.naturalness), optional
validator_activations (neuron, seed), deis (neuron, dei, [channel,] y, x), dei_activations,
dei_spectral_kl (neuron, dei). attrs: run, session, store, recipe, mei_config (TOML),
natural_spectral_slope (of the session's train images).

Transparent MEIs (attrs background, opacity_penalty): images are the foreground under its opacity
over the mean gray; foreground (neuron, seed, [channel,] y, x), opacity (neuron, seed, y, x) in
(0, 1), mean_opacity (neuron,) of the best seed.
Surround stores (attrs surround: excite or suppress, centre: the centre's source): images are
centre and surround together, activations the responses to them; surround (neuron, seed,
[channel,] y, x) = images - centre_mask * centre (0 where the mask is 1), centre_mask (neuron, y,
x), centre_activation (neuron,) the response to the centre alone on the mean gray,
surround_ratio (neuron,) best activation / centre_activation, and for simulated sessions
true_centre_activation, true_activation, true_surround_ratio (neuron,). They hold no natural-image
controls; video surround stores (surround clips around centre clips, one centre_mask for every
frame) no spectral_kl or spectral_slope either.

Video stores (most exciting videos of a video model; attr frame_rate in Hz): images, foreground
and surround gain a frame axis after seed, (neuron, seed, frame, [channel,] y, x); deis likewise
(neuron, dei, frame, [channel,] y, x); direction (neuron,) the best clip's motion direction in
degrees (twin.mei.motion); the natural control of each best clip (twin.mei.run.natural_clip_checks):
best_natural_activation, best_natural_clip (its index among twin.mei.run.natural_clips),
best_natural_trial, best_natural_frame (its trial and first frame), ratio, true_activation,
true_best_natural, true_ratio (neuron,).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tomli_w
import xarray as xr

from twin.config import MEIConfig
from twin.data.store import load_values, open_dataset, write_dataset
from twin.errors import SessionError

DIMS = {
    "images": ("neuron", "seed", "y", "x"),
    "activations": ("neuron", "seed"),
    "steps": ("neuron", "seed"),
    "validator_activations": ("neuron", "seed"),
    "contrast_rms": ("neuron", "contrast"),
    "contrast_activation": ("neuron", "contrast"),
    "shift_offset": ("shift", "yx"),
    "shift_activation": ("neuron", "shift"),
    "deis": ("neuron", "dei", "y", "x"),
    "dei_activations": ("neuron", "dei"),
    "dei_spectral_kl": ("neuron", "dei"),
    "foreground": ("neuron", "seed", "y", "x"),
    "opacity": ("neuron", "seed", "y", "x"),
    "surround": ("neuron", "seed", "y", "x"),
    "centre_mask": ("neuron", "y", "x"),
}
CHANNEL_IMAGES = ("images", "deis", "foreground", "surround")  # a channel axis before y, x when 5-d
IMAGE_DIMS = {0: (), 1: ("channel",), 2: ("y", "x"), 3: ("channel", "y", "x")}
REQUIRED = ("images", "activations", "best_seed", "unit_id", "neuron_index", "image_mean", "image_std")


def dims_of(name: str, value: np.ndarray, video: bool = False) -> tuple[str, ...]:
    """The dimension names of variable ``name`` holding ``value`` (of a video store: clips)."""
    if name in ("image_mean", "image_std"):
        return IMAGE_DIMS[value.ndim]
    dims = DIMS.get(name, ("neuron",))
    if name not in CHANNEL_IMAGES:
        return dims
    if video:
        dims = dims[:2] + ("frame",) + dims[2:]
    if value.ndim == len(dims) + 1:
        return dims[:-2] + ("channel",) + dims[-2:]
    return dims


def config_toml(config: MEIConfig) -> str:
    """The recipe as a TOML [mei] table."""
    return tomli_w.dumps({"mei": dataclasses.asdict(config)})


def stored_config(store: xr.Dataset) -> MEIConfig:
    """The recipe an MEI store was made with (its ``mei_config`` attr, written by config_toml)."""
    import tomllib

    from twin.config import section_from_dict

    table = tomllib.loads(store.attrs["mei_config"])["mei"]
    return section_from_dict(MEIConfig, table, str(store.attrs.get("store", "the MEI store")))


def recipe_attrs(run, session: int, store, config: MEIConfig, config_sources: list[str]) -> dict:
    """The attrs every store made by the MEI engine starts with: where it came from and its recipe."""
    return {
        "run": str(Path(run).absolute()),
        "session": session,
        "store": str(Path(store).absolute()),
        "recipe": config.recipe,
        "mei_config": config_toml(config),
        "config_sources": config_sources,
    }


def meis_dataset(variables: dict[str, np.ndarray], attrs: dict) -> xr.Dataset:
    """Dataset from arrays named as in the module doc (None values are left out); a video store
    when ``attrs`` has frame_rate."""
    video = "frame_rate" in attrs
    data = {
        name: (dims_of(name, np.asarray(value), video), np.asarray(value))
        for name, value in variables.items()
        if value is not None
    }
    return xr.Dataset(data, attrs=attrs)


def write_meis(ds: xr.Dataset, path, overwrite: bool = False) -> Path:
    """Write the MEI store atomically (an existing one is replaced only with ``overwrite``)."""
    return write_dataset(ds, path, overwrite=overwrite)


def open_meis(path) -> xr.Dataset:
    """Open an MEI store, check it has the MEI variables and read it (MEI stores are small; a
    damaged chunk is one SessionError line)."""
    ds = open_dataset(path)
    missing = [name for name in REQUIRED if name not in ds]
    if "images" in ds and missing == ["image_mean", "image_std"]:
        raise SessionError(
            f"{path}: variable 'image_mean' is missing; the store was written by an older twin,"
            " run twin mei again to write it"
        )
    if missing:
        raise SessionError(
            f"{path}: variable {missing[0]!r} is missing; this is not an MEI store (write one with"
            " twin mei)"
        )
    return load_values(ds, path)
